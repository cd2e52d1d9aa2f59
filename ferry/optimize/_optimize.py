"""``optimize()``: make candidates from one registered version, measure them side by side with
it, log everything to MLflow and register each candidate as a new version of the same model.

Order matters for "nothing half-done": every option is checked before anything is loaded;
every in-memory candidate is built, saved, measured and checked (ONNX parity) before the
student job (which registers its own version) starts; versions are registered last.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ferry.errors import ConfigError, OptimizationFailed
from ferry.optimize._measure import Measurement, measure
from ferry.optimize._report import Row, markdown, plot
from ferry.optimize._source import EVAL_DATA_TAG, Source, load_data, load_source

METHOD_TAG = "ferry.optimize.method"
SOURCE_TAG = "ferry.optimize.source"
RUN_TAG = "ferry.optimize.run_id"
QUANTIZE_CHOICES = ("int8",)
# Deprecation notices torch 2.13 prints from its own internals while quantized modules are made,
# pickled and loaded; nothing a user of optimize can act on.
_TORCH_NOISE = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"torch\.quantize_per_tensor",
                r"TypedStorage is deprecated")


@dataclass(frozen=True)
class PruneOptions:
    """``amount`` of the weights (0 < amount < 1) to zero by magnitude; ``structured`` zeroes
    whole output channels instead; ``finetune_data`` (``module:function`` returning inputs and
    labels) runs ``finetune_epochs`` of training with the masks in place first."""

    amount: float
    structured: bool = False
    finetune_data: str | None = None
    finetune_epochs: int = 2


@dataclass
class Candidate:
    label: str
    how: str
    tags: dict[str, str]
    model_dir: Path  # where it was saved while optimize() ran (a temporary directory)
    parameters: int
    sparsity: float
    measurement: Measurement | None = None
    version: str | None = None
    run_id: str | None = None
    model_name: str | None = None  # where the version is registered (a student job names its own)


@dataclass
class OptimizeResult:
    source: Source
    source_measurement: Measurement
    candidates: list[Candidate]
    run_id: str | None = None
    report_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.source.name} v{self.source.version}: optimization candidates"

    def rows(self) -> list[Row]:
        rows = [Row("source", self.source.version, "as trained", self.source_measurement)]
        return rows + [Row(c.label, c.version, c.how, c.measurement) for c in self.candidates if c.measurement]


def _check_options(quantize: str | None, prune: PruneOptions | None, onnx: bool, distill: str | Path | None,
                   distill_sets: Sequence[str], onnx_tolerance: float, threads: int) -> Any:
    if not (quantize or prune or onnx or distill):
        raise ConfigError("nothing to do: give at least one of --quantize int8, --prune AMOUNT, --distill STUDENT_JOB, --onnx")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"--quantize {quantize!r}: supported: {', '.join(QUANTIZE_CHOICES)} (dynamic int8 of Linear/LSTM/GRU)")
    if prune is not None:
        if not 0.0 < prune.amount < 1.0:
            raise ConfigError(f"--prune {prune.amount}: the amount is the fraction of weights to remove and must lie "
                              "strictly between 0 and 1, e.g. --prune 0.5")
        if prune.finetune_epochs < 1:
            raise ConfigError(f"--finetune-epochs {prune.finetune_epochs}: must be >= 1")
    if not onnx_tolerance > 0:
        raise ConfigError(f"--onnx-tolerance {onnx_tolerance}: must be > 0, e.g. 1e-4")
    if threads < 1:
        raise ConfigError(f"--threads {threads}: must be >= 1")
    if distill is not None:
        from ferry.optimize._distill import load_student_job

        return load_student_job(distill, distill_sets)
    return None


def optimize(model_uri: str, *, quantize: str | None = None, prune: PruneOptions | None = None, onnx: bool = False,
             distill: str | Path | None = None, distill_sets: Sequence[str] = (), eval_data: str | None = None,
             onnx_tolerance: float = 1e-4,
             threads: int = 1, register: bool = True, client: Any = None, report_dir: Path | None = None,
             console: Any = None, say: Callable[[str], None] = lambda line: None) -> OptimizeResult:
    """Make the requested candidates from ``model_uri`` (``models:/NAME/VERSION`` or ``@ALIAS``),
    measure them and the source side by side (``threads`` CPU threads for every model) and,
    with ``register``, register each as a new version of the same model. ``distill`` is a student
    TrainingJob file; ``distill_sets`` override its hyperparameters (``key=value``)."""
    student_job = _check_options(quantize, prune, onnx, distill, distill_sets, onnx_tolerance, threads)
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="ferry-optimize-") as tmp, warnings.catch_warnings():
        for message in _TORCH_NOISE:
            warnings.filterwarnings("ignore", message=message)
        return _optimize(model_uri, Path(tmp), quantize=quantize, prune=prune, onnx=onnx, student_job=student_job,
                         eval_data=eval_data, onnx_tolerance=onnx_tolerance, threads=threads, register=register,
                         client=client, report_dir=report_dir, console=console, say=say)


def _optimize(model_uri: str, work: Path, *, quantize: str | None, prune: PruneOptions | None, onnx: bool,
              student_job: Any, eval_data: str | None, onnx_tolerance: float, threads: int, register: bool,
              client: Any, report_dir: Path | None, console: Any, say: Callable[[str], None]) -> OptimizeResult:
    source = load_source(model_uri, client, work / "source")
    say(f"source {source.uri} (run {source.run_id})")
    if source.version_tags.get(METHOD_TAG) == "quantize" and (quantize or prune or onnx):
        raise ConfigError(f"{source.uri} is already an int8 candidate of {source.version_tags.get(SOURCE_TAG, 'another version')}; "
                          "optimize the fp32 version it was made from")
    evaluation, note = _evaluation(source, eval_data)
    finetune = load_data(prune.finetune_data, "--finetune-data") if prune and prune.finetune_data else None

    import mlflow.pytorch
    import torch
    from mlflow.models import Model

    from ferry.optimize import _methods
    from ferry.optimize._graph import layered, parameter_count, sparsity

    meta = Model.load(str(source.model_dir))
    if "pytorch" not in meta.flavors:
        raise ConfigError(f"{source.uri}: flavor(s) {sorted(meta.flavors)}; optimize works on PyTorch models "
                          "(optimize the PyTorch version this one was made from)")
    base = layered(mlflow.pytorch.load_model(str(source.model_dir), map_location="cpu")).eval()
    sample = _sample(meta, evaluation)

    made = []
    if quantize:
        made.append(_methods.quantize_int8(copy.deepcopy(base)))
    if prune:
        made.append(_methods.prune_model(copy.deepcopy(base), prune.amount, structured=prune.structured, finetune=finetune,
                                         finetune_epochs=prune.finetune_epochs))
    if onnx:
        names = _io_names(meta)
        made.append(_methods.export_onnx(copy.deepcopy(base), sample[:8], work / "model.onnx", *names))

    say("measuring the source")
    source_m, reference = measure(source.model_dir, sample=sample, evaluation=evaluation, reference=None,
                                  parameters=parameter_count(base), sparsity=sparsity(base), threads=threads)
    candidates = []
    for item in made:
        label = item.kind if item.kind != "pruned" else f"pruned-{item.tags['ferry.optimize.amount']}"
        model_dir = work / label
        with torch.no_grad():
            _save(item, model_dir, meta, sample[:8])
        say(f"measuring {label}")
        m, _ = measure(model_dir, sample=sample, evaluation=evaluation, reference=reference,
                       parameters=parameter_count(item.float_module), sparsity=sparsity(item.float_module), threads=threads)
        if item.kind == "onnx" and m.max_abs_diff is not None and m.max_abs_diff > onnx_tolerance:
            raise OptimizationFailed(f"--onnx: ONNX Runtime's outputs differ from the source's by up to {m.max_abs_diff:.3g}, "
                                     f"above the tolerance {onnx_tolerance:g}; no version was registered "
                                     "(raise --onnx-tolerance if that difference is acceptable)")
        candidates.append(Candidate(label, item.how, item.tags, model_dir, m.parameters, m.sparsity, m))

    if student_job is not None:
        candidates.append(_distilled(student_job, source, client, work / "student", sample, evaluation, reference,
                                     threads, console, say))

    result = OptimizeResult(source, source_m, candidates)
    (result.notes if evaluation is not None else result.warnings).append(note)
    result.notes.append(f"latency measured with {threads} CPU thread(s) per model, each loaded as `ferry serve` loads it")
    _log_and_register(client, result, register, report_dir or work / "report")
    if report_dir is None:
        result.report_dir = None  # it was in the work directory: the run's report/ artifacts hold it
    return result


def _evaluation(source: Source, eval_data: str | None) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    if eval_data:
        return load_data(eval_data, "--eval-data", source.params), f"evaluated on {eval_data}"
    recorded = source.tags.get(EVAL_DATA_TAG)
    if recorded:
        return (load_data(recorded, f"the source run's {EVAL_DATA_TAG}", source.params),
                f"evaluated on the job's held-out split ({recorded})")
    return None, ("accuracy was not checked: the source run records no ferry.eval_data and no --eval-data was "
                  "given; the candidates were measured for speed and size only")


def _sample(meta: Any, evaluation: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """32 inputs for timing: the first evaluation rows, else random data of the signature's shape."""
    if evaluation is not None:
        return np.ascontiguousarray(evaluation[0][:32])
    spec = meta.signature.inputs.inputs[0] if meta.signature is not None else None
    if spec is None or any(d is None or d < 0 for d in spec.shape[1:]):
        raise ConfigError("without evaluation data the input shape must come from the model's signature, and it "
                          "has none (or a dynamic non-batch dimension); pass --eval-data module:function")
    rng = np.random.default_rng(0)
    return rng.standard_normal((32, *spec.shape[1:])).astype(np.dtype(spec.type))


