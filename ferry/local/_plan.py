"""From a rendered PyTorchJob to local processes: exactly the environment the training
operator would give each replica's container, with cluster-only values made local."""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry._k8s import runtime_pod_templates

log = logging.getLogger("ferry.local")


@dataclass(frozen=True)
class Replica:
    role: str  # "master" | "worker", as the operator names pods: <job>-<role>-<index>
    index: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Kubeflow Trainer v2 (a TrainJob on torch-distributed): the JobSet webhook's pod restart policy
# and the Job's default backoffLimit, as a TrainJob cannot set either
TRAINJOB_RESTART_POLICY, TRAINJOB_BACKOFF_LIMIT = "OnFailure", 6


def is_trainjob(manifest: dict[str, Any]) -> bool:
    return manifest.get("kind") == "TrainJob"


def restarts(manifest: dict[str, Any]) -> tuple[str, int]:
    """The replicas' restart policy and how many times the job is restarted before it fails."""
    if is_trainjob(manifest):
        return TRAINJOB_RESTART_POLICY, TRAINJOB_BACKOFF_LIMIT
    replica_specs = manifest["spec"]["pytorchReplicaSpecs"]
    return (next(iter(replica_specs.values())).get("restartPolicy", "Never"),
            manifest["spec"].get("runPolicy", {}).get("backoffLimit", 0))


def procs_per_node(manifest: dict[str, Any]) -> str:
    if is_trainjob(manifest):
        return str(manifest["spec"]["trainer"].get("numProcPerNode", 1))
    return str(manifest["spec"].get("nprocPerNode", "1"))


def trainer_env(manifest: dict[str, Any], index: int, master_port: int) -> dict[str, str]:
    """What Kubeflow Trainer's torch plugin injects into node ``index`` of a TrainJob: only
    torchrun's PET_* settings (torchrun gives each process its RANK, WORLD_SIZE, MASTER_*)."""
    trainer = manifest["spec"]["trainer"]
    return {"PET_NNODES": str(trainer.get("numNodes", 1)), "PET_NPROC_PER_NODE": procs_per_node(manifest),
            "PET_NODE_RANK": str(index), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(master_port)}


