"""The dynamic batcher on its own: which requests share a model call, and what each caller gets.

No clock is asserted: a batching deadline of a minute stands for "never", and a test that
finishes shows nothing waited for it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry.serve._batcher import DynamicBatcher
from ferry.serve._errors import Overloaded

NEVER_MS = 60_000.0


class Model:
    """Doubles its input; records each batch's rows."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(xs[0]))
        return [x * 2 for x in xs]


async def clients(batcher: DynamicBatcher, count: int, requests: int, rows: int = 1) -> list[list[np.ndarray]]:
    """``count`` clients, each sending its next request when the last is answered."""

    async def client(c: int) -> list[np.ndarray]:
        answers = []
        for r in range(requests):
            x = np.full((rows, 2), c * 1000 + r, dtype=np.float32)
            (y,) = await batcher.submit([x])
            answers.append((x, y))
        return answers

    return await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(count))), timeout=30)


async def started(model: Model, **kwargs: float) -> DynamicBatcher:
    batcher = DynamicBatcher(model, **kwargs)
    batcher.start()
    return batcher


@pytest.mark.parametrize("count", [1, 2, 3, 8])
async def test_closed_loop_clients_never_wait_for_clients_that_do_not_exist(count: int) -> None:
    model = Model()
    batcher = await started(model, max_batch_size=32, max_latency_ms=NEVER_MS)
    try:
        results = await clients(batcher, count, requests=6)
    finally:
        await batcher.stop()
    for answers in results:
        for x, y in answers:
            np.testing.assert_array_equal(y, x * 2)
    assert max(model.batches) <= count
    assert sum(model.batches) == count * 6


async def test_requests_that_trickle_in_keep_sharing_model_calls() -> None:
    """32 clients whose requests trickle in over several loop turns (as over gRPC) keep batches
    as large as the first wave rather than falling back to one request per call. (The last
    round pays one deadline: the batcher cannot know the clients are done.)"""
    model = Model()
    batcher = await started(model, max_batch_size=32, max_latency_ms=50)

    async def client(c: int) -> None:
        for r in range(5):
            for _ in range(c % 4):  # stagger: each client takes a few loop turns to send
                await asyncio.sleep(0)
            await batcher.submit([np.full((1, 2), c, dtype=np.float32)])

    try:
        await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(32))), timeout=30)
    finally:
        await batcher.stop()
    assert sum(model.batches) == 32 * 5
    first_wave = model.batches[0]
    assert first_wave == 8  # the clients that send without a pause
    assert min(model.batches[:-2]) >= first_wave, model.batches
    assert len(model.batches) <= 32 * 5 // first_wave + 2, model.batches


async def test_a_client_that_leaves_costs_one_deadline_then_batches_shrink() -> None:
    model = Model()
    batcher = await started(model, max_batch_size=32, max_latency_ms=20)

    async def client(c: int, requests: int) -> None:
        for _ in range(requests):
            await batcher.submit([np.zeros((1, 2), np.float32)])

    try:
        await asyncio.wait_for(asyncio.gather(client(0, 1), client(1, 6), client(2, 6)), timeout=30)
    finally:
        await batcher.stop()
    assert sum(model.batches) == 13
    assert model.batches[-2:] == [2, 2], model.batches


async def test_rows_past_the_batch_size_are_not_joined() -> None:
    model = Model()
    batcher = await started(model, max_batch_size=16, max_latency_ms=NEVER_MS)
    try:
        await clients(batcher, count=4, requests=4, rows=8)
    finally:
        await batcher.stop()
    assert max(model.batches) <= 16
    assert model.batches.count(16) >= 4


async def test_several_inputs_are_joined_and_answers_split_position_by_position() -> None:
    batches: list[tuple[int, ...]] = []

    def two_in_two_out(xs: list[np.ndarray]) -> list[np.ndarray]:
        batches.append(tuple(len(x) for x in xs))
        a, b = xs
        return [a + b, a.sum(axis=1, keepdims=True)]

    batcher = DynamicBatcher(two_in_two_out, max_batch_size=32, max_latency_ms=NEVER_MS)
    batcher.start()
    try:
        pairs = [(np.full((n, 3), n, np.float32), np.full((n, 3), 10 * n, np.float32)) for n in (1, 2, 3)]
        answers = await asyncio.gather(*(batcher.submit([a, b]) for a, b in pairs))
    finally:
        await batcher.stop()
    for (a, b), (total, sums) in zip(pairs, answers):
        np.testing.assert_array_equal(total, a + b)
        np.testing.assert_array_equal(sums, a.sum(axis=1, keepdims=True))
    assert sum(rows for rows, _ in batches) == 6


async def test_a_failing_model_fails_every_caller_of_its_batch_and_the_next_batch_runs() -> None:
    calls = []

    def flaky(xs: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(len(xs[0]))
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory")
        return xs

    batcher = DynamicBatcher(flaky, max_batch_size=32, max_latency_ms=NEVER_MS)
    batcher.start()
    try:
        first = await asyncio.gather(batcher.submit([np.ones((1, 1))]), return_exceptions=True)
        assert isinstance(first[0], RuntimeError) and "out of memory" in str(first[0])
        (y,) = await batcher.submit([np.ones((1, 1))])
        np.testing.assert_array_equal(y, np.ones((1, 1)))
    finally:
        await batcher.stop()


async def test_a_full_queue_is_refused_not_grown() -> None:
    batcher = DynamicBatcher(lambda xs: xs, max_batch_size=1, max_queue=2)  # not started: nothing drains
    pending = [asyncio.ensure_future(batcher.submit([np.ones((1, 1))])) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="2 requests already queued"):
        await batcher.submit([np.ones((1, 1))])
    for task in pending:
        task.cancel()
    await batcher.stop()


@pytest.mark.parametrize("in_thread,in_loop_thread", [(True, False), (False, True)])
async def test_the_model_runs_in_a_worker_thread_or_in_the_loops_own(in_thread: bool, in_loop_thread: bool) -> None:
    import threading

    seen: list[threading.Thread] = []

    def model(xs: list[np.ndarray]) -> list[np.ndarray]:
        seen.append(threading.current_thread())
        return xs

    batcher = DynamicBatcher(model, max_batch_size=32, max_latency_ms=NEVER_MS, in_thread=in_thread)
    batcher.start()
    try:
        (y,) = await batcher.submit([np.ones((2, 1))])
    finally:
        await batcher.stop()
    np.testing.assert_array_equal(y, np.ones((2, 1)))
    assert (seen == [threading.current_thread()]) is in_loop_thread
