"""``ferry serve`` with real parts: a model trained and logged with MLflow in the test, the
server as a separate process on 127.0.0.1, KServe's own REST client and data models."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration
FERRY = str(Path(sys.executable).with_name("ferry"))


def _train_and_log(tmp: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """A tiny digits MLP, trained for a moment and registered as tiny-digits/1 (pt2) and /2 (ONNX)."""
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    import torch
    from mlflow.models import infer_signature

    from jobs.digits.data import load_split

    from tests.conftest import scoped_tracking_uri

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with scoped_tracking_uri(uri):
        return _train_and_log_to(uri, tmp, mlflow, mlflow.onnx, mlflow.pytorch, onnx, torch, infer_signature, load_split)


def _train_and_log_to(uri, tmp, mlflow, mlflow_onnx, mlflow_pytorch, onnx, torch, infer_signature, load_split):
    exp = mlflow.create_experiment("serve-test", artifact_location=(tmp / "artifacts").as_uri())
    (x, y), (x_test, _) = load_split(7)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    example = x_test[:8]
    with torch.no_grad():
        expected = model(torch.from_numpy(x_test[:16])).numpy()
    signature = infer_signature(example, model(torch.from_numpy(example)).detach().numpy())
    with mlflow.start_run(experiment_id=exp):
        mlflow_pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                 registered_model_name="tiny-digits", serialization_format="pt2", pip_requirements=["torch"])
        onnx_path = tmp / "tiny.onnx"
        torch.onnx.export(model, (torch.from_numpy(example),), str(onnx_path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        mlflow_onnx.log_model(onnx.load(str(onnx_path)), name="onnx", signature=signature,
                              registered_model_name="tiny-digits", pip_requirements=["onnxruntime"])
    return uri, x_test[:16], expected


class Server:
    def __init__(self, uri: str, tracking: str, *args: str, env: dict[str, str] | None = None):
        from tests._servers import free_port

        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.proc = subprocess.Popen([FERRY, "serve", uri, "--port", str(self.port), "--grpc-port", str(self.grpc_port), *args],
                                     env={**os.environ, "MLFLOW_TRACKING_URI": tracking, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.saw_not_ready = False

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                r = httpx.get(f"{self.url}/v2/health/ready", timeout=1)
                if r.status_code == 200:
                    return
                self.saw_not_ready |= r.status_code == 503 and r.json() == {"ready": False}
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server never became ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _train_and_log(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module", params=["models:/tiny-digits/1", "models:/tiny-digits/2"], ids=["pytorch-pt2", "onnx"])
def server(request, model):
    tracking, _, _ = model
    srv = Server(request.param, tracking, "--name", "tiny-digits")
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0


def test_live_once_ready(server):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}


def test_readiness_false_until_loaded_and_warmed_up(tmp_path):
    """A model whose every call takes 0.4 s: its warm-up (two calls) keeps /v2/health/ready at
    503 for 0.8 s after the server listens, whatever the machine's speed (a model that loads in
    a few milliseconds may be ready before the first poll)."""
    from tests._models import save_sleep_model

    model = save_sleep_model(tmp_path / "slow", base_ms=400)
    srv = Server(str(model), f"sqlite:///{tmp_path / 'mlflow.db'}", "--name", "slow")
    try:
        srv.wait_ready()
        assert srv.saw_not_ready  # /v2/health/ready answered 503 while the model loaded
        assert httpx.get(f"{srv.url}/v2/health/live").json() == {"live": True}
    finally:
        assert srv.stop() == 0


def test_v2_and_v1_with_kserve_client_match_the_model(server, model):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    _, x, expected = model

    async def call():
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        request = InferRequest(model_name="tiny-digits", infer_inputs=[InferInput("x", list(x.shape), "FP32", x)], request_id="r-1")
        response = await v2.infer(server.url, request, model_name="tiny-digits")
        assert await v2.is_model_ready(server.url, "tiny-digits")
        await v2.close()
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
        predictions = await v1.infer(server.url, {"instances": x.tolist()}, model_name="tiny-digits")
        await v1.close()
        return response, predictions

    response, predictions = asyncio.run(call())
    assert response.id == "r-1" and response.model_name == "tiny-digits"
    out = response.outputs[0].as_numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(predictions["predictions"]), expected, rtol=1e-4, atol=1e-4)


def test_metadata(server):
    meta = httpx.get(f"{server.url}/v2/models/tiny-digits").json()
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["platform"] in ("pytorch", "onnx")
    assert meta["parameters"] == {"device": "cpu", "dtype": "float32"}  # auto on a machine without a GPU
    assert httpx.get(f"{server.url}/v1/models/tiny-digits").json() == {"name": "tiny-digits", "ready": True}


def _v2(data, shape, datatype="FP32"):
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


BAD = [
    ("POST", "/v2/models/tiny-digits/infer", b"{not json", 400, "not valid JSON"),
    ("POST", "/v2/models/tiny-digits/infer", _v2([0.0] * 64, [1, 64]), 400, "does not match the model's input [N, 1, 8, 8]"),
    ("POST", "/v2/models/tiny-digits/infer", _v2([0.0] * 10, [1, 1, 8, 8]), 400, "has 10 values; shape [1, 1, 8, 8] needs 64"),
    ("POST", "/v2/models/tiny-digits/infer", _v2(["a"] * 64, [1, 1, 8, 8], "BYTES"), 400, "the model expects 'FP32'"),
    ("POST", "/v2/models/tiny-digits/infer", _v2(["a"] * 64, [1, 1, 8, 8]), 400, "not a flat list of FP32"),
    ("POST", "/v2/models/tiny-digits/infer", {"input": []}, 400, '"inputs" is missing'),
    ("POST", "/v1/models/tiny-digits:predict", {"instances": [[1, 2], [3]]}, 400, "rectangular array"),
    ("POST", "/v1/models/tiny-digits:predict", {"rows": []}, 400, '{"instances": [...]}'),
    ("POST", "/v2/models/other/infer", _v2([0.0] * 64, [1, 1, 8, 8]), 404, "model 'other' is not served here"),
    ("GET", "/v2/models/tiny-digits/infer", None, 405, "use POST"),
    ("GET", "/v3/anything", None, 404, "no route"),
    ("POST", "/v2/models/tiny-digits/infer", _v2([0.0] * 64 * 40000, [40000, 1, 8, 8]), 413, "over the limit"),
]


@pytest.mark.parametrize("method,path,body,status,message", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_4xx_with_a_message(server, method, path, body, status, message):
    content = body if isinstance(body, bytes) or body is None else httpx.Request("POST", "/", json=body).content
    r = httpx.request(method, f"{server.url}{path}", content=content, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_load_with_malformed_payloads_never_5xx(server, model):
    _, x, _ = model
    good = httpx.Request("POST", "/", json=_v2(x[:1].ravel().tolist(), [1, 1, 8, 8])).content
    bad = [b"{oops", httpx.Request("POST", "/", json=_v2([1.0], [1, 1, 8, 8])).content]

    async def run():
        codes: list[tuple[bool, int, str]] = []
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            async def worker(offset: int):
                for i in range(offset, 5000, 32):
                    malformed = i % 10 == 0
                    body = bad[i % 2] if malformed else good
                    r = await client.post("/v2/models/tiny-digits/infer", content=body)
                    codes.append((malformed, r.status_code, r.text))
            await asyncio.gather(*(worker(k) for k in range(32)))
        return codes

    codes = asyncio.run(run())
    assert len(codes) == 5000
    assert not [c for c in codes if c[1] >= 500]
    malformed = [c for c in codes if c[0]]
    assert len(malformed) == 500 and all(400 <= code < 500 and '"error"' in text for _, code, text in malformed)
    assert all(code == 200 for m, code, _ in codes if not m)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'ferry_requests_total{code="400",model="tiny-digits",protocol="v2"}' in metrics
    assert "ferry_batch_size_bucket" in metrics and "ferry_queue_depth" in metrics


@pytest.mark.parametrize("uri", ["models:/tiny-digits/1", "models:/tiny-digits/2"], ids=["pytorch-pt2", "onnx"])
def test_serving_leaves_no_copy_of_the_model_behind(uri, model, tmp_path):
    """The downloaded model is loaded into memory and its folder removed: nothing accumulates
    under the temp dir however often a server starts."""
    tracking, x, expected = model
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    srv = Server(uri, tracking, "--name", "tiny-digits", env={"TMPDIR": str(tmp)})
    try:
        srv.wait_ready()
        out = httpx.post(f"{srv.url}/v2/models/tiny-digits/infer", json=_v2(x.ravel().tolist(), list(x.shape))).json()
        np.testing.assert_allclose(np.asarray(out["outputs"][0]["data"]).reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)
        assert list(tmp.glob("ferry-*")) == []  # already gone while serving
    finally:
        assert srv.stop() == 0
    # no folder at all (a model copy is one); importing ONNX Runtime writes its own one-line .ses file
    assert [p.name for p in tmp.iterdir() if p.is_dir() or p.name != ".ses"] == []


def test_sigterm_drains_in_flight_requests(model):
    tracking, x, _ = model
    srv = Server("models:/tiny-digits/1", tracking, "--name", "tiny-digits", "--max-batch-size", "4096")
    srv.wait_ready()
    big = httpx.Request("POST", "/", json=_v2(np.tile(x, (256, 1, 1, 1)).ravel().tolist(), [4096, 1, 8, 8])).content

    async def run():
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            tasks = [asyncio.create_task(client.post("/v2/models/tiny-digits/infer", content=big)) for _ in range(16)]
            await asyncio.sleep(0.3)
            srv.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert srv.proc.wait(timeout=60) == 0
    answered = [r for r in results if isinstance(r, httpx.Response)]
    assert answered and all(r.status_code == 200 for r in answered)
    # requests already received were answered; any refused ones were refused at connect, not dropped mid-way
    assert all(isinstance(r, (httpx.Response, httpx.ConnectError)) for r in results), results


# ---- the binary tensor extension ---------------------------------------------------------------
def test_triton_http_client_with_binary_and_json_tensors(server, model):
    """NVIDIA Triton's own HTTP client, with its defaults (binary tensors) and without."""
    import tritonclient.http as httpclient

    _, x, expected = model
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("tiny-digits")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    output = client.get_model_metadata("tiny-digits")["outputs"][0]["name"]
    for binary_in in (True, False):
        for binary_out in (True, False):
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary_in)
            result = client.infer("tiny-digits", [tensor], outputs=[httpclient.InferRequestedOutput(output, binary_data=binary_out)])
            np.testing.assert_allclose(result.as_numpy(output), expected, rtol=1e-4, atol=1e-5)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # the client's defaults: binary in, and no outputs named (JSON out)
    np.testing.assert_allclose(client.infer("tiny-digits", [tensor]).as_numpy(output), expected, rtol=1e-4, atol=1e-5)
    client.close()


