"""A new project from the templates beside this module, written all at once or not at all."""

from __future__ import annotations

import keyword
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from string import Template

from ferry import _k8s
from ferry.errors import ConfigError, SpecError

# The name is the job's, the registered model's and the Deployment's: KServe appends
# "-predictor" and more to a Deployment's name, so it stays within the Deployment's limit.
MAX_NAME = 45
EXAMPLE = "ferry init fraud-detector"

# Where each template goes; {package} is the name with '_' for '-'. The dotfiles' templates
# have no leading dot, so that package data globs find them.
FILES = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "Dockerfile": "Dockerfile.tmpl",
    ".gitignore": "gitignore.tmpl",
    ".ferryignore": "ferryignore.tmpl",
    ".dockerignore": "ferryignore.tmpl",
    "{package}/__init__.py": "package_init.py.tmpl",
    "{package}/job.py": "job.py.tmpl",
    "{package}/train.py": "train.py.tmpl",
    "{package}/deploy.py": "deploy.py.tmpl",
}


@dataclass(frozen=True)
class Project:
    """What ``create_project`` wrote: the folder, and each file in it (relative paths)."""

    name: str
    package: str
    root: Path
    files: tuple[Path, ...]


def package_name(name: str) -> str:
    """The Python package of project ``name``: ``fraud-detector`` → ``fraud_detector``."""
    return name.replace("-", "_")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a project, or None when it can."""
    if problem := _k8s.dns1035_problem(name, max_len=MAX_NAME):
        return f"{problem}; it names the job, its registered model and its Deployment"
    package = package_name(name)
    if keyword.iskeyword(package) or keyword.issoftkeyword(package):
        return f"its package {package!r} would be a Python keyword"
    if package in sys.stdlib_module_names or package in sys.modules or find_spec(package) is not None:
        return f"its package {package!r} would shadow the installed module {package!r} in every replica"
    return None


def check_name(name: str) -> str:
    if problem := name_problem(name):
        raise SpecError(f"NAME {name!r}: {problem}; e.g. `{EXAMPLE}`")
    return name


def render_files(name: str, image: str) -> dict[str, str]:
    """Every file of project ``name`` (relative path → text); ``image``: Ferry's training image,
    which the job runs and the Dockerfile builds on."""
    from ferry import __version__

    package = package_name(check_name(name))
    values = {"name": name, "package": package, "image": image, "ferry_version": __version__}
    templates = resources.files(__package__) / "templates"
    return {path.format(package=package): Template((templates / template).read_text()).substitute(values)
            for path, template in FILES.items()}


def create_project(name: str, target: Path | None = None, *, force: bool = False, image: str | None = None) -> Project:
    """Write project ``name`` into the folder ``target`` (default: ``./NAME``).

    A folder that exists and holds anything is refused unless ``force``, which replaces the
    project's own files there and leaves the others alone. The files are written into a
    temporary folder beside ``target`` first and only then moved into place: a failure leaves
    ``target`` as it was (and a new one uncreated)."""
    from ferry.images import image as ferry_image

    files = render_files(name, image or ferry_image("train", variant="cpu"))
    target = Path(target if target is not None else name)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a folder; choose another --dir")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ConfigError(f"{target} exists and is not empty; choose another --dir, or --force to write the "
                          "project's files into it (replacing those of the same names, keeping the others)")
    if target.is_dir() and (blocking := _in_the_way(target, files)):  # all the moves below can be made
        raise ConfigError(f"{blocking} is in the way of the project's files; move it aside")
    resolved = target.resolve()
    if not resolved.parent.is_dir():
        raise ConfigError(f"--dir {target}: its parent folder {resolved.parent} does not exist; create it first")
    staging = Path(tempfile.mkdtemp(prefix=f".{resolved.name}.", dir=resolved.parent))
    try:
        built = staging / resolved.name  # made with mkdir, so it has the umask's permissions, not mkdtemp's 0700
        for relpath, text in files.items():
            (built / relpath).parent.mkdir(parents=True, exist_ok=True)
            (built / relpath).write_text(text)
        if not target.exists():
            os.rename(built, target)
        else:
            for relpath in files:
                (target / relpath).parent.mkdir(parents=True, exist_ok=True)
                os.replace(built / relpath, target / relpath)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Project(name, package_name(name), target, tuple(Path(p) for p in files))


def _in_the_way(target: Path, relpaths: Iterable[str]) -> Path | None:
    """The first path in ``target`` a project file cannot be moved onto: a folder where a file
    goes, or a file where a folder goes."""
    for relpath in relpaths:
        for folder in reversed(Path(relpath).parents[:-1]):
            if (target / folder).exists() and not (target / folder).is_dir():
                return target / folder
        if (target / relpath).is_dir():
            return target / relpath
    return None
