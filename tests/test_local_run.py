"""``ferry run`` end to end with real parts: gloo DDP processes, an ``mlflow server`` process
on 127.0.0.1, the embedded SQLite store, SIGKILL of a replica, a tracking-server outage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FERRY = str(Path(sys.executable).with_name("ferry"))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without a tracking URI (each test names its own store)."""
    return {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **extra}


def ferry_run(*args: str, env: dict[str, str], cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FERRY, "run", *args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout)


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def steps_of(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def shared_mlflow(tmp_path_factory):
    """One real ``mlflow server`` (SQLite store) for this module: starting one costs seconds of imports."""
    from tests._servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("local-run-mlflow"))
    server.start()
    yield server
    server.stop()


class Tracking:
    """The module's server as one test sees it: the digits runs and model versions made since
    the test began, as a server of its own would hold."""

    def __init__(self, server):
        self.server, self.url, self.client = server, server.url, client_for(server.url)
        self.runs_before = {r.info.run_id for r in runs_of(self.client, "digits")}
        self.versions_before = {v.version for v in self.client.search_model_versions("name='digits-classifier'")}

    def runs(self) -> list:
        return [r for r in runs_of(self.client, "digits") if r.info.run_id not in self.runs_before]

    def versions(self) -> list:
        return [v for v in self.client.search_model_versions("name='digits-classifier'") if v.version not in self.versions_before]


@pytest.fixture
def tracking(shared_mlflow) -> Tracking:
    return Tracking(shared_mlflow)


def test_ddp_run_logs_one_run_and_registers(tmp_path, tracking):
    result = ferry_run("jobs/digits/job.py", env={"FERRY_HOME": str(tmp_path / ".ferry"), "MLFLOW_TRACKING_URI": tracking.url})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[master-0]" in result.stdout
    (run_dir,) = (tmp_path / ".ferry" / "runs" / "digits").iterdir()
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["master-0.log", "worker-0.log"]
    client = tracking.client
    (run,) = tracking.runs()  # exactly one run for a 2-process job
    assert run.data.metrics["test_accuracy"] >= 0.95
    assert run.data.params["world_size"] == "2" and run.data.params["epochs"] == "15"
    assert run.data.tags["ferry.job"] == "digits" and "mlflow.source.git.commit" in run.data.tags
    assert run.data.tags["ferry.eval_data"] == "jobs.digits.data:eval_data"  # what `ferry optimize` evaluates on
    final = int(run.data.tags["ferry.final_step"])
    assert steps_of(client, run.info.run_id, "loss") == list(range(1, final + 1))  # every step, from rank 0 only
    assert any(k.startswith("system/") for k in run.data.metrics)  # MLflow system metrics
    (version,) = tracking.versions()
    assert version.run_id == run.info.run_id
    assert "succeeded: digits" in result.stdout and run.info.run_id in result.stdout
    # provenance: the run is named after its submission, and says what produced it
    submission = run.data.tags["ferry.submission_id"]
    assert run.info.run_name == f"digits-{submission}" and f"submission {submission}" in result.stdout
    inputs = {[t.value for t in d.tags if t.key == "mlflow.data.context"][0]: d.dataset for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["evaluation", "training"] and inputs["training"].name == "digits"
    assert inputs["training"].digest != inputs["evaluation"].digest and "features_shape" in inputs["training"].profile
    assert json.loads(inputs["training"].source) == {"uri": "sklearn.datasets.load_digits"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "ferry")}
    assert artifacts == {"ferry/job.json", "ferry/pytorchjob.yaml"}
    import yaml

    local = Path(client.download_artifacts(run.info.run_id, "ferry", str(tmp_path)))
    manifest = yaml.safe_load((local / "pytorchjob.yaml").read_text())
    assert manifest["kind"] == "PyTorchJob" and manifest["metadata"]["labels"]["ferry.dev/submission"] == submission
    spec = json.loads((local / "job.json").read_text())
    assert spec["name"] == "digits" and spec["hyperparameters"]["epochs"] == 15


