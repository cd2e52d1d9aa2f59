"""MLflow tracking for a distributed job: one run per submission, rank 0 logs, training never
waits for the tracking server.

- Every rank and every restart of a submission writes to the SAME run: the run is found by the
  ``ferry.submission_id`` tag and resumed, never created per process.
- ``log_metrics`` only appends to a list; the points travel down a pipe to the tracking
  sidecar (``_sidecar.py``), a separate niced process that owns MLflow's client and the
  system-metrics sampler, so tracking never contends for the trainer's GIL. While the server
  is unreachable the sidecar holds the points (bounded) and sends them when it is back.
- ``close`` ends the pipe; the sidecar flushes what is left, waiting for the server up to
  ``FERRY_FLUSH_TIMEOUT`` seconds. Points in the pipe survive even a SIGKILL of the trainer.
  Once everything is sent and the run has ended, rank 0 prints the run as MLflow now holds it
  (``[ferry] run {...}``, one line): ``ferry run`` reports the job from it.
- What ``start`` sets for the whole process (the fluent tracking URI and experiment, which MLflow
  also writes into ``os.environ``, the MLflow HTTP defaults and the SIGTERM handler) holds while
  the run is open; ``close`` puts it back as it found it, so a process that runs a Tracker itself
  (a notebook, a test playing rank 0) and every subprocess it starts later do not inherit this
  run's settings.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ferry import settings
from ferry.runtime._submission import CHECKPOINT_DIR_TAG, resolve_resume, submission_dir
from ferry.runtime._submission import submission_id as env_submission_id

log = logging.getLogger("ferry.tracking")

SUBMISSION_TAG = "ferry.submission_id"
REGISTERED_TAG = "ferry.registered_model"  # "name/version", when the run registered its model
SWEEP_TAG = "ferry.sweep"  # on a sweep's parent run and on each trial's run
SWEEP_ROLE_TAG = "ferry.sweep.role"  # "parent" on the parent run
TRIAL_TAG = "ferry.trial"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
RESUME_TAG = "ferry.resume_from"  # + .run_id and .checkpoint_dir: the lineage of an explicit resume
RUN_PREFIX = "[ferry] run "  # + JSON: the finished run as MLflow holds it (Tracker._announce)
_started: Tracker | None = None  # this process's started primary Tracker, which report_progress feeds


def report_progress(step: int, total: int) -> None:
    """Hand ``step`` of ``total`` to the started Tracker's sidecar (it posts progress to Kubeflow
    Trainer's status server when the pod has one); nothing without a started Tracker."""
    if _started is not None and _started._pipe is not None and os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"):
        _started._pipe.put_fields("g", {"step": int(step), "total": int(total), "ts": int(time.time() * 1000)})


# The environment variables start() may write: its MLflow HTTP defaults, and what MLflow's
# fluent setters (set_tracking_uri, set_experiment) write for subprocesses to inherit.
_PROCESS_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")


class _ProcessSettings:
    """What a Tracker changes for the whole process, as it was before it started: the
    environment variables of ``_PROCESS_ENV``, MLflow's fluent tracking URI and active
    experiment (module state that ``mlflow.set_tracking_uri``/``set_experiment`` write), and
    SIGTERM's default action (``_exit_cleanly_on_sigterm``)."""

    def __init__(self) -> None:
        from mlflow.tracking import fluent
        from mlflow.tracking._tracking_service import utils

        self.env = {name: os.environ.get(name) for name in _PROCESS_ENV}
        self.tracking_uri = getattr(utils, "_tracking_uri", None)
        self.experiment_id = getattr(fluent, "_active_experiment_id", None)
        self.sigterm_handler: Any = None  # the one start() installed, if any

    def restore(self) -> None:
        import mlflow
        from mlflow.tracking import fluent
        from mlflow.tracking._tracking_service import utils

        if getattr(utils, "_tracking_uri", None) != self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)  # type: ignore[arg-type]  # None: unset, as before
        if hasattr(fluent, "_active_experiment_id"):
            fluent._active_experiment_id = self.experiment_id
        for name, value in self.env.items():  # last: the setters above write some of these
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        import signal

        if (self.sigterm_handler is not None and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is self.sigterm_handler):  # not a handler set since
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _default_mlflow_http_env() -> None:
    """MLflow retries a failed request up to 7 times with exponential backoff (minutes in
    all). The flush thread does its own retrying, so keep MLflow's short unless the user set it."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # MLflow samples system metrics every 10 s; short jobs would record none.
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "2")


def submission_run(client: Any, experiment: str, submission: str) -> Any:
    """The MLflow run of submission ``submission`` in experiment ``experiment`` (a name), or
    None when there is no such experiment or run yet."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`{SUBMISSION_TAG}` = '{submission}'", max_results=1)
    return runs[0] if runs else None


