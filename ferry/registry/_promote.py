"""Promotion through gates, rollback, and what `ferry models` shows."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ferry.errors import PromotionRefused, RegistryError
from ferry.registry._actor import resolve_actor
from ferry.registry._failures import is_missing, is_transient, registry_error
from ferry.registry._history import (
    LOCK_PREFIX,
    EnvLock,
    GateResult,
    HistoryEntry,
    append_history,
    read_history,
)
from ferry.spec import Promotion, alias_for


@dataclass
class PromotionResult:
    model: str
    env: str
    alias: str
    from_version: str | None
    to_version: str
    gates: list[GateResult]
    forced: bool
    changed: bool
    entry: HistoryEntry | None
    action: str = "promote"


def _version(client: Any, name: str, version: str) -> Any:
    try:
        client.get_registered_model(name)
    except Exception as exc:
        if is_transient(exc):
            raise registry_error(exc, f"reading registered model {name!r}") from exc
        raise RegistryError(f"no registered model {name!r} ({_reason(exc)}); see `ferry models list`") from exc
    try:
        return client.get_model_version(name, str(version))
    except Exception as exc:
        if is_transient(exc):
            raise registry_error(exc, f"reading version {version} of {name}") from exc
        raise RegistryError(f"{name} has no version {version} ({_reason(exc)}); see `ferry models show {name}`") from exc


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "message", exc)).splitlines()[0][:200]


def alias_holder(client: Any, name: str, alias: str) -> str | None:
    """The version holding ``alias``, or None when none does (or the model does not exist). Any
    other failure (MLflow unreachable, a 5xx) raises: a gate must never read it as "no holder"."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception as exc:  # noqa: BLE001 - MlflowException, or the HTTP client's own errors
        if is_missing(exc):
            return None
        raise registry_error(exc, f"reading which version of {name} holds {alias!r}") from exc


def _metric(client: Any, mv: Any, metric: str) -> float | None:
    if not mv.run_id:
        return None
    return client.get_run(mv.run_id).data.metrics.get(metric)


def _latency_ms(client: Any, name: str, version: str) -> float:
    import numpy as np

    from ferry._timing import call_latencies, percentile
    from ferry.serve import load_model

    model = load_model(f"models:/{name}/{version}")
    x = np.zeros((1, *[d if d > 0 else 1 for d in model.input.shape[1:]]), dtype=model.input.dtype)
    return percentile(call_latencies(model.predict, x, budget_s=0.5, min_calls=200, max_calls=200, warmup=20), 50) * 1000


def evaluate_gates(client: Any, policy: Promotion, name: str, version: str, env: str) -> list[GateResult]:
    mv = _version(client, name, version)
    gates: list[GateResult] = []
    envs = list(policy.environments)
    position = envs.index(env)
    if position > 0:
        before = envs[position - 1]
        holder = alias_holder(client, name, alias_for(before))
        held = holder == str(version)
        gates.append(GateResult("order", held, f"version {version} holds {before}'s alias {alias_for(before)!r}" if held else
                                f"version {version} does not hold {before}'s alias {alias_for(before)!r} (holder: v{holder}); "
                                f"promote it to {before} first"))
    value = _metric(client, mv, policy.metric)
    if value is None:
        gates.append(GateResult("metric", False, f"the source run of version {version} has no metric {policy.metric!r}"))
        return gates
    better = (lambda a, b: a >= b) if policy.mode == "max" else (lambda a, b: a <= b)
    if policy.min_value is not None:
        word = ">=" if policy.mode == "max" else "<="
        gates.append(GateResult("threshold", better(value, policy.min_value),
                                f"{policy.metric} {value:.4g}, needs {word} {policy.min_value:.4g}"))
    if policy.must_beat is not None:
        alias = alias_for(env) if policy.must_beat == "current" else policy.must_beat
        holder = alias_holder(client, name, alias)
        if holder is None or holder == str(version):
            gates.append(GateResult("beat", True, f"no other version holds {alias!r}"))
        else:
            other = _metric(client, _version(client, name, holder), policy.metric)
            if other is None:
                gates.append(GateResult("beat", True, f"holder v{holder} of {alias!r} has no {policy.metric}; nothing to beat"))
            else:
                bar = other + policy.by if policy.mode == "max" else other - policy.by
                gates.append(GateResult("beat", better(value, bar),
                                        f"{policy.metric} {value:.4g} vs {alias!r} v{holder} {other:.4g}"
                                        + (f" (margin {policy.by:g})" if policy.by else "")))
    if policy.max_latency_ms is not None:
        latency = _latency_ms(client, name, version)
        gates.append(GateResult("latency", latency <= policy.max_latency_ms,
                                f"p50 {latency:.3f} ms at batch 1 (limit {policy.max_latency_ms:g} ms)"))
    return gates


