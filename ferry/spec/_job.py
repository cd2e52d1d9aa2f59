"""``TrainingJob``: what a team writes to describe one distributed PyTorch training job."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from ferry import _k8s
from ferry._submission import submission_problem
from ferry.errors import SpecError
from ferry.spec._base import Spec
from ferry.spec._code import CODE_DIR, CODE_VOLUME, Code
from ferry.spec._pod import Resources, SecretRef, Toleration, Volume
from ferry.spec._policy import Elastic, GangScheduling, RunPolicy
from ferry.spec._tracking import Checkpointing, Tracking

__all__ = ["DEFAULT_RUNTIME", "RESERVED_ENV", "TARGETS", "TrainingJob"]

Scalar = bool | int | float | str

# Names the training operator or Ferry itself sets in every replica: a user value would be
# silently overwritten (or would break rendezvous), so they are refused up front.
RESERVED_ENV = frozenset(
    {
        "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
        "PYTHONUNBUFFERED", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
    }
)
# PET_*: torchrun's settings (the training operator and Kubeflow Trainer set them); KUBEFLOW_TRAINER_*:
# what Kubeflow Trainer v2 tells a trainer about its status server.
RESERVED_ENV_PREFIXES = ("PET_", "FERRY_", "KUBEFLOW_TRAINER_")
# Env names that almost always hold a credential: inline values are refused (use secret_env).
_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL)", re.I)
_HPARAM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
TARGETS = ("pytorchjob", "trainjob")  # what a job renders as: kubeflow.org/v1 PyTorchJob, trainer.kubeflow.org/v1alpha1 TrainJob
DEFAULT_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs for PyTorch
TRAINJOB_PORT = 29500  # the rendezvous port Kubeflow Trainer fixes (PET_MASTER_PORT)
# The fields only a PyTorchJob expresses (trainjob_problem refuses them set): a TrainJob's dump leaves
# them out, so that it reads back as the same job.
_PYTORCHJOB_ONLY = ("elastic", "gang", "restart_policy", "port")
_PYTORCHJOB_ONLY_RUN_POLICY = ("backoff_limit", "ttl_seconds_after_finished", "clean_pod_policy")
MANAGED_LABELS = ("app.kubernetes.io/managed-by", "ferry.dev/job", "ferry.dev/submission", "kueue.x-k8s.io/queue-name")


class TrainingJob(Spec):
    """A distributed PyTorch training job.

    ``workers`` is the number of pods (nodes); each runs ``procs_per_worker`` processes
    (one per GPU on GPU jobs). Give the entry point as ``module`` (run as ``python -m``, or
    through torchrun when there are several processes per worker or the job is elastic) or
    as an explicit ``command``; ``args`` follow either.

    ``target`` picks what the job renders as: ``"pytorchjob"`` (a Kubeflow training operator
    PyTorchJob, kubeflow.org/v1) or ``"trainjob"`` (a Kubeflow Trainer v2 TrainJob,
    trainer.kubeflow.org/v1alpha1, on the ClusterTrainingRuntime ``runtime``); None leaves it to
    the project (``FERRY_TARGET``, else pytorchjob). A TrainJob starts ``module`` through torchrun
    always, since the Trainer only sets torchrun's ``PET_*`` settings; a ``command`` runs as it
    is there and must start torchrun itself (``python -m torch.distributed.run ...``). What a
    TrainJob cannot express is refused, with the alternative: elastic, gang, restart_policy,
    port, and run_policy's backoff_limit, ttl_seconds_after_finished and clean_pod_policy.

    ``code`` runs the replicas from a bundle of the project instead of the code in ``image``
    (``ferry submit`` bundles and uploads it and sets this field; see :mod:`ferry.code`).

    Each submission starts from step 0; ``resume_from`` starts it from another submission's
    latest checkpoint instead: a submission id of this job, an MLflow run (``runs:/<run id>``)
    or a checkpoint folder (a path or ``s3://...``). The new run records where it came from.
    """

    name: str
    image: str
    command: tuple[str, ...] | None = None
    module: str | None = None
    args: tuple[str, ...] = ()
    workers: int = 1
    procs_per_worker: int = 1
    resources: Resources = Resources()
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, SecretRef] = Field(default_factory=dict)
    volumes: tuple[Volume, ...] = ()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    service_account: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    namespace: str = "default"
    elastic: Elastic | None = None
    run_policy: RunPolicy = RunPolicy()
    queue: str | None = None
    gang: GangScheduling | None = None
    tracking: Tracking | None = Tracking()
    checkpointing: Checkpointing | None = None
    resume_from: str | None = None
    code: Code | None = None
    restart_policy: Literal["OnFailure", "Never", "ExitCode", "Always"] = "OnFailure"
    port: int = 23456
    shm_size: str = "1Gi"
    run_as_user: int = 1000
    target: Literal["pytorchjob", "trainjob"] | None = None
    runtime: str = DEFAULT_RUNTIME

    # ---- single fields -------------------------------------------------------------------
    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if problem := _k8s.dns1035_problem(v):
            raise ValueError(f"{problem} (got {v!r}); e.g. name='digits-ddp'")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if problem := _k8s.dns1123_problem(v):
            raise ValueError(f"{problem} (got {v!r})")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v) or v != v.strip():
            raise ValueError(f"must be an image reference without spaces (got {v!r}); e.g. 'ghcr.io/acme/train:1.0'")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v}); use workers=1 for a single-process job")
        return v

    @field_validator("procs_per_worker")
    @classmethod
    def _procs(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v}); it is the number of processes per worker pod")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1024 <= v <= 65535:
            raise ValueError(f"must be in 1024..65535 (got {v}); pods run as non-root and cannot bind below 1024")
        return v

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if problem := _k8s.dns1123_problem(v, subdomain=True):
            raise ValueError(f"must name a ClusterTrainingRuntime: {problem} (got {v!r}); e.g. runtime={DEFAULT_RUNTIME!r}")
        return v

    @field_validator("run_as_user")
    @classmethod
    def _uid(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be a non-root UID >= 1 (got {v}); pods meet the 'restricted' Pod Security profile")
        return v

    @field_validator("shm_size", mode="before")
    @classmethod
    def _shm(cls, v: Any) -> str:
        try:
            amount = _k8s.parse_quantity(v)
        except ValueError as exc:
            raise ValueError(f"{exc}") from None
        if amount <= 0:
            raise ValueError(f"must be > 0 (got {v!r}); e.g. shm_size='2Gi'")
        return str(v)

    @field_validator("command", "args")
    @classmethod
    def _argv(cls, v: tuple[str, ...] | None, info) -> tuple[str, ...] | None:  # type: ignore[no-untyped-def]
        if v is not None and info.field_name == "command" and not v:
            raise ValueError("must not be empty; give the program to run, e.g. command=['python', 'train.py']")
        return v

    @field_validator("module")
    @classmethod
    def _module(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", v):
            raise ValueError(f"must be a dotted Python module name (got {v!r}); e.g. module='jobs.digits.train'")
        return v

    @field_validator("hyperparameters")
    @classmethod
    def _hparams(cls, v: dict[str, Scalar]) -> dict[str, Scalar]:
        for key in v:
            if not _HPARAM_KEY.match(key):
                raise ValueError(f"key {key!r} must start with a letter or '_' and hold only letters, digits, '_', '.', '-'")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            _check_env_name(name, "env")
            if _SECRET_NAME.search(name) and value:
                raise ValueError(
                    f"{name!r} looks like a credential and must not be inline; create a Secret and use "
                    f"secret_env={{{name!r}: SecretRef(name='...', key='...')}}"
                )
        return v

    @field_validator("secret_env", mode="before")
    @classmethod
    def _secret_env(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name, ref in v.items():
                _check_env_name(name, "secret_env")
                if isinstance(ref, str):
                    raise ValueError(
                        f"{name!r} is an inline value; secrets are taken only by reference: "
                        f"secret_env={{{name!r}: SecretRef(name='my-secret', key='{name.lower()}')}}"
                    )
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if problem := _k8s.label_key_problem(key) or _k8s.label_value_problem(value):
                raise ValueError(problem)
            if key in MANAGED_LABELS:
                raise ValueError(f"label {key!r} is set by Ferry; remove it (use queue= for Kueue)")
        return v

    @field_validator("annotations", "node_selector")
    @classmethod
    def _keys(cls, v: dict[str, str], info) -> dict[str, str]:  # type: ignore[no-untyped-def]
        for key, value in v.items():
            if problem := _k8s.label_key_problem(key):
                raise ValueError(problem.replace("label key", "key"))
            if info.field_name == "node_selector" and (problem := _k8s.label_value_problem(value)):
                raise ValueError(problem)
        return v

    @field_validator("service_account", "queue")
    @classmethod
    def _object_name(cls, v: str | None, info) -> str | None:  # type: ignore[no-untyped-def]
        if v is not None and (problem := _k8s.dns1123_problem(v, subdomain=True)):
            raise ValueError(f"{info.field_name} {problem} (got {v!r})")
        return v

    @field_validator("resume_from")
    @classmethod
    def _resume_from(cls, v: str | None) -> str | None:
        if v is not None and (problem := resume_ref_problem(v)):
            raise ValueError(problem)
        return v

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if problem := _k8s.dns1123_problem(name, subdomain=True):
                raise ValueError(f"Secret name {problem} (got {name!r})")
        return v

    # ---- across fields -------------------------------------------------------------------
    @model_validator(mode="after")
    def _consistent(self) -> TrainingJob:
        if (self.command is None) == (self.module is None):
            raise ValueError(
                "give exactly one entry point: module='pkg.train' (run with python -m / torchrun) "
                "or command=['python', 'train.py']"
            )
        gpus = self.resources.gpu
        if gpus and self.procs_per_worker > gpus:
            raise ValueError(
                f"procs_per_worker ({self.procs_per_worker}) exceeds resources.gpu ({gpus}); each process "
                f"needs its own GPU: set procs_per_worker<={gpus} or raise resources.gpu"
            )
        if self.elastic is not None and not self.elastic.min_workers <= self.workers <= self.elastic.max_workers:
            raise ValueError(
                f"workers ({self.workers}) must lie within elastic min_workers..max_workers "
                f"({self.elastic.min_workers}..{self.elastic.max_workers}); it is the starting size"
            )
        if self.queue is not None and self.gang is not None:
            raise ValueError("use either queue= (Kueue) or gang= (Volcano/scheduler-plugins), not both")
        if self.gang and self.gang.min_available and self.gang.min_available > self.workers:
            raise ValueError(
                f"gang.min_available ({self.gang.min_available}) exceeds the job's {self.workers} replica(s)"
            )
        if self.resume_from is not None and self.checkpointing is None:
            raise ValueError(
                f"resume_from={self.resume_from!r} needs checkpointing=Checkpointing(uri=...): "
                "a job without checkpoints has nothing to restore"
            )
        if self.resume_from is not None and self.resume_from.startswith("runs:/") and self.tracking is None:
            raise ValueError(f"resume_from={self.resume_from!r} names an MLflow run, which needs tracking=Tracking(...)")
        if overlap := sorted(set(self.env) & set(self.secret_env)):
            raise ValueError(f"{overlap[0]!r} is in both env and secret_env; keep one (duplicate env name)")
        names = [volume.volume_name() for volume in self.volumes] + ["dshm"] + ([CODE_VOLUME] if self.code else [])
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"volume name {dupes[0]!r} is used twice; give the volumes distinct name=")
        paths = [volume.mount_path.rstrip("/") for volume in self.volumes] + ([CODE_DIR] if self.code else [])
        if dupes := sorted({p for p in paths if paths.count(p) > 1}):
            raise ValueError(f"mount_path {dupes[0]!r} is used by two volumes; mount each at its own path")
        if self.target == "pytorchjob" and self.runtime != DEFAULT_RUNTIME:
            raise ValueError(f"runtime={self.runtime!r} names a Kubeflow Trainer runtime, which only target='trainjob' "
                             "uses; remove runtime= or set target='trainjob'")
        if self.target == "trainjob" and (problem := trainjob_problem(self)):
            raise ValueError(problem)
        return self

    # ---- what is recorded -----------------------------------------------------------------
    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The fields as they are, less the render target's when they are at their defaults (a job
        that names none dumps, and so hashes to its submission id, as before they existed), and,
        for a TrainJob, less the fields only a PyTorchJob expresses: they cannot be set there,
        and leaving them out makes the dump read back as the same job."""
        data: dict[str, Any] = handler(self)
        if self.target is None:
            data.pop("target", None)
        if self.runtime == DEFAULT_RUNTIME:
            data.pop("runtime", None)
        if self.target == "trainjob":
            for name in _PYTORCHJOB_ONLY:
                data.pop(name, None)
            if isinstance(data.get("run_policy"), dict):
                data["run_policy"] = {k: v for k, v in data["run_policy"].items() if k not in _PYTORCHJOB_ONLY_RUN_POLICY}
        return data

    def replace(self, **changes: Any) -> TrainingJob:
        """A copy with ``changes``, validated like a new spec, that keeps which fields the user set
        (a TrainJob refuses some fields when set, whatever their value)."""
        return type(self)(**{**{name: getattr(self, name) for name in self.model_fields_set}, **changes})

    def with_target(self, target: str) -> TrainingJob:
        """This job rendered as ``target`` (``"pytorchjob"`` or ``"trainjob"``): the same job when it
        already renders so, else a copy naming it, validated: a TrainJob refuses what it cannot
        express, a PyTorchJob a ``runtime``."""
        if target not in TARGETS:
            raise SpecError(f"TrainingJob.target: must be one of {', '.join(TARGETS)} (got {target!r})")
        if target == self.target or (target == "pytorchjob" and self.target is None and self.runtime == DEFAULT_RUNTIME):
            return self
        return self.replace(target=target)

    # ---- derived values used by the renderer and the local executor ------------------------
    @property
    def experiment(self) -> str:
        return (self.tracking.experiment if self.tracking else None) or self.name

    @property
    def uses_torchrun(self) -> bool:
        """Several processes per pod, or elastic membership, need torchrun as the launcher; so does
        every TrainJob: Kubeflow Trainer sets only torchrun's settings (PET_*), never the
        RANK/WORLD_SIZE/MASTER_ADDR a plain ``python -m`` process reads."""
        return self.procs_per_worker > 1 or self.elastic is not None or self.target == "trainjob"

    def entrypoint(self) -> list[str]:
        """The container's full argv: with ``code``, the job's own behind ``python -m ferry.code``,
        which fetches, checks and unpacks the bundle first."""
        if self.command is not None:
            argv = [*self.command, *self.args]
        elif self.uses_torchrun:
            assert self.module is not None
            argv = ["python", "-m", "torch.distributed.run", "--module", self.module, *self.args]
        else:
            assert self.module is not None
            argv = ["python", "-m", self.module, *self.args]
        return ["python", "-m", "ferry.code", "--", *argv] if self.code is not None else argv


def trainjob_problem(job: TrainingJob) -> str | None:
    """Why ``job`` cannot be a Kubeflow Trainer v2.3 TrainJob (on a runtime such as
    torch-distributed), naming the field and the alternative; None when it can. Fields whose
    default a TrainJob does not honour either (port, run_policy.backoff_limit) are refused only
    when the user set them."""
    if job.elastic is not None:
        return ("elastic: Kubeflow Trainer v2 (target='trainjob') has no elastic training; use a fixed size "
                "(workers=N, no elastic=), or target='pytorchjob'")
    if job.gang is not None:
        return ("gang: a TrainJob is gang-scheduled only by its runtime's podGroupPolicy (torch-distributed has "
                "none); use queue= (Kueue), a ClusterTrainingRuntime with a podGroupPolicy (runtime=...), "
                "or target='pytorchjob'")
    if job.restart_policy != "OnFailure":
        return (f"restart_policy={job.restart_policy!r}: a TrainJob's pods restart OnFailure, as its runtime's "
                "JobSet sets (a TrainJob cannot change it); remove restart_policy=, use a ClusterTrainingRuntime "
                "that sets it (runtime=...), or target='pytorchjob'")
    if "port" in job.model_fields_set:
        return (f"port: Kubeflow Trainer fixes the rendezvous port at {TRAINJOB_PORT}; remove port=, "
                "or target='pytorchjob'")
    policy = job.run_policy
    if "backoff_limit" in policy.model_fields_set:
        return ("run_policy.backoff_limit: a TrainJob has no retry limit of its own (its runtime's Job "
                "backoffLimit and JobSet failurePolicy decide); remove it and use a ClusterTrainingRuntime that "
                "sets them (runtime=...), or target='pytorchjob'")
    if policy.ttl_seconds_after_finished is not None:
        return ("run_policy.ttl_seconds_after_finished: a finished TrainJob stays until it is deleted (the "
                "TTL belongs to its runtime's JobSet); remove it and delete finished jobs (ferry delete), "
                "or target='pytorchjob'")
    if policy.clean_pod_policy != "Running":
        return (f"run_policy.clean_pod_policy={policy.clean_pod_policy!r}: a finished TrainJob always deletes "
                "the pods still running and keeps the others until it is deleted (clean_pod_policy='Running'); "
                "remove it, or target='pytorchjob'")
    # JobSet names each pod <name>-node-0-<index>-<5 random characters>, a DNS-1035 label
    longest = len(f"{job.name}-node-0-{job.workers - 1}-xxxxx")
    if longest > 63:
        return (f"name: a TrainJob's pods are named {job.name}-node-0-<index>-xxxxx, at most 63 characters; "
                f"shorten name to at most {len(job.name) - (longest - 63)} characters")
    return None


def resume_ref_problem(ref: str) -> str | None:
    """Why ``ref`` is not something a submission can resume from, or None. Accepted: a
    submission id, ``runs:/<run id>``, or a checkpoint folder (a path or ``s3://``/``file://``)."""
    if ref.startswith("runs:/"):
        if not re.fullmatch(r"runs:/[0-9a-f]{32}/?", ref):
            return f"{ref!r}: an MLflow run is named runs:/<32-hex run id> (e.g. runs:/{'0' * 32})"
        return None
    scheme = ref.partition("://")[0] if "://" in ref else ""
    if scheme:
        if scheme not in ("s3", "file") or not ref.partition("://")[2].strip("/"):
            return f"{ref!r}: a checkpoint folder URI is s3://bucket/prefix or file:///path"
        return None
    if "/" in ref:
        return None  # a local checkpoint folder
    if problem := submission_problem(ref):
        return f"{problem}; or give runs:/<run id> or a checkpoint folder"
    return None


def _check_env_name(name: str, field: str) -> None:
    if not _k8s.ENV_VAR_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid environment variable name")
    if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
        raise ValueError(
            f"{name!r} is set by the training operator or Ferry; remove it from {field} "
            "(tracking, checkpoints and hyperparameters have their own fields)"
        )
