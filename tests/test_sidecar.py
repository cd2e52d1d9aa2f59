"""The tracking sidecar's sender: bounded buffer, retries, params once, tags."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

from ferry.runtime._sidecar import Sender


class FlakyClient:
    """An MlflowClient stand-in that fails ``failures`` times, then records batches."""

    def __init__(self, failures: int = 0, params: dict | None = None):
        self.failures, self.batches, self.existing = failures, [], params or {}

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("refused")
        self.batches.append((list(metrics), list(params), list(tags)))

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(params=self.existing))

    def sent_steps(self):
        return [m.step for metrics, _, _ in self.batches for m in metrics]


def _feed(sender: Sender, *messages: dict) -> None:
    sender.read(io.StringIO("".join(json.dumps(m) + "\n" for m in messages)))


def test_keeps_points_while_unreachable_then_sends_all(caplog):
    client = FlakyClient(failures=3)
    sender = Sender(client, "run", buffer_size=100, interval=0.01)
    _feed(sender, {"m": [["loss", 1.0, 0, s] for s in range(1, 51)]})
    assert sender.eof.is_set()
    assert sender.run(flush_timeout=30) == 0
    assert client.sent_steps() == list(range(1, 51))
    assert "unreachable" in caplog.text and "reachable again" in caplog.text


def test_bounded_buffer_drops_oldest(caplog):
    client = FlakyClient()
    sender = Sender(client, "run", buffer_size=10, interval=0.01)
    _feed(sender, {"m": [["loss", 1.0, 0, s] for s in range(1, 26)]})
    assert sender.run(flush_timeout=5) == 0
    assert client.sent_steps() == list(range(16, 26)) and sender.dropped == 15
    assert "metric buffer full" in caplog.text


def test_gives_up_after_the_timeout():
    sender = Sender(FlakyClient(failures=10**6), "run", buffer_size=10, interval=0.01)
    _feed(sender, {"m": [["loss", 1.0, 0, 1]]})
    assert sender.run(flush_timeout=0.5) == 3


def test_params_once_and_tags():
    client = FlakyClient(params={"lr": "0.1"})
    sender = Sender(client, "run", buffer_size=10, interval=0.01)
    _feed(sender, {"m": [], "p": {"lr": "0.5", "epochs": "3"}, "t": {"ferry.job": "digits"}})
    assert sender.run(flush_timeout=5) == 0
    params = [p.key for _, ps, _ in client.batches for p in ps]
    tags = [(t.key, t.value) for _, _, ts in client.batches for t in ts]
    assert params == ["epochs"]  # a resumed run keeps its lr
    assert tags == [("ferry.job", "digits")]


def test_sqlite_writer_records_what_log_batch_would(tmp_path):
    """The embedded store's fast path against MLflow's own log_batch on twin runs: the same
    history and the same latest values, NaN, infinities, duplicates and late steps included."""
    import math

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from ferry.runtime._sqlite_metrics import SqliteMetricWriter

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("w", artifact_location=(tmp_path / "a").as_uri())
    fast, slow = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    batches = [
        [("loss", 2.0, 1000, 1), ("loss", 1.5, 1001, 2), ("acc", float("nan"), 1001, 2), ("big", float("inf"), 1001, 2)],
        [("loss", 1.5, 1001, 2), ("loss", 9.0, 900, 1), ("acc", 0.5, 1002, 3), ("big", -float("inf"), 1003, 3)],
        [("loss", 1.0, 999, 2), ("neg", -1.0, 5, 0)],  # same step, older timestamp: not the latest
    ]
    writer = SqliteMetricWriter(uri, fast)
    for batch in batches:
        writer.write(batch)
        client.log_batch(slow, metrics=[Metric(k, v, ts, step) for k, v, ts, step in batch])
        writer.write(batch[:1])  # a batch sent again after a failed attempt: no duplicate rows

    def view(run_id):
        history = {k: sorted((m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value)
                             for m in client.get_metric_history(run_id, k)) for k in ("loss", "acc", "big", "neg")}
        latest = {k: "nan" if math.isnan(v) else v for k, v in client.get_run(run_id).data.metrics.items()}
        return history, latest

    assert view(fast) == view(slow)
    assert view(fast)[1]["loss"] == 1.5 and view(fast)[1]["big"] < -1e308
