"""What a trial is, wherever it runs: the job with the trial's values, its manifest labelled with
the sweep and trial, and the MLflow parent run its run nests under."""

from __future__ import annotations

import json
from typing import Any

from ferry.spec import TrainingJob
from ferry.spec._sweep import Sweep

SWEEP_LABEL = "ferry.dev/sweep"
TRIAL_LABEL = "ferry.dev/trial"


def trial_job(sweep: Sweep, values: dict[str, Any], number: int) -> TrainingJob:
    """``sweep.job`` with the trial's values: hyperparameters (in the type the job gives them),
    ``workers``; the trial's model is not registered (``ferry sweep --register best`` registers
    the winner's)."""
    job = sweep.job
    hparams = dict(job.hyperparameters)
    for key, value in values.items():
        if key == "workers":
            continue
        like = hparams[key]
        hparams[key] = type(like)(value) if isinstance(like, (int, float)) and not isinstance(like, bool) else value
    assert job.tracking is not None  # the Sweep requires it
    tracking = job.tracking.replace(register_as=None, experiment=job.experiment)
    labels = {**job.labels, SWEEP_LABEL: sweep.name, TRIAL_LABEL: str(number)}
    update: dict[str, Any] = {"hyperparameters": hparams, "tracking": tracking, "labels": labels,
                              "name": f"{sweep.name}-t{number}"}
    if "workers" in values:
        workers = int(values["workers"])
        update["workers"] = workers
        if job.elastic is not None:
            update["elastic"] = job.elastic.replace(min_workers=min(job.elastic.min_workers, workers),
                                                    max_workers=max(job.elastic.max_workers, workers))
    return job.replace(**update)


def trial_env(sweep: Sweep, number: int) -> dict[str, str]:
    """What the runtime reads to nest the trial's run under the sweep's parent run."""
    return {"FERRY_SWEEP": sweep.name, "FERRY_TRIAL": str(number)}


def with_trial(manifest: dict[str, Any], sweep: Sweep, number: int) -> dict[str, Any]:
    """A rendered trial PyTorchJob with the runtime's sweep environment in every container."""
    return with_env(manifest, trial_env(sweep, number))


def with_env(manifest: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """``manifest`` (a PyTorchJob, or a TrainJob: its trainer's) with ``values`` added to every
    training container's environment."""
    out = json.loads(json.dumps(manifest))
    entries = [{"name": k, "value": v} for k, v in values.items()]
    if "trainer" in out["spec"]:
        out["spec"]["trainer"].setdefault("env", []).extend(entries)
        return out
    for replica in out["spec"]["pytorchReplicaSpecs"].values():
        for container in replica["template"]["spec"]["containers"]:
            container.setdefault("env", []).extend(entries)
    return out


def record_search(client: Any, run_id: str, sweep: Sweep) -> None:
    from mlflow.entities import Param

    space = {k: d.model_dump(mode="json") for k, d in sweep.space.items()}
    params = {"sweep.space": json.dumps(space, sort_keys=True), "sweep.objective": f"{sweep.objective.goal} "
              f"{sweep.objective.metric}", "sweep.sampler": sweep.sampler, "sweep.trials": str(sweep.trials),
              "sweep.parallel": str(sweep.parallel), "sweep.pruning": "median" if sweep.pruning else "none",
              "sweep.job": sweep.job.name}
    try:
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    except Exception:  # noqa: BLE001 - logged already by an earlier session of the same sweep
        pass
