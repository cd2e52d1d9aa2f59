"""Bad specs, table-driven: each raises a SpecError naming the field and how to fix it."""

from __future__ import annotations

import pytest

from ferry import (
    Checkpointing,
    ConfigMapKeyRef,
    Elastic,
    EmptyDirVolume,
    GangScheduling,
    PVCVolume,
    Resources,
    SecretRef,
    SpecError,
    Toleration,
    TrainingJob,
)

BASE = dict(name="digits", image="ghcr.io/acme/train:1", module="jobs.digits.train")

# (id, kwargs overriding BASE, text the message must contain: the field, then the fix)
BAD_JOBS = [
    ("name-not-dns1035", dict(name="Digits_Job"), ["TrainingJob.name", "DNS-1035", "e.g. name="]),
    ("name-starts-with-digit", dict(name="1digits"), ["TrainingJob.name", "DNS-1035"]),
    ("name-too-long", dict(name="a" * 64), ["TrainingJob.name", "at most 63"]),
    ("workers-zero", dict(workers=0), ["TrainingJob.workers", ">= 1 (got 0)", "workers=1"]),
    ("procs-zero", dict(procs_per_worker=0), ["TrainingJob.procs_per_worker", ">= 1"]),
    ("cpu-zero", dict(resources=dict(cpu="0")), ["TrainingJob.resources.cpu", "must be > 0"]),
    ("memory-negative", dict(resources=dict(memory="-1Gi")), ["TrainingJob.resources.memory", "must be > 0"]),
    ("quantity-with-space", dict(resources=dict(memory="2 Gi")), ["resources.memory", "not a Kubernetes quantity", "'4Gi'"]),
    ("quantity-bad-suffix", dict(resources=dict(memory="2GB")), ["resources.memory", "not a Kubernetes quantity"]),
    ("gpu-negative", dict(resources=dict(gpu=-1)), ["resources.gpu", ">= 0", "gpu=0"]),
    ("procs-exceed-gpus", dict(procs_per_worker=8, resources=dict(gpu=4)), ["procs_per_worker (8) exceeds resources.gpu (4)", "procs_per_worker<=4"]),
    ("elastic-min-gt-max", dict(elastic=dict(min_workers=4, max_workers=2)), ["TrainingJob.elastic", "min_workers (4) must be <= max_workers (2)"]),
    ("elastic-workers-outside", dict(workers=5, elastic=dict(min_workers=1, max_workers=4)), ["workers (5) must lie within", "1..4"]),
    ("secret-inline", dict(secret_env={"DB_PASSWORD": "hunter2"}), ["TrainingJob.secret_env", "inline value", "SecretRef("]),
    ("credential-in-env", dict(env={"HF_TOKEN": "abc"}), ["TrainingJob.env", "credential", "secret_env"]),
    ("resume-without-checkpoints", dict(resume_from="20261123-071502-a3f9"), ["resume_from", "needs checkpointing=Checkpointing(uri=...)"]),
    ("resume-run-without-tracking", dict(resume_from="runs:/" + "a" * 32, tracking=None, checkpointing=dict(uri="/c")),
     ["resume_from", "needs tracking=Tracking"]),
    ("resume-run-id-malformed", dict(resume_from="runs:/abc", checkpointing=dict(uri="/c")), ["TrainingJob.resume_from", "runs:/<32-hex run id>"]),
    ("resume-bad-submission-id", dict(resume_from="Last Week", checkpointing=dict(uri="/c")), ["TrainingJob.resume_from", "not a submission id", "runs:/<run id>"]),
    ("resume-bad-scheme", dict(resume_from="gs://b/ck", checkpointing=dict(uri="/c")), ["TrainingJob.resume_from", "s3://bucket/prefix or file:///path"]),
    ("label-submission-is-ferrys", dict(labels={"ferry.dev/submission": "x"}), ["TrainingJob.labels", "set by Ferry"]),
    ("unknown-field", dict(wrokers=2), ["TrainingJob.wrokers", "unknown field", "did you mean 'workers'"]),
    ("unknown-nested-field", dict(resources=dict(gpus=1)), ["TrainingJob.resources.gpus", "unknown field", "did you mean 'gpu'"]),
    ("duplicate-env-name", dict(env={"S3_BUCKET": "a"}, secret_env={"S3_BUCKET": SecretRef(name="s", key="k")}), ["'S3_BUCKET' is in both env and secret_env"]),
    ("reserved-env", dict(env={"WORLD_SIZE": "4"}), ["TrainingJob.env", "'WORLD_SIZE' is set by the training operator"]),
    ("reserved-env-prefix", dict(env={"PET_NNODES": "4"}), ["TrainingJob.env", "PET_NNODES"]),
    ("bad-env-name", dict(env={"1BAD": "x"}), ["TrainingJob.env", "not a valid environment variable name"]),
    ("no-entry-point", dict(module=None), ["exactly one entry point", "module="]),
    ("two-entry-points", dict(command=["python", "train.py"]), ["exactly one entry point"]),
    ("empty-command", dict(module=None, command=[]), ["TrainingJob.command", "must not be empty"]),
    ("bad-module", dict(module="jobs/digits/train.py"), ["TrainingJob.module", "dotted Python module name"]),
    ("image-with-space", dict(image="acme/train 1.0"), ["TrainingJob.image", "without spaces"]),
    ("relative-mount", dict(volumes=[dict(kind="pvc", claim="d", mount_path="data")]), ["mount_path", "absolute path"]),
    ("duplicate-mount", dict(volumes=[PVCVolume(claim="a", mount_path="/data"), PVCVolume(claim="b", mount_path="/data/")]), ["mount_path '/data' is used by two volumes"]),
    ("queue-and-gang", dict(queue="q", gang=GangScheduling()), ["either queue=", "not both"]),
    ("gang-min-too-big", dict(workers=2, gang=dict(min_available=3)), ["gang.min_available (3) exceeds"]),
    ("managed-label", dict(labels={"ferry.dev/job": "x"}), ["TrainingJob.labels", "set by Ferry"]),
    ("bad-label-value", dict(labels={"team": "vision team"}), ["TrainingJob.labels", "label value"]),
    ("bad-namespace", dict(namespace="ML_Team"), ["TrainingJob.namespace", "DNS-1123"]),
    ("root-uid", dict(run_as_user=0), ["TrainingJob.run_as_user", "non-root"]),
    ("privileged-port", dict(port=80), ["TrainingJob.port", "1024..65535"]),
    ("bad-restart-policy", dict(restart_policy="Sometimes"), ["TrainingJob.restart_policy", "'OnFailure'"]),
    ("checkpoint-bad-scheme", dict(checkpointing=dict(uri="gs://bucket/x")), ["TrainingJob.checkpointing.uri", "not supported", "s3://"]),
    ("checkpoint-every-zero", dict(checkpointing=dict(uri="/ckpt", every_steps=0)), ["checkpointing.every_steps", ">= 1"]),
    ("hyperparameter-key", dict(hyperparameters={"learning rate": 0.1}), ["TrainingJob.hyperparameters", "'learning rate'"]),
    ("workers-not-int", dict(workers="two"), ["TrainingJob.workers", "valid integer"]),
    ("eval-data-not-a-ref", dict(tracking=dict(eval_data="jobs/digits/data.py")), ["TrainingJob.tracking.eval_data", "'package.module:function'"]),
    ("eval-data-no-function", dict(tracking=dict(eval_data="jobs.digits.data")), ["TrainingJob.tracking.eval_data", "e.g. eval_data="]),
]


