"""The ``ferry`` command line. Heavy imports happen inside the commands that need them, so
``ferry --help`` and ``ferry render`` never import torch, mlflow or kserve."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry._cliutil import _stderr, _stdout, fail_cleanly
from ferry.errors import JobFileError, PromotionRefused

app = typer.Typer(
    name="ferry",
    help="Typed PyTorch jobs → Kubeflow PyTorchJobs, MLflow tracking, gated promotion, KServe serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CrdDirOption = Annotated[
    Path | None,
    typer.Option("--crd-dir", help="Directory of CRD YAMLs (default: $FERRY_CRD_DIR, else the schemas shipped with Ferry)."),
]
ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="Who is acting, for the history (default: $FERRY_ACTOR, git user.email, "
                                 "the pod's service account, $USER@host)."),
]


def _actor(explicit: str | None, gitops_dir: Path | None) -> str:
    """With a GitOps tree, its git identity (the author of the commit) names the actor."""
    from ferry.registry import resolve_actor

    return resolve_actor(explicit, cwd=gitops_dir if gitops_dir is not None and gitops_dir.is_dir() else None)


def _validate_and_emit(rendered: list[Any], out: Path | None, crd_dir: Path | None) -> None:
    """Validate every manifest, then write them all under ``out`` (or print them): nothing is
    written unless every one is valid."""
    from ferry.render import dump_yaml, write_rendered
    from ferry.validate import find_crd_dir, validate_manifests

    validate_manifests([(item.relpath, item.doc) for item in rendered], crd_dir or find_crd_dir())
    if out is None:
        sys.stdout.write(dump_yaml([item.doc for item in rendered]))
        return
    for path in write_rendered(rendered, out):
        _stderr().print(f"wrote {path}")


@app.command()
@fail_cleanly
def render(
    job_files: Annotated[list[Path], typer.Argument(help="Python files defining TrainingJob objects.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write OUT/<name>/pytorchjob.yaml; default: YAML on stdout.")] = None,
    crd_dir: CrdDirOption = None,
) -> None:
    """Render job files into validated Kubernetes manifests."""
    from ferry.render import render_spec
    from ferry.spec import load_specs

    _validate_and_emit([item for loaded in load_specs(job_files) for item in render_spec(loaded.spec)], out, crd_dir)


@app.command()
@fail_cleanly
def deploy(
    deploy_files: Annotated[list[Path], typer.Argument(help="Python files defining Deployment objects.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write OUT/<name>/inferenceservice.yaml and OUT/clusterservingruntime.yaml; default: stdout.")] = None,
    crd_dir: CrdDirOption = None,
    image: Annotated[str | None, typer.Option(help="Image of Ferry's serving runtime.")] = None,
) -> None:
    """Resolve each Deployment's model to a pinned version and render its InferenceService."""
    from ferry.cli_models import registry_client
    from ferry.registry import resolve_model
    from ferry.render import Rendered, render_serving_runtime, render_spec
    from ferry.spec import SERVE_IMAGE, Deployment, load_specs

    specs = [loaded.spec for loaded in load_specs(deploy_files, kinds=(Deployment,))]
    client = registry_client()
    rendered = []
    for spec in specs:
        resolved = resolve_model(spec.model, client)
        if resolved.storage_uri.startswith("file:"):
            _stderr().print(f"[yellow]warning:[/] {spec.name}: {resolved.storage_uri} is a local path a cluster cannot "
                            "fetch; track to a server with an S3 artifact store for cluster deployments")
        rendered += render_spec(spec, resolved)
    rendered.append(Rendered("clusterservingruntime.yaml", render_serving_runtime(image or SERVE_IMAGE)))
    _validate_and_emit(rendered, out, crd_dir)


@app.command()
@fail_cleanly
def validate(
    manifests: Annotated[list[Path], typer.Argument(help="YAML files (multi-document allowed).")],
    crd_dir: CrdDirOption = None,
) -> None:
    """Validate manifests against the real CRD schemas, Kubernetes' own schemas and Pod Security 'restricted'."""
    from ferry.validate import find_crd_dir, load_manifest_file, validate_manifests

    docs = [doc for path in manifests for doc in load_manifest_file(path)]
    validate_manifests(docs, crd_dir or find_crd_dir())
    _stderr().print(f"[green]ok:[/] {len(docs)} manifest(s) valid")


