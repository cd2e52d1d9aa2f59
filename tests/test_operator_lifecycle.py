"""The operator over a pipeline's life on the real control plane, at its default resync (300 s):
whatever happens within a test's time is driven by the pipeline's and its children's own events.

Stages have their own inputs (a promotion edited re-runs the gates, never the training), a failed
stage is tried again by annotation, serving is watched (a service deleted is applied again, one
turned unready says so and recovers), errors are classified (an MLflow outage is waited out with
one Warning; a refusal fails the pipeline once and is not retried), and the status holds exactly
what the CRD declares."""

from __future__ import annotations

import ast
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests._operator import ACCOUNT, REPO, Operator, Site, pipeline_doc, rbac_docs, train_as_rank0
from tests._servers import MlflowServer
from tests._waiting import wait_until

pytestmark = pytest.mark.integration


def submission_of(site: Site, job: str) -> str:
    return wait_until(lambda: site.job(job), f"the PyTorchJob {job}")["metadata"]["labels"]["ferry.dev/submission"]


def train(site: Site, name: str, model: str, job: str, accuracy: float) -> None:
    """The job's rank 0 registers a model; the training operator says the job succeeded."""
    train_as_rank0(site.mlflow_url, f"exp-{name}", submission_of(site, job), model, accuracy)
    site.succeed(job)


def serving(site: Site, name: str) -> None:
    wait_until(lambda: site.isvc(name), "the InferenceService exists")
    site.serve_ready(name)
    wait_until(site.phase_is(name, "Serving"), "phase Serving")


def reasons(site: Site, name: str, reason: str) -> int:
    return site.events(name).count(reason)


def test_a_pipeline_without_a_deployment_ends_promoted(site: Site) -> None:
    doc = pipeline_doc("nodeploy", "op-nodeploy")
    del doc["spec"]["deployment"]
    with Operator(site):
        site.create_pipeline(doc)
        train(site, "nodeploy", "op-nodeploy", "nodeploy-g1", 0.97)
        wait_until(site.phase_is("nodeploy", "Promoted"), "phase Promoted")
        st = site.status("nodeploy")
        assert st["modelVersion"] == "1" and "holds 'staging'" in st["message"] and "no deployment" in st["message"]
        assert site.isvc("nodeploy") is None


def test_a_rejected_pipeline_whose_threshold_is_lowered_is_gated_again_without_training(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("regate", "op-regate", min_value=0.99))
        train(site, "regate", "op-regate", "regate-g1", 0.95)
        wait_until(site.phase_is("regate", "Rejected"), "phase Rejected")
        site.patch_pipeline("regate", {"spec": {"promotion": {"minValue": 0.9}}})
        serving(site, "regate")
        st = site.status("regate")
        assert st["observedGeneration"] == 2 and st["jobName"] == "regate-g1" and st["modelVersion"] == "1"
        assert {g["name"]: g["passed"] for g in st["gates"]}["threshold"] is True
    assert site.job_creations() == ["regate-g1"]


def test_a_promotion_edited_while_serving_re_runs_the_gates_and_keeps_serving(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("edit", "op-edit"))
        train(site, "edit", "op-edit", "edit-g1", 0.95)
        serving(site, "edit")
        site.patch_pipeline("edit", {"spec": {"promotion": {"minValue": 0.97}}})
        wait_until(lambda: any(c["type"] == "Promoted" and c["status"] == "False"
                               for c in site.status("edit")["conditions"]), "the gates re-run and failed")
        st = site.status("edit")
        assert st["phase"] == "Serving" and st["servingVersion"] == "1"
        promoted = next(c for c in st["conditions"] if c["type"] == "Promoted")
        assert "no longer passes: threshold gate failed: test_accuracy 0.95, needs >= 0.97" in promoted["message"]
        wait_until(lambda: "GatesFailed" in site.events("edit"), "the GatesFailed event")
    assert site.job_creations() == ["edit-g1"]


def test_the_retry_annotation_trains_a_failed_job_again(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("again", "op-again"))
        submission_of(site, "again-g1")
        site.job_status("again-g1", ("Failed", "PyTorchJob again-g1 is failed because 1 Master replica(s) failed."),
                        {"Master": {"failed": 1}})
        wait_until(site.phase_is("again", "Failed"), "phase Failed")
        time.sleep(1)  # a failed pipeline stays failed: nothing is submitted again by itself
        assert site.job_creations() == ["again-g1"]
        site.patch_pipeline("again", {"metadata": {"annotations": {"ferry.dev/retry": "1"}}})
        train(site, "again", "op-again", "again-g1-r1", 0.97)
        serving(site, "again")
        st = site.status("again")
        assert st["retry"] == "1" and st["attempt"] == 1 and st["jobName"] == "again-g1-r1"
        assert "Retrying" in site.events("again")
    assert site.job_creations() == ["again-g1", "again-g1-r1"]


