"""``ferry plan``: autoscaling settings measured, not guessed. One replica of Ferry's model
server is loaded step by step (a closed-loop sweep of concurrency 1, 2, 4, ...), the largest
load that keeps p99 within the SLO is checked at a fixed arrival rate (an open loop), and the
autoscaler's numbers follow from those measurements (``ferry.plan``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._util import _stderr, _stdout, exit_codes, fail_cleanly, refuse

plan_app = typer.Typer()


def _deployment(path: Path | None, name: str | None) -> Any:
    if path is None:
        if name is not None:
            raise refuse("--name", "--name picks a Deployment of --deployment FILE; give the file too")
        return None
    from ferry.spec import Deployment, load_specs

    found = [item.spec for item in load_specs([path], kinds=(Deployment,))]
    chosen = [d for d in found if name is None or d.name == name]
    if not chosen:
        raise refuse("--name", f"{path} defines no Deployment named {name!r} (it defines: "
                               f"{', '.join(d.name for d in found) or 'none'})")
    if len(chosen) > 1:
        raise refuse("--name", f"{path} defines {len(chosen)} Deployments ({', '.join(d.name for d in chosen)}); "
                               "pick one with --name")
    return chosen[0]


def _cores(cpu: str) -> float:
    """A Kubernetes CPU quantity in cores: ``500m`` is 0.5."""
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


@plan_app.command("plan", epilog=exit_codes(0, 1, 2, 10, 130))
@fail_cleanly
def plan_command(
    model_uri: Annotated[str, typer.Argument(help="The model: models:/NAME@ALIAS, models:/NAME/N, runs:/... or a path.")],
    slo_p99_ms: Annotated[float, typer.Option("--slo-p99-ms", help="The latency objective: p99 in milliseconds.")],
    peak_rps: Annotated[float, typer.Option("--peak-rps", help="The most requests per second the service must take.")],
    deployment: Annotated[Path | None, typer.Option(
        "--deployment", help="A Python file defining the Deployment: the server runs with its settings, and its "
                             "Autoscaling(...) is rewritten with the plan.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Which Deployment of --deployment FILE, when it defines several.")] = None,
    url: Annotated[str | None, typer.Option(
        "--url", help="Measure the server running at this base URL instead of starting one.")] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="With --url: the model's name in that server's API (default: NAME of models:/NAME...).")] = None,
    payload: Annotated[str | None, typer.Option(
        "--payload", help="What each request sends: JSON rows ([[...]]), a v2 request ({\"inputs\": [...]}), or @FILE "
                          "(default: one row of zeros shaped as the model's metadata says).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: the Deployment's: cuda with a GPU, else cpu).")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="float32, float16 or bfloat16 (default: the Deployment's).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Server processes of the replica (CPU serving).")] = 1,
    max_batch_size: Annotated[int | None, typer.Option(
        "--max-batch-size", min=1, help="The server's batch size (default: the Deployment's, else 32).")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(
        "--max-latency-ms", help="The server's queue delay in ms (default: the Deployment's, else 5).")] = None,
    cpu_request: Annotated[float | None, typer.Option(
        "--cpu-request", help="Cores one replica requests, the base of HPA's CPU % (default: the Deployment's "
                              "resources.cpu).")] = None,
    headroom: Annotated[float, typer.Option("--headroom", help="The share of X* kept free: R = X* x (1 - headroom).")] = 0.15,
    window: Annotated[float, typer.Option("--window", min=0.1, help="Seconds of one measurement window.")] = 2.0,
    warmup: Annotated[float, typer.Option("--warmup", min=0.0, help="Seconds of warm-up before each step.")] = 1.0,
    max_windows: Annotated[int, typer.Option("--max-windows", min=3, help="Windows a step may take to become stable.")] = 10,
    max_concurrency: Annotated[int, typer.Option("--max-clients", min=1, help="The sweep's last step: this many clients at once.")] = 256,
    duration: Annotated[float, typer.Option("--duration", min=0.5, help="Seconds of the open-loop check at the chosen rate.")] = 10.0,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder for plan.json and plan.png (default: a new one under $FERRY_HOME).")] = None,
    record: Annotated[bool, typer.Option(
        "--record/--no-record", help="Keep the plan as an MLflow run linked to the model version.")] = True,
) -> None:
    """Measure one replica of Ferry's model server against a p99 latency SLO and compute the
    autoscaling settings that carry the peak load.

    A closed-loop sweep (concurrency 1, 2, 4, ..., each step warmed up and measured until three
    windows agree within 10 %) stops once p99 exceeds the SLO or throughput stops growing (two
    steps in a row under 10 % more than the best before). C*
    is the largest concurrency within the SLO, X* its throughput, R = X* x (1 - headroom) one
    replica's capacity; an open loop at R confirms p99 holds there. From them: Knative's
    concurrency or rps target (its target utilization multiplies it), KEDA's queue-depth
    threshold, HPA's CPU %, maxReplicas = ceil(peak / R) + 1, and minReplicas 0 only when the
    measured cold start fits the SLO. With --deployment, the Deployment's Autoscaling(...) is
    rewritten in its file; without, the block to paste is printed. The curve goes to plan.json
    and plan.png, and (--record) to an MLflow run linked to the model version."""
    if slo_p99_ms <= 0:
        raise refuse("--slo-p99-ms", f"must be more than 0 ms (got {slo_p99_ms:g})")
    if peak_rps <= 0:
        raise refuse("--peak-rps", f"must be more than 0 requests/s (got {peak_rps:g})")
    if not 0 <= headroom < 1:
        raise refuse("--headroom", f"must be at least 0 and below 1 (got {headroom:g}); 0.15 keeps 15 % of X* free")
    if url is not None and (workers != 1 or device is not None or dtype is not None):
        raise refuse("--url", "a running server keeps its own settings; leave out --workers, --device and --dtype")
    if max_latency_ms is not None and max_latency_ms < 0:
        raise refuse("--max-latency-ms", f"must be at least 0 ms (got {max_latency_ms:g})")
    if cpu_request is not None and cpu_request <= 0:
        raise refuse("--cpu-request", f"must be more than 0 cores (got {cpu_request:g}); 0.5 for a request of 500m")
    spec = _deployment(deployment, name)
    from ferry.plan import measure, plan_from
    from ferry.plan._payload import payload_body
    from ferry.plan._types import Settings

    settings = Settings(
        device=device or ("cuda" if spec is not None and spec.resources.gpu else "cpu"),
        dtype=dtype or (spec.dtype if spec is not None else "float32"),
        max_batch_size=max_batch_size or (spec.max_batch_size if spec is not None else 32),
        max_latency_ms=max_latency_ms if max_latency_ms is not None else (spec.max_latency_ms if spec is not None
                                                                          else 5.0),
        workers=workers,
        cpu_request=cpu_request if cpu_request is not None else (_cores(spec.resources.cpu) if spec is not None
                                                                 else None))
    err = _stderr()
    measured = measure(model_uri, settings, slo_p99_ms=slo_p99_ms, url=url, model_name=model_name,
                       payload=lambda metadata: payload_body(payload, metadata), window_s=window, warmup_s=warmup,
                       max_windows=max_windows, max_concurrency=max_concurrency, open_loop_s=duration,
                       headroom=headroom, peak_rps=peak_rps, say=err.print)
    result = plan_from(measured, slo_p99_ms=slo_p99_ms, peak_rps=peak_rps, headroom=headroom, settings=settings)
    _report(result, measured, settings, model_uri, spec, deployment, out, record)


def _report(result: Any, measured: Any, settings: Any, model_uri: str, spec: Any, deployment: Path | None,
            out: Path | None, record: bool) -> None:
    from ferry.plan._formulas import autoscaling_for
    from ferry.plan._report import plot, table, to_json
    from ferry.plan._rewrite import autoscaling_block, rewrite_autoscaling

    console = _stdout()
    for part in table(measured.curve, result, measured.open_loop):
        console.print(part)
    for note in result.notes:
        console.print(f"  - {note}", highlight=False)
    folder = out or _default_folder(model_uri)
    folder.mkdir(parents=True, exist_ok=True)
    doc = to_json(measured.curve, measured.open_loop, result, settings, model_uri, measured.cold_start_s)
    (folder / "plan.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    try:
        picture = plot(measured.curve, result, folder / "plan.png")
    except ImportError:  # the serving image has no matplotlib: the plan stands without its picture
        picture = None
        _stderr().print("[yellow]warning:[/] plan.png not drawn: matplotlib is not installed "
                        "(pip install 'ferry[optimize]' adds it)")
    console.print(f"curve and plan: {folder / 'plan.json'}" + (f", {picture}" if picture is not None else ""))
    held = measured.open_loop is None or measured.open_loop.p99_ms <= result.slo_p99_ms
    if record:
        from ferry.cli.models import registry_client
        from ferry.plan._report import record as keep

        run_id = keep(registry_client(), model_uri, doc, picture, folder / "plan.json")
        console.print(f"recorded as MLflow run {run_id}")
    metric = spec.autoscaling.metric if spec is not None else "concurrency"
    mode = spec.mode if spec is not None else "serverless"
    values = autoscaling_for(result, metric, mode)
    if not held:
        ol = measured.open_loop
        _stderr().print(f"[bold red]error:[/] at a fixed {ol.rate_rps:.1f} requests/s (R) p99 was {ol.p99_ms:.1f} ms, "
                        f"above the SLO of {result.slo_p99_ms:g} ms: the closed-loop point does not hold under arrivals "
                        "that do not wait; raise --headroom and plan again. Nothing was rewritten.")
        raise typer.Exit(1)
    if deployment is None:
        console.print("Autoscaling for the Deployment (paste it as its autoscaling=):")
        console.print(autoscaling_block(values), highlight=False, soft_wrap=True)
        return
    from ferry.errors import ConfigError

    source = deployment.read_text()
    try:
        rewritten = rewrite_autoscaling(source, spec.name, values, path=str(deployment))
    except ConfigError as exc:
        _stderr().print(f"[yellow]warning:[/] {exc}")
        console.print(autoscaling_block(values), highlight=False, soft_wrap=True)
        return
    if rewritten == source:
        console.print(f"{deployment}: its autoscaling already says this")
        return
    import difflib

    deployment.write_text(rewritten)
    console.print(f"rewrote the autoscaling of Deployment {spec.name} in {deployment}:")
    for line in difflib.unified_diff(source.splitlines(), rewritten.splitlines(), str(deployment), str(deployment),
                                     lineterm="", n=0):
        console.print(line, highlight=False, soft_wrap=True)


def _default_folder(model_uri: str) -> Path:
    import re
    import time

    from ferry import settings

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_uri.split(":", 1)[-1]).strip("-") or "model"
    return Path(settings.FERRY_HOME.get() or ".ferry") / "plans" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
