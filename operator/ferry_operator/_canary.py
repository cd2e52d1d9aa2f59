"""A canary's life, from the pipeline's side: the new version is applied with KServe's
``canaryTrafficPercent`` (the version serving before keeps the rest), and it ends one of two ways
(``spec.deployment.canary``):

- it stays Ready for ``stepSeconds``: it is applied again without a split, and takes all traffic;
- it turns unready, or is not Ready within ``deadlineSeconds`` of being applied: the serving
  version is applied again at 100 %, the environment's alias moves back to it (the registry's
  rollback, recorded in the promotion history), and the pipeline is Rejected, saying why.

With ``maxErrorRate``, the canary's revision's share of 5xx answers over the last minute is read
from Prometheus (Ferry's model server counts ``ferry_requests_total`` by ``code``; the chart's
PodMonitor labels each series with its pod's ``inferenceservice`` and Knative ``revision``) on
every look while it is Ready; above the rate it is rolled back.

What the canary has done so far lives in ``status.canary`` (version, share, since when Ready), so
a restarted operator carries on where the last one stopped; ``status.traffic`` shows the split.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ferry.errors import ConfigError, FerryError
from ferry.kube import ServiceState
from ferry.registry._failures import mlflow_errors
from ferry_operator._reconcile import Stop

if TYPE_CHECKING:
    from ferry_operator._reconcile import Reconciler


class PrometheusUnavailable(FerryError):
    """Prometheus did not answer the canary's error-rate query (transient: asked again)."""

    transient = True


def error_rate(prometheus_url: str, namespace: str, isvc: str, revision: str, window: str = "1m") -> float | None:
    """The share of 5xx answers of ``revision`` of InferenceService ``isvc`` over ``window``, or
    None when it answered nothing."""
    import httpx

    series = f'ferry_requests_total{{namespace="{namespace}",inferenceservice="{isvc}",revision="{revision}"'
    query = (f'sum(rate({series},code=~"5.."}}[{window}])) / sum(rate({series}}}[{window}]))')
    try:
        answer = httpx.get(f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=10)
        answer.raise_for_status()
        result = answer.json()["data"]["result"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise PrometheusUnavailable(f"Prometheus at {prometheus_url} did not answer the canary's error-rate query "
                                    f"({type(exc).__name__}: {exc})") from exc
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN: no answers at all


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


class Canary:
    def __init__(self, r: Reconciler, version: str, serving: str, percent: int, wanted: str):
        self.r, self.version, self.serving, self.percent, self.wanted = r, version, serving, percent, wanted
        self.d = r.p.deployment
        assert self.d is not None
        self.split = f"v{version}={percent}%,v{serving}={100 - percent}%"

    def run(self) -> None:
        r, d, v = self.r, self.d, self.version
        state: dict[str, Any] = dict(r.status.get("canary") or {})
        now = r.deps.clock()
        existing = r.isvc()
        if state.get("version") != v or state.get("digest") != self.wanted or existing is None:
            r.apply(v, self.percent)
            again = existing is None and state.get("version") == v
            state = {"version": v, "previousVersion": self.serving, "percent": self.percent, "digest": self.wanted,
                     "appliedAt": state.get("appliedAt") if again else _stamp(now)}
            r.put(canary=state, deploymentDigest=self.wanted, inferenceService=d.name, traffic=self.split)
            r.step.event("Reapplied" if again else "Canary",
                         f"InferenceService {d.name}: {r.p.model} {self.split}"
                         + (" (it was gone; applied again)" if again else ""), "Warning" if again else "Normal")
            r.phase("Canary", f"{r.p.model} {self.split}: waiting until v{v} is ready")
            r.step.again(d.canary.deadline_seconds)
            raise Stop()
        service = ServiceState.of(existing)
        ready = service.current and service.ready
        applied = _seconds(state["appliedAt"])
        if not ready:
            why = service.why_not_ready()
            if state.get("readySince"):
                self.roll_back(f"v{v} turned unready as a {self.percent}% canary ({why})")
            if now - applied >= d.canary.deadline_seconds:
                self.roll_back(f"v{v} was not ready within {d.canary.deadline_seconds} s of its canary ({why})")
            r.condition("Ready", False, service.ready_reason(), why)
            r.phase("Canary", f"{r.p.model} {self.split}: waiting until v{v} is ready ({why})")
            r.step.again(max(1.0, applied + d.canary.deadline_seconds - now))
            raise Stop()
        self.check_error_rate(service)
        since = _seconds(state["readySince"]) if state.get("readySince") else now
        if not state.get("readySince"):
            r.put(canary={**state, "readySince": _stamp(since)})
        held = now - since
        if held < d.canary.step_seconds:
            r.condition("Ready", True, "Canary", f"{r.p.model} {self.split} at {service.url}")
            r.phase("Canary", f"{r.p.model} {self.split}: v{v} Ready for {held:.0f} s of {d.canary.step_seconds} s")
            r.step.again(max(1.0, since + d.canary.step_seconds - now))
            if d.canary.max_error_rate is not None:
                r.step.again(r.deps.poll_s)  # its error rate, looked at again
            raise Stop()
        r.apply(v, None)
        r.put(canary=None, servingVersion=v, deploymentDigest=self.wanted, traffic=f"v{v}=100%")
        r.step.event("CanaryPromoted", f"v{v} stayed Ready for {d.canary.step_seconds} s as a {self.percent}% "
                                       f"canary: it takes all the traffic of InferenceService {d.name}")
        r.stage = "Deploying"
        r.watch_ready(r.isvc(), v)

    def check_error_rate(self, service: ServiceState) -> None:
        limit, r = self.d.canary.max_error_rate, self.r
        if limit is None:
            return
        if not r.deps.prometheus_url:
            raise ConfigError("spec.deployment.canary.maxErrorRate needs Prometheus: set the operator's "
                              "FERRY_PROMETHEUS_URL (the chart's autoscaling.prometheusAddress), or remove it")
        revision = next((t.get("revisionName") for t in service.traffic if t.get("latestRevision")), None)
        if not revision:
            return  # KServe has not said which revision is the canary's yet
        rate = error_rate(r.deps.prometheus_url, r.p.namespace, self.d.name, revision)
        if rate is not None and rate > limit:
            self.roll_back(f"v{self.version}'s error rate {rate:.2%} over the last minute exceeds maxErrorRate "
                           f"{limit:.2%} (revision {revision})")

    def roll_back(self, why: str) -> None:
        from ferry.registry import alias_holder, rollback
        from ferry.spec import alias_for

        r, d, p = self.r, self.d, self.r.p
        r.apply(self.serving, None)
        alias = alias_for(p.environment)
        with mlflow_errors(f"moving {alias!r} of {p.model} back to v{self.serving}"):
            if alias_holder(r.deps.mlflow, p.model, alias) == self.version:
                rollback(r.deps.mlflow, p.model, p.environment, actor=r.deps.actor)
        r.put(canary=None, traffic=f"v{self.serving}=100%", promotionDigest=None, deploymentDigest=None)
        r.fail("Rejected", "Promoted", "CanaryRolledBack",
               f"{why}: InferenceService {d.name} serves v{self.serving} again and {alias!r} is back on it")
