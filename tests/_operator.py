"""The operator's test harness on the real control plane (``tests/_controlplane.py``) and a real
MLflow server: a namespace per test where the operator runs as its ServiceAccount (a token from
the TokenRequest API, bound to the ClusterRole Ferry ships), the controllers it works with played
through the API as they would (``tests/_controllers.py``), and the job's rank 0 played through
Ferry's runtime tracker."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._controllers import KServe, Trainer, TrainingOperator
from tests._controlplane import ApiError, ControlPlane
from tests._servers import MlflowServer

REPO = Path(__file__).resolve().parents[1]
RBAC = REPO / "operator/ferry_operator/rbac/operator.yaml"
ACCOUNT = "ferry-operator"  # the ServiceAccount's name, in the chart and in rbac/operator.yaml
PIPELINES = "/apis/ferry.dev/v1alpha1/namespaces/{ns}/modelpipelines"
JOBS = "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs"
TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs"
# Kubeflow Trainer v2.3.0's CRDs (shipped with Ferry, unmodified) and its torch-distributed runtime
TRAINER_CRDS = [REPO / "ferry/validate/crds" / name for name in ("trainer.kubeflow.org_trainjobs.yaml",
                                                                 "trainer.kubeflow.org_clustertrainingruntimes.yaml")]
TRAINER_RUNTIME = REPO / "tests/trainer/torch_distributed.yaml"  # upstream, unmodified: tests/trainer/SOURCES.md
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
POLL_S = "0.5"  # what sends no event (MLflow); the resync stays at its default: children wake pipelines


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server.url
    server.stop()


def rbac_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RBAC.read_text()) if d]


@pytest.fixture(scope="module")
def operator_role(control_plane: ControlPlane) -> Iterator[dict[str, Any]]:
    """The operator's ClusterRole, exactly as shipped, on the cluster."""
    role = next(d for d in rbac_docs() if d["kind"] == "ClusterRole")
    control_plane.apply(role)
    yield role
    control_plane.raw("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role['metadata']['name']}")


