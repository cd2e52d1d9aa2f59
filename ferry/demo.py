"""``make demo``: the main job end to end on the embedded default (no cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

console = Console(highlight=False)
JOB_FILE = Path("jobs/digits/job.py")


def main() -> int:
    from ferry.render import dump_yaml, render_spec
    from ferry.spec import load_specs
    from ferry.validate import find_crd_dir, validate_manifests

    console.rule("[bold]1. render[/] jobs/digits/job.py → PyTorchJob")
    (loaded,) = load_specs([JOB_FILE])
    rendered = render_spec(loaded.spec)
    crd_dir = find_crd_dir()
    validate_manifests([(r.relpath, r.doc) for r in rendered], crd_dir, require_crds=crd_dir is not None)
    console.print(f"validated against {crd_dir or 'Pod Security only (no CRD dir found)'}")
    console.print(dump_yaml([r.doc for r in rendered]).splitlines()[0] + " ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
