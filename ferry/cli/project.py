"""``ferry init``: a new project, ready to run, to make your own."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from ferry.cli._util import _stdout, exit_codes, fail_cleanly

project_app = typer.Typer()


@project_app.command(epilog=exit_codes(0, 2, 130))
@fail_cleanly
def init(
    name: Annotated[str, typer.Argument(help="The project's name: a DNS-1035 label such as fraud-detector (it names "
                                             "the job, its registered model and its Deployment).")],
    dir_: Annotated[Path | None, typer.Option("--dir", help="The folder to create (default: ./NAME).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that is not empty, replacing the "
                                                        "project's files there and keeping the others.")] = False,
) -> None:
    """Create a project that runs at once: a TrainingJob, its training script, a Deployment,
    a Dockerfile and a README, in a folder of its own.

    \b
        ferry init fraud-detector
        cd fraud-detector && ferry run fraud_detector/job.py"""
    from rich.markup import escape

    from ferry.scaffold import create_project

    project = create_project(name, dir_, force=force)
    out = _stdout()
    out.print(f"[green]created[/] {escape(str(project.root))}/")
    for path in project.files:
        out.print(f"  {escape(str(path))}")
    job = f"{project.package}/job.py"
    where = shlex.quote(str(project.root))
    out.print("\nnext:")
    out.print(f"  cd {escape(where)} && ferry run {job}   [dim]# train here, tracked in .ferry/[/]")
    out.print(f"  ferry render {job}   [dim]# the PyTorchJob for a cluster[/]")
    out.print(f"  ferry submit {job}   [dim]# onto the cluster (see README.md for the image)[/]")
