"""The operator's image carries everything the operator imports.

``operator/Dockerfile`` installs a few requirements into a venv (torch for CPU, then
``.[train,operator]``) and nothing else. Here those requirements are read from the Dockerfile's
own ``pip install`` lines and closed over the installed distributions' metadata (markers
evaluated for the image's Python), which gives every distribution the image holds. Then a
Python process whose importer finds a module only where the image would have it (the standard
library, those distributions' files, Ferry's own packages) imports what the operator runs:

- the console script's module, as ``ferry operator run`` does at start;
- every module of ``ferry_operator`` and the module of the ``operator`` commands;
- every import statement in them, inside functions too (the operator imports its heavy parts
  lazily), and, through each name a statement imports from Ferry, every statement of the module
  that defines it, transitively. A statement under ``if TYPE_CHECKING:`` never runs and is left
  out; one under ``try: ... except ImportError:`` whose handler carries on without it is
  optional, and the image may lack it only where ``WITHOUT`` says why the operator does without.

A module that comes from any other installed distribution (another extra's, a test tool's) is
refused there as ``No module named ...``, exactly as in the image.

This file is also the restricted process's program (``python -I tests/test_operator_image.py``),
so it imports nothing but the standard library at module level."""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "operator" / "Dockerfile"
OURS = ("ferry", "ferry_operator")  # the packages the image installs from the checkout
OPERATOR_COMMANDS = "ferry.cli.operator"  # where `ferry operator run` lives (the image's ENTRYPOINT)
# Guarded imports (try/except ImportError that carries on without them) the image may lack, each
# with why the operator does fine without it. None so far: the one guarded import in Ferry
# (ferry.serve's uvloop) is not on the operator's path.
WITHOUT: dict[str, str] = {}
# pip's options that take a value (a requirement is any other word that is not an option)
_PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-c", "--constraint", "-f", "--find-links",
                      "-t", "--target", "--prefix", "--root", "--platform", "--python-version", "--implementation",
                      "--abi", "--cache-dir", "--src", "--progress-bar", "--trusted-host", "--config-settings",
                      "-C", "--global-option", "--upgrade-strategy", "--only-binary", "--no-binary"}


# ---- what the image installs, read from the Dockerfile ----------------------------------------------
def pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments of each ``pip install`` that a ``RUN`` instruction runs."""
    installs = []
    for line in dockerfile.replace("\\\n", " ").splitlines():
        if not line.startswith("RUN "):
            continue
        for command in re.split(r"&&|\|\||;", line[4:]):
            words = shlex.split(command)
            for i, word in enumerate(words[:-1]):
                if (word == "pip" or word.endswith("/pip") or word.endswith("/pip3")) and words[i + 1] == "install":
                    installs.append(words[i + 2:])
    return installs


def base_python(dockerfile: str) -> str:
    """The Python version of the image's last stage (``FROM python:3.11.7-slim-bookworm``)."""
    versions = re.findall(r"^FROM\s+(?:\S+/)?python:(\d+\.\d+\.\d+)", dockerfile, re.M)
    assert versions, "operator/Dockerfile: the image is not built FROM python:<x.y.z>"
    return versions[-1]


def image_requirements(dockerfile: str) -> list[Any]:
    """The requirements the Dockerfile's ``pip install`` lines name, with the project's own
    (``.[train,operator]``) expanded from pyproject.toml: what the image builds from."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = []
    for args in pip_installs(dockerfile):
        assert "--no-deps" not in args, "pip install --no-deps: the closure below would overstate the image"
        words = iter(args)
        for word in words:
            if word in ("-r", "--requirement"):
                lines = (REPO / next(words)).read_text().splitlines()
                requirements += [Requirement(x.split("#")[0].strip()) for x in lines if x.split("#")[0].strip()]
            elif word in ("-e", "--editable"):
                requirements += _project(project, next(words))
            elif word in _PIP_VALUE_OPTIONS:
                next(words)
            elif not word.startswith("-"):
                requirements += _project(project, word) if word.startswith((".", "/")) else [Requirement(word)]
    return requirements


def _project(project: dict[str, Any], word: str) -> list[Any]:
    """``.`` or ``.[extra,...]``: the project's dependencies and those of the extras."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    match = re.fullmatch(r"\.?/?(?:src)?(?:\[(.*)\])?", word)
    assert match, f"pip install {word}: not the project (.) as the Dockerfile copies it"
    extras = [e.strip() for e in (match.group(1) or "").split(",") if e.strip()]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        assert extra in project["optional-dependencies"], f"the image installs extra {extra!r}; pyproject.toml lacks it"
        for text in project["optional-dependencies"][extra]:
            req = Requirement(text)
            found += (_project(project, f".[{','.join(sorted(req.extras))}]")
                      if canonicalize_name(req.name) == canonicalize_name(project["name"]) else [req])
    return found


