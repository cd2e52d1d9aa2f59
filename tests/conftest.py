from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

# the operator's harness (its namespace-per-test site, MLflow server and role), for every module
pytest_plugins = ["tests._operator"]

REPO = Path(__file__).resolve().parents[1]
SHARED_CRDS = REPO.parent / "shared" / "crds"  # the reference copy, beside a checkout (never needed)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    """The CRD schemas Ferry ships (checked against the reference in tests/test_crds.py)."""
    from ferry.settings import PACKAGED_CRD_DIR

    return PACKAGED_CRD_DIR


@pytest.fixture
def ferry_cli():
    """Run the installed ``ferry`` console script as a user would."""
    import subprocess

    exe = Path(sys.executable).with_name("ferry")

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], cwd=cwd or REPO, capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=120)

    return run


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite store; stopped after the test."""
    from tests._servers import MlflowServer

    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto_s3(tmp_path, monkeypatch):
    """moto's standalone S3 server on 127.0.0.1 (a real HTTP endpoint for boto3)."""
    from tests._servers import MotoServer

    server = MotoServer(tmp_path)
    server.start()
    for key, value in server.aws_env.items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


@contextlib.contextmanager
def restored_environ():
    """os.environ as it was before the block, whatever the block (or a library it called) set
    or removed in it."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for name in [n for n in os.environ if n not in before]:
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


@contextlib.contextmanager
def scoped_tracking_uri(uri: str):
    """``mlflow.set_tracking_uri`` also writes MLFLOW_TRACKING_URI into os.environ, which every
    later subprocess would inherit: set it for a block only, then put both back. MLflow's own
    setting is put back as it was, unset included (``mlflow.get_tracking_uri()`` would give the
    resolved default instead, pinning it for the rest of the process whatever the environment
    says later)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    before = utils._tracking_uri  # None when nothing set one
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None: unset again
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env


@pytest.fixture(scope="module")
def postgres_mlflow(tmp_path_factory):
    """An ``mlflow server`` backed by a fresh PostgreSQL database on 127.0.0.1:5432 (the
    Helm chart's database); skipped, with the reason, where no PostgreSQL answers."""
    import shutil
    import subprocess
    import uuid

    from tests._servers import MlflowServer

    if shutil.which("psql") is None:
        pytest.skip("PostgreSQL client (psql) not installed: apt-get install postgresql-client")
    db = f"ferry_test_{uuid.uuid4().hex[:10]}"
    made = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"CREATE DATABASE {db}"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 with trust auth: {made.stderr.strip()[:200]}")
    tmp = tmp_path_factory.mktemp("pg-mlflow")
    server = MlflowServer(tmp, backend_uri=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """An embedded (SQLite) registry holding model 'tiny' v1 and v2, alias champion → v2."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    model = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4).numpy()
    # restored_environ: saving a pt2 model leaves torch's cache folder in TORCHINDUCTOR_CACHE_DIR
    with restored_environ(), scoped_tracking_uri(uri), mlflow.start_run(
            experiment_id=mlflow.create_experiment("deploy", artifact_location=(tmp / "artifacts").as_uri())):
        for _ in range(2):
            mlflow.pytorch.log_model(model, name="model", input_example=x, registered_model_name="tiny",
                                     signature=infer_signature(x, model(torch.from_numpy(x)).detach().numpy()),
                                     serialization_format="pt2", pip_requirements=["torch"])
    client = MlflowClient(uri)
    client.set_registered_model_alias("tiny", "champion", "2")
    return uri, client


# ---- the real control plane (etcd + kube-apiserver + kube-controller-manager) -------------------
def pytest_report_header(config):
    from tests import _controlplane

    if _controlplane.assets() is None:
        return f"real-control-plane tier: skipped ({_controlplane.skip_reason()})"
    return f"real-control-plane tier: {_controlplane.assets()}"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    """One real control plane for the whole run, with the CRDs Ferry ships (PyTorchJob, KServe,
    KEDA, monitoring, and Ferry's own ModelPipeline) established. Skipped, with the reason,
    where ``KUBEBUILDER_ASSETS`` is unset. Tests isolate themselves by namespace."""
    from ferry.settings import PACKAGED_CRD_DIR
    from tests import _controlplane

    bin_dir = _controlplane.assets()
    if bin_dir is None:
        pytest.skip(_controlplane.skip_reason())
    with _controlplane.started(bin_dir, tmp_path_factory.mktemp("control-plane")) as plane:
        operator_crds = REPO / "operator" / "ferry_operator" / "crds"
        plane.install_crds(*sorted(PACKAGED_CRD_DIR.glob("*.yaml")), *sorted((REPO / "tests" / "crds").glob("*.yaml")),
                           *sorted(operator_crds.glob("*.yaml")))
        yield plane


@pytest.fixture
def namespace(control_plane):
    """A fresh namespace on the real control plane enforcing Pod Security "restricted",
    deleted after the test."""
    name = control_plane.namespace()
    yield name
    control_plane.delete_namespace(name)
