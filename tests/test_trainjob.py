"""A TrainingJob as a Kubeflow Trainer v2 TrainJob: what it renders to (beside the same job's
PyTorchJob), what it refuses, how it validates, what the CLI writes, and what a real API server
with Trainer v2.3.0's CRDs and its torch-distributed runtime makes of it.

The API server alone judges the schema and the CRD's CEL rules; the Trainer's and JobSet's
webhooks are not there (ferry.validate checks their rules by hand, tested below). Pod Security
admission does not judge a TrainJob at all: the pods come later, from a JobSet, merged with the
runtime. So the 'restricted' profile of a TrainJob's pod is Ferry's own check, on the patch it
renders."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry import (
    Checkpointing,
    ConfigMapVolume,
    Elastic,
    GangScheduling,
    PVCVolume,
    Resources,
    RunPolicy,
    SecretRef,
    SpecError,
    Toleration,
    Tracking,
    TrainingJob,
)
from ferry._submission import SUBMISSION_LABEL, spec_submission_id
from ferry.errors import ConfigError
from ferry.render import render_pytorchjob, render_spec, render_trainjob
from ferry.render._trainjob import CREDENTIAL_KEYS
from ferry.settings import PACKAGED_CRD_DIR
from ferry.spec import Code
from ferry.validate import manifest_issues
from tests.conftest import SHARED_CRDS

HERE = Path(__file__).resolve().parent
RUNTIME = HERE / "trainer" / "torch_distributed.yaml"  # upstream, unmodified: tests/trainer/SOURCES.md
TRAINER_CRDS = ("trainer.kubeflow.org_trainjobs.yaml", "trainer.kubeflow.org_clustertrainingruntimes.yaml")
BASE = dict(name="digits", image="ghcr.io/acme/train:1", module="jobs.digits.train")
DIGEST = "sha256:" + "ab" * 32
CODE = Code(uri=f"s3://code/ferry/sha256-{'ab' * 32}.tar.gz", digest=DIGEST)
# Everything a job can carry that both targets express.
RICH = dict(
    BASE, workers=3, procs_per_worker=2, args=("--epochs", "3"),
    resources=Resources(cpu="4", memory="16Gi", gpu=2), hyperparameters={"lr": 0.1, "epochs": 3},
    env={"LOG_LEVEL": "debug"}, secret_env={"HF_TOKEN": SecretRef(name="hf", key="token"),
                                            "AWS_ACCESS_KEY_ID": SecretRef(name="s3", key="id")},
    volumes=(PVCVolume(claim="data", mount_path="/data", read_only=True), ConfigMapVolume(config_map="cfg", mount_path="/cfg")),
    node_selector={"gpu": "a100"}, tolerations=(Toleration(key="gpu", operator="Exists", effect="NoSchedule"),),
    service_account="trainer", image_pull_secrets=("regcred",), labels={"team": "vision"}, annotations={"owner": "me"},
    namespace="ml", queue="gpu", tracking=Tracking(experiment="digits", register_as="digits-classifier"),
    checkpointing=Checkpointing(uri="s3://ck/digits", every_steps=10), resume_from="20261123-071502-a3f9",
    code=CODE, shm_size="4Gi", run_as_user=2000, run_policy=RunPolicy(active_deadline_seconds=3600),
)


def _node_pod(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template Ferry's runtime patch gives replicated job ``node``."""
    (patch,) = doc["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert patch["manager"] == "ferry.dev/renderer" and job["name"] == "node"
    return job["template"]["spec"]["template"]


def _env(env: list[dict[str, Any]]) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in env}


# ---- the CRDs and the runtime are upstream's ------------------------------------------------------
def test_the_trainer_files_are_upstreams_unmodified():
    rows = dict(re.findall(r"^\| (\S+\.yaml) \|.*\| ([0-9a-f]{64}) \|$", (PACKAGED_CRD_DIR / "SOURCES.md").read_text(), re.M))
    for name in TRAINER_CRDS:
        assert "| tag v2.3.0 | 658725bdae5c7e3a0854d93ac6ff492e109a22ab" in next(
            line for line in (PACKAGED_CRD_DIR / "SOURCES.md").read_text().splitlines() if line.startswith(f"| {name} "))
        assert hashlib.sha256((PACKAGED_CRD_DIR / name).read_bytes()).hexdigest() == rows[name], f"{name} was modified"
        reference = SHARED_CRDS / "trainer-v2.3.0" / name  # beside a checkout, when there
        if reference.is_file():
            assert reference.read_bytes() == (PACKAGED_CRD_DIR / name).read_bytes()
    (runtime_sha,) = re.findall(r"\| torch_distributed\.yaml \|.*\| ([0-9a-f]{64}) \|", (RUNTIME.parent / "SOURCES.md").read_text())
    assert hashlib.sha256(RUNTIME.read_bytes()).hexdigest() == runtime_sha


