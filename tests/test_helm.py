"""The Helm chart through Helm's own engine (helm-python-sdk): lint, every ``ci/*-values.yaml``
scenario rendered and each object validated (built-in kinds with kubernetes-validate, custom
resources against their CRDs), Pod Security "restricted" for every pod, no wildcard in RBAC, no
secret value inline, bad values refused by the schema, and the chart in agreement with what Ferry
renders and ships (images, serving runtime, CRDs, RBAC). Then every scenario installed on a real
control plane (tests/_controlplane.py; skipped without KUBEBUILDER_ASSETS): each object applied
server-side, its workloads' pods admitted under "restricted", its bindings granting its roles,
and an operator that watches some namespaces allowed its work there and nowhere else."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.validate import manifest_issues
from ferry.validate._crd import crd_issues, crd_validator

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "ferry"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
OPERATOR_CRDS = REPO / "operator" / "ferry_operator" / "crds"
TEST_CRDS = Path(__file__).with_name("crds")
POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}


def render(values: dict[str, Any] | None = None, namespace: str = "ferry", name: str = "ferry") -> list[dict[str, Any]]:
    from helm_python import Chart

    with Chart.load(CHART) as chart:
        out = chart.render(values=values or {}, name=name, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def scenario(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="module", params=SCENARIOS, ids=lambda p: p.name.removesuffix("-values.yaml"))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(scenario(request.param))


def test_the_chart_lints_clean_with_every_scenario() -> None:
    from helm_python import lint

    assert len(SCENARIOS) >= 7
    for path in [None, *SCENARIOS]:
        report = lint(CHART, scenario(path) if path else None, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert problems == [], (path, problems)


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in POD_KINDS:
        return doc["spec"]["template"]["spec"]
    return None


def test_every_object_validates(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        source = f"{doc['kind']}/{doc['metadata']['name']}"
        group = doc["apiVersion"].rpartition("/")[0]
        if group == "monitoring.coreos.com":
            validator = crd_validator(TEST_CRDS, doc["apiVersion"], doc["kind"])
            assert validator is not None and list(crd_issues(doc, validator, source)) == [], source
        elif group == "kopf.dev":
            assert list(crd_issues(doc, crd_validator(OPERATOR_CRDS, doc["apiVersion"], doc["kind"]), source)) == []
        else:
            assert manifest_issues(doc, source=source) == [], source  # kubernetes-validate, packaged CRDs, PSS


def test_every_pod_is_restricted_with_requests_and_a_checked_image(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        spec = _pod_spec(doc)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            assert container["resources"]["requests"], where
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert ":" in container["image"].rsplit("/", 1)[-1], f"{where}: image without a tag"


def test_no_rbac_wildcards_and_no_inline_secrets(rendered: list[dict[str, Any]]) -> None:
    from urllib.parse import urlsplit

    for doc in rendered:
        assert doc["kind"] != "Secret", "the chart creates no Secret: credentials come by reference"
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (doc["metadata"]["name"], rule)
        spec = _pod_spec(doc)
        for container in (spec or {}).get("initContainers", []) + (spec or {}).get("containers", []):
            for env in container.get("env", []):
                secretish = any(w in env["name"] for w in ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY"))
                assert not (secretish and "value" in env), f"{env['name']} is inline"
                value = str(env.get("value", ""))
                assert "://" not in value or urlsplit(value).password is None, f"{env['name']}: a password in a URI"
            for arg in container.get("command", []) + container.get("args", []):
                assert "$(" not in arg, f"{arg}: the kubelet would expand a variable into the process's argv"


def test_names_fit_in_63_characters_and_helpers_carry_the_chart_name() -> None:
    docs = render({}, namespace="ferry")
    long_release = render({}, name="a-very-long-release-name-that-goes-on-and-on-past-the-dns-label-limit")
    for doc in docs + long_release:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    defined = [line.split('"')[1] for line in helpers.splitlines() if line.startswith("{{- define ")]
    assert defined and all(name.startswith("ferry.") for name in defined)


# ---- the schema refuses bad values ---------------------------------------------------------------
@pytest.mark.parametrize("values, message", [
    ({"operator": {"replicas": 0}}, "replicas"),
    ({"operator": {"replicas": "two"}}, "replicas"),
    ({"mlflow": {"s3": {"enabled": True}}}, "bucket"),
    ({"mlflow": {"backendStore": "mysql"}}, "backendStore"),
    ({"mlflow": {"replicas": 3}}, "replicas"),  # SQLite serves one replica
    ({"postgresql": {"enabled": True}}, "backendStore"),
    ({"mlflow": {"backendStore": "postgresql", "persistence": {"enabled": False}}}, "existingSecret"),
    ({"mlflow": {"backendStore": "postgresql"}, "postgresql": {"enabled": True}}, "existingSecret"),
    ({"images": {"registry": "has space/ferry"}}, "registry"),
    ({"mlfow": {"enabled": False}}, "mlfow"),
    ({"monitoring": {"interval": "often"}}, "interval"),
    ({"operator": {"resyncSeconds": 5}}, "resyncSeconds"),
    ({"operator": {"resyncSeconds": 30.5}}, "resyncSeconds"),
    ({"operator": {"pollSeconds": 0.5}}, "pollSeconds"),
    ({"operator": {"watchNamespaces": ["ml", "ml"]}}, "watchNamespaces"),
    ({"operator": {"defaultTarget": "jobset"}}, "defaultTarget"),
])
def test_bad_values_are_refused_by_the_schema_naming_the_field(values: dict[str, Any], message: str) -> None:
    from helm_python import Chart, HelmError

    with Chart.load(CHART) as chart, pytest.raises(HelmError) as error:
        chart.validate_schema(values)
    assert message in str(error.value), str(error.value)


def test_the_values_are_documented_field_by_field() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(yaml.safe_load("\n".join(lines))) == set(schema["properties"])
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):  # each top-level section is explained
            assert lines[i - 1].startswith("#") or lines[i - 2].startswith("#") or lines[i + 1].lstrip().startswith("#"), line


# ---- the chart agrees with Ferry ---------------------------------------------------------------------
@pytest.mark.parametrize("values, target", [({}, "pytorchjob"), ({"operator": {"defaultTarget": "trainjob"}}, "trainjob")])
def test_the_operators_default_target_is_a_value(values: dict[str, Any], target: str) -> None:
    from ferry.spec._job import TARGETS

    deployment = next(d for d in render(values) if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"])
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FERRY_TARGET"] == target and target in TARGETS  # a value the operator takes (it refuses others)


def test_the_chart_ships_the_operators_crds_and_rbac() -> None:
    for crd in OPERATOR_CRDS.glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), f"helm/ferry/crds/{crd.name} is stale"
    shipped = next(d for d in yaml.safe_load_all((REPO / "operator/ferry_operator/rbac/operator.yaml").read_text())
                   if d["kind"] == "ClusterRole")
    chart_role = next(d for d in render({}) if d["kind"] == "ClusterRole")
    assert chart_role["rules"] == shipped["rules"]


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for each thing ``rules`` allow."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_watching_some_namespaces_grants_the_namespaced_rules_in_those_alone() -> None:
    shipped = next(d for d in yaml.safe_load_all((REPO / "operator/ferry_operator/rbac/operator.yaml").read_text())
                   if d["kind"] == "ClusterRole")
    docs = render({"operator": {"watchNamespaces": ["ml", "ml-staging"]}})
    account = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-operator"))
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "ferry"}
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"ml", "ml-staging"}
    assert roles["ml"]["rules"] == roles["ml-staging"]["rules"]
    for ns, binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[ns]["metadata"]["name"]}
        assert binding["subjects"] == [subject]
    (cluster,) = [d for d in docs if d["kind"] == "ClusterRole"]
    (cluster_binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == cluster["metadata"]["name"] and cluster_binding["subjects"] == [subject]
    # cluster-wide, only what no Role can give (the real API server's scopes: the test below)
    assert _grants(cluster["rules"]) == {(g, r, v) for g, r in (("apiextensions.k8s.io", "customresourcedefinitions"),
                                                                 ("", "namespaces")) for v in ("list", "watch")} | {
        ("trainer.kubeflow.org", "clustertrainingruntimes", "get")}
    assert _grants(roles["ml"]["rules"]) | _grants(cluster["rules"]) == {
        g for g in _grants(shipped["rules"]) if g[1] != "clusterkopfpeerings"}
    for doc in docs:
        for rule in doc.get("rules", []):
            assert not any("*" in rule[key] for key in ("apiGroups", "resources", "verbs")), rule


def test_the_serving_runtime_is_the_one_ferry_renders_with_the_same_images() -> None:
    from ferry.images import image
    from ferry.render import render_serving_runtime

    docs = render({})
    runtime = next(d for d in docs if d["kind"] == "ClusterServingRuntime")
    ours = render_serving_runtime()
    assert runtime["spec"] == ours["spec"]
    assert runtime["spec"]["containers"][0]["image"] == image("serve")
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    assert operator["spec"]["template"]["spec"]["containers"][0]["image"] == image("operator")
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-mlflow"))
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"] == image("mlflow")


def test_one_image_setting_moves_the_chart_and_the_rendered_manifests_together(monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.images import image
    from ferry.render import render_serving_runtime

    monkeypatch.setenv("FERRY_IMAGE_REGISTRY", "registry.acme.internal/ml")
    monkeypatch.setenv("FERRY_IMAGE_TAG", "0.1.0-acme.3")
    docs = render({"images": {"registry": "registry.acme.internal/ml", "tag": "0.1.0-acme.3"}})
    runtime = next(d for d in docs if d["kind"] == "ClusterServingRuntime")
    assert runtime["spec"]["containers"][0]["image"] == render_serving_runtime()["spec"]["containers"][0]["image"] \
        == image("serve") == "registry.acme.internal/ml/ferry-serve:0.1.0-acme.3"


def test_the_tracking_configmap_is_where_jobs_read_it_and_names_the_mlflow_service() -> None:
    from ferry.spec import Tracking

    docs = render({"tracking": {"extraNamespaces": ["ml"]}})
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    ref = Tracking().uri_from
    assert {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in maps} == {("ferry", ref.name), ("ml", ref.name)}
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-mlflow"))
    assert maps[0]["data"][ref.key] == f"http://{service['metadata']['name']}.ferry.svc.cluster.local:5000"


def test_config_changes_roll_the_operator() -> None:
    def checksum(values: dict[str, Any]) -> str:
        operator = next(d for d in render(values) if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
        return operator["spec"]["template"]["metadata"]["annotations"]["checksum/tracking"]

    assert checksum({}) != checksum({"mlflow": {"port": 5001}})


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))


def test_operator_ha_runs_peering_and_rolls_one_at_a_time_and_one_replica_runs_standalone_recreated() -> None:
    one = _operator(render({}))
    assert "--standalone" in one["spec"]["template"]["spec"]["containers"][0]["args"]
    assert one["spec"]["strategy"] == {"type": "Recreate"}  # never two operators, not even in a rollout
    docs = render(scenario(CHART / "ci" / "operator-ha-values.yaml"))
    ha = _operator(docs)
    args = ha["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" not in args and "--namespace=ml" in args and "--namespace=ml-staging" in args
    assert ha["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert {(d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] == "KopfPeering"} == {
        ("KopfPeering", "ml"), ("KopfPeering", "ml-staging")}


def test_the_operator_polls_mlflow_often_and_resyncs_every_pipeline_seldom() -> None:
    def env(values: dict[str, Any]) -> dict[str, str]:
        container = _operator(render(values))["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert {k: v for k, v in env({}).items() if k.startswith("FERRY_OPERATOR_")} == {
        "FERRY_OPERATOR_POLL_S": "5", "FERRY_OPERATOR_RESYNC_S": "300"}
    custom = env({"operator": {"pollSeconds": 2, "resyncSeconds": 600}})
    assert (custom["FERRY_OPERATOR_POLL_S"], custom["FERRY_OPERATOR_RESYNC_S"]) == ("2", "600")


def test_mlflow_upgrades_its_database_before_it_serves() -> None:
    docs = render(scenario(CHART / "ci" / "bundled-postgres-values.yaml"))
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-mlflow"))
    pod = mlflow["spec"]["template"]["spec"]
    (upgrade,) = pod["initContainers"]  # the bundled database: in the pod (a hook Job for an existing one)
    assert upgrade["command"][:2] == ["python", "-c"] and "upgrade.main([url]" in upgrade["command"][2]
    args = pod["containers"][0]["args"]
    assert "--serve-artifacts" in args and "--artifacts-destination=s3://mlflow-artifacts/mlflow" in args
    assert not any("backend-store-uri" in a for a in args)  # MLflow reads MLFLOW_BACKEND_STORE_URI itself
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-postgresql"
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "postgresql://mlflow@ferry-postgresql:5432/mlflow"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    assert any(d["kind"] == "StatefulSet" for d in docs)


def test_helm_test_checks_that_mlflow_answers() -> None:
    hooks = [d for d in render({}) if d["kind"] == "Pod"]
    assert len(hooks) == 1 and hooks[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "/health" in hooks[0]["spec"]["containers"][0]["command"][-1]


# ---- the images ------------------------------------------------------------------------------------
DOCKERFILES = sorted([*REPO.glob("images/*/Dockerfile"), REPO / "operator" / "Dockerfile"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_each_dockerfile_lints_clean_runs_as_non_root_and_copies_what_exists(dockerfile: Path) -> None:
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the final stage runs as root"
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"{dockerfile}: COPY {source} names nothing in the repository"
    bases = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    args = {line.split()[1].split("=")[0]: line.split("=", 1)[1] for line in text.splitlines()
            if line.startswith("ARG ") and "=" in line}
    for base in bases:
        resolved = args.get(base.strip("${}"), base)
        assert "@sha256:" in resolved or (":" in resolved and not resolved.endswith(":latest")), resolved
    assert "org.opencontainers.image.source" in text


@pytest.mark.parametrize("component, entry", [("serve", ["ferry", "serve"]), ("operator", ["ferry", "operator", "run"]),
                                              ("train", ["python", "-m", "jobs.digits.train"]), ("mlflow", ["mlflow", "server"])])
def test_the_entrypoint_each_image_names_exists(component: str, entry: list[str], ferry_cli: Any) -> None:
    import importlib

    dockerfile = REPO / ("operator/Dockerfile" if component == "operator" else f"images/{component}/Dockerfile")
    text = dockerfile.read_text()
    assert json.dumps(entry[:1])[1:-1] in text
    if entry[0] == "ferry":
        assert ferry_cli(*entry[1:], "--help").returncode == 0
    elif entry[0] == "python":
        assert importlib.util.find_spec(entry[-1]) is not None
    else:
        assert ferry_cli("--help").returncode == 0 and importlib.util.find_spec("mlflow") is not None


def test_an_external_tracking_server_replaces_the_charts_mlflow() -> None:
    from helm_python import Chart, HelmError

    docs = render({"mlflow": {"enabled": False}, "tracking": {"externalUri": "https://mlflow.acme.example.com"}})
    assert not any(d["metadata"]["name"].endswith("-mlflow") for d in docs if d["kind"] in ("Deployment", "Service"))
    (tracking,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert tracking["data"]["tracking-uri"] == "https://mlflow.acme.example.com"
    with Chart.load(CHART) as chart, pytest.raises(HelmError, match="externalUri"):
        chart.validate_schema({"mlflow": {"enabled": False}})


# ---- every scenario installed on a real control plane ------------------------------------------------
# What only a real API server judges (tests/_controlplane.py): each object of each scenario accepted
# as an install sends it (the chart's CRDs, then cluster-scoped objects, then the pre-install hooks
# by weight, whose Jobs' pods must be made before any object of the release exists, then the
# release's namespaced objects, then the `helm test` hook) by server-side apply with strict field
# validation, so a field the server would prune fails instead; no warning (deprecation, Pod
# Security) on the way; every workload's pods made by the controller manager and admitted by Pod
# Security "restricted"; and the chart's bindings granting its ServiceAccounts every rule of their
# roles, by the real authorizer; with operator.watchNamespaces, the operator's ServiceAccount
# refused the same work anywhere else.
HOOK = "helm.sh/hook"
STORAGE_CONTAINER_CRD = "clusterstoragecontainers.serving.kserve.io"


def hook_phases(doc: dict[str, Any]) -> set[str]:
    """The hooks (pre-install, test, ...) ``doc`` runs at; empty for an object of the release."""
    value = (doc["metadata"].get("annotations") or {}).get(HOOK, "")
    return {phase.strip() for phase in value.split(",") if phase.strip()}


def in_hook_order(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hooks as Helm runs them: by weight, then kind, then name."""
    def weight(doc: dict[str, Any]) -> int:
        return int((doc["metadata"].get("annotations") or {}).get("helm.sh/hook-weight", "0"))

    return sorted(docs, key=lambda d: (weight(d), d["kind"], d["metadata"]["name"]))


