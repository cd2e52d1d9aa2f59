"""TrainingJob → Kubeflow PyTorchJob (kubeflow.org/v1). The one place this happens."""

from __future__ import annotations

import json
from typing import Any

from kubeflow.training import models as kf
from kubernetes import client as k8s

from ferry._submission import SUBMISSION_LABEL, spec_submission_id
from ferry.render import _pod
from ferry.spec import ConfigMapVolume, EmptyDirVolume, PVCVolume, SecretVolume, TrainingJob
from ferry.spec._code import CODE_DIR, CODE_VOLUME

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER_NAME = "pytorch"  # the operator finds the container by this name
PORT_NAME = "pytorchjob-port"  # ... and the rendezvous port by this one
JOB_LABEL = "ferry.dev/job"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CODE_DIGEST_LABEL = "ferry.dev/code-digest"  # the bundle's digest, its first 32 hex digits (a label's room)
CODE_DIGEST_ANNOTATION = "ferry.dev/code-digest"  # ... all of it, sha256:<hex>
CODE_URI_ANNOTATION = "ferry.dev/code-uri"


def ferry_env(job: TrainingJob) -> dict[str, str]:
    """The FERRY_* / MLflow environment the runtime reads: one table shared by the manifest and
    the local executor, so both give a replica the same configuration."""
    env = {
        "FERRY_JOB_NAME": job.name,
        "FERRY_NAMESPACE": job.namespace,
        "FERRY_IMAGE": job.image,
        "FERRY_HYPERPARAMETERS": json.dumps(job.hyperparameters, sort_keys=True, separators=(",", ":")),
        # The whole spec: the run records it, and the manifest rendered from it, as artifacts.
        "FERRY_JOB_SPEC": json.dumps(job.model_dump(mode="json"), sort_keys=True, separators=(",", ":")),
    }
    if job.resume_from is not None:
        env["FERRY_RESUME_FROM"] = job.resume_from
    if job.tracking is not None:
        env["MLFLOW_EXPERIMENT_NAME"] = job.experiment
        if job.tracking.register_as:
            env["FERRY_REGISTER_AS"] = job.tracking.register_as
        if job.tracking.eval_data:
            env["FERRY_EVAL_DATA"] = job.tracking.eval_data
    if job.code is not None:
        env |= {"FERRY_CODE_URI": job.code.uri, "FERRY_CODE_DIGEST": job.code.digest, "FERRY_CODE_DIR": CODE_DIR}
    if job.checkpointing is not None:
        env["FERRY_CHECKPOINT_URI"] = job.checkpointing.uri
        env["FERRY_CHECKPOINT_EVERY"] = str(job.checkpointing.every_steps)
        env["FERRY_CHECKPOINT_KEEP"] = str(job.checkpointing.keep)
    return env


def _env(job: TrainingJob) -> list[k8s.V1EnvVar]:
    env = [_pod.env_value(k, v) for k, v in job.env.items()]
    env += [_pod.env_from_ref(k, ref) for k, ref in job.secret_env.items()]
    env += [_pod.env_value(k, v) for k, v in ferry_env(job).items()]
    if job.tracking is not None:
        env.append(_pod.env_from_ref("MLFLOW_TRACKING_URI", job.tracking.uri_from))
    # Which submission this pod belongs to (ferry._submission): its checkpoints and its run.
    env.append(k8s.V1EnvVar(name="FERRY_SUBMISSION_ID", value_from=k8s.V1EnvVarSource(
        field_ref=k8s.V1ObjectFieldSelector(field_path=f"metadata.labels['{SUBMISSION_LABEL}']"))))
    return env


def _volume(spec: PVCVolume | ConfigMapVolume | SecretVolume | EmptyDirVolume) -> k8s.V1Volume:
    name = spec.volume_name()
    if isinstance(spec, PVCVolume):
        return k8s.V1Volume(name=name, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=spec.claim, read_only=spec.read_only or None))
    if isinstance(spec, ConfigMapVolume):
        return k8s.V1Volume(name=name, config_map=k8s.V1ConfigMapVolumeSource(name=spec.config_map))
    if isinstance(spec, SecretVolume):
        return k8s.V1Volume(name=name, secret=k8s.V1SecretVolumeSource(secret_name=spec.secret))
    return k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource(
        medium="Memory" if spec.memory else None, size_limit=spec.size_limit))


def _resources(job: TrainingJob) -> k8s.V1ResourceRequirements:
    res = job.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpu:
        requests[res.gpu_resource] = str(res.gpu)
        limits[res.gpu_resource] = str(res.gpu)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _labels(job: TrainingJob) -> dict[str, str]:
    labels = {**_pod.common_labels(JOB_LABEL, job.name, job.labels), SUBMISSION_LABEL: spec_submission_id(job)}
    if job.code is not None:
        labels[CODE_DIGEST_LABEL] = job.code.short
    return labels


def _annotations(job: TrainingJob) -> dict[str, str] | None:
    annotations = dict(job.annotations)
    if job.code is not None:
        annotations |= {CODE_DIGEST_ANNOTATION: job.code.digest, CODE_URI_ANNOTATION: job.code.uri}
    return annotations or None


