"""One connection to a Kubernetes API server, through the ``kubernetes`` client.

Every call goes through :meth:`Cluster.call`, which retries transient failures (429, 5xx, a
reset connection) with bounded exponential backoff and turns every other failure into the
:class:`~ferry.errors.ClusterError` that keeps its meaning (see ``_errors``).

The calls are generic (a path under a :class:`Kind`) rather than the generated per-kind API
classes: server-side apply needs the ``application/apply-patch+yaml`` content type, which the
generated ``CustomObjectsApi`` cannot send, and one code path for every kind keeps the error
handling in one place.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.errors import ClusterUnreachable
from ferry.kube._errors import Action, is_transient, translate
from ferry.kube._kinds import FIELD_MANAGER, POD, PYTORCHJOB_CONTAINER, Kind, kind_of

_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Retry:
    """Bounded retries of transient failures: ``attempts`` tries in all, waiting ``base_s``,
    2×, 4×, ... (at most ``max_s``, with jitter) between them, or what ``Retry-After`` asks."""

    attempts: int = 5
    base_s: float = 0.25
    max_s: float = 4.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_s)
        return min(self.base_s * 2 ** attempt, self.max_s) * (0.5 + random.random() / 2)


class Cluster:
    """The API server of one kubeconfig context (or of the pod this runs in), and the
    namespace commands act in unless told otherwise."""

    def __init__(self, api_client: Any, namespace: str, *, server: str, context: str | None = None,
                 retry: Retry = Retry()):
        self.api = api_client
        self.namespace = namespace
        self.server = server
        self.context = context
        self.retry = retry

    @classmethod
    def connect(cls, kubeconfig: str | Path | None = None, context: str | None = None,
                namespace: str | None = None, *, retry: Retry = Retry()) -> Cluster:
        """Connect as kubectl would: ``kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``
        when it exists, else the pod's in-cluster service account), its ``context`` (else the
        current one); the namespace is ``namespace``, else the context's, else ``default``."""
        import yaml
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        if not path and Path("~/.kube/config").expanduser().is_file():
            path = str(Path("~/.kube/config").expanduser())
        configuration = client.Configuration()
        try:
            if path:
                if not Path(path).expanduser().is_file():
                    raise ClusterUnreachable(f"kubeconfig {path} does not exist: pass --kubeconfig or set KUBECONFIG "
                                             "to your cluster's kubeconfig")
                contexts, active = config.list_kube_config_contexts(config_file=path)
                chosen = next((c for c in contexts if c["name"] == context), None) if context else active
                if chosen is None:
                    names = ", ".join(sorted(c["name"] for c in contexts)) or "none"
                    raise ClusterUnreachable(f"kubeconfig {path} has no context {context!r} (it has: {names}); "
                                             "choose one with --context")
                config.load_kube_config(config_file=path, context=chosen["name"], client_configuration=configuration,
                                        persist_config=False)
                context = chosen["name"]
                ns = namespace or (chosen.get("context") or {}).get("namespace") or "default"
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
                ns = namespace or (_IN_CLUSTER_NAMESPACE.read_text().strip() if _IN_CLUSTER_NAMESPACE.is_file()
                                   else "default")
            else:
                raise ClusterUnreachable("no cluster configured: pass --kubeconfig, set KUBECONFIG, or create "
                                         "~/.kube/config (e.g. `kind create cluster`); in a pod the service account "
                                         "is used")
        except ConfigException as exc:
            where = f"kubeconfig {path}" if path else "in-cluster config"
            raise ClusterUnreachable(f"{where}: {exc}; fix it or choose another with --kubeconfig/--context") from exc
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise ClusterUnreachable(f"kubeconfig {path} cannot be read ({type(exc).__name__}: {exc}); "
                                     "check the file, or choose another with --kubeconfig") from exc
        configuration.retries = 1  # connection-level; Cluster.call retries what is worth retrying
        return cls(client.ApiClient(configuration), ns, server=configuration.host, context=context, retry=retry)

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one request --------------------------------------------------------------------------
    def call(self, method: str, path: str, action: Action, *, query: list[tuple[str, Any]] | None = None,
             body: Any = None, content_type: str = "application/json", stream: bool = False,
             timeout: float | tuple[float, float] | None = (10, 60)) -> Any:
        """``method path`` and its decoded JSON answer (or the raw streaming response)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError

        for attempt in range(self.retry.attempts):
            try:
                return self.api.call_api(
                    path, method, query_params=list(query or []), header_params={
                        "Content-Type": content_type, "Accept": "application/json"},
                    body=body, response_type=None if stream else "object", auth_settings=["BearerToken"],
                    _return_http_data_only=True, _preload_content=not stream, _request_timeout=timeout)
            except ApiException as exc:
                if is_transient(exc) and attempt + 1 < self.retry.attempts:
                    time.sleep(self.retry.delay(attempt, (exc.headers or {}).get("Retry-After")))
                    continue
                raise translate(exc, action, context=self.context, serves=self.serves) from exc
            except MaxRetryError as exc:
                if isinstance(exc.reason, NewConnectionError) or "Connection refused" in str(exc.reason):
                    raise self._unreachable(exc.reason) from exc
                if attempt + 1 < self.retry.attempts:
                    time.sleep(self.retry.delay(attempt))
                    continue
                raise self._unreachable(exc.reason) from exc
            except (ProtocolError, ConnectionError) as exc:  # reset mid-request
                if attempt + 1 < self.retry.attempts:
                    time.sleep(self.retry.delay(attempt))
                    continue
                raise self._unreachable(exc) from exc
            except HTTPError as exc:
                raise self._unreachable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def serves(self, kind: Kind) -> bool:
        """Whether the API server serves ``kind`` (its group/version's discovery lists the plural)."""
        from kubernetes.client.exceptions import ApiException

        try:
            doc = self.api.call_api(kind.group_path, "GET", header_params={"Accept": "application/json"},
                                    response_type="object", auth_settings=["BearerToken"],
                                    _return_http_data_only=True, _request_timeout=(10, 30))
        except ApiException as exc:
            if exc.status == 404:
                return False
            return True  # discovery failed for another reason: do not claim it is missing
        return any(r.get("name") == kind.plural for r in (doc or {}).get("resources", []))

    def _unreachable(self, why: object) -> ClusterUnreachable:
        text = str(why).split(": ", 1)[-1][:200]
        where = f" (context {self.context})" if self.context else ""
        return ClusterUnreachable(f"cannot reach the Kubernetes API at {self.server}{where}: {text}; is the cluster "
                                  "running, and is this the right kubeconfig/--context?")

    # ---- verbs --------------------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any], *, dry_run: bool = False, force: bool = False,
              field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply of ``manifest`` as ``field_manager`` (``ferry`` unless told): creates
        it or updates the fields that manager owns. ``dry_run`` sends ``dryRun=All`` (the API
        server and its admission judge the object, nothing is stored); ``force`` takes over fields
        another manager owns."""
        kind = kind_of(manifest)
        name = manifest["metadata"]["name"]
        namespace = manifest["metadata"].get("namespace", self.namespace) if kind.namespaced else None
        query: list[tuple[str, Any]] = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self.call("PATCH", kind.path(namespace, name), Action("patch", kind, namespace, name),
                         query=query, body=manifest, content_type="application/apply-patch+yaml")

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = (namespace or self.namespace) if kind.namespaced else None
        return self.call("GET", kind.path(ns, name), Action("get", kind, ns, name))

    def find(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist (a missing kind or namespace still raises)."""
        from ferry.errors import NotFound

        try:
            return self.get(kind, name, namespace)
        except NotFound as exc:
            if exc.reason == "ObjectNotFound":
                return None
            raise

    def list(self, kind: Kind, namespace: str | None = None, *, selector: str | None = None,
             all_namespaces: bool = False) -> list[dict[str, Any]]:
        ns = None if all_namespaces or not kind.namespaced else (namespace or self.namespace)
        query = [("labelSelector", selector)] if selector else []
        return self.call("GET", kind.path(ns), Action("list", kind, ns, None), query=query).get("items") or []

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        """Delete with foreground propagation: the object goes once its pods are gone."""
        ns = (namespace or self.namespace) if kind.namespaced else None
        self.call("DELETE", kind.path(ns, name), Action("delete", kind, ns, name),
                  body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"})

    def pod_log(self, pod: str, namespace: str | None = None, *, container: str = PYTORCHJOB_CONTAINER,
                follow: bool = False, previous: bool = False, tail_lines: int | None = None,
                since_time: str | None = None, timestamps: bool = False) -> Iterator[str]:
        """The lines of one container's log; with ``follow``, as they come until it ends."""
        ns = namespace or self.namespace
        query: list[tuple[str, Any]] = [("container", container)]
        for key, value in (("follow", follow), ("previous", previous), ("timestamps", timestamps)):
            if value:
                query.append((key, "true"))
        if tail_lines is not None:
            query.append(("tailLines", tail_lines))
        if since_time is not None:
            query.append(("sinceTime", since_time))
        response = self.call("GET", POD.path(ns, pod, "log"), Action("get", POD, ns, pod, "log"), query=query,
                             stream=True, timeout=(10, None) if follow else (10, 60))
        try:
            pending = b""
            for chunk in response.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace").rstrip("\r")
            if pending:
                yield pending.decode("utf-8", "replace")
        except Exception as exc:  # the stream broke off: the caller decides whether to reopen it
            from urllib3.exceptions import HTTPError

            if not isinstance(exc, (HTTPError, OSError)):
                raise
        finally:
            response.release_conn()

