"""The fixed cost of ``ferry run``: a one-epoch digits job (2 gloo replicas, tracking to a fresh
embedded SQLite store or to a server, checkpoints, the model logged and registered), timed end to end for two
versions of Ferry, run after one another in rounds so that both see the same machine. Prints
the medians and the ratio candidate/baseline.

    python benchmarks/run_overhead.py [--baseline REV] [--candidate REV] [--rounds 5] [--epochs 1]
                                      [--tracking-uri http://127.0.0.1:5000]

Each version is exported (``git archive``; the candidate defaults to the working tree as it is)
into a folder of its own and run from there, as ``ferry run`` is run by the tests: the console
script of this environment with the version's folder first on PYTHONPATH. Besides the total,
two phases are shown, from the timestamps of ``ferry run``'s output lines: the start (until
rank 0's first progress line: the replicas' imports, process group, MLflow run, sidecar) and
the end (from MLflow's "Created version" line, the model registered, until ``ferry run`` exits:
the last flush, the run ended, every process gone, the report).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FERRY = str(Path(sys.executable).with_name("ferry"))
PARTS = ("ferry", "jobs")  # what a job run from the exported folder imports


def export(rev: str | None, dest: Path) -> Path:
    """Ferry and the example jobs as of ``rev`` (None: the working tree, uncommitted changes too)."""
    dest.mkdir(parents=True)
    if rev is None:
        for part in PARTS:
            shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        return dest
    archive = subprocess.run(["git", "archive", "--format=tar", rev, *PARTS], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_once(tree: Path, epochs: int, home: Path, tracking_uri: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env |= {"FERRY_HOME": str(home), "PYTHONPATH": str(tree), **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    start = time.monotonic()
    proc = subprocess.Popen([FERRY, "run", "jobs/digits/job.py", "--set", f"epochs={epochs}"], cwd=tree, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    first_progress = registered = None
    tail: list[str] = []
    for line in proc.stdout:
        now = time.monotonic() - start
        if first_progress is None and "[ferry] progress " in line:
            first_progress = now
        if "Created version" in line:
            registered = now
        tail = [*tail[-30:], line]
    code = proc.wait()
    total = time.monotonic() - start
    if code != 0 or first_progress is None or registered is None:
        raise SystemExit(f"ferry run failed in {tree} (exit {code}):\n{''.join(tail)}")
    return {"total": total, "start": first_progress, "end": total - registered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against (default: HEAD)")
    parser.add_argument("--candidate", default=None, help="git revision to measure (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tracking-uri", default=None,
                        help="an MLflow server to track to (default: each run's own embedded SQLite store)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-run-overhead-") as tmp:
        trees = {"baseline": export(args.baseline, Path(tmp, "baseline")),
                 "candidate": export(args.candidate, Path(tmp, "candidate"))}
        times: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for round_ in range(args.rounds + 1):  # round 0 warms the page cache and is not counted
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                result = run_once(trees[name], args.epochs, Path(tmp, f"home-{name}-{round_}"), args.tracking_uri)
                if round_ > 0:
                    times[name].append(result)
                    print(f"  round {round_} {name:9s} total {result['total']:6.2f} s  start {result['start']:6.2f} s  "
                          f"end {result['end']:6.2f} s", flush=True)
    cand = args.candidate or "working tree"
    print(f"ferry run jobs/digits/job.py --set epochs={args.epochs}: {args.rounds} rounds, medians "
          f"(baseline {args.baseline}, candidate {cand}; tracking to {args.tracking_uri or 'a fresh embedded store'})")
    for phase in ("total", "start", "end"):
        base = statistics.median(t[phase] for t in times["baseline"])
        new = statistics.median(t[phase] for t in times["candidate"])
        print(f"  {phase:6s} baseline {base:6.2f} s   candidate {new:6.2f} s   ratio {new / base:5.2f}x   saved {base - new:5.2f} s")


if __name__ == "__main__":
    main()
