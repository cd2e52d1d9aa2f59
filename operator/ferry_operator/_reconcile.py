"""One pass over a ModelPipeline: where it stands and the next step, with Ferry's library doing
every step (``ferry.kube`` submits and reads the job and applies the InferenceService,
``ferry.registry`` evaluates the gates and moves the alias, ``ferry.render`` writes the
InferenceService). No second code path.

    Pending → Training → Evaluating → Promoting → Deploying → Serving
                  ↘ Failed      ↘ Failed   ↘ Rejected   (a spec change starts again)

Each step is idempotent and keyed by what it leaves behind, so an operator restarted anywhere
picks up where the last one stopped: the PyTorchJob is found by its name and submission label
before one is created, the run and model version are found by the submission's tag (the job
registered the version; the operator never registers one), a promotion of the version that
already holds the alias changes nothing, and the InferenceService is applied server-side.
Waiting states raise :class:`Wait`, which the kopf handler turns into
``kopf.TemporaryError(delay=)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ferry.errors import FerryError, PromotionRefused
from ferry.kube import (
    INFERENCESERVICE,
    PYTORCHJOB,
    Cluster,
    JobState,
    ServiceState,
    apply_manifests,
    plan_submission,
    submit,
)
from ferry.runtime import REGISTERED_TAG, SUBMISSION_TAG, submission_run
from ferry_operator._crd import GROUP, KIND, VERSION
from ferry_operator._pipeline import Pipeline, job_name

log = logging.getLogger("ferry.operator")


class Wait(Exception):
    """Not done yet; look again in ``delay`` seconds."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


@dataclass
class Deps:
    """What a reconcile pass talks to (made by ``_main.build_deps`` from the environment: the
    cluster as kubectl or the pod's service account reaches it, and the MLflow server)."""

    cluster: Cluster
    mlflow: Any  # an MlflowClient
    tracking_uri: str | None = None  # written to the job's tracking ConfigMap when set
    poll_s: float = 15.0
    actor: str = "ferry-operator"
    run_lookup_retries: int = 20


@dataclass
class Step:
    """What a pass learned: status fields to write, events to post."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append((type_, reason, message))


def submission_for(uid: str, generation: int) -> str:
    """The submission id of one generation of one pipeline object: the same on every pass and
    after a restart, different for a recreated pipeline of the same name."""
    return f"{uid.replace('-', '')[:10].lower()}-g{generation}"


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def gate_results(gates: list[Any]) -> list[dict[str, Any]]:
    """The registry's gate results as the status records them."""
    return [{"name": g.gate, "passed": g.passed, "detail": g.detail} for g in gates]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
                  generation: int) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set (its transition time kept when its status is unchanged)."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    when = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now()
    new = {"type": type_, "status": value, "reason": reason, "message": message[:32768], "lastTransitionTime": when,
           "observedGeneration": generation}
    return [c for c in conditions if c.get("type") != type_] + [new]


