"""What ``ferry plan`` measures on one replica of the model server: the closed-loop sweep
(:func:`sweep`), the open-loop check at a chosen rate (:func:`open_loop`) and the cold start
(:func:`cold_start`), with the server's own figures read while measuring: the mean of its
``ferry_queue_depth`` gauge (scraped from ``/metrics``) and the CPU of its process tree.

The sweep follows perf_analyzer's method: each concurrency is warmed up, then measured in
windows until the last three agree within 10 % on throughput and on p99 (or ``max_windows``
were taken: the point says it is not ``stable``); a point's figures pool the last three windows.
It stops once p99 exceeds the SLO, once throughput grew less than 10 % over the best before it
at two steps in a row (the server is saturated: more clients only queue; one flat step alone
may be a dynamic batcher that has not started to fill its batches), at the concurrency cap, or
when more than a small share of the answers are errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ferry.errors import ConfigError
from ferry.plan import _load
from ferry.plan._load import ClosedLoopClients, OpenLoopArrivals, Request, Window, merge
from ferry.plan._types import Curve, OpenLoop, Point

STABILITY = 0.10  # the last three windows' throughput and p99 each within 10 % of their mean
GROWTH = 0.10  # a step whose throughput grew less than this over the best before it is flat ...
SATURATED = 2  # ... and this many flat steps in a row end the sweep
MAX_ERROR_SHARE = 0.01  # a step with more errors than this ends the sweep
KEPT = 3  # windows a point's figures come from


# ---- addresses --------------------------------------------------------------------------------------
def infer_url(url: str, model: str | None) -> str:
    """The v2 inference URL: ``url`` is the server's base URL when ``model`` is given, else
    already the inference URL."""
    return f"{url.rstrip('/')}/v2/models/{model}/infer" if model else url


def base_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# ---- the stability rule -------------------------------------------------------------------------------
def stable(windows: Sequence[Window], tolerance: float = STABILITY) -> bool:
    """Whether the last three windows agree: each one's throughput, and each one's p99, within
    ``tolerance`` of the three's mean (perf_analyzer's rule). Fewer than three: not yet."""
    if len(windows) < KEPT:
        return False
    last = windows[-KEPT:]
    for values in ([w.throughput_rps for w in last], [w.p99_ms for w in last]):
        if any(math.isnan(v) for v in values):
            return False
        mean = sum(values) / len(values)
        if mean <= 0 or any(abs(v - mean) > tolerance * mean for v in values):
            return False
    return True


# ---- the server's side: queue depth and CPU -----------------------------------------------------------------
def queue_depth(metrics_text: str, model: str | None = None, name: str = "ferry_queue_depth") -> float | None:
    """The gauge ``name`` in Prometheus text, summed over its label sets (each process's, or
    each model's; only ``model``'s when given and labelled); None when the text lacks it."""
    total: float | None = None
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest.startswith("{"):
            labels, _, rest = rest[1:].partition("}")
            if model is not None and "model=" in labels and f'model="{model}"' not in labels:
                continue
        elif not rest[:1].isspace():
            continue  # another metric whose name starts the same
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        total = value if total is None else total + value
    return total


class _ProcessTree:
    """CPU seconds used by processes ``pids`` and all their descendants, as psutil reads them."""

    def __init__(self, pids: Sequence[int]):
        import psutil

        self.psutil = psutil
        self.roots = []
        for pid in pids:
            try:
                self.roots.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        self.known: dict[int, Any] = {}

    def cpu_s(self) -> float:
        psutil = self.psutil
        total = 0.0
        procs = list(self.roots)
        for root in self.roots:
            try:
                procs += root.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for proc in procs:
            proc = self.known.setdefault(proc.pid, proc)  # the same object: psutil tells a reused pid apart
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


@dataclass
class _Sample:
    """What the server showed over one window."""

    depths: list[float]
    cpu_s: float | None
    elapsed_s: float


class _ServerWatch:
    """Scrapes ``ferry_queue_depth`` from the server's ``/metrics`` every ``interval_s`` while
    open, and reads its process tree's CPU at each window's ends."""

    def __init__(self, metrics_url: str | None, model: str | None, pids: Sequence[int] | None, interval_s: float):
        self.metrics = Request.make(metrics_url) if metrics_url else None
        self.model, self.interval_s = model, interval_s
        self.tree = _ProcessTree(pids) if pids else None
        self.depths: list[float] = []
        self.gauge = self.metrics is not None  # until the server shows it lacks the gauge
        self._task: asyncio.Task[None] | None = None
        self._cpu0, self._t0 = 0.0, 0.0

    async def __aenter__(self) -> "_ServerWatch":
        if self.gauge:
            self._task = asyncio.create_task(self._scrape())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _scrape(self) -> None:
        assert self.metrics is not None
        while True:
            try:
                status, text = await _load.fetch(self.metrics, timeout_s=max(5.0, self.interval_s))
            except (OSError, TimeoutError, ConnectionError):
                status, text = 0, b""
            if status == 404:
                self.gauge = False
                return
            if status == 200:
                depth = queue_depth(text.decode("utf-8", "replace"), self.model)
                if depth is None:
                    self.gauge = False
                    return
                self.depths.append(depth)
            await asyncio.sleep(self.interval_s)

    def begin(self) -> None:
        self.depths = []
        self._t0 = time.perf_counter()
        self._cpu0 = self.tree.cpu_s() if self.tree else 0.0

    def end(self) -> _Sample:
        cpu = max(0.0, self.tree.cpu_s() - self._cpu0) if self.tree else None
        sample = _Sample(self.depths, cpu, time.perf_counter() - self._t0)
        self.depths = []
        return sample

    def summary(self, samples: Sequence[_Sample]) -> tuple[float | None, float | None]:
        """(mean queue depth, server CPU % of one core) over ``samples``."""
        depths = [d for s in samples for d in s.depths]
        depth = float(np.mean(depths)) if self.gauge and depths else None
        elapsed = sum(s.elapsed_s for s in samples)
        cpu = None if self.tree is None or elapsed <= 0 else 100 * sum(s.cpu_s or 0.0 for s in samples) / elapsed
        return depth, cpu


# ---- the closed-loop sweep ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One concurrency's measurement: the point and every window taken (for reports and tests)."""

    point: Point
    windows: tuple[Window, ...]
    error_share: float
    first_error: str | None


