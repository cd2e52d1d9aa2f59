"""``ferry fetch``, Ferry's storage initializer, run as KServe runs it: the command and the
environment of the ClusterStorageContainer Ferry renders (its ConfigMap and Secret references
resolved as the kubelet would), with ``URI DEST`` appended. Against a real ``mlflow server``
whose artifacts live on S3 (moto's server): proxied (``--artifacts-destination s3://…``) and,
for an experiment with its own ``s3://`` artifact location, a plain S3 artifact root the
initializer reads with the AWS credentials of the Secret. Then the bad cases: an unknown
version, MLflow down, a flavour Ferry cannot serve, a download broken off half-way and one
stopped by SIGTERM; each fails with one line and leaves nothing in DEST."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests._servers import MlflowServer, MotoServer, free_port

pytestmark = pytest.mark.integration

BUCKET = "ferry-models"
TRACKING = {"tracking-uri": ""}  # the tracking ConfigMap's data, filled with the server's URL
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def initializer_process(uri: str, dest: Path, *, configmap: dict[str, str], secret: dict[str, str] | None,
                        extra_args: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """argv and environment of Ferry's storage initializer container for ``uri`` → ``dest``, as
    KServe builds the init container from the ClusterStorageContainer (its container, with the
    args ``URI DEST``) and the kubelet resolves its environment (``configmap``: the tracking
    ConfigMap's data; ``secret``: the credentials Secret's, None when the namespace has none)."""
    from ferry.render import render_storage_container

    container = render_storage_container()["spec"]["container"]
    assert "args" not in container, "KServe sets the args: URI and DEST"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(dest.parent)}
    for source in container.get("envFrom") or []:
        ref = source["secretRef"]
        if secret is None:
            assert ref.get("optional"), f"Secret {ref['name']} is required; the pod would not start"
            continue
        env.update(secret)
    for var in container["env"]:
        ref = var["valueFrom"]["configMapKeyRef"]
        env[var["name"]] = configmap[ref["key"]]
    return [*container["command"], *extra_args, uri, str(dest)], env


def fetch(uri: str, dest: Path, *, tracking_uri: str, secret: dict[str, str] | None = None,
          extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv, env = initializer_process(uri, dest, configmap={"tracking-uri": tracking_uri}, secret=secret,
                                    extra_args=extra_args)
    exe = Path(sys.executable).with_name(argv[0])
    return subprocess.run([str(exe), *argv[1:]], env={**env, **(extra_env or {})}, capture_output=True, text=True,
                          timeout=300)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Site:
    def __init__(self, server: MlflowServer, moto: MotoServer):
        self.server, self.moto = server, moto
        self.s3_secret = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                          "MLFLOW_S3_ENDPOINT_URL": moto.url, "AWS_DEFAULT_REGION": "us-east-1"}

    def s3(self):  # noqa: ANN201
        import boto3

        return boto3.client("s3", endpoint_url=self.moto.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def client(self):  # noqa: ANN201
        from mlflow import MlflowClient

        return MlflowClient(self.server.url)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """moto's S3, an mlflow server proxying artifacts to it, and registered models: ``proxied``
    (torch, artifacts through the server), ``plain`` (torch, in an experiment whose artifact
    location is s3:// itself), ``big`` (a larger torch model) and ``tabular`` (scikit-learn)."""
    import mlflow
    import mlflow.pytorch
    import mlflow.sklearn
    import torch
    from sklearn.linear_model import LogisticRegression

    from tests.conftest import scoped_tracking_uri

    work = tmp_path_factory.mktemp("fetch")
    moto = MotoServer(work)
    moto.start()
    server = None
    try:
        aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "MLFLOW_S3_ENDPOINT_URL": moto.url}
        site = Site(MlflowServer(work, artifacts=f"s3://{BUCKET}/proxied", env=aws), moto)
        site.s3().create_bucket(Bucket=BUCKET)
        server = site.server
        server.start()
        torch.manual_seed(0)
        x = torch.randn(8, 16)
        with environ(aws), scoped_tracking_uri(server.url):
            for name, model, location in (
                    ("proxied", torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)), None),
                    ("plain", torch.nn.Linear(16, 4), f"s3://{BUCKET}/plain"),
                    ("big", torch.nn.Sequential(torch.nn.Linear(16, 1024), torch.nn.Linear(1024, 1024)), None)):
                experiment = mlflow.create_experiment(f"fetch-{name}", artifact_location=location)
                with mlflow.start_run(experiment_id=experiment):
                    mlflow.pytorch.log_model(model.eval(), name="model", input_example=x.numpy(), registered_model_name=name,
                                             serialization_format="pt2", pip_requirements=["torch"])
            with mlflow.start_run(experiment_id=mlflow.create_experiment("fetch-tabular")):
                mlflow.sklearn.log_model(LogisticRegression().fit(np.eye(4), [0, 1, 0, 1]), name="model",
                                         registered_model_name="tabular")
        yield site
    finally:
        if server is not None:
            server.stop()
        moto.stop()