def image_distributions(dockerfile: str | None = None) -> tuple[set[str], set[str]]:
    """(the distributions the image holds, by canonical name; those among them not installed
    here). The closure of the Dockerfile's requirements over the installed metadata, markers
    evaluated for the image's Python on Linux, each distribution with the extras asked of it;
    plus what ``python -m venv`` seeds (pip, and setuptools before Python 3.12)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = dockerfile if dockerfile is not None else DOCKERFILE.read_text()
    version = base_python(text)
    env = {**default_environment(), "python_full_version": version, "python_version": version.rsplit(".", 1)[0],
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    seeds = ["pip"] + (["setuptools"] if tuple(map(int, version.split(".")[:2])) < (3, 12) else [])
    todo = [(Requirement(s), ()) for s in seeds] + [(r, ()) for r in image_requirements(text)]
    done: dict[str, set[str]] = {}
    missing: set[str] = set()
    while todo:
        req, asked = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *asked)):
            continue
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in done and extras <= done[name]:
            continue
        done.setdefault(name, set()).update(extras)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.add(name)
            continue
        todo += [(Requirement(r), tuple(sorted(done[name]))) for r in dist.requires or []]
    return set(done) - missing, missing


# ---- the restricted process -------------------------------------------------------------------------
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class ImageOnly(importlib.abc.MetaPathFinder):
    """The only finder on ``sys.meta_path``: it asks the finders that were there and keeps what
    they find only when the image would have it too (built-in, the standard library, a file of
    an allowed distribution, Ferry's own packages); anything else is not found, as in the image,
    and noted in ``refused`` ((module, the distribution it came from), in order)."""

    def __init__(self, allowed: set[str], own: list[str]):
        self.finders = list(sys.meta_path)
        self.allowed = allowed
        self.refused: list[tuple[str, str]] = []
        stdlib = os.path.realpath(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix,
                                                                      "base": sys.base_prefix}))
        self.roots = [stdlib + os.sep, *(os.path.realpath(d) + os.sep for d in own)]
        self.not_roots = [os.path.join(stdlib, d) + os.sep for d in ("site-packages", "dist-packages")]
        self.owner: dict[str, str] = {}
        self.allowed_files: set[str] = set()
        self.allowed_dirs: set[str] = set()
        self.installed: dict[str, str] = {}
        for dist in importlib.metadata.distributions():
            name = _canonical(dist.metadata["Name"])
            self.installed[name] = dist.metadata["Name"]
            base = os.path.realpath(dist.locate_file(""))
            record = dist.read_text("RECORD")
            assert record is not None, f"{name} has no RECORD: which modules it provides cannot be told"
            for line in record.splitlines():
                path = os.path.normpath(os.path.join(base, line.rsplit(",", 2)[0].strip('"')))
                self.owner.setdefault(path, name)
                if name in allowed:
                    self.allowed_files.add(path)
                    parent = os.path.dirname(path)
                    while parent.startswith(base) and parent not in self.allowed_dirs:
                        self.allowed_dirs.add(parent)
                        parent = os.path.dirname(parent)

    def _in_image(self, spec: Any) -> bool:
        if spec.origin is None or not spec.has_location:  # built-in, frozen, or a namespace package
            locations = spec.submodule_search_locations
            return spec.origin is not None or not locations or any(
                os.path.realpath(p) in self.allowed_dirs or self._under_roots(os.path.realpath(p) + os.sep)
                for p in locations)
        path = os.path.realpath(spec.origin)
        return path in self.allowed_files or self._under_roots(path)

    def _under_roots(self, path: str) -> bool:
        return any(path.startswith(r) for r in self.roots) and not any(path.startswith(r) for r in self.not_roots)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        for finder in self.finders:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                if self._in_image(spec):
                    return spec
                where = os.path.realpath(spec.origin) if spec.origin and spec.has_location else ""
                self.refused.append((name, self.owner.get(where, "no distribution the image installs")))
                return None
        return None

    def find_distributions(self, context: Any = importlib.metadata.DistributionFinder.Context()) -> Iterator[Any]:
        """The image's distributions only: code that asks importlib.metadata what is installed
        (mlflow does, to tell its full install from its tracing SDK) sees what the image holds."""
        for finder in self.finders:
            find = getattr(finder, "find_distributions", None)
            for dist in find(context) if find else ():
                if _canonical(dist.metadata["Name"]) in self.allowed:
                    yield dist

    def invalidate_caches(self) -> None:
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _without_it(handler: ast.ExceptHandler) -> bool:
    """A handler of ImportError that carries on (it raises nothing): what it guards is optional.
    One that raises (an install hint) makes the import no less required."""
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    catches = any(isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds)
    return catches and not any(isinstance(n, ast.Raise) for n in ast.walk(handler))


class _Imports(ast.NodeVisitor):
    """The import statements of one module, anywhere in it: (line, statement in absolute form,
    module, names, optional)."""

    def __init__(self, package: str):
        self.package = package
        self.optional = 0
        self.found: list[tuple[int, str, str, tuple[str, ...], bool]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_without_it(h) for h in node.handlers)
        self.optional += guarded
        for stmt in node.body:
            self.visit(stmt)
        self.optional -= guarded
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)

    visit_TryStar = visit_Try

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((node.lineno, f"import {alias.name}", alias.name, (), self.optional > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "__future__":
            return
        module = importlib.util.resolve_name("." * node.level + (node.module or ""), self.package) \
            if node.level else node.module
        names = tuple(a.name for a in node.names)
        self.found.append((node.lineno, f"from {module} import {', '.join(names)}", module, names, self.optional > 0))


def _ours(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in OURS


def _walk(entry: str, roots: list[str], importer: ImageOnly) -> dict[str, Any]:
    """Import ``entry``, then every module of the ``roots`` packages and every import statement
    reachable from them (see the module docstring); what failed, and what was reached."""
    import pkgutil

    failures: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any] | None] = {}  # statement → its failure (None: it worked)

    def run(statement: str, where: str, optional: bool) -> dict[str, Any] | None:
        before = len(importer.refused)
        namespace: dict[str, Any] = {}
        try:
            exec(compile(statement, where, "exec"), namespace)  # noqa: S102 - the operator's own import statements
        except Exception as exc:  # noqa: BLE001 - every failure is reported, with its type
            failures.append({"where": [where], "statement": statement, "optional": optional,
                             "error": f"{type(exc).__name__}: {exc}", "refused": dict(importer.refused[before:])})
            return None
        return namespace

    run(f"import {entry}", "the console script", False)
    modules = []
    for root in roots:
        if run(f"import {root}", "the operator", False) is None:
            continue
        package = sys.modules[root]
        modules.append(root)
        if hasattr(package, "__path__"):
            modules += [m.name for m in pkgutil.walk_packages(package.__path__, f"{root}.", onerror=lambda name: None)]
    pending = list(dict.fromkeys(modules))
    reached: list[str] = []
    while pending:
        name = pending.pop(0)
        if name in reached or name not in sys.modules and run(f"import {name}", name, False) is None:
            continue
        reached.append(name)
        module = sys.modules[name]
        source = Path(module.__file__)
        visitor = _Imports(module.__spec__.parent or name)
        visitor.visit(ast.parse(source.read_text(), str(source)))
        for line, statement, target, names, optional in visitor.found:
            where = f"{source.relative_to(REPO) if source.is_relative_to(REPO) else source}:{line}"
            if statement in seen:
                failure = seen[statement]
                if failure is not None:
                    failure["where"].append(where)
                    failure["optional"] = failure["optional"] and optional
                continue
            namespace = run(statement, where, optional)
            seen[statement] = None if namespace is not None else failures[-1]
            if namespace is None or not _ours(target):
                continue
            if not names:  # import ferry.x.y: the module is used as a namespace
                pending.append(target)
            for imported in names:  # from ferry.x import y: the module that defines y
                value = namespace.get(imported)
                defined_in = value.__name__ if isinstance(value, type(sys)) else getattr(value, "__module__", None)
                if isinstance(defined_in, str) and _ours(defined_in):
                    pending.append(defined_in)
    return {"failures": failures, "reached": reached, "statements": len(seen)}


def _leaks(provided: dict[str, list[str]], allowed: set[str]) -> list[str]:
    """Top-level modules of installed distributions outside the image (``provided``: module →
    distributions, as seen before the restriction) that can still be found (none, or the
    restriction means nothing)."""
    leaks = []
    for module, dists in sorted(provided.items()):
        names = {_canonical(d) for d in dists}
        if names & allowed or module in sys.builtin_module_names or not module.isidentifier():
            continue
        if module in sys.modules:  # imported before the restriction began (site's .pth files)
            continue
        if importlib.util.find_spec(module) is not None:
            leaks.append(f"{module} ({', '.join(sorted(names))})")
    return leaks


def main(config_path: str, result_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    allowed = set(config["allowed"])
    started = time.monotonic()
    importer = ImageOnly(allowed, config["own"])
    provided = importlib.metadata.packages_distributions()
    sys.meta_path[:] = [importer]
    importlib.invalidate_caches()
    result = {"leaks": _leaks(provided, allowed) if config["leaks"] else [],
              **_walk(config["entry"], config["roots"], importer),
              "seconds": round(time.monotonic() - started, 1)}
    Path(result_path).write_text(json.dumps(result, indent=1))


# ---- the tests ----------------------------------------------------------------------------------
def _entry_module() -> str:
    """The module of the console script the image's ENTRYPOINT runs (``ferry`` → ``ferry.cli``)."""
    text = DOCKERFILE.read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M).group(1))
    assert entrypoint[1:3] == ["operator", "run"], entrypoint
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts[entrypoint[0]].split(":")[0]


