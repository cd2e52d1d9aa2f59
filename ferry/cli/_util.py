"""What every CLI command shares: consoles and the error-to-exit-code wrapper."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ferry.errors import FerryError

F = TypeVar("F", bound=Callable[..., Any])


def _stdout() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail_cleanly(func: F) -> F:
    """Print a FerryError as one clear message (no traceback) and exit with its code:
    2 for bad input, 1 for manifests that fail validation or a refused promotion."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FerryError as exc:
            from rich.markup import escape

            _stderr().print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def validate_and_emit(rendered: list[Any], out: Any, crd_dir: Any) -> None:
    """Validate every manifest, then write them all under ``out`` (or print them): nothing is
    written unless every one is valid."""
    import sys

    from ferry.render import dump_yaml, write_rendered
    from ferry.validate import find_crd_dir, validate_manifests

    validate_manifests([(item.relpath, item.doc) for item in rendered], crd_dir or find_crd_dir())
    if out is None:
        sys.stdout.write(dump_yaml([item.doc for item in rendered]))
        return
    for path in write_rendered(rendered, out):
        _stderr().print(f"wrote {path}")


def select_job(job_file: Any, job_name: str | None, specs: list[Any] | None = None) -> Any:
    """The one TrainingJob of ``job_file`` (``--job NAME`` when it defines several); ``specs``:
    its TrainingJobs, when the caller has loaded the file already."""
    from ferry.errors import JobFileError
    from ferry.spec import load_specs

    if specs is None:
        specs = [loaded.spec for loaded in load_specs([job_file])]
    if job_name is not None:
        specs = [s for s in specs if s.name == job_name]
        if not specs:
            raise JobFileError(f"{job_file}: no TrainingJob named {job_name!r}")
    if len(specs) > 1:
        names = ", ".join(s.name for s in specs)
        raise JobFileError(f"{job_file} defines several jobs ({names}); choose one with --job NAME")
    return specs[0]


def replica_line(replica: str, line: str) -> str:
    """One log line as every command prints it: ``[master-0] ...`` (rich markup)."""
    from rich.markup import escape

    return f"[dim]\\[{replica}][/] {escape(line)}"


def target_namespace(spec: Any, flag: str | None, default: str | None) -> str:
    """Where a spec goes: ``-n``, else the namespace the spec sets itself, else ``default``
    (the kubeconfig context's), else the spec's default."""
    if flag:
        return flag
    if "namespace" in spec.model_fields_set or default is None:
        return spec.namespace
    return default


def in_namespace(spec: Any, namespace: str) -> Any:
    """``spec`` in ``namespace``: the same spec when it is already there, else a validated copy."""
    if spec.namespace == namespace:
        return spec
    return type(spec)(**{**{f: getattr(spec, f) for f in type(spec).model_fields}, "namespace": namespace})
