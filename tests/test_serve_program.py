"""How the server calls a torch.export program: its operators directly, with the weights passed
in, where that is the same as the wrapped module (``ExportedProgram.module()``); the wrapped
module wherever it might not be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ferry.serve._model import TensorInfo, _direct_program_call

BATCH = torch.export.Dim("batch", min=2)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": self.a(x) + self.b(y), "diff": self.a(x) - self.b(y)}


class Counting(nn.Module):
    """Mutates a buffer on every call. Exported as it is, the graph adds to the buffer in place,
    whichever way it is called; decomposed (functional), the graph answers the new value and
    the wrapper writes it back, which a direct call would not."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.lin(x)


class Keyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.lin(inputs["x"])


def tensor(*shape: int) -> TensorInfo:
    return TensorInfo("x", np.dtype(np.float32), (-1, *shape))


def export(tmp_path, module: nn.Module, args: tuple, dynamic: bool = True, functional: bool = False):
    torch.manual_seed(0)
    module = module.eval()
    shapes = None
    if dynamic:
        shapes = ({"x": {0: BATCH}},) if isinstance(module, Keyword) else tuple({0: BATCH} for _ in args)
    program = torch.export.export(module, args, dynamic_shapes=shapes)
    if functional:
        program = program.run_decompositions()
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    return path, torch.export.load(str(path)).module()


@pytest.mark.parametrize("make,args,inputs,dynamic,functional,direct", [
    (Mlp, (torch.randn(3, 4),), [tensor(4)], True, False, True),
    (TwoInTwoOut, (torch.randn(3, 4), torch.randn(3, 3)), [tensor(4), tensor(3)], True, False, True),
    (Counting, (torch.randn(3, 4),), [tensor(4)], True, False, True),  # in place, either way
    (Mlp, (torch.randn(3, 4),), [tensor(4)], False, False, False),  # the batch was fixed at export
    (Mlp, (torch.randn(3, 4),), [tensor(5)], True, False, False),  # the signature states another width
    (Counting, (torch.randn(3, 4),), [tensor(4)], True, True, False),  # the wrapper writes the buffer back
    (Keyword, ({"x": torch.randn(3, 4)},), [tensor(4)], True, False, False),  # nested input
], ids=["mlp", "two-in-dict-out", "mutation-in-place", "static-batch", "signature-mismatch", "mutation-returned",
        "nested-input"])
def test_the_direct_call_is_taken_only_where_it_is_the_same(tmp_path, make, args, inputs, dynamic, functional, direct):
    torch.manual_seed(0)
    path, module = export(tmp_path, make(), args, dynamic, functional)
    call = _direct_program_call(path, module, inputs, torch.device("cpu"), torch.float32)
    assert (call is not None) is direct
    if call is None:
        return
    for rows in (1, 2, 17):
        batch = [torch.randn(rows, *a.shape[1:]) for a in args]
        with torch.inference_mode():
            ours, theirs = call(*batch), module(*batch)
        if isinstance(theirs, dict):
            assert list(ours) == list(theirs)
            ours, theirs = list(ours.values()), list(theirs.values())
        for a, b in zip(ours if isinstance(ours, list) else [ours], theirs if isinstance(theirs, list) else [theirs]):
            assert torch.equal(a, b)
