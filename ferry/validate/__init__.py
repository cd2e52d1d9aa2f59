"""Check manifests before they reach a cluster: custom resources against the real CRD
schemas, built-in kinds with ``kubernetes-validate``, every pod against Pod Security
'restricted'. Errors carry the JSON path of the offending field."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ferry.errors import ConfigError, ManifestInvalid, ManifestIssue
from ferry.settings import FERRY_K8S_VERSION, find_crd_dir
from ferry.validate._crd import crd_issues, crd_validator, json_path
from ferry.validate._pss import restricted_issues

__all__ = ["find_crd_dir", "load_manifest_file", "manifest_issues", "validate_manifests"]


def _builtin_issues(doc: dict[str, Any], source: str) -> list[ManifestIssue]:
    import kubernetes_validate

    version = FERRY_K8S_VERSION.get() or kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [ManifestIssue(source, "$", f"no schema for {doc.get('apiVersion')}/{doc.get('kind')}; "
                                           "if it is a custom resource, pass --crd-dir with its CRD")]
    except kubernetes_validate.ValidationError as exc:
        return [ManifestIssue(source, json_path(exc.absolute_path), exc.message)]
    return []


def manifest_issues(doc: Any, crd_dir: Path | None = None, source: str = "<manifest>") -> list[ManifestIssue]:
    """Every problem with one manifest document; empty when it is valid. Custom resources are
    checked against the CRDs in ``crd_dir`` (default: :func:`find_crd_dir`)."""
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
        return [ManifestIssue(source, "$", "not a Kubernetes object: apiVersion and kind are required")]
    api_version, kind = doc["apiVersion"], doc["kind"]
    issues: list[ManifestIssue] = []
    group = api_version.rpartition("/")[0]
    if "." in group and not group.endswith("k8s.io"):  # a custom resource
        crd_dir = Path(crd_dir or find_crd_dir()).resolve()
        validator = crd_validator(crd_dir, api_version, kind)
        if validator is None:
            issues.append(ManifestIssue(source, "$", f"no CRD for {api_version} {kind} in {crd_dir}"))
        else:
            issues.extend(crd_issues(doc, validator, source))
    else:
        issues.extend(_builtin_issues(doc, source))
    issues.extend(restricted_issues(doc, source))
    return issues


def validate_manifests(docs: Iterable[tuple[str, Any]], crd_dir: Path | None = None) -> None:
    """Raise :class:`ManifestInvalid` listing every problem in ``(source, doc)`` pairs."""
    crd_dir = crd_dir or find_crd_dir()
    issues = [
        issue
        for source, doc in docs
        for issue in manifest_issues(doc, crd_dir, source)
    ]
    if issues:
        raise ManifestInvalid(issues)


def load_manifest_file(path: Path) -> list[tuple[str, Any]]:
    """``(source, doc)`` for every YAML document in a file (empty documents skipped)."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such manifest file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return [(f"{path}#{i}" if len(docs) > 1 else str(path), d) for i, d in enumerate(docs)]
