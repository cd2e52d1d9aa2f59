"""``ferry render``, ``validate``, ``run`` and ``ui``: jobs as manifests, and on this machine."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._util import _stderr, _stdout, exit_codes, fail_cleanly, select_job, validate_and_emit
from ferry.errors import JobFileError, SpecError

local_app = typer.Typer()

CrdDirOption = Annotated[
    Path | None,
    typer.Option("--crd-dir", help="A folder of extra CRD YAMLs, read beside the shipped schemas and Ferry's own "
                                   "(ModelPipeline); where both define a group/version/kind, yours wins "
                                   "(default: $FERRY_CRD_DIR)."),
]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a hyperparameter: key=value (repeatable).")]
WorkersOption = Annotated[int | None, typer.Option("--workers", help="Override the number of workers.")]
JobNameOption = Annotated[str | None, typer.Option("--job", help="Which job, when the file defines several.")]


class Target(str, Enum):
    """What a TrainingJob renders as."""

    pytorchjob = "pytorchjob"  # Kubeflow training operator, kubeflow.org/v1
    trainjob = "trainjob"  # Kubeflow Trainer v2, trainer.kubeflow.org/v1alpha1


ResumeOption = Annotated[str | None, typer.Option(
    "--resume-from", help="Start from another submission's latest checkpoint: its id, runs:/<run id>, or a checkpoint folder.")]


@local_app.command(epilog=exit_codes(0, 1, 2, 130))
@fail_cleanly
def render(
    job_files: Annotated[list[Path], typer.Argument(
        help="Python files defining TrainingJob (or Sweep) objects; of several (jobs/digits/*.py), those defining none are skipped.")],
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", help="Write OUT/<name>/pytorchjob.yaml (a TrainJob: trainjob.yaml); default: YAML on stdout.")] = None,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Namespace of every manifest (default: the job's own, else 'default'); "
                                  "as with submit, -n wins over a namespace the job sets.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a hyperparameter of every job rendered (a Sweep's: its job's): key=value (repeatable).")] = None,
    crd_dir: CrdDirOption = None,
    target: Annotated[Target | None, typer.Option(
        "--target", case_sensitive=False,
        help="What every job renders as: pytorchjob (Kubeflow training operator) or trainjob (Kubeflow Trainer v2 "
             "TrainJob); default: the job's own target=, else $FERRY_TARGET, else pytorchjob.")] = None,
) -> None:
    """Render job files into validated Kubernetes manifests (a Sweep: one PyTorchJob per trial)."""
    from ferry.render import render_spec
    from ferry.spec import Sweep, TrainingJob, load_specs

    loaded = load_specs(job_files, kinds=(TrainingJob, Sweep))
    defining = {item.path.resolve() for item in loaded}
    if skipped := [str(path) for path in dict.fromkeys(job_files) if path.resolve() not in defining]:
        from rich.markup import escape

        _stderr().print(f"[dim]skipped, defining no TrainingJob or Sweep of their own: {escape(', '.join(skipped))}[/]")
    # a file that defines a Sweep renders its trials; the jobs it imports are their ingredients
    with_sweeps = {item.path for item in loaded if isinstance(item.spec, Sweep)}
    specs = [as_asked(item.spec, namespace, set_ or ())
             for item in loaded if isinstance(item.spec, Sweep) or item.path not in with_sweeps]
    rendered = []
    chosen = target.value if target is not None else None
    for spec in specs:
        if isinstance(spec, Sweep):  # a job per trial, rendered by the sweep package
            from ferry.sweep._render import render_sweep

            rendered += render_sweep(spec, target=chosen)
        else:
            rendered += render_spec(spec, target=chosen)
    validate_and_emit(rendered, out, crd_dir)


def as_asked(spec: Any, namespace: str | None, sets: Sequence[str]) -> Any:
    """A TrainingJob, or a Sweep's job, with ``--set`` applied and in the namespace ``-n`` says
    (as ``submit`` places it); the same spec when neither changes it."""
    from ferry.cli._util import target_namespace
    from ferry.spec import Sweep

    job = spec.job if isinstance(spec, Sweep) else spec
    if sets:
        from ferry.local import apply_overrides

        keys = [item.partition("=")[0] for item in sets]
        if isinstance(spec, Sweep) and (searched := [key for key in keys if key in spec.space]):
            raise SpecError(f"--set {searched[0]}: sweep {spec.name} searches {searched[0]}; "
                            "each trial sets it, so leave it out of --set (or out of the sweep's space)")
        job = apply_overrides(job, sets)
    if job.namespace != (where := target_namespace(job, namespace, None)):
        job = job.replace(namespace=where)  # keeps which fields the job sets (a TrainJob refuses some set)
    if not isinstance(spec, Sweep):
        return job
    return spec if job is spec.job else spec.replace(job=job)


@local_app.command(epilog=exit_codes(0, 1, 2, 130))
@fail_cleanly
def validate(
    manifests: Annotated[list[Path], typer.Argument(
        help="YAML files (multi-document allowed), folders (every *.yaml and *.yml below, e.g. what render -o wrote) "
             "or - for stdin.")],
    crd_dir: CrdDirOption = None,
) -> None:
    """Validate manifests against the real CRD schemas, Kubernetes' own schemas and Pod Security 'restricted'."""
    from ferry.validate import find_crd_dir, load_manifest_file, validate_manifests

    docs = [doc for path in manifests for doc in load_manifest_file(path)]  # every path read before any is judged
    validate_manifests(docs, crd_dir or find_crd_dir())
    _stderr().print(f"[green]ok:[/] {len(docs)} manifest(s) valid")


