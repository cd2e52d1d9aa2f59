"""A small CNN on scikit-learn's bundled digits, trained with DDP on 2 CPU workers.

    ferry render jobs/digits/job.py -o manifests/   # the PyTorchJob for the cluster
    ferry run jobs/digits/job.py                    # the same job on this machine
"""

from ferry import Autoscaling, Checkpointing, Deployment, Promotion, PVCVolume, Resources, Tracking, TrainingJob
from ferry.images import image

# Ferry's training image (images/train): ferry, torch 2.13 and this repository's jobs/ package;
# FERRY_IMAGE_REGISTRY and FERRY_IMAGE_TAG name it, as they do in the Helm chart.
TRAIN_IMAGE = image("train", variant="cpu")

job = TrainingJob(
    name="digits",
    image=TRAIN_IMAGE,
    module="jobs.digits.train",
    workers=2,
    resources=Resources(cpu="1", memory="2Gi"),
    hyperparameters={"epochs": 15, "lr": 0.003, "batch_size": 32, "seed": 7},
    tracking=Tracking(experiment="digits", register_as="digits-classifier",
                      eval_data="jobs.digits.data:eval_data"),
    volumes=[PVCVolume(claim="ferry-checkpoints", mount_path="/mnt/checkpoints")],
    checkpointing=Checkpointing(uri="/mnt/checkpoints/digits", every_steps=20, keep=3),
    run_policy={"backoff_limit": 3, "ttl_seconds_after_finished": 86400},
)

# How a trained version earns its way to production: at least 95% on the held-out split, and
# at least as good as the version it replaces; served serverless, scaling on concurrency.
promotion = Promotion(
    model="digits-classifier",
    metric="test_accuracy",
    min_value=0.95,
    must_beat="current",
    environments=("staging", "production"),
    deployment=Deployment(name="digits", model="models:/digits-classifier@champion",
                          autoscaling=Autoscaling(min_replicas=0, max_replicas=5, metric="concurrency", target=32)),
)
