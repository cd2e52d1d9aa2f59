"""A ModelPipeline's spec as Ferry's own types: the TrainingJob, the Promotion policy and the
Deployment, with what the pipeline's metadata supplies filled in. Whatever the types refuse
comes back as one :class:`~ferry.errors.SpecError` naming the field the manifest spells
(``spec.job.procsPerWorker``), never a Python name."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ferry.errors import SpecError
from ferry.spec import Deployment, Promotion, TrainingJob, Tracking
from ferry_operator._crd import OMITTED, camel, snake


@dataclass(frozen=True)
class Pipeline:
    name: str
    namespace: str
    generation: int
    job: TrainingJob
    promotion: Promotion
    environment: str
    deployment: Deployment | None  # None: gate and register only, serve nothing

    @property
    def model(self) -> str:
        return self.promotion.model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation may hold (itself, in a union, in a tuple)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, tuple, list):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def to_python(model: type[BaseModel], data: Any, where: str) -> Any:
    """``data`` as ``model``'s keyword arguments: camelCase keys to the field names, into nested
    specs too (the keys of dict fields such as ``env`` or ``labels`` are left as written)."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = snake(key) if snake(key) in fields else key
        if name not in fields or camel(name) != key:
            raise SpecError(f"{where}.{key}: unknown field; valid fields are: "
                            f"{', '.join(sorted(camel(f) for f in fields))}")
        nested = _models_in(fields[name].annotation)
        if nested and isinstance(value, dict):
            value = _nested(nested, value, f"{where}.{key}")
        elif nested and isinstance(value, list):
            value = [_nested(nested, item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]
        out[name] = value
    return out


def _nested(candidates: list[type[BaseModel]], value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        return value
    if len(candidates) > 1 and "kind" in value:  # a discriminated union (volumes, secret refs)
        for cls in candidates:
            kind = cls.model_fields.get("kind")
            if kind is not None and kind.default == value["kind"]:
                return to_python(cls, value, where)
    return to_python(candidates[0], value, where)


def _python_path(message: str, section: str, type_name: str, fields: Any = ()) -> str:
    """A SpecError line (``TrainingJob.procs_per_worker: ...``) as the manifest's path. A check of
    the whole type that names one of ``fields`` first (``TrainingJob: elastic: ...``, or with its
    value: ``restart_policy='Never': ...``) is put at that field (``spec.job.elastic: ...``)."""
    lines = []
    for line in message.splitlines():
        head, sep, rest = line.partition(": ")
        if sep and head.startswith(type_name):
            path = head[len(type_name):]
            named = re.match(r"([a-z_]+(?:\.[a-z_]+)*)(='[^']*')?: ", rest) if not path else None
            if named and named.group(1).split(".")[0] in fields:
                path, rest = "." + named.group(1), rest[named.end():] + (f" (got {named.group(2)[1:]})"
                                                                         if named.group(2) else "")
            path = ".".join(camel(part) if part and part[0].isalpha() else part for part in path.split("."))
            if section == "job" and path == ".name":  # the pipeline names the job: <pipeline>-g<generation>
                line = f"metadata.name: the job is named after the pipeline, and {rest}"
            else:
                line = f"spec.{section}{path}: {rest}"
        lines.append(line)
    return "\n".join(lines)


def job_spec_error(exc: SpecError) -> SpecError:
    """A TrainingJob's SpecError as the pipeline's manifest names the field (``spec.job.elastic``)."""
    return SpecError(_python_path(str(exc), "job", TrainingJob.__name__, TrainingJob.model_fields))


def _build(model: type[BaseModel], section: str, data: dict[str, Any], fixed: dict[str, Any]) -> Any:
    for name in OMITTED[section]:
        if camel(name) in data:
            raise SpecError(f"spec.{section}.{camel(name)}: set by the pipeline itself; remove it "
                            + {"name": "(the pipeline's name is used)", "namespace": "(the pipeline's namespace is used)",
                               "model": "(the model the job registers is used)",
                               "deployment": "(use spec.deployment)"}[name])
    try:
        return model(**{**to_python(model, data, f"spec.{section}"), **fixed})
    except SpecError as exc:
        raise SpecError(_python_path(str(exc), section, model.__name__, model.model_fields)) from exc


def job_name(pipeline: str, generation: int) -> str:
    """The job (a PyTorchJob or a TrainJob) of one generation of a pipeline: a new spec trains anew,
    beside the last."""
    return f"{pipeline}-g{generation}"


def parse(body: dict[str, Any]) -> Pipeline:
    """The pipeline a ModelPipeline object describes; SpecError with every problem otherwise."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    name, namespace, generation = meta["name"], meta.get("namespace") or "default", int(meta.get("generation") or 1)
    problems = []
    for section in ("job", "promotion"):
        if not isinstance(spec.get(section), dict):
            problems.append(f"spec.{section}: is required")
    if problems:
        raise SpecError("\n".join(problems))
    tracking = spec["job"].get("tracking", {})
    register_as = tracking.get("registerAs") if isinstance(tracking, dict) else None
    if not register_as:
        raise SpecError("spec.job.tracking.registerAs: is required; it names the registered model the pipeline gates "
                        "and serves (e.g. registerAs: digits-classifier)")
    job_fixed: dict[str, Any] = {"name": job_name(name, generation), "namespace": namespace}
    if isinstance(tracking, dict) and not tracking.get("experiment"):
        # every generation is one more run of the same experiment (the job's own name changes)
        job_fixed["tracking"] = {**to_python(Tracking, tracking, "spec.job.tracking"), "experiment": name}
    job = _build(TrainingJob, "job", spec["job"], job_fixed)
    promotion = _build(Promotion, "promotion", spec["promotion"], {"model": register_as})
    environment = spec.get("environment") or promotion.environments[0]
    if environment not in promotion.environments:
        raise SpecError(f"spec.environment: {environment!r} is not one of promotion.environments "
                        f"({', '.join(promotion.environments)})")
    deployment = None
    if isinstance(spec.get("deployment"), dict):
        fixed = {"model": f"models:/{register_as}@{environment}", "namespace": namespace}
        data = {"name": name, **spec["deployment"]}
        deployment = _build(Deployment, "deployment", data, fixed)
    return Pipeline(name, namespace, generation, job, promotion, environment, deployment)
