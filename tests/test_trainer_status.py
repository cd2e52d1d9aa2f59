"""Progress posted to Kubeflow Trainer v2's status server (``status.trainerStatus``), against a
real HTTPS server on 127.0.0.1 with a CA and server certificate made here (``cryptography``) and
a token file that rotates: the body matches the TrainJob CRD, the newest token is sent, posts are
throttled (counted on a fake clock, never timed), and no failure of the server reaches training."""

from __future__ import annotations

import datetime
import functools
import http.server
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, FormatChecker

from ferry.runtime._trainer_status import StatusClient, StatusReporter, from_env
from ferry.validate._crd import _strict

REPO = Path(__file__).resolve().parents[1]
TRAINJOBS_CRD = "trainer.kubeflow.org_trainjobs.yaml"


# ---- certificates, token, server ------------------------------------------------------------
def _ca(name: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate it signs for 127.0.0.1, and an unrelated CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("trainer-test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeflow-trainer-controller-manager")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "other_ca": folder / "other-ca.crt", "cert": folder / "tls.crt",
             "key": folder / "tls.key"}
    paths["ca"].write_bytes(_pem(ca_cert))
    paths["other_ca"].write_bytes(_pem(_ca("someone-else")[1]))
    paths["cert"].write_bytes(_pem(cert))
    paths["key"].write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return paths


class StatusServer:
    """The Trainer's status endpoint as far as a trainer sees it: HTTPS, one POST path,
    records each request's bearer token and JSON body, answers ``answer`` (200 echoes the body)."""

    PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs/digits/status"

    def __init__(self, pki: dict[str, Path]):
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.answer = 200
        self.fail_next = 0  # the next N requests are answered 500
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki["cert"], pki["key"])
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                server.requests.append((auth.removeprefix("Bearer "), json.loads(raw)))
                code = 404 if self.path != server.PATH else 500 if server.fail_next else server.answer
                server.fail_next = max(0, server.fail_next - 1)
                reply = raw if code == 200 else json.dumps({"kind": "Status", "status": "Failure", "message": "boom",
                                                            "code": code}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}{self.PATH}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> StatusServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def tokens(self) -> list[str]:
        return [token for token, _ in self.requests]

    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.requests]


@pytest.fixture
def server(pki):
    running = StatusServer(pki).start()
    yield running
    running.stop()


def _write_token(path: Path, token: str) -> None:
    """As the kubelet renews a projected token: a new file moved into place."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)


@pytest.fixture
def token(tmp_path) -> Path:
    path = tmp_path / "token"
    _write_token(path, "token-1")
    return path


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(step: int, total: int, seconds: float, **metrics: float) -> dict[str, Any]:
    """One message of the trainer's pipe, as the Tracker writes it."""
    return {"m": [[name, value, int(seconds * 1000), step] for name, value in metrics.items()],
            "g": {"step": step, "total": total, "ts": int(seconds * 1000)}}


# ---- the CRD's schema --------------------------------------------------------------------------
def _trainjobs_crd() -> Path | None:
    """The TrainJob CRD Ferry ships, else the reference copy beside the envtest binaries."""
    from ferry.settings import PACKAGED_CRD_DIR

    candidates = [PACKAGED_CRD_DIR / TRAINJOBS_CRD]
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(assets).resolve().parent.parent / "crds" / "trainer-v2.3.0" / TRAINJOBS_CRD)
    candidates.append(REPO.parent / "shared" / "crds" / "trainer-v2.3.0" / TRAINJOBS_CRD)
    return next((path for path in candidates if path.is_file()), None)


@functools.cache
def _trainer_status_validator() -> Draft7Validator | None:
    path = _trainjobs_crd()
    if path is None:
        return None
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["trainerStatus"]
    return Draft7Validator(_strict(schema), format_checker=FormatChecker())