# ---- what a TrainJob says ---------------------------------------------------------------------------
def test_a_trainjob_carries_everything_the_job_says():
    job = TrainingJob(**RICH, target="trainjob")
    doc = render_trainjob(job)
    assert manifest_issues(doc) == []
    meta, spec = doc["metadata"], doc["spec"]
    assert (doc["apiVersion"], doc["kind"], meta["name"], meta["namespace"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob", "digits", "ml")
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "ferry", "ferry.dev/job": "digits", "team": "vision",
                              SUBMISSION_LABEL: spec_submission_id(job), "ferry.dev/code-digest": "ab" * 16,
                              "kueue.x-k8s.io/queue-name": "gpu"}
    assert meta["annotations"] == {"owner": "me", "ferry.dev/code-digest": DIGEST, "ferry.dev/code-uri": CODE.uri}
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "torch-distributed"}
    assert spec["activeDeadlineSeconds"] == 3600
    trainer = spec["trainer"]
    assert trainer["image"] == "ghcr.io/acme/train:1"
    assert trainer["command"] == ["python", "-m", "ferry.code", "--", "python", "-m", "torch.distributed.run",
                                  "--module", "jobs.digits.train", "--epochs", "3"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
                                           "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"}}
    env = _env(trainer["env"])
    assert env["FERRY_SUBMISSION_ID"] == {"fieldRef": {"fieldPath": f"metadata.labels['{SUBMISSION_LABEL}']"}}
    assert env["MLFLOW_TRACKING_URI"] == {"configMapKeyRef": {"name": "ferry-mlflow", "key": "tracking-uri"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert (env["FERRY_CODE_URI"], env["FERRY_CODE_DIR"]) == (CODE.uri, "/ferry/code")
    assert json.loads(env["FERRY_JOB_SPEC"])["target"] == "trainjob"
    # the credentials Secret, key by key (no envFrom in a TrainJob); the job's own AWS_ACCESS_KEY_ID wins
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "id"}}
    for key in set(CREDENTIAL_KEYS) - {"AWS_ACCESS_KEY_ID"}:
        assert env[key] == {"secretKeyRef": {"name": "ferry-mlflow-credentials", "key": key, "optional": True}}
    assert len(env) == len(trainer["env"]), "an env name twice"

    pod = _node_pod(doc)
    assert pod["metadata"]["labels"] == {k: v for k, v in meta["labels"].items() if k != "kueue.x-k8s.io/queue-name"}
    assert pod["metadata"]["annotations"] == meta["annotations"]
    podspec = pod["spec"]
    assert set(podspec) == {"containers", "volumes", "securityContext", "nodeSelector", "tolerations",
                            "serviceAccountName", "imagePullSecrets"}
    (container,) = podspec["containers"]
    assert set(container) == {"name", "volumeMounts", "securityContext"} and container["name"] == "node"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm", "/ferry/code", "/data", "/cfg"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in podspec["volumes"]
    assert podspec["securityContext"]["runAsUser"] == 2000
    assert (podspec["serviceAccountName"], podspec["imagePullSecrets"], podspec["nodeSelector"]) == ("trainer", [{"name": "regcred"}], {"gpu": "a100"})


@pytest.mark.parametrize("extra, argv", [
    ({}, ["python", "-m", "torch.distributed.run", "--module", "jobs.digits.train"]),  # one process: torchrun all the same
    ({"args": ("--lr", "0.1")}, ["python", "-m", "torch.distributed.run", "--module", "jobs.digits.train", "--lr", "0.1"]),
    ({"module": None, "command": ("torchrun", "train.py")}, ["torchrun", "train.py"]),  # a command runs as it is
], ids=["module", "module-args", "command"])
def test_the_module_always_starts_through_torchrun(extra, argv):
    job = TrainingJob(**{**BASE, **extra}, target="trainjob")
    assert render_trainjob(job)["spec"]["trainer"]["command"] == argv
    assert job.uses_torchrun or job.command is not None


