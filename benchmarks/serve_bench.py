"""Serving: Ferry's server (REST JSON, REST binary tensors, gRPC) vs ``mlflow models serve`` and
NVIDIA Triton (through PyTriton) on the same model.

    python benchmarks/serve_bench.py [--duration 8] [--rounds 1] [--pytriton-python PATH] [--baseline REV]

One digits CNN is trained and registered in a temporary MLflow store. Ferry and MLflow load
``models:/bench-digits/1``; Triton serves the same torch.export artifact through PyTriton with
``@batch`` dynamic batching. One client, h2load (`apt-get install nghttp2-client`), sends the
same payloads (1 row and 8 rows) at concurrency 1, 4 and 32 to each in turn on this machine:
HTTP/1.1 for REST, HTTP/2 for gRPC (the ``ModelInfer`` message framed as gRPC, raw FP32
contents). Before each target is measured, one request of exactly the bytes h2load will send
is checked against the model's own output; the measured answers must average that answer's
size (a gRPC error also comes back as HTTP 200, with an empty body: the size tells it apart).

PyTriton 0.7 needs Python 3.12 with ``nvidia-pytriton`` and ``torch==2.13.0`` installed; pass
that interpreter with ``--pytriton-python`` (``LD_LIBRARY_PATH`` is set to its
``libpython3.12.so``). Without it the Triton columns are left out, and the output says so.

``--baseline REV`` also serves the model with Ferry as it was at git revision REV (checked out
into a temporary worktree, run with this interpreter) and measures its REST JSON beside the
working tree's: the check that new paths cost the common one nothing.

Targets: Ferry >= 3x MLflow's RPS at concurrency 32 with a lower p99; Ferry's REST JSON >= 5x
PyTriton's; gRPC and REST binary each faster than REST JSON on 8-row payloads. The in-process
forward pass at the same batch sizes is printed as the floor: the module as MLflow loads it (what
the PyTriton server calls) and the model as Ferry's server calls it (the program's operators
without ``ExportedProgram.module()``'s wrapper; see ``ferry/serve/_model.py``).
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
from dataclasses import dataclass
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


def forward_floors(uri: str, x: np.ndarray, rows: int) -> dict[str, float]:
    """Seconds per call at ``rows`` rows, in process: the module as MLflow loads it (what the
    PyTriton server calls) and the model as Ferry's server loads and calls it."""
    import mlflow.pytorch
    import torch

    from ferry.serve import load_model

    os.environ["MLFLOW_TRACKING_URI"] = uri
    module = mlflow.pytorch.load_model("models:/bench-digits/1")
    served = load_model("models:/bench-digits/1", device="cpu")
    batch = x[:rows]
    calls = {"module()": lambda: module(torch.from_numpy(batch)), "ferry": lambda: served.run([batch])}
    out = {}
    with torch.inference_mode():
        for name, call in calls.items():
            for _ in range(200):
                call()
            times = []
            for _ in range(2000):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            out[name] = statistics.median(times)
    return out


CONCURRENCY = (1, 4, 32)  # 4: a few clients, where a batcher that waits for clients that never come shows


def wait_http(url: str, timeout: float = 180) -> None:
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


@dataclass(frozen=True)
class Target:
    """One way of asking one server for one batch: what h2load sends, and how to read the answer."""

    url: str
    body: bytes
    headers: dict[str, str]
    grpc: bool = False

    def check(self, expected: np.ndarray) -> int:
        """Send the body once with a client of its protocol; the answer must be the model's own
        output. Returns the answer's size in bytes."""
        if self.grpc:
            return self._check_grpc(expected)
        import httpx

        response = httpx.post(self.url, content=self.body, headers=self.headers, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"{self.url}: {response.status_code} {response.text[:300]}")
        length = response.headers.get("inference-header-content-length")
        if length is not None:  # binary tensor extension
            got = np.frombuffer(response.content[int(length):], "<f4")
        else:
            payload = response.json()
            got = np.asarray(payload["outputs"][0]["data"] if "outputs" in payload else payload["predictions"], "f4")
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-4, atol=1e-4)
        return len(response.content)

    def _check_grpc(self, expected: np.ndarray) -> int:
        import grpc

        from ferry.serve._grpc import stubs

        pb = stubs()
        target = self.url.split("//", 1)[1].split("/", 1)[0]
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            raw = call(self.body[5:], timeout=30)
        reply = pb.ModelInferResponse.FromString(raw)
        got = np.frombuffer(reply.raw_output_contents[0], "<f4")
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-4, atol=1e-4)
        return len(raw) + 5  # with the gRPC frame prefix


