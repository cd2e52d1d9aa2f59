"""A ModelPipeline whose job trains as a Kubeflow Trainer v2 TrainJob (``spec.job.target:
trainjob``, or the operator's default ``FERRY_TARGET=trainjob``), on the real control plane with
Trainer v2.3.0's CRDs and its torch-distributed runtime, and a real MLflow server; the Trainer is
played through the API as it writes a TrainJob's status (``tests/_controllers.Trainer``).

The operator runs as its ServiceAccount, bound to the ClusterRole Ferry ships: a 403 fails the
test, so these prove the role's trainer.kubeflow.org rules. The last test runs it on a second
control plane where Kubeflow Trainer is not installed at all."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._controlplane import ApiError, ControlPlane
from tests._operator import (
    PIPELINES,
    REPO,
    Operator,
    Site,
    changed,
    install_trainer,
    operator_site,
    pipeline_doc,
    rbac_docs,
    train_as_rank0,
    trainjob_pipeline,
)
from tests._waiting import wait_until

pytestmark = pytest.mark.integration

COMPLETE = ("Complete", "AllJobsCompleted", "jobset completed successfully")
FAILED = ("Failed", "FailedJobs", "jobset failed due to one or more job failures")


@pytest.fixture(scope="module")
def trainer(control_plane: ControlPlane) -> str:
    """Kubeflow Trainer's CRDs and runtime on the shared control plane (left there)."""
    return install_trainer(control_plane)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == type_)


