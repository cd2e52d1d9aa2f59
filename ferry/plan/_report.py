"""What ``ferry plan`` shows and keeps: the tables, the plot, the JSON document, and the MLflow run
attached to the model version.

The run goes to one experiment of its own, ``ferry-plans`` (``experiment=`` names another), not
the training run's: a plan measures a server, not a training, and its metrics (one step per
concurrency) would sit among training runs' in their comparisons; one experiment keeps every
plan of every model in one place, searchable by the ``ferry.plan.model`` tag. The link to the
model version goes both ways: the run's tags name the version (and its training run), and the
version's tag ``ferry.plan.run_id`` names the run, so a Deployment can say which measurement its
numbers came from.

matplotlib and MLflow are imported by the functions that use them, not by this module.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from ferry.errors import ConfigError, RegistryError
from ferry.plan._types import Curve, OpenLoop, Plan, Point, Settings

__all__ = ["EXPERIMENT", "FORMAT", "MODEL_TAG", "RUN_TAG", "from_json", "plot", "record", "table", "to_json"]

EXPERIMENT = "ferry-plans"
FORMAT = "ferry.plan/v1"  # the JSON document's "format": bumped when a key changes meaning
MODEL_TAG = "ferry.plan.model"  # on the run: NAME/VERSION the plan measured
RUN_TAG = "ferry.plan.run_id"  # on the model version: the run holding its latest plan
CURVE_METRICS = ("throughput_rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "errors", "requests", "queue_depth",
                 "server_cpu_percent", "client_cpu_percent")
CHOSEN = "◀ C*"
_BUSY_CLIENT = 80.0  # % of one core: above it the load generator itself may have set the pace


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _opt(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(curve: Curve, plan: Plan, open_loop: OpenLoop | None = None) -> tuple[Table, ...]:
    """The sweep (one row per concurrency, the chosen point marked ``◀ C*``, points over the SLO
    in red), the open-loop check when there is one, and the plan's settings with their reasons."""
    sweep = Table("concurrency", "throughput rps", "p50 ms", "p90 ms", "p99 ms", "errors", "queue depth",
                  "server CPU %", "client CPU %", "stable", "",
                  title=f"closed-loop sweep (p99 SLO {plan.slo_p99_ms:g} ms)", caption=curve.stopped_because)
    for p in curve.points:
        over = p.p99_ms > plan.slo_p99_ms
        chosen = p.concurrency == plan.c_star
        sweep.add_row(str(p.concurrency), f"{p.throughput_rps:.1f}", _ms(p.p50_ms), _ms(p.p90_ms),
                      f"[red]{p.p99_ms:.1f}[/]" if over else f"{p.p99_ms:.1f}", str(p.errors),
                      _opt(p.queue_depth, "{:.2f}"), _opt(p.server_cpu_percent, "{:.0f}"),
                      f"{p.client_cpu_percent:.0f}", "yes" if p.stable else "[yellow]no[/]",
                      CHOSEN if chosen else ("over SLO" if over else ""),
                      style="bold green" if chosen else None)
    busiest = max((p.client_cpu_percent for p in curve.points), default=0.0)
    if busiest > _BUSY_CLIENT:
        sweep.caption = (f"{curve.stopped_because}; the load generator used up to {busiest:.0f} % of a core: "
                         "the client may have set the pace")
    tables = [sweep]
    if open_loop is not None:
        held = open_loop.p99_ms <= plan.slo_p99_ms and not open_loop.errors
        check = Table("rate rps", "achieved rps", "p50 ms", "p99 ms", "errors", "queue depth", "server CPU %",
                      "client CPU %", "within SLO", title="open-loop check")
        check.add_row(f"{open_loop.rate_rps:.1f}", f"{open_loop.achieved_rps:.1f}", _ms(open_loop.p50_ms),
                      _ms(open_loop.p99_ms), str(open_loop.errors), _opt(open_loop.queue_depth, "{:.2f}"),
                      _opt(open_loop.server_cpu_percent, "{:.0f}"), f"{open_loop.client_cpu_percent:.0f}",
                      "yes" if held else "[red]NO[/]")
        tables.append(check)
    settings = Table("setting", "value", "from", title="autoscaling plan")
    u = plan.knative_utilization_percent
    settings.add_row("C* / X*", f"{plan.c_star} / {plan.x_star_rps:.1f} rps",
                     f"largest concurrency with p99 <= {plan.slo_p99_ms:g} ms")
    settings.add_row("per-replica R", f"{plan.per_replica_rps:.1f} rps", f"X* x (1 - {plan.headroom:g})")
    settings.add_row("Knative concurrency", f"scaleTarget {plan.knative_target}",
                     f"x {u} % utilization = {plan.knative_target * u / 100:g} in flight")
    settings.add_row("Knative rps", f"scaleTarget {plan.rps_target}",
                     f"x {u} % utilization = {plan.rps_target * u / 100:g} rps")
    settings.add_row("KEDA queue depth", _opt(plan.queue_depth_threshold, "{:g}"),
                     "-" if plan.queue_depth_activation is None else f"activationThreshold {plan.queue_depth_activation:g}")
    settings.add_row("HPA CPU", "-" if plan.cpu_percent is None else f"{plan.cpu_percent} %", "of the CPU request, at R")
    settings.add_row("maxReplicas", str(plan.max_replicas), f"ceil({plan.peak_rps:g} / {plan.per_replica_rps:.1f}) + 1")
    settings.add_row("minReplicas", str(plan.min_replicas), plan.min_replicas_reason)
    tables.append(settings)
    return tuple(tables)


