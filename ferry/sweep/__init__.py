"""Hyperparameter sweeps: a ``Sweep`` spec searched with Optuna, each trial one submission of
the job, tracked as MLflow child runs under one parent run.

    ferry sweep jobs/digits/sweep.py --parallel 2 --register best   # here, through the local executor
    ferry render jobs/digits/sweep.py -o manifests/                  # a PyTorchJob per trial
"""

from ferry.sweep._trials import SWEEP_LABEL, TRIAL_LABEL, trial_env, trial_job, with_trial

__all__ = ["SWEEP_LABEL", "TRIAL_LABEL", "trial_env", "trial_job", "with_trial"]
