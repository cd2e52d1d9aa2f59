"""Latency of one call, measured the same way wherever Ferry measures it (optimization reports,
the promotion latency gate): warm-up calls first, then timed calls until both a minimum count
and a time budget are reached."""

from __future__ import annotations

import time
from typing import Any, Callable


def call_latencies(fn: Callable[[Any], Any], arg: Any, *, budget_s: float = 1.0, min_calls: int = 20,
                   max_calls: int = 2000, warmup: int = 5) -> list[float]:
    """Seconds per call of ``fn(arg)``, in call order."""
    for _ in range(warmup):
        fn(arg)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
