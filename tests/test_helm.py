"""The Helm chart through Helm's own engine (helm-python-sdk, no cluster): lint, every
``ci/*-values.yaml`` scenario rendered and each object validated (built-in kinds with
kubernetes-validate, custom resources against their CRDs), Pod Security "restricted" for every
pod, no wildcard in RBAC, no secret value inline, bad values refused by the schema, and the
chart in agreement with what Ferry renders and ships (images, serving runtime, CRDs, RBAC)."""

from __future__ import annotations

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
POD_KINDS = {"Deployment", "StatefulSet", "Pod"}


def render(values: dict[str, Any] | None = None, namespace: str = "ferry") -> list[dict[str, Any]]:
    from helm_python import Chart

    with Chart.load(CHART) as chart:
        out = chart.render(values=values or {}, name="ferry", namespace=namespace, is_install=True)
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
                assert "://" not in str(env.get("value", "")).split("@")[0] or "@" not in str(env.get("value", "")) \
                    or "$(" in str(env.get("value")), f"{env['name']}: credentials in a URI"


def test_names_fit_in_63_characters_and_helpers_carry_the_chart_name() -> None:
    docs = render({}, namespace="ferry")
    long_release = render_named("a-very-long-release-name-that-goes-on-and-on-past-the-dns-label-limit")
    for doc in docs + long_release:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    defined = [line.split('"')[1] for line in helpers.splitlines() if line.startswith("{{- define ")]
    assert defined and all(name.startswith("ferry.") for name in defined)


def render_named(release: str) -> list[dict[str, Any]]:
    from helm_python import Chart

    with Chart.load(CHART) as chart:
        out = chart.render(values={}, name=release, namespace="ferry", is_install=True)
    return [d for path, text in out.items() if not path.endswith(".txt") for d in yaml.safe_load_all(text) if d]


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
def test_the_chart_ships_the_operators_crds_and_rbac() -> None:
    for crd in OPERATOR_CRDS.glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), f"helm/ferry/crds/{crd.name} is stale"
    shipped = next(d for d in yaml.safe_load_all((REPO / "operator/ferry_operator/rbac/operator.yaml").read_text())
                   if d["kind"] == "ClusterRole")
    chart_role = next(d for d in render({}) if d["kind"] == "ClusterRole")
    assert chart_role["rules"] == shipped["rules"]


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


def test_operator_ha_runs_peering_and_one_replica_runs_standalone() -> None:
    one = next(d for d in render({}) if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    assert "--standalone" in one["spec"]["template"]["spec"]["containers"][0]["args"]
    docs = render(scenario(CHART / "ci" / "operator-ha-values.yaml"))
    ha = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    args = ha["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" not in args and "--namespace=ml" in args and "--namespace=ml-staging" in args
    assert {(d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] == "KopfPeering"} == {
        ("KopfPeering", "ml"), ("KopfPeering", "ml-staging")}


def test_mlflow_upgrades_its_database_before_it_serves() -> None:
    docs = render(scenario(CHART / "ci" / "bundled-postgres-values.yaml"))
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-mlflow"))
    pod = mlflow["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"] == ["mlflow", "db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"]
    args = pod["containers"][0]["args"]
    assert "--serve-artifacts" in args and "--artifacts-destination=s3://mlflow-artifacts/mlflow" in args
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-postgresql"
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
