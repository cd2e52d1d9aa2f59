"""``make demo``: the main job end to end on the embedded default (no cluster, no server).

1. render jobs/digits/job.py into its PyTorchJob and validate it (CRDs + Pod Security);
2. run that PyTorchJob here: 2 DDP processes (gloo), tracked in .ferry/ (SQLite + artifacts),
   checkpoints on the emulated PVC, the model registered as digits-classifier.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

console = Console(highlight=False)
JOB_FILE = Path("jobs/digits/job.py")


def main() -> int:
    from ferry.local import LocalStore, run_job
    from ferry.local._report import report
    from ferry.render import render_spec
    from ferry.spec import load_specs
    from ferry.validate import find_crd_dir, validate_manifests

    console.rule(f"[bold]1. render[/] {JOB_FILE} → PyTorchJob")
    (loaded,) = load_specs([JOB_FILE])
    job = loaded.spec
    rendered = render_spec(job)
    crd_dir = find_crd_dir()
    validate_manifests([(r.relpath, r.doc) for r in rendered], crd_dir, require_crds=crd_dir is not None)
    replicas = {role: s["replicas"] for role, s in rendered[0].doc["spec"]["pytorchReplicaSpecs"].items()}
    console.print(f"PyTorchJob {job.name}: replicas {replicas}, valid against {crd_dir or 'Pod Security rules only'}")
    console.print(f"(write it for kubectl with: ferry render {JOB_FILE} -o manifests/)")

    store = LocalStore.default()
    console.rule(f"[bold]2. train[/] the same PyTorchJob on this machine (store: {store.home})")
    result = run_job(job, store=store, console=console, progress=console.is_terminal)
    return report(job, result, console)


if __name__ == "__main__":
    sys.exit(main())
