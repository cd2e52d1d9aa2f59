"""KServe's v2 gRPC protocol (``inference.GRPCInferenceService``, the service Triton serves too)
beside the REST API, in the same event loop: the same data plane (``_dataplane``: model,
batcher, metrics), limits and error table (``_errors``: each error's ``grpc_code``).

The message classes are KServe's compiled stubs of the protocol's ``grpc_predict_v2.proto``
(``kserve/protocol/grpc/grpc_predict_v2_pb2.py``), loaded from that file alone: importing the
``kserve`` package would cost about two seconds of start-up for nothing the server uses. The
service is registered with grpcio's generic handlers, so the generated servicer base (and its
import of the package) is not needed either.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Awaitable, Callable

import numpy as np

from ferry.errors import ConfigError
from ferry.serve import _protocol as proto
from ferry.serve._dataplane import DataPlane
from ferry.serve._errors import BadRequest, InferenceError

log = logging.getLogger("ferry.serve")
SERVICE = "inference.GRPCInferenceService"

# InferTensorContents field per datatype (FP16 travels only as raw bytes, as in Triton)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


@lru_cache(maxsize=1)
def stubs() -> ModuleType:
    """The protocol's message classes (KServe's generated ``grpc_predict_v2_pb2``)."""
    spec = importlib.util.find_spec("kserve")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("gRPC serving needs the protocol's stubs from the kserve package: pip install kserve, "
                          "or serve REST only with --grpc-port 0")
    path = Path(spec.submodule_search_locations[0]) / "protocol" / "grpc" / "grpc_predict_v2_pb2.py"
    module_spec = importlib.util.spec_from_file_location("ferry_grpc_predict_v2_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


class GrpcFrontend:
    """The gRPC server of one data plane; started and stopped with the REST app's lifespan.
    ``max_message_bytes``: the largest request accepted (the REST body limit)."""

    def __init__(self, dataplane: DataPlane, host: str, port: int, *, max_message_bytes: int = 8 << 20):
        self.dataplane, self.host, self.port = dataplane, host, port
        self.max_message_bytes = max_message_bytes
        self.server: Any = None
        self.pb = stubs()

    async def start(self) -> None:
        import grpc

        limit = self.max_message_bytes
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.max_send_message_length", max(limit, 64 << 20))])
        pb = self.pb
        handlers = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, "live"),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, "ready"),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, "ready"),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, "metadata"),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, "metadata"),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, "infer"),
        }
        methods = {name: grpc.unary_unary_rpc_method_handler(
            self._guarded(fn, kind), request_deserializer=request.FromString,
            response_serializer=lambda message: message.SerializeToString())
            for name, (fn, request, kind) in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
        bound = self.server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise ConfigError(f"gRPC port {self.host}:{self.port} cannot be bound (in use?); choose another "
                              "--grpc-port, or 0 to serve REST only")
        self.port = bound
        await self.server.start()
        log.warning("gRPC (%s) on %s:%d", SERVICE, self.host, bound)

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)

    def _guarded(self, fn: Callable[[Any], Awaitable[Any]], kind: str) -> Callable[[Any, Any], Awaitable[Any]]:
        """Every error becomes its status code with a message; the server never crashes."""
        import grpc

        async def handler(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await fn(request)
            except InferenceError as exc:
                code = exc.grpc_code
                await context.abort(getattr(grpc.StatusCode, code), str(exc))
            except Exception as exc:  # noqa: BLE001 - a model failure: INTERNAL with a message
                log.exception("inference failed")
                code = "INTERNAL"
                await context.abort(grpc.StatusCode.INTERNAL, f"inference failed: {type(exc).__name__}: {exc}")
            finally:
                if kind == "infer":
                    self.dataplane.observe("grpc", code, time.perf_counter() - start)

        return handler

    # ---- the service ------------------------------------------------------------------------
    async def server_live(self, request: Any) -> Any:
        return self.pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def model_ready(self, request: Any) -> Any:
        self.dataplane.check_name(request.name)
        return self.pb.ModelReadyResponse(ready=self.dataplane.ready)

    async def server_metadata(self, request: Any) -> Any:
        return self.pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def model_metadata(self, request: Any) -> Any:
        model = self.dataplane.model_for(request.name)
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform=model.platform,
            inputs=[tensor(**t.metadata()) for t in model.inputs], outputs=[tensor(**t.metadata()) for t in model.outputs])

    async def model_infer(self, request: Any) -> Any:
        model = self.dataplane.model_for(request.model_name)
        if not request.inputs:
            raise BadRequest("the request has no inputs")
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one "
                             "per input (or typed contents for all)")
        order = proto.match_inputs([t.name for t in request.inputs], model)
        xs: list[Any] = [None] * len(model.inputs)
        for i, tensor in enumerate(request.inputs):
            where, info, shape = f"inputs[{i}]", model.inputs[order[i]], list(tensor.shape)
            proto.check_header(tensor.datatype, shape, info, where)
            if raw:
                xs[order[i]] = proto.tensor_from_raw(raw[i], tensor.datatype, shape, info, where)
            elif tensor.HasField("contents"):
                field = _CONTENTS.get(tensor.datatype)
                if field is None:
                    raise BadRequest(f"{where}: {tensor.datatype} tensors travel as raw_input_contents only")
                xs[order[i]] = proto.tensor_from_values(list(getattr(tensor.contents, field)), tensor.datatype, shape,
                                                        info, where)
            else:
                raise BadRequest(f"{where} has no data: set its contents, or raw_input_contents")
        ys = await self.dataplane.infer(proto.same_rows(xs))
        names = [t.name for t in model.outputs]
        wanted = proto.match_outputs([o.name for o in request.outputs], model)
        tensor_type = self.pb.ModelInferResponse.InferOutputTensor
        outs = [tensor_type(name=names[j], datatype=proto.NUMPY_TO_OIP.get(ys[j].dtype, "FP32"), shape=list(ys[j].shape))
                for j in wanted]
        return self.pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id,
                                          outputs=outs, raw_output_contents=[proto.to_bytes(np.asarray(ys[j]))
                                                                             for j in wanted])