def _check_body(body: dict[str, Any]) -> None:
    """What the server checks: the schema (strict, as the API server prunes nothing here but
    refuses what it does not know), the CEL rule ``has(self.lastUpdatedTime)``, RFC 3339 UTC."""
    assert set(body) == {"trainerStatus"}
    status = body["trainerStatus"]
    validator = _trainer_status_validator()
    if validator is not None:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(status)]
        assert not errors, errors
    assert "lastUpdatedTime" in status
    stamp = datetime.datetime.strptime(status["lastUpdatedTime"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(stamp.replace(tzinfo=datetime.UTC) - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(hours=1)


# ---- posting ---------------------------------------------------------------------------------
def test_posts_progress_time_left_and_latest_metrics_with_the_token_of_the_moment(server, pki, token):
    reporter = StatusReporter(StatusClient(server.url, str(pki["ca"]), str(token)), clock=FakeClock(), interval=0)
    reporter.observe(_progress(10, 100, 0.0, loss=2.5, lr=0.1))
    reporter.observe({"m": [["loss", 9.0, 500, 3]]})  # a late point of an earlier step is not the latest
    assert reporter.post_due()
    _write_token(token, "token-2")  # rotated between two posts
    reporter.observe(_progress(30, 100, 20.0, loss=0.5))
    assert reporter.post_due()
    reporter.observe({"g": {"done": True}})
    assert reporter.post_due()

    assert server.tokens() == ["token-1", "token-2", "token-2"]
    first, second, last = (body["trainerStatus"] for body in server.bodies())
    assert first["progressPercentage"] == 10 and "estimatedRemainingSeconds" not in first  # one sample: no rate yet
    assert first["metrics"] == [{"name": "loss", "value": "2.5"}, {"name": "lr", "value": "0.1"}]
    assert second["progressPercentage"] == 30
    assert second["estimatedRemainingSeconds"] == 70  # 20 steps in 20 s, 70 steps left
    assert second["metrics"] == [{"name": "loss", "value": "0.5"}, {"name": "lr", "value": "0.1"}]
    assert last["progressPercentage"] == 100 and last["estimatedRemainingSeconds"] == 0
    for body in server.bodies():
        _check_body(body)


def test_bodies_match_the_trainjob_crd(server, pki, token):
    """Long names and values, more metrics than the CRD allows, odd values, no progress yet."""
    if _trainer_status_validator() is None:
        pytest.skip(f"no {TRAINJOBS_CRD}: neither in ferry/validate/crds nor beside $KUBEBUILDER_ASSETS")
    reporter = StatusReporter(StatusClient(server.url, str(pki["ca"]), str(token)), clock=FakeClock(), interval=0)
    reporter.observe({"m": [["x" * 100, 1.0, 0, 1], ["y" * 70, 1.0, 0, 1], ["nan", float("nan"), 0, 1],
                            ["tiny", -1.2345678901234567e-300, 0, 1], ["", 3.0, 0, 1]]})
    assert reporter.post_due()
    reporter.observe({"m": [[f"metric/{i}", i, 0, 1] for i in range(300)], "g": {"step": 250, "total": 200}})
    assert reporter.post_due()
    first, second = (body["trainerStatus"] for body in server.bodies())
    assert "progressPercentage" not in first
    assert [m["name"] for m in first["metrics"]] == ["x" * 64, "y" * 64, "nan", "tiny"]
    assert len(second["metrics"]) == 256 and second["progressPercentage"] == 100  # past the total: 100
    for body in server.bodies():
        _check_body(body)
    bad = _trainer_status_validator().iter_errors({"progressPercentage": 101, "metrics": [{"name": "x" * 65, "value": "1"}]})
    assert len(list(bad)) == 2  # the check itself can fail


def test_at_most_one_post_per_interval(server, pki, token):
    clock = FakeClock()
    reporter = StatusReporter(StatusClient(server.url, str(pki["ca"]), str(token)), clock=clock, interval=5.0)
    start = clock.now
    for step in range(1, 601):  # a step every 0.1 s for a minute, a post attempt after each
        clock.now = start + step / 10
        reporter.observe(_progress(step, 600, clock.now, loss=1 / step))
        reporter.post_due()
    elapsed = clock.now - start
    assert 2 <= len(server.requests) <= elapsed / 5.0 + 1
    assert len(server.requests) == reporter.posts


def test_the_reporters_thread_throttles_and_ends_with_one_last_post(server, pki, token):
    interval = 0.2
    reporter = StatusReporter(StatusClient(server.url, str(pki["ca"]), str(token)), interval=interval).start()
    started = time.monotonic()
    for step in range(1, 101):
        reporter.observe(_progress(step, 100, time.time(), loss=1 / step))
        time.sleep(0.01)
    reporter.observe({"g": {"done": True}})
    reporter.stop()
    reporter.join(timeout=10)
    elapsed = time.monotonic() - started
    assert not reporter._thread.is_alive()
    assert 1 <= len(server.requests) <= elapsed / interval + 2  # + the last post, sent whatever the interval
    assert server.bodies()[-1]["trainerStatus"]["progressPercentage"] == 100
    assert server.bodies()[-1]["trainerStatus"]["metrics"] == [{"name": "loss", "value": "0.01"}]


# ---- failures ----------------------------------------------------------------------------------
def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}{StatusServer.PATH}"


@pytest.mark.parametrize(("case", "kind"), [
    ("answers 500", "http 500"),
    ("answers 403", "http 403"),
    ("is down", "unreachable"),
    ("has a certificate the CA did not sign", "tls"),
    ("no CA file", "ca"),
    ("no token file", "token"),
])
def test_a_failing_server_is_logged_once_and_never_raised(server, pki, token, tmp_path, caplog, case, kind):
    url, ca, token_file = server.url, str(pki["ca"]), str(token)
    if case == "answers 500":
        server.answer = 500
    elif case == "answers 403":
        server.answer = 403
    elif case == "is down":
        url = _closed_port_url()
    elif case == "has a certificate the CA did not sign":
        ca = str(pki["other_ca"])
    elif case == "no CA file":
        ca = str(tmp_path / "missing-ca.crt")
    elif case == "no token file":
        token_file = str(tmp_path / "missing-token")
    clock = FakeClock()
    reporter = StatusReporter(StatusClient(url, ca, token_file, timeout=2.0), clock=clock, interval=5.0)
    caplog.set_level(logging.WARNING, logger="ferry.trainer_status")
    attempts = 0
    for second in range(0, 121):  # two minutes of a failing server, new progress every second
        clock.now = 1000.0 + second
        reporter.observe(_progress(second + 1, 200, clock.now, loss=1.0))
        before = reporter._failures
        assert reporter.post_due() is False
        attempts += reporter._failures - before
    warnings = [r for r in caplog.records if r.name == "ferry.trainer_status"]
    assert len(warnings) == 1 and kind in warnings[0].getMessage() and warnings[0].levelno == logging.WARNING
    assert 3 <= attempts <= 7  # backing off: 5, 5, 10, 20, 40 s ... rather than 25 tries at one per 5 s
    if case in ("answers 500", "answers 403"):
        assert len(server.requests) == attempts
        server.answer = 200
        clock.now += 300  # past the longest wait: the next post goes through and the interval is back to 5 s
        assert reporter.post_due() and reporter._failures == 0
    elif case != "is down":
        assert server.requests == []


# ---- without Kubeflow Trainer ------------------------------------------------------------------
def test_without_the_url_nothing_starts_and_nothing_is_imported(server, pki, token, monkeypatch):
    monkeypatch.delenv("KUBEFLOW_TRAINER_SERVER_URL", raising=False)
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_CA_CERT", str(pki["ca"]))
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(token))
    assert from_env() is None
    code = textwrap.dedent("""
        import io, sys, threading
        from ferry.runtime._sidecar import Sender
        from ferry.runtime._trainer_status import from_env
        sender = Sender(None, "run", 10, 1.0)
        sender.status = from_env()
        sender.read(io.StringIO('{"m": [["loss", 1.0, 0, 1]], "g": {"step": 1, "total": 2}}\\n'))
        print(sender.status, [t.name for t in threading.enumerate()], "ssl" in sys.modules, "http.client" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k != "KUBEFLOW_TRAINER_SERVER_URL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["None", "['MainThread']", "False", "False"]
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", server.url)
    assert isinstance(from_env(), StatusReporter)  # the same check can see a reporter
    assert server.requests == []


# ---- a training process ----------------------------------------------------------------------
JOB = """
import time

import numpy as np

import ferry.runtime as fr
from ferry.runtime._tracking import report_progress

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 4))
y = x @ np.array([1.0, -2.0, 0.5, 3.0])
w = np.zeros(4)
steps = 200
with fr.Tracker(is_primary=True, flush_interval=0.2, system_metrics=False) as tracker:
    for step in range(1, steps + 1):  # linear regression by gradient descent, stopped early (step 25)
        error = x @ w - y
        w -= 0.1 * 2 * x.T @ error / len(y)
        tracker.log_metrics({"loss": float((error ** 2).mean())}, step)
        report_progress(step, steps)  # what ferry.runtime.progress(ctx, step, steps) reports
        time.sleep(0.03)
        if (error ** 2).mean() < 1e-3:
            break
    tracker.log_metrics({"test_loss": float(((x @ w - y) ** 2).mean())}, steps)
