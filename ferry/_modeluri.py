"""``models:/`` registry references, parsed in one place (pure, no MLflow import)."""

from __future__ import annotations

from typing import Any

PREFIX = "models:/"


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` → (NAME, ALIAS, None); ``models:/NAME/VERSION`` → (NAME, None, VERSION);
    ``models:/NAME`` → (NAME, None, None)."""
    if not uri.startswith(PREFIX):
        raise ValueError(f"{uri!r} is not a {PREFIX} reference")
    ref = uri[len(PREFIX):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    name, _, version = ref.partition("/")
    return name, None, version or None


def alias_version(client: Any, uri: str) -> tuple[str, str | None]:
    """(NAME, VERSION) of a ``models:/`` reference, an alias looked up in the registry
    (``client`` is only used for that; VERSION is None when the reference names neither)."""
    name, alias, version = parse_models_uri(uri)
    if alias is not None:
        version = str(client.get_model_version_by_alias(name, alias).version)
    return name, version
