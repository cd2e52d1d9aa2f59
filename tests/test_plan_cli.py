"""``ferry plan`` as a user runs it: a real ``ferry serve`` started on a registered model, the
sweep and the open loop against it, plan.json and plan.png written, the plan recorded in MLflow
and linked to the model version, the Deployment's ``Autoscaling(...)`` rewritten in its file (and
nothing else there changed). Bad input is refused before anything starts, naming the option."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from ferry.errors import ConfigError
from ferry.plan._payload import payload_body

FAST = ["--window", "0.3", "--warmup", "0.2", "--max-windows", "3", "--duration", "1"]
DEPLOY = '''from ferry import Autoscaling, Deployment, Resources

# the digits classifier, served on CPU
tiny = Deployment(
    name="tiny",
    model="models:/tiny@champion",
    mode="standard",
    resources=Resources(cpu="2", memory="1Gi"),
    max_batch_size=8,
    autoscaling=Autoscaling(min_replicas=2, max_replicas=3, metric="queue-depth", target=10,
                            scale_down_stabilization_seconds=120),  # the team's choice
)
'''


def ferry(*args: str):
    from ferry.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture
def planned(registry, tmp_path, monkeypatch):
    uri, client = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return client


@pytest.mark.integration
def test_plan_measures_records_and_rewrites_the_deployment(planned, tmp_path):
    from ferry.spec import Deployment, load_specs

    (tmp_path / "deploy.py").write_text(DEPLOY)
    before = (tmp_path / "deploy.py").read_text()
    result = ferry("plan", "models:/tiny@champion", "--slo-p99-ms", "250", "--peak-rps", "2000", "--deployment",
                   "deploy.py", "--max-clients", "8", "-o", "out", *FAST)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "plan.json").read_text())
    points = doc["curve"]["points"]
    assert [p["concurrency"] for p in points][0] == 1 and all(p["errors"] == 0 for p in points)
    assert doc["settings"]["max_batch_size"] == 8 and doc["settings"]["cpu_request"] == 2.0  # the Deployment's
    assert doc["cold_start_s"] > 0 and doc["open_loop"]["rate_rps"] == pytest.approx(doc["plan"]["per_replica_rps"])
    assert (tmp_path / "out" / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = doc["plan"]
    assert plan["max_replicas"] == math.ceil(2000 / plan["per_replica_rps"] - 1e-9) + 1
    # the file: its autoscaling, and nothing else, says the plan
    (loaded,) = [item.spec for item in load_specs([tmp_path / "deploy.py"], kinds=(Deployment,))]
    scaling = loaded.autoscaling
    assert (scaling.metric, scaling.min_replicas, scaling.max_replicas) == ("queue-depth", 1, plan["max_replicas"])
    assert scaling.target == max(1, int(plan["queue_depth_threshold"]))
    assert scaling.scale_down_stabilization_seconds == 120
    after = (tmp_path / "deploy.py").read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 1 and "Autoscaling(" in changed[0][1] and "# the team's choice" not in changed[0][1]
    assert after.count("# the team's choice") == 1 and "rewrote the autoscaling of Deployment tiny" in result.stdout
    # the MLflow run, linked to version 2 (champion)
    version = planned.get_model_version("tiny", "2")
    run = planned.get_run(version.tags["ferry.plan.run_id"])
    assert run.data.tags["ferry.plan.model"] == "tiny/2" and run.data.params["slo_p99_ms"] == "250"
    assert f"recorded as MLflow run {run.info.run_id}" in result.stdout


@pytest.mark.integration
def test_an_slo_below_one_request_names_the_measured_minimum(planned, tmp_path):
    result = ferry("plan", "models:/tiny/1", "--slo-p99-ms", "0.001", "--peak-rps", "10", "--no-record", *FAST)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "--slo-p99-ms 0.001: the model's p99 at one request at a time is" in said and "ask for at least" in said
    assert not (tmp_path / "home" / "plans").exists()  # nothing written


@pytest.mark.parametrize("args, says", [
    (["--slo-p99-ms", "0", "--peak-rps", "10"], "--slo-p99-ms"),
    (["--slo-p99-ms", "50", "--peak-rps", "-1"], "--peak-rps"),
    (["--slo-p99-ms", "50", "--peak-rps", "10", "--headroom", "1"], "--headroom"),
    (["--slo-p99-ms", "50", "--peak-rps", "10", "--url", "http://127.0.0.1:9", "--workers", "2"], "--url"),
    (["--slo-p99-ms", "50", "--peak-rps", "10", "--name", "tiny"], "--name"),
    (["--slo-p99-ms", "50", "--peak-rps", "10", "--deployment", "deploy.py", "--name", "other"], "defines no Deployment named 'other'"),
    (["--slo-p99-ms", "50", "--peak-rps", "10", "--window", "0"], "--window"),
    (["--peak-rps", "10"], "--slo-p99-ms"),
], ids=["slo", "peak", "headroom", "url-with-settings", "name-without-file", "unknown-deployment", "window", "no-slo"])
def test_bad_input_is_refused_before_anything_starts(tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy.py").write_text(DEPLOY)
    result = ferry("plan", "models:/tiny@champion", *args)
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / ".ferry").exists()


METADATA = {"name": "model", "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]}


@pytest.mark.parametrize("payload, shape, data", [
    (None, [1, 4], [0, 0, 0, 0]),
    ("[[1, 2, 3, 4]]", [1, 4], [1, 2, 3, 4]),
    ("[[1, 2, 3, 4], [5, 6, 7, 8]]", [2, 4], [1, 2, 3, 4, 5, 6, 7, 8]),
    ('{"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [0]}]}', [3, 4], [0]),
])
def test_payload_rows_or_a_request(payload, shape, data):
    body, rows = payload_body(payload, METADATA)
    (tensor,) = json.loads(body)["inputs"]
    assert (tensor["shape"], tensor["data"], rows) == (shape, data, shape[0])


@pytest.mark.parametrize("payload, says", [
    ("[[1, 2], [3]]", "ragged"),
    ("[]", "non-empty list of rows"),
    ("{oops", "is not JSON"),
    ("@/nonexistent/rows.json", "cannot read /nonexistent/rows.json"),
])
def test_bad_payloads_name_the_option(payload, says):
    with pytest.raises(ConfigError) as refused:
        payload_body(payload, METADATA)
    assert "--payload" in str(refused.value) and says in str(refused.value)