def ensure_storage_container_crd(plane: Any) -> None:
    """KServe's ClusterStorageContainer CRD on the control plane (Ferry's packaged copy, else the
    reference beside the checkout); applied idempotently and left in place: it is cluster-scoped
    and other tests may share it."""
    from ferry.settings import PACKAGED_CRD_DIR

    if plane.exists(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{STORAGE_CONTAINER_CRD}"):
        return
    name = "serving.kserve.io_clusterstoragecontainers.yaml"
    found = [p for p in (PACKAGED_CRD_DIR / name, REPO.parent / "shared" / "crds" / "kserve-v0.20.0" / name) if p.exists()]
    assert found, f"KServe's ClusterStorageContainer CRD ({name}) is neither packaged nor beside the checkout"
    plane.install_crds(found[0])


def chart_crds() -> list[dict[str, Any]]:
    from helm_python import Chart

    with Chart.load(CHART) as chart:
        return [d for crd in chart.crds for d in yaml.safe_load_all(crd["data"]) if d]


def _resources(plane: Any) -> dict[tuple[str, str], tuple[str, bool]]:
    """(apiVersion, kind) → (plural, namespaced) for everything the API server serves (discovery)."""
    lists = [plane.raw("GET", "/api/v1")]
    lists += [plane.raw("GET", f"/apis/{v['groupVersion']}") for g in plane.raw("GET", "/apis")["groups"]
              for v in g["versions"]]
    return {(rl["groupVersion"], r["kind"]): (r["name"], r["namespaced"])
            for rl in lists for r in rl["resources"] if "/" not in r["name"]}


def _established(plane: Any, crd: str) -> bool:
    status = plane.raw("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}").get("status") or {}
    return any(c["type"] == "Established" and c["status"] == "True" for c in status.get("conditions") or [])


def _path(doc: dict[str, Any], resources: dict[tuple[str, str], tuple[str, bool]]) -> str:
    plural, namespaced = resources[(doc["apiVersion"], doc["kind"])]
    base = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
    scope = f"/namespaces/{doc['metadata']['namespace']}" if namespaced else ""
    return f"{base}{scope}/{plural}/{doc['metadata']['name']}"


def _server_side_apply(plane: Any, docs: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """``kubectl apply --server-side`` (strict field validation, as kubectl does by default) of
    ``docs`` as admin; the objects as stored, after checking the server kept every field sent."""
    if not docs:
        return []
    done = plane.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=helm", "-o", "json", "-f", "-",
                         input="---\n".join(yaml.safe_dump(d) for d in docs), check=False)
    assert done.returncode == 0, f"{what} refused by the API server:\n{done.stderr}"
    assert "Warning" not in done.stderr, f"{what} accepted with warnings:\n{done.stderr}"
    out = json.loads(done.stdout)
    stored = out["items"] if out.get("kind") == "List" else [out]
    for sent, kept in zip(docs, stored, strict=True):
        lost = _dropped(sent, kept)
        assert not lost, f"{sent['kind']}/{sent['metadata']['name']}: the server did not keep {lost}"
    return stored


def _dropped(sent: Any, kept: Any, where: str = "") -> list[str]:
    """Paths of what ``sent`` holds and ``kept`` does not (defaults the server adds are fine)."""
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [where or "."]
        return [p for k, v in sent.items() for p in _dropped(v, kept.get(k), f"{where}.{k}")]
    if isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return [where]
        return [p for i, (a, b) in enumerate(zip(sent, kept)) for p in _dropped(a, b, f"{where}[{i}]")]
    return [] if sent == kept or str(sent) == str(kept) else [where]


def _wait_until_pods_are_made(plane: Any, namespace: str, workloads: list[dict[str, Any]]) -> None:
    """Each Deployment's ReplicaSet, each StatefulSet and each Job has made its pods (the first, for
    a StatefulSet: it makes the next once that one is Ready, and none runs here); a refusal (Pod
    Security, a quota, a missing ServiceAccount) fails with the controller's own message."""
    if not workloads:
        return

    def owned_by(uid: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [i for i in items if any(r["uid"] == uid for r in i["metadata"].get("ownerReferences", []))]

    def all_made() -> bool:
        base = f"/namespaces/{namespace}"
        pods = plane.raw("GET", f"/api/v1{base}/pods")["items"]
        replica_sets = plane.raw("GET", f"/apis/apps/v1{base}/replicasets")["items"]
        refusals = plane.raw("GET", f"/api/v1{base}/events?fieldSelector=reason%3DFailedCreate")["items"]
        waiting = []
        for workload in workloads:
            uid, where = workload["metadata"]["uid"], f"{workload['kind']}/{workload['metadata']['name']}"
            makers = owned_by(uid, replica_sets) if workload["kind"] == "Deployment" else [workload]
            for maker in makers:
                for condition in (maker.get("status") or {}).get("conditions") or []:
                    assert condition["type"] != "ReplicaFailure", f"{where}: {condition['message']}"
                refused = [e["message"] for e in refusals if e["involvedObject"].get("uid") == maker["metadata"]["uid"]]
                # A ServiceAccount applied in the same batch as its Deployment may come a moment
                # after the ReplicaSet's first try: the controller retries, as on any cluster.
                final = [m for m in refused if "error looking up service account" not in m]
                assert not final, f"{where}: {final[-1]}"
                seen[where] = refused[-1] if refused else ""
            wanted = workload["spec"]["replicas"] if workload["kind"] == "Deployment" else 1  # a Job: parallelism 1
            if sum(len(owned_by(m["metadata"]["uid"], pods)) for m in makers) < wanted:
                waiting.append(where)
        return not waiting

    seen: dict[str, str] = {}
    try:
        plane.wait_for(all_made, f"the pods of {[w['metadata']['name'] for w in workloads]} in {namespace}",
                       timeout=90, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the controllers' last refusals: {seen}") from None


def _assert_bindings_grant_their_roles(plane: Any, docs: list[dict[str, Any]], namespace: str) -> None:
    from itertools import product

    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"}
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        ref, scope = binding["roleRef"], binding["metadata"].get("namespace")
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts, f"{binding['metadata']['name']}: {subject}"
            user = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
            for rule in role["rules"]:
                for group, resource, verb in product(rule["apiGroups"], rule["resources"], rule["verbs"]):
                    review = _review(plane, subject, verb, group, resource, scope or namespace)
                    assert review["allowed"], f"{user} may not {verb} {resource}: {review}"


def _review(plane: Any, account: dict[str, Any], verb: str, group: str, resource: str,
            namespace: str = "") -> dict[str, Any]:
    """The real authorizer's answer (a SubjectAccessReview) on whether ServiceAccount ``account``
    may ``verb`` ``resource`` (``name/subresource``) in ``namespace`` ("": cluster-wide)."""
    name, _, sub = resource.partition("/")
    user = f"system:serviceaccount:{account['namespace']}:{account['name']}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{account['namespace']}", "system:authenticated"]
    return plane.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups, "resourceAttributes": {
            "namespace": namespace, "group": group, "resource": name, "subresource": sub, "verb": verb}}})["status"]


