"""The digits job at cluster scale: 4 nodes x 8 GPUs, elastic between 2 and 4 nodes,
admitted through a Kueue queue, checkpoints on S3 with credentials from a Secret."""

from ferry import (
    Checkpointing,
    Elastic,
    Resources,
    RunPolicy,
    SecretRef,
    Toleration,
    Tracking,
    TrainingJob,
)
from ferry.images import image

# Ferry's training image (images/train): ferry, torch 2.13 and this repository's jobs/ package;
# FERRY_IMAGE_REGISTRY and FERRY_IMAGE_TAG name it, as they do in the Helm chart.
TRAIN_IMAGE = image("train")

job = TrainingJob(
    name="digits-gpu",
    namespace="ml-team",
    image=TRAIN_IMAGE,
    module="jobs.digits.train",
    workers=4,
    procs_per_worker=8,
    resources=Resources(cpu="32", memory="256Gi", gpu=8),
    elastic=Elastic(min_workers=2, max_workers=4, max_restarts=5),
    queue="gpu-a100",
    hyperparameters={"epochs": 30, "lr": 0.003, "batch_size": 256, "seed": 7},
    env={
        "NCCL_DEBUG": "WARN",
        "NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_SOCKET_IFNAME": "eth0",
        "AWS_ENDPOINT_URL": "https://s3.us-east-1.amazonaws.com",
    },
    secret_env={
        "AWS_ACCESS_KEY_ID": SecretRef(name="ferry-s3", key="access-key-id"),
        "AWS_SECRET_ACCESS_KEY": SecretRef(name="ferry-s3", key="secret-access-key"),
    },
    tracking=Tracking(experiment="digits", register_as="digits-classifier",
                      eval_data="jobs.digits.data:eval_data"),
    checkpointing=Checkpointing(uri="s3://ferry-checkpoints/digits-gpu", every_steps=200, keep=3),
    node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    shm_size="32Gi",
    run_policy=RunPolicy(backoff_limit=6, active_deadline_seconds=6 * 3600, clean_pod_policy="Running"),
    labels={"team": "vision"},
)