def _binary(header: dict, raw: bytes, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    import json

    text = json.dumps(header).encode()
    return text + raw, {"Inference-Header-Content-Length": str(len(text) if header_length is None else header_length)}


def _bin_input(size: int, shape=(1, 1, 8, 8), datatype="FP32"):
    return {"inputs": [{"name": "x", "shape": list(shape), "datatype": datatype, "parameters": {"binary_data_size": size}}]}


ROW = np.zeros((1, 1, 8, 8), dtype=np.float32).tobytes()
BAD_BINARY = [
    (_binary(_bin_input(256), ROW, header_length=10_000), "past the end of the"),
    (_binary(_bin_input(128), ROW[:128]), "binary_data_size is 128 bytes; shape [1, 1, 8, 8] of FP32 needs 256 (64 × 4)"),
    (_binary(_bin_input(256), ROW + b"\0" * 8), "8 bytes of binary data follow the last binary input"),
    (_binary(_bin_input(512), ROW), "binary_data_size is 512 bytes, past the end of the 256 bytes of binary data left"),
    (_binary(_bin_input(256, datatype="FP8"), ROW), "'FP8' is not a datatype of the protocol"),
    ((_binary(_bin_input(256), ROW)[0], {}), "not valid JSON"),
    ((_binary(_bin_input(256), ROW)[0], {"Inference-Header-Content-Length": "lots"}), "must be a byte count"),
    (_binary({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}, ROW), "inputs[0].data is missing"),
]


@pytest.mark.parametrize("request_,message", BAD_BINARY, ids=[m[:30] for _, m in BAD_BINARY])
def test_malformed_binary_requests_get_400_and_the_server_lives_on(server, request_, message):
    body, headers = request_
    r = httpx.post(f"{server.url}/v2/models/tiny-digits/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                                      "FP16", "FP32", "FP64", "BYTES"])
def test_binary_tensors_round_trip_every_datatype(datatype):
    from ferry.serve._protocol import from_bytes, to_bytes

    if datatype == "BYTES":
        x = np.array([b"", b"a", "é".encode(), b"\0" * 300, b"xyz", b"q"], dtype=np.object_).reshape(2, 3)
    else:
        from ferry.serve._model import OIP_DTYPES

        x = (np.arange(6) % 2 == 1) if datatype == "BOOL" else np.arange(6).astype(OIP_DTYPES[datatype])
        x = x.reshape(2, 3)
    raw = to_bytes(x)
    if datatype not in ("BYTES", "BOOL"):
        assert raw == x.astype(x.dtype.newbyteorder("<")).tobytes()  # little-endian, row-major
    back = from_bytes(raw, datatype, [2, 3], "inputs[0]")
    assert back.shape == (2, 3) and back.tolist() == x.tolist()


# ---- gRPC (KServe's v2 protocol, the service Triton serves) -------------------------------------
TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
x = np.load(sys.argv[2])
client = grpcclient.InferenceServerClient(url=sys.argv[1])
out = {"live": client.is_server_live(), "ready": client.is_server_ready(), "model_ready": client.is_model_ready("tiny-digits"),
       "server": client.get_server_metadata(as_json=True)["name"], "meta": client.get_model_metadata("tiny-digits", as_json=True)}
name = out["meta"]["outputs"][0]["name"]
tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
tensor.set_data_from_numpy(x)  # raw_input_contents
result = client.infer("tiny-digits", [tensor], request_id="g-1")
out["y"], out["id"] = result.as_numpy(name).tolist(), result.get_response().id
bad = grpcclient.InferInput("x", [1, 64], "FP32")
bad.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
out["errors"] = []
for model_name, tensors in (("tiny-digits", [bad]), ("other", [tensor])):
    try:
        client.infer(model_name, tensors)
        out["errors"].append(None)
    except InferenceServerException as exc:
        out["errors"].append([exc.status(), exc.message()])
out["still_ready"] = client.is_server_ready()
print(json.dumps(out))
"""


def _client_script(script: str, server: "Server", x: np.ndarray, tmp_path: Path) -> object:
    """Run a client in a process of its own: Triton's and KServe's stubs define the same protocol
    messages, and one process's protobuf registry holds only one of them."""
    import json

    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-c", script, server.grpc, str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_triton_grpc_client(server, model, tmp_path):
    _, x, expected = model
    out = _client_script(TRITON_GRPC, server, x, tmp_path)
    assert out["live"] and out["ready"] and out["model_ready"] and out["server"] == "ferry"
    assert out["meta"]["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    np.testing.assert_allclose(np.asarray(out["y"]), expected, rtol=1e-4, atol=1e-5)
    assert out["id"] == "g-1"
    (code1, message1), (code2, message2) = out["errors"]
    assert code1 == "StatusCode.INVALID_ARGUMENT" and "does not match the model's input [N, 1, 8, 8]" in message1
    assert code2 == "StatusCode.NOT_FOUND" and "model 'other' is not served here" in message2
    assert out["still_ready"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'ferry_requests_total{code="OK",model="tiny-digits",protocol="grpc"}' in metrics
    assert 'ferry_requests_total{code="INVALID_ARGUMENT",model="tiny-digits",protocol="grpc"}' in metrics


KSERVE_GRPC = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
x = np.load(sys.argv[2])
async def main():
    client = InferenceGRPCClient(sys.argv[1], verbose=False, use_ssl=False, timeout=30)
    out = []
    for binary in (False, True):  # typed contents (fp32_contents), then raw_input_contents
        tensor = InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        response = await client.infer(InferRequest(model_name="tiny-digits", infer_inputs=[tensor], request_id="k"))
        out.append(response.outputs[0].as_numpy().tolist())
    print(json.dumps(out))
    await client.close()
asyncio.run(main())
"""


def test_kserve_grpc_client_with_typed_and_raw_contents(server, model, tmp_path):
    _, x, expected = model
    typed, raw = _client_script(KSERVE_GRPC, server, x, tmp_path)
    np.testing.assert_allclose(np.asarray(typed), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(raw), expected, rtol=1e-4, atol=1e-5)


# ---- devices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,platform,in_thread", [("1", "pytorch", False), ("2", "onnx", True)])
def test_where_the_batcher_runs_each_kind_of_model(model, version, platform, in_thread):
    """A torch program on the CPU releases the GIL around each operator: it runs in the event
    loop's thread; ONNX Runtime releases it once per call: a worker thread (see ``_batcher``)."""
    from ferry.serve import load_model

    from tests.conftest import scoped_tracking_uri

    tracking, x, expected = model
    with scoped_tracking_uri(tracking):
        loaded = load_model(f"models:/tiny-digits/{version}", device="cpu")
    assert (loaded.platform, loaded.in_thread) == (platform, in_thread)
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-4, atol=1e-5)


def test_an_impossible_placement_is_refused_before_serving(model):
    import torch

    tracking, _, _ = model
    ask = ["--device", "cuda:7"] if torch.cuda.device_count() < 8 else ["--device", "nope"]
    for argv, message in [(ask, "--device cuda:7: " if ask[1] == "cuda:7" else "--device must be"),
                          (["--device", "cpu", "--dtype", "float16"], "--dtype float16 needs a GPU"),
                          (["--dtype", "float8"], "--dtype must be one of float32, float16, bfloat16")]:
        out = subprocess.run([FERRY, "serve", "models:/tiny-digits/1", "--port", "0", "--grpc-port", "0", *argv],
                             env={**os.environ, "MLFLOW_TRACKING_URI": tracking}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, (argv, out.stderr)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no GPU on this machine: the CUDA path "
                    "(pinned memory, non-blocking copies, float16) runs where torch sees one")
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-4), ("float16", 2e-2)])
def test_cuda_serving_matches_the_model(model, dtype, tolerance):
    tracking, x, expected = model
    srv = Server("models:/tiny-digits/1", tracking, "--name", "tiny-digits", "--device", "cuda", "--dtype", dtype)
    try:
        srv.wait_ready()
        meta = httpx.get(f"{srv.url}/v2/models/tiny-digits").json()
        assert meta["parameters"] == {"device": "cuda:0", "dtype": dtype}
        out = httpx.post(f"{srv.url}/v2/models/tiny-digits/infer", json=_v2(x.ravel().tolist(), list(x.shape))).json()
        np.testing.assert_allclose(np.asarray(out["outputs"][0]["data"]).reshape(expected.shape), expected,
                                   rtol=tolerance, atol=tolerance)
    finally:
        assert srv.stop() == 0


