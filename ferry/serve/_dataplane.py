"""The served model as both front ends see it, REST (``_app``) and gRPC (``_grpc``): loading and
readiness, the batcher, the name check, the metrics and the server's metadata. Neither front
end knows the other; each turns its protocol's requests into calls here (KServe's
``DataPlane``, below its REST and gRPC servers).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ferry.serve._batcher import Arrays, DynamicBatcher
from ferry.serve._errors import ModelNotFound, NotReady
from ferry.serve._model import LoadedModel

log = logging.getLogger("ferry.serve")


class Metrics:
    """What the autoscaler and dashboards read from /metrics. With ``--workers`` (the
    ``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor) every worker writes to shared files and
    ``/metrics`` reports the sum over all of them; the queue depth is then each worker's live
    depth, summed."""

    def __init__(self) -> None:
        import os

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        own = CollectorRegistry()
        if self.multiprocess:
            from prometheus_client import multiprocess

            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)
        else:
            self.registry = own
        self.requests = Counter("ferry_requests", "Requests by protocol and HTTP status.", ["model", "protocol", "code"], registry=own)
        self.latency = Histogram("ferry_request_latency_seconds", "Request latency.", ["model", "protocol"], registry=own,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.batch = Histogram("ferry_batch_size", "Rows per model call.", ["model"], registry=own,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue = Gauge("ferry_queue_depth", "Requests waiting for the model.", ["model"], registry=own,
                           multiprocess_mode="livesum")


class DataPlane:
    """One model served under ``name``: loaded and warmed up in the background (ready only
    afterwards), its calls batched across requests of every protocol. ``on_load_failure``: called
    with the exception when loading or warming up fails (else it is logged; the server stays
    live and never ready)."""

    def __init__(self, load: Callable[[], LoadedModel], *, name: str, max_batch_size: int = 32,
                 max_latency_ms: float = 5.0, max_queue: int = 1024,
                 on_load_failure: Callable[[BaseException], None] | None = None):
        self.load, self.name, self.on_load_failure = load, name, on_load_failure
        self.max_batch_size, self.max_latency_ms, self.max_queue = max_batch_size, max_latency_ms, max_queue
        self.model: LoadedModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.load_error: BaseException | None = None
        self.metrics = Metrics()
        if not self.metrics.multiprocess:
            self.metrics.queue.labels(name).set_function(lambda: self.batcher.depth if self.batcher else 0)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batcher (in the running event loop): requests queue from now on."""
        self.batcher = DynamicBatcher(lambda xs: self.model.run(xs), max_batch_size=self.max_batch_size,  # type: ignore[union-attr]
                                      max_latency_ms=self.max_latency_ms, max_queue=self.max_queue,
                                      on_batch=self.metrics.batch.labels(self.name).observe,
                                      on_depth=self.metrics.queue.labels(self.name).set if self.metrics.multiprocess else None)
        self.batcher.start()

    def load_in_background(self) -> None:
        threading.Thread(target=self._load, name="ferry-load", daemon=True).start()

    def _load(self) -> None:
        try:
            model = self.load()
            model.warm_up(self.max_batch_size)
            self.model = model
            if self.batcher is not None:
                self.batcher.in_thread = model.in_thread
            log.warning("model %s version %s (%s) loaded and warmed up on %s in %s, run in %s; ready", model.name,
                        model.version, model.platform, model.device, model.dtype,
                        "a worker thread" if model.in_thread else "the event loop's thread")
            self.ready = True
        except BaseException as exc:  # noqa: BLE001 - reported on /v2/health/ready, and to on_load_failure or the log
            self.load_error = exc
            if self.on_load_failure is not None:
                self.on_load_failure(exc)  # ``ferry serve``: the server stops and says why, once
            else:
                log.error("loading the model failed: %s", exc)

    async def stop(self) -> None:
        """Answer what is queued, then stop the batcher."""
        if self.batcher is not None:
            await self.batcher.stop()

    # ---- requests -------------------------------------------------------------------------------
    def check_name(self, name: str) -> None:
        if name != self.name:
            raise ModelNotFound(f"model {name!r} is not served here; this server serves {self.name!r}")

    def model_for(self, name: str) -> LoadedModel:
        """The model a request names, once it is ready."""
        self.check_name(name)
        if not self.ready or self.model is None:
            raise NotReady(f"model {self.name!r} is not ready yet" + (f": loading failed: {self.load_error}" if self.load_error else ""))
        return self.model

    async def infer(self, xs: Arrays) -> Arrays:
        """The model's outputs for one request's inputs, batched with other requests."""
        assert self.batcher is not None
        return await self.batcher.submit(xs)

    def observe(self, protocol: str, code: str, seconds: float) -> None:
        """Count one inference request and its latency."""
        self.metrics.requests.labels(self.name, protocol, code).inc()
        self.metrics.latency.labels(self.name, protocol).observe(seconds)

    def server_metadata(self) -> dict[str, Any]:
        from ferry import __version__

        return {"name": "ferry", "version": __version__, "extensions": ["binary_tensor_data"]}
