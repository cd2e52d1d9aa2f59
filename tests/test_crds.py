"""The CRD schemas Ferry ships are the upstream files SOURCES.md names, and the product uses
them with nothing beside the checkout."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ferry.settings import PACKAGED_CRD_DIR
from tests.conftest import SHARED_CRDS

FERRY = str(Path(sys.executable).with_name("ferry"))


def _sources() -> dict[str, str]:
    """file name -> sha256, from the table in SOURCES.md."""
    rows = re.findall(r"^\| (\S+\.yaml) \|.*\| ([0-9a-f]{64}) \|$", (PACKAGED_CRD_DIR / "SOURCES.md").read_text(), re.M)
    return dict(rows)


def test_every_packaged_crd_is_listed_with_its_checksum():
    sources = _sources()
    files = sorted(p.name for p in PACKAGED_CRD_DIR.glob("*.yaml"))
    assert files == sorted(sources) and len(files) == 8
    for name, digest in sources.items():
        assert hashlib.sha256((PACKAGED_CRD_DIR / name).read_bytes()).hexdigest() == digest, f"{name} was modified"


def test_packaged_crds_match_the_reference_copy_when_it_is_there():
    """A checkout may have the reference schemas beside it; then the shipped copies must equal
    them byte for byte (without it, the checksums above hold the same promise)."""
    reference = sorted([*SHARED_CRDS.glob("*.yaml"), *SHARED_CRDS.glob("kserve-*/*_clusterstoragecontainers.yaml")]
                       ) if SHARED_CRDS.is_dir() else []
    for path in reference:
        assert (PACKAGED_CRD_DIR / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs from {path}"
    assert {p.name for p in reference} <= {p.name for p in PACKAGED_CRD_DIR.glob("*.yaml")}


def test_the_package_declares_the_crds_as_data(repo):
    import tomllib

    data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ferry.validate"]
    assert "crds/*.yaml" in data and "crds/SOURCES.md" in data


def test_crd_validation_works_in_a_copy_with_nothing_beside_it(tmp_path):
    """A user's clone: the repository's jobs/ alone, no shared/ anywhere above, no settings."""
    clone = tmp_path / "clone"
    shutil.copytree(Path(__file__).resolve().parents[1] / "jobs", clone / "jobs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    rendered = subprocess.run([FERRY, "render", "jobs/digits/job.py", "-o", "out"], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    assert "schema validation skipped" not in rendered.stderr
    manifest = clone / "out" / "digits" / "pytorchjob.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"  # the CRD says integer
    manifest.write_text(yaml.safe_dump(doc))
    checked = subprocess.run([FERRY, "validate", str(manifest)], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1
    assert "$.spec.pytorchReplicaSpecs.Master.replicas" in checked.stderr and "not of type 'integer'" in checked.stderr
