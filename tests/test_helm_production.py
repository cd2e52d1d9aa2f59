"""The chart in production: MLflow's own ServiceAccount, its schema migration (a hook Job before
install and upgrade for an existing database, in the pod for the bundled one and SQLite), the
database password never in a process's arguments, disruption budgets, the server's extra
arguments and environment, Ferry's storage initializer (a ClusterStorageContainer), every value
documented and refused by name when bad.

Each through Helm's own engine, then on the real control plane (tests/_controlplane.py) as
``helm install`` sends it: the pre-install hooks first (their Jobs' pods made while no object of
the release exists), the release, the ``helm test`` hook; server-side apply into a namespace
enforcing Pod Security "restricted". Where a container's work matters (the migration), the
container runs as a local process the way tests/_journey.py runs the chart's containers: the
kubelet's environment from the API server, the image's entrypoint, a folder for each volume, and
127.0.0.1 for a Service's DNS name."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._servers import postgres_database
from tests.test_helm import (
    CHART,
    _dropped,
    _server_side_apply,
    _wait_until_pods_are_made,
    chart_crds,
    ensure_storage_container_crd,
    hook_phases,
    in_hook_order,
    render,
    scenario,
)

EXTERNAL = scenario(CHART / "ci" / "external-postgres-values.yaml")
BUNDLED = scenario(CHART / "ci" / "bundled-postgres-values.yaml")


def find(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"{len(found)} {kind} of component {component}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values as Helm merges ``-f`` files: maps key by key, the last one winning."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def secret(plane: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    """A Secret a platform team creates beside the chart (``kubectl create secret generic``)."""
    plane.raw("POST", f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


# ---- installing as Helm does ---------------------------------------------------------------------
@dataclass
class Installed:
    """A release on the control plane: what Helm rendered, and what the API server stored."""

    docs: list[dict[str, Any]]
    stored: list[dict[str, Any]] = field(default_factory=list)

    def get(self, kind: str, component: str) -> dict[str, Any]:
        return find(self.stored, kind, component)


@contextlib.contextmanager
def installed(plane: Any, values: dict[str, Any], namespace: str, release: str = "ferry",
              *, hooks_only: bool = False) -> Iterator[Installed]:
    """The chart installed into ``namespace`` as ``helm install`` sends it: its CRDs, its
    cluster-scoped objects, its pre-install hooks by weight (waiting until their Jobs' pods are
    made: a hook gets none of the release's objects), then (unless ``hooks_only``) the release's
    objects and the ``helm test`` hook, waiting until every workload's pods are made. The
    cluster-scoped objects it made are deleted after; the namespace is the caller's."""
    from tests._controlplane import ApiError, object_path

    docs = render(values, namespace=namespace, name=release)
    _server_side_apply(plane, chart_crds(), "the chart's CRDs")
    ensure_storage_container_crd(plane)
    cluster = [d for d in docs if not d["metadata"].get("namespace")]
    created = [object_path(d) for d in cluster if not plane.exists(object_path(d))]
    try:
        out = Installed(docs)
        out.stored += _server_side_apply(plane, cluster, "the cluster-scoped objects")
        plane.wait_for(lambda: plane.exists(f"/api/v1/namespaces/{namespace}/serviceaccounts/default"),
                       f"the default ServiceAccount of {namespace}")
        namespaced = [d for d in docs if d["metadata"].get("namespace")]
        hooks = _server_side_apply(plane, in_hook_order([d for d in namespaced if "pre-install" in hook_phases(d)]),
                                   "the pre-install hooks")
        out.stored += hooks
        _wait_until_pods_are_made(plane, namespace, [d for d in hooks if d["kind"] == "Job"])
        if not hooks_only:
            release_docs = _server_side_apply(plane, [d for d in namespaced if not hook_phases(d)], "the release")
            out.stored += release_docs
            out.stored += _server_side_apply(plane, [d for d in namespaced if "test" in hook_phases(d)], "helm test")
            _wait_until_pods_are_made(plane, namespace, [d for d in release_docs
                                                         if d["kind"] in ("Deployment", "StatefulSet")])
        yield out
    finally:
        for path in reversed(created):
            with contextlib.suppress(ApiError):
                plane.raw("DELETE", path)


def pods_of(plane: Any, namespace: str, component: str) -> list[dict[str, Any]]:
    return plane.raw("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector="
                            f"app.kubernetes.io/component%3D{component}")["items"]


# ---- a pod of the chart as local processes ----------------------------------------------------------
class PodPlay:
    """A pod of the chart's as local processes, the way tests/_journey.py plays the chart's
    containers: each container's environment as the kubelet resolves it from the API server
    (``Kubelet.env``), its image's entrypoint and environment (``image_of``), its arguments
    (``Kubelet.argv``); each volume a folder, its mount path rewritten to that folder in the
    arguments and the environment (the image's paths are this machine's)."""

    def __init__(self, plane: Any, namespace: str, pod: dict[str, Any], workdir: Path):
        self.plane, self.namespace, self.workdir = plane, namespace, workdir
        self.pod = {"metadata": {"name": f"pod-{uuid.uuid4().hex[:6]}", "namespace": namespace,
                                 **(pod.get("metadata") or {})}, "spec": pod["spec"]}
        workdir.mkdir(parents=True, exist_ok=True)
        self.folders = {v["name"]: workdir / "volumes" / v["name"] for v in pod["spec"].get("volumes") or []}
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)

    def container(self, name: str) -> dict[str, Any]:
        spec = self.pod["spec"]
        (found,) = [c for c in (spec.get("initContainers") or []) + spec["containers"] if c["name"] == name]
        return found

    def process(self, name: str) -> tuple[list[str], dict[str, str], Path]:
        """The argv, the environment and the working folder (its HOME) of container ``name``."""
        from tests._journey import Kubelet, image_of

        container = self.container(name)
        home = next((self.folders[m["name"]] for m in container.get("volumeMounts") or []
                     if m["mountPath"] == "/tmp"), self.workdir)
        # Every path of the pod's mounts, not only this container's: what one container writes (a
        # configuration file) may name a path of another's. In the chart a path is one volume.
        spec = self.pod["spec"]
        every = [m for c in (spec.get("initContainers") or []) + spec["containers"] for m in c.get("volumeMounts") or []]
        folders = {m["mountPath"]: str(self.folders[m["name"]]) for m in sorted(every, key=lambda m: -len(m["mountPath"]))}
        assert len({(m["mountPath"], m["name"]) for m in every}) == len(folders), "a path mounts two volumes"
        paths = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(m) for m in folders) + r")(?=/|$)") if folders else None

        def local(text: str) -> str:  # one pass: a folder's own path is not rewritten again
            return paths.sub(lambda found: folders[found.group(1)], text) if paths else text

        image = image_of(container["image"], home)
        env = Kubelet(self.plane, self.namespace).env(self.pod, container)
        argv = [local(a) for a in Kubelet.argv(container, image, env)]
        return argv, {**image.env, **{k: local(v) for k, v in env.items()}}, home

    def run(self, name: str, *, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Container ``name`` run to its end (an init container, a Job's, a test pod's)."""
        argv, environ, home = self.process(name)
        return subprocess.run(argv, env={**environ, **(env or {})}, cwd=home, capture_output=True, text=True,
                              timeout=timeout)


def tables(database: str) -> set[str]:
    import psycopg2

    with contextlib.closing(psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row[0] for row in cur.fetchall()}


def _lock_waiters(conn: Any) -> int:
    """How many sessions wait for an advisory lock that another holds."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())")
        return cur.fetchone()[0]


