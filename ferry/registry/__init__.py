"""The MLflow model registry side of Ferry: pinning references to versions, promotion
through gates with an append-only history, rollback."""

from ferry.registry._actor import resolve_actor
from ferry.registry._fetch import Fetched, fetch_model
from ferry.registry._history import GateResult, HistoryEntry, read_history
from ferry.registry._promote import (
    PromotionResult,
    alias_holder,
    evaluate_gates,
    list_models,
    model_versions,
    promote,
    rollback,
)
from ferry.registry._resolve import resolve_model

__all__ = [
    "Fetched",
    "GateResult",
    "HistoryEntry",
    "PromotionResult",
    "alias_holder",
    "evaluate_gates",
    "fetch_model",
    "list_models",
    "model_versions",
    "promote",
    "read_history",
    "resolve_actor",
    "resolve_model",
    "rollback",
]
