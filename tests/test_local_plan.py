"""The local executor's plan: the operator's environment, made local."""

from __future__ import annotations

import sys

import pytest

from ferry import Elastic, PVCVolume, SecretRef, SpecError, TrainingJob
from ferry.local import apply_overrides, operator_env, plan
from ferry.render import render_pytorchjob

BASE = dict(name="digits", image="i", module="jobs.digits.train")


def test_operator_env_master_and_workers():
    manifest = render_pytorchjob(TrainingJob(**BASE, workers=3))
    master = operator_env(manifest, "master", 0, 29500)
    worker = operator_env(manifest, "worker", 1, 29500)
    assert master == {
        "PYTHONUNBUFFERED": "0", "PET_NPROC_PER_NODE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": "29500",
        "WORLD_SIZE": "3", "RANK": "0", "PET_NNODES": "3", "PET_NODE_RANK": "0",
    }
    assert (worker["RANK"], worker["PET_NODE_RANK"]) == ("2", "2")  # workers are index + 1


def test_world_size_counts_processes_per_node():
    env = operator_env(render_pytorchjob(TrainingJob(**BASE, workers=2, procs_per_worker=4)), "master", 0, 1)
    assert env["WORLD_SIZE"] == "8" and env["PET_NPROC_PER_NODE"] == "4"


def test_operator_env_elastic():
    manifest = render_pytorchjob(TrainingJob(**BASE, workers=2, elastic=Elastic(min_workers=1, max_workers=3, max_restarts=2)))
    env = operator_env(manifest, "worker", 0, 4000)
    assert env["PET_NNODES"] == "1:3"
    assert env["PET_RDZV_ENDPOINT"] == "127.0.0.1:4000" and env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_MAX_RESTARTS"] == "2"
    assert "MASTER_ADDR" not in env  # no Master replica in an elastic job


def test_plan_resolves_values_locally(tmp_path, monkeypatch, caplog):
    job = TrainingJob(
        **BASE, workers=2,
        env={"NCCL_DEBUG": "WARN"},
        secret_env={"AWS_SECRET_ACCESS_KEY": SecretRef(name="s3", key="k"), "DB_PASSWORD": SecretRef(name="db", key="p")},
        volumes=[PVCVolume(claim="ckpts", mount_path="/mnt/ckpt")],
        checkpointing={"uri": "/mnt/ckpt/digits"},
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-my-shell")
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    replicas = plan(render_pytorchjob(job), master_port=1234, local_env={"MLFLOW_TRACKING_URI": "sqlite:///x.db"},
                    volumes_dir=tmp_path / "volumes", workdir=tmp_path)
    assert [r.name for r in replicas] == ["master-0", "worker-0"]
    env = replicas[1].env
    assert env["AWS_SECRET_ACCESS_KEY"] == "from-my-shell"
    assert "DB_PASSWORD" not in env and "DB_PASSWORD" in caplog.text  # warned, not invented
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"
    assert env["FERRY_CHECKPOINT_URI"] == str(tmp_path / "volumes" / "ckpts" / "digits")
    assert (tmp_path / "volumes" / "ckpts").is_dir()
    assert replicas[0].argv == [sys.executable, "-m", "jobs.digits.train"]
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path)


def test_overrides():
    job = TrainingJob(**BASE, hyperparameters={"lr": 0.1, "epochs": 3, "amp": False, "opt": "adam"})
    new = apply_overrides(job, ["lr=0.01", "epochs=5", "amp=true", "opt=sgd"], workers=3)
    assert new.hyperparameters == {"lr": 0.01, "epochs": 5, "amp": True, "opt": "sgd"}
    assert new.workers == 3 and job.workers == 1


BAD_OVERRIDES = [
    (["lr"], "expected key=value"),
    (["lrr=0.1"], "has no hyperparameter 'lrr'; known: epochs, lr"),
    (["epochs=many"], "epochs is a int"),
    (["lr=fast"], "lr is a float"),
]


@pytest.mark.parametrize("sets,message", BAD_OVERRIDES)
def test_bad_overrides(sets, message):
    with pytest.raises(SpecError, match=message):
        apply_overrides(TrainingJob(**BASE, hyperparameters={"lr": 0.1, "epochs": 3}), sets)


def test_workers_override_is_validated():
    with pytest.raises(SpecError, match="workers"):
        apply_overrides(TrainingJob(**BASE), workers=0)
