"""Dynamic batching across concurrent requests.

Requests queue up (bounded: a full queue answers 503 rather than growing without limit). One
worker takes everything queued, up to ``max_batch_size`` rows, runs the model once in a
single inference thread and splits the result. A request is one array per model input (the
same rows in each); inputs are joined and outputs split position by position.

Whether to wait for more rows: the clients of the last batch, answered, are what comes next
(each client of a server sends its next request when the last one is answered). So the worker
waits, up to ``max_latency_ms``, only until it holds as many rows as the last batch had: a lone
client never waits, two clients never wait for a third, and requests that trickle in one at a
time (as over gRPC) keep sharing model calls instead of each running alone. A client that
leaves costs one deadline, after which the batches are the smaller size.

Where the model runs (``in_thread``): a torch model on the CPU runs in the event loop's own
thread. torch releases the GIL around every operator, so a model in a worker thread has to win
the GIL back from a busy event loop after each of them (the interpreter hands it over only
every switch interval, 5 ms), and a forward pass of a few dozen operators stalls for many
milliseconds under load. A model that releases the GIL once for its whole call (ONNX Runtime,
TorchScript, a GPU's synchronizing copy) runs in a worker thread, so the loop goes on reading
requests while it computes.
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
                 on_depth: Callable[[int], None] | None = None, in_thread: bool = True):
        self.predict, self.max_batch_size, self.max_latency = predict, max_batch_size, max_latency_ms / 1000
        self.in_thread = in_thread  # see the module's docstring; may be set once the model is known
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self.on_batch, self.on_depth = on_batch, on_depth
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-infer")
        self._task: asyncio.Task[None] | None = None
        self._arrived: asyncio.Future[None] | None = None  # set by submit while the worker waits for rows

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
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
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
        last_rows = 0
        while True:
            first = await self.queue.get()
            items = [first]
            rows = self._drain(items, first.rows)
            target = min(last_rows, self.max_batch_size)
            if rows < target and self.max_latency > 0:
                rows = await self._gather(loop, items, rows, target, loop.time() + self.max_latency)
            last_rows = rows
            if self.on_depth is not None:
                self.on_depth(self.queue.qsize())
            await self._execute(loop, items, rows)

    async def _gather(self, loop: asyncio.AbstractEventLoop, items: list[_Item], rows: int, target: int,
                      deadline: float) -> int:
        """Take requests as they arrive until ``target`` rows or the deadline."""
        while rows < target and loop.time() < deadline:
            self._arrived = loop.create_future()
            timer = loop.call_at(deadline, _settle, self._arrived)
            try:
                await self._arrived
            finally:
                timer.cancel()
                self._arrived = None
            rows = self._drain(items, rows)
        return rows

    async def _execute(self, loop: asyncio.AbstractEventLoop, items: list[_Item], rows: int) -> None:
        batch = items[0].xs if len(items) == 1 else [np.concatenate(parts) for parts in zip(*(i.xs for i in items))]
        if self.on_batch is not None:
            self.on_batch(rows)
        try:
            if self.in_thread:
                out = await loop.run_in_executor(self._executor, self.predict, batch)
            else:
                out = self.predict(batch)
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


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
