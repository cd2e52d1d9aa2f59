"""kopf's part: one daemon per ModelPipeline runs its worker (``_worker``); watches on the
pipelines and on the PyTorchJobs, TrainJobs, InferenceServices and capacity plan Jobs (batch/v1)
they own wake it.

    a pipeline changes (spec, annotations)           ─┐
    its PyTorchJob or TrainJob changes (owner ref.)  ─┼─> wake the pipeline's worker ─> one pass
    its InferenceService changes                     ─┤
    its capacity plan's Job changes                  ─┤
    nothing for resync_s (drift)                     ─┘

A child kind the cluster does not serve (no Kubeflow Trainer, say) is not watched: kopf warns
once that it cannot serve it, and starts watching it when its CRD appears (kopf watches the
CRDs). The pipelines that train through it wait, saying what to install.

Level-triggered: a pass looks at the world as it is, so a missed or repeated wake-up changes
nothing but when. Waiting is not an error: nothing is raised to kopf while a job trains or a
service gets ready, and kopf stores nothing on the pipeline. No finalizer: a worker ends when
its pipeline's deletion is seen (or its status can no longer be written), the children go with
the pipeline through their owner references, and a pipeline deleted while no operator runs is
gone at once (a namespace never hangs in Terminating for want of an operator). kopf stops the
workers while another replica acts (peering).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import kopf

from ferry_operator._crd import GROUP, KIND, PLURAL, VERSION
from ferry_operator._worker import Worker, plain

registry = kopf.get_default_registry()  # so `kopf run -m ferry_operator` finds the handlers too
RESOURCE = dict(group=GROUP, version=VERSION, plural=PLURAL)


class Wakers:
    """The running workers' wake-up calls, by ``namespace/name`` of their pipeline."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.workers: dict[str, Worker] = {}

    def wake(self, namespace: str | None, name: str, resource_version: str | None = None, *,
             deleted: bool = False) -> None:
        key = f"{namespace}/{name}"
        worker = self.workers.get(key)
        if worker is not None and deleted:
            worker.gone = True
        elif worker is not None and resource_version is not None and resource_version == worker.written:
            return  # the watch echoing the worker's own status write
        event = self.events.get(key)
        if event is not None:
            event.set()


def wakers_of(memo: Any) -> Wakers:
    """The operator's one Wakers (kopf gives each object a shallow copy of the operator's memo: the
    startup handler puts it there first, so every copy shares it)."""
    wakers = getattr(memo, "wakers", None)
    if wakers is None:
        raise RuntimeError("the operator's memo has no wakers: its startup handler did not run")
    return wakers


def owned_by_a_pipeline(meta: Any, **_: Any) -> bool:
    return any(ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
               for ref in meta.get("ownerReferences") or [])


@kopf.daemon(**RESOURCE, registry=registry, id="worker", cancellation_timeout=30)
async def drive_pipeline(body: Any, meta: Any, memo: Any, stopped: Any, **_: Any) -> None:
    """A pipeline's worker: a pass now, then whenever woken, and after resync_s at the latest."""
    deps = getattr(memo, "deps", None)
    while deps is None and not stopped:  # `kopf run -m`: the startup handler is still connecting
        await asyncio.sleep(1)
        deps = getattr(memo, "deps", None)
    wakers = wakers_of(memo)
    key = f"{meta.get('namespace')}/{meta['name']}"
    wake = wakers.events[key] = asyncio.Event()
    worker = wakers.workers[key] = Worker(deps, plain(body), getattr(memo, "metrics", None))
    try:
        while not stopped and not worker.gone:
            wake.clear()
            delay = await asyncio.to_thread(worker.run_pass, plain(body))
            woken = asyncio.ensure_future(wake.wait())
            stopping = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait({woken, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                stopping.cancel()
    finally:
        if wakers.events.get(key) is wake:
            del wakers.events[key]
            del wakers.workers[key]
        metrics = getattr(memo, "metrics", None)
        if metrics is not None:  # deleted, or another replica acts now: this one no longer drives it
            metrics.forget(key)


@kopf.on.event(**RESOURCE, registry=registry)
async def pipeline_changed(type: str | None, meta: Any, memo: Any, **_: Any) -> None:  # noqa: A002 - kopf's name
    wakers_of(memo).wake(meta.get("namespace"), meta["name"], meta.get("resourceVersion"), deleted=type == "DELETED")


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", registry=registry, when=owned_by_a_pipeline)
@kopf.on.event("trainer.kubeflow.org", "v1alpha1", "trainjobs", registry=registry, when=owned_by_a_pipeline)
@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices", registry=registry, when=owned_by_a_pipeline)
@kopf.on.event("batch", "v1", "jobs", registry=registry, when=owned_by_a_pipeline)
async def child_changed(meta: Any, memo: Any, **_: Any) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            wakers_of(memo).wake(meta.get("namespace"), ref["name"])


def _without_finalizer() -> None:
    """kopf puts a finalizer on every object with a daemon, to stop the daemon before the object
    goes; the workers stop themselves (above), so the pipeline's daemon asks for none."""
    spawning = registry._spawning  # noqa: SLF001 - kopf has no public switch for it (pinned, and tested)
    spawning._handlers = [dataclasses.replace(h, requires_finalizer=False) if h.fn is drive_pipeline else h  # noqa: SLF001
                          for h in spawning._handlers]  # noqa: SLF001


_without_finalizer()


@kopf.on.probe(id="connected", registry=registry)
def connected(memo: Any, **_: Any) -> bool:
    """The liveness endpoint's answer: the operator has its cluster and MLflow clients."""
    return getattr(memo, "deps", None) is not None
