"""The promotion history and the per-environment lock, both kept in the MLflow registry.

History: registered-model tags ``ferry.history.<env>.<seq>`` (JSON, append-only: a sequence
number is taken only under the environment's lock, and entries are never rewritten).

Lock: MLflow offers no compare-and-swap on aliases; the one atomic operation it has is that a
registered model's name is unique. Creating ``ferry-lock--<model>--<env>`` takes the lock,
"already exists" means another promotion holds it, deleting it releases it. A lock older than
its TTL (a crashed promoter) is broken.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from ferry.errors import PromotionConflict

LOCK_PREFIX = "ferry-lock--"
HISTORY_PREFIX = "ferry.history."


@dataclass
class GateResult:
    gate: str
    passed: bool
    detail: str


@dataclass
class HistoryEntry:
    env: str
    alias: str
    action: str  # "promote" | "rollback"
    from_version: str | None
    to_version: str
    actor: str
    at: float
    forced: bool = False
    gates: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "seq"}, sort_keys=True, separators=(",", ":"))


def read_history(client: Any, name: str, env: str | None = None) -> list[HistoryEntry]:
    tags = client.get_registered_model(name).tags
    entries = []
    for key, value in tags.items():
        if not key.startswith(HISTORY_PREFIX):
            continue
        entry_env, _, seq = key[len(HISTORY_PREFIX):].rpartition(".")
        if env is not None and entry_env != env:
            continue
        entries.append(HistoryEntry(**json.loads(value), seq=int(seq)))
    return sorted(entries, key=lambda e: (e.at, e.seq))


def append_history(client: Any, name: str, entry: HistoryEntry) -> HistoryEntry:
    """Append under the environment's lock (the caller holds it)."""
    existing = read_history(client, name, entry.env)
    entry.seq = (max((e.seq for e in existing), default=0)) + 1
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{entry.env}.{entry.seq:06d}", entry.to_json())
    return entry


class EnvLock:
    def __init__(self, client: Any, model: str, env: str, holder: str, ttl_s: float = 300.0):
        self.client, self.model, self.env, self.holder, self.ttl_s = client, model, env, holder, ttl_s
        self.name = f"{LOCK_PREFIX}{model}--{env}"
        self.token = uuid.uuid4().hex

    def __enter__(self) -> EnvLock:
        from mlflow.exceptions import MlflowException

        broken = False
        for _ in range(5):
            try:
                self.client.create_registered_model(self.name, tags={"holder": self.holder, "token": self.token, "since": str(time.time())},
                                                    description=f"Ferry promotion lock for {self.model} in {self.env}")
                return self
            except MlflowException as exc:
                if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
                    raise
                try:
                    held = self.client.get_registered_model(self.name).tags
                except MlflowException as gone:
                    if "RESOURCE_DOES_NOT_EXIST" not in str(gone.error_code):
                        raise
                    continue  # released between our create and this read: try to take it again
                age = time.time() - float(held.get("since", "0"))
                if not broken and age > self.ttl_s:
                    broken = True
                    self.client.delete_registered_model(self.name)  # a crashed promoter's lock
                    continue
                raise PromotionConflict(
                    f"another promotion of {self.model} to {self.env} is in progress (held by {held.get('holder', '?')} "
                    f"for {age:.0f}s); nothing was changed; try again when it is done"
                ) from exc
        raise PromotionConflict(f"another promotion of {self.model} to {self.env} is in progress (the lock changed "
                                "hands while it was being taken); nothing was changed; try again when it is done")

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.client.get_registered_model(self.name).tags.get("token") == self.token:
                self.client.delete_registered_model(self.name)
        except Exception:  # noqa: BLE001 - already gone (broken as stale): nothing to release
            pass
