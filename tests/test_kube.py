"""The cluster commands against a Kubernetes API on 127.0.0.1 (kmock's KubernetesEmulator,
see tests/_kube.py): the test moves each job's status as the training operator would, and
adds pods and log lines as the kubelet would."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests._kube import Kube

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "jobs" / "digits" / "job.py")
CREATED = ("Created", "PyTorchJobCreated", "PyTorchJob digits is created.")
RUNNING = ("Running", "PyTorchJobRunning", "PyTorchJob digits is running.")
SUCCEEDED = ("Succeeded", "PyTorchJobSucceeded", "PyTorchJob digits is successfully completed.")
FAILED = ("Failed", "PyTorchJobFailed", "PyTorchJob digits is failed because 1 Worker replica(s) failed.")


@pytest.fixture
def kube(tmp_path, monkeypatch):
    cluster = Kube(tmp_path).start()
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("FERRY_POLL_INTERVAL_S", "0.05")
    yield cluster
    cluster.stop()


def ferry(*args: str):
    from ferry.cli import app

    return CliRunner().invoke(app, list(args))


def submitted(kube: Kube, name: str = "digits", ns: str = "ml") -> str:
    result = ferry("submit", DIGITS, "--tracking-uri", "http://mlflow.ml:5000", "-n", ns)
    assert result.exit_code == 0, result.output
    return kube.job(name, ns)["metadata"]["labels"]["ferry.dev/submission"]


def test_submit_is_a_server_side_apply_of_a_new_submission(kube):
    result = ferry("submit", DIGITS, "--tracking-uri", "http://mlflow.ml:5000")
    assert result.exit_code == 0, result.output
    job = kube.job("digits")  # the context's namespace (ml): the job file names none
    submission = job["metadata"]["labels"]["ferry.dev/submission"]
    assert f"submission {submission}" in result.stdout
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert template["metadata"]["labels"]["ferry.dev/submission"] == submission
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert env["FERRY_NAMESPACE"] == "ml"
    configmap = kube.get("/api/v1/namespaces/ml/configmaps/ferry-mlflow")
    assert configmap["data"] == {"tracking-uri": "http://mlflow.ml:5000"}
    patches = [r for r in kube.api.requests if r.method.value == "PATCH"]
    assert {r.headers["Content-Type"] for r in patches} == {"application/apply-patch+yaml"}
    assert all(r.params["fieldManager"] == "ferry" and r.params["force"] == "false" for r in patches)
    # -n wins over the context; the job's env follows it
    assert ferry("submit", DIGITS, "-n", "default", "--tracking-uri", "http://m:5000").exit_code == 0
    assert kube.job("digits", "default")["metadata"]["namespace"] == "default"


def test_a_job_of_the_same_name_is_never_reused(kube):
    first = submitted(kube)
    running = ferry("submit", DIGITS, "-n", "ml")
    assert running.exit_code == 4 and "still running" in running.output and "--replace" in running.output
    kube.set_job_status("digits", conditions=[CREATED, RUNNING, SUCCEEDED])
    finished = ferry("submit", DIGITS, "-n", "ml")
    assert finished.exit_code == 4 and "a finished job is never reused" in finished.output
    assert kube.job("digits")["metadata"]["labels"]["ferry.dev/submission"] == first
    # a successor the API server refuses never costs the job it would replace
    kube.fault("PATCH", "/pytorchjobs/digits", 403, "Forbidden", 'User "bob" cannot patch resource "pytorchjobs"')
    refused = ferry("submit", DIGITS, "-n", "ml", "--replace")
    assert refused.exit_code == 5 and "deleting" not in refused.output
    assert kube.job("digits")["metadata"]["labels"]["ferry.dev/submission"] == first
    replaced = ferry("submit", DIGITS, "-n", "ml", "--replace")
    assert replaced.exit_code == 0, replaced.output
    second = kube.job("digits")["metadata"]["labels"]["ferry.dev/submission"]
    assert second != first and f"replaced {first}" in replaced.stdout
    assert "status" not in kube.job("digits")  # a fresh object, not the finished one patched
    assert any(r.method.value == "DELETE" and r.data["propagationPolicy"] == "Foreground" for r in kube.api.requests)


def test_apply_twice_is_one_object_and_no_conflict(kube):
    from ferry.kube import PYTORCHJOB, Cluster, plan_submission
    from ferry.spec import load_specs

    job = load_specs([DIGITS])[0].spec
    _, manifest = plan_submission(job, "20261128-000000-abcd")
    with Cluster.connect() as cluster:
        first = cluster.apply(manifest)
        second = cluster.apply(manifest)
        assert first["metadata"]["uid"] == second["metadata"]["uid"]
        assert len(cluster.list(PYTORCHJOB, "default")) == 1


def test_dry_runs_store_nothing(kube):
    server = ferry("submit", DIGITS, "--dry-run", "server", "--tracking-uri", "http://m:5000")
    assert server.exit_code == 0, server.output
    assert "nothing was stored" in server.stdout
    assert all(r.params.get("dryRun") == "All" for r in kube.api.requests if r.method.value == "PATCH")
    from urllib.error import HTTPError

    with pytest.raises(HTTPError):
        kube.job("digits")
    before = len(kube.api.requests)
    client = ferry("submit", DIGITS, "--dry-run", "client", "--tracking-uri", "http://m:5000")
    assert client.exit_code == 0 and "kind: PyTorchJob" in client.stdout and "kind: ConfigMap" in client.stdout
    assert len(kube.api.requests) == before  # no request at all


def _advance(kube: Kube, steps: list, delay: float = 0.15) -> threading.Thread:
    def run() -> None:
        for step in steps:
            time.sleep(delay)
            step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_follows_the_conditions_to_success(kube):
    def created():
        kube.set_job_status("digits", conditions=[CREATED])

    def running():
        kube.add_pod("digits", "master", 0)
        kube.add_pod("digits", "worker", 0)
        kube.set_job_status("digits", conditions=[CREATED, RUNNING],
                            replicas={"Master": {"active": 1}, "Worker": {"active": 1}})

    def succeeded():
        kube.set_job_status("digits", conditions=[CREATED, RUNNING, SUCCEEDED],
                            replicas={"Master": {"succeeded": 1}, "Worker": {"succeeded": 1}})

    thread = _advance(kube, [lambda: None, created, running, succeeded])
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--wait", "--timeout", "30")
    thread.join()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    phases = [line.split(": ")[1].split(" ")[0] for line in lines if line.startswith("digits: ")]
    assert phases[0] == "Pending" and "Running" in phases and phases[-1] == "Succeeded"
    assert "master 1 active, 0 succeeded, 0 failed; worker 1 active" in result.stdout
    assert "digits succeeded" in result.stdout


def test_wait_on_failure_shows_the_reason_and_the_failed_replica_log(kube):
    def failed():
        master = kube.add_pod("digits", "master", 0)
        worker = kube.add_pod("digits", "worker", 0, phase="Failed", exit_code=1)
        kube.log(master, "epoch 1 loss 0.9")
        kube.log(worker, *[f"line {i}" for i in range(30)], "RuntimeError: CUDA out of memory")
        kube.set_job_status("digits", conditions=[CREATED, RUNNING, FAILED],
                            replicas={"Master": {"active": 1}, "Worker": {"failed": 1}})

    thread = _advance(kube, [failed])
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--wait")
    thread.join()
    assert result.exit_code == 1, result.output
    assert "digits failed" in result.stderr and "1 Worker replica(s) failed" in result.stderr
    assert "[worker-0] RuntimeError: CUDA out of memory" in result.stderr
    assert "[worker-0] line 10" not in result.stderr and "[worker-0] line 11" in result.stderr  # the last 20
    assert "master-0" not in result.stderr  # only the failed replica


def test_wait_times_out_with_its_own_code(kube):
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--wait", "--timeout", "0.3")
    assert result.exit_code == 124, result.output
    assert "still Pending after 0.3 s" in result.output and "ferry status digits" in result.output


def test_follow_streams_every_replica_prefixed(kube):
    def start():
        master, worker = kube.add_pod("digits", "master", 0), kube.add_pod("digits", "worker", 0)
        kube.set_job_status("digits", conditions=[CREATED, RUNNING])
        kube.log(master, "master says 1")
        kube.log(worker, "worker says 1")

    def more():
        kube.log("digits-master-0", "master says 2")
        kube.log("digits-worker-0", "worker says 2")

    def end():
        for pod in ("digits-master-0", "digits-worker-0"):
            kube.end_log(pod)
        kube.set_job_status("digits", conditions=[CREATED, RUNNING, SUCCEEDED])

    thread = _advance(kube, [start, more, end], delay=0.3)
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--follow", "--timeout", "30")
    thread.join()
    assert result.exit_code == 0, result.output
    for line in ("[master-0] master says 1", "[master-0] master says 2", "[worker-0] worker says 1",
                 "[worker-0] worker says 2"):
        assert result.stdout.count(line) == 1, (line, result.stdout)


def test_status_list_logs_delete(kube):
    submitted(kube)
    master = kube.add_pod("digits", "master", 0, restarts=1, last_exit_code=137)
    worker = kube.add_pod("digits", "worker", 0)
    kube.set_job_status("digits", conditions=[CREATED, RUNNING], replicas={"Master": {"active": 1}, "Worker": {"active": 1}})
    kube.log(master, "resumed from checkpoint at step 40", "epoch 3")
    kube.log(master, "epoch 1", "epoch 2", "Killed", previous=True)
    kube.log(worker, "worker up")
    # a PyTorchJob Ferry did not submit is not listed
    kube.request("POST", "/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs",
                 {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "other", "namespace": "ml"}})

    status = ferry("status", "digits")
    assert status.exit_code == 0, status.output
    assert "Running" in status.stdout and "restarts 1" in status.stdout and "digits-worker-0" in status.stdout
    listed = ferry("list")
    assert listed.exit_code == 0 and "digits" in listed.stdout and "other" not in listed.stdout
    logs = ferry("logs", "digits")
    assert logs.stdout.splitlines() == ["[master-0] resumed from checkpoint at step 40", "[master-0] epoch 3",
                                        "[worker-0] worker up"]
    previous = ferry("logs", "digits", "--replica", "master-0", "--previous", "--tail", "1")
    assert previous.stdout.splitlines() == ["[master-0] Killed"]
    missing = ferry("logs", "digits", "--replica", "worker-5")
    assert missing.exit_code == 3 and "replicas: master-0, worker-0" in missing.output

    deleted = ferry("delete", "digits", "--wait")
    assert deleted.exit_code == 0, deleted.output
    gone = ferry("status", "digits")
    assert gone.exit_code == 3 and "PyTorchJob 'digits' in namespace 'ml' not found" in gone.output


def test_deploy_apply_and_status(kube, registry, monkeypatch):
    uri, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    deploy = REPO / "jobs" / "digits" / "deploy.py"
    tiny = kube.tmp / "deploy.py"
    tiny.write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@champion')\n")
    for _ in range(2):  # the second apply changes nothing and conflicts with nothing
        result = ferry("deploy", str(tiny), "--apply")
        assert result.exit_code == 0, result.output
    assert "applied: ClusterServingRuntime ferry" in result.stderr and "applied: InferenceService ml/tiny" in result.stderr
    isvc = kube.get("/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/tiny")
    assert isvc["metadata"]["annotations"]["ferry.dev/model-version"] == "2"
    kube.request("PATCH", "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/tiny/status", {"status": {
        "url": "http://tiny.ml.example.com", "conditions": [
            {"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}]}})
    status = ferry("deploy", "--status", "tiny")
    assert status.exit_code == 0, status.output
    assert "Ready" in status.stdout and "http://tiny.ml.example.com" in status.stdout and "tiny v2" in status.stdout
    dry = ferry("deploy", str(tiny), "--apply", "--dry-run", "server", "-n", "default", "--no-runtime")
    assert dry.exit_code == 0 and "accepted (dry run, server): InferenceService default/tiny" in dry.stderr
    assert "ClusterServingRuntime" not in dry.stderr  # the chart's to manage: no cluster-wide write
    assert deploy.is_file()


# ---- errors: each keeps its meaning, one clear message, its own exit code ----------------------
RBAC = 'pytorchjobs.kubeflow.org "digits" is forbidden: User "system:serviceaccount:ml:ci" cannot patch resource ' \
       '"pytorchjobs" in API group "kubeflow.org" in the namespace "ml"'
PSA = 'pods "digits-master-0" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false ' \
      '(container "pytorch" must set securityContext.allowPrivilegeEscalation=false), runAsNonRoot != true (pod or ' \
      'container "pytorch" must set securityContext.runAsNonRoot=true)'
CONFLICT = {"causes": [{"type": "FieldManagerConflict", "message": 'conflict with "kubectl-edit" using kubeflow.org/v1',
                        "field": ".spec.runPolicy.backoffLimit"}]}
INVALID = {"causes": [{"reason": "FieldValueInvalid", "message": "Invalid value: 0: must be greater than or equal to 1",
                       "field": "spec.pytorchReplicaSpecs.Master.replicas"}]}

ERRORS = [
    # (what the API server answers to the job's apply, exit code, what the message must say)
    ((403, "Forbidden", RBAC, None), 5, ["may not patch pytorchjobs.kubeflow.org in namespace 'ml'",
                                         "as system:serviceaccount:ml:ci"]),
    ((403, "Forbidden", PSA, None), 6, ["violates Pod Security restricted:latest",
                                        "  - allowPrivilegeEscalation != false (container",
                                        "  - runAsNonRoot != true (pod or container"]),
    ((404, "NotFound", 'namespaces "ml" not found', {"name": "ml", "kind": "namespaces"}), 3,
     ["namespace 'ml' does not exist", "kubectl create namespace ml"]),
    ((409, "Conflict", "Apply failed with 1 conflict", CONFLICT), 4,
     [".spec.runPolicy.backoffLimit: conflict with \"kubectl-edit\"", "--force-conflicts"]),
    ((422, "Invalid", 'PyTorchJob.kubeflow.org "digits" is invalid', INVALID), 6,
     ["spec.pytorchReplicaSpecs.Master.replicas: Invalid value: 0"]),
    ((400, "BadRequest", 'admission webhook "validator.kueue.x-k8s.io" denied the request: queue missing', None), 6,
     ["admission denied", "queue missing"]),
    ((401, "Unauthorized", "Unauthorized", None), 8, ["refused the credentials", "log in again"]),
    ((500, "InternalError", "etcdserver: request timed out", None, 99), 9, ["failed to patch", "etcdserver"]),
]


@pytest.mark.parametrize("answer,code,says", ERRORS, ids=[f"{e[0][0]}-{e[0][1]}-{e[1]}" for e in ERRORS])
def test_api_errors_keep_their_meaning(kube, answer, code, says, monkeypatch):
    monkeypatch.setattr("ferry.kube._client.Retry.delay", lambda self, attempt, retry_after=None: 0.01)
    status, reason, message, details, *times = answer
    kube.fault("PATCH", "/pytorchjobs/digits", status, reason, message, details=details, times=times[0] if times else 1)
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000")
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in says:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.mark.parametrize("status,headers", [(429, {"Retry-After": "0"}), (503, {}), (502, {})])
def test_transient_errors_are_retried(kube, status, headers, monkeypatch):
    monkeypatch.setattr("ferry.kube._client.Retry.delay",
                        lambda self, attempt, retry_after=None: 0.01 if retry_after is None else float(retry_after))
    kube.fault("PATCH", "/pytorchjobs/digits", status, "TooManyRequests", "slow down", times=2, headers=headers)
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000")
    assert result.exit_code == 0, result.output
    tries = [r for r in kube.api.requests if r.method.value == "PATCH" and "/pytorchjobs/" in r.url.path]
    assert len(tries) == 4  # two refused, then the dry run and the apply


def test_retries_are_bounded(kube):
    from ferry.errors import ClusterError
    from ferry.kube import PYTORCHJOB, Cluster, Retry

    kube.fault("GET", "/pytorchjobs/digits", 503, "ServiceUnavailable", "overloaded", times=99)
    with Cluster.connect(retry=Retry(attempts=3, base_s=0.01)) as cluster, pytest.raises(ClusterError, match="overloaded"):
        cluster.get(PYTORCHJOB, "digits")
    assert len([r for r in kube.api.requests if r.method.value == "GET"]) == 3


@pytest.mark.parametrize("installed,command,says", [
    (("configmaps", "pods"), ["submit", DIGITS, "--tracking-uri", "http://m:5000"], "install the Kubeflow training operator"),
    (("configmaps", "pods"), ["status", "digits"], "PyTorchJob (kubeflow.org/v1) is not installed"),
    (("pytorchjobs", "configmaps", "pods", "clusterservingruntimes"), ["deploy", "--status", "tiny"],
     "InferenceService (serving.kserve.io/v1beta1) is not installed in this cluster: install KServe"),
])
def test_missing_crds_say_what_to_install(tmp_path, monkeypatch, installed, command, says):
    cluster = Kube(tmp_path, installed=installed).start()
    try:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        result = ferry(*command)
        assert result.exit_code == 7, result.output
        assert says in result.stderr
    finally:
        cluster.stop()


def _kubeconfig(path: Path, server: str, contexts: tuple[str, ...] = ("c",)) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
        "clusters": [{"name": "k", "cluster": {"server": server}}], "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": c, "context": {"cluster": "k", "user": "u"}} for c in contexts]}))
    return path


def test_no_usable_cluster(tmp_path, monkeypatch):
    from ferry.local import free_port

    closed = _kubeconfig(tmp_path / "closed", f"http://127.0.0.1:{free_port()}")
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


def test_missing_tracking_configmap_is_named(kube):
    result = ferry("submit", DIGITS)
    assert result.exit_code == 3, result.output
    assert "ConfigMap 'ferry-mlflow' (key 'tracking-uri') is missing in namespace 'ml'" in result.stderr
    assert "--tracking-uri" in result.stderr
    assert not [r for r in kube.api.requests if r.method.value == "PATCH"]  # nothing half-applied
    kube.request("POST", "/api/v1/namespaces/ml/configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "ferry-mlflow", "namespace": "ml"}, "data": {"uri": "http://x"}})
    result = ferry("submit", DIGITS)
    assert result.exit_code == 3 and "ConfigMap 'ferry-mlflow' has no key 'tracking-uri'" in result.stderr
    kube.request("PATCH", "/api/v1/namespaces/ml/configmaps/ferry-mlflow", {"data": {"tracking-uri": "http://x"}})
    assert ferry("submit", DIGITS).exit_code == 0  # the chart's ConfigMap is used as it is
    assert not [r for r in kube.api.requests if r.method.value == "PATCH" and "/configmaps/" in r.url.path
                and r.params.get("fieldManager")]


def test_bad_options_are_refused_before_any_request(kube):
    for argv, says in [(["--dry-run", "maybe"], "must be 'client' or 'server'"),
                       (["--wait", "--timeout", "0"], "must be more than 0 seconds"),
                       (["--set", "nope=1"], "has no hyperparameter 'nope'")]:
        result = ferry("submit", DIGITS, *argv)
        assert result.exit_code == 2, (argv, result.output)
        assert says in result.output
    assert not kube.api.requests


def test_our_names_are_the_training_operators():
    from kubeflow.training.constants import constants as kf

    from ferry.kube import _kinds as ours

    assert (ours.JOB_NAME_LABEL, ours.REPLICA_TYPE_LABEL, ours.REPLICA_INDEX_LABEL) == (
        kf.JOB_NAME_LABEL, kf.REPLICA_TYPE_LABEL, kf.REPLICA_INDEX_LABEL)
    assert (ours.PYTORCHJOB.group, ours.PYTORCHJOB.version, ours.PYTORCHJOB.plural, ours.PYTORCHJOB.kind) == (
        kf.GROUP, kf.VERSION, kf.PYTORCHJOB_PLURAL, kf.PYTORCHJOB_KIND)
    assert ours.PYTORCHJOB_CONTAINER == kf.PYTORCHJOB_CONTAINER
    assert {ours.CREATED, ours.RUNNING, ours.RESTARTING, ours.SUCCEEDED, ours.FAILED} == kf.JOB_CONDITIONS


class _ResettingProxy:
    """A TCP proxy on 127.0.0.1 to the emulator that resets the first ``resets`` connections
    as soon as a request arrives (a dropped connection mid-request), then forwards."""

    def __init__(self, target_port: int, resets: int):
        import socket

        self.target_port, self.resets = target_port, resets
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import struct

        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.resets > 0:
                self.resets -= 1
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # RST
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def test_a_reset_connection_is_retried(kube, tmp_path, monkeypatch):
    from ferry.kube import PYTORCHJOB, Cluster, Retry

    submitted(kube)
    proxy = _ResettingProxy(int(kube.url.rsplit(":", 1)[1]), resets=3)
    try:
        config = _kubeconfig(tmp_path / "via-proxy", f"http://127.0.0.1:{proxy.port}")
        with Cluster.connect(config, namespace="ml", retry=Retry(base_s=0.01)) as cluster:
            assert cluster.get(PYTORCHJOB, "digits")["metadata"]["name"] == "digits"
        assert proxy.resets == 0
    finally:
        proxy.close()


def test_the_console_script_speaks_to_the_cluster(kube, ferry_cli):
    env = {"KUBECONFIG": str(kube.kubeconfig)}
    result = ferry_cli("submit", DIGITS, "--dry-run=server", "--tracking-uri", "http://m:5000", env=env)
    assert result.returncode == 0, result.stderr
    assert "accepted (dry run, server): PyTorchJob ml/digits" in result.stderr
    missing = ferry_cli("status", "digits", env=env)
    assert missing.returncode == 3 and missing.stderr.startswith("error: PyTorchJob 'digits' in namespace 'ml' not found")


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


def test_pod_security_violations_are_split_at_the_top_level():
    from ferry.kube._errors import _pod_security_violations

    assert _pod_security_violations(PSA) == [
        'allowPrivilegeEscalation != false (container "pytorch" must set securityContext.allowPrivilegeEscalation=false)',
        'runAsNonRoot != true (pod or container "pytorch" must set securityContext.runAsNonRoot=true)']
