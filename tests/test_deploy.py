"""Deployment → InferenceService + ClusterServingRuntime: KServe's rules, golden files, the
real CRD schemas, and model resolution against a real MLflow registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ferry import Autoscaling, Deployment, Resources, SpecError
from ferry.render import ResolvedModel, dump_yaml, render_inferenceservice, render_serving_runtime, render_storage_container
from ferry.validate import manifest_issues

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "manifests" / "examples" / "deploy"
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1" and not os.environ.get("CI")
PINNED = ResolvedModel("models:/digits-classifier/7", "pytorch", "digits-classifier", "7",
                       source="s3://ferry-models/digits/m-1234/artifacts")
MODEL = "models:/digits-classifier@champion"

VARIANTS = {
    "serverless": Deployment(name="digits", model=MODEL, autoscaling=Autoscaling(min_replicas=0, max_replicas=5, target=32)),
    "serverless-canary": Deployment(name="digits", model=MODEL, canary_percent=10, autoscaling=Autoscaling(metric="rps", target=200)),
    "standard-gpu-keda": Deployment(name="digits-gpu", model=MODEL, mode="standard", resources=Resources(cpu="4", memory="16Gi", gpu=1),
                                    autoscaling=Autoscaling(max_replicas=8, metric="gpu-utilization", target=70)),
    "standard-queue-keda": Deployment(name="digits-q", model=MODEL, mode="standard", autoscaling=Autoscaling(metric="queue-depth", target=8)),
    "standard-cpu-hpa": Deployment(name="digits-cpu", model=MODEL, mode="standard", autoscaling=Autoscaling(metric="cpu", target=60)),
    "serverless-grpc": Deployment(name="digits-grpc", model=MODEL, protocol="grpc"),
    "standard-gpu-fp16": Deployment(name="digits-fp16", model=MODEL, mode="standard", dtype="float16",
                                    resources=Resources(cpu="4", memory="16Gi", gpu=1),
                                    autoscaling=Autoscaling(max_replicas=4, metric="gpu-utilization", target=70)),
}


def _docs():
    docs = {name: render_inferenceservice(d, PINNED) for name, d in VARIANTS.items()}
    docs["clusterservingruntime"] = render_serving_runtime()
    docs["clusterstoragecontainer"] = render_storage_container()
    return docs


@pytest.mark.parametrize("name", [*VARIANTS, "clusterservingruntime", "clusterstoragecontainer"])
def test_variant_validates_and_matches_golden(name, crd_dir):
    doc = _docs()[name]
    assert manifest_issues(doc, crd_dir, name) == []
    path = GOLDEN / f"{name}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_yaml([doc]))
    assert path.read_text() == dump_yaml([doc]), f"{path} drifted; run `make golden` and review the diff"


def test_grpc_deployments_route_to_the_runtimes_grpc_port():
    runtime = render_serving_runtime()["spec"]
    args = runtime["containers"][0]["args"]
    assert args[args.index("--grpc-port") + 1] == "8081" and "grpc-v2" in runtime["protocolVersions"]
    model = render_inferenceservice(VARIANTS["serverless-grpc"], PINNED)["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2"
    assert model["ports"] == [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    assert "ports" not in render_inferenceservice(VARIANTS["serverless"], PINNED)["spec"]["predictor"]["model"]


def test_the_device_follows_the_gpu_request():
    env = lambda name: {e["name"]: e["value"] for e in  # noqa: E731
                        render_inferenceservice(VARIANTS[name], PINNED)["spec"]["predictor"]["model"]["env"]}
    assert (env("serverless")["FERRY_DEVICE"], env("serverless")["FERRY_DTYPE"]) == ("cpu", "float32")
    assert (env("standard-gpu-fp16")["FERRY_DEVICE"], env("standard-gpu-fp16")["FERRY_DTYPE"]) == ("cuda", "float16")
    args = render_serving_runtime()["spec"]["containers"][0]["args"]
    assert args[args.index("--device") + 1] == "$(FERRY_DEVICE)" and args[args.index("--dtype") + 1] == "$(FERRY_DTYPE)"


def test_manifests_pin_the_version_never_the_alias():
    for doc in (render_inferenceservice(d, PINNED) for d in VARIANTS.values()):
        model = doc["spec"]["predictor"]["model"]
        assert model["storageUri"] == PINNED.storage_uri and "@" not in model["storageUri"]
        assert doc["metadata"]["annotations"]["ferry.dev/model-version"] == "7"


def test_autoscaling_fields_per_mode():
    docs = _docs()
    serverless = docs["serverless"]["spec"]["predictor"]
    assert (serverless["minReplicas"], serverless["scaleMetric"], serverless["scaleTarget"]) == (0, "concurrency", 32)
    assert docs["serverless"]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert docs["serverless-canary"]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    gpu = docs["standard-gpu-keda"]
    assert gpu["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    (metric,) = gpu["spec"]["predictor"]["autoScaling"]["metrics"]
    assert "DCGM_FI_DEV_GPU_UTIL" in metric["external"]["metric"]["query"] and metric["external"]["target"]["value"] == "70"
    assert gpu["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "ferry_queue_depth" in docs["standard-queue-keda"]["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["query"]
    assert docs["standard-cpu-hpa"]["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"


BAD = [
    ("fp16-on-cpu", dict(dtype="float16"), "dtype='float16' needs a GPU"),
    ("unknown-protocol", dict(protocol="http3"), "protocol"),
    ("gpu-metric-serverless", dict(autoscaling=dict(metric="gpu-utilization")), "does not work with mode='serverless'"),
    ("concurrency-standard", dict(mode="standard", autoscaling=dict(metric="concurrency")), "does not work with mode='standard'"),
    ("zero-replicas-standard", dict(mode="standard", autoscaling=dict(metric="cpu", min_replicas=0)), "cannot scale to zero"),
    ("canary-standard", dict(mode="standard", canary_percent=20, autoscaling=dict(metric="cpu")), "canary_percent is not honored"),
    ("gpu-metric-without-gpu", dict(mode="standard", autoscaling=dict(metric="gpu-utilization")), "needs a GPU"),
    ("canary-100", dict(canary_percent=100), "canary_percent: must be 1..99"),
    ("max-below-min", dict(autoscaling=dict(min_replicas=4, max_replicas=2)), "max_replicas (2) must be >= min_replicas (4)"),
    ("target-zero", dict(autoscaling=dict(target=0)), "autoscaling.target: must be >= 1"),
    ("percent-over-100", dict(mode="standard", autoscaling=dict(metric="cpu", target=150)), "is a percentage"),
    ("bad-model-uri", dict(model="digits-classifier:latest"), "is not a model URI"),
    ("name-too-long", dict(name="d" * 46), "at most 45 characters"),
    ("unknown-mode", dict(mode="raw"), "Deployment.mode"),
    ("canary-as-a-percent", dict(canary=10), "did you mean 'canary_percent=10'"),
    ("unknown-field", dict(canary_pct=10), "did you mean 'canary_percent'"),
    ("bad-prometheus", dict(autoscaling=dict(prometheus_url="prometheus:9090")), "http(s) URL"),
]


@pytest.mark.parametrize("overrides,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_deployments(overrides, message):
    with pytest.raises(SpecError) as info:
        Deployment(**{"name": "digits", "model": MODEL, **overrides})
    assert message in str(info.value)


@pytest.mark.integration
def test_resolve_pins_alias_to_version(registry):
    from ferry.registry import resolve_model

    uri, client = registry
    resolved = resolve_model("models:/tiny@champion", client)
    assert (resolved.name, resolved.version, resolved.model_format) == ("tiny", "2", "pytorch")
    assert resolved.storage_uri == "models:/tiny/2"  # what KServe's storage initializer (ferry fetch) is given
    assert resolved.source == client.get_model_version_download_uri("tiny", "2")
    assert resolve_model("models:/tiny/1", client).version == "1"


@pytest.mark.integration
@pytest.mark.parametrize("ref,message", [("models:/tiny@nope", "cannot resolve models:/tiny@nope"),
                                         ("models:/absent/1", "cannot resolve models:/absent/1")])
def test_resolve_errors(registry, ref, message):
    from ferry.errors import ConfigError
    from ferry.registry import resolve_model

    with pytest.raises(ConfigError, match=message):
        resolve_model(ref, registry[1])


@pytest.mark.integration
def test_ferry_deploy_cli(registry, tmp_path, ferry_cli, crd_dir):
    uri, _ = registry
    deploy_file = tmp_path / "deploy.py"
    deploy_file.write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@champion', canary_percent=10)\n")
    result = ferry_cli("deploy", str(deploy_file), "-o", str(tmp_path / "out"), "--crd-dir", str(crd_dir), env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load((tmp_path / "out" / "tiny" / "inferenceservice.yaml").read_text())
    assert doc["metadata"]["annotations"]["ferry.dev/model-version"] == "2"
    assert (tmp_path / "out" / "clusterservingruntime.yaml").is_file()
    assert "local path a cluster cannot fetch" in result.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@missing')\n")
    result = ferry_cli("deploy", str(bad), "-o", str(tmp_path / "out2"), env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2 and "cannot resolve models:/tiny@missing" in result.stderr
    assert not (tmp_path / "out2").exists()


def test_the_predictor_pod_with_ferrys_storage_initializer_meets_pod_security_restricted(crd_dir):
    """The pod KServe makes of an InferenceService Ferry renders: the predictor's pod security
    context, the serving runtime's container and, as its init container, the container of Ferry's
    ClusterStorageContainer with the args KServe gives it."""
    isvc = render_inferenceservice(VARIANTS["standard-cpu-hpa"], PINNED)
    initializer = {**render_storage_container()["spec"]["container"], "args": [PINNED.storage_uri, "/mnt/models"]}
    (runtime,) = render_serving_runtime()["spec"]["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "digits-predictor-0", "namespace": "ml"},
           "spec": {"securityContext": isvc["spec"]["predictor"]["securityContext"],
                    "initContainers": [initializer], "containers": [runtime]}}
    assert manifest_issues(pod, crd_dir, "predictor-pod") == []
    broken = {**pod, "spec": {**pod["spec"], "initContainers": [{**initializer, "securityContext": {}}]}}
    assert manifest_issues(broken, crd_dir, "predictor-pod") != []  # the check does look at init containers
