"""How the cluster commands show a job: its state as a table (or, for ``-o json|yaml``, as an
object with the keys the help names), and following it to its end (``--wait``)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from ferry.cli._util import _stderr, _stdout, replica_line, timestamp


def poll_s() -> float:
    from ferry import settings

    return float(settings.FERRY_POLL_INTERVAL_S.get() or 2)


def state_table(state: Any) -> Any:
    from rich.table import Table

    colour = {"Succeeded": "green", "Failed": "red", "Restarting": "yellow", "Running": "cyan"}.get(state.phase, "white")
    table = Table(title=f"{state.kind} {state.namespace}/{state.name}  [{colour}]{state.phase}[/]  "
                        f"age {state.age()}  restarts {state.restarts}", title_justify="left")
    for column in ("replica", "active", "succeeded", "failed"):
        table.add_column(column, justify="left" if column == "replica" else "right")
    for role, counts in state.replicas.items():
        table.add_row(role.lower(), str(counts.active), str(counts.succeeded), str(counts.failed))
    if not state.replicas:
        table.add_row("(no replicas yet)", "-", "-", "-")
    return table


def progress_line(progress: Any) -> str:
    """A TrainJob's progress as its trainer last reported it, and how long ago."""
    from datetime import datetime, timezone

    from rich.markup import escape

    from ferry.kube._jobs import _duration

    ago = (f" (reported {_duration((datetime.now(timezone.utc) - progress.updated).total_seconds())} ago)"
           if progress.updated is not None else "")
    return f"progress {escape(str(progress))}{ago}"


# what -o json|yaml prints, as the help says it (times: ISO 8601 in UTC)
JOB_KEYS = "name, namespace, kind, submission, phase, reason, message, created, finished"
LIST_SCHEMA = f"a list of {{{JOB_KEYS}}}, newest first"
STATUS_SCHEMA = (f"an object {{{JOB_KEYS}, restarts, replicas: {{ROLE: {{active, succeeded, failed}}}}, "
                 "pods: a list of {replica, name, phase, restarts, node}, progress: a TrainJob's "
                 "{percent, remaining_seconds, metrics, updated} or null}")


def job_doc(state: Any) -> dict[str, Any]:
    """A job's state as ``-o json|yaml`` prints it (the keys of JOB_KEYS)."""
    return {"name": state.name, "namespace": state.namespace, "kind": state.kind, "submission": state.submission,
            "phase": state.phase, "reason": state.reason or None, "message": state.message or None,
            "created": timestamp(state.created), "finished": timestamp(state.finished_at)}


def progress_doc(progress: Any) -> dict[str, Any] | None:
    if progress is None:
        return None
    return {"percent": progress.percent, "remaining_seconds": progress.remaining_s, "metrics": dict(progress.metrics),
            "updated": timestamp(progress.updated)}


def status_doc(state: Any, pods: list[dict[str, Any]]) -> dict[str, Any]:
    """``ferry status -o json|yaml``: the job, its restarts, replicas per role, pods and progress."""
    from ferry.kube import pod_restarts, replica_name

    return {**job_doc(state), "restarts": state.restarts,
            "replicas": {role: {"active": c.active, "succeeded": c.succeeded, "failed": c.failed}
                         for role, c in state.replicas.items()},
            "pods": [{"replica": replica_name(pod), "name": pod["metadata"]["name"],
                      "phase": (pod.get("status") or {}).get("phase"), "restarts": pod_restarts(pod),
                      "node": (pod.get("spec") or {}).get("nodeName")} for pod in pods],
            "progress": progress_doc(state.progress)}


def _report_outcome(cluster: Any, state: Any, out: Any = None, kind: Any = None) -> int:
    """Print how the job ended (on ``out``, default stdout); its exit code (0 succeeded, 1 failed)."""
    from rich.markup import escape

    from ferry.kube import failed_replica_logs

    out = out or _stdout()
    if state.succeeded:
        out.print(f"[green]{state.name} succeeded[/] (submission {state.submission}, {state.age()} old)")
        return 0
    err = _stderr()
    err.print(f"[bold red]{state.name} failed[/]: {escape(state.reason or 'Failed')}: {escape(state.message or 'no message')}")
    for replica, lines in failed_replica_logs(cluster, state.name, state.namespace, kind=kind):
        err.print(f"--- last lines of {replica} ---")
        for line in lines:
            err.print(replica_line(replica, line))
    return 1


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def watch(cluster: Any, name: str, namespace: str, timeout: float | None, follow: bool, out: Any = None,
          kind: Any = None) -> int:
    """Follow the job (a PyTorchJob or TrainJob: ``kind``, else found by name) to its end with a
    live status (a line per change when not on a terminal), streaming its replicas' logs with
    ``follow``, on ``out`` (default: stdout); the exit code of its outcome."""
    from rich.live import Live

    from ferry.kube import find_job, follow_logs, kind_of, wait_for

    kind = kind or kind_of(find_job(cluster, name, namespace))

    out = out or _stdout()
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    log_thread = None
    if follow:
        def emit(replica: str, line: str) -> None:
            out.print(replica_line(replica, line), highlight=False, soft_wrap=True)

        log_thread = threading.Thread(target=follow_logs, args=(cluster, name, namespace, emit, stop),
                                      kwargs={"poll_s": poll_s(), "kind": kind}, daemon=True)
        log_thread.start()
    live = out.is_terminal and not follow
    last: list[str] = []

    def show(state: Any) -> None:
        if live:
            display.update(state_table(state))
        elif state.summary() not in last:
            last[:] = [state.summary()]
            out.print(state.summary())

    try:
        if live:
            with Live(console=out, refresh_per_second=4, transient=False) as display:
                state = wait_for(cluster, name, namespace, timeout_s=timeout, poll_s=poll_s(), on_state=show, kind=kind)
        else:
            display = None
            state = wait_for(cluster, name, namespace, timeout_s=timeout, poll_s=poll_s(), on_state=show, kind=kind)
    except KeyboardInterrupt:
        _stderr().print(f"stopped watching; {name} goes on: `ferry status {name} -n {namespace}`")
        return 130
    finally:
        stop.set()
        if log_thread is not None:
            log_thread.join(timeout=poll_s() + 5)
        signal.signal(signal.SIGTERM, previous)
    return _report_outcome(cluster, state, out, kind)
