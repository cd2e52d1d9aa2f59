"""``ferry submit``, ``status``, ``list``, ``logs`` and ``delete``: training jobs on a cluster.

Every command takes ``--namespace/-n``, ``--context`` and ``--kubeconfig`` (else
``$KUBECONFIG``, else ``~/.kube/config``, else the pod's service account) and exits with the
codes of :data:`ferry.cli._util.EXIT_CODES` its epilog lists.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._util import (
    CLUSTER_CODES,
    DryRun,
    DryRunOption,
    Output,
    _stderr,
    _stdout,
    emit,
    exit_codes,
    fail_cleanly,
    in_namespace,
    output_option,
    refuse,
    replica_line,
    select_job,
    target_namespace,
)
from ferry.cli._watch import (
    LIST_SCHEMA,
    STATUS_SCHEMA,
    job_doc,
    poll_s,
    progress_line,
    state_table,
    status_doc,
    watch,
)
from ferry.cli.code import CodeOption, CodeStoreOption, NoCodeOption, with_code
from ferry.cli.local import JobNameOption, ResumeOption, SetOption, WorkersOption
from ferry.cli.sweep import SweepNameOption

cluster_app = typer.Typer()

NamespaceOption = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="Namespace (default: the kubeconfig context's, else 'default').")]
ContextOption = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: the current one).")]
KubeconfigOption = Annotated[Path | None, typer.Option(
    "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the pod's service account).")]
JobArgument = Annotated[str, typer.Argument(help="The job's name (its PyTorchJob or TrainJob).")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Follow the job to its end; the exit code is its outcome.")]
TimeoutOption = Annotated[float | None, typer.Option(
    "--timeout", help="With --wait: give up after this many seconds (exit 124; the job goes on).")]
PANEL = "Cluster"


def check_wait(wait: bool, timeout: float | None) -> None:
    """``--timeout`` goes with ``--wait``, and is a positive number of seconds."""
    if timeout is None:
        return
    if not wait:
        raise refuse("--timeout", "--timeout applies with --wait (how long to wait); add --wait or leave it out")
    if timeout <= 0:
        raise refuse("--timeout", f"must be more than 0 seconds (got {timeout:g})")


def connect(kubeconfig: Path | None, context: str | None, namespace: str | None) -> Any:
    from ferry.kube import Cluster

    return Cluster.connect(kubeconfig, context, namespace)


@cluster_app.command(rich_help_panel=PANEL, epilog=exit_codes(0, 1, 2, *CLUSTER_CODES, 10, 124, 130))
@fail_cleanly
def submit(
    job_file: Annotated[Path, typer.Argument(help="Python file defining the TrainingJob (or a Sweep).")],
    job_name: JobNameOption = None,
    sweep_name: SweepNameOption = None,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Namespace (default: the one the job sets, else the kubeconfig context's, "
                                  "else 'default').")] = None,
    context: ContextOption = None,
    kubeconfig: KubeconfigOption = None,
    set_: SetOption = None,
    workers: WorkersOption = None,
    resume_from: ResumeOption = None,
    dry_run: DryRunOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream every replica's log while waiting (implies --wait).")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Delete an existing job of this name first (its MLflow run and checkpoints stay).")] = False,
    force_conflicts: Annotated[bool, typer.Option("--force-conflicts", help="Take over fields another field manager owns.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="Create/update the ConfigMap the job reads MLFLOW_TRACKING_URI from (default: it must exist).")] = None,
    code: CodeOption = None,
    no_code: NoCodeOption = False,
    code_store: CodeStoreOption = None,
) -> None:
    """Submit a job to the cluster as a new submission.

    Each call is a new submission (a fresh id, fresh checkpoints), applied server-side as field
    manager 'ferry', as a PyTorchJob or, when the job's target (or $FERRY_TARGET) says trainjob,
    as a Kubeflow Trainer TrainJob. A job of the same name is never reused: without --replace,
    an existing one (running or finished) is a conflict.

    The job's code goes with it when a code store is set (--code-store, $FERRY_CODE_STORE, or an
    MLflow server as MLFLOW_TRACKING_URI): the job file's project root (or --code DIR) is bundled,
    uploaded once per digest, and every replica runs it instead of the image's copy; --no-code
    runs the image's own code.

    A file defining a Sweep submits its trials (--sweep NAME when it defines several; --job
    NAME submits one of its jobs instead), at most the sweep's parallel at once, and follows
    them to the end, as --wait does: MLFLOW_TRACKING_URI must reach the tracking server from
    here. --set, --workers, -n, --dry-run, --force-conflicts and --tracking-uri apply to every
    trial, which replaces its own earlier job; --resume-from, --follow and --timeout do
    not apply to a sweep."""
    from ferry.local import apply_overrides
    from ferry.render import dump_yaml
    from ferry.validate import find_crd_dir, validate_manifests

    check_wait(wait or follow, timeout)
    if dry_run is not None and (wait or follow):
        option = "--wait" if wait else "--follow"
        raise refuse(option, f"a dry run starts nothing to wait for; leave out {option} or --dry-run")
    from ferry.spec import Sweep, TrainingJob, load_specs

    loaded = [item.spec for item in load_specs([job_file], kinds=(TrainingJob, Sweep))]
    jobs = [s for s in loaded if isinstance(s, TrainingJob)]
    sweeps = [s for s in loaded if isinstance(s, Sweep)]
    if job_name is not None and sweep_name is None and job_name not in {j.name for j in jobs} \
            and job_name in {s.name for s in sweeps}:  # how a sweep was chosen before --sweep
        _stderr().print(f"[yellow]warning:[/] --job {job_name} names a Sweep; choose a sweep with --sweep "
                        "(--job for a sweep is deprecated)")
        job_name, sweep_name = None, job_name
    if sweep_name is not None or (sweeps and job_name is None):
        from ferry.cli.sweep import pick_sweep, submit_sweep

        sweep = with_code(pick_sweep(sweeps, job_file, sweep_name), job_file, code, no_code, code_store,
                          default_on=True, dry_run=dry_run is not None)
        for option, given, why in [
                ("--resume-from", resume_from is not None, "each trial of a sweep starts fresh"),
                ("--follow", follow, "a sweep's trials run side by side: follow one with `ferry logs NAME --follow`"),
                ("--timeout", timeout is not None, "a sweep runs until its trials are done (Ctrl-C stops it; "
                                                   "submitting it again continues it)")]:
            if given:
                raise refuse(option, f"{why}; {option} does not apply to sweep {sweep.name}")
        submit_sweep(sweep, lambda: connect(kubeconfig, context, namespace), namespace, sets=set_ or (),
                     workers=workers, dry_run=dry_run, force_conflicts=force_conflicts, tracking_uri=tracking_uri,
                     poll_s=poll_s())
        return
    spec = with_code(select_job(job_file, job_name, jobs), job_file, code, no_code, code_store, default_on=True,
                     dry_run=dry_run is not None)
    cluster = None if dry_run is DryRun.client else connect(kubeconfig, context, namespace)
    target = target_namespace(spec, namespace, cluster.namespace if cluster is not None else None)
    job = in_namespace(apply_overrides(spec, set_ or (), workers, resume_from), target)
    from ferry.kube import plan_submission

    submission, manifest = plan_submission(job)
    validate_manifests([(f"{job.name}/{manifest['kind'].lower()}.yaml", manifest)], find_crd_dir())
    err = _stderr()
    if cluster is None:
        from ferry.kube import tracking_configmap

        docs = ([tracking_configmap(job, target, tracking_uri)] if tracking_uri is not None else []) + [manifest]
        _stdout().file.write(dump_yaml(docs))
        err.print(f"dry run (client): submission {submission}; nothing sent")
        return
    from ferry.kube import kind_of
    from ferry.kube import submit as do_submit

    with cluster:
        done = do_submit(cluster, job, manifest, submission, dry_run=dry_run is DryRun.server, replace=replace,
                         force_conflicts=force_conflicts, tracking_uri=tracking_uri, say=err.print, poll_s=poll_s())
        for item in done.applied:
            err.print(f"{'accepted (dry run, server)' if done.dry_run else 'applied'}: {item}")
        if done.dry_run:
            _stdout().print(f"dry run: the API server accepts {job.name} (submission {submission}); nothing was stored")
            return
        out = _stdout()
        out.print(f"submitted {job.name} to namespace {done.namespace}: submission {submission}"
                  + (f" (replaced {done.replaced})" if done.replaced else ""))
        if not (wait or follow):
            out.print(f"  follow it: ferry status {job.name} -n {done.namespace}   ferry logs {job.name} -n {done.namespace} --follow")
            return
        raise typer.Exit(watch(cluster, job.name, done.namespace, timeout, follow, kind=kind_of(manifest)))


@cluster_app.command(rich_help_panel=PANEL, epilog=exit_codes(0, 1, 2, 3, 5, 7, 8, 9, 124, 130))
@fail_cleanly
def status(
    name: JobArgument,
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    kubeconfig: KubeconfigOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    output: Annotated[Output, output_option(STATUS_SCHEMA)] = Output.table,
) -> None:
    """A job's state: phase and why, replicas per role, restarts, age, and its pods; a
    TrainJob's progress too (percent done, time left, latest metrics), as its trainer reports it.

    With --wait, follow it to its end first (with -o json or yaml, its progress goes to stderr
    and the final state to stdout); the exit code is then its outcome."""
    from rich.markup import escape
    from rich.table import Table

    from ferry.kube import find_job, job_pods, job_state, kind_of, pod_restarts, replica_name

    check_wait(wait, timeout)
    with connect(kubeconfig, context, namespace) as cluster:
        code = 0
        kind = kind_of(find_job(cluster, name))
        if wait:
            code = watch(cluster, name, namespace or cluster.namespace, timeout, False,
                         out=None if output is Output.table else _stderr(), kind=kind)
            if output is Output.table:
                raise typer.Exit(code)
        state = job_state(cluster, name, kind=kind)
        pods = job_pods(cluster, name, kind=kind)

        def table() -> None:
            out = _stdout()
            out.print(state_table(state))
            out.print(f"submission {state.submission or '-'}" + (f"; {escape(state.reason)}: {escape(state.message)}"
                                                                if state.message else ""))
            if state.progress is not None:
                out.print(progress_line(state.progress))
            if pods:
                rows = Table("replica", "pod", "phase", "restarts", "node")
                for pod in pods:
                    rows.add_row(replica_name(pod), pod["metadata"]["name"], (pod.get("status") or {}).get("phase", "-"),
                                 str(pod_restarts(pod)), (pod.get("spec") or {}).get("nodeName") or "-")
                out.print(rows)

        emit(status_doc(state, pods), output, table)
    if code:
        raise typer.Exit(code)


@cluster_app.command("list", rich_help_panel=PANEL, epilog=exit_codes(0, 2, 5, 7, 8, 9, 130))
@fail_cleanly
def list_(
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    kubeconfig: KubeconfigOption = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Jobs of every namespace.")] = False,
    output: Annotated[Output, output_option(LIST_SCHEMA)] = Output.table,
) -> None:
    """The jobs Ferry submitted (label app.kubernetes.io/managed-by=ferry), PyTorchJobs and
    TrainJobs, newest first."""
    from rich.markup import escape
    from rich.table import Table

    from ferry.kube import list_jobs

    def skipped(error: Exception) -> None:
        _stderr().print(f"[yellow]warning:[/] {escape(str(error))}")

    with connect(kubeconfig, context, namespace) as cluster:
        states = list_jobs(cluster, all_namespaces=all_namespaces, skipped=skipped)

        def table() -> None:
            out = _stdout()
            if not states:
                where = "any namespace" if all_namespaces else "namespace " + cluster.namespace
                out.print(f"no jobs submitted by Ferry in {where}")
                return
            rows = Table(*(["namespace"] if all_namespaces else []), "name", "kind", "submission", "phase", "age")
            for s in states:
                rows.add_row(*([s.namespace] if all_namespaces else []), s.name, s.kind, s.submission or "-", s.phase,
                             s.age())
            out.print(rows)

        emit([job_doc(s) for s in states], output, table)


@cluster_app.command(rich_help_panel=PANEL, epilog=exit_codes(0, 2, 3, 5, 7, 8, 9, 130))
@fail_cleanly
def logs(
    name: JobArgument,
    replica: Annotated[str | None, typer.Option(
        "--replica", help="Only this replica: master-0, worker-N (a PyTorchJob's), node-N (a TrainJob's) (default: all).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new lines until the job ends (Ctrl-C stops).")] = False,
    previous: Annotated[bool, typer.Option("--previous", help="The previous container's log (before a restart).")] = False,
    tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines of each replica.")] = None,
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Every replica's log, each line prefixed \\[master-0], \\[worker-1], ... (\\[node-0], ... for a
    TrainJob) as `ferry run` prints them."""
    from ferry.errors import NotFound
    from ferry.kube import find_job, follow_logs, job_pods, kind_of, pod_container, replica_name, wait_for

    out = _stdout()

    def emit(who: str, line: str) -> None:
        out.print(replica_line(who, line), highlight=False, soft_wrap=True)

    with connect(kubeconfig, context, namespace) as cluster:
        kind = kind_of(find_job(cluster, name))  # a missing job (or kind) is its own error
        pods = job_pods(cluster, name, kind=kind)
        if replica is not None:
            pods = [p for p in pods if replica_name(p) == replica]
            if not pods:
                known = ", ".join(replica_name(p) for p in job_pods(cluster, name, kind=kind)) or "none yet"
                raise NotFound(f"job {name!r} has no replica {replica!r} (replicas: {known})", reason="ReplicaNotFound")
        if not follow:
            if not pods:
                raise NotFound(f"job {name!r} has no pods yet; `ferry status {name}` says why", reason="NoPods")
            for pod in pods:
                for line in cluster.pod_log(pod["metadata"]["name"], container=pod_container(pod), previous=previous,
                                            tail_lines=tail):
                    emit(replica_name(pod), line)
            return
        if replica is not None:
            pod = pods[0]["metadata"]["name"]
            try:
                for line in cluster.pod_log(pod, container=pod_container(pods[0]), follow=True, tail_lines=tail,
                                            previous=previous):
                    emit(replica, line)
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            return
        stop = threading.Event()
        thread = threading.Thread(target=follow_logs, args=(cluster, name, cluster.namespace, emit, stop),
                                  kwargs={"poll_s": poll_s(), "kind": kind}, daemon=True)
        thread.start()
        try:
            wait_for(cluster, name, poll_s=poll_s(), kind=kind)
            stop.wait(poll_s())  # the last lines
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            stop.set()
            thread.join(timeout=poll_s() + 5)


@cluster_app.command(rich_help_panel=PANEL, epilog=exit_codes(0, 2, 3, 5, 7, 8, 9, 124, 130))
@fail_cleanly
def delete(
    name: JobArgument,
    wait: Annotated[bool, typer.Option("--wait", help="Return once the job and its pods are gone.")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="With --wait: give up after this many seconds (default 300; exit 124, the deletion goes "
                          "on).")] = None,
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Delete a job's PyTorchJob or TrainJob (its pods go with it). Its MLflow run and checkpoints stay."""
    from ferry.kube import delete_job

    check_wait(wait, timeout)
    with connect(kubeconfig, context, namespace) as cluster:
        kind = delete_job(cluster, name, wait=wait, timeout_s=timeout or 300, poll_s=poll_s())
        _stdout().print(f"deleted {kind.kind} {cluster.namespace}/{name}" + ("" if wait else " (going)"))
