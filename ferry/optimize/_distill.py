"""Distillation through a student TrainingJob: the same job runs here with the local executor
(as `ferry run` would) or on a cluster as a PyTorchJob; Ferry hands it the teacher's URI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferry.errors import ConfigError, OptimizationFailed
from ferry.spec import TrainingJob

TEACHER_PARAM = "teacher"


def load_student_job(path: str | Path, sets: Sequence[str] = ()) -> TrainingJob:
    """The one TrainingJob in ``path`` with ``sets`` (``key=value`` hyperparameter overrides)
    applied, checked to be a distillation job."""
    from ferry.local import apply_overrides
    from ferry.spec import load_specs

    jobs = [loaded.spec for loaded in load_specs([Path(path)], kinds=(TrainingJob,))]
    if len(jobs) != 1:
        raise ConfigError(f"--distill {path}: expected one TrainingJob, found {len(jobs)} "
                          f"({', '.join(j.name for j in jobs)})")
    job = jobs[0]
    if TEACHER_PARAM not in job.hyperparameters:
        raise ConfigError(f"--distill {path}: job {job.name!r} has no {TEACHER_PARAM!r} hyperparameter; a student job "
                          f"reads the teacher's model URI from it (see jobs/distill/job.py)")
    return apply_overrides(job, sets)


def train_student(job: TrainingJob, teacher_uri: str, register_as: str, client: Any, *,
                  console: Any = None) -> tuple[str, str]:
    """Run the student job to completion with ``teacher`` set to ``teacher_uri``, registering
    its model as a new version of ``register_as`` (the teacher's model: a candidate like any
    other). Returns (version, run id)."""
    from ferry.local import apply_overrides, run_job
    from ferry.runtime import REGISTERED_TAG, submission_run
    from ferry.spec import Tracking

    student = apply_overrides(job, [f"{TEACHER_PARAM}={teacher_uri}"])
    tracking = (student.tracking or Tracking()).model_copy(update={"register_as": register_as})
    student = student.model_copy(update={"tracking": tracking})
    result = run_job(student, console=console, tracking_uri=client.tracking_uri)
    if result.exit_code != 0:
        tail = "\n".join(result.last_lines[-5:])
        raise OptimizationFailed(f"--distill: student job {job.name!r} failed (exit {result.exit_code}); "
                                 f"logs in {result.run_dir}\n{tail}")
    run = submission_run(client, student.experiment, result.submission_id)
    registered = run.data.tags.get(REGISTERED_TAG) if run is not None else None
    if not registered:
        raise OptimizationFailed(f"--distill: student job {job.name!r} finished but registered no model version; "
                                 "its script must call Tracker.log_model")
    return registered.rpartition("/")[2], run.info.run_id
