"""Sweeps: the spec's checks, trials rendered for a cluster, and real sweeps through the local
executor against a real MLflow server (child runs under one parent, the best registered,
pruning, Ctrl-C and continuing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.errors import SpecError
from ferry.spec import Choice, IntUniform, LogUniform, MedianPruning, Objective, Sweep, Tracking, TrainingJob, Uniform
from tests._waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
JOB = TrainingJob(name="digits", image="ghcr.io/acme/train:1", module="jobs.digits.train",
                  hyperparameters={"lr": 0.003, "batch_size": 32, "epochs": 2}, tracking=Tracking(experiment="digits"))
GOOD = dict(name="digits-lr", job=JOB, space={"lr": LogUniform(1e-4, 1e-1)}, objective=Objective(metric="test_accuracy"))


@pytest.mark.parametrize("change, message", [
    ({"space": {}}, "space is empty"),
    ({"space": {"momentum": Uniform(0.1, 0.9)}}, "space['momentum']: digits has no hyperparameter 'momentum'; searchable: batch_size, epochs, lr, workers"),
    ({"parallel": 0}, "Sweep.parallel: must be >= 1 (got 0)"),
    ({"trials": 0}, "Sweep.trials: must be >= 1 (got 0)"),
    ({"trials": 2, "parallel": 3}, "parallel (3) exceeds trials (2)"),
    ({"sampler": "grid"}, "sampler='grid' needs a Choice for every hyperparameter"),
    ({"sampler": "grid", "space": {"batch_size": Choice([16, 32])}, "trials": 5}, "trials=5 exceeds the grid's 2 combinations"),
    ({"space": {"workers": Uniform(1, 4)}}, "space['workers'] must be a Choice or an IntUniform"),
    ({"name": "Digits_LR"}, "Sweep.name:"),
    ({"job": JOB.model_copy(update={"tracking": None})}, "the job has no tracking"),
])
def test_bad_sweeps_are_refused_with_the_field_and_the_fix(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as error:
        Sweep(**{**GOOD, **change})
    assert message in str(error.value), str(error.value)


@pytest.mark.parametrize("make, message", [
    (lambda: LogUniform(0, 1), "low must be > 0 on a log scale"),
    (lambda: Uniform(1, 1), "low must be < high"),
    (lambda: IntUniform(1, 4, step=0), "IntUniform.step: must be >= 1"),
    (lambda: Choice([]), "give at least one value"),
    (lambda: Objective(metric=" "), "name the metric the job logs"),
    (lambda: MedianPruning(warmup_steps=-1), "MedianPruning.warmup_steps: must be >= 0"),
])
def test_bad_search_spaces_are_refused(make: Any, message: str) -> None:
    with pytest.raises(SpecError, match=None) as error:
        make()
    assert message in str(error.value), str(error.value)


# ---- on a cluster: a PyTorchJob per trial ------------------------------------------------------------
def test_render_writes_a_valid_labelled_pytorchjob_per_trial_the_same_every_time(ferry_cli: Any, tmp_path: Path) -> None:
    from ferry.validate import validate_manifests

    outs = []
    for name in ("a", "b"):
        result = ferry_cli("render", "jobs/digits/sweep.py", "-o", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        outs.append(sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*.yaml")))
    assert outs[0] == outs[1] == [Path(f"digits-lr/trial-{i}/pytorchjob.yaml") for i in range(4)]
    seen = set()
    for path in outs[0]:
        a, b = (tmp_path / "a" / path).read_text(), (tmp_path / "b" / path).read_text()
        assert a == b
        doc = yaml.safe_load(a)
        validate_manifests([(str(path), doc)])
        labels = doc["metadata"]["labels"]
        assert labels["ferry.dev/sweep"] == "digits-lr" and labels["ferry.dev/trial"] == path.parts[1].split("-")[1]
        env = {e["name"]: e.get("value") for e in doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
        assert env["FERRY_SWEEP"] == "digits-lr" and env["FERRY_TRIAL"] == labels["ferry.dev/trial"]
        assert "FERRY_REGISTER_AS" not in env  # only the best trial's model is registered
        hparams = json.loads(env["FERRY_HYPERPARAMETERS"])
        seen.add((hparams["lr"], hparams["batch_size"]))
    assert len(seen) == 4


# ---- here: real sweeps -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real ``mlflow server`` for this module's sweeps (starting one costs seconds of imports):
    every sweep here has its own name, and each test reads only its own sweep's runs."""
    from tests._servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("sweep-mlflow"))
    server.start()
    yield server
    server.stop()


def _sweep_env(tmp_path: Path, server: Any) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": server.url, "FERRY_HOME": str(tmp_path / "home"), "FERRY_POLL_INTERVAL_S": "0.2"}