def test_an_inferenceservice_deleted_while_serving_is_applied_again(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("gone", "op-gone"))
        train(site, "gone", "op-gone", "gone-g1", 0.97)
        serving(site, "gone")
        uid = site.isvc("gone")["metadata"]["uid"]
        site.cp.raw("DELETE", f"{site.isvcs}/gone")
        again = wait_until(lambda: (site.isvc("gone") or {}).get("metadata", {}).get("uid") not in (None, uid) and
                           site.isvc("gone"), "the InferenceService applied again (long before the 300 s resync)")
        assert again["metadata"]["annotations"]["ferry.dev/model-version"] == "1"
        wait_until(lambda: "Reapplied" in site.events("gone"), "the Reapplied event")


def test_an_inferenceservice_that_turns_unready_is_reported_and_recovers(site: Site) -> None:
    with Operator(site):
        site.create_pipeline(pipeline_doc("flaky", "op-flaky"))
        train(site, "flaky", "op-flaky", "flaky-g1", 0.97)
        serving(site, "flaky")
        site.kserve.ready("flaky", "http://flaky.example.com", ready=False, reason="RevisionMissing",
                          message="Revision flaky-predictor-00001 has no ready pods")
        ready = lambda: next(c for c in site.status("flaky")["conditions"] if c["type"] == "Ready")  # noqa: E731
        wait_until(lambda: ready()["status"] == "False", "Ready=False")
        assert ready()["reason"] == "RevisionMissing" and "has no ready pods" in ready()["message"]
        assert site.status("flaky")["phase"] == "Serving" and "not ready" in site.status("flaky")["message"]
        site.serve_ready("flaky")
        wait_until(lambda: ready()["status"] == "True", "Ready again")


def test_an_mlflow_outage_while_evaluating_is_waited_out_with_one_warning(site: Site, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path)
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        with Operator(site):
            site.create_pipeline(pipeline_doc("outage", "op-outage"))
            train_as_rank0(server.url, "exp-outage", submission_of(site, "outage-g1"), "op-outage", 0.97)
            server.stop()
            site.succeed("outage-g1")
            ready = lambda: next((c for c in site.status("outage").get("conditions", [])  # noqa: E731
                                  if c["type"] == "Ready"), {})
            wait_until(lambda: ready().get("reason") == "MlflowUnavailable", "Ready=False naming MLflow", timeout=60)
            time.sleep(3)  # several attempts with backoff, still one episode
            server.start()
            wait_until(lambda: site.isvc("outage"), "recovered: the InferenceService applied", timeout=90)
            assert reasons(site, "outage", "MlflowUnavailable") == 1
        versions = MlflowClient(tracking_uri=server.url).search_model_versions("name = 'op-outage'")
        assert [v.version for v in versions] == ["1"]
    finally:
        server.stop()


def withhold_serving(site: Site) -> None:
    """The operator's role in the site's namespace, less the right to create or patch
    InferenceServices (as a cluster admin might have trimmed it)."""
    role = next(d for d in rbac_docs() if d["kind"] == "ClusterRole")
    rules = [{**r, "verbs": [v for v in r["verbs"] if v not in ("create", "patch")]}
             if "inferenceservices" in r["resources"] else r for r in role["rules"]]
    name = f"{ACCOUNT}-{site.ns}"
    site.cp.apply({**role, "metadata": {"name": name}, "rules": rules})
    site.cleanups.append(lambda: site.cp.raw("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"))
    site.cp.raw("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}")
    site.cp.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                   "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": site.ns}]})
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": site.user, "groups": ["system:serviceaccounts", "system:authenticated"],
        "resourceAttributes": {"namespace": site.ns, "group": "serving.kserve.io", "resource": "inferenceservices",
                               "verb": "patch"}}}
    site.cp.wait_for(lambda: not site.cp.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                              review)["status"].get("allowed"), "the trimmed role in force")
    site.expected_denials.append("inferenceservices")


