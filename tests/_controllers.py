"""The moves of the controllers that do not run on the test control plane (no scheduler, no
kubelet, no training operator, no Kubeflow Trainer or JobSet, no KServe), made through the API
exactly as those controllers make them: the training operator's status of a PyTorchJob and its
replica pods, the Trainer's status of a TrainJob and its nodes' pods, the kubelet's status of a
pod, KServe's status of an InferenceService."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tests._controlplane import ControlPlane

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"}}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_path(name: str, namespace: str) -> str:
    return f"/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs/{name}"


def isvc_path(name: str, namespace: str) -> str:
    return f"/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices/{name}"


class TrainingOperator:
    """The Kubeflow training operator's part, for the jobs of one namespace."""

    def __init__(self, plane: ControlPlane, namespace: str):
        self.plane = plane
        self.namespace = namespace

    def job(self, name: str) -> dict[str, Any]:
        return self.plane.raw("GET", job_path(name, self.namespace))

    def set_status(self, name: str, *, conditions: list[tuple[str, str, str]] = (),
                   replicas: dict[str, dict[str, int]] | None = None) -> None:
        """The job's status as the operator writes it: conditions (type, reason, message), True
        except a Running/Restarting that a later condition ended; replica counts; a completion
        time once Succeeded or Failed."""
        types = [c[0] for c in conditions]
        stamp = now()
        conds = []
        for i, (type_, reason, message) in enumerate(conditions):
            ended = type_ in ("Running", "Restarting") and any(t != type_ for t in types[i + 1:])
            conds.append({"type": type_, "status": "False" if ended else "True", "reason": reason,
                          "message": message, "lastUpdateTime": stamp, "lastTransitionTime": stamp})
        counts = {role: {"active": 0, "succeeded": 0, "failed": 0, **c} for role, c in (replicas or {}).items()}
        status: dict[str, Any] = {"conditions": conds, "replicaStatuses": counts}
        if types and types[-1] in ("Succeeded", "Failed"):
            status["completionTime"] = stamp
        self.plane.raw("PATCH", job_path(name, self.namespace) + "/status", {"status": status})

    def add_pod(self, job: str, role: str, index: int, *, phase: str = "Running", restarts: int = 0,
                exit_code: int | None = None, last_exit_code: int | None = None) -> str:
        """A replica pod as the operator creates it (owned by the job, labelled, restricted), and
        its status as the kubelet would report it."""
        name = f"{job}-{role}-{index}"
        owner = self.job(job)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": self.namespace,
            "labels": {JOB_NAME_LABEL: job, REPLICA_TYPE_LABEL: role, REPLICA_INDEX_LABEL: str(index)},
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": job,
                                 "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"containers": [{"name": "pytorch", "image": "ferry-train:test",
                                     "securityContext": RESTRICTED_CONTAINER}],
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "automountServiceAccountToken": False}}
        self.plane.apply(pod, manager="training-operator")
        state: dict[str, Any] = {"running": {"startedAt": now()}} if exit_code is None else \
            {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                            "startedAt": now(), "finishedAt": now()}}
        container: dict[str, Any] = {"name": "pytorch", "image": "ferry-train:test", "imageID": "", "restartCount": restarts,
                                     "state": state, "ready": exit_code is None, "started": exit_code is None}
        if last_exit_code is not None:
            container["lastState"] = {"terminated": {"exitCode": last_exit_code, "reason": "Error",
                                                     "startedAt": now(), "finishedAt": now()}}
        self.plane.raw("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}/status",
                       {"status": {"phase": phase, "containerStatuses": [container]}})
        return name


def trainjob_path(name: str, namespace: str) -> str:
    return f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}"


TORCH_RUNTIME = Path(__file__).resolve().parent / "trainer" / "torch_distributed.yaml"  # upstream's


@contextlib.contextmanager
def torch_runtime(plane: ControlPlane) -> Iterator[str]:
    """Kubeflow Trainer's own torch-distributed ClusterTrainingRuntime, as its installation
    applies it, for the length of the block; its name."""
    runtime = yaml.safe_load(TORCH_RUNTIME.read_text())
    plane.apply(runtime, manager="trainer")
    try:
        yield runtime["metadata"]["name"]
    finally:
        plane.raw("DELETE", f"/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/{runtime['metadata']['name']}")


