"""The tracking sidecar: a separate, niced process that owns every MLflow write of metrics.

Rank 0 starts it (``python -m ferry.runtime._sidecar``) and pipes metric points to it as JSON
lines. Keeping MLflow's client (~55 µs of Python per point in the SQL store) and the system
metrics sampler out of the training process means they never contend for its GIL, and the
lower priority lets the kernel schedule them into the trainer's idle gaps (until the trainer
closes the pipe: then the trainer only waits for this process, which returns to normal priority
where the system permits).

It buffers points (bounded; the oldest are dropped past the bound, with a warning), sends
them in batches, keeps them while the tracking server is unreachable, and on end of input
(the trainer closed the pipe, or died) flushes what is left, waiting for the server up to
``--flush-timeout`` seconds. Exit code 0: everything sent; 3: points were given up.

Under Kubeflow Trainer v2 with its status server (``KUBEFLOW_TRAINER_SERVER_URL``), the sidecar
also posts the job's progress, time left and latest metrics to the TrainJob's status
(``_trainer_status.py``), from a thread of its own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Any

from ferry.runtime import _trainer_status
from ferry.runtime._exit import skip_exit_collection

log = logging.getLogger("ferry.tracking")
_BATCH = 1000  # MLflow's per-request limit for log_batch metrics



class Sender:
    def __init__(self, client: Any, run_id: str, buffer_size: int, interval: float, metric_writer: Any = None):
        self.client, self.run_id, self.interval = client, run_id, interval
        self.metric_writer = metric_writer  # a SqliteMetricWriter for the embedded store, else log_batch
        self.buffer: deque[tuple[str, float, int, int]] = deque(maxlen=buffer_size)
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.datasets: dict[str, str] = {}  # name:context -> JSON record (Tracker.log_dataset)
        self.texts: dict[str, str] = {}  # artifact path -> text (the job spec and its manifest)
        self.lock = threading.Lock()
        self.eof = threading.Event()
        self.dropped = 0
        self.unreachable_since: float | None = None
        self.status: _trainer_status.StatusReporter | None = None  # Kubeflow Trainer's progress, when it asks

    def read(self, stream: Any) -> None:
        for line in stream:
            message = json.loads(line)
            if self.status is not None:
                self.status.observe(message)
            with self.lock:
                self.params.update(message.get("p", {}))
                self.tags.update(message.get("t", {}))
                self.datasets.update(message.get("d", {}))
                for point in message.get("m", []):
                    if len(self.buffer) == self.buffer.maxlen:
                        self.dropped += 1
                        if self.dropped == 1:
                            log.warning("metric buffer full (%d points): dropping the oldest", self.buffer.maxlen)
                    self.buffer.append(tuple(point))
        self.eof.set()

    def pending(self) -> bool:
        return bool(self.buffer or self._fields_pending())

    def _fields_pending(self) -> bool:
        return bool(self.params or self.tags or self.datasets or self.texts)

    def _send_fields(self) -> None:
        from mlflow.entities import Param, RunTag

        with self.lock:
            params, tags = dict(self.params), dict(self.tags)
            datasets, texts = dict(self.datasets), dict(self.texts)
        if params:  # a resumed run keeps the params it has (MLflow refuses to change one)
            existing = self.client.get_run(self.run_id).data.params
            new = [Param(k, v) for k, v in params.items() if k not in existing]
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i : i + 100])
        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])
        if datasets:
            self.client.log_inputs(self.run_id, datasets=[_dataset_input(record) for record in datasets.values()])
        for path, text in texts.items():
            self.client.log_text(self.run_id, text, path)
        with self.lock:
            for key in datasets:
                self.datasets.pop(key, None)
            for key in texts:
                self.texts.pop(key, None)
            for key in params:
                if self.params.get(key) == params[key]:
                    del self.params[key]
            for key in tags:
                if self.tags.get(key) == tags[key]:
                    del self.tags[key]

    def flush_once(self) -> bool:
        from mlflow.entities import Metric

        with self.lock:
            batch = list(itertools.islice(self.buffer, _BATCH))  # deque indexing is O(n): slice from the left
        if not batch and not self._fields_pending():
            return True
        try:
            if self._fields_pending():
                self._send_fields()
            if batch and self.metric_writer is not None:
                self.metric_writer.write(batch)
            elif batch:
                self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v, ts, step in batch])
        except Exception as exc:  # noqa: BLE001 - any failure: keep the points, retry later
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                log.warning("tracking server unreachable (%s); buffering metrics, training goes on", type(exc).__name__)
            return False
        with self.lock:
            for point in batch:  # drop what was sent (unless the bound already pushed it out)
                if self.buffer and self.buffer[0] is point:
                    self.buffer.popleft()
        if self.unreachable_since is not None:
            log.warning("tracking server reachable again after %.1fs; buffered metrics sent",
                        time.monotonic() - self.unreachable_since)
            self.unreachable_since = None
        return True

    def run_until_eof(self) -> None:
        while not self.eof.is_set():
            self.eof.wait(self.interval)
            while self.pending() and self.flush_once():
                if len(self.buffer) < _BATCH:
                    break
            if self.unreachable_since is not None:
                time.sleep(min(5.0, self.interval * 2))

    def run(self, flush_timeout: float) -> int:
        """After end of input: send everything left, waiting for the server up to the timeout."""
        deadline = time.monotonic() + flush_timeout
        while self.pending() and time.monotonic() < deadline:
            if not self.flush_once():
                time.sleep(1.0)
        if self.pending():
            log.error("gave up on %d metric point(s), %d param(s), %d tag(s), %d dataset(s), %d artifact(s): "
                      "tracking server unreachable", len(self.buffer), len(self.params), len(self.tags),
                      len(self.datasets), len(self.texts))
            return 3
        return 0


def _dataset_input(record: str) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    fields = json.loads(record)
    context = fields.pop("context")
    return DatasetInput(Dataset(**fields), tags=[InputTag("mlflow.data.context", context)])


def job_spec_artifact() -> dict[str, str]:
    """The job spec (FERRY_JOB_SPEC) as a run artifact, logged at once: what produced the run."""
    from ferry import settings

    raw = settings.FERRY_JOB_SPEC.get()
    return {"ferry/job.json": json.dumps(json.loads(raw), indent=2, sort_keys=True) + "\n"} if raw else {}


def manifest_artifact() -> dict[str, str]:
    """The PyTorchJob rendered from the spec, labelled with this submission: re-renderable and
    diffable. Rendering imports the Kubernetes client models (about 0.4 s of CPU): made while
    the job trains, at this process's lowest priority, so that neither the trainer nor the
    job's end waits for it."""
    from ferry import settings

    raw = settings.FERRY_JOB_SPEC.get()
    if not raw:
        return {}
    from ferry._submission import with_submission
    from ferry.render import dump_yaml, render_spec
    from ferry.runtime._submission import submission_id
    from ferry.spec import TrainingJob

    job = TrainingJob.model_validate_json(raw)
    (rendered,) = render_spec(job, target=job.target or "pytorchjob")  # what it was submitted as
    manifest = with_submission(rendered.doc, submission_id())
    return {f"ferry/{rendered.relpath.rsplit('/', 1)[-1]}": dump_yaml([manifest])}


