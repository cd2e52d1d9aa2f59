"""Training jobs on a cluster: submit one, read its state, wait for it, read its replicas' logs,
list and delete them.

A job runs as a PyTorchJob (the Kubeflow training operator) or a TrainJob (Kubeflow Trainer v2),
as its ``target`` says. The commands that take a job's name find it as either kind
(:func:`find_job`), and read both in the same terms (:class:`JobState`): Succeeded or Failed
once over, its replicas by role, restarts, and a TrainJob's progress as its trainer reports it.

What submitting a job that already exists does: nothing, unless asked. A running job is never
touched by another submission, and a finished one is never reused (the controller would not run
it again, a TrainJob's trainer is immutable, and a re-applied spec would silently change the
record of what ran). ``replace=True`` (``ferry submit --replace``) deletes the old job, waits
until its pods are gone, and submits anew; the old submission's MLflow run and checkpoints stay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ferry._submission import SUBMISSION_LABEL, new_submission_id, with_submission
from ferry.errors import ClusterError, Conflict, Forbidden, NotFound, NotInstalled, Rejected, WaitTimeout
from ferry.kube._client import Cluster
from ferry.kube._kinds import (
    CLUSTERTRAININGRUNTIME,
    COMPLETE,
    COMPLETION_INDEX_LABEL,
    CONFIGMAP,
    CREATED,
    FAILED,
    FIELD_MANAGER,
    FINISHED,
    JOB_INDEX_LABEL,
    JOB_KINDS,
    JOB_NAME_LABEL,
    JOBSET_NAME_LABEL,
    MANAGED_BY,
    POD,
    PYTORCHJOB,
    PYTORCHJOB_CONTAINER,
    REPLICA_INDEX_LABEL,
    REPLICA_TYPE_LABEL,
    REPLICATED_JOB_LABEL,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TRAINING_RUNTIME_KINDS,
    TRAINJOB,
    TRAINJOB_CONTAINER,
    Kind,
    kind_of,
)

_PHASE_ORDER = (SUCCEEDED, FAILED, RESTARTING, RUNNING, CREATED)


@dataclass(frozen=True)
class ReplicaCounts:
    active: int = 0
    succeeded: int = 0
    failed: int = 0

    def __str__(self) -> str:
        return f"{self.active} active, {self.succeeded} succeeded, {self.failed} failed"


@dataclass(frozen=True)
class Progress:
    """What a TrainJob's trainer last reported of itself (``status.trainerStatus``)."""

    percent: int | None = None
    remaining_s: int | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    updated: datetime | None = None

    def __str__(self) -> str:
        parts = [f"{self.percent}%" if self.percent is not None else "progress unknown"]
        if self.remaining_s is not None:
            parts.append(f"about {_duration(self.remaining_s)} left")
        parts += [f"{name} {value}" for name, value in self.metrics.items()]
        return ", ".join(parts)

    @classmethod
    def of(cls, status: dict[str, Any] | None) -> Progress | None:
        if not status:
            return None
        percent, remaining = status.get("progressPercentage"), status.get("estimatedRemainingSeconds")
        return cls(percent=None if percent is None else int(percent),
                   remaining_s=None if remaining is None else int(remaining),
                   metrics={m["name"]: str(m["value"]) for m in status.get("metrics") or [] if "name" in m},
                   updated=_time(status.get("lastUpdatedTime")))


