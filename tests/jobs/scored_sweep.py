"""Sweeps over tests/jobs/scored.py (one process per trial: fast)."""

from ferry import Choice, MedianPruning, Objective, Resources, Sweep, Tracking, TrainingJob

job = TrainingJob(
    name="scored",
    image="ghcr.io/ferry-ml/ferry-train:0.1.0",
    module="tests.jobs.scored",
    restart_policy="Never",
    resources=Resources(cpu="1", memory="1Gi"),
    hyperparameters={"quality": 1.0, "steps": 6, "pause": 0.4},
    tracking=Tracking(experiment="scored", register_as="scored-model"),
)

grid = Sweep(name="scored-grid", job=job, space={"quality": Choice([0.2, 0.5, 0.9])}, objective=Objective(metric="score"),
             trials=3, sampler="grid")
