"""A Sweep on a cluster (``ferry submit`` of a Sweep file): each trial a PyTorchJob (or a
TrainJob, as the sweep's job targets) submitted through ``ferry.kube``, at most ``parallel`` at
once, the sampler asked for the next as each one finishes. Trial results are read from MLflow
(``MLFLOW_TRACKING_URI`` as this machine reaches it); a pruned or interrupted trial's job is
deleted."""

from __future__ import annotations

import threading
from typing import Any, Callable

from ferry.sweep._local import Launcher
from ferry.sweep._trials import with_env


def cluster_launcher(cluster: Any, *, tracking_uri: str | None, poll_s: float,
                     say: Callable[[str], None] = lambda line: None, force_conflicts: bool = False) -> Launcher:
    """Trials as PyTorchJobs or TrainJobs: ``tracking_uri`` (when given) is written to the ConfigMap the jobs
    read their tracking URI from, as ``ferry submit --tracking-uri`` does; ``force_conflicts``
    takes over fields another field manager owns, as ``--force-conflicts`` does."""

    def launch(job: Any, submission: str, env: dict[str, str], stop: threading.Event) -> str | None:
        from ferry.kube import delete_job, job_state, kind_of, plan_submission, submit

        _, manifest = plan_submission(job, submission)
        manifest = with_env(manifest, env)
        kind = kind_of(manifest)
        submit(cluster, job, manifest, submission, replace=True, force_conflicts=force_conflicts,
               tracking_uri=tracking_uri, say=say, poll_s=poll_s)
        say(f"submitted trial {env.get('FERRY_TRIAL')}: {kind.kind} {job.namespace}/{job.name} "
            f"(submission {submission})")
        while True:
            if stop.wait(poll_s):
                delete_job(cluster, job.name, job.namespace, kind=kind)
                return "stopped"
            state = job_state(cluster, job.name, job.namespace, kind=kind)
            if state.finished:
                return None if state.succeeded else f"{kind.kind} {job.name} {state.phase}: {state.message or state.reason}"

    return launch
