"""What a capacity planner relies on from ``ferry serve`` and ``ferry deploy``: a request that
names an output the model does not have is refused (400 / INVALID_ARGUMENT, as Triton does) and
named outputs are the only ones answered; a model that cannot load takes the server down with
one line and a non-zero exit instead of leaving it live and never ready; neither command prints
a third-party progress bar. Real processes throughout: an ``mlflow server`` on 127.0.0.1, the
``ferry`` console script, each stopped by the test that started it."""

from __future__ import annotations

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
PROGRESS_BAR_MARKS = ("%|", "Downloading artifacts", "it/s]", "iB/s]")


def _log_models(tracking: str) -> dict[str, np.ndarray]:
    """Two models registered through the MLflow server (artifacts proxied by it, so serving
    downloads them over HTTP): one-out/1 (x: [N, 4] → one unnamed output) and two-out/1
    (x: [N, 4] → y: [N, 2], z: [N]). Returns the input and each model's answers to it."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from tests.conftest import scoped_tracking_uri

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x), (x * x).sum(dim=1)

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    one, two = torch.nn.Linear(4, 3).eval(), TwoHeads().eval()
    with torch.no_grad():
        out = one(torch.from_numpy(x)).numpy()
        y, z = (t.numpy() for t in two(torch.from_numpy(x)))
    with scoped_tracking_uri(tracking), mlflow.start_run(experiment_id=mlflow.create_experiment("contracts")):
        mlflow.pytorch.log_model(one, name="one", signature=infer_signature(x, out), input_example=x,
                                 registered_model_name="one-out", serialization_format="pt2", pip_requirements=["torch"])
        mlflow.pytorch.log_model(two, name="two", signature=infer_signature(x, {"y": y, "z": z}), input_example=x,
                                 registered_model_name="two-out", serialization_format="pt2", pip_requirements=["torch"])
    return {"x": x, "output-0": out, "y": y, "z": z}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real ``mlflow server`` holding one-out/1 and two-out/1; its URL and the tensors."""
    from tests._servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("contracts-mlflow"))
    try:
        server.start()
        yield server.url, _log_models(server.url)
    finally:
        server.stop()


class Serving:
    """``ferry serve`` as a process of its own, its stderr kept in a file of its own."""

    def __init__(self, uri: str, tracking: str, log_dir: Path, *args: str):
        from tests._servers import free_port

        self.port, self.grpc_port = free_port(), free_port()
        self.url, self.grpc = f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.grpc_port}"
        self.stderr_path = log_dir / f"serve-{self.port}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([FERRY, "serve", uri, "--port", str(self.port), "--grpc-port",
                                          str(self.grpc_port), *args],
                                         env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
                                         stdout=subprocess.DEVNULL, stderr=err)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server never became ready:\n{self.stderr}")

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
def servers(store, tmp_path_factory):
    """one-out/1 and two-out/1, each served by ``ferry serve`` from the MLflow server."""
    tracking, _ = store
    log_dir = tmp_path_factory.mktemp("contracts-serve")
    started = {}
    try:
        for name in ("one-out", "two-out"):
            started[name] = Serving(f"models:/{name}/1", tracking, log_dir)
        for srv in started.values():
            srv.wait_ready()
        yield started
    finally:
        codes = {name: srv.stop() for name, srv in started.items()}
    assert codes == {"one-out": 0, "two-out": 0}, {name: srv.stderr[-2000:] for name, srv in started.items()}


def _infer(srv: Serving, model: str, x: np.ndarray, outputs: list | None = None) -> httpx.Response:
    body: dict = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if outputs is not None:
        body["outputs"] = outputs
    return httpx.post(f"{srv.url}/v2/models/{model}/infer", json=body, timeout=30)


def _grpc_infer(srv: Serving, model: str, x: np.ndarray, outputs: list[str]):
    """ModelInfer over gRPC (KServe's stubs of the protocol); the response, or the RpcError."""
    import grpc

    from ferry.serve._grpc import stubs

    pb = stubs()
    request = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=list(x.shape), contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs])
    with grpc.insecure_channel(srv.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        try:
            return call(request, timeout=30)
        except grpc.RpcError as exc:
            return exc


# ---- requested outputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("model,known", [("one-out", "output-0"), ("two-out", "y, z")], ids=["one-output", "two-outputs"])
def test_an_output_the_model_does_not_have_is_refused_on_rest_and_grpc(servers, store, model, known):
    import grpc

    _, tensors = store
    srv, x = servers[model], tensors["x"]
    r = _infer(srv, model, x, [{"name": "nope"}])
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert "'nope'" in message and f"({known})" in message, message
    error = _grpc_infer(srv, model, x, ["nope"])
    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message
    # one known name beside an unknown one is refused as a whole, not answered in part
    first = known.split(", ")[0]
    r = _infer(srv, model, x, [{"name": first}, {"name": "nope"}])
    assert r.status_code == 400 and "outputs[1].name 'nope'" in r.json()["error"], r.text
    r = _infer(srv, model, x, [{"name": first}, {"name": first}])
    assert r.status_code == 400 and "more than once" in r.json()["error"], r.text
    for bad in ([{"parameters": {"binary_data": True}}], "y"):
        r = _infer(srv, model, x, bad)
        assert r.status_code == 400, r.text
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200  # the server lives on


@pytest.mark.parametrize("asked", [["y"], ["z"], ["z", "y"], None], ids=["y", "z", "z-y", "all"])
def test_only_the_named_outputs_are_answered_in_the_order_asked(servers, store, asked):
    _, tensors = store
    srv, x = servers["two-out"], tensors["x"]
    r = _infer(srv, "two-out", x, None if asked is None else [{"name": n} for n in asked])
    assert r.status_code == 200, r.text
    want = asked or ["y", "z"]
    answer = r.json()["outputs"]
    assert [o["name"] for o in answer] == want
    for o in answer:
        np.testing.assert_allclose(np.asarray(o["data"]).reshape(o["shape"]), tensors[o["name"]], rtol=1e-5, atol=1e-6)
    response = _grpc_infer(srv, "two-out", x, asked or [])
    assert [o.name for o in response.outputs] == want and len(response.raw_output_contents) == len(want)
    for o, raw in zip(response.outputs, response.raw_output_contents):
        np.testing.assert_allclose(np.frombuffer(raw, dtype="<f4").reshape(list(o.shape)), tensors[o.name],
                                   rtol=1e-5, atol=1e-6)


def test_a_one_output_model_answers_its_output_by_name(servers, store):
    _, tensors = store
    r = _infer(servers["one-out"], "one-out", tensors["x"], [{"name": "output-0"}])
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["output-0"], r.text
    np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(tensors["output-0"].shape),
                               tensors["output-0"], rtol=1e-5, atol=1e-6)