def sweep_parent(client: Any, experiment_id: str, sweep: str, describe: Any = None) -> str:
    """The parent run of sweep ``sweep`` in the experiment (the oldest, should two trials have
    made one at once), made when there is none; ``describe(run_id)`` records the search on a
    run it makes."""
    query = f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{SWEEP_ROLE_TAG}` = 'parent'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"sweep-{sweep}", tags={SWEEP_TAG: sweep, SWEEP_ROLE_TAG: "parent"})
    if describe is not None:
        describe(run.info.run_id)
    return run.info.run_id


class Tracker:
    """Rank-aware MLflow logging. On non-primary ranks every method is a no-op."""

    def __init__(self, *, is_primary: bool, tracking_uri: str | None = None, experiment: str | None = None,
                 submission_id: str | None = None, run_name: str | None = None, client: Any = None,
                 buffer_size: int | None = None, flush_interval: float = 1.0, system_metrics: bool = True):
        self.is_primary = is_primary
        self.tracking_uri = tracking_uri or settings.MLFLOW_TRACKING_URI.get()
        self.experiment = experiment or settings.MLFLOW_EXPERIMENT_NAME.get() or settings.FERRY_JOB_NAME.get() or "Default"
        self.submission_id = submission_id or env_submission_id()
        self.run_name = run_name or f"{settings.FERRY_JOB_NAME.get() or 'job'}-{self.submission_id}"
        self.flush_interval = flush_interval
        self.system_metrics = system_metrics
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self.buffer_size = buffer_size or int(settings.FERRY_METRICS_BUFFER.get() or 100000)
        self._client = client
        self._pipe: _MetricPipe | None = None
        self._saved: _ProcessSettings | None = None  # what start() changed in the process, for close()

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
        if self._saved is None:
            self._saved = _ProcessSettings()
        try:
            return self._start()
        except BaseException:
            if self._pipe is None:  # no run open for close() to end: nothing holds the settings now
                self._restore_process_settings()
            raise

    def _start(self) -> str | None:
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
            tags = {SUBMISSION_TAG: self.submission_id, **self._sweep_tags()}
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
            self.run_id = run.info.run_id
        # The fluent run is for log_model; metrics and system metrics go through the sidecar. Its
        # experiment is made the active one first: a script (or a host process) that set another
        # with mlflow.set_experiment() would otherwise make start_run refuse the run.
        mlflow.set_experiment(experiment_id=self.experiment_id)
        mlflow.start_run(run_id=self.run_id, log_system_metrics=False)
        self._pipe = _MetricPipe(self.tracking_uri, self.run_id, buffer_size=self.buffer_size,
                                 interval=self.flush_interval, system_metrics=self.system_metrics,
                                 resume=self.resumed, flush_timeout=_flush_timeout())
        self._log_job_identity()
        if self._saved is not None:
            self._saved.sigterm_handler = _exit_cleanly_on_sigterm()
        global _started
        _started = self
        return self.run_id

    def _sweep_tags(self) -> dict[str, str]:
        """A sweep's trial nests under the sweep's parent run (found by the sweep's name; made
        here when a trial starts first, as rendered trials applied with kubectl may)."""
        sweep = settings.FERRY_SWEEP.get()
        if not sweep:
            return {}
        parent = sweep_parent(self.client, self.experiment_id, sweep)
        return {PARENT_TAG: parent, SWEEP_TAG: sweep, TRIAL_TAG: settings.FERRY_TRIAL.get() or ""}

    def _log_job_identity(self) -> None:
        """What every run records without the script asking: the job, its image, the source
        commit and code bundle, its checkpoint folder, what it resumed from, the world size and the
        hyperparameters it was submitted with. (The job spec and its rendered manifest are
        logged as artifacts by the sidecar.)"""
        import json

        tags = {
            "ferry.job": settings.FERRY_JOB_NAME.get(),
            "ferry.namespace": settings.FERRY_NAMESPACE.get(),
            "ferry.image": settings.FERRY_IMAGE.get(),
            "ferry.eval_data": settings.FERRY_EVAL_DATA.get(),
            "mlflow.source.git.commit": settings.FERRY_GIT_COMMIT.get(),
            # the code bundle the replicas ran (ferry.code): exactly what code trained the model
            "ferry.code.digest": settings.FERRY_CODE_DIGEST.get(),
            "ferry.code.uri": settings.FERRY_CODE_URI.get(),
            **self._checkpoint_tags(),
        }
        self.set_tags({k: v for k, v in tags.items() if v})
        params: dict[str, Any] = json.loads(settings.FERRY_HYPERPARAMETERS.get() or "{}")
        params["world_size"] = os.environ.get("WORLD_SIZE", "1")
        self.log_params(params)

    def _checkpoint_tags(self) -> dict[str, str]:
        """Where this submission keeps its checkpoints, and the lineage of an explicit resume:
        the reference as given, the folder it named, and the run that wrote that folder."""
        root = settings.FERRY_CHECKPOINT_URI.get()
        tags: dict[str, str] = {}
        try:
            if root:
                tags[CHECKPOINT_DIR_TAG] = submission_dir(root, self.submission_id)
            ref = settings.FERRY_RESUME_FROM.get()
            if ref:
                source = resolve_resume(ref, root, client=self.client)
                run_id = source.run_id or self._run_with_checkpoints(source.checkpoint_dir)
                tags |= {RESUME_TAG: ref, f"{RESUME_TAG}.checkpoint_dir": source.checkpoint_dir,
                         f"{RESUME_TAG}.run_id": run_id or ""}
        except Exception as exc:  # noqa: BLE001 - lineage tags must not stop training; the checkpointer raises where it matters
            log.warning("cannot record the checkpoint lineage: %s", exc)
        return tags

    def _run_with_checkpoints(self, folder: str) -> str | None:
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{CHECKPOINT_DIR_TAG}` = '{folder}'",
                                        max_results=1)
        return found[0].info.run_id if found else None

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
        try:
            self._close(status, timeout)
        finally:
            self._restore_process_settings()

    def _restore_process_settings(self) -> None:
        """Put back what start() set for the whole process (see ``_ProcessSettings``)."""
        global _started
        if _started is self:
            _started = None
        saved, self._saved = self._saved, None
        if saved is not None:
            saved.restore()

    def _close(self, status: str, timeout: float | None) -> None:
        import mlflow

        deadline = time.monotonic() + (timeout if timeout is not None else _flush_timeout())
        if status != "FINISHED":
            # Mark the attempt first: if this process is cut short now, MLflow's atexit hook
            # would otherwise end the active run as FINISHED and the restart would not resume it.
            mlflow.end_run(status=status)
        sent = True
        if self._pipe is not None:
            if status == "FINISHED":
                self._pipe.put_fields("g", {"done": True})  # the job's progress ends at 100 %
            if self._pipe.close(timeout=max(1.0, deadline - time.monotonic()) + 15) != 0:
                sent = False
                log.error("some metrics could not be sent to %s (see the sidecar's messages above)", self.tracking_uri)
            self._pipe = None
        if status == "FINISHED":
            self._retry(lambda: mlflow.end_run(status=status), deadline)
            if sent:
                self._announce()

    def _announce(self) -> None:
        """Print what MLflow now holds of the finished run (its id, latest metrics and registered
        version) as one machine-readable line from rank 0: ``ferry run`` reports the job from it
        without loading MLflow itself (seconds); in a pod it is a plain log line."""
        import json

        try:
            run = self.client.get_run(self.run_id)
        except Exception as exc:  # noqa: BLE001 - the report then asks MLflow itself
            log.debug("run %s not read back: %s", self.run_id, exc)
            return
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}
        summary = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
                   "metrics": metrics, "registered": run.data.tags.get(REGISTERED_TAG)}
        print(f"{RUN_PREFIX}{json.dumps(summary, sort_keys=True)}", flush=True)

    def __enter__(self) -> Tracker:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            _ignore_sigterm()  # a second SIGTERM must not cut the clean-up short
            self.set_tags({"ferry.last_error": f"{exc_type.__name__}: {exc}"})
            self.close("FAILED", timeout=30)

    # ---- logging -------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters once per run (a resumed run keeps those already logged). Sent by the
        sidecar, so an unreachable server does not stop training."""
        if self._pipe is not None:
            self._pipe.put_fields("p", {k: str(v)[:6000] for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._pipe is not None:
            self._pipe.put_fields("t", {k: str(v)[:5000] for k, v in tags.items()})

    def log_dataset(self, features: Any, targets: Any = None, *, name: str, source: str,
                    context: str = "training") -> None:
        """Record the data the run used as an MLflow dataset input (name, digest, source,
        schema, profile: the UI's Dataset column), e.g.
        ``tracker.log_dataset(x_train, y_train, name="digits", source="sklearn.datasets.load_digits")``.
        ``features``/``targets``: numpy arrays or tensors (or dicts of them); ``source``: a URI
        (``s3://...``, a path, ``https://...``) or the code that produced the data;
        ``context``: ``training``, ``evaluation``, ... Sent by the sidecar, like params."""
        if self._pipe is not None:
            self._pipe.put_fields("d", {f"{name}:{context}": _dataset_record(features, targets, name, source, context)})

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until the tracking sidecar has started (it starts in the background; a job
        need not wait, points queue up meanwhile). True when ready."""
        return self._pipe.wait_ready(timeout) if self._pipe is not None else True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metric points for the sidecar; returns at once, whatever the server's state."""
        if self._pipe is not None:
            now = int(time.time() * 1000)
            self._pipe.put([(key, float(value), now, int(step)) for key, value in metrics.items()])

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
        deadline = time.monotonic() + (timeout if timeout is not None else _flush_timeout())
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
            self.set_tags({REGISTERED_TAG: f"{register_as}/{info.registered_model_version}"})
        return info.model_uri

    def run_url(self) -> str | None:
        if self.run_id is None or not str(self.tracking_uri).startswith("http"):
            return None
        return f"{str(self.tracking_uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def _numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    detach = getattr(value, "detach", None)
    return detach().cpu().numpy() if detach is not None else value


def _dataset_record(features: Any, targets: Any, name: str, source: str, context: str) -> str:
    """One dataset input as JSON (MLflow's Dataset entity fields + context) for the sidecar.
    The digest and schema are MLflow's own (``mlflow.data.from_numpy``)."""
    import json
    import warnings
    from urllib.parse import urlparse

    from mlflow.data.numpy_dataset import from_numpy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways"
        entity = from_numpy(_numpy(features), targets=None if targets is None else _numpy(targets),
                            source="/", name=name)._to_mlflow_entity()
    scheme = urlparse(source).scheme
    source_type = {"s3": "s3", "http": "http", "https": "http", "gs": "gcs", "file": "local"}.get(scheme)
    if source_type is None:
        source_type = "local" if source.startswith(("/", "./", "../")) else "code"
    return json.dumps({"name": entity.name, "digest": entity.digest, "source_type": source_type,
                       "source": json.dumps({"uri": source}), "schema": entity.schema, "profile": entity.profile,
                       "context": context})


def _flush_timeout() -> float:
    return float(settings.FERRY_FLUSH_TIMEOUT.get() or 300)


class _MetricPipe:
    """The trainer's end of the sidecar: points go into a list; a writer thread sends them
    down the pipe as one JSON line per interval (C-speed encoding, no MLflow in this process)."""

    def __init__(self, tracking_uri: str, run_id: str, *, buffer_size: int, interval: float,
                 system_metrics: bool, resume: bool, flush_timeout: float):
        import subprocess
        import sys

        argv = [sys.executable, "-m", "ferry.runtime._sidecar", "--tracking-uri", tracking_uri, "--run-id", run_id,
                "--buffer", str(buffer_size), "--interval", str(interval), "--flush-timeout", str(flush_timeout)]
        argv += ["--system-metrics"] if system_metrics else []
        argv += ["--resume"] if resume else []
        # Its own session: stopping the trainer's process group (SIGTERM, then SIGKILL) must not
        # cut the final flush short; it ends by itself at end of input.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.interval = interval
        self._points: list[tuple[str, float, int, int]] = []
        self._fields: dict[str, dict[str, Any]] = {"p": {}, "t": {}, "d": {}, "g": {}}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._broken = False
        self._writer = threading.Thread(target=self._write_loop, name="ferry-metrics", daemon=True)
        self._writer.start()

    def wait_ready(self, timeout: float) -> bool:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return bool(ready) and self.proc.stdout.readline().strip() == b"ready"

    def put(self, points: list[tuple[str, float, int, int]]) -> None:
        with self._lock:
            self._points.extend(points)

    def put_fields(self, kind: str, values: dict[str, Any]) -> None:
        """Params ("p"), tags ("t"), dataset inputs ("d") or progress ("g"), sent with the next batch."""
        with self._lock:
            self._fields[kind].update(values)

    def _send(self) -> None:
        import json

        with self._lock:
            message = {"m": self._points, **{k: v for k, v in self._fields.items() if v}}
            self._points, self._fields = [], {"p": {}, "t": {}, "d": {}, "g": {}}
        if len(message) == 1 and not message["m"] or self._broken:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._broken = True
            log.error("the tracking sidecar exited (code %s); metrics are no longer recorded", self.proc.poll())

    def _write_loop(self) -> None:
        while not self._done.wait(self.interval):
            self._send()
        self._send()

    def close(self, timeout: float) -> int:
        """Send what is left, end the input, wait for the sidecar's final flush."""
        self._done.set()
        self._writer.join()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=timeout)
        except Exception:  # noqa: BLE001 - TimeoutExpired: do not hang the job's end
            self.proc.kill()
            return self.proc.wait()


def _exit_cleanly_on_sigterm() -> Any:
    """Kubernetes (and the local executor) stop a replica with SIGTERM. Python's default is to
    die on the spot, losing buffered metrics; raise SystemExit instead so ``with Tracker``
    flushes them and marks the attempt. Left alone if the program set its own handler. Returns
    the handler it installed, if any."""
    import signal

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def handler(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, handler)
        return handler
    return None


def _ignore_sigterm() -> None:
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _requirements() -> list[str]:
    """Pinned requirements of the logged model, given explicitly: MLflow's inference of them
    imports and times the model again (~7 s) and would log torch's local '+cpu' label."""
    from importlib.metadata import version

    return [f"torch=={version('torch').split('+')[0]}", f"numpy=={version('numpy')}", f"mlflow=={version('mlflow')}"]
