"""Serving: Ferry's server (REST JSON and REST binary tensors) vs ``mlflow models serve`` on the same registered model.

    python benchmarks/serve_bench.py [--duration 8]

One digits CNN is trained and registered in a temporary MLflow store; both servers load
``models:/bench-digits/1``; the same client (wrk, `apt-get install wrk`) sends the same
payloads (1 row and 8 rows) at concurrency 1 and 32 to each in turn on this machine. The
in-process forward pass at the same batch size is printed as the floor. Target: Ferry >= 3x
MLflow's RPS at concurrency 32, with a lower p99.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_and_register(tmp: Path) -> tuple[str, np.ndarray]:
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from jobs.digits.data import load_split
    from jobs.digits.model import DigitsCNN

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serve-bench", artifact_location=(tmp / "artifacts").as_uri())
    (x, y), (x_test, _) = load_split(7)
    torch.manual_seed(0)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    for _ in range(5):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[i:i + 64])), torch.from_numpy(y[i:i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    example = x_test[:8]
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    with mlflow.start_run(experiment_id=exp):
        mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                 registered_model_name="bench-digits", serialization_format="pt2", pip_requirements=["torch"])
    return uri, x_test


def forward_floor(uri: str, x: np.ndarray, rows: int) -> float:
    """Seconds per call of the model as MLflow loads it, in process, at ``rows`` rows."""
    import mlflow.pytorch
    import torch

    os.environ["MLFLOW_TRACKING_URI"] = uri
    module = mlflow.pytorch.load_model("models:/bench-digits/1")
    batch = torch.from_numpy(x[:rows])
    with torch.inference_mode():
        for _ in range(200):
            module(batch)
        times = []
        for _ in range(2000):
            t = time.perf_counter()
            module(batch)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def wait_http(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


WRK_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
{extra}wrk.body = io.open("{body}", "rb"):read("*a")
"""


def run_wrk(url: str, body: bytes, connections: int, duration: int, tmp: Path,
            headers: dict[str, str] | None = None) -> dict[str, float]:
    body_file = tmp / f"body-{abs(hash(body))}.bin"
    body_file.write_bytes(body)
    script = tmp / f"post-{abs(hash(body))}.lua"
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    content_type = "application/octet-stream" if headers else "application/json"
    script.write_text(WRK_LUA.format(body=body_file, extra=extra, content_type=content_type))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50"), "p99": ms("99"),
            "errors": float(non2xx.group(1)) if non2xx else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("serve_bench needs wrk as the load generator: apt-get install wrk")
    from ferry.local import free_port

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        uri, x = train_and_register(tmp)
        # mlflow models serve starts `uvicorn` by name: the interpreter's bin folder must be on PATH
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        ferry_port, mlflow_port = free_port(), free_port()
        ferry_bin = str(Path(sys.executable).with_name("ferry"))
        servers = {
            "ferry": subprocess.Popen([ferry_bin, "serve", "models:/bench-digits/1", "--port", str(ferry_port), "--grpc-port", "0"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "mlflow": subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bench-digits/1",
                                        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        }
        try:
            wait_http(f"http://127.0.0.1:{ferry_port}/v2/health/ready")
            wait_http(f"http://127.0.0.1:{mlflow_port}/ping")
            results: dict[tuple[str, int, int], dict[str, float]] = {}
            floors = {}
            for rows in (1, 8):
                batch = x[:rows]
                infer = f"http://127.0.0.1:{ferry_port}/v2/models/bench-digits/infer"
                header = json.dumps({"inputs": [{"name": "x", "shape": list(batch.shape), "datatype": "FP32",
                                                 "parameters": {"binary_data_size": batch.nbytes}}],
                                     "parameters": {"binary_data_output": True}}).encode()
                bodies = {
                    "ferry": (infer, json.dumps({"inputs": [{"name": "x", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}]}).encode(), None),
                    "ferry-bin": (infer, header + batch.astype("<f4").tobytes(), {"Inference-Header-Content-Length": str(len(header))}),
                    "mlflow": (f"http://127.0.0.1:{mlflow_port}/invocations", json.dumps({"inputs": batch.tolist()}).encode(), None),
                }
                for conc in (1, 32):
                    for name in ("ferry", "ferry-bin", "mlflow"):
                        url, body, headers = bodies[name]
                        run_wrk(url, body, conc, 2, tmp, headers)  # warm-up
                        results[(name, rows, conc)] = run_wrk(url, body, conc, args.duration, tmp, headers)
            servers_done = True
        finally:
            for proc in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
        for rows in (1, 8):
            floors[rows] = forward_floor(uri, x, rows)
    print(f"serving benchmark: digits CNN (pt2), wrk -t1, {args.duration}s per cell, same machine (2 cores shared with the client)")
    print(f"{'rows':>4} {'conc':>4} | {'ferry rps':>10} {'p50 ms':>7} {'p99 ms':>7} | {'mlflow rps':>10} {'p50 ms':>7} {'p99 ms':>7} | {'rps ratio':>9} {'p99 ratio':>9} | errors")
    for rows in (1, 8):
        for conc in (1, 32):
            f, m = results[("ferry", rows, conc)], results[("mlflow", rows, conc)]
            print(f"{rows:>4} {conc:>4} | {f['rps']:>10.0f} {f['p50']:>7.2f} {f['p99']:>7.2f} | {m['rps']:>10.0f} {m['p50']:>7.2f} {m['p99']:>7.2f} | "
                  f"{f['rps'] / m['rps']:>8.2f}x {m['p99'] / f['p99']:>8.2f}x | {int(f['errors'])}/{int(m['errors'])}")
    print(f"\nREST binary tensors (Inference-Header-Content-Length, raw FP32 in and out) vs REST JSON, same server:")
    print(f"{'rows':>4} {'conc':>4} | {'binary rps':>10} {'p50 ms':>7} {'p99 ms':>7} | {'json rps':>10} | {'rps ratio':>9} | errors")
    for rows in (1, 8):
        for conc in (1, 32):
            b, f = results[("ferry-bin", rows, conc)], results[("ferry", rows, conc)]
            print(f"{rows:>4} {conc:>4} | {b['rps']:>10.0f} {b['p50']:>7.2f} {b['p99']:>7.2f} | {f['rps']:>10.0f} | "
                  f"{b['rps'] / f['rps']:>8.2f}x | {int(b['errors'])}")
    for rows, floor in floors.items():
        print(f"floor: in-process forward at {rows} row(s): {floor * 1e6:.0f} us/call ({1 / floor:.0f} calls/s on one core)")
    print("rps ratio = ferry/mlflow (target >= 3x at concurrency 32); p99 ratio = mlflow/ferry (> 1 means Ferry's p99 is lower)")
    assert servers_done


if __name__ == "__main__":
    main()
