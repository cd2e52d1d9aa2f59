"""What users write: typed, immutable, validated specs. Knows nothing of YAML."""

from ferry.spec._code import Code
from ferry.spec._deploy import Autoscaling, Canary, CapacityPlan, Deployment
from ferry.spec._job import RESERVED_ENV, TrainingJob
from ferry.spec._loader import load_specs
from ferry.spec._pod import (
    ConfigMapKeyRef,
    ConfigMapVolume,
    EmptyDirVolume,
    PVCVolume,
    Resources,
    SecretRef,
    SecretVolume,
    Toleration,
    Volume,
)
from ferry.spec._promotion import Promotion, alias_for
from ferry.spec._sweep import Choice, IntUniform, LogUniform, MedianPruning, Objective, Sweep, Uniform
from ferry.spec._policy import Elastic, GangScheduling, RunPolicy
from ferry.spec._tracking import CREDENTIALS_SECRET, Checkpointing, Tracking

__all__ = [
    "CREDENTIALS_SECRET",
    "RESERVED_ENV",
    "Autoscaling",
    "Canary",
    "CapacityPlan",
    "Deployment",
    "Checkpointing",
    "Code",
    "Choice",
    "IntUniform",
    "LogUniform",
    "MedianPruning",
    "Objective",
    "Sweep",
    "Uniform",
    "ConfigMapKeyRef",
    "ConfigMapVolume",
    "Elastic",
    "EmptyDirVolume",
    "GangScheduling",
    "PVCVolume",
    "Promotion",
    "Resources",
    "RunPolicy",
    "SecretRef",
    "SecretVolume",
    "Toleration",
    "Tracking",
    "TrainingJob",
    "Volume",
    "alias_for",
    "load_specs",
]
