"""A real Kubernetes control plane for the cluster tests: etcd, kube-apiserver and
kube-controller-manager started from ``KUBEBUILDER_ASSETS`` (the layout kubebuilder's envtest
uses) on free loopback ports.

What runs is the real thing: RBAC, admission (Pod Security, ServiceAccount), server-side
apply, CRDs with structural pruning and CEL, watches, TokenRequest, and, through the controller
manager, namespace lifecycle, ``default`` service accounts and the garbage collector. What does
not: no scheduler and no kubelet, so no pod ever runs; a test that needs a controller's work
plays that controller through the API (``tests/_controllers.py``).

Users (token authentication):
- ``admin``: ``system:masters``;
- ``limited``: authenticated, in group ``ferry:nobody``, with no bindings: the user a test
  grants exactly a Role to;
- a ServiceAccount's own token from the TokenRequest API (:meth:`ControlPlane.token`), to run
  a component with exactly that ServiceAccount's rights.

Every process started here dies with the test process (``PR_SET_PDEATHSIG``) as well as in
:meth:`ControlPlane.stop`, so an interrupted or killed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ASSETS_VAR = "KUBEBUILDER_ASSETS"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
_PR_SET_PDEATHSIG = 1
# Controllers that need nodes, clouds or bootstrap tokens: nothing here for them to do.
_CONTROLLERS = ("*,-nodeipam,-nodelifecycle,-persistentvolume-binder,-attachdetach,-cloud-node-lifecycle,"
                "-service-lb-controller,-node-route-controller,-ttl,-bootstrapsigner,-tokencleaner")


def assets() -> Path | None:
    """The folder holding the control plane's binaries, or None when it is not configured."""
    value = os.environ.get(ASSETS_VAR)
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    return folder if all((folder / name).exists() for name in BINARIES) else None


