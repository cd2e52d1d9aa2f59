"""The capacity plan as a step of a pipeline's deployment (``spec.deployment.plan``), on the real
control plane and a real MLflow server, the operator running with its own role.

The Job controller runs there and makes the plan Job's pod (Pod Security "restricted" enforced
by the namespace); no kubelet runs, so the test plays it: the pod's container runs as a local
process with the environment the kubelet would give it (``tests/_journey.py``'s ``Kubelet``),
``ferry plan`` against the version the pipeline registered, then the pod's status says how it
ended, and the Job controller completes or fails the Job. The command runs as the Job states it,
with the measurement's timing shortened (windows, warm-up, the sweep's last concurrency, the
open loop's length): the product's defaults take minutes, and what they measure is the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests._controlplane import ApiError
from tests._journey import Kubelet, Process, image_of, replace_flag, running
from tests._operator import Operator, Site, pipeline_doc, train_as_rank0
from tests._waiting import wait_until

pytestmark = pytest.mark.integration

FAST = ["--window", "0.3", "--warmup", "0.2", "--max-windows", "3", "--max-clients", "4", "--duration", "1"]
PLAN = {"sloP99Ms": 2000, "peakRps": 40, "headroom": 0.2}
DEPLOYMENT = {"resources": {"cpu": "500m", "memory": "1Gi"}, "maxBatchSize": 8, "maxLatencyMs": 2,
              "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "concurrency", "target": 5}}


def planned_pipeline(name: str, model: str, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = pipeline_doc(name, model)
    doc["spec"]["deployment"] = {**DEPLOYMENT, "plan": plan or PLAN}
    return doc


def train(site: Site, name: str, model: str) -> None:
    """The pipeline's training, played: its job's rank 0 registers a version, the job succeeds."""
    job = wait_until(lambda: site.job(f"{name}-g1"), "the PyTorchJob exists")
    train_as_rank0(site.mlflow_url, f"exp-{name}", job["metadata"]["labels"]["ferry.dev/submission"], model, 0.97)
    site.succeed(f"{name}-g1")


def batch_job(site: Site, name: str) -> dict[str, Any] | None:
    return site.find(f"/apis/batch/v1/namespaces/{site.ns}/jobs/{name}")


def job_pod(site: Site, job: dict[str, Any]) -> dict[str, Any] | None:
    pods = site.cp.raw("GET", f"/api/v1/namespaces/{site.ns}/pods?labelSelector=batch.kubernetes.io/controller-uid="
                              f"{job['metadata']['uid']}")["items"]
    return pods[0] if pods else None


def pod_status(site: Site, pod: dict[str, Any], phase: str, state: dict[str, Any]) -> None:
    (container,) = pod["spec"]["containers"]
    done = "terminated" in state
    site.cp.raw("PATCH", f"/api/v1/namespaces/{site.ns}/pods/{pod['metadata']['name']}/status", {"status": {
        "phase": phase, "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                               "restartCount": 0, "state": state, "ready": not done,
                                               "started": not done}]}})


def play_kubelet(site: Site, pod: dict[str, Any], workdir: Path, timeout: float = 300) -> tuple[int, Path]:
    """Run the pod's one container as the kubelet would (Running, then Succeeded or Failed from its
    exit code); its exit code and its output folder (``-o``, a folder of the test's)."""
    (container,) = pod["spec"]["containers"]
    home = workdir / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    image = image_of(container["image"], home)
    declared = Kubelet(site.cp, site.ns).env(pod, container)
    out = workdir / "plan"
    argv = replace_flag(Kubelet.argv(container, image, declared), "-o", str(out)) + FAST
    pod_status(site, pod, "Running", {"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    process = Process("the plan Job's container", argv, {**image.env, **declared}, workdir / "plan.log")
    with running(process):
        code = process.wait(timeout)
    pod_status(site, pod, "Succeeded" if code == 0 else "Failed", {"terminated": {
        "exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:00:01Z"}})
    return code, out


def expected_autoscaling(doc: dict[str, Any]) -> dict[str, Any]:
    from ferry.plan._formulas import autoscaling_for
    from ferry.plan._report import from_json

    return autoscaling_for(from_json(doc)["plan"], "concurrency", "serverless")


def test_the_plan_job_measures_the_version_and_the_service_scales_by_it(site: Site, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    with Operator(site):
        site.create_pipeline(planned_pipeline("sized", "op-sized"))
        train(site, "sized", "op-sized")
        job = wait_until(lambda: batch_job(site, "sized-plan-v1"), "the plan Job exists", timeout=60)
        wait_until(lambda: "planning capacity of v1 (Job sized-plan-v1" in site.status("sized").get("message", ""),
                   "phase Deploying says it plans")
        assert site.status("sized")["phase"] == "Deploying" and site.isvc("sized") is None
        owner = site.pipeline("sized")
        assert job["metadata"]["ownerReferences"] == [{
            "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelPipeline", "name": "sized",
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        spec = job["spec"]
        assert spec["backoffLimit"] == 0 and 0 < spec["activeDeadlineSeconds"] <= 3600
        pod_spec = spec["template"]["spec"]
        assert pod_spec["restartPolicy"] == "Never" and pod_spec["automountServiceAccountToken"] is False
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod_spec["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["image"].rsplit("/", 1)[-1].startswith("ferry-serve:")
        assert container["command"] == [
            "ferry", "plan", "models:/op-sized/1", "--slo-p99-ms", "2000", "--peak-rps", "40", "--headroom", "0.2",
            "--device", "cpu", "--dtype", "float32", "--max-batch-size", "8", "--max-latency-ms", "2",
            "--cpu-request", "0.5", "-o", "/tmp/plan"]
        assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
        assert container["env"] == [{"name": "MLFLOW_TRACKING_URI", "valueFrom": {"configMapKeyRef": {
            "name": "ferry-mlflow", "key": "tracking-uri"}}}]
        assert container["envFrom"] == [{"secretRef": {"name": "ferry-mlflow-credentials", "optional": True}}]

        # the Job controller made its pod, admitted under "restricted"; the kubelet's part, played
        pod = wait_until(lambda: job_pod(site, job), "the Job controller made the plan's pod")
        code, out = play_kubelet(site, pod, tmp_path)
        assert code == 0, (tmp_path / "plan.log").read_text()[-3000:]
        doc = json.loads((out / "plan.json").read_text())
        assert doc["settings"]["max_batch_size"] == 8 and doc["settings"]["max_latency_ms"] == 2
        assert doc["settings"]["cpu_request"] == 0.5  # the Deployment's settings reached the server measured

        isvc = wait_until(lambda: site.isvc("sized"), "the InferenceService exists", timeout=60)
        want = expected_autoscaling(doc)
        predictor = isvc["spec"]["predictor"]
        assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
            == (want["min_replicas"], want["max_replicas"], "concurrency", want["target"])
        run_id = MlflowClient(tracking_uri=site.mlflow_url).get_model_version("op-sized", "1").tags["ferry.plan.run_id"]
        # read back through the API server (declared in the status schema), once the pass that applied the
        # InferenceService has written the status at its end
        plan = wait_until(lambda: site.status("sized").get("plan"), "status.plan recorded")
        assert {k: v for k, v in plan.items() if k != "digest"} == {
            "runId": run_id, "version": "1", "minReplicas": want["min_replicas"], "maxReplicas": want["max_replicas"],
            "metric": "concurrency", "target": want["target"]}
        wait_until(lambda: "Planned" in site.events("sized"), "the Planned event")
        site.serve_ready("sized")
        wait_until(site.phase_is("sized", "Serving"), "phase Serving")
        assert {c["type"]: c["status"] for c in site.status("sized")["conditions"]}["Planned"] == "True"
        assert batch_job(site, "sized-plan-v1")["status"].get("succeeded") == 1


def test_a_version_with_a_matching_plan_recorded_creates_no_job(site: Site, tmp_path: Path) -> None:
    """A plan of the version measured before (``ferry plan`` as a user runs it, with the figures
    and settings the Deployment states) is used as recorded."""
    import os
    import subprocess
    import sys

    with Operator(site):
        site.create_pipeline(planned_pipeline("known", "op-known"))
        job = wait_until(lambda: site.job("known-g1"), "the PyTorchJob exists")
        train_as_rank0(site.mlflow_url, "exp-known", job["metadata"]["labels"]["ferry.dev/submission"], "op-known", 0.97)
        done = subprocess.run(
            [sys.executable, "-m", "ferry", "plan", "models:/op-known/1", "--slo-p99-ms", "2000", "--peak-rps", "40",
             "--headroom", "0.2", "--max-batch-size", "8", "--max-latency-ms", "2", "--cpu-request", "0.5",
             "-o", str(tmp_path / "plan"), *FAST],
            env={**os.environ, "MLFLOW_TRACKING_URI": site.mlflow_url, "FERRY_HOME": str(tmp_path)},
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        site.succeed("known-g1")
        isvc = wait_until(lambda: site.isvc("known"), "the InferenceService exists", timeout=60)
        want = expected_autoscaling(json.loads((tmp_path / "plan" / "plan.json").read_text()))
        predictor = isvc["spec"]["predictor"]
        assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleTarget"]) == (
            want["min_replicas"], want["max_replicas"], want["target"])
        # the pass that applied the InferenceService writes the status at its end
        wait_until(lambda: (site.status("known").get("plan") or {}).get("version") == "1", "status.plan recorded")
    jobs = site.cp.raw("GET", f"/apis/batch/v1/namespaces/{site.ns}/jobs")["items"]
    assert jobs == []
    assert not [e for e in site.requests() if (e.get("objectRef") or {}).get("resource") == "jobs"
                and e["verb"] == "create"]


def test_a_failed_plan_fails_the_pipeline_and_a_retry_runs_it_again(site: Site, tmp_path: Path) -> None:
    """An SLO below what one request alone takes: ``ferry plan`` refuses it once it has measured
    one request (exit 2), the pod fails, the Job controller fails the Job."""
    with Operator(site):
        site.create_pipeline(planned_pipeline("tight", "op-tight", {"sloP99Ms": 0.001, "peakRps": 40}))
        train(site, "tight", "op-tight")
        job = wait_until(lambda: batch_job(site, "tight-plan-v1"), "the plan Job exists", timeout=60)
        pod = wait_until(lambda: job_pod(site, job), "the Job controller made the plan's pod")
        code, _ = play_kubelet(site, pod, tmp_path)
        assert code == 2, (tmp_path / "plan.log").read_text()[-3000:]
        assert "the model's p99 at one request at a time is" in " ".join((tmp_path / "plan.log").read_text().split())
        wait_until(site.phase_is("tight", "Failed"), "phase Failed", timeout=60)
        st = site.status("tight")
        assert st["failedStage"] == "Deploying"
        planned = next(c for c in st["conditions"] if c["type"] == "Planned")
        assert planned["status"] == "False" and planned["reason"] == "PlanFailed"
        assert "the capacity plan of op-tight v1 failed: Job tight-plan-v1: BackoffLimitExceeded" in st["message"]
        wait_until(lambda: "PlanFailed" in site.events("tight"), "the PlanFailed event")
        assert site.isvc("tight") is None

        site.patch_pipeline("tight", {"metadata": {"annotations": {"ferry.dev/retry": "1"}}})
        again = wait_until(lambda: (j := batch_job(site, "tight-plan-v1")) and j["metadata"]["uid"] != job["metadata"][
            "uid"] and j, "a new plan Job", timeout=60)
        assert again["spec"]["template"]["spec"]["containers"][0]["command"] == \
            job["spec"]["template"]["spec"]["containers"][0]["command"]
        wait_until(lambda: site.status("tight").get("phase") == "Deploying", "phase Deploying again")


@pytest.mark.parametrize("plan, field", [
    ({"sloP99Ms": -1, "peakRps": 40}, "spec.deployment.plan.sloP99Ms"),
    ({"sloP99Ms": 100, "peakRps": -5}, "spec.deployment.plan.peakRps"),
    ({"sloP99Ms": 100, "peakRps": 40, "headroom": 2}, "spec.deployment.plan.headroom"),
    ({"peakRps": 40}, "spec.deployment.plan.sloP99Ms"),
])
def test_the_api_server_refuses_a_plan_out_of_bounds(site: Site, plan: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as refused:
        site.create_pipeline(planned_pipeline("bounded", "op-bounded", plan))
    assert refused.value.code == 422 and field in str(refused.value)


@pytest.mark.parametrize("args, says", [
    (["--cpu-request", "0"], "--cpu-request"),
    (["--max-latency-ms", "-1"], "--max-latency-ms"),
    (["--max-batch-size", "0"], "--max-batch-size"),
])
def test_the_plan_commands_settings_flags_refuse_bad_values(args: list[str], says: str) -> None:
    from typer.testing import CliRunner

    from ferry.cli import app

    result = CliRunner().invoke(app, ["plan", "models:/m/1", "--slo-p99-ms", "50", "--peak-rps", "10", *args])
    assert result.exit_code == 2 and says in " ".join(result.output.split()), result.output
