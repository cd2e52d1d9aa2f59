"""What every CLI command shares: consoles, the one table of exit codes and the wrapper that
turns an error into its code, the read commands' ``-o/--output``, and help text that reads
cleanly at any width."""

from __future__ import annotations

import functools
import inspect
import textwrap
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from ferry.errors import FerryError

F = TypeVar("F", bound=Callable[..., Any])

# Every exit code of every command, once. A command's epilog lists those it can return
# (:func:`exit_codes`); the error classes of ferry.errors carry the same numbers.
EXIT_CODES: dict[int, str] = {
    0: "ok (with --wait: the job succeeded)",
    1: "failed: the job, manifest checks, a promotion's gates, an optimization",
    2: "bad input: job file, options, spec fields, an unregistered model/version",
    3: "not found: the job or object, its namespace, the ConfigMap a job reads",
    4: "conflict: the object exists, another manager owns a field, or another promotion holds the lock",
    5: "forbidden (RBAC)",
    6: "refused by the API server: invalid fields, admission, Pod Security",
    7: "not installed: the training operator, KServe, Ferry's storage container",
    8: "no cluster: unreachable, bad kubeconfig, rejected credentials",
    9: "the API server failed otherwise (5xx after the retries)",
    10: "MLflow or the artifact store unreachable or failing: try again later",
    124: "--wait timed out (the job, or its deletion, goes on)",
    130: "interrupted (Ctrl-C)",
    143: "stopped by SIGTERM (as the kubelet stops a container)",
}
CLUSTER_CODES = (3, 4, 5, 6, 7, 8, 9)  # what the Kubernetes API can answer (ferry.errors.ClusterError)


def exit_codes(*codes: int) -> str:
    """A command's epilog: ``codes`` as :data:`EXIT_CODES` describes them, each on its own line
    (a long one continues indented under its text); 0 names --wait only where 124 says the
    command has it."""
    lines = ["Exit codes:"]
    for code in sorted(set(codes)):
        what = EXIT_CODES[code] if code != 0 or 124 in codes else "ok"  # 124 goes with --wait
        lines += textwrap.wrap(what, width=78, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6)
    return "\n".join(lines)


def reflow(doc: str | None) -> str | None:
    """A docstring as help text: each paragraph's lines joined into one, so that the terminal
    wraps it at its own width (typer keeps a docstring's line breaks). A paragraph starting
    with ``\\b`` keeps its lines (an example to copy)."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
                       for p in paragraphs)


class Output(str, Enum):
    """How a read command prints what it read."""

    table = "table"
    json = "json"
    yaml = "yaml"


def output_option(schema: str) -> Any:
    """``-o/--output table|json|yaml``; ``schema``: what json and yaml print (the keys)."""
    return typer.Option("--output", "-o", case_sensitive=False,
                        help=f"table, for people; json or yaml, for scripts: {schema} (times in UTC, "
                             "ISO 8601), on stdout and nothing else there.")


def emit(data: Any, output: Output, table: Callable[[], None]) -> None:
    """``data`` as JSON or YAML on stdout (and nothing else there), else ``table()`` prints it
    as people read it."""
    import sys

    if output is Output.json:
        import json

        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif output is Output.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        table()


def timestamp(value: Any) -> str | None:
    """A datetime, or seconds since the epoch, as ISO 8601 in UTC (``2026-05-01T12:00:00Z``)."""
    from datetime import datetime, timezone

    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromtimestamp(value, tz=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DryRun(str, Enum):
    """What ``--dry-run`` means wherever it is taken."""

    client = "client"  # rendered and validated here; nothing is sent
    server = "server"  # the API server and its admission judge it; nothing is stored


DryRunOption = Annotated[DryRun | None, typer.Option(
    "--dry-run", case_sensitive=False,
    help="client: render and validate here and print what would be applied, sending nothing; server: the "
         "API server and its admission judge it, and nothing is stored.")]


def refuse(option: str, why: str) -> typer.BadParameter:
    """An option that does not apply here, refused (exit 2) naming it and why."""
    return typer.BadParameter(why, param_hint=f"'{option}'")


def deprecated_alias(new: str, old: str, value: Any, old_value: Any) -> Any:
    """The value of option ``new``, or of its old spelling ``old`` (said to be deprecated)."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        raise refuse(old, f"{old} is the old spelling of {new}; give only {new}")
    _stderr().print(f"[yellow]warning:[/] {old} is deprecated; use {new}")
    return old_value


def _stdout() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail_cleanly(func: F) -> F:
    """Print a FerryError as one clear message (no traceback) and exit with its code (see
    :data:`EXIT_CODES`); Ctrl-C exits 130. Every command wears it: its docstring, reflowed,
    is the command's help."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FerryError as exc:
            from rich.markup import escape

            _stderr().print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _stderr().print("interrupted")
            raise typer.Exit(130) from None

    wrapper.__doc__ = reflow(func.__doc__)  # the command's help, wrapped at the terminal's width
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
    return spec.replace(namespace=namespace)  # keeps which fields the job set (a TrainJob refuses some only then)
