"""The journey of one model end to end, on a real control plane (etcd, kube-apiserver and the
controller manager from ``KUBEBUILDER_ASSETS``; skipped with the reason where it is unset):
the chart installed, a ModelPipeline applied as a GitOps tool applies it, the job trained, the
version gated, registered and deployed, a second generation out as a canary, the pipeline
deleted, and the served model answering as the registered version.

What runs is Ferry's own: the chart's objects (server-side apply into a namespace enforcing
Pod Security "restricted"), its MLflow server (PostgreSQL on 127.0.0.1:5432, artifacts on S3
through moto's server, ``--serve-artifacts``) and its operator (``ferry operator run`` with the
chart's ServiceAccount's token) as the chart's pods run them, the training job's own command,
``ferry serve``. What no pod can do here (no kubelet, no training operator, no KServe) the test
plays as those controllers behave: tests/_journey.py. ``make e2e`` runs this module alone."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import _journey as j
from tests._controllers import KServe
from tests._controlplane import ApiError, ControlPlane
from tests._servers import postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "helm/ferry/ci/external-postgres-values.yaml"  # PostgreSQL from a Secret, artifacts on S3
EXAMPLE = REPO / "manifests/examples/pipelines/digits-pipeline.yaml"
RELEASE = "journey"
PIPELINES = "/apis/ferry.dev/v1alpha1/namespaces/{ns}/modelpipelines"
JOBS = "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
TRAIN_TIMEOUT_S = 600


@dataclass
class Platform:
    plane: ControlPlane
    ns: str  # where the team's pipelines go (the chart's release is in release.namespace)
    release: j.Release
    mlflow_url: str
    operator: j.Process
    account: str  # the operator's ServiceAccount, as the API server names its user
    workdir: Path

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.plane.raw("GET", path.format(ns=self.ns))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def pipeline(self, name: str) -> dict[str, Any] | None:
        return self.get(f"{PIPELINES}/{name}")

    def status(self, name: str) -> dict[str, Any]:
        return (self.pipeline(name) or {}).get("status") or {}

    def job(self, name: str) -> dict[str, Any] | None:
        return self.get(f"{JOBS}/{name}")

    def isvc(self, name: str) -> dict[str, Any] | None:
        return self.get(f"{ISVCS}/{name}")

    def isvc_serving(self, name: str, version: str) -> dict[str, Any] | None:
        isvc = self.isvc(name)
        annotations = (isvc or {}).get("metadata", {}).get("annotations") or {}
        return isvc if annotations.get("ferry.dev/model-version") == version else None

    def operator_log(self) -> str:
        """What the operator did so far: the pipelines' status, their Events, its own log."""
        pipelines = (self.get(PIPELINES) or {}).get("items") or []
        events = (self.get("/api/v1/namespaces/{ns}/events") or {}).get("items") or []
        return "\n".join([*(f"{p['metadata']['name']}: {p.get('status')}" for p in pipelines),
                          *(f"event {e['involvedObject'].get('name')}: {e.get('reason')}: {e.get('message')}"
                            for e in events[-20:]),
                          "operator log:", self.operator.tail()])

    def apply_file(self, path: Path) -> None:
        """As a GitOps tool applies a file from its repository: server-side, its own field manager."""
        self.plane.kubectl("apply", "--server-side", "--field-manager=gitops", "-f", str(path))


