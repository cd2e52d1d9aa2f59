"""The MLflow model registry side of Ferry: resolving references to pinned versions."""

from ferry.registry._resolve import resolve_model

__all__ = ["resolve_model"]
