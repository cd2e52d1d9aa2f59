"""The cluster commands against kmock's KubernetesEmulator on 127.0.0.1 (tests/_kube.py), for
only what a real API server cannot be made to do on demand: the logs of pods (no pod ever runs
on the test control plane), 429/5xx answers and reset connections, and answers of components
that do not run there (admission webhooks, Pod Security judging the training operator's pods).
Everything else is in tests/test_kube.py, on the real control plane."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests._controllers import CREATED, FAILED, RUNNING, SUCCEEDED
from tests._controlplane import plain_kubeconfig
from tests._kube import Kube
from tests._waiting import play

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "jobs" / "digits" / "job.py")


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


def applied(kube: Kube) -> bool:
    """The digits job was applied (not only judged by a dry run)."""
    return any(r.method.value == "PATCH" and "/pytorchjobs/digits" in r.url.path and "dryRun" not in r.params
               for r in kube.api.requests)


def submitted(kube: Kube, name: str = "digits", ns: str = "ml") -> str:
    result = ferry("submit", DIGITS, "--tracking-uri", "http://mlflow.ml:5000", "-n", ns)
    assert result.exit_code == 0, result.output
    return kube.job(name, ns)["metadata"]["labels"]["ferry.dev/submission"]


def test_wait_on_failure_shows_the_reason_and_the_failed_replica_log(kube):
    """The failed replica's log: no pod runs on the test control plane, so no log exists there."""
    def failed():
        master = kube.add_pod("digits", "master", 0)
        worker = kube.add_pod("digits", "worker", 0, phase="Failed", exit_code=1)
        kube.log(master, "epoch 1 loss 0.9")
        kube.log(worker, *[f"line {i}" for i in range(30)], "RuntimeError: CUDA out of memory")
        kube.set_job_status("digits", conditions=[CREATED, RUNNING, FAILED],
                            replicas={"Master": {"active": 1}, "Worker": {"failed": 1}})

    thread = play([failed], after=lambda: applied(kube), what="the job is applied")
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--wait", "--timeout", "60")
    thread.join()
    assert result.exit_code == 1, result.output
    assert "digits failed" in result.stderr and "1 Worker replica(s) failed" in result.stderr
    assert "[worker-0] RuntimeError: CUDA out of memory" in result.stderr
    assert "[worker-0] line 10" not in result.stderr and "[worker-0] line 11" in result.stderr  # the last 20
    assert "master-0" not in result.stderr  # only the failed replica


def test_follow_streams_every_replica_prefixed(kube):
    """Streamed pod logs: no pod runs on the test control plane, so no log exists there."""
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

    thread = play([start, more, end], after=lambda: applied(kube), what="the job is applied", delay=0.3)
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000", "--follow", "--timeout", "30")
    thread.join()
    assert result.exit_code == 0, result.output
    for line in ("[master-0] master says 1", "[master-0] master says 2", "[worker-0] worker says 1",
                 "[worker-0] worker says 2"):
        assert result.stdout.count(line) == 1, (line, result.stdout)


def test_logs_of_each_replica_and_its_previous_container(kube):
    """Pod logs: no pod runs on the test control plane, so no log exists there."""
    submitted(kube)
    master = kube.add_pod("digits", "master", 0, restarts=1, last_exit_code=137)
    worker = kube.add_pod("digits", "worker", 0)
    kube.set_job_status("digits", conditions=[CREATED, RUNNING], replicas={"Master": {"active": 1}, "Worker": {"active": 1}})
    kube.log(master, "resumed from checkpoint at step 40", "epoch 3")
    kube.log(master, "epoch 1", "epoch 2", "Killed", previous=True)
    kube.log(worker, "worker up")
    logs = ferry("logs", "digits")
    assert logs.stdout.splitlines() == ["[master-0] resumed from checkpoint at step 40", "[master-0] epoch 3",
                                        "[worker-0] worker up"]
    previous = ferry("logs", "digits", "--replica", "master-0", "--previous", "--tail", "1")
    assert previous.stdout.splitlines() == ["[master-0] Killed"]
    missing = ferry("logs", "digits", "--replica", "worker-5")
    assert missing.exit_code == 3 and "replicas: master-0, worker-0" in missing.output


