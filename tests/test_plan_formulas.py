"""``ferry plan``'s arithmetic, table-driven: each formula against an answer worked out by hand,
the roundings at their edges, and each bad input with the field and the fix it names."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from ferry.errors import ConfigError
from ferry.plan._formulas import autoscaling_for, plan
from ferry.plan._types import Curve, OpenLoop, Point, Settings


def _pt(c: int, x: float, p99: float, queue: float | None = None, cpu: float | None = None, *,
        errors: int = 0, stable: bool = True) -> Point:
    return Point(concurrency=c, throughput_rps=x, p50_ms=p99 * 0.8, p90_ms=p99 * 0.9, p99_ms=p99, mean_ms=p99 * 0.8,
                 requests=int(x * 10), errors=errors, windows=3, stable=stable, queue_depth=queue,
                 server_cpu_percent=cpu, client_cpu_percent=5.0)


# concurrency, throughput, p99, queue depth, server CPU (% of one core)
BASE = Curve(points=(_pt(1, 50, 20, 0.0, 40), _pt(2, 90, 24, 0.5, 70), _pt(4, 150, 30, 1.6, 120),
                     _pt(8, 200, 45, 4.0, 160), _pt(16, 210, 90, 11.0, 170)),
             stopped_because="p99 90.0 ms above the SLO at concurrency 16")
KW = dict(slo_p99_ms=50, peak_rps=1000, headroom=0.15, cold_start_s=None, settings=Settings(cpu_request=2.0))


def _kw(**over):
    return {**KW, **over}


# Worked by hand, base curve, SLO 50 ms: C* = 8, X* = 200, R = 170 lies between concurrency 4
# (150 rps) and 8 (200 rps), 40 % of the way: 5.6 in flight, queue 1.6 + 0.4 x 2.4 = 2.56,
# CPU 120 + 0.4 x 40 = 136 % of a core.
# (id, curve, open loop, keyword overrides, expected Plan fields)
ROWS = [
    ("base", BASE, None, {},
     dict(c_star=8, x_star_rps=200, per_replica_rps=170, knative_target=8, rps_target=242, queue_depth_threshold=2.56,
          queue_depth_activation=1.0, cpu_percent=68, max_replicas=7, min_replicas=1)),
    # 5.6 / 0.7 is 8 exactly (7.999... in floating point without the slack); 8 x 0.7 = 5.6 does not exceed it
    ("knative-product-equals-measured", BASE, None, {}, dict(knative_target=8)),
    ("no-headroom", BASE, None, dict(headroom=0.0),
     dict(per_replica_rps=200, knative_target=11, rps_target=285, queue_depth_threshold=4.0, cpu_percent=80,
          max_replicas=6)),  # 1000 / 200 = 5 exactly: ceil(5) + 1
    ("slo-between-points", BASE, None, dict(slo_p99_ms=25),
     dict(c_star=2, x_star_rps=90, per_replica_rps=76.5, knative_target=2, rps_target=109, queue_depth_threshold=0.331,
          queue_depth_activation=0.331, cpu_percent=29, max_replicas=15)),
    # p99 equal to the SLO keeps within it; below concurrency 1 the curve runs through the origin
    ("slo-equals-single-request", BASE, None, dict(slo_p99_ms=20),
     dict(c_star=1, per_replica_rps=42.5, knative_target=1, rps_target=60, queue_depth_threshold=0.0,
          queue_depth_activation=0.0, cpu_percent=17, max_replicas=25)),
    # 0.85 in flight at 90 % utilization: 0.94 rounds to 0, and 1 is the least Knative takes
    ("knative-target-at-least-one", BASE, None, dict(slo_p99_ms=20, knative_utilization_percent=90),
     dict(knative_target=1, knative_utilization_percent=90, rps_target=47)),
    ("utilization-100", BASE, None, dict(knative_utilization_percent=100), dict(knative_target=5, rps_target=170)),
    # 200 x (1 - 0.15) is 170.00000000000003 or so: 170 / R must still ceil to 1
    ("peak-exactly-r", BASE, None, dict(peak_rps=170), dict(max_replicas=2)),
    ("peak-just-above-r", BASE, None, dict(peak_rps=170.5), dict(max_replicas=3)),
    ("no-cpu-request", BASE, None, dict(settings=Settings()), dict(cpu_percent=None)),
    ("cpu-above-request-capped", BASE, None, dict(settings=Settings(cpu_request=1.0)), dict(cpu_percent=100)),
    ("cold-start-within-slo", BASE, None, dict(cold_start_s=0.03), dict(min_replicas=0)),
    ("cold-start-equals-slo", BASE, None, dict(cold_start_s=0.05), dict(min_replicas=0)),
    ("cold-start-above-slo", BASE, None, dict(cold_start_s=2.5), dict(min_replicas=1)),
    ("open-loop-near-r-wins", BASE, OpenLoop(rate_rps=170, achieved_rps=169.5, p50_ms=30, p99_ms=44, requests=5000,
                                             errors=0, queue_depth=3.0, server_cpu_percent=150), {},
     dict(queue_depth_threshold=3.0, cpu_percent=75)),
    ("open-loop-far-from-r-ignored", BASE, OpenLoop(rate_rps=100, achieved_rps=100, p50_ms=20, p99_ms=25,
                                                    requests=3000, errors=0, queue_depth=0.7, server_cpu_percent=80), {},
     dict(queue_depth_threshold=2.56, cpu_percent=68)),
    # concurrency 16 dips back under the SLO after 8 exceeded it: not trusted
    ("dip-after-exceeding", Curve(points=(*BASE.points[:3], _pt(8, 200, 60, 4.0, 160), _pt(16, 220, 48, 9.0, 170)), stopped_because="cap"),
     None, {}, dict(c_star=4, x_star_rps=150)),
    # concurrency 8 within the SLO but with errors: not within it
    ("errors-end-the-run", Curve(points=(*BASE.points[:3], _pt(8, 200, 45, 4.0, 160, errors=3)), stopped_because="cap"),
     None, {}, dict(c_star=4)),
    ("no-queue-gauge", Curve(points=tuple(replace(p, queue_depth=None, server_cpu_percent=None) for p in BASE.points), stopped_because="cap"),
     None, {}, dict(queue_depth_threshold=None, queue_depth_activation=None, cpu_percent=None)),
    # throughput flattening at C* (200 -> 198): R = 168.3 is first reached between 4 and 8
    ("throughput-dips-at-c-star", Curve(points=(*BASE.points[:4], _pt(16, 198, 49, 12.0, 165)), stopped_because="flat"),
     None, {}, dict(c_star=16, x_star_rps=198, knative_target=7)),
]


@pytest.mark.parametrize("curve, open_loop, over, expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_plan_against_hand_computed_answers(curve, open_loop, over, expected):
    result = plan(curve, open_loop, **_kw(**over))
    for name, want in expected.items():
        got = getattr(result, name)
        if isinstance(want, float):
            assert got == pytest.approx(want, abs=1e-6), name
        else:
            assert got == want, name
    # Knative's aim (scaleTarget x utilization) never exceeds what was measured at R, unless 1
    u = result.knative_utilization_percent / 100
    assert result.rps_target * u <= result.per_replica_rps + 1e-9 or result.rps_target == 1
    assert result.max_replicas == math.ceil(round(result.peak_rps / result.per_replica_rps, 9)) + 1


def test_the_notes_and_reasons_say_why():
    result = plan(BASE, None, **_kw(cold_start_s=2.5, settings=Settings(cpu_request=1.0)))
    notes = "\n".join(result.notes)
    assert "2.50 s" in result.min_replicas_reason and "0.050 s" in result.min_replicas_reason
    assert "5.60 requests in flight" in notes and "70 % utilization" in notes
    assert "multiplies an rps scaleTarget by the same 70 %" in notes
    assert "activationThreshold 1" in notes
    assert "raise the CPU request to at least 1.4 cores" in notes
    assert "cold start not measured" in plan(BASE, None, **KW).min_replicas_reason
    assert "scaleTarget 1 is the least" in "\n".join(plan(BASE, None, **_kw(slo_p99_ms=20, knative_utilization_percent=90)).notes)
    failed = OpenLoop(rate_rps=170, achieved_rps=160, p50_ms=40, p99_ms=80, requests=5000, errors=0)
    assert "open-loop check FAILED" in "\n".join(plan(BASE, failed, **KW).notes)
    unsettled = Curve(points=(replace(BASE.points[0], stable=False),), stopped_because="cap")
    assert "did not settle" in "\n".join(plan(unsettled, None, **KW).notes)


BAD = [
    ("slo-zero", BASE, dict(slo_p99_ms=0), ["slo_p99_ms", "--slo-p99-ms 100"]),
    ("slo-negative", BASE, dict(slo_p99_ms=-5), ["slo_p99_ms", "positive"]),
    ("slo-nan", BASE, dict(slo_p99_ms=float("nan")), ["slo_p99_ms"]),
    ("peak-zero", BASE, dict(peak_rps=0), ["peak_rps", "--peak-rps 200"]),
    ("headroom-one", BASE, dict(headroom=1.0), ["headroom", "[0, 1)", "--headroom 0.15"]),
    ("headroom-negative", BASE, dict(headroom=-0.1), ["headroom", "[0, 1)"]),
    ("cold-start-negative", BASE, dict(cold_start_s=-1.0), ["cold_start_s", ">= 0"]),
    ("utilization-zero", BASE, dict(knative_utilization_percent=0), ["knative_utilization_percent", "1..100"]),
    ("cpu-request-zero", BASE, dict(settings=Settings(cpu_request=0.0)), ["settings.cpu_request", "Resources(cpu="]),
    ("empty-curve", Curve(points=(), stopped_because="no answer"), {}, ["no points", "/v2/health/ready"]),
    ("unsorted-curve", Curve(points=(BASE.points[1], BASE.points[0]), stopped_because="x"), {}, ["increasing"]),
    ("slo-below-single-request", BASE, dict(slo_p99_ms=10),
     ["slo_p99_ms 10", "below what one request alone takes", "p99 20.0 ms", "Raise --slo-p99-ms"]),
    ("first-point-errors", Curve(points=(_pt(1, 50, 20, errors=2),), stopped_because="errors"), {},
     ["2 error(s)", "p99 20.0 ms"]),
]


@pytest.mark.parametrize("curve, over, needles", [r[1:] for r in BAD], ids=[r[0] for r in BAD])
def test_bad_inputs_name_the_field_and_the_fix(curve, over, needles):
    with pytest.raises(ConfigError) as caught:
        plan(curve, None, **_kw(**over))
    for needle in needles:
        assert needle in str(caught.value)


BASE_PLAN = plan(BASE, None, **KW)
ZERO_PLAN = plan(BASE, None, **_kw(cold_start_s=0.01))
NO_CPU_PLAN = plan(BASE, None, **_kw(settings=Settings()))

# (id, plan, metric, mode, expected keyword values, or the text of the refusal)
SCALING = [
    ("concurrency", BASE_PLAN, "concurrency", "serverless", dict(min_replicas=1, max_replicas=7, metric="concurrency", target=8)),
    ("rps", BASE_PLAN, "rps", "serverless", dict(min_replicas=1, max_replicas=7, metric="rps", target=242)),
    ("scale-to-zero", ZERO_PLAN, "concurrency", "serverless", dict(min_replicas=0, max_replicas=7, metric="concurrency", target=8)),
    ("cpu", BASE_PLAN, "cpu", "standard", dict(min_replicas=1, max_replicas=7, metric="cpu", target=68)),
    # 2.56 waiting at R: KEDA's integer target rounds down, scaling at or before it
    ("queue-depth", BASE_PLAN, "queue-depth", "standard", dict(min_replicas=1, max_replicas=7, metric="queue-depth", target=2)),
    ("standard-never-zero", ZERO_PLAN, "queue-depth", "standard", dict(min_replicas=1, max_replicas=7, metric="queue-depth", target=2)),
    ("gpu-refused", BASE_PLAN, "gpu-utilization", "standard", "does not measure GPU utilization"),
    ("cpu-without-request", NO_CPU_PLAN, "cpu", "standard", "no CPU target"),
    ("metric-mode-mismatch", BASE_PLAN, "concurrency", "standard", "does not work with mode 'standard'"),
    ("unknown-metric", BASE_PLAN, "memory", "standard", "not one of"),
]


@pytest.mark.parametrize("the_plan, metric, mode, expected", [r[1:] for r in SCALING], ids=[r[0] for r in SCALING])
def test_autoscaling_for(the_plan, metric, mode, expected):
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            autoscaling_for(the_plan, metric, mode)
        return
    values = autoscaling_for(the_plan, metric, mode)
    assert values == expected
    from ferry import Autoscaling, Deployment, Resources

    # the values make a valid Deployment in that mode
    Deployment(name="d", model="models:/m/1", mode=mode, resources=Resources(cpu="2"), autoscaling=Autoscaling(**values))
