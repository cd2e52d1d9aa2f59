"""The local executor: run a TrainingJob's PyTorchJob on this machine, no cluster needed.

It renders the job through the same code path as ``ferry render`` and starts every replica
with exactly the environment the training operator would inject.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferry import settings
from ferry._submission import new_submission_id, with_submission
from ferry.errors import ConfigError, SpecError
from ferry.local._executor import JobResult, LocalExecutor
from ferry.local._plan import Replica, free_port, local_path, operator_env, plan
from ferry.local._store import LocalStore, tracking_env
from ferry.spec import TrainingJob

__all__ = [
    "JobResult",
    "LocalExecutor",
    "LocalStore",
    "Replica",
    "apply_overrides",
    "free_port",
    "operator_env",
    "plan",
    "run_job",
    "tracking_env",
]


def _parse_value(raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    return raw


def apply_overrides(job: TrainingJob, sets: Sequence[str] = (), workers: int | None = None,
                    resume_from: str | None = None) -> TrainingJob:
    """``--set key=value`` (hyperparameters; the value takes the type of the current one),
    ``--workers N`` and ``--resume-from X``, validated like any spec: the result is a new TrainingJob."""
    hparams = dict(job.hyperparameters)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key=value, e.g. --set lr=0.01")
        if key not in hparams:
            known = ", ".join(sorted(hparams)) or "none"
            raise SpecError(f"--set {key}: {job.name} has no hyperparameter {key!r}; known: {known}")
        try:
            hparams[key] = _parse_value(raw, hparams[key])
        except ValueError as exc:
            raise SpecError(f"--set {key}={raw!r}: {exc}; {key} is a {type(hparams[key]).__name__}") from None
    update: dict[str, Any] = {"hyperparameters": hparams}
    if workers is not None:
        update["workers"] = workers
    if resume_from is not None:
        update["resume_from"] = resume_from
    return job.replace(**update)


def _git_commit(workdir: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def run_job(job: TrainingJob, *, store: LocalStore | None = None, workdir: Path | None = None,
            console: Any = None, progress: bool = False, submission_id: str | None = None,
            tracking_uri: str | None = None, extra_env: dict[str, str] | None = None,
            stop: Any = None, echo: bool = True, target: str | None = None) -> JobResult:
    """Run ``job`` locally to completion as one new submission; returns its outcome (never
    raises for a failed job; a ``resume_from`` that names nothing is a ConfigError before
    anything starts). Replicas track to ``tracking_uri`` when given, else as ``tracking_env`` says;
    ``extra_env`` is added to every replica's environment (a sweep's trial), and setting ``stop``
    (a threading.Event) stops the job as SIGTERM would; ``echo=False`` keeps the replicas'
    output in their log files only. ``target`` (else the job's, else ``$FERRY_TARGET``): run the
    replicas as a PyTorchJob's or as a TrainJob's, with the environment each launcher gives."""
    from ferry.render import render_spec

    store = store or LocalStore.default()
    workdir = (workdir or Path.cwd()).resolve()
    submission_id = submission_id or new_submission_id()
    (rendered,) = render_spec(job, target=target)
    manifest = with_submission(rendered.doc, submission_id)
    if job.resume_from is not None:
        _check_resume(job, manifest, store, tracking_uri or embedded_tracking_uri(store))
    local_env = tracking_env(store)
    if tracking_uri and tracking_uri != local_env["MLFLOW_TRACKING_URI"]:
        local_env = {"MLFLOW_TRACKING_URI": tracking_uri}
    if commit := _git_commit(workdir):
        local_env["FERRY_GIT_COMMIT"] = commit
    local_env.update(extra_env or {})
    bar = None
    on_progress = None
    if progress and console is not None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=console, transient=True)
        task = bar.add_task(job.name, total=None, metrics="")

        def on_progress(step: int, total: int, metrics: str) -> None:
            bar.update(task, completed=step, total=total, metrics=metrics)

    executor = LocalExecutor(manifest, submission_id=submission_id, run_dir=store.run_dir(job.name, submission_id),
                             local_env=local_env, volumes_dir=store.volumes, workdir=workdir, console=console,
                             on_progress=on_progress, stop=stop, echo=echo)
    if bar is not None:
        with bar:
            return executor.run()
    return executor.run()


def _check_resume(job: TrainingJob, manifest: dict[str, Any], store: LocalStore, tracking_uri: str) -> None:
    """Resolve ``job.resume_from`` as the replicas will (paths under a PVC mount map to the
    local store), so a reference to nothing fails here, before any process starts."""
    from ferry.runtime import ResumeError, resolve_resume

    assert job.resume_from is not None and job.checkpointing is not None  # the spec enforces both
    root = local_path(manifest, job.checkpointing.uri, store.volumes)
    client = None
    if job.resume_from.startswith("runs:/"):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
    try:
        resolve_resume(local_path(manifest, job.resume_from, store.volumes), root, client=client)
    except ResumeError as exc:
        raise ConfigError(f"{exc}; list a job's submissions with: ls {root}") from exc


def embedded_tracking_uri(store: LocalStore | None = None) -> str:
    """The tracking URI local jobs use: $MLFLOW_TRACKING_URI, else the embedded store."""
    return settings.MLFLOW_TRACKING_URI.get() or (store or LocalStore.default()).tracking_uri
