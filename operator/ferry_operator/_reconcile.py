"""One pass over a ModelPipeline: the pipeline's state recomputed from the world (its status,
its job, MLflow, its InferenceService) and the next step taken, with Ferry's library doing every
step (``ferry.kube`` submits the job and applies the InferenceService, ``ferry.registry``
evaluates the gates and moves the alias, ``ferry.render`` writes the job and the InferenceService).

The job is a PyTorchJob (Kubeflow training operator) or a TrainJob (Kubeflow Trainer v2), as
``spec.job.target`` says, else as the operator's default (``FERRY_TARGET``, else pytorchjob) when
the training starts. The status records the kind (``jobKind``): every later pass of that training
finds, reads, supersedes and retries the job as that kind, whatever the default has become since.

    Pending → Training → Evaluating → Promoting → Promoted                (no spec.deployment)
                                                ↘ Deploying → Serving
                                                ↘ Canary → Serving, or → Rejected (rolled back)
    Failed / Rejected: until what the failed stage reads changes, or ``ferry.dev/retry`` does

Each stage has its own inputs, recorded in the status as a digest: training reruns only when
``spec.job`` changes (``jobDigest``), the gates when ``spec.promotion`` or ``spec.environment``
change (``promotionDigest``), the rollout when ``spec.deployment`` changes (``deploymentDigest``).
Once a stage's outcome is in the status, what produced it is not read again (a finished job is
never looked up twice). Every step is idempotent and keyed by what it leaves behind, so an
operator restarted anywhere picks up where the last one stopped.

A pass never sleeps and never raises to wait: it returns what it wrote and, when something it
waits for sends no event (MLflow, a canary's clock), how soon it wants to look again. Errors are
raised as they are; ``_worker`` classifies them (permanent or transient).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ferry.errors import PromotionRefused, SpecError
from ferry.kube import (
    INFERENCESERVICE,
    PYTORCHJOB,
    TRAINJOB,
    Cluster,
    JobState,
    Kind,
    ServiceState,
    apply_manifests,
    plan_submission,
    submit,
)
from ferry.registry._failures import mlflow_errors
from ferry.runtime import REGISTERED_TAG, SUBMISSION_TAG, submission_run
from ferry.spec import alias_for
from ferry_operator._crd import GROUP, KIND, VERSION
from ferry_operator._pipeline import Pipeline, job_name, job_spec_error

log = logging.getLogger("ferry.operator")
RETRY_ANNOTATION = f"{GROUP}/retry"
FINAL = ("Failed", "Rejected")
# status.jobKind -> the kind, and the TrainingJob.target that renders it
JOB_KINDS = {PYTORCHJOB.kind: PYTORCHJOB, TRAINJOB.kind: TRAINJOB}
TARGETS = {PYTORCHJOB.kind: "pytorchjob", TRAINJOB.kind: "trainjob"}


@dataclass
class Deps:
    """What a pass talks to (made by ``_main.build_deps`` from the environment)."""

    cluster: Cluster
    mlflow: Any  # an MlflowClient
    tracking_uri: str | None = None  # written to the job's tracking ConfigMap when set
    poll_s: float = 5.0  # how soon to look again at what sends no event (MLflow, a canary's clock)
    resync_s: float = 300.0  # how soon to look again at a pipeline nothing has woken
    actor: str = "ferry-operator"
    run_lookup_retries: int = 20
    prometheus_url: str | None = None  # where a canary's error rate is read (deployment.canary.maxErrorRate)
    clock: Any = time.time


@dataclass
class Step:
    """What a pass learned: the whole status as it should now read, the Events to post, and how
    soon to look again (None: when something changes, or at the next resync)."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    again_s: float | None = None

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append((type_, reason, message))

    def again(self, seconds: float) -> None:
        self.again_s = seconds if self.again_s is None else min(self.again_s, seconds)


