"""A short learning-rate and batch-size search over the digits job (what `make demo` runs): four
trials of eight epochs, the median rule stopping trials that fall behind, the best registered.

    ferry sweep jobs/digits/sweep.py --register best   # here, trials side by side in MLflow
    ferry render jobs/digits/sweep.py -o manifests/    # a PyTorchJob per trial, for a cluster
"""

from ferry import Choice, LogUniform, MedianPruning, Objective, Sweep
from jobs.digits.job import job as digits

sweep = Sweep(
    name="digits-lr",
    job=digits.model_copy(update={"hyperparameters": {**digits.hyperparameters, "epochs": 8}}),
    space={"lr": LogUniform(0.0005, 0.02), "batch_size": Choice([32, 64])},
    objective=Objective(metric="test_accuracy", goal="max"),
    trials=4,
    parallel=1,
    sampler="tpe",
    pruning=MedianPruning(startup_trials=2, warmup_steps=2),
)
