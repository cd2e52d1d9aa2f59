"""Ferry's operator end to end on a real control plane (etcd, kube-apiserver and the controller
manager from ``KUBEBUILDER_ASSETS``: ``tests/_controlplane.py``) and a real MLflow server.

Each test gets a namespace of its own and runs the operator (kopf's own runner, or ``ferry
operator run``) watching only that namespace, with the credentials of the operator's
ServiceAccount there: a token from the TokenRequest API, the account bound to the ClusterRole
Ferry ships (``operator/ferry_operator/rbac/operator.yaml``, the chart's rules). A verb the role
lacks is a 403 in the API server's audit log, and a 403 fails the test.

No training operator and no KServe run here: the test plays them through the API as they
would (the PyTorchJob's and the InferenceService's status subresources), and plays the job's
rank 0 (it logs and registers a model through Ferry's runtime tracker, tagged with the
submission)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._controllers import KServe, TrainingOperator
from tests._controlplane import ApiError, ControlPlane
from tests._servers import MlflowServer
from tests._waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
RBAC = REPO / "operator/ferry_operator/rbac/operator.yaml"
ACCOUNT = "ferry-operator"  # the ServiceAccount's name, in the chart and in rbac/operator.yaml
PIPELINES = "/apis/ferry.dev/v1alpha1/namespaces/{ns}/modelpipelines"
JOBS = "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
POLL_S = "0.2"


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
        self.training, self.kserve = TrainingOperator(cp, ns), KServe(cp, ns)

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
        return [f"{e['verb']} {e['requestURI']}: {e['responseStatus'].get('message', '')}" for e in self.requests()
                if e["responseStatus"]["code"] == 403]

    def job_creations(self) -> list[str]:
        """PyTorchJobs the operator stored (a server-side apply that created one answers 201;
        a dry run stores nothing)."""
        return [e["objectRef"]["name"] for e in self.requests()
                if (e.get("objectRef") or {}).get("resource") == "pytorchjobs" and not e["objectRef"].get("subresource")
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
    token = grant_operator_role(control_plane, namespace)
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "operator.kubeconfig", ACCOUNT, token=token,
                                                namespace=namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    monkeypatch.setenv("FERRY_OPERATOR_POLL_S", POLL_S)
    monkeypatch.setenv("FERRY_ACTOR", "ferry-operator-test")
    site = Site(control_plane, namespace, mlflow_url, kubeconfig)
    try:
        yield site
        assert site.denied() == [], "the API server refused the operator's role a request"
    finally:
        control_plane.raw("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{ACCOUNT}-{namespace}")


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


def test_a_pipeline_goes_through_every_phase_to_serving(site: Site) -> None:
    from mlflow import MlflowClient

    with Operator(site):
        site.create_pipeline(pipeline_doc("digits", "op-happy"))
        job = wait_until(lambda: site.job("digits-g1"), "the PyTorchJob exists")
        owner = site.pipeline("digits")
        assert job["metadata"]["ownerReferences"] == [{
            "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelPipeline", "name": "digits",
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        submission = job["metadata"]["labels"]["ferry.dev/submission"]
        wait_until(site.phase_is("digits", "Training"), "phase Training")
        assert site.status("digits")["submission"] == submission
        assert site.status("digits")["jobName"] == "digits-g1"
        configmap = site.cp.raw("GET", f"/api/v1/namespaces/{site.ns}/configmaps/ferry-mlflow")
        assert configmap["data"]["tracking-uri"] == site.mlflow_url

        site.job_status("digits-g1")  # Created, Running
        wait_until(lambda: "Running" in site.status("digits").get("message", ""), "the job's Running phase told")
        train_as_rank0(site.mlflow_url, "exp-digits", submission, "op-happy", accuracy=0.97)
        site.succeed("digits-g1")
        isvc = wait_until(lambda: site.isvc("digits"), "the InferenceService exists")
        wait_until(site.phase_is("digits", "Deploying"), "phase Deploying")
        st = site.status("digits")
        assert st["modelVersion"] == "1" and st["model"] == "op-happy" and st["runId"]
        assert isvc["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        assert isvc["metadata"]["annotations"]["ferry.dev/model-version"] == "1"
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # nothing served before: no canary
        assert {g["name"]: g["passed"] for g in st["gates"]} == {"threshold": True, "beat": True}

        site.serve_ready("digits")
        wait_until(site.phase_is("digits", "Serving"), "phase Serving")
        st = site.status("digits")
        assert st["url"] == f"http://digits.{site.ns}.example.com"
        assert st["observedGeneration"] == 1
        assert {c["type"]: c["status"] for c in st["conditions"]} == {
            "Trained": "True", "Promoted": "True", "Ready": "True"}
        wait_until(lambda: "Serving" in site.events("digits"), "the Serving event")
        # In order of first posting: a pass retried on a stale status may post a step's Event again
        # (a cluster counts repeats of one Event; the order of the steps is what this checks).
        assert list(dict.fromkeys(r for r in site.events("digits") if r in (
            "Submitted", "Trained", "Registered", "Promoted", "Deploying", "Serving"))) == [
            "Submitted", "Trained", "Registered", "Promoted", "Deploying", "Serving"]
    client = MlflowClient(tracking_uri=site.mlflow_url)
    assert client.get_model_version_by_alias("op-happy", "staging").version == "1"
    assert site.job_creations() == ["digits-g1"]
    calls, granted = site.calls(), granted_by_the_role()
    assert calls - granted == set(), "the operator was allowed what its role does not grant (another binding?)"
    assert granted - calls == set(USED_ELSEWHERE), "a grant the happy path leaves unused is not listed"


def test_a_version_that_fails_its_gates_is_rejected_with_the_reasons(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("strict", "op-strict", min_value=0.99))
        job = wait_until(lambda: site.job("strict-g1"), "job")
        train_as_rank0(site.mlflow_url, "exp-strict", job["metadata"]["labels"]["ferry.dev/submission"], "op-strict",
                       0.91)
        site.succeed("strict-g1")
        wait_until(site.phase_is("strict", "Rejected"), "phase Rejected")
        st = site.status("strict")
        assert "threshold gate failed: test_accuracy 0.91, needs >= 0.99" in st["message"]
        promoted = next(c for c in st["conditions"] if c["type"] == "Promoted")
        assert promoted["status"] == "False" and promoted["reason"] == "GatesFailed"
        assert {g["name"]: g["passed"] for g in st["gates"]}["threshold"] is False
        wait_until(lambda: "Rejected" in site.events("strict"), "the Rejected event")
        assert site.isvc("strict") is None


def test_a_failed_job_fails_the_pipeline_with_the_training_operators_message(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("broken", "op-broken"))
        wait_until(lambda: site.job("broken-g1"), "job")
        site.job_status("broken-g1", ("Failed", "PyTorchJob broken-g1 is failed because 1 Master replica(s) failed."),
                        {"Master": {"failed": 1}, "Worker": {"active": 1}})
        wait_until(site.phase_is("broken", "Failed"), "phase Failed")
        st = site.status("broken")
        assert st["message"] == ("PyTorchJob broken-g1 failed: PyTorchJob broken-g1 is failed because 1 Master "
                                 "replica(s) failed.")
        wait_until(lambda: "TrainingFailed" in site.events("broken"), "the TrainingFailed event")


def test_a_job_that_succeeded_but_registered_nothing_fails_the_pipeline_saying_so(site: Site) -> None:
    """The operator counts its lookups of the submission's run in the status (a field the CRD
    declares, or the API server would prune it and the count would never end)."""
    with Operator(site):
        site.create_pipeline(pipeline_doc("silent", "op-silent"))
        job = wait_until(lambda: site.job("silent-g1"), "job")
        submission = job["metadata"]["labels"]["ferry.dev/submission"]
        site.succeed("silent-g1")  # its script never logged a run
        wait_until(lambda: (site.status("silent").get("runLookups") or 0) >= 2, "lookups counted in the status")
        wait_until(site.phase_is("silent", "Failed"), "phase Failed", timeout=60)
        st = site.status("silent")
        assert st["message"] == (f"the job succeeded but no MLflow run in experiment 'exp-silent' carries "
                                 f"ferry.submission_id={submission}; does its script call log_model "
                                 f"(tracking.registerAs 'op-silent')?")
        evaluated = next(c for c in st["conditions"] if c["type"] == "Evaluated")
        assert (evaluated["status"], evaluated["reason"]) == ("False", "NoModel")
        wait_until(lambda: "NoModel" in site.events("silent"), "the NoModel event")


def test_an_operator_restarted_mid_way_neither_duplicates_the_job_nor_the_model(site: Site) -> None:
    from mlflow import MlflowClient

    with Operator(site):
        site.create_pipeline(pipeline_doc("restart", "op-restart"))
        job = wait_until(lambda: site.job("restart-g1"), "job")
        wait_until(site.phase_is("restart", "Training"), "phase Training")
    submission = job["metadata"]["labels"]["ferry.dev/submission"]
    train_as_rank0(site.mlflow_url, "exp-restart", submission, "op-restart", 0.97)
    site.succeed("restart-g1")  # while no operator runs
    with Operator(site):
        wait_until(lambda: site.isvc("restart"), "the InferenceService exists")
    with Operator(site):  # and once more while it deploys
        site.serve_ready("restart")
        wait_until(site.phase_is("restart", "Serving"), "phase Serving")
    assert site.job_creations() == ["restart-g1"]
    client = MlflowClient(tracking_uri=site.mlflow_url)
    assert [v.version for v in client.search_model_versions("name = 'op-restart'")] == ["1"]
    assert site.status("restart")["submission"] == submission


def test_a_spec_change_trains_anew_and_supersedes_the_running_job(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("change", "op-change"))
        first = wait_until(lambda: site.job("change-g1"), "g1")
        wait_until(site.phase_is("change", "Training"), "phase Training")
        site.patch_pipeline("change", {"spec": {"job": {"hyperparameters": {"epochs": 30}}}})
        second = wait_until(lambda: site.job("change-g2"), "g2")
        wait_until(lambda: site.status("change").get("observedGeneration") == 2, "generation 2 observed")
        assert second["metadata"]["labels"]["ferry.dev/submission"] != first["metadata"]["labels"]["ferry.dev/submission"]
        assert json.loads(next(e["value"] for e in second["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
                               ["containers"][0]["env"] if e["name"] == "FERRY_HYPERPARAMETERS"))["epochs"] == 30
        # deleted in the foreground: gone once the garbage collector has removed its dependents
        wait_until(lambda: site.job("change-g1") is None, "the superseded job is deleted")
        assert site.status("change")["jobName"] == "change-g2"
        wait_until(lambda: "Superseded" in site.events("change"), "the Superseded event")
    assert ("kubeflow.org", "pytorchjobs", "delete") in site.calls()
    assert site.job_creations() == ["change-g1", "change-g2"]


def test_a_new_generation_that_passes_its_gates_goes_out_as_a_canary(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("canary", "op-canary"))
        for generation, accuracy in ((1, 0.95), (2, 0.97)):
            job = wait_until(lambda: site.job(f"canary-g{generation}"), f"job g{generation}")
            train_as_rank0(site.mlflow_url, "exp-canary", job["metadata"]["labels"]["ferry.dev/submission"],
                           "op-canary", accuracy)
            site.succeed(f"canary-g{generation}")
            wait_until(lambda: ((site.isvc("canary") or {}).get("metadata", {}).get("annotations", {}).get(
                "ferry.dev/model-version") == str(generation)), f"version {generation} is applied")
            site.serve_ready("canary")
            wait_until(lambda: site.status("canary").get("phase") == "Serving"
                       and site.status("canary").get("modelVersion") == str(generation), f"v{generation} serving")
            predictor = site.isvc("canary")["spec"]["predictor"]
            if generation == 1:
                assert "canaryTrafficPercent" not in predictor
                site.patch_pipeline("canary", {"spec": {"job": {"hyperparameters": {"lr": 0.001}}}})
        assert predictor["canaryTrafficPercent"] == 20  # v1 serves: v2 gets 20% until promoted further
        assert "op-canary v2 holds 'staging' in staging (was v1)" in [
            c["message"] for c in site.status("canary")["conditions"] if c["type"] == "Promoted"]


# What the schema cannot say (it is one object's shape; these need the Python types, or another
# field's value): the operator refuses them on the pipeline's status.
@pytest.mark.parametrize("change, message", [
    ({"job": {"tracking": {"registerAs": None}}}, "spec.job.tracking.registerAs: is required"),
    ({"environment": "prod"}, "spec.environment: 'prod' is not one of promotion.environments"),
    ({"deployment": {"mode": "standard", "canaryPercent": None}},
     "spec.deployment: autoscaling.metric='concurrency' does not work with mode='standard'"),
])
def test_an_invalid_spec_fails_the_pipeline_with_a_message_naming_the_field(site: Site, change: dict[str, Any],
                                                                            message: str) -> None:
    doc = changed(pipeline_doc("bad", "op-bad"), change)
    with Operator(site):
        site.create_pipeline(doc)
        wait_until(site.phase_is("bad", "Failed"), "phase Failed")
        st = site.status("bad")
        assert message in st["message"], st["message"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec"
        wait_until(lambda: "InvalidSpec" in site.events("bad"), "the InvalidSpec event")
    assert site.job_creations() == []


# What the schema says: the API server refuses the pipeline (as `kubectl apply` sends it, with
# strict field validation), naming the field; the operator's own check says the same of a
# pipeline that reached it some other way (an older CRD, no field validation).
@pytest.mark.parametrize("change, code, refusal, message", [
    ({"job": {"workers": 0}}, 422, "spec.job.workers: Invalid value: 0", "spec.job.workers: must be >= 1 (got 0)"),
    ({"job": {"procsPerWorkr": 2}}, 400, 'unknown field "spec.job.procsPerWorkr"',
     "spec.job.procsPerWorkr: unknown field"),
    ({"job": {"name": "other"}}, 400, 'unknown field "spec.job.name"', "spec.job.name: set by the pipeline itself"),
    ({"promotion": {"canaryPercent": 150}}, 422, "spec.promotion.canaryPercent: Invalid value: 150",
     "spec.promotion.canaryPercent: must be 1..99 (got 150)"),
    ({"deployment": {"mode": "standard", "autoscaling": {"metric": "cpu", "minReplicas": 1}}}, 422,
     "canaryPercent needs mode serverless",
     "spec.deployment: canary_percent is not honored in mode='standard'"),
])
def test_a_spec_the_schema_refuses_never_reaches_the_operator(control_plane: ControlPlane, namespace: str,
                                                              change: dict[str, Any], code: int, refusal: str,
                                                              message: str) -> None:
    from ferry.errors import SpecError

    from ferry_operator import parse

    doc = changed(pipeline_doc("bad", "op-bad"), change)
    doc["metadata"]["namespace"] = namespace
    with pytest.raises(ApiError) as refused:
        control_plane.raw("POST", f"{PIPELINES.format(ns=namespace)}?fieldValidation=Strict", doc)
    assert refused.value.code == code and refusal in str(refused.value), refused.value
    with pytest.raises(SpecError, match=re.escape(message)):
        parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8, "generation": 1}})


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


def test_deleting_a_pipeline_leaves_its_children_to_the_garbage_collector(site: Site) -> None:
    """Children carry a controller owner reference: the controller manager's garbage collector
    removes them with the pipeline; the operator has nothing to clean up and no finalizer to
    block on."""
    with Operator(site):
        site.create_pipeline(pipeline_doc("gone", "op-gone"))
        job = wait_until(lambda: site.job("gone-g1"), "job")
        train_as_rank0(site.mlflow_url, "exp-gone", job["metadata"]["labels"]["ferry.dev/submission"], "op-gone", 0.97)
        site.succeed("gone-g1")
        wait_until(lambda: site.isvc("gone"), "the InferenceService exists")
        assert not site.pipeline("gone")["metadata"].get("finalizers")
        site.cp.raw("DELETE", f"{site.pipelines}/gone")
        wait_until(lambda: site.find(f"{site.pipelines}/gone") is None, "the pipeline is gone")
        wait_until(lambda: site.job("gone-g1") is None and site.isvc("gone") is None,
                   "the garbage collector removed the PyTorchJob and the InferenceService")
    ref = job["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["controller"], ref["blockOwnerDeletion"]) == ("ModelPipeline", "gone", True, True)


def test_with_the_tracking_configmap_left_to_the_chart_the_job_reads_the_one_there(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """FERRY_OPERATOR_JOB_TRACKING_URI=-: the operator checks that the job's ConfigMap exists and
    writes none."""
    monkeypatch.setenv("FERRY_OPERATOR_JOB_TRACKING_URI", "-")
    site.cp.raw("POST", f"/api/v1/namespaces/{site.ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ferry-mlflow"},
        "data": {"tracking-uri": "http://mlflow.elsewhere:5000"}})
    with Operator(site):
        site.create_pipeline(pipeline_doc("chart", "op-chart"))
        wait_until(lambda: site.job("chart-g1"), "job")
    configmap = site.cp.raw("GET", f"/api/v1/namespaces/{site.ns}/configmaps/ferry-mlflow")
    assert configmap["data"]["tracking-uri"] == "http://mlflow.elsewhere:5000"
    calls = site.calls()
    assert ("", "configmaps", "get") in calls and ("", "configmaps", "patch") not in calls


# ---- RBAC: what the operator called is what the role grants ----------------------------------------
# grants the happy path does not exercise, and the test that exercises each
USED_ELSEWHERE = {
    ("kubeflow.org", "pytorchjobs", "delete"): "a spec change supersedes a running job "
                                               "(test_a_spec_change_trains_anew_and_supersedes_the_running_job)",
    **{("kopf.dev", plural, verb): "peering between replicas, not --standalone (test_two_replicas_with_peering_never_"
                                   "both_act: KopfPeering with --namespace, ClusterKopfPeering with --all-namespaces)"
       for plural in ("kopfpeerings", "clusterkopfpeerings") for verb in ("list", "watch", "patch")},
}

def granted_by_the_role() -> set[tuple[str, str, str]]:
    role = next(d for d in rbac_docs() if d["kind"] == "ClusterRole")
    return {(g, res, verb) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
            for verb in rule["verbs"]}


def test_the_role_has_no_wildcards_and_names_what_uses_each_grant_the_happy_path_skips() -> None:
    granted = granted_by_the_role()
    assert not any("*" in part for rule in granted for part in rule)
    assert set(USED_ELSEWHERE) <= granted


# ---- running it ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["namespace", "cluster"])
def test_two_replicas_with_peering_never_both_act(site: Site, scope: str) -> None:
    """Replicas find each other through a peering object (a KopfPeering in the namespace they
    watch, or the ClusterKopfPeering when they watch all); each starts with a random priority,
    and only the highest acts."""
    if scope == "namespace":
        peering, watch = f"/apis/kopf.dev/v1/namespaces/{site.ns}/kopfpeerings", ["--namespace", site.ns]
    else:  # watching all namespaces: no other test's pipeline may be left for it to act on
        peering, watch = "/apis/kopf.dev/v1/clusterkopfpeerings", ["--all-namespaces"]
        wait_until(lambda: not [p for p in site.cp.raw("GET", "/apis/ferry.dev/v1alpha1/modelpipelines")["items"]
                                if p["metadata"]["namespace"] != site.ns],
                   "the other tests' pipelines are gone with their namespaces", timeout=60)
    kind = "KopfPeering" if scope == "namespace" else "ClusterKopfPeering"
    site.cp.raw("POST", peering, {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": "ferry"}})
    try:
        with Operator(site, *watch, "--peering", "ferry"), Operator(site, *watch, "--peering", "ferry"):
            peers = lambda: (site.cp.raw("GET", f"{peering}/ferry").get("status") or {})  # noqa: E731
            wait_until(lambda: len(peers()) >= 2, "both replicas announce themselves")
            site.create_pipeline(pipeline_doc("peered", "op-peered"))
            wait_until(lambda: site.job("peered-g1"), "job")
            wait_until(site.phase_is("peered", "Training"), "phase Training")
            time.sleep(1)  # both replicas have had every chance to act
            assert site.job_creations() == ["peered-g1"]
            assert site.events("peered").count("Submitted") == 1
            priorities = sorted(p.get("priority") for p in peers().values())
            assert len(set(priorities)) == 2
    finally:
        site.cp.raw("DELETE", f"{peering}/ferry")
    plural = peering.rsplit("/", 1)[1]
    used = {verb for group, resource, verb in site.calls() if (group, resource) == ("kopf.dev", plural)}
    assert used == {verb for (group, res, verb) in USED_ELSEWHERE if (group, res) == ("kopf.dev", plural)}, used


def test_ferry_operator_run_serves_its_health_endpoint_and_acts(site: Site) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from ferry.local import free_port

    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ferry")), "operator", "run", "--namespace", site.ns,
                             "--standalone", "--liveness", f"http://127.0.0.1:{port}/healthz",
                             "--metrics-port", str(metrics_port)],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    return json.loads(resp.read())
            except OSError:
                return None

        assert wait_until(healthy, "the health endpoint answers", timeout=60) == {"connected": True}
        doc = pipeline_doc("cli", "op-cli", environment="prod")
        site.create_pipeline(doc)
        wait_until(site.phase_is("cli", "Failed"), "the invalid pipeline fails", timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'ferry_operator_reconcile_passes_total{outcome="invalid"} 1.0' in metrics
        assert 'ferry_operator_pipelines{phase="Failed"} 1.0' in metrics
        assert 'ferry_operator_phase_transitions_total{phase="Failed"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_ferry_operator_run_needs_namespaces_to_watch(ferry_cli: Any) -> None:
    result = ferry_cli("operator", "run")
    assert result.returncode == 2
    assert "--namespace" in result.stderr and "--all-namespaces" in result.stderr