def digest(*parts: Any) -> str:
    """A short, stable digest of JSON-able values (the inputs of a stage)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def submission_for(uid: str, generation: int, attempt: int = 0) -> str:
    """The submission id of one training of one pipeline object: the same on every pass and after
    a restart, different for a recreated pipeline of the same name and for each retry."""
    return f"{uid.replace('-', '')[:10].lower()}-g{generation}" + (f"-r{attempt}" if attempt else "")


def field_manager(namespace: str, name: str) -> str:
    """Each pipeline applies its children as a field manager of its own: two pipelines never
    silently take over each other's fields."""
    return f"ferry-pipeline/{namespace}/{name}"


def gate_results(gates: list[Any]) -> list[dict[str, Any]]:
    """The registry's gate results as the status records them."""
    return [{"name": g.gate, "passed": g.passed, "detail": g.detail} for g in gates]


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
                  generation: int) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set (its transition time kept while its status is unchanged)."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    when = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now()
    new = {"type": type_, "status": value, "reason": reason, "message": message[:32768], "lastTransitionTime": when,
           "observedGeneration": generation}
    if old is not None and {k: old.get(k) for k in new} == new:
        return conditions
    return [c for c in conditions if c.get("type") != type_] + [new]


class Stop(Exception):
    """The pass ends here: the status says why (a final phase, or waiting)."""


