"""The API server's answers, kept in their meaning: each failure becomes the ClusterError that
says what happened and what to do, in one line (plus one line per cause).

What the API server sends (a ``Status`` object):
- 403 ``Forbidden``: RBAC (``User "x" cannot patch resource "pytorchjobs" in API group
  "kubeflow.org" in the namespace "ml"``), or an admission denial: Pod Security
  (``violates PodSecurity "restricted:latest": a (why), b (why)``), a webhook
  (``admission webhook "x" denied the request: ...``) or a ResourceQuota
  (``exceeded quota: q, requested: count/pytorchjobs.kubeflow.org=1, used: ..., limited: ...``).
- 404: the object, its namespace (``details.kind == "namespaces"``), or the whole kind when its
  CRD is not installed (then the group/version's discovery document has no such resource).
- 409 ``AlreadyExists`` or ``Conflict`` (server-side apply: ``details.causes`` whose ``reason``
  is ``FieldManagerConflict``, each naming a field and the manager that owns it).
- 422 ``Invalid`` (``details.causes``: field and message), 400 ``BadRequest``.
- 500 ``failed to create typed patch object``: a server-side apply whose value has the wrong
  type for the schema (a string where a number belongs). The code says server error, but the
  answer never changes: it is a refusal of the object, not a transient failure.
- 401: the credentials were refused (expired token, revoked certificate).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ferry.errors import ClusterError, ClusterUnreachable, Conflict, Forbidden, NotFound, NotInstalled, Rejected

if TYPE_CHECKING:
    from ferry.kube._kinds import Kind


@dataclass(frozen=True)
class Action:
    """What was asked of the API server: the RBAC verb, the kind, where, which."""

    verb: str
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None = None

    def resource(self) -> str:
        base = self.kind.describe()
        return f"{base}/{self.subresource}" if self.subresource else base

    def target(self) -> str:
        name = f" {self.name!r}" if self.name else "s"
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.kind.kind}{name}{where}"


def _status(exc: Any) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {"message": (exc.body or exc.reason or "").strip()[:300]}
    return body if isinstance(body, dict) else {}


def _pod_security_violations(message: str) -> list[str]:
    """``... violates PodSecurity "restricted:latest": a (x), b (y, z)`` → ["a (x)", "b (y, z)"]."""
    _, _, tail = message.partition('": ')
    items, depth, current = [], 0, ""
    for ch in tail:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        items.append(current.strip())
    return items


def _causes(status: dict[str, Any]) -> list[dict[str, Any]]:
    return list((status.get("details") or {}).get("causes") or [])


_TYPED_PATCH = "failed to create typed patch object"


def is_transient(exc: Any) -> bool:
    """Whether an ``ApiException`` may succeed if sent again: 429 and 5xx, except a server-side
    apply refused for a wrongly typed value (answered 500, and the same every time)."""
    if exc.status == 500 and _TYPED_PATCH in (_status(exc).get("message") or ""):
        return False
    return exc.status in (429, 500, 502, 503, 504)


def translate(exc: Any, action: Action, *, context: str | None = None,
              serves: Callable[[Kind], bool] | None = None) -> ClusterError:
    """The ClusterError for an ``ApiException`` raised while doing ``action``: ``context`` is the
    kubeconfig context the request went to (named when credentials are refused), ``serves`` asks
    the API server whether it serves a kind (a 404 on a kind it does not serve: its CRD is not
    installed)."""
    status = _status(exc)
    code = exc.status
    reason = status.get("reason") or exc.reason or ""
    message = status.get("message") or ""
    details = status.get("details") or {}

    if code == 401:
        where = f" (context {context})" if context else ""
        return ClusterUnreachable(f"the API server refused the credentials{where} (401 Unauthorized): they are "
                                  "missing or expired; log in again (refresh the token or certificate in the "
                                  "kubeconfig)", status=code, reason="Unauthorized")
    if code == 403:
        if "violates PodSecurity" in message:
            level = re.search(r'PodSecurity "([^"]+)"', message)
            lines = "\n".join(f"  - {v}" for v in _pod_security_violations(message))
            return Rejected(f"admission denied {action.target()}: it violates Pod Security "
                            f"{level.group(1) if level else ''}; fix these in the spec:\n{lines}",
                            status=code, reason="PodSecurity")
        if "admission webhook" in message:
            return Rejected(f"admission denied {action.target()}: {message}", status=code, reason="AdmissionDenied")
        if "exceeded quota" in message:  # the ResourceQuota admission, not RBAC: it passes once usage drops
            quota = message.split("exceeded quota: ", 1)[-1]
            return Rejected(f"the namespace's ResourceQuota refused {action.target()}: exceeded quota {quota}; "
                            "wait for other work there to finish, or ask for a larger quota (kubectl describe "
                            "resourcequota)", status=code, reason="QuotaExceeded")
        user = re.search(r'User "([^"]+)"', message)
        who = f" as {user.group(1)}" if user else ""
        where = f"in namespace {action.namespace!r}" if action.namespace else "cluster-wide"
        return Forbidden(f"forbidden: you{who} may not {action.verb} {action.resource()} {where}; ask a cluster "
                         f"admin for a Role granting '{action.verb}' on {action.resource()} (Ferry's needs are "
                         "listed in docs/cli.md under RBAC)", status=code, reason="Forbidden")
    if code == 404:
        if details.get("kind") == "namespaces" or message.startswith("namespaces "):
            ns = details.get("name") or action.namespace
            return NotFound(f"namespace {ns!r} does not exist: create it (kubectl create namespace {ns}) or choose "
                            "another with --namespace", status=code, reason="NamespaceNotFound")
        if serves is not None and action.kind.group and not serves(action.kind):
            return NotInstalled(f"{action.kind.kind} ({action.kind.api_version}) is not installed in this cluster: "
                                f"{action.kind.installed_by}", status=code, reason="KindNotInstalled")
        hint = "; `ferry list -A` lists the jobs Ferry submitted" if action.kind.kind in ("PyTorchJob", "TrainJob") else ""
        return NotFound(f"{action.target()} not found{hint}", status=code, reason="ObjectNotFound")
    if code == 409:
        conflicts = [c for c in _causes(status) if "FieldManagerConflict" in (c.get("reason"), c.get("type"))]
        if conflicts:
            lines = "\n".join(f"  - {c.get('field', '?')}: {c.get('message', '')}" for c in conflicts)
            return Conflict(f"conflict applying {action.target()}: fields are owned by another field manager; "
                            "re-run with --force-conflicts to take them over, or change them where they are "
                            f"managed:\n{lines}", status=code, reason="FieldManagerConflict")
        return Conflict(f"conflict on {action.target()}: {message or reason}", status=code, reason=reason or "Conflict")
    if code in (400, 422):
        causes = _causes(status)
        if causes:
            lines = "\n".join(f"  - {c.get('field', '(object)')}: {c.get('message', c.get('reason', ''))}"
                              for c in causes)
            return Rejected(f"the API server refused {action.target()} ({reason or code}); fix these fields:\n{lines}",
                            status=code, reason=reason or "Invalid")
        if "admission webhook" in message:
            return Rejected(f"admission denied {action.target()}: {message}", status=code, reason="AdmissionDenied")
        return Rejected(f"the API server refused {action.target()} ({reason or code}): {message}", status=code,
                        reason=reason or "Invalid")
    if code == 500 and _TYPED_PATCH in message:
        field = message.rsplit("): ", 1)[-1]
        return Rejected(f"the API server refused {action.target()} (a value of the wrong type); fix this field:\n"
                        f"  - {field}", status=code, reason="Invalid")
    text = message or str(exc.reason or "")
    return ClusterError(f"the API server failed to {action.verb} {action.target()} ({code} {reason}): {text}"[:500],
                        status=code, reason=reason)
