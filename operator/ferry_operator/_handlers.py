"""kopf handlers: each event on a ModelPipeline runs one reconcile pass (``_reconcile``) and
writes what it learned to the pipeline's status, posts its Events, and asks kopf to come back
while something is still running (``TemporaryError(delay=)``). Invalid specs are refused once
(``PermanentError``) with the reason on the status; a spec change (a new generation) is
reconciled from the start.

State lives on the pipeline itself: its status and kopf's progress annotations
(``ferry.dev/kopf-*``); the PyTorchJob's status would prune anything foreign.
"""

from __future__ import annotations

from typing import Any

import kopf

from ferry.errors import SpecError
from ferry_operator._crd import GROUP, PLURAL, VERSION
from ferry_operator._pipeline import parse
from ferry_operator._reconcile import Deps, reconcile, set_condition

registry = kopf.get_default_registry()  # so `kopf run -m ferry_operator` finds the handlers too
RESOURCE = dict(group=GROUP, version=VERSION, plural=PLURAL)
# a training can run for days: no timeout on waiting; a step that errors is retried with backoff
HANDLER = dict(registry=registry, backoff=5, timeout=None, retries=None)


def deps_of(memo: Any) -> Deps:
    deps = getattr(memo, "deps", None)
    if deps is None:
        raise kopf.TemporaryError("the operator is still connecting to the cluster and MLflow", delay=5)
    return deps


def _key(meta: Any) -> str:
    return f"{meta.get('namespace')}/{meta['name']}"


def _pass(body: Any, patch: Any, memo: Any) -> None:
    obj = _plain({"metadata": body["metadata"], "spec": body.get("spec") or {}, "status": body.get("status") or {}})
    metrics = getattr(memo, "metrics", None)
    key = _key(obj["metadata"])
    before = obj["status"].get("phase")
    try:
        pipeline = parse(obj)
    except SpecError as exc:
        if metrics is not None:
            metrics.observe(key, before, "Failed", "invalid")
        generation = int(obj["metadata"].get("generation") or 1)
        message = str(exc)
        patch.status["phase"] = "Failed"
        patch.status["message"] = "invalid spec: " + message.replace("\n", "; ")
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = set_condition(list(obj["status"].get("conditions") or []), "Ready", False,
                                                   "InvalidSpec", message, generation)
        kopf.warn(body, reason="InvalidSpec", message=message)
        raise kopf.PermanentError(f"invalid spec: {message}") from exc
    step, wait = reconcile(deps_of(memo), obj, pipeline)
    if metrics is not None:
        metrics.observe(key, before, step.status.get("phase", before), "waiting" if wait is not None else "done")
    for field, value in step.status.items():
        patch.status[field] = value
    for type_, reason, message in step.events:
        kopf.event(body, type=type_, reason=reason, message=message)
    if wait is not None:
        raise kopf.TemporaryError(str(wait), delay=wait.delay)


def _plain(value: Any) -> Any:
    """kopf's body views as plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@kopf.on.create(**RESOURCE, **HANDLER)
@kopf.on.update(**RESOURCE, field="spec", **HANDLER)
@kopf.on.resume(**RESOURCE, **HANDLER)
def reconcile_pipeline(body: Any, patch: Any, memo: Any, **_: Any) -> None:
    """Drive one ModelPipeline towards Serving (or a final Failed/Rejected)."""
    _pass(body, patch, memo)


@kopf.on.delete(**RESOURCE, registry=registry, optional=True)  # optional: no finalizer; children go by owner references
def forget_pipeline(body: Any, memo: Any, **_: Any) -> None:
    """A deleted pipeline leaves the metrics."""
    metrics = getattr(memo, "metrics", None)
    if metrics is not None:
        metrics.forget(_key(body["metadata"]))


@kopf.on.probe(id="connected", registry=registry)
def connected(memo: Any, **_: Any) -> bool:
    """The liveness endpoint's answer: the operator has its cluster and MLflow clients."""
    return getattr(memo, "deps", None) is not None
