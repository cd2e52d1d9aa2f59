"""What each request of ``ferry plan`` sends: rows for the model's input, a whole Open Inference
Protocol v2 request, or one row of zeros shaped as the model's metadata says."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ferry.errors import ConfigError


def _rows_request(rows: Any, inputs: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """A v2 request of ``rows`` for the model's one input (its datatype and row shape)."""
    if len(inputs) != 1:
        names = ", ".join(i["name"] for i in inputs)
        raise ConfigError(f"--payload {where}: the model has {len(inputs)} inputs ({names}); give a whole v2 "
                          'request ({"inputs": [...]}) instead of rows')
    (spec,) = inputs
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"--payload {where}: expected a non-empty list of rows, or a v2 request with \"inputs\"")
    flat: list[Any] = []

    def walk(value: Any) -> list[int]:
        if isinstance(value, list):
            shapes = [walk(v) for v in value]
            if any(s != shapes[0] for s in shapes):
                raise ConfigError(f"--payload {where}: the rows are ragged; every row must have the same shape")
            return [len(value), *(shapes[0] if shapes else [])]
        flat.append(value)
        return []

    shape = walk(rows)
    return {"inputs": [{"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": flat}]}


def _zeros_request(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of zeros for each input, shaped as the model's metadata says."""
    tensors = []
    for spec in inputs:
        shape = [1] + [d if d > 0 else 1 for d in spec["shape"][1:]]
        zero: Any = False if spec["datatype"] == "BOOL" else 0
        tensors.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"],
                        "data": [zero] * math.prod(shape)})
    return {"inputs": tensors}


def payload_body(payload: str | None, metadata: dict[str, Any]) -> tuple[bytes, int]:
    """The request body every load step sends, and its rows: ``payload`` is JSON rows for the
    model's input (``[[...], ...]``), a whole v2 request, or ``@FILE`` holding either; without
    it, one row of zeros shaped as the model's metadata says."""
    inputs = metadata.get("inputs") or []
    if payload is None:
        request = _zeros_request(inputs)
    else:
        where = payload if not payload.startswith("@") else payload[1:]
        text = payload
        if payload.startswith("@"):
            try:
                text = Path(payload[1:]).read_text()
            except OSError as exc:
                raise ConfigError(f"--payload: cannot read {payload[1:]}: {exc.strerror or exc}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            what = where if payload.startswith("@") else "the value"
            raise ConfigError(f"--payload: {what} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                              'give rows like [[0.1, 0.2]] or {"inputs": [...]}, or @FILE') from None
        if isinstance(doc, dict) and "inputs" in doc:
            request = doc
        else:
            request = _rows_request(doc, inputs, where if payload.startswith("@") else "rows")
    rows = max((t.get("shape") or [1])[0] for t in request["inputs"]) if request.get("inputs") else 1
    return json.dumps(request).encode(), int(rows)