def _code_volume(job: TrainingJob) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The emptyDir a replica unpacks its code bundle into (kept across container restarts)."""
    if job.code is None:
        return [], []
    return ([k8s.V1Volume(name=CODE_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource())],
            [k8s.V1VolumeMount(name=CODE_VOLUME, mount_path=CODE_DIR)])


def _storage(job: TrainingJob) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """Every volume of a replica's pod and the container's mounts of them: /dev/shm, the code
    bundle's emptyDir, the job's own volumes (one table for the PyTorchJob and the TrainJob)."""
    shm, shm_mount = _pod.shm_volume(job.shm_size)
    code_volumes, code_mounts = _code_volume(job)
    mounts = [shm_mount, *code_mounts] + [
        k8s.V1VolumeMount(name=v.volume_name(), mount_path=v.mount_path, read_only=v.read_only or None)
        for v in job.volumes
    ]
    return [shm, *code_volumes] + [_volume(v) for v in job.volumes], mounts


def _tolerations(job: TrainingJob) -> list[k8s.V1Toleration] | None:
    return [k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                             toleration_seconds=t.toleration_seconds) for t in job.tolerations] or None


def _pod_spec(job: TrainingJob, container: k8s.V1Container, volumes: list[k8s.V1Volume], **more: Any) -> k8s.V1PodSpec:
    """A replica's pod: ``container``, ``volumes`` and what the job says of scheduling, identity and
    Pod Security "restricted" (``more``: fields only one kind of job sets)."""
    return k8s.V1PodSpec(
        containers=[container],
        volumes=volumes,
        security_context=_pod.pod_security_context(job.run_as_user),
        node_selector=dict(job.node_selector) or None,
        tolerations=_tolerations(job),
        service_account_name=job.service_account,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in job.image_pull_secrets] or None,
        **more,
    )


def _pod_template(job: TrainingJob) -> k8s.V1PodTemplateSpec:
    volumes, mounts = _storage(job)
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=job.image,
        image_pull_policy="IfNotPresent",
        command=job.entrypoint(),
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=job.port, protocol="TCP")],
        env=_env(job),
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=job.tracking.credentials_secret, optional=True))]
        if job.tracking is not None and job.tracking.credentials_secret else None,
        resources=_resources(job),
        volume_mounts=mounts,
        security_context=_pod.container_security_context(),
    )
    # Training code does not talk to the Kubernetes API: no token unless an account is named
    # (workload-identity setups mount their own projected token either way).
    spec = _pod_spec(job, container, volumes, automount_service_account_token=None if job.service_account else False)
    return k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=_labels(job), annotations=_annotations(job)), spec=spec)


def _replica_specs(job: TrainingJob) -> dict[str, kf.KubeflowOrgV1ReplicaSpec]:
    def replica(count: int) -> kf.KubeflowOrgV1ReplicaSpec:
        return kf.KubeflowOrgV1ReplicaSpec(
            replicas=count, restart_policy=job.restart_policy, template=_pod_template(job)
        )

    if job.elastic is not None:
        # Elastic jobs are a Worker set only: the operator scales Workers between min and max
        # replicas, PET_NNODES becomes "min:max" and rendezvous runs on <name>-worker-0.
        return {"Worker": replica(job.workers)}
    specs = {"Master": replica(1)}  # the operator requires exactly one Master
    if job.workers > 1:
        specs["Worker"] = replica(job.workers - 1)
    return specs


def _run_policy(job: TrainingJob) -> kf.KubeflowOrgV1RunPolicy:
    rp = job.run_policy
    scheduling = None
    if job.gang is not None:
        g = job.gang
        scheduling = kf.KubeflowOrgV1SchedulingPolicy(
            min_available=g.min_available or job.workers,
            priority_class=g.priority_class,
            queue=g.queue,
            schedule_timeout_seconds=g.schedule_timeout_seconds,
        )
    return kf.KubeflowOrgV1RunPolicy(
        backoff_limit=rp.backoff_limit,
        active_deadline_seconds=rp.active_deadline_seconds,
        ttl_seconds_after_finished=rp.ttl_seconds_after_finished,
        clean_pod_policy=rp.clean_pod_policy,
        scheduling_policy=scheduling,
    )


def build_pytorchjob(job: TrainingJob) -> kf.KubeflowOrgV1PyTorchJob:
    """The PyTorchJob wire object for ``job``."""
    labels = _labels(job)
    if job.queue:
        labels[KUEUE_QUEUE_LABEL] = job.queue
    elastic = None
    if job.elastic is not None:
        elastic = kf.KubeflowOrgV1ElasticPolicy(
            min_replicas=job.elastic.min_workers,
            max_replicas=job.elastic.max_workers,
            max_restarts=job.elastic.max_restarts,
            rdzv_backend=job.elastic.rdzv_backend,
        )
    return kf.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(
            name=job.name,
            namespace=job.namespace,
            labels=labels,
            annotations=_annotations(job),
        ),
        spec=kf.KubeflowOrgV1PyTorchJobSpec(
            # nprocPerNode is a string in the CRD (auto|cpu|gpu|<int>); elasticPolicy.nProcPerNode
            # is deprecated and never set alongside it.
            nproc_per_node=str(job.procs_per_worker),
            elastic_policy=elastic,
            run_policy=_run_policy(job),
            pytorch_replica_specs=_replica_specs(job),
        ),
    )


def render_pytorchjob(job: TrainingJob) -> dict[str, Any]:
    """The PyTorchJob for ``job`` as a plain dict, ready for YAML."""
    return _pod.to_dict(build_pytorchjob(job))
