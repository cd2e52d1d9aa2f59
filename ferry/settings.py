"""Every environment variable Ferry reads, in one table (cf. mlflow ``environment_variables``).

Read them through these objects, never with ``os.environ.get`` scattered around the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGED_CRD_DIR", "EnvSetting", "find_crd_dir"]  # plus the FERRY_* / MLFLOW_* settings below


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
    "FERRY_CRD_DIR", None, "A folder of extra CustomResourceDefinition YAMLs that validation reads beside the shipped "
    "schemas and Ferry's own (ModelPipeline); where both define a group/version/kind, the folder's wins "
    "(--crd-dir, where a command takes it, comes first)."
)
FERRY_HOME = EnvSetting(
    "FERRY_HOME", ".ferry", "Embedded default store: MLflow SQLite DB, artifacts, logs."
)
FERRY_TARGET = EnvSetting(
    "FERRY_TARGET", None, "What a TrainingJob that names no target= renders as: pytorchjob (Kubeflow training operator, "
    "kubeflow.org/v1; the default) or trainjob (Kubeflow Trainer v2, trainer.kubeflow.org/v1alpha1); "
    "`ferry render --target` wins over both."
)
FERRY_K8S_VERSION = EnvSetting(
    "FERRY_K8S_VERSION", None, "Kubernetes version whose schemas validate built-in kinds."
)

# ---- set in every replica (by the renderer's manifest or the local executor) -----------------
FERRY_IMAGE_REGISTRY = EnvSetting(
    "FERRY_IMAGE_REGISTRY", None, "Registry and path of Ferry's images (default ghcr.io/ferry-ml); the chart's images.registry."
)
FERRY_IMAGE_TAG = EnvSetting("FERRY_IMAGE_TAG", None, "Tag of Ferry's images (default: Ferry's version); the chart's images.tag.")
FERRY_PROMETHEUS_URL = EnvSetting(
    "FERRY_PROMETHEUS_URL", None, "The Prometheus KEDA queries, for deployments (and pipelines) that name none."
)
FERRY_SWEEP = EnvSetting("FERRY_SWEEP", None, "The sweep this submission is a trial of (its run nests under the sweep's parent run).")
FERRY_TRIAL = EnvSetting("FERRY_TRIAL", None, "The trial's number in its sweep.")
FERRY_JOB_NAME = EnvSetting("FERRY_JOB_NAME", None, "The TrainingJob's name.")
FERRY_NAMESPACE = EnvSetting("FERRY_NAMESPACE", "default", "The TrainingJob's namespace.")
FERRY_IMAGE = EnvSetting("FERRY_IMAGE", None, "The container image the job runs in.")
FERRY_HYPERPARAMETERS = EnvSetting("FERRY_HYPERPARAMETERS", "{}", "The job's hyperparameters, as JSON.")
FERRY_SUBMISSION_ID = EnvSetting(
    "FERRY_SUBMISSION_ID", None,
    "Identifies one submission: every rank and restart of it logs to the same MLflow run.",
)
FERRY_RESUME_FROM = EnvSetting(
    "FERRY_RESUME_FROM", None,
    "Start a new submission from a submission id, runs:/<run id> or a checkpoint folder (TrainingJob.resume_from).",
)
FERRY_JOB_SPEC = EnvSetting("FERRY_JOB_SPEC", None, "The TrainingJob as JSON (the run logs it and its manifest).")
FERRY_REGISTER_AS = EnvSetting("FERRY_REGISTER_AS", None, "Register the final model under this name.")
FERRY_EVAL_DATA = EnvSetting("FERRY_EVAL_DATA", None, "The job's held-out split as module:function (recorded on the run).")
FERRY_CHECKPOINT_URI = EnvSetting("FERRY_CHECKPOINT_URI", None, "Checkpoint location: a path or s3://bucket/prefix.")
FERRY_CHECKPOINT_EVERY = EnvSetting("FERRY_CHECKPOINT_EVERY", "100", "Checkpoint every N steps.")
FERRY_CHECKPOINT_KEEP = EnvSetting("FERRY_CHECKPOINT_KEEP", "3", "Keep the newest N checkpoints.")
FERRY_ARTIFACT_ROOT = EnvSetting(
    "FERRY_ARTIFACT_ROOT", None, "Artifact root for experiments Ferry creates (the embedded store sets it)."
)
FERRY_CODE_STORE = EnvSetting(
    "FERRY_CODE_STORE", None,
    "Where code bundles go: s3://bucket/prefix, mlflow-artifacts:/prefix or file:///path "
    "(default: mlflow-artifacts:/ferry-code when MLFLOW_TRACKING_URI is an http(s) server).",
)
FERRY_CODE_MAX_MB = EnvSetting("FERRY_CODE_MAX_MB", "50", "The largest code bundle Ferry makes, in MiB (compressed).")
FERRY_CODE_URI = EnvSetting("FERRY_CODE_URI", None, "The code bundle a replica runs: fetched, checked and unpacked first.")
FERRY_CODE_DIGEST = EnvSetting("FERRY_CODE_DIGEST", None, "The code bundle's sha256:<hex>; a bundle that does not match is refused.")
FERRY_CODE_DIR = EnvSetting("FERRY_CODE_DIR", None, "Where a replica unpacks its code bundle (an emptyDir in a pod).")
FERRY_GIT_COMMIT = EnvSetting("FERRY_GIT_COMMIT", None, "The source commit the job was built from, when known.")
FERRY_METRICS_BUFFER = EnvSetting(
    "FERRY_METRICS_BUFFER", "100000", "Metric points kept while the tracking server is unreachable."
)
FERRY_FLUSH_TIMEOUT = EnvSetting(
    "FERRY_FLUSH_TIMEOUT", "300", "Seconds the end of a job waits for an unreachable tracking server."
)
FERRY_ACTOR = EnvSetting(
    "FERRY_ACTOR", None, "Who promotes (recorded in the promotion history); else git user.email, the pod's service account, $USER@host."
)
FERRY_POLL_INTERVAL_S = EnvSetting(
    "FERRY_POLL_INTERVAL_S", "2", "Seconds between reads of a job's state while a cluster command waits or follows logs."
)
FERRY_OPERATOR_POLL_S = EnvSetting(
    "FERRY_OPERATOR_POLL_S", "5", "Seconds before the operator looks again at what sends no event (MLflow registering a "
    "run's model, a canary's clock); also the first wait after a transient error (it doubles, up to the resync)."
)
FERRY_OPERATOR_RESYNC_S = EnvSetting(
    "FERRY_OPERATOR_RESYNC_S", "300", "Seconds before the operator looks again at a pipeline nothing has woken (drift); "
    "a pipeline's own changes and its children's wake it at once."
)
FERRY_OPERATOR_JOB_TRACKING_URI = EnvSetting(
    "FERRY_OPERATOR_JOB_TRACKING_URI", None,
    "The tracking URI the operator writes to each job's tracking ConfigMap (default: its own MLFLOW_TRACKING_URI; "
    "'-' leaves the ConfigMap to the chart).",
)
MLFLOW_TRACKING_URI = EnvSetting("MLFLOW_TRACKING_URI", None, "MLflow tracking server (or store) URI.")
MLFLOW_EXPERIMENT_NAME = EnvSetting("MLFLOW_EXPERIMENT_NAME", None, "MLflow experiment of the job.")

PACKAGED_CRD_DIR = Path(__file__).resolve().parent / "validate" / "crds"


def find_crd_dir() -> Path:
    """The user's CRD directory, ``$FERRY_CRD_DIR``, when set (read beside the shipped ones,
    winning on the same group/version/kind), else the schemas shipped inside the package
    (``ferry/validate/crds``, listed with their upstream versions in its SOURCES.md)."""
    if FERRY_CRD_DIR.is_set():
        return Path(FERRY_CRD_DIR.get() or "")
    return PACKAGED_CRD_DIR
