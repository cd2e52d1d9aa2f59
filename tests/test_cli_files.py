"""What ``ferry render`` and ``ferry validate`` accept as input, as a new user gives it:
folders and stdin for validate, Ferry's own ModelPipeline beside the shipped CRDs, --crd-dir
adding to them, job files importing from their own project wherever they are run from, a job
imported by another job file counted once, files without a spec skipped in a glob, and render's
-n/--namespace and --set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FERRY = str(Path(sys.executable).with_name("ferry"))
GOLDEN = REPO / "manifests" / "examples"
PIPELINES = sorted((GOLDEN / "pipelines").glob("*.yaml"))

JOB = """
from ferry import Tracking, TrainingJob
job = TrainingJob(name="{name}", image="ghcr.io/acme/train:1", module="train", workers=2{extra},
                  hyperparameters={{"epochs": 15, "lr": 0.01}}, tracking=Tracking(experiment="{name}"))
"""


def ferry(*args: Any, cwd: Path = REPO, stdin: str | None = None, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    """The installed ``ferry`` console script, as a user runs it (a wide terminal: help on one line)."""
    environ = {k: v for k, v in os.environ.items() if k != "FERRY_CRD_DIR"}
    return subprocess.run([FERRY, *map(str, args)], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=180, env={**environ, "COLUMNS": "400", **(env or {})})


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def in_order(text: str, *parts: str) -> bool:
    """Every part appears in ``text``, each after the one before."""
    at = 0
    for part in parts:
        at = text.find(part, at)
        if at < 0:
            return False
        at += len(part)
    return True


@pytest.fixture
def own_modules():
    """Job files import their helpers by plain names (``helper``, ``shared``): forget the ones a
    test imported, so the next table row imports its own."""
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]
    assert sys.path == path, "loading job files changed sys.path"


# ---- ferry validate: files, folders and stdin ---------------------------------------------------
def _bad_pytorchjob() -> str:
    doc = yaml.safe_load((GOLDEN / "digits" / "pytorchjob.yaml").read_text())
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    return yaml.safe_dump(doc)


def _manifest_tree(root: Path) -> Path:
    """What ``ferry render -o out`` leaves, a .yml among them."""
    out = root / "out"
    (out / "digits").mkdir(parents=True)
    (out / "digits-student").mkdir()
    shutil.copy(GOLDEN / "digits" / "pytorchjob.yaml", out / "digits" / "pytorchjob.yaml")
    shutil.copy(GOLDEN / "digits-student" / "pytorchjob.yaml", out / "digits-student" / "pytorchjob.yml")
    (out / "README.txt").write_text("not a manifest")
    (root / "empty").mkdir()
    (root / "bad").mkdir()
    (root / "bad" / "b.yaml").write_text(_bad_pytorchjob())
    (root / "bad" / "a").mkdir()
    (root / "bad" / "a" / "z.yml").write_text(_bad_pytorchjob())
    return root


VALIDATE_INPUTS = [
    # id, arguments (relative to the test's folder; "-" is stdin), stdin, exit code, stderr parts in order
    ("a-folder", ["out"], None, 0, ["ok: 2 manifest(s) valid"]),
    ("a-folder-and-a-file", ["out", "out/digits/pytorchjob.yaml"], None, 0, ["ok: 3 manifest(s) valid"]),
    ("stdin", ["-"], (GOLDEN / "digits" / "pytorchjob.yaml").read_text(), 0, ["ok: 1 manifest(s) valid"]),
    ("stdin-invalid", ["-"], _bad_pytorchjob(), 1, ["<stdin>", "$.spec.pytorchReplicaSpecs.Master.replicas"]),
    ("a-folder-with-bad-files-sorted", ["bad"], None, 1,
     ["2 validation error(s)", "bad/a/z.yml", "Master.replicas", "bad/b.yaml", "Master.replicas"]),
    ("a-missing-path", ["out", "absent"], None, 2, ["absent", "no such file or folder"]),
    ("an-empty-folder", ["empty"], None, 2, ["empty", "no *.yaml or *.yml"]),
]


@pytest.mark.parametrize("args, stdin, code, parts", [r[1:] for r in VALIDATE_INPUTS], ids=[r[0] for r in VALIDATE_INPUTS])
def test_validate_takes_files_folders_and_stdin(args, stdin, code, parts, tmp_path):
    root = _manifest_tree(tmp_path)
    result = ferry("validate", *args, cwd=root, stdin=stdin)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert in_order(result.stderr, *parts), result.stderr


def test_validate_checks_the_folder_render_wrote(tmp_path):
    assert ferry("render", "jobs/digits/job.py", "jobs/distill/job.py", "-o", tmp_path / "out").returncode == 0
    result = ferry("validate", tmp_path / "out")
    assert result.returncode == 0 and "ok: 2 manifest(s) valid" in result.stderr, result.stderr