@local_app.command(epilog=exit_codes(0, 1, 2, 130))
@fail_cleanly
def run(
    job_file: Annotated[Path, typer.Argument(help="Python file defining the TrainingJob (a Sweep's: `ferry sweep`).")],
    set_: SetOption = None,
    workers: WorkersOption = None,
    job_name: JobNameOption = None,
    resume_from: ResumeOption = None,
    code: Annotated[Path | None, typer.Option(
        "--code", help="Run the replicas from a code bundle of this folder (e.g. .), kept in the local store "
                       "(.ferry/code), as a cluster's replicas run a submitted job's code.")] = None,
    target: Annotated[Target | None, typer.Option(
        "--target", case_sensitive=False,
        help="Run the replicas as the training operator runs a PyTorchJob's, or as Kubeflow Trainer runs a "
             "TrainJob's (torchrun, its PET_* environment); default: the job's own target=, else $FERRY_TARGET, "
             "else pytorchjob.")] = None,
) -> None:
    """Run a job on this machine exactly as the training operator would run it on a cluster.

    Each call is a new submission, starting from step 0 (restarts inside it resume its own
    checkpoints), unless --resume-from names where to start."""
    from ferry.local import apply_overrides, run_job
    from ferry.local._report import report
    from ferry.spec import Sweep, TrainingJob, load_specs

    loaded = [item.spec for item in load_specs([job_file], kinds=(TrainingJob, Sweep))]
    if (sweeps := [s.name for s in loaded if isinstance(s, Sweep)]) and job_name is None:
        raise JobFileError(f"{job_file} defines a Sweep ({', '.join(sweeps)}): `ferry run` runs one TrainingJob; "
                           f"run the sweep's trials with `ferry sweep {job_file}` here or `ferry submit {job_file}` "
                           "on a cluster (or one of the file's jobs with --job NAME)")
    job = select_job(job_file, job_name, [s for s in loaded if isinstance(s, TrainingJob)])
    job = apply_overrides(job, set_ or (), workers, resume_from)
    if code is not None:
        from ferry.cli.code import with_code
        from ferry.local import LocalStore

        job = with_code(job, job_file, code, False, LocalStore.default().code_store, default_on=False)
    console = _stdout()
    result = run_job(job, console=console, progress=console.is_terminal,
                     target=target.value if target is not None else None)
    raise typer.Exit(report(job, result, console))


@local_app.command(epilog=exit_codes(0, 2, 130))
@fail_cleanly
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
