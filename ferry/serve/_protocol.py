"""Request decoding and response encoding: Open Inference Protocol v2 (with its binary tensor
extension) and KServe v1.

The binary tensor extension (what Triton's, KServe's and MLServer's clients send by default):
the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
tensors. An input whose ``parameters.binary_data_size`` is set takes that many bytes, in input
order, instead of ``data``: little-endian values, row-major; BOOL one byte each; BYTES each
element as a 4-byte little-endian length and its bytes. An output is answered the same way when
the request asks (``parameters.binary_data_output`` for all, or ``outputs[i].parameters.
binary_data``); its entry then carries ``parameters.binary_data_size`` instead of ``data``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ferry.serve._errors import BadRequest
from ferry.serve._model import NUMPY_TO_OIP, OIP_DTYPES, LoadedModel

_FLOAT_OK = {"FP16", "FP32", "FP64"}


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _check_shape(x: np.ndarray, model: LoadedModel, where: str) -> np.ndarray:
    want = model.input.shape
    if x.ndim != len(want) or any(w > 0 and w != g for w, g in zip(want[1:], x.shape[1:])):
        expected = "[N, " + ", ".join(str(d) for d in want[1:]) + "]"
        raise BadRequest(f"{where}: shape {list(x.shape)} does not match the model's input {expected}")
    if x.shape[0] == 0:
        raise BadRequest(f"{where}: empty batch; send at least one row")
    return x


BINARY_HEADER = b"inference-header-content-length"


@dataclass(frozen=True)
class V2Request:
    x: np.ndarray
    id: str | None
    binary_output: bool  # answer the output as raw bytes (binary tensor extension)


def from_bytes(raw: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """A tensor from the binary tensor extension's raw bytes."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BadRequest(f"{where}: BYTES data ends inside an element's 4-byte length")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise BadRequest(f"{where}: a BYTES element of {size} bytes runs past the end of its data")
            items.append(raw[offset:offset + size])
            offset += size
        if len(items) != count:
            raise BadRequest(f"{where}: the data holds {len(items)} BYTES elements; shape {shape} needs {count}")
        return np.array(items, dtype=np.object_).reshape(shape)
    dtype = np.dtype(OIP_DTYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{where}: binary_data_size is {len(raw)} bytes; shape {shape} of {datatype} needs "
                         f"{count * dtype.itemsize} ({count} × {dtype.itemsize})")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_bytes(y: np.ndarray) -> bytes:
    if y.dtype == np.object_:
        return b"".join(struct.pack("<I", len(b)) + b for b in (v if isinstance(v, bytes) else str(v).encode()
                                                                 for v in y.ravel()))
    return np.ascontiguousarray(y, dtype=y.dtype.newbyteorder("<")).tobytes()


