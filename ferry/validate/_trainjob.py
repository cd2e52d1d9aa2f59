"""The rules a Kubeflow Trainer v2 TrainJob must meet beyond its CRD's OpenAPI schema: the
CRD's CEL rules (which jsonschema does not run) and the Trainer's and JobSet's admission
webhooks (which only a cluster with the Trainer installed runs), as of Trainer v2.3.0 and
JobSet v0.12.0."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ferry import _k8s
from ferry.errors import ManifestIssue
from ferry.validate._crd import json_path

_MANAGED_BY = ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue")
# Containers whose env belongs to spec.trainer / spec.initializer: a patch may not set it.
_ENV_FROM_SPEC = ("node", "dataset-initializer", "model-initializer")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def _domain_prefixed_path_problem(value: str) -> str | None:
    """Kubernetes' IsDomainPrefixedPath: ``<DNS-1123 subdomain>/<path>``, e.g. ferry.dev/renderer."""
    host, _, path = value.partition("/")
    if not host or not path:
        return "must be a domain-prefixed path (such as 'acme.io/foo')"
    if problem := _k8s.dns1123_problem(host, subdomain=True):
        return f"its domain {host!r} {problem}"
    if not _HTTP_PATH.match(path):
        return f"its path {path!r} may hold only letters, digits and /-._~%!$&'()*+,;=:"
    return None


def trainjob_issues(doc: dict[str, Any], source: str) -> Iterator[ManifestIssue]:
    if doc.get("kind") != "TrainJob" or not str(doc.get("apiVersion", "")).startswith("trainer.kubeflow.org/"):
        return
    name = (doc.get("metadata") or {}).get("name")
    if isinstance(name, str) and (problem := _k8s.dns1035_problem(name)):
        yield ManifestIssue(source, "$.metadata.name", f"a TrainJob's name {problem}")
    spec = doc.get("spec") or {}
    if "managedBy" in spec and spec["managedBy"] not in _MANAGED_BY:
        yield ManifestIssue(source, "$.spec.managedBy", f"must be {' or '.join(_MANAGED_BY)} (or left out)")
    trainer = spec.get("trainer") or {}
    if isinstance(name, str) and isinstance(nodes := trainer.get("numNodes", 1), int):
        # JobSet names the trainer's pods <name>-node-0-<index>-<5 characters>, each a DNS-1035 label
        if (longest := len(f"{name}-node-0-{nodes - 1}-xxxxx")) > 63:
            yield ManifestIssue(source, "$.metadata.name", f"the pods of this TrainJob would be named {name}-node-0-"
                                f"<index>-xxxxx, {longest} characters; shorten the name by {longest - 63}")
    for i, patch in enumerate(spec.get("runtimePatches") or []):
        at = ["spec", "runtimePatches", i]
        manager = patch.get("manager")
        if isinstance(manager, str) and (problem := _domain_prefixed_path_problem(manager)):
            yield ManifestIssue(source, json_path(at + ["manager"]), f"manager {manager!r} {problem}, e.g. 'ferry.dev/renderer'")
        jobs = (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
        for j, job in enumerate(jobs):
            pod = (((job.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for k, container in enumerate(pod.get("containers") or []):
                if container.get("name") in _ENV_FROM_SPEC and "env" in container:
                    where = at + ["trainingRuntimeSpec", "template", "spec", "replicatedJobs", j, "template", "spec",
                                  "template", "spec", "containers", k, "env"]
                    yield ManifestIssue(source, json_path(where), f"container {container['name']!r} takes its env from "
                                        "spec.trainer.env (spec.initializer for an initializer), not from a patch")
