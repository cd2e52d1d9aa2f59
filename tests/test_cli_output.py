"""What ``ferry <command> --help`` promises, checked against the commands themselves: the exit
codes each lists (from the one table, only those it can return), help that reads cleanly at 80
columns and names only options the command has, the read commands' ``-o/--output``, one name
per meaning across commands, and MLflow out of reach as its own exit code (10)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from typer.testing import CliRunner

from ferry import errors

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[tuple[str, click.Command]]:
    """Every command of ``ferry``, as its words (``models show``) and click's object."""
    from typer.main import get_command

    from ferry.cli import app

    def walk(group: click.Group, path: tuple[str, ...]) -> Any:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a group: ferry models, ferry operator
                yield from walk(command, (*path, name))
            else:
                yield " ".join((*path, name)), command

    return sorted(walk(get_command(app), ()), key=lambda item: item[0])


COMMANDS = _commands()


def _options(command: click.Command) -> set[str]:
    return {name for p in command.params for name in (*p.opts, *p.secondary_opts) if name.startswith("-")}


def ferry(*args: str, env: dict[str, str] | None = None) -> Any:
    from ferry.cli import app

    return CliRunner().invoke(app, list(args), env=env)


# ---- one table of exit codes; each command lists those it can return ----------------------------
TALKS_TO_MLFLOW = {"submit", "deploy", "promote", "rollback", "optimize", "models list", "models show",
                   "models history", "serve", "fetch", "bundle", "plan"}  # or the store code bundles go to
APPLIES = {"submit", "deploy", "runtime"}  # send objects to the API server
LOCKING = {"promote", "rollback"}  # another promotion may hold the lock
FAILS_WITH_1 = {"render", "validate", "run", "submit", "status", "deploy", "promote", "optimize", "sweep", "plan"}


def _listed_codes(command: click.Command) -> list[int]:
    epilog = command.epilog or ""
    assert epilog.startswith("Exit codes:"), "no exit codes listed: give the command epilog=exit_codes(...)"
    return [int(m) for m in re.findall(r"^\s*(\d+)\s", epilog, re.MULTILINE)]