# ---- several inputs and outputs --------------------------------------------------------------------
def _two_io_models(tmp: Path) -> tuple[str, dict, dict]:
    """A model of two inputs (a: [N, 4] FP32, b: [N, 3] FP32) and two outputs (y: [N, 2], z: [N]),
    registered as two-io/1 (torch.export) and two-io/2 (ONNX)."""
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    import torch
    from mlflow.models import infer_signature

    from tests.conftest import scoped_tracking_uri

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, a, b):
            return self.linear(a) + b.sum(dim=1, keepdim=True), (a * a).sum(dim=1) - b.mean(dim=1)

    torch.manual_seed(3)
    model = TwoHeads().eval()
    rng = np.random.default_rng(0)
    inputs = {"a": rng.normal(size=(6, 4)).astype(np.float32), "b": rng.normal(size=(6, 3)).astype(np.float32)}
    with torch.no_grad():
        y, z = (t.numpy() for t in model(torch.from_numpy(inputs["a"]), torch.from_numpy(inputs["b"])))
    outputs = {"y": y, "z": z}
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with scoped_tracking_uri(uri):
        exp = mlflow.create_experiment("two-io", artifact_location=(tmp / "artifacts").as_uri())
        signature = infer_signature(inputs, outputs)
        with mlflow.start_run(experiment_id=exp):
            mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=(inputs["a"], inputs["b"]),
                                     registered_model_name="two-io", serialization_format="pt2", pip_requirements=["torch"])
            path = tmp / "two.onnx"
            torch.onnx.export(model, (torch.from_numpy(inputs["a"]), torch.from_numpy(inputs["b"])), str(path), dynamo=False,
                              input_names=["a", "b"], output_names=["y", "z"],
                              dynamic_axes={"a": {0: "n"}, "b": {0: "n"}, "y": {0: "n"}, "z": {0: "n"}})
            mlflow.onnx.log_model(onnx.load(str(path)), name="onnx", signature=signature, registered_model_name="two-io",
                                  pip_requirements=["onnxruntime"])
    return uri, inputs, outputs


