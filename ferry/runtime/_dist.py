"""Distributed setup from the environment the training operator (or torchrun, or Ferry's
local executor) injects; a single process with no environment works too."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ferry import settings
from ferry.runtime._exit import skip_exit_collection


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def hparam(self, name: str, default: Any) -> Any:
        """A hyperparameter, cast to the type of ``default``."""
        value = self.hyperparameters.get(name, default)
        if isinstance(default, bool) and isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        return type(default)(value) if default is not None else value

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to this process's device and wrap it in DDP when distributed."""
        model = model.to(self.device)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, *values: float) -> list[float]:
        """Sum numbers across ranks (e.g. correct / seen counts for accuracy)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor.tolist()


def _int_env(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "") != "":
            return int(os.environ[name])
    return default


def init(timeout_s: float = 300.0) -> Context:
    """Initialize ``torch.distributed`` (nccl on GPU, gloo on CPU) from MASTER_ADDR,
    MASTER_PORT, WORLD_SIZE and RANK, pick the device, and read the hyperparameters.

    The process's exit then skips the garbage collector's passes over module teardown
    (seconds in a process holding torch and MLflow; see ``_exit.py``)."""
    skip_exit_collection()
    world_size = _int_env("WORLD_SIZE", default=1)
    rank = _int_env("RANK", default=0)
    local_rank = _int_env("LOCAL_RANK", default=0)
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank % max(1, torch.cuda.device_count())}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = None
    if world_size > 1:
        backend = "nccl" if cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                    timeout=timedelta(seconds=timeout_s))
    hparams = json.loads(settings.FERRY_HYPERPARAMETERS.get() or "{}")
    return Context(rank, local_rank, world_size, device, backend, hparams)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


PROGRESS_PREFIX = "[ferry] progress "


def progress(ctx: Context, step: int, total: int, **metrics: float) -> None:
    """A machine-readable progress line from rank 0 (the local executor draws a progress bar
    from it; in a pod it is a plain log line), also handed to the tracking sidecar, which posts
    it to Kubeflow Trainer's status server when the pod runs under a TrainJob."""
    if not ctx.is_primary:
        return
    fields = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(f"{PROGRESS_PREFIX}step={step} total={total} {fields}", flush=True)
    from ferry.runtime._tracking import report_progress

    report_progress(step, total)
