"""``ferry fetch URI DEST``: a registered model into a folder, as KServe's storage initializer.

KServe runs the container of the ClusterStorageContainer whose URI formats match an
InferenceService's ``storageUri`` as the predictor pod's init container, with the arguments
``URI DEST`` (``/mnt/models``, the volume the model server reads). Ferry's fetches
``models:/``, ``runs:/`` and ``mlflow-artifacts:/`` through MLflow's client, which reads the
tracking URI and credentials from the environment (``MLFLOW_TRACKING_URI``,
``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``TOKEN``; ``AWS_*`` where the server does not proxy
artifacts).

Nothing half-written reaches DEST: the files land in a hidden folder inside DEST (the same
file system, so the moves are renames), are checked (an MLmodel whose flavour Ferry serves), and
only then move up, ``MLmodel`` last (:func:`verify_model` says what "checked" means). A failed or interrupted fetch (SIGTERM included) removes
its folder; one killed outright leaves only that hidden folder, which the next attempt removes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ferry._modeluri import PREFIX, parse_models_uri
from ferry.errors import ConfigError, FerryError, RegistryError
from ferry.registry._failures import mlflow_errors
from ferry.registry._resolve import served_format
from ferry.render import STORAGE_URI_PREFIXES

log = logging.getLogger(__name__)

STAGING_PREFIX = ".ferry-fetch-"


@dataclass(frozen=True)
class Fetched:
    """One model put into its folder."""

    uri: str
    dest: Path
    model_format: str
    files: int
    size: int
    seconds: float
    already_there: bool = False

    def line(self) -> str:
        if self.already_there:
            return f"{self.uri} is already in {self.dest} ({self.model_format})"
        return (f"fetched {self.uri} into {self.dest}: {self.model_format}, {self.files} files, "
                f"{self.size / 1e6:.1f} MB in {self.seconds:.1f} s")


def check_uri(uri: str) -> None:
    """Refuse what ``ferry fetch`` cannot fetch, naming what it can."""
    if not uri.startswith(STORAGE_URI_PREFIXES):
        raise ConfigError(f"{uri!r}: ferry fetch takes models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH "
                          "or mlflow-artifacts:/PATH (other URIs are KServe's default storage initializer's)")
    if uri.startswith(PREFIX):
        name, alias, version = parse_models_uri(uri)
        if not name or (alias is None and version is None):
            raise ConfigError(f"{uri!r} names no version; use models:/NAME/VERSION (or models:/NAME@ALIAS)")


@contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM (the kubelet stopping the pod) unwinds like Ctrl-C, so the staging folder goes."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _download(uri: str, into: Path, attempts: int, backoff_s: float) -> Path:
    import mlflow.artifacts

    for attempt in range(1, attempts + 1):
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir()
        try:
            with mlflow_errors(f"cannot fetch {uri}"):
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
        except FerryError as exc:
            if not getattr(exc, "transient", False):
                raise
            if attempt == attempts:
                reason = str(exc).split("; MLflow may be down")[0]
                raise RegistryError(f"{reason} (tried {attempts} times): is MLflow at {os.environ['MLFLOW_TRACKING_URI']} "
                                    "running and reachable from here?", transient=True) from exc
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("attempt %d of %d: %s; again in %.0f s", attempt, attempts, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def verify_model(root: Path, uri: str) -> str:
    """The format Ferry serves the model in ``root`` as, once it is whole: an MLmodel with a
    flavour Ferry serves, that flavour's files there, and at least the bytes MLflow counted when
    it saved the model (``model_size_bytes``, taken before it wrote MLmodel and the environment
    files). A store that lost a file lists the folder without it, and MLflow's download then
    succeeds with less: these checks are what catch it."""
    import yaml

    if not root.is_dir() or not (root / "MLmodel").is_file():
        raise ConfigError(f"{uri} is not an MLflow model: it has no MLmodel file")
    model_format = served_format(root / "MLmodel", uri)
    mlmodel = yaml.safe_load((root / "MLmodel").read_text()) or {}
    flavor = mlmodel["flavors"][model_format]
    data = root / str(flavor.get("model_data", "data") if model_format == "pytorch" else flavor.get("data", ""))
    if not (data.is_file() or (data.is_dir() and any(p.is_file() for p in data.rglob("*")))) or data == root:
        raise ConfigError(f"{uri} is incomplete: its {model_format} files ({data.relative_to(root)}) did not arrive; "
                          "the artifact store may have lost them")
    expected = mlmodel.get("model_size_bytes")
    arrived = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "MLmodel")
    if isinstance(expected, int) and arrived < expected:
        raise ConfigError(f"{uri} is incomplete: {arrived} bytes arrived of the {expected} it had when saved; "
                          "the artifact store may have lost files")
    return model_format


def _publish(root: Path, dest: Path) -> tuple[int, int]:
    """Move the checked model's entries from ``root`` into ``dest``, MLmodel last."""
    files = [p for p in root.rglob("*") if p.is_file()]
    entries = sorted(root.iterdir(), key=lambda p: p.name == "MLmodel")
    for entry in entries:
        os.replace(entry, dest / entry.name)
    return len(files), sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


def fetch_model(uri: str, dest: Path, *, attempts: int = 5, backoff_s: float = 1.0) -> Fetched:
    """Put the model ``uri`` names into ``dest`` (created if missing; otherwise it must hold
    nothing but this model from an earlier run). Transient failures (the server unreachable,
    5xx) are tried ``attempts`` times with doubling back-off; anything else fails at once."""
    check_uri(uri)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("MLFLOW_TRACKING_URI is not set: the storage container reads it from the tracking ConfigMap "
                          "(ferry-mlflow, key tracking-uri) of the InferenceService's namespace")
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    present = sorted(p.name for p in dest.iterdir())
    if present:
        if "MLmodel" in present:  # the pod restarted after a fetch that finished: MLmodel moves last
            return Fetched(uri, dest, verify_model(dest, uri), len(present), 0, 0.0, already_there=True)
        raise ConfigError(f"{dest} already holds {', '.join(present[:5])}: fetch into an empty folder")
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest))
    try:
        with _terminated_as_interrupt():
            root = _download(uri, staging / "download", attempts, backoff_s)
            model_format = verify_model(root, uri)
            files, size = _publish(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Fetched(uri, dest, model_format, files, size, time.monotonic() - started)