# Refusals: the pipeline fails once, with the reason, and is not retried until its spec changes.
@pytest.mark.parametrize("case", ["tracking-from-a-secret", "service-of-another-pipeline", "rights-missing-to-serve"])
def test_a_refusal_fails_the_pipeline_once_and_is_not_retried(site: Site, case: str) -> None:
    doc = pipeline_doc("refused", "op-refused")
    if case == "rights-missing-to-serve":
        withhold_serving(site)
    with Operator(site):
        if case == "rights-missing-to-serve":
            site.create_pipeline(doc)
            train(site, "refused", "op-refused", "refused-g1", 0.97)
            reason, words = "Forbidden", "may not patch inferenceservices.serving.kserve.io in namespace"
        elif case == "tracking-from-a-secret":
            doc["spec"]["job"]["tracking"]["uriFrom"] = {"kind": "secret", "name": "mlflow", "key": "uri"}
            site.create_pipeline(doc)
            reason, words = "Rejected", "reads its tracking URI from Secret 'mlflow'"
        else:
            site.create_pipeline(pipeline_doc("first", "op-first"))
            train(site, "first", "op-first", "first-g1", 0.97)
            wait_until(lambda: site.isvc("first"), "the first pipeline's InferenceService")
            doc["spec"]["deployment"]["name"] = "first"
            site.create_pipeline(doc)
            train(site, "refused", "op-refused", "refused-g1", 0.97)
            reason, words = "OwnedElsewhere", "InferenceService first belongs to ModelPipeline first"
        wait_until(site.phase_is("refused", "Failed"), "phase Failed")
        st = site.status("refused")
        assert words in st["message"], st["message"]
        assert next(c for c in st["conditions"] if c["type"] in ("Ready", "Trained") and c["reason"] == reason)
        patches = lambda: len([e for e in site.requests() if e["verb"] == "patch"  # noqa: E731
                               and (e.get("objectRef") or {}).get("name") == "refused"])
        before = patches()
        time.sleep(3)
        assert patches() == before and reasons(site, "refused", reason) == 1


def test_a_pipeline_waiting_in_training_is_quiet(site: Site) -> None:
    """While a job trains, the operator writes nothing and logs nothing above INFO."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        with Operator(site):
            site.create_pipeline(pipeline_doc("quiet", "op-quiet"))
            submission_of(site, "quiet-g1")
            site.job_status("quiet-g1")  # Created, Running
            wait_until(lambda: "Running" in site.status("quiet").get("message", ""), "the Running phase told")
            writes = lambda: len([e for e in site.requests() if e["verb"] in ("patch", "update", "create")])  # noqa: E731
            before, events = writes(), len(site.events("quiet"))
            time.sleep(15)
            assert writes() == before and len(site.events("quiet")) == events
    finally:
        logging.getLogger().removeHandler(handler)
    assert [r.getMessage() for r in records if r.name.startswith(("ferry", "kopf"))
            and "OS signals are ignored" not in r.getMessage()] == []  # (kopf in a test's thread)


# ---- the status the reconciler writes is the status the CRD keeps ------------------------------------
OPERATOR = REPO / "operator" / "ferry_operator"


def written_status_fields() -> set[str]:
    """Every status field the operator's code writes: keywords of ``put(...)`` and keys of
    ``status.update(...)``/``status[...] =`` in its modules."""
    fields: set[str] = set()
    for path in OPERATOR.glob("_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("put", "update") and (node.func.attr == "put" or "status" in ast.unparse(node.func)):
                    fields |= {k.arg for k in node.keywords if k.arg}
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                    ast.unparse(node.value).endswith("status") and isinstance(node.ctx, ast.Store):
                fields.add(node.slice.value)
    return fields


def full_status() -> dict[str, Any]:
    stamp = "2026-01-02T03:04:05Z"
    condition = {"type": "Ready", "status": "False", "reason": "Canary", "message": "m", "lastTransitionTime": stamp,
                 "observedGeneration": 3}
    return {"phase": "Canary", "message": "m", "observedGeneration": 3, "conditions": [condition],
            "jobName": "p-g1-r1", "jobKind": "TrainJob", "submission": "abc-g1-r1", "runId": "r", "model": "m",
            "modelVersion": "2",
            "inferenceService": "p", "url": "http://p.example.com", "gates": [{"name": "threshold", "passed": True,
                                                                                "detail": "d"}],
            "runLookups": 2, "jobDigest": "d1", "jobOutcome": "Succeeded", "attempt": 1, "promotionDigest": "d2",
            "deploymentDigest": "d3", "servingVersion": "1", "traffic": "v2=20%,v1=80%",
            "canary": {"version": "2", "previousVersion": "1", "percent": 20, "digest": "d3", "appliedAt": stamp,
                       "readySince": stamp},
            "plan": {"runId": "r2", "version": "2", "minReplicas": 1, "maxReplicas": 5, "metric": "concurrency",
                     "target": 8, "digest": "d5"},
            "planFailedJob": "uid-1", "retry": "x", "failedStage": "Canary", "failedInputs": "d4"}


def test_every_status_field_the_operator_writes_is_kept_by_the_api_server(site: Site) -> None:
    status = full_status()
    assert written_status_fields() <= set(status), "a status field the operator writes is missing from this test"
    doc = pipeline_doc("schema", "op-schema")
    site.create_pipeline(doc)  # no operator runs: the status is this test's alone
    site.cp.raw("PATCH", f"{site.pipelines}/schema/status", {"status": status})
    assert site.status("schema") == status
