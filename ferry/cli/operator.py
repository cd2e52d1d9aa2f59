"""``ferry operator``: run Ferry's in-cluster operator (the ``ferry_operator`` package) and print
the resources it needs installed."""

from __future__ import annotations

from typing import Annotated

import typer

from ferry.cli._util import exit_codes, fail_cleanly
from ferry.errors import ConfigError

operator_app = typer.Typer(help="The in-cluster operator: ModelPipeline resources (train → gate → serve).",
                           no_args_is_help=True)


def _package() -> object:
    try:
        import ferry_operator
    except ImportError as exc:  # kopf is the operator extra
        raise ConfigError(f"the operator needs its extra: pip install 'ferry[operator]' ({exc})") from exc
    return ferry_operator


@operator_app.command("run", epilog=exit_codes(0, 2, 130))
@fail_cleanly
def run(
    namespace: Annotated[list[str], typer.Option("--namespace", "-n", help="Watch this namespace (repeatable).")] = [],  # noqa: B006
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")] = False,
    liveness: Annotated[str | None, typer.Option("--liveness", metavar="<url>", help="Serve kopf's health endpoint at this URL (the chart gives http://0.0.0.0:8080/healthz here).")] = None,
    standalone: Annotated[bool, typer.Option("--standalone", help="No peering: for one replica without the peering CRDs.")] = False,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", min=1, max=65535, metavar="<port>", help="Serve Prometheus metrics on this port (/metrics).")] = None,
) -> None:
    """Run the operator (blocking). Configure it with MLFLOW_TRACKING_URI and the FERRY_OPERATOR_* settings."""
    if not namespace and not all_namespaces:
        raise ConfigError("watch some namespaces (--namespace ml, repeatable) or all of them (--all-namespaces)")
    _package()
    from ferry_operator import run as run_operator

    run_operator(namespaces=namespace, all_namespaces=all_namespaces, liveness=liveness, standalone=standalone,
                 metrics_port=metrics_port)


@operator_app.command("crds", epilog=exit_codes(0, 2))
@fail_cleanly
def crds() -> None:
    """Print the CustomResourceDefinitions the operator needs (ModelPipeline and kopf's peering), for kubectl apply -f -."""
    from importlib.resources import files

    _package()
    folder = files("ferry_operator") / "crds"
    texts = [folder.joinpath(name).read_text() for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml"))]
    typer.echo("---\n".join(text if text.endswith("\n") else text + "\n" for text in texts), nl=False)
