"""``ferry plan``: autoscaling settings measured on one replica of Ferry's model server.

    from ferry.plan import measure, plan_from
    from ferry.plan._types import Settings

    settings = Settings(max_batch_size=32, max_latency_ms=5.0, cpu_request=2.0)
    measured = measure("models:/digits-classifier@champion", settings, slo_p99_ms=50, peak_rps=400)
    result = plan_from(measured, slo_p99_ms=50, peak_rps=400, headroom=0.15, settings=settings)

:func:`measure` starts ``ferry serve`` on the model with the settings (or uses a running server),
times its cold start, sweeps concurrency in a closed loop (``_measure.sweep``) and checks the
chosen rate in an open loop (``_measure.open_loop``); :func:`plan_from` is the arithmetic
(``_formulas.plan``). ``_report`` prints, plots and records; ``_rewrite`` edits a Deployment file.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferry.errors import ConfigError
from ferry.plan._types import Curve, OpenLoop, Plan, Point, Settings

__all__ = ["Curve", "Measured", "OpenLoop", "Plan", "Point", "Settings", "measure", "plan_from"]

MODEL_NAME = "model"  # the model's name in the API of a server the planner starts


@dataclass(frozen=True)
class Measured:
    """What one planning run measured: the curve, the open loop at R, the cold start."""

    curve: Curve
    open_loop: OpenLoop | None
    cold_start_s: float | None  # None for a server the planner did not start (--url)


def server_argv(model_uri: str, settings: Settings, port: int) -> list[str]:
    """``ferry serve`` on ``model_uri`` as one replica of the Deployment runs it, REST only."""
    return [sys.executable, "-m", "ferry", "serve", model_uri, "--name", MODEL_NAME, "--host", "127.0.0.1",
            "--port", str(port), "--grpc-port", "0", "--device", settings.device, "--dtype", settings.dtype,
            "--workers", str(settings.workers), "--max-batch-size", str(settings.max_batch_size),
            "--max-latency-ms", f"{settings.max_latency_ms:g}"]


def model_metadata(base: str, model: str) -> dict[str, Any]:
    """The model's v2 metadata (``GET /v2/models/NAME``): its inputs' names, datatypes and shapes."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/v2/models/{model}", timeout=30) as answer:
            return json.loads(answer.read())
    except OSError as exc:
        raise ConfigError(f"{base} does not describe model {model!r} (GET /v2/models/{model}: {exc}); check --url and "
                          "--model-name") from exc


def _served_name(model_uri: str, model_name: str | None) -> str:
    if model_name:
        return model_name
    if model_uri.startswith("models:/"):
        return model_uri[len("models:/"):].split("@")[0].split("/")[0]
    raise ConfigError(f"--model-name: with --url, name the model as that server's API does (it cannot be told from "
                      f"{model_uri!r})")


def plan_from(measured: Measured, *, slo_p99_ms: float, peak_rps: float, headroom: float, settings: Settings,
              knative_utilization_percent: int = 70) -> Plan:
    from ferry.plan._formulas import plan

    return plan(measured.curve, measured.open_loop, slo_p99_ms=slo_p99_ms, peak_rps=peak_rps, headroom=headroom,
                cold_start_s=measured.cold_start_s, settings=settings,
                knative_utilization_percent=knative_utilization_percent)


def measure(model_uri: str, settings: Settings, *, slo_p99_ms: float, peak_rps: float, headroom: float = 0.15,
            url: str | None = None, model_name: str | None = None,
            payload: Callable[[dict[str, Any]], tuple[bytes, int]] | None = None, window_s: float = 2.0,
            warmup_s: float = 1.0, max_windows: int = 10, max_concurrency: int = 256, open_loop_s: float = 10.0,
            say: Callable[[str], None] = lambda line: None) -> Measured:
    """Measure one replica: the server at ``url`` (``model_name`` in its API), else ``ferry
    serve`` started here on ``model_uri`` with ``settings`` (its cold start timed, and always
    stopped). ``payload(metadata)`` gives the request body (and its rows) from the model's v2
    metadata; by default one row of zeros. The closed-loop sweep, then an open loop at R for
    ``open_loop_s`` seconds."""
    import contextlib

    from ferry.local import free_port
    from ferry.plan._measure import cold_start

    with contextlib.ExitStack() as stack:
        cold = None
        pids = None
        if url is None:
            port = free_port()
            base, model = f"http://127.0.0.1:{port}", MODEL_NAME
            say(f"starting ferry serve on {model_uri} ({settings.device}, {settings.dtype}, batch {settings.max_batch_size}, "
                f"queue delay {settings.max_latency_ms:g} ms, {settings.workers} worker(s))")
            server = stack.enter_context(cold_start(server_argv(model_uri, settings, port), f"{base}/v2/health/ready"))
            cold, pids = server.seconds, server.pids
            say(f"ready after {cold:.1f} s (the cold start: process start to ready, the model's load included)")
        else:
            base, model = url.rstrip("/"), _served_name(model_uri, model_name)
        metadata = model_metadata(base, model)
        if payload is None:
            from ferry.plan._payload import payload_body

            body, rows = payload_body(None, metadata)
        else:
            body, rows = payload(metadata)
        say(f"each request: {rows} row(s) for {', '.join(i['name'] for i in metadata.get('inputs') or [])}")
        curve = _sweep(base, model, body, slo_p99_ms, pids, window_s, warmup_s, max_windows, max_concurrency, say)
        preliminary = plan_from(Measured(curve, None, cold), slo_p99_ms=slo_p99_ms, peak_rps=peak_rps,
                                headroom=headroom, settings=settings)
        say(f"open loop at R = {preliminary.per_replica_rps:.1f} requests/s for {open_loop_s:g} s")
        from ferry.plan._measure import open_loop

        checked = open_loop(base, body, preliminary.per_replica_rps, open_loop_s, model=model, warmup_s=warmup_s,
                            server_pids=pids)
        return Measured(curve, checked, cold)


def _sweep(base: str, model: str, body: bytes, slo_p99_ms: float, pids: list[int] | None, window_s: float,
           warmup_s: float, max_windows: int, max_concurrency: int, say: Callable[[str], None]) -> Curve:
    from ferry.plan._measure import sweep

    def told(point: Point) -> None:
        say(f"concurrency {point.concurrency}: {point.throughput_rps:.1f} requests/s, p99 {point.p99_ms:.1f} ms"
            + ("" if point.stable else f" (not stable after {point.windows} windows)"))

    curve = sweep(base, model, body, slo_p99_ms, window_s=window_s, warmup_s=warmup_s, max_windows=max_windows,
                  max_concurrency=max_concurrency, server_pids=pids, on_point=told)
    say(f"the sweep stopped: {curve.stopped_because}")
    return curve
