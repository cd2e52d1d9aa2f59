"""Ferry's exceptions: one small tree, so callers can catch exactly what they mean.

    FerryError                 anything Ferry raises on purpose (CLI exit code 2)
    ├── SpecError              a spec field is invalid; the message names the field and the fix
    ├── JobFileError           a job file cannot be imported, holds no job, or repeats a name
    ├── ConfigError            Ferry's own configuration is missing or wrong (e.g. no CRD dir)
    ├── RegistryError          the model registry refused, or lacks what was named; when MLflow
    │   │                      could not be reached or kept failing (``transient``): exit code 10
    │   ├── PromotionConflict  (4) another promotion of the same model to the same env holds the lock
    │   └── PromotionRefused   the candidate failed a gate (CLI exit code 1)
    ├── Unreachable            (10) MLflow or the artifact store did not answer, or kept failing
    │                          (5xx, 429) after the retries: the same command may succeed later
    ├── OptimizationFailed     a candidate could not be made or failed its checks, e.g. ONNX
    │                          parity or a failed student job (CLI exit code 1)
    ├── ManifestInvalid        a manifest fails its schema or policy checks (CLI exit code 1)
    └── ClusterError           the Kubernetes API refused or could not be reached; each kind
        │                      keeps the API's meaning and has its own exit code (9 for
        │                      other failures, e.g. 5xx still failing after the retries)
        ├── NotFound           (3) the object or namespace does not exist
        ├── Conflict           (4) the object exists, or another field manager owns a field
        ├── Forbidden          (5) RBAC: a verb on a resource in a namespace is not allowed
        ├── Rejected           (6) the API server or its admission refused the object
        ├── NotInstalled       (7) the kind's CRD is not installed (training operator, KServe)
        ├── ClusterUnreachable (8) no cluster: unreachable, bad kubeconfig, rejected credentials
        └── WaitTimeout        (124) --wait ran out of time (the job goes on)

Every ``raise`` of one of these from another exception uses ``raise ... from exc`` so the
cause stays visible to a debugger, while the CLI prints only the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ClusterError",
    "ClusterUnreachable",
    "Conflict",
    "Forbidden",
    "NotFound",
    "NotInstalled",
    "Rejected",
    "WaitTimeout",
    "PromotionConflict",
    "PromotionRefused",
    "RegistryError",
    "ConfigError",
    "FerryError",
    "JobFileError",
    "ManifestInvalid",
    "ManifestIssue",
    "OptimizationFailed",
    "SpecError",
    "Unreachable",
]


class FerryError(Exception):
    """Base of every error Ferry raises on purpose."""

    exit_code: int = 2


class SpecError(FerryError, ValueError):
    """A spec (``TrainingJob``, ``Resources``, ...) was given an invalid value."""


class JobFileError(FerryError):
    """A job file could not be turned into spec objects."""


class ConfigError(FerryError):
    """Ferry's own configuration (settings, CRD directory, ...) is missing or wrong."""


class RegistryError(FerryError):
    """The model registry lacks what was named, refused a change, or cannot be reached.
    ``transient``: the same request may succeed later (the server unreachable, a 5xx, a 429)."""

    def __init__(self, message: str = "", *, transient: bool = False):
        super().__init__(message)
        self.transient = transient

    @property  # type: ignore[override]
    def exit_code(self) -> int:
        return Unreachable.exit_code if self.transient else 2


class Unreachable(FerryError):
    """MLflow, or the store Ferry keeps code bundles in, could not be reached or kept failing
    (5xx, 429) after the retries: asking again later may succeed, unlike a refusal."""

    exit_code = 10


class PromotionConflict(RegistryError):
    """Another promotion of the same model to the same environment holds the lock: it may be
    released soon, so scripts can retry (exit code 4, like the cluster's conflicts)."""

    @property  # type: ignore[override]
    def exit_code(self) -> int:
        return 4


class PromotionRefused(RegistryError):
    """The candidate failed one or more gates; nothing was changed. ``gates`` holds every
    gate's result, as evaluated for the refusal."""

    exit_code = 1

    def __init__(self, message: str, gates: Sequence[Any] = ()):
        super().__init__(message)
        self.gates = list(gates)


class OptimizationFailed(FerryError):
    """An optimization could not produce an acceptable candidate; no version was registered."""

    exit_code = 1


@dataclass(frozen=True)
class ManifestIssue:
    """One problem in one manifest: where (a JSON path) and what."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: {self.message}"


class ManifestInvalid(FerryError):
    """One or more manifests failed schema or policy validation."""

    exit_code = 1

    def __init__(self, issues: Sequence[ManifestIssue]):
        self.issues = tuple(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{len(self.issues)} validation error(s):\n{lines}")


class ClusterError(FerryError):
    """The Kubernetes API refused a request or could not be reached. ``status`` is the HTTP
    status when the API answered, ``reason`` its Status reason (``Forbidden``, ``Invalid``, ...)."""

    exit_code = 9

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(ClusterError):
    """The named object (or its namespace) does not exist."""

    exit_code = 3


class Conflict(ClusterError):
    """The object already exists in a state Ferry will not reuse, or another field manager owns
    fields a server-side apply would change."""

    exit_code = 4


class Forbidden(ClusterError):
    """RBAC denied a verb on a resource in a namespace."""

    exit_code = 5


class Rejected(ClusterError):
    """The API server refused the object: invalid fields or an admission denial (Pod Security,
    a webhook). The message lists each cause."""

    exit_code = 6


class NotInstalled(ClusterError):
    """The kind's CustomResourceDefinition is not installed in the cluster."""

    exit_code = 7


class ClusterUnreachable(ClusterError):
    """No usable cluster: the API server cannot be reached, the kubeconfig is missing or
    wrong, or the credentials were rejected."""

    exit_code = 8


class WaitTimeout(ClusterError):
    """``--wait`` ran out of time before the job finished; the job itself goes on."""

    exit_code = 124