class Trainer:
    """Kubeflow Trainer v2.3's part (with JobSet's and the Job controller's under it), for the
    TrainJobs of one namespace: the TrainJob's status as the Trainer copies it from its JobSet
    (Complete or Failed, jobsStatus per replicated job; Suspended), the trainer's progress as the
    Trainer's status server writes it, and a node's pod as JobSet's Job creates it (named
    ``<job>-node-0-<rank>-<suffix>``, JobSet's and the Job controller's labels, container
    ``node``). The pod is owned by the TrainJob here, standing in for the JobSet and Job between
    them (JobSet is not installed on the test control plane), so deleting the TrainJob removes it
    through the garbage collector as it would."""

    def __init__(self, plane: ControlPlane, namespace: str):
        self.plane = plane
        self.namespace = namespace

    def job(self, name: str) -> dict[str, Any]:
        return self.plane.raw("GET", trainjob_path(name, self.namespace))

    def set_status(self, name: str, *, conditions: list[tuple[str, str, str]] = (), active: int = 0,
                   ready: int = 0, succeeded: int = 0, failed: int = 0,
                   progress: dict[str, Any] | None = None) -> None:
        """``conditions`` (type, reason, message), all True; the replicated job ``node``'s Job
        counts; ``progress`` as ``status.trainerStatus`` (its lastUpdatedTime added)."""
        stamp = now()
        status: dict[str, Any] = {
            "conditions": [{"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": stamp}
                           for t, r, m in conditions],
            "jobsStatus": [{"name": "node", "active": active, "ready": ready, "succeeded": succeeded,
                            "failed": failed, "suspended": 0}]}
        if progress is not None:
            status["trainerStatus"] = {**progress, "lastUpdatedTime": stamp}
        self.plane.raw("PATCH", trainjob_path(name, self.namespace) + "/status", {"status": status})

    def add_pod(self, job: str, rank: int, *, phase: str = "Running", restarts: int = 0,
                exit_code: int | None = None) -> str:
        """Node ``rank``'s pod, restricted as Ferry's patch makes it, and its status as the
        kubelet would report it."""
        owner = self.job(job)
        name = f"{job}-node-0-{rank}-{owner['metadata']['uid'][:5]}"
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": self.namespace,
            "labels": {"jobset.sigs.k8s.io/jobset-name": job, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                       "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": str(rank)},
            "ownerReferences": [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": job,
                                 "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"containers": [{"name": "node", "image": "ferry-train:test",
                                     "securityContext": RESTRICTED_CONTAINER}],
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "restartPolicy": "OnFailure", "automountServiceAccountToken": False}}
        self.plane.apply(pod, manager="job-controller")
        state: dict[str, Any] = {"running": {"startedAt": now()}} if exit_code is None else \
            {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                            "startedAt": now(), "finishedAt": now()}}
        self.plane.raw("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}/status", {"status": {
            "phase": phase, "containerStatuses": [{"name": "node", "image": "ferry-train:test", "imageID": "",
                                                   "restartCount": restarts, "state": state,
                                                   "ready": exit_code is None, "started": exit_code is None}]}})
        return name


class KServe:
    """KServe's part: an InferenceService's URL and readiness."""

    def __init__(self, plane: ControlPlane, namespace: str):
        self.plane = plane
        self.namespace = namespace

    def ready(self, name: str, url: str, *, ready: bool = True, reason: str = "", message: str = "") -> None:
        """The status KServe writes once it has reconciled the spec as it now is (its
        observedGeneration): Ready, or not (with the reason and message of the failing part)."""
        value = "True" if ready else "False"
        stamp = now()
        isvc = self.plane.raw("GET", isvc_path(name, self.namespace))
        why = {} if ready else {k: v for k, v in (("reason", reason), ("message", message)) if v}
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        canary = predictor.get("canaryTrafficPercent")
        traffic = ([{"revisionName": f"{name}-predictor-{isvc['metadata']['generation']}", "percent": canary,
                     "latestRevision": True, "tag": "latest"},
                    {"revisionName": f"{name}-predictor-prev", "percent": 100 - canary, "tag": "prev"}]
                   if canary else [{"revisionName": f"{name}-predictor-{isvc['metadata']['generation']}", "percent": 100,
                                    "latestRevision": True}])
        self.plane.raw("PATCH", isvc_path(name, self.namespace) + "/status", {"status": {
            "url": url, "observedGeneration": isvc["metadata"]["generation"],
            "components": {"predictor": {"traffic": traffic}},
            "conditions": [{"type": "PredictorReady", "status": value, "lastTransitionTime": stamp, **why},
                           {"type": "Ready", "status": value, "lastTransitionTime": stamp, **why}]}})


# The digits job's conditions as the training operator words them: (type, reason, message).
CREATED = ("Created", "PyTorchJobCreated", "PyTorchJob digits is created.")
RUNNING = ("Running", "PyTorchJobRunning", "PyTorchJob digits is running.")
SUCCEEDED = ("Succeeded", "PyTorchJobSucceeded", "PyTorchJob digits is successfully completed.")
FAILED = ("Failed", "PyTorchJobFailed", "PyTorchJob digits is failed because 1 Worker replica(s) failed.")
