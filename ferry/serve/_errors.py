"""Every error the model server answers with; each class carries its HTTP status and its gRPC
status code, so this module is the one error→status table (cf. kserve ``errors.py``): bad
input is a 4xx / INVALID_ARGUMENT with a message, never a 500 / INTERNAL."""

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

