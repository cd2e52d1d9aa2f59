"""Golden manifests for every example job. Regenerate with FERRY_UPDATE_GOLDEN=1 (never in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.render import Rendered, dump_yaml, render_spec
from ferry.spec import RunPolicy, load_specs
from ferry.validate import validate_manifests

REPO = Path(__file__).resolve().parents[1]
JOB_FILES = sorted(REPO.glob("jobs/*/job.py"))
GOLDEN = REPO / "manifests" / "examples"
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1" and not os.environ.get("CI")
HAND_WRITTEN = ("deploy", "pipelines")  # checked by test_deploy.py and test_operator_crd.py


def _digits_trainjob() -> Rendered:
    """The digits job as a Kubeflow Trainer v2 TrainJob, beside its PyTorchJob for comparison. Its
    run_policy (retries, TTL) is one a TrainJob cannot express, so it goes; the rest is the job's."""
    (loaded,) = [item for item in load_specs([REPO / "jobs" / "digits" / "job.py"]) if item.spec.name == "digits"]
    (item,) = render_spec(loaded.spec.replace(target="trainjob", run_policy=RunPolicy()))
    return Rendered("digits-trainjob/trainjob.yaml", item.doc)


def _rendered():
    # each job as it says, whatever FERRY_TARGET the shell running the tests has
    return [item for loaded in load_specs(JOB_FILES)
            for item in render_spec(loaded.spec, target=loaded.spec.target or "pytorchjob")] + [_digits_trainjob()]


def test_every_example_job_has_a_golden_file():
    assert len(JOB_FILES) >= 3
    rendered = {item.relpath for item in _rendered()}
    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.yaml") if p.relative_to(GOLDEN).parts[0] not in HAND_WRITTEN}
    if UPDATE:
        for stale in on_disk - rendered:
            (GOLDEN / stale).unlink()
        return
    assert rendered == on_disk, "golden files out of date; run `make golden`"


@pytest.mark.parametrize("item", _rendered(), ids=lambda item: item.relpath)
def test_golden_manifest_matches(item, crd_dir):
    validate_manifests([(item.relpath, item.doc)], crd_dir)
    path = GOLDEN / item.relpath
    text = dump_yaml([item.doc])
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{path} drifted from its job file; run `make golden` and review the diff"
