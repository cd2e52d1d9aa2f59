"""Upgrading the ModelPipeline CRD, on the real control plane (tests/_controlplane.py).

Helm installs ``helm/ferry/crds/`` on the first install only and never upgrades them. After a
``helm upgrade`` to a release whose CRD declares a new status field, the API server still holds
the old schema and prunes that field from every write: the operator's status patches succeed and
silently lose it. The documented way out, run before ``helm upgrade``, is

    ferry operator crds | kubectl apply --server-side --force-conflicts -f -

Here an older ModelPipeline CRD (the current one without ``status.traffic``, derived in code) is
installed as each installer would have installed it, a pipeline's status write is shown pruned,
the documented command runs as a user runs it (the installed ``ferry`` console script piped into
the real ``kubectl``), and then the same write keeps the field, the pipeline is untouched, and a
second run changes nothing.

``--force-conflicts``: server-side apply refuses to change a field another field manager set.
``helm install`` creates the CRD as manager ``helm`` (Helm 3 by a plain create, Helm 4 by its own
server-side apply), so the new schema (``.spec.versions``) conflicts with ``helm`` and a plain
``kubectl apply --server-side`` fails. Taking those fields over is the point of the upgrade, and
Helm never writes them again (it does not upgrade ``crds/``).

The CRD is cluster-scoped and the other tests use the current one: each test puts it back."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._controlplane import ApiError, ControlPlane

REPO = Path(__file__).resolve().parents[1]
CHART_CRDS = REPO / "helm" / "ferry" / "crds"
SHIPPED = REPO / "operator" / "ferry_operator" / "crds" / "modelpipelines.ferry.dev.yaml"
DOCUMENTED = "ferry operator crds | kubectl apply --server-side --force-conflicts -f -"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PIPELINES = "/apis/ferry.dev/v1alpha1/namespaces/{ns}/modelpipelines"
NEW_FIELD = "traffic"  # a status field a later release added (the canary's split)
SPLIT = "v2=20%,v1=80%"


def _chart_crds() -> list[dict[str, Any]]:
    return [d for path in sorted(CHART_CRDS.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def _chart_crd_names() -> list[str]:
    return [d["metadata"]["name"] for d in _chart_crds()]


def current_crd() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


def older_crd(field: str = NEW_FIELD) -> dict[str, Any]:
    """The current CRD as a release before ``status.<field>`` existed shipped it: without the
    property and without the printer column that shows it."""
    crd = copy.deepcopy(current_crd())
    for version in crd["spec"]["versions"]:
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        del status[field]
        version["additionalPrinterColumns"] = [c for c in version.get("additionalPrinterColumns", [])
                                               if c["jsonPath"] != f".status.{field}"]
    return crd


def _live(plane: ControlPlane, name: str) -> dict[str, Any] | None:
    try:
        return plane.raw("GET", f"{CRDS}/{name}")
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise


def _established(plane: ControlPlane, name: str) -> bool:
    live = _live(plane, name)
    return live is not None and any(c["type"] == "Established" and c["status"] == "True"
                                    for c in (live.get("status") or {}).get("conditions") or [])


def _remove(plane: ControlPlane, name: str) -> None:
    """Delete the CRD (and with it every ModelPipeline) and wait until it is gone."""
    if _live(plane, name) is not None:
        try:
            plane.raw("DELETE", f"{CRDS}/{name}")
        except ApiError as exc:
            if exc.code != 404:
                raise
    plane.wait_for(lambda: _live(plane, name) is None, f"CRD {name} deleted")


# How a cluster got its CRD in the first place: Helm's first install (which never touches it
# again), or an earlier run of the documented command.
def _helm3_install(plane: ControlPlane, crd: dict[str, Any]) -> None:
    """Helm 3 creates what ``crds/`` holds with a plain create, as field manager ``helm``."""
    plane.raw("POST", f"{CRDS}?fieldManager=helm", crd)


def _helm4_install(plane: ControlPlane, crd: dict[str, Any]) -> None:
    """Helm 4 applies it server-side as field manager ``helm``."""
    plane.raw("PATCH", f"{CRDS}/{crd['metadata']['name']}?fieldManager=helm&force=true", crd,
              content_type="application/apply-patch+yaml")


def _client_side_apply(plane: ControlPlane, crd: dict[str, Any]) -> None:
    """``kubectl apply -f`` (client-side, the last-applied annotation)."""
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd))


def _documented_apply(plane: ControlPlane, crd: dict[str, Any]) -> None:
    """An earlier release's ``kubectl apply --server-side --force-conflicts`` (manager ``kubectl``)."""
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(crd))


INSTALLERS: dict[str, Callable[[ControlPlane, dict[str, Any]], None]] = {
    "helm3-create": _helm3_install, "helm4-server-side-apply": _helm4_install,
    "kubectl-client-side-apply": _client_side_apply, "documented-command": _documented_apply}


def install(plane: ControlPlane, crd: dict[str, Any], how: Callable[[ControlPlane, dict[str, Any]], None]) -> None:
    name = crd["metadata"]["name"]
    _remove(plane, name)
    how(plane, crd)
    plane.wait_for(lambda: _established(plane, name), f"CRD {name} established")


