"""Deployments on a cluster: apply the rendered InferenceService and serving runtime, and read
an InferenceService's conditions and URL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ferry.errors import Forbidden, NotFound, NotInstalled
from ferry.kube._client import Cluster
from ferry.kube._kinds import CLUSTERSTORAGECONTAINER, FIELD_MANAGER, INFERENCESERVICE, kind_of
from ferry.render import STORAGE_URI_PREFIXES


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


def serves_uri(storage_container: dict[str, Any], uri: str) -> bool:
    """Whether KServe would run this ClusterStorageContainer for ``uri``: an init-container
    one whose ``supportedUriFormats`` match it by prefix or by regex (searched, as Go's
    ``regexp.MatchString``)."""
    spec = storage_container.get("spec") or {}
    if spec.get("workloadType", "initContainer") != "initContainer":
        return False
    return any(("prefix" in fmt and uri.startswith(fmt["prefix"])) or ("regex" in fmt and re.search(fmt["regex"], uri))
               for fmt in spec.get("supportedUriFormats") or [])


def check_storage_containers(cluster: Cluster, docs: list[dict[str, Any]]) -> list[str]:
    """Refuse InferenceServices whose model URI (``models:/``, ``runs:/``, ``mlflow-artifacts:/``)
    no ClusterStorageContainer fetches, installed or among ``docs``: KServe's default storage
    initializer would take it, and the predictor pod would fail before the model server starts.
    Other URIs (s3://, gs://, https://) are the default initializer's. Returns warnings: a user
    who may not list ClusterStorageContainers (cluster-scoped) is told what could not be checked."""
    uris = {doc["metadata"]["name"]: doc["spec"]["predictor"]["model"]["storageUri"] for doc in docs
            if doc.get("kind") == INFERENCESERVICE.kind
            and str(doc["spec"]["predictor"].get("model", {}).get("storageUri", "")).startswith(STORAGE_URI_PREFIXES)}
    if not uris:
        return []
    shipped = [doc for doc in docs if doc.get("kind") == CLUSTERSTORAGECONTAINER.kind]
    try:
        installed = cluster.list(CLUSTERSTORAGECONTAINER)
    except Forbidden:
        return [f"cannot list ClusterStorageContainers (cluster-scoped; RBAC allows it not): make sure Ferry's is "
                f"installed, or {', '.join(sorted(uris))} will not get its model"]
    except (NotInstalled, NotFound):
        installed = []
    for name, uri in sorted(uris.items()):
        if not any(serves_uri(c, uri) for c in [*shipped, *installed]):
            raise NotInstalled(
                f"InferenceService {name}: no ClusterStorageContainer fetches {uri}, so KServe's predictor pod could "
                "not get the model: install Ferry's storage initializer (the Helm chart's storageContainer.enabled, "
                "or `ferry runtime | kubectl apply --server-side -f -`), or deploy with --runtime, which applies it")
    return []


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
