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
from ferry.serve._model import NUMPY_TO_OIP, OIP_DTYPES, LoadedModel, TensorInfo

_FLOAT_OK = {"FP16", "FP32", "FP64"}


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _check_shape(x: np.ndarray, info: TensorInfo, where: str) -> np.ndarray:
    want = info.shape
    if x.ndim != len(want) or any(w > 0 and w != g for w, g in zip(want[1:], x.shape[1:])):
        expected = "[N, " + ", ".join(str(d) for d in want[1:]) + "]"
        raise BadRequest(f"{where}: shape {list(x.shape)} does not match the model's input {expected}")
    if x.shape[0] == 0:
        raise BadRequest(f"{where}: empty batch; send at least one row")
    return x


BINARY_HEADER = b"inference-header-content-length"


@dataclass(frozen=True)
class V2Request:
    xs: list[np.ndarray]  # one per model input, in the model's order
    id: str | None
    outputs: list[tuple[int, bool]]  # (model output index, answer as raw bytes), in the order asked


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
    tensors = payload["inputs"]
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype and data")
    order = match_inputs([t.get("name") for t in tensors], model)
    xs: list[np.ndarray | None] = [None] * len(model.inputs)
    offset = 0
    for i, tensor in enumerate(tensors):
        where, info = f"inputs[{i}]", model.inputs[order[i]]
        for key in ("shape", "datatype"):
            if key not in tensor:
                raise BadRequest(f"{where}.{key} is missing")
        datatype, shape = tensor["datatype"], tensor["shape"]
        check_header(datatype, shape, info, where)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise BadRequest(f"{where}.parameters.binary_data_size must be a byte count (got {size!r})")
            if header_length is None:
                raise BadRequest(f"{where} has binary_data_size but the request has no Inference-Header-Content-Length "
                                 "header to say where its JSON ends")
            if offset + size > len(binary):
                raise BadRequest(f"{where}.parameters.binary_data_size is {size} bytes, past the end of the "
                                 f"{len(binary) - offset} bytes of binary data left")
            xs[order[i]] = tensor_from_raw(binary[offset:offset + size], datatype, shape, info, where)
            offset += size
        else:
            if "data" not in tensor:
                raise BadRequest(f"{where}.data is missing (or give parameters.binary_data_size with binary data)")
            xs[order[i]] = tensor_from_values(tensor["data"], datatype, shape, info, where)
    if offset < len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the last binary input; each input's "
                         "binary_data_size must account for all of it")
    return V2Request(same_rows(xs), payload.get("id"), _requested_outputs(payload, model))  # type: ignore[arg-type]


def match_inputs(names: list[Any], model: LoadedModel) -> list[int]:
    """For each request input, the index of the model input it is. A one-input model takes its
    one input under any name; a model with several takes each by its name, all of them."""
    want = [t.name for t in model.inputs]
    if len(want) == 1:
        if len(names) != 1:
            raise BadRequest(f"the model takes 1 input ({want[0]}); got {len(names)}")
        return [0]
    if sorted(map(str, names)) != sorted(want):
        raise BadRequest(f"the model takes {len(want)} inputs named {', '.join(want)}; got "
                         f"{', '.join(map(str, names)) or 'none'}")
    return [want.index(n) for n in names]


def same_rows(xs: list[np.ndarray]) -> list[np.ndarray]:
    rows = {len(x) for x in xs}
    if len(rows) > 1:
        raise BadRequest(f"the inputs have different numbers of rows ({', '.join(str(len(x)) for x in xs)}); "
                         "each row of a request is one example across all inputs")
    return xs


def match_outputs(asked: list[Any], model: LoadedModel) -> list[int]:
    """The model outputs to answer, by the names asked, in that order (all of them when none is
    asked). A name the model does not have is refused, as Triton refuses it, whatever the number
    of outputs: answering another tensor under it would hand the client data it did not ask for."""
    names = [t.name for t in model.outputs]
    if not asked:
        return list(range(len(names)))
    chosen: list[int] = []
    for j, name in enumerate(asked):
        if not isinstance(name, str) or not name:
            raise BadRequest(f"outputs[{j}].name is missing; name one of the model's outputs ({', '.join(names)}), "
                             "or leave outputs out for all of them")
        if name not in names:
            raise BadRequest(f"outputs[{j}].name {name!r} is not an output of the model ({', '.join(names)}); "
                             f"model {model.name!r} answers only those")
        if names.index(name) in chosen:
            raise BadRequest(f"outputs[{j}].name {name!r} is asked for more than once")
        chosen.append(names.index(name))
    return chosen


