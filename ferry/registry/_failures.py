"""MLflow's failures in Ferry's terms: one :class:`~ferry.errors.RegistryError` that says what
was asked, why it failed, and whether asking again may help (``transient``).

MLflow's client raises ``MlflowException`` for every failure: an answer of the server (its
``error_code``: ``RESOURCE_DOES_NOT_EXIST``, ``INVALID_PARAMETER_VALUE``, ...) and the
failure to get one at all (``INTERNAL_ERROR`` "API request ... failed with exception", once
its own HTTP retries are spent). The server's 5xx and 429, and no answer, are transient; a
refusal of the request is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ferry.errors import FerryError, RegistryError

_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "ABORTED",
                    "DEADLINE_EXCEEDED", "SERVICE_UNDER_MAINTENANCE", "IO_ERROR"}
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def is_transient(exc: BaseException) -> bool:
    """Whether the MLflow request that raised ``exc`` may succeed if sent again."""
    code = getattr(exc, "error_code", None)
    if code is None:  # not an answer of the server: a connection that failed or broke
        return isinstance(exc, (OSError, ConnectionError)) or type(exc).__module__.startswith(("requests", "urllib3"))
    status = getattr(exc, "get_http_status_code", lambda: None)()
    return code in _TRANSIENT_CODES or (isinstance(status, int) and (status >= 500 or status == 429))


def is_missing(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow's answer that the named model, version or alias does not exist."""
    return getattr(exc, "error_code", None) in _MISSING_CODES and "not found" in str(exc).lower()


def registry_error(exc: BaseException, what: str) -> RegistryError:
    """``exc``, raised while doing ``what``, as a RegistryError in one line."""
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    reason = (text[0] if text else type(exc).__name__)[:300]
    transient = is_transient(exc)
    hint = "; MLflow may be down or overloaded, and it is asked again" if transient else ""
    return RegistryError(f"{what}: {reason}{hint}", transient=transient)


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Any failure of MLflow's client inside the block as a RegistryError (Ferry's own errors pass)."""
    try:
        yield
    except FerryError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's client raises more than MlflowException (requests, OSError)
        raise registry_error(exc, what) from exc