@dataclass(frozen=True)
class JobState:
    """What a PyTorchJob's or TrainJob's status and pods say, in the terms a user asks about."""

    name: str
    namespace: str
    submission: str | None
    phase: str  # Pending (no condition yet), Created, Running, Restarting, Suspended, Succeeded, Failed
    message: str
    reason: str
    replicas: dict[str, ReplicaCounts] = field(default_factory=dict)
    restarts: int = 0
    created: datetime | None = None
    finished_at: datetime | None = None
    kind: str = PYTORCHJOB.kind
    progress: Progress | None = None  # a TrainJob's, once its trainer reported it

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.phase == SUCCEEDED

    def age(self, now: datetime | None = None) -> str:
        if self.created is None:
            return "-"
        return _duration(((now or datetime.now(timezone.utc)) - self.created).total_seconds())

    def summary(self) -> str:
        """One line, for logs and non-terminal output."""
        roles = "; ".join(f"{role.lower()} {counts}" for role, counts in self.replicas.items()) or "no replicas yet"
        progress = f"; {self.progress}" if self.progress is not None else ""
        return f"{self.name}: {self.phase} ({roles}; restarts {self.restarts}{progress})"

    @classmethod
    def of(cls, job: dict[str, Any], pods: list[dict[str, Any]] = ()) -> JobState:  # type: ignore[assignment]
        """The state of a PyTorchJob or a TrainJob (``job`` as the API server returns it) with its pods."""
        if job.get("kind") == TRAINJOB.kind:
            return cls._of_trainjob(job, pods)
        meta, status = job.get("metadata") or {}, job.get("status") or {}
        true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        phase = next((p for p in _PHASE_ORDER if p in true), "Pending")
        condition = true.get(phase, {})
        replicas = {role: ReplicaCounts(int(s.get("active") or 0), int(s.get("succeeded") or 0), int(s.get("failed") or 0))
                    for role, s in sorted((status.get("replicaStatuses") or {}).items())}
        return cls(name=meta.get("name", ""), namespace=meta.get("namespace", ""),
                   submission=(meta.get("labels") or {}).get(SUBMISSION_LABEL), phase=phase,
                   message=condition.get("message", ""), reason=condition.get("reason", ""), replicas=replicas,
                   restarts=sum(pod_restarts(pod) for pod in pods), created=_time(meta.get("creationTimestamp")),
                   finished_at=_time(status.get("completionTime")))

    @classmethod
    def _of_trainjob(cls, job: dict[str, Any], pods: list[dict[str, Any]]) -> JobState:
        """A TrainJob in the PyTorchJob's terms: its Complete condition is Succeeded; it runs once
        a node runs (its JobSet's jobs, or its pods, active); replicas per replicated job, counted
        by pod (``jobsStatus`` counts the Jobs, one per replicated job here) when the pods are known."""
        meta, status = job.get("metadata") or {}, job.get("status") or {}
        true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        jobs = status.get("jobsStatus") or []
        if pods:
            counts: dict[str, list[int]] = {}
            for pod in pods:
                role = ((pod.get("metadata") or {}).get("labels") or {}).get(REPLICATED_JOB_LABEL, "node")
                slot = {"Succeeded": 1, "Failed": 2}.get((pod.get("status") or {}).get("phase", ""), 0)
                counts.setdefault(role, [0, 0, 0])[slot] += 1
            replicas = {role: ReplicaCounts(*c) for role, c in sorted(counts.items())}
        else:
            replicas = {j["name"]: ReplicaCounts(int(j.get("active") or 0), int(j.get("succeeded") or 0),
                                                 int(j.get("failed") or 0)) for j in jobs if j.get("name")}
        if COMPLETE in true:
            phase, condition = SUCCEEDED, true[COMPLETE]
        elif FAILED in true:
            phase, condition = FAILED, true[FAILED]
        elif SUSPENDED in true:
            phase, condition = SUSPENDED, true[SUSPENDED]
        else:
            running = any(c.active for c in replicas.values()) or any(int(j.get("ready") or 0) for j in jobs)
            phase, condition = (RUNNING if running else CREATED if jobs or pods else "Pending"), {}
        finished = condition.get("lastTransitionTime") if phase in FINISHED else None
        return cls(name=meta.get("name", ""), namespace=meta.get("namespace", ""),
                   submission=(meta.get("labels") or {}).get(SUBMISSION_LABEL), phase=phase,
                   message=condition.get("message", ""), reason=condition.get("reason", ""), replicas=replicas,
                   restarts=sum(pod_restarts(pod) for pod in pods), created=_time(meta.get("creationTimestamp")),
                   finished_at=_time(finished), kind=TRAINJOB.kind, progress=Progress.of(status.get("trainerStatus")))


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    """kubectl's way of writing an age: 42s, 7m30s, 25m, 3h12m, 2d5h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def pod_restarts(pod: dict[str, Any]) -> int:
    """How often the pod's containers were restarted."""
    return sum(int(c.get("restartCount") or 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def _number(value: Any) -> int:
    return int(value) if str(value).isdigit() else 0


def replica_name(pod: dict[str, Any]) -> str:
    """``master-0``, ``worker-1`` (a PyTorchJob's), ``node-0``, ``node-1`` (a TrainJob's: its
    replicated job and the node's rank): how ``ferry run`` names replicas, from the controllers'
    labels."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    role, index = labels.get(REPLICA_TYPE_LABEL), labels.get(REPLICA_INDEX_LABEL)
    if role is None and REPLICATED_JOB_LABEL in labels:
        job_index = labels.get(JOB_INDEX_LABEL, "0")
        role = labels[REPLICATED_JOB_LABEL] + (f"-{job_index}" if job_index != "0" else "")
        index = labels.get(COMPLETION_INDEX_LABEL, "0")
    if role is None or index is None:
        return (pod.get("metadata") or {}).get("name", "?")
    return f"{role.lower()}-{index}"


def pod_container(pod: dict[str, Any]) -> str:
    """The container of a replica pod that runs the training: ``pytorch`` in a PyTorchJob's,
    ``node`` in a TrainJob's (an initializer's own container in its pods)."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    role = ((pod.get("metadata") or {}).get("labels") or {}).get(REPLICATED_JOB_LABEL)
    for name in (PYTORCHJOB_CONTAINER, TRAINJOB_CONTAINER, role):
        if name in names:
            return name
    return names[0] if names else PYTORCHJOB_CONTAINER


def _pod_order(pod: dict[str, Any]) -> tuple[int, str, int, int]:
    """A PyTorchJob's master first, then workers by index; a TrainJob's initializers before its
    nodes, each by rank."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if REPLICATED_JOB_LABEL in labels:
        role = labels[REPLICATED_JOB_LABEL]
        return (1 if role == TRAINJOB_CONTAINER else 0, role, _number(labels.get(JOB_INDEX_LABEL, "0")),
                _number(labels.get(COMPLETION_INDEX_LABEL, "0")))
    return (0 if labels.get(REPLICA_TYPE_LABEL, "").lower() == "master" else 1, "", 0,
            _number(labels.get(REPLICA_INDEX_LABEL, "0")))


# How each kind's controller labels the pods of a job: the label holding the job's name.
_POD_SELECTOR = {PYTORCHJOB.kind: JOB_NAME_LABEL, TRAINJOB.kind: JOBSET_NAME_LABEL}


def find_job(cluster: Cluster, name: str, namespace: str | None = None) -> dict[str, Any]:
    """The job ``name``, a PyTorchJob or a TrainJob (the newer when both exist). A kind the
    cluster does not serve is passed over; when neither holds the name, NotFound (or, when
    neither kind is installed, NotInstalled) says so."""
    found, errors = [], []
    for kind in JOB_KINDS:
        try:
            job = cluster.find(kind, name, namespace)
        except (NotInstalled, Forbidden) as exc:
            errors.append(exc)
            continue
        if job is not None:
            found.append(job)
    if found:
        return max(found, key=lambda job: (job.get("metadata") or {}).get("creationTimestamp") or "")
    missing = [e for e in errors if isinstance(e, NotInstalled)]
    if len(missing) == len(JOB_KINDS):
        raise _neither_installed()
    refused = [e for e in errors if isinstance(e, Forbidden)]
    if refused:
        raise refused[0]
    ns = namespace or cluster.namespace
    raise NotFound(f"no PyTorchJob or TrainJob {name!r} in namespace {ns!r}; `ferry list -A` lists the jobs "
                   "Ferry submitted", reason="ObjectNotFound")


def _neither_installed() -> NotInstalled:
    return NotInstalled(f"neither PyTorchJob nor TrainJob is installed in this cluster: {PYTORCHJOB.installed_by}; "
                        f"or {TRAINJOB.installed_by}", reason="KindNotInstalled")


def job_kind(cluster: Cluster, name: str, namespace: str | None = None, kind: Kind | None = None) -> Kind:
    """``kind`` when given, else the kind of the job ``name`` (see :func:`find_job`)."""
    return kind if kind is not None else kind_of(find_job(cluster, name, namespace))


def job_pods(cluster: Cluster, name: str, namespace: str | None = None, *,
             kind: Kind | None = None) -> list[dict[str, Any]]:
    """The job's pods: a PyTorchJob's master first, then workers by index; a TrainJob's nodes by rank."""
    kind = job_kind(cluster, name, namespace, kind)
    return sorted(cluster.list(POD, namespace, selector=f"{_POD_SELECTOR[kind.kind]}={name}"), key=_pod_order)


def job_state(cluster: Cluster, name: str, namespace: str | None = None, *, kind: Kind | None = None) -> JobState:
    job = cluster.get(kind, name, namespace) if kind is not None else find_job(cluster, name, namespace)
    return JobState.of(job, job_pods(cluster, name, namespace, kind=kind_of(job)))


# ---- submit ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Submitted:
    name: str
    namespace: str
    submission: str
    applied: list[str]  # "PyTorchJob ml/digits", "ConfigMap ml/ferry-mlflow"
    dry_run: str | None
    replaced: str | None = None  # the submission that was replaced


def plan_submission(job: Any, submission: str | None = None, *, target: str | None = None) -> tuple[str, dict[str, Any]]:
    """The submission id and the job's manifest labelled with it: a PyTorchJob, or a TrainJob
    when ``target``, else the job's target, else ``FERRY_TARGET`` says so."""
    from ferry.render import render_spec

    submission = submission or new_submission_id()
    (rendered,) = render_spec(job, target=target)
    return submission, with_submission(rendered.doc, submission)


def submit(cluster: Cluster, job: Any, manifest: dict[str, Any], submission: str, *, dry_run: bool = False,
           replace: bool = False, force_conflicts: bool = False, tracking_uri: str | None = None,
           say: Callable[[str], None] = lambda line: None, replace_timeout_s: float = 300,
           poll_s: float = 1.0, field_manager: str = FIELD_MANAGER) -> Submitted:
    """Apply ``manifest`` (one submission of ``job``: a PyTorchJob or a TrainJob) and what it
    needs; see the module's docstring for what happens when the job already exists."""
    kind = kind_of(manifest)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    applied: list[str] = []
    existing = cluster.find(kind, name, namespace)
    replaced = replaced_phase = None
    configmap = _tracking_configmap(cluster, job, namespace, tracking_uri)
    if kind is TRAINJOB:
        _check_runtime(cluster, manifest)
    objects = ([configmap] if configmap is not None else []) + [manifest]
    if existing is not None:
        state = JobState.of(existing)
        what = (f"{kind.kind} {name!r} in namespace {namespace!r} already exists (submission "
                f"{state.submission or 'unknown'}, {state.phase}")
        if not replace:
            if state.finished:
                raise Conflict(f"{what}, finished): a finished job is never reused; `ferry submit --replace` deletes "
                               f"it and submits anew (its MLflow run and checkpoints stay), or `ferry delete {name}` "
                               "first", reason="JobExists")
            raise Conflict(f"{what}, age {state.age()}): it is still running; follow it with `ferry status {name}` or "
                           f"`ferry logs {name} --follow`, or replace it with `ferry submit --replace`",
                           reason="JobExists")
        replaced, replaced_phase = state.submission or "unknown", state.phase
    # The API server judges every object first (RBAC, schema, admission, field ownership), so a
    # refusal changes nothing: a job being replaced is only deleted once its successor is accepted.
    for obj in objects:
        cluster.apply(obj, dry_run=True, force=force_conflicts or (replaced is not None and obj is manifest),
                      field_manager=field_manager)
    if dry_run:
        applied = [f"{obj['kind']} {namespace}/{obj['metadata']['name']}" for obj in objects]
        return Submitted(name, namespace, submission, applied, "server", replaced)
    if replaced is not None:
        say(f"deleting {kind.kind} {namespace}/{name} (submission {replaced}, {replaced_phase}) to replace it")
        delete_job(cluster, name, namespace, kind=kind, wait=True, timeout_s=replace_timeout_s, poll_s=poll_s)
    for obj in objects:
        cluster.apply(obj, force=force_conflicts, field_manager=field_manager)
        applied.append(f"{obj['kind']} {namespace}/{obj['metadata']['name']}")
    return Submitted(name, namespace, submission, applied, None, replaced)


def _check_runtime(cluster: Cluster, manifest: dict[str, Any]) -> None:
    """The runtime a TrainJob names must exist: without it the Trainer's webhook refuses the job
    (or, where the webhook does not run, the job never starts). Someone who may not read
    runtimes is not stopped here; the Trainer still judges."""
    ref = manifest["spec"]["runtimeRef"]
    kind = TRAINING_RUNTIME_KINDS.get(ref.get("kind") or CLUSTERTRAININGRUNTIME.kind, CLUSTERTRAININGRUNTIME)
    namespace = manifest["metadata"]["namespace"] if kind.namespaced else None
    try:
        found = cluster.find(kind, ref["name"], namespace)
    except Forbidden:
        return
    if found is None:
        where = f" in namespace {namespace!r}" if namespace else ""
        install = ("install the Trainer's runtimes (kubectl apply --server-side -k \"https://github.com/kubeflow/"
                   "trainer.git/manifests/overlays/runtimes?ref=v2.3.0\")" if not kind.namespaced
                   else f"create it{where}")
        raise NotFound(f"{kind.kind} {ref['name']!r}, the runtime the TrainJob names, does not exist{where}: {install}, "
                       "or name another with TrainingJob(runtime=...); `kubectl get clustertrainingruntimes` lists "
                       "those there are", reason="RuntimeNotFound")


def tracking_configmap(job: Any, namespace: str, tracking_uri: str) -> dict[str, Any]:
    """The ConfigMap holding ``tracking_uri`` where ``job`` reads it (refused when the job reads
    its tracking URI from a Secret: Ferry never writes Secrets)."""
    ref = getattr(getattr(job, "tracking", None), "uri_from", None)
    if ref is None or getattr(ref, "kind", None) != "configmap":
        where = f"Secret {ref.name!r}" if ref is not None else "nowhere (the job has no tracking)"
        raise Rejected(f"--tracking-uri sets a ConfigMap, but this job reads its tracking URI from {where}; "
                       "put the URI there instead", reason="TrackingFromSecret")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ref.name, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "data": {ref.key: tracking_uri}}