@pytest.mark.parametrize("words, command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_each_command_lists_the_exit_codes_it_can_return(words, command):
    from ferry.cli._util import EXIT_CODES, exit_codes

    codes = set(_listed_codes(command))
    options = _options(command)
    assert codes <= set(EXIT_CODES), codes - set(EXIT_CODES)
    assert command.epilog == exit_codes(*codes), "every epilog is written from the one table"
    assert 0 in codes
    assert (124 in codes) == ("--wait" in options), "124 is --wait's timeout: listed exactly where --wait is"
    cluster = {3, 5, 6, 7, 8, 9}
    assert not codes & cluster or "--kubeconfig" in options, "a command that talks to no cluster lists its codes"
    assert "--kubeconfig" not in options or {5, 7, 8, 9} <= codes, "one that does may be refused or find none"
    assert (4 in codes) == (words in APPLIES | LOCKING), "4: a conflict, when applying or taking the lock"
    assert (6 in codes) == (words in APPLIES), "6: the API server refuses an object it is sent"
    assert (10 in codes) == (words in TALKS_TO_MLFLOW), "10 is MLflow out of reach: listed where MLflow is asked"
    assert (1 in codes) == (words in FAILS_WITH_1)
    assert (143 in codes) == (words == "fetch")
    assert words == "version" or 2 in codes


RAISED = [
    # id, what the command raises, its exit code
    ("bad-input", errors.SpecError("workers must be >= 1"), 2),
    ("not-found", errors.NotFound("no job"), 3),
    ("promotion-lock", errors.PromotionConflict("held"), 4),
    ("mlflow-down", errors.Unreachable("down"), 10),
    ("registry-5xx", errors.RegistryError("503", transient=True), 10),
    ("wait-timeout", errors.WaitTimeout("still running"), 124),
    ("ctrl-c", KeyboardInterrupt(), 130),
]


@pytest.mark.parametrize("raised, code", [r[1:] for r in RAISED], ids=[r[0] for r in RAISED])
def test_every_command_turns_what_it_raises_into_its_code(raised, code):
    import typer

    from ferry.cli._util import fail_cleanly

    def command() -> None:
        raise raised

    app = typer.Typer()
    app.command()(fail_cleanly(command))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_epilog_says_each_code_as_the_table_does():
    from ferry.cli._util import EXIT_CODES, exit_codes

    text = exit_codes(*EXIT_CODES)
    assert " ".join(text.split()) == "Exit codes: " + " ".join(f"{code} {' '.join(what.split())}"
                                                               for code, what in EXIT_CODES.items())
    assert all(len(line) <= 78 for line in text.splitlines())


# ---- MLflow out of reach: exit 10, one line -------------------------------------------------------
DEPLOYMENT = "from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@champion')\n"
TALKING_TO_MLFLOW = [
    # id, arguments ({deploy}: a Deployment file)
    ("promote", ["promote", "tiny", "--version", "1", "--env", "staging"]),
    ("rollback", ["rollback", "tiny", "--env", "staging"]),
    ("models-list", ["models", "list"]),
    ("models-show", ["models", "show", "tiny"]),
    ("models-history", ["models", "history", "tiny"]),
    ("deploy", ["deploy", "{deploy}"]),
    ("optimize", ["optimize", "models:/tiny/1", "--quantize", "int8"]),
    ("serve", ["serve", "models:/tiny/1"]),
]


@pytest.mark.parametrize("args", [a for _, a in TALKING_TO_MLFLOW], ids=[i for i, _ in TALKING_TO_MLFLOW])
def test_mlflow_out_of_reach_exits_10_with_one_line(args, tmp_path, monkeypatch):
    from ferry.local import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    (tmp_path / "deploy.py").write_text(DEPLOYMENT)
    argv = [a.format(deploy=tmp_path / "deploy.py") for a in args]
    if argv[0] == "serve":  # a server that started after all would serve on: in a process of its own, stopped
        import subprocess
        import sys

        done = subprocess.run([str(Path(sys.executable).with_name("ferry")), *argv], capture_output=True, text=True,
                              timeout=120)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        result = ferry(*argv)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert code == 10, stdout + stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"tracking server {uri} is unreachable" in lines[0], stderr


# ---- -o/--output on every read command ------------------------------------------------------------
BAD_OUTPUT = [
    # id, arguments (the option is judged before anything is read)
    ("list", ["list", "-o", "xml"]),
    ("status", ["status", "digits", "--output", "xml"]),
    ("models-list", ["models", "list", "-o", "xml"]),
    ("models-show", ["models", "show", "tiny", "-o", "xml"]),
    ("models-history", ["models", "history", "tiny", "-o", "xml"]),
    ("deploy-status", ["deploy", "--status", "tiny", "--output", "xml"]),
]


@pytest.mark.parametrize("args", [a for _, a in BAD_OUTPUT], ids=[i for i, _ in BAD_OUTPUT])
def test_a_bad_output_format_names_the_option_and_its_choices(args):
    result = ferry(*args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.replace("│", " ").split())
    assert "--output" in said and "'xml' is not one of 'table', 'json', 'yaml'" in said, said


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory) -> str:
    """A SQLite registry: model 'tiny', v1 (test_accuracy 0.9) and v2 (0.95), v1 promoted to
    staging by ci@ferry.test."""
    from mlflow import MlflowClient

    from ferry import Promotion
    from ferry.registry import promote

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("tiny", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model("tiny")
    for accuracy in (0.9, 0.95):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "test_accuracy", accuracy)
        client.log_text(run.info.run_id, "flavors:\n  pytorch:\n    pytorch_version: 2.13.0\n", "model/MLmodel")
        client.create_model_version("tiny", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    promote(client, Promotion(model="tiny"), "tiny", "1", "staging", actor="ci@ferry.test")
    return uri


def _models_list(doc: Any) -> None:
    (tiny,) = doc
    assert list(tiny) == ["name", "latest_version", "aliases", "updated"]
    assert (tiny["name"], tiny["latest_version"], tiny["aliases"]) == ("tiny", "2", {"staging": "1"})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tiny["updated"])


