"""Run every replica of a PyTorchJob as a local process, as the training operator would.

- Output of each replica is streamed with a ``[role-index]`` prefix and written to
  ``.ferry/runs/<job>/<submission>/<role>-<index>.log``; progress lines from rank 0 drive a
  progress bar on a terminal, and its line about the finished MLflow run goes into the result.
- ``restartPolicy``/``backoffLimit``: when a replica fails, the whole group is stopped and
  started again (it re-rendezvous, as torchrun's agents would) on a fresh port; the job
  resumes from its latest checkpoint. ``ExitCode`` retries only signal-like exits (>= 128).
- Ctrl-C or SIGTERM stops every child process group; the exit code is the job's outcome.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ferry.local._plan import Replica, free_port, plan, procs_per_node, restarts

_PROGRESS = re.compile(r"^\[ferry\] progress step=(\d+) total=(\d+)(.*)$")
_RUN = re.compile(r"^\[ferry\] run (\{.*\})$")  # ferry.runtime's Tracker, when its run has ended
_GRACE_S = 10.0


@dataclass
class JobResult:
    exit_code: int
    restarts: int
    submission_id: str
    run_dir: Path
    failed_replica: str | None = None
    last_lines: tuple[str, ...] = ()
    run: dict[str, Any] | None = None  # the finished MLflow run as rank 0 read it back (run_id, metrics, registered)


class _Proc:
    def __init__(self, replica: Replica, popen: subprocess.Popen[str], log_path: Path):
        self.replica, self.popen, self.log_path = replica, popen, log_path
        self.tail: deque[str] = deque(maxlen=20)


class LocalExecutor:
    def __init__(self, manifest: dict[str, Any], *, submission_id: str, run_dir: Path, local_env: dict[str, str],
                 volumes_dir: Path, workdir: Path, console: Any = None, on_progress: Callable[[int, int, str], None] | None = None,
                 stop: threading.Event | None = None, echo: bool = True):
        self.manifest, self.submission_id, self.run_dir = manifest, submission_id, run_dir
        self.local_env, self.volumes_dir, self.workdir = local_env, volumes_dir, workdir
        self.console, self.on_progress = console, on_progress
        self.restart_policy, self.backoff_limit = restarts(manifest)
        self._stop_signal: int | None = None
        self._stop = stop  # set by another thread: stop the job as SIGTERM would
        self.echo = echo  # False: replica output goes to the log files only (a sweep's trials)
        self._print_lock = threading.Lock()
        self._last_plain_progress = 0.0
        self._run: dict[str, Any] | None = None

    # ---- output ----------------------------------------------------------------------------
    def _emit(self, proc: _Proc, line: str) -> None:
        run = _RUN.match(line)
        if run and self._take_run(run.group(1)):
            return  # the report says it (the line stays in the replica's log)
        match = _PROGRESS.match(line)
        if match and self.on_progress is not None:
            self.on_progress(int(match.group(1)), int(match.group(2)), match.group(3).strip())
            return
        if not self.echo:
            return
        if match:  # no progress bar: a progress line at most every 2 s
            now = time.monotonic()
            if now - self._last_plain_progress < 2.0:
                return
            self._last_plain_progress = now
        with self._print_lock:
            if self.console is not None:
                self.console.print(f"[dim]\\[{proc.replica.name}][/] {_escape(line)}", highlight=False, soft_wrap=True)
            else:
                print(f"[{proc.replica.name}] {line}", flush=True)

    def _take_run(self, raw: str) -> bool:
        try:
            self._run = json.loads(raw)
        except ValueError:
            return False
        return True

    def _pump(self, proc: _Proc) -> None:
        assert proc.popen.stdout is not None
        with open(proc.log_path, "a", encoding="utf-8") as log_file:
            for raw in proc.popen.stdout:
                line = raw.rstrip("\n")
                log_file.write(raw)
                log_file.flush()
                proc.tail.append(line)
                self._emit(proc, line)

    # ---- processes ---------------------------------------------------------------------------
    def _start(self, attempt: int) -> tuple[list[_Proc], list[threading.Thread]]:
        port = free_port()  # a fresh port each attempt: the previous one may linger in TIME_WAIT
        self._run = None
        env_common = {**self.local_env, "FERRY_SUBMISSION_ID": self.submission_id, "FERRY_ATTEMPT": str(attempt)}
        replicas = plan(self.manifest, master_port=port, local_env=env_common, volumes_dir=self.volumes_dir, workdir=self.workdir)
        procs, threads = [], []
        nproc = procs_per_node(self.manifest)
        total_procs = len(replicas) * (int(nproc) if nproc.isdigit() else 1)
        threads_each = str(max(1, (os.cpu_count() or 1) // total_procs))
        for replica in replicas:
            env = {**os.environ, **replica.env}
            env.setdefault("OMP_NUM_THREADS", threads_each)  # as torchrun does: no oversubscription
            log_path = self.run_dir / f"{replica.name}.log"
            popen = subprocess.Popen(
                replica.argv, env=env, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True,
            )
            proc = _Proc(replica, popen, log_path)
            thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
            thread.start()
            procs.append(proc)
            threads.append(thread)
        self._write_state(attempt, procs, port)
        return procs, threads

    def _write_state(self, attempt: int, procs: list[_Proc], port: int) -> None:
        state = {
            "submission_id": self.submission_id, "attempt": attempt, "master_port": port,
            "replicas": [{"name": p.replica.name, "pid": p.popen.pid, "log": str(p.log_path)} for p in procs],
        }
        tmp = self.run_dir / ".replicas.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.run_dir / "replicas.json")

    @staticmethod
    def _stop_all(procs: list[_Proc]) -> None:
        """SIGTERM every replica's process group, then SIGKILL what is left after a grace period."""
        for proc in procs:
            if proc.popen.poll() is None:
                _killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + _GRACE_S
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            _killpg(proc.popen.pid, signal.SIGKILL)  # also reaps torchrun's children
            proc.popen.wait()

    def _wait(self, procs: list[_Proc]) -> _Proc | None:
        """Block until every replica succeeded (None) or one failed (that one)."""
        while True:
            if self._stop is not None and self._stop.is_set() and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
            if self._stop_signal is not None:
                return None
            codes = [p.popen.poll() for p in procs]
            for proc, code in zip(procs, codes):
                if code is not None and code != 0:
                    return proc
            if all(code == 0 for code in codes):
                return None
            time.sleep(0.05)

    def _retryable(self, code: int) -> bool:
        if self.restart_policy in ("OnFailure", "Always"):
            return True
        if self.restart_policy == "ExitCode":  # the operator: 1-127 permanent, 128+ (signals) retryable
            return code < 0 or code >= 128
        return False

    # ---- the job -------------------------------------------------------------------------------
    def run(self) -> JobResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        in_main = threading.current_thread() is threading.main_thread()  # only the main thread takes signals
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        restarts, attempt = 0, 0
        try:
            while True:
                procs, threads = self._start(attempt)
                failed = self._wait(procs)
                if self._stop_signal is not None:
                    self._stop_all(procs)
                    return JobResult(128 + self._stop_signal, restarts, self.submission_id, self.run_dir)
                if failed is None:
                    for thread in threads:
                        thread.join(timeout=5)
                    return JobResult(0, restarts, self.submission_id, self.run_dir, run=self._run)
                code = failed.popen.returncode
                self._stop_all(procs)
                for thread in threads:
                    thread.join(timeout=5)
                reason = f"signal {-code}" if code < 0 else f"exit code {code}"
                if not self._retryable(code) or restarts >= self.backoff_limit:
                    return JobResult(1, restarts, self.submission_id, self.run_dir, failed.replica.name, tuple(failed.tail))
                restarts += 1
                attempt += 1
                self._say(f"replica {failed.replica.name} failed ({reason}); restarting the group "
                          f"({restarts}/{self.backoff_limit}), resuming from the latest checkpoint")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _say(self, text: str) -> None:
        with self._print_lock:
            if self.console is not None:
                self.console.print(f"[yellow]ferry:[/] {_escape(text)}")
            else:
                print(f"ferry: {text}", flush=True)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
