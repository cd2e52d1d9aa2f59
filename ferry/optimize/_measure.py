"""Measure a model the way it will be served: loaded from its saved MLflow model by Ferry's own
model server loader, called on numpy batches, on this machine."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ferry._timing import call_latencies, percentile

BATCHES = (1, 32)


@dataclass(frozen=True)
class Measurement:
    """What a candidate costs and how good it is. ``metric`` is ``test_accuracy`` for integer
    labels, ``test_rmse`` for float targets, None when no evaluation data was available."""

    metric: str | None
    value: float | None
    latency_ms: dict[int, tuple[float, float]]  # batch -> (p50, p99)
    throughput: float  # samples/s at the largest batch
    size_bytes: int
    parameters: int
    sparsity: float
    max_abs_diff: float | None = None  # largest output difference from the source, same inputs
    agreement: float | None = None  # share of inputs where the top-1 class matches the source's

    def p50(self, batch: int) -> float:
        return self.latency_ms[batch][0]

    def p99(self, batch: int) -> float:
        return self.latency_ms[batch][1]

    def as_metrics(self) -> dict[str, float]:
        """Flat MLflow metrics (a ``test_accuracy`` the promotion gates can read)."""
        out: dict[str, float] = {}
        if self.metric is not None and self.value is not None:
            out[self.metric] = self.value
        for batch, (p50, p99) in self.latency_ms.items():
            out[f"latency_p50_ms_b{batch}"] = p50
            out[f"latency_p99_ms_b{batch}"] = p99
        out.update(throughput_per_s=self.throughput, size_bytes=float(self.size_bytes),
                   parameters=float(self.parameters), sparsity=self.sparsity)
        if self.max_abs_diff is not None:
            out["max_abs_diff_vs_source"] = self.max_abs_diff
        if self.agreement is not None:
            out["top1_agreement_vs_source"] = self.agreement
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency_ms": {str(b): list(v) for b, v in self.latency_ms.items()}}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict_all(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(predict(x[i:i + batch])) for i in range(0, len(x), batch)])


def score(outputs: np.ndarray, labels: np.ndarray) -> tuple[str, float]:
    if np.issubdtype(labels.dtype, np.integer):
        return "test_accuracy", float((outputs.argmax(axis=1) == labels).mean())
    return "test_rmse", float(np.sqrt(((outputs.reshape(labels.shape) - labels) ** 2).mean()))


def batch_of(sample: np.ndarray, size: int) -> np.ndarray:
    """``size`` rows from ``sample``, repeated when it has fewer."""
    reps = -(-size // len(sample))
    return np.ascontiguousarray(np.concatenate([sample] * reps)[:size])


# MLflow's own files in a model directory: environment, signature examples, metadata
_MLFLOW_FILES = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
                 "serving_input_example.json", "registered_model_meta"}


def model_bytes(model_dir: Path) -> int:
    """Bytes of the model itself (weights, graph, external tensor data), not MLflow's files."""
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name not in _MLFLOW_FILES)


def measure(model_dir: Path, *, sample: np.ndarray, evaluation: tuple[np.ndarray, np.ndarray] | None,
            reference: np.ndarray | None, parameters: int, sparsity: float, threads: int = 1,
            budget_s: float = 1.0) -> tuple[Measurement, np.ndarray]:
    """Load ``model_dir`` as ``ferry serve`` would and measure it. Returns the measurement and
    the model's outputs on the evaluation inputs, or on ``sample`` without evaluation data
    (the source's outputs are the reference its candidates are compared with)."""
    from ferry.serve import load_model

    loaded = load_model(str(model_dir), onnx_threads=threads)
    sample = sample.astype(loaded.input.dtype, copy=False)
    with torch_threads(threads):
        latency = {}
        for batch in BATCHES:
            times = call_latencies(loaded.predict, batch_of(sample, batch), budget_s=budget_s)
            latency[batch] = (percentile(times, 50) * 1000, percentile(times, 99) * 1000)
        # outputs on the evaluation inputs (or the sample): accuracy, and agreement with the source
        inputs = evaluation[0] if evaluation is not None else sample
        outputs = predict_all(loaded.predict, inputs.astype(loaded.input.dtype, copy=False))
    metric, value = score(outputs, evaluation[1]) if evaluation is not None else (None, None)
    diff = agreement = None
    if reference is not None:
        diff = float(np.abs(outputs - reference).max())
        if outputs.ndim == 2 and outputs.shape[1] > 1:
            agreement = float((outputs.argmax(1) == reference.argmax(1)).mean())
    largest = max(BATCHES)
    return Measurement(metric, value, latency, largest / (latency[largest][0] / 1000), model_bytes(model_dir),
                       parameters, sparsity, diff, agreement), outputs
