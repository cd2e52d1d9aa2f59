"""Starting the operator: its connection to the API server (as kubectl would connect, or the
pod's service account), its clients, its settings, and ``run`` for ``ferry operator run``.

Configuration (environment, as the Helm chart sets it):

- ``MLFLOW_TRACKING_URI``: the tracking server (its credentials, if any, come from the
  environment MLflow reads, filled from a Secret by the chart);
- ``FERRY_OPERATOR_JOB_TRACKING_URI``: the URI written into each job's tracking ConfigMap
  (default: the operator's own; ``-`` leaves that ConfigMap to whoever installs the namespace);
- ``FERRY_OPERATOR_RESYNC_S``: how often every pipeline is looked at again when nothing woke it
  (its own changes and its children's wake it at once);
- ``FERRY_OPERATOR_POLL_S``: how soon what sends no event is looked at again (MLflow registering a
  model, a canary's clock), and the first wait after a transient error;
- ``FERRY_PROMETHEUS_URL``: where a canary's error rate is read (``deployment.canary.maxErrorRate``), when set;
- ``FERRY_TARGET``: what a pipeline's job that names no ``target`` trains as, ``pytorchjob`` (the
  default) or ``trainjob``; read when its training starts (the pipeline's status records the kind);
- ``FERRY_ACTOR``: who the promotion history says promoted (default: the service account).

High availability: replicas find each other through kopf's peering objects (the
``KopfPeering``/``ClusterKopfPeering`` CRDs, shipped in ``crds/``). Each replica starts with a
random priority; kopf pauses every replica that sees a peer of higher priority (its pipelines'
workers stop), so exactly one acts, and another takes over when its heartbeat stops. One replica
runs ``--standalone``, and its Deployment is replaced, never rolled (``Recreate``).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import kopf

from ferry import settings
from ferry.errors import ConfigError, FerryError
from ferry_operator._handlers import Wakers, registry
from ferry_operator._reconcile import Deps

log = logging.getLogger("ferry.operator")
PEERING = "ferry"


def connection_info(cluster: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from the ``kubernetes`` client's configuration of ``cluster``."""
    conf = cluster.api.configuration
    token = (conf.api_key or {}).get("authorization") or (conf.api_key or {}).get("BearerToken")
    scheme = None
    if token and " " in token:
        scheme, token = token.split(" ", 1)
    return kopf.ConnectionInfo(server=conf.host, ca_path=conf.ssl_ca_cert, insecure=not conf.verify_ssl,
                               scheme=scheme or ("Bearer" if token else None), token=token,
                               certificate_path=conf.cert_file, private_key_path=conf.key_file,
                               default_namespace=cluster.namespace)


def build_deps() -> Deps:
    from mlflow import MlflowClient

    from ferry.kube import Cluster, Retry
    from ferry.registry import resolve_actor

    tracking = settings.MLFLOW_TRACKING_URI.get()
    if not tracking:
        raise ConfigError("MLFLOW_TRACKING_URI is not set: the operator finds runs and promotes models there; set it "
                          "to the tracking server (e.g. http://ferry-mlflow.ferry:5000)")
    job_uri = settings.FERRY_OPERATOR_JOB_TRACKING_URI.get() or tracking
    default_target()  # a FERRY_TARGET that names no kind is refused before kopf starts
    # MLflow's client retries a failed request for minutes by default; a pass must not block that
    # long: the worker retries with its own backoff, and says so on the pipeline meanwhile.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    poll_s, resync_s = _seconds(settings.FERRY_OPERATOR_POLL_S, 5), _seconds(settings.FERRY_OPERATOR_RESYNC_S, 300)
    prometheus = settings.FERRY_PROMETHEUS_URL.get() if settings.FERRY_PROMETHEUS_URL.is_set() else None
    return Deps(cluster=Cluster.connect(retry=Retry(attempts=2)), mlflow=MlflowClient(tracking_uri=tracking),
                tracking_uri=None if job_uri == "-" else job_uri, poll_s=poll_s, resync_s=resync_s,
                actor=resolve_actor(None), prometheus_url=prometheus)


def default_target() -> str:
    """What a job that names no target trains as: ``FERRY_TARGET``, else pytorchjob (ConfigError
    when it names neither kind)."""
    from types import SimpleNamespace

    from ferry.render._output import job_target

    return job_target(SimpleNamespace(target=None))


def _seconds(setting: Any, default: float) -> float:
    raw = setting.get() or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{setting.name}={raw!r}: must be a number of seconds > 0 (default {default:g})")
    return value


@kopf.on.login(registry=registry)
def login(**_: Any) -> kopf.ConnectionInfo:
    from ferry.kube import Cluster

    return connection_info(Cluster.connect())


@kopf.on.startup(registry=registry)
def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # kopf keeps nothing on a pipeline but the finalizer that stops its worker before it goes
    settings.persistence.finalizer = "ferry.dev/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ferry.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="ferry.dev",
                                                                           key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # the workers post their own Events; kopf only its troubles
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not a line per child event handled
    if getattr(memo, "wakers", None) is None:  # before any object's memo is copied from this one
        memo.wakers = Wakers()
    if not settings.peering.priority:  # unless --priority chose one: replicas must never tie (a tie freezes all)
        settings.peering.priority = random.randint(1, 2**31 - 1)
    settings.watching.server_timeout = 300
    settings.watching.inactivity_timeout = 330  # a quiet watch lasts until the server ends it, not 70 s
    if getattr(memo, "deps", None) is None:  # `kopf run -m ferry_operator`; `ferry operator run` connected already
        try:
            memo.deps = build_deps()
        except FerryError as exc:
            log.error("%s", exc)
            raise kopf.PermanentError(str(exc)) from exc
    log.info("Ferry operator: MLflow at %s, resync every %.3g s, poll %.3g s, priority %d, jobs with no target "
             "as %s", memo.deps.mlflow.tracking_uri, memo.deps.resync_s, memo.deps.poll_s, settings.peering.priority,
             default_target())


def run(*, namespaces: Sequence[str] = (), all_namespaces: bool = False, liveness: str | None = None,
        standalone: bool = False, peering: str = PEERING, metrics_port: int | None = None) -> None:
    """Run the operator until interrupted (blocking). Its configuration is checked, and the
    cluster and MLflow clients made, before kopf starts: a mistake is one clear error."""
    if not namespaces and not all_namespaces:
        raise ConfigError("watch some namespaces (--namespace, repeatable) or all of them (--all-namespaces)")
    deps = build_deps()
    memo = kopf.Memo(deps=deps)
    if metrics_port:
        from ferry_operator._metrics import Metrics

        memo.metrics = Metrics()
        memo.metrics.serve(metrics_port)
    kopf.run(registry=registry, clusterwide=all_namespaces, namespaces=list(namespaces), liveness_endpoint=liveness,
             standalone=standalone, peering_name=None if standalone else peering, memo=memo)
