"""The optimizations themselves: each takes the source's layered module and gives back a new
module (or ONNX model) plus a line saying how it was made. Nothing here touches the registry."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ferry.errors import ConfigError
from ferry.optimize._graph import layer_counts

QUANTIZABLE = (nn.Linear, nn.LSTM, nn.GRU)  # what dynamic int8 quantization converts
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class Made:
    """One candidate as built: the module (or ONNX file) and how it was made."""

    kind: str  # int8 | pruned | onnx | distilled
    how: str  # one line for people
    tags: dict[str, str] = field(default_factory=dict)  # ferry.optimize.* tags for the version
    module: nn.Module | None = None
    onnx_path: Path | None = None
    float_module: nn.Module | None = None  # the weights before a lossy conversion (parameter count, sparsity)


def _has_layers(module: nn.Module) -> str:
    counts = layer_counts(module)
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())) or "no Linear, Conv, LSTM or GRU layers"


def quantize_int8(module: nn.Module) -> Made:
    """Post-training dynamic int8 quantization of Linear/LSTM/GRU layers (weights int8, activations
    quantized per batch at run time).

    torch.ao's ``quantize_dynamic``, not torchao's ``quantize_``: measured on a 2-core CPU with a
    64-4096-4096-4096-10 MLP, ``quantize_dynamic`` ran 5.0x faster than fp32 at batch 32 (3.6x at
    batch 1) while torchao 0.18's Int8DynamicActivationInt8Weight gave 3.7x (1.4x) and Int8WeightOnly
    was slower than fp32; torchao's kernels pay off under torch.compile and on GPUs, not in eager CPU.
    """
    present = [cls for cls in QUANTIZABLE if any(isinstance(m, cls) for m in module.modules())]
    if not present:
        raise ConfigError(f"--quantize int8: dynamic int8 quantization converts Linear, LSTM and GRU layers; "
                          f"this model has {_has_layers(module)}. Use --prune or --distill for it instead")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization's pointer to torchao
        quantized = torch.ao.quantization.quantize_dynamic(module, set(present), dtype=torch.qint8)
    converted = sum(1 for m in module.modules() if isinstance(m, tuple(present)))
    names = "/".join(c.__name__ for c in present)
    rest = layer_counts(module)
    for cls in present:
        rest.pop(cls.__name__, None)
    kept = f"; {', '.join(f'{n} x{c}' for n, c in sorted(rest.items()))} stay fp32" if rest else ""
    return Made("int8", f"dynamic int8 quantization of {converted} {names} layer(s){kept}",
                {"ferry.optimize.method": "quantize", "ferry.optimize.dtype": "int8",
                 "ferry.optimize.quantization": "dynamic"},
                module=quantized, float_module=module)


def prune_model(module: nn.Module, amount: float, *, structured: bool = False,
                finetune: tuple[np.ndarray, np.ndarray] | None = None, finetune_epochs: int = 2,
                seed: int = 0) -> Made:
    """Magnitude pruning made permanent. Unstructured: the ``amount`` smallest weights across all
    Linear/Conv layers (global L1), so the model reaches exactly that sparsity. Structured: the
    ``amount`` of output channels/units with the smallest L2 norm in every layer but the output
    layer (removing output units would remove classes). With ``finetune`` data, a short
    fine-tune runs with the masks in place before they are made permanent. ``amount`` is checked
    by ``optimize`` before anything is loaded."""
    from torch.nn.utils import prune

    layers = [m for m in module.modules() if isinstance(m, PRUNABLE)]
    if not layers:
        raise ConfigError(f"--prune: magnitude pruning works on Linear and Conv layers; this model has {_has_layers(module)}")
    if structured:
        targets = layers[:-1]
        if not targets:
            raise ConfigError("--prune --structured: the model's only layer is its output layer, whose units are the "
                              "outputs; prune without --structured instead")
        for layer in targets:
            prune.ln_structured(layer, "weight", amount=amount, n=2, dim=0)
    else:
        targets = layers
        prune.global_unstructured([(m, "weight") for m in targets], pruning_method=prune.L1Unstructured, amount=amount)
    tuned = ""
    if finetune is not None:
        _finetune(module, *finetune, epochs=finetune_epochs, seed=seed)
        tuned = f", fine-tuned {finetune_epochs} epoch(s)"
    for layer in targets:
        prune.remove(layer, "weight")
    kind = "structured L2 (output channels)" if structured else "global unstructured L1"
    return Made("pruned", f"{kind} magnitude pruning, amount {amount:g}{tuned}",
                {"ferry.optimize.method": "prune", "ferry.optimize.amount": f"{amount:g}",
                 "ferry.optimize.structured": str(structured).lower(),
                 "ferry.optimize.finetune_epochs": str(finetune_epochs if finetune is not None else 0)},
                module=module, float_module=module)


def _finetune(module: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int,
              batch_size: int = 64, lr: float = 5e-4) -> None:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    labels = torch.from_numpy(np.ascontiguousarray(y))
    classify = not labels.is_floating_point()
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            idx = order[start:start + batch_size]
            out = module(inputs[idx])
            loss = (nn.functional.cross_entropy(out, labels[idx]) if classify
                    else nn.functional.mse_loss(out, labels[idx].reshape(out.shape)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    module.eval()


def export_onnx(module: nn.Module, example: np.ndarray, path: Path, input_name: str, output_name: str) -> Made:
    """torch.onnx's exporter (torch.export based) with a dynamic batch dimension."""
    import logging

    batch = torch.export.Dim("batch", min=1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (torch.from_numpy(example),), dynamo=True, dynamic_shapes=({0: batch},),
                                        input_names=[input_name], output_names=[output_name], verbose=False)
        program.save(str(path))
    except Exception as exc:
        raise ConfigError(f"--onnx: torch.onnx could not export this model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]})") from exc
    import onnx

    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), 0)
    return Made("onnx", f"ONNX export (opset {opset}), run by ONNX Runtime",
                {"ferry.optimize.method": "onnx", "ferry.optimize.opset": str(opset)},
                onnx_path=path, float_module=module)