def _runs(server: Any, experiment: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp is not None else []


@pytest.mark.integration
def test_a_digits_sweep_nests_its_trials_and_registers_only_the_best(ferry_cli: Any, sweep_mlflow: Any,
                                                                       tmp_path: Path) -> None:
    from mlflow import MlflowClient

    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(textwrap.dedent('''
        from ferry import Choice, LogUniform, Objective, Sweep
        from jobs.digits.job import job

        sweep = Sweep(name="digits-quick", job=job.model_copy(update={"hyperparameters": {**job.hyperparameters, "epochs": 2}}),
                      space={"lr": LogUniform(0.001, 0.01), "batch_size": Choice([32, 64])},
                      objective=Objective(metric="test_accuracy"), trials=3, sampler="random", seed=3)
    '''))
    result = ferry_cli("sweep", str(sweep_file), "--register", "best", env=_sweep_env(tmp_path, sweep_mlflow))
    assert result.returncode == 0, result.stdout + result.stderr
    runs = _runs(sweep_mlflow, "digits")
    (parent,) = [r for r in runs if r.data.tags.get("ferry.sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert {c.data.tags["ferry.sweep"] for c in children} == {"digits-quick"}
    assert sorted(c.data.tags["ferry.trial"] for c in children) == ["0", "1", "2"]
    assert len({(c.data.params["lr"], c.data.params["batch_size"]) for c in children}) == 3
    best = max(children, key=lambda c: c.data.metrics["test_accuracy"])
    assert parent.data.tags["ferry.sweep.best_run"] == best.info.run_id
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(best.data.metrics["test_accuracy"])
    assert parent.data.params["best.lr"] == best.data.params["lr"]
    assert json.loads(parent.data.params["sweep.space"])["lr"]["kind"] == "loguniform"
    client = MlflowClient(tracking_uri=sweep_mlflow.url)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert artifacts == {"comparison/comparison.md", "comparison/metric_per_trial.png", "comparison/parallel_coordinates.png"}
    (version,) = client.search_model_versions("name = 'digits-classifier'")
    assert version.run_id == best.info.run_id and version.tags["ferry.sweep"].startswith("digits-quick/trial-")
    assert "best: trial" in result.stdout and "registered digits-classifier/1" in result.stdout


@pytest.mark.integration
def test_the_median_rule_prunes_a_trial_that_falls_behind(ferry_cli: Any, sweep_mlflow: Any, tmp_path: Path) -> None:
    from ferry.sweep._render import planned_trials

    # a seed whose grid runs the good trial first, so the bad one has a median to fall behind
    base = dict(name="scored-prune", job=_scored_job(), space={"quality": Choice([1.0, 0.05])},
                objective=Objective(metric="score"), trials=2, sampler="grid",
                pruning=MedianPruning(startup_trials=1, warmup_steps=1))
    seed = next(s for s in range(20) if planned_trials(Sweep(**base, seed=s))[0]["quality"] == 1.0)
    sweep_file = tmp_path / "prune.py"
    sweep_file.write_text(f"from ferry import Choice, MedianPruning, Objective, Sweep\nfrom tests.jobs.scored_sweep import job\n"
                          f"sweep = Sweep(name='scored-prune', job=job.model_copy(update={{'hyperparameters': "
                          f"{{'quality': 1.0, 'steps': 40, 'pause': 0.25}}}}), space={{'quality': Choice([1.0, 0.05])}}, "
                          f"objective=Objective(metric='score'), trials=2, sampler='grid', seed={seed}, "
                          f"pruning=MedianPruning(startup_trials=1, warmup_steps=1))\n")
    result = ferry_cli("sweep", str(sweep_file), env=_sweep_env(tmp_path, sweep_mlflow))
    assert result.returncode == 0, result.stdout + result.stderr
    children = [r for r in _runs(sweep_mlflow, "scored") if r.data.tags.get("ferry.sweep") == "scored-prune"
                and "ferry.trial" in r.data.tags]
    by_quality = {float(c.data.params["quality"]): c for c in children}
    assert set(by_quality) == {1.0, 0.05}
    good, bad = by_quality[1.0], by_quality[0.05]
    assert good.data.metrics["score"] == pytest.approx(1.0)
    assert "trial 1 pruned" in result.stdout or "pruned" in result.stdout
    # score = quality * step / steps: the step it was stopped at, well before its 40th (10 s of room for a slow machine)
    stopped_at = round(bad.data.metrics["score"] / 0.05 * 40)
    assert stopped_at < 40, f"the trial that fell behind ran all its steps: {result.stdout}"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _scored_job() -> TrainingJob:
    from tests.jobs.scored_sweep import job

    return job


@pytest.mark.integration
def test_ctrl_c_keeps_finished_trials_and_a_rerun_continues_the_sweep(sweep_mlflow: Any, tmp_path: Path) -> None:
    env = {**os.environ, **_sweep_env(tmp_path, sweep_mlflow)}
    earlier = {r.info.run_id for r in _runs(sweep_mlflow, "scored")}  # the other sweeps on this module's server
    sweep_file = tmp_path / "grid.py"
    sweep_file.write_text("from tests.jobs.scored_sweep import grid as sweep\n")
    exe = str(Path(sys.executable).with_name("ferry"))
    # Started as a shell starts a command: SIGINT at its default and unblocked, whatever this test
    # process inherited or was left with by the libraries loaded before it (an ignored or blocked
    # signal is inherited across exec, and the sweep would then never see the Ctrl-C).
    proc = subprocess.Popen([exe, "sweep", str(sweep_file)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    # The sweep's own lines say when the second trial runs: interrupt it then, while it still has
    # steps to go (polling MLflow instead can be slow enough on a loaded machine to miss it).
    streams: dict[str, list[str]] = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda name=name, stream=stream: streams[name].extend(stream), daemon=True)
               for name, stream in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: any("trial 1 running" in line for line in list(streams["out"])), "the second trial has started",
                   timeout=120)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for reader in readers:
            reader.join(timeout=10)
    out, err = "".join(streams["out"]), "".join(streams["err"])
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "run the same command again to continue" in err
    finished_before = [r for r in _runs(sweep_mlflow, "scored") if r.info.run_id not in earlier
                       and "ferry.trial" in r.data.tags and r.info.status == "FINISHED"]
    assert len(finished_before) >= 1
    again = subprocess.run([exe, "sweep", str(sweep_file)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = [r for r in _runs(sweep_mlflow, "scored") if r.info.run_id not in earlier]
    parents = [r for r in runs if r.data.tags.get("ferry.sweep.role") == "parent"]
    assert len(parents) == 1  # the same sweep, continued
    finished = [r for r in runs if "ferry.trial" in r.data.tags and r.info.status == "FINISHED"]
    assert sorted({float(r.data.params["quality"]) for r in finished}) == [0.2, 0.5, 0.9]
    assert "earlier session" in again.stdout or "finished" in again.stdout


@pytest.mark.integration
def test_a_metric_the_job_never_logs_stops_the_sweep_after_one_trial(ferry_cli: Any, sweep_mlflow: Any,
                                                                      tmp_path: Path) -> None:
    sweep_file = tmp_path / "nometric.py"
    sweep_file.write_text("from ferry import Choice, Objective, Sweep\nfrom tests.jobs.scored_sweep import job\n"
                          "sweep = Sweep(name='no-metric', job=job.model_copy(update={'hyperparameters': {'quality': 1.0, "
                          "'steps': 1, 'pause': 0.0}}), space={'quality': Choice([0.1, 0.2, 0.3])}, "
                          "objective=Objective(metric='accuracy'), trials=3, sampler='grid')\n")
    result = ferry_cli("sweep", str(sweep_file), env=_sweep_env(tmp_path, sweep_mlflow))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "its run has no metric 'accuracy'" in result.stderr and "Traceback" not in result.stderr
    assert len([r for r in _runs(sweep_mlflow, "scored") if r.data.tags.get("ferry.sweep") == "no-metric"
                and "ferry.trial" in r.data.tags]) == 1


# ---- on a cluster: ferry submit of a Sweep -----------------------------------------------------------
@pytest.mark.integration
def test_submit_of_a_sweep_runs_its_trials_as_pytorchjobs_at_most_parallel_at_once(sweep_mlflow: Any,
                                                                                    tmp_path: Path, control_plane: Any,
                                                                                    namespace: str) -> None:
    """On the real control plane; the test plays the training operator and each trial's rank 0."""
    import time

    from tests._controllers import TrainingOperator

    trainer = TrainingOperator(control_plane, namespace)
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "kubeconfig", "admin", namespace=namespace)
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "ferry-mlflow", "namespace": namespace},
                         "data": {"tracking-uri": "http://ferry-mlflow.ferry:5000"}}, manager="helm")
    sweep_file = tmp_path / "cluster.py"
    sweep_file.write_text("from ferry import Choice, Objective, Sweep\nfrom tests.jobs.scored_sweep import job\n"
                          "sweep = Sweep(name='scored-cluster', job=job, space={'quality': Choice([0.3, 0.6, 0.9, 0.1])}, "
                          "objective=Objective(metric='score'), trials=4, parallel=2, sampler='grid')\n")
    seen: dict[str, float] = {}
    most_at_once = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def training_operator_and_rank0() -> None:
        try:
            play_the_cluster()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            raise

    def play_the_cluster() -> None:
        """What the cluster does: each trial's rank 0 logs its run, then the job succeeds."""
        nonlocal most_at_once
        while not stop.is_set():
            jobs = control_plane.raw("GET", f"/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs")["items"]
            running = [j for j in jobs if not (j.get("status") or {}).get("completionTime")]
            most_at_once = max(most_at_once, len(running))
            for j in running:
                name = j["metadata"]["name"]
                if name in seen:
                    continue
                env = {e["name"]: e.get("value") for e in
                       j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
                quality = json.loads(env["FERRY_HYPERPARAMETERS"])["quality"]
                seen[name] = quality
                _log_trial(sweep_mlflow.url, j["metadata"]["labels"]["ferry.dev/submission"], env, quality)
                trainer.set_status(name, conditions=[("Created", "Created", "created"),
                                                     ("Succeeded", "Succeeded", "done")])
            time.sleep(0.2)

    worker = threading.Thread(target=training_operator_and_rank0, daemon=True)
    worker.start()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MLFLOW_TRACKING_URI": sweep_mlflow.url,
           "FERRY_HOME": str(tmp_path / "home"), "FERRY_POLL_INTERVAL_S": "0.2"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ferry")), "submit", str(sweep_file), "-n", namespace],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or errors, "the sweep ends", timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
        stop.set()
        worker.join(10)
    assert not errors, errors
    assert proc.returncode == 0, out + err
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert sorted(seen.values()) == [0.1, 0.3, 0.6, 0.9]
    assert 1 <= most_at_once <= 2
    runs = _runs(sweep_mlflow, "scored")
    (parent,) = [r for r in runs if r.data.tags.get("ferry.sweep") == "scored-cluster" and r.data.tags.get("ferry.sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert parent.data.params["best.quality"] == "0.9"
    assert "best: trial" in result.stdout


def _log_trial(url: str, submission: str, env: dict[str, Any], quality: float) -> None:
    """A trial's rank 0: the runtime's tracker, with the environment the PyTorchJob gives it."""
    from ferry.runtime._tracking import Tracker

    keys = ("FERRY_SWEEP", "FERRY_TRIAL", "FERRY_HYPERPARAMETERS", "FERRY_JOB_NAME")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        tracker = Tracker(is_primary=True, tracking_uri=url, experiment="scored", submission_id=submission,
                          system_metrics=False)
        tracker.start()
        tracker.log_metrics({"score": quality}, step=1)
        tracker.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- trials and the grid, without running anything -------------------------------------------------
def test_a_trial_is_the_job_with_its_values_in_the_jobs_types_and_no_registration() -> None:
    from ferry.sweep import trial_job

    job = JOB.model_copy(update={"tracking": Tracking(experiment="digits", register_as="digits-classifier")})
    sweep = Sweep(**{**GOOD, "job": job, "space": {"lr": LogUniform(1e-4, 1e-1), "epochs": IntUniform(1, 5),
                                                   "workers": Choice([1, 3])}})
    trial = trial_job(sweep, {"lr": 0.01, "epochs": 4.0, "workers": 3}, number=2)
    assert trial.name == "digits-lr-t2" and trial.workers == 3
    assert trial.hyperparameters == {"lr": 0.01, "batch_size": 32, "epochs": 4}
    assert isinstance(trial.hyperparameters["epochs"], int)
    assert trial.tracking is not None and trial.tracking.register_as is None and trial.experiment == "digits"
    assert trial.labels == {"ferry.dev/sweep": "digits-lr", "ferry.dev/trial": "2"}


def test_the_grid_runs_every_combination_once_in_a_seeded_order_and_requeues_what_did_not_finish(tmp_path: Path) -> None:
    from ferry.sweep import _search

    sweep = Sweep(**{**GOOD, "space": {"lr": Choice([0.1, 0.01]), "batch_size": Choice([32, 64, 128])},
                     "sampler": "grid", "trials": 6, "seed": 5})
    order = _search.grid(sweep)
    assert len(order) == 6 and len({tuple(sorted(c.items())) for c in order}) == 6
    assert order == _search.grid(sweep) != _search.grid(Sweep(**{**sweep.__dict__, "seed": 6}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = _search.study(sweep, storage)
    first = study.ask()
    assert _search.suggest(first, sweep) == order[0]
    study.tell(first, 0.9)
    second = study.ask()
    study.tell(second, state=_search.optuna().trial.TrialState.FAIL)  # interrupted
    again = _search.study(sweep, storage)  # the sweep continued
    asked = [_search.suggest(again.ask(), sweep) for _ in range(5)]
    assert sorted(map(lambda c: tuple(sorted(c.items())), asked)) == sorted(
        tuple(sorted(c.items())) for c in order[1:])
