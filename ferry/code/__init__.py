"""Code to the cluster without an image rebuild.

``ferry submit`` bundles the job's project (:func:`build_bundle`: a deterministic,
content-addressed ``.tar.gz`` that honours ``.gitignore`` and ``.ferryignore``), publishes it
once per digest to a code store (:func:`publish`: S3, MLflow's artifact proxy or a folder),
and renders the job with the bundle's URI and digest (``TrainingJob.code``). In every replica,
``python -m ferry.code -- <command>`` (:mod:`ferry.code.__main__`) fetches the bundle, refuses
it unless its digest matches, unpacks it and runs the job's command inside it.

Imports nothing heavy: boto3 and MLflow only when their store is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.code._bundle import Bundle, BundleError, build_bundle, bundle_name, collect, folder, unpack
from ferry.code._store import bundle_uri, code_store, download, publish, store_problem

__all__ = ["Bundle", "BundleError", "Shipped", "build_bundle", "bundle_name", "bundle_uri", "code_store", "collect",
           "download", "holds_module", "max_bytes", "publish", "ship", "store_problem", "unpack"]

if TYPE_CHECKING:
    from ferry.spec import TrainingJob


@dataclass(frozen=True)
class Shipped:
    """A job's code, bundled and in its store."""

    job: TrainingJob  # the job, its ``code`` naming the bundle
    bundle: Bundle
    uri: str
    uploaded: bool  # False: the store already held this digest (or ``upload`` was False)


def ship(job: TrainingJob, root: Path, store: str, *, upload: bool = True) -> Shipped:
    """Bundle ``root``, publish it to ``store`` (once per digest), and return ``job`` set to run
    from it; ``upload=False`` (a dry run) names the bundle where it would be, sending nothing.
    Refused when the job's module is not in ``root``: the replicas could not import it."""
    from ferry.spec import Code

    root = folder(root).resolve()
    if job.module is not None and not holds_module(root, job.module):
        raise BundleError(f"code bundle: module {job.module!r} (the job's entry point) is not in {root}; "
                          f"give --code the folder it is imported from")
    bundle = build_bundle(root, max_bytes())
    uri, uploaded = publish(bundle, store) if upload else (bundle_uri(store, bundle.digest), False)
    return Shipped(job.replace(code=Code(uri=uri, digest=bundle.digest)), bundle, uri, uploaded)


def holds_module(root: Path, module: str) -> bool:
    """Whether the dotted ``module`` is a file or package inside ``root``."""
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() or (path / "__main__.py").is_file()


def max_bytes() -> int:
    """The largest bundle Ferry makes (``FERRY_CODE_MAX_MB``)."""
    from ferry import settings
    from ferry.errors import ConfigError

    raw = settings.FERRY_CODE_MAX_MB.get() or "50"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"FERRY_CODE_MAX_MB={raw!r}: give a size in MiB above 0, e.g. FERRY_CODE_MAX_MB=100")
    return int(value * 1024 * 1024)
