"""Models whose speed is known in advance, for measuring the server rather than the model:
``SleepModel`` sleeps ``base_ms + per_row_ms x rows`` per call and answers each row's sum.

Saved as an eager MLflow pytorch model (pickled by value, so the server loading it needs no
import of this module). An eager module on the CPU runs in the server's event loop (see
``ferry/serve/_batcher.py``): while it sleeps the server does nothing else, so one call at a
time is served and every figure follows from the two constants:

- ``--max-batch-size 1``: a single serial queue with service time T = base + per_row. In a
  closed loop of C clients each request waits for the C - 1 ahead of it: latency ~ C x T,
  throughput ~ 1 / T whatever C (it stops growing at C = 2).
- dynamic batching (max batch >= C): when the C requests of a closed loop ride one call,
  latency ~ base + C x per_row and throughput ~ C / latency. Whether they do depends on the
  batcher's phase: at C = 2 after a step of single requests, two clients can keep alternating
  one-row batches (measured: 41 -> 41 requests/s from C = 1 to 2 in one run, 39 -> 51 -> 101
  -> 192 up to C = 8 in another), so the tests use the serial queue above.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

FEATURES = 4


def sleep_model(base_ms: float, per_row_ms: float = 0.0):
    """The torch module (torch is imported here, not at module level)."""
    import torch

    class SleepModel(torch.nn.Module):
        def __init__(self, base_s: float, per_row_s: float):
            super().__init__()
            self.base_s, self.per_row_s = base_s, per_row_s

        def forward(self, x):
            time.sleep(self.base_s + self.per_row_s * x.shape[0])
            return x.sum(dim=1, keepdim=True)

    return SleepModel(base_ms / 1000, per_row_ms / 1000).eval()


def save_sleep_model(path: Path, *, base_ms: float, per_row_ms: float = 0.0) -> Path:
    """Save the sleep model as an MLflow pytorch model in the folder ``path`` (which ``ferry
    serve`` takes as its model URI); no tracking store is touched."""
    import sys

    import cloudpickle
    import mlflow.pytorch
    from mlflow.models import infer_signature

    example = np.ones((2, FEATURES), dtype=np.float32)
    signature = infer_signature(example, example.sum(axis=1, keepdims=True))
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the class travels in the pickle, not as an import
    try:
        mlflow.pytorch.save_model(sleep_model(base_ms, per_row_ms), str(path), signature=signature,
                                  serialization_format="pickle", pip_requirements=["torch"])
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    return path


def v2_body(rows: int = 1, input_name: str = "input-0") -> bytes:
    """A v2 inference request for the sleep model: ``rows`` rows of ones."""
    import json

    return json.dumps({"inputs": [{"name": input_name, "shape": [rows, FEATURES], "datatype": "FP32",
                                   "data": [1.0] * (rows * FEATURES)}]}).encode()
