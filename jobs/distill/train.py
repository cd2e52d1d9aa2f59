"""Knowledge distillation: a small student learns the teacher's softened outputs as well as the
labels (Hinton et al.: ``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE``).

The teacher is any registered version (``teacher`` hyperparameter, e.g. ``models:/digits-
classifier@champion``; ``ferry optimize --distill`` sets it to the version being optimized).
Its logits for the training split are computed once, up front: the teacher never runs in the
training loop. The student registers under the job's ``register_as`` like any trained model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import ferry.runtime as fr
from jobs.digits.data import load_split
from jobs.digits.model import DigitsCNN
from jobs.digits.train import accuracy, finish


def teacher_logits(uri: str, x: np.ndarray, batch: int = 256) -> torch.Tensor:
    import mlflow.pytorch

    teacher = mlflow.pytorch.load_model(uri, map_location="cpu")
    with torch.inference_mode():
        return torch.cat([teacher(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return alpha * soft + (1 - alpha) * F.cross_entropy(student, labels)


def main() -> None:
    ctx = fr.init()
    teacher_uri = ctx.hparam("teacher", "models:/digits-classifier@champion")
    temperature, alpha = float(ctx.hparam("temperature", 4.0)), float(ctx.hparam("alpha", 0.7))
    epochs, lr = ctx.hparam("epochs", 20), ctx.hparam("lr", 0.005)
    batch_size, seed = ctx.hparam("batch_size", 64), ctx.hparam("seed", 7)
    width, hidden = ctx.hparam("width", 8), ctx.hparam("hidden", 16)
    torch.manual_seed(seed)

    (x_train, y_train), (x_test, y_test) = load_split(seed)
    soft = teacher_logits(teacher_uri, x_train)
    train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train), soft)
    sampler = DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler)
    test = (torch.from_numpy(x_test).to(ctx.device), torch.from_numpy(y_test).to(ctx.device))

    student = DigitsCNN(width=width, hidden=hidden).to(ctx.device)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    ddp = ctx.wrap(student)
    with fr.Tracker(is_primary=ctx.is_primary) as tracker:
        tracker.log_params({"parameters": sum(p.numel() for p in student.parameters()), "model": "DigitsCNN"})
        tracker.set_tags({"ferry.optimize.method": "distill", "ferry.optimize.source": teacher_uri})
        tracker.log_dataset(x_train, y_train, name="digits",
                            source="sklearn.datasets.load_digits", context="training")
        step = 0
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for xb, yb, tb in loader:
                xb, yb, tb = xb.to(ctx.device), yb.to(ctx.device), tb.to(ctx.device)
                loss = distillation_loss(ddp(xb), tb, yb, temperature, alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                tracker.log_metrics({"loss": loss.item()}, step)
                fr.progress(ctx, step, epochs * len(loader), loss=loss.item())
            tracker.log_metrics({"test_accuracy": accuracy(student, *test)}, step)
        finish(ctx, tracker, student, test, x_test[:8], step)
    fr.shutdown()


if __name__ == "__main__":
    main()
