"""Pod pieces every Ferry workload shares: labels and the 'restricted' security contexts."""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

MANAGED_BY = {"app.kubernetes.io/managed-by": "ferry"}


def common_labels(component_label: str, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Ferry's own labels first, then the user's (the spec refuses user keys that clash)."""
    return {**MANAGED_BY, component_label: name, **(extra or {})}


def pod_security_context(uid: int) -> k8s.V1PodSecurityContext:
    """Pod Security 'restricted': non-root with a fixed UID/GID, RuntimeDefault seccomp."""
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        fs_group=uid,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.V1SecurityContext:
    """Pod Security 'restricted' for a container: no escalation, every capability dropped."""
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        privileged=False,
        run_as_non_root=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def shm_volume(size: str) -> tuple[k8s.V1Volume, k8s.V1VolumeMount]:
    """A memory-backed /dev/shm: DataLoader workers and NCCL pass tensors through it, and the
    container runtime's 64 MiB default makes them crash with 'bus error'."""
    volume = k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=size))
    return volume, k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")


def env_value(name: str, value: str) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(name=name, value=value)


def env_from_ref(name: str, ref: Any) -> k8s.V1EnvVar:
    """An env var read from a SecretRef or ConfigMapKeyRef spec (never an inline secret)."""
    from ferry.spec import SecretRef

    if isinstance(ref, SecretRef):
        source = k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=ref.name, key=ref.key))
    else:
        source = k8s.V1EnvVarSource(config_map_key_ref=k8s.V1ConfigMapKeySelector(name=ref.name, key=ref.key))
    return k8s.V1EnvVar(name=name, value_from=source)


def to_dict(obj: Any) -> Any:
    """A client model as the API server expects it: camelCase keys, no nulls, declared order."""
    return k8s.ApiClient().sanitize_for_serialization(obj)
