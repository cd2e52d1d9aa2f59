"""``Sweep``: a hyperparameter search over one TrainingJob, tracked as one MLflow parent run with
a child run per trial.

    Sweep(name="digits-lr", job=job, objective=Objective(metric="test_accuracy", goal="max"),
          space={"lr": LogUniform(1e-4, 1e-1), "batch_size": Choice([32, 64]), "workers": IntUniform(1, 2)},
          trials=8, parallel=2, sampler="tpe", pruning=MedianPruning(warmup_steps=2))

The space names the job's hyperparameters (and ``workers``); each trial is one submission of
the job with the trial's values. The search itself is Optuna's (samplers and the median pruner).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ferry import _k8s
from ferry.spec._base import Spec
from ferry.spec._job import TrainingJob

__all__ = ["Choice", "IntUniform", "LogUniform", "MedianPruning", "Objective", "Sweep", "Uniform"]

Scalar = bool | int | float | str


class Choice(Spec):
    """One of ``values`` (every value for the grid sampler)."""

    kind: Literal["choice"] = "choice"
    values: tuple[Scalar, ...]

    def __init__(self, values: Any = None, /, **data: Any) -> None:
        super().__init__(**({"values": values} if values is not None else {}), **data)

    @field_validator("values")
    @classmethod
    def _values(cls, v: tuple[Scalar, ...]) -> tuple[Scalar, ...]:
        if not v:
            raise ValueError("give at least one value, e.g. Choice([32, 64])")
        if len(set(map(repr, v))) != len(v):
            raise ValueError(f"values repeat: {list(v)}")
        return v


class _Range(Spec):
    low: float
    high: float

    def __init__(self, low: Any = None, high: Any = None, /, **data: Any) -> None:
        given = {k: v for k, v in (("low", low), ("high", high)) if v is not None}
        super().__init__(**given, **data)

    @model_validator(mode="after")
    def _bounds(self) -> _Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"low must be < high, both finite (got {self.low}..{self.high})")
        return self


class Uniform(_Range):
    """A float drawn uniformly from [low, high]."""

    kind: Literal["uniform"] = "uniform"


class LogUniform(_Range):
    """A float drawn uniformly on a log scale from [low, high] (learning rates, weight decay)."""

    kind: Literal["loguniform"] = "loguniform"

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        if self.low <= 0:
            raise ValueError(f"low must be > 0 on a log scale (got {self.low})")
        return self


class IntUniform(_Range):
    """An integer drawn uniformly from [low, high], both included (``step`` apart)."""

    kind: Literal["intuniform"] = "intuniform"
    low: int  # type: ignore[assignment]
    high: int  # type: ignore[assignment]
    step: int = 1

    @field_validator("step")
    @classmethod
    def _step(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v})")
        return v


Distribution = Annotated[Union[Choice, Uniform, LogUniform, IntUniform], Field(discriminator="kind")]


class Objective(Spec):
    """What the sweep optimizes: the last value of ``metric`` on each trial's run."""

    metric: str
    goal: Literal["max", "min"] = "max"

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name the metric the job logs, e.g. metric='test_accuracy'")
        return v


class MedianPruning(Spec):
    """Stop a trial whose reported metric is worse than the median of earlier trials at the same
    step, once ``startup_trials`` trials have finished and after ``warmup_steps`` steps.
    ``report`` is the metric it watches while a trial runs (default: the objective's)."""

    startup_trials: int = 2
    warmup_steps: int = 1
    report: str | None = None

    @field_validator("startup_trials", "warmup_steps")
    @classmethod
    def _nonneg(cls, v: int, info: Any) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0 (got {v})")
        return v


class Sweep(Spec):
    """A search over ``space`` for the best ``objective`` of ``job``: ``trials`` trials, at most
    ``parallel`` at once, proposed by ``sampler`` (grid: every combination of Choice values)."""

    name: str
    job: TrainingJob
    space: dict[str, Distribution]
    objective: Objective
    trials: int = 8
    parallel: int = 1
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    pruning: MedianPruning | None = None
    seed: int | None = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if problem := _k8s.dns1035_problem(v, max_len=40):
            raise ValueError(f"{problem} (got {v!r}); it labels every trial's PyTorchJob, e.g. name='digits-lr'")
        return v

    @field_validator("trials", "parallel")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v < 1:
            what = "trial" if info.field_name == "trials" else "trial at a time"
            raise ValueError(f"must be >= 1 (got {v}); a sweep runs at least one {what}")
        return v

    @model_validator(mode="after")
    def _space(self) -> Sweep:
        if not self.space:
            raise ValueError("space is empty: name at least one hyperparameter to search, e.g. "
                             "space={'lr': LogUniform(1e-4, 1e-1)}")
        known = set(self.job.hyperparameters) | {"workers"}
        for key, dist in self.space.items():
            if key not in known:
                raise ValueError(f"space[{key!r}]: {self.job.name} has no hyperparameter {key!r}; "
                                 f"searchable: {', '.join(sorted(known))}")
            if key == "workers" and not isinstance(dist, (Choice, IntUniform)):
                raise ValueError("space['workers'] must be a Choice or an IntUniform (a count of pods)")
            if key == "workers" and isinstance(dist, IntUniform) and dist.low < 1:
                raise ValueError(f"space['workers'].low must be >= 1 (got {dist.low})")
        if self.sampler == "grid":
            if not all(isinstance(d, Choice) for d in self.space.values()):
                raise ValueError("sampler='grid' needs a Choice for every hyperparameter (a grid has no ranges)")
            size = math.prod(len(d.values) for d in self.space.values())  # type: ignore[union-attr]
            if self.trials > size:
                raise ValueError(f"trials={self.trials} exceeds the grid's {size} combinations; use trials={size}")
        if self.parallel > self.trials:
            raise ValueError(f"parallel ({self.parallel}) exceeds trials ({self.trials})")
        if self.job.tracking is None:
            raise ValueError("the job has no tracking: a sweep compares the trials' runs; give it tracking=Tracking(...)")
        return self

    @property
    def experiment(self) -> str:
        return self.job.experiment
