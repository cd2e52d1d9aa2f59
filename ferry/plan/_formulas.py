"""From the measurements to the autoscaling settings: pure arithmetic, no I/O.

The figures, and why each is what it is:

* **C\\*** is the largest concurrency of the sweep's leading run of points that kept p99 within the
  SLO without an error: the sweep walks concurrency upwards and stops at the first point above
  the SLO, so on a real sweep this is "the largest measured concurrency whose p99 <= SLO"; on a
  curve whose p99 dips back under the SLO after exceeding it, the dip is noise and is not trusted.
* **X\\*** is the throughput measured at C\\*; **R = X\\* x (1 - headroom)** the rate one replica is
  planned for.
* **Concurrency at R** is read off the measured throughput-vs-concurrency curve by linear
  interpolation (through the origin below concurrency 1), not taken as C\\* x (1 - headroom):
  throughput flattens as concurrency grows, so near saturation C\\* x (1 - headroom) is a
  concurrency whose throughput is still almost X\\*, and would leave no headroom at all. The
  in-flight requests a replica holds while answering R requests/s is what the curve says.
* **Knative** multiplies ``scaleTarget`` by its target utilization (``container-concurrency-
  target-percentage`` of ``config-autoscaler``, 70 % by default) for both the concurrency and
  the rps metric (``ResolveMetricTarget`` in knative/serving). Each target is the measured
  figure divided by the utilization, rounded down so that target x utilization never exceeds
  the figure measured at R, and at least 1.
* **KEDA queue depth**: the mean of ``ferry_queue_depth`` measured at R (from the open-loop run at
  R when it was made near R, else interpolated on the curve like the concurrency).
* **HPA CPU %**: the server's CPU at R (% of one core) over the Deployment's CPU request.
* **maxReplicas = ceil(peak / R) + 1**: enough replicas for the peak, plus one for a replica that
  is starting, draining or lost.
* **minReplicas = 0** only when a request arriving at a scaled-to-zero service is still answered
  within the SLO: the measured cold start (process start to ready, model load included) at most
  the SLO's p99 budget. For SLOs in milliseconds that practically never holds, so it is 1.
"""

from __future__ import annotations

import math
from typing import Any

from ferry.errors import ConfigError
from ferry.plan._types import Curve, OpenLoop, Plan, Point, Settings

__all__ = ["METRICS", "autoscaling_for", "plan"]

METRICS = ("concurrency", "rps", "cpu", "gpu-utilization", "queue-depth")
_SERVERLESS_METRICS = ("concurrency", "rps")
_EPS = 1e-9  # floating-point slack for the roundings (85.0 / 0.85 is 99.99999999999999)
_OPEN_LOOP_NEAR = 0.10  # an open-loop run within 10 % of R speaks for R


def _check(slo_p99_ms: float, peak_rps: float, headroom: float, cold_start_s: float | None,
           settings: Settings, utilization: int, curve: Curve) -> None:
    if not (isinstance(slo_p99_ms, (int, float)) and math.isfinite(slo_p99_ms) and slo_p99_ms > 0):
        raise ConfigError(f"slo_p99_ms must be a positive number of milliseconds (got {slo_p99_ms!r}); "
                          "e.g. --slo-p99-ms 100")
    if not (isinstance(peak_rps, (int, float)) and math.isfinite(peak_rps) and peak_rps > 0):
        raise ConfigError(f"peak_rps must be a positive number of requests per second (got {peak_rps!r}); "
                          "e.g. --peak-rps 200, the busiest traffic the service must take")
    if not (isinstance(headroom, (int, float)) and 0 <= headroom < 1):
        raise ConfigError(f"headroom must be a fraction in [0, 1) (got {headroom!r}); e.g. --headroom 0.15 "
                          "plans each replica for 85 % of what it took within the SLO")
    if cold_start_s is not None and not (math.isfinite(cold_start_s) and cold_start_s >= 0):
        raise ConfigError(f"cold_start_s must be >= 0 seconds or None when not measured (got {cold_start_s!r})")
    if not (isinstance(utilization, int) and 1 <= utilization <= 100):
        raise ConfigError(f"knative_utilization_percent must be an integer in 1..100 (got {utilization!r}); "
                          "Knative's default container-concurrency-target-percentage is 70")
    if settings.cpu_request is not None and not settings.cpu_request > 0:
        raise ConfigError(f"settings.cpu_request must be > 0 cores or None (got {settings.cpu_request!r}); "
                          "give the Deployment's resources cpu request, e.g. Resources(cpu='2')")
    if not curve.points:
        raise ConfigError("the curve has no points: the sweep measured nothing; check that the server answers "
                          "(ferry serve ... then curl /v2/health/ready) and run the sweep again")
    concurrencies = [p.concurrency for p in curve.points]
    if concurrencies != sorted(set(concurrencies)) or concurrencies[0] < 1:
        raise ConfigError(f"the curve's concurrencies must be distinct, >= 1 and increasing (got {concurrencies})")


