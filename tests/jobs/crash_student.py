"""A student job whose script crashes: distillation must fail clearly and register nothing."""

from ferry import Resources, Tracking, TrainingJob

job = TrainingJob(
    name="crash-student",
    image="ghcr.io/ferry-ml/ferry-train:0.1.0",
    module="tests.jobs.crash",
    workers=1,
    restart_policy="Never",
    resources=Resources(cpu="1", memory="1Gi"),
    hyperparameters={"teacher": "models:/digits-classifier@champion"},
    tracking=Tracking(experiment="crash-student"),
)
