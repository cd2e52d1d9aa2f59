"""The runtime's tracker in a process that already chose another MLflow experiment."""

from __future__ import annotations

from pathlib import Path


def test_a_script_that_set_another_experiment_still_tracks_to_its_submissions_run(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from ferry.runtime import Tracker

    from mlflow.tracking import _tracking_service

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous_uri = _tracking_service.utils._tracking_uri  # None unless someone set one
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("someone-elses")  # e.g. a training script's own setup, or a host process
    try:
        tracker = Tracker(is_primary=True, tracking_uri=uri, experiment="digits", submission_id="sub-1",
                          system_metrics=False)
        tracker.start()
        tracker.log_metrics({"loss": 0.5}, step=1)
        tracker.close()
    finally:
        mlflow.tracking.fluent._active_experiment_id = None
        _tracking_service.utils._tracking_uri = previous_uri
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.info.experiment_id == MlflowClient(tracking_uri=uri).get_experiment_by_name("digits").experiment_id
    assert run.data.metrics["loss"] == 0.5 and run.info.status == "FINISHED"