def test_the_same_job_gets_the_same_pod_through_either_target():
    job = TrainingJob(**RICH)
    pj, tj = render_pytorchjob(job), render_trainjob(job)
    master = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    (container,) = master["spec"]["containers"]
    pod = _node_pod(tj)
    trainer = tj["spec"]["trainer"]
    assert trainer["resourcesPerNode"] == container["resources"]
    assert trainer["command"] == container["command"]  # two processes a pod: torchrun under both
    # the same env, FERRY_* and MLflow alike: only the spec's own record names its target, and the
    # credentials Secret comes key by key instead of as envFrom
    pj_env, tj_env = _env(container["env"]), _env(trainer["env"])
    assert container["envFrom"] == [{"secretRef": {"name": "ferry-mlflow-credentials", "optional": True}}]
    assert set(tj_env) - set(pj_env) == set(CREDENTIAL_KEYS) - {"AWS_ACCESS_KEY_ID"}
    differ = {k for k in pj_env if pj_env[k] != tj_env[k]}
    assert differ == {"FERRY_JOB_SPEC"}
    pj_spec, tj_spec = json.loads(pj_env["FERRY_JOB_SPEC"]), json.loads(tj_env["FERRY_JOB_SPEC"])
    only_pytorchjob = {"elastic", "gang", "restart_policy", "port"}
    assert tj_spec == {**{k: v for k, v in pj_spec.items() if k not in only_pytorchjob}, "target": "trainjob",
                       "run_policy": {"active_deadline_seconds": 3600}}
    # the same pod around the container
    for field in ("volumes", "securityContext", "nodeSelector", "tolerations", "serviceAccountName", "imagePullSecrets"):
        assert pod["spec"][field] == master["spec"][field], field
    for field in ("volumeMounts", "securityContext"):
        assert pod["spec"]["containers"][0][field] == container[field], field
    assert pod["metadata"]["annotations"] == master["metadata"]["annotations"]
    pj_labels, tj_labels = dict(master["metadata"]["labels"]), dict(pod["metadata"]["labels"])
    assert pj_labels.pop(SUBMISSION_LABEL) != tj_labels.pop(SUBMISSION_LABEL)  # a TrainJob is another submission
    assert pj_labels == tj_labels
    assert pj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]


def test_no_tracking_means_no_mlflow_env_and_no_credentials():
    for tracking in (None, Tracking(credentials_secret=None)):
        env = _env(render_trainjob(TrainingJob(**BASE, tracking=tracking, target="trainjob"))["spec"]["trainer"]["env"])
        assert not set(CREDENTIAL_KEYS) & set(env)
        assert ("MLFLOW_TRACKING_URI" in env) == (tracking is not None)


def test_a_runtime_of_the_users_choice():
    doc = render_trainjob(TrainingJob(**BASE, target="trainjob", runtime="torch-gpu-gang"))
    assert doc["spec"]["runtimeRef"]["name"] == "torch-gpu-gang" and manifest_issues(doc) == []


# ---- ids and records stay as they were ---------------------------------------------------------------
def test_a_job_that_names_no_target_dumps_and_hashes_as_before():
    job = TrainingJob(**BASE)
    assert "target" not in job.model_dump() and "runtime" not in job.model_dump()
    assert job.with_target("pytorchjob") is job
    explicit = TrainingJob(**BASE, target="trainjob")
    assert job.with_target("trainjob") == explicit
    assert spec_submission_id(explicit) != spec_submission_id(job)
    assert render_trainjob(job) == render_trainjob(explicit)


def test_a_trainjobs_record_reads_back_as_the_same_job():
    """What a replica does with FERRY_JOB_SPEC: every field it holds is then set, yet nothing
    only a PyTorchJob expresses is among them."""
    job = TrainingJob(**RICH, target="trainjob")
    again = TrainingJob.model_validate_json(job.model_dump_json())
    assert again == job and render_trainjob(again) == render_trainjob(job)


def test_a_copy_keeps_what_the_user_set():
    job = TrainingJob(**BASE, target="trainjob")
    assert job.replace(namespace="ml").namespace == "ml"  # the default port stays unset: not refused
    with pytest.raises(SpecError, match="port"):
        TrainingJob(**BASE, port=30000).replace(target="trainjob")