def predictions(model_uri: str, tracking_uri: str) -> np.ndarray:
    import mlflow.pyfunc

    from tests.conftest import scoped_tracking_uri

    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    with scoped_tracking_uri(tracking_uri):
        return np.asarray(mlflow.pyfunc.load_model(model_uri).predict(x))


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("ferry fetch: error: "), stderr
    return lines[-1]


def test_a_proxied_model_is_fetched_as_kserve_runs_the_initializer_and_answers_as_registered(site: Site, tmp_path: Path) -> None:
    dest = tmp_path / "mnt" / "models"
    done = fetch("models:/proxied/1", dest, tracking_uri=site.server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fetched models:/proxied/1 into ") and "pytorch" in done.stdout, done.stdout
    assert (dest / "MLmodel").is_file() and not list(dest.glob(".ferry-fetch-*"))
    np.testing.assert_array_equal(predictions(str(dest), site.server.url),
                                  predictions("models:/proxied/1", site.server.url))
    # a pod restarted after the fetch finished: the model is there, nothing is fetched again
    again = fetch("models:/proxied/1", dest, tracking_uri=site.server.url)
    assert again.returncode == 0 and "already in" in again.stdout, again.stdout + again.stderr


def test_a_plain_s3_artifact_root_is_read_with_the_credentials_of_the_secret(site: Site, tmp_path: Path) -> None:
    assert site.client().get_model_version_download_uri("plain", "1").startswith(f"s3://{BUCKET}/plain/")
    without = fetch("models:/plain/1", tmp_path / "none", tracking_uri=site.server.url)
    assert without.returncode != 0
    assert "models:/plain/1" in only_line(without.stderr)
    assert not any((tmp_path / "none").iterdir())
    dest = tmp_path / "models"
    done = fetch("models:/plain/1", dest, tracking_uri=site.server.url, secret=site.s3_secret)
    assert done.returncode == 0, done.stderr
    with environ(site.s3_secret):
        registered = predictions("models:/plain/1", site.server.url)
    # served from the folder, as the predictor container serves /mnt/models
    import httpx

    from tests.test_serve import Server

    server = Server(str(dest), "")
    try:
        server.wait_ready()
        x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
        answer = httpx.post(f"{server.url}/v2/models/models/infer", json={"inputs": [
            {"name": "input-0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}, timeout=30)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
    finally:
        server.stop()
    np.testing.assert_allclose(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]), registered,
                               rtol=1e-6, atol=1e-6)


def test_runs_and_mlflow_artifacts_uris_and_an_alias_are_fetched(site: Site, tmp_path: Path) -> None:
    client = site.client()
    version = client.get_model_version("proxied", "1")
    client.set_registered_model_alias("proxied", "production", "1")
    source = client.get_model_version_download_uri("proxied", "1")
    assert source.startswith("mlflow-artifacts:/"), source
    for i, uri in enumerate((f"runs:/{version.run_id}/model", source, "models:/proxied@production")):
        done = fetch(uri, tmp_path / str(i), tracking_uri=site.server.url)
        assert done.returncode == 0, (uri, done.stderr)
        assert (tmp_path / str(i) / "MLmodel").is_file(), uri


BAD = [
    # (case, URI, tracking URI ("" for the test's server, "down" for a closed port), what the line says)
    ("unknown-version", "models:/proxied/9", "", "not found"),
    ("unknown-model", "models:/nobody/1", "", "not found"),
    ("no-version", "models:/proxied", "", "names no version"),
    ("not-ferrys-uri", "s3://ferry-models/proxied/x", "", "ferry fetch takes models:/"),
    ("wrong-flavour", "models:/tabular/1", "", "cannot be served; Ferry serves pytorch and onnx"),
    ("mlflow-down", "models:/proxied/1", "down", "(tried 2 times): is MLflow at http://127.0.0.1:"),
]


@pytest.mark.parametrize("uri,tracking,says", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_failed_fetch_says_why_in_one_line_and_leaves_nothing(site: Site, tmp_path: Path, uri: str, tracking: str,
                                                                says: str) -> None:
    dest = tmp_path / "models"
    tracking_uri = f"http://127.0.0.1:{free_port()}" if tracking == "down" else site.server.url
    done = fetch(uri, dest, tracking_uri=tracking_uri, extra_args=("--attempts", "2"))
    assert done.returncode == (10 if tracking == "down" else 2), done.stdout + done.stderr  # 10: retry later
    line = only_line(done.stderr)
    assert says in line, line
    assert not dest.exists() or not any(dest.iterdir()), sorted(dest.iterdir())


def test_no_tracking_uri_and_bad_arguments_are_refused(site: Site, tmp_path: Path) -> None:
    done = fetch("models:/proxied/1", tmp_path / "models", tracking_uri="")
    assert done.returncode == 2 and "MLFLOW_TRACKING_URI is not set" in only_line(done.stderr)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.onnx").write_text("not this one")
    done = fetch("models:/proxied/1", tmp_path / "full", tracking_uri=site.server.url)
    assert done.returncode == 2 and "already holds model.onnx" in only_line(done.stderr)
    assert (tmp_path / "full" / "model.onnx").read_text() == "not this one"
    exe = Path(sys.executable).with_name("ferry")
    odd = subprocess.run([str(exe), "fetch", "models:/proxied/1"], capture_output=True, text=True, timeout=60)
    assert odd.returncode == 2 and "URI DEST pairs" in odd.stderr


def test_a_file_lost_from_the_store_is_caught_and_nothing_reaches_dest(site: Site, tmp_path: Path) -> None:
    """The version's weights gone from the store: S3 lists the folder without them and MLflow's
    download succeeds with the rest. The check of the MLmodel catches it, and DEST holds none of
    the files (the model server must never start on part of a model)."""
    client = site.client()
    run = client.get_model_version("big", "1").run_id
    experiment = client.get_run(run).info.experiment_id
    s3 = site.s3()
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"proxied/{experiment}/")["Contents"]
    assert len(objects) > 3, objects
    largest = max(objects, key=lambda o: o["Size"])
    body = s3.get_object(Bucket=BUCKET, Key=largest["Key"])["Body"].read()
    s3.delete_object(Bucket=BUCKET, Key=largest["Key"])
    try:
        dest = tmp_path / "models"
        done = fetch("models:/big/1", dest, tracking_uri=site.server.url, extra_args=("--attempts", "1"))
        assert done.returncode == 2, done.stdout + done.stderr
        assert "models:/big/1 is incomplete: its pytorch files (data) did not arrive" in only_line(done.stderr)
        assert sorted(dest.iterdir()) == []
    finally:
        s3.put_object(Bucket=BUCKET, Key=largest["Key"], Body=body)


def test_a_download_broken_off_half_way_leaves_nothing_in_dest(site: Site, tmp_path: Path) -> None:
    """The connection to MLflow cut in the middle of the weights: tried again (the cut is
    transient), cut again, failed with one line, DEST empty. (An MLflow server whose artifacts
    are on S3 hands out presigned URLs, and the files come from S3 itself; here the client is
    told to stream them through the server, which the proxy then cuts.)"""
    proxy = SlowProxy(site.server.port, rate=0, cut_after=600_000)
    try:
        dest = tmp_path / "models"
        done = fetch("models:/big/1", dest, tracking_uri=f"http://127.0.0.1:{proxy.port}", extra_args=("--attempts", "2"),
                     extra_env={"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"})
    finally:
        proxy.close()
    assert done.returncode == 10, (proxy.sent, proxy.cuts, done.stdout + done.stderr)  # out of reach: retry later
    assert "(tried 2 times)" in only_line(done.stderr)
    assert sorted(dest.iterdir()) == []
    assert proxy.cuts >= 2


class SlowProxy:
    """A TCP proxy to ``port`` that hands the answers on at about ``rate`` bytes a second (0: at
    once): a download that takes long enough to be stopped in the middle; with ``cut_after``, the
    server goes away once that many bytes of answers went through: every connection is closed
    from then on (``cuts`` counts them)."""

    def __init__(self, port: int, rate: int = 64_000, cut_after: int | None = None):
        self.target, self.rate, self.cut_after, self.cuts, self.sent = port, rate, cut_after, 0, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, 0, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.rate, self.cut_after), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int, cut_after: int | None) -> None:
        try:
            while chunk := src.recv(4096):
                if cut_after is not None and self.sent >= cut_after:
                    self.cuts += 1
                    break
                dst.sendall(chunk)
                if cut_after is not None:
                    self.sent += len(chunk)
                if rate:
                    time.sleep(len(chunk) / rate)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def test_a_fetch_stopped_by_sigterm_leaves_nothing_in_dest(site: Site, tmp_path: Path) -> None:
    proxy = SlowProxy(site.server.port)
    dest = tmp_path / "models"
    argv, env = initializer_process("models:/big/1", dest, configmap={"tracking-uri": f"http://127.0.0.1:{proxy.port}"},
                                    secret=None)
    env["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] = "false"  # the files through the (slow) server, not from S3
    process = subprocess.Popen([str(Path(sys.executable).with_name(argv[0])), *argv[1:]], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.is_file() for p in dest.glob(".ferry-fetch-*/**/*")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # as the kubelet stops a pod's container
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        proxy.close()
    assert process.returncode == 143, out + err
    assert "stopped while fetching models:/big/1" in err and "Traceback" not in err, err
    assert sorted(dest.iterdir()) == []
