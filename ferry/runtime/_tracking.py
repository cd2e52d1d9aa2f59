"""MLflow tracking for a distributed job: one run per submission, rank 0 logs, training never
waits for the tracking server.

- Every rank and every restart of a submission writes to the SAME run: the run is found by the
  ``ferry.submission_id`` tag and resumed, never created per process.
- ``log_metrics`` only appends to a bounded in-memory buffer; a background thread sends
  batches. While the server is unreachable the buffer holds the points (oldest dropped past
  the bound, with a warning) and they are sent when it is back.
- ``close`` flushes what is left, waiting for the server up to ``FERRY_FLUSH_TIMEOUT`` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from ferry import settings

log = logging.getLogger("ferry.tracking")

SUBMISSION_TAG = "ferry.submission_id"
_BATCH = 1000  # MLflow's per-request limit for log_batch metrics


def _default_mlflow_http_env() -> None:
    """MLflow retries a failed request up to 7 times with exponential backoff (minutes in
    all). The flush thread does its own retrying, so keep MLflow's short unless the user set it."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # MLflow samples system metrics every 10 s; short jobs would record none.
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "2")


class Tracker:
    """Rank-aware MLflow logging. On non-primary ranks every method is a no-op."""

    def __init__(self, *, is_primary: bool, tracking_uri: str | None = None, experiment: str | None = None,
                 submission_id: str | None = None, run_name: str | None = None, client: Any = None,
                 buffer_size: int | None = None, flush_interval: float = 1.0, system_metrics: bool = True):
        self.is_primary = is_primary
        self.tracking_uri = tracking_uri or settings.MLFLOW_TRACKING_URI.get()
        self.experiment = experiment or settings.MLFLOW_EXPERIMENT_NAME.get() or settings.FERRY_JOB_NAME.get() or "Default"
        self.submission_id = submission_id or settings.FERRY_SUBMISSION_ID.get() or self._fallback_submission()
        self.run_name = run_name
        self.flush_interval = flush_interval
        self.system_metrics = system_metrics
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self.dropped = 0
        self._client = client
        self._buffer: deque[Any] = deque(maxlen=buffer_size or int(settings.FERRY_METRICS_BUFFER.get() or 100000))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreachable_since: float | None = None

    @staticmethod
    def _fallback_submission() -> str:
        # Without a submission id (e.g. a plain `kubectl apply`), the job's identity stands in:
        # restarts still share one run; a finished run is not resumed (see start()).
        return f"{settings.FERRY_NAMESPACE.get()}/{settings.FERRY_JOB_NAME.get() or 'job'}"

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def start(self) -> str | None:
        """Find this submission's run and resume it, or create it. Returns the run id."""
        if not self.is_primary:
            return None
        _default_mlflow_http_env()
        import mlflow

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        self.tracking_uri = mlflow.get_tracking_uri()
        self.experiment_id = self._experiment_id()
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{SUBMISSION_TAG}` = '{self.submission_id}' and attributes.status != 'FINISHED'",
            max_results=1,
        )
        if found:
            self.run_id, self.resumed = found[0].info.run_id, True
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={SUBMISSION_TAG: self.submission_id})
            self.run_id = run.info.run_id
        # The fluent run drives MLflow's system-metrics thread and log_model.
        mlflow.start_run(run_id=self.run_id, log_system_metrics=self.system_metrics)
        self._log_job_identity()
        self._thread = threading.Thread(target=self._flush_loop, name="ferry-metrics", daemon=True)
        self._thread.start()
        _exit_cleanly_on_sigterm()
        return self.run_id

    def _log_job_identity(self) -> None:
        """What every run records without the script asking: the job, its image, the source
        commit, the world size and the hyperparameters it was submitted with."""
        import json

        tags = {
            "ferry.job": settings.FERRY_JOB_NAME.get(),
            "ferry.namespace": settings.FERRY_NAMESPACE.get(),
            "ferry.image": settings.FERRY_IMAGE.get(),
            "mlflow.source.git.commit": settings.FERRY_GIT_COMMIT.get(),
        }
        self.set_tags({k: v for k, v in tags.items() if v})
        params: dict[str, Any] = json.loads(settings.FERRY_HYPERPARAMETERS.get() or "{}")
        params["world_size"] = os.environ.get("WORLD_SIZE", "1")
        self.log_params(params)

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        root = settings.FERRY_ARTIFACT_ROOT.get()
        location = f"{root.rstrip('/')}/{self.experiment}" if root else None
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # noqa: BLE001 - created concurrently by another job: use it
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def close(self, status: str = "FINISHED", timeout: float | None = None) -> None:
        """Flush every buffered metric (waiting for the server up to ``timeout``) and end the
        run with ``status``. A FAILED run is still resumed by the submission's next attempt."""
        if not self.is_primary or self.run_id is None:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + (timeout if timeout is not None else float(settings.FERRY_FLUSH_TIMEOUT.get() or 300))
        while self._buffer and time.monotonic() < deadline:
            if not self._flush_once():
                time.sleep(1.0)
        if self._buffer:
            log.error("gave up on %d metric point(s): tracking server %s unreachable", len(self._buffer), self.tracking_uri)
        import mlflow

        self._retry(lambda: mlflow.end_run(status=status), deadline)

    def __enter__(self) -> Tracker:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            if self.is_primary and self.run_id:
                try:
                    self.client.set_tag(self.run_id, "ferry.last_error", f"{exc_type.__name__}: {exc}"[:5000])
                except Exception:  # noqa: BLE001 - best effort while failing anyway
                    pass
            self.close("FAILED", timeout=30)

    # ---- logging -------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters once per run (a resumed run keeps those already logged)."""
        if not self.is_primary or self.run_id is None:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.is_primary and self.run_id is not None:
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metric points; returns at once, whatever the server's state."""
        if not self.is_primary or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            for key, value in metrics.items():
                if len(self._buffer) == self._buffer.maxlen:
                    self.dropped += 1
                    if self.dropped == 1:
                        log.warning("metric buffer full (%d points): dropping the oldest", self._buffer.maxlen)
                self._buffer.append(Metric(key, float(value), now, int(step)))
        if len(self._buffer) >= _BATCH:
            self._wake.set()

    def pending(self) -> int:
        return len(self._buffer)

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while self._buffer and not self._stop.is_set():
                if not self._flush_once():
                    self._stop.wait(min(5.0, self.flush_interval * 2))
                    break

    def _flush_once(self) -> bool:
        with self._lock:
            batch = [self._buffer[i] for i in range(min(_BATCH, len(self._buffer)))]
        if not batch:
            return True
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as exc:  # noqa: BLE001 - any failure means: keep the points, retry later
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                log.warning("tracking server %s unreachable (%s); buffering metrics, training goes on",
                            self.tracking_uri, type(exc).__name__)
            return False
        with self._lock:
            for _ in range(len(batch)):
                if self._buffer and self._buffer[0] is batch[0]:
                    self._buffer.popleft()
                    batch.pop(0)
                else:
                    break
        if self._unreachable_since is not None:
            log.warning("tracking server reachable again after %.1fs; buffered metrics sent",
                        time.monotonic() - self._unreachable_since)
            self._unreachable_since = None
        return True

    def _retry(self, call: Any, deadline: float) -> Any:
        while True:
            try:
                return call()
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(2.0)

    # ---- the model -----------------------------------------------------------------------
    def log_model(self, model: Any, input_example: Any, *, register_as: str | None = None,
                  timeout: float | None = None) -> str | None:
        """Log ``model`` with MLflow's PyTorch flavor (torch.export format: it loads without the
        model's Python class and unpickles no code), a signature inferred from a multi-row
        ``input_example`` (so the batch dimension stays dynamic) and register it.
        Returns the model URI."""
        if not self.is_primary or self.run_id is None:
            return None
        import mlflow
        import mlflow.pytorch
        from mlflow.models import infer_signature

        register_as = register_as or settings.FERRY_REGISTER_AS.get()
        if len(input_example) < 2:
            raise ValueError("input_example needs at least 2 rows: with one, torch.export fixes the batch size at 1")
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        was_training = model.training
        model.eval()
        import torch

        with torch.no_grad():
            output = model(torch.as_tensor(input_example)).numpy()
        signature = infer_signature(input_example, output)
        deadline = time.monotonic() + (timeout if timeout is not None else float(settings.FERRY_FLUSH_TIMEOUT.get() or 300))
        info = self._retry(
            lambda: mlflow.pytorch.log_model(
                model, name="model", signature=signature, input_example=input_example,
                registered_model_name=register_as, serialization_format="pt2",
                pip_requirements=_requirements(),
            ),
            deadline,
        )
        model.train(was_training)
        if info.registered_model_version is not None:
            self.set_tags({"ferry.registered_model": f"{register_as}/{info.registered_model_version}"})
        return info.model_uri

    def run_url(self) -> str | None:
        if self.run_id is None or not str(self.tracking_uri).startswith("http"):
            return None
        return f"{str(self.tracking_uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def _exit_cleanly_on_sigterm() -> None:
    """Kubernetes (and the local executor) stop a replica with SIGTERM. Python's default is to
    die on the spot, losing buffered metrics; raise SystemExit instead so ``with Tracker``
    flushes them and marks the attempt. Left alone if the program set its own handler."""
    import signal

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def handler(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, handler)


def _requirements() -> list[str]:
    """Pinned requirements of the logged model, given explicitly: MLflow's inference of them
    imports and times the model again (~7 s) and would log torch's local '+cpu' label."""
    from importlib.metadata import version

    return [f"torch=={version('torch').split('+')[0]}", f"numpy=={version('numpy')}", f"mlflow=={version('mlflow')}"]
