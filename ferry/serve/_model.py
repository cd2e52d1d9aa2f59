"""Load an MLflow model for serving: PyTorch flavor (eager, TorchScript or torch.export) or
ONNX flavor (onnxruntime), from ``models:/name@alias``, ``models:/name/N``, ``runs:/...``,
``s3://...`` or a local path."""

from __future__ import annotations

import contextlib
import logging
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
    """A model ready to serve: its tensors (from the MLflow signature, in its order) and ``run``,
    which takes one array per input (rows along axis 0) and returns one per output."""

    name: str
    version: str
    platform: str  # "pytorch" | "onnx"
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    source: str
    device: str = "cpu"
    dtype: str = "float32"
    in_thread: bool = True  # whether the batcher runs it in a worker thread (see ``_batcher``)

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    @property
    def output(self) -> TensorInfo:
        return self.outputs[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The first output for one input array: the common case of a one-input model."""
        return self.run([x])[0]

    def warm_up(self, max_batch: int) -> None:
        """Run batch sizes 1 and ``max_batch`` once, so the first requests pay no first-call costs."""
        for batch in sorted({1, max_batch}):
            self.run([np.zeros((batch, *[d if d > 0 else 1 for d in t.shape[1:]]), dtype=t.dtype) for t in self.inputs])


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


def load_model(uri: str, name: str | None = None, *, onnx_threads: int = 1, device: str = "cpu",
               dtype: str = "float32", machine: Any = None) -> LoadedModel:
    """Load the model at ``uri``, ready to run on ``device`` (``auto``: the first GPU when one
    is visible) in ``dtype`` (torch models).
    ``onnx_threads``: ONNX Runtime's intra-op threads (1 by default: a server's concurrency
    comes from batching many requests, not from splitting one)."""
    with _local_copy(uri) as (path, default_name, version):
        return _load(uri, path, name or default_name, version, onnx_threads, device, dtype, machine)


def _load(uri: str, path: Path, name: str, version: str, onnx_threads: int, device: str = "cpu",
          dtype: str = "float32", machine: Any = None) -> LoadedModel:
    from ferry.serve._device import choose, detect

    from mlflow.models import Model

    if not (path / "MLmodel").is_file():
        raise ConfigError(f"{uri}: not an MLflow model (no MLmodel file in {path})")
    meta = Model.load(str(path))
    if meta.signature is None or meta.signature.inputs is None:
        raise ConfigError(f"{uri}: the model has no signature; log it with one (Ferry's runtime always does)")
    inputs = _tensors(meta.signature.inputs, "input", uri)
    outputs = _tensors(meta.signature.outputs, "output", uri) if meta.signature.outputs else \
        [TensorInfo("output-0", np.dtype(np.float32), (-1,))]
    placement = choose(device, dtype, machine if machine is not None else detect())
    if "onnx" in meta.flavors:
        if dtype != "float32":
            raise ConfigError(f"--dtype {dtype} applies to torch models; an ONNX model runs in the types it was "
                              "exported with (export a reduced-precision graph instead)")
        run, placement = _onnx_predictor(path, meta.flavors["onnx"], onnx_threads, placement,
                                         explicit=device != "auto", inputs=inputs, outputs=outputs)
        platform, in_thread = "onnx", True  # one InferenceSession.run releases the GIL once
    elif "pytorch" in meta.flavors:
        run, in_thread = _torch_predictor(path, meta.flavors["pytorch"], placement, inputs, outputs)
        platform = "pytorch"
    else:
        raise ConfigError(f"{uri}: flavor(s) {sorted(meta.flavors)} are not served; Ferry serves pytorch and onnx models")
    return LoadedModel(name, version, platform, inputs, outputs, run, uri, placement.device, placement.dtype, in_thread)


def _tensors(schema: Any, kind: str, uri: str) -> list[TensorInfo]:
    """The signature's tensors, in order; an unnamed one is ``input-0``, ``output-1``, ..."""
    specs = schema.inputs
    if not schema.is_tensor_spec():
        raise ConfigError(f"{uri}: the signature's {kind}s are columns, not tensors; log the model with a tensor "
                          "signature (numpy arrays as input_example), as Ferry's runtime does")
    return [TensorInfo(spec.name or f"{kind}-{i}", np.dtype(spec.type), tuple(spec.shape)) for i, spec in enumerate(specs)]


