"""``Promotion``: the gates a model version must pass to move into an environment."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from ferry import _k8s
from ferry.spec._base import Spec
from ferry.spec._deploy import Deployment

__all__ = ["Promotion", "alias_for"]


def alias_for(env: str) -> str:
    """The MLflow alias an environment's current version holds: ``champion`` for production,
    the environment's own name otherwise (``staging``)."""
    return "champion" if env == "production" else env


class Promotion(Spec):
    """Gates for promoting versions of ``model`` through ``environments`` (in that order).

    - ``metric``/``mode``: the candidate's run metric and which way is better;
    - ``min_value``: an absolute floor (or ceiling, for ``mode="min"``);
    - ``must_beat``: ``"current"`` compares with the version now holding the target
      environment's alias, another alias name compares with that alias, None skips it; the
      candidate passes when it is at least as good, by the margin ``by``;
    - ``max_latency_ms``: p50 latency of one row, measured by loading the candidate here;
    - ``deployment``: how the GitOps manifest serves it (defaults from the model's name);
      ``canary_percent`` sends that share to the new version when the environment already
      serves one (serverless deployments).
    """

    model: str
    metric: str = "test_accuracy"
    mode: Literal["max", "min"] = "max"
    min_value: float | None = None
    must_beat: str | None = "current"
    by: float = 0.0
    max_latency_ms: float | None = None
    environments: tuple[str, ...] = ("staging", "production")
    deployment: Deployment | None = None
    canary_percent: int | None = None

    @field_validator("environments")
    @classmethod
    def _envs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one environment, e.g. environments=('staging', 'production')")
        for env in v:
            if problem := _k8s.dns1123_problem(env):
                raise ValueError(f"environment {env!r}: {problem}")
        if len(set(v)) != len(v):
            raise ValueError(f"environments repeat a name: {list(v)}")
        return v

    @field_validator("by")
    @classmethod
    def _by(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0 (got {v}); it is how much better the candidate must be")
        return v

    @field_validator("max_latency_ms")
    @classmethod
    def _latency(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"must be > 0 (got {v})")
        return v

    @field_validator("canary_percent")
    @classmethod
    def _canary(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 99:
            raise ValueError(f"must be 1..99 (got {v})")
        return v

    @model_validator(mode="after")
    def _deployment_model(self) -> Promotion:
        if self.canary_percent is not None and self.deployment is not None and self.deployment.mode == "standard":
            raise ValueError("canary_percent needs a serverless deployment (standard mode has no traffic split)")
        return self