def _models_show(doc: Any) -> None:
    assert list(doc) == ["name", "versions"] and doc["name"] == "tiny"
    assert [list(v) for v in doc["versions"]] == [
        ["version", "aliases", "run_id", "metrics", "tags", "size_bytes", "created"]] * 2
    assert [(v["version"], v["aliases"], v["metrics"]) for v in doc["versions"]] == [
        ("1", ["staging"], {"test_accuracy": 0.9}), ("2", [], {"test_accuracy": 0.95})]


def _models_history(doc: Any) -> None:
    assert list(doc) == ["name", "entries"]
    (entry,) = doc["entries"]
    assert list(entry) == ["at", "env", "alias", "action", "from_version", "to_version", "actor", "forced", "gates"]
    assert (entry["env"], entry["action"], entry["from_version"], entry["to_version"], entry["actor"]) == (
        "staging", "promote", None, "1", "ci@ferry.test")
    assert all(list(g) == ["gate", "passed", "detail"] for g in entry["gates"])


READS = [
    # id, arguments, a check of what -o json / -o yaml printed
    ("models-list", ["models", "list"], _models_list),
    ("models-show", ["models", "show", "tiny"], _models_show),
    ("models-history", ["models", "history", "tiny"], _models_history),
]


@pytest.mark.parametrize("args, check", [r[1:] for r in READS], ids=[r[0] for r in READS])
def test_models_print_json_and_yaml_for_scripts(args, check, small_registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", small_registry)
    as_json = ferry(*args, "-o", "json")
    assert as_json.exit_code == 0, as_json.output
    check(json.loads(as_json.stdout))  # stdout holds the object and nothing else
    as_yaml = ferry(*args, "--output", "yaml")
    assert as_yaml.exit_code == 0, as_yaml.output
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    table = ferry(*args)
    assert table.exit_code == 0 and "tiny" in table.stdout, table.output
    with pytest.raises(json.JSONDecodeError):
        json.loads(table.stdout)


# ---- one option name per meaning ---------------------------------------------------------------
def _command(words: str) -> click.Command:
    return dict(COMMANDS)[words]


def _option(words: str, name: str) -> click.Parameter | None:
    return next((p for p in _command(words).params if name in (*p.opts, *p.secondary_opts)), None)


SAME_NAMES = [
    # id, option, the commands that take it (with the same meaning), its short form
    ("which-job", "--job", ["run", "submit"], None),
    ("which-sweep", "--sweep", ["sweep", "submit"], None),
    ("namespace", "--namespace", ["submit", "status", "list", "logs", "delete", "deploy", "render"], "-n"),
    ("context", "--context", ["submit", "status", "list", "logs", "delete", "deploy", "runtime"], None),
    ("kubeconfig", "--kubeconfig", ["submit", "status", "list", "logs", "delete", "deploy", "runtime"], None),
    ("follow", "--follow", ["submit", "logs"], "-f"),
    ("output", "--output", ["list", "status", "models list", "models show", "models history"], "-o"),
]


@pytest.mark.parametrize("name, commands, short", [r[1:] for r in SAME_NAMES], ids=[r[0] for r in SAME_NAMES])
def test_one_name_per_meaning(name, commands, short):
    for words in commands:
        option = _option(words, name)
        assert option is not None, f"ferry {words} has no {name}"
        assert short is None or short in option.opts, f"ferry {words} {name} lacks {short}"


def test_dry_run_takes_the_same_values_everywhere():
    """The values themselves: the refusals of 'maybe' below list them."""
    helps = {_option(words, "--dry-run").help for words in ("submit", "deploy")}
    (said,) = helps
    assert "client: render and validate here" in said and "server: the API server" in said


def test_timeout_goes_with_wait():
    for words, _ in COMMANDS:
        if _option(words, "--timeout") is not None:
            assert _option(words, "--wait") is not None, words


def test_deprecated_spellings_are_hidden():
    assert _option("sweep", "--name").hidden
    assert "--name" not in ferry("sweep", "--help", env={"COLUMNS": "200"}).stdout


SWEEPS = """
from ferry import Choice, Objective, Sweep, Tracking, TrainingJob
job = TrainingJob(name="base", image="ghcr.io/acme/train:1", module="train",
                  hyperparameters={"lr": 0.1, "epochs": 2}, tracking=Tracking(experiment="base"))
a = Sweep(name="a", job=job, space={"lr": Choice([0.1, 0.2])}, sampler="grid", trials=2,
          objective=Objective(metric="loss", goal="min"))
b = Sweep(name="b", job=job, space={"lr": Choice([0.3, 0.4, 0.5])}, sampler="grid", trials=3,
          objective=Objective(metric="loss", goal="min"))
"""
CHOOSING = [
    # id, arguments ({file}: a file defining job 'base' and sweeps 'a' and 'b'), exit code, stdout's PyTorchJobs, stderr
    ("submit-sweep", ["submit", "{file}", "--sweep", "b", "--dry-run", "client"], 0, ["b-t0", "b-t1", "b-t2"], ""),
    ("submit-job-names-a-sweep-as-before", ["submit", "{file}", "--job", "a", "--dry-run", "client"], 0,
     ["a-t0", "a-t1"], "--job a names a Sweep"),
    ("submit-job", ["submit", "{file}", "--job", "base", "--dry-run", "client"], 0, ["base"], ""),
    ("submit-several-sweeps", ["submit", "{file}", "--dry-run", "client"], 2, [], "choose one with --sweep NAME"),
    ("submit-no-such-sweep", ["submit", "{file}", "--sweep", "c", "--dry-run", "client"], 2, [], "no sweep named 'c'"),
    ("sweep-no-such-sweep", ["sweep", "{file}", "--sweep", "c"], 2, [], "no sweep named 'c' (it defines: a, b)"),
    ("sweep-old-spelling", ["sweep", "{file}", "--name", "c"], 2, [], "--name is deprecated; use --sweep"),
    ("sweep-both-spellings", ["sweep", "{file}", "--name", "a", "--sweep", "b"], 2, [], "give only --sweep"),
]


@pytest.mark.parametrize("args, code, jobs, says", [c[1:] for c in CHOOSING], ids=[c[0] for c in CHOOSING])
def test_choosing_a_job_or_a_sweep(args, code, jobs, says, tmp_path):
    (tmp_path / "sweeps.py").write_text(SWEEPS)
    result = ferry(*[a.format(file=tmp_path / "sweeps.py") for a in args])
    assert result.exit_code == code, result.output
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "PyTorchJob"] == jobs
    assert says in " ".join(result.stderr.replace("│", " ").split()), result.stderr


