"""The kinds Ferry reads and writes in a cluster, and the labels and condition types of the
controllers that run its training jobs: the Kubeflow training operator (PyTorchJob) and Kubeflow
Trainer v2 (TrainJob, whose pods JobSet and the Job controller create).

These are those projects' own names (``kubeflow.training.constants``, checked equal in the
tests; Trainer's ``trainjob_types.go`` and JobSet's ``constants.go``); they are copied rather
than imported because importing the Kubeflow SDK costs about a second of start-up on every
cluster command.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.render._pod import MANAGED_BY  # noqa: F401 - the label Ferry puts on what it renders

# The training operator's pod labels and condition types (kubeflow/common constants.go).
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
PYTORCHJOB_CONTAINER = "pytorch"
CREATED, RUNNING, RESTARTING, SUCCEEDED, FAILED = "Created", "Running", "Restarting", "Succeeded", "Failed"
FINISHED = (SUCCEEDED, FAILED)

# Kubeflow Trainer v2: a TrainJob's condition types, and the labels on its pods. The TrainJob's
# JobSet has the TrainJob's name; JobSet labels each pod with it and its replicated job ("node"
# for the trainer), the Job controller with the pod's completion index (the node's rank).
COMPLETE, SUSPENDED = "Complete", "Suspended"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
TRAINJOB_CONTAINER = "node"

FIELD_MANAGER = "ferry"

_TRAINING_OPERATOR = "install the Kubeflow training operator (kubectl apply --server-side -k " \
                     "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0\")"
_TRAINER = "install Kubeflow Trainer v2 and its runtimes (kubectl apply --server-side -k " \
           "\"https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0\", then the same " \
           "with overlays/runtimes)"
_KSERVE = "install KServe (https://kserve.github.io/website/latest/admin/serverless/serverless/)"


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API, and what installs it when it is missing."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool = True
    installed_by: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        parts = [self.group_path]
        if self.namespaced and namespace is not None:
            parts += ["namespaces", namespace]
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    def describe(self) -> str:
        """``pytorchjobs.kubeflow.org``: how the API server and RBAC rules name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


PYTORCHJOB = Kind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", installed_by=_TRAINING_OPERATOR)
TRAINJOB = Kind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", installed_by=_TRAINER)
CLUSTERTRAININGRUNTIME = Kind("ClusterTrainingRuntime", "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes",
                              namespaced=False, installed_by=_TRAINER)
TRAININGRUNTIME = Kind("TrainingRuntime", "trainer.kubeflow.org", "v1alpha1", "trainingruntimes",
                       installed_by=_TRAINER)
INFERENCESERVICE = Kind("InferenceService", "serving.kserve.io", "v1beta1", "inferenceservices", installed_by=_KSERVE)
CLUSTERSERVINGRUNTIME = Kind("ClusterServingRuntime", "serving.kserve.io", "v1alpha1", "clusterservingruntimes",
                             namespaced=False, installed_by=_KSERVE)
CLUSTERSTORAGECONTAINER = Kind("ClusterStorageContainer", "serving.kserve.io", "v1alpha1", "clusterstoragecontainers",
                               namespaced=False, installed_by=_KSERVE)
SCALEDOBJECT = Kind("ScaledObject", "keda.sh", "v1alpha1", "scaledobjects",
                    installed_by="install KEDA (https://keda.sh/docs/latest/deploy/)")
CONFIGMAP = Kind("ConfigMap", "", "v1", "configmaps")
SECRET = Kind("Secret", "", "v1", "secrets")
POD = Kind("Pod", "", "v1", "pods")

# What a TrainJob's runtimeRef.kind may name.
TRAINING_RUNTIME_KINDS = {k.kind: k for k in (CLUSTERTRAININGRUNTIME, TRAININGRUNTIME)}

# The kinds a Ferry training job is submitted as (TrainingJob.target), in the order a name is looked up.
JOB_KINDS = (PYTORCHJOB, TRAINJOB)

KINDS = {k.kind: k for k in (PYTORCHJOB, TRAINJOB, CLUSTERTRAININGRUNTIME, TRAININGRUNTIME, INFERENCESERVICE,
                             CLUSTERSERVINGRUNTIME, CLUSTERSTORAGECONTAINER, SCALEDOBJECT, CONFIGMAP, SECRET, POD)}


def kind_of(manifest: dict) -> Kind:
    """The Kind of a manifest Ferry rendered; a ValueError names one it does not handle."""
    kind = KINDS.get(manifest.get("kind", ""))
    if kind is None or manifest.get("apiVersion") != kind.api_version:
        raise ValueError(f"Ferry does not apply {manifest.get('apiVersion')}/{manifest.get('kind')} objects")
    return kind
