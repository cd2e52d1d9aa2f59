"""The model server's ASGI app, served by uvicorn.

A thin ASGI callable rather than a web framework: the server has eight fixed routes and its
own overhead is what separates serving stacks on small models (see DESIGN.md), so routing is a
few string comparisons and bodies are parsed with orjson.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Awaitable, Callable

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ferry.serve import _protocol as proto
from ferry.serve._batcher import DynamicBatcher
from ferry.serve._errors import BadRequest, InferenceError, MethodNotAllowed, ModelNotFound, NotFound, NotReady, PayloadTooLarge
from ferry.serve._model import LoadedModel

log = logging.getLogger("ferry.serve")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]


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


class ModelServer:
    def __init__(self, load: Callable[[], LoadedModel], *, name: str, max_batch_size: int = 32,
                 max_latency_ms: float = 5.0, max_queue: int = 1024, max_body_bytes: int = 8 << 20,
                 grpc_host: str = "127.0.0.1", grpc_port: int = 0, drain_seconds: float = 30):
        self.load, self.name = load, name
        self.grpc_host, self.grpc_port, self.drain_seconds = grpc_host, grpc_port, drain_seconds
        self.grpc: Any = None
        self.max_batch_size, self.max_latency_ms, self.max_queue = max_batch_size, max_latency_ms, max_queue
        self.max_body_bytes = max_body_bytes
        self.model: LoadedModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.load_error: BaseException | None = None
        self.metrics = Metrics()
        if not self.metrics.multiprocess:
            self.metrics.queue.labels(name).set_function(lambda: self.batcher.depth if self.batcher else 0)

    # ---- lifecycle: load and warm up in the background; ready only afterwards ------------------
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
        except BaseException as exc:  # noqa: BLE001 - reported on /v2/health/ready and in the log
            self.load_error = exc
            log.error("loading the model failed: %s", exc)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                batch_hist = self.metrics.batch.labels(self.name)
                self.batcher = DynamicBatcher(lambda xs: self.model.run(xs), max_batch_size=self.max_batch_size,  # type: ignore[union-attr]
                                              max_latency_ms=self.max_latency_ms, max_queue=self.max_queue,
                                              on_batch=batch_hist.observe,
                                              on_depth=self.metrics.queue.labels(self.name).set if self.metrics.multiprocess else None)
                self.batcher.start()
                if self.grpc_port:
                    from ferry.serve._grpc import GrpcFrontend

                    try:
                        self.grpc = GrpcFrontend(self, self.grpc_host, self.grpc_port)
                        await self.grpc.start()
                    except Exception as exc:  # noqa: BLE001 - the server must not half-start
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                threading.Thread(target=self._load, name="ferry-load", daemon=True).start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.grpc is not None:
                    await self.grpc.stop(self.drain_seconds)
                if self.batcher is not None:
                    await self.batcher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- HTTP ---------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # pragma: no cover - websockets are not served
            return
        start = time.perf_counter()
        path, method = scope["path"], scope["method"]
        protocol = "v1" if path.startswith("/v1/") else "v2" if path.startswith("/v2/") else "other"
        try:
            status, body, headers = await self._route(method, path, scope, receive)
        except InferenceError as exc:
            status, body, headers = exc.status, orjson.dumps({"error": str(exc)}), _JSON
        except Exception as exc:  # noqa: BLE001 - a model failure: a 500 with a message, the server lives on
            log.exception("inference failed")
            status, body, headers = 500, orjson.dumps({"error": f"inference failed: {type(exc).__name__}: {exc}"}), _JSON
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if path.endswith("/infer") or path.endswith(":predict"):  # inference only: probes would skew RPS
            self.metrics.requests.labels(self.name, protocol, str(status)).inc()
            self.metrics.latency.labels(self.name, protocol).observe(time.perf_counter() - start)

    async def _body(self, scope: dict[str, Any], receive: Receive) -> bytes:
        for key, value in scope["headers"]:
            if key == b"content-length" and int(value) > self.max_body_bytes:
                raise PayloadTooLarge(f"payload of {int(value)} bytes is over the limit of {self.max_body_bytes}; send fewer rows per request")
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"payload is over the limit of {self.max_body_bytes} bytes; send fewer rows per request")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def check_name(self, name: str) -> None:
        if name != self.name:
            raise ModelNotFound(f"model {name!r} is not served here; this server serves {self.name!r}")

    def _model_for(self, name: str) -> LoadedModel:
        self.check_name(name)
        if not self.ready or self.model is None:
            raise NotReady(f"model {self.name!r} is not ready yet" + (f": loading failed: {self.load_error}" if self.load_error else ""))
        return self.model

    async def _route(self, method: str, path: str, scope: dict[str, Any], receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        ok = lambda obj: (200, orjson.dumps(obj), _JSON)  # noqa: E731
        if path == "/v2/health/live" or path == "/v1/health/live":
            return ok({"live": True})
        if path == "/v2/health/ready":
            return (200 if self.ready else 503), orjson.dumps({"ready": self.ready}), _JSON
        if path == "/metrics":
            return 200, generate_latest(self.metrics.registry), [(b"content-type", b"text/plain; version=0.0.4")]
        if path == "/v2":
            return ok({"name": "ferry", "version": _version(), "extensions": ["binary_tensor_data"]})
        if path.startswith("/v2/models/"):
            rest = path[len("/v2/models/"):]
            name, _, tail = rest.partition("/")
            if tail.startswith("versions/"):  # /v2/models/{name}/versions/{v}/...
                tail = tail.split("/", 2)[2] if tail.count("/") >= 2 else ""
            if tail == "":
                model = self._model_for(name)
                return ok({"name": model.name, "versions": [model.version], "platform": model.platform,
                           "inputs": [t.metadata() for t in model.inputs], "outputs": [t.metadata() for t in model.outputs],
                           "parameters": {"device": model.device, "dtype": model.dtype}})
            if tail == "ready":
                model = self._model_for(name)
                return ok({"name": model.name, "ready": True})
            if tail == "infer":
                if method != "POST":
                    raise MethodNotAllowed("use POST for /infer")
                body = await self._body(scope, receive)
                model = self._model_for(name)
                request = proto.decode_v2(body, model, _header_length(scope))
                assert self.batcher is not None
                out, json_length = proto.encode_v2(model, await self.batcher.submit(request.xs), request.id,
                                                   request.outputs)
                if json_length is None:
                    return 200, out, _JSON
                return 200, out, [(b"content-type", b"application/octet-stream"),
                                  (proto.BINARY_HEADER, str(json_length).encode())]
        if path.startswith("/v1/models/"):
            rest = path[len("/v1/models/"):]
            if rest.endswith(":predict"):
                if method != "POST":
                    raise MethodNotAllowed("use POST for :predict")
                body = await self._body(scope, receive)
                model = self._model_for(rest[: -len(":predict")])
                x = proto.decode_v1(proto.parse_json(body), model)
                assert self.batcher is not None
                return 200, proto.encode_v1((await self.batcher.submit([x]))[0]), _JSON
            if "/" not in rest and ":" not in rest:
                model = self._model_for(rest)
                return ok({"name": model.name, "ready": True})
        raise NotFound(f"no route for {method} {path}; see /v2/models/{{name}}/infer or /v1/models/{{name}}:predict")


def _header_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope["headers"]:
        if key == proto.BINARY_HEADER:
            try:
                return int(value)
            except ValueError:
                raise BadRequest(f"Inference-Header-Content-Length must be a byte count (got {value.decode()!r})") from None
    return None


def _version() -> str:
    from ferry import __version__

    return __version__