def test_two_submissions_never_share_weights(tmp_path):
    """The defect: a second `ferry run` continued the first one's checkpoint and recorded the
    new lr on weights trained with the old one."""
    home = tmp_path / ".ferry"
    first = ferry_run("jobs/digits/job.py", "--set", "epochs=2", env={"FERRY_HOME": str(home)})
    second = ferry_run("jobs/digits/job.py", "--set", "epochs=2", "--set", "lr=0.01", env={"FERRY_HOME": str(home)})
    assert first.returncode == 0 and second.returncode == 0, second.stdout[-3000:]
    assert "resumed from checkpoint" not in second.stdout
    client = client_for(f"sqlite:///{home / 'mlflow.db'}")
    runs = {r.data.params["lr"]: r for r in runs_of(client, "digits")}
    assert sorted(runs) == ["0.003", "0.01"]
    for run in runs.values():  # each trained every step itself, from step 1
        assert steps_of(client, run.info.run_id, "loss")[0] == 1 and "ferry.resumed_from_step" not in run.data.tags
        assert "ferry.resume_from" not in run.data.tags
    folders = {r.data.tags["ferry.checkpoint_dir"] for r in runs.values()}
    assert len(folders) == 2 and all(Path(f).parent == home / "volumes" / "ferry-checkpoints" / "digits" for f in folders)
    assert all((Path(f) / "finished").is_file() and (Path(f) / "latest").is_file() for f in folders)


