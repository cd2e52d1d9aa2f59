"""The cluster commands against a real API server (etcd, kube-apiserver and the controller
manager of tests/_controlplane.py; RBAC, admission, server-side apply, pruning and garbage
collection are the real thing). Each test works in a namespace of its own; it plays the
training operator and the kubelet through the API (tests/_controllers.py), since neither runs
here. What a real server cannot be made to do on demand (429, 5xx, reset connections, logs of
pods that never run) is in tests/test_kube_emulated.py."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests._controllers import CREATED, RUNNING, SUCCEEDED, KServe, TrainingOperator, isvc_path, job_path
from tests._controlplane import ControlPlane, plain_kubeconfig
from tests._waiting import play
from tests.conftest import restored_environ

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "jobs" / "digits" / "job.py")
SWEEP = str(REPO / "jobs" / "digits" / "sweep.py")


@dataclass
class Kube:
    plane: ControlPlane
    ns: str
    kubeconfig: Path
    trainer: TrainingOperator
    tmp: Path

    def job(self, name: str = "digits", ns: str | None = None) -> dict:
        return self.plane.raw("GET", job_path(name, ns or self.ns))

    def get(self, path: str) -> dict:
        return self.plane.raw("GET", path)

    def exists(self, path: str) -> bool:
        return self.plane.exists(path)


@pytest.fixture
def kube(control_plane, namespace, tmp_path, monkeypatch) -> Kube:
    """The admin's kubeconfig, its context's namespace a fresh one enforcing Pod Security
    "restricted" (as the namespace a team trains in would)."""
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "kubeconfig", "admin", namespace=namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("FERRY_POLL_INTERVAL_S", "0.05")
    return Kube(control_plane, namespace, kubeconfig, TrainingOperator(control_plane, namespace), tmp_path)


def ferry(*args: str):
    """The command in this process, as in one of its own: what it writes into os.environ for
    its own requests (MLflow's HTTP settings, ...) ends with it, as it would with its process."""
    from ferry.cli import app

    with restored_environ():
        return CliRunner().invoke(app, list(args))


def submitted(kube: Kube, name: str = "digits") -> str:
    result = ferry("submit", DIGITS, "--tracking-uri", "http://mlflow.ml:5000")
    assert result.exit_code == 0, result.output
    return kube.job(name)["metadata"]["labels"]["ferry.dev/submission"]


def test_submit_is_a_server_side_apply_of_a_new_submission(kube, control_plane):
    result = ferry("submit", DIGITS, "--tracking-uri", "http://mlflow.ml:5000")
    assert result.exit_code == 0, result.output
    job = kube.job()  # the context's namespace: the job file names none
    submission = job["metadata"]["labels"]["ferry.dev/submission"]
    assert f"submission {submission}" in result.stdout
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert template["metadata"]["labels"]["ferry.dev/submission"] == submission
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert env["FERRY_NAMESPACE"] == kube.ns
    configmap = kube.get(f"/api/v1/namespaces/{kube.ns}/configmaps/ferry-mlflow")
    assert configmap["data"] == {"tracking-uri": "http://mlflow.ml:5000"}
    # the server records who applied what: field manager ferry, by server-side apply
    for obj in (job, configmap):
        assert [(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]] == [("ferry", "Apply")]
    writes = [e for e in control_plane.audit(namespace=kube.ns) if e["verb"] in ("patch", "create", "update")
              and e["user"]["username"] == "admin" and "fieldManager=ferry" in e["requestURI"]]
    assert writes and all("force=false" in e["requestURI"] for e in writes)
    # -n wins over the context; the job's env follows it
    other = control_plane.namespace()
    try:
        assert ferry("submit", DIGITS, "-n", other, "--tracking-uri", "http://m:5000").exit_code == 0
        assert kube.job("digits", other)["metadata"]["namespace"] == other
    finally:
        control_plane.delete_namespace(other)


def test_a_job_of_the_same_name_is_never_reused(kube, control_plane, tmp_path):
    first = submitted(kube)
    running = ferry("submit", DIGITS)
    assert running.exit_code == 4 and "still running" in running.output and "--replace" in running.output
    kube.trainer.set_status("digits", conditions=[CREATED, RUNNING, SUCCEEDED])
    finished = ferry("submit", DIGITS)
    assert finished.exit_code == 4 and "a finished job is never reused" in finished.output
    assert kube.job()["metadata"]["labels"]["ferry.dev/submission"] == first
    # a successor the API server refuses never costs the job it would replace: a user who may
    # read and delete jobs but not write them
    _grant(control_plane, kube.ns, "reader", [("kubeflow.org", "pytorchjobs", ["get", "list", "delete"]),
                                             ("", "configmaps", ["get"])])
    limited = control_plane.write_kubeconfig(tmp_path / "limited", "limited", namespace=kube.ns)
    refused = ferry("submit", DIGITS, "--replace", "--kubeconfig", str(limited))
    assert refused.exit_code == 5 and "deleting" not in refused.output, refused.output
    assert f"may not patch pytorchjobs.kubeflow.org in namespace '{kube.ns}'" in refused.stderr
    assert kube.job()["metadata"]["labels"]["ferry.dev/submission"] == first
    replaced = ferry("submit", DIGITS, "--replace")
    assert replaced.exit_code == 0, replaced.output
    second = kube.job()["metadata"]["labels"]["ferry.dev/submission"]
    assert second != first and f"replaced {first}" in replaced.stdout
    assert "status" not in kube.job()  # a fresh object, not the finished one patched
    deletes = [e for e in control_plane.audit(namespace=kube.ns)
               if e["verb"] == "delete" and (e.get("objectRef") or {}).get("resource") == "pytorchjobs"]
    assert [e["responseStatus"]["code"] for e in deletes] == [200]


def test_apply_twice_is_one_object_and_no_conflict(kube):
    from ferry.kube import PYTORCHJOB, Cluster, plan_submission
    from ferry.spec import load_specs

    job = load_specs([DIGITS])[0].spec
    _, manifest = plan_submission(job, "20261128-000000-abcd")
    manifest["metadata"]["namespace"] = kube.ns
    with Cluster.connect() as cluster:
        first = cluster.apply(manifest)
        second = cluster.apply(manifest)
        assert first["metadata"]["uid"] == second["metadata"]["uid"]
        assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]  # nothing changed
        assert len(cluster.list(PYTORCHJOB, kube.ns)) == 1


