"""The operator's Prometheus metrics (``ferry operator run --metrics-port``): reconcile passes by
outcome, phase changes, and the pipelines it drives by phase."""

from __future__ import annotations

from typing import Any

from ferry_operator._crd import PHASES


class Metrics:
    def __init__(self, registry: Any = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry or CollectorRegistry()
        self.passes = Counter("ferry_operator_reconcile_passes", "Reconcile passes over ModelPipelines, by outcome "
                              "(done, waiting, invalid).", ["outcome"], registry=self.registry)
        self.transitions = Counter("ferry_operator_phase_transitions", "ModelPipeline phase changes, by the phase "
                                   "entered.", ["phase"], registry=self.registry)
        self.pipelines = Gauge("ferry_operator_pipelines", "ModelPipelines by phase, as this operator last saw them.",
                               ["phase"], registry=self.registry)
        self._phase_of: dict[str, str] = {}

    def observe(self, key: str, before: str | None, after: str | None, outcome: str) -> None:
        self.passes.labels(outcome).inc()
        if after and after != before:
            self.transitions.labels(after).inc()
        if after:
            self._phase_of[key] = after
        self._count()

    def forget(self, key: str) -> None:
        self._phase_of.pop(key, None)
        self._count()

    def _count(self) -> None:
        for phase in PHASES:
            self.pipelines.labels(phase).set(sum(1 for p in self._phase_of.values() if p == phase))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)
