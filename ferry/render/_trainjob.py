"""TrainingJob → Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1, as of Trainer v2.3).
The one place this happens.

A TrainJob names a ClusterTrainingRuntime (``torch-distributed`` by default) that holds the pod
template; the job sets the image, command, size, resources and env (``spec.trainer``) and patches
the rest of the pod in through ``spec.runtimePatches`` (Ferry's own entry, manager
``ferry.dev/renderer``, for replicated job ``node`` and its container ``node``). The Trainer
copies none of the TrainJob's labels to the pods, so Ferry's labels go on the pod template
through the patch as well.

The same job renders to the same pod as a PyTorchJob (same env, resources, volumes, security
contexts), except where a TrainJob has no field for it:

- the module always starts through torchrun: the Trainer sets only torchrun's ``PET_*``
  settings (rendezvous on ``<name>-node-0-0.<name>:29500``). A ``command`` runs as it is and must
  start torchrun itself.
- the tracking credentials Secret (a PyTorchJob's ``envFrom``): a TrainJob has no ``envFrom``,
  so each key Ferry's runtime reads from it is an optional ``secretKeyRef``
  (:data:`CREDENTIAL_KEYS`); a key the job's own env sets is left to the job.
- ``automountServiceAccountToken: false``, ``imagePullPolicy`` and the named container port are
  the runtime's (a patch cannot set them); pods mount their service account's token.
- what a TrainJob cannot express at all (elastic, gang, restart_policy, port, run_policy's
  retries, TTL and clean-up) the spec refuses: see :func:`ferry.spec._job.trainjob_problem`.

Built as plain dicts with the kubernetes client's models for the pod pieces: the Trainer's own
Python models drop unknown fields silently, and Ferry validates the result against the
upstream CRD instead.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from ferry.render import _pod
from ferry.render._pytorchjob import KUEUE_QUEUE_LABEL, _annotations, _env, _labels, _pod_spec, _resources, _storage
from ferry.spec import TrainingJob

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
MANAGER = "ferry.dev/renderer"  # Ferry's runtimePatches entry (Kueue writes its own beside it)
REPLICATED_JOB = "node"  # the trainer's replicated job in the upstream torch runtimes ...
CONTAINER_NAME = "node"  # ... and its container
# The keys of Tracking.credentials_secret that Ferry's runtime and the libraries under it read:
# MLflow's credentials and an S3 artifact store's.
CREDENTIAL_KEYS = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
)


def _trainer_env(job: TrainingJob) -> list[k8s.V1EnvVar]:
    """The PyTorchJob's env, and the credentials Secret's known keys one by one (a TrainJob has
    no envFrom), each optional as the envFrom is."""
    env = _env(job)
    secret = job.tracking.credentials_secret if job.tracking is not None else None
    if secret:
        taken = {var.name for var in env}
        env += [k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key, optional=True)))
            for key in CREDENTIAL_KEYS if key not in taken]
    return env


def _pod_patch(job: TrainingJob) -> dict[str, Any]:
    """What the runtime's pod template gets from the job: only fields a TrainJob's PodSpecPatch has."""
    volumes, mounts = _storage(job)
    container = k8s.V1Container(name=CONTAINER_NAME, volume_mounts=mounts,
                                security_context=_pod.container_security_context())
    spec = _pod_spec(job, container, volumes)
    metadata = k8s.V1ObjectMeta(labels=_labels(job), annotations=_annotations(job))
    return {"metadata": _pod.to_dict(metadata), "spec": _pod.to_dict(spec)}


def render_trainjob(job: TrainingJob) -> dict[str, Any]:
    """The TrainJob for ``job`` as a plain dict, ready for YAML (``job`` as a TrainJob: a job that
    names no target is rendered as one, and what a TrainJob cannot express is refused)."""
    job = job.with_target("trainjob")
    labels = _labels(job)
    if job.queue:
        labels[KUEUE_QUEUE_LABEL] = job.queue
    metadata = _pod.to_dict(k8s.V1ObjectMeta(name=job.name, namespace=job.namespace, labels=labels,
                                             annotations=_annotations(job)))
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": API_VERSION.partition("/")[0], "kind": RUNTIME_KIND, "name": job.runtime},
    }
    if job.run_policy.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = job.run_policy.active_deadline_seconds
    spec["trainer"] = {
        "image": job.image,
        "command": job.entrypoint(),
        "numNodes": job.workers,
        # an integer in v2.2+; the torch runtime turns it into PET_NPROC_PER_NODE
        "numProcPerNode": job.procs_per_worker,
        "resourcesPerNode": _pod.to_dict(_resources(job)),
        "env": _pod.to_dict(_trainer_env(job)),
    }
    spec["runtimePatches"] = [{
        "manager": MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
            {"name": REPLICATED_JOB, "template": {"spec": {"template": _pod_patch(job)}}},
        ]}}},
    }]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
