"""``ferry optimize`` with real parts: small models trained here (the digits CNN and a
Linear-heavy MLP), registered on a real ``mlflow server``, optimized, measured and registered
again; the student job runs through the local executor like ``ferry run``."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferry.errors import ConfigError, FerryError, OptimizationFailed, SpecError
from ferry.optimize import PruneOptions, optimize
from ferry.optimize._graph import layer_counts, layered, sparsity
from jobs.digits.data import load_split
from jobs.digits.model import DigitsCNN
from tests.conftest import scoped_tracking_uri

pytestmark = pytest.mark.integration
FERRY = str(Path(sys.executable).with_name("ferry"))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def conv_only() -> nn.Module:  # no Linear layer: nothing for dynamic int8 to convert
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def train(model: nn.Module, flat: bool, epochs: int) -> nn.Module:
    (x, y), _ = load_split(7)
    x = torch.from_numpy(x.reshape(len(x), 64) if flat else x)
    y = torch.from_numpy(y)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 32):
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def register(url: str, name: str, model: nn.Module, flat: bool, tags: dict[str, str]) -> None:
    """Log like Ferry's runtime does (pt2, multi-row example) and register as NAME/1."""
    import mlflow
    import mlflow.pytorch

    x_test = load_split(7)[1][0]
    example = x_test[:8].reshape(8, 64) if flat else x_test[:8]
    with scoped_tracking_uri(url):
        mlflow.set_experiment(f"train-{name}")
        with mlflow.start_run(tags=tags):
            mlflow.log_param("seed", 7)
            mlflow.pytorch.log_model(model, name="model", input_example=example, registered_model_name=name,
                                     serialization_format="pt2", pip_requirements=["torch"])


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real mlflow server holding three trained models, each as version 1."""
    from mlflow import MlflowClient

    from tests._servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("optimize-mlflow"))
    server.start()
    try:
        suffix = uuid.uuid4().hex[:6]
        names = {"cnn": f"digits-cnn-{suffix}", "mlp": f"digits-mlp-{suffix}", "conv": f"conv-only-{suffix}"}
        register(server.url, names["cnn"], train(DigitsCNN(), flat=False, epochs=6), False,
                 {"ferry.eval_data": "jobs.digits.data:eval_data"})
        register(server.url, names["mlp"], train(mlp(), flat=True, epochs=6), True, {})
        register(server.url, names["conv"], train(conv_only(), flat=False, epochs=1), False, {})
        yield server, MlflowClient(server.url, server.url), names
    finally:
        server.stop()


def versions(client, name: str) -> list[str]:
    return sorted(mv.version for mv in client.search_model_versions(f"name='{name}'"))


def load_version(client, name: str, version: str) -> nn.Module:
    import mlflow.pytorch

    with scoped_tracking_uri(client.tracking_uri):
        return mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu")


def test_cnn_candidates_are_measured_registered_and_servable(registry, tmp_path):
    server, client, names = registry
    name = names["cnn"]
    before = versions(client, name)
    result = optimize(f"models:/{name}/1", quantize="int8", prune=PruneOptions(0.5), onnx=True, client=client,
                      report_dir=tmp_path / "report")
    source = result.source_measurement
    by_label = {c.label: c for c in result.candidates}
    assert set(by_label) == {"int8", "pruned-0.5", "onnx"}
    assert source.metric == "test_accuracy" and source.value > 0.9
    assert "held-out split (jobs.digits.data:eval_data)" in result.notes[0] and not result.warnings

    int8, pruned, onnx = by_label["int8"].measurement, by_label["pruned-0.5"].measurement, by_label["onnx"].measurement
    # int8 agrees with the source: same class on nearly every input, accuracy within a point
    assert int8.agreement >= 0.97 and abs(int8.value - source.value) <= 0.01
    assert int8.size_bytes < source.size_bytes / 2  # the two Linear layers hold most of the weights
    # ONNX Runtime matches the source to float precision
    assert onnx.max_abs_diff <= 1e-4 and onnx.value == pytest.approx(source.value)
    # global magnitude pruning reaches the requested sparsity exactly
    assert pruned.sparsity == pytest.approx(0.5, abs=1e-3)
    for m in (source, int8, pruned, onnx):
        assert set(m.latency_ms) == {1, 32} and all(0 < p50 <= p99 for p50, p99 in m.latency_ms.values())

    # registered as new versions of the same model, tagged with how they were made
    assert len(versions(client, name)) == len(before) + 3
    for cand in result.candidates:
        mv = client.get_model_version(name, cand.version)
        assert mv.tags["ferry.optimize.source"] == f"models:/{name}/1"
        assert mv.tags["ferry.optimize.run_id"] == result.run_id
        run = client.get_run(mv.run_id)
        assert run.data.tags["mlflow.parentRunId"] == result.run_id
        assert run.data.metrics["test_accuracy"] == pytest.approx(cand.measurement.value)
    assert client.get_model_version(name, by_label["int8"].version).tags["ferry.optimize.method"] == "quantize"
    assert client.get_model_version(name, by_label["onnx"].version).tags["ferry.optimize.method"] == "onnx"

    # the pruned version, loaded back from the registry, really has those zeros
    reloaded = layered(load_version(client, name, by_label["pruned-0.5"].version))
    assert sparsity(reloaded) == pytest.approx(0.5, abs=1e-3)

    # the report: logged to the parent run and written where asked
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "report")}
    assert artifacts == {"report/report.md", "report/report.png", "report/report.json"}
    assert (tmp_path / "report" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| int8 |" in md and "| onnx |" in md and "dynamic int8 quantization of 2 Linear layer(s)" in md

    # every candidate loads and predicts the way `ferry serve` loads it
    from ferry.serve import load_model

    x = load_split(7)[1][0][:4]
    with scoped_tracking_uri(server.url):
        for cand in result.candidates:
            served = load_model(f"models:/{name}/{cand.version}")
            assert served.predict(x).shape == (4, 10)
        assert load_model(f"models:/{name}/{by_label['onnx'].version}").platform == "onnx"


def test_candidates_pass_through_the_promotion_gates(registry):
    from ferry import Promotion
    from ferry.registry import evaluate_gates

    _, client, names = registry
    name = names["cnn"]
    candidate = max(versions(client, name), key=int)
    gates = evaluate_gates(client, Promotion(model=name, min_value=0.9), name, candidate, "staging")
    assert {g.gate: g.passed for g in gates}["threshold"], gates


def test_mlp_through_the_cli_with_eval_data(registry, tmp_path):
    import json
    import os
    import subprocess

    server, client, names = registry
    name = names["mlp"]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run([FERRY, "optimize", f"models:/{name}/1", "--quantize", "int8", "--prune", "0.6",
                          "--finetune-data", "tests.jobs.flat_digits:train_data", "--finetune-epochs", "1",
                          "--eval-data", "tests.jobs.flat_digits:eval_data", "--report-dir", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": server.url, "TMPDIR": str(tmp)},
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0, out.stderr
    # no model copy left behind (a folder); importing ONNX Runtime writes its own one-line .ses file
    assert [p.name for p in tmp.iterdir() if p.is_dir() or p.name != ".ses"] == []
    assert "optimization candidates" in out.stdout and f"registered {name} v2 (int8)" in out.stdout
    assert "int8: dynamic int8 quantization of 3 Linear layer(s)" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["label"]: r for r in report["models"]}
    source, int8, pruned = rows["source"], rows["int8"], rows["pruned-0.6"]
    assert source["size_bytes"] / int8["size_bytes"] >= 3.5  # int8 weights: ~4x smaller than fp32
    assert source["value"] - int8["value"] <= 0.01
    assert pruned["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert "fine-tuned 1 epoch(s)" in pruned["how"]
    assert versions(client, name) == ["1", "2", "3"]


def test_structured_pruning_zeroes_whole_units_but_keeps_the_outputs(registry):
    _, client, names = registry
    name = names["mlp"]
    result = optimize(f"models:/{name}/1", prune=PruneOptions(0.25, structured=True), register=False, client=client,
                      eval_data="tests.jobs.flat_digits:eval_data")
    (cand,) = result.candidates
    assert cand.version is None and result.run_id  # logged, not registered
    model = layered(load_version_from_run(client, cand.run_id))
    hidden, output = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1], list(model.modules())[-1]
    for layer in hidden:
        zero_rows = int((layer.weight.abs().sum(dim=1) == 0).sum())
        assert zero_rows == round(0.25 * layer.out_features)
    assert int((output.weight.abs().sum(dim=1) == 0).sum()) == 0
    assert 0 < cand.sparsity < 0.25  # the output layer is not pruned


def load_version_from_run(client, run_id: str) -> nn.Module:
    import mlflow.pytorch

    with scoped_tracking_uri(client.tracking_uri):
        return mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")


def test_without_eval_data_the_candidate_is_made_and_the_warning_says_so(registry):
    _, client, names = registry
    name = names["mlp"]
    before = versions(client, name)
    result = optimize(f"models:/{name}/1", onnx=True, client=client)
    assert result.warnings and "accuracy was not checked" in result.warnings[0]
    (cand,) = result.candidates
    assert cand.measurement.value is None and cand.measurement.max_abs_diff <= 1e-4
    assert versions(client, name) == before + [cand.version]


def test_distillation_trains_a_smaller_student_and_registers_it(registry, repo, tmp_path, monkeypatch):
    _, client, names = registry
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / ".ferry"))  # where the student job's logs go
    name = names["cnn"]
    result = optimize(f"models:/{name}/1", distill=repo / "jobs" / "distill" / "job.py", distill_sets=["epochs=6"],
                      client=client)
    (student,) = result.candidates
    assert student.label == "distilled" and student.model_name == name
    assert student.parameters < result.source_measurement.parameters / 5
    assert student.measurement.value > 0.8  # reported on the same held-out split
    mv = client.get_model_version(name, student.version)
    assert mv.tags["ferry.optimize.method"] == "distill" and mv.tags["ferry.optimize.source"] == f"models:/{name}/1"
    params = client.get_run(mv.run_id).data.params
    assert params["teacher"] == f"models:/{name}/1" and params["epochs"] == "6"


# Bad input: (id, the model's key or a literal URI, optimize() kwargs, error, message). Each one
# is refused with a message naming what to fix, and registers nothing.
BAD = [
    ("unknown-model", "models:/no-such-model/1", dict(quantize="int8"), ConfigError, "no such registered model version"),
    ("unknown-version", "cnn@9", dict(quantize="int8"), ConfigError, "no such registered model version"),
    ("not-a-registry-uri", "runs:/abc/model", dict(quantize="int8"), ConfigError, "use models:/NAME/VERSION"),
    ("nothing-to-do", "cnn", dict(), ConfigError, "nothing to do"),
    ("quantize-int4", "cnn", dict(quantize="int4"), ConfigError, "--quantize 'int4': supported: int8"),
    ("prune-zero", "cnn", dict(prune=PruneOptions(0.0)), ConfigError, "strictly between 0 and 1"),
    ("prune-one", "cnn", dict(prune=PruneOptions(1.0)), ConfigError, "strictly between 0 and 1"),
    ("prune-percent", "cnn", dict(prune=PruneOptions(50)), ConfigError, "--prune 50"),
    ("prune-negative", "cnn", dict(prune=PruneOptions(-0.2)), ConfigError, "strictly between 0 and 1"),
    ("finetune-epochs-zero", "cnn", dict(prune=PruneOptions(0.5, finetune_epochs=0)), ConfigError, "--finetune-epochs 0"),
    ("int8-on-conv-only", "conv", dict(quantize="int8"), ConfigError, "converts Linear, LSTM and GRU layers; this model has Conv2d x2"),
    ("onnx-parity", "cnn", dict(onnx=True, onnx_tolerance=1e-12), OptimizationFailed, "above the tolerance 1e-12; no version was registered"),
    ("onnx-tolerance-zero", "cnn", dict(onnx=True, onnx_tolerance=0), ConfigError, "--onnx-tolerance 0"),
    ("threads-zero", "cnn", dict(onnx=True, threads=0), ConfigError, "--threads 0"),
    ("eval-data-no-module", "mlp", dict(quantize="int8", eval_data="nope.data:eval"), ConfigError, "cannot import nope.data"),
    ("eval-data-no-function", "mlp", dict(quantize="int8", eval_data="tests.jobs.flat_digits:nope"), ConfigError, "has no function 'nope'"),
    ("eval-data-not-a-ref", "mlp", dict(quantize="int8", eval_data="flat_digits.py"), ConfigError, "expected package.module:function"),
    ("eval-data-mismatched", "mlp", dict(quantize="int8", eval_data="tests.jobs.flat_digits:mismatched"), ConfigError, "same length (got 360 and 359)"),
    ("eval-data-not-a-pair", "mlp", dict(quantize="int8", eval_data="tests.jobs.flat_digits:not_a_pair"), ConfigError, "must return (inputs, labels)"),
    ("eval-data-raises", "mlp", dict(quantize="int8", eval_data="tests.jobs.flat_digits:broken"), ConfigError, "failed: FileNotFoundError"),
    ("student-without-teacher", "cnn", dict(distill="jobs/digits/job.py"), ConfigError, "no 'teacher' hyperparameter"),
    ("student-bad-set", "cnn", dict(distill="jobs/distill/job.py", distill_sets=["epochz=3"]), SpecError, "has no hyperparameter 'epochz'"),
    ("int8-of-an-int8-candidate", "cnn-int8", dict(onnx=True), ConfigError, "is already an int8 candidate of models:/"),
    ("student-job-fails", "cnn", dict(distill="tests/jobs/crash_student.py"), OptimizationFailed, "student job 'crash-student' failed"),
    ("student-file-missing", "cnn", dict(distill="jobs/nope/job.py"), FerryError, "jobs/nope/job.py"),
]


@pytest.mark.parametrize("model,kwargs,error,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_registers_nothing(registry, repo, tmp_path, monkeypatch, model, kwargs, error, message):
    _, client, names = registry
    monkeypatch.chdir(repo)
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / ".ferry"))  # where a student job's logs go
    if model == "cnn-int8":
        model = f"cnn/{int8_candidate(client, names['cnn'])}"
    key, sep, ref = model.replace("@", "/@").partition("/")
    uri = model if model.startswith(("models:/", "runs:/")) else f"models:/{names[key]}/{ref if sep else '1'}"
    uri = uri.replace("/@", "@")
    before = {n: versions(client, n) for n in names.values()}
    with pytest.raises(error) as info:
        optimize(uri, client=client, **kwargs)
    assert message in str(info.value)
    assert {n: versions(client, n) for n in names.values()} == before


def int8_candidate(client, name: str) -> str:
    """A version of NAME made by int8 quantization (made here if no earlier test made one)."""
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.tags.get("ferry.optimize.method") == "quantize":
            return mv.version
    return optimize(f"models:/{name}/1", quantize="int8", client=client).candidates[0].version


def test_cli_exit_codes(registry, repo):
    import os
    import subprocess

    server, _, names = registry
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FERRY, "optimize", *args], capture_output=True, text=True, env=env, cwd=repo, timeout=300)

    bad = run(f"models:/{names['cnn']}/1", "--prune", "1.5")
    assert bad.returncode == 2 and "strictly between 0 and 1" in bad.stderr and "Traceback" not in bad.stderr
    refused = run(f"models:/{names['cnn']}/1", "--onnx", "--onnx-tolerance", "1e-12")
    assert refused.returncode == 1 and "no version was registered" in refused.stderr


# ---- the layer rewrite, on its own -----------------------------------------------------------
LAYERED = [
    ("mlp", lambda: mlp(), (5, 64)),
    ("digits-cnn", lambda: DigitsCNN(), (5, 1, 8, 8)),
    ("conv2d-stride-dilation-groups", lambda: nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2),
                                                             nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)), (5, 4, 9, 9)),
    ("conv1d-no-bias", lambda: nn.Sequential(nn.Conv1d(3, 6, 5, padding=2, bias=False), nn.Flatten(), nn.Linear(60, 2)), (5, 3, 10)),
    ("linear-no-bias", lambda: nn.Sequential(nn.Linear(7, 7, bias=False), nn.Tanh(), nn.Linear(7, 1)), (5, 7)),
]


@pytest.mark.parametrize("make,shape", [(m, s) for _, m, s in LAYERED], ids=[i for i, _, _ in LAYERED])
def test_layered_rebuilds_layer_modules_from_an_exported_program(make, shape):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(*shape)
    model(x)  # materialize lazy layers
    model.eval()
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    rebuilt = layered(program)
    assert layer_counts(rebuilt) == layer_counts(model)
    for batch in (x, x[:1]):
        assert torch.allclose(rebuilt(batch), model(batch), atol=1e-6)
    # the parameters are real, trainable ones, and no unused copy of a weight is left behind
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
    assert np.isfinite(rebuilt(x).sum().item())
