"""The ``ferry`` command line: a table of contents. Each group of commands lives in its own
module and imports what is heavy inside the commands that need it, so ``ferry --help`` and
``ferry render`` never import torch, mlflow or kserve.

    cli_local     render, validate, run, ui           jobs as manifests, and on this machine
    cli_cluster   submit, status, list, logs, delete  jobs on a cluster
    cli_code      bundle (and submit/run --code)      a project's code to the replicas, no image rebuild
    cli_serving   serve, deploy                       models behind the Open Inference Protocol
    cli_plan      plan                                autoscaling settings measured on one replica
    cli_models    promote, rollback, optimize         the registry; ``ferry models ...``
    cli_sweep     sweep                               hyperparameter searches, tracked side by side
    cli_operator  operator run, operator crds         the in-cluster operator
    cli_project   init                                a new project, ready to run
"""

from __future__ import annotations

import typer

from ferry.cli._util import exit_codes
from ferry.cli.cluster import cluster_app
from ferry.cli.code import code_app
from ferry.cli.local import local_app
from ferry.cli.models import models_app, registry_app
from ferry.cli.operator import operator_app
from ferry.cli.plan import plan_app
from ferry.cli.project import project_app
from ferry.cli.serving import serving_app
from ferry.cli.sweep import sweep_app

app = typer.Typer(
    name="ferry",
    help="Typed PyTorch jobs → Kubeflow PyTorchJobs, MLflow tracking, gated promotion, KServe serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from ferry import __version__

        typer.echo(f"ferry {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print Ferry's version and exit."),
) -> None:
    """Typed PyTorch jobs → Kubeflow PyTorchJobs, MLflow tracking, gated promotion, KServe serving."""

app.add_typer(project_app)
app.add_typer(local_app)
app.add_typer(cluster_app)
app.add_typer(code_app)
app.add_typer(serving_app)
app.add_typer(plan_app)
app.add_typer(sweep_app)
app.add_typer(registry_app)
app.add_typer(models_app, name="models")
app.add_typer(operator_app, name="operator")
about_app = typer.Typer()
app.add_typer(about_app)


@about_app.command(epilog=exit_codes(0))
def version() -> None:
    """Print Ferry's version."""
    from ferry import __version__

    typer.echo(f"ferry {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
