"""The Pod Security Standards 'restricted' profile, checked on pod specs inside manifests.

Rules as the Kubernetes Pod Security admission applies them (baseline + restricted, v1.25+).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ferry._k8s import runtime_pod_templates
from ferry.errors import ManifestIssue
from ferry.validate._crd import json_path

_ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}
_SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """Every pod spec a workload manifest carries, with its path."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Pod":
        yield ["spec"], spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield ["spec", "template", "spec"], (spec.get("template") or {}).get("spec") or {}
    elif kind == "PyTorchJob":
        for role, replica in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield ["spec", "pytorchReplicaSpecs", role, "template", "spec"], (replica.get("template") or {}).get("spec") or {}
    elif kind == "TrainJob":
        # The pod comes from the runtime the TrainJob names, with each runtimePatches entry
        # merged in: what the job itself says about a pod is in those patches.
        for path, _, template in runtime_pod_templates(doc):
            if template.get("spec") is not None:
                yield [*path, "spec"], template["spec"]
    elif kind == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            if component in spec:
                pod = dict(spec[component])
                if "model" in pod:  # the predictor's model is its serving container
                    pod["containers"] = [pod["model"], *pod.get("containers", [])]
                yield ["spec", component], pod
    elif kind in ("ServingRuntime", "ClusterServingRuntime"):
        yield ["spec"], spec


def restricted_issues(doc: dict[str, Any], source: str) -> Iterator[ManifestIssue]:
    for base, pod in pod_specs(doc):
        yield from _pod_issues(pod, base, source)


def _pod_issues(pod: dict[str, Any], base: list[Any], source: str) -> Iterator[ManifestIssue]:
    def issue(parts: list[Any], message: str) -> ManifestIssue:
        return ManifestIssue(source, json_path(base + parts), f"Pod Security 'restricted': {message}")

    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            yield issue([host], "must not be true")
    psc = pod.get("securityContext") or {}
    for i, volume in enumerate(pod.get("volumes") or []):
        kinds = set(volume) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            yield issue(["volumes", i], f"volume type {sorted(kinds - _ALLOWED_VOLUMES)} is not allowed")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        yield issue(["securityContext", "runAsUser"], "must not be 0 (root)")
    if pod_seccomp is not None and pod_seccomp not in _SECCOMP_OK:
        yield issue(["securityContext", "seccompProfile", "type"], "must be RuntimeDefault or Localhost")
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(pod.get(field) or []):
            sc = c.get("securityContext") or {}
            at = [field, i, "securityContext"]
            if sc.get("privileged"):
                yield issue(at + ["privileged"], "must not be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                yield issue(at + ["allowPrivilegeEscalation"], "must be set to false")
            if not (sc.get("runAsNonRoot") is True or (pod_non_root and sc.get("runAsNonRoot") is None)):
                yield issue(at + ["runAsNonRoot"], "must be true (on the pod or the container)")
            if sc.get("runAsUser") == 0:
                yield issue(at + ["runAsUser"], "must not be 0 (root)")
            seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
            if seccomp not in _SECCOMP_OK:
                yield issue(at + ["seccompProfile", "type"], "must be RuntimeDefault or Localhost (on the pod or the container)")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                yield issue(at + ["capabilities", "drop"], "must include ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                yield issue(at + ["capabilities", "add"], "may only add NET_BIND_SERVICE")
            for j, port in enumerate(c.get("ports") or []):
                if port.get("hostPort"):
                    yield issue([field, i, "ports", j, "hostPort"], "host ports are not allowed")
