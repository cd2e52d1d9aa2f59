"""The ``ModelPipeline`` CustomResourceDefinition, generated from Ferry's own spec types.

``spec.job`` is a :class:`~ferry.spec.TrainingJob`, ``spec.promotion`` a
:class:`~ferry.spec.Promotion` and ``spec.deployment`` a :class:`~ferry.spec.Deployment`, field
for field, in camelCase; the pipeline's own metadata supplies what the three would otherwise
repeat (the job's and the service's name and namespace, the model the promotion gates, the
version the deployment serves). Their pydantic JSON schemas become one structural OpenAPI v3
schema: references inlined, ``Optional`` as ``nullable``, unions of objects merged, tuples as
arrays. The checks the Python types make in validators are restated where OpenAPI can say them
(``BOUNDS``) and as CEL rules where it cannot (``RULES``); a test holds each one against the
Python validator it restates, so the two cannot drift. The operator validates every spec with
the Python types anyway and reports what they refuse on the pipeline's status.
"""

from __future__ import annotations

import re
from typing import Any

from ferry.spec._job import DEFAULT_RUNTIME

GROUP, VERSION, KIND, PLURAL, SINGULAR = "ferry.dev", "v1alpha1", "ModelPipeline", "modelpipelines", "modelpipeline"
SHORT_NAMES = ["mp", "pipeline"]
JOB_KINDS = ("PyTorchJob", "TrainJob")  # status.jobKind: ferry.kube's PYTORCHJOB and TRAINJOB
PHASES = ("Pending", "Training", "Evaluating", "Promoting", "Promoted", "Deploying", "Canary", "Serving", "Failed",
          "Rejected")

# fields of each section the pipeline fills itself (so a manifest cannot set them)
OMITTED = {"job": ("name", "namespace"), "promotion": ("model", "deployment"), "deployment": ("model", "namespace")}

