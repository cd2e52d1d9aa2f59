"""Checkpoints that survive a killed replica: atomic writes, a ``latest`` pointer, pruning.

Layout under the checkpoint URI (a local path or ``s3://bucket/prefix``)::

    ckpt-000000120.pt     one torch.save() archive per saved step
    latest                {"step": 120, "key": "ckpt-000000120.pt"}

A checkpoint is complete before ``latest`` names it (local: temp file + fsync + rename; S3:
a PUT is all-or-nothing), so a reader never sees a half-written checkpoint, and a crash during
a save leaves the previous one in force.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import torch

from ferry import settings

_CKPT = re.compile(r"^ckpt-(\d{9})\.pt$")
LATEST = "latest"


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def keys(self) -> list[str]: ...
    def delete(self, key: str) -> None: ...


class LocalStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def put(self, key: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / key)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*") if p.is_file()) if self.root.is_dir() else []

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


class S3Storage:
    """boto3 against AWS or any S3-compatible store: the endpoint and credentials come from the
    standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...)."""

    def __init__(self, bucket: str, prefix: str, client: Any = None):
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def keys(self) -> list[str]:
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        base = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            out += [obj["Key"][len(base):] for obj in page.get("Contents", [])]
        return sorted(k for k in out if "/" not in k)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def storage_for(uri: str, s3_client: Any = None) -> Storage:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path, client=s3_client)
    return LocalStorage(parsed.path if parsed.scheme == "file" else uri)


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
    restore the latest on every rank at start."""

    def __init__(self, uri: str, every_steps: int = 100, keep: int = 3, *, is_primary: bool = True,
                 storage: Storage | None = None):
        if every_steps < 1 or keep < 1:
            raise ValueError(f"every_steps and keep must be >= 1 (got {every_steps}, {keep})")
        self.uri, self.every_steps, self.keep, self.is_primary = uri, every_steps, keep, is_primary
        self.storage = storage or storage_for(uri)

    @classmethod
    def from_env(cls, *, is_primary: bool = True) -> Checkpointer | None:
        """The job's checkpointer from FERRY_CHECKPOINT_*; None when the job has none."""
        uri = settings.FERRY_CHECKPOINT_URI.get()
        if not uri:
            return None
        return cls(uri, int(settings.FERRY_CHECKPOINT_EVERY.get() or 100),
                   int(settings.FERRY_CHECKPOINT_KEEP.get() or 3), is_primary=is_primary)

    def latest_step(self) -> int | None:
        raw = self.storage.get(LATEST)
        return None if raw is None else int(json.loads(raw)["step"])

    def save(self, step: int, **objects: Any) -> str | None:
        """Write a checkpoint of ``objects`` (modules, optimizers, schedulers: anything with a
        ``state_dict``; other values as they are) at ``step``. Only the primary rank writes."""
        if not self.is_primary:
            return None
        state = {name: (obj.state_dict() if hasattr(obj, "state_dict") else obj) for name, obj in objects.items()}
        buffer = io.BytesIO()
        torch.save({"step": step, "state": state, "rng": _rng_state()}, buffer)
        key = f"ckpt-{step:09d}.pt"
        self.storage.put(key, buffer.getvalue())
        self.storage.put(LATEST, json.dumps({"step": step, "key": key}).encode())
        self._prune(keep_key=key)
        return key

    def maybe_save(self, step: int, **objects: Any) -> str | None:
        return self.save(step, **objects) if step % self.every_steps == 0 else None

    def restore(self, **objects: Any) -> int:
        """Load the latest checkpoint into ``objects`` (by the names they were saved under) and
        restore RNG state; returns its step, or 0 when there is none."""
        raw = self.storage.get(LATEST)
        if raw is None:
            return 0
        pointer = json.loads(raw)
        data = self.storage.get(pointer["key"])
        if data is None:
            raise RuntimeError(f"checkpoint {pointer['key']} named by {self.uri}/latest is missing")
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        for name, obj in objects.items():
            if name in ckpt["state"] and hasattr(obj, "load_state_dict"):
                obj.load_state_dict(ckpt["state"][name])
        _set_rng_state(ckpt["rng"])
        return int(ckpt["step"])

    def _prune(self, keep_key: str) -> None:
        ckpts = sorted(k for k in self.storage.keys() if _CKPT.match(k))
        for key in ckpts[: max(0, len(ckpts) - self.keep)]:
            if key != keep_key:
                self.storage.delete(key)
