"""The capacity plan of a version before it is served (``spec.deployment.plan``): ``ferry plan``
run as a Kubernetes Job in the pipeline's namespace, on Ferry's serving image with the
Deployment's own settings and resources (what one replica gets), and its figures read back
from MLflow, where ``ferry plan`` records every plan as a run linked to the model version (the
version's tag ``ferry.plan.run_id``).

A plan already recorded for the version, measured with the same SLO, peak, headroom and server
settings (the run's params), is used as it is: no Job. A plan whose open-loop check did not
hold is never used (``ferry plan`` records it, then exits 1)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from ferry.kube import Kind

JOB = Kind("Job", "batch", "v1", "jobs")
PIPELINE_LABEL = "ferry.dev/pipeline"
DIGEST_ANNOTATION = "ferry.dev/plan-digest"
CONTAINER = "plan"
OUT = "/tmp/plan"  # the serving image's HOME is /tmp, writable for its user
DEADLINE_S = 1800  # a sweep to concurrency 256 with its defaults takes a few minutes; a stuck one ends
BACKOFF_LIMIT = 0  # a failed measurement is reported, not retried blindly (ferry.dev/retry runs it again)


def job_name(pipeline: str, version: str) -> str:
    return f"{pipeline}-plan-v{version}"


def cores(cpu: str) -> float:
    """A Kubernetes CPU quantity in cores: ``500m`` is 0.5."""
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def settings_of(d: Any) -> dict[str, Any]:
    """What the measured server runs with: the Deployment's settings (``ferry.plan.Settings``)."""
    return {"device": "cuda" if d.resources.gpu else "cpu", "dtype": d.dtype, "max_batch_size": d.max_batch_size,
            "max_latency_ms": float(d.max_latency_ms), "workers": 1, "cpu_request": cores(d.resources.cpu)}


def inputs(d: Any, version: str) -> dict[str, Any]:
    """Everything a plan of ``version`` for Deployment ``d`` depends on (and the figures it gives
    depend on: the metric and mode pick the target)."""
    assert d.plan is not None
    return {"version": str(version), "slo_p99_ms": float(d.plan.slo_p99_ms), "peak_rps": float(d.plan.peak_rps),
            "headroom": float(d.plan.headroom), "settings": settings_of(d), "metric": d.autoscaling.metric,
            "mode": d.mode}


def _g(value: float) -> str:
    return f"{value:g}"


def command(model: str, version: str, d: Any) -> list[str]:
    """``ferry plan`` on the version with the plan's figures and the Deployment's settings."""
    assert d.plan is not None
    s = settings_of(d)
    return ["ferry", "plan", f"models:/{model}/{version}", "--slo-p99-ms", _g(d.plan.slo_p99_ms),
            "--peak-rps", _g(d.plan.peak_rps), "--headroom", _g(d.plan.headroom), "--device", s["device"],
            "--dtype", s["dtype"], "--max-batch-size", str(s["max_batch_size"]),
            "--max-latency-ms", _g(s["max_latency_ms"]), "--cpu-request", _g(s["cpu_request"]), "-o", OUT]


