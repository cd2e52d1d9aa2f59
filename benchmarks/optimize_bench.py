"""fp32 vs int8 vs ONNX Runtime, side by side in one run, through `ferry optimize` itself.

    python benchmarks/optimize_bench.py [--width 4096] [--epochs 3] [--threads 1,2] [--budget 1.5]

Two models, trained here on scikit-learn's digits: a Linear-heavy MLP (64 -> W -> W -> W -> 10)
and the digits CNN. Each is logged and registered the way Ferry's runtime does it (pt2), then
`ferry.optimize.optimize(quantize="int8", onnx=True)` makes, measures and registers the
candidates in a throwaway embedded store. Every model is timed as `ferry serve` loads it; the
plain eager nn.Module (the object in memory before logging) is timed the same way, as the
baseline every ratio is taken against. All variants are measured in one process, one after
the other, at each thread count.

Targets (CPU): on the Linear-heavy model, int8 >= 4x faster than eager fp32 at batch 32, <= 1
point accuracy drop, >= 3.5x smaller; ONNX Runtime >= 1.3x eager.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferry._timing import call_latencies, percentile  # noqa: E402
from ferry.optimize._measure import batch_of  # noqa: E402
from jobs.digits.data import load_split  # noqa: E402
from jobs.digits.model import DigitsCNN  # noqa: E402


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> nn.Module:
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def eager_latency(model: nn.Module, sample: np.ndarray, budget: float) -> dict[int, float]:
    """p50 ms per call of the plain module, called like the server calls a model."""
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    out = {}
    for batch in (1, 32):
        out[batch] = percentile(call_latencies(predict, batch_of(sample, batch), budget_s=budget), 50) * 1000
    return out


def eager_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def fp32_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}" if (os.cpu_count() or 1) > 1 else "1")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timed calls per model and batch size")
    args = parser.parse_args()

    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    from ferry.optimize import optimize

    (x_train, y_train), (x_test, y_test) = load_split(7)
    flat = lambda a: np.ascontiguousarray(a.reshape(len(a), 64))  # noqa: E731
    w = args.width
    models = {
        f"mlp-{w}": (nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                                   nn.Linear(w, 10)), flat(x_train), flat(x_test), 1e-4),
        "digits-cnn": (DigitsCNN(), x_train, x_test, 3e-3),
    }
    threads = [int(t) for t in args.threads.split(",")]
    print(f"optimize benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, threads {threads}, "
          f"{args.budget:g} s of timed calls per model and batch size")
    missed = []
    with tempfile.TemporaryDirectory(prefix="ferry-optbench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri, uri)
        for name, (model, xtr, xte, lr) in models.items():
            train(model, xtr, y_train, args.epochs, lr)
            eval_ref = f"bench_eval_{name.replace('-', '_')}"
            globals()[eval_ref] = lambda xte=xte: (xte, y_test)  # the held-out split, as module:function
            exp = client.create_experiment(name, artifact_location=Path(tmp, name).as_uri())
            with mlflow.start_run(experiment_id=exp, tags={"ferry.eval_data": f"__main__:{eval_ref}"}):
                mlflow.pytorch.log_model(model, name="model", input_example=xte[:8], registered_model_name=name,
                                         serialization_format="pt2", pip_requirements=["torch"])
            acc = eager_accuracy(model, xte, y_test)
            print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters, fp32 weights "
                  f"{fp32_bytes(model) / 1e6:.2f} MB, eager test accuracy {acc:.4f}")
            print(f"  {'threads':>7} {'variant':<18} {'p50 b1 ms':>10} {'p50 b32 ms':>11} {'x eager b1':>10} "
                  f"{'x eager b32':>11} {'smaller':>8} {'acc delta':>10}")
            for n in threads:
                torch.set_num_threads(n)
                eager = eager_latency(model, xte[:32], args.budget)
                result = optimize(f"models:/{name}/1", quantize="int8", onnx=True, client=client, threads=n,
                                  register=False)
                torch.set_num_threads(n)
                rows = {"eager fp32": None, "served fp32 (pt2)": result.source_measurement,
                        **{f"served {c.label}": c.measurement for c in result.candidates}}
                base_size = result.source_measurement.size_bytes
                for label, m in rows.items():
                    b1, b32 = (eager[1], eager[32]) if m is None else (m.p50(1), m.p50(32))
                    smaller = 1.0 if m is None else base_size / m.size_bytes
                    delta = 0.0 if m is None else (m.value - acc) * 100
                    print(f"  {n:>7} {label:<18} {b1:>10.3f} {b32:>11.3f} {eager[1] / b1:>9.2f}x {eager[32] / b32:>10.2f}x "
                          f"{smaller:>7.2f}x {delta:>+8.2f}pt")
                    if name.startswith("mlp") and m is not None:
                        speed = eager[32] / b32
                        if label == "served int8":
                            if speed < 4:
                                missed.append(f"{name} int8 {speed:.2f}x at batch 32 with {n} thread(s) (target >= 4x)")
                            if delta < -1:
                                missed.append(f"{name} int8 accuracy {delta:+.2f} points (target >= -1)")
                            if smaller < 3.5:
                                missed.append(f"{name} int8 {smaller:.2f}x smaller (target >= 3.5x)")
                        if label == "served onnx" and speed < 1.3:
                            missed.append(f"{name} ONNX Runtime {speed:.2f}x eager at batch 32 with {n} thread(s) (target >= 1.3x)")
    print("\ntargets: " + ("all met" if not missed else "MISSED:\n  " + "\n  ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
