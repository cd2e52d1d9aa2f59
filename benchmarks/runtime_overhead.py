"""Ferry runtime overhead: the same model, data and steps trained by a bare DDP loop and by
the Ferry runtime (MLflow tracking of 3 metrics every step + checkpoints every N steps),
interleaved in ONE process group so both see the same machine state. Prints the ratio.

    python benchmarks/runtime_overhead.py [--steps 600] [--rounds 3] [--every 100] [--world 2]

Target: Ferry <= 1.05x the bare loop's wall time. Tracking goes to an embedded SQLite store
(the laptop default). The one-time costs (finding or creating the run and starting the
tracking sidecar; the last flush) do not grow with the number of steps and are reported
apart, and also folded into a second ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.digits.data import load_split  # noqa: E402
from jobs.digits.model import DigitsCNN  # noqa: E402


SETTLE_S = 2.0


def _loop(model, ddp, opt, batches, steps, tracker=None, checkpointer=None):
    for step in range(1, steps + 1):
        xb, yb = batches[step % len(batches)]
        loss = F.cross_entropy(ddp(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.log_metrics({"loss": loss.item(), "samples_per_s": 1.0, "lr": 0.003}, step)
        if checkpointer is not None:
            checkpointer.maybe_save(step, model=model, optimizer=opt)
    if checkpointer is not None:
        checkpointer.flush()  # the last checkpoint's write counts: a job's end waits for it too


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, workdir: str, out: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db", FERRY_ARTIFACT_ROOT=Path(workdir, "art").as_uri(),
                      FERRY_JOB_NAME="bench", MLFLOW_EXPERIMENT_NAME="runtime-overhead")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    import warnings

    warnings.filterwarnings("ignore", message="Grad strides do not match")  # benign for this CNN under DDP
    import ferry.runtime as fr

    ctx = fr.init()
    (x, y), _ = load_split(7)
    g = torch.Generator().manual_seed(rank)
    idx = torch.randperm(len(x), generator=g)
    x, y = torch.from_numpy(x)[idx], torch.from_numpy(y)[idx]
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, len(x) - args.batch, args.batch)]
    timings: dict[str, list[float]] = {"bare": [], "ferry": []}
    setup: list[float] = []
    closing: list[float] = []
    for round_ in range(args.rounds + 1):  # round 0 warms up both paths and is not counted
        order = ["bare", "ferry"] if round_ % 2 == 0 else ["ferry", "bare"]
        for mode in order:
            torch.manual_seed(0)
            model = DigitsCNN()
            opt = torch.optim.Adam(model.parameters(), lr=0.003)
            ddp = ctx.wrap(model)
            tracker = checkpointer = None
            if mode == "ferry" and not args.control:
                t_setup = time.perf_counter()
                tracker = fr.Tracker(is_primary=ctx.is_primary, submission_id=uuid.uuid4().hex, system_metrics=True)
                tracker.start()
                tracker.wait_ready()
                # The sidecar's start-up work (the run's first tags and params, the first system
                # sample) takes about a second of its CPU: let it finish, and count it as start.
                time.sleep(SETTLE_S)
                setup.append(time.perf_counter() - t_setup)
                checkpointer = fr.Checkpointer(f"{workdir}/ckpt-{round_}", every_steps=args.every, keep=3, is_primary=ctx.is_primary)
            dist.barrier()
            start = time.perf_counter()
            _loop(model, ddp, opt, batches, args.steps, tracker, checkpointer)
            dist.barrier()
            if round_ > 0:
                timings[mode].append(time.perf_counter() - start)
            if tracker is not None:
                t_close = time.perf_counter()
                tracker.close()
                closing.append(time.perf_counter() - t_close)
    if ctx.is_primary:
        out.put((timings, setup or [0.0], closing or [0.0]))
    fr.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=int, default=100, help="checkpoint every N steps")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--control", action="store_true",
                        help="time the bare loop against itself: the spread this machine gives with nothing to find")
    args = parser.parse_args()
    from ferry.local import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as workdir:
        mp.spawn(_worker, args=(args.world, free_port(), args, workdir, queue), nprocs=args.world, join=True)
        timings, setup, closing = queue.get()
    bare, ferry = statistics.median(timings["bare"]), statistics.median(timings["ferry"])
    # Each round runs both back to back, so its ratio is free of the machine's drift between rounds.
    ratios = sorted(f / b for f, b in zip(timings["ferry"], timings["bare"]))
    if args.control:
        print("CONTROL RUN: the 'Ferry runtime' row below is the bare loop again")
    print(f"runtime overhead: {args.world} gloo processes, {args.steps} steps, DigitsCNN batch {args.batch}, "
          f"checkpoint every {args.every} steps, 3 metrics/step, {args.rounds} interleaved rounds (median)")
    print(f"  bare DDP loop      {bare:8.3f} s   {args.steps / bare:8.1f} steps/s   runs: {', '.join(f'{t:.3f}' for t in timings['bare'])}")
    print(f"  Ferry runtime      {ferry:8.3f} s   {args.steps / ferry:8.1f} steps/s   runs: {', '.join(f'{t:.3f}' for t in timings['ferry'])}")
    print(f"  ratio Ferry/bare   {statistics.median(ratios):8.3f}x  median of the rounds' ratios, range "
          f"{ratios[0]:.3f}-{ratios[-1]:.3f}x (target <= 1.05x)")
    print(f"  one-time start     {statistics.median(setup):8.3f} s (find-or-create the run, start the tracking sidecar; "
          f"includes {SETTLE_S:.0f} s for its start-up work)")
    print(f"  one-time end       {statistics.median(closing):8.3f} s (sidecar flushes the last points, run ended)")
    total = ferry + statistics.median(setup) + statistics.median(closing)
    print(f"  ratio incl. start+end {total / bare:5.3f}x for this {bare:.1f}-second loop (the constant part shrinks with longer jobs)")


if __name__ == "__main__":
    main()
