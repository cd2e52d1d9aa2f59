"""A small student for the digits classifier, trained by knowledge distillation: it learns
the teacher's softened outputs (temperature, alpha) as well as the labels."""

from ferry import Resources, Tracking, TrainingJob
from ferry.images import image

# Ferry's training image (images/train): ferry, torch 2.13 and this repository's jobs/ package;
# FERRY_IMAGE_REGISTRY and FERRY_IMAGE_TAG name it, as they do in the Helm chart.
TRAIN_IMAGE = image("train", variant="cpu")

job = TrainingJob(
    name="digits-student",
    image=TRAIN_IMAGE,
    module="jobs.distill.train",
    workers=1,
    resources=Resources(cpu="1", memory="1Gi"),
    hyperparameters={
        "teacher": "models:/digits-classifier@champion",
        "temperature": 4.0,
        "alpha": 0.7,
        "epochs": 20,
        "lr": 0.005,
        "batch_size": 64,
        "seed": 7,
    },
    tracking=Tracking(experiment="digits-distill", register_as="digits-classifier",
                      eval_data="jobs.digits.data:eval_data"),
)
