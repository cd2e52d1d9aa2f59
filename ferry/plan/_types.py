"""What ``ferry plan`` measures and what it concludes, as plain data: the closed-loop curve (one
:class:`Point` per concurrency), the open-loop check at the chosen rate, the cold start, and the
:class:`Plan` computed from them. Every field is in the units its name says; JSON is
:func:`dataclasses.asdict` of these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    """One step of the closed-loop sweep: ``concurrency`` clients, each sending its next request
    as the last one is answered, measured once warm, until three windows agree."""

    concurrency: int
    throughput_rps: float  # answered requests per second over the windows kept
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    requests: int  # answered requests measured (warm-up excluded)
    errors: int  # non-2xx answers and transport errors while measuring
    windows: int  # measurement windows taken at this step
    stable: bool  # the last three windows' throughput and p99 agreed within 10 %
    queue_depth: float | None = None  # mean of the server's ferry_queue_depth while measured
    server_cpu_percent: float | None = None  # the server's processes, % of one core, while measured
    client_cpu_percent: float = 0.0  # the load generator's own, % of one core, while measured


@dataclass(frozen=True)
class Curve:
    """The closed-loop sweep: its points in order of concurrency, and why it stopped."""

    points: tuple[Point, ...]
    stopped_because: str  # e.g. "p99 410.2 ms above the SLO at concurrency 16"

    @property
    def single_request_ms(self) -> float:
        """The p99 at concurrency 1: the least any SLO can ask of this server."""
        return self.points[0].p99_ms


@dataclass(frozen=True)
class OpenLoop:
    """Requests at a fixed arrival rate, whatever the answers' pace: whether p99 holds there."""

    rate_rps: float  # asked
    achieved_rps: float  # sent and answered
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    queue_depth: float | None = None
    server_cpu_percent: float | None = None
    client_cpu_percent: float = 0.0


@dataclass(frozen=True)
class Settings:
    """What the measured server ran with: the Deployment's settings (or the running server's)."""

    device: str = "cpu"
    dtype: str = "float32"
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    workers: int = 1
    cpu_request: float | None = None  # cores the Deployment requests: the base of HPA's CPU %


@dataclass(frozen=True)
class Plan:
    """The autoscaling settings the measurements give, with the figures they come from."""

    slo_p99_ms: float
    peak_rps: float
    headroom: float
    c_star: int  # the largest concurrency whose p99 kept within the SLO
    x_star_rps: float  # its throughput
    per_replica_rps: float  # R = X* x (1 - headroom)
    knative_target: int  # scaleTarget for scaleMetric concurrency (the utilization multiplies it)
    knative_utilization_percent: int  # Knative's target utilization the target was divided by
    rps_target: int  # scaleTarget for scaleMetric rps
    queue_depth_threshold: float | None  # KEDA: the per-replica queue depth measured at R
    queue_depth_activation: float | None  # KEDA's activationThreshold
    cpu_percent: int | None  # HPA: the CPU % of the request measured at R
    min_replicas: int
    min_replicas_reason: str
    max_replicas: int  # ceil(peak / R) + 1
    notes: tuple[str, ...] = field(default_factory=tuple)