# ---- refusals -----------------------------------------------------------------------------------------
# (id, fields beside BASE and target="trainjob", what the message says: the field, then the alternative)
REFUSED = [
    ("elastic", dict(workers=2, elastic=Elastic(min_workers=1, max_workers=4)), ["elastic", "no elastic training", "workers=N", "target='pytorchjob'"]),
    ("gang", dict(gang=GangScheduling()), ["gang", "podGroupPolicy", "queue=", "target='pytorchjob'"]),
    ("gang-queue", dict(gang=GangScheduling(queue="q", priority_class="high")), ["gang", "runtime=..."]),
    ("restart-never", dict(restart_policy="Never"), ["restart_policy='Never'", "OnFailure", "runtime=..."]),
    ("restart-exitcode", dict(restart_policy="ExitCode"), ["restart_policy='ExitCode'", "target='pytorchjob'"]),
    ("restart-always", dict(restart_policy="Always"), ["restart_policy='Always'"]),
    ("port", dict(port=30000), ["port", "29500", "remove port="]),
    ("port-default-set", dict(port=23456), ["port", "29500"]),
    ("backoff-limit", dict(run_policy=RunPolicy(backoff_limit=5)), ["run_policy.backoff_limit", "runtime=...", "target='pytorchjob'"]),
    ("backoff-limit-default-set", dict(run_policy={"backoff_limit": 3}), ["run_policy.backoff_limit"]),
    ("ttl", dict(run_policy=RunPolicy(ttl_seconds_after_finished=60)), ["run_policy.ttl_seconds_after_finished", "ferry delete"]),
    ("clean-pods-all", dict(run_policy=RunPolicy(clean_pod_policy="All")), ["run_policy.clean_pod_policy='All'", "'Running'"]),
    ("clean-pods-none", dict(run_policy=RunPolicy(clean_pod_policy="None")), ["run_policy.clean_pod_policy='None'"]),
    ("name-too-long-for-pods", dict(name="a" * 49), ["name", "-node-0-<index>-xxxxx", "at most 48 characters"]),
    ("name-too-long-for-10-pods", dict(name="a" * 48, workers=11), ["name", "at most 47 characters"]),
]


