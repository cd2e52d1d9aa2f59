"""Running a Sweep: at most ``parallel`` trials at once, each one submission of the job, tracked
as a child of the sweep's parent run; the sampler proposes the next trial as each one ends, and
the pruner stops a trial whose reported metric falls behind. Where a trial runs is the
launcher's business: here through the local executor (``ferry sweep``), or as PyTorchJobs on a
cluster (``ferry submit`` of a Sweep). The study (Optuna's, in the local store) and the parent
run are found again by the sweep's name, so a sweep stopped with Ctrl-C continues where it
stopped: finished trials stay recorded, interrupted ones are marked failed and run again."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from ferry.errors import ConfigError
from ferry.spec._sweep import Sweep
from ferry.sweep import _search
from ferry.sweep._trials import record_search, trial_env, trial_job

@dataclass
class TrialRecord:
    number: int
    values: dict[str, Any]
    state: str = "queued"
    value: float | None = None  # the objective
    run_id: str | None = None
    reports: int = 0
    detail: str = ""


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None
    registered: str | None = None  # "name/version"
    interrupted: bool = False


class _Trial:
    """One running trial: the job in a thread, its run's metric watched for pruning."""

    def __init__(self, runner: SweepRunner, optuna_trial: Any, record: TrialRecord):
        self.runner, self.ot, self.record = runner, optuna_trial, record
        self.stop = threading.Event()
        self.pruned = False

    def run(self) -> TrialRecord:
        from ferry._submission import new_submission_id

        r, sweep = self.runner, self.runner.sweep
        job = trial_job(sweep, self.record.values, self.record.number)
        submission = new_submission_id()
        self.record.state = "running"
        watcher = threading.Thread(target=self._watch, args=(submission,), daemon=True)
        watcher.start()
        failure = r.launcher(job, submission, trial_env(sweep, self.record.number), self.stop)
        self.stop.set()
        watcher.join(timeout=10)
        run = self._run(submission)
        self.record.run_id = run.info.run_id if run is not None else None
        if self.pruned:
            self.record.state, self.record.detail = "pruned", f"stopped after {self.record.reports} report(s)"
        elif r.interrupted.is_set():
            self.record.state = "stopped"
        elif failure is not None:
            self.record.state, self.record.detail = "failed", failure
        else:
            value = run.data.metrics.get(sweep.objective.metric) if run is not None else None
            if not _search.finite(value):
                self.record.state = "failed"
                self.record.detail = f"the job logged no {sweep.objective.metric!r}"
            else:
                self.record.state, self.record.value = "finished", float(value)
        return self.record

    def _run(self, submission: str) -> Any:
        from ferry.runtime import submission_run

        return submission_run(self.runner.client, self.runner.sweep.experiment, submission)

    def _watch(self, submission: str) -> None:
        """Report the watched metric to the study as the run logs it; stop the job when the
        pruner says so."""
        sweep = self.runner.sweep
        if sweep.pruning is None:
            return
        metric = sweep.pruning.report or sweep.objective.metric
        run_id = None
        while not self.stop.wait(self.runner.poll_s):
            if run_id is None:
                run = self._run(submission)
                run_id = run.info.run_id if run is not None else None
                if run_id is None:
                    continue
            history = self.runner.client.get_metric_history(run_id, metric)
            for point in history[self.record.reports:]:
                self.record.reports += 1
                self.ot.report(float(point.value), self.record.reports)
                if self.ot.should_prune():
                    self.pruned = True
                    self.stop.set()
                    return


# (job, submission, extra env, stop event) -> None when the job succeeded, else why it failed
Launcher = Callable[[Any, str, "dict[str, str]", threading.Event], "str | None"]


def local_launcher(store: Any, tracking_uri: str, workdir: Any = None) -> Launcher:
    """Trials through the local executor, on this machine."""

    def launch(job: Any, submission: str, env: dict[str, str], stop: threading.Event) -> str | None:
        from ferry.local import run_job

        result = run_job(job, store=store, workdir=workdir, submission_id=submission, tracking_uri=tracking_uri,
                         extra_env=env, stop=stop, echo=False)  # the trials' output: in their log files
        if result.exit_code == 0:
            return None
        where = f"; its log: {result.run_dir / (result.failed_replica + '.log')}" if result.failed_replica else ""
        return f"exit code {result.exit_code}{where}"

    return launch