def test_dry_runs_store_nothing(kube, control_plane, tmp_path):
    server = ferry("submit", DIGITS, "--dry-run", "server", "--tracking-uri", "http://m:5000")
    assert server.exit_code == 0, server.output
    assert "nothing was stored" in server.stdout
    assert not kube.exists(job_path("digits", kube.ns))
    assert not kube.exists(f"/api/v1/namespaces/{kube.ns}/configmaps/ferry-mlflow")
    writes = [e for e in control_plane.audit(namespace=kube.ns, user="admin") if e["verb"] in ("patch", "create")]
    assert writes and all("dryRun=All" in e["requestURI"] for e in writes), [e["requestURI"] for e in writes]
    # a client dry run sends nothing: against a cluster that is not there, it still succeeds
    from ferry.local import free_port

    nowhere = control_plane.write_kubeconfig(tmp_path / "nowhere", "admin", namespace=kube.ns)
    nowhere.write_text(nowhere.read_text().replace(control_plane.server, f"https://127.0.0.1:{free_port()}"))
    client = ferry("submit", DIGITS, "--dry-run", "client", "--tracking-uri", "http://m:5000",
                   "--kubeconfig", str(nowhere))
    assert client.exit_code == 0, client.output
    assert "kind: PyTorchJob" in client.stdout and "kind: ConfigMap" in client.stdout
    # a Sweep's trials, judged by the API server one by one: none stored
    sweep = ferry("submit", SWEEP, "--dry-run", "server", "--tracking-uri", "http://m:5000", "--set", "epochs=1")
    assert sweep.exit_code == 0, sweep.output
    assert all(f"accepted (dry run, server): PyTorchJob {kube.ns}/digits-lr-t{n}" in sweep.stderr for n in range(4)), sweep.stderr
    assert "nothing was stored" in sweep.stdout
    assert not kube.exists(job_path("digits-lr-t0", kube.ns))