class Site:
    """One test's namespace on the real control plane: the operator's identity there, the
    objects the test reads as an administrator, and the controllers it plays."""

    def __init__(self, cp: ControlPlane, ns: str, mlflow_url: str, kubeconfig: Path):
        self.cp, self.ns, self.mlflow_url, self.kubeconfig = cp, ns, mlflow_url, kubeconfig
        self.user = f"system:serviceaccount:{ns}:{ACCOUNT}"  # who the operator is, in the audit log
        self.pipelines, self.jobs, self.isvcs = (p.format(ns=ns) for p in (PIPELINES, JOBS, ISVCS))
        self.trainjobs = TRAINJOBS.format(ns=ns)
        self.training, self.kserve, self.trainer = TrainingOperator(cp, ns), KServe(cp, ns), Trainer(cp, ns)
        self.expected_denials: list[str] = []  # resources a test withholds from the operator on purpose
        self.cleanups: list[Callable[[], Any]] = []  # what a test made beyond the namespace, undone after it

    # ---- reading ------------------------------------------------------------------------------
    def find(self, path: str) -> dict[str, Any] | None:
        try:
            return self.cp.raw("GET", path)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def pipeline(self, name: str) -> dict[str, Any]:
        return self.cp.raw("GET", f"{self.pipelines}/{name}")

    def status(self, name: str) -> dict[str, Any]:
        return self.pipeline(name).get("status") or {}

    def phase_is(self, name: str, *phases: str) -> Callable[[], bool]:
        return lambda: self.status(name).get("phase") in phases

    def job(self, name: str) -> dict[str, Any] | None:
        return self.find(f"{self.jobs}/{name}")

    def trainjob(self, name: str) -> dict[str, Any] | None:
        return self.find(f"{self.trainjobs}/{name}")

    def isvc(self, name: str) -> dict[str, Any] | None:
        return self.find(f"{self.isvcs}/{name}")

    def events(self, name: str) -> list[str]:
        """Reasons of the Events about pipeline ``name``, oldest first."""
        items = self.cp.raw("GET", f"/api/v1/namespaces/{self.ns}/events")["items"]
        items.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))  # timestamps are in whole seconds
        return [e["reason"] for e in items if e["involvedObject"].get("kind") == "ModelPipeline"
                and e["involvedObject"].get("name") == name]

    # ---- writing, as a user (kubectl's strict field validation) ------------------------------
    def create_pipeline(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": self.ns}}
        return self.cp.raw("POST", f"{self.pipelines}?fieldValidation=Strict", doc)

    def patch_pipeline(self, name: str, patch: dict[str, Any]) -> None:
        self.cp.raw("PATCH", f"{self.pipelines}/{name}?fieldValidation=Strict", patch)

    # ---- the training operator and KServe, as they write the status subresources ---------------
    def job_status(self, job: str, outcome: tuple[str, str] | None = None,
                   replicas: dict[str, dict[str, int]] | None = None) -> None:
        """Created and Running, then (``outcome``: Succeeded or Failed, and its message) the end."""
        conditions = [("Created", "PyTorchJobCreated", f"PyTorchJob {job} is created."),
                      ("Running", "PyTorchJobRunning", f"PyTorchJob {self.ns}/{job} is running.")]
        if outcome:
            conditions.append((outcome[0], f"PyTorchJob{outcome[0]}", outcome[1]))
        self.training.set_status(job, conditions=conditions,
                                 replicas=replicas or {"Master": {"active": 1}, "Worker": {"active": 1}})

    def succeed(self, job: str) -> None:
        self.job_status(job, ("Succeeded", f"PyTorchJob {self.ns}/{job} successfully completed."),
                        {"Master": {"succeeded": 1}, "Worker": {"succeeded": 1}})

    def serve_ready(self, name: str) -> None:
        self.kserve.ready(name, f"http://{name}.{self.ns}.example.com")

    # ---- what the operator asked the API server (its audit log) -------------------------------
    def requests(self) -> list[dict[str, Any]]:
        return self.cp.audit(user=self.user)

    def calls(self) -> set[tuple[str, str, str]]:
        """(api group, resource[/subresource], verb) of every request the operator made and
        was allowed; a server-side apply answered 201 created its object, which the API server
        authorizes as ``create`` too."""
        out = set()
        for event in self.requests():
            ref = event.get("objectRef")
            if not ref or event["responseStatus"]["code"] == 403:
                continue
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            out.add((ref.get("apiGroup", ""), resource, event["verb"]))
            if event["verb"] == "patch" and event["responseStatus"]["code"] == 201:
                out.add((ref.get("apiGroup", ""), resource, "create"))
        return out

    def denied(self) -> list[str]:
        """The operator's requests RBAC refused (bar those a test withholds on purpose)."""
        return [f"{e['verb']} {e['requestURI']}: {e['responseStatus'].get('message', '')}" for e in self.requests()
                if e["responseStatus"]["code"] == 403
                and not any(f"/{r}/" in e["requestURI"] or e["requestURI"].split("?")[0].endswith(f"/{r}")
                            for r in self.expected_denials)]

    def job_creations(self, resource: str = "pytorchjobs") -> list[str]:
        """PyTorchJobs (or TrainJobs: ``trainjobs``) the operator stored (a server-side apply that
        created one answers 201; a dry run stores nothing)."""
        return [e["objectRef"]["name"] for e in self.requests()
                if (e.get("objectRef") or {}).get("resource") == resource and not e["objectRef"].get("subresource")
                and e["verb"] in ("create", "patch") and e["responseStatus"]["code"] == 201
                and "dryRun" not in e["requestURI"]]


def grant_operator_role(cp: ControlPlane, ns: str) -> str:
    """The operator's ServiceAccount in ``ns``, bound to its ClusterRole; returns its token, once
    the API server's authorizer honours the binding."""
    docs = rbac_docs()
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    cp.apply({**account, "metadata": {**account["metadata"], "namespace": ns}})
    cp.apply({**binding, "metadata": {**binding["metadata"], "name": f"{ACCOUNT}-{ns}"},
              "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ns}]})
    rule = next(d for d in docs if d["kind"] == "ClusterRole")["rules"][-1]  # any rule: the binding makes all
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": f"system:serviceaccount:{ns}:{ACCOUNT}",
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
        "resourceAttributes": {"namespace": ns, "group": rule["apiGroups"][0], "resource": rule["resources"][0],
                               "verb": rule["verbs"][0]}}}
    cp.wait_for(lambda: cp.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)["status"].get(
        "allowed"), f"the operator's role bound in {ns}")
    return cp.token(ACCOUNT, ns)


