"""One worker per ModelPipeline: it runs a pass (``_reconcile``) whenever it is woken (the
pipeline changed, or one of its children did) and at the latest after ``resync_s``; it writes what
the pass learned to the pipeline's status (only what changed), posts its Events, logs each phase
change, and decides how an error is met:

- permanent (an invalid spec, 403 Forbidden, 422/400 Rejected, a refused configuration, a field
  owned by another manager, the registry refusing): the phase is Failed with the reason, once;
  nothing is tried again until the spec or the ``ferry.dev/retry`` annotation changes;
- transient (MLflow unreachable or answering 5xx/429, the API server unreachable or 429/5xx, an
  object changed under us, a CRD or ConfigMap not there yet): the pass is tried again with
  exponential backoff (``poll_s`` doubling, at most ``resync_s``); condition ``Ready=False``
  names what it waits for; one Warning Event and one log line per episode, not per attempt.

The status in memory is the worker's own (it is the only writer): a pass never reads its own
write back from a watch event that has not arrived yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ferry.errors import (
    ClusterError,
    ClusterUnreachable,
    Conflict,
    ConfigError,
    FerryError,
    Forbidden,
    NotFound,
    NotInstalled,
    PromotionConflict,
    RegistryError,
    Rejected,
    SpecError,
)
from ferry.kube import Kind
from ferry.kube._errors import Action
from ferry_operator._crd import GROUP, KIND, PLURAL, VERSION
from ferry_operator._pipeline import parse
from ferry_operator._reconcile import Deps, Reconciler, Step, digest, now, set_condition

log = logging.getLogger("ferry.operator")
PIPELINE = Kind(KIND, GROUP, VERSION, PLURAL)
EVENT = Kind("Event", "", "v1", "events")


@dataclass(frozen=True)
class Failure:
    """An error as the pipeline reports it."""

    transient: bool
    reason: str  # a CamelCase word for the condition and the Event
    message: str


def classify(exc: BaseException) -> Failure:
    """Whether ``exc`` may pass by itself (transient) or needs a person (permanent), and why."""
    lines = [line.strip().removeprefix("- ") for line in str(exc).strip().splitlines() if line.strip()]
    message = "; ".join(lines).replace(":;", ":") if lines else type(exc).__name__  # every cause, on one line
    if isinstance(exc, ClusterError):
        status = getattr(exc, "status", None)
        if isinstance(exc, ClusterUnreachable) or status in (429, 500, 502, 503, 504):
            return Failure(True, "ClusterUnavailable", message)
        if isinstance(exc, Conflict):
            owned = getattr(exc, "reason", None) == "FieldManagerConflict"
            return Failure(not owned, "FieldConflict" if owned else "Conflict", message)
        if isinstance(exc, (NotFound, NotInstalled)):
            return Failure(True, type(exc).__name__, message)
        if isinstance(exc, Forbidden):
            return Failure(False, "Forbidden", message)
        if isinstance(exc, Rejected) and getattr(exc, "reason", None) == "QuotaExceeded":
            return Failure(True, "QuotaExceeded", message)  # it passes once other work there finishes
        if isinstance(exc, Rejected):
            return Failure(False, "Rejected", message)
        return Failure(True, "ClusterError", message)
    if isinstance(exc, PromotionConflict):
        return Failure(True, "PromotionLocked", message)
    if isinstance(exc, RegistryError):
        return Failure(exc.transient, "MlflowUnavailable" if exc.transient else "RegistryRefused", message)
    if isinstance(exc, FerryError) and getattr(exc, "transient", False):
        return Failure(True, type(exc).__name__, message)
    if isinstance(exc, SpecError):
        return Failure(False, "InvalidSpec", message)
    if isinstance(exc, ConfigError):
        return Failure(False, "Refused", message)
    if isinstance(exc, FerryError):
        return Failure(False, type(exc).__name__, message)
    return Failure(True, "InternalError", f"{type(exc).__name__}: {message}")


def plain(value: Any) -> Any:
    """kopf's body views as plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Worker:
    def __init__(self, deps: Deps, body: dict[str, Any], metrics: Any = None):
        meta = body["metadata"]
        self.deps, self.metrics = deps, metrics
        self.namespace, self.name = meta.get("namespace") or "default", meta["name"]
        self.key = f"{self.namespace}/{self.name}"
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.failures = 0  # transient failures in a row: the backoff
        self.written: str | None = None  # the resourceVersion of the worker's last status write
        self.gone = False  # the pipeline was deleted: the worker ends

    # ---- one pass -----------------------------------------------------------------------------
    def run_pass(self, body: dict[str, Any]) -> float:
        """A pass over ``body`` (a snapshot of the pipeline); returns the seconds until the next
        one unless something wakes the worker first."""
        obj = {"metadata": body["metadata"], "spec": body.get("spec") or {}, "status": dict(self.status)}
        before = self.status.get("phase")
        try:
            step = self.reconcile(obj)
            outcome = ("invalid" if step.status.get("failedStage") == "Spec" else
                       "waiting" if step.again_s is not None else "done")
            self.observe(before, step.status.get("phase"), outcome)
            self.write(obj, step)
        except NotFound as exc:
            if exc.reason == "ObjectNotFound" and "ModelPipeline" in str(exc):
                self.gone = True  # deleted under the pass: nothing to write to
                return 0.0
            return self.failed(obj, exc)
        except Exception as exc:  # noqa: BLE001 - every error is met here: classified, reported, retried or not
            return self.failed(obj, exc)
        if self.failures:
            log.info("%s: recovered after %d failed attempt(s)", self.key, self.failures)
            self.failures = 0
        return min(step.again_s, self.deps.resync_s) if step.again_s is not None else self.deps.resync_s

    def reconcile(self, obj: dict[str, Any]) -> Step:
        spec_digest = digest(obj["spec"])
        try:
            pipeline = parse(obj)
        except SpecError as exc:
            step = Step(dict(obj["status"]))
            if step.status.get("failedStage") == "Spec" and step.status.get("failedInputs") == spec_digest:
                return step  # refused already; nothing changes until the spec does
            message = str(exc)
            generation = int(obj["metadata"].get("generation") or 1)
            step.status.update(phase="Failed", message="invalid spec: " + message.replace("\n", "; "),
                               observedGeneration=generation, failedStage="Spec", failedInputs=spec_digest)
            step.status["conditions"] = set_condition(list(step.status.get("conditions") or []), "Ready", False,
                                                      "InvalidSpec", message, generation)
            step.event("InvalidSpec", message.replace("\n", "; "), "Warning")
            return step
        reconciler = Reconciler(self.deps, obj, pipeline)
        try:
            return reconciler.run()
        except Exception as exc:  # noqa: BLE001
            failure = classify(exc)
            if failure.transient:
                raise
            # permanent: the stage that met it fails, with the API's (or the registry's) reason
            reconciler.phase("Failed", f"{reconciler.stage}: {failure.message}")
            reconciler.put(failedStage=reconciler.stage, failedInputs=reconciler.inputs(reconciler.stage))
            reconciler.condition("Ready", False, failure.reason, failure.message)
            reconciler.step.event(failure.reason, failure.message, "Warning")
            log.warning("%s: %s failed for good (%s): %s; fix it, then change the spec or set the annotation "
                        "ferry.dev/retry", self.key, reconciler.stage, failure.reason, failure.message)
            return reconciler.step

    def failed(self, obj: dict[str, Any], exc: BaseException) -> float:
        """A transient failure: Ready=False naming it, and (once per episode) a Warning Event and
        a log line; the next attempt after the backoff."""
        failure = classify(exc)
        self.failures += 1
        conditions = list(self.status.get("conditions") or [])
        ready = next((c for c in conditions if c.get("type") == "Ready"), {})
        new_episode = not (ready.get("status") == "False" and ready.get("reason") == failure.reason)
        delay = min(self.deps.resync_s, self.deps.poll_s * 2 ** (self.failures - 1))
        if new_episode:
            if failure.reason == "InternalError":
                log.error("%s: unexpected error, retrying in %.3g s", self.key, delay, exc_info=exc)
            else:
                log.warning("%s: %s (%s); retrying with backoff", self.key, failure.message, failure.reason)
        step = Step(dict(self.status))
        generation = int(obj["metadata"].get("generation") or 1)
        step.status["conditions"] = set_condition(conditions, "Ready", False, failure.reason,
                                                  f"waiting: {failure.message}", generation)
        if new_episode:
            step.event(failure.reason, f"{failure.message} (retrying)", "Warning")
        self.observe(self.status.get("phase"), self.status.get("phase"), "error")
        try:
            self.write(obj, step)
        except Exception as again:  # noqa: BLE001 - the API server is the trouble too: the next attempt says so
            log.debug("%s: status not written: %s", self.key, again)
        return delay

    # ---- writing ------------------------------------------------------------------------------
    def write(self, obj: dict[str, Any], step: Step) -> None:
        """The status fields that changed (a merge patch of the status subresource), then the Events."""
        changed = {k: v for k, v in step.status.items() if self.status.get(k) != v}
        changed.update({k: None for k in self.status if k not in step.status})
        before = self.status.get("phase")
        if changed:
            cluster = self.deps.cluster
            answer = cluster.call("PATCH", PIPELINE.path(self.namespace, self.name, "status"),
                                  Action("patch", PIPELINE, self.namespace, self.name, "status"),
                                  body={"status": changed}, content_type="application/merge-patch+json")
            self.written = str((answer.get("metadata") or {}).get("resourceVersion") or "") or None
            self.status = dict(step.status)
        after = self.status.get("phase")
        if after != before:
            level = logging.WARNING if after in ("Failed", "Rejected") else logging.INFO
            log.log(level, "%s: %s (%s)", self.key, after, self.status.get("message", ""))
        for type_, reason, message in step.events:
            self.post_event(obj, type_, reason, message)

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        stamp = now()
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
                 "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": self.name,
                                    "namespace": self.namespace, "uid": meta.get("uid")},
                 "reason": reason, "message": message[:1024], "type": type_, "count": 1,
                 "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": "ferry-operator"},
                 "reportingComponent": "ferry-operator", "reportingInstance": "ferry-operator"}
        try:
            self.deps.cluster.call("POST", EVENT.path(self.namespace), Action("create", EVENT, self.namespace, None),
                                   body=event)
        except FerryError as exc:  # an Event is a courtesy: never fail a pass for one
            log.debug("%s: event %s not posted: %s", self.key, reason, exc)

    def observe(self, before: str | None, after: str | None, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.observe(self.key, before, after, outcome)
