"""Where a model serves and in which precision: ``--device auto|cpu|cuda|cuda:N`` and
``--dtype float32|float16|bfloat16``.

:func:`choose` is a pure function of what was asked and what the machine has (so every case is
tested on any machine); :func:`detect` reads the machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ferry.errors import ConfigError

DTYPES = ("float32", "float16", "bfloat16")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


@dataclass(frozen=True)
class Machine:
    """What the serving process can use: the CUDA devices torch sees (their compute
    capabilities, in index order) and whether the CPU computes bfloat16 natively."""

    gpus: tuple[tuple[int, int], ...] = ()
    cpu_bf16: bool = False


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda:N"
    dtype: str  # one of DTYPES

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def __str__(self) -> str:
        return f"{self.device} {self.dtype}"


def choose(device: str, dtype: str, machine: Machine) -> Placement:
    """The placement for ``device`` and ``dtype`` on ``machine``; a ConfigError says why one
    cannot be had and what to ask for instead."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    count = len(machine.gpus)
    if device == "auto":
        index = 0 if count else None
    elif device == "cpu":
        index = None
    elif match := _CUDA.match(device):
        index = int(match.group(1) or 0)
        if count == 0:
            raise ConfigError(f"--device {device}: no GPU is visible to this process (torch sees no CUDA device); "
                              "use --device cpu, or check the pod's nvidia.com/gpu request and the driver")
        if index >= count:
            raise ConfigError(f"--device {device}: only {count} GPU(s) are visible (cuda:0 to cuda:{count - 1})")
    else:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})")
    placement = Placement("cpu" if index is None else f"cuda:{index}", dtype)
    if dtype == "float16" and index is None:
        raise ConfigError("--dtype float16 needs a GPU: CPUs have no fast float16 arithmetic; serve float32 on CPU "
                          "(or make an int8 candidate with `ferry optimize --quantize int8`)")
    if dtype == "bfloat16":
        if index is None and not machine.cpu_bf16:
            raise ConfigError("--dtype bfloat16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); serve float32 "
                              "here, or bfloat16 on a GPU of compute capability 8.0 or newer")
        if index is not None and machine.gpus[index] < (8, 0):
            major, minor = machine.gpus[index]
            raise ConfigError(f"--dtype bfloat16: {placement.device} has compute capability {major}.{minor}; "
                              "bfloat16 needs 8.0 (Ampere) or newer: use --dtype float16 there")
    return placement


def detect() -> Machine:
    """This machine, as torch sees it."""
    import torch

    gpus = tuple(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())) \
        if torch.cuda.is_available() else ()
    return Machine(gpus=gpus, cpu_bf16=_cpu_has_bf16())


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