@pytest.fixture(scope="module")
def platform(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Ferry installed by its chart, its MLflow server and its operator running as the chart runs
    them, and a team's namespace for pipelines; everything stopped and removed after the module,
    also when a step fails. After it, no request of the operator may have been refused (RBAC)."""
    import boto3

    from tests._servers import MotoServer

    plane, workdir = control_plane, tmp_path_factory.mktemp("journey")
    with contextlib.ExitStack() as stack:
        # The platform in a namespace of its own, a team's pipelines in another ("ml" in the
        # example); both fresh, both enforcing Pod Security "restricted".
        release_ns, ns = plane.namespace("ferry"), plane.namespace("ml", wait_for_default_sa=True)
        stack.callback(plane.delete_namespace, release_ns)
        stack.callback(plane.delete_namespace, ns)
        database = f"postgresql://postgres@127.0.0.1:5432/{stack.enter_context(postgres_database('ferry_e2e'))}"
        moto = MotoServer(workdir)
        moto.start()
        stack.callback(moto.stop)
        values = yaml.safe_load(SCENARIO.read_text())
        bucket = values["mlflow"]["s3"]["bucket"]
        boto3.client("s3", endpoint_url=moto.url, region_name=values["mlflow"]["s3"]["region"],
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": values["mlflow"]["s3"]["region"]})
        # The scenario's S3 as an S3-compatible endpoint (moto), its credentials by Secret as with
        # MinIO; the operator watching both namespaces, looking again every second.
        values["mlflow"]["s3"].update(endpoint=moto.url, existingSecret="mlflow-s3")
        values["operator"] = {"watchNamespaces": [ns, release_ns], "pollSeconds": 1}
        # The Secrets the scenario names, as a platform team creates them beside the chart.
        j.secret(plane, release_ns, values["mlflow"]["database"]["existingSecret"],
                 {values["mlflow"]["database"]["uriKey"]: database})
        j.secret(plane, release_ns, "mlflow-s3", {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        release = j.install(plane, values, release_ns, RELEASE, workdir)
        stack.callback(j.uninstall, release)

        mlflow, mlflow_url = j.mlflow_server(release, workdir)
        stack.enter_context(j.running(mlflow))
        mlflow.wait_http(f"{mlflow_url}/health", timeout=180)
        # The chart's tracking ConfigMap names the MLflow Service's cluster DNS name, which does
        # not resolve here: it is patched to the server's loopback URL, the test's stand-in for it.
        tracking = release.find("ConfigMap", "mlflow")
        plane.kubectl("patch", "configmap", tracking["metadata"]["name"], "-n", release_ns, "--type=merge", "-p",
                      f'{{"data": {{"tracking-uri": "{mlflow_url}"}}}}')

        account = release.find("ServiceAccount", "operator")["metadata"]["name"]
        user = f"system:serviceaccount:{release_ns}:{account}"
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
            "user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{release_ns}",
                                     "system:authenticated"],
            "resourceAttributes": {"namespace": ns, "group": "ferry.dev", "resource": "modelpipelines", "verb": "watch"}}}
        plane.wait_for(lambda: plane.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
                       ["status"].get("allowed"), "the chart's ClusterRoleBinding honoured")
        kubeconfig = plane.write_kubeconfig(workdir / "operator.kubeconfig", account,
                                            token=plane.token(account, release_ns), namespace=release_ns)
        operator, health = j.operator(release, kubeconfig, workdir)
        stack.enter_context(j.running(operator))
        operator.wait_http(health, timeout=120)
        site = Platform(plane, ns, release, mlflow_url, operator, user, workdir)
        yield site
        denied = [f"{e['verb']} {e['requestURI']}" for e in plane.audit(user=user) if e["responseStatus"]["code"] == 403]
        assert denied == [], f"the API server refused the chart's operator role: {denied}"


def bundle(platform: Platform) -> dict[str, str]:
    """``ferry bundle`` of this project as a team runs it before committing its pipeline: the
    code goes to the platform's MLflow (its artifact proxy), the ``code`` block comes back."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([str(Path(sys.executable).with_name("ferry")), "bundle", str(REPO), "-o", "json"],
                         capture_output=True, text=True, timeout=120, cwd=platform.workdir,
                         env={**os.environ, "MLFLOW_TRACKING_URI": platform.mlflow_url, "FERRY_CODE_STORE": ""})
    assert out.returncode == 0, out.stderr
    code = json.loads(out.stdout)["code"]
    assert code["uri"].startswith("mlflow-artifacts:/ferry-code/sha256-")
    return code


def pipeline_file(platform: Platform, name: str, *, epochs: int, model: str, namespace: str | None = None,
                  code: dict[str, str] | None = None) -> Path:
    """The example pipeline as a team keeps it in its GitOps repository, adjusted for one machine:
    the team's namespace, one worker (the Master alone: the one pod this test runs), a few epochs;
    with ``code``, its job runs that code bundle."""
    text = EXAMPLE.read_text()
    if code is not None:
        text = text.replace("  job:\n", f"  job:\n    code:\n      uri: {code['uri']}\n      digest: {code['digest']}\n", 1)
    namespace = namespace or platform.ns
    for old, new in (("  name: digits\n", f"  name: {name}\n"), ("  namespace: ml\n", f"  namespace: {namespace}\n"),
                     ("    workers: 2\n", "    workers: 1\n"), ("      epochs: 15\n", f"      epochs: {epochs}\n"),
                     ("      experiment: digits\n", f"      experiment: {name}\n"),
                     ("      registerAs: digits-classifier\n", f"      registerAs: {model}\n")):
        assert text.count(old) == 1, f"{EXAMPLE.name} no longer has {old.strip()!r} once"
        text = text.replace(old, new)
    path = platform.workdir / f"{name}.yaml"
    path.write_text(text)
    return path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (old, text)
    path.write_text(text.replace(old, new))


