"""Ferry and a Kubernetes cluster: submit training jobs, follow them, read their logs, deploy
models, with errors that keep the API server's meaning.

    from ferry.kube import Cluster, plan_submission, submit, wait_for

    with Cluster.connect(context="dev", namespace="ml") as cluster:
        submission, manifest = plan_submission(job)
        submit(cluster, job, manifest, submission)
        state = wait_for(cluster, job.name)

Every failure is a :class:`ferry.errors.ClusterError` subclass (NotFound, Conflict, Forbidden,
Rejected, NotInstalled, ClusterUnreachable, WaitTimeout); transient ones (429, 5xx, a reset
connection) are retried with bounded backoff first.
"""

from ferry.kube._client import Cluster, Retry
from ferry.kube._jobs import (
    JobState,
    Progress,
    ReplicaCounts,
    Submitted,
    delete_job,
    failed_replica_logs,
    find_job,
    follow_logs,
    job_pods,
    job_state,
    list_jobs,
    plan_submission,
    pod_container,
    pod_restarts,
    replica_name,
    submit,
    tracking_configmap,
    wait_for,
)
from ferry.kube._kinds import (
    CLUSTERSERVINGRUNTIME,
    CLUSTERSTORAGECONTAINER,
    CONFIGMAP,
    INFERENCESERVICE,
    POD,
    PYTORCHJOB,
    SCALEDOBJECT,
    TRAINJOB,
    Kind,
    kind_of,
)
from ferry.kube._serving import (
    Condition,
    ServiceState,
    apply_manifests,
    check_storage_containers,
    serves_uri,
    service_state,
)

__all__ = [
    "CLUSTERSERVINGRUNTIME",
    "CLUSTERSTORAGECONTAINER",
    "CONFIGMAP",
    "INFERENCESERVICE",
    "POD",
    "PYTORCHJOB",
    "SCALEDOBJECT",
    "TRAINJOB",
    "Cluster",
    "Condition",
    "JobState",
    "Kind",
    "Progress",
    "ReplicaCounts",
    "Retry",
    "ServiceState",
    "Submitted",
    "apply_manifests",
    "check_storage_containers",
    "delete_job",
    "failed_replica_logs",
    "find_job",
    "follow_logs",
    "job_pods",
    "job_state",
    "kind_of",
    "list_jobs",
    "plan_submission",
    "pod_container",
    "pod_restarts",
    "replica_name",
    "serves_uri",
    "service_state",
    "submit",
    "tracking_configmap",
    "wait_for",
]
