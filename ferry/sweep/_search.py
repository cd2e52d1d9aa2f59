"""The search: Optuna's samplers and median pruner over a Sweep's space. Only ``ferry sweep``
imports Optuna (an optional dependency: ``pip install 'ferry[sweep]'``)."""

from __future__ import annotations

import math
from typing import Any

from ferry.errors import ConfigError
from ferry.spec._sweep import Choice, IntUniform, LogUniform, Sweep, Uniform


def optuna() -> Any:
    try:
        import optuna as module
    except ImportError as exc:
        raise ConfigError("sweeps need Optuna: pip install 'ferry[sweep]'") from exc
    module.logging.set_verbosity(module.logging.WARNING)
    return module


def grid(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination of the Choice values, in an order shuffled by the sweep's seed (the
    order the grid is run in). Optuna's GridSampler stops its study from inside ``tell``, which
    only an ``optimize`` loop allows; the grid is queued into the study instead."""
    import itertools
    import random

    keys = list(sweep.space)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(sweep.space[k].values for k in keys))]  # type: ignore[union-attr]
    random.Random(sweep.seed).shuffle(combos)
    return combos


def queue_grid(study: Any, sweep: Sweep) -> None:
    """Queue the grid's combinations that have no finished, running or queued trial yet."""
    op = optuna()
    done = {tuple(sorted(t.params.items())) for t in study.trials
            if t.state in (op.trial.TrialState.COMPLETE, op.trial.TrialState.PRUNED, op.trial.TrialState.RUNNING)}
    waiting = {tuple(sorted(t.params.items())) for t in study.trials if t.state == op.trial.TrialState.WAITING}
    for combo in grid(sweep):
        key = tuple(sorted(combo.items()))
        if key not in done and key not in waiting:
            study.enqueue_trial(combo)


def sampler_for(sweep: Sweep) -> Any:
    op = optuna()
    if sweep.sampler in ("grid", "random"):  # a grid's values are queued (see queue_grid)
        return op.samplers.RandomSampler(seed=sweep.seed)
    return op.samplers.TPESampler(seed=sweep.seed, n_startup_trials=min(4, sweep.trials))


def pruner_for(sweep: Sweep) -> Any:
    op = optuna()
    if sweep.pruning is None:
        return op.pruners.NopPruner()
    return op.pruners.MedianPruner(n_startup_trials=sweep.pruning.startup_trials,
                                   n_warmup_steps=sweep.pruning.warmup_steps)


def study(sweep: Sweep, storage: str) -> Any:
    """The sweep's study, created or (same name, same storage) continued."""
    op = optuna()
    study = op.create_study(study_name=sweep.name, storage=storage, load_if_exists=True,
                            direction="maximize" if sweep.objective.goal == "max" else "minimize",
                            sampler=sampler_for(sweep), pruner=pruner_for(sweep))
    if sweep.sampler == "grid":
        queue_grid(study, sweep)
    return study


def suggest(trial: Any, sweep: Sweep) -> dict[str, Any]:
    """The trial's values, one per hyperparameter of the space."""
    values: dict[str, Any] = {}
    for key, dist in sweep.space.items():
        if isinstance(dist, Choice):
            values[key] = trial.suggest_categorical(key, list(dist.values))
        elif isinstance(dist, IntUniform):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step)
        elif isinstance(dist, LogUniform):
            values[key] = trial.suggest_float(key, dist.low, dist.high, log=True)
        elif isinstance(dist, Uniform):
            values[key] = trial.suggest_float(key, dist.low, dist.high)
    return values


def better(sweep: Sweep, a: float, b: float) -> bool:
    return a > b if sweep.objective.goal == "max" else a < b


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
