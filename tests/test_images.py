"""One setting names Ferry's images in everything it renders."""

from __future__ import annotations

import pytest

from ferry import __version__
from ferry.images import COMPONENTS, image


def test_the_default_names_are_the_registry_and_ferrys_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("FERRY_IMAGE_TAG", raising=False)
    assert [image(c) for c in COMPONENTS] == [f"ghcr.io/ferry-ml/ferry-{c}:{__version__}" for c in COMPONENTS]
    assert image("train", variant="cpu") == f"ghcr.io/ferry-ml/ferry-train:{__version__}-cpu"


def test_the_settings_move_every_rendered_manifest(monkeypatch: pytest.MonkeyPatch, ferry_cli, tmp_path) -> None:
    env = {"FERRY_IMAGE_REGISTRY": "registry.acme.internal/ml/", "FERRY_IMAGE_TAG": "2.0.0"}
    out = ferry_cli("render", "jobs/digits/job.py", "-o", str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    (manifest,) = tmp_path.rglob("pytorchjob.yaml")
    assert "image: registry.acme.internal/ml/ferry-train:2.0.0-cpu" in manifest.read_text()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from ferry.render import render_serving_runtime

    assert render_serving_runtime()["spec"]["containers"][0]["image"] == "registry.acme.internal/ml/ferry-serve:2.0.0"


def test_an_unknown_component_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown image 'trainer'; Ferry builds train, serve, operator, mlflow"):
        image("trainer")  # type: ignore[arg-type]