def train(platform: Platform, job: str, *, bare: bool = False) -> None:
    """The training operator's part for ``job``, once the operator has created it; ``bare``: its
    pod's image holds Ferry but not this project (the job's code bundle must bring it)."""
    found = j.wait_for(lambda: platform.job(job), f"PyTorchJob {job}", timeout=60, also=platform.operator_log)
    (owner,) = found["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["controller"]) == ("ModelPipeline", True)
    player = j.TrainingOperatorPlay(platform.plane, platform.ns, platform.workdir, bare=bare)
    code = player.run(job, timeout=TRAIN_TIMEOUT_S)
    assert code == 0, f"the Master of {job} exited {code}:\n" + "\n".join(
        player.logs[job].read_text(errors="replace").splitlines()[-30:])
    checkpoints = platform.workdir / f"{job}-master-0" / "volumes" / "pvc-ferry-checkpoints"
    assert any(path.is_file() for path in checkpoints.rglob("*")), "no checkpoint on the job's volume"


def registry(platform: Platform) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=platform.mlflow_url)


def test_the_journey_from_the_chart_to_a_canary_and_back(platform: Platform) -> None:
    from ferry.runtime import SUBMISSION_TAG

    p, name, model = platform, "digits", "digits-classifier"
    client = registry(p)
    with j.PipelineWatch(p.plane, p.ns, p.workdir / "kubectl-get-modelpipelines.log") as watch:
        # Generation 1: applied, trained, gated, registered, deployed. Its code is the project's
        # bundle, not the image's copy: the Master runs from an image without the project.
        code = bundle(p)
        path = pipeline_file(p, name, epochs=4, model=model, code=code)
        p.apply_file(path)
        train(p, f"{name}-g1", bare=True)
        isvc = j.wait_for(lambda: p.isvc_serving(name, "1"), "the InferenceService of version 1", timeout=120,
                          also=p.operator_log)
        j.wait_for(lambda: p.status(name).get("phase") == "Deploying", "phase Deploying", also=p.operator_log)
        v1 = client.get_model_version(model, "1")
        run = client.get_run(v1.run_id)
        job = p.job(f"{name}-g1")
        assert run.data.tags[SUBMISSION_TAG] == job["metadata"]["labels"]["ferry.dev/submission"]
        assert run.data.params["epochs"] == "4" and run.data.metrics["test_accuracy"] >= 0.95
        assert (run.data.tags["ferry.code.digest"], run.data.tags["ferry.code.uri"]) == (code["digest"], code["uri"])
        assert job["metadata"]["labels"]["ferry.dev/code-digest"] == code["digest"].removeprefix("sha256:")[:32]
        assert client.get_model_version_by_alias(model, "staging").version == "1"
        predictor = isvc["spec"]["predictor"]
        assert predictor["model"]["storageUri"] == f"models:/{model}/1"  # pinned, what Ferry's storage initializer fetches
        assert "canaryTrafficPercent" not in predictor
        status = p.status(name)
        assert (status["modelVersion"], status["jobName"], status["inferenceService"]) == ("1", f"{name}-g1", name)
        KServe(p.plane, p.ns).ready(name, f"http://{name}.{p.ns}.example.com")  # its predictor Ready
        j.wait_for(lambda: p.status(name).get("phase") == "Serving", "phase Serving", also=p.operator_log)

        # Generation 2: a hyperparameter changed in the file, applied again: it trains, passes
        # the gate against version 1 and goes out as a canary beside it (version 1 keeps serving).
        edit(path, "      epochs: 4\n", "      epochs: 5\n")
        p.apply_file(path)
        train(p, f"{name}-g2", bare=True)
        isvc = j.wait_for(lambda: p.isvc_serving(name, "2"), "the InferenceService of version 2", timeout=120,
                          also=p.operator_log)
        j.wait_for(lambda: p.status(name).get("phase") == "Canary" and p.status(name).get("modelVersion") == "2",
                   "generation 2 out as a canary", also=p.operator_log)
        predictor = isvc["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 20
        assert predictor["model"]["storageUri"] == f"models:/{model}/2"
        assert client.get_model_version_by_alias(model, "staging").version == "2"
        promoted = next(c for c in p.status(name)["conditions"] if c["type"] == "Promoted")
        assert promoted["status"] == "True" and "(was v1)" in promoted["message"], promoted
        assert client.get_run(client.get_model_version(model, "2").run_id).data.params["epochs"] == "5"

        # kubectl get modelpipelines showed each phase on the way, with the columns that go with it
        # (a pass writes the phase it ends in: Evaluating and Promoting show only when a pass waits there).
        phases = " ".join(watch.phases(name))
        trained = r"(Pending )?Training (Evaluating )?(Promoting )?"
        assert re.fullmatch(f"{trained}Deploying Serving {trained}Canary", phases), phases
        rows = watch.rows_of(name)
        assert {(r["PHASE"], r["MODEL"], r["VERSION"], r["TRAFFIC"], r["JOB"]) for r in rows
                if r["PHASE"] in ("Serving", "Canary")} == {
            ("Serving", model, "1", "v1=100%", f"{name}-g1"), ("Canary", model, "2", "v2=20%,v1=80%", f"{name}-g2")}, rows
        assert {r["VERSION"] for r in rows if r["PHASE"] == "Training" and r["JOB"] == f"{name}-g2"} == {""}, rows
    (now,) = j.kubectl_table(p.plane, "modelpipelines", "-n", p.ns)
    assert list(now) == ["NAME", "PHASE", "MODEL", "VERSION", "TRAFFIC", "JOB", "URL", "AGE"]
    assert (now["NAME"], now["PHASE"], now["MODEL"], now["VERSION"], now["TRAFFIC"], now["JOB"], now["URL"]) == (
        name, "Canary", model, "2", "v2=20%,v1=80%", f"{name}-g2", f"http://{name}.{p.ns}.example.com"), now

    # Deleted as a GitOps tool prunes it: the garbage collector removes its children.
    p.plane.kubectl("delete", "-f", str(path), "--wait=true")
    j.wait_for(lambda: not any((p.job(f"{name}-g1"), p.job(f"{name}-g2"), p.isvc(name))),
               "the garbage collector removed the PyTorchJobs and the InferenceService")
    j.wait_for(lambda: not p.plane.raw("GET", f"/api/v1/namespaces/{p.ns}/pods?labelSelector=ferry.dev%2Fjob")["items"],
               "the garbage collector removed the jobs' pods")


def test_the_deployed_version_is_served_and_answers_as_the_registered_one(platform: Platform) -> None:
    import mlflow
    import numpy as np

    from jobs.digits.data import eval_data
    from tests.conftest import scoped_tracking_uri

    p, name, model = platform, "served", "digits-served"
    p.apply_file(pipeline_file(p, name, epochs=4, model=model))
    train(p, f"{name}-g1")
    isvc = j.wait_for(lambda: p.isvc_serving(name, "1"), "the InferenceService", timeout=120, also=p.operator_log)
    kserve = j.KServePlay(p.plane, p.ns, p.workdir / "kserve")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"models:/{model}/1"
    # The predictor pod's init container: the ClusterStorageContainer the chart installed is the
    # one KServe picks for models:/ (its own default one fetches no such URI), run as KServe runs it.
    assert (kserve.initializer_for(f"models:/{model}/1") or {}).get("metadata", {}).get("name") == \
        p.release.find("ClusterStorageContainer", "serving")["metadata"]["name"]
    folder = kserve.fetch(isvc)
    predictor, url = kserve.predictor(isvc, folder)
    with j.running(predictor):
        predictor.wait_http(f"{url}/v2/health/ready", timeout=180)
        kserve.ready(name, url)
        j.wait_for(lambda: p.status(name).get("phase") == "Serving", "phase Serving", also=p.operator_log)
        (row,) = j.kubectl_table(p.plane, "modelpipelines", name, "-n", p.ns)
        assert (row["PHASE"], row["MODEL"], row["VERSION"], row["JOB"], row["URL"]) == (
            "Serving", model, "1", f"{name}-g1", url), row

        x, _ = eval_data()
        answer = j.http_json("POST", f"{url}/v2/models/{name}/infer", {"inputs": [
            {"name": "input-0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
        (output,) = answer["outputs"]
        served = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        with scoped_tracking_uri(p.mlflow_url):
            registered = np.asarray(mlflow.pyfunc.load_model(f"models:/{model}/1").predict(x))
    np.testing.assert_allclose(served, registered, rtol=1e-5, atol=1e-5)
    assert (served.argmax(1) == registered.argmax(1)).all()


class OperatorRefused(Exception):
    """The operator refused to go on with a pipeline (its Ready condition says why)."""


def test_a_pipeline_in_a_namespace_where_the_chart_made_the_tracking_configmap_is_submitted(platform: Platform) -> None:
    p, name = platform, "beside"
    where = p.release.namespace
    p.apply_file(pipeline_file(p, name, epochs=1, model="digits-beside", namespace=where))
    try:
        def outcome() -> str | None:
            if p.get(f"/apis/kubeflow.org/v1/namespaces/{where}/pytorchjobs/{name}-g1"):
                return "submitted"
            ready = [c for c in (p.get(f"/apis/ferry.dev/v1alpha1/namespaces/{where}/modelpipelines/{name}") or {})
                     .get("status", {}).get("conditions", []) if c["type"] == "Ready"]
            return f"refused: {ready[0]['message']}" if ready and ready[0]["reason"] == "Conflict" else None

        result = j.wait_for(outcome, f"PyTorchJob {name}-g1 or the operator's refusal", timeout=60, also=p.operator_log)
        if result != "submitted":
            raise OperatorRefused(result)
    finally:
        p.plane.kubectl("delete", "modelpipeline", name, "-n", where, "--wait=true")
