"""The ModelPipeline CRD: generated from Ferry's spec types (regenerated here and compared with
the shipped copies), structural as the API server requires, its OpenAPI bounds and CEL rules
each held against the Python validator it restates, and the sample pipelines valid against it.
Regenerate the files with FERRY_UPDATE_GOLDEN=1 (never in CI)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.errors import SpecError
from ferry.render._output import dump_yaml
from ferry.validate._crd import crd_issues, crd_validator
from ferry_operator import parse, pipeline_crd
from ferry_operator._crd import BOUNDS, RULES

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "operator/ferry_operator/crds/modelpipelines.ferry.dev.yaml",
           REPO / "manifests/crds/modelpipelines.ferry.dev.yaml"]
HEADER = "# Generated from Ferry's spec types (ferry_operator._crd); do not edit: tests/test_operator_crd.py regenerates it.\n"
SAMPLES = sorted((REPO / "manifests/examples/pipelines").glob("*-pipeline.yaml"))
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1" and not os.environ.get("CI")


def schema() -> dict[str, Any]:
    return pipeline_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_the_shipped_crd_is_what_the_spec_types_generate(path: Path) -> None:
    text = HEADER + dump_yaml([pipeline_crd()])
    if UPDATE:
        path.write_text(text)
    assert path.read_text() == text, f"{path} is stale: regenerate it with FERRY_UPDATE_GOLDEN=1 pytest {__file__}"


def _structural_problems(node: Any, where: str = "$", root: bool = True) -> list[str]:
    """The apiextensions rules for a structural schema (and the CRD-specific restrictions)."""
    problems = []
    if not isinstance(node, dict):
        return [f"{where}: not a schema object"]
    for key in ("$ref", "definitions", "$defs", "$schema", "id", "additionalItems", "patternProperties", "dependencies"):
        if key in node:
            problems.append(f"{where}: {key} is not allowed in a CRD schema")
    if node.get("uniqueItems") is True:
        problems.append(f"{where}: uniqueItems: true is not allowed (use x-kubernetes-list-type: set)")
    loose = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if "type" not in node and not loose:
        problems.append(f"{where}: every node needs a type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if node.get("nullable") and "type" not in node:
        problems.append(f"{where}: nullable without a type")
    for key in ("anyOf", "oneOf", "allOf", "not"):
        if key in node:
            problems.append(f"{where}: {key} would need the same types repeated outside it; merged instead")
    if node.get("x-kubernetes-list-type") == "map":
        keys = node.get("x-kubernetes-list-map-keys") or []
        required = set(node.get("items", {}).get("required", []))
        if not keys or not set(keys) <= required:
            problems.append(f"{where}: a map list needs x-kubernetes-list-map-keys that its items require")
    if node.get("type") == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{where}: an array needs one items schema")
    if not root and "metadata" in node.get("properties", {}) and where.count(".") == 1:
        problems.append(f"{where}: metadata may only be declared at the root")
    for name, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{where}.{name}", False)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += _structural_problems(node[key], f"{where}.{key}", False)
    return problems


def test_the_schema_is_structural() -> None:
    crd = pipeline_crd()
    version = crd["spec"]["versions"][0]
    assert _structural_problems(version["schema"]["openAPIV3Schema"]) == []
    assert version["subresources"] == {"status": {}}
    assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
    assert {c["name"] for c in version["additionalPrinterColumns"]} == {"Phase", "Model", "Version", "Traffic", "Job", "URL",
                                                                          "Age"}
    phases = schema()["properties"]["status"]["properties"]["phase"]["enum"]
    assert phases == ["Pending", "Training", "Evaluating", "Promoting", "Promoted", "Deploying", "Canary", "Serving",
                      "Failed", "Rejected"]


def test_every_field_of_the_spec_types_is_in_the_schema_but_those_the_pipeline_fills() -> None:
    from ferry.spec import Deployment, Promotion, TrainingJob

    from ferry_operator._crd import OMITTED, camel

    spec = schema()["properties"]["spec"]["properties"]
    for section, model in (("job", TrainingJob), ("promotion", Promotion), ("deployment", Deployment)):
        expected = {camel(f) for f in model.model_fields} - {camel(f) for f in OMITTED[section]}
        assert set(spec[section]["properties"]) == expected, section


# ---- samples ------------------------------------------------------------------------------------
def _validator() -> Any:
    return crd_validator(REPO / "operator/ferry_operator/crds", "ferry.dev/v1alpha1", "ModelPipeline")


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_the_sample_pipelines_validate_against_the_crd_and_the_spec_types(sample: Path) -> None:
    doc = yaml.safe_load(sample.read_text())
    assert list(crd_issues(doc, _validator(), sample.name)) == []
    pipeline = parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8, "generation": 1}})
    assert pipeline.job.name == f"{doc['metadata']['name']}-g1"
    assert pipeline.deployment is not None and pipeline.deployment.namespace == doc["metadata"]["namespace"]


def _sample() -> dict[str, Any]:
    return yaml.safe_load((REPO / "manifests/examples/pipelines/digits-pipeline.yaml").read_text())


@pytest.mark.parametrize("section, field, value, where", [
    ("job", "workers", 0, "$.spec.job.workers"),
    ("job", "workers", "two", "$.spec.job.workers"),
    ("job", "port", 80, "$.spec.job.port"),
    ("job", "image", "has space", "$.spec.job.image"),
    ("job", "procsPerWorkr", 2, "$.spec.job"),
    ("promotion", "canaryPercent", 0, "$.spec.promotion.canaryPercent"),
    ("promotion", "mode", "maximize", "$.spec.promotion.mode"),
    ("deployment", "name", "Digits_Service", "$.spec.deployment.name"),
    ("deployment", "protocol", "thrift", "$.spec.deployment.protocol"),
    ("job", "target", "mpijob", "$.spec.job.target"),
    ("job", "target", "TrainJob", "$.spec.job.target"),
    ("job", "runtime", "Torch_Distributed", "$.spec.job.runtime"),
    ("job", "runtime", "x" * 254, "$.spec.job.runtime"),
    ("deployment", "plan.sloP99Ms", -5, "$.spec.deployment.plan.sloP99Ms"),
    ("deployment", "plan.sloP99Ms", "fast", "$.spec.deployment.plan.sloP99Ms"),
    ("deployment", "plan.peakRps", -1, "$.spec.deployment.plan.peakRps"),
    ("deployment", "plan.headroom", 1.5, "$.spec.deployment.plan.headroom"),
    ("deployment", "plan.headroom", -0.1, "$.spec.deployment.plan.headroom"),
    ("deployment", "plan.sloMs", 100, "$.spec.deployment.plan"),
])
def test_bad_manifests_are_refused_by_the_schema_at_the_field(section: str, field: str, value: Any, where: str) -> None:
    doc = _set(_sample(), section, field, value)
    issues = list(crd_issues(doc, _validator(), "bad.yaml"))
    assert issues and any(issue.path.startswith(where) for issue in issues), issues


@pytest.mark.parametrize("plan, message", [
    ({"sloP99Ms": 0, "peakRps": 50}, "spec.deployment.plan.sloP99Ms: must be more than 0 ms (got 0)"),
    ({"sloP99Ms": -3, "peakRps": 50}, "spec.deployment.plan.sloP99Ms: must be more than 0 ms (got -3)"),
    ({"sloP99Ms": 100, "peakRps": 0}, "spec.deployment.plan.peakRps: must be more than 0 requests/s (got 0)"),
    ({"sloP99Ms": 100, "peakRps": 50, "headroom": 1}, "spec.deployment.plan.headroom: must be at least 0 and below 1 "
                                                      "(got 1)"),
    ({"sloP99Ms": 100, "peakRps": 50, "headroom": -0.2}, "spec.deployment.plan.headroom: must be at least 0 and below "
                                                         "1 (got -0.2)"),
    ({"peakRps": 50}, "spec.deployment.plan.sloP99Ms"),
    ({"sloP99Ms": 100, "peakRps": 50, "sloMs": 1}, "spec.deployment.plan.sloMs: unknown field"),
])
def test_a_bad_capacity_plan_is_refused_naming_its_field(plan: dict[str, Any], message: str) -> None:
    doc = _sample()
    doc["spec"]["deployment"]["plan"] = plan
    with pytest.raises(SpecError) as refused:
        parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8}})
    assert message in str(refused.value)


def test_a_capacity_plan_cannot_target_gpu_utilization() -> None:
    doc = _sample()
    doc["spec"]["deployment"] = {"mode": "standard", "resources": {"cpu": "2", "memory": "4Gi", "gpu": 1},
                                 "autoscaling": {"metric": "gpu-utilization", "target": 70},
                                 "plan": {"sloP99Ms": 100, "peakRps": 50}}
    with pytest.raises(SpecError, match=r"spec\.deployment\.plan: a capacity plan does not measure GPU utilization"):
        parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8}})
    doc["spec"]["deployment"]["autoscaling"]["metric"] = "queue-depth"
    assert parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8}}).deployment.plan.headroom == 0.15


# ---- the schema's checks are the Python types' checks --------------------------------------------
PLAN = {"sloP99Ms": 100, "peakRps": 50}  # a valid spec.deployment.plan, the base of its fields' cases


def _set(doc: dict[str, Any], section: str, path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    if path.startswith("plan."):  # a field of spec.deployment.plan, beside valid others
        out["spec"].setdefault(section, {})["plan"] = {**PLAN, path.split(".", 1)[1]: value}
        return out
    out["spec"].setdefault(section, {})[path] = value
    return out


def _python_accepts(doc: dict[str, Any]) -> bool:
    try:
        parse({**doc, "metadata": {**doc["metadata"], "uid": "0" * 8}})
    except SpecError:
        return False
    return True


BAD_TEXT = {("job", "image"): "has space", ("job", "module"): "jobs/digits", ("deployment", "name"): "Digits",
            ("deployment", "runtime"): "Ferry_Runtime", ("job", "serviceAccount"): "x" * 254,
            ("job", "runtime"): "Torch_Distributed"}
GOOD_TEXT = {("job", "image"): "ghcr.io/acme/train:1", ("job", "module"): "jobs.digits.train",
             ("deployment", "name"): "digits", ("deployment", "runtime"): "ferry", ("job", "serviceAccount"): "trainer",
             ("job", "runtime"): "torch-distributed.gpu"}


# bounds Python keeps exclusive (> 0, < 1) and the schema states inclusively (OpenAPI v3.0's boolean
# exclusiveMinimum is not what JSON Schema's validators read): the Python type refuses the edge
EXCLUSIVE_MINIMUM = {"maxLatencyMs", "plan.sloP99Ms", "plan.peakRps"}
EXCLUSIVE_MAXIMUM = {"plan.headroom"}


@pytest.mark.parametrize("key", sorted(BOUNDS), ids=lambda k: f"{k[0]}.{k[1]}")
def test_each_openapi_bound_restates_a_python_check(key: tuple[str, str]) -> None:
    section, path = key
    bounds = BOUNDS[key]
    if path.endswith("[]"):  # a list's items: environments
        field = path[:-2]
        assert not _python_accepts(_set(_sample(), section, field, ["Staging"]))
        assert _python_accepts(_set(_sample(), section, field, ["staging"]))
        return
    if "minimum" in bounds:
        assert not _python_accepts(_set(_sample(), section, path, bounds["minimum"] - 1)), f"{path} below its minimum"
        ok = 0.5 if path in EXCLUSIVE_MINIMUM else bounds["minimum"]
        assert _python_accepts(_set(_sample(), section, path, ok)), f"{path} at its minimum"
        if path in EXCLUSIVE_MINIMUM:  # the bound the schema leaves to the Python type
            assert not _python_accepts(_set(_sample(), section, path, bounds["minimum"]))
    if "maximum" in bounds:
        assert not _python_accepts(_set(_sample(), section, path, bounds["maximum"] + 1))
        ok = bounds["maximum"] - 0.01 if path in EXCLUSIVE_MAXIMUM else bounds["maximum"]
        assert _python_accepts(_set(_sample(), section, path, ok))
        if path in EXCLUSIVE_MAXIMUM:
            assert not _python_accepts(_set(_sample(), section, path, bounds["maximum"]))
    if "minItems" in bounds:
        assert not _python_accepts(_set(_sample(), section, path, []))
    if "pattern" in bounds or "maxLength" in bounds:
        doc = _sample()
        if section == "job" and path == "module":
            doc["spec"]["job"].pop("command", None)
        assert not _python_accepts(_set(doc, section, path, BAD_TEXT[key]))
        assert _python_accepts(_set(doc, section, path, GOOD_TEXT[key]))
        assert list(crd_issues(_set(doc, section, path, BAD_TEXT[key]), _validator(), "bad.yaml"))


TRAINJOB = {"target": "trainjob", "runPolicy": None}
RULE_CASES = {  # rule index -> (a change that breaks it, a change that keeps it)
    0: ({"command": ["python", "train.py"]}, {}),
    1: ({"queue": "team-a", "gang": {"minAvailable": 2}}, {"queue": "team-a"}),
    2: ({"resumeFrom": "20261123-071502-a3f9", "checkpointing": None}, {"resumeFrom": "20261123-071502-a3f9"}),
    3: ({"workers": 8, "elastic": {"minWorkers": 1, "maxWorkers": 4}}, {"workers": 2, "elastic": {"minWorkers": 1, "maxWorkers": 4}}),
    5: ({"target": "pytorchjob", "runtime": "torch-gpu"}, {"target": "trainjob", "runtime": "torch-gpu", "runPolicy": None}),
    # a TrainJob's refusals (the sample's runPolicy sets two of them: left out of the TrainJobs)
    6: ({**TRAINJOB, "elastic": {"minWorkers": 1, "maxWorkers": 4}}, TRAINJOB),
    7: ({**TRAINJOB, "gang": {"minAvailable": 2}}, {**TRAINJOB, "queue": "team-a"}),
    8: ({**TRAINJOB, "restartPolicy": "Never"}, {**TRAINJOB, "restartPolicy": "OnFailure"}),
    9: ({**TRAINJOB, "port": 23456}, {"target": "pytorchjob", "port": 23456}),
    10: ({**TRAINJOB, "runPolicy": {"backoffLimit": 3}}, {**TRAINJOB, "runPolicy": {"activeDeadlineSeconds": 600}}),
    11: ({**TRAINJOB, "runPolicy": {"ttlSecondsAfterFinished": 60}}, {"target": "pytorchjob"}),
    12: ({**TRAINJOB, "runPolicy": {"cleanPodPolicy": "All"}}, {**TRAINJOB, "runPolicy": {"cleanPodPolicy": "Running"}}),
    4: ({"canaryPercent": 10, "mode": "standard", "autoscaling": {"metric": "cpu", "target": 80, "minReplicas": 1}},
        {"canaryPercent": 10}),
}


def _with(doc: dict[str, Any], section: str, change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for key, value in change.items():
        if value is None:
            out["spec"][section].pop(key, None)
        else:
            out["spec"][section][key] = value
    return out


@pytest.mark.parametrize("index", range(len(RULES)), ids=lambda i: RULES[i][2][:40])
def test_each_cel_rule_holds_exactly_when_the_python_type_accepts(index: int) -> None:
    import celpy

    section, rule, *_ = RULES[index]
    program = celpy.Environment().program(celpy.Environment().compile(rule))
    bad_change, good_change = RULE_CASES[index]
    for change, accepted in ((bad_change, False), (good_change, True)):
        doc = _with(_sample(), section, change)
        assert bool(program.evaluate({"self": celpy.json_to_cel(doc["spec"][section])})) is accepted, (rule, change)
        assert _python_accepts(doc) is accepted, change
    assert set(RULE_CASES) == set(range(len(RULES)))


# ---- what installs it ---------------------------------------------------------------------------
def test_the_operators_deployment_and_rbac_validate_and_meet_restricted() -> None:
    from ferry.validate import manifest_issues

    docs = [*yaml.safe_load_all((REPO / "operator/deploy.yaml").read_text()),
            *yaml.safe_load_all((REPO / "operator/ferry_operator/rbac/operator.yaml").read_text())]
    for doc in docs:
        assert manifest_issues(doc, source=doc["kind"]) == [], doc["kind"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert all("value" not in e or not any(s in e["name"] for s in ("TOKEN", "PASSWORD", "SECRET")) for e in env.values())


def test_the_operator_dockerfile_runs_the_cli_as_non_root_and_copies_what_exists() -> None:
    text = (REPO / "operator/Dockerfile").read_text()
    assert 'ENTRYPOINT ["ferry", "operator", "run"]' in text
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
