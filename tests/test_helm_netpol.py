"""The chart's NetworkPolicies, played as a CNI plays them (tests/_netpol.py) on the policies, pods
and namespaces as the real API server holds them: the release installed into a namespace enforcing
Pod Security "restricted" (its pods made by the real controllers), a team's namespace labelled for
Ferry, one not labelled, and a cluster DNS. MLflow admits the release's own pods and the labelled
namespaces, nothing else; `helm test` reaches it; MLflow reaches its database.

The evaluator itself is checked first against Kubernetes' NetworkPolicy semantics, on policies
written here."""

from __future__ import annotations

from typing import Any

import pytest

from tests._netpol import Cluster, Endpoint, selects
from tests.test_helm_production import BUNDLED, EXTERNAL, installed, merged, pods_of

TRACKING = {"ferry.dev/tracking": "true"}


# ---- the evaluator, on policies written here -------------------------------------------------------
def _policy(namespace: str, selector: dict[str, Any], types: list[str], ingress: list[Any] | None = None,
            egress: list[Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"metadata": {"name": f"p-{len(str(spec))}", "namespace": namespace}, "spec": spec}


WEB = Endpoint("web", "a", {"app": "web"}, {"http": (8080, "TCP")})
CLIENT = Endpoint("client", "a", {"app": "client"})
OTHER_NS = Endpoint("other", "b", {"app": "client"})
OUTSIDE = Endpoint.outside("outside", "203.0.113.9")
NAMESPACES = {"a": {"kubernetes.io/metadata.name": "a", "team": "x"}, "b": {"kubernetes.io/metadata.name": "b"}}
ONLY_WEB = {"matchLabels": {"app": "web"}}


@pytest.mark.parametrize("policies, source, destination, port, allowed", [
    ([], CLIENT, WEB, 8080, True),  # nothing selects either pod: open
    ([_policy("a", ONLY_WEB, ["Ingress"])], CLIENT, WEB, 8080, False),  # selected, no rule: default deny
    ([_policy("a", ONLY_WEB, ["Ingress"], [{}])], OTHER_NS, WEB, 8080, True),  # an empty rule admits all
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"from": [{"podSelector": {}}]}])], OTHER_NS, WEB, 8080, False),
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"from": [{"podSelector": {}}]}])], CLIENT, WEB, 8080, True),
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}])],
     OTHER_NS, WEB, 8080, False),
    # namespaceSelector and podSelector in one peer: both; in two peers: either
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"from": [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app": "nobody"}}}]}])], OTHER_NS, WEB, 8080, False),
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"from": [{"namespaceSelector": {}}, {"podSelector": {
        "matchLabels": {"app": "nobody"}}}]}])], OTHER_NS, WEB, 8080, True),
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"ports": [{"port": 9090}]}])], CLIENT, WEB, 8080, False),
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"ports": [{"port": "http"}]}])], CLIENT, WEB, 8080, True),  # named
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"ports": [{"port": 8000, "endPort": 8100}]}])], CLIENT, WEB, 8080, True),
    ([_policy("a", ONLY_WEB, ["Ingress"], [{"ports": [{"protocol": "UDP", "port": 8080}]}])], CLIENT, WEB, 8080, False),
    # egress: the source's policies; a connection needs both sides
    ([_policy("a", {}, ["Egress"])], CLIENT, WEB, 8080, False),
    ([_policy("a", {}, ["Egress"], egress=[{"to": [{"podSelector": ONLY_WEB}]}]),
      _policy("a", ONLY_WEB, ["Ingress"])], CLIENT, WEB, 8080, False),
    ([_policy("a", {}, ["Egress"], egress=[{"to": [{"podSelector": ONLY_WEB}]}]),
      _policy("a", ONLY_WEB, ["Ingress"], [{}])], CLIENT, WEB, 8080, True),
    ([_policy("a", {}, ["Egress"], egress=[{"ports": [{"port": 443}]}])], CLIENT, OUTSIDE, 443, True),
    ([_policy("a", {}, ["Egress"], egress=[{"to": [{"podSelector": {}}]}])], CLIENT, OUTSIDE, 443, False),
    ([_policy("a", {}, ["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}])], CLIENT, OUTSIDE, 1, True),
    ([_policy("a", {}, ["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.8/29"]}}]}])],
     CLIENT, OUTSIDE, 1, False),
    # a policy selects pods of its own namespace only; the union of the rules of all that select
    ([_policy("b", {}, ["Ingress"])], CLIENT, WEB, 8080, True),
    ([_policy("a", ONLY_WEB, ["Ingress"]), _policy("a", {}, ["Ingress"], [{"ports": [{"port": 8080}]}])],
     CLIENT, WEB, 8080, True),
    # policyTypes unset: Ingress, and Egress only with egress rules
    ([{"metadata": {"name": "p", "namespace": "a"}, "spec": {"podSelector": {}}}], CLIENT, WEB, 8080, False),
    ([{"metadata": {"name": "p", "namespace": "a"}, "spec": {"podSelector": {}, "ingress": [{}]}}], CLIENT, OUTSIDE, 1, True),
])
def test_the_evaluator_plays_kubernetes_networkpolicy_semantics(policies: list[dict[str, Any]], source: Endpoint,
                                                                 destination: Endpoint, port: int, allowed: bool) -> None:
    cluster = Cluster(policies, NAMESPACES)
    assert cluster.allows(source, destination, port) is allowed, cluster.explain(source, destination, port)


