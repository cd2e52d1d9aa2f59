"""Dynamic batching across concurrent requests.

Requests queue up (bounded: a full queue answers 503 rather than growing without limit). One
worker takes everything queued, up to ``max_batch_size`` rows, runs the model once in a
single inference thread and splits the result. A request is one array per model input (the
same rows in each); inputs are joined and outputs split position by position. It waits up to ``max_latency_ms`` for more
rows only when it found more than one request queued (the server is under load): at low load
a lone request runs at once and pays no batching delay.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ferry.serve._errors import Overloaded


Arrays = list[np.ndarray]


@dataclass
class _Item:
    xs: Arrays
    future: asyncio.Future[Arrays] = field(repr=False)

    @property
    def rows(self) -> int:
        return len(self.xs[0])


class DynamicBatcher:
    def __init__(self, predict: Callable[[Arrays], Arrays], *, max_batch_size: int = 32,
                 max_latency_ms: float = 5.0, max_queue: int = 1024, on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        self.predict, self.max_batch_size, self.max_latency = predict, max_batch_size, max_latency_ms / 1000
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self.on_batch, self.on_depth = on_batch, on_depth
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-infer")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def submit(self, xs: Arrays) -> Arrays:
        """The model's outputs for one request's inputs (one array per input)."""
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(xs, future))
        except asyncio.QueueFull:
            raise Overloaded(f"server overloaded: {self.queue.maxsize} requests already queued; retry later") from None
        if self.on_depth is not None:
            self.on_depth(self.queue.qsize())
        return await future

    def _drain(self, items: list[_Item], rows: int) -> int:
        while rows < self.max_batch_size and not self.queue.empty():
            item = self.queue.get_nowait()
            items.append(item)
            rows += item.rows
        return rows

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            items = [first]
            rows = self._drain(items, first.rows)
            if len(items) > 1 and rows < self.max_batch_size and self.max_latency > 0:
                deadline = loop.time() + self.max_latency
                while rows < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                    items.append(item)
                    rows = self._drain(items, rows + item.rows)
            if self.on_depth is not None:
                self.on_depth(self.queue.qsize())
            await self._execute(loop, items, rows)

    async def _execute(self, loop: asyncio.AbstractEventLoop, items: list[_Item], rows: int) -> None:
        batch = items[0].xs if len(items) == 1 else [np.concatenate(parts) for parts in zip(*(i.xs for i in items))]
        if self.on_batch is not None:
            self.on_batch(rows)
        try:
            out = await loop.run_in_executor(self._executor, self.predict, batch)
        except Exception as exc:  # noqa: BLE001 - the model failed: each caller gets the error
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in items:
            n = item.rows
            if not item.future.done():
                item.future.set_result([y[start:start + n] for y in out])
            start += n
