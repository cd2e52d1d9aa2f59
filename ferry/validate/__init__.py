"""Check manifests before they reach a cluster: custom resources against the real CRD
schemas, built-in kinds with ``kubernetes-validate``, every pod against Pod Security
'restricted' (a Kubeflow Trainer TrainJob: the pod its runtimePatches describe, with the rules
its CRD's CEL and the Trainer's webhooks add). Errors carry the JSON path of the offending field.

A custom resource's CRD is looked up in a user's folder of CRDs first (``--crd-dir``,
``$FERRY_CRD_DIR``), then in the upstream schemas shipped with Ferry, then in Ferry's own
(ModelPipeline): a user's CRDs add kinds, and replace a shipped one of the same
group/version/kind."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ferry.errors import ConfigError, ManifestInvalid, ManifestIssue
from ferry.settings import FERRY_K8S_VERSION, find_crd_dir
from ferry.validate._crd import crd_dirs, crd_issues, find_validator, json_path
from ferry.validate._pss import restricted_issues
from ferry.validate._trainjob import trainjob_issues

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
    checked against the CRDs in ``crd_dir`` (default: :func:`find_crd_dir`), beside the shipped
    ones and Ferry's own; where two define the same group/version/kind, ``crd_dir``'s wins."""
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
        return [ManifestIssue(source, "$", "not a Kubernetes object: apiVersion and kind are required")]
    api_version, kind = doc["apiVersion"], doc["kind"]
    issues: list[ManifestIssue] = []
    group = api_version.rpartition("/")[0]
    if "." in group and not group.endswith("k8s.io"):  # a custom resource
        dirs = crd_dirs(Path(crd_dir or find_crd_dir()))
        validator = find_validator(dirs, api_version, kind)
        if validator is None:
            issues.append(ManifestIssue(source, "$", f"no CRD for {api_version} {kind} in {', '.join(map(str, dirs))}; "
                                                     "pass --crd-dir with a folder that holds its CRD"))
        else:
            issues.extend(crd_issues(doc, validator, source))
            issues.extend(trainjob_issues(doc, source))  # its CEL and admission rules
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


def load_manifest_file(path: Path | str) -> list[tuple[str, Any]]:
    """``(source, doc)`` for every YAML document in ``path``: a file, a folder (every ``*.yaml``
    and ``*.yml`` below it, sorted, hidden ones left out) or ``-`` (stdin). Empty documents are
    skipped."""
    path = Path(path)
    if str(path) == "-":
        return _documents("<stdin>", sys.stdin.read())
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml") and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise ConfigError(f"{path}: no *.yaml or *.yml files in this folder")
        return [item for file in files for item in load_manifest_file(file)]
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file or folder") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    return _documents(str(path), text)


def _documents(source: str, text: str) -> list[tuple[str, Any]]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    return [(f"{source}#{i}" if len(docs) > 1 else source, d) for i, d in enumerate(docs)]