@pytest.fixture
def crd_put_back(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The current CRD, as the session installed it, once the test is done however it ended."""
    yield control_plane
    crd = current_crd()
    live = _live(control_plane, crd["metadata"]["name"])
    if live is None or live["metadata"].get("deletionTimestamp"):
        _remove(control_plane, crd["metadata"]["name"])
    control_plane.install_crds(SHIPPED)
    assert _versions(_live(control_plane, crd["metadata"]["name"])) == _versions(crd)


def documented_command(plane: ControlPlane, command: str = DOCUMENTED) -> subprocess.CompletedProcess[str]:
    """``command`` in a shell, as a user runs it: the installed ``ferry`` and the real ``kubectl``
    on PATH, the cluster in KUBECONFIG."""
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(plane.bin), os.environ.get("PATH", "")])}
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env,
                          timeout=120)


def _pipeline(namespace: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "manifests/examples/pipelines/digits-pipeline.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


def _create(plane: ControlPlane, doc: dict[str, Any]) -> dict[str, Any]:
    """Create ``doc``; a CRD just established may take a moment to be served."""
    path = PIPELINES.format(ns=doc["metadata"]["namespace"])

    def attempt() -> dict[str, Any] | None:
        try:
            return plane.raw("POST", path, doc)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    return plane.wait_for(attempt, "the ModelPipeline resource served", timeout=30)


def write_status(plane: ControlPlane, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """The operator's status write: a merge patch of the status subresource."""
    return plane.raw("PATCH", f"{PIPELINES.format(ns=namespace)}/{name}/status", {"status": status})


def _versions(crd: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v[k] for k in ("name", "served", "storage", "schema", "subresources", "additionalPrinterColumns")
             if k in v} for v in crd["spec"]["versions"]]


# ---- the documented command prints what the chart installs ------------------------------------------
def test_ferry_operator_crds_prints_the_charts_crds(ferry_cli: Any) -> None:
    done = ferry_cli("operator", "crds")
    assert done.returncode == 0, done.stderr
    printed = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert printed == _chart_crds()
    assert {d["metadata"]["name"] for d in printed} >= {current_crd()["metadata"]["name"]}


def test_the_older_crd_differs_by_the_new_field_alone() -> None:
    old, new = older_crd(), current_crd()
    assert NEW_FIELD in new["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    old_status = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert NEW_FIELD not in old_status and len(old_status) > 10


# ---- on the real control plane ----------------------------------------------------------------------
@pytest.mark.parametrize("installer", list(INSTALLERS))
def test_the_documented_command_upgrades_an_older_crd_and_the_new_status_field_is_kept(
        crd_put_back: ControlPlane, installer: str) -> None:
    plane = crd_put_back
    name = current_crd()["metadata"]["name"]
    namespace = plane.namespace("crd-upgrade")
    try:
        install(plane, older_crd(), INSTALLERS[installer])
        created = _create(plane, _pipeline(namespace))
        pipeline = created["metadata"]["name"]

        # the defect: the API server prunes what its (old) schema does not declare, and says nothing
        written = write_status(plane, namespace, pipeline, {"phase": "Canary", NEW_FIELD: SPLIT})
        assert written["status"]["phase"] == "Canary"
        assert NEW_FIELD not in written["status"], "the older CRD was expected to prune status.traffic"

        # the upgrade, as documented
        done = documented_command(plane)
        assert done.returncode == 0, f"{DOCUMENTED} failed after {installer}:\n{done.stderr}"
        assert f"customresourcedefinition.apiextensions.k8s.io/{name} serverside-applied" in done.stdout
        live = plane.wait_for(lambda: _established(plane, name) and _live(plane, name), f"CRD {name} established")
        assert _versions(live) == _versions(current_crd()), "the live CRD is not the one Ferry ships"

        # the pipeline is untouched, and the same write now keeps the field
        kept = plane.raw("GET", f"{PIPELINES.format(ns=namespace)}/{pipeline}")
        assert kept["metadata"]["uid"] == created["metadata"]["uid"]
        assert kept["spec"] == created["spec"]
        assert kept["status"]["phase"] == "Canary"
        written = write_status(plane, namespace, pipeline, {"phase": "Canary", NEW_FIELD: SPLIT})
        assert written["status"][NEW_FIELD] == SPLIT
        assert plane.raw("GET", f"{PIPELINES.format(ns=namespace)}/{pipeline}")["status"][NEW_FIELD] == SPLIT
        columns = plane.kubectl("get", "modelpipelines", "-n", namespace).stdout
        assert "TRAFFIC" in columns and SPLIT in columns, columns

        # a second run is a no-op: nothing conflicts, nothing is written
        before = {crd: _live(plane, crd)["metadata"]["resourceVersion"] for crd in _chart_crd_names()}
        again = documented_command(plane)
        assert again.returncode == 0, again.stderr
        assert "conflict" not in again.stderr.lower(), again.stderr
        assert {crd: _live(plane, crd)["metadata"]["resourceVersion"] for crd in before} == before
    finally:
        plane.delete_namespace(namespace)


def test_without_force_conflicts_the_upgrade_of_a_crd_helm_created_is_refused(crd_put_back: ControlPlane) -> None:
    """Why the documented command forces: Helm's install owns the fields the upgrade changes."""
    plane = crd_put_back
    name = current_crd()["metadata"]["name"]
    install(plane, older_crd(), _helm3_install)
    refused = documented_command(plane, DOCUMENTED.replace(" --force-conflicts", ""))
    assert refused.returncode != 0
    assert 'conflict with "helm"' in refused.stderr and ".spec.versions" in refused.stderr, refused.stderr
    live = _live(plane, name)
    status = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert NEW_FIELD not in status, "a refused apply changed the CRD"
