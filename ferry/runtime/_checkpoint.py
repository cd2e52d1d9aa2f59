"""Checkpoints that survive a killed replica: atomic writes, a ``latest`` pointer, pruning.

Layout of one submission's folder, ``<Checkpointing.uri>/<submission>/`` (a local path or
``s3://bucket/prefix``; see ``_submission.py``)::

    ckpt-000000120.pt     one torch.save() archive per saved step (the newest ``keep``)
    latest                {"step": 120, "key": "ckpt-000000120.pt"}
    finished              written when the submission completed

A checkpoint is complete before ``latest`` names it (local: temp file + fsync + rename; S3:
a PUT is all-or-nothing), so a reader never sees a half-written checkpoint, and a crash during
a save leaves the previous one in force.

Saving is split in two: the state is serialized at the step it belongs to, in the training
thread (a few milliseconds), and written (fsync or upload, pruning) by one background thread
while training goes on; at most one write is in flight, and the next save, ``restore``,
``latest_step``, ``finish`` and ``flush`` wait for it and raise its error, if any. A process
that exits normally finishes its last write; one that is killed loses at most the checkpoint
still being written, and the one before it stays in force.
"""

from __future__ import annotations

import io
import json
import random
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ferry import settings
from ferry.runtime._storage import Storage, storage_for
from ferry.runtime._submission import FINISHED, LATEST, resolve_resume, submission_dir, submission_id

_CKPT = re.compile(r"^ckpt-(\d{9})\.pt$")


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.copy()), "pos": pos, "has_gauss": has_gauss, "cached": cached},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy(), np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Save every ``every_steps`` steps (primary rank only), keep the newest ``keep``, and
    restore the latest on every rank at start.

    ``uri`` is this submission's own folder. ``resume_from`` is another folder to start from
    when this one holds no checkpoint yet (an explicit resume); a restart inside the
    submission always continues from its own latest checkpoint."""

    def __init__(self, uri: str, every_steps: int = 100, keep: int = 3, *, is_primary: bool = True,
                 storage: Storage | None = None, resume_from: str | None = None):
        if every_steps < 1 or keep < 1:
            raise ValueError(f"every_steps and keep must be >= 1 (got {every_steps}, {keep})")
        self.uri, self.every_steps, self.keep, self.is_primary = uri, every_steps, keep, is_primary
        self.storage = storage or storage_for(uri)
        self.resume_from = resume_from
        self.restored_from: str | None = None  # the folder restore() loaded from, if any
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    @classmethod
    def from_env(cls, *, is_primary: bool = True) -> Checkpointer | None:
        """The job's checkpointer from FERRY_CHECKPOINT_* (None when the job has none): this
        submission's folder under the job's checkpoint URI, and FERRY_RESUME_FROM resolved."""
        root = settings.FERRY_CHECKPOINT_URI.get()
        if not root:
            return None
        resume = settings.FERRY_RESUME_FROM.get()
        source = resolve_resume(resume, root).checkpoint_dir if resume else None
        return cls(submission_dir(root, submission_id()), int(settings.FERRY_CHECKPOINT_EVERY.get() or 100),
                   int(settings.FERRY_CHECKPOINT_KEEP.get() or 3), is_primary=is_primary, resume_from=source)

    def latest_step(self) -> int | None:
        self.flush()
        raw = self.storage.get(LATEST)
        return None if raw is None else int(json.loads(raw)["step"])

    def save(self, step: int, **objects: Any) -> str | None:
        """Write a checkpoint of ``objects`` (modules, optimizers, schedulers: anything with a
        ``state_dict``; other values as they are) at ``step``. Only the primary rank writes."""
        if not self.is_primary:
            return None
        self.flush()  # the previous checkpoint is complete before this one starts
        state = {name: (obj.state_dict() if hasattr(obj, "state_dict") else obj) for name, obj in objects.items()}
        buffer = io.BytesIO()
        torch.save({"step": step, "state": state, "rng": _rng_state()}, buffer)
        key = f"ckpt-{step:09d}.pt"
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-checkpoint")
        self._pending = self._writer.submit(self._write, step, key, buffer.getvalue())
        return key

    def _write(self, step: int, key: str, data: bytes) -> None:
        self.storage.put(key, data)
        self.storage.put(LATEST, json.dumps({"step": step, "key": key}).encode())
        self._prune(keep_key=key)

    def flush(self) -> None:
        """Wait for the checkpoint being written, if any; raises what its write raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def maybe_save(self, step: int, **objects: Any) -> str | None:
        return self.save(step, **objects) if step % self.every_steps == 0 else None

    def restore(self, **objects: Any) -> int:
        """Load the latest checkpoint into ``objects`` (by the names they were saved under) and
        restore RNG state; returns its step, or 0 when there is none. This submission's own
        checkpoints come first; ``resume_from`` is read only while it has none."""
        self.flush()
        storage, where = self.storage, self.uri
        raw = storage.get(LATEST)
        if raw is None and self.resume_from:
            storage, where = storage_for(self.resume_from), self.resume_from
            raw = storage.get(LATEST)
            if raw is None:
                raise RuntimeError(f"resume_from: {where} holds no checkpoint")
        if raw is None:
            return 0
        pointer = json.loads(raw)
        data = storage.get(pointer["key"])
        if data is None:
            raise RuntimeError(f"checkpoint {pointer['key']} named by {where}/{LATEST} is missing")
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        for name, obj in objects.items():
            if name in ckpt["state"] and hasattr(obj, "load_state_dict"):
                obj.load_state_dict(ckpt["state"][name])
        _set_rng_state(ckpt["rng"])
        self.restored_from = where
        return int(ckpt["step"])

    def finish(self, step: int, **objects: Any) -> None:
        """The submission completed at ``step``: save a last checkpoint of ``objects`` (unless
        the latest already is at ``step``), so another submission can ``resume_from`` the final
        state, and mark the folder finished: the same submission id seen again starts afresh
        in a new folder instead of continuing. Primary rank only."""
        if not self.is_primary:
            return
        if objects and self.latest_step() != step:
            self.save(step, **objects)
        self.flush()
        self.storage.put(FINISHED, json.dumps({"step": step, "time": time.time()}).encode())

    def _prune(self, keep_key: str) -> None:
        ckpts = sorted(k for k in self.storage.keys() if _CKPT.match(k))
        for key in ckpts[: max(0, len(ckpts) - self.keep)]:
            if key != keep_key:
                self.storage.delete(key)
