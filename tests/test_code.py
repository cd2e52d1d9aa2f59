"""Code bundles: a project's code to the cluster without an image rebuild.

The bundle itself (deterministic, content-addressed, the project's ignore rules, its limits),
its stores (a real S3 endpoint: moto's server; a real ``mlflow server``'s artifact proxy; a
folder), and ``python -m ferry.code``, the first step of every replica, run as a process: it
refuses a bundle whose bytes are not the digest the job names.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferry.code import Bundle, BundleError, build_bundle, code_store, collect, publish, ship, unpack
from ferry.errors import ConfigError, FerryError, SpecError, Unreachable
from ferry.spec import Code, TrainingJob

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def project(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


SMALL = {
    "pyproject.toml": "[project]\nname = 'demo'\n",
    "demo/__init__.py": "",
    "demo/train.py": "print('trained')\n",
    "demo/model.py": "WIDTH = 8\n",
}


def names(root: Path) -> list[str]:
    return [name for name, _ in collect(root)]


# ---- the bundle ------------------------------------------------------------------------------------
def test_the_same_files_give_the_same_bytes_wherever_and_whenever_they_were_written(tmp_path):
    first = project(tmp_path / "a", SMALL)
    time.sleep(0.01)
    second = project(tmp_path / "b" / "deeper", dict(reversed(list(SMALL.items()))))
    os.utime(second / "demo" / "train.py", (1, 1))
    os.chmod(second / "demo" / "model.py", 0o600)  # only "executable or not" is kept
    one, two = build_bundle(first, MiB), build_bundle(second, MiB)
    assert one.digest == two.digest and one.data == two.data
    assert one.digest == "sha256:" + hashlib.sha256(gzip.decompress(one.data)).hexdigest()  # the tar's, not its gzip's
    assert one.files == 4 and one.name == f"sha256-{one.hex}.tar.gz"


def test_a_changed_file_is_a_new_digest_and_unpacks_as_written(tmp_path):
    root = project(tmp_path / "p", SMALL)
    before = build_bundle(root, MiB)
    (root / "demo" / "model.py").write_text("WIDTH = 16\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    after = build_bundle(root, MiB)
    assert after.digest != before.digest
    out = tmp_path / "out"
    assert unpack(after.data, out) == 5
    assert (out / "demo" / "model.py").read_text() == "WIDTH = 16\n"
    assert os.access(out / "run.sh", os.X_OK) and not os.access(out / "demo" / "model.py", os.X_OK)


@pytest.mark.parametrize("files, kept, left_out", [
    pytest.param({".gitignore": "*.csv\ndata/\n", "a.csv": "x", "data/big.bin": "x", "keep.py": ""},
                 [".gitignore", "keep.py"], ["a.csv", "data/big.bin"], id="gitignore"),
    pytest.param({".gitignore": "*.csv\n", ".ferryignore": "!labels.csv\nnotebooks/\n", "a.csv": "x",
                  "labels.csv": "x", "notebooks/n.ipynb": "{}"},
                 [".ferryignore", ".gitignore", "labels.csv"], ["a.csv", "notebooks/n.ipynb"], id="ferryignore-after-gitignore"),
    pytest.param({"sub/.gitignore": "local.txt\n", "sub/local.txt": "x", "local.txt": "x", "sub/x.py": ""},
                 ["local.txt", "sub/.gitignore", "sub/x.py"], ["sub/local.txt"], id="nested-rules-apply-below-their-folder"),
    pytest.param({".git/HEAD": "ref", ".ferry/mlflow.db": "x", "pkg/__pycache__/m.pyc": "x", "pkg/m.pyc": "x",
                  "pkg/m.py": ""}, ["pkg/m.py"], [".git/HEAD", ".ferry/mlflow.db", "pkg/m.pyc"], id="always-left-out"),
    pytest.param({".gitignore": "/build\n", "build/x.o": "x", "src/build/keep.py": ""},
                 [".gitignore", "src/build/keep.py"], ["build/x.o"], id="anchored-pattern"),
])
def test_the_projects_ignore_rules_decide_what_goes_in(tmp_path, files, kept, left_out):
    root = project(tmp_path / "p", files)
    found = names(root)
    assert found == sorted(kept)
    assert not set(left_out) & set(found)


def test_a_link_inside_the_project_is_kept_as_a_link(tmp_path):
    root = project(tmp_path / "p", SMALL)
    (root / "latest.py").symlink_to("demo/train.py")
    out = tmp_path / "out"
    unpack(build_bundle(root, MiB).data, out)
    assert (out / "latest.py").is_symlink() and (out / "latest.py").read_text() == "print('trained')\n"


def _link_out(root: Path) -> None:
    (root / "secrets").symlink_to("/etc")


def _large(root: Path) -> None:
    (root / "weights.bin").write_bytes(os.urandom(3 * MiB))


def _empty(root: Path) -> None:
    (root / ".gitignore").write_text("*\n")


@pytest.mark.parametrize("arrange, max_mb, expected", [
    pytest.param(_large, 1, r"over the limit of 1 MiB .*largest: weights\.bin \(3\.0 MiB\).*\.ferryignore.*FERRY_CODE_MAX_MB",
                 id="too-large"),
    pytest.param(_link_out, 1, r"secrets links outside .* \(to /etc\); copy .* or list it in \.ferryignore", id="link-out"),
    pytest.param(_empty, 1, r"nothing to bundle .* \.gitignore/\.ferryignore", id="everything-ignored"),
])
def test_a_project_that_cannot_be_bundled_is_refused_saying_why(tmp_path, arrange, max_mb, expected):
    root = tmp_path / "p"
    root.mkdir()
    if arrange is not _empty:
        project(root, SMALL)
    arrange(root)
    with pytest.raises(BundleError, match=expected) as caught:
        build_bundle(root, max_mb * MiB)
    assert caught.value.exit_code == 2


def test_a_job_whose_module_is_not_in_the_folder_is_refused_before_anything_is_uploaded(tmp_path):
    root = project(tmp_path / "p", SMALL)
    store = tmp_path / "store"
    job = TrainingJob(name="demo", image="ghcr.io/acme/train:1", module="elsewhere.train")
    with pytest.raises(BundleError, match=r"module 'elsewhere\.train' .* is not in .*; give --code the folder"):
        ship(job, root, store.as_uri())
    assert not store.exists()


# ---- settings and the spec field, bad values -----------------------------------------------------------
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("fields, expected", [
    ({"uri": "s3://b/x.tar.gz", "digest": "sha256:abc"}, r"code: .*digest must be sha256:<64"),
    ({"uri": f"https://example.com/sha256-{'ab' * 32}.tar.gz", "digest": DIGEST}, r"code: .*uri must be s3://"),
    ({"uri": f"s3://b/sha256-{'cd' * 32}.tar.gz", "digest": DIGEST}, r"code: .*must name the bundle of this digest"),
])
def test_a_code_field_that_does_not_name_one_bundle_is_refused(fields, expected):
    with pytest.raises(SpecError, match=expected):
        TrainingJob(name="demo", image="i:1", module="demo.train", code=fields)


def test_the_code_volume_name_is_taken_when_the_job_ships_code():
    from ferry.spec import EmptyDirVolume

    code = Code(uri=f"s3://b/sha256-{'ab' * 32}.tar.gz", digest=DIGEST)
    with pytest.raises(SpecError, match="volume name 'ferry-code' is used twice"):
        TrainingJob(name="demo", image="i:1", module="demo.train", code=code,
                    volumes=[EmptyDirVolume(name="ferry-code", mount_path="/scratch")])


@pytest.mark.parametrize("env, expected", [
    ({"FERRY_CODE_STORE": "https://bucket.example.com/code"}, r"FERRY_CODE_STORE=.*s3://bucket/prefix, mlflow-artifacts"),
    ({"FERRY_CODE_STORE": "s3:///prefix"}, r"s3:// needs a bucket"),
    ({"FERRY_CODE_STORE": "file://relative/path"}, r"file:// needs an absolute path"),
])
def test_a_code_store_that_is_not_one_is_refused_naming_the_setting(monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=expected):
        code_store()


def test_without_a_store_configured_an_mlflow_server_is_the_store_and_a_local_uri_is_none(monkeypatch):
    monkeypatch.delenv("FERRY_CODE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert code_store() == "mlflow-artifacts:/ferry-code"
    assert code_store("s3://bucket/code/") == "s3://bucket/code"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert code_store() is None


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_size_limit_that_is_not_one_is_refused(monkeypatch, value):
    from ferry.code import max_bytes

    monkeypatch.setenv("FERRY_CODE_MAX_MB", value)
    with pytest.raises(ConfigError, match=r"FERRY_CODE_MAX_MB=.*above 0"):
        max_bytes()


# ---- the manifest ----------------------------------------------------------------------------------
def test_a_job_with_code_renders_the_fetch_step_the_emptydir_and_the_digest_and_stays_valid(crd_dir):
    from ferry.render import render_pytorchjob
    from ferry.validate import validate_manifests

    code = Code(uri=f"s3://bucket/code/sha256-{'ab' * 32}.tar.gz", digest=DIGEST)
    job = TrainingJob(name="demo", image="ghcr.io/acme/train:1", module="demo.train", args=("--fast",), code=code)
    manifest = render_pytorchjob(job)
    validate_manifests([("demo", manifest)], crd_dir)
    template = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["python", "-m", "ferry.code", "--", "python", "-m", "demo.train", "--fast"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["FERRY_CODE_URI"] == code.uri and env["FERRY_CODE_DIGEST"] == DIGEST and env["FERRY_CODE_DIR"] == "/ferry/code"
    assert {"name": "ferry-code", "mountPath": "/ferry/code"} in container["volumeMounts"]
    assert {"name": "ferry-code", "emptyDir": {}} in template["spec"]["volumes"]
    for meta in (manifest["metadata"], template["metadata"]):
        assert meta["labels"]["ferry.dev/code-digest"] == "ab" * 16
        assert meta["annotations"]["ferry.dev/code-digest"] == DIGEST
        assert meta["annotations"]["ferry.dev/code-uri"] == code.uri
    plain = render_pytorchjob(job.replace(code=None))
    assert "ferry.dev/code-digest" not in plain["metadata"]["labels"]


# ---- the stores --------------------------------------------------------------------------------------
def _bucket(moto_s3, name: str = "code") -> object:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)
    return s3


@pytest.mark.integration
def test_s3_holds_one_object_per_digest_uploaded_once(tmp_path, moto_s3):
    s3 = _bucket(moto_s3)
    root = project(tmp_path / "p", SMALL)
    bundle = build_bundle(root, MiB)
    uri, uploaded = publish(bundle, "s3://code/teams/a")
    assert uploaded and uri == f"s3://code/teams/a/{bundle.name}"
    stamp = s3.head_object(Bucket="code", Key=f"teams/a/{bundle.name}")["LastModified"]
    time.sleep(1.1)  # S3 stamps in seconds: a second upload would show
    assert publish(build_bundle(root, MiB), "s3://code/teams/a") == (uri, False)
    assert s3.head_object(Bucket="code", Key=f"teams/a/{bundle.name}")["LastModified"] == stamp
    (root / "demo" / "model.py").write_text("WIDTH = 32\n")
    changed = build_bundle(root, MiB)
    assert publish(changed, "s3://code/teams/a")[1] is True
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="code")["Contents"])
    assert listed == sorted([f"teams/a/{bundle.name}", f"teams/a/{changed.name}"])


@pytest.mark.integration
def test_an_s3_store_that_does_not_answer_is_unreachable_and_a_missing_bucket_is_named(tmp_path, moto_s3, monkeypatch):
    from tests._servers import free_port

    bundle = build_bundle(project(tmp_path / "p", SMALL), MiB)
    with pytest.raises(FerryError, match=r"code store s3://no-such-bucket/x: .*NoSuchBucket|does not exist") as caught:
        publish(bundle, "s3://no-such-bucket/x")
    assert caught.value.exit_code == 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(Unreachable, match=r"code store s3://code/x: .*reachable from here") as caught:
        publish(bundle, "s3://code/x")
    assert caught.value.exit_code == 10


@pytest.mark.integration
def test_mlflows_artifact_proxy_holds_bundles_once_per_digest(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.delenv("FERRY_CODE_STORE", raising=False)
    bundle = build_bundle(project(tmp_path / "p", SMALL), MiB)
    store = code_store()
    uri, uploaded = publish(bundle, store)
    assert uploaded and uri == f"mlflow-artifacts:/ferry-code/{bundle.name}"
    assert publish(bundle, store) == (uri, False)
    stored = tmp_path / "artifacts" / "ferry-code" / bundle.name  # the server's --artifacts-destination
    assert stored.read_bytes() == bundle.data
    out = fetch_step(tmp_path, uri, bundle.digest, ["python", "-c", "import demo.model as m; print(m.WIDTH)"],
                     env={"MLFLOW_TRACKING_URI": mlflow_server.url})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8"


# ---- python -m ferry.code, the replica's first step ------------------------------------------------------
def fetch_step(tmp_path: Path, uri: str, digest: str, command: list[str], env: dict[str, str] | None = None,
               code_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The step as a container runs it: a bare working folder, nothing of the project on the path."""
    bare = tmp_path / "bare"
    bare.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ |= {"FERRY_CODE_URI": uri, "FERRY_CODE_DIGEST": digest,
                "FERRY_CODE_DIR": str(code_dir or tmp_path / "emptydir"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ferry.code", "--", *command], cwd=bare, env=environ,
                          capture_output=True, text=True, timeout=120)


def test_the_step_unpacks_the_bundle_runs_the_command_inside_it_and_reuses_it_after_a_restart(tmp_path):
    bundle = build_bundle(project(tmp_path / "p", SMALL), MiB)
    uri, _ = publish(bundle, (tmp_path / "store").as_uri())
    probe = ["python", "-c", "import os, demo.model as m; print(m.WIDTH, os.getcwd())"]
    first = fetch_step(tmp_path, uri, bundle.digest, probe)
    assert first.returncode == 0, first.stderr
    width, cwd = first.stdout.split()
    assert width == "8" and Path(cwd) == tmp_path / "emptydir" / bundle.hex[:16]
    assert f"ferry.code: {bundle.digest} (4 files) from {uri}" in first.stderr
    (tmp_path / "store" / bundle.name).unlink()  # a restarted container finds its emptyDir as it left it
    again = fetch_step(tmp_path, uri, bundle.digest, probe)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr


def test_a_store_that_hands_the_tar_back_decompressed_still_gives_the_jobs_digest(tmp_path):
    """An S3 object served with Content-Encoding: gzip (MLflow's proxy on S3 does so for .tar.gz)
    arrives as the bare tar: the digest is the tar's, so it matches, and it unpacks."""
    bundle = build_bundle(project(tmp_path / "p", SMALL), MiB)
    uri, _ = publish(bundle, (tmp_path / "store").as_uri())
    (tmp_path / "store" / bundle.name).write_bytes(gzip.decompress(bundle.data))
    out = fetch_step(tmp_path, uri, bundle.digest, ["python", "-c", "import demo.model as m; print(m.WIDTH)"])
    assert (out.returncode, out.stdout) == (0, "8\n"), out.stderr


def test_without_a_bundle_the_step_runs_the_command_as_it_is(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_CODE_")}
    out = subprocess.run([sys.executable, "-m", "ferry.code", "--", "python", "-c", "print('plain')"],
                         env=environ, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "plain\n")


@pytest.mark.integration
def test_a_tampered_bundle_is_refused_and_nothing_runs(tmp_path, moto_s3):
    s3 = _bucket(moto_s3)
    root = project(tmp_path / "p", SMALL)
    bundle = build_bundle(root, MiB)
    uri, _ = publish(bundle, "s3://code/x")
    (root / "demo" / "train.py").write_text("import os; os.system('curl evil')\n")
    s3.put_object(Bucket="code", Key=f"x/{bundle.name}", Body=build_bundle(root, MiB).data)
    marker = tmp_path / "ran"
    out = fetch_step(tmp_path, uri, bundle.digest, ["touch", str(marker)])
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"not the job's {bundle.digest}: refusing to run it" in out.stderr
    assert not marker.exists() and not (tmp_path / "emptydir" / bundle.hex[:16]).exists()


@pytest.mark.parametrize("uri, digest, expected, code", [
    ("file:///nowhere/sha256-{hex}.tar.gz", "{digest}", "is not in its store; submit the job again", 2),
    ("file:///nowhere/sha256-{hex}.tar.gz", "sha256:1234", "FERRY_CODE_DIGEST='sha256:1234': a digest is sha256:<64", 2),
    ("https://example.com/sha256-{hex}.tar.gz", "{digest}", "a code store is s3://bucket/prefix", 2),
])
def test_a_bundle_that_cannot_be_had_fails_the_step_in_one_line(tmp_path, uri, digest, expected, code):
    hex_ = "ab" * 32
    out = fetch_step(tmp_path, uri.format(hex=hex_), digest.format(digest=f"sha256:{hex_}"), ["true"])
    assert out.returncode == code and expected in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_a_bundle_of_unsafe_members_is_refused_on_unpacking(tmp_path):
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.py")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(tarfile.OutsideDestinationError):
        unpack(raw.getvalue(), tmp_path / "out")
    assert not (tmp_path / "escape.py").exists()


def test_bundles_of_this_repository_leave_out_what_git_ignores():
    found = names(REPO)
    assert "jobs/digits/train.py" in found and "ferry/code/__main__.py" in found
    assert not [name for name in found if name.startswith((".venv/", ".ferry/", ".git/")) or "__pycache__" in name]
    assert isinstance(build_bundle(REPO, 50 * MiB), Bundle)


# ---- through the commands: submit on a real control plane, run on this machine ----------------------------
def digits_project(tmp_path: Path) -> Path:
    """A team's project: the digits job and its package, with a pyproject.toml at its root."""
    import shutil

    root = tmp_path / "team"
    shutil.copytree(REPO / "jobs", root / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pyproject.toml").write_text("[project]\nname = 'team'\nversion = '0'\n")
    (root / ".ferryignore").write_text("notes/\n")
    project(root, {"notes/big.txt": "x" * 100_000})
    return root


def ferry_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    return subprocess.run([str(Path(sys.executable).with_name("ferry")), *args], capture_output=True, text=True,
                          env=environ, cwd=cwd, timeout=300)


@pytest.mark.integration
def test_submit_ships_the_code_once_and_a_replica_from_a_bare_image_trains_from_it(
        control_plane, namespace, tmp_path, moto_s3, mlflow_server):
    import boto3
    from mlflow import MlflowClient

    from tests._journey import TrainingOperatorPlay, secret

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="code")
    root = digits_project(tmp_path)
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "kubeconfig", "admin", namespace=namespace)
    # what the pods need to reach the code store: the Secret jobs read their tracking credentials from
    secret(control_plane, namespace, "ferry-mlflow-credentials", moto_s3.aws_env)
    env = {"KUBECONFIG": str(kubeconfig), "FERRY_CODE_STORE": "s3://code/team", "MLFLOW_TRACKING_URI": ""}
    job_file = str(root / "jobs" / "digits" / "job.py")
    argv = ["submit", job_file, "-n", namespace, "--workers", "1", "--set", "epochs=1", "--tracking-uri", mlflow_server.url]

    first = ferry_cli(*argv, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"from {root}, uploaded to s3://code/team/sha256-" in first.stderr
    job = control_plane.raw("GET", f"/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs/digits")
    digest = job["metadata"]["annotations"]["ferry.dev/code-digest"]
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket="code")["Contents"]]
    assert key == f"team/sha256-{digest.removeprefix('sha256:')}.tar.gz"
    assert job["metadata"]["labels"]["ferry.dev/code-digest"] == digest.removeprefix("sha256:")[:32]

    player = TrainingOperatorPlay(control_plane, namespace, tmp_path / "pods", bare=True)
    code = player.run("digits", timeout=300)
    log = player.logs["digits"].read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert f"ferry.code: {digest}" in log
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.data.tags["ferry.code.digest"] == digest and run.data.tags["ferry.code.uri"] == f"s3://code/{key}"

    # the same code again: nothing uploaded; a changed file: a new bundle beside the first
    assert ferry_cli("delete", "digits", "-n", namespace, "--wait", env=env).returncode == 0
    again = ferry_cli(*argv, env=env, cwd=tmp_path)
    assert again.returncode == 0 and f"already in s3://code/{key}" in again.stderr, again.stderr
    (root / "jobs" / "digits" / "model.py").write_text((root / "jobs" / "digits" / "model.py").read_text() + "\n# wider\n")
    assert ferry_cli("delete", "digits", "-n", namespace, "--wait", env=env).returncode == 0
    changed = ferry_cli(*argv, env=env, cwd=tmp_path)
    assert changed.returncode == 0 and "uploaded to" in changed.stderr, changed.stderr
    assert len(s3.list_objects_v2(Bucket="code")["Contents"]) == 2


