"""Promotion through gates, history, rollback and GitOps against real MLflow registries: the
embedded SQLite store and an ``mlflow server`` on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from ferry import Promotion
from ferry.errors import PromotionConflict, PromotionRefused, RegistryError
from ferry.registry import alias_holder, promote, read_history, rollback

pytestmark = pytest.mark.integration
FERRY = str(Path(sys.executable).with_name("ferry"))


def seed(client, name: str, accuracies: list[float]) -> None:
    """One run per version with its test_accuracy, and an MLmodel saying it is a PyTorch model."""
    exp = client.create_experiment(f"exp-{uuid.uuid4().hex[:8]}")
    client.create_registered_model(name)
    for acc in accuracies:
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "test_accuracy", acc)
        client.log_text(run.info.run_id, "flavors:\n  pytorch:\n    pytorch_version: 2.13.0\n", "model/MLmodel")
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request, tmp_path):
    from mlflow import MlflowClient

    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        client = MlflowClient(uri, uri)
        client.create_experiment("artifacts-here", artifact_location=(tmp_path / "a").as_uri())
    else:
        uri = request.getfixturevalue("postgres_mlflow").url
        client = MlflowClient(uri, uri)
    name = f"digits-{uuid.uuid4().hex[:6]}"
    seed(client, name, [0.90, 0.95, 0.80])
    return uri, client, name


def test_gates_history_rollback(registry):
    _, client, name = registry
    policy = Promotion(model=name, min_value=0.85)
    assert promote(client, policy, name, "1", "staging").changed
    assert promote(client, policy, name, "1", "production").to_version == "1"
    with pytest.raises(PromotionRefused, match="order gate failed: version 2 does not hold staging's alias"):
        promote(client, policy, name, "2", "production")
    promote(client, policy, name, "2", "staging")
    promote(client, policy, name, "2", "production")
    assert alias_holder(client, name, "champion") == "2"
    with pytest.raises(PromotionRefused, match=r"threshold gate failed: test_accuracy 0.8, needs >= 0.85; beat gate failed: test_accuracy 0.8 vs 'staging' v2 0.95"):
        promote(client, policy, name, "3", "staging")
    assert alias_holder(client, name, "staging") == "2"  # refused: nothing changed
    forced = promote(client, policy, name, "3", "staging", force=True)
    assert forced.forced and alias_holder(client, name, "staging") == "3"
    again = promote(client, policy, name, "3", "staging", force=True)
    assert not again.changed  # holding it already: a no-op, no history entry
    staging = read_history(client, name, "staging")
    assert [(e.from_version, e.to_version, e.forced) for e in staging] == [(None, "1", False), ("1", "2", False), ("2", "3", True)]
    assert any(g["gate"] == "beat" and not g["passed"] for g in staging[-1].gates)
    back = rollback(client, name, "staging")
    assert (back.from_version, back.to_version) == ("3", "2") and alias_holder(client, name, "staging") == "2"
    assert read_history(client, name, "staging")[-1].action == "rollback"
    assert [e.to_version for e in read_history(client, name, "production")] == ["1", "2"]


BAD = [
    (dict(name="absent", version="1", env="staging"), RegistryError, "no registered model 'absent'"),
    (dict(version="9", env="staging"), RegistryError, "has no version 9"),
    (dict(version="1", env="qa"), RegistryError, "unknown environment 'qa'; the policy for .* knows staging, production"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=["unknown-model", "unknown-version", "unknown-env"])
def test_bad_promotions(registry, call, error, message):
    _, client, name = registry
    args = {"name": name, **call}
    with pytest.raises(error, match=message):
        promote(client, Promotion(model=args["name"]), args["name"], args["version"], args["env"])
    assert alias_holder(client, name, "staging") is None and read_history(client, name) == []


def test_rollback_with_empty_history_is_a_clear_error(registry):
    _, client, name = registry
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(client, name, "production")


def _token(claims: dict) -> str:
    import base64
    import json

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


ACTORS = [  # (explicit, FERRY_ACTOR, git email, token claims, expected)
    ("alice", "bot", "dev@acme.io", {"sub": "system:serviceaccount:ml:ferry"}, "alice"),
    (None, "bot", "dev@acme.io", {"sub": "system:serviceaccount:ml:ferry"}, "bot"),
    (None, None, "dev@acme.io", {"sub": "system:serviceaccount:ml:ferry"}, "dev@acme.io"),
    (None, None, None, {"sub": "system:serviceaccount:ml:ferry"}, "system:serviceaccount:ml:ferry"),
    (None, None, None, None, "@"),  # $USER@host
    (None, None, None, "not-a-jwt", "@"),
]


@pytest.mark.parametrize("explicit,env_actor,email,claims,expected", ACTORS,
                         ids=["flag", "env", "git", "service-account", "user-at-host", "bad-token"])
def test_actor_names_a_real_person_or_identity(explicit, env_actor, email, claims, expected, tmp_path, monkeypatch):
    from ferry.registry import resolve_actor

    work = tmp_path / "tree"
    work.mkdir()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))  # no user's global config
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    if env_actor:
        monkeypatch.setenv("FERRY_ACTOR", env_actor)
    else:
        monkeypatch.delenv("FERRY_ACTOR", raising=False)
    _git(work, "init", "-q")
    if email:
        _git(work, "config", "user.email", email)
    token = tmp_path / "token"
    if claims is not None:
        token.write_text(claims if isinstance(claims, str) else _token(claims))
    actor = resolve_actor(explicit, cwd=work, token_path=token)
    assert actor == expected if expected != "@" else ("@" in actor and "unknown" not in actor)


def test_lock_refuses_a_concurrent_promotion(registry):
    from ferry.registry._history import EnvLock

    _, client, name = registry
    with EnvLock(client, name, "staging", "someone@else"):
        with pytest.raises(PromotionConflict, match="in progress"):
            promote(client, Promotion(model=name), name, "1", "staging")
    promote(client, Promotion(model=name), name, "1", "staging")  # released afterwards


@pytest.mark.parametrize("command", [["promote", "--version", "2", "--env", "staging"], ["rollback", "--env", "staging"]],
                         ids=["promote", "rollback"])
def test_a_lock_another_holds_exits_4(registry, command, ferry_cli):
    """Another promotion holds the environment's lock: a conflict (4) a script may retry, as the
    cluster's conflicts are, not bad input."""
    from ferry.registry._history import EnvLock

    uri, client, name = registry
    promote(client, Promotion(model=name), name, "1", "staging")
    with EnvLock(client, name, "staging", "someone@else"):
        held = ferry_cli(command[0], name, *command[1:], env={"MLFLOW_TRACKING_URI": uri})
    assert held.returncode == 4, held.stderr
    assert "in progress" in held.stderr and "someone@else" in held.stderr and "Traceback" not in held.stderr
    assert alias_holder(client, name, "staging") == "1"