def _io_names(meta: Any) -> tuple[str, str]:
    sig = meta.signature
    inp = (sig.inputs.inputs[0].name if sig is not None and sig.inputs else None) or "input"
    out = (sig.outputs.inputs[0].name if sig is not None and sig.outputs else None) or "output"
    return inp, out


def _save(item: Any, path: Path, meta: Any, example: np.ndarray) -> None:
    """Save a candidate as an MLflow model with the source's signature. int8 modules use the
    pickle format: torch.export cannot carry quantized packed weights."""
    from ferry.runtime._tracking import _requirements

    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.ERROR)  # the pickle-format caution and the torch '+cpu' label notice
    try:
        if item.onnx_path is not None:
            import mlflow.onnx
            import onnx

            mlflow.onnx.save_model(onnx.load(str(item.onnx_path)), str(path), signature=meta.signature,
                                   input_example=example, pip_requirements=["onnxruntime", "onnx"])
        else:
            import mlflow.pytorch

            mlflow.pytorch.save_model(item.module, str(path), signature=meta.signature, input_example=example,
                                      serialization_format="pickle" if item.kind == "int8" else "pt2",
                                      pip_requirements=_requirements())
    finally:
        mlflow_log.setLevel(level)


def _distilled(job: Any, source: Source, client: Any, dst: Path, sample: np.ndarray, evaluation: Any,
               reference: np.ndarray, threads: int, console: Any, say: Callable[[str], None]) -> Candidate:
    import mlflow.artifacts
    import mlflow.pytorch

    from ferry.optimize._distill import train_student
    from ferry.optimize._graph import layered, parameter_count, sparsity

    say(f"training student job {job.name} on {source.uri}'s soft targets")
    name = source.name
    version, run_id = train_student(job, source.uri, name, client, console=console)
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri(name, version),
                                                     dst_path=str(dst),
                                                     tracking_uri=client.tracking_uri))
    student = layered(mlflow.pytorch.load_model(str(local), map_location="cpu"))
    say(f"measuring the student {name} v{version}")
    m, _ = measure(local, sample=sample, evaluation=evaluation, reference=reference,
                   parameters=parameter_count(student), sparsity=sparsity(student), threads=threads)
    hp = job.hyperparameters
    how = f"distilled into {job.name} (T={hp.get('temperature', '-')}, alpha={hp.get('alpha', '-')})"
    tags = {METHOD_TAG: "distill", "ferry.optimize.student_job": job.name,
            "ferry.optimize.temperature": str(hp.get("temperature", "")), "ferry.optimize.alpha": str(hp.get("alpha", ""))}
    return Candidate("distilled", how, tags, local, m.parameters, m.sparsity, m, version=version, run_id=run_id,
                     model_name=name)