def render_job(name: str, namespace: str, model: str, version: str, d: Any, tracking: Any, owner: dict[str, Any],
               digest: str) -> dict[str, Any]:
    """The batch/v1 Job running ``ferry plan`` for one version: Pod Security "restricted", the
    tracking URI and MLflow's credentials by reference (``tracking``: the pipeline's job's
    Tracking, where the training job of the same namespace reads them), the Deployment's
    resources, node selector and tolerations (it measures what one replica gets, where one runs)."""
    from kubernetes import client as k8s

    from ferry import images
    from ferry.render import _pod
    from ferry.render._inferenceservice import RUNTIME_UID, _resources

    env = [_pod.env_from_ref("MLFLOW_TRACKING_URI", tracking.uri_from)] if tracking is not None else []
    env_from = ([k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=tracking.credentials_secret, optional=True))]
                if tracking is not None and tracking.credentials_secret else None)
    security = _pod.container_security_context()
    security.run_as_user = RUNTIME_UID
    container = k8s.V1Container(
        name=CONTAINER, image=images.image("serve"), command=command(model, version, d), env=env or None,
        env_from=env_from, resources=k8s.V1ResourceRequirements(**_resources(d)), security_context=security,
        termination_message_policy="FallbackToLogsOnError")
    labels = _pod.common_labels(PIPELINE_LABEL, owner["name"], {"ferry.dev/model-version": str(version)})
    pod = k8s.V1PodSpec(
        containers=[container], restart_policy="Never", security_context=_pod.pod_security_context(RUNTIME_UID),
        automount_service_account_token=False, service_account_name=d.service_account,
        node_selector=dict(d.node_selector) or None,
        tolerations=[k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                                      toleration_seconds=t.toleration_seconds) for t in d.tolerations] or None)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {DIGEST_ANNOTATION: digest}, "ownerReferences": [owner]},
        "spec": {"backoffLimit": BACKOFF_LIMIT, "activeDeadlineSeconds": DEADLINE_S,
                 "template": {"metadata": {"labels": labels}, "spec": _pod.to_dict(pod)}},
    }


def job_outcome(job: dict[str, Any]) -> tuple[str, str]:
    """("Succeeded" | "Failed" | "Running", what the Job's conditions say)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        told = "; ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
        if condition.get("type") == "Complete":
            return "Succeeded", told
        if condition.get("type") == "Failed":
            return "Failed", told
    status = job.get("status") or {}
    return "Running", "its pod is running" if status.get("active") else "waiting for its pod"


def _same(param: str | None, value: Any) -> bool:
    if param is None:
        return False
    if value is None:
        return param == "none"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return math.isclose(float(param), float(value), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    return param == str(value)


def params_match(params: dict[str, str], wanted: dict[str, Any]) -> bool:
    """Whether a plan run's params (``ferry.plan._report``'s) say it measured what ``wanted`` asks."""
    figures = {k: wanted[k] for k in ("slo_p99_ms", "peak_rps", "headroom")}
    return all(_same(params.get(k), v) for k, v in {**figures, **wanted["settings"]}.items())


def recorded(client: Any, model: str, version: str, wanted: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(run id, plan.json) of the plan recorded for the version (its ``ferry.plan.run_id`` tag)
    when that run measured what ``wanted`` asks, finished, and its open loop held; else None."""
    from ferry.plan._report import RUN_TAG
    from ferry.registry._failures import mlflow_errors

    with mlflow_errors(f"reading the capacity plan of {model} v{version}"):
        run_id = (client.get_model_version(model, version).tags or {}).get(RUN_TAG)
        if not run_id:
            return None
        run = client.get_run(run_id)
        if run.info.status != "FINISHED" or not params_match(run.data.params, wanted):
            return None
        with tempfile.TemporaryDirectory(prefix="ferry-plan-") as folder:
            doc = json.loads(Path(client.download_artifacts(run_id, "plan.json", folder)).read_text())
    loop = doc.get("open_loop")
    if loop and loop.get("p99_ms") is not None and loop["p99_ms"] > doc["plan"]["slo_p99_ms"]:
        return None
    return run_id, doc


def autoscaling(doc: dict[str, Any], metric: str, mode: str) -> dict[str, Any]:
    """The Autoscaling values (min_replicas, max_replicas, metric, target) ``doc`` gives."""
    from ferry.plan._formulas import autoscaling_for
    from ferry.plan._report import from_json

    return autoscaling_for(from_json(doc)["plan"], metric, mode)


def status_of(run_id: str, version: str, values: dict[str, Any], digest: str) -> dict[str, Any]:
    return {"runId": run_id, "version": str(version), "minReplicas": values["min_replicas"],
            "maxReplicas": values["max_replicas"], "metric": values["metric"], "target": values["target"],
            "digest": digest}


def values_of(status: dict[str, Any]) -> dict[str, Any]:
    return {"min_replicas": status["minReplicas"], "max_replicas": status["maxReplicas"], "metric": status["metric"],
            "target": status["target"]}
