"""The RBAC a person or CI account needs (manifests/rbac/ferry-user.yaml, the table in docs/cli.md),
proved on the real control plane: bound to a user with no other rights, every cluster command
works; without it, each command exits 5 and names the verb, the resource and the namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests._controllers import KServe, Trainer, TrainingOperator, torch_runtime

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "jobs" / "digits" / "job.py")
ROLE_FILE = REPO / "manifests" / "rbac" / "ferry-user.yaml"


def ferry(*args: str):
    from ferry.cli import app

    return CliRunner().invoke(app, list(args))


def _documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(ROLE_FILE.read_text()) if d]


def _grants(doc: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in doc["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _readme_grants() -> set[tuple[str, str, str]]:
    """The RBAC table of docs/cli.md, as (api group, resource, verb)."""
    text = (REPO / "docs" / "cli.md").read_text()
    table = text[text.index("| API group", text.index("**RBAC.**")):]
    table = table[:table.index("\n\n")]
    grants = set()
    for line in table.splitlines()[2:]:
        group, resources, verbs = [c.strip() for c in line.strip("|").split("|")][:3]
        group = group.strip("`").replace('""', "")
        names = re.findall(r"`([^`]+)`", resources)
        verb_sets = [re.findall(r"`(\w+)`", part) for part in verbs.split(" / ")]
        for i, name in enumerate(names):
            for verb in verb_sets[min(i, len(verb_sets) - 1)]:
                grants.add((group, name, verb))
    return grants


def test_the_shipped_role_is_the_readmes_table_and_has_no_wildcards():
    grants = set().union(*(_grants(d) for d in _documents()))
    assert grants == _readme_grants()
    assert not any("*" in part for grant in grants for part in grant)
    assert {d["kind"] for d in _documents()} == {"Role", "ClusterRole"}


@pytest.fixture
def as_limited(control_plane, namespace, tmp_path, monkeypatch):
    """The user with no rights, its kubeconfig the one every command uses; the test's tracking
    ConfigMap made by the admin (as the chart would)."""
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "kubeconfig", "limited", namespace=namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("FERRY_POLL_INTERVAL_S", "0.05")
    return namespace


def _bind(plane, ns: str) -> None:
    role = next(d for d in _documents() if d["kind"] == "Role")
    plane.apply({**role, "metadata": {**role["metadata"], "namespace": ns}})
    plane.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "ferry-user", "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry-user"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "limited"}]})
    for cluster_role in (d for d in _documents() if d["kind"] == "ClusterRole"):
        name = cluster_role["metadata"]["name"]
        plane.apply(cluster_role)
        plane.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                     "metadata": {"name": f"{name}-{ns}"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "limited"}]})


def _unbind(plane, ns: str) -> None:
    for cluster_role in (d for d in _documents() if d["kind"] == "ClusterRole"):
        plane.raw("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{cluster_role['metadata']['name']}-{ns}")


def test_with_the_role_every_command_works(control_plane, as_limited, registry, tmp_path, monkeypatch):
    ns = as_limited
    _bind(control_plane, ns)
    uri, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    trainer = TrainingOperator(control_plane, ns)
    try:
        dry = ferry("submit", DIGITS, "--dry-run", "server", "--tracking-uri", "http://mlflow.ferry:5000")
        assert dry.exit_code == 0, dry.output
        with_uri = ferry("submit", DIGITS, "--tracking-uri", "http://mlflow.ferry:5000")
        assert with_uri.exit_code == 0, with_uri.output
        replaced = ferry("submit", DIGITS, "--replace")  # the ConfigMap as it is
        assert replaced.exit_code == 0, replaced.output
        trainer.add_pod("digits", "master", 0)
        trainer.set_status("digits", conditions=[("Created", "Created", "created"), ("Running", "Running", "up")],
                           replicas={"Master": {"active": 1}})
        for argv in (["status", "digits"], ["list"]):
            result = ferry(*argv)
            assert result.exit_code == 0, (argv, result.output)
        logs = ferry("logs", "digits")  # the pod never runs here: the API server answers that, not RBAC
        assert logs.exit_code != 5 and "forbidden" not in logs.output, logs.output
        deleted = ferry("delete", "digits", "--wait")
        assert deleted.exit_code == 0, deleted.output
        tiny = tmp_path / "deploy.py"
        tiny.write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@champion')\n")
        applied = ferry("deploy", str(tiny), "--apply")
        assert applied.exit_code == 0, applied.output
        KServe(control_plane, ns).ready("tiny", f"http://tiny.{ns}.example.com")
        status = ferry("deploy", "--status", "tiny")
        assert status.exit_code == 0 and "Ready" in status.stdout, status.output
        denied = [e for e in control_plane.audit(user="limited", namespace=ns) if e["responseStatus"]["code"] == 403]
        assert denied == []
    finally:
        _unbind(control_plane, ns)


def test_with_the_role_every_command_works_for_a_trainjob(control_plane, as_limited, tmp_path, monkeypatch):
    """The same commands for a job whose target is a Kubeflow Trainer TrainJob, the runtime
    check included: with the shipped roles, not one request is refused."""
    ns = as_limited
    _bind(control_plane, ns)
    monkeypatch.setenv("FERRY_TARGET", "trainjob")  # the cluster's default target
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.py").write_text("from ferry import Tracking, TrainingJob\n"
                                     "job = TrainingJob(name='digits', image='ghcr.io/acme/train:1', "
                                     "module='jobs.digits.train', tracking=Tracking(experiment='digits'))\n")
    trainer = Trainer(control_plane, ns)
    seen = len(control_plane.audit(user="limited"))
    try:
        with torch_runtime(control_plane):
            submitted = ferry("submit", "job.py", "--no-code", "--tracking-uri", "http://mlflow.ferry:5000")
            assert submitted.exit_code == 0, submitted.output
            replaced = ferry("submit", "job.py", "--no-code", "--replace")
            assert replaced.exit_code == 0, replaced.output
        trainer.add_pod("digits", 0)
        trainer.set_status("digits", active=1, ready=1, progress={"progressPercentage": 10})
        for argv in (["status", "digits"], ["list"], ["logs", "digits", "--tail", "5"]):
            result = ferry(*argv)
            assert result.exit_code != 5 and "forbidden" not in result.output, (argv, result.output)
        deleted = ferry("delete", "digits", "--wait")
        assert deleted.exit_code == 0 and "deleted TrainJob" in deleted.stdout, deleted.output
        mine = control_plane.audit(user="limited")[seen:]
        checks = [e for e in mine if "clustertrainingruntimes" in e["requestURI"]]
        assert len(checks) == 2 and {e["responseStatus"]["code"] for e in checks} == {200}  # looked up, found
        assert [e for e in mine if e["responseStatus"]["code"] == 403] == []
    finally:
        _unbind(control_plane, ns)


@pytest.mark.parametrize("argv,verb,resource", [
    (["submit", DIGITS], "get", "pytorchjobs.kubeflow.org"),
    (["status", "digits"], "get", "pytorchjobs.kubeflow.org"),
    (["list"], "list", "pytorchjobs.kubeflow.org"),
    (["logs", "digits"], "get", "pytorchjobs.kubeflow.org"),
    (["delete", "digits"], "get", "pytorchjobs.kubeflow.org"),  # which kind the name is comes first
    (["deploy", "--status", "tiny"], "get", "inferenceservices.serving.kserve.io"),
])
def test_without_the_role_each_command_names_what_it_may_not_do(as_limited, argv, verb, resource):
    result = ferry(*argv)
    assert result.exit_code == 5, result.output
    assert f"may not {verb} {resource} in namespace '{as_limited}'" in result.stderr, result.stderr
    assert "Traceback" not in result.output
