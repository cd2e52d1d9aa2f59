"""``make demo``: the main job end to end on the embedded default (no cluster, no server).

1. render jobs/digits/job.py into its PyTorchJob and validate it (CRDs + Pod Security);
2. run that PyTorchJob here: 2 DDP processes (gloo), tracked in .ferry/ (SQLite + artifacts),
   checkpoints on the emulated PVC, the model registered as digits-classifier;
3. optimize the new version: int8 and ONNX candidates, measured side by side and registered;
4. promote the trained version through staging and production, with GitOps commits.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)  # a log keeps tables whole
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
    validate_manifests([(r.relpath, r.doc) for r in rendered], crd_dir)
    replicas = {role: s["replicas"] for role, s in rendered[0].doc["spec"]["pytorchReplicaSpecs"].items()}
    console.print(f"PyTorchJob {job.name}: replicas {replicas}, valid against the CRD schemas in {crd_dir} and Pod Security 'restricted'")
    console.print(f"(write it for kubectl with: ferry render {JOB_FILE} -o manifests/)")

    store = LocalStore.default()
    console.rule(f"[bold]2. train[/] the same PyTorchJob on this machine (store: {store.home})")
    result = run_job(job, store=store, console=console, progress=console.is_terminal)
    code = report(job, result, console)
    if code != 0:
        return code
    from ferry.cli_models import registry_client

    client = registry_client()
    version = max(int(v.version) for v in client.search_model_versions("name='digits-classifier'"))
    optimize_version(client, version)
    return promote_through_environments(store, client, version)


def optimize_version(client, version: int) -> None:  # type: ignore[no-untyped-def]
    """3. int8 and ONNX candidates of the new version, measured on the job's held-out split."""
    from ferry.optimize import optimize, rich_table

    console.rule(f"[bold]3. optimize[/] digits-classifier v{version}: int8 and ONNX candidates")
    result = optimize(f"models:/digits-classifier/{version}", quantize="int8", onnx=True, client=client,
                      say=lambda line: console.print(f"[dim]{line}[/]"))
    console.print(rich_table(result.rows(), result.title))
    made = ", ".join(f"v{c.version} ({c.label})" for c in result.candidates)
    console.print(f"registered {made}; the comparison (markdown + PNG) is in MLflow run {result.run_id}, under report/")


def promote_through_environments(store, client, version: int) -> int:  # type: ignore[no-untyped-def]
    """4. promote the trained version through the job's gates, staging then production, writing
    and committing the GitOps tree under .ferry/gitops/."""
    import subprocess

    from ferry.cli_models import gitops_update, load_policy, print_verdict
    from ferry.errors import PromotionRefused
    from ferry.registry import promote, read_history

    policy = load_policy(JOB_FILE, "digits-classifier")
    gitops = store.home / "gitops"
    if not (gitops / ".git").exists():
        gitops.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", str(gitops)], check=True)
    for env in policy.environments:
        console.rule(f"[bold]4. promote[/] digits-classifier v{version} → {env}")
        try:
            result = promote(client, policy, "digits-classifier", str(version), env)
        except PromotionRefused as exc:
            console.print(f"[yellow]not promoted:[/] {exc}")
            break
        print_verdict(result)
        gitops_update(client, policy, result, gitops, do_commit=True)
    console.rule("[bold]promotion history[/]")
    for entry in read_history(client, "digits-classifier"):
        console.print(f"{entry.env:<11} {entry.action:<8} v{entry.from_version or '-'} → v{entry.to_version}  by {entry.actor}")
    console.print(f"GitOps tree: {gitops} (git log there shows each promotion); `ferry models show digits-classifier` lists versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
