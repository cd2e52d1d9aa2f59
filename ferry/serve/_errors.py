"""Every error the model server answers with; each class carries its HTTP status, so this
module is the one error→status table (cf. kserve ``errors.py``): bad input is a 4xx with a
message, never a 500."""

from __future__ import annotations

from ferry.errors import FerryError


class InferenceError(FerryError):
    """Base of the server's request errors; ``status`` is the HTTP code."""

    status = 500


class BadRequest(InferenceError):
    status = 400


class ModelNotFound(InferenceError):
    status = 404


class NotFound(InferenceError):
    status = 404


class MethodNotAllowed(InferenceError):
    status = 405


class PayloadTooLarge(InferenceError):
    status = 413


class NotReady(InferenceError):
    status = 503


class Overloaded(InferenceError):
    status = 503