def test_explicit_resume_records_its_lineage(tmp_path, tracking):
    home = tmp_path / ".ferry"
    env = {"FERRY_HOME": str(home), "MLFLOW_TRACKING_URI": tracking.url}
    first = ferry_run("jobs/digits/job.py", "--set", "epochs=2", env=env)
    assert first.returncode == 0, first.stdout[-3000:]
    client = tracking.client
    (source,) = tracking.runs()
    final = int(source.data.tags["ferry.final_step"])
    resumed = ferry_run("jobs/digits/job.py", "--set", "epochs=3", "--resume-from", f"runs:/{source.info.run_id}", env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resumed from checkpoint at step {final} ({source.data.tags['ferry.checkpoint_dir']})" in resumed.stdout
    (run,) = [r for r in tracking.runs() if r.info.run_id != source.info.run_id]
    tags = run.data.tags
    assert tags["ferry.resume_from"] == f"runs:/{source.info.run_id}" and tags["ferry.resume_from.run_id"] == source.info.run_id
    assert tags["ferry.resume_from.checkpoint_dir"] == source.data.tags["ferry.checkpoint_dir"] != tags["ferry.checkpoint_dir"]
    assert steps_of(client, run.info.run_id, "loss")[0] == final + 1  # continued, not restarted
    # by submission id too; and a reference to nothing is refused before anything starts
    by_id = ferry_run("jobs/digits/job.py", "--set", "epochs=3", "--resume-from", source.data.tags["ferry.submission_id"], env=env)
    assert by_id.returncode == 0 and f"resumed from checkpoint at step {final}" in by_id.stdout
    nothing = ferry_run("jobs/digits/job.py", "--resume-from", "runs:/" + "0" * 32, env=env, timeout=60)
    assert nothing.returncode == 2 and "no such MLflow run" in nothing.stderr and "Traceback" not in nothing.stderr
    assert len(tracking.runs()) == 3


def test_sigkill_a_worker_resumes_from_checkpoint(tmp_path):
    home = tmp_path / ".ferry"
    # 20 epochs (460 steps): enough for the accuracy below, and hundreds of steps past the kill
    proc = subprocess.Popen([FERRY, "run", "jobs/digits/job.py", "--set", "epochs=20"], cwd=REPO,
                            env=clean_env(FERRY_HOME=str(home)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = home / "volumes" / "ferry-checkpoints" / "digits"
    try:
        latest = wait_until(lambda: next(folder.glob("*/latest"), None), "a checkpoint folder", 60)
        wait_until(lambda: json.loads(latest.read_text())["step"] >= 60, "a checkpoint at step >= 60", 180)
        (state_file,) = home.glob("runs/digits/*/replicas.json")
        state = json.loads(state_file.read_text())
        worker = next(r for r in state["replicas"] if r["name"] == "worker-0")
        os.kill(worker["pid"], signal.SIGKILL)
        killed_after = json.loads(latest.read_text())["step"]
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "replica worker-0 failed (signal 9); restarting the group (1/3)" in output
    resumed = int(output.split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed >= killed_after >= 60  # resumed, not started over
    assert f"({latest.parent})" in output  # ...from its own submission's folder
    assert latest.parent.name == json.loads(state_file.read_text())["submission_id"]
    client = client_for(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = runs_of(client, "digits")  # still ONE run
    assert int(run.data.tags["ferry.resumed_from_step"]) == resumed
    assert run.data.metrics["test_accuracy"] >= 0.95
    final = int(run.data.tags["ferry.final_step"])
    assert set(steps_of(client, run.info.run_id, "loss")) == set(range(1, final + 1))


def test_tracking_outage_loses_no_metric(tmp_path, tracking):

    proc = subprocess.Popen([FERRY, "run", "jobs/digits/job.py", "--set", "epochs=60"], cwd=REPO,
                            env=clean_env(FERRY_HOME=str(tmp_path / ".ferry"), MLFLOW_TRACKING_URI=tracking.url),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = tracking.client
    try:
        run_id = wait_until(lambda: next((r.info.run_id for r in tracking.runs() if "loss" in r.data.metrics), None),
                            "the run logged a loss", 120)
        tracking.server.stop()
        time.sleep(6)
        tracking.server.start()  # same port, same database
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        if tracking.server.proc is None:  # failed while it was down: up again for the module's other tests
            tracking.server.start()
    assert proc.returncode == 0, output[-4000:]
    assert "unreachable" in output and "reachable again" in output
    (run,) = tracking.runs()
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    final = int(run.data.tags["ferry.final_step"])
    assert steps_of(client, run_id, "loss") == list(range(1, final + 1))
    assert run.data.metrics["test_accuracy"] >= 0.95


def _probe_job(tmp_path: Path, module: str, **extra: str) -> Path:
    fields = ", ".join(f"{k}={v}" for k, v in extra.items())
    path = tmp_path / "job.py"
    path.write_text(
        "from ferry import TrainingJob\n"
        f"job = TrainingJob(name='probe', image='i', module='{module}', workers=2, tracking=None{', ' + fields if fields else ''})\n"
    )
    return path


def test_replicas_get_the_operator_env_even_when_the_job_port_is_taken(tmp_path):
    with socket.socket() as busy:  # the job's declared port (23456) is in use on this machine
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("127.0.0.1", 23456))
            busy.listen()
        except OSError:
            pass  # already taken by something else: the point stands
        result = ferry_run(str(_probe_job(tmp_path, "tests.jobs.probe")), env={"FERRY_HOME": str(tmp_path / ".ferry")}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    probes = [json.loads(line.split("PROBE ", 1)[1]) for line in result.stdout.splitlines() if "PROBE " in line]
    assert sorted(p["rank"] for p in probes) == [0, 1] and all(p["sum"] == 1.0 for p in probes)
    envs = {p["rank"]: p["env"] for p in probes}
    assert envs[0]["WORLD_SIZE"] == envs[1]["WORLD_SIZE"] == "2"
    assert envs[1]["PET_NODE_RANK"] == "1" and envs[0]["MASTER_ADDR"] == "127.0.0.1"
    assert envs[0]["MASTER_PORT"] != "23456" and envs[0]["FERRY_SUBMISSION_ID"] == envs[1]["FERRY_SUBMISSION_ID"]


def test_script_crashing_at_import_fails_clearly(tmp_path):
    job = _probe_job(tmp_path, "tests.jobs.crash", run_policy="{'backoff_limit': 1}")
    start = time.monotonic()
    result = ferry_run(str(job), env={"FERRY_HOME": str(tmp_path / ".ferry")}, timeout=120)
    assert result.returncode == 1
    assert "failed: probe: replica" in result.stdout and "after 1 restart(s)" in result.stdout
    assert "No module named 'transformers_typo'" in result.stdout
    assert time.monotonic() - start < 60


def test_never_restart_policy_fails_at_once(tmp_path):
    job = _probe_job(tmp_path, "tests.jobs.crash", restart_policy="'Never'")
    result = ferry_run(str(job), env={"FERRY_HOME": str(tmp_path / ".ferry")}, timeout=120)
    assert result.returncode == 1 and "after 0 restart(s)" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--set", "nope=1"], "has no hyperparameter 'nope'"),
    (["--set", "epochs=ten"], "epochs is a int"),
    (["--workers", "0"], "TrainingJob.workers"),
    (["--job", "other"], "no TrainingJob named 'other'"),
])
def test_bad_run_arguments_exit_2(args, message, tmp_path):
    result = ferry_run("jobs/digits/job.py", *args, env={"FERRY_HOME": str(tmp_path / ".ferry")}, timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / ".ferry").exists()


def test_ctrl_c_stops_every_replica(tmp_path):
    home = tmp_path / ".ferry"
    proc = subprocess.Popen([FERRY, "run", "jobs/digits/job.py", "--set", "epochs=500"], cwd=REPO,
                            env=clean_env(FERRY_HOME=str(home)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state_file = wait_until(lambda: next(iter(home.glob("runs/digits/*/replicas.json")), None), "replicas started", 60)
        time.sleep(3)
        pids = [r["pid"] for r in json.loads(state_file.read_text())["replicas"]]
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    for pid in pids:  # no orphan left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("extra,world,nnodes", [
    ({"procs_per_worker": "2"}, 4, "2"),  # torchrun launches 2 processes in each of 2 "pods"
    ({"elastic": "Elastic(min_workers=1, max_workers=2)"}, 2, "1:2"),  # c10d rendezvous
], ids=["procs-per-worker", "elastic"])
def test_torchrun_launch_paths(extra, world, nnodes, tmp_path):
    job = _probe_job(tmp_path, "tests.jobs.probe", **extra)
    job.write_text("from ferry import Elastic\n" + job.read_text())
    result = ferry_run(str(job), env={"FERRY_HOME": str(tmp_path / ".ferry")}, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:]
    probes = [json.loads(line.split("PROBE ", 1)[1]) for line in result.stdout.splitlines() if "PROBE " in line]
    assert sorted(p["rank"] for p in probes) == list(range(world))
    assert all(p["sum"] == sum(range(world)) and p["env"]["PET_NNODES"] == nnodes for p in probes)


def test_a_tracker_leaves_the_host_process_as_it_found_it(shared_mlflow, monkeypatch):
    """A process that runs a Tracker itself (a notebook, a test playing a job's rank 0) gets its
    own settings back once the run is closed. MLflow's fluent setters write MLFLOW_TRACKING_URI
    and MLFLOW_EXPERIMENT_ID into os.environ: left there, every subprocess started later would
    inherit this run's server (and ``ferry submit`` ships code by default when that is a server)."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    from ferry.runtime import Tracker

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own: kept, during the run and after
    monkeypatch.setattr(utils, "_tracking_uri", None)  # MLflow's fluent state, put back after the test whatever happens
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    before = dict(os.environ)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        tracker = Tracker(is_primary=True, tracking_uri=shared_mlflow.url, experiment="host-process",
                          submission_id="20260101-000000-host", system_metrics=False)
        run_id = tracker.start()
        assert mlflow.get_tracking_uri() == shared_mlflow.url  # the fluent run (log_model) goes to the run's server
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
        tracker.log_metrics({"loss": 0.5}, step=1)
        tracker.close()
        assert signal.getsignal(signal.SIGTERM) is sigterm
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert client_for(shared_mlflow.url).get_run(run_id).info.status == "FINISHED"
    changed = {k: (before.get(k), os.environ.get(k)) for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)}
    assert changed == {}
    assert not mlflow.tracking.is_tracking_uri_set() and fluent._active_experiment_id is None