def test_wait_follows_the_conditions_to_success(kube):
    trainer = kube.trainer

    def created():
        trainer.set_status("digits", conditions=[CREATED])

    def running():
        trainer.add_pod("digits", "master", 0)
        trainer.add_pod("digits", "worker", 0)
        trainer.set_status("digits", conditions=[CREATED, RUNNING],
                           replicas={"Master": {"active": 1}, "Worker": {"active": 1}})

    def succeeded():
        trainer.set_status("digits", conditions=[CREATED, RUNNING, SUCCEEDED],
                           replicas={"Master": {"succeeded": 1}, "Worker": {"succeeded": 1}})

    thread = play([created, running, succeeded], after=lambda: kube.exists(job_path("digits", kube.ns)),
                  what="the job exists")
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--wait", "--timeout", "60")
    thread.join()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    phases = [line.split(": ")[1].split(" ")[0] for line in lines if line.startswith("digits: ")]
    assert phases[0] == "Pending" and "Running" in phases and phases[-1] == "Succeeded"
    assert "master 1 active, 0 succeeded, 0 failed; worker 1 active" in result.stdout
    assert "digits succeeded" in result.stdout
    # with -o json the progress goes to stderr and the final state alone to stdout
    waited = ferry("status", "digits", "--wait", "-o", "json")
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["phase"] == "Succeeded" and "digits succeeded" in waited.stderr


def test_wait_times_out_with_its_own_code(kube):
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--wait", "--timeout", "0.3")
    assert result.exit_code == 124, result.output
    assert "still Pending after 0.3 s" in result.output and "ferry status digits" in result.output


def test_status_list_and_delete_through_the_garbage_collector(kube, control_plane):
    submitted(kube)
    kube.trainer.add_pod("digits", "master", 0, restarts=1, last_exit_code=137)
    kube.trainer.add_pod("digits", "worker", 0)
    kube.trainer.set_status("digits", conditions=[CREATED, RUNNING],
                            replicas={"Master": {"active": 1}, "Worker": {"active": 1}})
    # a PyTorchJob Ferry did not submit is not listed
    control_plane.raw("POST", f"/apis/kubeflow.org/v1/namespaces/{kube.ns}/pytorchjobs", {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "other"},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "pytorch", "image": "x"}]}}}}}})

    status = ferry("status", "digits")
    assert status.exit_code == 0, status.output
    assert "Running" in status.stdout and "restarts 1" in status.stdout and "digits-worker-0" in status.stdout
    listed = ferry("list")
    assert listed.exit_code == 0 and "digits" in listed.stdout and "other" not in listed.stdout
    everywhere = ferry("list", "-A")
    assert everywhere.exit_code == 0 and kube.ns in everywhere.stdout
    # for scripts: the same as objects, on stdout alone
    for output, parse in [("json", json.loads), ("yaml", yaml.safe_load)]:
        as_list = ferry("list", "-o", output)
        assert as_list.exit_code == 0, as_list.output
        (job,) = parse(as_list.stdout)
        assert list(job) == ["name", "namespace", "kind", "submission", "phase", "reason", "message", "created",
                             "finished"]
        assert (job["name"], job["namespace"], job["kind"], job["phase"]) == ("digits", kube.ns, "PyTorchJob", "Running")
        as_status = ferry("status", "digits", "--output", output)
        assert as_status.exit_code == 0, as_status.output
        state = parse(as_status.stdout)
        assert list(state) == [*job, "restarts", "replicas", "pods", "progress"] and state["progress"] is None
        assert {k: state[k] for k in job} == job and state["restarts"] == 1
        assert state["replicas"] == {"Master": {"active": 1, "succeeded": 0, "failed": 0},
                                     "Worker": {"active": 1, "succeeded": 0, "failed": 0}}
        assert [(p["replica"], p["name"], p["restarts"]) for p in state["pods"]] == [
            ("master-0", "digits-master-0", 1), ("worker-0", "digits-worker-0", 0)]
        assert list(state["pods"][0]) == ["replica", "name", "phase", "restarts", "node"]

    # Foreground deletion: the job stays, with the garbage collector's finalizer, until its pods
    # are gone; then it goes too.
    started = time.monotonic()
    deleted = ferry("delete", "digits", "--wait")
    assert deleted.exit_code == 0, deleted.output
    assert time.monotonic() - started < 60
    assert not kube.exists(f"/api/v1/namespaces/{kube.ns}/pods/digits-master-0")
    gone = ferry("status", "digits")
    assert gone.exit_code == 3 and f"no PyTorchJob or TrainJob 'digits' in namespace '{kube.ns}'" in gone.output


