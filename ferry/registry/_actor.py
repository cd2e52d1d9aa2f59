"""Who is promoting: the name the promotion history records for each change.

In order: an explicit name (``--actor``, or ``FERRY_ACTOR`` for pipelines), the git
``user.email`` of the working tree, the Kubernetes service account when running in a pod
(``system:serviceaccount:<namespace>:<name>``, read from the mounted token's claims), and
last ``$USER@host``.
"""

from __future__ import annotations

import base64
import getpass
import json
import socket
import subprocess
from pathlib import Path

from ferry import settings

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def _git_email(cwd: Path | None) -> str | None:
    try:
        out = subprocess.run(["git", "config", "user.email"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _service_account(token_path: Path) -> str | None:
    """The subject of a service-account token (a JWT; its claims are read, not verified: this
    names who acts, it authorizes nothing)."""
    try:
        payload = token_path.read_text().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (OSError, IndexError, ValueError):
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) and subject.startswith("system:serviceaccount:") else None


def _user_at_host() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary UID)
        user = "uid-unknown"
    return f"{user}@{socket.gethostname()}"


def resolve_actor(explicit: str | None = None, *, cwd: Path | None = None,
                  token_path: Path = SERVICE_ACCOUNT_TOKEN) -> str:
    """The actor to record (see the module docstring for the order)."""
    return (explicit or settings.FERRY_ACTOR.get() or _git_email(cwd) or _service_account(token_path)
            or _user_at_host())
