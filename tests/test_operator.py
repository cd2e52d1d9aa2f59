"""Ferry's operator end to end: kopf's own runner against the Kubernetes API emulator on
127.0.0.1 and a real MLflow server. The test plays the training operator (it moves the
PyTorchJob's status), the job's rank 0 (it logs and registers a model through Ferry's runtime
tracker, tagged with the submission) and KServe (it marks the InferenceService ready)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._kube import Kube
from tests._servers import MlflowServer
from tests._waiting import wait_until

pytestmark = pytest.mark.integration

NS = "ml"
PIPELINES = f"/apis/ferry.dev/v1alpha1/namespaces/{NS}/modelpipelines"
ISVCS = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    kube = Kube(tmp_path).start()
    yield kube
    kube.stop()


class Operator:
    """kopf's test runner over the ``ferry_operator`` package, as ``kopf run -m`` would start it."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self.runner: Any = None

    def __enter__(self) -> Operator:
        from kopf.testing import KopfRunner

        import ferry_operator

        self.runner = KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "ferry_operator"],
                                 registry=ferry_operator.registry, timeout=30)
        self.runner.__enter__()
        # the emulator replays objects only to watches already open: wait for the pipelines' watch
        wait_until(lambda: any("modelpipelines" in str(r.url) and r.params.get("watch") == "true"
                               for r in self.kube.api.requests), "the operator watches pipelines")
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.__exit__(None, None, None)


@pytest.fixture
def operator_env(kube: Kube, mlflow_url: str, monkeypatch: pytest.MonkeyPatch) -> Kube:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    monkeypatch.setenv("FERRY_OPERATOR_POLL_S", "0.2")
    monkeypatch.setenv("FERRY_ACTOR", "ferry-operator-test")
    return kube


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


def pipeline(kube: Kube, name: str) -> dict[str, Any]:
    return kube.get(f"{PIPELINES}/{name}")


def status(kube: Kube, name: str) -> dict[str, Any]:
    return pipeline(kube, name).get("status") or {}


def phase_is(kube: Kube, name: str, *phases: str) -> Callable[[], bool]:
    return lambda: status(kube, name).get("phase") in phases