@app.command()
@fail_cleanly
def run(
    job_file: Annotated[Path, typer.Argument(help="Python file defining the TrainingJob.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a hyperparameter: key=value (repeatable).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Override the number of workers.")] = None,
    job_name: Annotated[str | None, typer.Option("--job", help="Which job, when the file defines several.")] = None,
    resume_from: Annotated[str | None, typer.Option(
        "--resume-from", help="Start from another submission's latest checkpoint: its id, runs:/<run id>, or a checkpoint folder.")] = None,
) -> None:
    """Run a job on this machine exactly as the training operator would run it on a cluster.

    Each call is a new submission, starting from step 0 (restarts inside it resume its own
    checkpoints), unless --resume-from names where to start."""
    from ferry.local import apply_overrides, run_job
    from ferry.local._report import report
    from ferry.spec import load_specs

    specs = [loaded.spec for loaded in load_specs([job_file])]
    if job_name is not None:
        specs = [s for s in specs if s.name == job_name]
        if not specs:
            raise JobFileError(f"{job_file}: no TrainingJob named {job_name!r}")
    if len(specs) > 1:
        names = ", ".join(s.name for s in specs)
        raise JobFileError(f"{job_file} defines several jobs ({names}); choose one with --job NAME")
    job = apply_overrides(specs[0], set_ or (), workers, resume_from)
    console = _stdout()
    result = run_job(job, console=console, progress=console.is_terminal)
    raise typer.Exit(report(job, result, console))


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port for the MLflow UI (127.0.0.1).")] = 5000,
) -> None:
    """Open the MLflow UI on the embedded store (.ferry/), or say where your server is."""
    import os

    from ferry import settings
    from ferry.local import LocalStore

    if settings.MLFLOW_TRACKING_URI.is_set():
        typer.echo(f"MLFLOW_TRACKING_URI is set: open {settings.MLFLOW_TRACKING_URI.get()} in a browser")
        return
    store = LocalStore.default()
    store.ensure()
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.tracking_uri,
            "--default-artifact-root", store.artifact_root, "--host", "127.0.0.1", "--port", str(port)]
    typer.echo(f"MLflow UI on http://127.0.0.1:{port} (store: {store.home}); Ctrl-C to stop")
    os.execv(sys.executable, argv)


@app.command()
@fail_cleanly
def serve(
    model_uri: Annotated[str, typer.Argument(help="models:/name@alias, models:/name/N, runs:/..., s3://... or a local path.")],
    name: Annotated[str | None, typer.Option(help="Model name in the API (default: from the URI).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a pod).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    max_batch_size: Annotated[int, typer.Option(help="Most rows per model call.")] = 32,
    max_latency_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch under load.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests queued before answering 503.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = 8 << 20,
) -> None:
    """Serve a model over KServe's Open Inference Protocol v2 and v1 REST APIs."""
    from ferry import settings
    from ferry.local import embedded_tracking_uri

    if not settings.MLFLOW_TRACKING_URI.is_set():
        import os

        os.environ["MLFLOW_TRACKING_URI"] = embedded_tracking_uri()  # models:/ from the embedded store
    from ferry.serve import serve as run_server

    run_server(model_uri, name=name, host=host, port=port, max_batch_size=max_batch_size,
               max_latency_ms=max_latency_ms, max_queue=max_queue, max_body_bytes=max_body_bytes)


@app.command()
@fail_cleanly
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Option("--version", help="The candidate version.")],
    env: Annotated[str, typer.Option("--env", help="Target environment (staging, production, ...).")],
    policy: Annotated[Path | None, typer.Option(help="Python file defining Promotion(model=NAME, ...); default gates otherwise.")] = None,
    gitops_dir: Annotated[Path | None, typer.Option("--gitops-dir", help="Write DIR/<env>/<model>/ manifests pinned to the version.")] = None,
    commit: Annotated[bool, typer.Option("--commit", help="git commit the GitOps change (no-op when unchanged).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Promote even if gates fail (recorded as forced).")] = False,
    actor: ActorOption = None,
) -> None:
    """Move an environment's alias to a version that passes the gates, record it, write GitOps."""
    from ferry.cli_models import gitops_update, load_policy, print_verdict, registry_client
    from ferry.registry import promote as do_promote

    rules = load_policy(policy, name)
    client = registry_client()
    try:
        result = do_promote(client, rules, name, version, env, force=force, actor=_actor(actor, gitops_dir))
    except PromotionRefused as exc:
        from ferry.registry import PromotionResult

        print_verdict(PromotionResult(name, env, "", None, version, exc.gates, False, False, None))
        raise
    print_verdict(result)
    if gitops_dir is not None:
        gitops_update(client, rules, result, gitops_dir, commit)


