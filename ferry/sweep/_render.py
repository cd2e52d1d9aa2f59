"""A Sweep as manifests: one PyTorchJob (or TrainJob, as the sweep's job targets) per trial, the values proposed by the sweep's own sampler
before any result exists (a grid in full; random and TPE draws from the seed, TPE's first draws
being random too), labelled with the sweep and trial and nested under the sweep's parent run.
The same spec gives the same files."""

from __future__ import annotations

from typing import Any

from ferry._submission import spec_submission_id, with_submission
from ferry.render import Rendered, render_spec
from ferry.spec._sweep import Sweep
from ferry.sweep import _search
from ferry.sweep._trials import trial_job, with_trial


def planned_trials(sweep: Sweep, count: int | None = None) -> list[dict[str, Any]]:
    """The values of the first ``count`` (default: all) trials, as the sampler proposes them
    with no results yet."""
    op = _search.optuna()
    study = op.create_study(direction="maximize" if sweep.objective.goal == "max" else "minimize",
                            sampler=_search.sampler_for(sweep))
    if sweep.sampler == "grid":
        _search.queue_grid(study, sweep)
    out = []
    for _ in range(count or sweep.trials):
        trial = study.ask()
        out.append(_search.suggest(trial, sweep))
        study.tell(trial, state=op.trial.TrialState.PRUNED)  # no result: the next draw stays independent
    return out


def render_sweep(sweep: Sweep, target: str | None = None) -> list[Rendered]:
    """The manifests of ``ferry render`` for a Sweep: one job per planned trial, rendered as
    ``target`` (else the job's own target, else ``FERRY_TARGET``) says."""
    rendered = []
    for number, values in enumerate(planned_trials(sweep)):
        job = trial_job(sweep, values, number)
        (item,) = render_spec(job, target=target)
        manifest = with_trial(with_submission(item.doc, spec_submission_id(job)), sweep, number)
        rendered.append(Rendered(f"{sweep.name}/trial-{number}/{manifest['kind'].lower()}.yaml", manifest))
    return rendered
