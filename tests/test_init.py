"""``ferry init``: the project it writes renders, validates, trains here and registers its
model, and its deploy file renders; bad names and folders in the way are refused whole."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ferry.cli import app

FERRY = str(Path(sys.executable).with_name("ferry"))
FILES = sorted(["pyproject.toml", "README.md", "Dockerfile", ".gitignore", ".ferryignore", ".dockerignore",
                "acme_fraud/__init__.py", "acme_fraud/job.py", "acme_fraud/train.py", "acme_fraud/deploy.py"])


def ferry(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def env_without_tracking(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **extra}


@pytest.mark.integration
def test_a_new_project_renders_trains_registers_and_deploys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: the project's own pyproject.toml is its root
    made = ferry("init", "acme-fraud")
    assert made.exit_code == 0, made.output
    project = tmp_path / "acme-fraud"
    assert sorted(tree(project)) == FILES
    assert "cd acme-fraud && ferry run acme_fraud/job.py" in made.output

    # the job renders into a PyTorchJob that validates against the CRDs, running the project's module
    monkeypatch.chdir(project)
    rendered = ferry("render", "acme_fraud/job.py", "-o", str(tmp_path / "manifests"))
    assert rendered.exit_code == 0, rendered.output
    checked = ferry("validate", str(tmp_path / "manifests"))
    assert checked.exit_code == 0 and "1 manifest(s) valid" in checked.output, checked.output
    (manifest,) = yaml.safe_load_all((tmp_path / "manifests" / "acme-fraud" / "pytorchjob.yaml").read_text())
    assert manifest["kind"] == "PyTorchJob" and manifest["metadata"]["name"] == "acme-fraud"
    (container,) = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert container["command"][-2:] == ["-m", "acme_fraud.train"]
    # the Dockerfile builds on the image the job names (Ferry's training image), and lints clean
    from ferry.images import image

    dockerfile = (project / "Dockerfile").read_text()
    assert container["image"] == image("train", variant="cpu") and f"FROM {container['image']}\n" in dockerfile
    hadolint = subprocess.run([str(Path(sys.executable).with_name("hadolint")), "--no-color", str(project / "Dockerfile")],
                              capture_output=True, text=True, timeout=60)
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr

    # trained here, into the embedded store: one run, one registered version of the model NAME
    home = tmp_path / "home"
    run = subprocess.run([FERRY, "run", "acme_fraud/job.py"], cwd=project, env=env_without_tracking(FERRY_HOME=str(home)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "succeeded: acme-fraud" in run.stdout and "registered model version: acme-fraud/1" in run.stdout
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("acme-fraud").experiment_id])
    assert mlflow_run.data.metrics["test_accuracy"] >= 0.9 and mlflow_run.data.params["world_size"] == "2"
    assert mlflow_run.data.tags["ferry.eval_data"] == "acme_fraud.train:eval_data"
    (version,) = client.search_model_versions("name='acme-fraud'")
    assert version.run_id == mlflow_run.info.run_id
    assert list((home / "volumes" / "ferry-checkpoints" / "acme-fraud").glob("*/finished"))

    # deploy.py serves the champion: once version 1 holds it (as `ferry promote --env production`
    # leaves it), it renders as an InferenceService pinned to that version
    client.set_registered_model_alias("acme-fraud", "champion", version.version)
    deployed = subprocess.run([FERRY, "deploy", "acme_fraud/deploy.py", "-o", str(tmp_path / "serving")], cwd=project,
                              env=env_without_tracking(FERRY_HOME=str(home)), capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    service = yaml.safe_load((tmp_path / "serving" / "acme-fraud" / "inferenceservice.yaml").read_text())
    assert service["kind"] == "InferenceService"
    assert service["spec"]["predictor"]["model"]["storageUri"] == "models:/acme-fraud/1"


@pytest.mark.parametrize("argv", [("init", "--help"), ("init", "light", "--dir", "{tmp}/light")], ids=["help", "init"])
def test_init_imports_nothing_heavy(argv, tmp_path):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ['ferry', *{argv!r}]
        try:
            from ferry.cli import main
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        print('\\n'.join(sorted(sys.modules)), file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    modules = {line.split(".")[0] for line in result.stderr.splitlines()}
    assert result.returncode == 0 and "ferry" in modules, result.stdout + result.stderr
    assert not modules & {"torch", "mlflow", "kserve"}


def test_the_code_bundle_holds_the_project_and_leaves_its_data_out(tmp_path):
    from ferry.code import collect

    assert ferry("init", "acme-fraud", "--dir", str(tmp_path / "p")).exit_code == 0
    project = tmp_path / "p"
    for data in ("data/train.csv", "acme_fraud/weights.pt", "acme_fraud/cache/x.npz", "manifests/acme-fraud/pytorchjob.yaml"):
        (project / data).parent.mkdir(parents=True, exist_ok=True)
        (project / data).write_text("x")
    shipped = sorted(name for name, _ in collect(project))
    assert shipped == FILES  # what `ferry submit` bundles: the project's files, none of the data
    assert (project / ".dockerignore").read_text() == (project / ".ferryignore").read_text()


BAD_NAMES = [
    ("uppercase", "Acme-Fraud", "must be a DNS-1035 label"),
    ("underscore", "acme_fraud", "must be a DNS-1035 label"),
    ("leading-digit", "1acme", "must be a DNS-1035 label"),
    ("trailing-dash", "acme-", "must be a DNS-1035 label"),
    ("dot", "acme.fraud", "must be a DNS-1035 label"),
    ("too-long", "a" * 46, "must be at most 45 characters (got 46)"),
    ("keyword", "class", "its package 'class' would be a Python keyword"),
    ("stdlib", "json", "its package 'json' would shadow the installed module 'json'"),
    ("ferry-itself", "ferry", "its package 'ferry' would shadow the installed module 'ferry'"),
    ("installed", "yaml", "its package 'yaml' would shadow the installed module 'yaml'"),
]


@pytest.mark.parametrize("name,message", [b[1:] for b in BAD_NAMES], ids=[b[0] for b in BAD_NAMES])
def test_bad_names_are_refused_and_nothing_is_written(name, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = ferry("init", name)
    assert result.exit_code == 2, result.output
    assert f"NAME {name!r}" in result.output and message in result.output and "e.g. `ferry init fraud-detector`" in result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_empty_is_refused_unless_forced(tmp_path):
    target = tmp_path / "work"
    (target / "acme_fraud").mkdir(parents=True)
    (target / "acme_fraud" / "job.py").write_text("mine\n")
    (target / "notes.txt").write_text("keep me\n")
    before = tree(target)
    refused = ferry("init", "acme-fraud", "--dir", str(target))
    assert refused.exit_code == 2 and "is not empty" in refused.output and "--force" in refused.output, refused.output
    assert tree(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["work"]

    forced = ferry("init", "acme-fraud", "--dir", str(target), "--force")
    assert forced.exit_code == 0, forced.output
    after = tree(target)
    assert sorted(after) == sorted([*FILES, "notes.txt"]) and after["notes.txt"] == "keep me\n"
    assert 'name="acme-fraud"' in after["acme_fraud/job.py"]  # the project's own file replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no staging folder left beside it


def test_an_empty_folder_is_filled(tmp_path):
    (tmp_path / "acme-fraud").mkdir()
    result = ferry("init", "acme-fraud", "--dir", str(tmp_path / "acme-fraud"))
    assert result.exit_code == 0, result.output
    assert sorted(tree(tmp_path / "acme-fraud")) == FILES


def _file_at_target(target: Path) -> None:
    target.write_text("x")


def _folder_where_job_goes(target: Path) -> None:
    (target / "acme_fraud" / "job.py").mkdir(parents=True)


def _file_where_package_goes(target: Path) -> None:
    target.mkdir()
    (target / "acme_fraud").write_text("x")


IN_THE_WAY = [
    ("target-is-a-file", _file_at_target, "exists and is not a folder"),
    ("folder-where-a-file-goes", _folder_where_job_goes, "acme_fraud/job.py is in the way"),
    ("file-where-a-folder-goes", _file_where_package_goes, "acme_fraud is in the way"),
    ("missing-parent", lambda target: None, "does not exist; create it first"),
]


@pytest.mark.parametrize("prepare,message", [c[1:] for c in IN_THE_WAY], ids=[c[0] for c in IN_THE_WAY])
def test_what_is_in_the_way_is_refused_and_nothing_is_written(prepare, message, tmp_path):
    target = tmp_path / "acme-fraud"
    if prepare is IN_THE_WAY[-1][1]:
        target = tmp_path / "missing" / "acme-fraud"
    prepare(target)
    before = tree(tmp_path)
    result = ferry("init", "acme-fraud", "--dir", str(target), "--force")
    assert result.exit_code == 2 and message in result.output, result.output
    assert tree(tmp_path) == before and not list(tmp_path.glob(".*"))
