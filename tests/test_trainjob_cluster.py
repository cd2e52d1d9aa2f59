"""The cluster commands for a job whose target is a Kubeflow Trainer TrainJob, on a real API
server (tests/_controlplane.py: the Trainer v2.3.0 CRDs are installed with the others). The test
plays the Trainer, JobSet and the kubelet through the API (tests/_controllers.py: the TrainJob's
conditions, jobsStatus and trainerStatus, its nodes' pods), since none of them runs here. A
TrainJob's pods never run here either, so what their logs say is in tests/test_kube_emulated.py."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tests._controllers import Trainer, torch_runtime, trainjob_path

pytestmark = pytest.mark.integration

# A job a TrainJob expresses (the digits example's run_policy is one it cannot: retries and TTL are
# the runtime's), its target chosen in the file.
JOB = """from ferry import Resources, Tracking, TrainingJob

job = TrainingJob(name="digits", image="ghcr.io/acme/train:1", module="jobs.digits.train", workers=2,
                  resources=Resources(cpu="1", memory="2Gi"), target="trainjob",
                  tracking=Tracking(experiment="digits", register_as="digits-classifier"))
"""
PROGRESS = {"progressPercentage": 40, "estimatedRemainingSeconds": 150,
            "metrics": [{"name": "loss", "value": "0.31"}, {"name": "accuracy", "value": "0.91"}]}
COMPLETE = ("Complete", "AllJobsCompleted", "jobset completed successfully")
FAILED = ("Failed", "FailedJobs", "jobset failed due to one or more job failures")


def ferry(*args: str):
    from ferry.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture
def trainjobs(control_plane, namespace, tmp_path, monkeypatch):
    """The admin's kubeconfig in a fresh restricted namespace, jobs rendered as TrainJobs
    (FERRY_TARGET), Trainer's torch-distributed runtime installed; the Trainer's part."""
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "kubeconfig", "admin", namespace=namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("FERRY_POLL_INTERVAL_S", "0.05")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.py").write_text(JOB)
    with torch_runtime(control_plane):
        yield Trainer(control_plane, namespace)


def table_rows(text: str) -> list[list[str]]:
    """The cells of each line of a table ``rich`` printed."""
    return [line.replace("│", " ").replace("┃", " ").split() for line in text.splitlines()]


def submit(*extra: str):
    return ferry("submit", "job.py", "--no-code", "--tracking-uri", "http://mlflow.ml:5000", *extra)


def test_submit_applies_the_trainjob_of_a_new_submission(trainjobs, control_plane):
    result = submit()
    assert result.exit_code == 0, result.output
    job = trainjobs.job("digits")
    submission = job["metadata"]["labels"]["ferry.dev/submission"]
    assert f"submission {submission}" in result.stdout
    assert f"applied: TrainJob {trainjobs.namespace}/digits" in result.stderr
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["template"]["spec"]["template"]["metadata"]["labels"]["ferry.dev/submission"] == submission
    assert [(m["manager"], m["operation"]) for m in job["metadata"]["managedFields"]] == [("ferry", "Apply")]
    # not run yet: Pending, a TrainJob
    status = ferry("status", "digits")
    assert status.exit_code == 0, status.output
    assert f"TrainJob {trainjobs.namespace}/digits" in status.stdout and "Pending" in status.stdout
    # a job is never reused: running, then finished
    again = submit()
    assert again.exit_code == 4 and "TrainJob 'digits'" in again.output and "still running" in again.output
    trainjobs.set_status("digits", conditions=[COMPLETE], succeeded=1)
    finished = submit()
    assert finished.exit_code == 4 and "a finished job is never reused" in finished.output
    # --replace: the old TrainJob (its pods with it, through the garbage collector) goes first;
    # the new one is a new submission (spec.trainer is immutable: never an update)
    trainjobs.add_pod("digits", 0, phase="Succeeded", exit_code=0)
    replaced = submit("--replace")
    assert replaced.exit_code == 0, replaced.output
    assert f"deleting TrainJob {trainjobs.namespace}/digits (submission {submission}, Succeeded)" in replaced.stderr
    new = trainjobs.job("digits")
    assert new["metadata"]["labels"]["ferry.dev/submission"] != submission
    assert new["metadata"]["uid"] != job["metadata"]["uid"]
    assert control_plane.raw("GET", f"/api/v1/namespaces/{trainjobs.namespace}/pods")["items"] == []


def test_submit_names_a_missing_runtime(control_plane, namespace, tmp_path, monkeypatch):
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "kubeconfig", "admin", namespace=namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.py").write_text(JOB)
    result = submit()
    assert result.exit_code == 3, result.output
    said = " ".join(result.stderr.split())
    assert "ClusterTrainingRuntime 'torch-distributed', the runtime the TrainJob names, does not exist" in said
    assert "overlays/runtimes?ref=v2.3.0" in said and "TrainingJob(runtime=...)" in said
    assert not control_plane.exists(trainjob_path("digits", namespace))  # nothing half-done
    assert not control_plane.exists(f"/api/v1/namespaces/{namespace}/configmaps/ferry-mlflow")


def test_status_shows_the_nodes_and_the_progress_the_trainer_reports(trainjobs, control_plane):
    assert submit().exit_code == 0
    ns = trainjobs.namespace
    trainjobs.add_pod("digits", 1, restarts=2)
    trainjobs.add_pod("digits", 0)
    trainjobs.set_status("digits", active=1, ready=1, progress=PROGRESS)

    status = ferry("status", "digits")
    assert status.exit_code == 0, status.output
    text = status.stdout
    assert f"TrainJob {ns}/digits" in text and "Running" in text and "restarts 2" in text
    assert "progress 40%, about 2m30s left, loss 0.31, accuracy 0.91 (reported" in " ".join(text.split())
    rows = [cells for cells in table_rows(text) if cells and cells[0].startswith("node-") and len(cells) == 5]
    assert [(r[0], r[2], r[3]) for r in rows] == [("node-0", "Running", "0"), ("node-1", "Running", "2")], text
    assert rows[0][1].startswith("digits-node-0-0-") and rows[1][1].startswith("digits-node-0-1-")

    for output, parse in [("json", json.loads), ("yaml", yaml.safe_load)]:
        state = parse(ferry("status", "digits", "-o", output).stdout)
        assert (state["kind"], state["phase"], state["restarts"]) == ("TrainJob", "Running", 2)
        assert state["replicas"] == {"node": {"active": 2, "succeeded": 0, "failed": 0}}
        assert [p["replica"] for p in state["pods"]] == ["node-0", "node-1"]
        progress = state["progress"]
        assert {k: progress[k] for k in ("percent", "remaining_seconds", "metrics")} == {
            "percent": 40, "remaining_seconds": 150, "metrics": {"loss": "0.31", "accuracy": "0.91"}}
        assert progress["updated"].endswith("Z")


def test_list_shows_both_kinds(trainjobs, control_plane, tmp_path, monkeypatch):
    ns = trainjobs.namespace
    assert submit().exit_code == 0
    trainjobs.set_status("digits", active=1, ready=1)
    other = tmp_path / "other.py"
    other.write_text("from ferry import TrainingJob\n"
                     "job = TrainingJob(name='other', image='ghcr.io/acme/train:1', module='jobs.digits.train')\n")
    assert ferry("submit", str(other), "--no-code").exit_code == 0
    listed = ferry("list")
    assert listed.exit_code == 0, listed.output
    rows = {cells[0]: cells[1:] for cells in table_rows(listed.stdout) if cells and cells[0] in ("digits", "other")}
    assert rows["digits"][0] == "TrainJob" and rows["digits"][2] == "Running"
    assert rows["other"][0] == "PyTorchJob" and rows["other"][2] == "Pending"
    as_json = json.loads(ferry("list", "-o", "json").stdout)
    assert sorted((j["name"], j["kind"]) for j in as_json) == [("digits", "TrainJob"), ("other", "PyTorchJob")]
    assert {(j["name"], j["namespace"]) for j in json.loads(ferry("list", "-A", "-o", "json").stdout)} >= {
        ("digits", ns), ("other", ns)}
    # each name is found as its own kind
    assert "PyTorchJob" in ferry("status", "other").stdout and "TrainJob" in ferry("status", "digits").stdout


def test_list_passes_over_a_kind_the_user_may_not_list(trainjobs, control_plane, tmp_path):
    """Someone granted only PyTorchJobs still lists them, warned that TrainJobs were left out."""
    ns = trainjobs.namespace
    assert submit().exit_code == 0
    control_plane.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                         "metadata": {"name": "v1-only", "namespace": ns},
                         "rules": [{"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["list"]}]})
    control_plane.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                         "metadata": {"name": "v1-only", "namespace": ns},
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "v1-only"},
                         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "limited"}]})
    limited = control_plane.write_kubeconfig(tmp_path / "limited", "limited", namespace=ns)
    listed = ferry("list", "--kubeconfig", str(limited))
    assert listed.exit_code == 0, listed.output
    assert "no jobs submitted by Ferry" in listed.stdout
    assert "warning:" in listed.stderr and "may not list trainjobs.trainer.kubeflow.org" in listed.stderr


def test_wait_follows_the_trainjob_to_its_end(trainjobs, control_plane):
    from tests._waiting import play

    assert submit().exit_code == 0
    thread = play([lambda: trainjobs.add_pod("digits", 0),
                   lambda: trainjobs.set_status("digits", active=1, ready=1, progress=PROGRESS),
                   lambda: trainjobs.set_status("digits", conditions=[COMPLETE], succeeded=1,
                                                progress={**PROGRESS, "progressPercentage": 100})], delay=0.5)
    waited = ferry("status", "digits", "--wait", "--timeout", "60")
    thread.join()
    assert waited.exit_code == 0, waited.output
    lines = waited.stdout.splitlines()  # not a terminal: a line per change
    assert any("digits: Running (node 1 active" in line and "40%" in line for line in lines), waited.stdout
    assert "digits succeeded" in waited.stdout


def test_a_failed_trainjob_says_why(trainjobs, control_plane):
    assert submit().exit_code == 0
    trainjobs.add_pod("digits", 0, phase="Failed", exit_code=1)
    trainjobs.set_status("digits", conditions=[FAILED], failed=1)
    waited = ferry("status", "digits", "--wait", "--timeout", "30")
    assert waited.exit_code == 1, waited.output
    assert "digits failed: FailedJobs: jobset failed due to one or more job failures" in " ".join(waited.stderr.split())
    as_json = json.loads(ferry("status", "digits", "-o", "json").stdout)
    assert (as_json["phase"], as_json["reason"], as_json["finished"] is not None) == ("Failed", "FailedJobs", True)


def test_delete_waits_for_the_trainjob_and_its_pods(trainjobs, control_plane):
    ns = trainjobs.namespace
    assert submit().exit_code == 0
    pod = trainjobs.add_pod("digits", 0)
    deleted = ferry("delete", "digits", "--wait", "--timeout", "60")
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted TrainJob {ns}/digits" in deleted.stdout
    assert not control_plane.exists(trainjob_path("digits", ns))
    assert not control_plane.exists(f"/api/v1/namespaces/{ns}/pods/{pod}")
    gone = ferry("status", "digits")
    assert gone.exit_code == 3 and f"no PyTorchJob or TrainJob 'digits' in namespace '{ns}'" in gone.output
