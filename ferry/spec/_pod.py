"""Spec parts that end up in a pod: resources, references, volumes, tolerations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ferry import _k8s
from ferry.spec._base import Spec

__all__ = [
    "ConfigMapKeyRef",
    "ConfigMapVolume",
    "EmptyDirVolume",
    "PVCVolume",
    "Resources",
    "SecretRef",
    "SecretVolume",
    "Toleration",
    "Volume",
]


def _positive_quantity(value: str | int | float, field: str, example: str) -> str:
    try:
        amount = _k8s.parse_quantity(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (for {field}, e.g. {example!r})") from None
    if amount <= 0:
        raise ValueError(f"must be > 0 (got {value!r}); e.g. {field}={example!r}")
    return str(value)


class Resources(Spec):
    """Per-replica compute. CPU and memory are Kubernetes quantities; GPUs are whole devices.

    Requests equal limits for GPUs (extended resources cannot be overcommitted) and for memory
    (a replica that outgrows its request is OOM-killed rather than starving its neighbours);
    CPU is requested but not limited, so a replica may burst into idle cores.
    """

    cpu: str = "1"
    memory: str = "2Gi"
    gpu: int = 0
    gpu_resource: str = "nvidia.com/gpu"

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: str | int | float) -> str:
        return _positive_quantity(v, "cpu", "500m")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: str | int | float) -> str:
        return _positive_quantity(v, "memory", "4Gi")

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0 (got {v}); use gpu=0 for a CPU-only job")
        return v

    @field_validator("gpu_resource")
    @classmethod
    def _gpu_resource(cls, v: str) -> str:
        prefix, _, name = v.partition("/")
        if not name or _k8s.dns1123_problem(prefix, subdomain=True) or not name.replace("-", "").isalnum():
            raise ValueError(
                f"must be an extended resource name like 'nvidia.com/gpu' or 'amd.com/gpu' (got {v!r})"
            )
        return v


def _check_ref_name(v: str) -> str:
    if problem := _k8s.dns1123_problem(v, subdomain=True):
        raise ValueError(f"object name {problem} (got {v!r})")
    return v


def _check_key(v: str) -> str:
    if not v or len(v) > 253 or not all(c.isalnum() or c in "-._" for c in v):
        raise ValueError(f"key must be alphanumerics, '-', '_' or '.' (got {v!r})")
    return v


ObjectName = Annotated[str, AfterValidator(_check_ref_name)]
DataKey = Annotated[str, AfterValidator(_check_key)]


class SecretRef(Spec):
    """A key of a Kubernetes Secret. Ferry never takes a secret's value, only where it lives."""

    kind: Literal["secret"] = "secret"  # tells the two kinds of reference apart in a dumped spec
    name: ObjectName
    key: DataKey



class ConfigMapKeyRef(Spec):
    """A key of a Kubernetes ConfigMap."""

    kind: Literal["configmap"] = "configmap"
    name: ObjectName
    key: DataKey



class _Mount(Spec):
    mount_path: str
    name: str | None = None
    read_only: bool = False

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must be an absolute path (got {v!r}); e.g. mount_path='/data'")
        if v.rstrip("/") == "/dev/shm":
            raise ValueError("/dev/shm is mounted by Ferry; size it with TrainingJob.shm_size")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (problem := _k8s.dns1123_problem(v)):
            raise ValueError(f"volume name {problem} (got {v!r})")
        return v

    def volume_name(self) -> str:  # pragma: no cover - every concrete mount overrides it
        raise NotImplementedError


class PVCVolume(_Mount):
    """Mount a PersistentVolumeClaim (datasets, shared checkpoints)."""

    kind: Literal["pvc"] = "pvc"
    claim: ObjectName

    def volume_name(self) -> str:
        return self.name or f"pvc-{self.claim}"[:63].rstrip("-.")


class ConfigMapVolume(_Mount):
    """Mount a ConfigMap's keys as files."""

    kind: Literal["configmap"] = "configmap"
    config_map: ObjectName
    read_only: bool = True

    def volume_name(self) -> str:
        return self.name or f"cm-{self.config_map}"[:63].rstrip("-.")


class SecretVolume(_Mount):
    """Mount a Secret's keys as files (credentials by reference)."""

    kind: Literal["secret"] = "secret"
    secret: ObjectName
    read_only: bool = True

    def volume_name(self) -> str:
        return self.name or f"secret-{self.secret}"[:63].rstrip("-.")


class EmptyDirVolume(_Mount):
    """Scratch space that lives as long as the pod."""

    kind: Literal["emptydir"] = "emptydir"
    size_limit: str | None = None
    memory: bool = False

    @field_validator("size_limit", mode="before")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        return None if v is None else _positive_quantity(v, "size_limit", "10Gi")

    @model_validator(mode="after")
    def _needs_name(self) -> EmptyDirVolume:
        if self.name is None:
            raise ValueError("EmptyDirVolume needs a name=, e.g. name='scratch'")
        return self

    def volume_name(self) -> str:
        assert self.name is not None
        return self.name


Volume = Annotated[
    PVCVolume | ConfigMapVolume | SecretVolume | EmptyDirVolume, Field(discriminator="kind")
]


class Toleration(Spec):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("value must be empty when operator='Exists'")
        if self.operator == "Equal" and self.key is None:
            raise ValueError("key is required when operator='Equal'; use operator='Exists' to match all")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration_seconds only applies with effect='NoExecute'")
        return self
