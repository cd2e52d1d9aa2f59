"""Pin a model reference to one immutable version's storage URI (what manifests may carry)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from ferry._modeluri import PREFIX, alias_version
from ferry.errors import ConfigError
from ferry.render import ResolvedModel

_FORMATS = ("onnx", "pytorch")  # checked in this order: an ONNX export also carries python_function


def _model_format(storage_uri: str) -> str:
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="ferry-mlmodel-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{storage_uri.rstrip('/')}/MLmodel", dst_path=tmp)
        except Exception as exc:
            raise ConfigError(f"cannot read {storage_uri}/MLmodel ({type(exc).__name__}: {exc}); is it an MLflow model?") from exc
        flavors = (yaml.safe_load(Path(local).read_text()) or {}).get("flavors", {})
    for name in _FORMATS:
        if name in flavors:
            return name
    raise ConfigError(f"{storage_uri}: flavor(s) {sorted(flavors)} cannot be served; Ferry serves pytorch and onnx models")


def resolve_model(uri: str, client: Any = None) -> ResolvedModel:
    """``models:/name@alias`` or ``models:/name/N`` → that version's storage URI; ``runs:/`` →
    the run's artifact URI; a storage URI stays as it is. The format comes from its MLmodel."""
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient()
    name = version = None
    if uri.startswith(PREFIX):
        try:
            name, version = alias_version(client, uri)
            if version is None:
                raise ConfigError(f"{uri} names no version; use models:/NAME/VERSION or models:/NAME@ALIAS")
            client.get_model_version(name, version)
            storage = client.get_model_version_download_uri(name, version)
        except Exception as exc:
            raise ConfigError(f"cannot resolve {uri}: {getattr(exc, 'message', exc)}") from exc
    elif uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        try:
            storage = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
        except Exception as exc:
            raise ConfigError(f"cannot resolve {uri}: {getattr(exc, 'message', exc)}") from exc
    else:
        storage = uri
    return ResolvedModel(storage_uri=storage, model_format=_model_format(storage), name=name, version=str(version) if version else None)
