"""Checkpoints: atomic saves, ``keep``, full restore (model, optimizer, scheduler, step, RNG),
on a local path and on S3 through boto3 against moto's real HTTP server."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from ferry.runtime import Checkpointer, storage_for


def _objects(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _roundtrip(ckpt: Checkpointer):
    model, opt, sched = _objects()
    ckpt.save(7, model=model, optimizer=opt, scheduler=sched)
    expected_next = (torch.rand(3), random.random())
    fresh_model, fresh_opt, fresh_sched = _objects(seed=1)
    torch.rand(5)  # move the RNG on: restore must bring it back
    step = ckpt.restore(model=fresh_model, optimizer=fresh_opt, scheduler=fresh_sched)
    assert step == 7
    assert torch.equal(fresh_model.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])
    assert fresh_sched.last_epoch == sched.last_epoch
    assert torch.equal(torch.rand(3), expected_next[0]) and random.random() == expected_next[1]


def test_local_roundtrip_and_keep(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ck"), every_steps=2, keep=2)
    _roundtrip(ckpt)
    model, *_ = _objects()
    for step in range(1, 11):
        ckpt.maybe_save(step, model=model)
    ckpt.flush()
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["ckpt-000000008.pt", "ckpt-000000010.pt", "latest"]
    assert ckpt.latest_step() == 10


def test_restore_without_checkpoint_starts_at_zero(tmp_path):
    assert Checkpointer(str(tmp_path / "none")).restore(model=torch.nn.Linear(1, 1)) == 0


def test_non_primary_ranks_do_not_write(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ck"), is_primary=False)
    assert ckpt.save(1, model=torch.nn.Linear(1, 1)) is None
    assert not (tmp_path / "ck").exists()


def _env(monkeypatch, root, submission, resume=None):
    monkeypatch.setenv("FERRY_CHECKPOINT_URI", str(root))
    monkeypatch.setenv("FERRY_SUBMISSION_ID", submission)
    monkeypatch.setenv("FERRY_CHECKPOINT_EVERY", "1")
    if resume:
        monkeypatch.setenv("FERRY_RESUME_FROM", resume)
    else:
        monkeypatch.delenv("FERRY_RESUME_FROM", raising=False)
    return Checkpointer.from_env()


def test_each_submission_has_its_own_folder_and_keep(tmp_path, monkeypatch):
    model, *_ = _objects()
    first = _env(monkeypatch, tmp_path, "sub-a")
    for step in range(1, 6):
        first.maybe_save(step, model=model)
    first.flush()
    second = _env(monkeypatch, tmp_path, "sub-b")
    assert second.uri == str(tmp_path / "sub-b") and second.restore(model=model) == 0  # never sub-a's
    second.save(1, model=model)
    second.flush()
    assert sorted(p.name for p in (tmp_path / "sub-a").glob("ckpt-*")) == [f"ckpt-00000000{i}.pt" for i in (3, 4, 5)]
    assert sorted(p.name for p in (tmp_path / "sub-b").glob("ckpt-*")) == ["ckpt-000000001.pt"]
    restart = _env(monkeypatch, tmp_path, "sub-a")  # a restart inside sub-a resumes sub-a
    assert restart.restore(model=model) == 5 and restart.restored_from == str(tmp_path / "sub-a")


def test_a_finished_submission_is_never_continued(tmp_path, monkeypatch):
    model, *_ = _objects()
    ckpt = _env(monkeypatch, tmp_path, "spec-abc")
    ckpt.save(4, model=model)
    ckpt.finish(6, model=model)  # a last checkpoint at the final step, then the marker
    assert ckpt.latest_step() == 6 and (tmp_path / "spec-abc" / "finished").is_file()
    again = _env(monkeypatch, tmp_path, "spec-abc")  # the same manifest applied again
    assert again.uri == str(tmp_path / "spec-abc.2") and again.restore(model=model) == 0
    resumed = _env(monkeypatch, tmp_path, "other", resume="spec-abc")  # ...unless asked for
    assert resumed.restore(model=model) == 6 and resumed.restored_from == str(tmp_path / "spec-abc")


def test_explicit_resume_reads_the_source_but_writes_its_own(tmp_path, monkeypatch):
    model, opt, sched = _objects()
    old = _env(monkeypatch, tmp_path, "old")
    old.save(30, model=model, optimizer=opt, scheduler=sched)
    old.flush()
    for ref in ("old", str(tmp_path / "old"), (tmp_path / "old").as_uri()):
        new = _env(monkeypatch, tmp_path, f"new-{len(ref)}", resume=ref)
        fresh, *_ = _objects(seed=1)
        assert new.restore(model=fresh) == 30 and torch.equal(fresh.weight, model.weight)
        new.save(31, model=fresh)
        new.flush()
        assert (tmp_path / f"new-{len(ref)}" / "latest").is_file() and Checkpointer(str(tmp_path / "old")).latest_step() == 30
        again = _env(monkeypatch, tmp_path, f"new-{len(ref)}", resume=ref)  # a restart: its own progress wins
        assert again.restore(model=fresh) == 31


@pytest.mark.parametrize("ref,message", [
    ("nope", "no checkpoint of submission nope under"),
    ("/no/such/folder", "/no/such/folder holds no checkpoint"),
    ("file:///no/such/folder", "holds no checkpoint"),
])
def test_resume_from_nothing_is_a_clear_error(ref, message, tmp_path, monkeypatch):
    from ferry.runtime import ResumeError

    with pytest.raises(ResumeError, match=message):
        _env(monkeypatch, tmp_path, "sub", resume=ref)


def test_resume_from_a_run_reads_its_checkpoint_folder(tmp_path):
    from types import SimpleNamespace

    from ferry.runtime import ResumeError, resolve_resume

    model, *_ = _objects()
    saver = Checkpointer(str(tmp_path / "s1"))
    saver.save(3, model=model)
    saver.flush()

    class Client:
        def get_run(self, run_id):
            if run_id != "a" * 32:
                raise LookupError(f"Run '{run_id}' not found")
            return SimpleNamespace(data=SimpleNamespace(tags={"ferry.checkpoint_dir": str(tmp_path / "s1")}))

    source = resolve_resume("runs:/" + "a" * 32, str(tmp_path), client=Client())
    assert source.checkpoint_dir == str(tmp_path / "s1") and source.run_id == "a" * 32
    with pytest.raises(ResumeError, match="no such MLflow run"):
        resolve_resume("runs:/" + "b" * 32, str(tmp_path), client=Client())


@pytest.mark.integration
def test_s3_roundtrip_and_keep(moto_s3):
    import boto3

    boto3.client("s3").create_bucket(Bucket="ckpts")
    ckpt = Checkpointer("s3://ckpts/jobs/digits", every_steps=1, keep=3)
    _roundtrip(ckpt)
    model, *_ = _objects()
    for step in range(8, 14):
        ckpt.save(step, model=model)
    ckpt.flush()
    keys = storage_for("s3://ckpts/jobs/digits").keys()
    assert keys == ["ckpt-000000011.pt", "ckpt-000000012.pt", "ckpt-000000013.pt", "latest"]


SAVER = textwrap.dedent("""
    import sys, torch
    from ferry.runtime import Checkpointer
    ckpt = Checkpointer(sys.argv[1], every_steps=1, keep=3)
    ckpt.save(10, model=torch.nn.Linear(4, 2))
    print("saved 10", flush=True)
    big = torch.nn.Linear(8192, 8192)  # ~256 MB: the kill lands while it is being written
    print("saving 20", flush=True)
    ckpt.save(20, model=big)
    print("saved 20", flush=True)