def split_binary(body: bytes, header_length: int | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary section of a v2 request."""
    if header_length is None:
        return body, b""
    if header_length < 0 or header_length > len(body):
        raise BadRequest(f"Inference-Header-Content-Length is {header_length}, past the end of the {len(body)}-byte "
                         "body; it must be the length of the JSON header")
    return body[:header_length], body[header_length:]


def decode_v2(body: bytes, model: LoadedModel, header_length: int | None = None) -> V2Request:
    header, binary = split_binary(body, header_length)
    payload = parse_json(header)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise BadRequest('expected {"inputs": [{"name", "shape", "datatype", "data"}]}; "inputs" is missing or empty')
    if len(payload["inputs"]) != 1:
        raise BadRequest(f"the model takes 1 input ({model.input.name}); got {len(payload['inputs'])}")
    tensor = payload["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadRequest("inputs[0] must be an object with name, shape, datatype and data")
    for key in ("shape", "datatype"):
        if key not in tensor:
            raise BadRequest(f"inputs[0].{key} is missing")
    datatype, shape = tensor["datatype"], tensor["shape"]
    check_header(datatype, shape, model, "inputs[0]")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise BadRequest(f"inputs[0].parameters.binary_data_size must be a byte count (got {size!r})")
        if header_length is None:
            raise BadRequest("inputs[0] has binary_data_size but the request has no Inference-Header-Content-Length "
                             "header to say where its JSON ends")
        if size > len(binary):
            raise BadRequest(f"inputs[0].parameters.binary_data_size is {size} bytes, past the end of the "
                             f"{len(binary)} bytes of binary data")
        if size < len(binary):
            raise BadRequest(f"{len(binary) - size} bytes of binary data follow the last input's "
                             f"{size}; binary_data_size must account for all of it")
        x = tensor_from_raw(binary[:size], datatype, shape, model, "inputs[0]")
    else:
        if "data" not in tensor:
            raise BadRequest("inputs[0].data is missing (or give parameters.binary_data_size with binary data)")
        if binary:
            raise BadRequest(f"{len(binary)} bytes of binary data but no input declares binary_data_size")
        x = tensor_from_values(tensor["data"], datatype, shape, model, "inputs[0]")
    return V2Request(x, payload.get("id"), _wants_binary(payload, model))


def check_header(datatype: Any, shape: Any, model: LoadedModel, where: str) -> None:
    """An input's datatype is the protocol's and the model's, and its shape is a shape."""
    if datatype not in OIP_DTYPES and datatype != "BYTES":
        known = ", ".join([*OIP_DTYPES, "BYTES"])
        raise BadRequest(f"{where}.datatype {datatype!r} is not a datatype of the protocol ({known})")
    expected = model.input.datatype
    if datatype != expected and not (datatype in _FLOAT_OK and expected in _FLOAT_OK):
        raise BadRequest(f"{where}.datatype is {datatype!r}; the model expects {expected!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"{where}.shape must be a list of non-negative integers (got {shape!r})")


def tensor_from_raw(raw: bytes, datatype: str, shape: list[int], model: LoadedModel, where: str) -> np.ndarray:
    return _finish(from_bytes(raw, datatype, shape, where), shape, model, where)


def tensor_from_values(values: Any, datatype: str, shape: list[int], model: LoadedModel, where: str) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=OIP_DTYPES[datatype] if datatype in OIP_DTYPES else model.input.dtype)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{where}.data is not a flat list of {datatype} numbers: {exc}") from None
    if x.size != int(np.prod(shape)):
        raise BadRequest(f"{where}.data has {x.size} values; shape {shape} needs {int(np.prod(shape))}")
    return _finish(x, shape, model, where)


def _finish(x: np.ndarray, shape: list[int], model: LoadedModel, where: str) -> np.ndarray:
    x = x.reshape(shape).astype(model.input.dtype, copy=False)
    if not x.flags.writeable:  # a view of the request body: torch wants memory it may write
        x = x.copy()
    return _check_shape(x, model, where)


def _wants_binary(payload: dict[str, Any], model: LoadedModel) -> bool:
    default = bool((payload.get("parameters") or {}).get("binary_data_output", False))
    for out in payload.get("outputs") or []:
        if isinstance(out, dict) and out.get("name") == model.output.name:
            return bool((out.get("parameters") or {}).get("binary_data", default))
    return default


def encode_v2(model: LoadedModel, y: np.ndarray, request_id: str | None, binary: bool = False) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when the output is sent binary."""
    output: dict[str, Any] = {"name": model.output.name, "datatype": NUMPY_TO_OIP.get(y.dtype, "FP32"),
                              "shape": list(y.shape)}
    raw = b""
    if binary:
        raw = to_bytes(y)
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = y.ravel()
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": [output]}
    if request_id is not None:
        body["id"] = request_id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return (header + raw, len(header)) if binary else (header, None)


def decode_v1(payload: Any, model: LoadedModel) -> np.ndarray:
    if not isinstance(payload, dict) or "instances" not in payload:
        raise BadRequest('expected {"instances": [...]} with one row per instance')
    try:
        x = np.asarray(payload["instances"], dtype=model.input.dtype)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"instances must be a rectangular array of numbers: {exc}") from None
    return _check_shape(x, model, "instances")


def encode_v1(y: np.ndarray) -> bytes:
    return orjson.dumps({"predictions": y}, option=orjson.OPT_SERIALIZE_NUMPY)
