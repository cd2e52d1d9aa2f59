"""The end-to-end journey's parts on one machine (tests/test_e2e.py): the chart installed on the
real control plane, its MLflow server and its operator run as local processes exactly as their
pods would run them, and the controllers that do not run here (the Kubeflow training operator,
KServe and the kubelet under both) played through the API server as they behave.

A container becomes a local process by the kubelet's rules: the image's environment and
entrypoint (read from the Dockerfile Ferry builds the image from), then the container's
``envFrom``/``env`` resolved from the API server (ConfigMap and Secret references, the downward
API from the pod's metadata, ``$(VAR)`` references), then ``command``/``args`` with ``$(VAR)``
expanded. What a machine without a cluster cannot give the same way has a stand-in, each named
where it is made: the image's paths are this checkout and its virtual environment, a volume is
a folder, a Service's DNS name is 127.0.0.1, a container port is a free loopback port.

Every process started here dies with the test: it is stopped by whoever started it (a fixture's
``finally``), and it is killed if the test process itself dies (``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests._controllers import JOB_NAME_LABEL, REPLICA_INDEX_LABEL, REPLICA_TYPE_LABEL, KServe, TrainingOperator, now
from tests._controlplane import ApiError, ControlPlane, free_port
from tests._waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
# The python:*-slim base images' PATH, which Ferry's images extend.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where Ferry's images keep what this checkout has: the virtual environments and the jobs.
IMAGE_PATHS = {"/opt/ferry/bin": str(VENV_BIN), "/opt/mlflow/bin": str(VENV_BIN), "/app": str(REPO)}
DOCKERFILES = {"ferry-train": REPO / "images/train/Dockerfile", "ferry-serve": REPO / "images/serve/Dockerfile",
               "ferry-mlflow": REPO / "images/mlflow/Dockerfile", "ferry-operator": REPO / "operator/Dockerfile"}
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # loaded here: a forked child calls it, nothing more


# ---- local processes ------------------------------------------------------------------------------
def _die_with_parent() -> None:  # in the child, between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """One local process in a session of its own (its children are stopped with it), its output
    in ``log``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path = REPO):
        self.name, self.argv, self.env, self.log, self.cwd = name, argv, env, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.name} still ran after {timeout:g} s:\n{self.tail()}") from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # what it left in its session
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, timeout: float = 120) -> None:
        """Until ``url`` answers 200; AssertionError with the log's tail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise AssertionError(f"{self.name} exited ({self.proc.returncode if self.proc else None}) before "
                                     f"{url} answered:\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout:g} s:\n{self.tail()}")
            time.sleep(0.2)


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    process.start()
    try:
        yield process
    finally:
        process.stop()


# ---- a container as the kubelet runs it -----------------------------------------------------------
@dataclass(frozen=True)
class Image:
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]


def image_of(reference: str, home: Path) -> Image:
    """The environment and entrypoint of one of Ferry's images (``ghcr.io/ferry-ml/ferry-train:0.1.0``),
    from the last stage of its Dockerfile; the image's paths become this checkout's and ``home``
    (a folder of the test's) stands in for the image's HOME (``/tmp``, an emptyDir in a pod)."""
    repo = reference.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    if repo not in DOCKERFILES:
        raise AssertionError(f"no Dockerfile in this repository builds {reference}: it cannot run here")
    text = DOCKERFILES[repo].read_text().replace("\\\n", " ")
    stage = text[text.rindex("\nFROM "):]
    env = {"PATH": BASE_IMAGE_PATH}
    entrypoint: list[str] = []
    cmd: list[str] = []
    for line in stage.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    for key, value in env.items():
        for inside, here in IMAGE_PATHS.items():
            value = ":".join(here if part == inside else part for part in value.split(":"))
        env[key] = value
    if env.get("HOME"):
        env["HOME"] = str(home)
    return Image(env, entrypoint, cmd)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (``$$`` escapes; an unknown name stays as written)."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _field(pod: dict[str, Any], path: str) -> str:
    """The downward API's value of ``fieldPath`` for ``pod``."""
    meta = pod["metadata"]
    found = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if found:
        return (meta.get(found.group(1)) or {}).get(found.group(2), "")
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName"),
              "spec.nodeName": pod.get("spec", {}).get("nodeName"), "status.podIP": LOOPBACK, "status.hostIP": LOOPBACK}
    if path not in simple:
        raise AssertionError(f"fieldRef {path!r}: not a field the downward API offers")
    return simple[path] or ""


