"""Where a job records itself: MLflow tracking and checkpoints."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from pydantic import field_validator

from ferry.spec._base import Spec
from ferry.spec._pod import ConfigMapKeyRef, ObjectName, SecretRef

__all__ = ["Checkpointing", "Tracking"]

# The Secret, in a workload's own namespace, whose keys a Ferry workload (a training job, the
# storage initializer) gets as environment variables: MLflow's credentials
# (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN). Optional:
# a server without authentication needs none.
CREDENTIALS_SECRET = "ferry-mlflow-credentials"

_CALLABLE_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


class Tracking(Spec):
    """MLflow tracking for a job.

    ``experiment`` defaults to the job's name. ``uri_from`` says where the pod finds
    ``MLFLOW_TRACKING_URI``: a ConfigMap key (the Helm chart creates ``ferry-mlflow``) or, when
    the URI carries credentials, a Secret key. On a laptop the local executor sets it instead.
    ``credentials_secret`` names a Secret of the job's namespace whose keys the pods get as
    environment variables, read only if it exists: MLflow's credentials for a server behind
    authentication (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or
    ``MLFLOW_TRACKING_TOKEN``); None for no such reference.
    ``register_as`` registers the final model under that name in the MLflow registry.
    ``eval_data`` names the job's held-out split as ``"module:function"`` (the function returns
    ``(inputs, labels)``); it is recorded on the run, so ``ferry optimize`` evaluates every
    candidate on exactly the data the source model was tested on.
    """

    experiment: str | None = None
    register_as: str | None = None
    eval_data: str | None = None
    uri_from: ConfigMapKeyRef | SecretRef = ConfigMapKeyRef(name="ferry-mlflow", key="tracking-uri")
    credentials_secret: ObjectName | None = CREDENTIALS_SECRET

    @field_validator("experiment", "register_as")
    @classmethod
    def _non_empty(cls, v: str | None, info) -> str | None:  # type: ignore[no-untyped-def]
        if v is not None and not v.strip():
            raise ValueError(f"{info.field_name} must not be empty; leave it None for the default")
        return v

    @field_validator("eval_data")
    @classmethod
    def _callable_ref(cls, v: str | None) -> str | None:
        if v is not None and not _CALLABLE_REF.fullmatch(v):
            raise ValueError(f"must be 'package.module:function' (got {v!r}), e.g. eval_data='jobs.digits.data:eval_data'")
        return v


class Checkpointing(Spec):
    """Periodic checkpoints: every ``every_steps`` optimizer steps, keep the newest ``keep``.

    ``uri`` is a local path (a PVC mount on a cluster) or ``s3://bucket/prefix``; S3
    credentials and endpoint come from the usual AWS environment (put them in ``secret_env``).
    """

    uri: str
    every_steps: int = 100
    keep: int = 3

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"an s3 URI needs a bucket: s3://BUCKET/prefix (got {v!r})")
        elif parsed.scheme not in ("", "file"):
            raise ValueError(
                f"scheme {parsed.scheme!r} is not supported (got {v!r}); "
                "use a path, file:///path or s3://bucket/prefix"
            )
        elif not v.strip():
            raise ValueError("must not be empty; e.g. uri='s3://my-bucket/checkpoints'")
        return v

    @field_validator("every_steps", "keep")
    @classmethod
    def _positive(cls, v: int, info) -> int:  # type: ignore[no-untyped-def]
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1 (got {v})")
        return v
