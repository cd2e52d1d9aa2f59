"""Ferry's model server: Open Inference Protocol v2 and KServe v1 REST, dynamic batching,
Prometheus metrics, graceful drain on SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from ferry.errors import ConfigError
from ferry.serve._app import ModelServer, model_server
from ferry.serve._batcher import DynamicBatcher
from ferry.serve._dataplane import Metrics
from ferry.serve._errors import InferenceError, LoadFailed
from ferry.serve._model import LoadedModel, TensorInfo, load_model

__all__ = ["DynamicBatcher", "InferenceError", "LoadFailed", "LoadedModel", "Metrics", "ModelServer", "TensorInfo", "load_model", "serve"]


def serve(model_uri: str, *, name: str | None = None, host: str = "127.0.0.1", port: int = 8080,
          max_batch_size: int = 32, max_latency_ms: float = 5.0, max_queue: int = 1024,
          max_body_bytes: int = 8 << 20, drain_seconds: int = 30, grpc_port: int = 8081, device: str = "auto",
          dtype: str = "float32", workers: int = 1) -> None:
    """Serve ``model_uri`` until SIGTERM/SIGINT; in-flight requests are answered first. REST on
    ``port``; KServe's v2 gRPC protocol on ``grpc_port`` (0: none). The model runs on ``device``
    (``auto``: the first GPU when one is visible) in ``dtype``. A model that cannot be loaded
    (or warmed up) stops the server, every worker of it: :class:`LoadFailed` is raised."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from ferry.serve._device import choose, detect

    machine = detect()
    placement = choose(device, dtype, machine)  # an impossible placement is refused before anything starts
    served_name = name or _default_name(model_uri)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if workers > 1:
        if placement.is_cuda:
            raise ConfigError("--workers is for CPU serving: on a GPU one process batches for the whole device "
                              "(several would each hold a copy of the model in its memory); use --workers 1")
        _serve_workers(workers, model_uri=model_uri, name=served_name, host=host, port=port, grpc_port=grpc_port,
                       max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, max_queue=max_queue,
                       max_body_bytes=max_body_bytes, drain_seconds=drain_seconds, device=device, dtype=dtype)
        return
    failures: list[LoadFailed] = []

    def stop(failure: LoadFailed) -> None:  # in the loading thread: the main loop sees it within 0.1 s
        failures.append(failure)
        server.should_exit = True

    app = model_server(model_uri=model_uri, name=served_name, host=host, grpc_port=grpc_port,
                       max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, max_queue=max_queue,
                       max_body_bytes=max_body_bytes, drain_seconds=drain_seconds, device=device, dtype=dtype,
                       machine=machine, on_load_failure=stop)
    # uvicorn drains on SIGTERM, then re-raises the signal through the handler it found at
    # start (set above to a no-op), so a drained server exits 0 (not 143), whatever the
    # model's libraries installed. The server is uvicorn.run's, kept here so that a model
    # that cannot load stops it: a pod that stays live and never ready is not restarted,
    # and says why only in its log.
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", proxy_headers=False,
        timeout_graceful_shutdown=drain_seconds, http="httptools", loop="uvloop" if _has_uvloop() else "asyncio"))
    server.run()
    if failures:
        raise failures[0]
    if not server.started:  # as uvicorn.run: a start-up that failed without exiting
        sys.exit(STARTUP_FAILURE)


def _serve_workers(workers: int, **config: object) -> None:
    """The supervisor of ``workers`` processes (see ``_workers``). A worker whose model cannot
    load leaves the reason in a file of the run's folder and stops the supervisor (SIGTERM),
    which stops every worker; the reason is then raised here, as one process would raise it."""
    import json
    import os
    import shutil
    import tempfile

    import uvicorn

    from ferry.serve._workers import CONFIG_ENV

    run_dir = Path(tempfile.mkdtemp(prefix="ferry-serve-"))
    metrics_dir, failure_file = run_dir / "metrics", run_dir / "load-failure.json"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[CONFIG_ENV] = json.dumps({**config, "workers": workers, "supervisor": os.getpid(),
                                         "failure_file": str(failure_file)})
    try:
        uvicorn.run("ferry.serve._workers:create_app", factory=True, workers=workers, host=str(config["host"]),
                    port=int(config["port"]), log_level="warning", access_log=False, lifespan="on",  # type: ignore[call-overload]
                    proxy_headers=False,  # the server reads no client address
                    timeout_graceful_shutdown=int(config["drain_seconds"]), http="httptools",  # type: ignore[call-overload]
                    loop="uvloop" if _has_uvloop() else "asyncio")
        failure = json.loads(failure_file.read_text()) if failure_file.is_file() else None
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if failure is not None:
        raise LoadFailed(failure["message"], failure["exit_code"])


def _default_name(uri: str) -> str:
    from pathlib import PurePosixPath
    from urllib.parse import urlparse

    from ferry._modeluri import PREFIX, parse_models_uri

    if uri.startswith(PREFIX):
        return parse_models_uri(uri)[0]
    parsed = urlparse(uri)
    parts = [p for p in PurePosixPath(parsed.path or uri).parts if p not in ("/", "model", "artifacts")]
    return parts[-1] if parts else "model"


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