def _within(points: tuple[Point, ...], slo_p99_ms: float) -> tuple[Point, ...]:
    """The leading points whose p99 kept within the SLO, without an error."""
    kept: list[Point] = []
    for point in points:
        if point.p99_ms > slo_p99_ms or point.errors:
            break
        kept.append(point)
    return tuple(kept)


def _at_rate(points: tuple[Point, ...], rate: float, value: Any) -> float | None:
    """``value(point)`` where the curve's throughput is ``rate``: linear between the two points
    around it that measured the value (below the first, between the origin, throughput 0 and
    value 0, and it); None when no point at or above ``rate`` measured it."""
    x0, v0 = 0.0, 0.0
    for point in points:
        v = value(point)
        if v is None:
            continue
        if point.throughput_rps >= rate - _EPS:
            if point.throughput_rps - x0 <= _EPS:
                return float(v)
            return v0 + (float(v) - v0) * (rate - x0) / (point.throughput_rps - x0)
        x0, v0 = point.throughput_rps, float(v)
    return None


def _floor_over(value: float, percent: int) -> int:
    """The largest integer t with t x percent / 100 <= value (at least 1)."""
    return max(1, math.floor(value * 100 / percent + _EPS))


def plan(curve: Curve, open_loop: OpenLoop | None, *, slo_p99_ms: float, peak_rps: float, headroom: float = 0.15,
         cold_start_s: float | None, settings: Settings, knative_utilization_percent: int = 70) -> Plan:
    """The autoscaling settings ``curve`` (and the open-loop check, when given) call for; see the
    module's docstring for each formula. Raises :class:`ConfigError` naming the field and the fix
    for a bad input, and when no measured point kept within the SLO (naming the measured minimum)."""
    u = knative_utilization_percent
    _check(slo_p99_ms, peak_rps, headroom, cold_start_s, settings, u, curve)
    within = _within(curve.points, slo_p99_ms)
    if not within:
        first = curve.points[0]
        why = (f"its answers had {first.errors} error(s)" if first.p99_ms <= slo_p99_ms
               else f"p99 {first.p99_ms:.1f} ms")
        raise ConfigError(f"slo_p99_ms {slo_p99_ms:g} is below what one request alone takes: at concurrency "
                          f"{first.concurrency} {why}; the least this server can promise is p99 "
                          f"{curve.single_request_ms:.1f} ms. Raise --slo-p99-ms above it, or make the model faster "
                          "(--device, --dtype, a smaller --max-latency-ms)")
    star = within[-1]
    if not star.throughput_rps > 0:
        raise ConfigError(f"concurrency {star.concurrency} kept within the SLO but answered nothing "
                          f"(throughput {star.throughput_rps} rps); run the sweep again with a longer --duration")
    notes: list[str] = []
    r = star.throughput_rps * (1 - headroom)
    notes.append(f"C* = {star.concurrency}: the largest concurrency whose p99 ({star.p99_ms:.1f} ms) kept within "
                 f"the SLO ({slo_p99_ms:g} ms); X* = {star.throughput_rps:.1f} rps; R = X* x (1 - {headroom:g}) = "
                 f"{r:.1f} rps per replica.")
    skipped = [p for p in curve.points[len(within):] if p.p99_ms <= slo_p99_ms and not p.errors]
    if skipped:
        notes.append(f"concurrency {', '.join(str(p.concurrency) for p in skipped)} measured within the SLO again "
                     f"after {curve.points[len(within)].concurrency} did not: not trusted, C* stays {star.concurrency}.")
    if not star.stable:
        notes.append(f"the measurement at C* = {star.concurrency} did not settle (its last windows disagreed by "
                     "more than 10 %): run again with a longer --duration before relying on these numbers.")

    # Knative: concurrency in flight at R, and R itself, each over the target utilization
    c_at_r = _at_rate(within, r, lambda p: p.concurrency)
    assert c_at_r is not None  # every point has its concurrency
    knative_target = _floor_over(c_at_r, u)
    notes.append(f"Knative concurrency: {c_at_r:.2f} requests in flight per replica at R (interpolated on the "
                 f"measured throughput vs concurrency); Knative aims at scaleTarget x {u} % utilization, so "
                 f"scaleTarget = {knative_target} (aims at {knative_target * u / 100:g}).")
    if knative_target * u / 100 > c_at_r + _EPS:
        notes.append(f"Knative concurrency: scaleTarget 1 is the least Knative takes; it aims at {u / 100:g} in "
                     f"flight, more than the {c_at_r:.2f} measured at R.")
    rps_target = _floor_over(r, u)
    notes.append(f"Knative rps: Knative multiplies an rps scaleTarget by the same {u} % utilization, so scaleTarget "
                 f"= floor(R / {u / 100:g}) = {rps_target} (aims at {rps_target * u / 100:g} rps per replica).")
    if rps_target * u / 100 > r + _EPS:
        notes.append(f"Knative rps: scaleTarget 1 is the least Knative takes; it aims at {u / 100:g} rps, "
                     f"more than R ({r:.2f}).")

    # what the server does at R: from the open-loop run when it ran near R, else the curve's
    use_open = open_loop is not None and abs(open_loop.rate_rps - r) <= _OPEN_LOOP_NEAR * r
    if open_loop is not None:
        if not use_open:
            notes.append(f"the open-loop run at {open_loop.rate_rps:.1f} rps is not near R ({r:.1f} rps): queue depth "
                         "and CPU at R come from the closed-loop curve.")
        if open_loop.p99_ms > slo_p99_ms or open_loop.errors:
            notes.append(f"open-loop check FAILED at {open_loop.rate_rps:.1f} rps: p99 {open_loop.p99_ms:.1f} ms, "
                         f"{open_loop.errors} error(s) (SLO {slo_p99_ms:g} ms); arrivals in bursts need more room "
                         "than the closed loop showed: raise --headroom.")
        else:
            notes.append(f"open-loop check at {open_loop.rate_rps:.1f} rps ({open_loop.achieved_rps:.1f} achieved): "
                         f"p99 {open_loop.p99_ms:.1f} ms within the SLO.")
    source = "the open-loop run" if use_open else "the curve, interpolated at R"
    if use_open and open_loop is not None:
        queue, cpu = open_loop.queue_depth, open_loop.server_cpu_percent
    else:
        queue = _at_rate(within, r, lambda p: p.queue_depth)
        cpu = _at_rate(within, r, lambda p: p.server_cpu_percent)

    # KEDA: the queue depth at R
    activation: float | None = None
    if queue is None:
        notes.append("KEDA queue depth: not measured (the server's /metrics had no ferry_queue_depth): no threshold.")
    else:
        queue = round(queue, 3)
        activation = min(1.0, queue) if queue > 0 else 0.0
        notes.append(f"KEDA queue depth: {queue:g} requests waiting per replica at R (from {source}) is the threshold; "
                     f"activationThreshold {activation:g}: one waiting request (or the threshold, when lower) means "
                     "demand. KEDA only consults it to scale from zero, and with no replica there is no "
                     "ferry_queue_depth series to read, which is why Ferry keeps at least one replica in "
                     "standard mode.")

    # HPA: CPU at R over the request
    cpu_percent: int | None = None
    if settings.cpu_request is None:
        notes.append("HPA CPU: no CPU request given, so no utilization target (HPA measures % of the request).")
    elif cpu is None:
        notes.append("HPA CPU: the server's CPU was not measured, so no utilization target.")
    else:
        exact = cpu / settings.cpu_request
        cpu_percent = min(100, max(1, math.floor(exact + _EPS)))
        notes.append(f"HPA CPU: {cpu:.0f} % of one core at R (from {source}) over the {settings.cpu_request:g}-core "
                     f"request = {exact:.1f} % -> target {cpu_percent} %.")
        if exact > 100:
            notes.append(f"HPA CPU: at R the server uses more than its request ({cpu / 100:.2f} cores > "
                         f"{settings.cpu_request:g}); the target is capped at 100 %: raise the CPU request to at "
                         f"least {math.ceil(cpu / 100 * 10) / 10:g} cores.")

    max_replicas = math.ceil(peak_rps / r - _EPS) + 1
    notes.append(f"maxReplicas = ceil({peak_rps:g} / {r:.1f}) + 1 = {max_replicas}: the peak, plus one replica "
                 "starting, draining or lost.")

    slo_s = slo_p99_ms / 1000
    if cold_start_s is None:
        min_replicas, reason = 1, ("cold start not measured (e.g. --url measured a running server): keeping one replica "
                                   "warm, since a request arriving at zero replicas waits for a whole start")
    elif cold_start_s <= slo_s:
        min_replicas, reason = 0, (f"measured cold start {cold_start_s:.3f} s is within the SLO's p99 budget "
                                   f"({slo_s:.3f} s): a request arriving at zero replicas is still answered in time")
    else:
        min_replicas, reason = 1, (f"measured cold start {cold_start_s:.2f} s exceeds the SLO's p99 budget "
                                   f"({slo_s:.3f} s): a request arriving at zero replicas would wait for a whole "
                                   "start, so one replica stays warm")
    return Plan(slo_p99_ms=slo_p99_ms, peak_rps=peak_rps, headroom=headroom, c_star=star.concurrency,
                x_star_rps=star.throughput_rps, per_replica_rps=r, knative_target=knative_target,
                knative_utilization_percent=u, rps_target=rps_target, queue_depth_threshold=queue,
                queue_depth_activation=activation, cpu_percent=cpu_percent, min_replicas=min_replicas,
                min_replicas_reason=reason, max_replicas=max_replicas, notes=tuple(notes))


