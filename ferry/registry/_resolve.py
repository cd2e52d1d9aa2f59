"""Pin a model reference to one immutable version (what manifests may carry)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from ferry._modeluri import PREFIX, alias_version
from ferry.errors import ConfigError
from ferry.render import ResolvedModel

SERVED_FORMATS = ("onnx", "pytorch")  # checked in this order: an ONNX export also carries python_function


def served_format(mlmodel: Path, where: str) -> str:
    """The format Ferry's model server loads the model of this MLmodel file as."""
    try:
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: its MLmodel cannot be read ({type(exc).__name__}: {exc}); is it an MLflow model?") from exc
    for name in SERVED_FORMATS:
        if name in flavors:
            return name
    raise ConfigError(f"{where}: flavor(s) {sorted(flavors) or 'none'} cannot be served; Ferry serves pytorch and onnx models")


def _model_format(storage_uri: str) -> str:
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="ferry-mlmodel-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{storage_uri.rstrip('/')}/MLmodel", dst_path=tmp)
        except Exception as exc:
            raise ConfigError(f"cannot read {storage_uri}/MLmodel ({type(exc).__name__}: {exc}); is it an MLflow model?") from exc
        return served_format(Path(local), storage_uri)


def resolve_model(uri: str, client: Any = None) -> ResolvedModel:
    """``models:/name@alias`` or ``models:/name/N`` → ``models:/name/N`` (an alias pinned to
    the version it names now); ``runs:/`` and storage URIs stay as they are. The format comes
    from the model's MLmodel, read where the registry keeps its files (``source``)."""
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient()
    name = version = None
    storage = uri
    if uri.startswith(PREFIX):
        try:
            name, version = alias_version(client, uri)
            if version is None:
                raise ConfigError(f"{uri} names no version; use models:/NAME/VERSION or models:/NAME@ALIAS")
            client.get_model_version(name, version)
            source = client.get_model_version_download_uri(name, version)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"cannot resolve {uri}: {getattr(exc, 'message', exc)}") from exc
        storage = f"{PREFIX}{name}/{version}"
    elif uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        try:
            source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
        except Exception as exc:
            raise ConfigError(f"cannot resolve {uri}: {getattr(exc, 'message', exc)}") from exc
    else:
        source = uri
    return ResolvedModel(storage_uri=storage, model_format=_model_format(source), name=name,
                         version=str(version) if version else None, source=source)