class Kubelet:
    """What the kubelet does with a container's environment: every value resolved from the API
    server as the pod's namespace holds it (a missing key of a non-optional reference fails, as
    CreateContainerConfigError would)."""

    def __init__(self, plane: ControlPlane, namespace: str):
        self.plane, self.namespace = plane, namespace

    def _data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        plural = {"configMap": "configmaps", "secret": "secrets"}[kind]
        try:
            obj = self.plane.raw("GET", f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        except ApiError as exc:
            if exc.code == 404 and optional:
                return None
            raise AssertionError(f"CreateContainerConfigError: {kind} {self.namespace}/{name}: {exc}") from None
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _ref(self, kind: str, ref: dict[str, Any]) -> str | None:
        data = self._data(kind, ref["name"], bool(ref.get("optional")))
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise AssertionError(f"CreateContainerConfigError: key {ref['key']!r} not in {kind} {ref['name']}")
        return data[ref["key"]]

    def env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """The container's own variables (``envFrom``, then ``env``, each ``$(VAR)`` expanded
        against those before it); the process gets them over its image's."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            kind = "configMap" if "configMapRef" in source else "secret"
            ref = source[f"{kind}Ref"]
            for key, value in (self._data(kind, ref["name"], bool(ref.get("optional"))) or {}).items():
                env[source.get("prefix", "") + key] = value
        for var in container.get("env") or []:
            source = var.get("valueFrom")
            if source is None:
                value: str | None = expand(str(var.get("value", "")), env)
            elif "configMapKeyRef" in source:
                value = self._ref("configMap", source["configMapKeyRef"])
            elif "secretKeyRef" in source:
                value = self._ref("secret", source["secretKeyRef"])
            elif "fieldRef" in source:
                value = _field(pod, source["fieldRef"]["fieldPath"])
            else:
                raise AssertionError(f"env {var['name']}: valueFrom {sorted(source)} is not played here")
            if value is not None:
                env[var["name"]] = value
        return env

    @staticmethod
    def argv(container: dict[str, Any], image: Image, env: dict[str, str]) -> list[str]:
        """The process's arguments: ``command`` replaces the image's entrypoint, and ``args`` its
        CMD; ``$(VAR)`` expanded in both from the container's variables ``env``."""
        command = container.get("command") or image.entrypoint
        args = container.get("args") if container.get("args") is not None or container.get("command") else image.cmd
        return [expand(str(a), env) for a in [*command, *(args or [])]]


def replace_flag(argv: list[str], flag: str, value: str | None) -> list[str]:
    """``argv`` with ``--flag=X`` or ``--flag X`` set to ``value`` (dropped when None)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == flag and i + 1 < len(argv):
            skip = True
            if value is not None:
                out += [flag, value]
        elif arg.startswith(flag + "="):
            if value is not None:
                out.append(f"{flag}={value}")
        else:
            out.append(arg)
    return out


# ---- the chart ------------------------------------------------------------------------------------
@dataclass
class Release:
    """The chart's objects as installed into ``namespace``."""

    plane: ControlPlane
    namespace: str
    name: str
    docs: list[dict[str, Any]]
    created: list[str] = field(default_factory=list)  # cluster-scoped objects this install made

    def find(self, kind: str, component: str) -> dict[str, Any]:
        return next(d for d in self.docs if d["kind"] == kind
                    and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component)

    def pod_of(self, workload: dict[str, Any], pod_name: str) -> dict[str, Any]:
        """A pod of ``workload`` as its controller makes it (for the downward API)."""
        template = workload["spec"]["template"]
        return {"metadata": {**template.get("metadata", {}), "name": pod_name, "namespace": self.namespace},
                "spec": template["spec"]}


def kubectl_apply(plane: ControlPlane, docs: list[dict[str, Any]], manager: str) -> None:
    """``kubectl apply --server-side`` of ``docs`` (strict field validation); taking over fields
    that another test's object of the same name set (the ClusterServingRuntime ``ferry``)."""
    done = plane.kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={manager}", "-f", "-",
                         input="---\n".join(yaml.safe_dump(d) for d in docs), check=False)
    assert done.returncode == 0, f"kubectl apply --server-side refused:\n{done.stderr}"
    assert "Warning" not in done.stderr, done.stderr


