"""The embedded default: with no MLFLOW_TRACKING_URI, jobs track into ``.ferry/`` (a SQLite
database and an artifacts folder) and ``ferry ui`` opens the MLflow UI on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferry import settings


@dataclass(frozen=True)
class LocalStore:
    home: Path

    @classmethod
    def default(cls) -> LocalStore:
        return cls(Path(settings.FERRY_HOME.get() or ".ferry").resolve())

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.home / "artifacts").as_uri()

    @property
    def volumes(self) -> Path:
        return self.home / "volumes"

    @property
    def code_store(self) -> str:
        """Where ``ferry run --code`` keeps code bundles (a file:// code store)."""
        return (self.home / "code").as_uri()

    def run_dir(self, job: str, submission: str) -> Path:
        return self.home / "runs" / job / submission

    def ensure(self) -> None:
        for folder in (self.home, self.home / "artifacts", self.volumes):
            folder.mkdir(parents=True, exist_ok=True)


def tracking_env(store: LocalStore) -> dict[str, str]:
    """MLFLOW_TRACKING_URI (and where new experiments keep artifacts) for local replicas:
    the user's server when MLFLOW_TRACKING_URI is set, else the embedded store."""
    if settings.MLFLOW_TRACKING_URI.is_set():
        return {"MLFLOW_TRACKING_URI": settings.MLFLOW_TRACKING_URI.get() or ""}
    store.ensure()
    return {"MLFLOW_TRACKING_URI": store.tracking_uri, "FERRY_ARTIFACT_ROOT": store.artifact_root}
