"""What ``ferry render`` and ``ferry validate`` accept as input, as a new user gives it:
folders and stdin for validate, Ferry's own ModelPipeline beside the shipped CRDs, --crd-dir
adding to them, job files importing from their own project wherever they are run from, a job
imported by another job file counted once, files without a spec skipped in a glob, and render's
-n/--namespace and --set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FERRY = str(Path(sys.executable).with_name("ferry"))
GOLDEN = REPO / "manifests" / "examples"
PIPELINES = sorted((GOLDEN / "pipelines").glob("*.yaml"))

JOB = """
from ferry import Tracking, TrainingJob
job = TrainingJob(name="{name}", image="ghcr.io/acme/train:1", module="train", workers=2{extra},
                  hyperparameters={{"epochs": 15, "lr": 0.01}}, tracking=Tracking(experiment="{name}"))
"""


def ferry(*args: Any, cwd: Path = REPO, stdin: str | None = None, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    """The installed ``ferry`` console script, as a user runs it (a wide terminal: help on one line)."""
    environ = {k: v for k, v in os.environ.items() if k != "FERRY_CRD_DIR"}
    return subprocess.run([FERRY, *map(str, args)], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=180, env={**environ, "COLUMNS": "400", **(env or {})})


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def in_order(text: str, *parts: str) -> bool:
    """Every part appears in ``text``, each after the one before."""
    at = 0
    for part in parts:
        at = text.find(part, at)
        if at < 0:
            return False
        at += len(part)
    return True


@pytest.fixture
def own_modules():
    """Job files import their helpers by plain names (``helper``, ``shared``): forget the ones a
    test imported, so the next table row imports its own."""
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]
    assert sys.path == path, "loading job files changed sys.path"


# ---- ferry validate: files, folders and stdin ---------------------------------------------------
def _bad_pytorchjob() -> str:
    doc = yaml.safe_load((GOLDEN / "digits" / "pytorchjob.yaml").read_text())
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    return yaml.safe_dump(doc)


def _manifest_tree(root: Path) -> Path:
    """What ``ferry render -o out`` leaves, a .yml among them."""
    out = root / "out"
    (out / "digits").mkdir(parents=True)
    (out / "digits-student").mkdir()
    shutil.copy(GOLDEN / "digits" / "pytorchjob.yaml", out / "digits" / "pytorchjob.yaml")
    shutil.copy(GOLDEN / "digits-student" / "pytorchjob.yaml", out / "digits-student" / "pytorchjob.yml")
    (out / "README.txt").write_text("not a manifest")
    (root / "empty").mkdir()
    (root / "bad").mkdir()
    (root / "bad" / "b.yaml").write_text(_bad_pytorchjob())
    (root / "bad" / "a").mkdir()
    (root / "bad" / "a" / "z.yml").write_text(_bad_pytorchjob())
    return root


VALIDATE_INPUTS = [
    # id, arguments (relative to the test's folder; "-" is stdin), stdin, exit code, stderr parts in order
    ("a-folder", ["out"], None, 0, ["ok: 2 manifest(s) valid"]),
    ("a-folder-and-a-file", ["out", "out/digits/pytorchjob.yaml"], None, 0, ["ok: 3 manifest(s) valid"]),
    ("stdin", ["-"], (GOLDEN / "digits" / "pytorchjob.yaml").read_text(), 0, ["ok: 1 manifest(s) valid"]),
    ("stdin-invalid", ["-"], _bad_pytorchjob(), 1, ["<stdin>", "$.spec.pytorchReplicaSpecs.Master.replicas"]),
    ("a-folder-with-bad-files-sorted", ["bad"], None, 1,
     ["2 validation error(s)", "bad/a/z.yml", "Master.replicas", "bad/b.yaml", "Master.replicas"]),
    ("a-missing-path", ["out", "absent"], None, 2, ["absent", "no such file or folder"]),
    ("an-empty-folder", ["empty"], None, 2, ["empty", "no *.yaml or *.yml"]),
]


@pytest.mark.parametrize("args, stdin, code, parts", [r[1:] for r in VALIDATE_INPUTS], ids=[r[0] for r in VALIDATE_INPUTS])
def test_validate_takes_files_folders_and_stdin(args, stdin, code, parts, tmp_path):
    root = _manifest_tree(tmp_path)
    result = ferry("validate", *args, cwd=root, stdin=stdin)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert in_order(result.stderr, *parts), result.stderr


def test_validate_checks_the_folder_render_wrote(tmp_path):
    assert ferry("render", "jobs/digits/job.py", "jobs/distill/job.py", "-o", tmp_path / "out").returncode == 0
    result = ferry("validate", tmp_path / "out")
    assert result.returncode == 0 and "ok: 2 manifest(s) valid" in result.stderr, result.stderr


# ---- ferry validate: Ferry's own ModelPipeline --------------------------------------------------
def _pipeline(change: Any = None) -> str:
    doc = yaml.safe_load((GOLDEN / "pipelines" / "digits-pipeline.yaml").read_text())
    if change:
        change(doc["spec"]["job"])
    return yaml.safe_dump(doc)


PIPELINE_CASES = [
    *[(p.name, p.read_text(), 0, ["ok: 1 manifest(s) valid"]) for p in PIPELINES],
    ("workers-0", _pipeline(lambda job: job.update(workers=0)), 1, ["$.spec.job.workers", "less than the minimum of 1"]),
    ("workers-a-string", _pipeline(lambda job: job.update(workers="two")), 1, ["$.spec.job.workers", "not of type 'integer'"]),
    ("unknown-field", _pipeline(lambda job: job.update(wrkers=2)), 1, ["$.spec.job", "unknown field(s) 'wrkers'"]),
]


@pytest.mark.parametrize("text, code, parts", [c[1:] for c in PIPELINE_CASES], ids=[c[0] for c in PIPELINE_CASES])
def test_validate_knows_the_modelpipeline_crd(text, code, parts):
    result = ferry("validate", "-", stdin=text)
    assert result.returncode == code, result.stderr
    assert in_order(result.stderr, *parts), result.stderr


def test_validating_a_pipeline_stays_light(tmp_path):
    """The ModelPipeline's CRD is read from the operator's package data without importing the
    operator (kopf) or anything heavy."""
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ['ferry', 'validate', {str(PIPELINES[0])!r}]
        code = 0
        try:
            from ferry.cli import main
            main()
        except SystemExit as exc:
            code = exc.code or 0
        print('exit', code)
        print('\\n'.join(sorted({{m.split('.')[0] for m in sys.modules}})))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert "exit 0" in lines, result.stderr
    assert not {"kopf", "ferry_operator", "torch", "mlflow", "kserve"} & set(lines)


# ---- --crd-dir adds to the shipped schemas ------------------------------------------------------
def _crd(group: str, kind: str, spec_schema: dict[str, Any]) -> str:
    plural = kind.lower() + "s"
    return yaml.safe_dump({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {
                         "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                         "spec": spec_schema}}}}]},
    })


WIDGET_CRD = _crd("example.com", "Widget", {"type": "object", "properties": {"size": {"type": "integer"}}})
# the user's own PyTorchJob CRD: a stricter one, that asks for a field the shipped one does not know
STRICT_PYTORCHJOB_CRD = _crd("kubeflow.org", "PyTorchJob", {
    "type": "object", "required": ["team"], "x-kubernetes-preserve-unknown-fields": True})


def _widget(size: Any) -> str:
    return yaml.safe_dump({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": size}})


CRD_DIR_CASES = [
    # id, the user's CRDs, manifests, how the user names the folder, exit code, stderr parts
    ("flag-adds", {"widget.yaml": WIDGET_CRD}, {"w.yaml": _widget(3)}, "flag", 0, ["ok: 2 manifest(s) valid"]),
    ("env-adds", {"widget.yaml": WIDGET_CRD}, {"w.yaml": _widget(3)}, "env", 0, ["ok: 2 manifest(s) valid"]),
    ("user-kind-checked", {"widget.yaml": WIDGET_CRD}, {"w.yaml": _widget("big")}, "flag", 1,
     ["w.yaml", "$.spec.size", "not of type 'integer'"]),
    ("the-users-wins", {"pytorchjob.yaml": STRICT_PYTORCHJOB_CRD}, {}, "flag", 1,
     ["pytorchjob.yaml", "$.spec", "'team' is a required property"]),
    ("pipelines-beside-the-users", {"widget.yaml": WIDGET_CRD}, {"p.yaml": PIPELINES[0].read_text()}, "flag", 0,
     ["ok: 2 manifest(s) valid"]),
    ("a-missing-folder", None, {}, "flag", 2, ["nowhere", "--crd-dir"]),
]


@pytest.mark.parametrize("crds, manifests, how, code, parts", [c[1:] for c in CRD_DIR_CASES], ids=[c[0] for c in CRD_DIR_CASES])
def test_crd_dir_adds_to_the_shipped_crds(crds, manifests, how, code, parts, tmp_path):
    crd_dir = write(tmp_path / "crds", crds) if crds is not None else tmp_path / "nowhere"
    write(tmp_path, manifests)
    shutil.copy(GOLDEN / "digits" / "pytorchjob.yaml", tmp_path / "pytorchjob.yaml")  # a shipped CRD's kind
    args = ["validate", "pytorchjob.yaml", *manifests]
    result = (ferry(*args, "--crd-dir", crd_dir, cwd=tmp_path) if how == "flag"
              else ferry(*args, cwd=tmp_path, env={"FERRY_CRD_DIR": str(crd_dir)}))
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert in_order(result.stderr, *parts), result.stderr


@pytest.mark.parametrize("command", ["validate", "render"])
def test_crd_dir_help_says_it_adds(command):
    text = " ".join(ferry(command, "--help").stdout.replace("│", " ").split())
    assert "beside the shipped" in text and "yours wins" in text, text


# ---- job files import from their own project ----------------------------------------------------
HELPER = "IMAGE = 'ghcr.io/acme/train:{tag}'\n"
USES_HELPER = """
from ferry import TrainingJob
from {module} import IMAGE
job = TrainingJob(name="{name}", image=IMAGE, module="train")
"""
PROJECTS = [
    # id, files of the project, the job file, image it must get
    ("pyproject-root", {"pyproject.toml": "", "shared.py": HELPER.format(tag="root"),
                        "jobs/train/job.py": USES_HELPER.format(module="shared", name="a")}, "jobs/train/job.py", "root"),
    ("git-root", {".git/HEAD": "ref: refs/heads/main\n", "shared.py": HELPER.format(tag="git"),
                  "jobs/job.py": USES_HELPER.format(module="shared", name="a")}, "jobs/job.py", "git"),
    ("the-root-comes-first", {"pyproject.toml": "", "shared.py": HELPER.format(tag="root"),
                              "jobs/shared.py": HELPER.format(tag="beside"),
                              "jobs/job.py": USES_HELPER.format(module="shared", name="a")}, "jobs/job.py", "root"),
    ("no-marker-the-files-folder", {"helper.py": HELPER.format(tag="beside"),
                                    "job.py": USES_HELPER.format(module="helper", name="a")}, "job.py", "beside"),
    ("no-marker-above-its-packages", {"pkg/__init__.py": "", "pkg/common.py": HELPER.format(tag="pkg"),
                                      "pkg/jobs/__init__.py": "",
                                      "pkg/jobs/job.py": USES_HELPER.format(module="pkg.common", name="a")},
     "pkg/jobs/job.py", "pkg"),
]


@pytest.mark.parametrize("files, job_file, tag", [p[1:] for p in PROJECTS], ids=[p[0] for p in PROJECTS])
def test_a_job_file_imports_from_its_own_project_wherever_it_is_run_from(files, job_file, tag, tmp_path, own_modules):
    project = write(tmp_path / "project", files)
    (tmp_path / "elsewhere").mkdir()
    result = ferry("render", project / job_file, cwd=tmp_path / "elsewhere")
    assert result.returncode == 0, result.stderr
    assert f"image: ghcr.io/acme/train:{tag}" in result.stdout
    from ferry.spec import load_specs

    (loaded,) = load_specs([project / job_file])  # in this process too, sys.path put back after (own_modules)
    assert loaded.spec.image == f"ghcr.io/acme/train:{tag}"


RELATIVE = """
from ferry import TrainingJob
from {module} import IMAGE
job = TrainingJob(name="a", image=IMAGE, module="train")
"""
RELATIVE_IMPORTS = [
    # id, files of the project, the job file, image it must get (None: refused, and what stderr says)
    ("a-sibling-module", {"pyproject.toml": "", "trainers/__init__.py": "", "trainers/x/__init__.py": "",
                          "trainers/x/model.py": HELPER.format(tag="sibling"),
                          "trainers/x/job.py": RELATIVE.format(module=".model")}, "trainers/x/job.py", "sibling", ""),
    ("the-parent-package", {".git/HEAD": "ref: refs/heads/main\n", "trainers/__init__.py": "",
                            "trainers/common.py": HELPER.format(tag="parent"), "trainers/x/__init__.py": "",
                            "trainers/x/job.py": RELATIVE.format(module="..common")}, "trainers/x/job.py", "parent", ""),
    ("a-namespace-package-above", {"pyproject.toml": "", "trainers/x/__init__.py": "",
                                   "trainers/x/model.py": HELPER.format(tag="namespace"),
                                   "trainers/x/job.py": RELATIVE.format(module=".model")}, "trainers/x/job.py",
     "namespace", ""),
    ("no-marker-above-its-packages", {"pkg/__init__.py": "", "pkg/jobs/__init__.py": "",
                                      "pkg/jobs/common.py": HELPER.format(tag="pkg"),
                                      "pkg/jobs/job.py": RELATIVE.format(module=".common")}, "pkg/jobs/job.py", "pkg", ""),
    ("not-in-a-package", {"pyproject.toml": "", "trainers/model.py": HELPER.format(tag="x"),
                          "trainers/job.py": RELATIVE.format(module=".model")}, "trainers/job.py", None,
     "a relative import needs the job file's folder to be a package: add trainers/__init__.py"),
]


@pytest.mark.parametrize("files, job_file, tag, says", [r[1:] for r in RELATIVE_IMPORTS],
                         ids=[r[0] for r in RELATIVE_IMPORTS])
def test_a_job_file_in_a_package_imports_relatively(files, job_file, tag, says, tmp_path, own_modules):
    project = write(tmp_path / "project", files)
    (tmp_path / "elsewhere").mkdir()
    result = ferry("render", project / job_file, cwd=tmp_path / "elsewhere")
    if tag is None:
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert says in " ".join(result.stderr.split()), result.stderr
        return
    assert result.returncode == 0, result.stderr
    assert f"image: ghcr.io/acme/train:{tag}" in result.stdout
    from ferry.spec import load_specs

    (loaded,) = load_specs([project / job_file])  # in this process too, sys.path put back after (own_modules)
    assert loaded.spec.image == f"ghcr.io/acme/train:{tag}"


def test_the_repositorys_sweep_renders_from_any_folder(tmp_path):
    result = ferry("render", REPO / "jobs/digits/sweep.py", "-o", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "digits-lr" / "trial-0" / "pytorchjob.yaml").is_file()


def test_sys_path_is_put_back_when_a_job_file_fails(tmp_path, own_modules):
    from ferry.errors import JobFileError
    from ferry.spec import load_specs

    write(tmp_path, {"pyproject.toml": "", "job.py": "import sys\nsys.path.insert(0, '/x')\nraise RuntimeError('no data')\n"})
    with pytest.raises(JobFileError, match="no data"):
        load_specs([tmp_path / "job.py"])


# ---- a job imported by another job file is counted once ------------------------------------------
SYNTHETIC = {
    "a.py": JOB.format(name="a", extra=""),
    "derived.py": "from a import job as base\nb = base.replace(name='b')\n",
    "reexport.py": "from a import job\n",
    "common.py": JOB.format(name="common", extra=""),
    "one.py": "from common import job\n",
    "two.py": "from common import job\nfrom ferry import TrainingJob\nmine = TrainingJob(name='two', image='i', module='m')\n",
    "twin.py": JOB.format(name="a", extra=""),
}
DIGITS = ["jobs/digits/job.py", "jobs/digits/sweep.py"]
COUNTED_ONCE = [
    # id, files, what each file defines (file, spec name), in order
    ("the-repositorys-job-and-its-sweep", DIGITS, [("job.py", "digits"), ("sweep.py", "digits-lr")]),
    ("the-sweep-first", DIGITS[::-1], [("sweep.py", "digits-lr"), ("job.py", "digits")]),
    ("a-file-and-one-deriving-from-it", ["a.py", "derived.py"], [("a.py", "a"), ("derived.py", "b")]),
    ("a-file-and-one-re-exporting-it", ["reexport.py", "a.py"], [("a.py", "a")]),
    ("a-re-export-alone-is-its-own", ["reexport.py"], [("reexport.py", "a")]),
    ("one-helper-imported-by-two-files", ["one.py", "two.py"], [("one.py", "common"), ("two.py", "two")]),
    ("the-same-file-twice", ["a.py", "./a.py"], [("a.py", "a")]),
]


def _where(root: Path, name: str) -> Path:
    return REPO / name if name.startswith("jobs/") else root / name


@pytest.mark.parametrize("files, expected", [c[1:] for c in COUNTED_ONCE], ids=[c[0] for c in COUNTED_ONCE])
def test_a_job_belongs_to_the_file_that_creates_it(files, expected, tmp_path, own_modules):
    from ferry.spec import Sweep, TrainingJob, load_specs

    write(tmp_path, SYNTHETIC)
    loaded = load_specs([_where(tmp_path, f) for f in files], kinds=(TrainingJob, Sweep))
    assert [(item.path.name, item.spec.name) for item in loaded] == expected


def test_two_files_creating_the_same_name_are_still_refused(tmp_path, own_modules):
    from ferry.errors import JobFileError
    from ferry.spec import load_specs

    write(tmp_path, SYNTHETIC)
    with pytest.raises(JobFileError, match="two TrainingJobs are named 'a'"):
        load_specs([tmp_path / "a.py", tmp_path / "twin.py"])


def test_render_a_job_and_its_sweep_together(tmp_path):
    result = ferry("render", *DIGITS, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.yaml"))
    assert written == ["digits-lr/trial-0/pytorchjob.yaml", "digits-lr/trial-1/pytorchjob.yaml",
                       "digits-lr/trial-2/pytorchjob.yaml", "digits-lr/trial-3/pytorchjob.yaml", "digits/pytorchjob.yaml"]
    assert (tmp_path / "out/digits/pytorchjob.yaml").read_text() == (GOLDEN / "digits/pytorchjob.yaml").read_text()


# ---- several files: those without a spec are skipped ---------------------------------------------
PACKAGE = {"pkg/__init__.py": '"""A package of jobs."""\n', "pkg/helper.py": "X = 1\n",
           "pkg/job.py": JOB.format(name="alpha", extra="")}
SKIPPED = [
    # id, files, exit code, names rendered, stderr parts
    ("the-repositorys-glob", sorted(str(p.relative_to(REPO)) for p in REPO.glob("jobs/digits/*.py")), 0,
     ["digits", "digits-lr-t0", "digits-lr-t1", "digits-lr-t2", "digits-lr-t3"],
     ["skipped", "jobs/digits/__init__.py"]),
    ("a-package-glob", ["pkg/__init__.py", "pkg/helper.py", "pkg/job.py"], 0, ["alpha"],
     ["skipped", "pkg/__init__.py", "pkg/helper.py"]),
    ("one-file-without-a-spec", ["pkg/__init__.py"], 2, [], ["pkg/__init__.py: defines no TrainingJob or Sweep"]),
    ("several-files-none-with-a-spec", ["pkg/__init__.py", "pkg/helper.py"], 2, [],
     ["pkg/__init__.py", "pkg/helper.py", "define no TrainingJob or Sweep"]),
]


@pytest.mark.parametrize("files, code, names, parts", [s[1:] for s in SKIPPED], ids=[s[0] for s in SKIPPED])
def test_render_skips_files_without_a_spec_when_given_several(files, code, names, parts, tmp_path):
    write(tmp_path, PACKAGE)
    cwd = REPO if files[0].startswith("jobs/") else tmp_path
    result = ferry("render", *files, cwd=cwd)
    assert result.returncode == code, result.stderr
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(result.stdout) if d] == names
    assert in_order(result.stderr, *parts), result.stderr


# ---- render -n/--namespace and --set ------------------------------------------------------------
def _docs(stdout: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(stdout) if d]


def _hyperparameters(doc: dict[str, Any]) -> dict[str, Any]:
    import json

    env = doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    return json.loads(next(e["value"] for e in env if e["name"] == "FERRY_HYPERPARAMETERS"))


OPTIONS = [
    # id, job file, options, exit code, each manifest's namespace, a hyperparameter's value, stderr part
    ("no-option-the-jobs-own", "plain.py", [], 0, ["default"], ("epochs", 15), ""),
    ("no-option-a-namespace-the-job-sets", "research.py", [], 0, ["research"], None, ""),
    ("-n", "plain.py", ["-n", "team-a"], 0, ["team-a"], None, ""),
    ("--namespace", "plain.py", ["--namespace", "team-a"], 0, ["team-a"], None, ""),
    ("-n-wins-as-in-submit", "research.py", ["-n", "team-a"], 0, ["team-a"], None, ""),
    ("-n-on-a-sweep", "sweep.py", ["-n", "team-a"], 0, ["team-a"] * 2, None, ""),
    ("-n-invalid", "plain.py", ["-n", "Team_A"], 2, [], None, "TrainingJob.namespace"),
    ("--set", "plain.py", ["--set", "epochs=3", "--set", "lr=0.5"], 0, ["default"], ("lr", 0.5), ""),
    ("--set-on-a-sweeps-job", "sweep.py", ["--set", "epochs=3"], 0, ["default"] * 2, ("epochs", 3), ""),
    ("--set-a-searched-key", "sweep.py", ["--set", "lr=0.5"], 2, [], None, "sweep s searches lr"),
    ("--set-unknown", "plain.py", ["--set", "epoch=3"], 2, [], None, "has no hyperparameter 'epoch'"),
    ("--set-not-a-number", "plain.py", ["--set", "epochs=many"], 2, [], None, "--set epochs='many'"),
    ("--set-no-equals", "plain.py", ["--set", "epochs"], 2, [], None, "expected key=value"),
]
OPTION_FILES = {
    "plain.py": JOB.format(name="plain", extra=""),
    "research.py": JOB.format(name="research", extra=", namespace='research'"),
    "sweep.py": JOB.format(name="base", extra="") + textwrap.dedent("""
        from ferry import Choice, Objective, Sweep
        sweep = Sweep(name="s", job=job, space={"lr": Choice([0.1, 0.2])}, sampler="grid", trials=2,
                      objective=Objective(metric="loss", goal="min"))
        del job
    """),
}


@pytest.mark.parametrize("job_file, options, code, namespaces, hparam, part", [o[1:] for o in OPTIONS], ids=[o[0] for o in OPTIONS])
def test_render_takes_a_namespace_and_overrides(job_file, options, code, namespaces, hparam, part, tmp_path):
    write(tmp_path, OPTION_FILES)
    result = ferry("render", tmp_path / job_file, *options)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and part in result.stderr, result.stderr
    docs = _docs(result.stdout)
    assert [d["metadata"]["namespace"] for d in docs] == namespaces
    if hparam:
        assert {_hyperparameters(d)[hparam[0]] for d in docs} == {hparam[1]}
