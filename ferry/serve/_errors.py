"""Every error the model server answers with; each class carries its HTTP status and its gRPC
status code, so this module is the one error→status table (cf. kserve ``errors.py``): bad
input is a 4xx / INVALID_ARGUMENT with a message, never a 500 / INTERNAL. Besides them,
:class:`LoadFailed`: the model could not be loaded, which ends the server."""

from __future__ import annotations

from ferry.errors import FerryError


class InferenceError(FerryError):
    """Base of the server's request errors; ``status`` is the HTTP code."""

    status = 500
    grpc_code = "INTERNAL"


class BadRequest(InferenceError):
    status = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(InferenceError):
    status = 404
    grpc_code = "NOT_FOUND"


class NotFound(InferenceError):
    status = 404
    grpc_code = "UNIMPLEMENTED"


class MethodNotAllowed(InferenceError):
    status = 405
    grpc_code = "UNIMPLEMENTED"


class PayloadTooLarge(InferenceError):
    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class NotReady(InferenceError):
    status = 503
    grpc_code = "UNAVAILABLE"


class Overloaded(InferenceError):
    status = 503
    grpc_code = "UNAVAILABLE"


class LoadFailed(FerryError):
    """The model could not be loaded or warmed up: the server stops and ``ferry serve`` exits
    with this message, one line, and ``exit_code`` (the cause's when it is one of Ferry's
    errors, e.g. 10 for MLflow out of reach; else 2, the model given is not servable)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def of(cls, name: str, uri: str, exc: BaseException) -> LoadFailed:
        reason = " ".join(str(exc).split())
        if not isinstance(exc, FerryError):
            reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        return cls(f"model {name!r} ({uri}) cannot be loaded: {reason}",
                   exc.exit_code if isinstance(exc, FerryError) else 2)