def plot(curve: Curve, plan: Plan, path: str | Path) -> Path:
    """p50/p90/p99 (left axis, ms) and throughput (right axis, rps) against concurrency (log2),
    the SLO as a line and C* marked; written as a PNG with matplotlib's Agg canvas (no pyplot,
    no global backend switched)."""
    from matplotlib.figure import Figure

    path = Path(path)
    xs = [p.concurrency for p in curve.points]
    fig = Figure(figsize=(8, 4.8), dpi=110)
    ax = fig.add_subplot()
    for name, color, style in (("p50_ms", "#4477aa", ":"), ("p90_ms", "#66ccee", "--"), ("p99_ms", "#ee6677", "-")):
        ax.plot(xs, [getattr(p, name) for p in curve.points], style, marker="o", color=color, label=name[:3])
    ax.axhline(plan.slo_p99_ms, color="#ee6677", linewidth=1, alpha=0.6, linestyle="-.",
               label=f"SLO p99 {plan.slo_p99_ms:g} ms")
    ax.axvline(plan.c_star, color="#228833", linewidth=1, alpha=0.6)
    star = next((p for p in curve.points if p.concurrency == plan.c_star), None)
    if star is not None:
        ax.plot([star.concurrency], [star.p99_ms], "*", markersize=16, color="#228833", label=f"C* = {plan.c_star}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency (clients, each one request in flight)")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    right = ax.twinx()
    right.plot(xs, [p.throughput_rps for p in curve.points], "s-", color="#aa3377", alpha=0.8, label="throughput")
    right.axhline(plan.per_replica_rps, color="#aa3377", linewidth=1, alpha=0.5, linestyle=":",
                  label=f"R {plan.per_replica_rps:.1f} rps")
    right.set_ylabel("throughput (requests/s)")
    right.set_ylim(bottom=0)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, loc="upper left", fontsize=8)
    ax.set_title(f"one replica: latency and throughput by concurrency (C* {plan.c_star}, "
                 f"X* {plan.x_star_rps:.1f} rps)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what JSON gives back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_json(curve: Curve, open_loop: OpenLoop | None, plan: Plan, settings: Settings, model_uri: str,
            cold_start_s: float | None) -> dict[str, Any]:
    """The whole measurement and its conclusions as JSON-ready data, keys fixed by ``FORMAT``:
    format, model_uri, settings, cold_start_s, curve (points, stopped_because, single_request_ms),
    open_loop (or None), plan; each object is :func:`dataclasses.asdict` of its type."""
    return _plain({
        "format": FORMAT,
        "model_uri": model_uri,
        "settings": asdict(settings),
        "cold_start_s": cold_start_s,
        "curve": {"points": [asdict(p) for p in curve.points], "stopped_because": curve.stopped_because,
                  "single_request_ms": curve.single_request_ms if curve.points else None},
        "open_loop": asdict(open_loop) if open_loop is not None else None,
        "plan": asdict(plan),
    })


