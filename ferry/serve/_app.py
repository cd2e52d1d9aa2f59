"""The model server's ASGI app, served by uvicorn.

A thin ASGI callable rather than a web framework: the server has eight fixed routes and its
own overhead is what separates serving stacks on small models (see DESIGN.md), so routing is a
few string comparisons and bodies are parsed with orjson.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

import orjson
from prometheus_client import generate_latest

from ferry.serve import _protocol as proto
from ferry.serve._dataplane import DataPlane
from ferry.serve._errors import BadRequest, InferenceError, LoadFailed, MethodNotAllowed, NotFound, PayloadTooLarge
from ferry.serve._model import LoadedModel, load_model

log = logging.getLogger("ferry.serve")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]


class ModelServer:
    """The REST front end (an ASGI app) of one :class:`DataPlane`; it starts the gRPC front end
    of the same data plane (``grpc_port``, 0: none) with its lifespan."""

    def __init__(self, load: Callable[[], LoadedModel], *, name: str, max_batch_size: int = 32,
                 max_latency_ms: float = 5.0, max_queue: int = 1024, max_body_bytes: int = 8 << 20,
                 grpc_host: str = "127.0.0.1", grpc_port: int = 0, drain_seconds: float = 30,
                 on_load_failure: Callable[[BaseException], None] | None = None):
        self.dataplane = DataPlane(load, name=name, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms,
                                   max_queue=max_queue, on_load_failure=on_load_failure)
        self.name, self.metrics = name, self.dataplane.metrics
        self.grpc_host, self.grpc_port, self.drain_seconds = grpc_host, grpc_port, drain_seconds
        self.grpc: Any = None
        self.max_body_bytes = max_body_bytes

    # ---- lifecycle: load and warm up in the background; ready only afterwards ------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.dataplane.start()
                if self.grpc_port:
                    from ferry.serve._grpc import GrpcFrontend

                    try:
                        self.grpc = GrpcFrontend(self.dataplane, self.grpc_host, self.grpc_port,
                                                 max_message_bytes=self.max_body_bytes)
                        await self.grpc.start()
                    except Exception as exc:  # noqa: BLE001 - the server must not half-start
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                self.dataplane.load_in_background()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.grpc is not None:
                    await self.grpc.stop(self.drain_seconds)
                await self.dataplane.stop()
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
            self.dataplane.observe(protocol, str(status), time.perf_counter() - start)

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

    async def _route(self, method: str, path: str, scope: dict[str, Any], receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        ok = lambda obj: (200, orjson.dumps(obj), _JSON)  # noqa: E731
        if path == "/v2/health/live" or path == "/v1/health/live":
            return ok({"live": True})
        if path == "/v2/health/ready":
            ready = self.dataplane.ready
            return (200 if ready else 503), orjson.dumps({"ready": ready}), _JSON
        if path == "/metrics":
            return 200, generate_latest(self.metrics.registry), [(b"content-type", b"text/plain; version=0.0.4")]
        if path == "/v2":
            return ok(self.dataplane.server_metadata())
        if path.startswith("/v2/models/"):
            rest = path[len("/v2/models/"):]
            name, _, tail = rest.partition("/")
            if tail.startswith("versions/"):  # /v2/models/{name}/versions/{v}/...
                tail = tail.split("/", 2)[2] if tail.count("/") >= 2 else ""
            if tail == "":
                model = self.dataplane.model_for(name)
                return ok({"name": model.name, "versions": [model.version], "platform": model.platform,
                           "inputs": [t.metadata() for t in model.inputs], "outputs": [t.metadata() for t in model.outputs],
                           "parameters": {"device": model.device, "dtype": model.dtype}})
            if tail == "ready":
                model = self.dataplane.model_for(name)
                return ok({"name": model.name, "ready": True})
            if tail == "infer":
                if method != "POST":
                    raise MethodNotAllowed("use POST for /infer")
                body = await self._body(scope, receive)
                model = self.dataplane.model_for(name)
                request = proto.decode_v2(body, model, _header_length(scope))
                out, json_length = proto.encode_v2(model, await self.dataplane.infer(request.xs), request.id,
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
                model = self.dataplane.model_for(rest[: -len(":predict")])
                x = proto.decode_v1(proto.parse_json(body), model)
                return 200, proto.encode_v1((await self.dataplane.infer([x]))[0]), _JSON
            if "/" not in rest and ":" not in rest:
                model = self.dataplane.model_for(rest)
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


def model_server(*, model_uri: str, name: str, host: str, grpc_port: int, max_batch_size: int, max_latency_ms: float,
                 max_queue: int, max_body_bytes: int, drain_seconds: float, device: str, dtype: str,
                 machine: Any, on_load_failure: Callable[[LoadFailed], None] | None = None) -> ModelServer:
    """The app of one server process (the only one, or one of ``--workers``); ``on_load_failure``
    is told, in the loading thread, when the model cannot be loaded (a message naming it and why)."""
    report = None if on_load_failure is None else \
        (lambda exc: on_load_failure(LoadFailed.of(name, model_uri, exc)))  # type: ignore[misc]
    return ModelServer(lambda: load_model(model_uri, name, device=device, dtype=dtype, machine=machine), name=name,
                       max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, max_queue=max_queue,
                       max_body_bytes=max_body_bytes, grpc_host=host, grpc_port=grpc_port, drain_seconds=drain_seconds,
                       on_load_failure=report)
