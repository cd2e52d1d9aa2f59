"""How a job is run and scheduled: elasticity, restarts and deadlines, gang scheduling."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from ferry import _k8s
from ferry.spec._base import Spec

__all__ = ["Elastic", "GangScheduling", "RunPolicy"]


def _non_negative(v: int | None, field: str) -> int | None:
    if v is not None and v < 0:
        raise ValueError(f"{field} must be >= 0 (got {v})")
    return v


class Elastic(Spec):
    """Elastic training (torchrun rendezvous): the Worker set may shrink to ``min_workers`` and
    grow to ``max_workers``; a failed worker group is restarted up to ``max_restarts`` times."""

    min_workers: int
    max_workers: int
    max_restarts: int = 3
    rdzv_backend: Literal["c10d", "etcd", "etcd-v2"] = "c10d"

    @field_validator("min_workers")
    @classmethod
    def _min(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v}); an elastic job needs at least one worker")
        return v

    @field_validator("max_restarts")
    @classmethod
    def _restarts(cls, v: int) -> int:
        return _non_negative(v, "max_restarts") or 0

    @model_validator(mode="after")
    def _range(self) -> Elastic:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must be <= max_workers ({self.max_workers}); "
                "swap them or raise max_workers"
            )
        return self


class RunPolicy(Spec):
    """The PyTorchJob ``runPolicy``: retries, deadlines, clean-up."""

    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"

    @field_validator("backoff_limit", "ttl_seconds_after_finished")
    @classmethod
    def _nonneg(cls, v: int | None, info) -> int | None:  # type: ignore[no-untyped-def]
        return _non_negative(v, info.field_name)

    @field_validator("active_deadline_seconds")
    @classmethod
    def _deadline(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1 second (got {v}); leave it None for no deadline")
        return v


class GangScheduling(Spec):
    """Gang scheduling through Volcano or scheduler-plugins (``runPolicy.schedulingPolicy``):
    all replicas start together or none do. ``min_available`` defaults to every replica."""

    min_available: int | None = None
    priority_class: str | None = None
    queue: str | None = None
    schedule_timeout_seconds: int | None = None

    @field_validator("min_available", "schedule_timeout_seconds")
    @classmethod
    def _positive(cls, v: int | None, info) -> int | None:  # type: ignore[no-untyped-def]
        if v is not None and v < 1:
            raise ValueError(f"{info.field_name} must be >= 1 (got {v})")
        return v

    @field_validator("priority_class")
    @classmethod
    def _priority(cls, v: str | None) -> str | None:
        if v is not None and (problem := _k8s.dns1123_problem(v, subdomain=True)):
            raise ValueError(f"PriorityClass name {problem} (got {v!r})")
        return v