def find(kube: Kube, path: str) -> dict[str, Any] | None:
    import urllib.error

    try:
        return kube.get(path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


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


def succeed(kube: Kube, job: str) -> None:
    kube.set_job_status(job, NS, conditions=[("Created", "Created", "created"), ("Running", "Running", "running"),
                                             ("Succeeded", "Succeeded", "PyTorchJob succeeded")],
                        replicas={"Master": {"succeeded": 1}, "Worker": {"succeeded": 1}})


def serve_ready(kube: Kube, name: str) -> None:
    kube.request("PATCH", f"{ISVCS}/{name}/status", {"status": {
        "url": f"http://{name}.{NS}.example.com",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-28T00:00:00Z"}]}})


def events(kube: Kube, name: str) -> list[str]:
    items = kube.get(f"/api/v1/namespaces/{NS}/events").get("items", [])
    return [e.get("reason") for e in items if (e.get("involvedObject") or {}).get("name") == name]


def job_creations(kube: Kube) -> list[str]:
    """PyTorchJobs the operator stored (server-side apply creates; a dry run stores nothing)."""
    return [str(r.url.path) for r in kube.api.requests
            if "pytorchjobs" in str(r.url) and r.method.value in ("PATCH", "POST") and "dryRun" not in r.params
            and "/status" not in str(r.url)]


def test_a_pipeline_goes_through_every_phase_to_serving(operator_env: Kube, mlflow_url: str) -> None:
    from mlflow import MlflowClient

    kube = operator_env
    with Operator(kube):
        kube.request("POST", PIPELINES, pipeline_doc("digits", "op-happy"))
        job = wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/digits-g1"),
                         "the PyTorchJob exists")
        owner = pipeline(kube, "digits")
        assert job["metadata"]["ownerReferences"] == [{
            "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelPipeline", "name": "digits",
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        submission = job["metadata"]["labels"]["ferry.dev/submission"]
        wait_until(phase_is(kube, "digits", "Training"), "phase Training")
        assert status(kube, "digits")["submission"] == submission
        assert status(kube, "digits")["jobName"] == "digits-g1"
        configmap = kube.get(f"/api/v1/namespaces/{NS}/configmaps/ferry-mlflow")
        assert configmap["data"]["tracking-uri"] == mlflow_url

        train_as_rank0(mlflow_url, "exp-digits", submission, "op-happy", accuracy=0.97)
        succeed(kube, "digits-g1")
        isvc = wait_until(lambda: find(kube, f"{ISVCS}/digits"), "the InferenceService exists")
        wait_until(phase_is(kube, "digits", "Deploying"), "phase Deploying")
        st = status(kube, "digits")
        assert st["modelVersion"] == "1" and st["model"] == "op-happy" and st["runId"]
        assert isvc["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        assert isvc["metadata"]["annotations"]["ferry.dev/model-version"] == "1"
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # nothing served before: no canary
        assert {g["name"]: g["passed"] for g in st["gates"]} == {"threshold": True, "beat": True}

        serve_ready(kube, "digits")
        wait_until(phase_is(kube, "digits", "Serving"), "phase Serving")
        st = status(kube, "digits")
        assert st["url"] == "http://digits.ml.example.com"
        assert st["observedGeneration"] == 1
        assert {c["type"]: c["status"] for c in st["conditions"]} == {
            "Trained": "True", "Promoted": "True", "Ready": "True"}
        wait_until(lambda: "Serving" in events(kube, "digits"), "the Serving event")
        # In order of first posting: a pass retried on a stale status may post a step's Event again
        # (a cluster counts repeats of one Event; the order of the steps is what this checks).
        assert list(dict.fromkeys(r for r in events(kube, "digits") if r in ("Submitted", "Trained", "Registered",
                                                                             "Promoted", "Deploying", "Serving"))) == [
            "Submitted", "Trained", "Registered", "Promoted", "Deploying", "Serving"]
    client = MlflowClient(tracking_uri=mlflow_url)
    assert client.get_model_version_by_alias("op-happy", "staging").version == "1"
    assert job_creations(kube) == [f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/digits-g1"]
    _check_rbac_covers(kube)


def test_a_version_that_fails_its_gates_is_rejected_with_the_reasons(operator_env: Kube, mlflow_url: str) -> None:
    kube = operator_env
    with Operator(kube):
        kube.request("POST", PIPELINES, pipeline_doc("strict", "op-strict", min_value=0.99))
        job = wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/strict-g1"), "job")
        train_as_rank0(mlflow_url, "exp-strict", job["metadata"]["labels"]["ferry.dev/submission"], "op-strict", 0.91)
        succeed(kube, "strict-g1")
        wait_until(phase_is(kube, "strict", "Rejected"), "phase Rejected")
        st = status(kube, "strict")
        assert "threshold gate failed: test_accuracy 0.91, needs >= 0.99" in st["message"]
        promoted = next(c for c in st["conditions"] if c["type"] == "Promoted")
        assert promoted["status"] == "False" and promoted["reason"] == "GatesFailed"
        assert {g["name"]: g["passed"] for g in st["gates"]}["threshold"] is False
        wait_until(lambda: "Rejected" in events(kube, "strict"), "the Rejected event")
        assert find(kube, f"{ISVCS}/strict") is None


def test_a_failed_job_fails_the_pipeline_with_the_training_operators_message(operator_env: Kube) -> None:
    kube = operator_env
    with Operator(kube):
        kube.request("POST", PIPELINES, pipeline_doc("broken", "op-broken"))
        wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/broken-g1"), "job")
        kube.set_job_status("broken-g1", NS, conditions=[
            ("Created", "Created", "created"), ("Running", "Running", "running"),
            ("Failed", "PyTorchJobFailed", "PyTorchJob broken-g1 is failed because 1 Master replica(s) failed.")])
        wait_until(phase_is(kube, "broken", "Failed"), "phase Failed")
        st = status(kube, "broken")
        assert st["message"] == ("PyTorchJob broken-g1 failed: PyTorchJob broken-g1 is failed because 1 Master "
                                 "replica(s) failed.")
        wait_until(lambda: "TrainingFailed" in events(kube, "broken"), "the TrainingFailed event")


def test_an_operator_restarted_mid_way_neither_duplicates_the_job_nor_the_model(operator_env: Kube,
                                                                                mlflow_url: str) -> None:
    from mlflow import MlflowClient

    kube = operator_env
    with Operator(kube):
        kube.request("POST", PIPELINES, pipeline_doc("restart", "op-restart"))
        job = wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/restart-g1"), "job")
        wait_until(phase_is(kube, "restart", "Training"), "phase Training")
    submission = job["metadata"]["labels"]["ferry.dev/submission"]
    train_as_rank0(mlflow_url, "exp-restart", submission, "op-restart", 0.97)
    succeed(kube, "restart-g1")  # while no operator runs
    with Operator(kube):
        wait_until(lambda: find(kube, f"{ISVCS}/restart"), "the InferenceService exists")
    with Operator(kube):  # and once more while it deploys
        serve_ready(kube, "restart")
        wait_until(phase_is(kube, "restart", "Serving"), "phase Serving")
    assert job_creations(kube) == [f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/restart-g1"]
    client = MlflowClient(tracking_uri=mlflow_url)
    assert [v.version for v in client.search_model_versions("name = 'op-restart'")] == ["1"]
    assert status(kube, "restart")["submission"] == submission


def test_a_spec_change_trains_anew_and_supersedes_the_running_job(operator_env: Kube) -> None:
    kube = operator_env
    with Operator(kube):
        kube.request("POST", PIPELINES, pipeline_doc("change", "op-change"))
        first = wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/change-g1"), "g1")
        wait_until(phase_is(kube, "change", "Training"), "phase Training")
        kube.request("PATCH", f"{PIPELINES}/change", {"spec": {"job": {"hyperparameters": {"epochs": 30}}}})
        second = wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/change-g2"), "g2")
        wait_until(lambda: status(kube, "change").get("observedGeneration") == 2, "generation 2 observed")
        assert second["metadata"]["labels"]["ferry.dev/submission"] != first["metadata"]["labels"]["ferry.dev/submission"]
        assert json.loads(next(e["value"] for e in second["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
                               ["containers"][0]["env"] if e["name"] == "FERRY_HYPERPARAMETERS"))["epochs"] == 30
        wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/change-g1") is None,
                   "the superseded job is deleted")
        assert status(kube, "change")["jobName"] == "change-g2"
        wait_until(lambda: "Superseded" in events(kube, "change"), "the Superseded event")


def test_a_new_generation_that_passes_its_gates_goes_out_as_a_canary(operator_env: Kube, mlflow_url: str) -> None:
    kube = operator_env
    jobs = f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs"
    with Operator(kube):
        kube.request("POST", PIPELINES, pipeline_doc("canary", "op-canary"))
        for generation, accuracy in ((1, 0.95), (2, 0.97)):
            job = wait_until(lambda: find(kube, f"{jobs}/canary-g{generation}"), f"job g{generation}")
            train_as_rank0(mlflow_url, "exp-canary", job["metadata"]["labels"]["ferry.dev/submission"], "op-canary",
                           accuracy)
            succeed(kube, f"canary-g{generation}")
            wait_until(lambda: (find(kube, f"{ISVCS}/canary") or {}).get("metadata", {}).get("annotations", {}).get(
                "ferry.dev/model-version") == str(generation), f"version {generation} is applied")
            serve_ready(kube, "canary")
            wait_until(lambda: status(kube, "canary").get("phase") == "Serving"
                       and status(kube, "canary").get("modelVersion") == str(generation), f"v{generation} serving")
            predictor = kube.get(f"{ISVCS}/canary")["spec"]["predictor"]
            if generation == 1:
                assert "canaryTrafficPercent" not in predictor
                kube.request("PATCH", f"{PIPELINES}/canary", {"spec": {"job": {"hyperparameters": {"lr": 0.001}}}})
        assert predictor["canaryTrafficPercent"] == 20  # v1 serves: v2 gets 20% until promoted further
        assert "op-canary v2 holds 'staging' in staging (was v1)" in [
            c["message"] for c in status(kube, "canary")["conditions"] if c["type"] == "Promoted"]


@pytest.mark.parametrize("change, message", [
    ({"job": {"workers": 0}}, "spec.job.workers: must be >= 1 (got 0)"),
    ({"job": {"tracking": {"registerAs": None}}}, "spec.job.tracking.registerAs: is required"),
    ({"job": {"procsPerWorkr": 2}}, "spec.job.procsPerWorkr: unknown field"),
    ({"job": {"name": "other"}}, "spec.job.name: set by the pipeline itself"),
    ({"promotion": {"canaryPercent": 150}}, "spec.promotion.canaryPercent: must be 1..99 (got 150)"),
    ({"environment": "prod"}, "spec.environment: 'prod' is not one of promotion.environments"),
    ({"deployment": {"mode": "standard"}}, "spec.deployment: autoscaling.metric='concurrency' does not work with mode='standard'"),
])
def test_an_invalid_spec_fails_the_pipeline_with_a_message_naming_the_field(operator_env: Kube, change: dict[str, Any],
                                                                            message: str) -> None:
    kube = operator_env
    doc = pipeline_doc("bad", "op-bad")
    for section, fields in change.items():
        if isinstance(fields, dict):
            target = doc["spec"].setdefault(section, {})
            for key, value in fields.items():
                if isinstance(value, dict):
                    target.setdefault(key, {}).update(value)
                else:
                    target[key] = value
        else:
            doc["spec"][section] = fields
    with Operator(kube):
        kube.request("POST", PIPELINES, doc)
        wait_until(phase_is(kube, "bad", "Failed"), "phase Failed")
        st = status(kube, "bad")
        assert message in st["message"], st["message"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec"
    assert job_creations(kube) == []


def test_deleting_a_pipeline_leaves_its_children_to_the_garbage_collector(operator_env: Kube) -> None:
    """Children carry a controller owner reference: the API server's garbage collector removes
    them with the pipeline; the operator has nothing to clean up and no finalizer to block on."""
    kube = operator_env
    with Operator(kube):
        kube.request("POST", PIPELINES, pipeline_doc("gone", "op-gone"))
        job = wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/gone-g1"), "job")
        assert not (pipeline(kube, "gone")["metadata"].get("finalizers"))
        kube.request("DELETE", f"{PIPELINES}/gone")
        wait_until(lambda: find(kube, f"{PIPELINES}/gone") is None, "the pipeline is gone")
        ref = job["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["controller"], ref["blockOwnerDeletion"]) == ("ModelPipeline", "gone", True, True)


# ---- RBAC: what the handlers called is what the role grants --------------------------------------
# grants the happy path does not exercise, and which path uses each
USED_ELSEWHERE = {
    ("kubeflow.org", "pytorchjobs", "delete"): "a spec change supersedes a running job",
    ("kubeflow.org", "pytorchjobs", "create"): "server-side apply of a missing job is authorized as create",
    ("", "configmaps", "get"): "with FERRY_OPERATOR_JOB_TRACKING_URI=-, the job's ConfigMap must exist already",
    ("", "configmaps", "create"): "server-side apply of a missing ConfigMap is authorized as create",
    ("serving.kserve.io", "inferenceservices", "create"): "server-side apply of a missing service is authorized as create",
    ("", "namespaces", "list"): "kopf, run with --namespace, follows which namespaces exist",
    ("", "namespaces", "watch"): "kopf, run with --namespace, follows which namespaces exist",
    **{("kopf.dev", plural, verb): "peering between replicas (not --standalone)"
       for plural in ("kopfpeerings", "clusterkopfpeerings") for verb in ("list", "watch", "get", "patch")},
}


def _calls(kube: Kube) -> set[tuple[str, str, str]]:
    """(api group, resource[/subresource], verb) of every request the operator made (the test's
    own requests, sent with urllib, are left out)."""
    out = set()
    for r in kube.api.requests:
        if r.headers.get("User-Agent", "").startswith("Python-urllib"):
            continue
        path = str(r.url.path).strip("/").split("/")
        group, rest = ("", path[2:]) if path[0] == "api" else (path[1], path[3:]) if len(path) > 3 else ("", [])
        if rest[:1] == ["namespaces"] and len(rest) > 2:
            rest = rest[2:]
        if not rest:
            continue  # discovery: open to every authenticated user
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        method = r.method.value
        verb = {"GET": "watch" if r.params.get("watch") == "true" else "get" if len(rest) > 1 else "list",
                "POST": "create", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}[method]
        out.add((group, resource, verb))
    return out


def _granted() -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((REPO / "operator/ferry_operator/rbac/operator.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    return {(g, res, verb) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
            for verb in rule["verbs"]}


def _check_rbac_covers(kube: Kube) -> None:
    calls, granted = _calls(kube), _granted()
    assert calls - granted == set(), "the operator called what its role does not grant"
    assert granted - calls - set(USED_ELSEWHERE) == set(), "the role grants what no path uses"


def test_the_role_has_no_wildcards_and_names_what_uses_each_grant_the_happy_path_skips() -> None:
    granted = _granted()
    assert not any("*" in part for rule in granted for part in rule)
    assert set(USED_ELSEWHERE) <= granted


# ---- running it ------------------------------------------------------------------------------------
def test_two_replicas_with_peering_never_both_act(operator_env: Kube) -> None:
    """Replicas find each other through the ClusterKopfPeering object; each starts with a random
    priority, and only the highest acts."""
    from kopf.testing import KopfRunner

    import ferry_operator

    kube = operator_env
    kube.request("POST", "/apis/kopf.dev/v1/clusterkopfpeerings",
                 {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "ferry"}})
    runners = [KopfRunner(["run", "--all-namespaces", "--peering", "ferry", "-m", "ferry_operator"],
                          registry=ferry_operator.registry, timeout=30) for _ in range(2)]
    for runner in runners:
        runner.__enter__()
    try:
        peers = lambda: (kube.get("/apis/kopf.dev/v1/clusterkopfpeerings/ferry").get("status") or {})  # noqa: E731
        wait_until(lambda: len(peers()) >= 2, "both replicas announce themselves")
        wait_until(lambda: any("modelpipelines" in str(r.url) and r.params.get("watch") == "true"
                               for r in kube.api.requests), "a replica watches pipelines")
        kube.request("POST", PIPELINES, pipeline_doc("peered", "op-peered"))
        wait_until(lambda: find(kube, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/peered-g1"), "job")
        wait_until(phase_is(kube, "peered", "Training"), "phase Training")
        time.sleep(1)  # both replicas have had every chance to act
        assert job_creations(kube) == [f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/peered-g1"]
        assert events(kube, "peered").count("Submitted") == 1
        priorities = sorted(p.get("priority") for p in peers().values())
        assert len(set(priorities)) == 2
    finally:
        for runner in runners:
            runner.__exit__(None, None, None)


def test_ferry_operator_run_serves_its_health_endpoint_and_acts(operator_env: Kube, ferry_cli: Any) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from ferry.local import free_port

    kube = operator_env
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ferry")), "operator", "run", "--all-namespaces",
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
        wait_until(lambda: any("modelpipelines" in str(r.url) and r.params.get("watch") == "true"
                               for r in kube.api.requests), "the operator watches pipelines")
        doc = pipeline_doc("cli", "op-cli")
        doc["spec"]["job"]["workers"] = 0
        kube.request("POST", PIPELINES, doc)
        wait_until(phase_is(kube, "cli", "Failed"), "the invalid pipeline fails", timeout=60)
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