def test_deploy_apply_and_status(kube, control_plane, registry, monkeypatch):
    uri, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tiny = kube.tmp / "deploy.py"
    tiny.write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@champion')\n")
    for _ in range(2):  # the second apply changes nothing and conflicts with nothing
        result = ferry("deploy", str(tiny), "--apply")
        assert result.exit_code == 0, result.output
    assert "applied: ClusterServingRuntime ferry" in result.stderr
    assert "applied: ClusterStorageContainer ferry" in result.stderr
    assert f"applied: InferenceService {kube.ns}/tiny" in result.stderr
    isvc = kube.get(isvc_path("tiny", kube.ns))
    assert isvc["metadata"]["annotations"]["ferry.dev/model-version"] == "2"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "models:/tiny/2"  # pinned, never the alias
    KServe(control_plane, kube.ns).ready("tiny", f"http://tiny.{kube.ns}.example.com")
    status = ferry("deploy", "--status", "tiny")
    assert status.exit_code == 0, status.output
    assert "Ready" in status.stdout and f"http://tiny.{kube.ns}.example.com" in status.stdout
    assert "tiny v2" in status.stdout
    as_json = ferry("deploy", "--status", "tiny", "--output", "json")
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert list(doc) == ["name", "namespace", "ready", "url", "model", "model_version", "conditions", "traffic"]
    assert (doc["name"], doc["namespace"], doc["ready"], doc["url"], doc["model"], doc["model_version"]) == (
        "tiny", kube.ns, True, f"http://tiny.{kube.ns}.example.com", "tiny", "2")
    assert all(list(c) == ["type", "status", "reason", "message"] for c in doc["conditions"]) and doc["conditions"]
    assert all(list(t) == ["revision", "percent", "latest"] for t in doc["traffic"])
    assert yaml.safe_load(ferry("deploy", "--status", "tiny", "--output", "yaml").stdout) == doc
    other = control_plane.namespace()
    try:
        dry = ferry("deploy", str(tiny), "--apply", "--dry-run", "server", "-n", other, "--no-runtime")
        assert dry.exit_code == 0 and f"accepted (dry run, server): InferenceService {other}/tiny" in dry.stderr
        assert "ClusterServingRuntime" not in dry.stderr  # the chart's to manage: no cluster-wide write
        assert not kube.exists(isvc_path("tiny", other))
    finally:
        control_plane.delete_namespace(other)


STORAGE_CONTAINERS = "/apis/serving.kserve.io/v1alpha1/clusterstoragecontainers"


# KServe's own default storage initializer (config/storagecontainers/default.yaml, v0.20.0): the
# formats it fetches, none of them models:/.
KSERVE_DEFAULT_STORAGE_CONTAINER = {
    "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterStorageContainer", "metadata": {"name": "default"},
    "spec": {"container": {"name": "storage-initializer", "image": "kserve/storage-initializer:v0.20.0"},
             "supportedUriFormats": [{"prefix": p} for p in ("gs://", "s3://", "hdfs://", "hf://", "webhdfs://")]
             + [{"regex": r} for r in ("https://(.+?).blob.core.windows.net/(.+)", "https://(.+?).file.core.windows.net/(.+)",
                                       "https?://(.+)/(.+)")],
             "workloadType": "initContainer", "supportsMultiModelDownload": True}}