def _point(concurrency: int, windows: list[Window], samples: list[_Sample], watch: _ServerWatch, is_stable: bool) -> Point:
    kept = merge(windows[-KEPT:])
    depth, cpu = watch.summary(samples[-KEPT:])
    lat = kept.latencies_ms
    pct = [float(v) for v in np.percentile(lat, [50, 90, 99])] if len(lat) else [math.nan] * 3
    return Point(concurrency=concurrency, throughput_rps=kept.throughput_rps, p50_ms=pct[0], p90_ms=pct[1],
                 p99_ms=pct[2], mean_ms=float(lat.mean()) if len(lat) else math.nan, requests=kept.answered,
                 errors=kept.errors, windows=len(windows), stable=is_stable, queue_depth=depth,
                 server_cpu_percent=cpu, client_cpu_percent=kept.client_cpu_percent)


async def measure_step(request: Request, concurrency: int, watch: _ServerWatch, *, window_s: float, warmup_s: float,
                       max_windows: int, timeout_s: float, tolerance: float = STABILITY) -> Step:
    """``concurrency`` closed-loop clients: warm up, then windows until the last three agree or
    ``max_windows`` (at least three) were taken."""
    windows: list[Window] = []
    samples: list[_Sample] = []
    async with ClosedLoopClients(request, concurrency, timeout_s=timeout_s) as load:
        if warmup_s > 0:
            await load.window(warmup_s)
        while len(windows) < max(KEPT, max_windows):
            watch.begin()
            windows.append(await load.window(window_s))
            samples.append(watch.end())
            if stable(windows, tolerance) or (windows[-1].errors and not windows[-1].answered):
                break  # agreed, or nothing but errors: more windows would say no more
    everything = merge(windows)
    tried = everything.answered + everything.errors
    share = everything.errors / tried if tried else 1.0
    return Step(_point(concurrency, windows, samples, watch, stable(windows, tolerance)), tuple(windows), share,
                everything.first_error)