@pytest.mark.parametrize("overrides,expected", [(o, e) for _, o, e in BAD_JOBS], ids=[i for i, _, _ in BAD_JOBS])
def test_bad_training_job(overrides, expected):
    with pytest.raises(SpecError) as info:
        TrainingJob(**{**BASE, **overrides})
    for text in expected:
        assert text in str(info.value)


BAD_PARTS = [
    ("secretref-bad-name", lambda: SecretRef(name="My Secret", key="k"), "SecretRef.name"),
    ("configmapref-bad-key", lambda: ConfigMapKeyRef(name="cm", key="a/b"), "ConfigMapKeyRef.key"),
    ("emptydir-without-name", lambda: EmptyDirVolume(mount_path="/scratch"), "needs a name="),
    ("shm-mounted-by-user", lambda: EmptyDirVolume(name="s", mount_path="/dev/shm"), "shm_size"),
    ("toleration-exists-with-value", lambda: Toleration(key="k", operator="Exists", value="v"), "value must be empty"),
    ("gpu-resource-name", lambda: Resources(gpu=1, gpu_resource="gpu"), "Resources.gpu_resource"),
    ("elastic-min-zero", lambda: Elastic(min_workers=0, max_workers=2), "Elastic.min_workers"),
    ("checkpoint-s3-no-bucket", lambda: Checkpointing(uri="s3:///x"), "needs a bucket"),
]


@pytest.mark.parametrize("make,expected", [(m, e) for _, m, e in BAD_PARTS], ids=[i for i, _, _ in BAD_PARTS])
def test_bad_spec_parts(make, expected):
    with pytest.raises(SpecError, match=expected.replace("=", "=").replace("(", r"\(")):
        make()


def test_spec_error_is_a_value_error():
    # SpecError subclasses ValueError so generic callers still catch it.
    with pytest.raises(ValueError):
        TrainingJob(**{**BASE, "workers": 0})


def test_specs_are_immutable():
    job = TrainingJob(**BASE)
    with pytest.raises(Exception):
        job.workers = 3  # type: ignore[misc]