@contextlib.contextmanager
def no_storage_container_for_models(plane: ControlPlane) -> Iterator[None]:
    """The cluster as KServe installs it, without Ferry's storage initializer: every
    ClusterStorageContainer that fetches models:/ removed for the block, KServe's default one
    there; afterwards the cluster's own put back as they were."""
    from ferry.kube import serves_uri

    def fetching_models() -> list[dict]:
        return [c for c in plane.raw("GET", STORAGE_CONTAINERS)["items"] if serves_uri(c, "models:/x/1")]

    removed = fetching_models()
    for container in removed:
        plane.raw("DELETE", f"{STORAGE_CONTAINERS}/{container['metadata']['name']}")
    plane.raw("POST", STORAGE_CONTAINERS, KSERVE_DEFAULT_STORAGE_CONTAINER)
    try:
        yield
    finally:
        for container in [*fetching_models(), KSERVE_DEFAULT_STORAGE_CONTAINER]:
            plane.raw("DELETE", f"{STORAGE_CONTAINERS}/{container['metadata']['name']}")
        for container in removed:
            plane.raw("POST", STORAGE_CONTAINERS, {key: container[key] for key in ("apiVersion", "kind", "spec")} | {
                "metadata": {"name": container["metadata"]["name"], "labels": container["metadata"].get("labels") or {}}})


def test_deploy_refuses_a_model_no_storage_container_fetches_and_takes_it_once_one_does(kube, control_plane, registry,
                                                                                       monkeypatch):
    """KServe's default storage initializer does not know models:/: without Ferry's storage
    container the predictor pod would fail in its init container, after the apply succeeded.
    Deploy refuses before anything is written, naming the fix; once the storage container is
    installed (as a cluster without the chart installs it: `ferry runtime | kubectl apply`),
    the same command goes through."""
    uri, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tiny = kube.tmp / "deploy.py"
    tiny.write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@champion')\n")
    with no_storage_container_for_models(control_plane):
        refused = ferry("deploy", str(tiny), "--apply", "--no-runtime")
        assert refused.exit_code == 7, refused.output
        assert "no ClusterStorageContainer fetches models:/tiny/2" in refused.stderr
        assert "ferry runtime | kubectl apply --server-side -f -" in " ".join(refused.stderr.split())
        assert not kube.exists(isvc_path("tiny", kube.ns))  # nothing half-done

        printed = ferry("runtime")
        assert printed.exit_code == 0, printed.output
        control_plane.kubectl("apply", "--server-side", "-f", "-", input=printed.stdout)
        accepted = ferry("deploy", str(tiny), "--apply", "--no-runtime")
        assert accepted.exit_code == 0, accepted.output
        isvc = kube.get(isvc_path("tiny", kube.ns))
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == "models:/tiny/2"


# ---- errors as the API server gives them --------------------------------------------------------
def _grant(plane: ControlPlane, ns: str, name: str, rules: list[tuple[str, str, list[str]]],
           user: str = "limited") -> None:
    """A Role of ``rules`` (api group, resource, verbs) bound to ``user`` in ``ns``."""
    plane.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": name, "namespace": ns},
                 "rules": [{"apiGroups": [g], "resources": [r], "verbs": v} for g, r, v in rules]})
    plane.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": name, "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def test_a_missing_namespace_is_named(kube):
    result = ferry("submit", DIGITS, "-n", "no-such-namespace", "--tracking-uri", "http://m:5000")
    assert result.exit_code == 3, result.output
    assert "namespace 'no-such-namespace' does not exist" in result.stderr
    assert "kubectl create namespace no-such-namespace" in result.stderr