# helm/ferry/values.yaml: the tracking ConfigMap the chart creates, in its release namespace and in
# every namespace tracking.extraNamespaces lists
CHART_CONFIGMAP, CHART_KEY = "ferry-mlflow", "tracking-uri"


def chart_creates(name: str, key: str, namespace: str) -> str:
    """How Ferry's Helm chart comes to create ConfigMap ``name`` (with ``key``) in ``namespace``."""
    own = [f"tracking.configMapName={name}"] if name != CHART_CONFIGMAP else []
    own += [f"tracking.key={key}"] if key != CHART_KEY else []
    return (f"To have Ferry's Helm chart create it, add {namespace} to the Helm chart's value "
            "tracking.extraNamespaces (the chart creates the ConfigMap in its release namespace and in each one "
            f"listed there{'; with ' + ' and '.join(own) if own else ''}) and helm upgrade the release")


def _tracking_configmap(cluster: Cluster, job: Any, namespace: str, tracking_uri: str | None) -> dict[str, Any] | None:
    """The ConfigMap to apply for the job's tracking URI, or None: with ``tracking_uri``, unless the
    ConfigMap there already holds it. Without ``tracking_uri`` the
    ConfigMap the job reads must already exist (the Helm chart creates it): a pod would otherwise
    wait forever in CreateContainerConfigError. Secrets are never read or written (least
    privilege): a Secret reference is the user's to provide."""
    if tracking_uri is not None:
        wanted = tracking_configmap(job, namespace, tracking_uri)
        ref = job.tracking.uri_from
        existing = cluster.find(CONFIGMAP, ref.name, namespace)
        if existing is not None and (existing.get("data") or {}).get(ref.key) == tracking_uri:
            # Already says so (the Helm chart's ConfigMap, say): applying it would only contend
            # with its owner over the labels.
            return None
        return wanted
    ref = getattr(getattr(job, "tracking", None), "uri_from", None)
    if ref is None or getattr(ref, "kind", None) != "configmap":
        return None
    existing = cluster.find(CONFIGMAP, ref.name, namespace)
    if existing is None or ref.key not in (existing.get("data") or {}):
        what = (f"ConfigMap {ref.name!r} has no key {ref.key!r}" if existing is not None
                else f"ConfigMap {ref.name!r} (key {ref.key!r}) is missing")
        raise NotFound(f"{what} in namespace {namespace!r}: it holds the MLflow tracking URI the job reads. "
                       + chart_creates(ref.name, ref.key, namespace)
                       + "; or pass --tracking-uri http://<mlflow-service>:5000 to create it here",
                       reason="TrackingConfigMissing")
    return None


