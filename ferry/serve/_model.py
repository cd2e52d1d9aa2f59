"""Load an MLflow model for serving: PyTorch flavor (eager, TorchScript or torch.export) or
ONNX flavor (onnxruntime), from ``models:/name@alias``, ``models:/name/N``, ``runs:/...``,
``s3://...`` or a local path."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np

from ferry.errors import ConfigError

# Open Inference Protocol datatypes <-> numpy
OIP_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NUMPY_TO_OIP = {np.dtype(v): k for k, v in OIP_DTYPES.items()}


@dataclass
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for the batch (and any dynamic) dimension

    @property
    def datatype(self) -> str:
        return NUMPY_TO_OIP[self.dtype]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class LoadedModel:
    name: str
    version: str
    platform: str  # "pytorch" | "onnx"
    input: TensorInfo
    output: TensorInfo
    predict: Callable[[np.ndarray], np.ndarray]
    source: str

    def warm_up(self, max_batch: int) -> None:
        """Run batch sizes 1 and ``max_batch`` once, so the first requests pay no first-call costs."""
        dims = [d if d > 0 else 1 for d in self.input.shape[1:]]
        for batch in sorted({1, max_batch}):
            self.predict(np.zeros((batch, *dims), dtype=self.input.dtype))


@contextlib.contextmanager
def _local_copy(uri: str) -> Iterator[tuple[Path, str, str]]:
    """The model as a local folder, for as long as the block runs: a local path as it is, else
    a download into a temporary folder that is removed afterwards (the loaded model lives in
    memory; nothing is left under the temp dir). Yields (path, name, version)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and Path(parsed.path if parsed.scheme else uri).exists():
        path = Path(parsed.path if parsed.scheme else uri)
        yield path, path.name, "1"
        return
    import mlflow.artifacts

    name, version = "model", "1"
    if parsed.scheme == "models":
        from mlflow import MlflowClient

        from ferry._modeluri import alias_version

        try:
            name, pinned = alias_version(MlflowClient(), uri)
        except Exception as exc:
            raise ConfigError(f"{uri}: no such registered model or alias ({exc})") from exc
        version = pinned or version
    with tempfile.TemporaryDirectory(prefix="ferry-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except Exception as exc:
            raise ConfigError(f"cannot fetch model {uri}: {exc}") from exc
        yield Path(local), name, version


def load_model(uri: str, name: str | None = None, *, onnx_threads: int = 1) -> LoadedModel:
    """Load the model at ``uri`` into a ``predict(np.ndarray) -> np.ndarray`` callable.
    ``onnx_threads``: ONNX Runtime's intra-op threads (1 by default: a server's concurrency
    comes from batching many requests, not from splitting one)."""
    with _local_copy(uri) as (path, default_name, version):
        return _load(uri, path, name or default_name, version, onnx_threads)


def _load(uri: str, path: Path, name: str, version: str, onnx_threads: int) -> LoadedModel:
    from mlflow.models import Model

    if not (path / "MLmodel").is_file():
        raise ConfigError(f"{uri}: not an MLflow model (no MLmodel file in {path})")
    meta = Model.load(str(path))
    if meta.signature is None or meta.signature.inputs is None:
        raise ConfigError(f"{uri}: the model has no signature; log it with one (Ferry's runtime always does)")
    spec = meta.signature.inputs.inputs[0]
    input_info = TensorInfo(spec.name or "input-0", np.dtype(spec.type), tuple(spec.shape))
    out_spec = meta.signature.outputs.inputs[0] if meta.signature.outputs else None
    output_info = TensorInfo((out_spec.name if out_spec else None) or "output-0",
                             np.dtype(out_spec.type) if out_spec else np.dtype(np.float32),
                             tuple(out_spec.shape) if out_spec else (-1,))
    if "onnx" in meta.flavors:
        predict, platform = _onnx_predictor(path, meta.flavors["onnx"], onnx_threads), "onnx"
    elif "pytorch" in meta.flavors:
        predict, platform = _torch_predictor(path), "pytorch"
    else:
        raise ConfigError(f"{uri}: flavor(s) {sorted(meta.flavors)} are not served; Ferry serves pytorch and onnx models")
    return LoadedModel(name, version, platform, input_info, output_info, predict, uri)


def _torch_predictor(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import mlflow.pytorch
    import torch

    module = mlflow.pytorch.load_model(str(path), map_location="cpu")
    try:
        module.eval()  # eager and TorchScript modules; a torch.export program is inference-only already
    except (NotImplementedError, RuntimeError):
        pass

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return predict


def _onnx_predictor(path: Path, flavor: dict[str, Any], threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path / flavor["data"]), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return predict
