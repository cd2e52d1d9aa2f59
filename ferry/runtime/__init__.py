"""What runs inside every replica: distributed setup from the operator's environment,
rank-0 MLflow tracking (one run per submission), and atomic checkpoints (local or S3).

    ctx = ferry.runtime.init()
    with ferry.runtime.Tracker(is_primary=ctx.is_primary) as tracker:
        ...
"""

from ferry.runtime._checkpoint import Checkpointer, LocalStorage, S3Storage, storage_for
from ferry.runtime._dist import PROGRESS_PREFIX, Context, init, progress, shutdown
from ferry.runtime._tracking import SUBMISSION_TAG, Tracker

__all__ = [
    "PROGRESS_PREFIX",
    "SUBMISSION_TAG",
    "Checkpointer",
    "Context",
    "LocalStorage",
    "S3Storage",
    "Tracker",
    "init",
    "progress",
    "shutdown",
    "storage_for",
]