def _log_and_register(client: Any, result: OptimizeResult, register: bool, report_dir: Path) -> None:
    """One parent run (the report) in the source's experiment; one child run per candidate with
    its model and metrics; each candidate registered as a new version of the source's model."""
    from mlflow.entities import Metric, Param

    source = result.source
    experiment_id = source.experiment_id or _experiment(client, "ferry-optimize")
    link = {SOURCE_TAG: source.uri, "ferry.optimize.source_run_id": source.run_id or ""}
    parent = client.create_run(experiment_id, run_name=f"optimize-{source.name}-v{source.version}",
                               tags={**link, METHOD_TAG: "report"})
    result.run_id = parent.info.run_id
    now = int(time.time() * 1000)

    def metrics(values: dict[str, float]) -> list[Metric]:
        return [Metric(k, float(v), now, 0) for k, v in values.items() if v == v]  # drop NaN

    client.log_batch(result.run_id, metrics=metrics({f"source.{k}": v for k, v in result.source_measurement.as_metrics().items()}))
    for cand in result.candidates:
        tags = {**link, **cand.tags, RUN_TAG: result.run_id}
        if cand.version is None:  # made here: a child run holds the model
            child = client.create_run(experiment_id, run_name=f"{source.name}-v{source.version}-{cand.label}",
                                      tags={**tags, "mlflow.parentRunId": result.run_id})
            cand.run_id = child.info.run_id
            client.log_batch(cand.run_id, metrics=metrics(cand.measurement.as_metrics()),
                             params=[Param("how", cand.how[:500]), Param("source", source.uri)])
            client.log_artifacts(cand.run_id, str(cand.model_dir), "model")
            client.set_terminated(cand.run_id)
            if register:
                mv = client.create_model_version(source.name, f"{child.info.artifact_uri.rstrip('/')}/model", cand.run_id,
                                                 tags=tags, description=f"{cand.how}; made from {source.uri}")
                cand.version, cand.model_name = str(mv.version), source.name
        else:  # the student job registered its own version: link it
            client.log_batch(cand.run_id, metrics=metrics(cand.measurement.as_metrics()))
            for key, value in tags.items():
                client.set_model_version_tag(cand.model_name, cand.version, key, value)
        base = result.source_measurement
        client.log_batch(result.run_id, metrics=metrics({
            f"{cand.label}.speedup_b32": base.p50(32) / cand.measurement.p50(32),
            f"{cand.label}.size_ratio": base.size_bytes / max(cand.measurement.size_bytes, 1),
            **({f"{cand.label}.{base.metric}_delta": cand.measurement.value - base.value}
               if base.value is not None and cand.measurement.value is not None else {}),
        }))
    _write_report(client, result, report_dir)
    client.set_terminated(result.run_id)


def _write_report(client: Any, result: OptimizeResult, report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    (report_dir / "report.md").write_text(markdown(rows, result.title, result.warnings + result.notes))
    plot(rows, result.title, report_dir / "report.png")
    (report_dir / "report.json").write_text(json.dumps({
        "source": result.source.uri, "notes": result.notes, "warnings": result.warnings,
        "models": [{"label": r.label, "version": r.version, "how": r.how, **r.m.to_dict()} for r in rows],
    }, indent=2, sort_keys=True))
    client.log_artifacts(result.run_id, str(report_dir), "report")
    result.report_dir = report_dir


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)