def promote(client: Any, policy: Promotion, name: str, version: str, env: str, *, force: bool = False,
            actor: str | None = None) -> PromotionResult:
    """Evaluate the gates and, only if they pass (or ``force``), move the env's alias and
    append the promotion to the history, recorded as done by ``actor`` (default: see
    ``resolve_actor``). Holding the alias already is a no-op."""
    if env not in policy.environments:
        raise RegistryError(f"unknown environment {env!r}; the policy for {name} knows {', '.join(policy.environments)}")
    version = str(version)
    alias = alias_for(env)
    _version(client, name, version)
    actor = resolve_actor(actor)
    with EnvLock(client, name, env, actor):
        current = alias_holder(client, name, alias)
        if current == version:
            return PromotionResult(name, env, alias, current, version, [], False, False, None)
        gates = evaluate_gates(client, policy, name, version, env)
        failed = [g for g in gates if not g.passed]
        if failed and not force:
            raise PromotionRefused(
                f"version {version} of {name} was not promoted to {env}: "
                + "; ".join(f"{g.gate} gate failed: {g.detail}" for g in failed)
                + " (--force overrides, and is recorded)",
                gates=gates,
            )
        client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, f"ferry.promoted.{env}", str(time.time()))
        entry = append_history(client, name, HistoryEntry(env, alias, "promote", current, version, actor, time.time(),
                                                          forced=bool(failed), gates=[asdict(g) for g in gates]))
        return PromotionResult(name, env, alias, current, version, gates, bool(failed), True, entry)


def rollback(client: Any, name: str, env: str, *, actor: str | None = None) -> PromotionResult:
    """Point the env's alias back to the version that held it before the latest change."""
    alias = alias_for(env)
    actor = resolve_actor(actor)
    try:
        client.get_registered_model(name)
    except Exception as exc:
        raise RegistryError(f"no registered model {name!r} ({_reason(exc)})") from exc
    with EnvLock(client, name, env, actor):
        history = read_history(client, name, env)
        current = alias_holder(client, name, alias)
        previous = history[-1].from_version if history else None
        if previous is None:
            raise RegistryError(f"nothing to roll back to: {name} has no earlier version in {env} "
                                f"(history has {len(history)} entr{'y' if len(history) == 1 else 'ies'})")
        client.set_registered_model_alias(name, alias, previous)
        entry = append_history(client, name, HistoryEntry(env, alias, "rollback", current, previous, actor, time.time()))
        return PromotionResult(name, env, alias, current, previous, [], False, True, entry, action="rollback")


def list_models(client: Any) -> list[Any]:
    return [m for m in client.search_registered_models(max_results=1000) if not m.name.startswith(LOCK_PREFIX)]


def model_versions(client: Any, name: str) -> list[dict[str, Any]]:
    """Every version with its source run, key metrics, aliases, tags and size."""
    try:
        model = client.get_registered_model(name)
    except Exception as exc:
        raise RegistryError(f"no registered model {name!r} ({_reason(exc)}); see `ferry models list`") from exc
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        rows.append({"version": str(mv.version), "run_id": mv.run_id, "metrics": metrics,
                     "aliases": sorted(aliases.get(str(mv.version), [])), "tags": dict(mv.tags or {}),
                     "size": _size(client, mv), "created": mv.creation_timestamp})
    return rows


def _size(client: Any, mv: Any) -> int | None:
    """Bytes of the version's artifacts, when its store is a local folder."""
    from pathlib import Path
    from urllib.parse import urlparse

    try:
        uri = client.get_model_version_download_uri(mv.name, mv.version)
    except Exception:  # noqa: BLE001
        return None
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return None
    root = Path(parsed.path)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else None