def install(plane: ControlPlane, values: dict[str, Any], namespace: str, release: str, workdir: Path) -> Release:
    """The chart as ``helm install`` sends it, by server-side apply: its CRDs, then its
    ``pre-install`` hooks in Helm's order, each Job run to completion as its pod would run (the
    database migration), then its cluster-scoped objects, then its namespaced ones (the
    ``helm test`` hook stays out, as at install)."""
    from tests.test_helm import chart_crds, hook_phases, in_hook_order, render

    rendered = render(values, namespace=namespace, name=release)
    docs = [d for d in rendered if not hook_phases(d)]
    installed = Release(plane, namespace, release, docs)
    kubectl_apply(plane, chart_crds(), "helm")
    for hook in in_hook_order([d for d in rendered if "pre-install" in hook_phases(d)]):
        kubectl_apply(plane, [hook], "helm")
        if hook["kind"] == "Job":
            run_job(installed, hook, workdir)
    cluster = [d for d in docs if not d["metadata"].get("namespace")]
    for doc in cluster:
        path = _cluster_path(doc)
        if not plane.exists(path):
            installed.created.append(path)
    kubectl_apply(plane, cluster, "helm")
    kubectl_apply(plane, [d for d in docs if d["metadata"].get("namespace")], "helm")
    return installed


