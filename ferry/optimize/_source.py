"""The version being optimized: where it is, what it is, and the data to judge it on."""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ferry._modeluri import PREFIX, alias_version
from ferry.errors import ConfigError

EVAL_DATA_TAG = "ferry.eval_data"


@dataclass
class Source:
    uri: str  # models:/name/N, pinned
    name: str
    version: str
    run_id: str | None
    experiment_id: str | None
    model_dir: Path  # the downloaded MLflow model
    params: dict[str, str]
    tags: dict[str, str]  # the source run's
    version_tags: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def load_source(uri: str, client: Any, dst: Path) -> Source:
    """Resolve ``models:/name/N`` or ``models:/name@alias`` to one version and download it."""
    if not uri.startswith(PREFIX):
        raise ConfigError(f"MODEL_URI {uri!r}: optimize works on a registered version; "
                          "use models:/NAME/VERSION or models:/NAME@ALIAS")
    try:
        name, version = alias_version(client, uri)
        if version is None:
            raise ConfigError(f"{uri} names no version; use models:/NAME/VERSION or models:/NAME@ALIAS")
        mv = client.get_model_version(name, version)
        source = client.get_model_version_download_uri(name, version)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"MODEL_URI {uri}: no such registered model version ({getattr(exc, 'message', exc)}); "
                          "`ferry models list` shows what is registered") from exc
    import mlflow.artifacts

    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                    tracking_uri=client.tracking_uri)
    except Exception as exc:
        raise ConfigError(f"cannot fetch {uri} from {source}: {exc}") from exc
    run = client.get_run(mv.run_id) if mv.run_id else None
    return Source(
        uri=f"{PREFIX}{name}/{version}", name=name, version=str(version), run_id=mv.run_id,
        experiment_id=run.info.experiment_id if run else None, model_dir=Path(local),
        params=dict(run.data.params) if run else {}, tags=dict(run.data.tags) if run else {},
        version_tags=dict(mv.tags or {}),
    )


def load_callable(ref: str, what: str) -> Callable[..., Any]:
    """Import ``package.module:function``; the working directory is importable, as with ``python -m``."""
    module_name, sep, func_name = ref.partition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(f"{what} {ref!r}: expected package.module:function, e.g. jobs.digits.data:eval_data")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {ref!r}: cannot import {module_name} ({exc}); run from the directory that holds it") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"{what} {ref!r}: {module_name} has no function {func_name!r}")
    return func


def _cast(raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        return raw.lower() in ("1", "true", "yes")
    return type(like)(raw) if like is not None else raw


def load_data(ref: str, what: str, params: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Call a ``module:function`` returning ``(inputs, labels)``. Arguments the function takes
    by name are filled from the source run's parameters (e.g. the ``seed`` that drew the split)."""
    func = load_callable(ref, what)
    kwargs = {}
    for pname, param in inspect.signature(func).parameters.items():
        if params and pname in params:
            try:
                kwargs[pname] = _cast(params[pname], param.default if param.default is not param.empty else None)
            except ValueError:
                kwargs[pname] = params[pname]
    try:
        data = func(**kwargs)
    except Exception as exc:
        raise ConfigError(f"{what} {ref!r} failed: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ConfigError(f"{what} {ref!r} must return (inputs, labels); got {type(data).__name__}")
    x, y = (np.asarray(_numpy(part)) for part in data)
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"{what} {ref!r}: inputs and labels must be non-empty and the same length "
                          f"(got {len(x)} and {len(y)})")
    return x, y


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value