def operator_env(manifest: dict[str, Any], role: str, index: int, master_port: int) -> dict[str, str]:
    """The variables the training operator injects into one replica (see DESIGN.md):
    MASTER_*, WORLD_SIZE, RANK and the PET_* set torchrun reads, PET_RDZV_* when elastic; for
    a TrainJob, what Kubeflow Trainer injects instead (:func:`trainer_env`)."""
    if is_trainjob(manifest):
        return trainer_env(manifest, index, master_port)
    spec = manifest["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    total = sum(r["replicas"] for r in replicas.values())
    nproc = spec.get("nprocPerNode", "1")
    nproc_n = int(nproc) if nproc.isdigit() else 1
    node_rank = index + 1 if role == "worker" and "Master" in replicas else index
    env = {"PYTHONUNBUFFERED": "0", "PET_NPROC_PER_NODE": nproc}
    elastic = spec.get("elasticPolicy")
    if "Master" in replicas:
        env |= {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(total * nproc_n), "RANK": str(node_rank),
            "PET_NNODES": str(total), "PET_NODE_RANK": str(node_rank),
        }
    if elastic is not None:
        lo, hi = elastic.get("minReplicas"), elastic.get("maxReplicas")
        env |= {
            "PET_RDZV_ENDPOINT": f"127.0.0.1:{master_port}",
            "PET_RDZV_BACKEND": elastic.get("rdzvBackend", "c10d"),
            "PET_NNODES": f"{lo}:{hi}" if lo is not None and hi is not None else str(total),
        }
        if elastic.get("maxRestarts") is not None:
            env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
    return env


def _local_value(item: dict[str, Any], local: dict[str, str]) -> str | None:
    """A container env entry's value on this machine: literal values as they are; values
    from Secrets or ConfigMaps from this process's environment (same name) when set there."""
    if "value" in item:
        return str(item["value"])
    name = item["name"]
    if name in local:
        return local[name]
    if name in os.environ:
        return os.environ[name]
    source = item.get("valueFrom", {})
    if "fieldRef" in source:
        return None  # pod metadata: the executor sets these itself
    ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
    if ref.get("optional"):
        return None  # the cluster may have it or not; so may this machine's environment (above)
    kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
    log.warning("%s comes from %s %s/%s on a cluster; not set here (export %s to set it)",
                name, kind, ref.get("name"), ref.get("key"), name)
    return None


def _map_volumes(value: str, mounts: dict[str, Path]) -> str:
    for mount_path, local_dir in mounts.items():
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(local_dir) + value[len(mount_path.rstrip("/")):]
    return value


def _pvc_mounts(pod: dict[str, Any], container: dict[str, Any], volumes_dir: Path) -> dict[str, Path]:
    """PVC mount paths → the folders under the local store that stand in for the claims,
    shared by all replicas as a PVC is."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    return {m["mountPath"]: volumes_dir / claims[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in claims}


def _empty_dir_mounts(pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
    """emptyDir mount paths → folders of one replica's own, as each pod has its own emptyDirs
    (the code bundle's among them); /dev/shm is this machine's."""
    dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    return {m["mountPath"]: pod_dir / m["name"] for m in container.get("volumeMounts", [])
            if m["name"] in dirs and m["mountPath"] != "/dev/shm"}


def _trainjob_pod(manifest: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A TrainJob's node pod as the runtime's JobSet makes it from the job: the trainer's image,
    command and env, the pod spec and container of Ferry's runtime patch."""
    trainer = manifest["spec"]["trainer"]
    pod: dict[str, Any] = {}
    patched: dict[str, Any] = {}
    for _, name, template in runtime_pod_templates(manifest):
        if name == "node":
            pod = template.get("spec", {})
            patched = next((c for c in pod.get("containers", []) if c.get("name") == "node"), {})
    container = {"name": "node", "command": trainer.get("command", []), "args": trainer.get("args", []),
                 "env": trainer.get("env", []), "volumeMounts": patched.get("volumeMounts", [])}
    return "Node", {"replicas": trainer.get("numNodes", 1)}, pod, container


def _pods(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(role key, replica spec, pod spec, the pytorch container) for every replica type (a
    TrainJob's: its one node type)."""
    if is_trainjob(manifest):
        return [_trainjob_pod(manifest)]
    out = []
    for role_key, spec in manifest["spec"]["pytorchReplicaSpecs"].items():
        pod = spec["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] == "pytorch"]
        out.append((role_key, spec, pod, container))
    return out


def local_path(manifest: dict[str, Any], value: str, volumes_dir: Path) -> str:
    """A path as a replica of ``manifest`` sees it (e.g. under a PVC mount) → this machine's
    path for it. Pure: creates nothing."""
    _, _, pod, container = _pods(manifest)[0]
    return _map_volumes(value, _pvc_mounts(pod, container, volumes_dir))


def plan(manifest: dict[str, Any], *, master_port: int, local_env: dict[str, str], volumes_dir: Path,
         workdir: Path) -> list[Replica]:
    """Every replica of the job, each with its argv and full environment."""
    replicas: list[Replica] = []
    for role_key, spec, pod, container in _pods(manifest):
        mounts = _pvc_mounts(pod, container, volumes_dir)
        for local_dir in mounts.values():
            local_dir.mkdir(parents=True, exist_ok=True)
        base: dict[str, str] = {}
        for item in container.get("env", []):
            value = _local_value(item, local_env)
            if value is not None:
                base[item["name"]] = _map_volumes(value, mounts)
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the interpreter Ferry runs in, with its packages
        for index in range(spec["replicas"]):
            role = role_key.lower()
            pod_dir = volumes_dir.parent / "pods" / local_env.get("FERRY_SUBMISSION_ID", "local") / f"{role}-{index}"
            own = _empty_dir_mounts(pod, container, pod_dir)
            env = {**{k: _map_volumes(v, own) for k, v in base.items()},
                   **operator_env(manifest, role, index, master_port), **local_env}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
            replicas.append(Replica(role, index, argv, env))
    return replicas
