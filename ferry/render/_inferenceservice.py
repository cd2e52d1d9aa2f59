"""Deployment → KServe InferenceService (serving.kserve.io/v1beta1), and Ferry's
ClusterServingRuntime. The one place these are built.

Pod-level parts (resources, probes, security contexts) are kubernetes client models; the
KServe envelope is a plain dict validated against the real CRD schema. The ``kserve`` package's
own models are not used here: importing them takes ~1.3 s and pulls in its whole server stack
(FastAPI and ~2,500 modules), which the CLI must not pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from ferry.render import _pod
from ferry import images
from ferry.spec import CREDENTIALS_SECRET, Deployment

API_VERSION = "serving.kserve.io/v1beta1"
RUNTIME_API_VERSION = "serving.kserve.io/v1alpha1"
DEPLOYMENT_LABEL = "ferry.dev/deployment"
SERVE_PORT = 8080
GRPC_PORT = 8081
RUNTIME_UID = 1000
STORAGE_API_VERSION = "serving.kserve.io/v1alpha1"
# The URIs Ferry's storage initializer (`ferry fetch`) fetches through MLflow; KServe's default
# one knows none of them. An InferenceService Ferry renders names its model models:/NAME/VERSION.
STORAGE_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to one immutable version: what a manifest may point at.

    ``storage_uri`` is what the InferenceService names (``models:/NAME/VERSION`` for a
    registered model, fetched by Ferry's storage initializer); ``source`` is where the files
    are (the registry's download URI: ``mlflow-artifacts:/…``, ``s3://…``), for checks only."""

    storage_uri: str
    model_format: str  # "pytorch" | "onnx"
    name: str | None = None
    version: str | None = None
    source: str | None = None


def _resources(d: Deployment) -> dict[str, Any]:
    res = d.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpu:
        requests[res.gpu_resource] = limits[res.gpu_resource] = str(res.gpu)
    return {"requests": requests, "limits": limits}


def _pod_selector(d: Deployment) -> str:
    return f'namespace="{d.namespace}",pod=~"{d.name}-predictor-.*"'


def _autoscaling(d: Deployment) -> dict[str, Any]:
    """Scaling fields of the predictor: Knative's (serverless) or HPA/KEDA's (standard)."""
    a = d.autoscaling
    fields: dict[str, Any] = {"minReplicas": a.min_replicas, "maxReplicas": a.max_replicas}
    if d.mode == "serverless":
        return fields | {"scaleMetric": a.metric, "scaleTarget": a.target}
    if a.metric == "cpu":
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.target}}}
    else:
        query = {
            # NVIDIA DCGM exporter, one series per GPU of the predictor pods
            "gpu-utilization": f"avg(DCGM_FI_DEV_GPU_UTIL{{{_pod_selector(d)}}})",
            # Ferry's own gauge: requests waiting for the model, per replica
            "queue-depth": f"avg(ferry_queue_depth{{{_pod_selector(d)}}})",
        }[a.metric]
        metric = {"type": "External", "external": {
            "metric": {"backend": "prometheus", "serverAddress": a.prometheus_url, "query": query},
            "target": {"type": "Value", "value": str(a.target)},
        }}
    behavior = {"scaleUp": {"stabilizationWindowSeconds": a.scale_up_stabilization_seconds},
                "scaleDown": {"stabilizationWindowSeconds": a.scale_down_stabilization_seconds}}
    return fields | {"autoScaling": {"metrics": [metric], "behavior": behavior}}


