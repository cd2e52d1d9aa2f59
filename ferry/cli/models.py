"""``ferry models``, ``ferry promote`` and ``ferry rollback``: the registry from the terminal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._util import Output, _stderr, _stdout, emit, exit_codes, fail_cleanly, output_option, timestamp
from ferry.errors import ConfigError, PromotionRefused, RegistryError, Unreachable

models_app = typer.Typer(help="Registered models: versions, aliases, promotion history.", no_args_is_help=True)
registry_app = typer.Typer()

ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="Who is acting, for the history (default: $FERRY_ACTOR, git user.email, "
                                 "the pod's service account, $USER@host)."),
]


def _actor(explicit: str | None, gitops_dir: Path | None) -> str:
    """With a GitOps tree, its git identity (the author of the commit) names the actor."""
    from ferry.registry import resolve_actor

    return resolve_actor(explicit, cwd=gitops_dir if gitops_dir is not None and gitops_dir.is_dir() else None)


def registry_client(*, fail_fast: bool = True) -> Any:
    """An MlflowClient for $MLFLOW_TRACKING_URI (or the embedded store), checked reachable:
    an unreachable or failing server is one line naming it (exit 10: try again later), not
    minutes of retries; one that refuses the request (credentials) is a ConfigError.
    ``fail_fast``: the command's later requests, too, are not retried (the check alone is,
    otherwise: a server keeps MLflow's retries for the model it loads)."""
    from ferry import settings
    from ferry.local import embedded_tracking_uri
    from ferry.registry._failures import is_transient

    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    unset = [name for name in fast if name not in os.environ]
    os.environ.update({name: fast[name] for name in unset})
    uri = settings.MLFLOW_TRACKING_URI.get() or embedded_tracking_uri()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.search_registered_models(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow's client raises MlflowException, requests' and OS errors
        why = " ".join(str(getattr(exc, "message", None) or exc).split())[:200] or type(exc).__name__
        if is_transient(exc):
            raise Unreachable(f"tracking server {uri} is unreachable ({why}); start it or set MLFLOW_TRACKING_URI, "
                              "then try again") from exc
        raise ConfigError(f"tracking server {uri} refused the request ({why}); check MLFLOW_TRACKING_URI and "
                          "MLflow's credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)") from exc
    finally:
        if not fail_fast:
            for name in unset:
                os.environ.pop(name, None)
    return client


def load_policy(policy_file: Path | None, name: str) -> Any:
    from ferry.spec import Promotion, load_specs

    if policy_file is None:
        return Promotion(model=name)
    policies = [p.spec for p in load_specs([policy_file], kinds=(Promotion,)) if p.spec.model == name]
    if not policies:
        raise ConfigError(f"{policy_file} defines no Promotion(model={name!r})")
    return policies[0]


def _when(iso: str | None) -> str:
    """A :func:`timestamp` as the tables show it: ``2026-05-01 12:00:00`` (UTC)."""
    return iso.replace("T", " ").rstrip("Z") if iso else "-"


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# what -o json|yaml prints, as the help says it
MODELS_SCHEMA = "a list of {name, latest_version, aliases: {ALIAS: VERSION}, updated}"
VERSIONS_SCHEMA = ("an object {name, versions: a list of {version, aliases, run_id, metrics: {METRIC: VALUE}, "
                   "tags: {KEY: VALUE}, size_bytes, created}}")
HISTORY_SCHEMA = ("an object {name, entries: a list of {at, env, alias, action, from_version, to_version, actor, "
                  "forced, gates: a list of {gate, passed, detail}}}, oldest first")
ModelArgument = Annotated[str, typer.Argument(help="Registered model name.")]


@models_app.command("list", epilog=exit_codes(0, 2, 10, 130))
@fail_cleanly
def list_(output: Annotated[Output, output_option(MODELS_SCHEMA)] = Output.table) -> None:
    """Registered models with their latest version and aliases."""
    from rich.table import Table

    from ferry.registry import list_models

    docs = []
    for m in list_models(registry_client()):
        latest = max((int(v.version) for v in m.latest_versions or []), default=None)
        docs.append({"name": m.name, "latest_version": str(latest) if latest is not None else None,
                     "aliases": {alias: str(v) for alias, v in sorted((m.aliases or {}).items())},
                     "updated": timestamp(m.last_updated_timestamp / 1000 if m.last_updated_timestamp else None)})

    def table() -> None:
        rows = Table("model", "latest", "aliases", "updated")
        for doc in docs:
            aliases = ", ".join(f"{a}→v{v}" for a, v in doc["aliases"].items())
            rows.add_row(doc["name"], doc["latest_version"] or "-", aliases or "-", _when(doc["updated"]))
        _console().print(rows)

    emit(docs, output, table)


@models_app.command(epilog=exit_codes(0, 2, 10, 130))
@fail_cleanly
def show(name: ModelArgument, output: Annotated[Output, output_option(VERSIONS_SCHEMA)] = Output.table) -> None:
    """Every version: source run, key metrics, aliases, tags, size."""
    from rich.table import Table

    from ferry.registry import model_versions

    versions = [{"version": row["version"], "aliases": row["aliases"], "run_id": row["run_id"], "metrics": row["metrics"],
                 "tags": row["tags"], "size_bytes": row["size"],
                 "created": timestamp(row["created"] / 1000 if row["created"] else None)}
                for row in model_versions(registry_client(), name)]

    def table() -> None:
        rows = Table("version", "aliases", "run", "test_accuracy", "loss", "size", "tags", "created", title=name)
        for row in versions:
            m = row["metrics"]
            tags = ", ".join(f"{k}={v}" for k, v in sorted(row["tags"].items()) if not k.startswith("ferry.promoted"))
            size = f"{row['size_bytes'] / 1024:.0f} KiB" if row["size_bytes"] else "-"
            rows.add_row(row["version"], ", ".join(row["aliases"]) or "-", (row["run_id"] or "-")[:12],
                         f"{m['test_accuracy']:.4f}" if "test_accuracy" in m else "-",
                         f"{m['loss']:.4f}" if "loss" in m else "-", size, tags or "-", _when(row["created"]))
        _console().print(rows)

    emit({"name": name, "versions": versions}, output, table)


@models_app.command(epilog=exit_codes(0, 2, 10, 130))
@fail_cleanly
def history(name: ModelArgument,
            env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
            output: Annotated[Output, output_option(HISTORY_SCHEMA)] = Output.table) -> None:
    """Which version served where, when, moved by whom, with which gate results."""
    from rich.table import Table

    from ferry.registry import read_history

    client = registry_client()
    try:
        entries = read_history(client, name, env)
    except Exception as exc:  # noqa: BLE001 - MLflow's client raises MlflowException, requests' and OS errors
        from ferry.registry._failures import is_transient, registry_error

        if is_transient(exc):
            raise registry_error(exc, f"reading the history of {name}") from exc
        raise RegistryError(f"no registered model {name!r}: {str(exc).splitlines()[0][:200]}") from exc
    docs = [{"at": timestamp(e.at), "env": e.env, "alias": e.alias, "action": e.action, "from_version": e.from_version,
             "to_version": e.to_version, "actor": e.actor, "forced": e.forced,
             "gates": [{"gate": g.get("gate"), "passed": g.get("passed"), "detail": g.get("detail")} for g in e.gates]}
            for e in entries]

    def table() -> None:
        rows = Table("when (UTC)", "env", "action", "from", "to", "by", "gates", title=f"{name}: promotion history")
        for e in docs:
            gates = ", ".join(f"{g['gate']}:{'ok' if g['passed'] else 'FAIL'}" for g in e["gates"]) or "-"
            rows.add_row(_when(e["at"]), e["env"], e["action"] + (" (forced)" if e["forced"] else ""),
                         f"v{e['from_version']}" if e["from_version"] else "-", f"v{e['to_version']}", e["actor"], gates)
        _console().print(rows)

    emit({"name": name, "entries": docs}, output, table)


def print_verdict(result: Any) -> None:
    from rich.table import Table

    table = Table("gate", "result", "detail", title=f"{result.model} v{result.to_version} → {result.env} ({result.alias})")
    for g in result.gates:
        table.add_row(g.gate, "[green]pass[/]" if g.passed else "[red]FAIL[/]", g.detail)
    console = _console()
    if result.gates:
        console.print(table)
    if not result.changed:
        console.print(f"v{result.to_version} already holds {result.alias!r}: nothing to do")
    else:
        forced = " [yellow](forced)[/]" if result.forced else ""
        console.print(f"{result.alias!r}: v{result.from_version or '-'} → v{result.to_version}{forced}")


def gitops_update(client: Any, policy: Any, result: Any, root: Path, do_commit: bool) -> None:
    from ferry.gitops import commit, deployment_for, write_environment
    from ferry.registry import resolve_model

    version = result.to_version
    deployment = deployment_for(policy, result.model, version, result.env, canary=result.from_version is not None and result.action == 'promote')
    resolved = resolve_model(f"models:/{result.model}/{version}", client)
    changed = write_environment(root, result.env, result.model, deployment, resolved)
    console = _console()
    for path in changed:
        console.print(f"wrote {path}")
    if do_commit:
        gates = "; ".join(f"{g.gate} {'pass' if g.passed else 'FAIL'}: {g.detail}" for g in result.gates) or "no gates"
        message = (f"{result.model}: {result.env} → v{version} ({'forced ' if result.forced else ''}{result.action})\n\n"
                   f"{result.alias}: v{result.from_version or '-'} → v{version}\nstorageUri: {resolved.storage_uri}\ngates: {gates}\n")
        console.print("committed" if commit(root, changed, message) else "no change to commit")


@registry_app.command(epilog=exit_codes(0, 1, 2, 4, 10, 130))
@fail_cleanly
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Option("--version", help="The candidate version.")],
    env: Annotated[str, typer.Option("--env", help="Target environment (staging, production, ...).")],
    policy: Annotated[Path | None, typer.Option(help="Python file defining Promotion(model=NAME, ...); default gates otherwise.")] = None,
    gitops_dir: Annotated[Path | None, typer.Option("--gitops-dir", help="Write DIR/<env>/<model>/ manifests pinned to the version.")] = None,
    commit: Annotated[bool, typer.Option("--commit", help="git commit the GitOps change (no-op when unchanged).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Promote even if gates fail (recorded as forced).")] = False,
    actor: ActorOption = None,
) -> None:
    """Move an environment's alias to a version that passes the gates, record it, write GitOps."""
    from ferry.registry import promote as do_promote

    rules = load_policy(policy, name)
    client = registry_client()
    try:
        result = do_promote(client, rules, name, version, env, force=force, actor=_actor(actor, gitops_dir))
    except PromotionRefused as exc:
        from ferry.registry import PromotionResult

        print_verdict(PromotionResult(name, env, "", None, version, exc.gates, False, False, None))
        raise
    print_verdict(result)
    if gitops_dir is not None:
        gitops_update(client, rules, result, gitops_dir, commit)