def from_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The objects :func:`to_json` was given, back from its document: keys curve, open_loop, plan,
    settings, model_uri, cold_start_s."""
    if doc.get("format") != FORMAT:
        raise ConfigError(f"not a ferry plan document of format {FORMAT!r} (format {doc.get('format')!r}); "
                          "write it with this version of ferry plan")
    plan = dict(doc["plan"], notes=tuple(doc["plan"].get("notes", ())))
    return {
        "curve": Curve(points=tuple(Point(**p) for p in doc["curve"]["points"]),
                       stopped_because=doc["curve"]["stopped_because"]),
        "open_loop": OpenLoop(**doc["open_loop"]) if doc.get("open_loop") else None,
        "plan": Plan(**plan),
        "settings": Settings(**doc["settings"]),
        "model_uri": doc["model_uri"],
        "cold_start_s": doc.get("cold_start_s"),
    }


def _version(client: Any, model_uri: str) -> tuple[str, str] | None:
    """(NAME, VERSION) of a ``models:/`` reference (an alias looked up); None for other URIs."""
    from ferry._modeluri import PREFIX, alias_version
    from ferry.registry._failures import is_missing, is_transient, registry_error

    if not model_uri.startswith(PREFIX):
        return None
    try:
        name, version = alias_version(client, model_uri)
        if version is None:
            raise ConfigError(f"{model_uri} names no version; use models:/NAME/VERSION or models:/NAME@ALIAS")
        client.get_model_version(name, version)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, or the HTTP client's own errors
        if is_transient(exc) or not is_missing(exc):
            raise registry_error(exc, f"resolving {model_uri}") from exc
        raise RegistryError(f"cannot resolve {model_uri}: {str(getattr(exc, 'message', exc)).splitlines()[0][:200]}; "
                            "see `ferry models list`") from exc
    return name, str(version)


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - created meanwhile by another plan: use it
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _params(doc: dict[str, Any]) -> dict[str, str]:
    plan, settings = doc["plan"], doc["settings"]
    values = {
        "model_uri": doc["model_uri"],
        "slo_p99_ms": plan["slo_p99_ms"], "peak_rps": plan["peak_rps"], "headroom": plan["headroom"],
        "knative_utilization_percent": plan["knative_utilization_percent"],
        "device": settings["device"], "dtype": settings["dtype"], "max_batch_size": settings["max_batch_size"],
        "max_latency_ms": settings["max_latency_ms"], "workers": settings["workers"],
        "cpu_request": settings["cpu_request"],
    }
    if doc.get("open_loop"):
        values["open_loop_rate_rps"] = doc["open_loop"]["rate_rps"]
    return {k: ("none" if v is None else f"{v:g}" if isinstance(v, float) else str(v))[:6000] for k, v in values.items()}


def _metrics(doc: dict[str, Any], now: int) -> list[Any]:
    from mlflow.entities import Metric

    out = []
    for point in doc["curve"]["points"]:  # the curve: one step per concurrency
        for key in CURVE_METRICS:
            if point.get(key) is not None:
                out.append(Metric(key, float(point[key]), now, int(point["concurrency"])))
    plan = doc["plan"]
    summary = {f"plan.{k}": plan[k] for k in ("c_star", "x_star_rps", "per_replica_rps", "knative_target", "rps_target",
                                             "queue_depth_threshold", "queue_depth_activation", "cpu_percent",
                                             "min_replicas", "max_replicas")}
    summary["single_request_ms"] = doc["curve"]["single_request_ms"]
    summary["cold_start_s"] = doc.get("cold_start_s")
    for key, value in (doc.get("open_loop") or {}).items():
        summary[f"open_loop.{key}"] = value
    out += [Metric(k, float(v), now, 0) for k, v in summary.items() if v is not None]
    return out


def record(client: Any, model_uri: str, report: dict[str, Any], plot_path: str | Path | None,
           json_path: str | Path | None, *, experiment: str = EXPERIMENT) -> str:
    """Keep the plan as an MLflow run in ``experiment`` and link it to the model version; returns
    the run's id. ``report`` is :func:`to_json`'s document. Params: the SLO, peak, headroom and
    the server's settings (device, dtype, batch size, queue delay, workers, CPU request); metrics:
    the curve (throughput_rps, p50_ms, p90_ms, p99_ms, ... with step = concurrency), the plan's
    figures (``plan.*``, step 0) and the open-loop check (``open_loop.*``); artifacts: the plot and
    the JSON. ``models:/NAME@ALIAS`` and ``models:/NAME/N`` are resolved to the version, which gets
    the tag ``ferry.plan.run_id``; other URIs are recorded as they are, linked to no version."""
    from ferry.registry._failures import mlflow_errors
    from mlflow.entities import Param, RunTag

    pinned = _version(client, model_uri)
    with mlflow_errors("recording the plan in MLflow"):
        tags = {"ferry.plan.model_uri": model_uri, MODEL_TAG: f"{pinned[0]}/{pinned[1]}" if pinned else model_uri,
                "mlflow.note.content": "\n".join(report["plan"].get("notes") or ())}
        if pinned:
            source_run = client.get_model_version(*pinned).run_id
            if source_run:
                tags["ferry.plan.source_run_id"] = source_run
        name = f"plan-{pinned[0]}-v{pinned[1]}" if pinned else "plan"
        run = client.create_run(_experiment_id(client, experiment), run_name=name)
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            client.log_batch(run_id, params=[Param(k, v) for k, v in _params(report).items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
            metrics = _metrics(report, now)
            for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
                client.log_batch(run_id, metrics=metrics[start:start + 1000])
            for artifact in (plot_path, json_path):
                if artifact is not None:
                    client.log_artifact(run_id, str(artifact))
            if pinned:
                client.set_model_version_tag(pinned[0], pinned[1], RUN_TAG, run_id)
        except BaseException:
            with contextlib.suppress(Exception):  # the failure that got here is the one to report
                client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return run_id
