"""Request decoding and response encoding: Open Inference Protocol v2 and KServe v1."""

from __future__ import annotations

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


def decode_v2(payload: Any, model: LoadedModel) -> tuple[np.ndarray, str | None]:
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise BadRequest('expected {"inputs": [{"name", "shape", "datatype", "data"}]}; "inputs" is missing or empty')
    if len(payload["inputs"]) != 1:
        raise BadRequest(f"the model takes 1 input ({model.input.name}); got {len(payload['inputs'])}")
    tensor = payload["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadRequest("inputs[0] must be an object with name, shape, datatype and data")
    for key in ("shape", "datatype", "data"):
        if key not in tensor:
            raise BadRequest(f"inputs[0].{key} is missing")
    datatype, shape = tensor["datatype"], tensor["shape"]
    expected = model.input.datatype
    if datatype != expected and not (datatype in _FLOAT_OK and expected in _FLOAT_OK):
        raise BadRequest(f"inputs[0].datatype is {datatype!r}; the model expects {expected!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"inputs[0].shape must be a list of non-negative integers (got {shape!r})")
    try:
        x = np.asarray(tensor["data"], dtype=OIP_DTYPES[datatype] if datatype in OIP_DTYPES else model.input.dtype)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"inputs[0].data is not a flat list of {datatype} numbers: {exc}") from None
    if x.size != int(np.prod(shape)):
        raise BadRequest(f"inputs[0].data has {x.size} values; shape {shape} needs {int(np.prod(shape))}")
    x = x.reshape(shape).astype(model.input.dtype, copy=False)
    return _check_shape(x, model, "inputs[0]"), payload.get("id")


def encode_v2(model: LoadedModel, y: np.ndarray, request_id: str | None) -> bytes:
    body: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": [{"name": model.output.name, "datatype": NUMPY_TO_OIP.get(y.dtype, "FP32"),
                     "shape": list(y.shape), "data": y.ravel()}],
    }
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


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
