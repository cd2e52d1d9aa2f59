"""What a sweep leaves on its parent run: the best trial's values and metric, a comparison table
(markdown) and two plots (the metric per trial; parallel coordinates of the values, coloured by
the metric), and, with ``--register best``, the winner's model registered."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ferry.spec._sweep import Sweep
from ferry.sweep._local import SweepResult, TrialRecord


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def comparison_markdown(sweep: Sweep, result: SweepResult) -> str:
    keys = list(sweep.space)
    metric = sweep.objective.metric
    head = ["trial", "state", *keys, metric, "run"]
    lines = [f"# Sweep {sweep.name}: {sweep.objective.goal} {metric}", "",
             f"{len(result.trials)} trial(s), sampler {sweep.sampler}, pruning {'median' if sweep.pruning else 'off'}"
             + (f"; best: trial {result.best.number} ({metric} {_fmt(result.best.value)})" if result.best else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in sorted(result.trials, key=lambda t: t.number):
        mark = " **best**" if result.best is not None and t.number == result.best.number else ""
        lines.append("| " + " | ".join([str(t.number), t.state + mark, *[_fmt(t.values.get(k)) for k in keys],
                                        _fmt(t.value) if t.value is not None else "", t.run_id or ""]) + " |")
    return "\n".join(lines) + "\n"


def plots(sweep: Sweep, result: SweepResult, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [t for t in sorted(result.trials, key=lambda t: t.number) if t.value is not None]
    metric = sweep.objective.metric
    out = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t.number for t in scored], [t.value for t in scored], "o-", color="#4477aa")
    if result.best is not None:
        ax.plot([result.best.number], [result.best.value], "*", markersize=16, color="#ee6677", label="best")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{sweep.name}: {metric} per trial")
    fig.tight_layout()
    out.append(folder / "metric_per_trial.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    keys = list(sweep.space)
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(keys) + 2), 4))
    if scored:
        axes = keys + [metric]
        columns = [[_numeric(t.values.get(k) if k != metric else t.value, k, sweep) for t in scored] for k in axes]
        scaled = [_scale(col) for col in columns]
        values = [t.value for t in scored]
        low, high = min(values), max(values)
        cmap = plt.get_cmap("viridis")
        for i, _trial in enumerate(scored):
            shade = 0.5 if high == low else (values[i] - low) / (high - low)
            ax.plot(range(len(axes)), [col[i] for col in scaled], color=cmap(shade), alpha=0.8)
        ax.set_xticks(range(len(axes)))
        ax.set_xticklabels(axes)
        ax.set_yticks([])
    ax.set_title(f"{sweep.name}: parallel coordinates (colour: {metric})")
    fig.tight_layout()
    out.append(folder / "parallel_coordinates.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    return out


def _numeric(value: Any, key: str, sweep: Sweep) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        choices = list(getattr(sweep.space.get(key), "values", [value]))
        return float(choices.index(value)) if value in choices else 0.0
    return float(value)


def _scale(column: list[float]) -> list[float]:
    low, high = min(column), max(column)
    return [0.5 if high == low else (v - low) / (high - low) for v in column]


def finish(client: Any, sweep: Sweep, result: SweepResult, *, register: bool) -> None:
    """Record the outcome on the parent run; register the best trial's model when asked."""
    from mlflow.entities import Metric, Param

    best = result.best
    if best is not None:
        params = [Param(f"best.{k}", str(v)) for k, v in best.values.items()]
        try:
            client.log_batch(result.parent_run_id, params=params)
        except Exception:  # noqa: BLE001 - a continued sweep whose best did not change: params are immutable
            pass
        client.log_batch(result.parent_run_id, metrics=[Metric(f"best_{sweep.objective.metric}", best.value, 0, len(result.trials))])
        client.set_tag(result.parent_run_id, "ferry.sweep.best_trial", str(best.number))
        client.set_tag(result.parent_run_id, "ferry.sweep.best_run", best.run_id or "")
    with tempfile.TemporaryDirectory(prefix="ferry-sweep-") as tmp:
        folder = Path(tmp)
        (folder / "comparison.md").write_text(comparison_markdown(sweep, result))
        plots(sweep, result, folder)
        client.log_artifacts(result.parent_run_id, str(folder), artifact_path="comparison")
    if register and best is not None and best.run_id:
        result.registered = register_best(client, sweep, best)
        client.set_tag(result.parent_run_id, "ferry.sweep.registered", result.registered)
    if not result.interrupted:
        client.set_terminated(result.parent_run_id, "FINISHED")


def register_best(client: Any, sweep: Sweep, best: TrialRecord) -> str:
    import mlflow

    name = sweep.job.tracking.register_as if sweep.job.tracking else None
    if not name:
        from ferry.errors import ConfigError

        raise ConfigError(f"--register best needs the job's tracking.register_as (the model name); {sweep.job.name} has none")
    mlflow.set_tracking_uri(client.tracking_uri)
    outputs = getattr(client.get_run(best.run_id), "outputs", None)
    logged = [o.model_id for o in (getattr(outputs, "model_outputs", None) or [])]
    # the model the trial logged (MLflow 3 keeps it as a logged model of the run)
    version = mlflow.register_model(f"models:/{logged[-1]}" if logged else f"runs:/{best.run_id}/model", name)
    client.set_model_version_tag(name, version.version, "ferry.sweep", f"{sweep.name}/trial-{best.number}")
    return f"{name}/{version.version}"
