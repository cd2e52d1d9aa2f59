"""The measurements of ``ferry plan`` against a real ``ferry serve`` process whose model sleeps
a known time per call (tests/_models.py): with ``--max-batch-size 1`` the server is one serial
queue of service time T, so a closed loop of C clients waits about C x T per request and its
throughput stays 1 / T whatever C. The sweep's C* (the largest C whose p99 keeps within an SLO
S) is then the largest power of two with C x T <= S, give or take the server's own overhead:
the tests allow one step either way. Short windows keep the file quick; the rules themselves
(stability, the gauge's parsing) are also checked as pure functions on given data."""

from __future__ import annotations

import math
import socket
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ferry.errors import ConfigError
from ferry.plan._load import Window
from ferry.plan._measure import cold_start, open_loop, queue_depth, stable, sweep

pytestmark = pytest.mark.integration
FERRY = str(Path(sys.executable).with_name("ferry"))
T_MS = 25.0  # the model's service time per call (one row)
FAST = {"window_s": 0.5, "warmup_s": 0.3, "max_windows": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``ferry serve`` on the sleep model, one worker, batches of one: a single serial queue."""
    from tests._models import save_sleep_model
    from tests._servers import free_port

    tmp = tmp_path_factory.mktemp("plan-measure")
    model = save_sleep_model(tmp / "sleepy", base_ms=T_MS)
    port = free_port()
    argv = [FERRY, "serve", str(model), "--name", "sleepy", "--port", str(port), "--grpc-port", "0",
            "--device", "cpu", "--workers", "1", "--max-batch-size", "1"]
    with cold_start(argv, f"http://127.0.0.1:{port}/v2/health/ready", log=tmp / "server.log", timeout_s=300) as running:
        running.url = f"http://127.0.0.1:{port}"
        yield running
    assert running.proc.poll() is not None  # stopped with the block


def _body(rows: int = 1) -> bytes:
    from tests._models import v2_body

    return v2_body(rows)


def test_cold_start_times_the_server_to_ready_and_its_points_carry_the_servers_figures(server):
    assert 0 < server.seconds < 300 and server.proc.poll() is None
    curve = sweep(server.url, "sleepy", _body(), 1000, max_concurrency=1, server_pids=server.pids, **FAST)
    [point] = curve.points
    assert curve.stopped_because == "reached the concurrency cap of 1 (p99 %.1f ms within the SLO of 1000 ms)" % point.p99_ms
    assert point.concurrency == 1 and point.errors == 0 and point.requests > 0
    assert point.p50_ms <= point.p90_ms <= point.p99_ms and point.mean_ms > 0
    assert point.queue_depth is not None and point.queue_depth >= 0  # scraped from its /metrics
    assert point.server_cpu_percent is not None and point.client_cpu_percent > 0
    assert 3 <= point.windows <= FAST["max_windows"] and (point.stable or point.windows == FAST["max_windows"])


def test_c_star_is_within_one_step_of_the_serial_queues_and_the_sweep_stops_above_the_slo(server):
    slo = 7 * T_MS  # C x T <= S: C = 4 (100 ms), not 8 (200 ms); room for a slow moment at 2 or 4
    analytic = 2 ** int(math.log2(slo / T_MS))
    curve = sweep(server.url, "sleepy", _body(), slo, growth=-math.inf, server_pids=server.pids, **FAST)
    points = curve.points
    c_star = max(p.concurrency for p in points if p.p99_ms <= slo)
    assert abs(math.log2(c_star) - math.log2(analytic)) <= 1, [(p.concurrency, round(p.p99_ms, 1)) for p in points]
    # the sweep went 1, 2, 4, ... and stopped at the first point above the SLO, which it keeps
    assert [p.concurrency for p in points] == [2 ** i for i in range(len(points))]
    assert all(p.p99_ms <= slo for p in points[:-1]) and points[-1].p99_ms > slo
    last = points[-1]
    assert curve.stopped_because == f"p99 {last.p99_ms:.1f} ms above the SLO of {slo:g} ms at concurrency {last.concurrency}"
    for p in points:
        assert p.errors == 0 and 3 <= p.windows <= FAST["max_windows"] and (p.stable or p.windows == FAST["max_windows"])
        assert p.p99_ms >= p.concurrency * T_MS * 0.9  # a serial queue: nobody overtakes the C - 1 ahead


def test_the_sweep_stops_when_throughput_stops_growing(server):
    """Two flat steps in a row: one queue gives 1 / T from concurrency 1 on."""
    curve = sweep(server.url, "sleepy", _body(), 1000, server_pids=server.pids, **FAST)
    *earlier, last = curve.points
    best = max(earlier, key=lambda p: p.throughput_rps)
    grew = last.throughput_rps / best.throughput_rps - 1
    assert grew < 0.10 and 4 <= last.concurrency <= 16
    moved = f"grew only {grew:.1%}" if grew >= 0 else f"fell {-grew:.1%}"
    assert curve.stopped_because == (f"throughput stopped growing: at concurrency {last.concurrency} it {moved} over "
                                     f"the best before ({best.throughput_rps:.1f} rps at concurrency "
                                     f"{best.concurrency}), the second step in a row under 10%")


def test_an_slo_below_one_request_at_a_time_is_refused_naming_the_minimum(server):
    with pytest.raises(ConfigError) as refused:
        sweep(server.url, "sleepy", _body(), 5, server_pids=server.pids, **FAST)
    message = str(refused.value)
    assert message.startswith("--slo-p99-ms 5: the model's p99 at one request at a time is ")
    floor = float(message.split(" is ", 1)[1].split(" ms", 1)[0])
    assert floor >= T_MS
    assert message.endswith(f"here; no load meets a lower SLO (ask for at least {math.ceil(floor)} ms, or a faster "
                            "device/settings)")


def test_a_payload_the_model_refuses_fails_the_first_step(server):
    with pytest.raises(ConfigError) as refused:
        sweep(server.url, "sleepy", b'{"inputs": [}', 1000, **FAST)
    assert " requests failed at one request at a time (HTTP 400: " in str(refused.value)


def test_the_open_loop_below_capacity_holds_the_service_time(server):
    rate = 1000 / T_MS / 4  # a quarter of the server's capacity: evenly spaced, nobody waits
    result = open_loop(server.url, _body(), rate, 2.0, model="sleepy", warmup_s=0.5, server_pids=server.pids)
    assert result.errors == 0 and result.rate_rps == rate
    assert abs(result.achieved_rps - rate) <= 0.15 * rate, result
    assert result.requests >= 0.85 * rate * 2.0
    assert T_MS <= result.p50_ms <= 3 * T_MS, result  # no queueing: about the service time (at capacity: unbounded)
    assert result.p99_ms >= result.p50_ms and result.queue_depth is not None


def test_cold_start_refuses_a_server_that_exits_and_stops_the_whole_tree(tmp_path):
    with pytest.raises(ConfigError, match=r"the server exited with code 3 after .* s, before it was ready: no model here"):
        with cold_start([sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"],
                        "http://127.0.0.1:9/v2/health/ready", timeout_s=60):
            pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = textwrap.dedent(f"""
        import http.server, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(tmp_path / 'child')!r}, "w").write(str(child.pid))
        http.server.HTTPServer(("127.0.0.1", {port}), http.server.SimpleHTTPRequestHandler).serve_forever()
    """)
    import psutil

    with cold_start([sys.executable, "-c", script], f"http://127.0.0.1:{port}/", timeout_s=60) as running:
        assert running.seconds > 0
        deadline = time.monotonic() + 30
        while not (tmp_path / "child").exists() or not (tmp_path / "child").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child = psutil.Process(int((tmp_path / "child").read_text()))
        assert child.is_running()
    assert running.proc.poll() is not None
    child.wait(timeout=30)  # the server's child went with it


def _window(rps: float, p99_ms: float) -> Window:
    """One second in which ``rps`` requests were answered, all in ``p99_ms``."""
    return Window(1.0, np.full(int(rps), p99_ms))


@pytest.mark.parametrize("windows,expected", [
    ([(100, 20), (100, 20)], False),  # fewer than three
    ([(100, 20), (100, 20), (100, 20)], True),
    ([(100, 20), (105, 21), (95, 19)], True),  # each within 10 % of the mean
    ([(100, 20), (100, 20), (125, 20)], False),  # throughput 125 vs a mean of 108.3: 15 % off
    ([(100, 20), (100, 20), (100, 26)], False),  # p99 26 vs 22: 18 % off
    ([(40, 90), (100, 20), (100, 20), (100, 20)], True),  # only the last three count
    ([(100, 20), (100, 20), (0, 20)], False),  # nothing answered in a window
    ([(100, 20), (100, 20), (100, 20), (50, 20)], False),
], ids=["two", "equal", "within", "throughput-off", "p99-off", "last-three", "empty-window", "drifting"])
def test_stability_rule(windows, expected):
    assert stable([_window(rps, p99) for rps, p99 in windows]) is expected


@pytest.mark.parametrize("text,model,expected", [
    ('# TYPE ferry_queue_depth gauge\nferry_queue_depth{model="m"} 3.0\n', None, 3.0),
    ('ferry_queue_depth{model="m",pid="1"} 2\nferry_queue_depth{model="m",pid="2"} 5\n', "m", 7.0),
    ('ferry_queue_depth{model="a"} 2\nferry_queue_depth{model="b"} 5\n', "b", 5.0),
    ('ferry_queue_depth 4 1700000000000\n', None, 4.0),
    ('ferry_queue_depth_total 9\nferry_requests_total{code="200"} 3\n', None, None),
    ('', None, None),
], ids=["one", "per-process", "by-model", "timestamp", "absent", "empty"])
def test_queue_depth_from_prometheus_text(text, model, expected):
    assert queue_depth(text, model) == expected


def test_the_sweep_needs_a_positive_concurrency_cap(server):
    with pytest.raises(ConfigError, match="the concurrency cap must be at least 1"):
        sweep(server.url, "sleepy", _body(), 100, max_concurrency=0, **FAST)



# ---- the generator's HTTP/1.1: answers split anywhere, each way an answer may end --------------------
ANSWERS = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 200, b"abcde"),
    (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfull", 503, b"full"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Trailer: 1\r\n\r\n", 200, b"x"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
]


def test_the_generators_connection_reads_every_kind_of_answer_however_it_is_split():
    import asyncio

    from ferry.plan._load import Connection, Request, run

    async def answer(reader, writer):
        for raw, _, _ in ANSWERS:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            for i in range(0, len(raw), 3):  # three bytes at a time: every boundary falls somewhere
                writer.write(raw[i:i + 3])
                await writer.drain()
                await asyncio.sleep(0)
        await reader.read()  # the client closes after "Connection: close"
        writer.close()

    async def silent(reader, writer):
        await reader.read()
        writer.close()

    async def main():
        got = []
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server, quiet:
            port = server.sockets[0].getsockname()[1]
            request = Request.make(f"http://127.0.0.1:{port}/v2/models/m/infer", b'{"inputs": []}')
            conn = await Connection.open(request.host, request.port)
            for _ in ANSWERS:
                got.append(await conn.send(request.raw, 10))
            assert not conn.keep_alive
            conn.close()
            request = Request.make(f"http://127.0.0.1:{quiet.sockets[0].getsockname()[1]}/", b"{}")
            conn = await Connection.open(request.host, request.port)
            try:
                await conn.send(request.raw, 0.2)
            except TimeoutError as exc:
                got.append(str(exc))
            assert conn.closed
        return got

    assert run(main) == [(status, body) for _, status, body in ANSWERS] + ["no answer within 0.2 s"]


def test_requests_are_prepared_once_as_http_1_1_bytes():
    from ferry.plan._load import Request

    r = Request.make("http://127.0.0.1:8080/v2/models/m/infer", b"{}", headers={"X-A": "1"})
    assert (r.host, r.port) == ("127.0.0.1", 8080)
    assert r.raw == (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\nX-A: 1\r\n\r\n{}")
    assert Request.make("http://localhost/metrics").raw == b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with pytest.raises(ValueError, match="plain http://"):
        Request.make("https://example.invalid/", b"{}")


@pytest.mark.parametrize("slo,floor,shown,least", [(5, 21.4, "21.4", 22), (5, 25.04, "25.1", 26), (20, 25.0, "25.0", 25),
                                                   (0.5, 0.73, "0.8", 1)])
def test_the_refusal_names_the_floor_rounded_up_and_the_least_slo(slo, floor, shown, least):
    from ferry.plan._measure import slo_below_floor

    assert slo_below_floor(slo, floor) == (f"--slo-p99-ms {slo:g}: the model's p99 at one request at a time is {shown} ms "
                                           f"here; no load meets a lower SLO (ask for at least {least} ms, or a faster "
                                           "device/settings)")
