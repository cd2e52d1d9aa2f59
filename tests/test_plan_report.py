"""What ``ferry plan`` shows and keeps: the tables (the chosen point marked), the plot (a PNG), the
JSON document (it round-trips), and the MLflow run on a real ``mlflow server``, linked both ways
to the model version."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from ferry.errors import ConfigError, RegistryError
from ferry.plan._formulas import plan
from ferry.plan._report import CHOSEN, FORMAT, MODEL_TAG, RUN_TAG, from_json, plot, record, table, to_json
from ferry.plan._types import Curve, OpenLoop, Point, Settings


def _pt(c: int, x: float, p99: float, queue: float, cpu: float, client: float = 12.0) -> Point:
    return Point(concurrency=c, throughput_rps=x, p50_ms=p99 * 0.6, p90_ms=p99 * 0.8, p99_ms=p99, mean_ms=p99 * 0.6,
                 requests=int(x * 20), errors=0, windows=4, stable=c != 16, queue_depth=queue,
                 server_cpu_percent=cpu, client_cpu_percent=client)


CURVE = Curve(points=(_pt(1, 50, 20, 0.0, 40), _pt(2, 90, 24, 0.5, 70), _pt(4, 150, 30, 1.6, 120),
                      _pt(8, 200, 45, 4.0, 160), _pt(16, 210, 90, 11.0, 170)),
              stopped_because="p99 90.0 ms above the SLO at concurrency 16")
OPEN = OpenLoop(rate_rps=170, achieved_rps=169.2, p50_ms=28, p99_ms=44, requests=5100, errors=0, queue_depth=2.4,
                server_cpu_percent=140, client_cpu_percent=9)
SETTINGS = Settings(device="cpu", dtype="float32", max_batch_size=16, max_latency_ms=2.5, workers=2, cpu_request=2.0)
PLAN = plan(CURVE, OPEN, slo_p99_ms=50, peak_rps=1000, cold_start_s=3.2, settings=SETTINGS)


def _text(*renderables) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(*renderables)
    return out.getvalue()


def test_table_marks_the_chosen_point():
    tables = table(CURVE, PLAN, OPEN)
    assert len(tables) == 3  # the sweep, the open-loop check, the plan
    sweep = _text(tables[0]).splitlines()
    chosen = [line for line in sweep if CHOSEN in line]
    assert len(chosen) == 1 and chosen[0].split("│")[1].strip() == "8", chosen
    assert any("over SLO" in line and line.split("│")[1].strip() == "16" for line in sweep)
    assert "p99 90.0 ms above the SLO at concurrency 16" in _text(tables[0])
    rest = _text(*tables[1:])
    assert "open-loop check" in rest and "169.2" in rest
    assert "scaleTarget 8" in rest and "ceil(1000 / 170.0) + 1" in rest and "3.20 s exceeds" in rest
    # without an open-loop run: the sweep and the plan
    assert len(table(CURVE, PLAN, None)) == 2
    busy = Curve(points=tuple(_pt(p.concurrency, p.throughput_rps, p.p99_ms, 0, 0, client=95) for p in CURVE.points),
                 stopped_because="cap")
    assert "the client may have set the pace" in _text(table(busy, PLAN, None)[0])


def test_plot_is_a_png(tmp_path):
    path = plot(CURVE, PLAN, tmp_path / "out" / "curve.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    single = Curve(points=CURVE.points[:1], stopped_because="cap")
    assert plot(single, plan(single, None, slo_p99_ms=50, peak_rps=10, cold_start_s=None, settings=SETTINGS),
                tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"


def test_json_round_trips():
    doc = to_json(CURVE, OPEN, PLAN, SETTINGS, "models:/tiny@champion", 3.2)
    assert list(doc) == ["format", "model_uri", "settings", "cold_start_s", "curve", "open_loop", "plan"]
    assert doc["format"] == FORMAT and doc["curve"]["single_request_ms"] == 20
    text = json.dumps(doc, sort_keys=True)
    assert json.loads(text) == doc  # JSON-native: no tuples, nothing lost
    back = from_json(json.loads(text))
    assert back == dict(curve=CURVE, open_loop=OPEN, plan=PLAN, settings=SETTINGS, model_uri="models:/tiny@champion",
                        cold_start_s=3.2)
    assert from_json(to_json(CURVE, None, PLAN, SETTINGS, "runs:/abc/model", None))["open_loop"] is None
    with pytest.raises(ConfigError, match="not a ferry plan document"):
        from_json({**doc, "format": "other"})


# ---- the MLflow run, on a real server --------------------------------------------------------
@pytest.fixture(scope="module")
def served_registry(tmp_path_factory):
    """Model 'tiny' v1 and v2, each from a training run, alias champion -> v2, on a real
    ``mlflow server`` (one for this module; stopped after it, also on failure)."""
    from mlflow import MlflowClient

    from tests._servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("plan-mlflow"))
    server.start()
    try:
        yield _registered(MlflowClient(server.url, server.url))
    finally:
        server.stop()


def _registered(client):
    experiment = client.create_experiment("tiny-training")
    client.create_registered_model("tiny")
    for _ in range(2):
        run = client.create_run(experiment)
        client.log_text(run.info.run_id, "flavors:\n  pytorch:\n    pytorch_version: 2.13.0\n", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        client.create_model_version("tiny", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("tiny", "champion", "2")
    return client


def test_record_creates_the_run_and_links_the_version(served_registry, tmp_path):
    client = served_registry
    doc = to_json(CURVE, OPEN, PLAN, SETTINGS, "models:/tiny@champion", 3.2)
    png = plot(CURVE, PLAN, tmp_path / "plan.png")
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    run_id = record(client, "models:/tiny@champion", doc, png, tmp_path / "plan.json")

    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "ferry-plans"
    assert run.info.status == "FINISHED" and run.info.run_name == "plan-tiny-v2"
    assert {k: run.data.params[k] for k in ("slo_p99_ms", "peak_rps", "headroom", "device", "dtype", "max_batch_size",
                                            "max_latency_ms", "workers", "cpu_request", "model_uri")} == {
        "slo_p99_ms": "50", "peak_rps": "1000", "headroom": "0.15", "device": "cpu", "dtype": "float32",
        "max_batch_size": "16", "max_latency_ms": "2.5", "workers": "2", "cpu_request": "2",
        "model_uri": "models:/tiny@champion"}
    history = client.get_metric_history(run_id, "p99_ms")
    assert sorted((m.step, m.value) for m in history) == [(1, 20), (2, 24), (4, 30), (8, 45), (16, 90)]
    assert sorted(m.step for m in client.get_metric_history(run_id, "throughput_rps")) == [1, 2, 4, 8, 16]
    assert run.data.metrics["plan.c_star"] == 8 and run.data.metrics["plan.max_replicas"] == 7
    assert run.data.metrics["open_loop.p99_ms"] == 44 and run.data.metrics["cold_start_s"] == 3.2
    assert {a.path for a in client.list_artifacts(run_id)} == {"plan.png", "plan.json"}
    kept = json.loads(open(client.download_artifacts(run_id, "plan.json", str(tmp_path / "dl"))).read())
    assert kept == doc

    version = client.get_model_version("tiny", "2")
    assert run.data.tags[MODEL_TAG] == "tiny/2" and run.data.tags["ferry.plan.source_run_id"] == version.run_id
    assert version.tags[RUN_TAG] == run_id
    assert "C* = 8" in run.data.tags["mlflow.note.content"]

    # a pinned version: the same experiment, the later plan's run on that version's tag
    again = record(client, "models:/tiny/1", doc, None, None)
    assert client.get_run(again).info.experiment_id == run.info.experiment_id
    assert client.get_model_version("tiny", "1").tags[RUN_TAG] == again
    assert client.get_model_version("tiny", "2").tags[RUN_TAG] == run_id

    # a URI outside the registry: recorded, linked to no version
    loose = record(client, "runs:/0123/model", doc, None, None)
    assert client.get_run(loose).data.tags[MODEL_TAG] == "runs:/0123/model"


BAD_URIS = [
    ("unknown-alias", "models:/tiny@nope", RegistryError, "cannot resolve models:/tiny@nope"),
    ("unknown-version", "models:/tiny/9", RegistryError, "cannot resolve models:/tiny/9"),
    ("unknown-model", "models:/ghost@champion", RegistryError, "cannot resolve models:/ghost@champion"),
    ("no-version", "models:/tiny", ConfigError, "names no version"),
]


def test_record_refuses_what_the_registry_lacks(served_registry):
    doc = to_json(CURVE, None, PLAN, SETTINGS, "x", None)

    def runs() -> int:
        found = served_registry.get_experiment_by_name("ferry-plans")
        return len(served_registry.search_runs([found.experiment_id])) if found else 0

    before = runs()
    for _, uri, kind, message in BAD_URIS:
        with pytest.raises(kind, match=message):
            record(served_registry, uri, doc, None, None)
    assert runs() == before  # nothing was recorded for them
