"""What runs inside every replica: distributed setup from the operator's environment,
rank-0 MLflow tracking (one run per submission), and atomic checkpoints (local or S3).

    ctx = ferry.runtime.init()
    with ferry.runtime.Tracker(is_primary=ctx.is_primary) as tracker:
        ...

Names resolve lazily (PEP 562): importing ``ferry.runtime`` (as the tracking sidecar's
``python -m`` does) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Checkpointer": "_checkpoint", "LocalStorage": "_storage", "S3Storage": "_storage", "storage_for": "_storage",
    "ResumeError": "_submission", "ResumeSource": "_submission", "resolve_resume": "_submission",
    "submission_dir": "_submission", "submission_id": "_submission",
    "Context": "_dist", "init": "_dist", "progress": "_dist", "shutdown": "_dist", "PROGRESS_PREFIX": "_dist",
    "SUBMISSION_TAG": "_tracking", "REGISTERED_TAG": "_tracking", "Tracker": "_tracking",
    "submission_run": "_tracking", "sweep_parent": "_tracking",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ferry.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ferry.runtime.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
