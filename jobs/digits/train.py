"""Train the digits CNN with DDP; every replica runs this module.

Resumes from its submission's latest checkpoint after a restart (mid-epoch: the sampler's
order is a function of seed and epoch, so the batches already trained are skipped), or from
the checkpoint ``resume_from`` names; logs to one MLflow run per submission from rank 0, with
the data as dataset inputs, and registers the model at the end.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import ferry.runtime as fr
from jobs.digits.data import TEST_FRACTION, load_split
from jobs.digits.model import DigitsCNN


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(dim=1) == y).sum().item()
    model.train()
    return correct / len(y)


def main() -> None:
    ctx = fr.init()
    epochs, lr = ctx.hparam("epochs", 15), ctx.hparam("lr", 0.003)
    batch_size, seed = ctx.hparam("batch_size", 32), ctx.hparam("seed", 7)
    torch.manual_seed(seed)

    (x_train, y_train), (x_test, y_test) = load_split(seed)
    train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    x_test_t, y_test_t = torch.from_numpy(x_test).to(ctx.device), torch.from_numpy(y_test).to(ctx.device)
    sampler = DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler)
    steps_per_epoch = len(loader)

    model = DigitsCNN().to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    checkpointer = fr.Checkpointer.from_env(is_primary=ctx.is_primary)
    step = checkpointer.restore(model=model, optimizer=optimizer, scheduler=scheduler) if checkpointer else 0
    ddp = ctx.wrap(model)

    with fr.Tracker(is_primary=ctx.is_primary) as tracker:
        tracker.log_params({
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "world_size": ctx.world_size,
            "test_fraction": TEST_FRACTION, "model": "DigitsCNN", "parameters": sum(p.numel() for p in model.parameters()),
        })
        tracker.log_dataset(x_train, y_train, name="digits", source="sklearn.datasets.load_digits", context="training")
        tracker.log_dataset(x_test, y_test, name="digits", source="sklearn.datasets.load_digits", context="evaluation")
        if step:
            tracker.set_tags({"ferry.resumed_from_step": step})
            print(f"resumed from checkpoint at step {step} ({checkpointer.restored_from})", flush=True)
        started, seen = time.perf_counter(), 0
        for epoch in range(step // steps_per_epoch, epochs):
            sampler.set_epoch(epoch)
            for i, (xb, yb) in enumerate(loader):
                if epoch * steps_per_epoch + i < step:
                    continue  # trained before the restart
                xb, yb = xb.to(ctx.device), yb.to(ctx.device)
                loss = F.cross_entropy(ddp(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                seen += len(xb) * ctx.world_size
                rate = seen / (time.perf_counter() - started)
                tracker.log_metrics({"loss": loss.item(), "samples_per_s": rate, "lr": scheduler.get_last_lr()[0]}, step)
                fr.progress(ctx, step, epochs * steps_per_epoch, loss=loss.item(), samples_per_s=rate)
                if checkpointer:
                    checkpointer.maybe_save(step, model=model, optimizer=optimizer, scheduler=scheduler)
            test_acc = accuracy(model, x_test_t, y_test_t)
            tracker.log_metrics({"test_accuracy": test_acc, "epoch": epoch}, step)
        tracker.set_tags({"ferry.final_step": step})
        finish(ctx, tracker, model, (x_test_t, y_test_t), x_test[:8], step)
        if checkpointer:
            # The final state, for an explicit resume_from; this submission is never continued by accident.
            checkpointer.finish(step, model=model, optimizer=optimizer, scheduler=scheduler)
    fr.shutdown()


def finish(ctx: fr.Context, tracker: fr.Tracker, model: torch.nn.Module, test: tuple[torch.Tensor, torch.Tensor],
           example: object, step: int) -> float:
    """Log the final held-out accuracy, then (once every rank is done) log and register the model."""
    test_acc = accuracy(model, *test)
    tracker.log_metrics({"test_accuracy": test_acc}, step)
    if ctx.is_primary:
        print(f"final step {step} test_accuracy {test_acc:.4f}", flush=True)
    ctx.barrier()
    tracker.log_model(model.cpu(), input_example=example)
    return test_acc


if __name__ == "__main__":
    main()
