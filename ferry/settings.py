"""Every environment variable Ferry reads, in one table (cf. mlflow ``environment_variables``).

Read them through these objects, never with ``os.environ.get`` scattered around the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EnvSetting", "FERRY_CRD_DIR", "FERRY_HOME", "FERRY_K8S_VERSION", "find_crd_dir"]


@dataclass(frozen=True)
class EnvSetting:
    name: str
    default: str | None
    help: str

    def get(self) -> str | None:
        value = os.environ.get(self.name)
        return value if value not in (None, "") else self.default

    def is_set(self) -> bool:
        return os.environ.get(self.name, "") != ""


FERRY_CRD_DIR = EnvSetting(
    "FERRY_CRD_DIR", None, "Directory of CustomResourceDefinition YAMLs used for validation."
)
FERRY_HOME = EnvSetting(
    "FERRY_HOME", ".ferry", "Embedded default store: MLflow SQLite DB, artifacts, logs."
)
FERRY_K8S_VERSION = EnvSetting(
    "FERRY_K8S_VERSION", None, "Kubernetes version whose schemas validate built-in kinds."
)

_CRD_MARKER = "kubeflow.org_pytorchjobs.yaml"


def find_crd_dir(start: Path | None = None) -> Path | None:
    """The CRD directory: ``$FERRY_CRD_DIR``, else ``crds/`` or ``shared/crds/`` in the
    current directory or any parent (a checkout keeps them in ``../shared/crds``)."""
    if FERRY_CRD_DIR.is_set():
        return Path(FERRY_CRD_DIR.get() or "")
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for candidate in (folder / "crds", folder / "shared" / "crds"):
            if (candidate / _CRD_MARKER).is_file():
                return candidate
    return None