def sweep(url: str, model: str | None, body: bytes, slo_p99_ms: float, *, window_s: float = 2.0, warmup_s: float = 1.0,
          max_windows: int = 10, max_concurrency: int = 256, metrics_url: str | None = None,
          server_pids: Sequence[int] | None = None, content_type: str = "application/json",
          headers: dict[str, str] | None = None, timeout_s: float = 30.0, growth: float = GROWTH,
          tolerance: float = STABILITY, max_error_share: float = MAX_ERROR_SHARE,
          on_point: Callable[[Point], None] | None = None) -> Curve:
    """The closed-loop sweep of concurrency 1, 2, 4, ... up to ``max_concurrency`` (the last step
    is the cap itself) against ``url`` (the server's base URL, ``model`` the served name; or,
    with ``model`` None, the inference URL itself), posting ``body`` each time.

    ``metrics_url``: the server's Prometheus endpoint (default: ``/metrics`` on ``url``'s host);
    ``server_pids``: the server's processes (their descendants too) for its CPU, None for a
    server elsewhere. ``on_point`` is called with each point as it is measured.

    Raises :class:`ConfigError` when the SLO is below the p99 of one request at a time (no load
    can meet it), or when requests fail at concurrency 1 (a payload the model refuses)."""
    request = Request.make(infer_url(url, model), body, content_type=content_type, headers=headers)
    metrics = metrics_url or f"{base_url(infer_url(url, model))}/metrics"
    return _load.run(_sweep(request, slo_p99_ms, metrics, model, server_pids, window_s=window_s, warmup_s=warmup_s,
                            max_windows=max_windows, max_concurrency=max_concurrency, timeout_s=timeout_s, growth=growth,
                            tolerance=tolerance, max_error_share=max_error_share, on_point=on_point))


async def _sweep(request: Request, slo_p99_ms: float, metrics_url: str, model: str | None,
                 server_pids: Sequence[int] | None, *, window_s: float, warmup_s: float, max_windows: int,
                 max_concurrency: int, timeout_s: float, growth: float, tolerance: float, max_error_share: float,
                 on_point: Callable[[Point], None] | None) -> Curve:
    if max_concurrency < 1:
        raise ConfigError(f"the concurrency cap must be at least 1 (got {max_concurrency})")
    points: list[Point] = []
    flat = 0  # steps in a row that did not grow
    interval = min(0.5, max(0.05, window_s / 5))
    async with _ServerWatch(metrics_url, model, server_pids, interval) as watch:
        concurrency = 1
        while True:
            step = await measure_step(request, concurrency, watch, window_s=window_s, warmup_s=warmup_s,
                                      max_windows=max_windows, timeout_s=timeout_s, tolerance=tolerance)
            point = step.point
            if step.error_share > max_error_share:
                failed = f"{sum(w.errors for w in step.windows)} of " \
                         f"{sum(w.errors + w.answered for w in step.windows)} requests failed"
                if concurrency == 1:
                    raise ConfigError(f"{failed} at one request at a time ({step.first_error}); check the payload "
                                      "and the server")
                return Curve(tuple(points), f"{failed} at concurrency {concurrency} ({step.error_share:.1%}, more "
                                            f"than {max_error_share:.0%}); first: {step.first_error}")
            if concurrency == 1 and not point.p99_ms <= slo_p99_ms:
                raise ConfigError(slo_below_floor(slo_p99_ms, point.p99_ms))
            points.append(point)
            if on_point is not None:
                on_point(point)
            if not point.p99_ms <= slo_p99_ms:
                return Curve(tuple(points), f"p99 {point.p99_ms:.1f} ms above the SLO of {slo_p99_ms:g} ms at "
                                            f"concurrency {concurrency}")
            if len(points) > 1:
                # saturation, confirmed: two steps in a row that each grew less than ``growth``
                # over the best before them (one flat step may be batching not yet settled)
                best = max(points[:-1], key=lambda p: p.throughput_rps)
                grew = point.throughput_rps / best.throughput_rps - 1 if best.throughput_rps > 0 else math.inf
                flat = flat + 1 if grew < growth else 0
                if flat >= SATURATED:
                    moved = f"grew only {grew:.1%}" if grew >= 0 else f"fell {-grew:.1%}"
                    return Curve(tuple(points), f"throughput stopped growing: at concurrency {concurrency} it {moved} "
                                                f"over the best before ({best.throughput_rps:.1f} rps at concurrency "
                                                f"{best.concurrency}), the second step in a row under {growth:.0%}")
            if concurrency >= max_concurrency:
                return Curve(tuple(points), f"reached the concurrency cap of {max_concurrency} (p99 {point.p99_ms:.1f} ms "
                                            f"within the SLO of {slo_p99_ms:g} ms)")
            concurrency = min(concurrency * 2, max_concurrency)


def slo_below_floor(slo_p99_ms: float, floor_ms: float) -> str:
    """The refusal of an SLO no load can meet: the p99 of one request at a time exceeds it (shown
    rounded up, so the least SLO it names is never below it)."""
    shown = math.ceil(floor_ms * 10) / 10
    return (f"--slo-p99-ms {slo_p99_ms:g}: the model's p99 at one request at a time is {shown:.1f} ms here; no load "
            f"meets a lower SLO (ask for at least {math.ceil(floor_ms):d} ms, or a faster device/settings)")


