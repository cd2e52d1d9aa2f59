"""What a CNI does with NetworkPolicies (networking.k8s.io/v1), for a cluster without one: whether
a connection from one endpoint to another is allowed by the policies as the API server holds them.

Kubernetes' rules, and only those:
- a pod is isolated for a direction (ingress, egress) when some policy of its namespace selects it
  (``spec.podSelector``) with that direction in ``spec.policyTypes``; an isolated pod admits, in that
  direction, only what some such policy's rule allows (the union of the rules); a pod no policy
  selects for a direction is open in it;
- a connection needs both ends: the source's egress and the destination's ingress;
- a rule without ``from``/``to`` admits every peer, one without ``ports`` every port; a peer with a
  ``podSelector`` alone means pods of the policy's own namespace, a ``namespaceSelector`` alone every
  pod of the namespaces it selects, both together pods that match both; an ``ipBlock`` matches an
  address (an endpoint outside the cluster) in its CIDR and in none of its ``except``;
- a port is a number (with ``endPort``, a range) or the name of one of the destination pod's
  container ports; its protocol is TCP unless it says otherwise.

What it does not play: pod IPs (no kubelet here gives pods an address, so an ``ipBlock`` matches only
endpoints outside the cluster) and traffic a CNI lets through regardless (a node's kubelet probes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod (its namespace, labels and named container ports) or an
    address outside the cluster (``namespace`` None, ``ip`` set)."""

    name: str
    namespace: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # name -> (number, protocol)
    ip: str | None = None

    @classmethod
    def of_pod(cls, pod: dict[str, Any]) -> Endpoint:
        """A pod as the API server holds it."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
                 for c in spec.get("containers") or [] for p in c.get("ports") or [] if p.get("name")}
        return cls(meta["name"], meta["namespace"], dict(meta.get("labels") or {}), ports)

    @classmethod
    def outside(cls, name: str, ip: str) -> Endpoint:
        return cls(name, None, ip=ip)


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) on ``labels``; ``{}`` selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"matchExpressions operator {op!r} is not a LabelSelector operator")
    return True


def policy_types(policy: dict[str, Any]) -> list[str]:
    """``spec.policyTypes``, or the API server's default when unset: Ingress, and Egress when the
    policy has egress rules."""
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


class Cluster:
    """The policies of a cluster and its namespaces' labels (``kubernetes.io/metadata.name`` is one
    of them, as the API server sets it)."""

    def __init__(self, policies: Iterable[dict[str, Any]], namespaces: Mapping[str, Mapping[str, str]]):
        self.policies = list(policies)
        self.namespaces = {name: dict(labels) for name, labels in namespaces.items()}

    def allows(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Whether ``source`` may open a connection to ``destination``'s ``port``."""
        return (self._admits(source, "Egress", destination, port, protocol)
                and self._admits(destination, "Ingress", source, port, protocol))

    def explain(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> str:
        """Which side refuses, for an assertion's message."""
        out = self._admits(source, "Egress", destination, port, protocol)
        into = self._admits(destination, "Ingress", source, port, protocol)
        return (f"{source.name} -> {destination.name}:{port}/{protocol}: egress of {source.name} "
                f"{'allows' if out else 'refuses'}, ingress of {destination.name} {'allows' if into else 'refuses'} "
                f"(isolating {source.name}: {self._isolating(source, 'Egress')}; "
                f"{destination.name}: {self._isolating(destination, 'Ingress')})")

    def _isolating(self, pod: Endpoint, direction: str) -> list[str]:
        return [p["metadata"]["name"] for p in self._selecting(pod, direction)]

    def _selecting(self, pod: Endpoint, direction: str) -> list[dict[str, Any]]:
        if pod.namespace is None:  # outside the cluster: no policy of ours applies
            return []
        return [p for p in self.policies if p["metadata"]["namespace"] == pod.namespace
                and direction in policy_types(p) and selects(p["spec"].get("podSelector"), pod.labels)]

    def _admits(self, pod: Endpoint, direction: str, peer: Endpoint, port: int, protocol: str) -> bool:
        selecting = self._selecting(pod, direction)
        if not selecting:
            return True
        # the port is always the destination's: the pod's own for ingress, the peer's for egress
        destination = pod if direction == "Ingress" else peer
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in selecting:
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key) or []
                if peers and not any(self._peer_matches(p, policy["metadata"]["namespace"], peer) for p in peers):
                    continue
                ports = rule.get("ports") or []
                if ports and not any(_port_matches(p, destination, port, protocol) for p in ports):
                    continue
                return True
        return False

    def _peer_matches(self, peer: dict[str, Any], policy_namespace: str, endpoint: Endpoint) -> bool:
        if "ipBlock" in peer:
            if endpoint.ip is None:
                return False
            address = ipaddress.ip_address(endpoint.ip)
            block = peer["ipBlock"]
            return (address in ipaddress.ip_network(block["cidr"])
                    and not any(address in ipaddress.ip_network(e) for e in block.get("except") or []))
        if endpoint.namespace is None:  # a selector matches pods only
            return False
        if "namespaceSelector" in peer:
            if not selects(peer["namespaceSelector"], self.namespaces.get(endpoint.namespace, {})):
                return False
        elif endpoint.namespace != policy_namespace:
            return False
        return "podSelector" not in peer or selects(peer["podSelector"], endpoint.labels)


def _port_matches(rule_port: dict[str, Any], destination: Endpoint, port: int, protocol: str) -> bool:
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str) and not wanted.isdigit():  # a named port of the destination pod
        return destination.ports.get(wanted) == (port, protocol)
    low = int(wanted)
    return low <= port <= int(rule_port.get("endPort", low))