def test_a_pipeline_trains_through_a_trainjob_then_gates_and_deploys(site: Site, trainer: str) -> None:
    with Operator(site):
        site.create_pipeline(trainjob_pipeline("tj", "op-tj"))
        job = wait_until(lambda: site.trainjob("tj-g1"), "the TrainJob exists")
        owner = site.pipeline("tj")
        assert job["metadata"]["ownerReferences"] == [{
            "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelPipeline", "name": "tj",
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        assert job["spec"]["runtimeRef"]["name"] == trainer
        submission = job["metadata"]["labels"]["ferry.dev/submission"]
        wait_until(site.phase_is("tj", "Training"), "phase Training")
        st = site.status("tj")  # read back through the API server: a field the CRD declares
        assert (st["jobKind"], st["jobName"], st["submission"]) == ("TrainJob", "tj-g1", submission)
        assert condition(st, "Trained")["message"] == f"TrainJob tj-g1, submission {submission}"
        assert site.job("tj-g1") is None  # no PyTorchJob beside it

        site.trainer.set_status("tj-g1", active=1, ready=1, progress={
            "progressPercentage": 40, "estimatedRemainingSeconds": 90, "metrics": [{"name": "loss", "value": "0.31"}]})
        wait_until(lambda: "TrainJob tj-g1: Running (40%" in site.status("tj").get("message", ""),
                   "the TrainJob's state and progress told")
        assert "loss 0.31" in site.status("tj")["message"]
        train_as_rank0(site.mlflow_url, "exp-tj", submission, "op-tj", accuracy=0.97)
        site.trainer.set_status("tj-g1", conditions=[COMPLETE], succeeded=1, progress={"progressPercentage": 100})
        isvc = wait_until(lambda: site.isvc("tj"), "the InferenceService exists")
        wait_until(site.phase_is("tj", "Deploying"), "phase Deploying")
        st = site.status("tj")
        assert st["modelVersion"] == "1" and st["jobOutcome"] == "Succeeded" and st["jobKind"] == "TrainJob"
        assert condition(st, "Trained")["message"] == "TrainJob tj-g1 succeeded"
        assert isvc["metadata"]["annotations"]["ferry.dev/model-version"] == "1"
        wait_until(lambda: "Deploying" in site.events("tj"), "the Deploying event")
        assert list(dict.fromkeys(r for r in site.events("tj") if r in ("Submitted", "Trained", "Registered",
                                                                         "Promoted", "Deploying"))) == [
            "Submitted", "Trained", "Registered", "Promoted", "Deploying"]
    assert site.job_creations("trainjobs") == ["tj-g1"] and site.job_creations() == []
    calls = site.calls()
    assert {("trainer.kubeflow.org", "trainjobs", verb) for verb in ("get", "list", "watch", "create", "patch")} <= calls
    assert ("trainer.kubeflow.org", "clustertrainingruntimes", "get") in calls  # the runtime checked first


def test_the_operators_default_target_applies_when_the_job_names_none_and_is_kept_once_chosen(
        site: Site, trainer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FERRY_TARGET=trainjob: a pipeline whose job names no target trains as a TrainJob; one the
    TrainJob cannot express fails, naming the field. Restarted with the default back to
    pytorchjob, the operator goes on with the TrainJob the status records."""
    monkeypatch.setenv("FERRY_TARGET", "trainjob")
    plain = pipeline_doc("dflt", "op-dflt")
    del plain["spec"]["job"]["runPolicy"]
    with Operator(site):
        site.create_pipeline(plain)
        site.create_pipeline(pipeline_doc("strict", "op-strict-dflt"))  # its runPolicy sets backoffLimit
        job = wait_until(lambda: site.trainjob("dflt-g1"), "the TrainJob exists")
        wait_until(site.phase_is("dflt", "Training"), "phase Training")
        assert site.status("dflt")["jobKind"] == "TrainJob"
        wait_until(site.phase_is("strict", "Failed"), "the job a TrainJob cannot express fails")
        st = site.status("strict")
        assert "spec.job.runPolicy.backoffLimit: a TrainJob has no retry limit of its own" in st["message"], st["message"]
        assert "FERRY_TARGET=trainjob" in st["message"] and "spec.job.target" in st["message"]
        assert condition(st, "Ready")["reason"] == "InvalidSpec" and st["failedStage"] == "Training"
        assert "jobKind" not in st and site.trainjob("strict-g1") is None and site.job("strict-g1") is None
    monkeypatch.delenv("FERRY_TARGET")
    submission = job["metadata"]["labels"]["ferry.dev/submission"]
    train_as_rank0(site.mlflow_url, "exp-dflt", submission, "op-dflt", accuracy=0.97)
    with Operator(site):
        site.trainer.set_status("dflt-g1", conditions=[COMPLETE], succeeded=1)
        wait_until(site.phase_is("dflt", "Deploying"), "phase Deploying")
        assert site.status("dflt")["jobKind"] == "TrainJob"
    assert site.job_creations() == [] and site.job_creations("trainjobs") == ["dflt-g1"]


def test_a_failed_trainjob_fails_the_pipeline_with_the_trainers_reason(site: Site, trainer: str) -> None:
    with Operator(site):
        site.create_pipeline(trainjob_pipeline("broken", "op-tj-broken"))
        wait_until(lambda: site.trainjob("broken-g1"), "the TrainJob exists")
        site.trainer.set_status("broken-g1", conditions=[FAILED], failed=1)
        wait_until(site.phase_is("broken", "Failed"), "phase Failed")
        st = site.status("broken")
        assert st["message"] == "TrainJob broken-g1 failed: jobset failed due to one or more job failures"
        trained = condition(st, "Trained")
        assert (trained["status"], trained["reason"]) == ("False", "FailedJobs")
        assert (st["jobOutcome"], st["failedStage"]) == ("Failed", "Training")
        wait_until(lambda: "TrainingFailed" in site.events("broken"), "the TrainingFailed event")


def test_a_changed_job_supersedes_the_running_trainjob_even_as_another_kind(site: Site, trainer: str) -> None:
    with Operator(site):
        site.create_pipeline(trainjob_pipeline("switch", "op-switch"))
        wait_until(lambda: site.trainjob("switch-g1"), "the TrainJob g1")
        site.trainer.set_status("switch-g1", active=1, ready=1)
        wait_until(lambda: "TrainJob switch-g1: Running" in site.status("switch").get("message", ""), "g1 running")
        site.patch_pipeline("switch", {"spec": {"job": {"target": "pytorchjob", "hyperparameters": {"epochs": 3}}}})
        wait_until(lambda: site.job("switch-g2"), "the PyTorchJob g2")
        wait_until(lambda: site.trainjob("switch-g1") is None, "the superseded TrainJob is deleted")
        wait_until(lambda: site.status("switch").get("phase") == "Training"
                   and site.status("switch").get("jobName") == "switch-g2", "g2 training")
        assert site.status("switch")["jobKind"] == "PyTorchJob"
        wait_until(lambda: "Superseded" in site.events("switch"), "the Superseded event")
    assert ("trainer.kubeflow.org", "trainjobs", "delete") in site.calls()
    assert site.job_creations("trainjobs") == ["switch-g1"] and site.job_creations() == ["switch-g2"]


# What the schema says of the new fields: the API server refuses the pipeline (kubectl apply's
# strict field validation), naming the field; the operator's own check names it too.
@pytest.mark.parametrize("job, refusal, message", [
    ({"target": "mpijob"}, 'spec.job.target: Unsupported value: "mpijob"', "spec.job.target: Input should be"),
    ({"target": "trainjob", "runtime": "Torch_GPU", "runPolicy": None}, "spec.job.runtime: Invalid value",
     "spec.job.runtime: must name a ClusterTrainingRuntime"),
    ({"target": "pytorchjob", "runtime": "torch-gpu"}, "spec.job.runtime: Invalid value: a Kubeflow Trainer runtime "
     "is for target trainjob only", "spec.job: runtime='torch-gpu' names a Kubeflow Trainer runtime"),
    ({"target": "trainjob", "runPolicy": None, "elastic": {"minWorkers": 1, "maxWorkers": 4}},
     "spec.job.elastic: Invalid value: Kubeflow Trainer v2 (target trainjob) has no elastic",
     "spec.job.elastic: Kubeflow Trainer v2 (target='trainjob') has no elastic training"),
    ({"target": "trainjob", "runPolicy": None, "restartPolicy": "Never"}, "spec.job.restartPolicy: Invalid value",
     "spec.job.restartPolicy: a TrainJob's pods restart OnFailure"),
    ({"target": "trainjob", "runPolicy": None, "port": 23456}, "spec.job.port: Invalid value",
     "spec.job.port: Kubeflow Trainer fixes the rendezvous port"),
    ({"target": "trainjob"}, "spec.job.runPolicy.backoffLimit: Invalid value",
     "spec.job.runPolicy.backoffLimit: a TrainJob has no retry limit of its own"),
    ({"target": "trainjob", "runPolicy": {"cleanPodPolicy": "All", "backoffLimit": None, "ttlSecondsAfterFinished": None}},
     "spec.job.runPolicy.cleanPodPolicy: Invalid value",
     "spec.job.runPolicy.cleanPodPolicy: a finished TrainJob always deletes"),
])
def test_a_target_or_runtime_the_schema_refuses_never_reaches_the_operator(
        control_plane: ControlPlane, namespace: str, job: dict[str, Any], refusal: str, message: str) -> None:
    from ferry.errors import SpecError

    from ferry_operator import parse

    doc = changed(pipeline_doc("bad", "op-bad"), {"job": job})
    doc["metadata"]["namespace"] = namespace
    with pytest.raises(ApiError) as refused:
        control_plane.raw("POST", f"{PIPELINES.format(ns=namespace)}?fieldValidation=Strict", doc)
    assert refused.value.code == 422 and refusal in str(refused.value), refused.value
    with pytest.raises(SpecError, match=re.escape(message)):
        parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8, "generation": 1}})


def test_a_pipeline_name_too_long_for_a_trainjobs_pods_is_refused_naming_the_field() -> None:
    from ferry.errors import SpecError

    from ferry_operator import parse

    doc = trainjob_pipeline("p" * 50, "op-long")
    with pytest.raises(SpecError, match=re.escape("metadata.name: the job is named after the pipeline, and a "
                                                  "TrainJob's pods are named")):
        parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8, "generation": 1}})


# ---- a cluster without Kubeflow Trainer ------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A second control plane with the training operator, KServe and Ferry's operator CRDs, and
    the operator's ClusterRole, but no Kubeflow Trainer."""
    from ferry.settings import PACKAGED_CRD_DIR
    from tests import _controlplane

    bin_dir = _controlplane.assets()
    if bin_dir is None:
        pytest.skip(_controlplane.skip_reason())
    with _controlplane.started(bin_dir, tmp_path_factory.mktemp("untrained-control-plane")) as plane:
        plane.install_crds(PACKAGED_CRD_DIR / "kubeflow.org_pytorchjobs.yaml",
                           PACKAGED_CRD_DIR / "serving.kserve.io_inferenceservices.yaml",
                           *sorted((REPO / "operator/ferry_operator/crds").glob("*.yaml")))
        plane.apply(next(d for d in rbac_docs() if d["kind"] == "ClusterRole"))
        yield plane


def test_without_kubeflow_trainer_the_operator_trains_pytorchjobs_and_a_trainjob_waits_for_it(
        untrained_plane: ControlPlane, mlflow_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf warns once that it cannot watch trainjobs and goes on: no error, no 403, no crash; a
    PyTorchJob pipeline trains as ever, a TrainJob pipeline waits saying what to install. Once
    the Trainer is installed, kopf watches its TrainJobs (they wake their pipelines) and the
    waiting pipeline trains."""
    plane = untrained_plane
    ns = plane.namespace()
    with operator_site(plane, ns, mlflow_url, tmp_path, monkeypatch) as site:
        operator = Operator(site)
        with operator:
            site.create_pipeline(pipeline_doc("plain", "op-plain"))
            site.create_pipeline(trainjob_pipeline("waits", "op-waits"))
            wait_until(lambda: site.job("plain-g1"), "the PyTorchJob exists")
            site.job_status("plain-g1")
            wait_until(lambda: "PyTorchJob plain-g1: Running" in site.status("plain").get("message", ""),
                       "the PyTorchJob's change woke its pipeline")
            wait_until(lambda: any(c["type"] == "Ready" and c.get("reason") == "NotInstalled"
                                   for c in site.status("waits").get("conditions") or []),
                       "the TrainJob pipeline waits for the Trainer")
            ready = condition(site.status("waits"), "Ready")
            assert ready["status"] == "False"
            assert "TrainJob (trainer.kubeflow.org/v1alpha1) is not installed in this cluster: install Kubeflow " \
                   "Trainer v2" in ready["message"], ready["message"]

            install_trainer(plane)
            wait_until(lambda: site.trainjob("waits-g1"), "the TrainJob, once the Trainer is installed", timeout=60)
            wait_until(site.phase_is("waits", "Training"), "phase Training")
            site.trainer.set_status("waits-g1", active=1, ready=1)
            wait_until(lambda: "TrainJob waits-g1: Running" in site.status("waits").get("message", ""),
                       "the TrainJob's change woke its pipeline")
        output = operator.runner.output
        assert operator.runner.exception is None and operator.runner.exit_code == 0, output
        assert re.search(r"Unresolved resources cannot be served.*trainjobs", output), output
        # (kopf retries a watch the API server answers 429 while a CRD installed just now settles)
        errors = [line for line in output.splitlines() if "[ERROR" in line and "will retry" not in line]
        assert "Traceback" not in output and errors == [], output
    assert site.denied() == []
    plane.delete_namespace(ns)


def test_the_role_grants_the_trainer_verbs_the_operator_uses_and_no_more() -> None:
    role = next(d for d in rbac_docs() if d["kind"] == "ClusterRole")
    trainer = {(res, verb) for rule in role["rules"] if rule["apiGroups"] == ["trainer.kubeflow.org"]
               for res in rule["resources"] for verb in rule["verbs"]}
    assert trainer == {("trainjobs", v) for v in ("get", "list", "watch", "create", "patch", "delete")} | {
        ("clustertrainingruntimes", "get")}
    assert yaml.safe_dump(role).count("*") == 0
