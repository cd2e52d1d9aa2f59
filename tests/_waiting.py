"""Waiting in tests for what another thread or process does, without a fixed sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """``check()``'s first truthy value, polled every 50 ms; AssertionError naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")


def play(steps: list[Callable[[], Any]], *, after: Callable[[], Any] | None = None, delay: float = 0.15,
         what: str = "the first step can be played") -> threading.Thread:
    """Play ``steps`` in a daemon thread, ``delay`` apart, once ``after()`` is truthy (what
    another controller would wait for, e.g. the submitted job exists). Join the thread."""

    def run() -> None:
        if after is not None:
            wait_until(after, what)
        for step in steps:
            time.sleep(delay)
            step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