def _requested_outputs(payload: dict[str, Any], model: LoadedModel) -> list[tuple[int, bool]]:
    """Which outputs to answer (all, unless ``outputs`` names some) and which as raw bytes."""
    default = bool((payload.get("parameters") or {}).get("binary_data_output", False))
    requested = payload.get("outputs")
    if requested is not None and not isinstance(requested, list):
        raise BadRequest('"outputs" must be a list of {"name": ...} objects (or left out, for all outputs)')
    asked = [out if isinstance(out, dict) else {} for out in requested or []]
    indices = match_outputs([out.get("name") for out in asked], model)
    if not asked:
        return [(i, default) for i in indices]
    return [(i, bool((out.get("parameters") or {}).get("binary_data", default))) for i, out in zip(indices, asked)]


def check_header(datatype: Any, shape: Any, info: TensorInfo, where: str) -> None:
    """An input's datatype is the protocol's and the model's, and its shape is a shape."""
    if datatype not in OIP_DTYPES and datatype != "BYTES":
        known = ", ".join([*OIP_DTYPES, "BYTES"])
        raise BadRequest(f"{where}.datatype {datatype!r} is not a datatype of the protocol ({known})")
    expected = info.datatype
    if datatype != expected and not (datatype in _FLOAT_OK and expected in _FLOAT_OK):
        raise BadRequest(f"{where}.datatype is {datatype!r}; the model expects {expected!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"{where}.shape must be a list of non-negative integers (got {shape!r})")


def tensor_from_raw(raw: bytes, datatype: str, shape: list[int], info: TensorInfo, where: str) -> np.ndarray:
    return _finish(from_bytes(raw, datatype, shape, where), shape, info, where)


def tensor_from_values(values: Any, datatype: str, shape: list[int], info: TensorInfo, where: str) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=OIP_DTYPES[datatype] if datatype in OIP_DTYPES else info.dtype)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{where}.data is not a flat list of {datatype} numbers: {exc}") from None
    if x.size != int(np.prod(shape)):
        raise BadRequest(f"{where}.data has {x.size} values; shape {shape} needs {int(np.prod(shape))}")
    return _finish(x, shape, info, where)


def _finish(x: np.ndarray, shape: list[int], info: TensorInfo, where: str) -> np.ndarray:
    x = x.reshape(shape).astype(info.dtype, copy=False)
    if not x.flags.writeable:  # a view of the request body: torch wants memory it may write
        x = x.copy()
    return _check_shape(x, info, where)


def encode_v2(model: LoadedModel, ys: list[np.ndarray], request_id: str | None,
              outputs: list[tuple[int, bool]]) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when any output is sent binary."""
    entries, raws = [], []
    for index, binary in outputs:
        y = ys[index]
        entry: dict[str, Any] = {"name": model.outputs[index].name, "datatype": NUMPY_TO_OIP.get(y.dtype, "FP32"),
                                 "shape": list(y.shape)}
        if binary:
            raw = to_bytes(y)
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            entry["data"] = y.ravel()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": entries}
    if request_id is not None:
        body["id"] = request_id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return (header + b"".join(raws), len(header)) if raws else (header, None)


def decode_v1(payload: Any, model: LoadedModel) -> np.ndarray:
    if len(model.inputs) != 1:
        raise BadRequest(f"the model takes {len(model.inputs)} inputs; v1's instances carry one: use the v2 API "
                         "(/v2/models/{name}/infer) with each input by name")
    if not isinstance(payload, dict) or "instances" not in payload:
        raise BadRequest('expected {"instances": [...]} with one row per instance')
    try:
        x = np.asarray(payload["instances"], dtype=model.input.dtype)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"instances must be a rectangular array of numbers: {exc}") from None
    return _check_shape(x, model.input, "instances")


def encode_v1(y: np.ndarray) -> bytes:
    return orjson.dumps({"predictions": y}, option=orjson.OPT_SERIALIZE_NUMPY)