@pytest.fixture
def site(control_plane: ControlPlane, namespace: str, operator_role: dict[str, Any], mlflow_url: str,
         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A namespace where the operator runs as its ServiceAccount (KUBECONFIG holds the account's
    token), polling every 0.2 s; after the test, no request of the operator may have been refused."""
    with operator_site(control_plane, namespace, mlflow_url, tmp_path, monkeypatch) as site:
        yield site


@contextlib.contextmanager
def operator_site(control_plane: ControlPlane, namespace: str, mlflow_url: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """The ``site`` fixture's namespace on any control plane where the operator's ClusterRole is."""
    token = grant_operator_role(control_plane, namespace)
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "operator.kubeconfig", ACCOUNT, token=token,
                                                namespace=namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    monkeypatch.setenv("FERRY_OPERATOR_POLL_S", POLL_S)
    monkeypatch.setenv("FERRY_ACTOR", "ferry-operator-test")
    monkeypatch.delenv("FERRY_TARGET", raising=False)  # the operator's default kind: pytorchjob, unless a test says
    site = Site(control_plane, namespace, mlflow_url, kubeconfig)
    try:
        yield site
        assert site.denied() == [], "the API server refused the operator's role a request"
    finally:
        control_plane.raw("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{ACCOUNT}-{namespace}")
        for undo in site.cleanups:
            undo()


class Operator:
    """kopf's test runner over the ``ferry_operator`` package, as ``kopf run -m`` would start it,
    watching the site's namespace only."""

    def __init__(self, site: Site, *args: str):
        self.args = list(args) or ["--standalone", "--namespace", site.ns]
        self.runner: Any = None

    def __enter__(self) -> Operator:
        from kopf.testing import KopfRunner

        import ferry_operator

        # A real API server lists before it watches: what exists before the watch opens is seen.
        self.runner = KopfRunner(["run", *self.args, "-m", "ferry_operator"], registry=ferry_operator.registry,
                                 timeout=30)
        self.runner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.__exit__(None, None, None)


def pipeline_doc(name: str, model: str, *, min_value: float = 0.9, hyperparameters: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "manifests/examples/pipelines/digits-pipeline.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["job"]["tracking"]["registerAs"] = model
    doc["spec"]["job"]["tracking"]["experiment"] = f"exp-{name}"
    doc["spec"]["promotion"]["minValue"] = min_value
    if hyperparameters is not None:
        doc["spec"]["job"]["hyperparameters"] = hyperparameters
    doc["spec"].update(extra)
    return doc


def install_trainer(plane: ControlPlane) -> str:
    """Kubeflow Trainer's CRDs and its torch-distributed ClusterTrainingRuntime on ``plane``, as
    its installation applies them (idempotent: the control plane is shared and they are left
    there); returns the runtime's name."""
    plane.install_crds(*TRAINER_CRDS)
    runtime = yaml.safe_load(TRAINER_RUNTIME.read_text())
    plane.apply(runtime, manager="trainer-install")
    return runtime["metadata"]["name"]


def trainjob_pipeline(name: str, model: str, **extra: Any) -> dict[str, Any]:
    """The sample pipeline with ``job.target: trainjob`` (less its runPolicy's backoffLimit and
    ttlSecondsAfterFinished, which a TrainJob cannot express)."""
    doc = pipeline_doc(name, model, **extra)
    doc["spec"]["job"]["target"] = "trainjob"
    del doc["spec"]["job"]["runPolicy"]
    return doc


def train_as_rank0(mlflow_url: str, experiment: str, submission: str, model: str, accuracy: float) -> None:
    """What the job's rank 0 does: one run for the submission, its metric, the model registered."""
    import torch

    from ferry.runtime._tracking import Tracker

    tracker = Tracker(is_primary=True, tracking_uri=mlflow_url, experiment=experiment, submission_id=submission,
                      run_name=f"job-{submission}", system_metrics=False)
    tracker.start()
    tracker.log_metrics({"test_accuracy": accuracy}, step=1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    tracker.log_model(net, torch.zeros(4, 4).numpy(), register_as=model)
    tracker.close()


def changed(doc: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the sections of ``change`` merged in, two levels deep (None removes a field)."""
    for section, fields in change.items():
        if isinstance(fields, dict):
            target = doc["spec"].setdefault(section, {})
            for key, value in fields.items():
                if isinstance(value, dict):
                    inner = target.setdefault(key, {})
                    inner.update({k: v for k, v in value.items() if v is not None})
                    for k in [k for k, v in value.items() if v is None]:
                        inner.pop(k, None)
                elif value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        else:
            doc["spec"][section] = fields
    return doc


class Prometheus:
    """Prometheus's HTTP query API (``/api/v1/query``) on a loopback port, as a Prometheus that
    scrapes Ferry's model servers answers it: every instant query gets one sample, ``value``;
    the queries asked are kept."""

    def __init__(self, value: float):
        import http.server
        import json
        import threading
        import time
        import urllib.parse

        self.value, self.queries = value, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                url = urllib.parse.urlparse(self.path)
                if url.path != "/api/v1/query":
                    self.send_error(404)
                    return
                outer.queries.append(urllib.parse.parse_qs(url.query)["query"][0])
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
                    {"metric": {}, "value": [time.time(), str(outer.value)]}]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Prometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
