"""GitOps output: each environment's manifests, pinned to an immutable model version, as
files a reviewer sees as a git diff (Argo CD or Flux applies them).

    <root>/<env>/<model>/inferenceservice.yaml
    <root>/<env>/<model>/kustomization.yaml
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from ferry import _k8s
from ferry.errors import ConfigError
from ferry.render import ResolvedModel, dump_yaml, render_inferenceservice
from ferry.spec import Deployment, Promotion

__all__ = ["commit", "deployment_for", "write_environment"]


def deployment_for(policy: Promotion, name: str, version: str, env: str, canary: bool) -> Deployment:
    """The Deployment that serves ``name`` version ``version`` in ``env``."""
    base = policy.deployment
    fields: dict[str, Any] = {n: getattr(base, n) for n in type(base).model_fields} if base else {}
    service = fields.get("name") or _service_name(name)
    fields.update(name=service, model=f"models:/{name}/{version}", namespace=env)
    if canary and policy.canary_percent is not None:
        fields["canary_percent"] = policy.canary_percent
    return Deployment(**fields)


def _service_name(model: str) -> str:
    name = "".join(c if c.isalnum() else "-" for c in model.lower()).strip("-")[:45].rstrip("-")
    if not name or not name[0].isalpha() or _k8s.dns1035_problem(name, max_len=45):
        raise ConfigError(f"cannot derive a service name from model {model!r}; give the policy a deployment=Deployment(name=...)")
    return name


def write_environment(root: Path, env: str, model: str, deployment: Deployment, resolved: ResolvedModel) -> list[Path]:
    """Write the environment's manifests; returns the files whose bytes changed."""
    folder = Path(root) / env / model
    files = {
        folder / "inferenceservice.yaml": dump_yaml([render_inferenceservice(deployment, resolved)]),
        folder / "kustomization.yaml": dump_yaml([{
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": env, "resources": ["inferenceservice.yaml"],
        }]),
    }
    changed = []
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            changed.append(path)
    return changed


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


def commit(root: Path, paths: list[Path], message: str) -> bool:
    """Commit ``paths`` in the repository that holds ``root``; False when nothing changed."""
    if _git(root, "rev-parse", "--show-toplevel").returncode != 0:
        raise ConfigError(f"--commit: {root} is not inside a git repository; run `git init {root}` first")
    rel = [str(p.resolve()) for p in paths]
    if not rel:
        return False
    _git(root, "add", "--", *rel)
    if _git(root, "diff", "--cached", "--quiet", "--", *rel).returncode == 0:
        return False
    identity = [] if _git(root, "config", "user.email").stdout.strip() else ["-c", "user.name=ferry", "-c", "user.email=ferry@localhost"]
    result = subprocess.run(["git", *identity, "-C", str(root), "commit", "-q", "-m", message, "--", *rel], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"git commit in {root} failed: {result.stderr.strip()}")
    return True
