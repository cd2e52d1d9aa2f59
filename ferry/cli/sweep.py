"""``ferry sweep``: a hyperparameter search, here, with its trials side by side in MLflow."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._util import _stderr, _stdout, exit_codes, fail_cleanly
from ferry.errors import ConfigError, JobFileError

sweep_app = typer.Typer()


class RegisterChoice(str, Enum):
    best = "best"


def load_sweep(path: Path, name: str | None = None) -> Any:
    from ferry.spec import Sweep, load_specs

    return pick_sweep([s.spec for s in load_specs([path], kinds=(Sweep,))], path, name)


def pick_sweep(sweeps: list[Any], path: Path, name: str | None = None) -> Any:
    """The one Sweep of those ``path`` defines (``name`` when it defines several)."""
    if name is not None:
        sweeps = [s for s in sweeps if s.name == name]
    if len(sweeps) != 1:
        names = ", ".join(s.name for s in sweeps) or "none"
        raise JobFileError(f"{path}: {'choose one sweep with --name' if len(sweeps) > 1 else 'no such sweep'} "
                           f"(it defines: {names})")
    return sweeps[0]


def _table(sweep: Any, result: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"sweep {sweep.name}: {sweep.objective.goal} {sweep.objective.metric}", title_justify="left")
    table.add_column("trial", justify="right")
    table.add_column("state")
    for key in sweep.space:
        table.add_column(key, justify="right")
    table.add_column(sweep.objective.metric, justify="right")
    colours = {"running": "cyan", "finished": "green", "pruned": "yellow", "failed": "red", "stopped": "magenta"}
    best = result.best.number if result.best is not None else None
    for t in sorted(result.trials, key=lambda t: t.number):
        state = f"[{colours.get(t.state, 'white')}]{t.state}[/]" + (" ★" if t.number == best else "")
        values = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (t.values.get(k) for k in sweep.space)]
        table.add_row(str(t.number), state, *values, f"{t.value:.4f}" if t.value is not None else (t.detail or ""))
    return table


@sweep_app.command("sweep", epilog=exit_codes(0, 1, 2, 130))
@fail_cleanly
def sweep_command(
    file: Annotated[Path, typer.Argument(help="A Python file defining a Sweep.")],
    parallel: Annotated[int | None, typer.Option("--parallel", help="Trials at once (default: the Sweep's).")] = None,
    trials: Annotated[int | None, typer.Option("--trials", help="How many trials in all (default: the Sweep's).")] = None,
    register: Annotated[RegisterChoice | None, typer.Option("--register", help="best: register the best trial's model "
                                                            "(under the job's tracking.register_as).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Which sweep, when the file defines several.")] = None,
) -> None:
    """Run a hyperparameter sweep here, its trials side by side in MLflow.

    Each trial is one submission of the job through the local executor, tracked as a child run
    of the sweep's parent run. Ctrl-C stops cleanly; running it again continues the sweep of the
    same name."""
    from ferry.local import LocalStore, embedded_tracking_uri
    from ferry.sweep._local import local_launcher
    from ferry.sweep._search import optuna

    optuna()  # the optional dependency, checked before anything starts
    given = {"parallel": parallel, "trials": trials}
    sweep = load_sweep(file, name).replace(**{k: v for k, v in given.items() if v is not None})
    store = LocalStore.default()
    uri = embedded_tracking_uri(store)
    _drive(sweep, store, uri, local_launcher(store, uri, Path.cwd()), register=register is RegisterChoice.best)


def submit_sweep(sweep: Any, cluster: Any, namespace: str | None, job_tracking_uri: str | None, poll_s: float) -> None:
    """``ferry submit`` of a Sweep: the trials as PyTorchJobs on ``cluster``."""
    from ferry import settings
    from ferry.cli._util import in_namespace, target_namespace
    from ferry.local import LocalStore
    from ferry.sweep._cluster import cluster_launcher
    from ferry.sweep._search import optuna

    optuna()
    uri = settings.MLFLOW_TRACKING_URI.get()
    if not uri:
        raise ConfigError("a sweep on a cluster reads each trial's result from MLflow: set MLFLOW_TRACKING_URI to the "
                          "tracking server as this machine reaches it (e.g. kubectl port-forward svc/ferry-mlflow "
                          "5000 → http://127.0.0.1:5000)")
    sweep = sweep.replace(job=in_namespace(sweep.job, target_namespace(sweep.job, namespace, cluster.namespace)))
    with cluster:
        launcher = cluster_launcher(cluster, tracking_uri=job_tracking_uri, poll_s=poll_s, say=_stderr().print)
        _drive(sweep, LocalStore.default(), uri, launcher, register=False)


def _drive(sweep: Any, store: Any, uri: str, launcher: Any, *, register: bool) -> None:
    """Run the sweep with a live table (a line per change without a terminal), record it on the
    parent run, and say how it went."""
    from rich.live import Live

    from ferry.sweep._local import SweepRunner
    from ferry.sweep._report import finish

    interactive = sys.stdout.isatty()
    plain = TrialLines(_stdout(), sweep.objective.metric)
    with Live(console=_stdout(), auto_refresh=False, transient=False) if interactive else plain as live:
        def show(result: Any) -> None:
            if interactive:
                live.update(_table(sweep, result), refresh=True)
            else:
                plain.show(result)

        runner = SweepRunner(sweep, store=store, tracking_uri=uri, launcher=launcher, on_change=show)
        result = runner.run()
    finish(runner.client, sweep, result, register=register)
    if not interactive:
        _stdout().print(_table(sweep, result))
    if result.best is not None:
        _stdout().print(f"best: trial {result.best.number} {sweep.objective.metric}={result.best.value:.4f} "
                        f"{result.best.values} (run {result.best.run_id})")
    if result.registered:
        _stdout().print(f"registered {result.registered}")
    _stdout().print(f"compare the trials: ferry ui → experiment {sweep.experiment!r} → run sweep-{sweep.name} (parent) → "
                    f"select its child runs → Compare; the comparison table and plots are its artifacts")
    if result.interrupted:
        _stderr().print(f"interrupted: {sum(t.state in ('finished', 'pruned') for t in result.trials)} trial(s) recorded; "
                        f"run the same command again to continue the sweep")
        raise typer.Exit(130)
    if result.best is None:
        _stderr().print("[bold red]error:[/] no trial finished; see the failed trials above")
        raise typer.Exit(1)


class TrialLines:
    """Without a terminal: a line per change of a trial's state, on ``console``."""

    def __init__(self, console: Any, metric: str) -> None:
        self.console, self.metric = console, metric
        self.seen: dict[int, str] = {}

    def __enter__(self) -> TrialLines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def show(self, result: Any) -> None:
        for t in result.trials:
            if self.seen.get(t.number) != t.state:
                self.seen[t.number] = t.state
                value = f" {self.metric}={t.value:.4f}" if t.value is not None else (f" ({t.detail})" if t.detail else "")
                self.console.print(f"trial {t.number} {t.state}{value}  {t.values}")
