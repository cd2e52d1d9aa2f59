"""Ferry: typed PyTorch training jobs rendered to Kubeflow PyTorchJobs, tracked in MLflow,
promoted through gates and served on KServe. Importing ``ferry`` is cheap: no torch, mlflow,
kserve or Kubernetes client is imported until a function that needs one runs."""

from ferry.errors import ConfigError, FerryError, JobFileError, ManifestInvalid, SpecError
from ferry.spec import (
    Autoscaling,
    Checkpointing,
    ConfigMapKeyRef,
    ConfigMapVolume,
    Deployment,
    Elastic,
    EmptyDirVolume,
    GangScheduling,
    Promotion,
    PVCVolume,
    Resources,
    RunPolicy,
    SecretRef,
    SecretVolume,
    Toleration,
    Tracking,
    TrainingJob,
)

__version__ = "0.1.0"

__all__ = [
    "Autoscaling",
    "Checkpointing",
    "ConfigError",
    "ConfigMapKeyRef",
    "ConfigMapVolume",
    "Deployment",
    "Elastic",
    "EmptyDirVolume",
    "FerryError",
    "GangScheduling",
    "JobFileError",
    "ManifestInvalid",
    "PVCVolume",
    "Promotion",
    "Resources",
    "RunPolicy",
    "SecretRef",
    "SecretVolume",
    "SpecError",
    "Toleration",
    "Tracking",
    "TrainingJob",
    "__version__",
]