@pytest.mark.parametrize("fields, says", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_what_a_trainjob_cannot_express_is_refused(fields, says):
    with pytest.raises(SpecError) as caught:
        TrainingJob(**{**BASE, **fields}, target="trainjob")
    for text in says:
        assert text in str(caught.value)
    with pytest.raises(SpecError) as again:  # a job that names no target, rendered as a TrainJob
        render_spec(TrainingJob(**{**BASE, **fields}), target="trainjob")
    assert str(again.value) == str(caught.value)


@pytest.mark.parametrize("fields, says", [
    (dict(runtime="Torch Distributed"), ["TrainingJob.runtime", "ClusterTrainingRuntime", "runtime='torch-distributed'"]),
    (dict(env={"KUBEFLOW_TRAINER_SERVER_URL": "x"}), ["TrainingJob.env", "KUBEFLOW_TRAINER_SERVER_URL", "remove it"]),
], ids=["runtime-not-a-name", "trainer-env"])
def test_bad_trainjob_fields_are_refused_whatever_the_target(fields, says):
    for target in (None, "pytorchjob", "trainjob"):
        with pytest.raises(SpecError) as caught:
            TrainingJob(**{**BASE, **fields}, target=target)
        for text in says:
            assert text in str(caught.value)


def test_what_a_trainjob_refuses_set_is_taken_at_its_meaning():
    """Values that say what a TrainJob does anyway are not refusals."""
    job = TrainingJob(**{**BASE, "name": "a" * 48}, target="trainjob", restart_policy="OnFailure",
                      run_policy=RunPolicy(clean_pod_policy="Running", active_deadline_seconds=60))
    assert render_trainjob(job)["spec"]["activeDeadlineSeconds"] == 60


def test_a_runtime_only_goes_with_a_trainjob():
    with pytest.raises(SpecError, match=r"runtime='torch-gang' names a Kubeflow Trainer runtime.*target='trainjob'"):
        TrainingJob(**BASE, target="pytorchjob", runtime="torch-gang")
    # the default runtime names nothing a PyTorchJob would lose, even set: a job copied field by
    # field (every field then set) renders as it did
    plain = TrainingJob(**BASE)
    copied = TrainingJob(**{name: getattr(plain, name) for name in TrainingJob.model_fields})
    assert render_spec(copied, target="pytorchjob") == render_spec(plain) and copied.model_dump() == plain.model_dump()
    job = TrainingJob(**BASE, runtime="torch-gang")  # the project decides the target
    with pytest.raises(SpecError, match="runtime="):
        render_spec(job, target="pytorchjob")
    assert render_spec(job, target="trainjob")[0].doc["spec"]["runtimeRef"]["name"] == "torch-gang"


def test_the_project_default_and_the_flag(monkeypatch):
    job, trainjob = TrainingJob(**BASE), TrainingJob(**BASE, target="trainjob")

    def kind(spec: TrainingJob, target: str | None = None) -> str:
        (item,) = render_spec(spec, target=target)
        assert item.relpath == f"digits/{item.doc['kind'].lower()}.yaml"
        return item.doc["kind"]

    monkeypatch.delenv("FERRY_TARGET", raising=False)
    assert (kind(job), kind(trainjob)) == ("PyTorchJob", "TrainJob")
    monkeypatch.setenv("FERRY_TARGET", "trainjob")
    assert kind(job) == "TrainJob" and kind(job, "pytorchjob") == "PyTorchJob"
    monkeypatch.setenv("FERRY_TARGET", "pytorchjob")
    assert kind(trainjob) == "TrainJob" and kind(trainjob, "pytorchjob") == "PyTorchJob"  # the job's own, unless the flag
    monkeypatch.setenv("FERRY_TARGET", "jobset")
    with pytest.raises(ConfigError, match="FERRY_TARGET='jobset': must be one of pytorchjob, trainjob"):
        render_spec(job)
    assert kind(trainjob) == "TrainJob"  # a job that names its target never reads it


# ---- validation: schema, CEL and webhook rules, Pod Security -------------------------------------------
def _patched(path: str, value: Any = None, delete: bool = False):  # type: ignore[no-untyped-def]
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if delete:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return change


POD = "spec.runtimePatches.0.trainingRuntimeSpec.template.spec.replicatedJobs.0.template.spec.template.spec"
POD_PATH = "$.spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template.spec.template.spec"
# (id, change to a rendered TrainJob, JSON path of the issue, what it says)
BAD_MANIFESTS = [
    ("nproc-auto", _patched("spec.trainer.numProcPerNode", "auto"), "$.spec.trainer.numProcPerNode", "is not of type 'integer'"),
    ("unknown-trainer-field", _patched("spec.trainer.numWorkers", 2), "$.spec.trainer", "unknown field(s) 'numWorkers'"),
    ("resources-in-patch", _patched(f"{POD}.containers.0.resources", {"limits": {"cpu": "1"}}),
     f"{POD_PATH}.containers[0]", "unknown field(s) 'resources'"),
    ("automount-in-patch", _patched(f"{POD}.automountServiceAccountToken", False), POD_PATH, "unknown field(s) 'automountServiceAccountToken'"),
    ("no-runtime", _patched("spec.runtimeRef", delete=True), "$.spec", "'runtimeRef' is a required property"),
    ("manager-not-a-path", _patched("spec.runtimePatches.0.manager", "ferry"), "$.spec.runtimePatches[0].manager", "domain-prefixed path"),
    ("env-in-node-patch", _patched(f"{POD}.containers.0.env", [{"name": "A", "value": "1"}]), f"{POD_PATH}.containers[0].env", "spec.trainer.env"),
    ("managed-by", _patched("spec.managedBy", "me"), "$.spec.managedBy", "trainer.kubeflow.org/trainjob-controller"),
    ("name-too-long-for-pods", _patched("metadata.name", "a" * 50), "$.metadata.name", "shorten the name by 2"),
    ("name-not-rfc1035", _patched("metadata.name", "1digits"), "$.metadata.name", "DNS-1035"),
    ("privileged", _patched(f"{POD}.containers.0.securityContext.privileged", True),
     f"{POD_PATH}.containers[0].securityContext.privileged", "Pod Security 'restricted': must not be true"),
    ("escalation", _patched(f"{POD}.containers.0.securityContext", delete=True),
     f"{POD_PATH}.containers[0].securityContext.allowPrivilegeEscalation", "Pod Security 'restricted'"),
    ("root", _patched(f"{POD}.securityContext.runAsUser", 0), f"{POD_PATH}.securityContext.runAsUser", "must not be 0"),
    ("host-path", _patched(f"{POD}.volumes.0", {"name": "dshm", "hostPath": {"path": "/dev/shm"}}), f"{POD_PATH}.volumes[0]",
     "volume type ['hostPath'] is not allowed"),
]


@pytest.mark.parametrize("change, path, says", [b[1:] for b in BAD_MANIFESTS], ids=[b[0] for b in BAD_MANIFESTS])
def test_a_bad_trainjob_is_reported_where_it_is_wrong(change, path, says):
    doc = render_trainjob(TrainingJob(**BASE, target="trainjob"))
    assert manifest_issues(doc) == []
    change(doc)
    issues = manifest_issues(doc, source="tj.yaml")
    assert any(issue.path == path and says in issue.message for issue in issues), issues


def test_a_kueue_patch_beside_ferrys_is_fine():
    doc = render_trainjob(TrainingJob(**BASE, target="trainjob", queue="gpu"))
    doc["spec"]["runtimePatches"].append({"manager": "kueue.x-k8s.io/manager", "trainingRuntimeSpec": {"template": {"spec": {
        "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {"nodeSelector": {"pool": "a"}}}}}}]}}}})
    assert manifest_issues(doc) == []


# ---- the CLI ---------------------------------------------------------------------------------------------
def _ferry(*args: str, env: dict[str, str] | None = None) -> Any:
    from typer.testing import CliRunner

    from ferry.cli import app

    return CliRunner().invoke(app, list(args), env={"FERRY_TARGET": "", **(env or {})})


def _job_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text("from ferry import *\n" + body)
    return path


def test_render_target_trainjob_writes_and_validates(tmp_path):
    file = _job_file(tmp_path, "job = TrainingJob(name='digits', image='ghcr.io/acme/train:1', module='jobs.digits.train', workers=2)\n")
    out = tmp_path / "out"
    result = _ferry("render", str(file), "--target", "trainjob", "-o", str(out), "-n", "ml")
    assert result.exit_code == 0, result.output
    (written,) = out.rglob("*.yaml")
    assert written.relative_to(out).as_posix() == "digits/trainjob.yaml"
    doc = yaml.safe_load(written.read_text())
    assert (doc["kind"], doc["metadata"]["namespace"], doc["spec"]["trainer"]["numNodes"]) == ("TrainJob", "ml", 2)
    checked = _ferry("validate", str(out))
    assert checked.exit_code == 0, checked.output
    # FERRY_TARGET picks it too; --target pytorchjob wins over it
    assert yaml.safe_load(_ferry("render", str(file), env={"FERRY_TARGET": "trainjob"}).stdout)["kind"] == "TrainJob"
    assert yaml.safe_load(_ferry("render", str(file), "--target", "pytorchjob", env={"FERRY_TARGET": "trainjob"}).stdout)["kind"] == "PyTorchJob"
    bad = yaml.safe_load(written.read_text())
    bad["spec"]["runtimePatches"][0]["manager"] = "ferry"
    written.write_text(yaml.safe_dump(bad))
    refused = _ferry("validate", str(written))
    assert refused.exit_code == 1 and "domain-prefixed path" in refused.output


@pytest.mark.parametrize("body, args, env, says", [
    ("job = TrainingJob(name='d', image='i:1', module='m', port=30000)\n", ["--target", "trainjob"], {},
     "port: Kubeflow Trainer fixes the rendezvous port at 29500"),
    ("job = TrainingJob(name='d', image='i:1', module='m', elastic=Elastic(min_workers=1, max_workers=2))\n", [],
     {"FERRY_TARGET": "trainjob"}, "elastic"),
    ("job = TrainingJob(name='d', image='i:1', module='m')\n", [], {"FERRY_TARGET": "trainjobs"}, "FERRY_TARGET='trainjobs'"),
    ("job = TrainingJob(name='d', image='i:1', module='m')\n", ["--target", "jobset"], {}, "--target"),
    ("job = TrainingJob(name='d', image='i:1', module='m', hyperparameters={'lr': 0.1}, tracking=Tracking(experiment='e'), "
     "run_policy=RunPolicy(backoff_limit=2))\nsweep = Sweep(name='s', job=job, space={'lr': Choice([0.1, 0.2])}, "
     "objective=Objective(metric='loss', goal='min'), trials=2)\n", ["--target", "trainjob"], {},
     "run_policy.backoff_limit: a TrainJob has no retry limit of its own"),
], ids=["refused-field", "refused-by-project-default", "bad-project-default", "bad-flag", "sweep-trial-refused"])
def test_render_refuses_and_writes_nothing(tmp_path, body, args, env, says):
    out = tmp_path / "out"
    result = _ferry("render", str(_job_file(tmp_path, body)), *args, "-o", str(out), env=env)
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.replace("│", " ").split())
    assert not out.exists()


def test_a_sweeps_trials_render_and_dry_run_as_trainjobs(tmp_path):
    file = _job_file(tmp_path, "job = TrainingJob(name='d', image='i:1', module='m', hyperparameters={'lr': 0.1}, "
                               "tracking=Tracking(experiment='e'))\nsweep = Sweep(name='s', job=job, space={'lr': "
                               "Choice([0.1, 0.2])}, objective=Objective(metric='loss', goal='min'), trials=2)\n")
    out = tmp_path / "out"
    rendered = _ferry("render", str(file), "--target", "trainjob", "-o", str(out))
    assert rendered.exit_code == 0, rendered.output
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.yaml"))
    assert files == ["s/trial-0/trainjob.yaml", "s/trial-1/trainjob.yaml"]
    for number, path in enumerate(files):
        doc = yaml.safe_load((out / path).read_text())
        assert doc["kind"] == "TrainJob" and doc["metadata"]["labels"]["ferry.dev/trial"] == str(number)
        env = _env(doc["spec"]["trainer"]["env"])
        assert (env["FERRY_SWEEP"], env["FERRY_TRIAL"]) == ("s", str(number))  # the trial's run nests under the sweep
        assert manifest_issues(doc) == []
    planned = _ferry("submit", str(file), "--no-code", "--dry-run", "client", env={"FERRY_TARGET": "trainjob"})
    assert planned.exit_code == 0, planned.output
    assert [d["kind"] for d in yaml.safe_load_all(planned.stdout) if d] == ["TrainJob", "TrainJob"]


# ---- a real API server with Trainer v2.3.0's CRDs --------------------------------------------------------
def _apply_strict(plane: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply that refuses unknown fields (kubectl apply --server-side --validate=strict)."""
    from tests._controlplane import object_path

    return plane.raw("PATCH", object_path(obj) + "?fieldManager=ferry&fieldValidation=Strict&force=true", obj,
                     content_type="application/apply-patch+yaml")


@pytest.fixture(scope="module")
def torch_runtime(control_plane):
    """Trainer's own torch-distributed ClusterTrainingRuntime, as its installation applies it."""
    runtime = yaml.safe_load(RUNTIME.read_text())
    _apply_strict(control_plane, runtime)
    yield runtime["metadata"]["name"]
    control_plane.raw("DELETE", f"/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/{runtime['metadata']['name']}")


def test_the_api_server_takes_the_trainjob_as_rendered(control_plane, namespace, torch_runtime):
    job = TrainingJob(**{**RICH, "namespace": namespace}, target="trainjob", runtime=torch_runtime)
    doc = render_trainjob(job)
    stored = _apply_strict(control_plane, doc)
    assert stored["spec"]["runtimeRef"]["name"] == torch_runtime
    for field in ("trainer", "runtimePatches", "activeDeadlineSeconds"):  # nothing pruned, nothing changed
        assert stored["spec"][field] == doc["spec"][field], field
    assert stored["metadata"]["labels"] == doc["metadata"]["labels"]
    # spec.trainer is immutable (CEL): a changed job is a new TrainJob, never an update of the old one
    changed = render_trainjob(job.replace(hyperparameters={"lr": 0.2}))
    from tests._controlplane import ApiError

    with pytest.raises(ApiError) as refused:
        _apply_strict(control_plane, changed)
    assert refused.value.code == 422 and "field is immutable" in str(refused.value)


def test_pod_security_admission_does_not_judge_a_trainjob_ferry_does(control_plane, namespace, torch_runtime):
    doc = render_trainjob(TrainingJob(**{**BASE, "namespace": namespace}, target="trainjob"))
    pod = _node_pod(doc)["spec"]
    pod["containers"][0]["securityContext"] = {"privileged": True}
    del pod["securityContext"]
    assert [i.path for i in manifest_issues(doc) if "Pod Security" in i.message]  # Ferry refuses it ...
    stored = _apply_strict(control_plane, copy.deepcopy(doc))  # ... the restricted namespace does not look
    assert _node_pod(stored)["spec"]["containers"][0]["securityContext"] == {"privileged": True}


@pytest.mark.parametrize("job_args, env", [
    ("target='trainjob'", {}),
    ("", {"FERRY_TARGET": "trainjob"}),
])
def test_a_client_dry_run_of_submit_prints_the_trainjob_of_the_submission(tmp_path, job_args, env):
    extra = f", {job_args}" if job_args else ""
    file = _job_file(tmp_path, f"job = TrainingJob(name='digits', image='i:1', module='jobs.digits.train'{extra})\n")
    result = _ferry("submit", str(file), "--no-code", "--dry-run", "client", env=env)
    assert result.exit_code == 0, result.output
    (doc,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert (doc["kind"], doc["metadata"]["name"]) == ("TrainJob", "digits")
    submission = doc["metadata"]["labels"][SUBMISSION_LABEL]
    assert f"dry run (client): submission {submission}; nothing sent" in result.stderr
    assert _node_pod(doc)["metadata"]["labels"][SUBMISSION_LABEL] == submission
    assert manifest_issues(doc) == []


def test_a_submission_labels_the_trainjob_and_the_pods_its_patch_makes():
    from ferry._submission import with_submission

    job = TrainingJob(name="digits", image="i:1", module="jobs.digits.train", target="trainjob")
    manifest = render_trainjob(job)
    labelled = with_submission(manifest, "20261203-091500-ab12")
    assert labelled["metadata"]["labels"][SUBMISSION_LABEL] == "20261203-091500-ab12"
    (patch,) = labelled["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["template"]["spec"]["template"]["metadata"]["labels"][SUBMISSION_LABEL] == "20261203-091500-ab12"
    assert manifest["metadata"]["labels"][SUBMISSION_LABEL] != "20261203-091500-ab12"  # the input is left as it was
    assert manifest_issues(labelled) == []


# ---- on this machine: the replicas as Kubeflow Trainer starts them ---------------------------------------
REPO = Path(__file__).resolve().parents[1]
JOB_BOTH = """from ferry import Resources, Tracking, TrainingJob

job = TrainingJob(name="digits-both", image="ghcr.io/ferry-ml/ferry-train:0.1.0-cpu", module="jobs.digits.train",
                  workers=2, resources=Resources(cpu="1", memory="1Gi"),
                  hyperparameters={"epochs": 1, "lr": 0.003, "batch_size": 64, "seed": 7},
                  tracking=Tracking(experiment="both", register_as="digits-both"))
"""


@pytest.mark.integration
def test_the_same_job_through_both_targets_gives_a_run_each_with_the_same_params_and_signature(tmp_path):
    """``ferry run --target trainjob`` starts each node as Kubeflow Trainer does: torchrun, given
    only the PET_* settings; ``--target pytorchjob`` as the training operator does."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    file = tmp_path / "job.py"
    file.write_text(JOB_BOTH)
    home = tmp_path / "home"
    env = {**os.environ, "FERRY_HOME": str(home), "MLFLOW_TRACKING_URI": "", "FERRY_TARGET": ""}
    ferry = str(Path(sys.executable).with_name("ferry"))
    for target in ("pytorchjob", "trainjob"):
        out = subprocess.run([ferry, "run", str(file), "--target", target], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"--target {target}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    logs = sorted((home / "runs" / "digits-both").rglob("*.log"))
    assert {log.name for log in logs} == {"master-0.log", "worker-0.log", "node-0.log", "node-1.log"}
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("both").experiment_id], order_by=["attributes.start_time"])
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    first, second = (run.data.params for run in runs)
    assert first == second and first["world_size"] == "2"
    from tests.conftest import scoped_tracking_uri

    with scoped_tracking_uri(f"sqlite:///{home / 'mlflow.db'}"):
        signatures = [get_model_info(f"models:/digits-both/{version}").signature.to_dict() for version in ("1", "2")]
    assert signatures[0] == signatures[1]
