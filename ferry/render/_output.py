"""From spec objects to files: deterministic YAML, written all-or-nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ferry.errors import ConfigError


@dataclass(frozen=True)
class Rendered:
    """One manifest: its path relative to the output directory and its document."""

    relpath: str
    doc: dict[str, Any]


class _Dumper(yaml.SafeDumper):
    """Block style everywhere; multi-line strings as literal blocks for readable diffs."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(docs: Sequence[dict[str, Any]]) -> str:
    """Deterministic YAML: keys in the wire models' declared order, no line folding, no
    timestamps; several documents are separated by ``---``."""
    return "---\n".join(
        yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16,
                  allow_unicode=True)
        for doc in docs
    )


def job_target(job: Any, target: str | None = None) -> str:
    """What ``job`` renders as: ``target`` (``ferry render --target``), else the job's own
    ``target``, else ``$FERRY_TARGET``, else ``"pytorchjob"``."""
    from ferry.settings import FERRY_TARGET
    from ferry.spec._job import TARGETS

    if target is None and job.target is None and FERRY_TARGET.is_set():
        target = FERRY_TARGET.get()
        if target not in TARGETS:
            raise ConfigError(f"FERRY_TARGET={target!r}: must be one of {', '.join(TARGETS)}; or unset it (pytorchjob)")
    return target or job.target or "pytorchjob"


def render_spec(spec: Any, resolved: Any = None, target: str | None = None) -> list[Rendered]:
    """Every manifest a TrainingJob or a Deployment turns into (a Deployment needs its resolved
    model). A TrainingJob renders as :func:`job_target` says, ``target`` first: a PyTorchJob
    (``<name>/pytorchjob.yaml``) or a TrainJob (``<name>/trainjob.yaml``). A Sweep's trials are
    rendered by ``ferry.sweep``, which calls this package."""
    from ferry.render._inferenceservice import render_inferenceservice
    from ferry.render._pytorchjob import render_pytorchjob
    from ferry.render._trainjob import render_trainjob
    from ferry.spec import Deployment, TrainingJob

    if isinstance(spec, TrainingJob):
        job = spec.with_target(job_target(spec, target))
        if job.target == "trainjob":
            return [Rendered(f"{job.name}/trainjob.yaml", render_trainjob(job))]
        return [Rendered(f"{job.name}/pytorchjob.yaml", render_pytorchjob(job))]
    if isinstance(spec, Deployment):
        return [Rendered(f"{spec.name}/inferenceservice.yaml", render_inferenceservice(spec, resolved))]
    raise TypeError(f"no renderer for {type(spec).__name__}")  # pragma: no cover - callers choose the kinds


def write_rendered(rendered: Iterable[Rendered], out_dir: Path) -> list[Path]:
    """Write every manifest under ``out_dir``, all or nothing.

    Files are first written into a temporary directory beside ``out_dir`` and only then moved
    into place, each with an atomic rename: a failure part-way leaves ``out_dir`` as it was
    (and does not create it).
    """
    items = list(rendered)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output {out_dir} exists and is not a directory; choose another -o")
    parent = out_dir.resolve().parent
    if not parent.is_dir():
        raise ConfigError(f"output {out_dir}: parent directory {parent} does not exist; create it first")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        for item in items:
            target = staging / item.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(dump_yaml([item.doc]))
        written = []
        for item in items:
            final = out_dir / item.relpath
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / item.relpath, final)
            written.append(final)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
