"""Specs → Kubernetes objects. One function per kind builds the wire object with the field's
own client models (kubeflow-training, kubernetes; a TrainJob as plain dicts around kubernetes
models); output is deterministic YAML."""

from ferry.render._inferenceservice import (
    CREDENTIALS_SECRET,
    STORAGE_URI_PREFIXES,
    ResolvedModel,
    render_inferenceservice,
    render_serving_runtime,
    render_storage_container,
)
from ferry.render._output import Rendered, dump_yaml, render_spec, write_rendered
from ferry.render._pytorchjob import build_pytorchjob, ferry_env, render_pytorchjob
from ferry.render._trainjob import render_trainjob

__all__ = [
    "CREDENTIALS_SECRET",
    "STORAGE_URI_PREFIXES",
    "Rendered",
    "ResolvedModel",
    "build_pytorchjob",
    "dump_yaml",
    "ferry_env",
    "render_inferenceservice",
    "render_pytorchjob",
    "render_serving_runtime",
    "render_spec",
    "render_storage_container",
    "render_trainjob",
    "write_rendered",
]
