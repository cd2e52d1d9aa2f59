"""Load spec objects (``TrainingJob``, later ``Deployment``) from Python job files."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.errors import FerryError, JobFileError, SpecError

__all__ = ["LoadedSpec", "load_specs"]


@dataclass(frozen=True)
class LoadedSpec:
    path: Path
    attribute: str
    spec: Any

    @property
    def where(self) -> str:
        return f"{self.path}:{self.attribute}"


def project_root(path: Path) -> Path:
    """Where a job file's imports start: the nearest folder above it with a ``pyproject.toml``
    or a ``.git``; else the folder above the outermost package (a folder with ``__init__.py``)
    the file sits in, which is the file's own folder when it is in none."""
    path = path.resolve()
    for folder in path.parents:
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        folder = folder.parent
    return folder


def package_of(path: Path, root: Path) -> str | None:
    """The dotted package a job file sits in, as its project root imports it (``jobs.digits``
    for ``jobs/digits/job.py`` beside an ``__init__.py``), so that its relative imports
    (``from .model import Net``) resolve; None when its folder is no package under the root."""
    folder = path.resolve().parent
    if not (folder / "__init__.py").is_file():
        return None
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        return None
    return ".".join(parts) if parts and all(part.isidentifier() for part in parts) else None


def _import_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise JobFileError(f"{path}: no such job file; give the path to a .py file that defines a TrainingJob")
    if path.suffix != ".py":
        raise JobFileError(f"{path}: a job file must be a Python file ending in .py")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    root = project_root(path)
    package = package_of(path, root)
    # inside its package (its parent, for relative imports), under a name of its own
    module_name = f"{package}._ferry_jobfile_{digest}" if package else f"_ferry_jobfile_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - suffix checked above
        raise JobFileError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # the file's project root first (`from jobs.digits.job import job` from any folder), then its
    # own folder (as `python file.py` sees it); the working directory last, as a fallback
    saved = list(sys.path)
    sys.path[:0] = list(dict.fromkeys([str(root), str(path.resolve().parent)]))
    sys.path.append(str(Path.cwd()))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    except FerryError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    except SyntaxError as exc:
        raise JobFileError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    except BaseException as exc:  # noqa: BLE001 - a job file may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path.resolve()]
        line = f":{frames[-1].lineno}" if frames else ""
        if isinstance(exc, ImportError) and package is None and "no known parent package" in str(exc):
            init = path.resolve().parent / "__init__.py"
            where = init.relative_to(root) if init.is_relative_to(root) else init
            raise JobFileError(f"{path}{line}: a relative import needs the job file's folder to be a package: add "
                               f"{where} (an empty file will do), or import from the project root "
                               f"({root}) by absolute name") from exc
        raise JobFileError(
            f"{path}{line}: raised {type(exc).__name__} while being imported: {exc}; "
            "fix the job file so that importing it only defines jobs"
        ) from exc
    finally:
        sys.modules.pop(module_name, None)
        sys.path[:] = saved
    return vars(module)


def _imported_from(others: set[str]) -> list[dict[str, Any]]:
    """The namespaces of the modules imported so far whose file is one of ``others`` (real
    paths): a spec bound there was created by that file, and belongs to it."""
    names = {os.path.basename(other) for other in others}
    return [
        vars(module) for module in list(sys.modules.values())
        if isinstance(file := getattr(module, "__file__", None), str) and os.path.basename(file) in names
        and os.path.realpath(file) in others
    ]


_EXAMPLES = {  # what a file that defines none of a kind could say
    "TrainingJob": "job = TrainingJob(name=..., image=..., module=...)",
    "Sweep": "sweep = Sweep(name=..., job=job, space={...}, objective=Objective(metric=...))",
    "Deployment": "deployment = Deployment(name=..., model='models:/NAME@ALIAS')",
    "Promotion": "policy = Promotion(model=...)",
}


def load_specs(paths: Iterable[str | Path], kinds: Sequence[type] | None = None) -> list[LoadedSpec]:
    """Import each job file and collect every module-level object of the given spec kinds.

    A spec belongs to the file that creates it: one that a file imports from another of
    ``paths`` is counted there, and an object bound under several names or in several files
    counts once. Given several files, those that define none are skipped (an ``__init__.py``
    in ``jobs/*.py``).

    Raises :class:`JobFileError` when a file cannot be imported, when a single file (or every
    one of several) defines none, or when two specs of the same kind share a name in the same
    namespace.
    """
    if kinds is None:
        from ferry.spec._job import TrainingJob

        kinds = (TrainingJob,)
    kinds = tuple(kinds)
    given: dict[str, Path] = {}  # real path -> the path as given; a file given twice is loaded once
    for raw in paths:
        given.setdefault(os.path.realpath(raw), Path(raw))
    files = list(given.items())
    found: list[LoadedSpec] = []
    seen: dict[int, Any] = {}  # id -> the object itself, kept alive so that its id is not reused
    seen_names: dict[tuple[str, str, str], LoadedSpec] = {}
    for real, path in files:
        namespace = _import_file(path)
        elsewhere = _imported_from({other for other, _ in files if other != real})
        in_file = 0
        for attribute, value in namespace.items():
            if not isinstance(value, kinds) or id(value) in seen:
                continue
            seen[id(value)] = value
            if any(any(v is value for v in names.values()) for names in elsewhere):
                continue
            loaded = LoadedSpec(path, attribute, value)
            ident = getattr(value, "name", None) or getattr(value, "model", "")  # a Promotion is keyed by its model
            key = (type(value).__name__, getattr(value, "namespace", ""), ident)
            if key in seen_names:
                raise JobFileError(
                    f"two {key[0]}s are named {ident!r} in namespace {key[1]!r}: "
                    f"{seen_names[key].where} and {loaded.where}; give each a unique name"
                )
            seen_names[key] = loaded
            found.append(loaded)
            in_file += 1
        if in_file == 0 and len(files) == 1:
            wanted = " or ".join(k.__name__ for k in kinds)
            raise JobFileError(f"{path}: defines no {wanted} at module level; add one, e.g. "
                               f"{_EXAMPLES.get(kinds[0].__name__, _EXAMPLES['TrainingJob'])}")
    if not found and len(files) > 1:
        wanted = " or ".join(k.__name__ for k in kinds)
        raise JobFileError(f"{', '.join(str(p) for _, p in files)}: define no {wanted} at module level; "
                           "give at least one file that does")
    return found
