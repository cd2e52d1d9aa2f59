"""Ferry's operator at its default settings on a real control plane: how quiet it is while a
pipeline trains, and how soon it reacts to the changes it is woken for.

    KUBEBUILDER_ASSETS=../shared/k8s/bin .venv/bin/python benchmarks/operator_quiet.py [--minutes 10] [--rounds 3]

The control plane, the MLflow server and the operator (kopf's runner over ``ferry_operator``, as
its ServiceAccount, in a namespace of its own) are the test harness's (``tests/_controlplane.py``,
``tests/_servers.py``, ``tests/_operator.py``); the training operator and KServe are played
through the API, as the tests play them. FERRY_OPERATOR_POLL_S and FERRY_OPERATOR_RESYNC_S are
left unset (removed from the environment if set): what is measured is the defaults.

1. Quiet: one pipeline whose PyTorchJob is Running, left alone for ``--minutes``. Counted over
   that window: the operator's log records at WARNING or above, the Events about the pipeline,
   the operator's PATCHes of the pipeline (object and status) and every request it made (the API
   server's audit log); each also per hour. The window opens a moment after the pipeline's
   status has told the job Running.
2. Reaction, ``--rounds`` pipelines: from the harness writing the PyTorchJob's Succeeded status
   (the job's rank 0 registered the model before) until the pipeline's phase leaves
   Training/Evaluating, and from writing the InferenceService's Ready status until phase Serving.
   The baseline, from the same run: the resync interval the operator started with, the longest a
   purely periodic operator at these settings could take to notice either change.

Every process it starts is stopped on the way out, also on an error or Ctrl-C. A failed run keeps
its work folder (control-plane logs, audit log, the operator's log) and prints where it is.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT, ERR = sys.stdout, sys.stderr  # kopf's test runner swaps sys.stdout/stderr while the operator runs
SETTLE_S = 2.0  # the window opens this long after the status told the job Running
POLL_PHASE_S = 0.02  # how often the harness reads the pipeline's phase while it times a reaction
QUIET = "quiet"
UNSET = ("FERRY_OPERATOR_POLL_S", "FERRY_OPERATOR_RESYNC_S")
STARTUP_LINE = "Ferry operator: MLflow at"  # the operator's startup record: its resync and poll
RUNNERS: list[Any] = []  # the operator's runner, to know on the way out whether its thread stopped


def say(*parts: Any) -> None:
    print(*parts, file=OUT, flush=True)


class OperatorBug(RuntimeError):
    """The operator did not do what the measurement needs: reported, never worked around."""


class Records(logging.Handler):
    """Every log record of this process (on the root logger), kept with its thread: the operator
    runs in kopf's runner thread and its worker threads, the harness in the main thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def operator(self, level: int = logging.DEBUG, start: float = 0.0,
                 end: float = float("inf")) -> list[logging.LogRecord]:
        return [r for r in list(self.records) if r.levelno >= level and start <= r.created < end
                and r.threadName not in ("MainThread", "ferry-metrics")]

    def text(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is still shown
            return f"{record.levelname} {record.name}: {record.msg!r} {record.args!r}"


def seconds_of(stamp: str) -> float:
    """An audit event's RFC 3339 timestamp (microseconds, Z) as epoch seconds."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def wait(check: Any, what: str, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise OperatorBug(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(interval)


def events_about(site: Any, name: str) -> dict[str, dict[str, Any]]:
    items = site.cp.raw("GET", f"/api/v1/namespaces/{site.ns}/events")["items"]
    return {e["metadata"]["name"]: e for e in items if e["involvedObject"].get("kind") == "ModelPipeline"
            and e["involvedObject"].get("name") == name}


def settings_of(records: Records) -> tuple[float, float, str]:
    """(resync_s, poll_s, where from): the operator's startup record, else Deps' defaults."""
    for record in list(records.records):
        if isinstance(record.msg, str) and record.msg.startswith(STARTUP_LINE) and len(record.args or ()) >= 3:
            return float(record.args[1]), float(record.args[2]), "the operator's startup record"
    from ferry_operator._reconcile import Deps

    fields = Deps.__dataclass_fields__
    return float(fields["resync_s"].default), float(fields["poll_s"].default), "Deps' defaults (no startup record seen)"


def phase_of(site: Any, name: str) -> tuple[str | None, str]:
    status = site.status(name)
    return status.get("phase"), status.get("message", "")


def until_phase(site: Any, name: str, leaving: tuple[str, ...], timeout: float) -> tuple[float, str]:
    """Poll the phase until it is no longer one of ``leaving``; (monotonic time seen, the phase)."""
    deadline = time.monotonic() + timeout
    while True:
        phase, message = phase_of(site, name)
        seen = time.monotonic()
        if phase not in leaving:
            if phase in ("Failed", "Rejected"):
                raise OperatorBug(f"pipeline {name} went {phase}: {message}")
            return seen, phase
        if seen > deadline:
            raise OperatorBug(f"pipeline {name} still {phase} {timeout:g} s after the change ({message})")
        time.sleep(POLL_PHASE_S)


def until_running_told(site: Any, name: str, timeout: float) -> dict[str, Any]:
    """The pipeline's job, once its status says the job runs."""
    job = wait(lambda: site.job(f"{name}-g1"), f"pipeline {name}'s PyTorchJob exists", timeout)
    wait(site.phase_is(name, "Training"), f"pipeline {name} is Training", timeout)
    site.job_status(f"{name}-g1")  # Created, Running
    wait(lambda: "Running" in site.status(name).get("message", ""), f"pipeline {name}'s status tells the job Running",
         timeout)
    return job


def quiet(site: Any, records: Records, minutes: float, timeout: float) -> dict[str, Any]:
    from tests._operator import pipeline_doc

    site.create_pipeline(pipeline_doc(QUIET, f"bench-{QUIET}"))
    t0 = time.monotonic()
    until_running_told(site, QUIET, timeout)
    say(f"  pipeline {QUIET!r} Training, its job Running ({time.monotonic() - t0:.1f} s after it was created); "
        f"left alone for {minutes:g} min")
    time.sleep(SETTLE_S)
    before = events_about(site, QUIET)
    start = time.time()
    end = start + minutes * 60
    next_note = start + 60
    while (left := end - time.time()) > 0:
        time.sleep(min(left, 1.0))
        if next_note <= time.time() < end:
            say(f"  ... {(time.time() - start) / 60:.0f} of {minutes:g} min")
            next_note += 60
    end = time.time()
    after = events_about(site, QUIET)
    phase, message = phase_of(site, QUIET)
    return {"start": start, "end": end, "events": [after[k] for k in after if k not in before],
            "repeated": sum(int(after[k].get("count") or 1) - int(before[k].get("count") or 1)
                            for k in before if k in after),
            "phase": phase, "message": message}


def react(site: Any, index: int, timeout: float) -> tuple[float, float]:
    """One round: (job Succeeded → phase past Training/Evaluating, Ready → Serving) in seconds."""
    from tests._operator import pipeline_doc, train_as_rank0

    name, model = f"react-{index}", f"bench-react-{index}"
    site.create_pipeline(pipeline_doc(name, model))
    job = until_running_told(site, name, timeout)
    submission = job["metadata"]["labels"]["ferry.dev/submission"]
    train_as_rank0(site.mlflow_url, f"exp-{name}", submission, model, accuracy=0.97)
    written = time.monotonic()
    site.succeed(f"{name}-g1")
    seen, phase = until_phase(site, name, ("Pending", "Training", "Evaluating"), timeout)
    trained = seen - written
    if phase != "Deploying":
        wait(site.phase_is(name, "Deploying"), f"pipeline {name} is Deploying (it was {phase})", timeout)
    wait(lambda: site.isvc(name), f"pipeline {name}'s InferenceService exists", timeout)
    written = time.monotonic()
    site.serve_ready(name)
    seen, phase = until_phase(site, name, ("Deploying",), timeout)
    if phase != "Serving":
        raise OperatorBug(f"pipeline {name} went {phase} after its InferenceService got Ready, not Serving")
    say(f"  round {index}: job Succeeded -> phase past Training/Evaluating {trained:.3f} s; "
        f"InferenceService Ready -> Serving {seen - written:.3f} s")
    return trained, seen - written


def per_hour(count: int, window_s: float) -> str:
    return f"{count * 3600 / window_s:.1f}/h" if window_s > 0 else "-"


def describe(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", event.get("requestURI", "?"))
    resource += f"/{ref['subresource']}" if ref.get("subresource") else ""
    return f"{event['verb']} {resource}" + (f" {ref['name']}" if ref.get("name") else "") + \
        f" -> {event['responseStatus']['code']}"


def report_quiet(site: Any, records: Records, window: dict[str, Any], audit: list[dict[str, Any]]) -> None:
    start, end = window["start"], window["end"]
    span = end - start
    inside = [e for e in audit if start <= seconds_of(e["requestReceivedTimestamp"]) < end]
    patches = [e for e in inside if e["verb"] == "patch" and (e.get("objectRef") or {}).get("name") == QUIET
               and e["objectRef"].get("resource") == "modelpipelines"]
    warnings = records.operator(logging.WARNING, start, end)
    say(f"\nQuiet: pipeline {QUIET!r} Training, its PyTorchJob Running, {span / 60:.2f} min "
        f"(window opened {SETTLE_S:g} s after its status told the job Running)")
    rows = [("operator log records >= WARNING", len(warnings)),
            ("Events about the pipeline", len(window["events"]) + window["repeated"]),
            ("PATCHes of the pipeline (+/status)", len(patches)),
            ("requests of the operator, all", len(inside))]  # by arrival: a watch counts when opened
    for label, count in rows:
        say(f"  {label:<36} {count:>6}   {per_hour(count, span):>10}")
    for record in warnings[:10]:
        say(f"    log: {records.text(record)[:300]}")
    for event in window["events"][:10]:
        say(f"    Event {event.get('type')} {event.get('reason')}: {str(event.get('message'))[:200]}")
    for event in patches[:10]:
        say(f"    PATCH {event['requestURI']} -> {event['responseStatus']['code']}")
    if inside:
        say("  the operator's requests in the window, by kind:")
        for what, count in collections.Counter(describe(e) for e in inside).most_common():
            say(f"    {count:>5}  {what}")
    passes = [seconds_of(e["requestReceivedTimestamp"]) - start for e in inside if e["verb"] == "get"
              and (e.get("objectRef") or {}).get("resource") == "pytorchjobs" and not e["objectRef"].get("subresource")]
    if passes:
        gaps = [b - a for a, b in zip(passes, passes[1:])]
        at = ", +".join(f"{p:.1f}" for p in passes)
        say(f"  passes over the pipeline in the window (its GETs of the job): at +{at} s"
            + (f"; {', '.join(f'{g:.1f}' for g in gaps)} s apart" if gaps else ""))
    else:
        say("  passes over the pipeline in the window (its GETs of the job): none")
    say(f"  phase at the end: {window['phase']} ({window['message']})")


def report_reaction(trained: list[float], served: list[float], resync_s: float, source: str) -> None:
    say(f"\nReaction, {len(trained)} round(s) (phase read every {POLL_PHASE_S * 1000:.0f} ms; timed from just before "
        "the harness's status write):")
    say(f"  baseline: the resync interval, {resync_s:g} s ({source}): the longest a purely periodic operator at these "
        f"settings (a pass every {resync_s:g} s, nothing woken by watch events) could take to notice either change; "
        f"{resync_s / 2:g} s on average")
    for label, values in (("job Succeeded -> Promoting/Deploying", trained),
                          ("InferenceService Ready -> Serving", served)):
        lo, mid, hi = min(values), statistics.median(values), max(values)
        say(f"  {label:<38} min {lo:7.3f}  median {mid:7.3f}  max {hi:7.3f} s")
        say(f"  {'':<38} min {lo / resync_s:7.2g}x median {mid / resync_s:7.2g}x max {hi / resync_s:7.2g}x of resync")


def stop_children() -> list[str]:
    """Whatever child process of this one is still there (by pid): stopped; returns what was."""
    import psutil

    left = psutil.Process().children(recursive=True)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [f"{p.pid}" for p in left]


def run(args: argparse.Namespace, work: Path, records: Records) -> None:
    from ferry.settings import PACKAGED_CRD_DIR
    from tests import _controlplane
    from tests._operator import ACCOUNT, Operator, Site, grant_operator_role, rbac_docs
    from tests._servers import MlflowServer

    bin_dir = _controlplane.assets()
    assert bin_dir is not None
    with contextlib.ExitStack() as stack:
        say("starting the control plane and an MLflow server ...")
        plane = stack.enter_context(_controlplane.started(bin_dir, work / "control-plane"))
        operator_crds = REPO / "operator" / "ferry_operator" / "crds"
        plane.install_crds(*sorted(PACKAGED_CRD_DIR.glob("*.yaml")), *sorted((REPO / "tests" / "crds").glob("*.yaml")),
                           *sorted(operator_crds.glob("*.yaml")))
        (work / "mlflow").mkdir()
        server = MlflowServer(work / "mlflow")
        stack.callback(server.stop)
        server.start()

        plane.apply(next(d for d in rbac_docs() if d["kind"] == "ClusterRole"))
        ns = plane.namespace()
        grant_operator_role(plane, ns)
        lasting = int(args.minutes * 60 + args.rounds * 900 + 3600)  # the harness's token lasts an hour: longer
        kubeconfig = plane.write_kubeconfig(work / "operator.kubeconfig", ACCOUNT,
                                            token=plane.token(ACCOUNT, ns, seconds=lasting), namespace=ns)
        os.environ.update(KUBECONFIG=str(kubeconfig), MLFLOW_TRACKING_URI=server.url,
                          FERRY_ACTOR="ferry-operator-bench")
        site = Site(plane, ns, server.url, kubeconfig)

        say(f"running the operator in namespace {ns} ...")
        operator = Operator(site)
        with operator:
            RUNNERS.append(operator.runner)
            with contextlib.suppress(OperatorBug):  # without it, Deps' defaults are said to be the settings
                wait(lambda: any(isinstance(r.msg, str) and r.msg.startswith(STARTUP_LINE)
                                 for r in list(records.records)), "the operator's startup record", 60)
            resync_s, poll_s, source = settings_of(records)
            timeout = resync_s + 60  # a wake-up missed still ends within a resync: measured, not fatal
            say(f"operator settings: resync {resync_s:g} s, poll {poll_s:g} s ({source})")
            window = quiet(site, records, args.minutes, timeout)
            trained, served = [], []
            failure: OperatorBug | None = None
            try:
                for index in range(1, args.rounds + 1):
                    a, b = react(site, index, timeout)
                    trained.append(a)
                    served.append(b)
            except OperatorBug as exc:  # the quiet window's numbers are still reported
                failure = exc
        time.sleep(1.0)  # the watches the operator closed on its way out: in the audit log
        audit = plane.audit(user=site.user)
        (work / "operator.log").write_text("\n".join(records.text(r) for r in records.operator()) + "\n")

        say(f"\nFerry operator at its defaults (resync {resync_s:g} s, poll {poll_s:g} s), one namespace, as its "
            "ServiceAccount; a real kube-apiserver (audit log), MLflow server on SQLite")
        report_quiet(site, records, window, audit)
        if trained:
            report_reaction(trained, served, resync_s, source)
        denied = [describe(e) for e in audit if e["responseStatus"]["code"] == 403]
        failed = [describe(e) for e in audit if e["responseStatus"]["code"] >= 400 and e["verb"] != "watch"
                  and e["responseStatus"]["code"] not in (403, 404)]
        others = [r for r in records.operator(logging.WARNING) if not window["start"] <= r.created < window["end"]]
        if denied or failed or others:
            say("\nOutside the window / whole run:")
        for what, count in collections.Counter(denied).most_common():
            say(f"  refused (403) {count}x: {what}")
        for what, count in collections.Counter(failed).most_common():
            say(f"  failed {count}x: {what}")
        for record in others[:20]:
            say(f"  log: {records.text(record)[:300]}")
        if failure is not None:
            raise failure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the quiet pipeline is left alone")
    parser.add_argument("--rounds", type=int, default=3, help="pipelines whose reactions are timed")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, audit log) after a good run")
    args = parser.parse_args()
    if args.minutes <= 0 or args.rounds < 1:
        parser.error("--minutes must be > 0 and --rounds >= 1")

    from tests import _controlplane

    if _controlplane.assets() is None:
        sys.exit(f"operator_quiet needs the real control plane: {_controlplane.skip_reason()}")
    for name in UNSET:
        if os.environ.pop(name, None) is not None:
            say(f"note: {name} removed from the environment: this measures the operator's defaults")

    def terminated(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    records = Records()
    root = logging.getLogger()
    root.addHandler(records)
    root.setLevel(logging.INFO)  # kopf's CLI sets INFO as well; the harness's records before it count too
    work = Path(tempfile.mkdtemp(prefix="ferry-operator-quiet-"))
    code = 1  # 0 measured, 1 failed (the work folder kept), 130 interrupted
    try:
        run(args, work, records)
        code = 0
    except OperatorBug as exc:
        print(f"\nOPERATOR PROBLEM: {exc}", file=ERR, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=ERR, flush=True)
        code = 130
    except Exception:  # noqa: BLE001 - shown, then everything is stopped
        traceback.print_exc(file=ERR)
    finally:
        root.removeHandler(records)
        left = stop_children()
        if left:
            print(f"stopped child processes left running: {', '.join(left)}", file=ERR, flush=True)
        if code == 1:
            (work / "operator.log").write_text("\n".join(records.text(r) for r in records.operator()) + "\n")
            print("the operator's last log records:", file=ERR)
            for record in records.operator()[-15:]:
                print(f"  {records.text(record)[:300]}", file=ERR)
        if code == 1 or args.keep:
            print(f"work folder kept: {work} (control-plane/*.log, control-plane/audit.log, operator.log)",
                  file=ERR, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
        if any(r._thread.is_alive() for r in RUNNERS):  # the operator's thread did not stop: do not hang at exit
            print("the operator's thread did not stop; exiting anyway", file=ERR, flush=True)
            OUT.flush()
            os._exit(code or 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