def targets_for(batch: np.ndarray, model: str, ports: dict[str, int]) -> dict[str, Target]:
    from ferry.serve._grpc import stubs

    pb = stubs()
    shape = list(batch.shape)
    raw = batch.astype("<f4").tobytes()
    as_json = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": batch.ravel().tolist()}]}).encode()
    header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    message = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=shape)],
                                   raw_input_contents=[raw]).SerializeToString()
    framed = b"\0" + len(message).to_bytes(4, "big") + message
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    json_headers = {"content-type": "application/json"}
    out: dict[str, Target] = {}
    for server in ("ferry", "triton"):
        if server not in ports:
            continue
        infer = f"http://127.0.0.1:{ports[server]}/v2/models/{model}/infer"
        out[f"{server} json"] = Target(infer, as_json, json_headers)
        out[f"{server} binary"] = Target(infer, header + raw, {"content-type": "application/octet-stream",
                                                               "inference-header-content-length": str(len(header))})
        out[f"{server} grpc"] = Target(f"http://127.0.0.1:{ports[server + '-grpc']}/inference.GRPCInferenceService/ModelInfer",
                                       framed, grpc_headers, grpc=True)
    if "baseline" in ports:
        out["baseline json"] = Target(f"http://127.0.0.1:{ports['baseline']}/v2/models/{model}/infer", as_json, json_headers)
    out["mlflow json"] = Target(f"http://127.0.0.1:{ports['mlflow']}/invocations", json.dumps({"inputs": batch.tolist()}).encode(), json_headers)
    return out


