"""``Deployment``: a model served on KServe with Ferry's runtime, and how it scales."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ferry import _k8s, settings
from ferry.spec._base import Spec
from ferry.spec._pod import Resources, Toleration

__all__ = ["Autoscaling", "CapacityPlan", "Canary", "Deployment"]

DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"  # kube-prometheus-stack's Service

_MODEL_URI = re.compile(r"^(models:/[^/@]+(@[A-Za-z0-9_-]+|/\d+)|runs:/\S+|s3://\S+|gs://\S+|pvc://\S+|https?://\S+|file://\S+)$")

# metric -> the deployment mode whose autoscaler can act on it (KServe's rules):
# Knative's KPA scales on concurrency/RPS (and to zero); in Standard mode HPA scales on CPU and
# KEDA on Prometheus queries (DCGM GPU utilization, Ferry's queue depth).
_METRIC_MODE = {"concurrency": "serverless", "rps": "serverless", "cpu": "standard",
                "gpu-utilization": "standard", "queue-depth": "standard"}


class Autoscaling(Spec):
    """Replicas between ``min_replicas`` and ``max_replicas``, aiming ``metric`` at ``target``:
    in-flight requests per replica (``concurrency``), requests/s per replica (``rps``), CPU %
    (``cpu``), GPU utilization % from the DCGM exporter (``gpu-utilization``) or requests
    waiting in Ferry's batcher per replica (``queue-depth``)."""

    min_replicas: int = 1
    max_replicas: int = 3
    metric: Literal["concurrency", "rps", "cpu", "gpu-utilization", "queue-depth"] = "concurrency"
    target: int = 10
    prometheus_url: str = Field(default_factory=lambda: settings.FERRY_PROMETHEUS_URL.get() or DEFAULT_PROMETHEUS)
    scale_up_stabilization_seconds: int = 0
    scale_down_stabilization_seconds: int = 300

    @field_validator("min_replicas", "scale_up_stabilization_seconds", "scale_down_stabilization_seconds")
    @classmethod
    def _nonneg(cls, v: int, info) -> int:  # type: ignore[no-untyped-def]
        if v < 0:
            raise ValueError(f"{info.field_name} must be >= 0 (got {v})")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v}); e.g. target=70 for 70% GPU utilization")
        return v

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://\S+$", v):
            raise ValueError(f"must be an http(s) URL of the Prometheus server (got {v!r})")
        return v

    @model_validator(mode="after")
    def _range(self) -> Autoscaling:
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas}) and >= 1")
        if self.metric in ("cpu", "gpu-utilization") and self.target > 100:
            raise ValueError(f"target is a percentage for metric={self.metric!r} (got {self.target})")
        return self