def test_a_trainjobs_nodes_logs_their_failure_and_follow(kube):
    """The logs of a TrainJob's nodes (container ``node``, named by rank): no pod runs on the
    test control plane, so no log exists there."""
    kube.add_trainjob("digits")
    first, second = kube.add_node_pod("digits", 0), kube.add_node_pod("digits", 1)
    kube.set_trainjob_status("digits", active=1)
    kube.log(first, "rank 0 up", "epoch 1")
    kube.log(second, "rank 1 up")
    logs = ferry("logs", "digits")
    assert logs.exit_code == 0, logs.output
    assert logs.stdout.splitlines() == ["[node-0] rank 0 up", "[node-0] epoch 1", "[node-1] rank 1 up"]
    one = ferry("logs", "digits", "--replica", "node-0", "--tail", "1")
    assert one.stdout.splitlines() == ["[node-0] epoch 1"]
    missing = ferry("logs", "digits", "--replica", "master-0")
    assert missing.exit_code == 3 and "replicas: node-0, node-1" in missing.output

    def fail():
        kube.log(second, "RuntimeError: NCCL timeout")
        kube.request("PATCH", f"/api/v1/namespaces/ml/pods/{second}", {"status": {"phase": "Failed", "containerStatuses": [
            {"name": "node", "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}})
        for pod in (first, second):
            kube.end_log(pod)
        kube.set_trainjob_status("digits", condition=("Failed", "FailedJobs", "jobset failed due to one or more job "
                                                                             "failures"))

    thread = play([fail], delay=0.3)
    followed = ferry("logs", "digits", "--follow")
    thread.join()
    assert followed.exit_code == 0, followed.output
    assert "[node-1] RuntimeError: NCCL timeout" in followed.stdout and "[node-0] epoch 1" in followed.stdout
    failed = ferry("status", "digits", "--wait", "--timeout", "10")
    assert failed.exit_code == 1, failed.output
    assert "digits failed: FailedJobs" in failed.stderr and "[node-1] RuntimeError: NCCL timeout" in failed.stderr
    assert "[node-0]" not in failed.stderr  # only the failed node


# ---- answers of components the test control plane does not run, and transient faults ---------
# (RBAC, a missing namespace, field-manager conflicts, schema refusals and rejected credentials
# come from the real API server in tests/test_kube.py.)
PSA = 'pods "digits-master-0" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false ' \
      '(container "pytorch" must set securityContext.allowPrivilegeEscalation=false), runAsNonRoot != true (pod or ' \
      'container "pytorch" must set securityContext.runAsNonRoot=true)'
ERRORS = [
    # (what the API server answers to the job's apply, exit code, what the message must say)
    # a policy engine judging the job's pod templates by Pod Security (none runs on the test plane)
    ((403, "Forbidden", PSA, None), 6, ["violates Pod Security restricted:latest",
                                        "  - allowPrivilegeEscalation != false (container",
                                        "  - runAsNonRoot != true (pod or container"]),
    # an admission webhook (none runs on the test control plane)
    ((400, "BadRequest", 'admission webhook "validator.kueue.x-k8s.io" denied the request: queue missing', None), 6,
     ["admission denied", "queue missing"]),
    # a 5xx on demand
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
    """429 and 5xx on demand: a real server gives them only under load or failure."""
    monkeypatch.setattr("ferry.kube._client.Retry.delay",
                        lambda self, attempt, retry_after=None: 0.01 if retry_after is None else float(retry_after))
    kube.fault("PATCH", "/pytorchjobs/digits", status, "TooManyRequests", "slow down", times=2, headers=headers)
    result = ferry("submit", DIGITS, "--tracking-uri", "http://m:5000")
    assert result.exit_code == 0, result.output
    tries = [r for r in kube.api.requests if r.method.value == "PATCH" and "/pytorchjobs/" in r.url.path]
    assert len(tries) == 4  # two refused, then the dry run and the apply


def test_retries_are_bounded(kube):
    """A 503 that lasts: no real server can be made to give one on demand."""
    from ferry.errors import ClusterError
    from ferry.kube import PYTORCHJOB, Cluster, Retry

    kube.fault("GET", "/pytorchjobs/digits", 503, "ServiceUnavailable", "overloaded", times=99)
    with Cluster.connect(retry=Retry(attempts=3, base_s=0.01)) as cluster, pytest.raises(ClusterError, match="overloaded"):
        cluster.get(PYTORCHJOB, "digits")
    assert len([r for r in kube.api.requests if r.method.value == "GET"]) == 3


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
    """A connection reset mid-request, by a proxy in front of the emulator's plain HTTP."""
    from ferry.kube import PYTORCHJOB, Cluster, Retry

    submitted(kube)
    proxy = _ResettingProxy(int(kube.url.rsplit(":", 1)[1]), resets=3)
    try:
        config = plain_kubeconfig(tmp_path / "via-proxy", f"http://127.0.0.1:{proxy.port}")
        with Cluster.connect(config, namespace="ml", retry=Retry(base_s=0.01)) as cluster:
            assert cluster.get(PYTORCHJOB, "digits")["metadata"]["name"] == "digits"
        assert proxy.resets == 0
    finally:
        proxy.close()


def test_pod_security_violations_are_split_at_the_top_level():
    from ferry.kube._errors import _pod_security_violations

    assert _pod_security_violations(PSA) == [
        'allowPrivilegeEscalation != false (container "pytorch" must set securityContext.allowPrivilegeEscalation=false)',
        'runAsNonRoot != true (pod or container "pytorch" must set securityContext.runAsNonRoot=true)']
