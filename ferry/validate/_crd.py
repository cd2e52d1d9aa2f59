"""Validate custom resources against the ``openAPIV3Schema`` of their real CRDs."""

from __future__ import annotations

import copy
import functools
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

from ferry import _k8s
from ferry.errors import ConfigError, ManifestIssue
from ferry.settings import PACKAGED_CRD_DIR

OWN_CRDS = "ferry_operator"  # the package whose data holds Ferry's own CRD (ModelPipeline)


def json_path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if str(part).isidentifier() else f"[{str(part)!r}]")
    return out


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields where the API server would (``kubectl apply`` validates
    strictly): every object with declared ``properties`` and no preserve-unknown-fields gets
    ``additionalProperties: false``. ``metadata`` is checked separately (it is ``type: object``
    in every CRD)."""
    if schema.get("type") == "object" and "properties" in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for sub in schema.get(key, {}).values():
            _strict(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            _strict(sub)
    return schema


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses the 2 MB CRDs ~5x faster


@functools.lru_cache(maxsize=32)
def _crd_file(path: Path) -> dict[tuple[str, str], Draft7Validator]:
    validators: dict[tuple[str, str], Draft7Validator] = {}
    for doc in yaml.load_all(path.read_text(), Loader=_Loader):
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
        for version in doc["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            validators[(f"{group}/{version['name']}", kind)] = Draft7Validator(schema)
    return validators


def crd_validator(crd_dir: Path, api_version: str, kind: str) -> Draft7Validator | None:
    """The validator for ``apiVersion``/``kind`` from the CRD YAMLs in ``crd_dir``.

    Only files whose text names the kind are parsed (the CRDs run to megabytes)."""
    if not crd_dir.is_dir():
        raise ConfigError(f"CRD directory {crd_dir} does not exist; pass --crd-dir or set FERRY_CRD_DIR")
    for path in sorted(crd_dir.glob("*.y*ml")):
        if f"kind: {kind}" in path.read_text() and (found := _crd_file(path).get((api_version, kind))):
            return found
    return None


@functools.cache
def own_crd_dir() -> Path | None:
    """The folder of Ferry's own CRDs (ModelPipeline, ferry.dev/v1alpha1): package data of the
    operator, found without importing it (its ``__init__`` imports kopf); None where the
    operator's package is not installed."""
    try:
        spec = importlib.util.find_spec(OWN_CRDS)
    except (ImportError, ValueError):  # pragma: no cover - a broken installation
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (folder := Path(location) / "crds").is_dir():
            return folder
    return None


def crd_dirs(extra: Path | None = None) -> list[Path]:
    """Where custom resources find their CRDs, first match wins: ``extra`` (the user's), then
    the schemas shipped with Ferry, then Ferry's own."""
    dirs = [Path(extra).resolve()] if extra is not None else []
    dirs += [PACKAGED_CRD_DIR.resolve(), *([own] if (own := own_crd_dir()) is not None else [])]
    return list(dict.fromkeys(dirs))


def find_validator(dirs: Sequence[Path], api_version: str, kind: str) -> Draft7Validator | None:
    """The validator for ``apiVersion``/``kind`` from the first of ``dirs`` that defines it."""
    for crd_dir in dirs:
        if (found := crd_validator(crd_dir, api_version, kind)) is not None:
            return found
    return None


def metadata_issues(doc: dict[str, Any], source: str) -> Iterator[ManifestIssue]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        yield ManifestIssue(source, "$.metadata", "is required and must be an object")
        return
    name = meta.get("name")
    if not isinstance(name, str) or (problem := _k8s.dns1123_problem(name, subdomain=True)):
        yield ManifestIssue(source, "$.metadata.name", f"name {name!r} is invalid" + (f": {problem}" if name else ""))
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            problem = _k8s.label_key_problem(key)
            if field == "labels" and not problem:
                problem = _k8s.label_value_problem(str(value))
            if problem or not isinstance(value, str):
                yield ManifestIssue(source, json_path(["metadata", field, key]), problem or "value must be a string")


def crd_issues(doc: dict[str, Any], validator: Draft7Validator, source: str) -> Iterator[ManifestIssue]:
    yield from metadata_issues(doc, source)
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        if error.validator == "additionalProperties" and error.validator_value is False:
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            yield ManifestIssue(source, json_path(error.absolute_path),
                                f"unknown field(s) {', '.join(map(repr, extra))}; not in the CRD schema")
        else:
            yield ManifestIssue(source, json_path(error.absolute_path), error.message)