def at_head(database: str) -> bool:
    """Whether MLflow's schema in ``database`` is the installed MLflow's newest."""
    import psycopg2
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    head = ScriptDirectory.from_config(_get_alembic_config("postgresql://")).get_current_head()
    with contextlib.closing(psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            return cur.fetchone()[0] == head


# ---- 1. MLflow's own ServiceAccount -----------------------------------------------------------------
def test_mlflow_has_its_own_service_account_without_a_token_for_its_server_and_its_migration() -> None:
    irsa = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlflow"}
    docs = render(merged(EXTERNAL, {"mlflow": {"serviceAccount": {"annotations": irsa}}}))
    account = find(docs, "ServiceAccount", "mlflow")
    assert account["metadata"]["name"] == "ferry-mlflow" and account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"].items() >= irsa.items()
    for workload in (find(docs, "Deployment", "mlflow"), find(docs, "Job", "mlflow-migration")):
        spec = pod_spec(workload)
        assert spec["serviceAccountName"] == "ferry-mlflow" and spec["automountServiceAccountToken"] is False
    # The migration Job is a pre-install hook: its ServiceAccount must be made before it, as a hook.
    job_weight = int(find(docs, "Job", "mlflow-migration")["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert hook_phases(account) == {"pre-install", "pre-upgrade"}
    assert int(account["metadata"]["annotations"]["helm.sh/hook-weight"]) < job_weight
    # Where no hook needs it, it is an object of the release like any other.
    plain = find(render({}), "ServiceAccount", "mlflow")
    assert "annotations" not in plain["metadata"] and pod_spec(find(render({}), "Deployment", "mlflow"))[
        "serviceAccountName"] == plain["metadata"]["name"]


@pytest.mark.parametrize("account, expected", [({"create": False, "name": "mlflow-irsa"}, "mlflow-irsa"),
                                               ({"create": False}, "default"),
                                               ({"create": True, "name": "tracking"}, "tracking")])
def test_an_existing_service_account_is_used_by_name(account: dict[str, Any], expected: str) -> None:
    docs = render(merged(EXTERNAL, {"mlflow": {"serviceAccount": account}}))
    made = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == "mlflow"]
    assert made == ([expected] if account["create"] else [])
    for workload in (find(docs, "Deployment", "mlflow"), find(docs, "Job", "mlflow-migration")):
        assert pod_spec(workload)["serviceAccountName"] == expected


# ---- 2. the schema migration --------------------------------------------------------------------------
@pytest.mark.parametrize("values, where", [(EXTERNAL, "job"), (BUNDLED, "pod"), ({}, "pod")],
                         ids=["existing-database", "bundled-postgresql", "sqlite"])
def test_the_migration_is_a_hook_job_for_an_existing_database_and_in_the_pod_otherwise(
        values: dict[str, Any], where: str) -> None:
    docs = render(values)
    init = [c["name"] for c in pod_spec(find(docs, "Deployment", "mlflow")).get("initContainers") or []]
    jobs = [d for d in docs if d["kind"] == "Job"]
    if where == "pod":
        assert init == ["db-upgrade"] and jobs == []
        return
    assert init == [] and len(jobs) == 1
    (job,) = jobs
    assert job["metadata"]["annotations"] == {
        "helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "0",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 900
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["name"] == "db-upgrade" and container["securityContext"]["readOnlyRootFilesystem"] is True
    # a hook gets none of the release's objects: it names only the database's Secret
    names = {d["metadata"]["name"] for d in docs if not hook_phases(d)}
    refs = {r["name"] for e in container["env"] for r in (e.get("valueFrom") or {}).values()}
    assert refs == {"mlflow-database"} and not refs & names
    custom = find(render(merged(values, {"mlflow": {"migration": {"backoffLimit": 0, "activeDeadlineSeconds": 120}}})),
                  "Job", "mlflow-migration")
    assert (custom["spec"]["backoffLimit"], custom["spec"]["activeDeadlineSeconds"]) == (0, 120)


def test_the_migration_hook_runs_before_any_object_of_the_release_exists(control_plane: Any, namespace: str) -> None:
    """An install's first moment: only the database's Secret exists (made before ``helm install``).
    The pre-install hooks (the ServiceAccount, then the Job) are accepted, the Job's pod is made and
    admitted under "restricted" with MLflow's ServiceAccount and no API token, and its container's
    environment resolves with nothing but that Secret."""
    from tests._journey import Kubelet

    plane = control_plane
    irsa = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlflow"}
    values = merged(EXTERNAL, {"mlflow": {"serviceAccount": {"annotations": irsa}}})
    secret(plane, namespace, "mlflow-database", {"uri": "postgresql://mlflow:p%40ss@db.example.com:5432/mlflow"})
    with installed(plane, values, namespace, hooks_only=True) as release:
        assert {d["kind"] for d in release.stored if d["metadata"].get("namespace")} == {"ServiceAccount", "Job"}
        assert release.get("ServiceAccount", "mlflow")["metadata"]["annotations"].items() >= irsa.items()
        (pod,) = pods_of(plane, namespace, "mlflow-migration")
        assert pod["spec"]["serviceAccountName"] == "ferry-mlflow"
        assert not any("projected" in v for v in pod["spec"].get("volumes") or []), "an API token was mounted"
        (container,) = pod["spec"]["containers"]
        env = Kubelet(plane, namespace).env(pod, container)
        assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://mlflow:p%40ss@db.example.com:5432/mlflow"
        assert not any("p%40ss" in a for a in container["command"] + container.get("args", []))


def test_the_migration_job_upgrades_a_real_database_with_the_uri_only_in_its_environment(
        control_plane: Any, namespace: str, tmp_path: Path) -> None:
    """The Job's container, run as its pod would run it, against a fresh PostgreSQL database: MLflow's
    schema at the installed MLflow's head, and with mlflow.auth the auth app's tables beside it; its
    arguments never hold the URI. Run again (the next upgrade), it changes nothing and succeeds."""
    plane = control_plane
    values = merged(EXTERNAL, {"mlflow": {"auth": {"enabled": True, "existingSecret": "mlflow-auth"}},
                               "operator": {"mlflowCredentialsSecret": "ferry-operator-mlflow"}})
    with postgres_database("ferry_chart") as database:
        uri = f"postgresql://postgres@127.0.0.1:5432/{database}"
        secret(plane, namespace, "mlflow-database", {"uri": uri})
        with installed(plane, values, namespace, hooks_only=True) as release:
            job = release.get("Job", "mlflow-migration")
            play = PodPlay(plane, namespace, job["spec"]["template"], tmp_path)
            argv, env, _ = play.process("db-upgrade")
            assert env["MLFLOW_BACKEND_STORE_URI"] == uri and not any(database in a for a in argv)
            for attempt in ("install", "upgrade"):
                done = play.run("db-upgrade")
                assert done.returncode == 0, f"{attempt}: {done.stdout}{done.stderr[-3000:]}"
            assert at_head(database)
            assert {"experiments", "runs", "registered_models", "users", "alembic_version_auth"} <= tables(database)


def test_replicas_on_the_bundled_database_take_turns_migrating_with_the_password_from_pgpassword(
        control_plane: Any, namespace: str, tmp_path: Path) -> None:
    """Two MLflow pods starting together on the bundled PostgreSQL (its URI names no password: libpq
    reads PGPASSWORD, from the Secret): both db-upgrade init containers succeed on one fresh database,
    one after the other under the advisory lock, and the schema is at head."""
    import psycopg2

    plane = control_plane
    with postgres_database("ferry_chart") as database:
        values = merged(BUNDLED, {"postgresql": {"username": "postgres", "database": database}})
        secret(plane, namespace, "mlflow-postgresql", {"password": "s3cr3t/@:%?"})
        with installed(plane, values, namespace, hooks_only=True) as release:
            deployment = find(release.docs, "Deployment", "mlflow")
            plays = [PodPlay(plane, namespace, deployment["spec"]["template"], tmp_path / f"replica-{i}") for i in (0, 1)]
            argv, env, home = plays[0].process("db-upgrade")
            assert env["PGPASSWORD"] == "s3cr3t/@:%?" and "s3cr3t" not in env["MLFLOW_BACKEND_STORE_URI"]
            assert env["MLFLOW_BACKEND_STORE_URI"] == f"postgresql://postgres@ferry-postgresql:5432/{database}"
            # Another migration holds the lock: both wait for it, then take turns.
            holder = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database)
            holder.autocommit = True
            with holder.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(hashtext('ferry: mlflow db upgrade'))")
            procs = []
            try:
                for play in plays:
                    argv, env, home = play.process("db-upgrade")
                    # the Service's DNS name is this machine (the stand-in tests/_journey.py uses)
                    env["MLFLOW_BACKEND_STORE_URI"] = env["MLFLOW_BACKEND_STORE_URI"].replace("ferry-postgresql",
                                                                                              "127.0.0.1")
                    procs.append(subprocess.Popen(argv, env=env, cwd=home, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True))
                plane.wait_for(lambda: _lock_waiters(holder) == 2, "both migrations waiting for the lock", timeout=120)
                assert all(p.poll() is None for p in procs) and tables(database) == set()
                holder.close()
                outputs = [p.communicate(timeout=300)[0] for p in procs]
            finally:
                holder.close()
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            assert [p.returncode for p in procs] == [0, 0], outputs
            assert at_head(database)


# ---- 3. disruption budgets ----------------------------------------------------------------------------
@pytest.mark.parametrize("values, budgets", [
    ({}, set()),
    ({"operator": {"replicas": 2}}, {"operator"}),
    (EXTERNAL, {"mlflow"}),  # two MLflow replicas
    (merged(EXTERNAL, {"operator": {"replicas": 3}}), {"mlflow", "operator"}),
    (merged(EXTERNAL, {"mlflow": {"replicas": 1}}), set()),
], ids=["one-of-each", "operator-ha", "mlflow-ha", "both-ha", "mlflow-one"])
def test_a_disruption_budget_where_there_is_more_than_one_replica_and_none_otherwise(
        values: dict[str, Any], budgets: set[str]) -> None:
    docs = render(values)
    found = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert set(found) == budgets
    for component, budget in found.items():
        workload = find(docs, "Deployment", component)
        assert budget["spec"] == {"maxUnavailable": 1, "selector": workload["spec"]["selector"]}


def test_the_disruption_budgets_let_a_drain_take_one_replica_at_a_time(control_plane: Any, namespace: str) -> None:
    """On the real control plane (its disruption controller and the Eviction API): with two Ready
    replicas of MLflow and of the operator, one eviction of each is allowed and the next refused."""
    from tests._controlplane import ApiError

    plane = control_plane
    values = merged(EXTERNAL, {"operator": {"replicas": 2}})
    with installed(plane, values, namespace):
        for component in ("mlflow", "operator"):
            pods = pods_of(plane, namespace, component)
            assert len(pods) == 2
            for pod in pods:  # the kubelet's part: the containers started and are Ready
                plane.raw("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status", {
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
            budget = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/ferry-{component}"
            plane.wait_for(lambda b=budget: (plane.raw("GET", b).get("status") or {}).get("disruptionsAllowed") == 1
                           and plane.raw("GET", b)["status"].get("expectedPods") == 2,
                           f"the {component} budget counting two healthy pods", timeout=60)

            def evict(pod: dict[str, Any]) -> None:
                name = pod["metadata"]["name"]
                plane.raw("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", {
                    "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}})

            evict(pods[0])
            with pytest.raises(ApiError) as refused:
                evict(pods[1])
            assert refused.value.code == 429 and "disruption budget" in str(refused.value), refused.value


# ---- 4. the database password never in argv ------------------------------------------------------------
@pytest.mark.parametrize("values", [{}, BUNDLED, EXTERNAL,
                                    merged(EXTERNAL, {"mlflow": {"auth": {"enabled": True, "existingSecret": "a"}},
                                                      "operator": {"mlflowCredentialsSecret": "o"}})],
                         ids=["sqlite", "bundled-postgresql", "existing-database", "existing-database-auth"])
def test_no_container_gets_the_backend_store_uri_or_any_variable_in_its_arguments(values: dict[str, Any]) -> None:
    for doc in render(values):
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job", "Pod"):
            continue
        spec = pod_spec(doc)
        for container in (spec.get("initContainers") or []) + spec["containers"]:
            argv = container.get("command", []) + container.get("args", [])
            assert not any("$(" in a or "backend-store-uri" in a for a in argv), (doc["metadata"]["name"], argv)
            env = {e["name"]: e for e in container.get("env") or []}
            if "MLFLOW_BACKEND_STORE_URI" in env and "PGPASSWORD" in env:  # the bundled database
                assert "@" in env["MLFLOW_BACKEND_STORE_URI"]["value"].split("/")[2]
                assert ":" not in env["MLFLOW_BACKEND_STORE_URI"]["value"].split("/")[2].split("@")[0]


# ---- 5. the server's extra arguments and environment ---------------------------------------------------
def test_extra_args_and_env_come_after_the_charts_own() -> None:
    extra_env = [{"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"},
                 {"name": "MLFLOW_GUNICORN_OPTS", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "gunicorn"}}}]
    docs = render({"mlflow": {"extraArgs": ["--workers=8", "--static-prefix=/mlflow"], "extraEnv": extra_env}})
    (container,) = pod_spec(find(docs, "Deployment", "mlflow"))["containers"]
    assert container["args"][-2:] == ["--workers=8", "--static-prefix=/mlflow"]
    assert container["args"][0] == "server" and "--port=5000" in container["args"]
    assert container["env"][-2:] == extra_env


# ---- 8. Ferry's storage initializer ----------------------------------------------------------------------
@pytest.mark.parametrize("values", [{}, {"storageContainer": {"name": "ferry-mlflow"},
                                         "tracking": {"configMapName": "mlflow-endpoint", "key": "uri",
                                                      "credentialsSecret": "mlflow-reader"},
                                         "images": {"registry": "registry.acme.internal/ml", "tag": "1.2.3"}}],
                         ids=["defaults", "custom"])
def test_the_storage_container_is_the_one_ferry_renders(values: dict[str, Any]) -> None:
    from ferry.images import image
    from ferry.render import CREDENTIALS_SECRET, render_storage_container

    chart = merged(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    (container,) = [d for d in render(values) if d["kind"] == "ClusterStorageContainer"]
    tracking = chart["tracking"]
    reference = f"{chart['images']['registry']}/ferry-serve:{chart['images']['tag'] or '0.1.0'}"
    ours = render_storage_container(reference, chart["storageContainer"]["name"],
                                    tracking=(tracking["configMapName"], tracking["key"]),
                                    credentials_secret=tracking["credentialsSecret"])
    assert {k: container[k] for k in ("apiVersion", "kind", "spec")} == {k: ours[k] for k in ("apiVersion", "kind", "spec")}
    assert container["metadata"]["name"] == ours["metadata"]["name"]
    if not values:  # the defaults are Ferry's own: the image ferry renders, the Secret jobs read
        assert container["spec"]["container"]["image"] == image("serve")
        assert tracking["credentialsSecret"] == CREDENTIALS_SECRET
    assert not [d for d in render({"storageContainer": {"enabled": False}}) if d["kind"] == "ClusterStorageContainer"]


def test_the_storage_container_is_accepted_whole_by_kserves_crd(control_plane: Any, namespace: str) -> None:
    plane = control_plane
    ensure_storage_container_crd(plane)
    with installed(plane, {"storageContainer": {"name": f"ferry-{namespace}"}}, namespace) as release:
        stored = plane.raw("GET", f"/apis/serving.kserve.io/v1alpha1/clusterstoragecontainers/ferry-{namespace}")
        sent = next(d for d in release.docs if d["kind"] == "ClusterStorageContainer")
        assert _dropped(sent, stored) == []
        assert stored["spec"]["container"]["envFrom"] == [
            {"secretRef": {"name": "ferry-mlflow-credentials", "optional": True}}]
    assert not plane.exists(f"/apis/serving.kserve.io/v1alpha1/clusterstoragecontainers/ferry-{namespace}")


# ---- bad values, refused by the schema naming the field ---------------------------------------------------
WITH_AUTH = {"mlflow": {"auth": {"enabled": True, "existingSecret": "mlflow-auth"}}}


@pytest.mark.parametrize("values, field_path", [
    ({"mlflow": {"auth": {"enabled": True}}}, "/mlflow/auth/existingSecret"),
    (WITH_AUTH, "/operator"),  # the operator needs credentials
    ({"mlflow": {"auth": {"defaultPermission": "ALL"}}}, "/mlflow/auth/defaultPermission"),
    ({"mlflow": {"auth": {"existingSecret": "Admin Secret"}}}, "/mlflow/auth/existingSecret"),
    ({"mlflow": {"extraArgs": ["--backend-store-uri=postgresql://u:p@db/mlflow"]}}, "/mlflow/extraArgs/0"),
    ({"mlflow": {"extraArgs": ["--workers=2", "--port", "5001"]}}, "/mlflow/extraArgs/1"),
    ({"mlflow": {"extraArgs": ["--app-name=basic-auth"]}}, "/mlflow/extraArgs/0"),
    ({"mlflow": {"extraArgs": "--workers=2"}}, "/mlflow/extraArgs"),
    ({"mlflow": {"extraArgs": [8]}}, "/mlflow/extraArgs/0"),
    ({"mlflow": {"extraEnv": [{"value": "x"}]}}, "/mlflow/extraEnv/0"),
    ({"mlflow": {"extraEnv": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}},
     "/mlflow/extraEnv/0"),
    ({"mlflow": {"extraEnv": [{"name": "A", "secretKeyRef": {"name": "s", "key": "k"}}]}}, "/mlflow/extraEnv/0"),
    ({"mlflow": {"extraEnv": [{"name": "A", "value": 3}]}}, "/mlflow/extraEnv/0/value"),
    ({"mlflow": {"extraEnv": [{"name": "MLFLOW_BACKEND_STORE_URI", "value": "sqlite:///x"}]}}, "/mlflow/extraEnv/0/name"),
    ({"mlflow": {"extraEnv": [{"name": "A", "valueFrom": {"vault": {}}}]}}, "/mlflow/extraEnv/0/valueFrom"),
    ({"mlflow": {"extraEnv": {"A": "x"}}}, "/mlflow/extraEnv"),
    ({"mlflow": {"serviceAccount": {"name": "Not_A_Name"}}}, "/mlflow/serviceAccount/name"),
    ({"mlflow": {"serviceAccount": {"create": "yes"}}}, "/mlflow/serviceAccount/create"),
    ({"mlflow": {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": 42}}}},
     "/mlflow/serviceAccount/annotations"),
    ({"mlflow": {"migration": {"backoffLimit": -1}}}, "/mlflow/migration/backoffLimit"),
    ({"mlflow": {"migration": {"activeDeadlineSeconds": 0}}}, "/mlflow/migration/activeDeadlineSeconds"),
    ({"mlflow": {"migration": {"resources": {"requests": None}}}}, "/mlflow/migration/resources"),
    ({"networkPolicies": {"trackingNamespaceLabels": {"ferry.dev/tracking": None}}},
     "/networkPolicies/trackingNamespaceLabels"),
    ({"networkPolicies": {"trackingNamespaceLabels": {"ferry.dev/tracking": True}}},
     "/networkPolicies/trackingNamespaceLabels"),
    ({"networkPolicies": {"trackingNamespaceLabels": {"not a key!": "x"}}}, "/networkPolicies/trackingNamespaceLabels"),
    ({"storageContainer": {"name": "Ferry"}}, "/storageContainer/name"),
    ({"storageContainer": {"enabled": "true"}}, "/storageContainer/enabled"),
    ({"tracking": {"credentialsSecret": ""}}, "/tracking/credentialsSecret"),
    ({"operator": {"mlflowCredentialsSecret": "has space"}}, "/operator/mlflowCredentialsSecret"),
])
def test_bad_production_values_are_refused_naming_the_field(values: dict[str, Any], field_path: str) -> None:
    from helm_python import Chart, HelmError

    with Chart.load(CHART) as chart, pytest.raises(HelmError) as error:
        chart.validate_schema(values)
    assert f"'{field_path}" in str(error.value), str(error.value)


@pytest.mark.parametrize("values", [
    merged(WITH_AUTH, {"operator": {"mlflowCredentialsSecret": "ferry-operator-mlflow"}}),
    merged(WITH_AUTH, {"operator": {"mlflowTokenSecret": "ferry-operator-token"}}),
    merged(WITH_AUTH, {"operator": {"enabled": False}}),
    {"mlflow": {"extraArgs": ["--workers", "8", "--gunicorn-opts=--timeout 120"],
                "extraEnv": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}},
    {"networkPolicies": {"trackingNamespaceLabels": {"team.acme.io/ml": "yes", "tier": ""}}},
], ids=["auth-with-operator-credentials", "auth-with-operator-token", "auth-without-operator", "extras", "labels"])
def test_good_production_values_pass(values: dict[str, Any]) -> None:
    from helm_python import Chart

    with Chart.load(CHART) as chart:
        chart.validate_schema(values)


# ---- 9. every value documented ---------------------------------------------------------------------------
def _keys_agree(values: Any, schema: dict[str, Any], path: str = "values") -> None:
    """values.yaml and the schema name the same keys, wherever the schema closes a map."""
    properties = schema.get("properties")
    if not isinstance(values, dict) or not properties or schema.get("additionalProperties") is not False:
        return
    assert set(values) == set(properties), (path, sorted(set(values) ^ set(properties)))
    for key, value in values.items():
        _keys_agree(value, properties[key], f"{path}.{key}")


def test_every_value_is_in_the_schema_and_documented_by_a_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    _keys_agree(yaml.safe_load(text), json.loads((CHART / "values.schema.json").read_text()))
    # Each key has a comment above it, or is the first key of a map whose own key has one, or
    # follows keys with values on the same level (one comment for a group: `size` and `storageClassName`).
    lines = text.splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^( *)[A-Za-z][\w.-]*:", line)
        if not key:
            continue
        indent, j = key.group(1), i - 1
        while j >= 0 and re.match(rf"^{indent}[A-Za-z][\w.-]*: \S", lines[j]):
            j -= 1
        above = lines[j] if j >= 0 else ""
        parent = len(indent) >= 2 and re.match(rf"^{indent[:-2]}[A-Za-z][\w.-]*:$", above)
        assert above.strip().startswith("#") or parent, f"values.yaml line {i + 1} ({line.strip()}): no comment"


def test_the_readme_has_a_production_section_naming_its_values() -> None:
    readme = (CHART.parent / "README.md").read_text()
    assert "## Production" in readme
    production = readme.split("## Production", 1)[1]
    for value in ("mlflow.serviceAccount.annotations", "mlflow.migration", "mlflow.auth.existingSecret",
                  "operator.mlflowCredentialsSecret", "tracking.credentialsSecret", "networkPolicies.trackingNamespaceLabels",
                  "storageContainer", "mlflow.extraArgs", "mlflow.extraEnv", "PodDisruptionBudget", "pre-install",
                  "eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account", "PGPASSWORD"):
        assert value in production, value
