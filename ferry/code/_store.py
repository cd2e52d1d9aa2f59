"""Where code bundles are kept, one object per digest: S3 (boto3, any S3-compatible endpoint),
MLflow's artifact store through its proxy (``mlflow-artifacts:/...``, resolved against the
tracking server the caller uses), or a folder (``file:///...``).

A bundle's name is its digest (``sha256-<hex>.tar.gz``), so publishing is "upload unless
there": the same code is uploaded once, whoever submits it, and an object is never rewritten.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ferry import settings
from ferry.code._bundle import Bundle, bundle_name
from ferry.errors import ConfigError, FerryError, Unreachable

SCHEMES = ("s3", "mlflow-artifacts", "file")
DEFAULT_MLFLOW_STORE = "mlflow-artifacts:/ferry-code"


def code_store(explicit: str | None = None) -> str | None:
    """The store to publish to: ``explicit`` (``--code-store``), else ``FERRY_CODE_STORE``, else
    MLflow's artifact proxy when the tracking URI is a server; None when there is none."""
    store = explicit or settings.FERRY_CODE_STORE.get()
    if store:
        if problem := store_problem(store):
            source = "--code-store" if explicit else "FERRY_CODE_STORE"
            raise ConfigError(f"{source}={store!r}: {problem}")
        return store.rstrip("/")
    tracking = settings.MLFLOW_TRACKING_URI.get() or ""
    if tracking.startswith(("http://", "https://")):
        return DEFAULT_MLFLOW_STORE
    return None


def store_problem(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES:
        return "a code store is s3://bucket/prefix, mlflow-artifacts:/prefix or file:///path"
    if parsed.scheme == "s3" and not parsed.netloc:
        return "s3:// needs a bucket: s3://bucket/prefix"
    if parsed.scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")):
        return "file:// needs an absolute path: file:///path"
    return None


def bundle_uri(store: str, digest: str) -> str:
    return f"{store.rstrip('/')}/{bundle_name(digest)}"


def publish(bundle: Bundle, store: str) -> tuple[str, bool]:
    """``bundle`` in ``store``: its URI, and whether this call uploaded it (False: already there)."""
    uri = bundle_uri(store, bundle.digest)
    backend = _backend(store)
    with _errors(f"code store {store}"):
        if backend.exists(bundle.name):
            return uri, False
        backend.put(bundle.name, bundle.data)
    return uri, True


def download(uri: str) -> bytes:
    """The bytes of the bundle at ``uri`` (a FerryError naming it when it is not there)."""
    store, _, name = uri.rstrip("/").rpartition("/")
    if problem := store_problem(store):
        raise FerryError(f"code bundle {uri!r}: {problem}")
    with _errors(f"code bundle {uri}"):
        data = _backend(store).get(name)
    if data is None:
        raise FerryError(f"code bundle {uri} is not in its store; submit the job again to upload it")
    return data


# ---- backends: a folder or S3 is the runtime's Storage (ferry.runtime._storage); MLflow's proxy ------
class _MlflowArtifacts:
    """MLflow's artifact proxy: the tracking server stores the bundle wherever its artifacts go."""

    def __init__(self, uri: str):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        self.repo = get_artifact_repository(uri)

    def exists(self, name: str) -> bool:
        return any(Path(item.path).name == name for item in self.repo.list_artifacts())

    def put(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="ferry-code-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.repo.log_artifact(str(path))

    def get(self, name: str) -> bytes | None:
        if not self.exists(name):
            return None
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of ours instead
        with tempfile.TemporaryDirectory(prefix="ferry-code-") as tmp:
            return Path(self.repo.download_artifacts(name, tmp)).read_bytes()


def _backend(store: str) -> Any:
    """What holds ``store``'s objects: put, get, exists by name."""
    if urlparse(store).scheme == "mlflow-artifacts":
        if not (settings.MLFLOW_TRACKING_URI.get() or "").startswith(("http://", "https://")):
            raise ConfigError(f"{store} is kept by an MLflow server: set MLFLOW_TRACKING_URI to it (http(s)://...)")
        return _MlflowArtifacts(store)
    from ferry.runtime._storage import storage_for

    return storage_for(store)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """The store's failures in Ferry's terms: no answer or 5xx/429 → Unreachable (exit 10);
    a refusal (credentials, a missing bucket) → FerryError naming what was asked."""
    try:
        yield
    except FerryError:
        raise
    except Exception as exc:  # noqa: BLE001 - boto3, MLflow and requests each raise their own
        reason = " ".join(str(getattr(exc, "message", None) or exc).split())[:300] or type(exc).__name__
        if _transient(exc):
            raise Unreachable(f"{what}: {reason}; is it running and reachable from here?") from exc
        raise FerryError(f"{what}: {reason}") from exc


def _transient(exc: BaseException) -> bool:
    """Whether asking again may help: no answer at all, or an answer of 5xx or 429."""
    response = getattr(exc, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    if status is None and hasattr(exc, "get_http_status_code"):  # MlflowException
        status = exc.get_http_status_code()
        if getattr(exc, "error_code", None) in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
    if isinstance(status, int):
        return status >= 500 or status == 429
    module, name = type(exc).__module__, type(exc).__name__
    return (isinstance(exc, (OSError, ConnectionError)) or module.startswith(("requests", "urllib3"))
            or (module.startswith("botocore") and ("Endpoint" in name or "Connection" in name)))