def run_job(release: Release, job: dict[str, Any], workdir: Path) -> None:
    """A Job's pod as processes, as the Job controller and the kubelet run it: its init
    containers, then its one container, each to a zero exit."""
    pod = release.pod_of(job, f"{job['metadata']['name']}-0")
    kubelet = Kubelet(release.plane, release.namespace)
    home = workdir / f"{job['metadata']['name']}-tmp"
    home.mkdir(parents=True, exist_ok=True)
    for container in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]:
        image = image_of(container["image"], home)
        env = kubelet.env(pod, container)
        done = subprocess.run(kubelet.argv(container, image, env), env={**image.env, **env}, cwd=home,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (f"Job {job['metadata']['name']}, container {container['name']} exited "
                                      f"{done.returncode}:\n{done.stderr[-3000:]}")


def uninstall(release: Release) -> None:
    for path in reversed(release.created):
        with contextlib.suppress(ApiError):
            release.plane.raw("DELETE", path)


def _cluster_path(doc: dict[str, Any]) -> str:
    from tests._controlplane import plural

    return f"/apis/{doc['apiVersion']}/{plural(doc['kind'])}/{doc['metadata']['name']}"


def secret(plane: ControlPlane, namespace: str, name: str, data: dict[str, str]) -> None:
    """A Secret a platform team creates beside the chart (``kubectl create secret generic``)."""
    plane.raw("POST", f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


# ---- the chart's workloads as local processes -------------------------------------------------------
def mlflow_server(release: Release, workdir: Path) -> tuple[Process, str]:
    """The chart's MLflow Deployment's pod as processes: its init containers (the schema upgrade)
    run to completion, then its server, with the container's own arguments but for what binds:
    ``--host`` is 127.0.0.1 and ``--port`` a free one, and ``--expose-prometheus`` writes into a
    folder standing in for the pod's /tmp emptyDir. Returns the process (not started) and its URL."""
    deployment = release.find("Deployment", "mlflow")
    pod = release.pod_of(deployment, f"{deployment['metadata']['name']}-0")
    kubelet = Kubelet(release.plane, release.namespace)
    home = workdir / "mlflow-tmp"
    home.mkdir(parents=True, exist_ok=True)
    for init in pod["spec"].get("initContainers") or []:
        image = image_of(init["image"], home)
        env = kubelet.env(pod, init)
        done = subprocess.run(kubelet.argv(init, image, env), env={**image.env, **env}, cwd=home, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"init container {init['name']} exited {done.returncode}:\n{done.stderr[-3000:]}"
    (container,) = pod["spec"]["containers"]
    image = image_of(container["image"], home)
    env = kubelet.env(pod, container)
    argv = kubelet.argv(container, image, env)
    port = free_port()
    argv = replace_flag(replace_flag(argv, "--host", LOOPBACK), "--port", str(port))
    argv = [a.replace("=/tmp/", f"={home}/") for a in argv]  # the /tmp emptyDir
    return (Process("mlflow server", argv, {**image.env, **env}, workdir / "mlflow-server.log", cwd=home),
            f"http://{LOOPBACK}:{port}")


def operator(release: Release, kubeconfig: Path, workdir: Path) -> tuple[Process, str]:
    """The chart's operator Deployment's container as a process, with the credentials of the
    chart's ServiceAccount: ``kubeconfig`` holds a token the TokenRequest API issued for it (what
    the kubelet mounts into the pod; KUBECONFIG stands in for that mount). Its arguments are the
    Deployment's but for what binds: the health endpoint on 127.0.0.1 and a free port (returned),
    and no ``--metrics-port`` (the metrics server binds every interface, and nothing here scrapes it)."""
    deployment = release.find("Deployment", "operator")
    pod = release.pod_of(deployment, f"{deployment['metadata']['name']}-0")
    (container,) = pod["spec"]["containers"]
    home = workdir / "operator-tmp"
    home.mkdir(parents=True, exist_ok=True)
    image = image_of(container["image"], home)
    env = Kubelet(release.plane, release.namespace).env(pod, container)
    port = free_port()
    argv = Kubelet.argv(container, image, env)
    argv = replace_flag(replace_flag(argv, "--liveness", f"http://{LOOPBACK}:{port}/healthz"), "--metrics-port", None)
    return (Process("ferry operator", argv, {**image.env, **env, "KUBECONFIG": str(kubeconfig)}, workdir / "operator.log"),
            f"http://{LOOPBACK}:{port}/healthz")


# ---- the Kubeflow training operator and the kubelet under it ---------------------------------------
class TrainingOperatorPlay(TrainingOperator):
    """The training operator v1.9 for a job whose only replica is its Master: the job's Created
    condition, the Master pod made from the replica's template as the operator makes it (its
    labels, its restart policy, the environment it injects), the pod run (its container as a local
    process, the kubelet's part), Running, then Succeeded or Failed from the exit code."""

    def __init__(self, plane: ControlPlane, namespace: str, workdir: Path, *, bare: bool = False):
        super().__init__(plane, namespace)
        self.workdir = workdir
        # bare: the image holds Ferry but not this project (nothing of the checkout on its path,
        # a working folder of its own): only a job's code bundle can bring the job's modules
        self.bare = bare
        self.logs: dict[str, Path] = {}  # job name -> its Master's output

    def master_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        name = job["metadata"]["name"]
        specs = job["spec"]["pytorchReplicaSpecs"]
        assert set(specs) == {"Master"}, f"only the Master is played here, and {name} has {sorted(specs)}"
        replica = specs["Master"]
        template = json.loads(json.dumps(replica["template"]))
        (container,) = [c for c in template["spec"]["containers"] if c["name"] == "pytorch"]
        port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == "pytorchjob-port")
        nproc = job["spec"].get("nprocPerNode") or "1"
        replicas = sum(int(r.get("replicas", 1)) for r in specs.values())
        # what setPodEnv appends, in its order (pkg/controller.v1/pytorch/envvar.go, master.go)
        container["env"] = [*(container.get("env") or []), {"name": "PYTHONUNBUFFERED", "value": "0"},
                            {"name": "MASTER_PORT", "value": str(port)}, {"name": "MASTER_ADDR", "value": f"{name}-master-0"},
                            {"name": "PET_MASTER_ADDR", "value": f"{name}-master-0"},
                            {"name": "PET_MASTER_PORT", "value": str(port)},
                            {"name": "WORLD_SIZE", "value": str(replicas * (int(nproc) if nproc.isdigit() else 1))},
                            {"name": "RANK", "value": "0"}, {"name": "PET_NPROC_PER_NODE", "value": nproc},
                            {"name": "PET_NODE_RANK", "value": "0"}, {"name": "PET_NNODES", "value": str(replicas)}]
        meta = template.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), JOB_NAME_LABEL: name, REPLICA_TYPE_LABEL: "master",
                          REPLICA_INDEX_LABEL: "0", "training.kubeflow.org/operator-name": "pytorchjob-controller",
                          "training.kubeflow.org/job-role": "master"}
        meta.update(name=f"{name}-master-0", namespace=self.namespace, ownerReferences=[{
            "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name, "uid": job["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}])
        template["spec"]["restartPolicy"] = replica.get("restartPolicy", "Never")
        return {"apiVersion": "v1", "kind": "Pod", **template}

    def pod_status(self, pod: str, state: dict[str, Any], phase: str, image: str) -> None:
        done = "terminated" in state
        self.plane.raw("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{pod}/status", {"status": {
            "phase": phase, "containerStatuses": [{"name": "pytorch", "image": image, "imageID": "", "restartCount": 0,
                                                   "state": state, "ready": not done, "started": not done}]}})

    def run(self, name: str, timeout: float = 600) -> int:
        """Play the job ``name`` from Created to its end; its Master's exit code."""
        job = self.job(name)
        created = ("Created", "PyTorchJobCreated", f"PyTorchJob {name} is created.")
        running_ = ("Running", "PyTorchJobRunning", f"PyTorchJob {self.namespace}/{name} is running.")
        self.set_status(name, conditions=[created])
        pod = self.plane.raw("POST", f"/api/v1/namespaces/{self.namespace}/pods", self.master_pod(job))  # admission
        pod_name = pod["metadata"]["name"]
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "pytorch"]
        home = self.workdir / pod_name / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        image = image_of(container["image"], home)
        cwd = REPO
        if self.bare:
            cwd = self.workdir / pod_name / "workdir"
            cwd.mkdir(parents=True, exist_ok=True)
            path = [part for part in image.env.get("PYTHONPATH", "").split(":") if part and Path(part) != REPO]
            image = Image({**image.env, "PYTHONPATH": ":".join(path)}, image.entrypoint, image.cmd)
        declared = Kubelet(self.plane, self.namespace).env(pod, container)
        env = {**image.env, **declared}
        # Stand-ins: the Master's Service name is this machine, its port a free one.
        port = str(free_port())
        env.update(MASTER_ADDR=LOOPBACK, PET_MASTER_ADDR=LOOPBACK, MASTER_PORT=port, PET_MASTER_PORT=port)
        # Each volume a folder; Ferry reads two paths that lie on mounts: the checkpoint URI and
        # where the code bundle is unpacked. (/dev/shm, the dshm emptyDir, is this machine's own.)
        for mount in container.get("volumeMounts") or []:
            if mount["mountPath"] == "/dev/shm":
                continue
            folder = self.workdir / pod_name / "volumes" / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for key in ("FERRY_CHECKPOINT_URI", "FERRY_CODE_DIR"):
                inside = env.get(key, "")
                if inside == mount["mountPath"] or inside.startswith(mount["mountPath"].rstrip("/") + "/"):
                    env[key] = str(folder) + inside[len(mount["mountPath"].rstrip("/")):]
        self.pod_status(pod_name, {"running": {"startedAt": now()}}, "Running", container["image"])
        self.set_status(name, conditions=[created, running_], replicas={"Master": {"active": 1}})
        process = Process(f"the Master of {name}", Kubelet.argv(container, image, declared), env,
                          self.workdir / f"{pod_name}.log", cwd=cwd)
        with running(process):
            code = process.wait(timeout)
        self.pod_status(pod_name, {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                                  "startedAt": now(), "finishedAt": now()}},
                        "Succeeded" if code == 0 else "Failed", container["image"])
        end = (("Succeeded", "PyTorchJobSucceeded", f"PyTorchJob {self.namespace}/{name} successfully completed.")
               if code == 0 else
               ("Failed", "PyTorchJobFailed", f"PyTorchJob {self.namespace}/{name} is failed because 1 Master replica(s) "
                                              "failed."))
        self.set_status(name, conditions=[created, running_, end],
                        replicas={"Master": {"succeeded": 1} if code == 0 else {"failed": 1}})
        self.logs[name] = process.log
        return code