DIGITS = str(REPO / "jobs" / "digits" / "job.py")
REFUSED = [
    # id, arguments ({deploy}: a Deployment file, {out}: a folder), what stderr says; nothing is asked of anyone
    ("submit-dry-run-and-wait", ["submit", DIGITS, "--dry-run", "server", "--wait"], "a dry run starts nothing"),
    ("submit-dry-run-and-follow", ["submit", DIGITS, "--dry-run", "client", "--follow"], "a dry run starts nothing"),
    ("submit-timeout-without-wait", ["submit", DIGITS, "--timeout", "5"], "--timeout applies with --wait"),
    ("submit-timeout-0", ["submit", DIGITS, "--wait", "--timeout", "0"], "must be more than 0 seconds"),
    ("status-timeout-without-wait", ["status", "digits", "--timeout", "5"], "--timeout applies with --wait"),
    ("delete-timeout-without-wait", ["delete", "digits", "--timeout", "5"], "--timeout applies with --wait"),
    ("delete-timeout-0", ["delete", "digits", "--wait", "--timeout", "0"], "must be more than 0 seconds"),
    ("submit-dry-run-maybe", ["submit", DIGITS, "--dry-run", "maybe"], "'maybe' is not one of 'client', 'server'"),
    ("deploy-dry-run-maybe", ["deploy", "{deploy}", "--dry-run", "maybe"], "'maybe' is not one of 'client', 'server'"),
    ("deploy-status-and-files", ["deploy", "{deploy}", "--status", "tiny"], "--status shows one InferenceService"),
    ("deploy-out-and-apply", ["deploy", "{deploy}", "--apply", "--out", "{out}"], "--out writes files"),
    ("deploy-force-without-apply", ["deploy", "{deploy}", "--force-conflicts"], "--force-conflicts applies"),
    ("deploy-nothing", ["deploy"], "give one or more deploy files"),
]


