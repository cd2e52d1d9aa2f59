"""``ferry serve``, ``ferry deploy``, ``ferry fetch`` and ``ferry runtime``: a model behind the
Open Inference Protocol, here or as a KServe InferenceService on a cluster, and what KServe
needs of Ferry to run it (the serving runtime and the storage initializer)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer

from ferry.cli._util import (
    CLUSTER_CODES,
    DryRun,
    DryRunOption,
    Output,
    _stderr,
    _stdout,
    emit,
    exit_codes,
    fail_cleanly,
    in_namespace,
    refuse,
    target_namespace,
    validate_and_emit,
)
from ferry.cli.cluster import ContextOption, KubeconfigOption, connect
from ferry.cli.local import CrdDirOption

serving_app = typer.Typer()
PROGRESS_BAR_SWITCH = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # mlflow.environment_variables, read at each download


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow's artifact download progress bars (tqdm, on stderr) off for the block, whatever the
    environment says: a server's log and a script's stderr are no terminal, and a bar's
    carriage-return updates land there as lines of noise. The environment is as it was
    afterwards, so a caller that runs a command in its own process keeps its own setting."""
    before = os.environ.get(PROGRESS_BAR_SWITCH)
    os.environ[PROGRESS_BAR_SWITCH] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR_SWITCH, None)
        else:
            os.environ[PROGRESS_BAR_SWITCH] = before


