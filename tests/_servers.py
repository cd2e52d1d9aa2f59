"""Real local servers for integration tests: an ``mlflow server`` process and moto's
standalone S3 endpoint. Both bind 127.0.0.1 only, and every test that starts one stops it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class LocalServer:
    def __init__(self, argv: list[str], health_url: str, log: Path, env: dict[str, str] | None = None):
        self.argv, self.health_url, self.log, self.env = argv, health_url, log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **(self.env or {})})
        _wait_http(self.health_url, self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None


_MIGRATED: list[Path] = []  # one SQLite store with MLflow's schema, made once per test session


def _migrated_store() -> Path:
    """An empty SQLite store with every MLflow migration applied: a new server's store starts as a
    copy of it instead of migrating from scratch (seconds per server on a small machine)."""
    if not _MIGRATED:
        import atexit
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="ferry-mlflow-schema-"))
        atexit.register(shutil.rmtree, folder, True)
        subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{folder / 'mlflow.db'}"],
                       check=True, capture_output=True, timeout=300)
        _MIGRATED.append(folder / "mlflow.db")
    return _MIGRATED[0]


class MlflowServer(LocalServer):
    """``mlflow server`` proxying artifacts (``--artifacts-destination``: a folder of ``workdir``
    unless ``artifacts`` names another, e.g. ``s3://bucket/prefix`` with ``env`` giving the
    server its AWS settings)."""

    def __init__(self, workdir: Path, backend_uri: str | None = None, port: int | None = None, *,
                 artifacts: str | None = None, env: dict[str, str] | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if backend_uri is None and not (workdir / "mlflow.db").exists():
            import shutil

            shutil.copyfile(_migrated_store(), workdir / "mlflow.db")
        backend_uri = backend_uri or f"sqlite:///{workdir / 'mlflow.db'}"
        argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts or (workdir / "artifacts").as_uri(),
                "--workers", "1"]
        # MLflow 3's server also starts a job runner and its queue consumers (for its GenAI jobs,
        # which Ferry does not use): several processes per server, and their start-up CPU, saved
        super().__init__(argv, f"{self.url}/health", workdir / "mlflow-server.log",
                         env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})


class MotoServer(LocalServer):
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        super().__init__(argv, f"{self.url}/moto-api/", workdir / "moto.log")

    @property
    def aws_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def postgres_database(prefix: str = "ferry_test") -> Iterator[str]:
    """A fresh database (its name) on this machine's PostgreSQL (127.0.0.1:5432, trust auth for
    user postgres), dropped after; the test is skipped, with the reason, where none answers."""
    import uuid

    import pytest

    psycopg2 = pytest.importorskip("psycopg2")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"needs PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres: {exc}")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