# ---- a model that cannot load ----------------------------------------------------------------------
def _broken_model(folder: Path, damage: str) -> Path:
    """An MLflow model folder whose MLmodel is sound but whose weights are not: the torch.export
    program ``data/model.pt2`` overwritten with other bytes (``corrupt``), or gone (``missing``)."""
    from importlib.metadata import version

    (folder / "data").mkdir(parents=True)
    tensor = '[{{"type": "tensor", "tensor-spec": {{"dtype": "float32", "shape": [-1, {}]}}}}]'
    (folder / "MLmodel").write_text(
        f"flavors:\n  pytorch:\n    model_data: data\n    pytorch_version: {version('torch')}\n"
        f"signature:\n  inputs: '{tensor.format(4)}'\n  outputs: '{tensor.format(3)}'\n")
    if damage == "corrupt":
        (folder / "data" / "model.pt2").write_bytes(b"these bytes are not a torch.export program\n" * 64)
    else:
        (folder / "data").rmdir()
    return folder


@pytest.mark.parametrize("damage,workers,reason", [
    ("corrupt", "1", "BadZipFile: File is not a zip file"),
    ("missing", "1", "FileNotFoundError"),
    ("corrupt", "2", "BadZipFile: File is not a zip file"),
], ids=["corrupt", "missing", "corrupt-two-workers"])
def test_a_model_that_cannot_load_stops_the_server_with_one_line(tmp_path, damage, workers, reason):
    from tests._servers import free_port

    folder = _broken_model(tmp_path / "broken-digits", damage)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([FERRY, "serve", str(folder), "--port", str(free_port()), "--grpc-port", str(free_port()),
                             "--workers", workers], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # the supervisor and its workers: one group to stop
    try:
        _, err = proc.communicate(timeout=300)  # a hang guard: before, the server stayed up, never ready
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 2, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: model 'broken-digits' ({folder}) cannot be loaded: ") and reason in line, err
    assert "Traceback" not in err and [line for line in err.splitlines() if reason in line] == [line], err


# ---- no third-party progress bars ------------------------------------------------------------------
def _bars(text: str) -> list[str]:
    """The lines (or carriage-return updates) of ``text`` that a progress bar drew."""
    return [part for line in text.splitlines() for part in line.split("\r") if any(m in part for m in PROGRESS_BAR_MARKS)]


def test_serve_prints_no_progress_bar_while_fetching_the_model(servers):
    """Both servers fetched their model from the MLflow server (MLflow draws a tqdm bar per
    download unless told not to); their stderr holds none."""
    for srv in servers.values():
        assert "loaded and warmed up" in srv.stderr  # the stderr of the whole start-up, download included
        assert _bars(srv.stderr) == [], srv.stderr


def _deploy_file(tmp_path: Path) -> Path:
    deploy_file = tmp_path / "deploy.py"
    deploy_file.write_text("from ferry import Deployment\nd = Deployment(name='one', model='models:/one-out/1')\n")
    return deploy_file


def test_deploy_prints_no_progress_bar(store, tmp_path, ferry_cli, crd_dir):
    tracking, _ = store
    result = ferry_cli("deploy", str(_deploy_file(tmp_path)), "-o", str(tmp_path / "out"), "--crd-dir", str(crd_dir),
                       env={"MLFLOW_TRACKING_URI": tracking})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "one" / "inferenceservice.yaml").is_file()  # the model's MLmodel was fetched
    assert _bars(result.stderr) == [] and _bars(result.stdout) == [], result.stderr


@pytest.mark.parametrize("before", [None, "true"], ids=["unset", "set"])
def test_the_progress_bar_switch_is_scoped_to_the_command(store, tmp_path, crd_dir, monkeypatch, before):
    """In one process, as a caller embedding the CLI runs it: the bars stay off during the
    command, and the caller's environment is as it was afterwards."""
    from typer.testing import CliRunner

    from ferry.cli import app

    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if before is None:
        monkeypatch.delenv(key, raising=False)
    else:
        monkeypatch.setenv(key, before)
    tracking, _ = store
    result = CliRunner().invoke(app, ["deploy", str(_deploy_file(tmp_path)), "-o", str(tmp_path / "out"), "--crd-dir",
                                      str(crd_dir)], env={"MLFLOW_TRACKING_URI": tracking})
    assert result.exit_code == 0, result.output
    assert _bars(result.stderr) == [], result.stderr
    assert os.environ.get(key) == before