def render_inferenceservice(d: Deployment, model: ResolvedModel) -> dict[str, Any]:
    """The InferenceService for ``d``, its storage URI pinned to ``model``."""
    annotations = {"serving.kserve.io/deploymentMode": "Serverless" if d.mode == "serverless" else "Standard"}
    if d.mode == "standard":
        annotations["serving.kserve.io/autoscalerClass"] = "hpa" if d.autoscaling.metric == "cpu" else "keda"
    annotations.update({"prometheus.kserve.io/port": str(SERVE_PORT), "prometheus.kserve.io/path": "/metrics"})
    if model.name:
        annotations["ferry.dev/model"] = model.name
    if model.version:
        annotations["ferry.dev/model-version"] = str(model.version)
    annotations.update(d.annotations)
    container = _pod.to_dict(k8s.V1Container(
        name="kserve-container",
        resources=k8s.V1ResourceRequirements(**_resources(d)),
        security_context=_pod.container_security_context(),
        env=[k8s.V1EnvVar(name="FERRY_MAX_BATCH_SIZE", value=str(d.max_batch_size)),
             k8s.V1EnvVar(name="FERRY_MAX_LATENCY_MS", value=f"{d.max_latency_ms:g}"),
             k8s.V1EnvVar(name="FERRY_DEVICE", value="cuda" if d.resources.gpu else "cpu"),
             k8s.V1EnvVar(name="FERRY_DTYPE", value=d.dtype)],
    ))
    container.pop("name")
    predictor: dict[str, Any] = {
        **_autoscaling(d),
        "model": {
            "modelFormat": {"name": model.model_format},
            "runtime": d.runtime,
            "protocolVersion": "grpc-v2" if d.protocol == "grpc" else "v2",
            "storageUri": model.storage_uri,
            **container,
            **({"ports": [{"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}]} if d.protocol == "grpc" else {}),
        },
        "securityContext": _pod.to_dict(_pod.pod_security_context(RUNTIME_UID)),
        "automountServiceAccountToken": False if d.service_account is None else None,
    }
    if d.service_account:
        predictor["serviceAccountName"] = d.service_account
    if d.canary_percent is not None:
        predictor["canaryTrafficPercent"] = d.canary_percent
    if d.node_selector:
        predictor["nodeSelector"] = dict(d.node_selector)
    if d.tolerations:
        predictor["tolerations"] = [_pod.to_dict(k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value,
                                    effect=t.effect, toleration_seconds=t.toleration_seconds)) for t in d.tolerations]
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": d.name, "namespace": d.namespace, "labels": _pod.common_labels(DEPLOYMENT_LABEL, d.name, d.labels),
                     "annotations": annotations},
        "spec": {"predictor": {k: v for k, v in predictor.items() if v is not None}},
    }


def render_storage_container(image: str | None = None, name: str = "ferry", *,
                             tracking: tuple[str, str] = ("ferry-mlflow", "tracking-uri"),
                             credentials_secret: str = CREDENTIALS_SECRET) -> dict[str, Any]:
    """Ferry's ClusterStorageContainer: KServe's storage initializer for ``models:/``, ``runs:/``
    and ``mlflow-artifacts:/`` URIs. KServe runs its container as the predictor pod's init
    container with the arguments ``URI DEST`` (pairs of them for several models), so the
    container names the command and no args: ``ferry fetch`` from Ferry's serving image. The
    tracking URI comes from the tracking ConfigMap (``tracking``: name, key) of the
    InferenceService's namespace, credentials from the optional Secret ``credentials_secret``
    there (MLflow's, and AWS_* and MLFLOW_S3_ENDPOINT_URL where the server does not proxy
    artifacts); Pod Security "restricted"."""
    security = _pod.container_security_context()
    security.run_as_user = RUNTIME_UID
    container = k8s.V1Container(
        name="storage-initializer",  # the name KServe recognises its init container by
        image=image or images.image("serve"),
        command=["ferry", "fetch"],
        env=[k8s.V1EnvVar(name="MLFLOW_TRACKING_URI", value_from=k8s.V1EnvVarSource(
            config_map_key_ref=k8s.V1ConfigMapKeySelector(name=tracking[0], key=tracking[1])))],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=credentials_secret, optional=True))],
        resources=k8s.V1ResourceRequirements(requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "1Gi"}),
        security_context=security,
    )
    return _cluster_object(STORAGE_API_VERSION, "ClusterStorageContainer", name, {
        "container": _pod.to_dict(container),
        "supportedUriFormats": [{"prefix": prefix} for prefix in STORAGE_URI_PREFIXES],
        "workloadType": "initContainer",
        "supportsMultiModelDownload": True,
    })


def _cluster_object(api_version: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A cluster-scoped object of Ferry's (no namespace), labelled as Ferry's."""
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "labels": dict(_pod.MANAGED_BY)},
            "spec": spec}


def render_serving_runtime(image: str | None = None, name: str = "ferry") -> dict[str, Any]:
    """Ferry's ClusterServingRuntime: ``ferry serve`` on the model KServe's storage
    initializer put in /mnt/models, OIP v2 REST (8080, the port KServe routes by default) and
    gRPC (8081: an InferenceService with ``protocol="grpc"`` names it as its ``h2c`` port;
    Knative allows one port per container), v1, probes, restricted security context."""
    probe = lambda path, delay: k8s.V1Probe(  # noqa: E731
        http_get=k8s.V1HTTPGetAction(path=path, port=SERVE_PORT), initial_delay_seconds=delay, period_seconds=5,
        failure_threshold=3)
    security = _pod.container_security_context()
    security.run_as_user = RUNTIME_UID  # no pod-level securityContext in a ServingRuntime spec
    container = k8s.V1Container(
        name="kserve-container",
        image=image or images.image("serve"),
        command=["ferry"],
        args=["serve", "/mnt/models", "--name", "{{.Name}}", "--host", "0.0.0.0", "--port", str(SERVE_PORT),
              "--grpc-port", str(GRPC_PORT), "--device", "$(FERRY_DEVICE)", "--dtype", "$(FERRY_DTYPE)",
              "--max-batch-size", "$(FERRY_MAX_BATCH_SIZE)", "--max-latency-ms", "$(FERRY_MAX_LATENCY_MS)"],
        env=[k8s.V1EnvVar(name="FERRY_MAX_BATCH_SIZE", value="32"), k8s.V1EnvVar(name="FERRY_MAX_LATENCY_MS", value="5"),
             k8s.V1EnvVar(name="FERRY_DEVICE", value="auto"), k8s.V1EnvVar(name="FERRY_DTYPE", value="float32")],
        ports=[k8s.V1ContainerPort(container_port=SERVE_PORT, protocol="TCP")],
        readiness_probe=probe("/v2/health/ready", 2),
        liveness_probe=probe("/v2/health/live", 10),
        resources=k8s.V1ResourceRequirements(requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "2Gi"}),
        security_context=security,
    )
    return _cluster_object(RUNTIME_API_VERSION, "ClusterServingRuntime", name, {
        "annotations": {"prometheus.kserve.io/port": str(SERVE_PORT), "prometheus.kserve.io/path": "/metrics"},
        "supportedModelFormats": [
            {"name": "pytorch", "version": "2", "autoSelect": True, "priority": 1},
            {"name": "onnx", "version": "1", "autoSelect": True, "priority": 1},
        ],
        "protocolVersions": ["v2", "v1", "grpc-v2"],
        "containers": [_pod.to_dict(container)],
    })