class SweepRunner:
    def __init__(self, sweep: Sweep, *, store: Any, tracking_uri: str, launcher: Launcher,
                 on_change: Callable[[SweepResult], None] = lambda result: None, poll_s: float = 0.5):
        from mlflow import MlflowClient

        self.sweep, self.store, self.tracking_uri, self.launcher = sweep, store, tracking_uri, launcher
        self.on_change, self.poll_s = on_change, poll_s
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.interrupted = threading.Event()
        self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.sweep.experiment)
        return exp.experiment_id if exp is not None else self.client.create_experiment(self.sweep.experiment)

    def run(self) -> SweepResult:
        from ferry.runtime import sweep_parent

        op = _search.optuna()
        sweep = self.sweep
        parent = sweep_parent(self.client, self.experiment_id, sweep.name,
                              describe=lambda run_id: record_search(self.client, run_id, sweep))
        folder = self.store.home / "sweeps"
        folder.mkdir(parents=True, exist_ok=True)
        study = _search.study(sweep, f"sqlite:///{folder / (sweep.name + '.db')}")
        result = SweepResult(sweep.name, parent)
        for ft in study.trials:  # the finished trials of an earlier session
            if ft.state.is_finished():
                state = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed"}.get(ft.state.name, "failed")
                result.trials.append(TrialRecord(ft.number, dict(ft.params), state, ft.value,
                                                 ft.user_attrs.get("run_id"), detail="earlier session"))
        done = sum(1 for t in result.trials if t.state in ("finished", "pruned"))
        remaining = max(0, sweep.trials - done)
        self.on_change(result)
        running: dict[Future[TrialRecord], _Trial] = {}
        problem: str | None = None
        with ThreadPoolExecutor(max_workers=sweep.parallel, thread_name_prefix="ferry-trial") as pool:
            try:
                while remaining > 0 or running:
                    while remaining > 0 and len(running) < sweep.parallel and not self.interrupted.is_set():
                        ot = study.ask()
                        record = TrialRecord(ot.number, _search.suggest(ot, sweep))
                        result.trials.append(record)
                        trial = _Trial(self, ot, record)
                        running[pool.submit(trial.run)] = trial
                        remaining -= 1
                        self.on_change(result)
                    if not running:
                        break
                    finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        trial = running.pop(future)
                        self._tell(study, op, trial, future)
                        problem = problem or self._metric_problem(result)
                    if problem:
                        self._stop(study, op, running)
                        break
                    self.on_change(result)
            except KeyboardInterrupt:
                self._stop(study, op, running)
                result.interrupted = True
                self.on_change(result)
        if problem:
            raise ConfigError(problem)
        result.best = self._best(result)
        self.on_change(result)
        return result

    def _tell(self, study: Any, op: Any, trial: _Trial, future: Future[TrialRecord]) -> None:
        error = future.exception()
        record = trial.record
        if error is not None:
            record.state, record.detail = "failed", f"{type(error).__name__}: {error}"
        if record.run_id:
            trial.ot.set_user_attr("run_id", record.run_id)
        if record.state == "finished":
            study.tell(trial.ot, record.value)
        elif record.state == "pruned":
            study.tell(trial.ot, state=op.trial.TrialState.PRUNED)
        else:  # failed, or stopped by Ctrl-C: run again when the sweep continues
            study.tell(trial.ot, state=op.trial.TrialState.FAIL)

    def _stop(self, study: Any, op: Any, running: dict[Future[TrialRecord], _Trial]) -> None:
        """Stop the running trials' jobs and record them as failed (they run again on a re-run)."""
        self.interrupted.set()
        for trial in running.values():
            trial.stop.set()
        for future, trial in list(running.items()):
            future.exception()  # waits until the job has stopped
            self._tell(study, op, trial, future)
        running.clear()

    def _metric_problem(self, result: SweepResult) -> str | None:
        """A metric the job never logs fails every trial: stop at the first trial that ran to the
        end without it, rather than spending every trial on it."""
        missing = [t for t in result.trials if t.state == "failed" and t.detail.startswith("the job logged no")]
        if missing and not any(t.state in ("finished", "pruned") for t in result.trials):
            return (f"trial {missing[0].number} ran to the end but its run has no metric {self.sweep.objective.metric!r}: "
                    "the objective must be a metric the job logs (tracker.log_metrics)")
        return None

    def _best(self, result: SweepResult) -> TrialRecord | None:
        scored = [t for t in result.trials if t.state == "finished" and t.value is not None]
        if not scored:
            return None
        best = scored[0]
        for trial in scored[1:]:
            if _search.better(self.sweep, trial.value, best.value):  # type: ignore[arg-type]
                best = trial
        return best

