"""``ferry sweep``: a hyperparameter search, here, with its trials side by side in MLflow."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._util import DryRun, _stderr, _stdout, deprecated_alias, exit_codes, fail_cleanly
from ferry.errors import ConfigError, JobFileError, SpecError

sweep_app = typer.Typer()


class RegisterChoice(str, Enum):
    best = "best"


SweepNameOption = Annotated[str | None, typer.Option("--sweep", help="Which sweep, when the file defines several.")]


def load_sweep(path: Path, name: str | None = None) -> Any:
    from ferry.spec import Sweep, TrainingJob, load_specs

    loaded = [s.spec for s in load_specs([path], kinds=(Sweep, TrainingJob))]
    sweeps = [s for s in loaded if isinstance(s, Sweep)]
    if not sweeps:
        jobs = ", ".join(s.name for s in loaded)
        raise JobFileError(f"{path}: defines no Sweep, only TrainingJob(s) ({jobs}): run one with `ferry run {path}`, "
                           "or define sweep = Sweep(name=..., job=job, space={...}, objective=Objective(metric=...))")
    return pick_sweep(sweeps, path, name)


def pick_sweep(sweeps: list[Any], path: Path, name: str | None = None) -> Any:
    """The one Sweep of those ``path`` defines (``name`` when it defines several)."""
    defined = ", ".join(s.name for s in sweeps) or "none"
    if name is not None:
        chosen = [s for s in sweeps if s.name == name]
        if not chosen:
            raise JobFileError(f"{path}: no sweep named {name!r} (it defines: {defined})")
        return chosen[0]
    if len(sweeps) != 1:
        raise JobFileError(f"{path}: {'defines several sweeps' if sweeps else 'defines no Sweep'} ({defined}); "
                           + ("choose one with --sweep NAME" if sweeps else "give a file that defines one"))
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
    sweep_name: SweepNameOption = None,
    old_name: Annotated[str | None, typer.Option("--name", hidden=True, help="The old spelling of --sweep.")] = None,
) -> None:
    """Run a hyperparameter sweep here, its trials side by side in MLflow.

    Each trial is one submission of the job through the local executor, tracked as a child run
    of the sweep's parent run. Ctrl-C stops cleanly; running it again continues the sweep of the
    same name. On a cluster, `ferry submit FILE` runs the trials as PyTorchJobs."""
    from ferry.local import LocalStore, embedded_tracking_uri
    from ferry.sweep._local import local_launcher
    from ferry.sweep._search import optuna

    sweep_name = deprecated_alias("--sweep", "--name", sweep_name, old_name)
    optuna()  # the optional dependency, checked before anything starts
    given = {"parallel": parallel, "trials": trials}
    sweep = load_sweep(file, sweep_name).replace(**{k: v for k, v in given.items() if v is not None})
    store = LocalStore.default()
    uri = embedded_tracking_uri(store)
    _drive(sweep, store, uri, local_launcher(store, uri, Path.cwd()), register=register is RegisterChoice.best)


def submit_sweep(sweep: Any, connect: Callable[[], Any], namespace: str | None, *, sets: Sequence[str] = (),
                 workers: int | None = None, dry_run: DryRun | None = None, force_conflicts: bool = False,
                 tracking_uri: str | None = None, poll_s: float = 2.0) -> None:
    """``ferry submit`` of a Sweep: the trials as PyTorchJobs on the cluster ``connect()``
    gives, with ``--set``/``--workers`` applied to the sweep's job and ``-n`` placing them;
    ``dry_run``: client prints the trials' manifests (nothing sent), server has the API server
    judge each (nothing stored)."""
    from ferry import settings
    from ferry.cli._util import in_namespace, target_namespace
    from ferry.cli.local import as_asked
    from ferry.local import LocalStore, apply_overrides
    from ferry.sweep._cluster import cluster_launcher
    from ferry.sweep._search import optuna

    optuna()
    if workers is not None and "workers" in sweep.space:
        raise SpecError(f"--workers: sweep {sweep.name} searches workers; each trial sets it, so leave out --workers "
                        "(or take workers out of the sweep's space)")
    cluster = None if dry_run is DryRun.client else connect()
    # where the job goes is decided before the overrides, which spell out every field of it
    target = target_namespace(sweep.job, namespace, cluster.namespace if cluster is not None else None)
    sweep = as_asked(sweep, target, sets)
    if workers is not None:
        sweep = sweep.replace(job=in_namespace(apply_overrides(sweep.job, (), workers), target))
    if dry_run is not None:
        _dry_run(sweep, cluster, tracking_uri, force_conflicts)
        return
    uri = settings.MLFLOW_TRACKING_URI.get()
    if not uri:
        raise ConfigError("a sweep on a cluster reads each trial's result from MLflow: set MLFLOW_TRACKING_URI to the "
                          "tracking server as this machine reaches it (e.g. kubectl port-forward svc/ferry-mlflow "
                          "5000 → http://127.0.0.1:5000)")
    from ferry.cli.models import registry_client

    registry_client(fail_fast=False)  # out of reach: exit 10 now, not after the first trial
    with cluster:
        launcher = cluster_launcher(cluster, tracking_uri=tracking_uri, poll_s=poll_s, say=_stderr().print,
                                    force_conflicts=force_conflicts)
        _drive(sweep, LocalStore.default(), uri, launcher, register=False)


def _dry_run(sweep: Any, cluster: Any, tracking_uri: str | None, force_conflicts: bool) -> None:
    """Each planned trial of ``sweep`` as ``ferry render`` plans it: printed (``cluster`` None:
    a client dry run), or judged by the API server, which stores nothing."""
    from ferry.kube import plan_submission, tracking_configmap
    from ferry.render import dump_yaml
    from ferry.sweep._render import planned_trials
    from ferry.sweep._trials import trial_job, with_trial
    from ferry.validate import find_crd_dir, validate_manifests

    trials = []
    for number, values in enumerate(planned_trials(sweep)):
        job = trial_job(sweep, values, number)
        submission, manifest = plan_submission(job)
        trials.append((job, submission, with_trial(manifest, sweep, number)))
    validate_manifests([(f"{sweep.name}/trial-{n}/{m['kind'].lower()}.yaml", m) for n, (_, _, m) in enumerate(trials)],
                       find_crd_dir())
    err = _stderr()
    if cluster is None:
        config = [tracking_configmap(sweep.job, sweep.job.namespace, tracking_uri)] if tracking_uri is not None else []
        _stdout().file.write(dump_yaml(config + [manifest for _, _, manifest in trials]))
        err.print(f"dry run (client): sweep {sweep.name}, {len(trials)} planned trial(s); nothing sent")
        return
    from ferry.kube import submit

    with cluster:
        for job, submission, manifest in trials:
            done = submit(cluster, job, manifest, submission, dry_run=True, replace=True, force_conflicts=force_conflicts,
                          tracking_uri=tracking_uri, say=err.print)
            for item in done.applied:
                err.print(f"accepted (dry run, server): {item}")
    _stdout().print(f"dry run: the API server accepts the {len(trials)} planned trial(s) of sweep {sweep.name}; "
                    "nothing was stored")


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