# ---- wait, logs --------------------------------------------------------------------------------
def wait_for(cluster: Cluster, name: str, namespace: str | None = None, *, timeout_s: float | None = None,
             poll_s: float = 2.0, on_state: Callable[[JobState], None] = lambda state: None,
             kind: Kind | None = None) -> JobState:
    """Poll the job until it finishes (or ``timeout_s`` passes: WaitTimeout), calling
    ``on_state`` with every state read."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    kind = job_kind(cluster, name, namespace, kind)
    while True:
        state = job_state(cluster, name, namespace, kind=kind)
        on_state(state)
        if state.finished:
            return state
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"{kind.kind} {name!r} is still {state.phase} after {timeout_s:g} s; it goes on: "
                              f"`ferry status {name}` to look again", reason="Timeout")
        time.sleep(poll_s)


def failed_replica_logs(cluster: Cluster, name: str, namespace: str | None = None,
                        lines: int = 20, *, kind: Kind | None = None) -> list[tuple[str, list[str]]]:
    """The last ``lines`` of each failed replica's log (the previous container's when it was
    restarted), master (or node 0) first."""
    out = []
    for pod in job_pods(cluster, name, namespace, kind=kind):
        status = pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        terminated_bad = any(((c.get("state") or {}).get("terminated") or {}).get("exitCode") not in (None, 0)
                             for c in containers)
        last_bad = any(((c.get("lastState") or {}).get("terminated") or {}).get("exitCode") not in (None, 0)
                       for c in containers)
        if status.get("phase") != "Failed" and not terminated_bad and not last_bad:
            continue
        pod_name = pod["metadata"]["name"]
        try:
            text = list(cluster.pod_log(pod_name, namespace, container=pod_container(pod), tail_lines=lines,
                                        previous=last_bad and not terminated_bad))
        except (NotFound, Rejected):
            text = ["(its log is gone)"]
        out.append((replica_name(pod), text))
    return out


def follow_logs(cluster: Cluster, name: str, namespace: str | None, emit: Callable[[str, str], None],
                stop: threading.Event, *, poll_s: float = 2.0, kind: Kind | None = None) -> None:
    """Stream every replica's log to ``emit(replica, line)`` until ``stop`` is set: a thread per
    pod, started as pods appear; a stream that breaks off (a restarted container, a dropped
    connection) is reopened from the last line it gave."""
    threads: dict[str, threading.Thread] = {}
    while not stop.is_set():
        try:
            kind = job_kind(cluster, name, namespace, kind)
            pods = job_pods(cluster, name, namespace, kind=kind)
        except NotFound:
            pods = []
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            started = any((c.get("state") or {}).get("running") or (c.get("state") or {}).get("terminated")
                          for c in (pod.get("status") or {}).get("containerStatuses") or [])
            if pod_name not in threads and started:
                thread = threading.Thread(target=_follow_one, args=(cluster, pod_name, pod_container(pod), namespace,
                                                                    replica_name(pod), emit, stop, poll_s), daemon=True)
                threads[pod_name] = thread
                thread.start()
        stop.wait(poll_s)
    for thread in threads.values():
        thread.join(timeout=poll_s + 1)


def _follow_one(cluster: Cluster, pod: str, container: str, namespace: str | None, replica: str,
                emit: Callable[[str, str], None], stop: threading.Event, poll_s: float) -> None:
    last: str | None = None
    while not stop.is_set():
        try:
            for line in cluster.pod_log(pod, namespace, container=container, follow=True, timestamps=True,
                                        since_time=last):
                stamp, _, text = line.partition(" ")
                if last is not None and stamp <= last:
                    continue  # already shown before the stream was reopened
                last = stamp
                emit(replica, text)
                if stop.is_set():
                    return
        except (NotFound, Rejected):
            return  # the pod is gone, or its container never started
        stop.wait(poll_s)


# ---- list, delete ------------------------------------------------------------------------------
def list_jobs(cluster: Cluster, namespace: str | None = None, *, all_namespaces: bool = False,
              skipped: Callable[[ClusterError], None] = lambda error: None) -> list[JobState]:
    """The PyTorchJobs and TrainJobs Ferry submitted (label ``app.kubernetes.io/managed-by=ferry``),
    newest first. A kind the cluster does not serve is passed over, as is one the caller may not
    list (``skipped`` is told why) while the other answers; when neither answers, the first
    error is raised."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    jobs, errors = [], []
    for kind in JOB_KINDS:
        try:
            jobs += cluster.list(kind, namespace, selector=selector, all_namespaces=all_namespaces)
        except (NotInstalled, Forbidden) as exc:
            errors.append(exc)
    if len(errors) == len(JOB_KINDS):
        refused = [e for e in errors if isinstance(e, Forbidden)]
        if refused:
            raise refused[0]
        raise _neither_installed()
    for error in errors:
        if isinstance(error, Forbidden):
            skipped(error)
    states = [JobState.of(job) for job in jobs]
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(states, key=lambda s: (s.created or epoch, s.name), reverse=True)


def delete_job(cluster: Cluster, name: str, namespace: str | None = None, *, wait: bool = False,
               timeout_s: float = 300, poll_s: float = 1.0, kind: Kind | None = None) -> Kind:
    """Delete the job, a PyTorchJob or a TrainJob (its pods, services and JobSet go with it);
    with ``wait``, return once it is gone. Returns its kind."""
    kind = job_kind(cluster, name, namespace, kind)
    cluster.delete(kind, name, namespace)
    if not wait:
        return kind
    deadline = time.monotonic() + timeout_s
    while cluster.find(kind, name, namespace) is not None:
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{kind.kind} {name!r} is still being deleted after {timeout_s:g} s (finalizers or pods "
                              f"that do not stop); look with `kubectl describe {kind.kind.lower()} {name}`",
                              reason="Timeout")
        time.sleep(poll_s)
    return kind
