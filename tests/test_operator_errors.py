"""How the operator meets each error: permanent (the pipeline fails once, with the reason) or
transient (retried with backoff, one Warning per episode); and MLflow's failures in Ferry's
terms, where a failure to ask is never read as an answer."""

from __future__ import annotations

import pytest

from ferry.errors import (
    ClusterUnreachable,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    NotInstalled,
    PromotionConflict,
    RegistryError,
    Rejected,
    SpecError,
)


def mlflow_error(code: str, message: str = "boom") -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    return MlflowException(message, error_code=ErrorCode.Value(code))


@pytest.mark.parametrize("error, transient, reason", [
    (SpecError("spec.job.workers: must be >= 1"), False, "InvalidSpec"),
    (Forbidden("forbidden: you may not patch inferenceservices", status=403, reason="Forbidden"), False, "Forbidden"),
    (Rejected("the API server refused PyTorchJob 'x' (Invalid)", status=422, reason="Invalid"), False, "Rejected"),
    (Rejected("reads its tracking URI from Secret 'm'", reason="TrackingFromSecret"), False, "Rejected"),
    (Rejected("exceeded quota q", status=403, reason="QuotaExceeded"), True, "QuotaExceeded"),
    (Conflict("fields are owned by another field manager", status=409, reason="FieldManagerConflict"), False,
     "FieldConflict"),
    (Conflict("the object has been modified", status=409, reason="Conflict"), True, "Conflict"),
    (ClusterUnreachable("cannot reach the Kubernetes API"), True, "ClusterUnavailable"),
    (Forbidden("too many requests", status=429, reason="TooManyRequests"), True, "ClusterUnavailable"),
    (NotFound("ConfigMap 'ferry-mlflow' is missing", status=404, reason="TrackingConfigMissing"), True, "NotFound"),
    (NotInstalled("the kind InferenceService is not installed", status=404), True, "NotInstalled"),
    (RegistryError("reading 'm': connection refused", transient=True), True, "MlflowUnavailable"),
    (RegistryError("m has no version 7"), False, "RegistryRefused"),
    (PromotionConflict("another promotion of m to staging is in progress"), True, "PromotionLocked"),
    (ConfigError("maxErrorRate needs Prometheus"), False, "Refused"),
    (KeyError("status"), True, "InternalError"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_error_is_permanent_or_transient(error: Exception, transient: bool, reason: str) -> None:
    from ferry_operator._worker import classify

    failure = classify(error)
    assert (failure.transient, failure.reason) == (transient, reason)


def test_a_many_line_error_keeps_every_cause_on_one_line() -> None:
    from ferry_operator._worker import classify

    error = Rejected("the API server refused PyTorchJob 'x' (Invalid); fix these fields:\n"
                     "  - spec.a: Required value\n  - spec.b: Invalid value", status=422, reason="Invalid")
    assert classify(error).message == ("the API server refused PyTorchJob 'x' (Invalid); fix these fields: "
                                       "spec.a: Required value; spec.b: Invalid value")


@pytest.mark.parametrize("error, transient", [
    (mlflow_error("INTERNAL_ERROR", "API request to http://m/api failed with exception ConnectionError"), True),
    (mlflow_error("TEMPORARILY_UNAVAILABLE"), True),
    (mlflow_error("REQUEST_LIMIT_EXCEEDED"), True),
    (mlflow_error("RESOURCE_DOES_NOT_EXIST", "Registered Model with name=m not found"), False),
    (mlflow_error("INVALID_PARAMETER_VALUE", "Registered model alias champion not found."), False),
    (mlflow_error("PERMISSION_DENIED"), False),
    (ConnectionRefusedError("refused"), True),
])
def test_mlflow_failures_say_whether_asking_again_may_help(error: Exception, transient: bool) -> None:
    from ferry.registry._failures import mlflow_errors

    with pytest.raises(RegistryError) as caught, mlflow_errors("reading the model"):
        raise error
    assert caught.value.transient is transient
    assert str(caught.value).startswith("reading the model: ")


class Registry:
    """An MlflowClient whose alias lookup fails as ``error`` says."""

    def __init__(self, error: Exception):
        self.error = error

    def get_model_version_by_alias(self, name: str, alias: str) -> None:
        raise self.error


def test_a_missing_alias_is_no_holder_but_a_failure_to_ask_is_an_error() -> None:
    from ferry.registry import alias_holder

    assert alias_holder(Registry(mlflow_error("INVALID_PARAMETER_VALUE", "Registered model alias x not found.")),
                        "m", "x") is None
    with pytest.raises(RegistryError) as caught:
        alias_holder(Registry(mlflow_error("INTERNAL_ERROR", "API request failed with exception ConnectionError")),
                     "m", "x")
    assert caught.value.transient and "which version of m holds 'x'" in str(caught.value)


@pytest.mark.parametrize("env, says", [
    ({"FERRY_OPERATOR_POLL_S": "abc"}, "FERRY_OPERATOR_POLL_S='abc': must be a number of seconds > 0 (default 5)"),
    ({"FERRY_OPERATOR_RESYNC_S": "-3"}, "FERRY_OPERATOR_RESYNC_S='-3': must be a number of seconds > 0 (default 300)"),
    ({"FERRY_OPERATOR_RESYNC_S": "0"}, "FERRY_OPERATOR_RESYNC_S='0': must be a number of seconds > 0"),
    ({"MLFLOW_TRACKING_URI": ""}, "MLFLOW_TRACKING_URI is not set"),
])
def test_bad_operator_settings_are_named_before_anything_connects(ferry_cli, tmp_path, env, says) -> None:
    result = ferry_cli("operator", "run", "-n", "ml", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                                                           "KUBECONFIG": str(tmp_path / "none"), **env})
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