def _add_texts(sender: Sender, make: Any) -> None:
    try:
        texts = make()
    except Exception as exc:  # noqa: BLE001 - a spec this version cannot read must not stop tracking
        log.warning("the job spec could not be recorded with the run: %s", exc)
        return
    with sender.lock:
        sender.texts.update(texts)


class SystemSampler:
    """System metrics (CPU, memory, disk, network, GPU when present) with MLflow's own
    collectors, fed into the Sender as ``system/*`` points: the same buffering and outage
    handling as training metrics (MLflow's monitor thread stops for good on one failed call)."""

    PREFIX = "system/"

    def __init__(self, sender: Sender, interval: float, resume: bool):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.sender, self.interval = sender, interval
        self.monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            self.monitors.append(GPUMonitor())
        except Exception:  # noqa: BLE001 - no NVIDIA GPU / pynvml: CPU metrics only
            pass
        self.step = self._next_step() if resume else 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ferry-system-metrics", daemon=True)

    def _next_step(self) -> int:
        try:
            history = self.sender.client.get_metric_history(self.sender.run_id, f"{self.PREFIX}cpu_utilization_percentage")
            return max((m.step for m in history), default=-1) + 1
        except Exception:  # noqa: BLE001 - unreachable at start: steps restart at 0
            return 0

    def sample(self) -> None:
        now = int(time.time() * 1000)
        metrics: dict[str, float] = {}
        for monitor in self.monitors:
            try:
                monitor.collect_metrics()
                metrics.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
            except Exception:  # noqa: BLE001 - one collector failing must not stop the rest
                continue
        with self.sender.lock:
            for key, value in metrics.items():
                self.sender.buffer.append((self.PREFIX + key, float(value), now, self.step))
        self.step += 1

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()