_DNS1035 = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS1123 = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# (section, camelCase path) -> OpenAPI keywords the Python validator of that field implies
BOUNDS: dict[tuple[str, str], dict[str, Any]] = {
    ("job", "image"): {"pattern": r"^\S+$", "minLength": 1},
    ("job", "module"): {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"},
    ("job", "command"): {"minItems": 1},
    ("job", "workers"): {"minimum": 1},
    ("job", "procsPerWorker"): {"minimum": 1},
    ("job", "port"): {"minimum": 1024, "maximum": 65535},
    ("job", "runAsUser"): {"minimum": 1},
    ("job", "serviceAccount"): {"maxLength": 253},
    ("job", "runtime"): {"pattern": _DNS1123_SUBDOMAIN, "maxLength": 253},
    ("promotion", "by"): {"minimum": 0},
    ("promotion", "maxLatencyMs"): {"minimum": 0},  # > 0 in Python; OpenAPI's exclusive form is left out
    ("promotion", "canaryPercent"): {"minimum": 1, "maximum": 99},
    ("promotion", "environments"): {"minItems": 1, "x-kubernetes-list-type": "set"},
    ("promotion", "environments[]"): {"pattern": _DNS1123, "maxLength": 63},
    ("deployment", "name"): {"pattern": _DNS1035, "maxLength": 45},
    ("deployment", "runtime"): {"pattern": _DNS1123, "maxLength": 63},
    ("deployment", "canaryPercent"): {"minimum": 1, "maximum": 99},
    ("deployment", "maxBatchSize"): {"minimum": 1},
    # > 0, > 0 and [0, 1) in Python; OpenAPI's exclusive forms are left out
    ("deployment", "plan.sloP99Ms"): {"minimum": 0},
    ("deployment", "plan.peakRps"): {"minimum": 0},
    ("deployment", "plan.headroom"): {"minimum": 0, "maximum": 1},
}
_TRAINJOB = "!has(self.target) || self.target != 'trainjob' || "
# (section, CEL rule, message[, the field it names, as a path from the section]): cross-field checks
# of the Python types; a TrainJob's refusals are ferry.spec._job.trainjob_problem's, field by field
# (the length of the pods' names, which depends on the pipeline's name, is the operator's to check)
RULES: list[tuple[str, ...]] = [
    ("job", "has(self.module) != has(self.command)",
     "give exactly one entry point: module (run with python -m / torchrun) or command"),
    ("job", "!(has(self.queue) && has(self.gang))", "use either queue (Kueue) or gang (Volcano/scheduler-plugins), not both"),
    ("job", "!has(self.resumeFrom) || has(self.checkpointing)",
     "resumeFrom needs checkpointing: a job without checkpoints has nothing to restore"),
    ("job", "!has(self.elastic) || !has(self.workers) || (self.workers >= self.elastic.minWorkers && "
            "self.workers <= self.elastic.maxWorkers)",
     "workers must lie within elastic minWorkers..maxWorkers; it is the starting size"),
    ("deployment", "!has(self.canaryPercent) || !has(self.mode) || self.mode != 'standard'",
     "canaryPercent needs mode serverless (standard mode has no traffic split)"),
    ("job", f"!has(self.runtime) || self.runtime == '{DEFAULT_RUNTIME}' || !has(self.target) || "
            "self.target == 'trainjob'",
     "a Kubeflow Trainer runtime is for target trainjob only; remove runtime or set target: trainjob", ".runtime"),
    ("job", _TRAINJOB + "!has(self.elastic)",
     "Kubeflow Trainer v2 (target trainjob) has no elastic training; use a fixed size (workers, no elastic), "
     "or target: pytorchjob", ".elastic"),
    ("job", _TRAINJOB + "!has(self.gang)",
     "a TrainJob is gang-scheduled only by its runtime's podGroupPolicy; use queue (Kueue), a runtime with a "
     "podGroupPolicy, or target: pytorchjob", ".gang"),
    ("job", _TRAINJOB + "!has(self.restartPolicy) || self.restartPolicy == 'OnFailure'",
     "a TrainJob's pods restart OnFailure, as its runtime's JobSet sets; remove restartPolicy, use a "
     "runtime that sets it, or target: pytorchjob", ".restartPolicy"),
    ("job", _TRAINJOB + "!has(self.port)",
     "Kubeflow Trainer fixes the rendezvous port; remove port, or target: pytorchjob", ".port"),
    ("job", _TRAINJOB + "!has(self.runPolicy) || !has(self.runPolicy.backoffLimit)",
     "a TrainJob has no retry limit of its own (its runtime's decides); remove it, or "
     "target: pytorchjob", ".runPolicy.backoffLimit"),
    ("job", _TRAINJOB + "!has(self.runPolicy) || !has(self.runPolicy.ttlSecondsAfterFinished)",
     "a finished TrainJob stays until it is deleted; remove it, or target: "
     "pytorchjob", ".runPolicy.ttlSecondsAfterFinished"),
    ("job", _TRAINJOB + "!has(self.runPolicy) || !has(self.runPolicy.cleanPodPolicy) || "
            "self.runPolicy.cleanPodPolicy == 'Running'",
     "a finished TrainJob deletes the pods still running and keeps the others "
     "(Running); remove it, or target: pytorchjob", ".runPolicy.cleanPodPolicy"),
]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node as a structural OpenAPI v3 node (camelCase properties)."""
    if "$ref" in schema:
        return structural(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        nullable = any(o.get("type") == "null" for o in options)
        rest = [structural(o, defs) for o in options if o.get("type") != "null"]
        if len(rest) == 1:
            out = rest[0]
        elif all(o.get("type") == "object" and "properties" in o for o in rest):
            out = _merge_objects(rest)
        else:  # a scalar of several types (a hyperparameter: bool, int, float or str)
            out = {"x-kubernetes-preserve-unknown-fields": True}
        if nullable:
            out = {**out, "nullable": True}
        return _described(out, schema)
    kind = schema.get("type")
    out: dict[str, Any]
    if kind == "object" and "properties" in schema:
        out = {"type": "object", "properties": {camel(k): structural(v, defs) for k, v in schema["properties"].items()}}
        required = [camel(k) for k in schema.get("required", [])]
        if required:
            out["required"] = required
    elif kind == "object":
        values = schema.get("additionalProperties", {})
        out = {"type": "object", "additionalProperties": structural(values, defs) if values else {"type": "string"}}
    elif kind == "array":
        items = schema.get("items") or (schema.get("prefixItems") or [{"type": "string"}])[0]
        out = {"type": "array", "items": structural(items, defs)}
    elif "const" in schema:
        out = {"type": kind or "string", "enum": [schema["const"]]}
    else:
        out = {"type": {"number": "number", "integer": "integer", "boolean": "boolean"}.get(kind, "string")}
        if "enum" in schema:
            out["enum"] = list(schema["enum"])
    return _described(out, schema)


def _described(out: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    text = schema.get("description")
    if text and "description" not in out:
        out = {**out, "description": " ".join(text.split())}
    return out


def _merge_objects(options: list[dict[str, Any]]) -> dict[str, Any]:
    """A union of object types (a volume: pvc, configmap, secret or emptydir) as one object
    holding every member's properties; ``kind`` names the member."""
    properties: dict[str, Any] = {}
    for option in options:
        for name, prop in option["properties"].items():
            if name in properties and "enum" in prop and "enum" in properties[name]:
                properties[name] = {**properties[name], "enum": sorted({*properties[name]["enum"], *prop["enum"]})}
            else:
                properties.setdefault(name, prop)
    required = set.intersection(*(set(o.get("required", [])) for o in options))
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = sorted(required)
    return out


def section_schema(section: str) -> dict[str, Any]:
    """``spec.<section>``: the spec type's schema less what the pipeline fills itself."""
    from ferry.spec import Deployment, Promotion, TrainingJob

    model = {"job": TrainingJob, "promotion": Promotion, "deployment": Deployment}[section]
    raw = model.model_json_schema()
    schema = structural(raw, raw.get("$defs", {}))
    for name in OMITTED[section]:
        schema["properties"].pop(camel(name), None)
    schema["required"] = [r for r in schema.get("required", []) if r in schema["properties"]]
    if not schema["required"]:
        del schema["required"]
    for (where, path), keywords in BOUNDS.items():
        if where == section:
            node = schema
            for part in path.removesuffix("[]").split("."):  # a nested field: plan.sloP99Ms
                node = node["properties"][part]
            (node["items"] if path.endswith("[]") else node).update(keywords)
    rules = [{"rule": rule, "message": message, **({"fieldPath": path[0]} if path else {})}
             for where, rule, message, *path in RULES if where == section]
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def _condition() -> dict[str, Any]:
    return {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"}, "message": {"type": "string"}, "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer"}}}


def status_schema() -> dict[str, Any]:
    text = {"type": "string"}
    return {"type": "object", "properties": {
        "phase": {"type": "string", "enum": list(PHASES)},
        "message": {**text, "description": "Why the pipeline is in its phase, in one line."},
        "observedGeneration": {"type": "integer", "description": "The spec generation the status describes."},
        "conditions": {"type": "array", "items": _condition(), "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"]},
        "jobName": {**text, "description": "The PyTorchJob or TrainJob training this generation (jobKind says "
                                           "which)."},
        "jobKind": {**text, "enum": list(JOB_KINDS), "description": "What the job was submitted as: spec.job.target, "
                                                                    "else the operator's default then (FERRY_TARGET)."},
        "submission": {**text, "description": "The submission id (ferry.dev/submission label, ferry.submission_id run tag)."},
        "runId": {**text, "description": "The MLflow run of the submission."},
        "model": {**text, "description": "The registered model."},
        "modelVersion": {**text, "description": "The version the run registered."},
        "inferenceService": {**text, "description": "The InferenceService serving the model."},
        "url": {**text, "description": "The InferenceService's URL once ready."},
        "gates": {"type": "array", "items": {"type": "object", "properties": {
            "name": text, "passed": {"type": "boolean"}, "detail": text}}},
        "runLookups": {"type": "integer", "description": "How often the submission's run and model version have been "
                                                         "looked for in MLflow after the job succeeded (the pipeline "
                                                         "fails when they stay missing)."},
        "jobDigest": {**text, "description": "The digest of spec.job the job was submitted for: training reruns "
                                             "only when it changes."},
        "jobOutcome": {**text, "enum": ["Succeeded", "Failed"], "description": "How the job ended (it is not read "
                                                                              "again once this is set)."},
        "attempt": {"type": "integer", "description": "Retries of the training (ferry.dev/retry)."},
        "promotionDigest": {**text, "description": "The digest of spec.promotion, spec.environment and the version "
                                                   "the gates were evaluated for."},
        "deploymentDigest": {**text, "description": "The digest of spec.deployment and the version applied."},
        "servingVersion": {**text, "description": "The version that takes all the traffic."},
        "traffic": {**text, "description": "The traffic split, e.g. v2=20%,v1=80%."},
        "canary": {"type": "object", "nullable": True, "description": "A canary under way.", "properties": {
            "version": text, "previousVersion": text, "percent": {"type": "integer"}, "digest": text,
            "appliedAt": {"type": "string", "format": "date-time"},
            "readySince": {"type": "string", "format": "date-time"}}},
        "plan": {"type": "object", "nullable": True, "description": "The capacity plan the InferenceService scales "
                                                                  "by (spec.deployment.plan): the MLflow run of "
                                                                  "ferry plan, the version it measured, the figures.",
                 "properties": {"runId": text, "version": text, "minReplicas": {"type": "integer"},
                                "maxReplicas": {"type": "integer"}, "metric": text, "target": {"type": "integer"},
                                "digest": {**text, "description": "The digest of what the plan depends on (the "
                                                                  "version, spec.deployment.plan, the server's "
                                                                  "settings, the metric and mode)."}}},
        "planFailedJob": {**text, "description": "The uid of the capacity plan's Job whose failure failed the "
                                                 "pipeline: a retry replaces it."},
        "retry": {**text, "description": "The last value of the ferry.dev/retry annotation acted on."},
        "failedStage": {**text, "enum": ["Spec", "Training", "Evaluating", "Promoting", "Deploying", "Canary"],
                        "description": "The stage that failed (phase Failed or Rejected)."},
        "failedInputs": {**text, "description": "The digest of what the failed stage read: it is tried again when "
                                                "this changes, or on ferry.dev/retry."},
    }}


def pipeline_crd() -> dict[str, Any]:
    """The CustomResourceDefinition, as a dict ready to dump."""
    spec = {"type": "object", "required": ["job", "promotion"], "properties": {
        "job": {**section_schema("job"), "description": "The training job (a TrainingJob: its name and namespace "
                                                        "are the pipeline's); tracking.registerAs names the model; "
                                                        "target runs it as a PyTorchJob or a TrainJob (default: the "
                                                        "operator's FERRY_TARGET, else pytorchjob)."},
        "promotion": {**section_schema("promotion"), "description": "The gates a newly trained version must pass "
                                                                    "(a Promotion of the model the job registers)."},
        "environment": {"type": "string", "pattern": _DNS1123, "maxLength": 63,
                        "description": "The environment this pipeline promotes into and serves (default: the "
                                       "first of promotion.environments)."},
        "deployment": {**section_schema("deployment"), "description": "How the promoted version is served (a "
                                                                      "Deployment; name defaults to the pipeline's)."},
    }}
    spec["properties"]["deployment"]["required"] = [r for r in spec["properties"]["deployment"].get("required", [])
                                                    if r != "name"]
    if not spec["properties"]["deployment"]["required"]:
        del spec["properties"]["deployment"]["required"]
    columns = [("Phase", ".status.phase", "string"), ("Model", ".status.model", "string"),
               ("Version", ".status.modelVersion", "string"), ("Traffic", ".status.traffic", "string"),
               ("Job", ".status.jobName", "string"), ("URL", ".status.url", "string"),
               ("Age", ".metadata.creationTimestamp", "date")]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "ferry"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "listKind": f"{KIND}List",
                      "shortNames": SHORT_NAMES, "categories": ["ferry"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": n, "jsonPath": p, "type": t} for n, p, t in columns],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "Train a job, gate the model it registers, and serve it: one resource, driven by "
                                   "Ferry's operator.",
                    "required": ["spec"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}, "spec": spec, "status": status_schema()},
                }},
            }],
        },
    }
