"""Ferry's operator: a ModelPipeline resource (train → gate → serve) driven by kopf handlers
that reuse the ``ferry`` library.

    ferry operator run --all-namespaces --liveness http://0.0.0.0:8080/healthz
    kopf run -m ferry_operator --all-namespaces     # the same handlers through kopf's own CLI

The package is ``ferry_operator`` (a package named ``operator`` would shadow the standard
library's).
"""

from ferry_operator._crd import GROUP, KIND, PHASES, PLURAL, VERSION, pipeline_crd
from ferry_operator._handlers import registry
from ferry_operator._main import run
from ferry_operator._pipeline import Pipeline, parse
from ferry_operator._reconcile import Deps, reconcile

__all__ = ["GROUP", "KIND", "PHASES", "PLURAL", "VERSION", "Deps", "Pipeline", "parse", "pipeline_crd", "reconcile",
           "registry", "run"]