"""


def test_a_training_process_posts_its_progress_from_its_sidecar(server, pki, token, tmp_path):
    """A real job whose rank 0 runs the tracking sidecar: progress posts ending at 100 % (the job
    stopped early: finished is 100 %) with its latest metrics; the server's first answer is a 500,
    which changes nothing for the job."""
    server.fail_next = 1
    script = tmp_path / "train.py"
    script.write_text(JOB)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "FERRY_SUBMISSION_ID": "sub-1",
           "FERRY_JOB_NAME": "digits", "KUBEFLOW_TRAINER_SERVER_URL": server.url,
           "KUBEFLOW_TRAINER_SERVER_CA_CERT": str(pki["ca"]), "KUBEFLOW_TRAINER_SERVER_TOKEN": str(token),
           "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("[ferry] run "))[12:])
    assert run["status"] == "FINISHED"
    assert 1 <= len(server.requests) <= elapsed / 5.0 + 2  # one per 5 s at most, and the last
    assert set(server.tokens()) == {"token-1"}
    progress = [p for body in server.bodies() if (p := body["trainerStatus"].get("progressPercentage")) is not None]
    assert progress[-1] == 100 and progress == sorted(progress)
    last = {m["name"]: m["value"] for m in server.bodies()[-1]["trainerStatus"]["metrics"]}
    assert last == {name: str(value) for name, value in run["metrics"].items()} and set(last) == {"loss", "test_loss"}
    for body in server.bodies():
        _check_body(body)
    assert done.stderr.count("progress not posted") == 1 and "http 500" in done.stderr