class Canary(Spec):
    """How a canary ends, where Ferry's operator rolls it out (a ModelPipeline): once the new
    version has stayed Ready for ``step_seconds`` it takes all the traffic; if it turns unready,
    or is not Ready within ``deadline_seconds`` of being applied, the version serving before
    takes all the traffic back and the new one is rejected (its alias moved back too). With
    ``max_error_rate`` (a fraction, 0.01 for 1 %), the new version's share of 5xx answers over the
    last minute, read from Prometheus (the operator's ``FERRY_PROMETHEUS_URL``), must stay
    at or under it the whole time, or it is rolled back the same way."""

    step_seconds: int = 300
    deadline_seconds: int = 900
    max_error_rate: float | None = None

    @field_validator("max_error_rate")
    @classmethod
    def _rate(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v < 1:
            raise ValueError(f"must be a fraction in [0, 1) (got {v}); e.g. 0.01 for 1% of the answers")
        return v

    @field_validator("step_seconds", "deadline_seconds")
    @classmethod
    def _seconds(cls, v: int, info) -> int:  # type: ignore[no-untyped-def]
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1 (got {v})")
        return v


class CapacityPlan(Spec):
    """Autoscaling measured rather than guessed, where Ferry's operator deploys (a ModelPipeline):
    before each new version is served, ``ferry plan`` measures one replica of it with the
    Deployment's own settings and resources against a p99 of ``slo_p99_ms`` milliseconds, and the
    InferenceService scales as the plan says (min/max replicas and the target of the Deployment's
    metric) to carry ``peak_rps`` requests per second, keeping ``headroom`` (a fraction) of each
    replica's measured capacity free. A plan already recorded for the version with these figures
    is used as it is."""

    slo_p99_ms: float
    peak_rps: float
    headroom: float = 0.15

    @field_validator("slo_p99_ms")
    @classmethod
    def _slo(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be more than 0 ms (got {v:g}); e.g. 100 for a p99 of 100 ms")
        return v

    @field_validator("peak_rps")
    @classmethod
    def _peak(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be more than 0 requests/s (got {v:g}): the most the service must take")
        return v

    @field_validator("headroom")
    @classmethod
    def _headroom(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"must be at least 0 and below 1 (got {v:g}); 0.15 keeps 15% of a replica's "
                             "measured capacity free")
        return v


class Deployment(Spec):
    """A model served as a KServe InferenceService on Ferry's runtime.

    ``model`` is resolved at deploy time to the immutable storage URI of one model version, so
    the manifest never points at a moving alias. ``mode="serverless"`` (Knative) scales on
    concurrency or RPS and may scale to zero; ``mode="standard"`` (raw Deployment) scales with
    HPA on CPU or with KEDA on GPU utilization or queue depth. ``protocol="grpc"`` routes the
    service's traffic to the runtime's gRPC port (KServe's v2 gRPC protocol, port 8081, named
    ``h2c`` as Knative requires); REST stays served on 8080 inside the pod either way. The
    model serves on the GPU when ``resources`` asks for one (the server refuses to start when
    the pod cannot see it) and on CPU otherwise; ``dtype`` (float16 or bfloat16) needs a GPU.
    ``plan`` (a :class:`CapacityPlan`) has Ferry's operator measure each new version before it is
    served and scale it as measured (``autoscaling``'s metric and mode are kept, its replicas and
    target replaced); ``ferry render`` and ``ferry deploy`` leave it aside.
    """

    name: str
    model: str
    namespace: str = "default"
    mode: Literal["serverless", "standard"] = "serverless"
    resources: Resources = Resources(cpu="1", memory="2Gi")
    autoscaling: Autoscaling = Autoscaling()
    canary_percent: int | None = None
    canary: Canary = Canary()
    runtime: str = "ferry"
    protocol: Literal["rest", "grpc"] = "rest"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    service_account: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    plan: CapacityPlan | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # KServe names Services "<name>-predictor-..." : keep room under the 63-character limit.
        if problem := _k8s.dns1035_problem(v, max_len=45):
            raise ValueError(f"{problem} (got {v!r}); KServe appends '-predictor' and more to it")
        return v

    @field_validator("namespace", "runtime")
    @classmethod
    def _label(cls, v: str, info) -> str:  # type: ignore[no-untyped-def]
        if problem := _k8s.dns1123_problem(v):
            raise ValueError(f"{info.field_name} {problem} (got {v!r})")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not _MODEL_URI.match(v):
            raise ValueError(
                f"{v!r} is not a model URI; use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a "
                "storage URI (s3://, gs://, pvc://, https://)"
            )
        return v

    @field_validator("canary_percent")
    @classmethod
    def _canary(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 99:
            raise ValueError(f"must be 1..99 (got {v}); leave it None to send all traffic to the new version")
        return v

    @field_validator("canary", mode="before")
    @classmethod
    def _canary_settings(cls, v: object) -> object:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError(f"is how a canary ends (Canary(step_seconds=..., deadline_seconds=...)), not its share "
                             f"of traffic (got {v}); did you mean 'canary_percent={v}'?")
        return v

    @field_validator("max_batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v})")
        return v

    @field_validator("labels", "annotations")
    @classmethod
    def _meta(cls, v: dict[str, str], info) -> dict[str, str]:  # type: ignore[no-untyped-def]
        for key, value in v.items():
            problem = _k8s.label_key_problem(key) or (info.field_name == "labels" and _k8s.label_value_problem(value))
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _kserve_rules(self) -> Deployment:
        scaling = self.autoscaling
        needed = _METRIC_MODE[scaling.metric]
        if needed != self.mode:
            how = ("Knative scales on concurrency/rps only in serverless mode" if needed == "serverless"
                   else "HPA/KEDA metrics (cpu, gpu-utilization, queue-depth) need mode='standard'")
            raise ValueError(f"autoscaling.metric={scaling.metric!r} does not work with mode={self.mode!r}: {how}; "
                             f"set mode={needed!r} or choose another metric")
        if self.mode == "standard" and scaling.min_replicas == 0:
            raise ValueError("autoscaling.min_replicas=0 is ignored in mode='standard' (HPA/KEDA cannot scale to zero "
                             "without KEDA's HTTP add-on); use min_replicas>=1 or mode='serverless'")
        if self.mode == "standard" and self.canary_percent is not None:
            raise ValueError("canary_percent is not honored in mode='standard' (raw Deployments have no traffic split); "
                             "use mode='serverless' for a canary, or roll out without one")
        if scaling.metric == "gpu-utilization" and self.resources.gpu < 1:
            raise ValueError("autoscaling.metric='gpu-utilization' needs a GPU: set resources=Resources(gpu=1, ...)")
        if self.plan is not None and scaling.metric == "gpu-utilization":
            raise ValueError("plan: a capacity plan does not measure GPU utilization, so it gives no target for "
                             "autoscaling.metric='gpu-utilization'; scale on 'queue-depth' (measured) or leave plan out")
        if self.dtype == "float16" and self.resources.gpu < 1:
            raise ValueError("dtype='float16' needs a GPU (CPUs have no fast float16): set resources=Resources(gpu=1, "
                             "...) or dtype='float32'")
        return self
