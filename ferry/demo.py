"""``make demo``: the main job end to end on the embedded default (no cluster, no server).

1. render jobs/digits/job.py into its PyTorchJob and validate it (CRDs + Pod Security);
2. sweep it here (jobs/digits/sweep.py): four short trials of that PyTorchJob with other
   learning rates and batch sizes, each 2 DDP processes (gloo), tracked in .ferry/ (SQLite +
   artifacts) as child runs of one parent run, checkpoints on the emulated PVC; the best
   trial's model registered as digits-classifier;
3. optimize the new version: int8 and ONNX candidates, measured side by side and registered;
4. promote the trained version through staging and production, with GitOps commits;
5. serve the production alias with ``ferry serve``, send held-out digits through the v2 API,
   print predicted vs true labels and the latency, stop the server cleanly.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)  # a log keeps tables whole
JOB_FILE = Path("jobs/digits/job.py")
SWEEP_FILE = Path("jobs/digits/sweep.py")


def main() -> int:
    from ferry.local import LocalStore
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
    version = sweep_and_register_best(store)
    if version is None:
        return 1
    from ferry.cli.models import registry_client

    client = registry_client()
    optimize_version(client, version)
    code = promote_through_environments(store, client, version)
    if code == 0:
        code = serve_and_predict(store, client, version)
    return code


def sweep_and_register_best(store) -> int | None:  # type: ignore[no-untyped-def]
    """2. a short sweep of the same PyTorchJob here; the best trial's model is registered."""
    from ferry._submission import new_submission_id
    from ferry.cli.sweep import TrialLines, _table, load_sweep
    from ferry.local import embedded_tracking_uri
    from ferry.sweep._local import SweepRunner, local_launcher
    from ferry.sweep._report import finish

    sweep = load_sweep(SWEEP_FILE)
    sweep = sweep.replace(name=f"{sweep.name}-{new_submission_id()}")  # each demo its own sweep
    uri = embedded_tracking_uri(store)
    console.rule(f"[bold]2. sweep[/] {SWEEP_FILE}: {sweep.trials} short trials of the same PyTorchJob on this machine "
                 f"(store: {store.home})")
    lines = TrialLines(console, sweep.objective.metric)
    runner = SweepRunner(sweep, store=store, tracking_uri=uri, launcher=local_launcher(store, uri, Path.cwd()),
                         on_change=lines.show)
    result = runner.run()
    finish(runner.client, sweep, result, register=True)
    console.print(_table(sweep, result))
    if result.registered is None:
        console.print("[bold red]no trial finished[/]; see the failed trials above")
        return None
    console.print(f"best: trial {result.best.number} → registered {result.registered}; compare the trials with "
                  f"`ferry ui` → experiment {sweep.experiment!r} → run sweep-{sweep.name} → select its child runs → Compare")
    return int(result.registered.rsplit("/", 1)[1])


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

    from ferry.cli.models import gitops_update, load_policy, print_verdict
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


def serve_and_predict(store, client, version: int) -> int:  # type: ignore[no-untyped-def]
    """5. ``ferry serve`` the production alias (or the new version, if it was not promoted) as a
    separate process, as a user would, and ask it about digits it never saw in training."""
    import json
    import os
    import signal
    import statistics
    import subprocess
    import time
    import urllib.request

    import numpy as np

    from ferry.local import embedded_tracking_uri, free_port
    from ferry.registry import alias_holder
    from jobs.digits.data import eval_data

    uri = "models:/digits-classifier@champion"
    if alias_holder(client, "digits-classifier", "champion") is None:
        uri = f"models:/digits-classifier/{version}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    console.rule(f"[bold]5. serve[/] ferry serve {uri} --port {port}")
    ferry = Path(sys.executable).with_name("ferry")
    log_path = store.home / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(ferry), "serve", uri, "--port", str(port), "--grpc-port", "0"], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "MLFLOW_TRACKING_URI": embedded_tracking_uri(store)})

    def call(path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                console.print(f"[red]ferry serve exited with {server.returncode}:[/]\n{log_path.read_text()[-3000:]}")
                return 1
            try:
                if call("/v2/health/ready").get("ready"):
                    break
            except OSError:
                pass
            if time.monotonic() - started > 120:
                console.print("[red]ferry serve did not become ready in 120 s[/]")
                return 1
            time.sleep(0.1)
        meta = call("/v2/models/digits-classifier")
        console.print(f"ready in {time.monotonic() - started:.1f} s: {meta['name']} v{meta.get('versions', ['?'])[0]} "
                      f"({meta['platform']}), input {meta['inputs'][0]['shape']} {meta['inputs'][0]['datatype']}")
        x, y = eval_data(7)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(x), size=12, replace=False)
        body = {"inputs": [{"name": meta["inputs"][0]["name"], "shape": [len(pick), 1, 8, 8], "datatype": "FP32",
                            "data": x[pick].ravel().tolist()}]}
        out = call("/v2/models/digits-classifier/infer", body)["outputs"][0]
        predicted = np.asarray(out["data"]).reshape(out["shape"]).argmax(axis=1)
        console.print("held-out digit   " + " ".join(f"{i:>3}" for i in pick))
        console.print("true label       " + " ".join(f"{t:>3}" for t in y[pick]))
        console.print("predicted        " + " ".join(f"{p:>3}" for p in predicted))
        console.print(f"{int((predicted == y[pick]).sum())}/{len(pick)} correct")
        latencies = []
        for i in range(200):  # one row per request, one after another: what a single client sees
            row = {"inputs": [{**body["inputs"][0], "shape": [1, 1, 8, 8], "data": x[i % len(x)].ravel().tolist()}]}
            t0 = time.perf_counter()
            call("/v2/models/digits-classifier/infer", row)
            latencies.append((time.perf_counter() - t0) * 1000)
        latencies.sort()
        console.print(f"latency over 200 one-row requests (HTTP, JSON, this machine): p50 {statistics.median(latencies):.2f} ms, "
                      f"p99 {latencies[197]:.2f} ms")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    console.print(f"server stopped cleanly (exit code {server.returncode})" if server.returncode == 0
                  else f"[red]server exit code {server.returncode}[/]")
    console.rule("[bold]next[/]")
    steps = [("ferry ui", "compare the sweep's trials in the MLflow UI (http://127.0.0.1:5000)"),
             (f"ferry sweep {SWEEP_FILE} --register best", "the sweep again, as a command (Ctrl-C, then again, continues)"),
             (f"ferry serve {uri} --port 8080", "serve it yourself (KServe v2 + v1)"),
             (f"ferry render {JOB_FILE} -o manifests/", "the PyTorchJob for kubectl apply"),
             (f"ferry run {JOB_FILE} --set lr=0.01", "another submission, from step 0")]
    width = max(len(command) for command, _ in steps)
    for command, what in steps:
        console.print(f"{command:<{width}}  # {what}")
    return 0 if server.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