@app.command()
@fail_cleanly
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    env: Annotated[str, typer.Option("--env", help="Environment whose alias goes back.")],
    policy: Annotated[Path | None, typer.Option(help="Python file defining Promotion(model=NAME, ...).")] = None,
    gitops_dir: Annotated[Path | None, typer.Option("--gitops-dir", help="Rewrite DIR/<env>/<model>/ for the restored version.")] = None,
    commit: Annotated[bool, typer.Option("--commit", help="git commit the GitOps change.")] = False,
    actor: ActorOption = None,
) -> None:
    """Point an environment's alias back to the version that held it before."""
    from ferry.cli_models import gitops_update, load_policy, print_verdict, registry_client
    from ferry.registry import rollback as do_rollback

    client = registry_client()
    result = do_rollback(client, name, env, actor=_actor(actor, gitops_dir))
    print_verdict(result)
    if gitops_dir is not None:
        gitops_update(client, load_policy(policy, name), result, gitops_dir, commit)


@app.command()
@fail_cleanly
def optimize(
    model_uri: Annotated[str, typer.Argument(help="The source version: models:/NAME/VERSION or models:/NAME@ALIAS.")],
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic int8 quantization of Linear/LSTM/GRU layers.")] = None,
    prune: Annotated[float | None, typer.Option(help="Magnitude pruning: the fraction of weights to zero, 0 < AMOUNT < 1.")] = None,
    structured: Annotated[bool, typer.Option("--structured", help="Prune whole output channels (L2) instead of single weights.")] = False,
    finetune_data: Annotated[str | None, typer.Option("--finetune-data", help="module:function returning (inputs, labels) to fine-tune the pruned model on.")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Epochs of that fine-tune.")] = 2,
    distill: Annotated[Path | None, typer.Option(help="A student TrainingJob file (with a 'teacher' hyperparameter) to train on this model's soft targets.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a hyperparameter of the student job: key=value (repeatable).")] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX, check parity with ONNX Runtime, log with the ONNX flavor.")] = False,
    onnx_tolerance: Annotated[float, typer.Option("--onnx-tolerance", help="Largest output difference from the source an ONNX export may have.")] = 1e-4,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="module:function returning (inputs, labels); default: the job's held-out split recorded on the source run.")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for every model while measuring.")] = 1,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register each candidate as a new version.")] = True,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Also write report.md, report.png and report.json here.")] = None,
) -> None:
    """Make cheaper candidates of a registered model, measure them side by side with it, and register them."""
    from ferry.cli_models import registry_client
    from ferry.optimize import PruneOptions, rich_table
    from ferry.optimize import optimize as do_optimize

    err = _stderr()
    prune_options = PruneOptions(prune, structured, finetune_data, finetune_epochs) if prune is not None else None
    client = registry_client()
    result = do_optimize(model_uri, quantize=quantize, prune=prune_options, onnx=onnx, distill=distill,
                         distill_sets=set_ or (), eval_data=eval_data, onnx_tolerance=onnx_tolerance, threads=threads,
                         register=register, client=client, report_dir=report_dir, console=err,
                         say=lambda line: err.print(f"[dim]{line}[/]"))
    out = _stdout()
    if not out.is_terminal:
        out.width = 160  # a log or a pipe: keep the table's rows on one line each
    out.print(rich_table(result.rows(), result.title))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    for note in result.notes:
        out.print(f"note: {note}")
    for cand in result.candidates:
        if cand.version:
            out.print(f"registered {cand.model_name} v{cand.version} ({cand.label})")
    out.print(f"MLflow run {result.run_id}: report/report.md and report/report.png"
              + (f"; also in {result.report_dir}" if result.report_dir else ""))


def _add_models_group() -> None:
    from ferry.cli_models import models_app

    app.add_typer(models_app, name="models")


@app.command()
def version() -> None:
    """Print Ferry's version."""
    from ferry import __version__

    typer.echo(f"ferry {__version__}")


def main() -> None:
    app()


_add_models_group()


if __name__ == "__main__":  # pragma: no cover
    main()