def test_ten_concurrent_promotions(postgres_mlflow, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(postgres_mlflow.url, postgres_mlflow.url)
    name = f"race-{uuid.uuid4().hex[:6]}"
    seed(client, name, [0.9] * 10)
    policy = tmp_path / "policy.py"
    policy.write_text(f"from ferry import Promotion\np = Promotion(model={name!r}, must_beat=None)\n")

    def run(version: int):
        return subprocess.run([FERRY, "promote", name, "--version", str(version), "--env", "staging", "--policy", str(policy)],
                              capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "MLFLOW_TRACKING_URI": postgres_mlflow.url})

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(run, range(1, 11)))
    winners = [i + 1 for i, r in enumerate(results) if r.returncode == 0]
    losers = [r for r in results if r.returncode != 0]
    assert winners, [r.stderr for r in results]
    assert all(r.returncode == 4 and "in progress" in r.stderr for r in losers), [r.stderr for r in losers]
    history = read_history(client, name, "staging")
    assert sorted(int(e.to_version) for e in history) == sorted(winners)  # one entry per success
    for before, after in zip(history, history[1:]):  # a consistent chain: each from = the previous to
        assert after.from_version == before.to_version
    assert alias_holder(client, name, "staging") == history[-1].to_version
    assert client.search_registered_models(filter_string="name LIKE 'ferry-lock--%'") == []


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_gitops_promotion(registry, tmp_path, ferry_cli):
    uri, client, name = registry
    gitops = tmp_path / "gitops"
    gitops.mkdir()
    _git(gitops, "init", "-q")
    _git(gitops, "config", "user.email", "ci@ferry.test")
    env = {"MLFLOW_TRACKING_URI": uri}
    result = ferry_cli("promote", name, "--version", "2", "--env", "staging", "--gitops-dir", str(gitops), "--commit", env=env)
    assert result.returncode == 0, result.stderr
    isvc = yaml.safe_load((gitops / "staging" / name / "inferenceservice.yaml").read_text())
    storage = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert storage == f"models:/{name}/2"  # pinned: the version, never the alias
    assert isvc["metadata"]["namespace"] == "staging" and isvc["metadata"]["annotations"]["ferry.dev/model-version"] == "2"
    assert yaml.safe_load((gitops / "staging" / name / "kustomization.yaml").read_text())["resources"] == ["inferenceservice.yaml"]
    message = _git(gitops, "log", "-1", "--format=%B")
    assert f"{name}: staging → v2" in message and "beat pass" in message
    again = ferry_cli("promote", name, "--version", "2", "--env", "staging", "--gitops-dir", str(gitops), "--commit", env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert _git(gitops, "rev-list", "--count", "HEAD").strip() == "1"  # identical promote: no new commit
    refused = ferry_cli("promote", name, "--version", "3", "--env", "staging", env=env)
    assert refused.returncode == 1 and "beat gate failed" in refused.stderr and "FAIL" in refused.stdout
    history = ferry_cli("models", "history", name, env=env)
    assert history.returncode == 0 and "staging" in history.stdout and "v2" in history.stdout
    assert read_history(client, name, "staging")[-1].actor == "ci@ferry.test"  # the gitops tree's git user.email
    forced = ferry_cli("promote", name, "--version", "3", "--env", "staging", "--force", "--actor", "release-bot", env=env)
    assert forced.returncode == 0, forced.stderr
    rolled = ferry_cli("rollback", name, "--env", "staging", "--actor", "oncall@acme.io", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert [e.actor for e in read_history(client, name, "staging")] == ["ci@ferry.test", "release-bot", "oncall@acme.io"]
    shown = ferry_cli("models", "show", name, env=env)
    assert shown.returncode == 0 and "staging" in shown.stdout and "0.9500" in shown.stdout


def test_promote_to_an_unreachable_server_is_a_clear_error(ferry_cli):
    """No registry answers, so no backend to run it on: once, not once per registry. Exit 10:
    the same command may succeed once MLflow is back."""
    name = f"digits-{uuid.uuid4().hex[:6]}"
    down = ferry_cli("promote", name, "--version", "2", "--env", "production", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert down.returncode == 10 and "tracking server http://127.0.0.1:9 is unreachable" in down.stderr