def test_a_field_another_manager_owns_is_a_conflict(kube, control_plane):
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "ferry-mlflow", "namespace": kube.ns},
                         "data": {"tracking-uri": "http://theirs:5000"}}, manager="helm")
    result = ferry("submit", DIGITS, "--tracking-uri", "http://mine:5000")
    assert result.exit_code == 4, result.output
    assert "conflict" in result.stderr and "helm" in result.stderr and "--force-conflicts" in result.stderr
    assert not kube.exists(job_path("digits", kube.ns))  # nothing half-applied
    cm = kube.get(f"/api/v1/namespaces/{kube.ns}/configmaps/ferry-mlflow")
    assert cm["data"]["tracking-uri"] == "http://theirs:5000"
    # the URI the ConfigMap already holds: nothing to apply to it, nothing to contend over
    same = ferry("submit", DIGITS, "--tracking-uri", "http://theirs:5000")
    assert same.exit_code == 0, same.output
    cm = kube.get(f"/api/v1/namespaces/{kube.ns}/configmaps/ferry-mlflow")
    assert [m["manager"] for m in cm["metadata"]["managedFields"]] == ["helm"]


def test_a_resourcequota_refusal_is_named_as_the_quota_not_as_rbac(kube, control_plane):
    """403 is also what the ResourceQuota admission answers: that says quota, not missing rights."""
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-training", "namespace": kube.ns},
             "spec": {"hard": {"count/pytorchjobs.kubeflow.org": "0"}}}
    control_plane.raw("POST", f"/api/v1/namespaces/{kube.ns}/resourcequotas", quota)
    control_plane.wait_for(lambda: (control_plane.raw("GET", f"/api/v1/namespaces/{kube.ns}/resourcequotas/no-training")
                                    .get("status") or {}).get("hard"), "the quota controller's first count")
    result = ferry("submit", DIGITS, "--tracking-uri", "http://mlflow.ml:5000")
    assert result.exit_code == 6, result.output
    assert "ResourceQuota refused PyTorchJob 'digits'" in result.stderr and "no-training" in result.stderr
    assert "ask a cluster admin for a Role" not in result.stderr
    assert not kube.exists(job_path("digits", kube.ns))


@pytest.mark.parametrize("spec,says", [
    # the CRD's schema (422 Invalid, its causes listed)
    ({"runPolicy": {"backoffLimit": 1}}, "spec.pytorchReplicaSpecs: Required value"),
    # a value of the wrong type: server-side apply cannot even build the typed object (the API
    # server answers 500 for it, but nothing about it is transient)
    ({"pytorchReplicaSpecs": {"Master": {"replicas": "one"}}},
     ".spec.pytorchReplicaSpecs.Master.replicas: expected numeric (int or float), got string"),
])
def test_an_invalid_object_is_refused_with_the_servers_reason(kube, spec, says):
    from ferry.errors import Rejected
    from ferry.kube import Cluster

    bad = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "bad", "namespace": kube.ns},
           "spec": spec}
    with Cluster.connect() as cluster, pytest.raises(Rejected) as caught:
        cluster.apply(bad)
    assert says in str(caught.value)
    assert caught.value.exit_code == 6
    assert not kube.exists(job_path("bad", kube.ns))


def test_rejected_credentials_say_log_in_again(kube, control_plane, tmp_path):
    wrong = control_plane.write_kubeconfig(tmp_path / "wrong", "intruder", namespace=kube.ns, token="not-a-token")
    result = ferry("status", "digits", "--kubeconfig", str(wrong))
    assert result.exit_code == 8, result.output
    assert "refused the credentials" in result.stderr and "log in again" in result.stderr


@pytest.fixture(scope="module")
def bare_control_plane(tmp_path_factory):
    """A second control plane with no CRD installed: a cluster without the training operator
    or KServe."""
    from tests import _controlplane

    bin_dir = _controlplane.assets()
    if bin_dir is None:
        pytest.skip(_controlplane.skip_reason())
    with _controlplane.started(bin_dir, tmp_path_factory.mktemp("bare-control-plane")) as plane:
        yield plane


