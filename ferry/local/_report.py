"""What ``ferry run`` says when a job ends: outcome, its MLflow run, where to look next."""

from __future__ import annotations

from typing import Any

from ferry.local._executor import JobResult
from ferry.spec import TrainingJob


def find_run(job: TrainingJob, submission_id: str) -> Any:
    """The MLflow run of a submission (None when tracking is off or it was never created)."""
    from mlflow import MlflowClient

    from ferry.local import embedded_tracking_uri
    from ferry.runtime import submission_run

    return submission_run(MlflowClient(tracking_uri=embedded_tracking_uri()), job.experiment, submission_id)


def _summary(run: Any) -> dict[str, Any] | None:
    """An MLflow run in the form rank 0 prints it when its run has ended (``JobResult.run``)."""
    if run is None:
        return None
    from ferry.runtime import REGISTERED_TAG

    return {"run_id": run.info.run_id, "metrics": dict(run.data.metrics), "registered": run.data.tags.get(REGISTERED_TAG)}


def report(job: TrainingJob, result: JobResult, console: Any) -> int:
    from rich.markup import escape

    if result.exit_code != 0 and result.failed_replica is None:
        console.print(f"[yellow]stopped[/] {job.name} (signal); every replica was terminated")
        return result.exit_code
    if result.exit_code != 0:
        console.print(f"[bold red]failed:[/] {job.name}: replica {result.failed_replica} failed after "
                      f"{result.restarts} restart(s); its log: {result.run_dir / (result.failed_replica + '.log')}")
        for line in result.last_lines[-10:]:
            console.print(f"  [dim]{escape(line)}[/]")
        return result.exit_code
    run = None
    if job.tracking is not None:
        # Rank 0 read its run back from MLflow once it had ended and printed it; MLflow is asked
        # here (importing it takes seconds) only when no such line came.
        run = result.run or _summary(find_run(job, result.submission_id))
    console.print(f"[bold green]succeeded:[/] {job.name} (submission {result.submission_id}, {result.restarts} restart(s))")
    if run is not None:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(run["metrics"].items()) if k in ("test_accuracy", "loss"))
        console.print(f"MLflow run {run['run_id']} in experiment {job.experiment!r}: {metrics}")
        if registered := run.get("registered"):
            console.print(f"registered model version: {registered}")
        console.print("compare runs in the MLflow UI: [bold]ferry ui[/] (then http://127.0.0.1:5000)")
    return 0
