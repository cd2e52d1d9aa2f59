"""What one submission of a training job is, and the ids that name it.

A submission is one attempt to train a job. Every replica and every restart inside it (a
replica killed, the group restarted, a pod rescheduled) shares its id: they resume its
checkpoints (``<Checkpointing.uri>/<submission>/``) and write to its one MLflow run. A new
submission starts from step 0 unless it names what to resume from.

- ``ferry run`` and ``ferry submit``: each call is a new submission with a fresh id
  (``20261123-071502-a3f9``: sortable by time, unique).
- A manifest from ``ferry render`` applied as it is (``kubectl apply``): the id is derived
  from the job's spec (``spec-<digest>``), so rendering stays deterministic and a changed
  spec (other hyperparameters, image, ...) is another submission. Applying the very same
  spec again after its run finished is a new submission too: a finished submission's
  checkpoints and run are never continued (see ``ferry.runtime``).

The id travels as the ``ferry.dev/submission`` label on the PyTorchJob and its pod template;
each replica reads it through the downward API as ``FERRY_SUBMISSION_ID``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from typing import Any

SUBMISSION_LABEL = "ferry.dev/submission"
# A label value that is also a safe folder name and MLflow run-name part.
_ID = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


def new_submission_id(now: float | None = None) -> str:
    """A fresh id: UTC time to the second (so listings sort by age) and 16 random bits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def spec_submission_id(spec: Any) -> str:
    """The id a rendered manifest carries: a digest of the spec, the same for the same spec."""
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return f"spec-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def submission_problem(value: str) -> str | None:
    """Why ``value`` cannot be a submission id, or None."""
    if not _ID.match(value):
        return (f"{value!r} is not a submission id: lower-case letters, digits, '-' and '.', at most 63 "
                "characters, starting and ending with a letter or digit (e.g. 20261123-071502-a3f9)")
    return None


def with_submission(manifest: dict[str, Any], submission_id: str) -> dict[str, Any]:
    """``manifest`` (a rendered PyTorchJob or TrainJob) labelled as submission ``submission_id``:
    the job and every replica's pod template (a TrainJob's: in the pod template of Ferry's own
    runtime patch). Returns a new dict; the input is left as it is."""
    out = json.loads(json.dumps(manifest))
    out["metadata"].setdefault("labels", {})[SUBMISSION_LABEL] = submission_id
    templates = [replica["template"] for replica in out["spec"].get("pytorchReplicaSpecs", {}).values()]
    for patch in out["spec"].get("runtimePatches", []):
        runtime = patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {})
        templates += [job["template"]["spec"]["template"] for job in runtime.get("replicatedJobs", [])
                      if "template" in job.get("template", {}).get("spec", {})]
    for template in templates:
        template.setdefault("metadata", {}).setdefault("labels", {})[SUBMISSION_LABEL] = submission_id
    return out
