"""TrainingJob → PyTorchJob: the operator's rules, security defaults, determinism."""

from __future__ import annotations

import json

import pytest

from ferry import Elastic, GangScheduling, PVCVolume, Resources, SecretRef, TrainingJob
from ferry.render import dump_yaml, render_pytorchjob
from ferry.validate import manifest_issues

BASE = dict(name="digits", image="ghcr.io/acme/train:1", module="jobs.digits.train")


def containers(doc, role):
    return doc["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("workers,expected", [(1, {"Master": 1}), (2, {"Master": 1, "Worker": 1}), (5, {"Master": 1, "Worker": 4})])
def test_one_master_plus_workers(workers, expected):
    doc = render_pytorchjob(TrainingJob(**BASE, workers=workers))
    specs = doc["spec"]["pytorchReplicaSpecs"]
    assert {role: s["replicas"] for role, s in specs.items()} == expected


def test_container_name_port_and_nproc_string():
    doc = render_pytorchjob(TrainingJob(**BASE, workers=2, procs_per_worker=4, resources=Resources(gpu=4)))
    assert doc["apiVersion"] == "kubeflow.org/v1" and doc["kind"] == "PyTorchJob"
    assert doc["spec"]["nprocPerNode"] == "4"
    for role in ("Master", "Worker"):
        (c,) = containers(doc, role)
        assert c["name"] == "pytorch"
        assert c["ports"] == [{"containerPort": 23456, "name": "pytorchjob-port", "protocol": "TCP"}]
        # several processes per pod: torchrun launches them from the operator's PET_* env
        assert c["command"][:5] == ["python", "-m", "torch.distributed.run", "--module", "jobs.digits.train"]


def test_gpu_requests_equal_limits():
    doc = render_pytorchjob(TrainingJob(**BASE, resources=Resources(cpu="8", memory="64Gi", gpu=2)))
    res = containers(doc, "Master")[0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "2"
    assert res["requests"]["memory"] == res["limits"]["memory"] == "64Gi"
    assert "cpu" not in res["limits"]  # CPU may burst


def test_restricted_security_and_shm():
    doc = render_pytorchjob(TrainingJob(**BASE, workers=2, shm_size="4Gi"))
    for role in ("Master", "Worker"):
        pod = doc["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = pod["containers"][0]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in pod["volumes"]
        assert {"mountPath": "/dev/shm", "name": "dshm"} in pod["containers"][0]["volumeMounts"]
    assert [i for i in manifest_issues(doc)] == []


def test_labels_on_job_and_pods():
    doc = render_pytorchjob(TrainingJob(**BASE, labels={"team": "vision"}))
    submission = doc["metadata"]["labels"]["ferry.dev/submission"]
    expected = {"app.kubernetes.io/managed-by": "ferry", "ferry.dev/job": "digits", "team": "vision",
                "ferry.dev/submission": submission}
    assert doc["metadata"]["labels"] == expected
    assert doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"] == expected


def test_a_rendered_manifest_names_its_submission_by_the_spec():
    """kubectl apply of a rendered manifest: the same spec is the same submission (rendering
    stays deterministic); any change to the spec is another one, with its own checkpoints."""
    def submission(**extra):
        return render_pytorchjob(TrainingJob(**{**BASE, **extra}))["metadata"]["labels"]["ferry.dev/submission"]

    assert submission() == submission() and submission().startswith("spec-")
    assert len({submission(), submission(hyperparameters={"lr": 0.01}), submission(image="i:2"), submission(workers=3)}) == 4
    env = render_pytorchjob(TrainingJob(**BASE))["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    (ref,) = [e for e in env if e["name"] == "FERRY_SUBMISSION_ID"]  # read from the pod's label, tracking or not
    assert ref["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['ferry.dev/submission']"
    spec = json.loads(next(e["value"] for e in env if e["name"] == "FERRY_JOB_SPEC"))
    assert TrainingJob.model_validate(spec) == TrainingJob(**BASE)  # the run re-renders this exact job


def test_with_submission_labels_job_and_every_pod():
    from ferry._submission import with_submission

    doc = render_pytorchjob(TrainingJob(**BASE, workers=3))
    labelled = with_submission(doc, "20261123-071502-a3f9")
    assert labelled["metadata"]["labels"]["ferry.dev/submission"] == "20261123-071502-a3f9"
    for replica in labelled["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["metadata"]["labels"]["ferry.dev/submission"] == "20261123-071502-a3f9"
    assert doc["metadata"]["labels"]["ferry.dev/submission"].startswith("spec-")  # the input is untouched


def test_env_secrets_by_reference_and_tracking():
    job = TrainingJob(
        **BASE,
        env={"NCCL_DEBUG": "WARN"},
        secret_env={"AWS_SECRET_ACCESS_KEY": SecretRef(name="s3", key="secret")},
        hyperparameters={"lr": 0.1, "epochs": 3},
        tracking={"experiment": "exp", "register_as": "digits-classifier"},
        checkpointing={"uri": "s3://bucket/ckpt", "every_steps": 10, "keep": 2},
    )
    env = env_of(containers(render_pytorchjob(job), "Master")[0])
    assert env["NCCL_DEBUG"] == "WARN"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"key": "secret", "name": "s3"}}
    assert env["MLFLOW_TRACKING_URI"] == {"configMapKeyRef": {"key": "tracking-uri", "name": "ferry-mlflow"}}
    assert env["MLFLOW_EXPERIMENT_NAME"] == "exp"
    assert env["FERRY_SUBMISSION_ID"] == {"fieldRef": {"fieldPath": "metadata.labels['ferry.dev/submission']"}}
    assert env["FERRY_REGISTER_AS"] == "digits-classifier"
    assert json.loads(env["FERRY_HYPERPARAMETERS"]) == {"epochs": 3, "lr": 0.1}
    assert (env["FERRY_CHECKPOINT_URI"], env["FERRY_CHECKPOINT_EVERY"], env["FERRY_CHECKPOINT_KEEP"]) == ("s3://bucket/ckpt", "10", "2")


def test_tracking_uri_from_secret():
    job = TrainingJob(**BASE, tracking={"uri_from": SecretRef(name="mlflow", key="uri")})
    env = env_of(containers(render_pytorchjob(job), "Master")[0])
    assert env["MLFLOW_TRACKING_URI"] == {"secretKeyRef": {"key": "uri", "name": "mlflow"}}


def test_elastic_is_a_worker_set_with_policy():
    job = TrainingJob(**BASE, workers=3, procs_per_worker=2, elastic=Elastic(min_workers=2, max_workers=4, max_restarts=5))
    doc = render_pytorchjob(job)
    assert list(doc["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert doc["spec"]["elasticPolicy"] == {"maxReplicas": 4, "maxRestarts": 5, "minReplicas": 2, "rdzvBackend": "c10d"}
    assert "nProcPerNode" not in doc["spec"]["elasticPolicy"]  # deprecated; nprocPerNode is used
    assert doc["spec"]["nprocPerNode"] == "2"


def test_kueue_queue_and_gang_scheduling():
    queued = render_pytorchjob(TrainingJob(**BASE, queue="team-a"))
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "schedulingPolicy" not in queued["spec"]["runPolicy"]
    gang = render_pytorchjob(TrainingJob(**BASE, workers=4, gang=GangScheduling(priority_class="high", queue="q")))
    assert gang["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 4, "priorityClass": "high", "queue": "q"}


def test_volumes_and_single_process_command():
    doc = render_pytorchjob(TrainingJob(**BASE, args=["--fast"], volumes=[PVCVolume(claim="data", mount_path="/data", read_only=True)]))
    c = containers(doc, "Master")[0]
    assert c["command"] == ["python", "-m", "jobs.digits.train", "--fast"]
    assert {"mountPath": "/data", "name": "pvc-data", "readOnly": True} in c["volumeMounts"]
    pod = doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert {"name": "pvc-data", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}} in pod["volumes"]


def test_rendering_is_deterministic():
    make = lambda: TrainingJob(**BASE, workers=3, hyperparameters={"b": 1, "a": 2}, env={"X": "1"})  # noqa: E731
    assert dump_yaml([render_pytorchjob(make())]) == dump_yaml([render_pytorchjob(make())])
    # hyperparameter order does not leak into the output
    other = TrainingJob(**BASE, workers=3, hyperparameters={"a": 2, "b": 1}, env={"X": "1"})
    assert dump_yaml([render_pytorchjob(other)]) == dump_yaml([render_pytorchjob(make())])