# ---- the open loop ----------------------------------------------------------------------------------------------
def open_loop(url: str, body: bytes, rate_rps: float, duration_s: float, *, model: str | None = None,
              warmup_s: float = 1.0, max_in_flight: int = 1024, metrics_url: str | None = None,
              server_pids: Sequence[int] | None = None, content_type: str = "application/json",
              headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> OpenLoop:
    """Requests at ``rate_rps`` (evenly spaced arrivals, each its own request whatever the
    answers' pace) for ``duration_s`` after ``warmup_s``; latencies count from each arrival's
    time. ``url`` and ``model`` as for :func:`sweep`. ``errors`` counts failed requests and
    arrivals that could not be sent (``max_in_flight`` already waiting)."""
    request = Request.make(infer_url(url, model), body, content_type=content_type, headers=headers)
    metrics = metrics_url or f"{base_url(infer_url(url, model))}/metrics"

    async def main() -> OpenLoop:
        interval = min(0.5, max(0.05, duration_s / 10))
        async with _ServerWatch(metrics, model, server_pids, interval) as watch:
            async with OpenLoopArrivals(request, rate_rps, max_in_flight=max_in_flight, timeout_s=timeout_s) as load:
                if warmup_s > 0:
                    await load.window(warmup_s)
                watch.begin()
                window = await load.window(duration_s)
                sample = watch.end()
        depth, cpu = watch.summary([sample])
        return OpenLoop(rate_rps=rate_rps, achieved_rps=window.throughput_rps, p50_ms=window.percentile(50),
                        p99_ms=window.p99_ms, requests=window.answered, errors=window.errors + window.dropped,
                        queue_depth=depth, server_cpu_percent=cpu, client_cpu_percent=window.client_cpu_percent)

    return _load.run(main)


# ---- the cold start ----------------------------------------------------------------------------------------------
@dataclass
class RunningServer:
    """A server :func:`cold_start` started: its process (the leader of its own process group),
    how long it took from start to ready, and where its output goes."""

    proc: subprocess.Popen[bytes]
    seconds: float
    log: Path

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def output_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: never through a proxy


def _ready(url: str, timeout_s: float) -> bool:
    try:
        with _DIRECT.open(url, timeout=timeout_s) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def cold_start(argv: Sequence[str], ready_url: str, env: Mapping[str, str] | None = None, *, timeout_s: float = 600.0,
               poll_s: float = 0.02, log: Path | None = None, stop_timeout_s: float = 30.0) -> Iterator[RunningServer]:
    """Start the server ``argv`` (``env`` added to this process's environment) and time it from
    the start of the process to the first 200 from ``ready_url`` (its ``/v2/health/ready``):
    the interpreter's start, imports and the model's load and warm-up included. Yields the
    running server; on leaving, always stops its whole process tree (SIGTERM, then SIGKILL
    after ``stop_timeout_s``). Output goes to ``log`` (default: a temporary file, removed).

    Raises :class:`ConfigError` when the server exits before it is ready, or is not ready
    within ``timeout_s``, with the end of its output."""
    with contextlib.ExitStack() as stack:
        if log is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ferry-plan-"))
            log = Path(folder) / "server.log"
        out = stack.enter_context(open(log, "ab"))
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        stack.callback(_stop_tree, proc, stop_timeout_s)
        server = RunningServer(proc, 0.0, log)
        deadline = start + timeout_s
        while True:
            if _ready(ready_url, timeout_s=max(poll_s, 1.0)):
                server.seconds = time.perf_counter() - start
                break
            if proc.poll() is not None:
                raise ConfigError(f"the server exited with code {proc.returncode} after {time.perf_counter() - start:.1f} s, "
                                  f"before it was ready: {server.output_tail().strip()[-1500:]}")
            if time.perf_counter() > deadline:
                raise ConfigError(f"the server was not ready within {timeout_s:g} s ({ready_url} never answered 200): "
                                  f"{server.output_tail().strip()[-1500:]}")
            time.sleep(poll_s)
        yield server


def _stop_tree(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM to the server's process group (it leads its own), SIGKILL to what is left after
    ``timeout_s``, and to any descendant that left the group."""
    try:
        import psutil

        descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except Exception:  # noqa: BLE001 - psutil missing or the process gone: the group signal still goes
        psutil, descendants = None, []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if psutil is not None:
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