@pytest.mark.parametrize("args, says", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_options_that_do_not_apply_are_refused(args, says, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # a command that asked would exit 8
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # and 10
    (tmp_path / "deploy.py").write_text(DEPLOYMENT)
    result = ferry(*[a.format(deploy=tmp_path / "deploy.py", out=tmp_path / "out") for a in args])
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.stderr.replace("│", " ").split()), result.stderr
    assert not (tmp_path / "out").exists()


def test_deploy_dry_runs_mean_what_submits_do(small_registry, tmp_path, monkeypatch):
    """client: rendered and validated here, nothing sent (no cluster needed); server: the API
    server's dry run, which needs a cluster (here none: exit 8), with or without --apply."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", small_registry)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    (tmp_path / "deploy.py").write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny@staging')\n")
    for args in (["--dry-run", "client"], ["--dry-run", "client", "--apply"]):
        client = ferry("deploy", str(tmp_path / "deploy.py"), "--no-runtime", *args)
        assert client.exit_code == 0, client.output
        (isvc,) = yaml.safe_load_all(client.stdout)
        assert isvc["kind"] == "InferenceService" and isvc["spec"]["predictor"]["model"]["storageUri"] == "models:/tiny/1"
    for args in (["--dry-run", "server"], ["--dry-run", "server", "--apply"]):
        server = ferry("deploy", str(tmp_path / "deploy.py"), *args)
        assert server.exit_code == 8 and "no-kubeconfig" in server.stderr, server.output


# ---- help that reads cleanly at 80 columns -------------------------------------------------------
def _help(words: str, columns: int = 80) -> str:
    result = ferry(*words.split(), "--help", env={"COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def _prose(text: str) -> list[list[str]]:
    """The paragraphs of a help's own text (outside the boxes, before the exit codes; an example
    kept as written, indented, is not prose)."""
    paragraphs: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip().startswith("Exit codes:"):
            break
        if line.startswith(" Usage:") or line.lstrip()[:1] in ("╭", "│", "╰") or not line.strip() \
                or not re.match(r"^ \S", line):
            paragraphs.append([])
            continue
        paragraphs[-1].append(line.strip())
    return [p for p in paragraphs if p]


def _mentioned_options(text: str) -> list[tuple[str, str | None]]:
    """Each --option the help names, with the other command it belongs to when the help says
    so (``ferry logs NAME --follow``; None: this command; "kubectl": not Ferry's)."""
    flat = " ".join(text.replace("│", " ").replace("`", " ").split())
    found = []
    for match in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*", flat):
        before = flat[max(0, match.start() - 60):match.start()]
        refs = list(re.finditer(r"ferry ((?:models |operator )?[a-z]+)|kubectl", before))
        # the command line the option is part of: nothing but words and spaces between them
        owner = (refs[-1].group(1) or "kubectl") if refs and re.fullmatch(r"[\w./<>|= -]*", before[refs[-1].end():]) \
            else None
        found.append((match.group(), owner))
    return found


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS])
def test_help_reads_cleanly_at_80_columns(words):
    text = _help(words)
    assert "…" not in text, "a cell too narrow for a word: shorten it"
    assert all(len(line) <= 80 for line in text.splitlines())
    examples = {line.strip() for p in (dict(COMMANDS)[words].help or "").split("\n\n") if p.startswith("\b")
                for line in p.splitlines()}  # kept line by line, as written
    for paragraph in _prose(text):
        for line in paragraph[:-1]:
            assert len(line) >= 50 or line in examples, f"a stray fragment of a paragraph: {line!r} in {paragraph}"
    epilog = text[text.index("Exit codes:"):] if "Exit codes:" in text else ""
    for line in epilog.splitlines()[1:]:
        assert not line.strip() or re.match(r"^ (\d+ +| {4})\S", line), f"an exit code's line out of place: {line!r}"


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS])
def test_help_names_only_options_there_are(words):
    commands = dict(COMMANDS)
    for option, owner in _mentioned_options(_help(words, 200)):
        if owner == "kubectl" or option in ("--help", "--version"):
            continue
        of = owner if owner in commands else words
        assert option in _options(commands[of]), f"ferry {of} has no {option}"


