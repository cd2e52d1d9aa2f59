"""The ``ferry`` CLI as a user runs it: output, exit codes, nothing written on bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

GOOD = """
from ferry import TrainingJob
job = TrainingJob(name="{name}", image="ghcr.io/acme/train:1", module="train", workers=2)
"""

BAD_FILES = [
    ("raises-on-import", "import json\nraise RuntimeError('no dataset configured')\n", "raised RuntimeError while being imported: no dataset configured"),
    ("syntax-error", "from ferry import TrainingJob\njob = TrainingJob(\n", "syntax error"),
    ("no-job", "x = 1\n", "defines no TrainingJob"),
    ("bad-spec", "from ferry import TrainingJob\njob = TrainingJob(name='x', image='i', module='m', workers=0)\n", "TrainingJob.workers: must be >= 1"),
    ("same-name-twice", GOOD.format(name="a") + "other = TrainingJob(name='a', image='i', module='m')\n", "two TrainingJobs are named 'a'"),
    ("not-python", None, "must be a Python file"),
    ("missing", None, "no such job file"),
]


@pytest.mark.parametrize("content,message", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_job_files_exit_2_and_write_nothing(content, message, tmp_path, ferry_cli):
    good = tmp_path / "good.py"
    good.write_text(GOOD.format(name="ok"))
    if content is None:
        bad = tmp_path / ("job.txt" if message.startswith("must") else "missing.py")
        if message.startswith("must"):
            bad.write_text("x")
    else:
        bad = tmp_path / "bad.py"
        bad.write_text(content)
    out = tmp_path / "out"
    # beside a good file, a file that defines no job is skipped (a folder's __init__.py); alone, it is an error
    files = [str(bad)] if message == "defines no TrainingJob" else [str(good), str(bad)]
    result = ferry_cli("render", *files, "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists(), "a failed render must not create the output directory"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_render_writes_one_file_per_job(tmp_path, ferry_cli, crd_dir):
    (tmp_path / "a.py").write_text(GOOD.format(name="alpha"))
    (tmp_path / "b.py").write_text(GOOD.format(name="beta"))
    out = tmp_path / "out"
    result = ferry_cli("render", str(tmp_path / "a.py"), str(tmp_path / "b.py"), "-o", str(out), "--crd-dir", str(crd_dir))
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml")) == ["alpha/pytorchjob.yaml", "beta/pytorchjob.yaml"]
    assert ferry_cli("validate", *map(str, out.rglob("*.yaml")), "--crd-dir", str(crd_dir)).returncode == 0


def test_render_to_stdout_is_multi_document_yaml(tmp_path, ferry_cli, crd_dir):
    (tmp_path / "jobs.py").write_text(GOOD.format(name="alpha") + "beta = TrainingJob(name='beta', image='i', module='m')\n")
    result = ferry_cli("render", str(tmp_path / "jobs.py"), "--crd-dir", str(crd_dir))
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["alpha", "beta"]


def test_render_digits_example(tmp_path, ferry_cli, crd_dir, repo):
    out = tmp_path / "out"
    result = ferry_cli("render", "jobs/digits/job.py", "-o", str(out), "--crd-dir", str(crd_dir))
    assert result.returncode == 0, result.stderr
    assert (out / "digits" / "pytorchjob.yaml").read_text() == (repo / "manifests/examples/digits/pytorchjob.yaml").read_text()


def test_validate_exit_codes(tmp_path, ferry_cli, crd_dir, repo):
    good = repo / "manifests/examples/digits/pytorchjob.yaml"
    assert ferry_cli("validate", str(good), "--crd-dir", str(crd_dir)).returncode == 0
    doc = yaml.safe_load(good.read_text())
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = ferry_cli("validate", str(bad), "--crd-dir", str(crd_dir))
    assert result.returncode == 1
    assert "$.spec.pytorchReplicaSpecs.Master.replicas" in result.stderr
    (tmp_path / "broken.yaml").write_text("a: [\n")
    result = ferry_cli("validate", str(tmp_path / "broken.yaml"))
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert ferry_cli("validate", str(tmp_path / "absent.yaml")).returncode == 2


@pytest.mark.parametrize("argv", [["version"], ["--version"]])
def test_version(ferry_cli, argv):
    from ferry import __version__

    result = ferry_cli(*argv)
    assert result.returncode == 0 and result.stdout.strip() == f"ferry {__version__}", result.stdout + result.stderr


@pytest.mark.parametrize("argv", [["-h"], ["render", "-h"], ["deploy", "-h"], ["models", "-h"]])
def test_dash_h_is_help(ferry_cli, argv):
    result = ferry_cli(*argv)
    assert result.returncode == 0 and "Usage: ferry" in result.stdout, result.stdout + result.stderr


def test_shell_completion_is_offered(ferry_cli):
    result = ferry_cli("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert result.returncode == 0 and "_FERRY_COMPLETE" in result.stdout, result.stdout + result.stderr


HEAVY = ("torch", "mlflow", "kserve")


def _imported_modules(*argv: str) -> set[str]:
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ['ferry', *{list(argv)!r}]
        try:
            from ferry.cli import main
            main()
        except SystemExit:
            pass
        print('\\n'.join(sorted(sys.modules)), file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return {line.split(".")[0] for line in result.stderr.splitlines()}


@pytest.mark.parametrize("argv", [(), ("--help",), ("render", "jobs/digits/job.py")], ids=["import", "help", "render"])
def test_cli_does_not_import_heavy_libraries(argv, repo, monkeypatch):
    monkeypatch.chdir(repo)
    modules = _imported_modules(*argv) if argv else set()
    if not argv:
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ferry"], capture_output=True, text=True)
        modules = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()}
    assert "ferry" in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)