def run_h2load(target: Target, connections: int, duration: int, answer_bytes: int, tmp: Path) -> dict[str, float]:
    body = tmp / "body.bin"
    body.write_bytes(target.body)
    log = tmp / "requests.tsv"
    log.unlink(missing_ok=True)  # h2load appends
    command = ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{duration}", "--warm-up-time=1", "-d", str(body),
               f"--log-file={log}", *[f"-H{k}: {v}" for k, v in target.headers.items()]]
    if not target.grpc:
        command.append("--h1")
    out = subprocess.run([*command, target.url], capture_output=True, text=True, check=True).stdout
    done, succeeded, failed, errored = (int(n) for n in re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out).groups())
    data = int(re.search(r"traffic: .*?, [\d.]+\w*B \((\d+)\) data", out).group(1))
    times = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line)
    # an error answer is short (a gRPC error is HTTP 200 with an empty body and a status trailer):
    # the data received must average at least the checked answer's size (warm-up traffic adds to it)
    if done and data < 0.9 * done * answer_bytes:
        raise RuntimeError(f"{target.url}: {data / done:.0f} bytes per answer, expected {answer_bytes}: answers are errors")
    return {"rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1)),
            "p50": times[len(times) // 2] / 1e3, "p99": times[min(len(times) - 1, int(len(times) * 0.99))] / 1e3,
            "errors": float(failed + errored + (done - succeeded))}


def start_pytriton(python: str, artifact: Path, http_port: int, grpc_port: int) -> subprocess.Popen:
    libdir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
    return subprocess.Popen([python, str(Path(__file__).with_name("_pytriton_server.py")), str(artifact), str(http_port), str(grpc_port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM) if os.getpgid(proc.pid) == proc.pid else proc.terminate()
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
            proc.wait(timeout=10)


def start_baseline(revision: str, tree: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """``ferry serve`` as it was at ``revision``, from a worktree at ``tree``, with this interpreter."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), revision], check=True,
                   capture_output=True)
    command = [sys.executable, "-c", "import sys; from ferry.cli import main; sys.argv[0] = 'ferry'; main()",
               "serve", "models:/bench-digits/1", "--port", str(port)]
    env = {**env, "PYTHONPATH": str(tree)}
    usage = subprocess.run([*command[:3], "serve", "--help"], cwd=tree, env=env, capture_output=True, text=True).stdout
    if "--grpc-port" in usage:
        command += ["--grpc-port", "0"]
    return subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def remove_worktree(tree: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)


def median_round(runs: list[dict[str, float]]) -> dict[str, float]:
    """The round of median throughput (its latencies with it); errors summed over all rounds."""
    middle = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    return {**middle, "errors": sum(r["errors"] for r in runs)}


def row(label: str, r: dict[str, float]) -> str:
    return f"{label:<15} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {int(r['errors']):>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=1, help="measure every cell this many times, interleaved; "
                        "the median round is reported")
    parser.add_argument("--baseline", metavar="REV", help="also measure REST JSON of Ferry's server at this git revision")
    parser.add_argument("--pytriton-python", default=os.environ.get("FERRY_BENCH_PYTRITON_PYTHON"),
                        help="a Python 3.12 with nvidia-pytriton and torch==2.13.0 (or $FERRY_BENCH_PYTRITON_PYTHON)")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("serve_bench needs h2load as the load generator: apt-get install nghttp2-client")
    from ferry.local import free_port

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        uri, x = train_and_register(tmp)
        artifact = next((tmp / "artifacts").rglob("*.pt2"))
        # mlflow models serve starts `uvicorn` by name: the interpreter's bin folder must be on PATH
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        ports = {"ferry": free_port(), "ferry-grpc": free_port(), "mlflow": free_port()}
        ferry_bin = str(Path(sys.executable).with_name("ferry"))
        servers = {
            "ferry": subprocess.Popen([ferry_bin, "serve", "models:/bench-digits/1", "--port", str(ports["ferry"]),
                                       "--grpc-port", str(ports["ferry-grpc"])], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
            "mlflow": subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bench-digits/1",
                                        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(ports["mlflow"])], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        }
        triton_note = "Triton (PyTriton) left out: pass --pytriton-python, a Python 3.12 with nvidia-pytriton and torch==2.13.0"
        if args.pytriton_python:
            ports["triton"], ports["triton-grpc"] = free_port(), free_port()
            servers["triton"] = start_pytriton(args.pytriton_python, artifact, ports["triton"], ports["triton-grpc"])
            triton_note = ""
        if args.baseline:
            ports["baseline"] = free_port()
            servers["baseline"] = start_baseline(args.baseline, tmp / "baseline", ports["baseline"], env)
        results: dict[tuple[str, int, int], dict[str, float]] = {}
        try:
            wait_http(f"http://127.0.0.1:{ports['ferry']}/v2/health/ready")
            wait_http(f"http://127.0.0.1:{ports['mlflow']}/ping")
            if "triton" in servers:
                wait_http(f"http://127.0.0.1:{ports['triton']}/v2/models/bench-digits/ready")
            if "baseline" in servers:
                wait_http(f"http://127.0.0.1:{ports['baseline']}/v2/health/ready")
            import torch

            module = torch.export.load(str(artifact)).module()
            cells = []
            for rows in (1, 8):
                batch = x[:rows]
                with torch.inference_mode():
                    expected = module(torch.from_numpy(batch)).numpy()
                for name, target in targets_for(batch, "bench-digits", ports).items():
                    size = target.check(expected)
                    cells += [(name, rows, conc, target, size) for conc in CONCURRENCY]
            rounds: dict[tuple[str, int, int], list[dict[str, float]]] = {}
            for _ in range(args.rounds):  # rounds interleaved, so a slow spell of the machine hits every target alike
                for name, rows, conc, target, size in cells:
                    rounds.setdefault((name, rows, conc), []).append(run_h2load(target, conc, args.duration, size, tmp))
            results.update({cell: median_round(runs) for cell, runs in rounds.items()})
        finally:
            for proc in servers.values():
                stop(proc)
            if args.baseline:
                remove_worktree(tmp / "baseline")
        floors = {rows: forward_floors(uri, x, rows) for rows in (1, 8)}

    names = list(dict.fromkeys(name for name, _, _ in results))
    print(f"serving benchmark: digits CNN (pt2), h2load -t1 -m1, {args.duration}s per cell after 1s warm-up, "
          f"median of {args.rounds} interleaved round(s), "
          f"same machine ({os.cpu_count()} cores shared with the client)")
    for rows in (1, 8):
        for conc in CONCURRENCY:
            print(f"\n{rows} row(s), concurrency {conc}\n{'target':<15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  vs ferry json")
            base = results[("ferry json", rows, conc)]
            for name in names:
                r = results[(name, rows, conc)]
                print(f"{row(name, r)}  {r['rps'] / base['rps']:>6.2f}x")
    print("\nratios (req/s; > 1 means the first is faster):")
    print(f"{'rows':>4} {'conc':>4} | {'ferry/mlflow':>12} {'p99 m/f':>8} | {'ferry/triton json':>17} {'ferry/triton grpc':>17} | "
          f"{'binary/json':>11} {'grpc/json':>9}" + (f" | json/{args.baseline}" if args.baseline else ""))
    for rows in (1, 8):
        for conc in CONCURRENCY:
            get = lambda name: results.get((name, rows, conc))  # noqa: E731
            fj, m = get("ferry json"), get("mlflow json")
            tj, tg = get("triton json"), get("triton grpc")
            vs_triton = (f"{fj['rps'] / tj['rps']:>16.2f}x {get('ferry grpc')['rps'] / tg['rps']:>16.2f}x" if tj else f"{'-':>17} {'-':>17}")
            print(f"{rows:>4} {conc:>4} | {fj['rps'] / m['rps']:>11.2f}x {m['p99'] / fj['p99']:>7.2f}x | {vs_triton} | "
                  f"{get('ferry binary')['rps'] / fj['rps']:>10.2f}x {get('ferry grpc')['rps'] / fj['rps']:>8.2f}x"
                  + (f" | {fj['rps'] / get('baseline json')['rps']:>6.2f}x" if args.baseline else ""))
    for rows, floor in floors.items():
        print(f"floor: in-process forward at {rows} row(s): " + ", ".join(
            f"{name} {seconds * 1e6:.0f} us/call ({1 / seconds:.0f} calls/s)" for name, seconds in floor.items()))
    if triton_note:
        print(triton_note)
    print("targets: ferry/mlflow >= 3x at concurrency 32 with p99 m/f > 1; ferry/triton json >= 5x; binary/json and grpc/json > 1 at 8 rows")


if __name__ == "__main__":
    main()
