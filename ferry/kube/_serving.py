"""Deployments on a cluster: apply the rendered InferenceService and serving runtime, and read
an InferenceService's conditions and URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferry.kube._client import Cluster
from ferry.kube._kinds import FIELD_MANAGER, INFERENCESERVICE, kind_of


def apply_manifests(cluster: Cluster, docs: list[dict[str, Any]], *, dry_run: bool = False,
                    force: bool = False, field_manager: str = FIELD_MANAGER) -> list[str]:
    """Server-side apply of every manifest, cluster-scoped ones (the serving runtime) first so
    that what refers to them finds them; returns "Kind namespace/name" for each."""
    ordered = sorted(docs, key=lambda doc: kind_of(doc).namespaced)
    applied = []
    for doc in ordered:
        kind = kind_of(doc)
        meta = doc["metadata"]
        if kind.namespaced:
            meta.setdefault("namespace", cluster.namespace)
        cluster.apply(doc, dry_run=dry_run, force=force, field_manager=field_manager)
        applied.append(f"{kind.kind} {meta['namespace'] + '/' if kind.namespaced else ''}{meta['name']}")
    return applied


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class ServiceState:
    """What an InferenceService's status says: ready or not, why, where, and which model."""

    name: str
    namespace: str
    ready: bool
    url: str | None
    conditions: list[Condition]
    model: str | None
    model_version: str | None
    traffic: list[dict[str, Any]]
    generation: int | None = None  # the spec's generation, and the one KServe's status describes
    observed_generation: int | None = None

    @property
    def current(self) -> bool:
        """Whether the status describes the spec as last changed (KServe's observedGeneration)."""
        return self.generation is None or self.observed_generation is None or \
            self.observed_generation >= self.generation

    def ready_reason(self) -> str:
        if not self.current:
            return "Reconciling"
        ready = next((c for c in self.conditions if c.type == "Ready"), None)
        return (ready.reason if ready is not None and ready.reason else "NotReady") if not self.ready else "Ready"

    def why_not_ready(self) -> str:
        """Why it is not ready, in KServe's words (its false conditions), or that KServe has not
        caught up with the last change yet."""
        if not self.current:
            return f"KServe has not reconciled generation {self.generation} yet (its status is of {self.observed_generation})"
        false = [c for c in self.conditions if c.status != "True"]
        ready = next((c for c in false if c.type == "Ready"), None)
        for c in ([ready] if ready is not None else []) + false:
            if c.message or c.reason:
                return f"{c.type}: {c.message or c.reason}"
        return "KServe reports no Ready condition yet"

    @classmethod
    def of(cls, isvc: dict[str, Any]) -> ServiceState:
        meta, status = isvc.get("metadata") or {}, isvc.get("status") or {}
        annotations = meta.get("annotations") or {}
        conditions = [Condition(c.get("type", ""), c.get("status", "Unknown"), c.get("reason", ""), c.get("message", ""))
                      for c in status.get("conditions") or []]
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        traffic = (((status.get("components") or {}).get("predictor") or {}).get("traffic")) or []
        return cls(meta.get("name", ""), meta.get("namespace", ""), ready, status.get("url"), conditions,
                   annotations.get("ferry.dev/model"), annotations.get("ferry.dev/model-version"), traffic,
                   meta.get("generation"), status.get("observedGeneration"))


def service_state(cluster: Cluster, name: str, namespace: str | None = None) -> ServiceState:
    return ServiceState.of(cluster.get(INFERENCESERVICE, name, namespace))