@pytest.fixture(scope="module")
def two_io(tmp_path_factory):
    return _two_io_models(tmp_path_factory.mktemp("two-io"))


@pytest.fixture(scope="module", params=["models:/two-io/1", "models:/two-io/2"], ids=["pytorch-pt2", "onnx"])
def two_io_server(request, two_io):
    srv = Server(request.param, two_io[0], "--name", "two-io")
    srv.wait_ready()
    yield srv
    srv.stop()


def test_two_inputs_and_outputs_over_rest_json_binary_and_mixed(two_io_server, two_io):
    import json

    _, inputs, outputs = two_io
    url = f"{two_io_server.url}/v2/models/two-io/infer"
    meta = httpx.get(f"{two_io_server.url}/v2/models/two-io").json()
    assert [t["name"] for t in meta["inputs"]] == ["a", "b"] and [t["name"] for t in meta["outputs"]] == ["y", "z"]
    # JSON, the inputs in the other order (matched by name)
    body = {"inputs": [{"name": n, "shape": list(inputs[n].shape), "datatype": "FP32", "data": inputs[n].ravel().tolist()}
                       for n in ("b", "a")]}
    out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in httpx.post(url, json=body).json()["outputs"]}
    for name in ("y", "z"):
        np.testing.assert_allclose(out[name], outputs[name], rtol=1e-4, atol=1e-5)
    # mixed: a as JSON, b as binary; only z asked for, as binary
    header = {"inputs": [{"name": "a", "shape": [6, 4], "datatype": "FP32", "data": inputs["a"].ravel().tolist()},
                         {"name": "b", "shape": [6, 3], "datatype": "FP32", "parameters": {"binary_data_size": 72}}],
              "outputs": [{"name": "z", "parameters": {"binary_data": True}}]}
    text = json.dumps(header).encode()
    r = httpx.post(url, content=text + inputs["b"].tobytes(), headers={"Inference-Header-Content-Length": str(len(text))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    answer = json.loads(r.content[:n])
    assert [o["name"] for o in answer["outputs"]] == ["z"] and answer["outputs"][0]["parameters"]["binary_data_size"] == 24
    np.testing.assert_allclose(np.frombuffer(r.content[n:], dtype="<f4"), outputs["z"], rtol=1e-4, atol=1e-5)
    for bad, message in [({"inputs": body["inputs"][:1]}, "takes 2 inputs named a, b; got b"),
                         ({"inputs": [body["inputs"][1], {**body["inputs"][0], "shape": [2, 3],
                                                          "data": inputs["b"][:2].ravel().tolist()}]},
                          "different numbers of rows (6, 2)"),
                         ({**body, "outputs": [{"name": "w"}]}, "outputs[0].name 'w' is not an output of the model (y, z)")]:
        r = httpx.post(url, json=bad)
        assert r.status_code == 400 and message in r.json()["error"], r.text
    r = httpx.post(f"{two_io_server.url}/v1/models/two-io:predict", json={"instances": inputs["a"].tolist()})
    assert r.status_code == 400 and "use the v2 API" in r.json()["error"]


TWO_IO_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
data = np.load(sys.argv[2])
client = grpcclient.InferenceServerClient(url=sys.argv[1])
tensors = []
for name in ("a", "b"):
    t = grpcclient.InferInput(name, list(data[name].shape), "FP32")
    t.set_data_from_numpy(data[name])
    tensors.append(t)
result = client.infer("two-io", tensors)
print(json.dumps({n: result.as_numpy(n).tolist() for n in ("y", "z")}))
"""


def test_two_inputs_and_outputs_over_grpc(two_io_server, two_io, tmp_path):
    import json

    _, inputs, outputs = two_io
    np.savez(tmp_path / "io.npz", **inputs)
    out = subprocess.run([sys.executable, "-c", TWO_IO_GRPC, two_io_server.grpc, str(tmp_path / "io.npz")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("y", "z"):
        np.testing.assert_allclose(np.asarray(answer[name]), outputs[name], rtol=1e-4, atol=1e-5)


# ---- workers -----------------------------------------------------------------------------------------
def test_workers_share_the_port_and_the_metrics(model):
    import psutil

    tracking, x, expected = model
    srv = Server("models:/tiny-digits/1", tracking, "--name", "tiny-digits", "--workers", "2")
    try:
        srv.wait_ready()
        # every worker loads its own copy (slowly on a busy machine): wait until all answer ready
        deadline = time.monotonic() + 300
        streak = 0
        while streak < 20 and time.monotonic() < deadline:
            streak = streak + 1 if httpx.get(f"{srv.url}/v2/health/ready", timeout=5).status_code == 200 else 0
        assert streak >= 20, "the second worker never answered ready"
        workers = [p for p in psutil.Process(srv.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2
        body = httpx.Request("POST", "/", json=_v2(x.ravel().tolist(), list(x.shape))).content

        async def load():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60,
                                         limits=httpx.Limits(max_connections=8, max_keepalive_connections=0)) as client:
                return await asyncio.gather(*(client.post("/v2/models/tiny-digits/infer", content=body) for _ in range(100)))

        for r in asyncio.run(load()):
            assert r.status_code == 200
            np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(expected.shape), expected,
                                       rtol=1e-4, atol=1e-5)
        metrics = httpx.get(f"{srv.url}/metrics").text
        line = next(m for m in metrics.splitlines()
                    if m.startswith('ferry_requests_total{') and 'code="200"' in m and 'protocol="v2"' in m)
        assert float(line.rsplit(" ", 1)[1]) == 100  # both workers' requests, whichever answered /metrics
        import grpc

        from ferry.serve._grpc import stubs

        pb = stubs()
        with grpc.insecure_channel(srv.grpc) as channel:  # every worker serves gRPC on the one port too
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                       request_serializer=pb.ServerLiveRequest.SerializeToString,
                                       response_deserializer=pb.ServerLiveResponse.FromString)
            assert all(live(pb.ServerLiveRequest(), timeout=10).live for _ in range(10))
        served = [w.cpu_times().user + w.cpu_times().system for w in workers]
        assert all(t > 0.5 for t in served), served  # each loaded the model; the kernel spread the connections
    finally:
        assert srv.stop() == 0


def test_workers_are_for_cpu_serving(model):
    tracking, _, _ = model
    import torch

    if torch.cuda.is_available():
        out = subprocess.run([FERRY, "serve", "models:/tiny-digits/1", "--workers", "2", "--device", "cuda", "--port", "0"],
                             env={**os.environ, "MLFLOW_TRACKING_URI": tracking}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "--workers is for CPU serving" in out.stderr
    out = subprocess.run([FERRY, "serve", "models:/tiny-digits/1", "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--workers" in out.stderr
