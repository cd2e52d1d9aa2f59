"""Inside a replica: which submission this is, where its checkpoints live, and what an
explicit ``resume_from`` points at (see ``ferry._submission`` for what a submission is).

Checkpoints of a job are laid out per submission under its ``Checkpointing.uri``::

    <uri>/<submission>/ckpt-000000120.pt, latest, finished
    <uri>/<submission>.2/...    the same id submitted again after <submission> finished

A folder with a ``finished`` marker belongs to a submission that completed: it is never
resumed by accident. The same id seen again (a rendered manifest applied again unchanged)
gets the next free folder, ``<submission>.2``, and starts from step 0.

No torch here: the tracking side reads these too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Callable

from ferry import settings

FINISHED = "finished"
LATEST = "latest"
CHECKPOINT_DIR_TAG = "ferry.checkpoint_dir"


def submission_id() -> str:
    """This replica's submission: ``FERRY_SUBMISSION_ID`` (set by ``ferry run``/``ferry submit``
    or read from the pod's label); a script started by hand falls back to ``<namespace>.<job>``."""
    return settings.FERRY_SUBMISSION_ID.get() or f"{settings.FERRY_NAMESPACE.get()}.{settings.FERRY_JOB_NAME.get() or 'job'}"


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _storage(uri: str) -> Any:
    from ferry.runtime._storage import storage_for

    return storage_for(uri)


def _generations(root: str, submission: str) -> Iterator[str]:
    """``<root>/<submission>``, then ``<root>/<submission>.2``, ``.3``, ..."""
    for n in itertools.count(1):
        yield _join(root, submission if n == 1 else f"{submission}.{n}")


def submission_dir(root: str, submission: str, storage: Callable[[str], Any] = _storage) -> str:
    """This submission's checkpoint folder under ``root``: ``<root>/<submission>``, or the
    next ``.N`` after it when earlier ones are marked finished."""
    return next(folder for folder in _generations(root, submission) if storage(folder).get(FINISHED) is None)


@dataclass(frozen=True)
class ResumeSource:
    """What ``resume_from`` names, resolved: the checkpoint folder to start from and, when
    known, the MLflow run that wrote it (for the lineage tags of the new run)."""

    ref: str
    checkpoint_dir: str
    run_id: str | None = None


class ResumeError(RuntimeError):
    """``resume_from`` names nothing that can be resumed."""


def resolve_resume(ref: str, checkpoint_root: str | None, *, client: Any = None,
                   storage: Callable[[str], Any] = _storage) -> ResumeSource:
    """Resolve ``ref`` (a submission id of this job, ``runs:/<id>`` or a checkpoint folder) to
    the folder holding its latest checkpoint. ``client`` (an MlflowClient) is needed for runs:/."""
    run_id = None
    if ref.startswith("runs:/"):
        run_id = ref[len("runs:/"):].strip("/")
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient()
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 - MlflowException (not found) or unreachable
            raise ResumeError(f"resume_from {ref}: no such MLflow run ({getattr(exc, 'message', exc)})") from exc
        folder = run.data.tags.get(CHECKPOINT_DIR_TAG)
        if not folder:
            raise ResumeError(f"resume_from {ref}: that run recorded no checkpoint folder (tag {CHECKPOINT_DIR_TAG}); "
                              "was it a Ferry job with checkpointing?")
    elif "/" in ref:
        folder = ref.rstrip("/")
    else:
        if not checkpoint_root:
            raise ResumeError(f"resume_from {ref!r} names a submission, but the job has no checkpointing")
        # The newest folder of that submission that holds a checkpoint (usually <root>/<ref>).
        folder = None
        for candidate in _generations(checkpoint_root, ref):
            if storage(candidate).get(LATEST) is None:
                break
            folder = candidate
        if folder is None:
            raise ResumeError(f"resume_from {ref!r}: no checkpoint of submission {ref} under {checkpoint_root}")
    if storage(folder).get(LATEST) is None:
        raise ResumeError(f"resume_from {ref}: {folder} holds no checkpoint (no '{LATEST}' file)")
    return ResumeSource(ref, folder, run_id)
