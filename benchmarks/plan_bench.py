"""The load generator of ``ferry plan`` (ferry/plan/_load.py): its ceiling on this machine, and
what it costs per request, against baselines in the same run.

    python benchmarks/plan_bench.py [--duration 3] [--concurrency 1,8,64] [--rates 1000,4000,16000]

The endpoint is a trivial HTTP/1.1 server in another process (asyncio on uvloop, answering
every request at once with a fixed 200 and a small JSON body), so the client is what limits the
rate; its CPU is printed too (near 100 % of a core means the endpoint, not the client, was the
limit). Each client posts the same 150-byte v2 inference body for ``--duration`` seconds after
a 1 s warm-up:

- ferry plan's closed loop at each ``--concurrency`` (its own connection per client);
- h2load (``apt-get install nghttp2-client``) at the same concurrencies, where installed;
- aiohttp's client at the same concurrencies (one session, a connection per client): the plain
  asyncio way to write a load generator;
- a synchronous keep-alive ``http.client`` loop, one connection: the floor of any Python client
  at concurrency 1;
- ferry plan's open loop at each of ``--rates``: the rate achieved, arrivals sent late (> 2 ms)
  and not sent (too many in flight).

Per client: requests/s, p50 latency, client CPU (% of one core) and CPU µs per request (the
planner's overhead per request). Target: ferry plan's closed loop >= 2x aiohttp's requests/s at
concurrency 8 and above, and at most 2x http.client's latency at concurrency 1; with the CPU
per request, the rates at which the planner's measurements are its server's, not its own.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENDPOINT = r'''
import asyncio, sys
BODY = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[4.0]}]}'
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, bytearray()
    def data_received(self, data):
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(buf) < end + 4 + length:
                return
            del buf[:end + 4 + length]
            self.transport.write(ANSWER)

async def main():
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
'''

BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 1.0, 1.0, 1.0]}]}).encode()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Endpoint:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v2/models/m/infer"
        self.proc = subprocess.Popen([sys.executable, "-c", ENDPOINT, str(self.port)], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)


def result(requests: int, elapsed: float, cpu_s: float, latencies_ms: np.ndarray, server_cpu_s: float, **extra) -> dict:
    return {"rps": requests / elapsed, "p50": float(np.percentile(latencies_ms, 50)) if len(latencies_ms) else float("nan"),
            "cpu": 100 * cpu_s / elapsed, "us_per_req": 1e6 * cpu_s / requests if requests else float("nan"),
            "server_cpu": 100 * server_cpu_s / elapsed, **extra}


def ferry_closed(endpoint: Endpoint, concurrency: int, duration: float) -> dict:
    from ferry.plan._load import ClosedLoopClients, Request, run

    async def main():
        async with ClosedLoopClients(Request.make(endpoint.url, BODY), concurrency) as load:
            await load.window(1.0)
            s0 = endpoint.cpu_s()
            w = await load.window(duration)
            return w, endpoint.cpu_s() - s0

    w, server = run(main)
    assert w.errors == 0, w.first_error
    return result(w.answered, w.elapsed_s, w.client_cpu_s, w.latencies_ms, server)


def ferry_open(endpoint: Endpoint, rate: float, duration: float) -> dict:
    from ferry.plan._load import OpenLoopArrivals, Request, run

    async def main():
        async with OpenLoopArrivals(Request.make(endpoint.url, BODY), rate, max_in_flight=256) as load:
            await load.window(1.0)
            s0 = endpoint.cpu_s()
            w = await load.window(duration)
            return w, endpoint.cpu_s() - s0

    w, server = run(main)
    return result(w.answered, w.elapsed_s, w.client_cpu_s, w.latencies_ms, server, late=w.late, dropped=w.dropped,
                  errors=w.errors, p99=w.p99_ms)


def aiohttp_closed(endpoint: Endpoint, concurrency: int, duration: float) -> dict:
    import aiohttp

    async def main():
        stop_at = [0.0]
        record: list[list[int]] = [[]]

        async def client(session):
            while time.perf_counter() < stop_at[0]:
                t = time.perf_counter_ns()
                async with session.post(endpoint.url, data=BODY, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200
                record[0].append(time.perf_counter_ns() - t)

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            stop_at[0] = time.perf_counter() + 1.0 + duration
            tasks = [asyncio.create_task(client(session)) for _ in range(concurrency)]
            await asyncio.sleep(1.0)
            record[0] = []
            c0, s0, t0 = time.process_time(), endpoint.cpu_s(), time.perf_counter()
            await asyncio.sleep(duration)
            lat, c1, s1, t1 = record[0], time.process_time(), endpoint.cpu_s(), time.perf_counter()
            await asyncio.gather(*tasks)
        return result(len(lat), t1 - t0, c1 - c0, np.asarray(lat) / 1e6, s1 - s0)

    from ferry.plan._load import run

    return run(main)


def httpclient_loop(endpoint: Endpoint, duration: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", endpoint.port)
    headers = {"content-type": "application/json"}

    def once() -> int:
        t = time.perf_counter_ns()
        conn.request("POST", "/v2/models/m/infer", body=BODY, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        return time.perf_counter_ns() - t

    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        once()
    lat = []
    c0, s0, t0 = time.process_time(), endpoint.cpu_s(), time.perf_counter()
    end = t0 + duration
    while time.perf_counter() < end:
        lat.append(once())
    c1, s1, t1 = time.process_time(), endpoint.cpu_s(), time.perf_counter()
    conn.close()
    return result(len(lat), t1 - t0, c1 - c0, np.asarray(lat) / 1e6, s1 - s0)


def h2load(endpoint: Endpoint, concurrency: int, duration: float, tmp: Path) -> dict | None:
    exe = shutil.which("h2load")
    if exe is None:
        return None
    body = tmp / "body.json"
    body.write_bytes(BODY)
    s0 = endpoint.cpu_s()
    out = subprocess.run([exe, "--h1", "-t1", f"-c{concurrency}", "-m1", f"-D{duration}", "--warm-up-time=1",
                          "-d", str(body), "-H", "content-type: application/json", endpoint.url],
                         capture_output=True, text=True, timeout=duration + 60)
    server = endpoint.cpu_s() - s0
    rps = float(re.search(r"finished in .*?, ([\d.]+) req/s", out.stdout).group(1))
    # h2load's per-request time line: min max mean sd +/- sd, in us or ms
    m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms)", out.stdout)
    mean_ms = float(m.group(1)) / (1000 if m.group(2) == "us" else 1) if m else float("nan")
    return {"rps": rps, "p50": mean_ms, "cpu": float("nan"), "us_per_req": float("nan"),
            "server_cpu": 100 * server / duration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--rates", default="1000,4000,16000")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    import tempfile

    endpoint = Endpoint()
    rows: dict[tuple[str, int], dict] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for c in concurrencies:
                rows["ferry plan", c] = ferry_closed(endpoint, c, args.duration)
                rows["aiohttp", c] = aiohttp_closed(endpoint, c, args.duration)
                got = h2load(endpoint, c, args.duration, Path(tmp))
                if got is not None:
                    rows["h2load", c] = got
            rows["http.client", 1] = httpclient_loop(endpoint, args.duration)
            opens = {rate: ferry_open(endpoint, rate, args.duration) for rate in rates}
    finally:
        endpoint.stop()

    print(f"plan load generator: {args.duration:g}s per cell after 1s warm-up, trivial endpoint in another process, "
          f"{os.cpu_count()} CPUs{'' if shutil.which('h2load') else '; h2load not installed (apt-get install nghttp2-client)'}")
    print(f"\n{'client':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'client cpu':>10} {'us/req':>7} {'endpoint cpu':>12}")
    for (name, c), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{name:<12} {c:>4} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['cpu']:>9.0f}% {r['us_per_req']:>7.1f} {r['server_cpu']:>11.0f}%")
    print(f"\n{'open loop rate':>14} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} {'late':>6} {'dropped':>7} {'client cpu':>10} {'us/req':>7}")
    for rate, r in opens.items():
        print(f"{rate:>14.0f} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['late']:>6} {r['dropped']:>7} "
              f"{r['cpu']:>9.0f}% {r['us_per_req']:>7.1f}")
    print("\nratios (req/s; > 1 means ferry plan's generator is faster):")
    for c in concurrencies:
        line = f"  concurrency {c:>3}: ferry/aiohttp {rows['ferry plan', c]['rps'] / rows['aiohttp', c]['rps']:.2f}x"
        if ("h2load", c) in rows:
            line += f", ferry/h2load {rows['ferry plan', c]['rps'] / rows['h2load', c]['rps']:.2f}x"
        if c == 1:
            line += (f", ferry/http.client {rows['ferry plan', 1]['rps'] / rows['http.client', 1]['rps']:.2f}x "
                     f"(p50 {rows['ferry plan', 1]['p50'] / rows['http.client', 1]['p50']:.2f}x of http.client's)")
        print(line)
    best = max(rows["ferry plan", c]["rps"] for c in concurrencies)
    per_req = min(rows["ferry plan", c]["us_per_req"] for c in concurrencies)
    print(f"ceiling: {best:.0f} req/s closed loop; planner overhead {per_req:.1f} us of client CPU per request at best, "
          f"{rows['ferry plan', concurrencies[0]]['us_per_req']:.1f} us at concurrency {concurrencies[0]}")
    print("targets: ferry/aiohttp >= 2x at concurrency 8 and above; p50 at concurrency 1 <= 2x http.client's")


if __name__ == "__main__":
    main()