def test_label_selectors_match_as_kubernetes_matches_them() -> None:
    labels = {"app": "web", "tier": "front"}
    assert selects({}, labels) and selects(None, {})
    assert selects({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["front", "back"]}, {"key": "gone", "operator": "DoesNotExist"},
        {"key": "app", "operator": "NotIn", "values": ["db"]}, {"key": "tier", "operator": "Exists"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "gone", "operator": "In", "values": ["x"]}]}, labels)
    assert not selects({"matchLabels": {"app": "web", "tier": "back"}}, labels)


# ---- the chart's policies on the real control plane ---------------------------------------------------
def _pod(plane: Any, namespace: str, name: str, labels: dict[str, str], ports: dict[str, int] | None = None) -> dict[str, Any]:
    """A pod as a team's workload would be, restricted (it never runs: no kubelet here)."""
    return plane.raw("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "main", "image": "registry.example.com/app:1",
                                 "ports": [{"name": n, "containerPort": p} for n, p in (ports or {}).items()],
                                 "securityContext": {"allowPrivilegeEscalation": False,
                                                     "capabilities": {"drop": ["ALL"]}}}]}})


@pytest.mark.parametrize("values", [
    merged(BUNDLED, {"networkPolicies": {"enabled": True}}),
    merged(EXTERNAL, {"networkPolicies": {"enabled": True}, "operator": {"mlflowCredentialsSecret": "operator-mlflow"},
                      "mlflow": {"auth": {"enabled": True, "existingSecret": "mlflow-auth"}}}),
], ids=["bundled-postgresql", "existing-database-with-auth"])
def test_mlflow_admits_the_release_and_the_labelled_namespaces_and_reaches_its_database(
        control_plane: Any, namespace: str, values: dict[str, Any]) -> None:
    plane = control_plane
    team = plane.namespace("team")
    stranger = plane.namespace("stranger")
    dns = plane.namespace("dns")
    try:
        plane.raw("PATCH", f"/api/v1/namespaces/{team}", {"metadata": {"labels": TRACKING}})
        for ns in (team, stranger, dns):
            plane.wait_for(lambda n=ns: plane.exists(f"/api/v1/namespaces/{n}/serviceaccounts/default"),
                           f"the default ServiceAccount of {ns}")
        with installed(plane, values, namespace):
            def endpoint(component: str) -> Endpoint:
                return Endpoint.of_pod(pods_of(plane, namespace, component)[0])

            mlflow, operator, test = endpoint("mlflow"), endpoint("operator"), endpoint("test")
            job = Endpoint.of_pod(_pod(plane, team, "digits-master-0", {
                "training.kubeflow.org/job-name": "digits", "app.kubernetes.io/managed-by": "ferry"}))
            predictor = Endpoint.of_pod(_pod(plane, team, "digits-predictor-0", {
                "serving.kserve.io/inferenceservice": "digits", "app.kubernetes.io/managed-by": "ferry"}, {"http": 8080}))
            outsider = Endpoint.of_pod(_pod(plane, stranger, "curious", {"app": "curious"}))
            kube_dns = Endpoint.of_pod(_pod(plane, dns, "coredns", {"k8s-app": "kube-dns"}))
            if values.get("postgresql", {}).get("enabled"):
                database = endpoint("postgresql")
                migration = mlflow  # the bundled database: the migration is the server pod's init container
            else:
                database = Endpoint.outside("managed PostgreSQL", "10.40.0.7")
                migration = endpoint("mlflow-migration")

            policies = plane.raw("GET", "/apis/networking.k8s.io/v1/networkpolicies")["items"]
            labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {}
                      for n in plane.raw("GET", "/api/v1/namespaces")["items"]}
            cluster = Cluster(policies, labels)
            allowed = [(test, mlflow, 5000), (test, kube_dns, 53, "UDP"), (job, mlflow, 5000), (predictor, mlflow, 5000),
                       (operator, mlflow, 5000), (mlflow, database, 5432), (migration, database, 5432),
                       (mlflow, kube_dns, 53, "UDP"), (operator, kube_dns, 53, "TCP")]
            refused = [(outsider, mlflow, 5000), (job, mlflow, 9999), (test, operator, 8080), (test, database, 5432),
                       (mlflow, predictor, 8080), (outsider, operator, 5000)]
            if values.get("postgresql", {}).get("enabled"):
                refused += [(job, database, 5432), (operator, database, 5432)]
            for flow in allowed:
                assert cluster.allows(*flow), cluster.explain(*flow)
            for flow in refused:
                assert not cluster.allows(*flow), cluster.explain(*flow)
    finally:
        for ns in (team, stranger, dns):
            plane.delete_namespace(ns)
