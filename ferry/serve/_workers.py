"""``ferry serve --workers N``: N processes sharing the ports, for CPU serving on a pod with
several cores.

uvicorn's supervisor binds the HTTP socket once and hands it to each worker (it restarts a
worker that dies and forwards SIGTERM); each worker binds the gRPC port itself with
SO_REUSEPORT (grpcio's default on Linux), so the kernel spreads connections over them. Every
worker loads the model and runs its own batcher: ``--max-batch-size`` and ``--max-queue`` are
per worker, and each worker's torch uses ``cpus // N`` threads. Metrics are kept in
Prometheus' multiprocess mode (a folder of memory-mapped files the supervisor creates and
removes), so ``/metrics`` from any worker counts the requests of all of them. A model that
cannot load in a worker stops the supervisor, and with it every worker (``_stop_all``).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

CONFIG_ENV = "FERRY_SERVE_WORKER_CONFIG"


def create_app() -> Any:
    """One worker's app, from the configuration the supervisor put in the environment."""
    import torch

    from ferry.serve._app import model_server
    from ferry.serve._device import detect

    config = json.loads(os.environ[CONFIG_ENV])
    torch.set_num_threads(max(1, _cpus() // config.pop("workers")))
    config.pop("port")  # the supervisor's socket; gRPC binds its own port in each worker
    supervisor, failure_file = config.pop("supervisor"), config.pop("failure_file")
    return model_server(**config, machine=detect(), on_load_failure=lambda failure: _stop_all(failure, supervisor, failure_file))


def _stop_all(failure: Any, supervisor: int, failure_file: str) -> None:
    """A model that cannot load here loads nowhere: leave the reason for the supervisor (the
    first worker's, when several fail) and stop it with SIGTERM, as the kubelet would; it stops
    every worker (uvicorn's supervisor would otherwise restart this one, again and again)."""
    try:
        with open(failure_file, "x") as out:
            json.dump({"message": str(failure), "exit_code": failure.exit_code}, out)
    except FileExistsError:
        pass
    os.kill(supervisor, signal.SIGTERM)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
