"""Validation against the CRD schemas Ferry ships, kubernetes-validate and Pod Security."""

from __future__ import annotations

import copy

import pytest

from ferry import Elastic, Resources, TrainingJob
from ferry.errors import ConfigError, ManifestInvalid
from ferry.render import render_pytorchjob
from ferry.validate import manifest_issues, validate_manifests

JOBS = {
    "cpu": TrainingJob(name="a", image="i", module="m", workers=3),
    "gpu-elastic": TrainingJob(name="b", image="i", module="m", workers=2, procs_per_worker=8,
                               resources=Resources(gpu=8), elastic=Elastic(min_workers=1, max_workers=4), queue="q"),
    "gang": TrainingJob(name="c", image="i", command=["python", "t.py"], gang={"min_available": 1}),
}


@pytest.mark.parametrize("key", list(JOBS))
def test_rendered_jobs_validate_against_the_real_crd(key, crd_dir):
    assert manifest_issues(render_pytorchjob(JOBS[key]), crd_dir) == []


def _mutate(path, value):
    def apply(doc):
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return doc
    return apply


MASTER = ["spec", "pytorchReplicaSpecs", "Master"]
CONTAINER = MASTER + ["template", "spec", "containers", 0]
BROKEN = [
    ("unknown-field", _mutate(["spec", "bogus"], 1), "$.spec", "unknown field(s) 'bogus'"),
    ("replicas-type", _mutate(MASTER + ["replicas"], "one"), "$.spec.pytorchReplicaSpecs.Master.replicas", "not of type 'integer'"),
    ("bad-quantity", _mutate(CONTAINER + ["resources", "limits", "memory"], "2 Gi"), "resources.limits.memory", "does not match"),
    ("nproc-int", _mutate(["spec", "nprocPerNode"], 2), "$.spec.nprocPerNode", "not of type 'string'"),
    ("escalation", _mutate(CONTAINER + ["securityContext", "allowPrivilegeEscalation"], True), "allowPrivilegeEscalation", "restricted"),
    ("root", _mutate(MASTER + ["template", "spec", "securityContext", "runAsUser"], 0), "securityContext.runAsUser", "root"),
    ("hostpath", _mutate(MASTER + ["template", "spec", "volumes"], [{"name": "h", "hostPath": {"path": "/"}}]), "volumes[0]", "hostPath"),
    ("bad-name", _mutate(["metadata", "name"], "Bad_Name"), "$.metadata.name", "DNS-1123"),
]


@pytest.mark.parametrize("mutate,path,message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_manifests_name_the_json_path(mutate, path, message, crd_dir):
    doc = mutate(copy.deepcopy(render_pytorchjob(JOBS["cpu"])))
    with pytest.raises(ManifestInvalid) as info:
        validate_manifests([("job.yaml", doc)], crd_dir)
    assert any(path in issue.path and message in issue.message for issue in info.value.issues), info.value.issues
    assert info.value.exit_code == 1


def test_builtin_kinds_use_kubernetes_validate():
    good = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}}
    assert manifest_issues(good, None) == []
    bad = {**good, "data": {"a": 1}}
    (issue,) = manifest_issues(bad, None)
    assert issue.path == "$.data.a"


def test_custom_resources_validate_against_the_packaged_crds_by_default():
    assert manifest_issues(render_pytorchjob(JOBS["cpu"])) == []
    broken = render_pytorchjob(JOBS["cpu"])
    broken["spec"]["nprocPerNode"] = 2  # a string in the CRD
    (issue,) = manifest_issues(broken)
    assert issue.path == "$.spec.nprocPerNode"


def test_a_missing_crd_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--crd-dir"):
        manifest_issues(render_pytorchjob(JOBS["cpu"]), tmp_path / "nowhere")


def test_unknown_custom_kind(crd_dir):
    (issue,) = manifest_issues({"apiVersion": "kubeflow.org/v1", "kind": "NoSuchJob", "metadata": {"name": "x"}}, crd_dir)
    assert "no CRD for kubeflow.org/v1 NoSuchJob" in issue.message
