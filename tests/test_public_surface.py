"""Pin each package's public surface: a change here is an API change, made on purpose."""

from __future__ import annotations

import importlib

import pytest

SURFACE = {
    "ferry": [
        "Autoscaling", "Canary", "CapacityPlan", "Checkpointing", "Choice", "ConfigError", "ConfigMapKeyRef", "ConfigMapVolume",
        "Deployment", "Elastic", "EmptyDirVolume", "FerryError", "GangScheduling", "IntUniform", "JobFileError", "LogUniform",
        "ManifestInvalid", "MedianPruning", "Objective", "PVCVolume", "Promotion", "Resources", "RunPolicy",
        "SecretRef", "SecretVolume", "SpecError", "Sweep", "Toleration", "Tracking", "TrainingJob", "Uniform",
        "__version__",
    ],
    "ferry.errors": [
        "ClusterError", "ClusterUnreachable", "ConfigError", "Conflict", "FerryError", "Forbidden", "JobFileError",
        "ManifestInvalid", "ManifestIssue", "NotFound", "NotInstalled", "OptimizationFailed", "PromotionConflict",
        "PromotionRefused", "RegistryError", "Rejected", "SpecError", "Unreachable", "WaitTimeout",
    ],
    "ferry.kube": [
        "CLUSTERSERVINGRUNTIME", "CLUSTERSTORAGECONTAINER", "CONFIGMAP", "INFERENCESERVICE", "POD", "PYTORCHJOB", "SCALEDOBJECT",
        "TRAINJOB", "Cluster", "Condition", "JobState", "Kind", "Progress", "ReplicaCounts", "Retry", "ServiceState",
        "Submitted", "apply_manifests", "check_storage_containers", "delete_job", "failed_replica_logs", "find_job",
        "follow_logs", "job_pods", "job_state", "kind_of", "list_jobs", "plan_submission", "pod_container",
        "pod_restarts", "replica_name", "serves_uri", "service_state", "submit", "tracking_configmap", "wait_for",
    ],
    "ferry.render": [
        "CREDENTIALS_SECRET", "STORAGE_URI_PREFIXES", "Rendered", "ResolvedModel", "build_pytorchjob", "dump_yaml",
        "ferry_env", "render_inferenceservice", "render_pytorchjob", "render_serving_runtime", "render_spec",
        "render_storage_container", "render_trainjob", "write_rendered",
    ],
    "ferry_operator": ["GROUP", "KIND", "PHASES", "PLURAL", "VERSION", "Deps", "Pipeline", "parse", "pipeline_crd",
                       "reconcile", "registry", "run"],
    "ferry.sweep": ["SWEEP_LABEL", "TRIAL_LABEL", "trial_env", "trial_job", "with_trial"],
    "ferry.images": ["COMPONENTS", "Component", "DEFAULT_REGISTRY", "image"],
    "ferry.validate": ["find_crd_dir", "load_manifest_file", "manifest_issues", "validate_manifests"],
    "ferry.runtime": [
        "Checkpointer", "Context", "LocalStorage", "PROGRESS_PREFIX", "REGISTERED_TAG", "ResumeError", "ResumeSource",
        "S3Storage", "SUBMISSION_TAG", "Tracker", "init", "progress", "resolve_resume", "shutdown", "storage_for",
        "submission_dir", "submission_id", "submission_run", "sweep_parent",
    ],
    "ferry.registry": [
        "Fetched", "GateResult", "HistoryEntry", "PromotionResult", "alias_holder", "evaluate_gates", "fetch_model",
        "list_models",
        "model_versions", "promote", "read_history", "resolve_actor", "resolve_model", "rollback",
    ],
    "ferry.gitops": ["commit", "deployment_for", "write_environment"],
    "ferry.serve": ["DynamicBatcher", "InferenceError", "LoadFailed", "LoadedModel", "Metrics", "ModelServer", "TensorInfo", "load_model", "serve"],
    "ferry.optimize": ["Candidate", "Measurement", "OptimizeResult", "PruneOptions", "optimize", "rich_table"],
    "ferry.local": [
        "JobResult", "LocalExecutor", "LocalStore", "Replica", "apply_overrides", "free_port", "operator_env",
        "plan", "run_job", "tracking_env",
    ],
}


@pytest.mark.parametrize("module", list(SURFACE))
def test_public_surface(module):
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(SURFACE[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is in __all__ but missing"


def test_error_tree():
    from ferry import errors

    for name in ("SpecError", "JobFileError", "ConfigError", "ManifestInvalid"):
        assert issubclass(getattr(errors, name), errors.FerryError)
    assert errors.ManifestInvalid.exit_code == 1 and errors.SpecError.exit_code == 2
    assert issubclass(errors.Unreachable, errors.FerryError) and errors.Unreachable.exit_code == 10
    assert errors.PromotionConflict("held").exit_code == 4 and issubclass(errors.PromotionConflict, errors.RegistryError)
    assert errors.RegistryError("down", transient=True).exit_code == 10 and errors.RegistryError("no").exit_code == 2


def test_every_error_code_is_in_the_clis_table():
    """The CLI's one table of exit codes describes every code an error of ferry.errors carries."""
    from ferry import errors
    from ferry.cli._util import EXIT_CODES

    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.FerryError) and isinstance(cls.exit_code, int)}
    codes |= {errors.RegistryError("", transient=True).exit_code, errors.PromotionConflict("").exit_code}
    assert codes <= set(EXIT_CODES), codes - set(EXIT_CODES)