def _lowest_priority() -> None:
    """Run only in the trainer's idle gaps: SCHED_IDLE where Linux offers it (the kernel gives
    such a process CPU time when nothing else wants it, and a sliver otherwise, so it never
    starves), else nice 10. On a machine where every core runs a trainer, nice 10 still took
    about a tenth of a core from them; SCHED_IDLE waits for the gaps DDP leaves anyway
    (all-reduce, data loading), and the buffer carries the points until then."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        return
    except (AttributeError, OSError):  # not Linux, or not permitted
        pass
    try:
        os.nice(10)
    except OSError:  # pragma: no cover - not permitted: run at normal priority
        pass


def _normal_priority() -> None:
    """Once the trainer has closed the pipe its training is over, and it waits for this
    process's last flush: every thread of this process goes back to normal priority where the
    system permits it (root, CAP_SYS_NICE, or an RLIMIT_NICE that allows it), so that the job's
    end does not wait on the sliver of CPU a busy machine leaves to the lowest priority. Where it
    does not, this process stays as it was."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]  # Linux: priority is per thread
    except OSError:  # not Linux
        return
    for tid in threads:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))  # type: ignore[attr-defined]
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except ProcessLookupError:  # that thread has ended
            continue
        except (AttributeError, OSError):  # not permitted
            return


def _read_input(sender: Sender, stream: Any) -> None:
    sender.read(stream)
    _normal_priority()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry-tracking-sidecar")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--buffer", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--flush-timeout", type=float, default=300.0)
    parser.add_argument("--system-metrics", action="store_true")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    # The trainer waits for this process's exit (Tracker.close): skip the collector's passes
    # over MLflow's modules at exit, once everything is sent (see _exit.py).
    skip_exit_collection()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(levelname)s %(message)s")
    # Stop only at end of input: the trainer decides when tracking ends (and SIGKILL still works).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _lowest_priority()
    # Read the trainer's points from the start (they wait in memory for MLflow's client), so
    # that its closing the pipe is seen at once, however far the start below has got.
    sender = Sender(None, args.run_id, args.buffer, args.interval)
    sender.status = _trainer_status.from_env()
    if sender.status is not None:
        sender.status.start()
    reader = threading.Thread(target=_read_input, args=(sender, sys.stdin.buffer), daemon=True)
    reader.start()
    # MLflow's usage telemetry runs a consumer thread that took a fifth of this process's CPU
    # while a job trained; this process is Ferry's plumbing, so it stays off here unless the
    # user set the variable themselves.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    if args.tracking_uri.startswith("sqlite:"):
        from ferry.runtime._sqlite_metrics import SqliteMetricWriter

        sender.metric_writer = SqliteMetricWriter(args.tracking_uri, args.run_id)
    sender.client = MlflowClient(tracking_uri=args.tracking_uri)
    flusher = threading.Thread(target=sender.run_until_eof, daemon=True)
    flusher.start()
    sampler = None
    if args.system_metrics:
        sampler = SystemSampler(sender, float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10), args.resume)
        sampler.start()
    print("ready", flush=True)  # the trainer may wait for this (Tracker.wait_ready)
    _add_texts(sender, job_spec_artifact)
    _add_texts(sender, manifest_artifact)
    sender.eof.wait()
    if sender.status is not None:
        sender.status.stop()  # its last post (100 % when the trainer finished) goes out beside MLflow's flush
    if sampler is not None:
        sampler.finish()  # a last sample, so even a short job has system metrics
    flusher.join()
    code = sender.run(args.flush_timeout)
    if sender.status is not None:
        sender.status.join(timeout=sender.status.client.timeout + 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
