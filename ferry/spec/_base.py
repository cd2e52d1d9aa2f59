"""The base of every user-facing spec: immutable, strict about unknown fields, and raising
:class:`~ferry.errors.SpecError` with the field's path instead of pydantic's error object."""

from __future__ import annotations

import difflib
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from ferry.errors import SpecError


def _format_loc(model: str, loc: tuple[Any, ...]) -> str:
    out = model
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in str(part) or "/" in str(part):
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}"
    return out


def _field_names(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid field names at ``loc`` (for 'did you mean' hints on unknown fields)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        cls = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")),
            None,
        )
        if cls is None:
            return []
    return sorted(getattr(cls, "model_fields", {}))


def spec_error(model_cls: type[BaseModel], exc: ValidationError) -> SpecError:
    """Turn pydantic's ValidationError into one SpecError, one line per problem."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = _format_loc(model_cls.__name__, loc)
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, SpecError):
            # A nested spec given as a dict raised its own SpecError ("Resources.cpu: ...");
            # splice its path onto ours so the user sees one path: TrainingJob.resources.cpu.
            for line in str(inner).splitlines():
                head, _, msg = line.partition(": ")
                nested_path = head[len(head.split(".")[0].split("[")[0]):]
                lines.append(f"{where}{nested_path}: {msg}")
            continue
        if err["type"] == "extra_forbidden":
            valid = _field_names(model_cls, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            msg = f"unknown field; {hint}valid fields are: {', '.join(valid)}"
        elif err["type"] == "missing":
            msg = "is required"
        else:
            msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if err["type"] not in ("value_error", "assertion_error") and "input" in err:
                msg += f" (got {err['input']!r})"
        lines.append(f"{where}: {msg}")
    return SpecError("\n".join(lines))


class Spec(BaseModel):
    """Immutable, validated at construction, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise spec_error(type(self), exc) from exc

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated like a new spec (pydantic's ``model_copy`` is not).
        Built from the attribute values, so nested specs stay as they are."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})