class Reconciler:
    """The stages of one pass; ``run`` returns the Step."""

    def __init__(self, deps: Deps, body: dict[str, Any], pipeline: Pipeline):
        self.deps, self.body, self.p = deps, body, pipeline
        self.spec: dict[str, Any] = body.get("spec") or {}
        self.step = Step(dict(body.get("status") or {}))
        self.status = self.step.status
        self.uid = body["metadata"]["uid"]
        self.stage = "Training"  # the stage running now: a permanent error fails this one

    # ---- status -------------------------------------------------------------------------------
    def put(self, **fields: Any) -> None:
        for key, value in fields.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.put(conditions=set_condition(list(self.status.get("conditions") or []), type_, ok, reason, message,
                                          self.p.generation))

    def phase(self, phase: str, message: str) -> None:
        self.put(phase=phase, message=message)

    def fail(self, phase: str, condition: str, reason: str, message: str, event: str | None = None) -> None:
        """End in ``phase`` (Failed or Rejected) at the current stage, until its inputs or the retry
        annotation change: the condition says ``reason``, a Warning Event ``event`` (or ``reason``)."""
        self.phase(phase, message)
        self.put(failedStage=self.stage, failedInputs=self.inputs(self.stage))
        self.condition(condition, False, reason, message)
        self.step.event(event or reason, message, "Warning")
        raise Stop()

    def inputs(self, stage: str) -> str:
        """The digest of what ``stage`` and the stages before it read from the spec."""
        parts: list[Any] = [self.spec.get("job")]
        if stage in ("Promoting", "Deploying", "Canary"):
            parts += [self.spec.get("promotion"), self.spec.get("environment")]
        if stage in ("Deploying", "Canary"):
            parts.append(self.spec.get("deployment"))
        if stage == "Spec":
            parts = [self.spec]
        return digest(*parts)

    # ---- the pass -----------------------------------------------------------------------------
    def run(self) -> Step:
        self.put(observedGeneration=self.p.generation, model=self.p.model)
        try:
            self.retry()
            if self.status.get("phase") in FINAL and self.status.get("failedStage"):
                if self.status.get("failedInputs") == self.inputs(self.status["failedStage"]):
                    self.keep_serving()
                    return self.step
                self.put(failedStage=None, failedInputs=None)  # what failed has changed: try again
            self.train()
            self.evaluate()
            self.promote()
            if self.p.deployment is None:
                self.phase("Promoted", f"{self.p.model} v{self.status['modelVersion']} holds "
                                       f"{alias_for(self.p.environment)!r} (no deployment)")
                return self.step
            self.serve()
        except Stop:
            pass
        return self.step

    def retry(self) -> None:
        """``ferry.dev/retry: <a new value>`` runs the failed stage again, the spec unchanged."""
        value = ((self.body["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION))
        if value is None or value == self.status.get("retry"):
            return
        self.put(retry=value)
        stage = self.status.get("failedStage")
        if self.status.get("phase") not in FINAL or not stage or stage == "Spec":
            return
        self.step.event("Retrying", f"{RETRY_ANNOTATION}={value}: running {stage} again")
        self.put(failedStage=None, failedInputs=None)
        if stage == "Training":
            self.put(jobDigest=None, attempt=int(self.status.get("attempt") or 0) + 1)
        elif stage == "Evaluating":
            self.put(runLookups=None)
        elif stage == "Promoting":
            self.put(promotionDigest=None)
        else:
            self.put(deploymentDigest=None, canary=None)

    # ---- training -----------------------------------------------------------------------------
    def train(self) -> None:
        p, cluster = self.p, self.deps.cluster
        self.stage = "Training"
        wanted = digest(self.spec.get("job"))
        if self.status.get("jobDigest") != wanted:
            self.start_training(wanted)
        kind = self.job_kind()
        self.put(jobKind=kind.kind)  # a status from before kinds were recorded: its job is a PyTorchJob
        if self.status.get("jobOutcome") == "Succeeded":
            return
        name, submission = self.status["jobName"], self.status["submission"]
        existing = cluster.find(kind, name, p.namespace)
        if existing is None:
            if self.status.get("phase") == "Training":
                self.fail("Failed", "Trained", "JobDeleted", f"{kind.kind} {name} disappeared before it finished; "
                          f"set the annotation {RETRY_ANNOTATION} to a new value to train again")
            self.submit(name, submission, kind)
            raise Stop()  # the job's own events wake the pipeline
        state = JobState.of(existing)
        if state.submission != submission:
            self.fail("Failed", "Trained", "JobConflict", f"{kind.kind} {name} exists but belongs to submission "
                      f"{state.submission}, not {submission}; delete it, or rename the pipeline")
        if not state.finished:
            told = "; ".join(str(part) for part in (state.message, state.progress) if part)
            self.phase("Training", f"{kind.kind} {name}: {state.phase}" + (f" ({told})" if told else ""))
            raise Stop()
        if not state.succeeded:
            why = state.message or state.reason or "no message"
            self.put(jobOutcome="Failed")
            self.fail("Failed", "Trained", state.reason or "JobFailed", f"{kind.kind} {name} failed: {why}",
                      event="TrainingFailed")
        self.put(jobOutcome="Succeeded")
        self.condition("Trained", True, "Succeeded", f"{kind.kind} {name} succeeded")
        self.step.event("Trained", f"{kind.kind} {name} succeeded")

    def job_kind(self) -> Kind:
        """The kind the current training was submitted as (``status.jobKind``; a PyTorchJob when the
        status predates the field: the operator submitted nothing else then)."""
        return JOB_KINDS.get(self.status.get("jobKind") or "", PYTORCHJOB)

    def target_kind(self) -> Kind:
        """What ``spec.job`` runs as when its training starts now: its target, else the operator's
        default (``FERRY_TARGET``, else pytorchjob). A job that kind cannot express is refused, with
        the field named (a SpecError: the training fails until spec.job changes)."""
        from ferry.render._output import job_target

        target = job_target(self.p.job)
        try:
            self.p.job.with_target(target)
        except SpecError as exc:
            refusal = job_spec_error(exc)
            if self.p.job.target is None:
                raise SpecError(f"{refusal} (spec.job names no target, so the operator's default applies: "
                                f"FERRY_TARGET={target}; set spec.job.target to choose)") from exc
            raise refusal from exc
        return TRAINJOB if target == "trainjob" else PYTORCHJOB

    def start_training(self, wanted: str) -> None:
        p = self.p
        kind = self.target_kind()
        attempt = int(self.status.get("attempt") or 0)
        name = job_name(p.name, p.generation) + (f"-r{attempt}" if attempt else "")
        previous, previous_kind = self.status.get("jobName"), self.job_kind()
        self.put(jobDigest=wanted, jobName=name, jobKind=kind.kind,
                 submission=submission_for(self.uid, p.generation, attempt), jobOutcome=None, runId=None,
                 modelVersion=None, runLookups=None, gates=None, promotionDigest=None)
        self.condition("Trained", False, "Pending", f"{kind.kind} {name} not submitted yet")
        self.phase("Pending", f"training {name} (submission {self.status['submission']})")
        if previous and (previous, previous_kind) != (name, kind):
            old = self.deps.cluster.find(previous_kind, previous, p.namespace)
            if old is not None and not JobState.of(old).finished:
                self.deps.cluster.delete(previous_kind, previous, p.namespace)
                self.step.event("Superseded", f"deleted {previous_kind.kind} {previous}: spec.job changed "
                                              f"(now {kind.kind} {name})")

    def submit(self, name: str, submission: str, kind: Kind) -> None:
        """Submit the training as ``kind`` (rendered for that target whatever the default is now)."""
        p, target = self.p, TARGETS[kind.kind]
        try:
            job = p.job.replace(name=name).with_target(target)
        except SpecError as exc:  # a retry's longer name, say, for a TrainJob's pods
            raise job_spec_error(exc) from exc
        _, manifest = plan_submission(job, submission, target=target)
        manifest["metadata"]["ownerReferences"] = [owner_reference(self.body)]
        submit(self.deps.cluster, job, manifest, submission, tracking_uri=self.deps.tracking_uri,
               field_manager=field_manager(p.namespace, p.name))
        self.phase("Training", f"{kind.kind} {name} submitted (submission {submission})")
        self.condition("Trained", False, "Submitted", f"{kind.kind} {name}, submission {submission}")
        self.step.event("Submitted", f"{kind.kind} {name} created for submission {submission}")

    # ---- evaluating ---------------------------------------------------------------------------
    def evaluate(self) -> None:
        """The submission's MLflow run and the version it registered (the job's rank 0 logged both;
        a sidecar may flush them a moment after the job ends: MLflow sends no event, so poll)."""
        p, client = self.p, self.deps.mlflow
        self.stage = "Evaluating"
        if self.status.get("modelVersion"):
            return
        submission = self.status["submission"]
        self.phase("Evaluating", f"looking up the run of submission {submission}")
        with mlflow_errors(f"finding the MLflow run of submission {submission}"):
            run = submission_run(client, p.job.experiment, submission)
            version = None
            if run is not None:
                name, _, version = run.data.tags.get(REGISTERED_TAG, "").rpartition("/")
                if name != p.model:
                    found = client.search_model_versions(f"name = '{p.model}' and run_id = '{run.info.run_id}'")
                    version = str(max(int(v.version) for v in found)) if found else None
        if run is None or not version:
            what = (f"no MLflow run in experiment {p.job.experiment!r} carries {SUBMISSION_TAG}={submission}"
                    if run is None else f"run {run.info.run_id} registered no version of {p.model!r}")
            lookups = int(self.status.get("runLookups") or 0) + 1
            self.put(runLookups=lookups)
            if lookups > self.deps.run_lookup_retries:
                self.fail("Failed", "Evaluated", "NoModel", f"the job succeeded but {what}; does its script call "
                          f"log_model (tracking.registerAs {p.model!r})?")
            self.phase("Evaluating", f"{what} (lookup {lookups} of {self.deps.run_lookup_retries})")
            self.step.again(self.deps.poll_s)
            raise Stop()
        self.put(runId=run.info.run_id, modelVersion=str(version), runLookups=None)
        self.condition("Evaluated", True, "Registered", f"run {run.info.run_id} registered {p.model} v{version}")
        self.step.event("Registered", f"run {run.info.run_id} registered {p.model} version {version}")

    # ---- promoting ----------------------------------------------------------------------------
    def promote(self) -> None:
        from ferry.registry import evaluate_gates, promote

        p, version = self.p, self.status["modelVersion"]
        self.stage = "Promoting"
        wanted = digest(self.spec.get("promotion"), self.spec.get("environment"), version)
        if self.status.get("promotionDigest") == wanted:
            return
        alias = alias_for(p.environment)
        self.phase("Promoting", f"{p.model} v{version}: evaluating the gates for {p.environment}")
        try:
            with mlflow_errors(f"promoting {p.model} v{version} to {p.environment}"):
                result = promote(self.deps.mlflow, p.promotion, p.model, version, p.environment, actor=self.deps.actor)
                gates = result.gates if result.changed else evaluate_gates(self.deps.mlflow, p.promotion, p.model,
                                                                           version, p.environment)
        except PromotionRefused as exc:
            self.put(gates=gate_results(exc.gates))
            self.fail("Rejected", "Promoted", "GatesFailed", str(exc).removesuffix(" (--force overrides, and is recorded)"),
                      event="Rejected")
        self.put(gates=gate_results(gates), promotionDigest=wanted)
        failed = [g for g in gates if not g.passed]
        if failed:  # it held the alias already (the gates changed since): say so, demote nothing
            message = (f"{p.model} v{version} holds {alias!r} but no longer passes: "
                       + "; ".join(f"{g.gate} gate failed: {g.detail}" for g in failed)
                       + f" (`ferry models rollback {p.model} --env {p.environment}` demotes it)")
            self.condition("Promoted", False, "GatesFailed", message)
            self.step.event("GatesFailed", message, "Warning")
            return
        detail = (f"{p.model} v{version} holds {alias!r} in {p.environment}"
                  + (f" (was v{result.from_version})" if result.changed and result.from_version else ""))
        self.condition("Promoted", True, "GatesPassed", detail)
        self.step.event("Promoted" if result.changed else "GatesPassed", detail)

    # ---- serving ------------------------------------------------------------------------------
    def isvc(self) -> dict[str, Any] | None:
        """The pipeline's InferenceService; a permanent failure when another pipeline owns it."""
        d = self.p.deployment
        assert d is not None
        existing = self.deps.cluster.find(INFERENCESERVICE, d.name, self.p.namespace)
        if existing is None:
            return None
        owners = [r for r in existing["metadata"].get("ownerReferences") or [] if r.get("controller")]
        if owners and owners[0].get("uid") != self.uid:
            owner = owners[0]
            self.fail("Failed", "Ready", "OwnedElsewhere", f"InferenceService {d.name} belongs to {owner.get('kind')} "
                      f"{owner.get('name')} (uid {owner.get('uid')}); give spec.deployment.name another value")
        return existing

    def apply(self, version: str, canary: int | None) -> None:
        from ferry.registry import resolve_model
        from ferry.render import render_inferenceservice

        p, d = self.p, self.p.deployment
        assert d is not None
        update: dict[str, Any] = {"model": f"models:/{p.model}/{version}", "canary_percent": canary}
        planned = self.planned(version)
        if planned is not None:
            update["autoscaling"] = d.autoscaling.model_copy(update=planned)
        pinned = d.model_copy(update=update)
        with mlflow_errors(f"resolving {pinned.model}"):
            storage = resolve_model(pinned.model, self.deps.mlflow)
        doc = render_inferenceservice(pinned, storage)
        doc["metadata"]["ownerReferences"] = [owner_reference(self.body)]
        apply_manifests(self.deps.cluster, [doc], field_manager=field_manager(p.namespace, p.name))

    def serve(self) -> None:
        p, d = self.p, self.p.deployment
        assert d is not None
        self.stage = "Deploying"
        version = self.status["modelVersion"]
        serving = self.status.get("servingVersion")
        wanted = digest(self.spec.get("deployment"), version)
        if d.plan is not None:
            self.plan_capacity(version)
        percent = d.canary_percent or p.promotion.canary_percent
        if serving not in (None, version) and d.mode == "serverless" and percent:
            return self.roll_out_canary(version, serving, percent, wanted)
        existing = self.isvc()
        applied = ServiceState.of(existing).model_version if existing is not None else None
        stale = existing is not None and "canaryTrafficPercent" in (existing.get("spec") or {}).get("predictor", {})
        if existing is None or applied != version or stale or self.status.get("deploymentDigest") != wanted:
            if existing is None and serving == version:
                self.reapply(version)
            else:
                self.apply(version, None)
                self.step.event("Deploying", f"InferenceService {d.name} serves {p.model} v{version}")
            self.put(deploymentDigest=wanted, inferenceService=d.name, canary=None)
            existing = self.isvc()
        self.watch_ready(existing, version)

    # ---- the capacity plan (spec.deployment.plan) ----------------------------------------------
    def planned(self, version: str) -> dict[str, Any] | None:
        """The Autoscaling values the capacity plan of ``version`` gives (None: no plan asked, or
        none recorded for that version): the status's plan when it is that version's, else a
        plan recorded in MLflow for it (a version served before, rolled back to)."""
        from ferry_operator import _plan

        d = self.p.deployment
        if d is None or d.plan is None:
            return None
        want = _plan.inputs(d, version)
        current = self.status.get("plan") or {}
        if current.get("digest") == digest(want):
            return _plan.values_of(current)
        found = _plan.recorded(self.deps.mlflow, self.p.model, version, want)
        return _plan.autoscaling(found[1], d.autoscaling.metric, d.mode) if found is not None else None

    def plan_capacity(self, version: str) -> None:
        """``status.plan`` for ``version`` as ``spec.deployment.plan`` asks, or Stop while its Job
        runs: a matching plan recorded for the version is used; otherwise ``ferry plan`` runs as a
        Job, and its recorded plan is read once the Job completes. A failed Job fails the stage
        (PlanFailed); ``ferry.dev/retry`` runs it again."""
        from ferry.errors import ConfigError
        from ferry_operator import _plan

        p, d, cluster = self.p, self.p.deployment, self.deps.cluster
        assert d is not None and d.plan is not None
        want = _plan.inputs(d, version)
        wanted = digest(want)
        if (self.status.get("plan") or {}).get("digest") == wanted:
            return
        name = _plan.job_name(p.name, version)
        found = _plan.recorded(self.deps.mlflow, p.model, version, want)
        job = None
        if found is None:
            if len(name) > 63:
                self.fail("Failed", "Planned", "PlanFailed", f"the capacity plan's Job would be named {name!r}, "
                          f"longer than Kubernetes' 63 characters; give the pipeline a shorter name")
            job = cluster.find(_plan.JOB, name, p.namespace)
            if job is not None and self.stale_plan_job(job, wanted):
                cluster.delete(_plan.JOB, name, p.namespace)
                self.phase("Deploying", f"planning capacity of v{version}: replacing Job {name}")
                self.step.again(self.deps.poll_s)
                raise Stop()
            if job is not None and job["metadata"].get("deletionTimestamp"):
                self.phase("Deploying", f"planning capacity of v{version}: waiting until the last Job {name} is gone")
                self.step.again(self.deps.poll_s)
                raise Stop()
            if job is None:
                self.start_plan_job(name, version, wanted)
                raise Stop()
            outcome, told = _plan.job_outcome(job)
            if outcome == "Running":
                self.phase("Deploying", f"planning capacity of v{version} (Job {name}: {told})")
                self.condition("Planned", False, "Planning", f"Job {name} measures v{version}")
                raise Stop()
            if outcome == "Failed":
                self.put(planFailedJob=job["metadata"]["uid"])
                self.fail("Failed", "Planned", "PlanFailed", f"the capacity plan of {p.model} v{version} failed: Job "
                          f"{name}: {told or 'no message'} (its log says why: kubectl logs -n {p.namespace} job/{name}); "
                          f"set the annotation {RETRY_ANNOTATION} to a new value to plan again")
            found = _plan.recorded(self.deps.mlflow, p.model, version, want)
            if found is None:
                self.put(planFailedJob=job["metadata"]["uid"])
                self.fail("Failed", "Planned", "PlanFailed", f"Job {name} completed but {p.model} v{version} has no "
                          f"plan recorded for slo {d.plan.slo_p99_ms:g} ms, peak {d.plan.peak_rps:g}/s and headroom "
                          f"{d.plan.headroom:g} with the Deployment's settings (tag ferry.plan.run_id); set the "
                          f"annotation {RETRY_ANNOTATION} to a new value to plan again")
        run_id, doc = found
        try:
            values = _plan.autoscaling(doc, d.autoscaling.metric, d.mode)
        except ConfigError as exc:
            self.fail("Failed", "Planned", "PlanFailed", f"the capacity plan of {p.model} v{version} (run {run_id}) "
                      f"gives no autoscaling: {exc}")
        self.put(plan=_plan.status_of(run_id, version, values, wanted), planFailedJob=None)
        figures = (f"min {values['min_replicas']}, max {values['max_replicas']} replicas, {values['metric']} target "
                   f"{values['target']}")
        how = f"Job {name}" if job is not None else "recorded before"
        self.condition("Planned", True, "Planned", f"{p.model} v{version}: {figures} (run {run_id}, {how})")
        self.step.event("Planned", f"{p.model} v{version}: {figures}, for p99 <= {d.plan.slo_p99_ms:g} ms at "
                                   f"{d.plan.peak_rps:g} requests/s (MLflow run {run_id}, {how})")

    def stale_plan_job(self, job: dict[str, Any], wanted: str) -> bool:
        """A Job of this name that is not the one to run now: made for other inputs, or its failure
        reported already (the stage is being retried)."""
        from ferry_operator import _plan

        meta = job["metadata"]
        if meta.get("deletionTimestamp"):
            return False
        if (meta.get("annotations") or {}).get(_plan.DIGEST_ANNOTATION) != wanted:
            return True
        return meta.get("uid") == self.status.get("planFailedJob")

    def start_plan_job(self, name: str, version: str, wanted: str) -> None:
        from ferry.kube._errors import Action
        from ferry_operator import _plan

        p, d = self.p, self.p.deployment
        assert d is not None
        doc = _plan.render_job(name, p.namespace, p.model, version, d, p.job.tracking, owner_reference(self.body),
                               wanted)
        self.deps.cluster.call("POST", _plan.JOB.path(p.namespace), Action("create", _plan.JOB, p.namespace, name),
                               body=doc)
        self.phase("Deploying", f"planning capacity of v{version} (Job {name})")
        self.condition("Planned", False, "Planning", f"Job {name} measures v{version}")
        self.step.event("Planning", f"Job {name} measures {p.model} v{version} against p99 <= "
                                    f"{d.plan.slo_p99_ms:g} ms (ferry plan)")

    def watch_ready(self, isvc: dict[str, Any] | None, version: str) -> None:
        """Serving once KServe says Ready for the applied generation; Ready=False (KServe's reason)
        whenever it is not."""
        p, d = self.p, self.p.deployment
        assert d is not None
        state = ServiceState.of(isvc) if isvc is not None else None
        if state is None or not state.current or not state.ready:
            why = state.why_not_ready() if state is not None else "not created yet"
            self.condition("Ready", False, state.ready_reason() if state is not None else "Pending", why)
            if self.status.get("servingVersion") == version:  # it served, and no longer does
                self.phase("Serving", f"{p.model} v{version}: InferenceService {d.name} is not ready: {why}")
            else:
                self.phase("Deploying", f"InferenceService {d.name}: waiting until it is ready ({why})")
            raise Stop()
        if self.status.get("phase") != "Serving" or self.status.get("servingVersion") != version:
            self.step.event("Serving", f"{p.model} v{version} serves at {state.url}")
        self.put(url=state.url, servingVersion=version, traffic=f"v{version}=100%")
        self.condition("Ready", True, "Serving", f"{p.model} v{version} at {state.url}")
        self.phase("Serving", f"{p.model} v{version} serves at {state.url}")

    def keep_serving(self) -> None:
        """A failed or rejected pipeline still keeps its serving version served (applied again if
        its InferenceService is gone)."""
        serving, d = self.status.get("servingVersion"), self.p.deployment
        if not serving or d is None:
            return
        if self.deps.cluster.find(INFERENCESERVICE, d.name, self.p.namespace) is None:
            self.reapply(serving)

    def reapply(self, version: str) -> None:
        """The InferenceService serving ``version`` was deleted: apply it again, and say so."""
        d = self.p.deployment
        assert d is not None
        self.apply(version, None)
        self.step.event("Reapplied", f"InferenceService {d.name} was gone; applied {self.p.model} v{version} again",
                        "Warning")

    def roll_out_canary(self, version: str, serving: str, percent: int, wanted: str) -> None:
        from ferry_operator._canary import Canary

        self.stage = "Canary"
        Canary(self, version, serving, percent, wanted).run()


def reconcile(deps: Deps, body: dict[str, Any], pipeline: Pipeline) -> Step:
    """One pass: the Step (status, events, when to look again). Errors propagate."""
    return Reconciler(deps, body, pipeline).run()