@pytest.mark.parametrize("command,says", [
    (["submit", DIGITS, "--tracking-uri", "http://m:5000"], "install the Kubeflow training operator"),
    (["status", "digits"], "neither PyTorchJob nor TrainJob is installed in this cluster: install the Kubeflow "
                           "training operator"),
    (["deploy", "--status", "tiny"], "InferenceService (serving.kserve.io/v1beta1) is not installed in this "
                                     "cluster: install KServe"),
])
def test_missing_crds_say_what_to_install(bare_control_plane, tmp_path, monkeypatch, command, says):
    monkeypatch.setenv("KUBECONFIG", str(bare_control_plane.write_kubeconfig(tmp_path / "kubeconfig", "admin",
                                                                             namespace="default")))
    result = ferry(*command)
    assert result.exit_code == 7, result.output
    assert says in result.stderr


def test_missing_tracking_configmap_is_named(kube, control_plane):
    result = ferry("submit", DIGITS)
    assert result.exit_code == 3, result.output
    said = " ".join(result.stderr.split())
    assert f"ConfigMap 'ferry-mlflow' (key 'tracking-uri') is missing in namespace '{kube.ns}'" in said
    # the Helm chart's value that creates it there (helm/ferry/values.yaml), and the other way
    assert f"add {kube.ns} to the Helm chart's value tracking.extraNamespaces" in said and "helm upgrade" in said
    assert "--tracking-uri" in said
    assert not kube.exists(job_path("digits", kube.ns))  # nothing half-applied
    cm_path = f"/api/v1/namespaces/{kube.ns}/configmaps"
    control_plane.raw("POST", cm_path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ferry-mlflow"},
                                        "data": {"uri": "http://x"}})
    result = ferry("submit", DIGITS)
    assert result.exit_code == 3 and "ConfigMap 'ferry-mlflow' has no key 'tracking-uri'" in result.stderr
    control_plane.raw("PATCH", f"{cm_path}/ferry-mlflow", {"data": {"tracking-uri": "http://x"}})
    assert ferry("submit", DIGITS).exit_code == 0  # the chart's ConfigMap is used as it is
    managers = {m["manager"] for m in kube.get(f"{cm_path}/ferry-mlflow")["metadata"]["managedFields"]}
    assert "ferry" not in managers


def test_the_chart_values_the_missing_configmap_names_are_the_charts():
    from ferry.kube._jobs import CHART_CONFIGMAP, CHART_KEY, chart_creates

    tracking = yaml.safe_load((REPO / "helm/ferry/values.yaml").read_text())["tracking"]
    assert (tracking["configMapName"], tracking["key"], tracking["extraNamespaces"]) == (CHART_CONFIGMAP, CHART_KEY, [])
    template = (REPO / "helm/ferry/templates/mlflow/tracking-configmap.yaml").read_text()
    assert ".Values.tracking.extraNamespaces" in template and ".Values.tracking.configMapName" in template
    assert "tracking.configMapName=mine and tracking.key=uri" in chart_creates("mine", "uri", "team-a")


def test_bad_options_are_refused_before_any_request(kube, control_plane):
    before = len(control_plane.audit(namespace=kube.ns, user="admin"))
    for argv, says in [(["--dry-run", "maybe"], "'maybe' is not one of 'client', 'server'"),
                       (["--wait", "--timeout", "0"], "must be more than 0 seconds"),
                       (["--set", "nope=1"], "has no hyperparameter 'nope'")]:
        result = ferry("submit", DIGITS, *argv)
        assert result.exit_code == 2, (argv, result.output)
        assert says in " ".join(result.output.replace("│", " ").split())
    assert len(control_plane.audit(namespace=kube.ns, user="admin")) == before


def test_the_console_script_speaks_to_the_cluster(kube, ferry_cli):
    env = {"KUBECONFIG": str(kube.kubeconfig)}
    result = ferry_cli("submit", DIGITS, "--dry-run=server", "--tracking-uri", "http://m:5000", env=env)
    assert result.returncode == 0, result.stderr
    assert f"accepted (dry run, server): PyTorchJob {kube.ns}/digits" in result.stderr
    missing = ferry_cli("status", "digits", env=env)
    assert missing.returncode == 3
    assert missing.stderr.startswith(f"error: no PyTorchJob or TrainJob 'digits' in namespace '{kube.ns}'")