def autoscaling_for(plan: Plan, metric: str, mode: str) -> dict[str, Any]:
    """The keyword values of ``Autoscaling(...)`` (min_replicas, max_replicas, metric, target) the
    plan gives a Deployment scaling on ``metric`` in ``mode``. Raises :class:`ConfigError` when the
    plan has no target for that metric (gpu-utilization is not measured; cpu needs a CPU request
    and a CPU measurement; queue-depth the server's gauge) or the metric does not work in the mode."""
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if mode not in ("serverless", "standard"):
        raise ConfigError(f"mode {mode!r} is not 'serverless' or 'standard'")
    if metric == "gpu-utilization":
        raise ConfigError("the plan does not measure GPU utilization, so it has no target for "
                          "metric='gpu-utilization'; scale on 'queue-depth' (what the GPU's batcher waits on, "
                          "measured) or keep the Deployment's own target and set only min/max replicas by hand")
    if (mode == "serverless") != (metric in _SERVERLESS_METRICS):
        raise ConfigError(f"metric {metric!r} does not work with mode {mode!r}: Knative (serverless) scales on "
                          "concurrency or rps, HPA/KEDA (standard) on cpu or queue-depth")
    if metric == "concurrency":
        target = plan.knative_target
    elif metric == "rps":
        target = plan.rps_target
    elif metric == "cpu":
        if plan.cpu_percent is None:
            raise ConfigError("the plan has no CPU target: give the Deployment a CPU request "
                              "(resources=Resources(cpu=...)) and measure the server's CPU (a local ferry serve, "
                              "not --url of a remote one)")
        target = plan.cpu_percent
    else:
        if plan.queue_depth_threshold is None:
            raise ConfigError("the plan has no queue-depth threshold: the server's /metrics had no "
                              "ferry_queue_depth gauge; measure Ferry's own server")
        # an integer target (Autoscaling.target): rounded down, so scaling starts at or before the measured depth
        target = max(1, math.floor(plan.queue_depth_threshold + _EPS))
    min_replicas = plan.min_replicas if mode == "serverless" else max(1, plan.min_replicas)
    return {"min_replicas": min_replicas, "max_replicas": max(plan.max_replicas, min_replicas, 1),
            "metric": metric, "target": int(target)}
