"""Give a model loaded from the registry real layer modules again.

MLflow 3 stores PyTorch models in the torch.export format. Loaded back, such a model is a
``GraphModule`` whose Linear and Conv layers are calls to ``aten.linear`` / ``aten.conv2d`` on
attribute tensors, not ``nn.Linear`` / ``nn.Conv2d`` modules, so ``quantize_dynamic`` and
``torch.nn.utils.prune`` (which work on modules) would find nothing to change. ``layered``
rewrites each such call into a layer module that shares the same parameters, in a plain
``GraphModule`` that trains, pickles and exports again. An eager ``nn.Module`` (a model logged
in pickle format) already has its layers and is only copied.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten

# aten op -> (layer class, number of spatial dims; 0 for Linear)
_LAYER_OPS: dict[Any, tuple[type[nn.Module], int]] = {
    aten.linear.default: (nn.Linear, 0),
    aten.conv1d.default: (nn.Conv1d, 1),
    aten.conv2d.default: (nn.Conv2d, 2),
}

# Layer types each method can change; anything else is left as it is.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LSTM, nn.GRU)


def _layer(op: Any, args: tuple[Any, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    cls, dims = _LAYER_OPS[op]
    if dims == 0:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        # aten.convNd(input, weight, bias, stride, padding, dilation, groups), trailing defaults omitted
        stride, padding, dilation, groups = (list(args[3:]) + [1, 0, 1, 1][len(args[3:]):])[:4]
        layer = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                    padding=padding, dilation=dilation, groups=groups, bias=bias is not None)
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


def _attr(gm: fx.GraphModule, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def layered(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every linear/conv call is an ``nn.Linear``/``nn.ConvNd``."""
    if not isinstance(model, fx.GraphModule):
        return copy.deepcopy(model)
    gm = copy.deepcopy(model)
    graph, env, attrs = fx.Graph(), {}, {}
    used: set[str] = set()

    def arg(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n])

    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == "_guards_fn":
            continue  # torch.export's input-shape guard; the exported program checks shapes itself
        if node.op == "call_function" and node.target in _LAYER_OPS and _attr_args(node):
            weight_node, bias_node = node.args[1], node.args[2] if len(node.args) > 2 else None
            weight = _attr(gm, weight_node.target)
            bias = _attr(gm, bias_node.target) if bias_node is not None else None
            name = _layer_name(weight_node.target, used)
            attrs[name] = _layer(node.target, node.args, weight, bias)
            env[node] = graph.call_module(name, (arg(node.args[0]),))
            continue
        if node.op == "output":
            out = node.args[0]
            # torch.export wraps the outputs in a tuple; a single output goes back to bare
            if isinstance(out, (tuple, list)) and len(out) == 1:
                out = out[0]
            graph.output(arg(out))
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node.op in ("get_attr", "call_module"):
            attrs[node.target] = _attr(gm, node.target)
    for node in reversed(list(graph.nodes)):  # the layer calls left their weights' get_attr unused
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    live = {n.target for n in graph.nodes if n.op in ("get_attr", "call_module")}
    return fx.GraphModule({k: v for k, v in attrs.items() if k in live}, graph, class_name=type(model).__name__)


def _attr_args(node: fx.Node) -> bool:
    weight = node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
    return isinstance(weight, fx.Node) and weight.op == "get_attr" and (
        bias is None or (isinstance(bias, fx.Node) and bias.op == "get_attr"))


def _layer_name(weight_target: str, used: set[str]) -> str:
    base = weight_target.removesuffix(".weight").replace(".", "_") or "layer"
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def layer_counts(model: nn.Module) -> Counter[str]:
    """How many modules of each weight-carrying layer type ``model`` has."""
    return Counter(type(m).__name__ for m in model.modules() if isinstance(m, WEIGHT_LAYERS))


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices/kernels of every layer (what pruning and sparsity are about)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the layer weights (0.0 for a model without any)."""
    weights = weight_tensors(model)
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
