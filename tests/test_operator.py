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
from pathlib import Path
from typing import Any

import pytest

from tests._controlplane import ApiError, ControlPlane
from tests._operator import PIPELINES, Operator, Prometheus, Site, changed, pipeline_doc, rbac_docs, train_as_rank0
from tests._waiting import wait_until

pytestmark = pytest.mark.integration


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
            "Trained": "True", "Evaluated": "True", "Promoted": "True", "Ready": "True"}
        assert st["traffic"] == "v1=100%" and st["servingVersion"] == "1"
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


def serve_v1_then_canary_v2(site: Site, name: str, model: str, step_seconds: int, **canary: Any) -> None:
    """v1 trained, gated and serving; then a new spec.job trains v2, which passes its gates and
    goes out as a canary of 20%."""
    doc = pipeline_doc(name, model)
    doc["spec"]["deployment"]["canary"] = {"stepSeconds": step_seconds, "deadlineSeconds": 120, **canary}
    site.create_pipeline(doc)
    for generation, accuracy in ((1, 0.95), (2, 0.97)):
        job = wait_until(lambda: site.job(f"{name}-g{generation}"), f"job g{generation}")
        train_as_rank0(site.mlflow_url, f"exp-{name}", job["metadata"]["labels"]["ferry.dev/submission"], model,
                       accuracy)
        site.succeed(f"{name}-g{generation}")
        wait_until(lambda: ((site.isvc(name) or {}).get("metadata", {}).get("annotations", {}).get(
            "ferry.dev/model-version") == str(generation)), f"version {generation} is applied")
        if generation == 1:
            assert "canaryTrafficPercent" not in site.isvc(name)["spec"]["predictor"]
            site.serve_ready(name)
            wait_until(lambda: site.status(name).get("servingVersion") == "1", "v1 serving")
            site.patch_pipeline(name, {"spec": {"job": {"hyperparameters": {"lr": 0.001}}}})
    assert site.isvc(name)["spec"]["predictor"]["canaryTrafficPercent"] == 20
    wait_until(site.phase_is(name, "Canary"), "phase Canary")
    st = site.status(name)
    assert st["traffic"] == "v2=20%,v1=80%" and st["servingVersion"] == "1"
    assert f"{model} v2 holds 'staging' in staging (was v1)" in [
        c["message"] for c in st["conditions"] if c["type"] == "Promoted"]


def test_a_canary_that_stays_ready_takes_all_the_traffic(site: Site) -> None:
    from mlflow import MlflowClient

    with Operator(site):
        serve_v1_then_canary_v2(site, "canary", "op-canary", step_seconds=2)
        site.serve_ready("canary")  # KServe: the canary's revision is Ready
        wait_until(lambda: site.status("canary").get("servingVersion") == "2", "v2 takes all the traffic")
        assert "canaryTrafficPercent" not in site.isvc("canary")["spec"]["predictor"]
        site.serve_ready("canary")
        wait_until(site.phase_is("canary", "Serving"), "phase Serving")
        assert site.status("canary")["traffic"] == "v2=100%" and "canary" not in site.status("canary")
        wait_until(lambda: "CanaryPromoted" in site.events("canary"), "the CanaryPromoted event")
    assert MlflowClient(tracking_uri=site.mlflow_url).get_model_version_by_alias("op-canary", "staging").version == "2"


def test_a_canary_that_turns_unready_is_rolled_back_and_rejected(site: Site) -> None:
    from mlflow import MlflowClient

    with Operator(site):
        serve_v1_then_canary_v2(site, "rollback", "op-rollback", step_seconds=600)
        site.serve_ready("rollback")
        wait_until(lambda: (site.status("rollback").get("canary") or {}).get("readySince"), "the canary seen Ready")
        site.kserve.ready("rollback", "http://rollback.example.com", ready=False, reason="RevisionFailed",
                          message="Revision rollback-predictor-00002 failed: container exited with code 1")
        wait_until(site.phase_is("rollback", "Rejected"), "phase Rejected")
        st = site.status("rollback")
        assert "v2 turned unready as a 20% canary" in st["message"] and "container exited with code 1" in st["message"]
        assert st["traffic"] == "v1=100%" and st["servingVersion"] == "1" and st["failedStage"] == "Canary"
        isvc = site.isvc("rollback")
        assert isvc["metadata"]["annotations"]["ferry.dev/model-version"] == "1"
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
        wait_until(lambda: "CanaryRolledBack" in site.events("rollback"), "the CanaryRolledBack event")
    assert MlflowClient(tracking_uri=site.mlflow_url).get_model_version_by_alias("op-rollback", "staging").version == "1"
    assert site.job_creations() == ["rollback-g1", "rollback-g2"]


def test_a_canary_whose_error_rate_exceeds_its_limit_is_rolled_back(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary's revision's share of 5xx answers, as Prometheus has it from the model servers'
    ferry_requests_total, above maxErrorRate: rolled back, though KServe says Ready."""
    with Prometheus(value=0.2) as prometheus:
        monkeypatch.setenv("FERRY_PROMETHEUS_URL", prometheus.url)
        with Operator(site):
            serve_v1_then_canary_v2(site, "errors", "op-errors", step_seconds=600, maxErrorRate=0.05)
            site.serve_ready("errors")
            wait_until(site.phase_is("errors", "Rejected"), "phase Rejected")
    st = site.status("errors")
    assert "v2's error rate 20.00% over the last minute exceeds maxErrorRate 5.00%" in st["message"], st["message"]
    assert st["servingVersion"] == "1" and st["traffic"] == "v1=100%"
    query = prometheus.queries[-1]
    assert f'namespace="{site.ns}",inferenceservice="errors",revision="errors-predictor-' in query
    assert 'code=~"5.."' in query and "[1m]" in query


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


def test_deleting_a_pipeline_leaves_its_children_to_the_garbage_collector(site: Site) -> None:
    """Children carry a controller owner reference: the controller manager's garbage collector
    removes them with the pipeline; the operator has nothing to clean up and no finalizer to
    block on (its worker for the pipeline ends by itself)."""
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
    # a job that trains as a TrainJob (kopf lists and watches TrainJobs wherever the Trainer is installed)
    **{("trainer.kubeflow.org", "trainjobs", verb): "a pipeline trains through a TrainJob (tests/test_operator_trainjob.py"
                                                     "::test_a_pipeline_trains_through_a_trainjob_then_gates_and_deploys; "
                                                     "delete: test_a_changed_job_supersedes_the_running_trainjob_even_as_"
                                                     "another_kind)" for verb in ("get", "create", "patch", "delete")},
    # a capacity plan run as a Job (kopf lists and watches the pipelines' Jobs in every run)
    **{("batch", "jobs", verb): "spec.deployment.plan runs ferry plan as a Job (tests/test_operator_plan.py::"
                                "test_the_plan_job_measures_the_version_and_the_service_scales_by_it; delete: "
                                "test_a_failed_plan_fails_the_pipeline_and_a_retry_runs_it_again)"
       for verb in ("get", "create", "delete")},
    ("trainer.kubeflow.org", "clustertrainingruntimes", "get"): "a TrainJob's runtime is checked before it is submitted "
                                                                "(tests/test_operator_trainjob.py)",
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
        assert re.search(r'ferry_operator_reconcile_passes_total\{outcome="invalid"\} [1-9]', metrics), metrics
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
