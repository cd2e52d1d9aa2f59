"""The load generator of ``ferry plan``: HTTP/1.1 keep-alive clients on asyncio that post one
fixed request body, in a closed loop (``concurrency`` clients, each sending its next request as
the last is answered) or an open loop (arrivals at a fixed rate, whatever the answers' pace).

Every answer's latency (monotonic clock, ns), status and error is recorded into the current
:class:`Window`; :meth:`Load.window` measures one window and starts the next, so a step of a
sweep is one run of clients cut into windows. The generator must not be what limits the
measurement: each request is a prepared bytes object written to a connection and an answer
parsed just enough to find its status and its end (Content-Length or chunked), on uvloop where
it is installed; the process's own CPU over each window comes back as ``client_cpu_percent``
(``benchmarks/plan_bench.py`` measures its ceiling against a trivial endpoint).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

T = TypeVar("T")


# ---- requests and connections ------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One HTTP/1.1 request, prepared once: where it goes and its exact bytes."""

    host: str
    port: int
    raw: bytes

    @classmethod
    def make(cls, url: str, body: bytes | None = None, *, method: str | None = None,
             content_type: str = "application/json", headers: dict[str, str] | None = None) -> "Request":
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url}: the load generator speaks plain http:// (no TLS)")
        port = parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        method = method or ("POST" if body is not None else "GET")
        host = parts.hostname if port == 80 else f"{parts.hostname}:{port}"
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        if body is not None:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return cls(parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time: :meth:`send` writes a request's bytes
    and resolves to (status, body) once the whole answer is read."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.keep_alive = True
        self._reset()

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        return conn

    def _reset(self) -> None:
        self.status: int | None = None
        self.length: int | None = None
        self.chunked = False
        self.chunks: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and self.status is not None and self.length is None and not self.chunked:
            self._done(bytes(self.buf))  # an answer delimited by the connection's end
        self._fail(exc or ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiter is not None and self.buf and self._parse():
            pass

    # requests
    def send(self, raw: bytes, timeout_s: float | None = None) -> asyncio.Future[tuple[int, bytes]]:
        if self.closed or self.transport is None:
            raise ConnectionError("the connection is closed")
        self.waiter = self.loop.create_future()
        self.transport.write(raw)
        if timeout_s:
            self.timer = self.loop.call_later(timeout_s, self._timed_out, timeout_s)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self, timeout_s: float) -> None:
        self.timer = None
        self._fail(TimeoutError(f"no answer within {timeout_s:g} s"))
        self.close()  # a late answer could not be told from the next one's

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _done(self, body: bytes) -> None:
        waiter, status = self.waiter, self.status
        self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result((status or 0, body))

    def _parse(self) -> bool:
        """Consume what the buffer holds of the answer; True once it is complete."""
        buf = self.buf
        if self.status is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            try:
                self.status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                self._fail(ConnectionError(f"not an HTTP answer: {lines[0][:80]!r}"))
                self.close()
                return False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    self.keep_alive = value.strip().lower() != b"close"
            if not self.chunked and self.length is None:
                if self.status in (204, 304) or 100 <= self.status < 200:
                    self.length = 0
                else:
                    self.keep_alive = False  # the body runs until the server closes
                    return False
        if self.chunked:
            while True:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return False
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                if size == 0:
                    if len(buf) < line_end + 4:
                        return False
                    if buf[line_end + 2:line_end + 4] == b"\r\n":
                        del buf[:line_end + 4]
                    else:  # trailers, then an empty line
                        trailers_end = buf.find(b"\r\n\r\n", line_end)
                        if trailers_end < 0:
                            return False
                        del buf[:trailers_end + 4]
                    self._done(b"".join(self.chunks))
                    return True
                if len(buf) < line_end + 4 + size:
                    return False
                self.chunks.append(bytes(buf[line_end + 2:line_end + 2 + size]))
                del buf[:line_end + 4 + size]
        if self.length is None or len(buf) < self.length:
            return False
        body = bytes(buf[:self.length])
        del buf[:self.length]
        self._done(body)
        return True


async def fetch(request: Request, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """One request on its own connection (e.g. a scrape of ``/metrics``)."""
    conn = await asyncio.wait_for(Connection.open(request.host, request.port), timeout_s)
    try:
        return await conn.send(request.raw, timeout_s)
    finally:
        conn.close()


# ---- what one window measured --------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One measurement window: the answers completed in it (2xx: their latencies; anything else,
    or no answer: an error), over ``elapsed_s`` of wall clock, and the generator's own CPU."""

    elapsed_s: float
    latencies_ms: np.ndarray  # of the 2xx answers, in completion order
    errors: int = 0
    first_error: str | None = None
    client_cpu_s: float = 0.0
    late: int = 0  # open loop: arrivals sent later than ``late_ms`` after their time (their latency counts from it)
    dropped: int = 0  # open loop: arrivals never sent, as ``max_in_flight`` requests were already waiting
    statuses: Mapping[int, int] = field(default_factory=dict)  # answers by HTTP status (no answer: not here)

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput_rps(self) -> float:
        return self.answered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    @property
    def client_cpu_percent(self) -> float:
        return 100 * self.client_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


def percentile(latencies_ms: np.ndarray, q: float) -> float:
    """The q-th percentile (linear between ranks); NaN when nothing was answered."""
    return float(np.percentile(latencies_ms, q)) if len(latencies_ms) else float("nan")


def merge(windows: list[Window]) -> Window:
    """Several windows as one: their answers pooled, their times and counts added."""
    return Window(elapsed_s=sum(w.elapsed_s for w in windows),
                  latencies_ms=np.concatenate([w.latencies_ms for w in windows]) if windows else np.empty(0),
                  errors=sum(w.errors for w in windows),
                  first_error=next((w.first_error for w in windows if w.first_error), None),
                  client_cpu_s=sum(w.client_cpu_s for w in windows),
                  late=sum(w.late for w in windows), dropped=sum(w.dropped for w in windows),
                  statuses=dict(sum((Counter(w.statuses) for w in windows), Counter())))


class _Recorder:
    __slots__ = ("latencies_ns", "errors", "first_error", "late", "dropped", "statuses")

    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.first_error: str | None = None
        self.late = 0
        self.dropped = 0
        self.statuses: dict[int, int] = {}

    def error(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ---- the two loads ---------------------------------------------------------------------------------
class Load:
    """Clients sending ``request`` until the block ends (``async with``); :meth:`window` measures."""

    def __init__(self, request: Request, *, timeout_s: float = 30.0):
        self.request, self.timeout_s = request, timeout_s
        self._rec = _Recorder()
        self._tasks: list[asyncio.Task[Any]] = []
        self._connections: set[Connection] = set()

    async def __aenter__(self) -> "Load":
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self._connections):
            conn.close()
        self._connections.clear()

    def _start(self) -> None:
        raise NotImplementedError

    async def window(self, seconds: float) -> Window:
        """Measure for ``seconds``: what completes in that time belongs to this window."""
        self._rec = rec = _Recorder()
        cpu, start = time.process_time(), time.perf_counter_ns()
        await asyncio.sleep(seconds)
        self._rec = _Recorder()
        elapsed_ns, cpu = time.perf_counter_ns() - start, time.process_time() - cpu
        return Window(elapsed_ns / 1e9, np.asarray(rec.latencies_ns, dtype=np.float64) / 1e6, rec.errors,
                      rec.first_error, cpu, rec.late, rec.dropped, rec.statuses)

    async def _open(self) -> Connection:
        conn = await asyncio.wait_for(Connection.open(self.request.host, self.request.port), self.timeout_s)
        self._connections.add(conn)
        return conn

    def _drop(self, conn: Connection | None) -> None:
        if conn is not None:
            conn.close()
            self._connections.discard(conn)

    async def _call(self, conn: Connection, since_ns: int) -> bool:
        """One request on ``conn``, recorded with its latency from ``since_ns``; whether the
        connection may carry the next one."""
        try:
            status, body = await conn.send(self.request.raw, self.timeout_s)
            end = time.perf_counter_ns()
        except (OSError, TimeoutError, ConnectionError) as exc:
            self._rec.error(_describe(exc))
            return False
        rec = self._rec
        rec.statuses[status] = rec.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            rec.latencies_ns.append(end - since_ns)
        else:
            rec.error(f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
        return conn.keep_alive and not conn.closed


class ClosedLoopClients(Load):
    """``concurrency`` clients, each on its own connection, each sending its next request as
    soon as the last is answered."""

    def __init__(self, request: Request, concurrency: int, *, timeout_s: float = 30.0):
        super().__init__(request, timeout_s=timeout_s)
        self.concurrency = concurrency

    def _start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]

    async def _client(self) -> None:
        conn: Connection | None = None
        while True:
            start = time.perf_counter_ns()
            if conn is None:
                try:
                    conn = await self._open()
                except (OSError, TimeoutError) as exc:
                    self._rec.error(_describe(exc))
                    await asyncio.sleep(0.05)  # the server is away: do not spin
                    continue
            if not await self._call(conn, start):
                self._drop(conn)
                conn = None


_EARLY_NS = 1_000_000  # an arrival may go this much before its time: the event loop's timers have 1 ms steps


class OpenLoopArrivals(Load):
    """Arrivals every ``1 / rate_rps`` seconds, each its own task, whatever the answers' pace; a
    request's latency counts from its arrival time when it goes late (so a client that falls
    behind shows in the latencies instead of hiding them), from its send when it goes early (by
    up to a millisecond, the timers' granularity). An arrival when ``max_in_flight``
    requests are already waiting is not sent (``dropped``)."""

    def __init__(self, request: Request, rate_rps: float, *, max_in_flight: int = 1024, timeout_s: float = 30.0,
                 late_ms: float = 2.0):
        super().__init__(request, timeout_s=timeout_s)
        if rate_rps <= 0:
            raise ValueError("rate_rps must be positive")
        self.rate_rps, self.max_in_flight, self.late_ns = rate_rps, max_in_flight, int(late_ms * 1e6)
        self.in_flight = 0
        self._idle: list[Connection] = []
        self._arrivals: set[asyncio.Task[None]] = set()

    def _start(self) -> None:
        self._tasks = [asyncio.create_task(self._schedule())]

    async def __aexit__(self, *exc: object) -> None:
        self._tasks += list(self._arrivals)
        await super().__aexit__(*exc)

    async def _schedule(self) -> None:
        interval = 1e9 / self.rate_rps
        start = time.perf_counter_ns()
        n = 0
        while True:
            now = time.perf_counter_ns()
            due = start + int(n * interval)
            while due <= now + _EARLY_NS:
                if self.in_flight >= self.max_in_flight:
                    self._rec.dropped += 1
                else:
                    if now - due > self.late_ns:
                        self._rec.late += 1
                    task = asyncio.create_task(self._arrival(min(due, now)))
                    self._arrivals.add(task)
                    task.add_done_callback(self._arrivals.discard)
                n += 1
                due = start + int(n * interval)
            # at least one timer step: a shorter sleep rounds down to none and the loop spins
            await asyncio.sleep(max(_EARLY_NS, due - _EARLY_NS - time.perf_counter_ns()) / 1e9)

    async def _arrival(self, due_ns: int) -> None:
        self.in_flight += 1
        try:
            conn = None
            while self._idle and conn is None:
                conn = self._idle.pop()
                if conn.closed:
                    self._drop(conn)
                    conn = None
            if conn is None:
                try:
                    conn = await self._open()
                except (OSError, TimeoutError) as exc:
                    self._rec.error(_describe(exc))
                    return
            if await self._call(conn, due_ns):
                self._idle.append(conn)
            else:
                self._drop(conn)
        finally:
            self.in_flight -= 1


# ---- running ----------------------------------------------------------------------------------------
def run(main: Callable[[], Coroutine[Any, Any, T]] | Awaitable[T]) -> T:
    """Run a coroutine to its end on a fresh event loop: uvloop's where it is installed."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        factory = None
    coro = main() if callable(main) else main
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]