@serving_app.command(epilog=exit_codes(0, 2, 10, 130))
@fail_cleanly
def serve(
    model_uri: Annotated[str, typer.Argument(help="models:/name@alias, models:/name/N, runs:/..., s3://... or a local path.")],
    name: Annotated[str | None, typer.Option(help="Model name in the API (default: from the URI).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a pod).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="Port of KServe's v2 gRPC protocol (0: REST only).")] = 8081,
    device: Annotated[str, typer.Option("--device", help="auto (the first GPU when one is visible), cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes sharing the ports (CPU serving): each loads the model and batches on its own; torch threads are divided among them.")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float16 or bfloat16 (torch models; reduced precision where the device has it).")] = "float32",
    max_batch_size: Annotated[int, typer.Option(help="Most rows per model call.")] = 32,
    max_latency_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch under load.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests queued before answering 503.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = 8 << 20,
) -> None:
    """Serve a model over KServe's Open Inference Protocol: v2 REST (binary tensors too) and gRPC, v1 REST.

    Live at once, ready once the model is loaded and warmed up. A model that cannot be loaded
    stops the server (every worker): one line on stderr naming the model and why, exit 2."""
    from ferry import settings
    from ferry.local import embedded_tracking_uri

    if not settings.MLFLOW_TRACKING_URI.is_set():
        os.environ["MLFLOW_TRACKING_URI"] = embedded_tracking_uri()  # models:/ from the embedded store
    if model_uri.startswith(("models:/", "runs:/")):
        from ferry.cli.models import registry_client

        registry_client(fail_fast=False)  # MLflow out of reach: its own exit code (10), before any loading
    from ferry.serve import serve as run_server

    with no_progress_bars():  # the model's download, in the server and in each worker (they inherit it)
        run_server(model_uri, name=name, host=host, port=port, max_batch_size=max_batch_size,
                   max_latency_ms=max_latency_ms, max_queue=max_queue, max_body_bytes=max_body_bytes,
                   grpc_port=grpc_port, device=device, dtype=dtype, workers=workers)


@serving_app.command(epilog=exit_codes(0, 2, 10, 143))
@fail_cleanly
def fetch(
    pairs: Annotated[list[str], typer.Argument(metavar="URI DEST [URI DEST]...", help="A model (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH, mlflow-artifacts:/PATH) and the folder to put it in; pairs of them, as KServe passes them.")],
    attempts: Annotated[int, typer.Option(min=1, help="Tries when MLflow is unreachable or answers 5xx (back-off 1 s, doubling).")] = 5,
) -> None:
    """Download a model through MLflow into a folder: Ferry's storage initializer for KServe.

    KServe runs it as the predictor pod's init container (ClusterStorageContainer 'ferry')
    with the InferenceService's storageUri and /mnt/models. MLFLOW_TRACKING_URI and MLflow's
    credentials come from the environment. The model is checked (an MLmodel with a flavour
    Ferry serves) before it appears in DEST; nothing is left half-written. A failure is one
    line on stderr; the exit code says which kind."""
    import logging

    if len(pairs) % 2:
        _stderr().print("[bold red]error:[/] give URI DEST pairs (KServe passes the storageUri and /mnt/models)")
        raise typer.Exit(2)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING, format="ferry fetch: %(message)s")
    from ferry.errors import FerryError
    from ferry.registry import fetch_model

    for uri, dest in zip(pairs[::2], pairs[1::2]):
        try:
            done = fetch_model(uri, Path(dest), attempts=attempts)
        except FerryError as exc:
            _stderr().print(f"ferry fetch: error: {' '.join(str(exc).split())}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            import shutil
            import sys

            from ferry.registry._fetch import STAGING_PREFIX

            # MLflow's download threads may still be writing: the staging folder goes (again, should
            # one of them have made it anew), and the process ends now rather than waiting for them
            # at exit, as a stopped container must
            for staging in Path(dest).glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(staging, ignore_errors=True)
            _stderr().print(f"ferry fetch: stopped while fetching {uri}; nothing was left in {dest}", markup=False)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(143)
        _stdout().print(done.line(), markup=False)


@serving_app.command(epilog=exit_codes(0, 2, 4, 5, 6, 7, 8, 9, 130))
@fail_cleanly
def runtime(
    image: Annotated[str | None, typer.Option(help="Image of Ferry's serving runtime and storage initializer.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Apply to the cluster (server-side, field manager 'ferry') instead of printing.")] = False,
    context: ContextOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Print (or --apply) Ferry's serving runtime and storage initializer, for clusters without the chart.

    The ClusterServingRuntime 'ferry' runs `ferry serve`; the ClusterStorageContainer 'ferry'
    runs `ferry fetch`, KServe's storage initializer for models:/, runs:/ and
    mlflow-artifacts:/ URIs. Both are cluster-scoped: applying them needs cluster-wide rights.

    \b
        ferry runtime | kubectl apply --server-side -f -"""
    from ferry.render import dump_yaml, render_serving_runtime, render_storage_container

    docs = [render_serving_runtime(image), render_storage_container(image)]
    if not apply:
        _stdout().out(dump_yaml(docs), end="")
        return
    from ferry.kube import apply_manifests

    with connect(kubeconfig, context, None) as cluster:
        for item in apply_manifests(cluster, docs):
            _stderr().print(f"applied: {item}")


# what deploy --status -o json|yaml prints, as the help says it
SERVICE_SCHEMA = ("an object {name, namespace, ready, url, model, model_version, conditions: a list of {type, status, "
                  "reason, message}, traffic: a list of {revision, percent, latest}}")


def service_doc(state: Any) -> dict[str, Any]:
    """An InferenceService's state as ``deploy --status -o json|yaml`` prints it."""
    return {"name": state.name, "namespace": state.namespace, "ready": state.ready, "url": state.url,
            "model": state.model, "model_version": state.model_version,
            "conditions": [{"type": c.type, "status": c.status, "reason": c.reason or None, "message": c.message or None}
                           for c in state.conditions],
            "traffic": [{"revision": t.get("revisionName"), "percent": t.get("percent", 0),
                         "latest": bool(t.get("latestRevision"))} for t in state.traffic]}


def _show_service(name: str, namespace: str | None, context: str | None, kubeconfig: Path | None,
                  output: Output) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ferry.kube import service_state

    with connect(kubeconfig, context, namespace) as cluster:
        state = service_state(cluster, name)

    def table() -> None:
        out = _stdout()
        ready = "[green]Ready[/]" if state.ready else "[yellow]not ready[/]"
        model = f"{state.model} v{state.model_version}" if state.model else "-"
        out.print(f"InferenceService {state.namespace}/{state.name}: {ready}  model {model}  url {state.url or '-'}")
        rows = Table("condition", "status", "reason", "message")
        for c in state.conditions:
            rows.add_row(c.type, c.status, c.reason or "-", escape(c.message) or "-")
        if state.conditions:
            out.print(rows)
        for t in state.traffic:
            tag = " (latest)" if t.get("latestRevision") else ""
            out.print(f"traffic: {t.get('percent', 0)}% → {t.get('revisionName', '?')}{tag}")

    emit(service_doc(state), output, table)


@serving_app.command(epilog=exit_codes(0, 1, 2, *CLUSTER_CODES, 10, 130))
@fail_cleanly
def deploy(
    deploy_files: Annotated[list[Path] | None, typer.Argument(help="Python files defining Deployment objects.")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write the manifests into this folder (one subfolder per InferenceService, the runtime's beside them) instead of printing them.")] = None,
    crd_dir: CrdDirOption = None,
    image: Annotated[str | None, typer.Option(help="Image of Ferry's serving runtime.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Apply to the cluster (server-side, field manager 'ferry') instead of printing.")] = False,
    dry_run: DryRunOption = None,
    force_conflicts: Annotated[bool, typer.Option("--force-conflicts", help="With --apply: take over fields another field manager owns.")] = False,
    no_runtime: Annotated[bool, typer.Option("--no-runtime", help="Leave out Ferry's ClusterServingRuntime and ClusterStorageContainer (when the Helm chart manages them: applying them needs cluster-wide rights).")] = False,
    runtime: Annotated[bool, typer.Option("--runtime", hidden=True, help="Include them (the default).")] = False,
    status: Annotated[str | None, typer.Option("--status", help="Show this InferenceService's conditions, URL and traffic (no files needed).")] = None,
    output: Annotated[Output, typer.Option(
        "--output", case_sensitive=False,
        help=f"With --status: table, for people; json or yaml, for scripts: {SERVICE_SCHEMA}, on stdout and "
             "nothing else there. (-o is --out here, as in render.)")] = Output.table,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Namespace (default: the one the Deployment sets, else the kubeconfig "
                                  "context's, else 'default').")] = None,
    context: ContextOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Render (or --apply) each Deployment as an InferenceService pinned to a model version.

    The model reference is pinned to a version in the registry (storageUri models:/NAME/VERSION);
    Ferry's ClusterServingRuntime and ClusterStorageContainer (the storage initializer that
    fetches models:/ URIs) come with it. --apply sends them to the cluster, and refuses a model
    no installed storage container would fetch; --dry-run server has the API server judge them
    (with or without --apply), --dry-run client renders them here (as without --apply).
    --status NAME shows how one is doing."""
    if status is not None:
        if deploy_files or apply or dry_run is not None or out is not None:
            raise refuse("--status", "--status shows one InferenceService; give it without deploy files, --apply, "
                                     "--dry-run or --out")
        _show_service(status, namespace, context, kubeconfig, output)
        return
    if not deploy_files:
        raise typer.BadParameter("give one or more deploy files (or --status NAME)", param_hint="DEPLOY_FILES")
    if runtime and no_runtime:
        raise refuse("--runtime", "--runtime (the default) and --no-runtime contradict each other: give one")
    send = dry_run is DryRun.server or (apply and dry_run is None)  # what goes to the API server
    if out is not None and send:
        raise refuse("--out", "--out writes files; --apply (or --dry-run server) sends them to the cluster: "
                              "choose one")
    if force_conflicts and not send:
        raise refuse("--force-conflicts", "--force-conflicts applies when sending to the cluster: add --apply "
                                          "(or --dry-run server)")
    from ferry.cli.models import registry_client
    from ferry.registry import resolve_model
    from ferry.render import Rendered, render_serving_runtime, render_spec, render_storage_container
    from ferry.spec import Deployment, load_specs

    specs = [loaded.spec for loaded in load_specs(deploy_files, kinds=(Deployment,))]
    cluster = connect(kubeconfig, context, namespace) if send else None
    default = cluster.namespace if cluster is not None else None
    specs = [in_namespace(s, target_namespace(s, namespace, default)) for s in specs]
    client = registry_client()
    rendered = []
    for spec in specs:
        with no_progress_bars():  # the model's MLmodel is read from the registry's store
            resolved = resolve_model(spec.model, client)
        source = resolved.source or resolved.storage_uri
        if urlparse(source).scheme in ("", "file"):
            _stderr().print(f"[yellow]warning:[/] {spec.name}: the registry keeps {resolved.storage_uri} at {source}, a "
                            "local path a cluster cannot fetch; track to a server that serves artifacts "
                            "(mlflow server --serve-artifacts) or stores them on S3 for cluster deployments")
        rendered += render_spec(spec, resolved)
    if not no_runtime:
        rendered.append(Rendered("clusterservingruntime.yaml", render_serving_runtime(image)))
        rendered.append(Rendered("clusterstoragecontainer.yaml", render_storage_container(image)))
    if cluster is None:
        validate_and_emit(rendered, out, crd_dir)
        return
    from ferry.kube import apply_manifests, check_storage_containers
    from ferry.validate import find_crd_dir, validate_manifests

    validate_manifests([(item.relpath, item.doc) for item in rendered], crd_dir or find_crd_dir())
    with cluster:
        for warning in check_storage_containers(cluster, [item.doc for item in rendered]):
            _stderr().print(f"[yellow]warning:[/] {warning}")
        applied = apply_manifests(cluster, [item.doc for item in rendered], dry_run=dry_run is DryRun.server,
                                  force=force_conflicts)
    err = _stderr()
    for item in applied:
        err.print(f"{'accepted (dry run, server)' if dry_run else 'applied'}: {item}")
    if not dry_run:
        names = " ".join(s.name for s in specs)
        _stdout().print(f"deployed {names}; watch it: ferry deploy --status {specs[0].name} -n {specs[0].namespace}")
