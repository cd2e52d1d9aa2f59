"""``ferry bundle``, and the ``--code`` options of ``submit`` and ``run``: a project's code to
the replicas without an image rebuild (see :mod:`ferry.code`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._util import Output, _stderr, emit, exit_codes, fail_cleanly, output_option

code_app = typer.Typer()

CodeOption = Annotated[Path | None, typer.Option(
    "--code", help="Ship this folder's code with the job (default: the job file's project root, the nearest "
                   "folder with pyproject.toml or .git): bundled, uploaded once per digest, and run by every replica "
                   "instead of the code in the image.")]
NoCodeOption = Annotated[bool, typer.Option("--no-code", help="Run the code already in the image; ship nothing.")]
CodeStoreOption = Annotated[str | None, typer.Option(
    "--code-store", help="Where bundles go: s3://bucket/prefix, mlflow-artifacts:/prefix or file:///path (default: "
                         "$FERRY_CODE_STORE, else mlflow-artifacts:/ferry-code when MLFLOW_TRACKING_URI is a server).")]


def with_code(spec: Any, job_file: Path, code: Path | None, no_code: bool, store: str | None, *,
              default_on: bool, local_store: str | None = None, dry_run: bool = False) -> Any:
    """``spec`` (a TrainingJob, or a Sweep: its job) set to run from a bundle of its code, as the
    options ask. ``default_on``: ship without ``--code`` when a store is known (``submit``);
    ``local_store``: the store ``ferry run`` uses when none is given; ``dry_run``: bundled and
    named where it would go, but not uploaded."""
    from ferry.code import code_store, holds_module, ship
    from ferry.errors import ConfigError
    from ferry.spec import Sweep
    from ferry.spec._loader import project_root

    if no_code:
        if code is not None or store is not None:
            raise typer.BadParameter("--no-code ships nothing; leave out --code and --code-store", param_hint="'--no-code'")
        return spec
    if code is None and not default_on:
        return spec
    where = code_store(store) or local_store
    if where is None:
        if code is None:  # shipping was only the default: say why it did not happen
            _stderr().print("[dim]code: not shipped (no code store: set FERRY_CODE_STORE, --code-store, or "
                            "MLFLOW_TRACKING_URI to an MLflow server); the image's own code runs[/]")
            return spec
        raise ConfigError("--code needs a code store: --code-store s3://bucket/prefix (or FERRY_CODE_STORE), "
                          "or MLFLOW_TRACKING_URI set to an MLflow server; --no-code runs the image's own code")
    job = spec.job if isinstance(spec, Sweep) else spec
    root = code if code is not None else project_root(job_file)
    if code is None and job.module is not None and not holds_module(root, job.module):
        # shipping was only the default, and the project does not hold the module: the image does
        _stderr().print(f"[dim]code: not shipped ({job.module} is not in {root}); the image's own code runs[/]")
        return spec
    shipped = ship(job, root, where, upload=not dry_run)
    bundle = shipped.bundle
    said = "would go to (dry run)" if dry_run else "uploaded to" if shipped.uploaded else "already in"
    _stderr().print(f"code: {bundle.digest[:19]}… ({bundle.files} files, {len(bundle.data) / 1024:.0f} KiB) "
                    f"from {root}, {said} {shipped.uri}")
    return spec.replace(job=shipped.job) if isinstance(spec, Sweep) else shipped.job


@code_app.command(rich_help_panel="Cluster", epilog=exit_codes(0, 2, 10))
@fail_cleanly
def bundle(
    folder: Annotated[Path, typer.Argument(help="The project folder to bundle (its .gitignore and .ferryignore apply).")]
    = Path("."),
    store: CodeStoreOption = None,
    output: Annotated[Output, output_option("{code: {uri, digest}, files, bytes}")] = Output.table,
) -> None:
    """Bundle a project's code and publish it once per digest; print the `code` block that a
    ModelPipeline's `spec.job` (or `TrainingJob(code=...)`) takes, so that its replicas run this
    code without an image rebuild. `ferry submit` does this itself."""
    from ferry.code import build_bundle, code_store, max_bytes, publish
    from ferry.errors import ConfigError

    where = code_store(store)
    if where is None:
        raise ConfigError("no code store: give --code-store s3://bucket/prefix (or FERRY_CODE_STORE), or set "
                          "MLFLOW_TRACKING_URI to an MLflow server")
    made = build_bundle(folder, max_bytes())
    uri, uploaded = publish(made, where)
    data = {"code": {"uri": uri, "digest": made.digest}, "files": made.files, "bytes": len(made.data)}

    def table() -> None:
        _stderr().print(f"{'uploaded' if uploaded else 'already there'}: {made.files} files, "
                        f"{len(made.data) / 1024:.0f} KiB")
        typer.echo(f"code:\n  uri: {uri}\n  digest: {made.digest}")

    emit(data, output, table)