# ---- KServe ---------------------------------------------------------------------------------------
class StorageInitializerFailed(Exception):
    """The storage initializer KServe picks for an InferenceService's storageUri could not put
    the model into the pod's model folder (the predictor pod stays in Init:Error)."""


# KServe's default storage initializer image runs its initializer-entrypoint script
# (python/storage-initializer/scripts/initializer-entrypoint): this, over the kserve-storage package.
KSERVE_STORAGE_INITIALIZER = """\
import sys
from kserve_storage import Storage, configure_logging, logger
configure_logging()
if len(sys.argv) < 3 or len(sys.argv) % 2 != 1:
    print("Usage: initializer-entrypoint src_uri_0 dest_path_0 ... src_uri_n dest_path_n")
    sys.exit()
src_uris, dest_paths = sys.argv[1::2], sys.argv[2::2]
logger.info(f"Initializing, args: (src_uri, dest_path): {list(zip(src_uris, dest_paths))}")
Storage.download_files(src_uris, dest_paths)
"""
MODEL_DIR = "/mnt/models"


class KServePlay(KServe):
    """KServe for one InferenceService's predictor: the storage initializer its ``storageUri``
    selects, run as the predictor pod's init container into a folder standing in for the pod's
    /mnt/models; the predictor container of its ServingRuntime, run on that folder; the
    InferenceService then marked Ready with its URL."""

    def __init__(self, plane: ControlPlane, namespace: str, workdir: Path):
        super().__init__(plane, namespace)
        self.workdir = workdir

    def storage_containers(self) -> list[dict[str, Any]]:
        """The ClusterStorageContainers on the cluster (none where their CRD is not installed)."""
        try:
            return self.plane.raw("GET", "/apis/serving.kserve.io/v1alpha1/clusterstoragecontainers")["items"]
        except ApiError as exc:
            if exc.code == 404:
                return []
            raise

    def initializer_for(self, uri: str) -> dict[str, Any] | None:
        """The ClusterStorageContainer whose supportedUriFormats match ``uri`` (prefix or regex, as
        KServe's GetContainerSpecForStorageUri matches), or None: KServe's default initializer."""
        for csc in self.storage_containers():
            for fmt in csc["spec"].get("supportedUriFormats") or []:
                if ("prefix" in fmt and uri.startswith(fmt["prefix"])) or ("regex" in fmt and re.search(fmt["regex"], uri)):
                    return csc
        return None

    def fetch(self, isvc: dict[str, Any]) -> Path:
        """The predictor's init container: the model of ``storageUri`` into a folder."""
        name = isvc["metadata"]["name"]
        uri = isvc["spec"]["predictor"]["model"]["storageUri"]
        folder = self.workdir / name / "models"
        folder.mkdir(parents=True, exist_ok=True)
        home = self.workdir / name / "init-tmp"
        home.mkdir(parents=True, exist_ok=True)
        csc = self.initializer_for(uri)
        if csc is None:  # KServe's default storage initializer; its container gets no environment of ours
            argv = [sys.executable, "-c", KSERVE_STORAGE_INITIALIZER, uri, str(folder)]
            env = {"PATH": f"{VENV_BIN}:{BASE_IMAGE_PATH}", "HOME": str(home)}
            what = "KServe's default storage initializer"
        else:
            container = csc["spec"]["container"]
            image = image_of(container["image"], home)
            declared = Kubelet(self.plane, self.namespace).env({"metadata": isvc["metadata"], "spec": {}}, container)
            env = {**image.env, **declared}
            argv = [*Kubelet.argv(container, image, declared), uri, str(folder)]
            what = f"ClusterStorageContainer {csc['metadata']['name']}"
        done = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=300)
        (self.workdir / name / "storage-initializer.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise StorageInitializerFailed(f"{what} could not fetch {uri} (exit {done.returncode}):\n"
                                           + "\n".join((done.stdout + done.stderr).splitlines()[-8:]))
        return folder

    def predictor(self, isvc: dict[str, Any], models: Path) -> tuple[Process, str]:
        """The predictor container: the ServingRuntime's container (from the cluster) with the
        InferenceService's model fields merged over it (env by name, args appended), ``{{.Name}}``
        the InferenceService's name, /mnt/models the fetched folder, and its ports free loopback
        ones. Returns the process (not started) and its base URL."""
        name = isvc["metadata"]["name"]
        model = isvc["spec"]["predictor"]["model"]
        try:
            runtime = self.plane.raw("GET", f"/apis/serving.kserve.io/v1alpha1/namespaces/{self.namespace}/"
                                            f"servingruntimes/{model['runtime']}")
        except ApiError:
            runtime = self.plane.raw("GET", f"/apis/serving.kserve.io/v1alpha1/clusterservingruntimes/{model['runtime']}")
        (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
        container = json.loads(json.dumps(container))
        env = {e["name"]: e for e in container.get("env") or []}
        env.update({e["name"]: e for e in model.get("env") or []})
        container["env"] = list(env.values())
        container["args"] = [a.replace("{{.Name}}", name) for a in [*(container.get("args") or []),
                                                                    *(model.get("args") or [])]]
        home = self.workdir / name / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        image = image_of(container["image"], home)
        pod = {"metadata": {**isvc["metadata"], "name": f"{name}-predictor-0"}, "spec": {}}
        declared = Kubelet(self.plane, self.namespace).env(pod, container)
        argv = [str(models) if a == MODEL_DIR else a for a in Kubelet.argv(container, image, declared)]
        port = free_port()
        argv = replace_flag(replace_flag(replace_flag(argv, "--host", LOOPBACK), "--port", str(port)),
                            "--grpc-port", str(free_port()))
        return (Process(f"the predictor of {name}", argv, {**image.env, **declared}, self.workdir / name / "predictor.log"),
                f"http://{LOOPBACK}:{port}")


# ---- kubectl get modelpipelines, as someone watching ---------------------------------------------
PIPELINE_CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modelpipelines.ferry.dev"


def printer_columns(plane: ControlPlane) -> list[tuple[str, str]]:
    """(HEADER, jsonPath) of what ``kubectl get modelpipelines`` prints: NAME, then the CRD's
    additionalPrinterColumns as the API server holds them (but the Age, a date)."""
    crd = plane.raw("GET", PIPELINE_CRD)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return [("NAME", ".metadata.name")] + [(c["name"].upper(), c["jsonPath"]) for c in
                                           version.get("additionalPrinterColumns") or [] if c["type"] != "date"]


def kubectl_table(plane: ControlPlane, *args: str) -> list[dict[str, str]]:
    """``kubectl get ARGS``' table as rows by header (cells cut at the header's column starts:
    one table is printed in one piece, aligned; an empty cell is blank)."""
    lines = plane.kubectl("get", *args).stdout.splitlines()
    if not lines:
        return []
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    headers = lines[0].split()
    return [{h: line[a:b].strip() for h, a, b in zip(headers, starts, [*starts[1:], None])} for line in lines[1:]]


class PipelineWatch:
    """``kubectl get modelpipelines -n NS --watch`` with the printer columns (as custom columns,
    so that an empty cell reads ``<none>``: the default table's empty cells cannot be told apart
    in a watch, whose column widths change as it goes). Every change the API server sent, as
    rows by header."""

    def __init__(self, plane: ControlPlane, namespace: str, log: Path):
        columns = ",".join(f"{h}:{path}" for h, path in printer_columns(plane))
        self.argv = [str(plane.bin / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "get", "modelpipelines",
                     "-n", namespace, "--watch", "-o", f"custom-columns={columns}"]
        self.log = log
        self.rows: list[dict[str, str]] = []
        self.header: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> PipelineWatch:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                cells = line.split()
                if cells and cells[0] == "NAME":
                    self.header = cells
                elif self.header and len(cells) == len(self.header):
                    self.rows.append({h: "" if c == "<none>" else c for h, c in zip(self.header, cells)})

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)

    def rows_of(self, name: str) -> list[dict[str, str]]:
        return [r for r in list(self.rows) if r["NAME"] == name]

    def phases(self, name: str) -> list[str]:
        """The PHASE column of pipeline ``name`` as it changed, each phase once per stay."""
        out: list[str] = []
        for row in self.rows_of(name):
            if row["PHASE"] and (not out or out[-1] != row["PHASE"]):
                out.append(row["PHASE"])
        return out


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60, also: Callable[[], str] | None = None) -> Any:
    """``wait_until``, and on a timeout ``also()``'s account of the moment (a process log, a status)."""
    try:
        return wait_until(check, what, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{also()}" if also else str(exc)) from None


def http_json(method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())