@registry_app.command(epilog=exit_codes(0, 2, 4, 10, 130))
@fail_cleanly
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    env: Annotated[str, typer.Option("--env", help="Environment whose alias goes back.")],
    policy: Annotated[Path | None, typer.Option(help="Python file defining Promotion(model=NAME, ...).")] = None,
    gitops_dir: Annotated[Path | None, typer.Option("--gitops-dir", help="Rewrite DIR/<env>/<model>/ for the restored version.")] = None,
    commit: Annotated[bool, typer.Option("--commit", help="git commit the GitOps change.")] = False,
    actor: ActorOption = None,
) -> None:
    """Point an environment's alias back to the version that held it before."""
    from ferry.registry import rollback as do_rollback

    client = registry_client()
    result = do_rollback(client, name, env, actor=_actor(actor, gitops_dir))
    print_verdict(result)
    if gitops_dir is not None:
        gitops_update(client, load_policy(policy, name), result, gitops_dir, commit)


@registry_app.command(epilog=exit_codes(0, 1, 2, 10, 130))
@fail_cleanly
def optimize(
    model_uri: Annotated[str, typer.Argument(help="The source version: models:/NAME/VERSION or models:/NAME@ALIAS.")],
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic int8 quantization of Linear/LSTM/GRU layers.")] = None,
    prune: Annotated[float | None, typer.Option(help="Magnitude pruning: the fraction of weights to zero, 0 < AMOUNT < 1.")] = None,
    structured: Annotated[bool, typer.Option("--structured", help="Prune whole output channels (L2) instead of single weights.")] = False,
    finetune_data: Annotated[str | None, typer.Option("--finetune-data", help="module:function returning (inputs, labels) to fine-tune the pruned model on.")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Epochs of that fine-tune.")] = 2,
    distill: Annotated[Path | None, typer.Option(help="A student TrainingJob file (with a 'teacher' hyperparameter) to train on this model's soft targets.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a hyperparameter of the student job: key=value (repeatable).")] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX, check parity with ONNX Runtime, log with the ONNX flavor.")] = False,
    onnx_tolerance: Annotated[float, typer.Option("--onnx-tolerance", help="Largest output difference from the source an ONNX export may have.")] = 1e-4,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="module:function returning (inputs, labels); default: the job's held-out split recorded on the source run.")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for every model while measuring.")] = 1,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register each candidate as a new version.")] = True,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Also write report.md, report.png and report.json here.")] = None,
) -> None:
    """Make cheaper candidates of a registered model, measure them side by side with it, and register them."""
    from ferry.optimize import PruneOptions, rich_table
    from ferry.optimize import optimize as do_optimize

    err = _stderr()
    prune_options = PruneOptions(prune, structured, finetune_data, finetune_epochs) if prune is not None else None
    client = registry_client()
    result = do_optimize(model_uri, quantize=quantize, prune=prune_options, onnx=onnx, distill=distill,
                         distill_sets=set_ or (), eval_data=eval_data, onnx_tolerance=onnx_tolerance, threads=threads,
                         register=register, client=client, report_dir=report_dir, console=err,
                         say=lambda line: err.print(f"[dim]{line}[/]"))
    out = _stdout()
    if not out.is_terminal:
        out.width = 160  # a log or a pipe: keep the table's rows on one line each
    out.print(rich_table(result.rows(), result.title))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    for note in result.notes:
        out.print(f"note: {note}")
    for cand in result.candidates:
        if cand.version:
            out.print(f"registered {cand.model_name} v{cand.version} ({cand.label})")
    out.print(f"MLflow run {result.run_id}: report/report.md and report/report.png"
              + (f"; also in {result.report_dir}" if result.report_dir else ""))
