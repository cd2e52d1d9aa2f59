"""kmock's KubernetesEmulator on 127.0.0.1 (stateful, real HTTP), for the few cluster tests that
need what a real API server cannot be made to do on demand (pod logs, 429/5xx, resets; see
tests/test_kube_emulated.py); every other cluster test runs on the real control plane
(tests/_controlplane.py). It adds what Ferry's commands rely on and the emulator leaves out:

- server-side apply (``PATCH`` with ``application/apply-patch+yaml``) creates a missing object;
- ``dryRun=All`` judges a write without storing it;
- uid, resourceVersion, generation (spec changes only), creationTimestamp and a generateName'd
  name are filled as the API server does;
- ``labelSelector`` filters lists (equality terms);
- a kind that is not registered answers 404 on every path, as a cluster without its CRD does;
- pod logs (``/pods/NAME/log``: tailLines, previous, timestamps, sinceTime, follow);
- faults: the next N matching requests answer a given Status (403/404/409/422/429/5xx)
  before anything changes.

The server runs in a thread with its own event loop, so the (synchronous) CLI under test and
the test itself talk to it over HTTP exactly as kubectl and the training operator would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums
from kmock._internal.k8s import KubernetesError, KubernetesObjectNotFoundError, KubernetesResourceNotFoundError

VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
REGISTRY = {
    "pytorchjobs": ("kubeflow.org/v1/pytorchjobs", "PyTorchJob", True),
    "trainjobs": ("trainer.kubeflow.org/v1alpha1/trainjobs", "TrainJob", True),
    "inferenceservices": ("serving.kserve.io/v1beta1/inferenceservices", "InferenceService", True),
    "clusterservingruntimes": ("serving.kserve.io/v1alpha1/clusterservingruntimes", "ClusterServingRuntime", False),
    "configmaps": ("v1/configmaps", "ConfigMap", True),
    "pods": ("v1/pods", "Pod", True),
    "events": ("v1/events", "Event", True),
    "namespaces": ("v1/namespaces", "Namespace", False),
    "customresourcedefinitions": ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
}
WITH_STATUS = ("pytorchjobs", "trainjobs", "inferenceservices")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Fault:
    method: str
    path_part: str
    error: KubernetesError
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    faults: list[Fault] = attrs.field(factory=list)
    # (namespace, pod, "current"|"previous") -> [(timestamp, line)]; "done" marks a finished container
    pod_logs: dict[tuple[str, str, str], list[tuple[str, str]]] = attrs.field(factory=dict)
    finished_logs: set[tuple[str, str]] = attrs.field(factory=set)
    _rv: int = 0

    @property
    def requests(self) -> list[Any]:
        """Every request received so far, oldest first."""
        return list(self._requests)

    def registered(self) -> set[str]:
        return {r.plural for r in self.resources}

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        for fault in self.faults:
            if fault.times > 0 and request.method.value == fault.method and fault.path_part in str(request.url.path):
                fault.times -= 1
                if fault.headers:
                    return aiohttp.web.json_response(_status_body(fault.error), status=fault.error.status,
                                                     headers=fault.headers)
                raise fault.error
        if request.resource is None or request.resource.plural is None:
            return await super()._handle(request)
        if request.resource.plural not in self.registered():
            raise KubernetesResourceNotFoundError()
        if request.subresource == "log":
            return await self._serve_log(request)
        body = request.data if isinstance(request.data, dict) else None
        apply = request.headers.get("Content-Type", "").startswith("application/apply-patch")
        key = (request.resource, request.namespace, request.name)
        exists = request.name is not None and key in self.objects and not self.objects[key].deleted
        if request.params.get("dryRun") == "All":
            if request.action == enums.action.CREATE and body and (request.resource, request.namespace,
                                                                   body["metadata"]["name"]) in self.objects:
                raise kmock.KubernetesError(409, "AlreadyExists", "already exists")
            return aiohttp.web.json_response(body or {}, status=200)
        if body is not None and request.action in (enums.action.CREATE, enums.action.UPDATE) and not request.subresource:
            self._rv += 1
            meta = body.setdefault("metadata", {})
            meta["resourceVersion"] = str(self._rv)
            if request.action == enums.action.CREATE or (apply and not exists):
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now())
                meta.setdefault("generation", 1)
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)
            elif exists:  # the generation counts changes of the spec only, as the API server's does
                old = self.objects[key]
                changed = "spec" in body and body["spec"] != old.get("spec")
                meta["generation"] = int(old.get("metadata", {}).get("generation", 1)) + int(changed)
        if apply and not exists and request.subresource is None:
            async with self._lock:
                if key in self.objects:
                    self.objects[key].create(body)
                else:
                    self.objects[key] = body
                await self._buses[request.resource].put({"type": "ADDED", "object": body})
            return aiohttp.web.json_response(body, status=201)
        return await super()._handle(request)

    async def _serve_list(self, request: Any) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            terms = [term.split("=", 1) for term in selector.split(",")]
            result["items"] = [o for o in result["items"]
                               if all(((o.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in terms)]
        return result

    async def _serve_log(self, request: Any) -> aiohttp.web.StreamResponse:
        ns, pod = request.namespace, request.name
        if (request.resource, ns, pod) not in self.objects or self.objects[(request.resource, ns, pod)].deleted:
            raise KubernetesObjectNotFoundError()
        # the API server's answer to a container the pod does not have
        containers = [c.get("name") for c in (self.objects[(request.resource, ns, pod)].get("spec") or {})
                      .get("containers") or []]
        container = request.params.get("container") or (containers[0] if containers else "")
        if containers and container not in containers:
            raise kmock.KubernetesError(400, "BadRequest", f"container {container} is not valid for pod {pod}")
        which = "previous" if request.params.get("previous") == "true" else "current"
        lines = self.pod_logs.get((ns, pod, which))
        if lines is None:
            raise kmock.KubernetesError(400, "BadRequest",
                                        f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating')
        since = request.params.get("sinceTime")
        stamps = request.params.get("timestamps") == "true"
        tail = request.params.get("tailLines")
        raw = request._raw_request
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        await response.prepare(raw)

        def select(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return [(t, s) for t, s in items if since is None or t >= since]

        snapshot = list(lines)
        sent = len(snapshot)
        chosen = select(snapshot)
        if tail is not None:
            chosen = chosen[-int(tail):] if int(tail) else []
        for stamp, text in chosen:
            await response.write(((f"{stamp} " if stamps else "") + text + "\n").encode())
        if request.params.get("follow") == "true" and which == "current":
            while (ns, pod) not in self.finished_logs or sent < len(lines):
                if sent < len(lines):
                    for stamp, text in list(lines[sent:]):
                        await response.write(((f"{stamp} " if stamps else "") + text + "\n").encode())
                    sent = len(lines)
                else:
                    await asyncio.sleep(0.02)
        await response.write_eof()
        return response


def _status_body(error: KubernetesError) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": error.status,
            "reason": error.reason, "message": error.message, "details": error.details or {}}


class Kube:
    """An ApiServer on 127.0.0.1 in its own thread, a kubeconfig pointing at it, and the moves
    the training operator and kubelet would make (status patches, pods, log lines)."""

    def __init__(self, tmp: Path, installed: tuple[str, ...] = tuple(REGISTRY)):
        self.tmp = tmp
        self.installed = installed
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""
        self.api: ApiServer

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.api = ApiServer()
        for plural in self.installed:
            path, kind, namespaced = REGISTRY[plural]
            self.api.resources[path] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS,
                                                          subresources={"status"} if plural in WITH_STATUS else set())
        async with self.api, kmock.Server(self.api) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> Kube:
        self._thread.start()
        assert self._ready.wait(10), "the emulator did not start"
        self.kubeconfig = self.tmp / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "dev", "user": {"token": "t0ken"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "dev", "namespace": "ml"}},
                         {"name": "other", "context": {"cluster": "emulator", "user": "dev"}}],
        }))
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # ---- what other parts of a cluster do -----------------------------------------------------
    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/merge-patch+json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json" if method == "POST" else content_type}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def job(self, name: str, ns: str = "ml") -> dict[str, Any]:
        return self.get(f"/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs/{name}")

    def set_job_status(self, name: str, ns: str = "ml", *, conditions: list[tuple[str, str, str]] = (),
                       replicas: dict[str, dict[str, int]] | None = None) -> None:
        """Patch the job's status as the training operator does: conditions (type, reason,
        message) all True except that a later Running/Succeeded/Failed turns Running False."""
        types = [c[0] for c in conditions]
        conds = []
        for type_, reason, message in conditions:
            status = "True"
            if type_ in ("Running", "Restarting") and any(t in types[types.index(type_) + 1:] for t in
                                                         ("Succeeded", "Failed", "Restarting", "Running")
                                                         if t != type_):
                status = "False"
            conds.append({"type": type_, "status": status, "reason": reason, "message": message,
                          "lastTransitionTime": now()})
        counts = {role: {"active": 0, "succeeded": 0, "failed": 0, **c} for role, c in (replicas or {}).items()}
        status: dict[str, Any] = {"conditions": conds, "replicaStatuses": counts}
        if types and types[-1] in ("Succeeded", "Failed"):
            status["completionTime"] = now()
        self.request("PATCH", f"/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs/{name}/status", {"status": status})

    def add_pod(self, job: str, role: str, index: int, ns: str = "ml", *, phase: str = "Running",
                restarts: int = 0, exit_code: int | None = None, last_exit_code: int | None = None) -> str:
        name = f"{job}-{role}-{index}"
        state: dict[str, Any] = {"running": {"startedAt": now()}} if exit_code is None else \
            {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}}
        container = {"name": "pytorch", "restartCount": restarts, "state": state, "ready": exit_code is None}
        if last_exit_code is not None:
            container["lastState"] = {"terminated": {"exitCode": last_exit_code, "reason": "Error"}}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {
            "training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": role,
            "training.kubeflow.org/replica-index": str(index)}},
            "spec": {"containers": [{"name": "pytorch", "image": "x"}], "nodeName": "node-1"},
            "status": {"phase": phase, "containerStatuses": [container]}}
        path = f"/api/v1/namespaces/{ns}/pods"
        try:
            self.request("POST", path, pod)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            self.request("PATCH", f"{path}/{name}", {"status": pod["status"]})
        self.api.pod_logs.setdefault((ns, name, "current"), [])
        return name

    def add_trainjob(self, name: str, ns: str = "ml") -> None:
        """A TrainJob Ferry submitted (its spec is not what these tests are about)."""
        self.request("POST", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs", {
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "ferry",
                                                                   "ferry.dev/submission": "20261203-120000-ab12"}},
            "spec": {"runtimeRef": {"name": "torch-distributed"}}})

    def set_trainjob_status(self, name: str, ns: str = "ml", *, condition: tuple[str, str, str] | None = None,
                            active: int = 0) -> None:
        """The TrainJob's status as Kubeflow Trainer copies it from its JobSet."""
        status: dict[str, Any] = {"jobsStatus": [{"name": "node", "active": active, "ready": active, "succeeded": 0,
                                                  "failed": 0, "suspended": 0}]}
        if condition is not None:
            type_, reason, message = condition
            status["conditions"] = [{"type": type_, "status": "True", "reason": reason, "message": message,
                                     "lastTransitionTime": now()}]
        self.request("PATCH", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}/status",
                     {"status": status})

    def add_node_pod(self, job: str, rank: int, ns: str = "ml", *, phase: str = "Running",
                     exit_code: int | None = None) -> str:
        """Node ``rank`` of a TrainJob, as JobSet's Job names and labels it; container ``node``."""
        name = f"{job}-node-0-{rank}-x{rank}k9z"
        state: dict[str, Any] = {"running": {"startedAt": now()}} if exit_code is None else \
            {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}}
        self.request("POST", f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {
                "jobset.sigs.k8s.io/jobset-name": job, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": str(rank)}},
            "spec": {"containers": [{"name": "node", "image": "x"}], "nodeName": "node-1"},
            "status": {"phase": phase, "containerStatuses": [{"name": "node", "restartCount": 0, "state": state,
                                                              "ready": exit_code is None}]}})
        self.api.pod_logs.setdefault((ns, name, "current"), [])
        return name

    def log(self, pod: str, *lines: str, ns: str = "ml", previous: bool = False) -> None:
        target = self.api.pod_logs.setdefault((ns, pod, "previous" if previous else "current"), [])
        for line in lines:
            target.append((_stamp(), line))
            time.sleep(0.001)  # distinct timestamps, as a real log has

    def end_log(self, pod: str, ns: str = "ml") -> None:
        self.api.finished_logs.add((ns, pod))

    def fault(self, method: str, path_part: str, status: int, reason: str, message: str, *, times: int = 1,
              details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Fault:
        fault = Fault(method, path_part, kmock.KubernetesError(status, reason, message, details or {}), times,
                      headers or {})
        self.api.faults.append(fault)
        return fault