def _as_list(result: Any, outputs: list[TensorInfo]) -> list[Any]:
    """A module's answer as one tensor per output: a tensor, a tuple/list, or a dict (by the
    signature's output names when they match, else in its own order)."""
    if isinstance(result, dict):
        names = [t.name for t in outputs]
        return [result[n] for n in names] if all(n in result for n in names) else list(result.values())
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def _torch_predictor(path: Path, flavor: dict[str, Any], placement: Any, inputs: list[TensorInfo],
                     outputs: list[TensorInfo]) -> tuple[Callable[[list[np.ndarray]], list[np.ndarray]], bool]:
    """The inputs go to the module positionally, in the signature's order; it may answer a
    tensor, a tuple or a dict. On CPU a batch is used in place; on a GPU it is copied through
    pinned host memory with a non-blocking transfer. Floating answers come back as float32
    whatever the dtype. Also says whether to run it in a worker thread: on a GPU, or for a
    TorchScript module (one call into C++); an eager module or a torch.export program on the
    CPU releases the GIL around each operator and runs in the event loop (see ``_batcher``)."""
    import mlflow.pytorch
    import torch

    # torch.export.load logs the traceback of its first try at a file it cannot read (a
    # warning), then tries the older format, whose error says why: one report, not two
    with _quiet("torch.export"):
        module = mlflow.pytorch.load_model(str(path), map_location="cpu")
    try:
        module.eval()  # eager and TorchScript modules; a torch.export program is inference-only already
    except (NotImplementedError, RuntimeError):
        pass
    dtype = getattr(torch, placement.dtype)
    if placement.is_cuda or placement.dtype != "float32":
        module = module.to(device=placement.device, dtype=dtype)
    device = torch.device(placement.device)
    program = path / flavor.get("model_data", "data") / "model.pt2"
    if program.is_file():  # read by MLflow's loader above, with its checks: a torch.export program
        module = _direct_program_call(program, module, inputs, device, dtype) or module

    def prepare(x: np.ndarray) -> Any:
        t = torch.from_numpy(x)
        if placement.is_cuda:
            t = t.pin_memory().to(device, non_blocking=True)
        return t.to(dtype) if t.is_floating_point() and dtype is not torch.float32 else t

    def answer(t: Any) -> np.ndarray:
        t = t.float() if t.is_floating_point() and t.dtype is not torch.float32 else t
        return t.cpu().numpy() if placement.is_cuda else t.numpy()

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            return [answer(t) for t in _as_list(module(*[prepare(x) for x in xs]), outputs)]

    return run, placement.is_cuda or isinstance(module, torch.jit.ScriptModule)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """A library's logger held to errors for the block (its warnings are its own retries)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _direct_program_call(program: Path, module: Any, inputs: list[TensorInfo], device: Any, dtype: Any) -> Callable[..., Any] | None:
    """The operators of a torch.export program, called with its weights passed in, without the
    wrapper that ``ExportedProgram.module()`` puts around them (flattening the inputs, checking
    guards, rebuilding the outputs): on a small model the wrapper costs more than the operators
    (digits CNN on one CPU core, one row: 355 µs a call through the wrapper, 152 µs without;
    32 rows: 1,038 vs 776 µs). Taken only for a program that takes its inputs as positional
    tensors with a dynamic batch dimension and the other dimensions the signature's, answers
    plain outputs and returns no mutation for the wrapper to write back, and only when it answers a probe batch exactly as the
    wrapped module does; otherwise None, and the wrapped module serves."""
    import torch
    from torch.export.graph_signature import InputKind, OutputKind
    from torch.utils import _pytree as pytree

    ep = torch.export.load(str(program))
    signature = ep.graph_signature
    weights_kinds = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    if any(spec.kind not in (*weights_kinds, InputKind.USER_INPUT) for spec in signature.input_specs) or \
            any(spec.kind is not OutputKind.USER_OUTPUT for spec in signature.output_specs):
        return None  # tokens, custom objects or mutations: the wrapper's business
    if ep.call_spec.in_spec != pytree.tree_structure((tuple(range(len(inputs))), {})):
        return None  # nested or keyword inputs
    placeholders = {node.name: node for node in ep.graph.nodes if node.op == "placeholder"}
    for spec, info in zip([s for s in signature.input_specs if s.kind is InputKind.USER_INPUT], inputs):
        shape = getattr(placeholders[spec.arg.name].meta.get("val"), "shape", None)
        if shape is None or len(shape) != len(info.shape) or isinstance(shape[0], int) or \
                any(not isinstance(d, int) or (want > 0 and d != want) for d, want in zip(shape[1:], info.shape[1:])):
            return None  # a batch dimension fixed at export, or dimensions the signature does not state
    try:
        weights = [_attribute(module, spec.target) for spec in signature.input_specs if spec.kind in weights_kinds]
    except AttributeError:
        return None
    graph, out_spec = ep.graph_module, ep.call_spec.out_spec

    def call(*xs: Any) -> Any:
        return pytree.tree_unflatten(list(graph(*weights, *xs)), out_spec)

    probe = [torch.zeros((2, *info.shape[1:]), dtype=dtype if np.issubdtype(info.dtype, np.floating)
                         else getattr(torch, info.dtype.name), device=device) for info in inputs]
    with torch.inference_mode():
        try:
            ours, theirs = pytree.tree_leaves(call(*probe)), pytree.tree_leaves(module(*probe))
        except Exception:  # noqa: BLE001 - any doubt: the wrapped module serves
            return None
    if len(ours) != len(theirs) or not all(torch.equal(a, b) for a, b in zip(ours, theirs)):
        return None
    return call


def _attribute(module: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _onnx_predictor(path: Path, flavor: dict[str, Any], threads: int, placement: Any, explicit: bool,
                    inputs: list[TensorInfo], outputs: list[TensorInfo]) -> tuple[Callable[[list[np.ndarray]], list[np.ndarray]], Any]:
    """ONNX Runtime's CUDA execution provider on a GPU (it needs onnxruntime-gpu), else the CPU's."""
    import onnxruntime as ort

    from ferry.serve._device import Placement

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers: list[Any] = ["CPUExecutionProvider"]
    if placement.is_cuda:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(placement.device.split(":")[1])}))
        elif explicit:
            raise ConfigError(f"--device {placement.device}: ONNX models run on a GPU through onnxruntime-gpu's CUDA "
                              "execution provider, which is not installed (pip install onnxruntime-gpu)")
        else:
            placement = Placement("cpu", placement.dtype)  # auto: the GPU is there, the provider is not
    session = ort.InferenceSession(str(path / flavor["data"]), options, providers=providers)
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    if len(graph_inputs) != len(inputs):
        raise ConfigError(f"the ONNX graph takes {len(graph_inputs)} inputs but the signature lists {len(inputs)}")
    # By name when the signature names the graph's tensors, else in order.
    feed = [t.name for t in inputs] if {t.name for t in inputs} == set(graph_inputs) else graph_inputs
    fetch = [t.name for t in outputs] if {t.name for t in outputs} <= set(graph_outputs) else None

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(fetch, dict(zip(feed, xs)))

    return run, placement
