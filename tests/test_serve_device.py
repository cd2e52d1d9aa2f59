"""Where a model serves: every case of the device/dtype choice, as a pure function of what was
asked and what the machine has (so it is tested on any machine)."""

from __future__ import annotations

import pytest

from ferry.errors import ConfigError
from ferry.serve._device import Machine, Placement, choose

CPU_ONLY = Machine()
CPU_BF16 = Machine(cpu_bf16=True)
TWO_GPUS = Machine(gpus=((9, 0), (7, 5)))  # an H100-class and a T4-class GPU

CASES = [
    ("auto", "float32", CPU_ONLY, Placement("cpu", "float32")),
    ("auto", "float32", TWO_GPUS, Placement("cuda:0", "float32")),
    ("auto", "float16", TWO_GPUS, Placement("cuda:0", "float16")),
    ("auto", "bfloat16", TWO_GPUS, Placement("cuda:0", "bfloat16")),
    ("cpu", "float32", TWO_GPUS, Placement("cpu", "float32")),
    ("cpu", "bfloat16", CPU_BF16, Placement("cpu", "bfloat16")),
    ("cuda", "float32", TWO_GPUS, Placement("cuda:0", "float32")),
    ("cuda:1", "float16", TWO_GPUS, Placement("cuda:1", "float16")),
]


@pytest.mark.parametrize("device,dtype,machine,placement", CASES)
def test_choices(device, dtype, machine, placement):
    assert choose(device, dtype, machine) == placement


REFUSED = [
    ("cuda", "float32", CPU_ONLY, "--device cuda: no GPU is visible"),
    ("cuda:0", "float32", CPU_ONLY, "no GPU is visible"),
    ("cuda:2", "float32", TWO_GPUS, "only 2 GPU(s) are visible (cuda:0 to cuda:1)"),
    ("gpu", "float32", TWO_GPUS, "--device must be auto, cpu, cuda or cuda:N (got 'gpu')"),
    ("cuda:x", "float32", TWO_GPUS, "--device must be auto, cpu, cuda or cuda:N"),
    ("cpu", "float16", TWO_GPUS, "--dtype float16 needs a GPU"),
    ("auto", "float16", CPU_ONLY, "--dtype float16 needs a GPU"),
    ("cpu", "bfloat16", CPU_ONLY, "this CPU has no native bfloat16"),
    ("cuda:1", "bfloat16", TWO_GPUS, "cuda:1 has compute capability 7.5; bfloat16 needs 8.0"),
    ("auto", "int8", TWO_GPUS, "--dtype must be one of float32, float16, bfloat16"),
]


@pytest.mark.parametrize("device,dtype,machine,message", REFUSED)
def test_refusals_say_why(device, dtype, machine, message):
    with pytest.raises(ConfigError) as err:
        choose(device, dtype, machine)
    assert message in str(err.value)
