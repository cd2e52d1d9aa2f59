"""MLflow behind its basic-auth app (mlflow.auth): every credential by Secret reference, never in a
ConfigMap, a file of the chart's or an argument; then the chart's MLflow pod run for real as
tests/_journey.py runs the chart's containers (its init containers, then `mlflow server --app-name
basic-auth` on 127.0.0.1), refusing a request without credentials and answering those of the
Secret, and `helm test`'s pod, the operator's credentials and the storage initializer's as the
kubelet would give them."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.test_helm_production import EXTERNAL, PodPlay, find, installed, merged, pod_spec, secret
from tests.test_helm import render

AUTH = {"mlflow": {"auth": {"enabled": True, "existingSecret": "mlflow-auth"}},
        "operator": {"mlflowCredentialsSecret": "ferry-operator-mlflow"}}
ADMIN = {"username": "platform-admin", "password": "Adm1n-p@ss:w%rd/#1", "secret-key": "flask-static-key-0123456789"}


def test_auth_takes_every_credential_from_a_secret_by_reference() -> None:
    docs = render(merged(AUTH, {"monitoring": {"enabled": True}}))
    spec = pod_spec(find(docs, "Deployment", "mlflow"))
    (server,) = spec["containers"]
    assert "--app-name=basic-auth" in server["args"]
    env = {e["name"]: e for e in server["env"]}
    for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "secret-key")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": key}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/mlflow-auth/basic_auth.ini"
    # the configuration file is written at start into memory, by an init container, from the environment
    assert [c["name"] for c in spec["initContainers"]] == ["db-upgrade", "auth-config"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "auth"]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert not any(d["kind"] in ("ConfigMap", "Secret") and "password" in json.dumps(d.get("data", {})) for d in docs)
    operator = pod_spec(find(docs, "Deployment", "operator"))["containers"][0]
    assert operator["envFrom"] == [{"secretRef": {"name": "ferry-operator-mlflow"}}]
    test = {e["name"]: e for e in pod_spec(find(docs, "Pod", "test"))["containers"][0]["env"]}
    assert test["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": "password"}
    (endpoint,) = find(docs, "ServiceMonitor", "mlflow")["spec"]["endpoints"]
    assert endpoint["basicAuth"] == {"username": {"name": "mlflow-auth", "key": "username"},
                                     "password": {"name": "mlflow-auth", "key": "password"}}
    plain = render({"monitoring": {"enabled": True}})
    assert "--app-name=basic-auth" not in pod_spec(find(plain, "Deployment", "mlflow"))["containers"][0]["args"]
    assert "basicAuth" not in find(plain, "ServiceMonitor", "mlflow")["spec"]["endpoints"][0]
    assert "envFrom" not in pod_spec(find(plain, "Deployment", "operator"))["containers"][0]


def test_the_auth_configuration_keeps_an_encoded_database_password_intact_and_holds_no_admin_password(
        control_plane: Any, namespace: str, tmp_path: Path) -> None:
    """With an existing database the auth app's tables live beside the runs: the auth-config init
    container writes the Secret's URI (a password with %-escapes, which MLflow's reader would take
    for interpolation) so that MLflow reads back exactly that URI; the file is the pod's alone."""
    plane = control_plane
    uri = "postgresql://mlflow:p%40ss%25w%3Ard@db.example.com:5432/mlflow?sslmode=require"
    secret(plane, namespace, "mlflow-database", {"uri": uri})
    secret(plane, namespace, "mlflow-auth", ADMIN)
    with installed(plane, merged(EXTERNAL, AUTH), namespace, hooks_only=True) as release:
        play = PodPlay(plane, namespace, find(release.docs, "Deployment", "mlflow")["spec"]["template"], tmp_path)
        done = play.run("auth-config")
        assert done.returncode == 0, done.stderr
        _, env, _ = play.process("mlflow")
        path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert ADMIN["password"] not in path.read_text()
        read = subprocess.run([sys.executable, "-c", "from mlflow.server.auth.config import read_auth_config as r; "
                                                     "import json; print(json.dumps(r()._asdict()))"],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        config = json.loads(read.stdout.splitlines()[-1])
        assert config["database_uri"] == uri and config["default_permission"] == "READ"
        assert (config["admin_username"], config["admin_password"]) == (ADMIN["username"], ADMIN["password"])


def _get(url: str, user: str | None = None, password: str | None = None) -> int:
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mlflow_with_auth_refuses_anonymous_requests_and_answers_the_credentials_of_the_secrets(
        control_plane: Any, namespace: str, tmp_path: Path) -> None:
    from tests._journey import Kubelet, LOOPBACK, Process, free_port, replace_flag, running

    plane = control_plane
    team = plane.namespace("team")
    try:
        values = merged(AUTH, {"mlflow": {"extraArgs": ["--workers=1"]}, "monitoring": {"enabled": True}})
        secret(plane, namespace, "mlflow-auth", ADMIN)
        operator_user = {"MLFLOW_TRACKING_USERNAME": "ferry-operator", "MLFLOW_TRACKING_PASSWORD": "0perator-Pass-2024"}
        secret(plane, namespace, "ferry-operator-mlflow", operator_user)
        with installed(plane, values, namespace) as release:
            deployment = find(release.docs, "Deployment", "mlflow")
            play = PodPlay(plane, namespace, deployment["spec"]["template"], tmp_path / "mlflow")
            for init in ("db-upgrade", "auth-config"):
                done = play.run(init)
                assert done.returncode == 0, f"{init}: {done.stderr[-3000:]}"
            argv, env, home = play.process("mlflow")
            assert "--app-name=basic-auth" in argv and argv[-1] == "--workers=1"
            port = free_port()
            argv = replace_flag(replace_flag(argv, "--host", LOOPBACK), "--port", str(port))
            url = f"http://{LOOPBACK}:{port}"
            with running(Process("mlflow server", argv, env, tmp_path / "mlflow-server.log", cwd=home)) as server:
                server.wait_http(f"{url}/health", timeout=180)  # the probes' path: open
                assert (play.folders["data"] / "basic_auth.db").exists()  # the auth database on the data volume
                search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
                assert _get(search) == 401
                assert _get(search, ADMIN["username"], "not-the-password") == 401
                assert _get(search, ADMIN["username"], ADMIN["password"]) == 200
                assert (_get(f"{url}/metrics"), _get(f"{url}/metrics", ADMIN["username"], ADMIN["password"])) == (401, 200)

                # `helm test`: its pod's container, the Service's DNS name standing for this address
                test = PodPlay(plane, namespace, find(release.docs, "Pod", "test"), tmp_path / "test")
                done = test.run("check", env={"MLFLOW_TRACKING_URI": url}, timeout=120)
                assert done.returncode == 0 and "MLflow answers" in done.stdout, done.stdout + done.stderr

                # the operator: its user made by the admin, its credentials from its Secret (envFrom)
                created = urllib.request.Request(f"{url}/api/2.0/mlflow/users/create", method="POST", data=json.dumps({
                    "username": operator_user["MLFLOW_TRACKING_USERNAME"],
                    "password": operator_user["MLFLOW_TRACKING_PASSWORD"]}).encode(), headers={
                    "Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(
                        f"{ADMIN['username']}:{ADMIN['password']}".encode()).decode()})
                try:
                    urllib.request.urlopen(created, timeout=30).close()
                except urllib.error.HTTPError as exc:
                    raise AssertionError(f"creating the operator's user: {exc.code} {exc.read()[:500]!r}") from None
                operator = pod_spec(find(release.docs, "Deployment", "operator"))
                operator_env = Kubelet(plane, namespace).env({"metadata": {"namespace": namespace}, "spec": operator},
                                                             operator["containers"][0])
                client = subprocess.run(
                    [sys.executable, "-c", "import mlflow; print(len(mlflow.MlflowClient().search_experiments()))"],
                    env={**os.environ, **operator_env, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True,
                    timeout=120)
                assert client.returncode == 0, client.stderr[-2000:]

                # the storage initializer in a team's namespace: the team's credentials Secret if it
                # has one (optional: without it, no credentials and no failure)
                container = next(d for d in release.docs if d["kind"] == "ClusterStorageContainer")["spec"]["container"]
                container = {**container, "env": []}  # its tracking ConfigMap is the operator's to write there
                isvc = {"metadata": {"name": "digits", "namespace": team}, "spec": {}}
                assert "MLFLOW_TRACKING_USERNAME" not in Kubelet(plane, team).env(isvc, container)
                secret(plane, team, "ferry-mlflow-credentials", operator_user)
                assert Kubelet(plane, team).env(isvc, container)["MLFLOW_TRACKING_USERNAME"] == "ferry-operator"
    finally:
        plane.delete_namespace(team)


@pytest.mark.parametrize("values", [AUTH, merged(EXTERNAL, AUTH)], ids=["sqlite", "existing-database"])
def test_the_auth_database_lives_beside_the_runs(values: dict[str, Any]) -> None:
    spec = pod_spec(find(render(values), "Deployment", "mlflow"))
    init = {c["name"]: {e["name"]: e for e in c["env"]} for c in spec.get("initContainers") or []}
    database = init["auth-config"]["FERRY_AUTH_DATABASE_URI"]["value"]
    if values["mlflow"].get("backendStore") == "postgresql":
        assert database == "$(MLFLOW_BACKEND_STORE_URI)"  # resolved in the environment, never in argv
    else:
        assert database == "sqlite:////mlflow/basic_auth.db"
        assert {"name": "data", "mountPath": "/mlflow"} in spec["containers"][0]["volumeMounts"]