""")


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_kill_during_save_leaves_previous_checkpoint(backend, tmp_path, request):
    if backend == "s3":
        import boto3

        request.getfixturevalue("moto_s3")
        boto3.client("s3").create_bucket(Bucket="atomic")
        uri = "s3://atomic/ck"
    else:
        uri = str(tmp_path / "ck")
    proc = subprocess.Popen([sys.executable, "-c", SAVER, uri], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved 10"
    assert proc.stdout.readline().strip() == "saving 20"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = Checkpointer(uri)
    assert ckpt.latest_step() == 10
    assert ckpt.restore(model=torch.nn.Linear(4, 2)) == 10
    if backend == "local":  # no half-written file is visible under a checkpoint name
        assert sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith(".")) == ["ckpt-000000010.pt", "latest"]
        assert json.loads((tmp_path / "ck" / "latest").read_text())["step"] == 10


def test_the_write_happens_beside_training_and_its_errors_surface(tmp_path):
    """save() returns once the state is serialized; the write goes on in the background, one
    at a time, and a failed write is raised by the next call that waits for it."""
    import threading

    class SlowStorage:
        def __init__(self, inner):
            self.inner, self.release, self.fail = inner, threading.Event(), False

        def put(self, key, data):
            self.release.wait(5)
            if self.fail:
                raise OSError("No space left on device")
            self.inner.put(key, data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    storage = SlowStorage(storage_for(str(tmp_path / "slow")))
    ckpt = Checkpointer(str(tmp_path / "slow"), every_steps=1, storage=storage)
    model, *_ = _objects()
    assert ckpt.save(1, model=model) == "ckpt-000000001.pt"  # returned while the write waits
    assert not (tmp_path / "slow" / "latest").exists()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on: the checkpoint keeps the state it was given
    storage.release.set()
    fresh, *_ = _objects(seed=3)
    assert ckpt.restore(model=fresh) == 1 and not torch.equal(fresh.weight, model.weight)
    storage.fail = True
    ckpt.save(2, model=model)
    with pytest.raises(OSError, match="No space left"):
        ckpt.flush()
    assert ckpt.latest_step() == 1  # the failed one never became latest