def skip_reason() -> str:
    value = os.environ.get(ASSETS_VAR)
    if not value:
        return (f"the real-control-plane tier needs {ASSETS_VAR} (a folder with etcd, kube-apiserver, "
                "kube-controller-manager and kubectl, as for envtest); `make test` sets it when ../shared/k8s/bin "
                "exists")
    missing = [name for name in BINARIES if not (Path(value) / name).exists()]
    return f"{ASSETS_VAR}={value} lacks {', '.join(missing)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _certificates(folder: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1, localhost, kubernetes.default.svc)
    and the service-account signing key pair, written as PEM files into ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    def key() -> Any:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(name: str, k: Any) -> None:
        (folder / name).write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key, sa_key = key(), key(), key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=3))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3))
              .add_extension(x509.SubjectAlternativeName([
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                  x509.DNSName("kubernetes.default.svc")]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_key("apiserver.key", server_key)
    write_key("sa.key", sa_key)
    (folder / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


class ApiError(Exception):
    """A non-2xx answer of the API server, with its Status body."""

    def __init__(self, code: int, body: dict[str, Any]):
        super().__init__(f"{code} {body.get('reason', '')}: {body.get('message', body)}")
        self.code = code
        self.body = body


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in ``root``; :meth:`stop` stops them."""

    def __init__(self, bin_dir: Path, root: Path):
        self.bin = bin_dir
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens = {"admin": secrets.token_hex(16), "limited": secrets.token_hex(16),
                       "kcm": secrets.token_hex(16)}
        self.server = ""

    # ---- lifecycle ------------------------------------------------------------------------------
    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([str(self.bin / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.root, preexec_fn=_die_with_parent)
        log.close()

    def start(self) -> ControlPlane:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _certificates(self.root)
        (self.root / "tokens.csv").write_text(
            f'{self.tokens["admin"]},admin,1,"system:masters"\n'
            f'{self.tokens["limited"]},limited,2,"ferry:nobody"\n'
            f'{self.tokens["kcm"]},system:kube-controller-manager,3\n')
        # Every request's metadata (user, verb, resource, answer), one JSON line each: what a test
        # reads to know which calls a component made (see audit()).
        (self.root / "audit-policy.yaml").write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n")
        etcd, peer, api = free_port(), free_port(), free_port()
        self._spawn("etcd", "--name", "default", "--data-dir", str(self.root / "etcd"),
                    f"--listen-client-urls=http://127.0.0.1:{etcd}", f"--advertise-client-urls=http://127.0.0.1:{etcd}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=default=http://127.0.0.1:{peer}", "--unsafe-no-fsync")
        self._spawn("kube-apiserver", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    f"--secure-port={api}", f"--etcd-servers=http://127.0.0.1:{etcd}",
                    "--endpoint-reconciler-type=none", "--service-cluster-ip-range=10.0.0.0/24",
                    "--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file=sa.pub",
                    "--service-account-signing-key-file=sa.key", "--tls-cert-file=apiserver.crt",
                    "--tls-private-key-file=apiserver.key", "--client-ca-file=ca.crt",
                    "--token-auth-file=tokens.csv", "--authorization-mode=RBAC",
                    "--audit-policy-file=audit-policy.yaml", "--audit-log-path=audit.log", "--audit-log-mode=blocking")
        self.server = f"https://127.0.0.1:{api}"
        self.ca = self.root / "ca.crt"
        self._ssl = ssl.create_default_context(cafile=str(self.ca))
        self.kubeconfig = self.write_kubeconfig(self.root / "kubeconfig", "admin")
        deadline = time.monotonic() + 90
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
            with contextlib.suppress(OSError, ApiError):
                if self.raw("GET", "/readyz", parse=False) == "ok":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready in 90 s:\n{self.log_tail('kube-apiserver')}")
            time.sleep(0.25)
        kcm = self.write_kubeconfig(self.root / "kcm.kubeconfig", "kcm")
        self._spawn("kube-controller-manager", f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}",
                    f"--authorization-kubeconfig={kcm}", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                    "--leader-elect=false", "--use-service-account-credentials=true",
                    "--service-account-private-key-file=sa.key", "--root-ca-file=ca.crt",
                    f"--controllers={_CONTROLLERS}")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):  # controller manager, API server, then etcd
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():  # a test cluster's data is thrown away: no long drain
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def audit(self, *, user: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
        """The API server's audit events so far (stage ResponseComplete), oldest first: every
        request with its ``user.username``, ``verb`` (get, list, watch, create, patch, ...),
        ``objectRef`` (apiGroup, resource, subresource, namespace, name), ``requestURI`` and
        ``responseStatus.code``; filtered by user name and by the object's namespace."""
        events = []
        with open(self.root / "audit.log", encoding="utf-8") as log:
            for line in log:
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete":
                    continue
                if user is not None and event["user"]["username"] != user:
                    continue
                if namespace is not None and (event.get("objectRef") or {}).get("namespace") != namespace:
                    continue
                events.append(event)
        return events

    # ---- credentials ----------------------------------------------------------------------------
    def write_kubeconfig(self, path: Path, user: str = "admin", *, namespace: str | None = None,
                         token: str | None = None) -> Path:
        """A kubeconfig for ``user`` (a token user of this control plane, or any name with
        ``token``), its context's namespace ``namespace``."""
        context: dict[str, Any] = {"cluster": "test", "user": user}
        if namespace:
            context["namespace"] = namespace
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "test", "cluster": {"server": self.server, "certificate-authority": str(self.ca)}}],
            "users": [{"name": user, "user": {"token": token or self.tokens[user]}}],
            "contexts": [{"name": user, "context": context}],
        }))
        return path

    def token(self, service_account: str, namespace: str, *, seconds: int = 3600) -> str:
        """A token of ``service_account`` from the TokenRequest API: its bearer has exactly the
        ServiceAccount's rights."""
        made = self.raw("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"expirationSeconds": seconds}})
        return made["status"]["token"]

    # ---- the API --------------------------------------------------------------------------------
    def raw(self, method: str, path: str, body: Any = None, *, user: str = "admin", token: str | None = None,
            content_type: str | None = None, parse: bool = True, timeout: float = 15) -> Any:
        data = None
        headers = {"Authorization": f"Bearer {token or self.tokens[user]}", "Accept": "application/json"}
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers["Content-Type"] = content_type or ("application/json" if method in ("POST", "PUT")
                                                       else "application/merge-patch+json")
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                status = json.loads(text)
            except ValueError:
                status = {"message": text.decode(errors="replace")}
            raise ApiError(exc.code, status) from None
        if not parse:
            return raw.decode()
        return json.loads(raw) if raw else None

    def apply(self, obj: dict[str, Any], *, manager: str = "ferry-tests", user: str = "admin",
              subresource: str = "") -> dict[str, Any]:
        """Server-side apply of one object, as ``kubectl apply --server-side --force-conflicts``."""
        return self.raw("PATCH", object_path(obj) + (f"/{subresource}" if subresource else "")
                        + f"?fieldManager={manager}&force=true", obj, user=user,
                        content_type="application/apply-patch+yaml")

    def kubectl(self, *args: str, user: str = "admin", check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kubeconfig = self.kubeconfig if user == "admin" else self.write_kubeconfig(self.root / f"{user}.kubeconfig", user)
        done = subprocess.run([str(self.bin / "kubectl"), f"--kubeconfig={kubeconfig}", *args], capture_output=True,
                              text=True, input=input, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def exists(self, path: str) -> bool:
        try:
            self.raw("GET", path)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def wait_for(self, predicate: Any, what: str, timeout: float = 60, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)

    # ---- what tests set up ----------------------------------------------------------------------
    def install_crds(self, *files: Path) -> None:
        """Apply CRDs (server-side) and wait until each is Established."""
        names = []
        for file in files:
            import yaml

            for doc in yaml.safe_load_all(file.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.apply(doc)
                    names.append(doc["metadata"]["name"])
        for name in names:
            self.wait_for(lambda n=name: any(c["type"] == "Established" and c["status"] == "True" for c in (
                self.raw("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}")
                .get("status", {}).get("conditions") or [])), f"CRD {name} established")

    def namespace(self, prefix: str = "t", *, pod_security: str = "restricted",
                  wait_for_default_sa: bool = False) -> str:
        """A fresh namespace enforcing Pod Security ``pod_security``; with ``wait_for_default_sa``
        it returns once the controller manager made its ``default`` ServiceAccount (pods need it)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        labels = {f"pod-security.kubernetes.io/{mode}": pod_security for mode in ("enforce", "warn", "audit")}
        self.raw("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": name, "labels": labels}})
        if wait_for_default_sa:
            self.wait_for(lambda: self.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
                          f"the default ServiceAccount of {name}")
        return name

    def delete_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.raw("DELETE", f"/api/v1/namespaces/{name}")


_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                   "Node", "ClusterKopfPeering", "ClusterServingRuntime", "ClusterStorageContainer", "ClusterTrainingRuntime",
                   "PriorityClass", "StorageClass", "ValidatingWebhookConfiguration",
                   "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                   "IngressClass"}


def plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y") and not lower.endswith("ey"):
        return lower[:-1] + "ies"
    return lower + "s"


def object_path(obj: dict[str, Any], *, namespace: str | None = None) -> str:
    """The REST path of ``obj`` (its ``apiVersion``/``kind``/``metadata``)."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    meta = obj.get("metadata") or {}
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = namespace or meta.get("namespace")
    scope = "" if kind in _CLUSTER_SCOPED else f"/namespaces/{ns or 'default'}"
    return f"{base}{scope}/{plural(kind)}/{meta['name']}"


@contextlib.contextmanager
def started(bin_dir: Path, root: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(bin_dir, root)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def plain_kubeconfig(path: Path, server: str, contexts: tuple[str, ...] = ("c",)) -> Path:
    """A kubeconfig for ``server`` with one token user and ``contexts`` (the first current): for
    servers that are not this control plane (a closed port, a proxy, the emulator)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
        "clusters": [{"name": "k", "cluster": {"server": server}}], "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": c, "context": {"cluster": "k", "user": "u"}} for c in contexts]}))
    return path