@pytest.mark.parametrize("args, env, expected", [
    (["--no-code", "--code", "."], {}, "--no-code ships nothing"),
    (["--code", "."], {"FERRY_CODE_STORE": "", "MLFLOW_TRACKING_URI": ""}, "--code needs a code store"),
    (["--code-store", "ftp://x/y"], {}, "--code-store='ftp://x/y': a code store is s3://"),
    (["--code", "/no/such/folder"], {"FERRY_CODE_STORE": "file:///tmp/x"}, "/no/such/folder is not a folder"),
])
def test_code_options_that_do_not_fit_are_refused_before_anything_is_sent(tmp_path, args, env, expected):
    out = ferry_cli("submit", str(REPO / "jobs" / "digits" / "job.py"), *args,
                    env={"KUBECONFIG": str(tmp_path / "none"), **env})
    assert out.returncode == 2, out.stderr
    assert expected in " ".join(out.stderr.split())


def test_a_dry_run_names_the_bundle_and_uploads_nothing_and_a_sweeps_trials_carry_it(tmp_path):
    import yaml

    store = tmp_path / "store"
    out = ferry_cli("submit", str(REPO / "jobs" / "digits" / "sweep.py"), "--dry-run", "client",
                    "--code-store", store.as_uri(), env={"KUBECONFIG": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr
    assert "would go to (dry run)" in out.stderr and not store.exists()
    trials = [doc for doc in yaml.safe_load_all(out.stdout) if doc and doc["kind"] == "PyTorchJob"]
    assert trials
    digests = {doc["metadata"]["annotations"]["ferry.dev/code-digest"] for doc in trials}
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:")


@pytest.mark.integration
def test_run_with_code_runs_the_replicas_from_the_bundle_in_the_local_store(tmp_path):
    from mlflow import MlflowClient

    root = digits_project(tmp_path)
    home = tmp_path / "home"
    out = ferry_cli("run", "jobs/digits/job.py", "--code", ".", "--workers", "1", "--set", "epochs=1",
                    env={"FERRY_HOME": str(home), "MLFLOW_TRACKING_URI": "", "FERRY_CODE_STORE": ""}, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (bundle,) = (home / "code").glob("sha256-*.tar.gz")
    digest = "sha256:" + hashlib.sha256(gzip.decompress(bundle.read_bytes())).hexdigest()
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.data.tags["ferry.code.digest"] == digest


def test_submit_ships_nothing_by_default_when_the_project_does_not_hold_the_jobs_module(tmp_path):
    file = tmp_path / "job.py"
    file.write_text("from ferry import TrainingJob\njob = TrainingJob(name='demo', image='i:1', module='jobs.digits.train')\n")
    store = tmp_path / "store"
    out = ferry_cli("submit", str(file), "--dry-run", "client", "--code-store", store.as_uri(),
                    env={"KUBECONFIG": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr
    assert "code: not shipped (jobs.digits.train is not in" in " ".join(out.stderr.split())
    assert "ferry.code" not in out.stdout  # the image's own code runs
    asked = ferry_cli("submit", str(file), "--dry-run", "client", "--code-store", store.as_uri(), "--code", str(tmp_path),
                      env={"KUBECONFIG": str(tmp_path / "none")})
    assert asked.returncode == 2 and "is not in" in asked.stderr  # asked for: refused, not skipped