def test_the_crd_folder_adds_to_the_shipped_schemas_everywhere_it_is_described():
    from ferry import settings

    said = [settings.FERRY_CRD_DIR.help, (REPO / "ferry/validate/crds/SOURCES.md").read_text(),
            _option("validate", "--crd-dir").help]
    for text in said:
        flat = " ".join(text.split())
        assert "beside" in flat and "replace" not in flat and "points elsewhere" not in flat, flat


# ---- a job file is run, submitted or swept as what it defines -----------------------------------
AS_DEFINED = [
    # id, arguments ({file}: job 'base' and sweeps 'a' and 'b'; {one}: job 'base' and sweep 'a'), stderr
    ("run-a-sweep", ["run", "{one}"], "defines a Sweep (a): `ferry run` runs one TrainingJob"),
    ("run-a-sweep-says-how", ["run", "{one}"], "`ferry sweep"),
    ("run-sweeps", ["run", "{file}"], "defines a Sweep (a, b)"),
    ("run-no-such-job", ["run", "{file}", "--job", "nope"], "no TrainingJob named 'nope'"),
    ("sweep-a-job", ["sweep", "{job}"], "defines no Sweep"),
]


@pytest.mark.parametrize("args, says", [r[1:] for r in AS_DEFINED], ids=[r[0] for r in AS_DEFINED])
def test_a_file_is_run_as_what_it_defines(args, says, tmp_path, monkeypatch):
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))  # were it run after all, its store is the test's
    (tmp_path / "sweeps.py").write_text(SWEEPS)
    (tmp_path / "one.py").write_text(SWEEPS.split("b = Sweep")[0])
    (tmp_path / "job.py").write_text(SWEEPS.split("a = Sweep")[0])
    result = ferry(*[a.format(file=tmp_path / "sweeps.py", one=tmp_path / "one.py", job=tmp_path / "job.py")
                     for a in args])
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.stderr.split()), result.stderr


def test_deploys_runtime_option_keeps_its_old_spelling(small_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", small_registry)
    (tmp_path / "deploy.py").write_text("from ferry import Deployment\nd = Deployment(name='tiny', model='models:/tiny/1')\n")
    kinds = {}
    for flag in ("--runtime", "--no-runtime", None):
        result = ferry("deploy", str(tmp_path / "deploy.py"), *([flag] if flag else []))
        assert result.exit_code == 0, result.output
        kinds[flag] = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout) if d)
    assert kinds["--runtime"] == kinds[None] == ["ClusterServingRuntime", "ClusterStorageContainer", "InferenceService"]
    assert kinds["--no-runtime"] == ["InferenceService"]
    both = ferry("deploy", str(tmp_path / "deploy.py"), "--runtime", "--no-runtime")
    assert both.exit_code == 2 and "give one" in both.stderr


BROKEN_SWEEP = """
from ferry import Choice, Objective, RunPolicy, Sweep, Tracking, TrainingJob
job = TrainingJob(name="broken", image="i", module="no_such_module_here", run_policy=RunPolicy(backoff_limit=0),
                  hyperparameters={"lr": 0.1}, tracking=Tracking(experiment="broken"))
sweep = Sweep(name="broken", job=job, space={"lr": Choice([0.1])}, sampler="grid", trials=1,
              objective=Objective(metric="loss", goal="min"))
"""


def test_a_sweep_whose_trials_all_failed_exits_1(tmp_path, monkeypatch):
    """Failed, as a job that failed is (1): not bad input (2)."""
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # the embedded store; whatever MLflow sets here is undone after
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text(BROKEN_SWEEP)
    result = ferry("sweep", "broken.py")
    assert result.exit_code == 1, result.output
    assert "trial 0 failed" in result.stdout and "no trial finished" in result.stderr