def _own_packages() -> list[str]:
    """Ferry's packages as the image copies them (``COPY ferry ferry``, ``COPY operator/ferry_operator ...``)."""
    copied = {line.split()[-1].rstrip("/") for line in DOCKERFILE.read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line}
    folders = {"ferry": "ferry", "ferry_operator": "operator/ferry_operator"}
    assert set(folders.values()) <= copied, f"operator/Dockerfile copies {sorted(copied)}"
    return [str(REPO / f) for f in folders.values()]


def restricted(tmp_path: Path, allowed: set[str], *, roots: list[str], leaks: bool = True) -> dict[str, Any]:
    """Run :func:`main` in a fresh ``python -I`` (no current directory, no PYTHONPATH on sys.path)."""
    config, result = tmp_path / "config.json", tmp_path / "result.json"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
    config.write_text(json.dumps({"allowed": sorted(allowed | {_canonical(project)}), "own": _own_packages(),
                                  "entry": _entry_module(), "roots": roots, "leaks": leaks}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBECONFIG", "FERRY_"))}
    done = subprocess.run([sys.executable, "-I", __file__, str(config), str(result)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(result.read_text())


def _report(failures: list[dict[str, Any]]) -> str:
    return "\n".join(f"  {', '.join(f['where'])}: {f['statement']}\n    {f['error']}"
                     + "".join(f"\n    {m} comes from {d}, which the image does not install"
                               for m, d in f["refused"].items())
                     for f in failures)


def test_the_image_is_what_the_dockerfile_installs() -> None:
    from packaging.utils import canonicalize_name

    installs = pip_installs(DOCKERFILE.read_text())
    assert [a for a in installs if any(w.startswith("torch") for w in a)], installs
    names = {canonicalize_name(r.name) for r in image_requirements(DOCKERFILE.read_text())}
    assert {"torch", "mlflow", "kopf", "kubernetes"} <= names
    image, missing = image_distributions()
    assert missing == set(), f"the image installs {sorted(missing)}, which this environment lacks: make install"
    assert {"torch", "mlflow", "kopf", "prometheus-client", "aiohttp", "pydantic", "numpy"} <= image
    assert not {"kserve", "optuna", "onnx", "pytest", "moto", "helm-python-sdk"} & image  # the other extras' and dev's


def test_every_module_the_operator_imports_comes_from_its_image(tmp_path: Path) -> None:
    image, _ = image_distributions()
    result = restricted(tmp_path, image, roots=["ferry_operator", OPERATOR_COMMANDS])
    assert result["leaks"] == [], f"found though the image lacks them: {result['leaks']}"
    required = [f for f in result["failures"] if not f["optional"]]
    assert not required, f"the operator imports what its image lacks (operator/Dockerfile, the operator extra):\n" \
                         f"{_report(required)}"
    optional = [f for f in result["failures"] if f["optional"] and f["statement"] not in WITHOUT]
    assert not optional, f"guarded imports the image lacks, which the operator may not do without:\n{_report(optional)}"
    assert {"ferry_operator._main", "ferry.registry._promote", "ferry.serve._model"} <= set(result["reached"])


def test_an_image_without_kopf_is_caught(tmp_path: Path) -> None:
    image, _ = image_distributions()
    result = restricted(tmp_path, image - {"kopf"}, roots=["ferry_operator"], leaks=False)
    assert any(f["refused"].get("kopf") == "kopf" and not f["optional"] for f in result["failures"]), result["failures"]


if __name__ == "__main__":
    main(*sys.argv[1:])