def _assert_the_operator_acts_only_where_it_watches(plane: Any, docs: list[dict[str, Any]], resources: dict[
        tuple[str, str], tuple[str, bool]], watched: list[str], elsewhere: str) -> None:
    """With operator.watchNamespaces: no ClusterRole grants a resource the API server serves
    per namespace, and the operator's ServiceAccount may do its work in the watched namespaces,
    not in ``elsewhere``, and never on cluster-wide peering."""
    namespaced = {(api.rpartition("/")[0], plural): scoped for (api, _), (plural, scoped) in resources.items()}
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        for group, resource, _ in _grants(role["rules"]):
            assert not namespaced[(group, resource.partition("/")[0])], f"{role['metadata']['name']}: {resource}"
    account = next({"namespace": d["metadata"]["namespace"], "name": d["metadata"]["name"]} for d in docs
                   if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-operator"))
    assert elsewhere not in watched
    work = [("create", "", "configmaps"), ("patch", "kubeflow.org", "pytorchjobs"),
            ("patch", "ferry.dev", "modelpipelines/status"), ("create", "serving.kserve.io", "inferenceservices")]
    for verb, group, resource in work:
        for ns in watched:
            assert _review(plane, account, verb, group, resource, ns)["allowed"], f"{verb} {resource} in {ns}"
        assert not _review(plane, account, verb, group, resource, elsewhere)["allowed"], f"{verb} {resource} elsewhere"
    for verb, group, resource in [*work, ("list", "ferry.dev", "modelpipelines"), ("patch", "kopf.dev", "kopfpeerings"),
                                  ("patch", "kopf.dev", "clusterkopfpeerings"), ("list", "kopf.dev", "clusterkopfpeerings")]:
        assert not _review(plane, account, verb, group, resource)["allowed"], f"{verb} {resource} cluster-wide"
    for group, resource in (("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")):
        assert _review(plane, account, "watch", group, resource)["allowed"], f"watch {resource} cluster-wide"


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_every_object_of_the_scenario_is_accepted_by_a_real_api_server_with_pods_admitted_restricted(
        path: Path, control_plane: Any, namespace: str) -> None:
    from tests._controlplane import ApiError

    plane, values = control_plane, scenario(path)
    # The scenario's other namespaces (ml, ml-staging) become fresh ones of this test's, restricted too.
    others: dict[str, str] = {}
    created: list[str] = []  # cluster-scoped objects this test made (not those it found), deleted after it
    try:
        for section, key in (("operator", "watchNamespaces"), ("tracking", "extraNamespaces")):
            names = values.get(section, {}).get(key, [])
            for name in names:
                if name not in others:
                    others[name] = plane.namespace(name)
            if names:
                values[section][key] = [others[n] for n in names]
        # A release name per scenario: the chart derives its cluster-scoped names from it.
        docs = render(values, namespace=namespace, name=path.name.removesuffix("-values.yaml"))
        crds = chart_crds()
        _server_side_apply(plane, crds, "the chart's CRDs")
        ensure_storage_container_crd(plane)
        for crd in crds:
            plane.wait_for(lambda n=crd["metadata"]["name"]: _established(plane, n),
                           f"CRD {crd['metadata']['name']} established")
        resources = _resources(plane)
        unknown = {(d["apiVersion"], d["kind"]) for d in docs} - set(resources)
        assert not unknown, f"kinds this API server does not serve: {unknown}"
        cluster = [d for d in docs if not resources[(d["apiVersion"], d["kind"])][1]]
        namespaced = [d for d in docs if resources[(d["apiVersion"], d["kind"])][1]]
        assert all(d["metadata"].get("namespace") for d in namespaced), "a namespaced object without its namespace"
        assert not any(HOOK in (d["metadata"].get("annotations") or {}) for d in cluster)
        for doc in cluster:
            if not plane.exists(_path(doc, resources)):
                created.append(_path(doc, resources))
        _server_side_apply(plane, cluster, "the cluster-scoped objects")
        for ns in {d["metadata"]["namespace"] for d in namespaced}:  # pods need it (ServiceAccount admission)
            plane.wait_for(lambda n=ns: plane.exists(f"/api/v1/namespaces/{n}/serviceaccounts/default"),
                           f"the default ServiceAccount of {ns}")
        pre_install = in_hook_order([d for d in namespaced if "pre-install" in hook_phases(d)])
        release = [d for d in namespaced if not hook_phases(d)]
        tests = [d for d in namespaced if "test" in hook_phases(d)]
        assert {p for d in namespaced for p in hook_phases(d)} <= {"pre-install", "pre-upgrade", "test"}
        # A pre-install hook gets none of the release's objects: its Jobs' pods are made before them.
        hooked = _server_side_apply(plane, pre_install, "the pre-install hooks")
        _wait_until_pods_are_made(plane, namespace, [d for d in hooked if d["kind"] == "Job"])
        stored = _server_side_apply(plane, release, "the release's namespaced objects")
        _server_side_apply(plane, tests, "the hooks (helm test)")
        assert tests or values.get("mlflow", {}).get("enabled") is False, "no `helm test` hook"
        workloads = [d for d in stored if d["kind"] in ("Deployment", "StatefulSet")]
        assert workloads
        _wait_until_pods_are_made(plane, namespace, workloads)
        _assert_bindings_grant_their_roles(plane, docs, namespace)
        watched = values.get("operator", {}).get("watchNamespaces")
        if watched and values["operator"].get("enabled", True):
            _assert_the_operator_acts_only_where_it_watches(plane, docs, resources, watched, elsewhere=namespace)
    finally:
        for made in reversed(created):
            with contextlib.suppress(ApiError):
                plane.raw("DELETE", made)
        for name in others.values():
            plane.delete_namespace(name)