class Reconciler:
    """The steps of one pass; ``run`` returns the Step or raises Wait."""

    def __init__(self, deps: Deps, body: dict[str, Any], pipeline: Pipeline):
        self.deps, self.body, self.p = deps, body, pipeline
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.step = Step()
        self.uid = body["metadata"]["uid"]
        self.was = self.status.get("phase")  # the phase this pass started from

    # ---- status -------------------------------------------------------------------------------
    def put(self, **fields: Any) -> None:
        self.status.update(fields)
        self.step.status.update(fields)

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        conditions = set_condition(list(self.status.get("conditions") or []), type_, ok, reason, message,
                                   self.p.generation)
        self.put(conditions=conditions)

    def phase(self, phase: str, message: str) -> None:
        if self.status.get("phase") != phase:
            log.info("%s/%s: %s (%s)", self.p.namespace, self.p.name, phase, message)
        self.put(phase=phase, message=message)

    # ---- the pass -----------------------------------------------------------------------------
    def run(self) -> Step:
        p = self.p
        submission = submission_for(self.uid, p.generation)
        if self.status.get("observedGeneration") != p.generation or self.status.get("submission") != submission:
            self.start_generation(submission)
        phase = self.status.get("phase")
        if phase in ("Serving", "Failed", "Rejected") and self.status.get("observedGeneration") == p.generation:
            if phase != "Serving":
                return self.step
            return self.check_serving()
        state = self.train(submission)
        if state is None:
            return self.step
        _, version = self.find_run(submission)
        if not self.promote(version):
            return self.step
        return self.deploy(version)

    def start_generation(self, submission: str) -> None:
        p = self.p
        previous = self.status.get("jobName")
        self.put(observedGeneration=p.generation, submission=submission, jobName=job_name(p.name, p.generation),
                 model=p.model, runId=None, modelVersion=None, gates=[], url=self.status.get("url"))
        self.condition("Trained", False, "Pending", f"submission {submission} not started yet")
        self.phase("Pending", f"generation {p.generation}: training submission {submission}")
        if previous and previous != job_name(p.name, p.generation):
            old = self.deps.cluster.find(PYTORCHJOB, previous, p.namespace)
            if old is not None and not JobState.of(old).finished:
                self.deps.cluster.delete(PYTORCHJOB, previous, p.namespace)
                self.step.event("Superseded", f"deleted PyTorchJob {previous}: the spec changed (generation {p.generation})")

    def train(self, submission: str) -> JobState | None:
        """Create the job when it is missing; Wait while it runs; None (and phase Failed) when it failed."""
        p, cluster = self.p, self.deps.cluster
        name = job_name(p.name, p.generation)
        existing = cluster.find(PYTORCHJOB, name, p.namespace)
        if existing is None:
            if self.status.get("phase") not in (None, "Pending"):
                self.phase("Failed", f"PyTorchJob {name} disappeared before it finished; change the spec to train anew")
                self.condition("Trained", False, "JobDeleted", self.status["message"])
                self.step.event("JobDeleted", self.status["message"], "Warning")
                return None
            _, manifest = plan_submission(p.job, submission)
            manifest["metadata"]["ownerReferences"] = [owner_reference(self.body)]
            submit(cluster, p.job, manifest, submission, tracking_uri=self.deps.tracking_uri)
            self.phase("Training", f"PyTorchJob {name} submitted (submission {submission})")
            self.condition("Trained", False, "Submitted", f"PyTorchJob {name}, submission {submission}")
            self.step.event("Submitted", f"PyTorchJob {name} created for submission {submission}")
            raise Wait(f"PyTorchJob {name} submitted", self.deps.poll_s)
        state = JobState.of(existing)
        if state.submission != submission:
            self.phase("Failed", f"PyTorchJob {name} exists but belongs to submission {state.submission}, not "
                                 f"{submission}; delete it, or rename the pipeline")
            self.condition("Trained", False, "JobConflict", self.status["message"])
            self.step.event("JobConflict", self.status["message"], "Warning")
            return None
        if not state.finished:
            self.phase("Training", f"PyTorchJob {name}: {state.phase}" + (f" ({state.message})" if state.message else ""))
            raise Wait(f"PyTorchJob {name} is {state.phase}", self.deps.poll_s)
        if not state.succeeded:
            why = state.message or state.reason or "no message"
            self.phase("Failed", f"PyTorchJob {name} failed: {why}")
            self.condition("Trained", False, state.reason or "JobFailed", why)
            self.step.event("TrainingFailed", f"PyTorchJob {name} failed: {why}", "Warning")
            return None
        if self.was in (None, "Pending", "Training"):
            self.step.event("Trained", f"PyTorchJob {name} succeeded")
        self.condition("Trained", True, "Succeeded", f"PyTorchJob {name} succeeded")
        return state

    def find_run(self, submission: str) -> tuple[str, str]:
        """The submission's MLflow run and the model version it registered (the job's rank 0
        logged both; a sidecar may flush them a moment after the job ends)."""
        p, client = self.p, self.deps.mlflow
        if self.status.get("runId") and self.status.get("modelVersion"):
            return self.status["runId"], self.status["modelVersion"]
        self.phase("Evaluating", f"looking up the run of submission {submission}")
        run = submission_run(client, p.job.experiment, submission)
        version = None
        if run is not None:
            name, _, version = run.data.tags.get(REGISTERED_TAG, "").rpartition("/")
            if name != p.model:
                found = client.search_model_versions(f"name = '{p.model}' and run_id = '{run.info.run_id}'")
                version = str(max(int(v.version) for v in found)) if found else None
        if run is None or not version:
            what = (f"no MLflow run in experiment {p.job.experiment!r} carries {SUBMISSION_TAG}={submission}" if run is None
                    else f"run {run.info.run_id} registered no version of {p.model!r}")
            lookups = int(self.status.get("runLookups") or 0) + 1
            if lookups > self.deps.run_lookup_retries:
                self.phase("Failed", f"the job succeeded but {what}; does its script call log_model (tracking.registerAs "
                                     f"{p.model!r})?")
                self.condition("Evaluated", False, "NoModel", self.status["message"])
                self.step.event("NoModel", self.status["message"], "Warning")
                raise _Done()
            self.put(runLookups=lookups)
            raise Wait(what, self.deps.poll_s)
        run_id = run.info.run_id
        self.put(runId=run_id, modelVersion=str(version), runLookups=None)
        self.step.event("Registered", f"run {run_id} registered {p.model} version {version}")
        return run_id, str(version)

    def promote(self, version: str) -> bool:
        from ferry.registry import promote

        p = self.p
        if self.was not in ("Deploying", "Serving"):
            self.phase("Promoting", f"{p.model} v{version}: evaluating the gates for {p.environment}")
        try:
            result = promote(self.deps.mlflow, p.promotion, p.model, version, p.environment, actor=self.deps.actor)
        except PromotionRefused as exc:
            self.put(gates=gate_results(exc.gates))
            self.phase("Rejected", str(exc).removesuffix(" (--force overrides, and is recorded)"))
            self.condition("Promoted", False, "GatesFailed", self.status["message"])
            self.step.event("Rejected", self.status["message"], "Warning")
            return False
        if result.gates:
            self.put(gates=gate_results(result.gates))
        detail = (f"{p.model} v{version} holds {result.alias!r} in {p.environment}"
                  + (f" (was v{result.from_version})" if result.changed and result.from_version else ""))
        if result.changed:
            self.step.event("Promoted", detail)
        self.condition("Promoted", True, "GatesPassed", detail)
        return True

    def deploy(self, version: str) -> Step:
        from ferry.registry import resolve_model
        from ferry.render import render_inferenceservice

        p, cluster = self.p, self.deps.cluster
        d = p.deployment
        assert d is not None
        existing = cluster.find(INFERENCESERVICE, d.name, p.namespace)
        applied = ServiceState.of(existing).model_version if existing is not None else None  # the version it serves
        serving_other = applied not in (None, version)
        canary = (d.canary_percent or p.promotion.canary_percent) if serving_other and d.mode == "serverless" else None
        pinned = d.model_copy(update={"model": f"models:/{p.model}/{version}", "canary_percent": canary})
        doc = render_inferenceservice(pinned, resolve_model(pinned.model, self.deps.mlflow))
        doc["metadata"]["ownerReferences"] = [owner_reference(self.body)]
        if self.was != "Deploying" or applied != version:
            apply_manifests(cluster, [doc])
            how = f" as a {canary}% canary" if canary else ""
            self.step.event("Deploying", f"InferenceService {d.name} serves {p.model} v{version}{how}")
        self.put(inferenceService=d.name)
        self.phase("Deploying", f"InferenceService {d.name}: waiting until it is ready")
        return self.check_serving(wait=True)

    def check_serving(self, wait: bool = False) -> Step:
        p, d = self.p, self.p.deployment
        assert d is not None
        isvc = self.deps.cluster.find(INFERENCESERVICE, d.name, p.namespace)
        if isvc is None:
            if not wait:  # deleted while serving: deploy again
                self.put(phase="Deploying")
                return self.deploy(self.status["modelVersion"])
            raise Wait(f"InferenceService {d.name} not found yet", self.deps.poll_s)
        state = ServiceState.of(isvc)
        if not state.ready:
            why = next((c.message or c.reason for c in state.conditions if c.type == "Ready"), "")
            self.condition("Ready", False, "NotReady", why or "waiting for the predictor")
            raise Wait(f"InferenceService {d.name} not ready{': ' + why if why else ''}", self.deps.poll_s)
        if self.status.get("phase") != "Serving":
            self.step.event("Serving", f"{p.model} v{self.status.get('modelVersion')} serves at {state.url}")
        self.put(url=state.url)
        self.condition("Ready", True, "Serving", f"{p.model} v{self.status.get('modelVersion')} at {state.url}")
        self.phase("Serving", f"{p.model} v{self.status.get('modelVersion')} serves at {state.url}")
        return self.step


class _Done(Exception):
    """The pass ended in a final phase; the status says why."""


def reconcile(deps: Deps, body: dict[str, Any], pipeline: Pipeline) -> tuple[Step, Wait | None]:
    """One pass: the Step (status to write, events) and the Wait it ended on, if any."""
    reconciler = Reconciler(deps, body, pipeline)
    try:
        return reconciler.run(), None
    except Wait as wait:
        return reconciler.step, wait
    except _Done:
        return reconciler.step, None
    except FerryError as exc:  # a cluster or registry error: say it, try again later
        reconciler.condition("Ready", False, type(exc).__name__, str(exc).splitlines()[0])
        reconciler.step.event("Retrying", str(exc).splitlines()[0], "Warning")
        return reconciler.step, Wait(str(exc), deps.poll_s)