# ---- without a server ----------------------------------------------------------------------------
def test_no_usable_cluster(tmp_path, monkeypatch):
    from ferry.local import free_port

    closed = plain_kubeconfig(tmp_path / "closed", f"http://127.0.0.1:{free_port()}")
    garbage = tmp_path / "garbage"
    garbage.write_text("this: [is not a kubeconfig")
    cases = [
        (["status", "digits", "--kubeconfig", str(closed)], "cannot reach the Kubernetes API at http://127.0.0.1:"),
        (["status", "digits", "--kubeconfig", str(tmp_path / "absent")], "does not exist"),
        (["status", "digits", "--kubeconfig", str(garbage)], "cannot be read"),
        (["status", "digits", "--kubeconfig", str(closed), "--context", "prod"], "has no context 'prod' (it has: c)"),
    ]
    for argv, says in cases:
        result = ferry(*argv)
        assert result.exit_code == 8, (argv, result.output)
        assert says in result.stderr and "Traceback" not in result.output, (argv, result.stderr)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = ferry("list")
    assert result.exit_code == 8 and "no cluster configured" in result.stderr


def test_our_names_are_the_training_operators():
    from kubeflow.training.constants import constants as kf

    from ferry.kube import _kinds as ours

    assert (ours.JOB_NAME_LABEL, ours.REPLICA_TYPE_LABEL, ours.REPLICA_INDEX_LABEL) == (
        kf.JOB_NAME_LABEL, kf.REPLICA_TYPE_LABEL, kf.REPLICA_INDEX_LABEL)
    assert (ours.PYTORCHJOB.group, ours.PYTORCHJOB.version, ours.PYTORCHJOB.plural, ours.PYTORCHJOB.kind) == (
        kf.GROUP, kf.VERSION, kf.PYTORCHJOB_PLURAL, kf.PYTORCHJOB_KIND)
    assert ours.PYTORCHJOB_CONTAINER == kf.PYTORCHJOB_CONTAINER
    assert {ours.CREATED, ours.RUNNING, ours.RESTARTING, ours.SUCCEEDED, ours.FAILED} == kf.JOB_CONDITIONS


def _cond(type_: str, status: str = "True") -> dict:
    return {"type": type_, "status": status, "reason": f"PyTorchJob{type_}", "message": f"{type_} message"}


@pytest.mark.parametrize("conditions,phase", [
    ([], "Pending"),
    ([_cond("Created")], "Created"),
    ([_cond("Created"), _cond("Running")], "Running"),
    ([_cond("Created"), _cond("Running", "False"), _cond("Restarting")], "Restarting"),
    ([_cond("Created"), _cond("Restarting", "False"), _cond("Running")], "Running"),
    ([_cond("Created"), _cond("Running", "False"), _cond("Succeeded")], "Succeeded"),
    ([_cond("Created"), _cond("Running", "False"), _cond("Failed")], "Failed"),
])
def test_the_phase_is_the_conditions_meaning(conditions, phase):
    from ferry.kube import JobState

    state = JobState.of({"metadata": {"name": "j", "namespace": "n"}, "status": {"conditions": conditions}},
                        [{"status": {"containerStatuses": [{"restartCount": 2}, {"restartCount": 1}]}}])
    assert state.phase == phase and state.restarts == 3
    assert state.finished == (phase in ("Succeeded", "Failed"))
    assert state.message == (f"{phase} message" if conditions else "")


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59, "59s"), (75, "1m15s"), (900, "15m"), (3 * 3600 + 720, "3h12m"),
                                          (2 * 86400 + 5 * 3600, "2d5h")])
def test_ages_read_like_kubectl(seconds, text):
    from ferry.kube._jobs import _duration

    assert _duration(seconds) == text
