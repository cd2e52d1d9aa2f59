"""Write a plan's autoscaling values into a deployment file, as a minimal diff.

The file is parsed with :mod:`ast` and edited as text at the nodes' positions: only the values
of ``Autoscaling(...)``'s ``min_replicas``, ``max_replicas``, ``metric`` and ``target`` change (or
the keywords are added, or ``autoscaling=Autoscaling(...)`` and its import when the Deployment
has none); every other byte (comments, layout, quotes, the other keywords) stays as it was.
Where that cannot be done safely (the Deployment not found, several and no name given, its
autoscaling an expression rather than an ``Autoscaling(...)`` call) it refuses, and
:func:`autoscaling_block` gives the text to paste instead.

Positions: ``ast`` gives columns as UTF-8 byte offsets, so the edits are made on the encoded text.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from ferry.errors import ConfigError

__all__ = ["KEYS", "autoscaling_block", "rewrite_autoscaling"]

KEYS = ("min_replicas", "max_replicas", "metric", "target")  # the values a plan sets, in this order
_FIELDS = (*KEYS, "prometheus_url", "scale_up_stabilization_seconds", "scale_down_stabilization_seconds")


def _literal(value: Any, quote: str = '"') -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"an autoscaling value must be a number or a string (got {value!r})")
    if isinstance(value, str):
        text = repr(value)[1:-1]
        if quote == '"':
            text = text.replace("\\'", "'").replace('"', '\\"')
        return f"{quote}{text}{quote}"
    return repr(value)


def _ordered(values: dict[str, Any]) -> list[tuple[str, Any]]:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"Autoscaling has no field(s) {', '.join(unknown)}; its fields are {', '.join(_FIELDS)}")
    return sorted(values.items(), key=lambda kv: _FIELDS.index(kv[0]))


def autoscaling_block(values: dict[str, Any]) -> str:
    """``autoscaling=Autoscaling(min_replicas=..., ...)``: the keyword to paste into a Deployment."""
    return f"autoscaling=Autoscaling({', '.join(f'{k}={_literal(v)}' for k, v in _ordered(values))})"


class _Text:
    """The source as UTF-8 bytes, with (line, byte column) -> offset, and edits applied at the end."""

    def __init__(self, source: str):
        self.data = source.encode("utf-8")
        self.starts = [0]
        for line in self.data.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.edits: list[tuple[int, int, bytes]] = []
        self.newline = "\r\n" if b"\r\n" in self.data else "\n"

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def segment(self, node: ast.AST) -> str:
        return self.data[self.start(node):self.end(node)].decode("utf-8")

    def indent_if_first(self, node: ast.AST) -> str | None:
        """The whitespace before ``node`` on its line, when nothing else precedes it there."""
        before = self.data[self.starts[node.lineno - 1]:self.start(node)]  # type: ignore[attr-defined]
        return before.decode("utf-8") if not before.strip() else None

    def replace(self, start: int, end: int, text: str) -> None:
        self.edits.append((start, end, text.encode("utf-8")))

    def result(self) -> str:
        data = self.data
        for start, end, text in sorted(self.edits, key=lambda e: (e[0], e[1]), reverse=True):
            data = data[:start] + text + data[end:]
        return data.decode("utf-8")


@dataclass
class _Names:
    """The names a file calls Ferry's specs by: ``Deployment``/``Autoscaling`` or their aliases."""

    deployment: set[str]
    autoscaling: set[str]
    star: bool  # ``from ferry import *``: every name is bound

    @classmethod
    def of(cls, tree: ast.Module) -> _Names:
        names = cls({"Deployment"}, {"Autoscaling"}, False)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*":
                        names.star = True
                    elif alias.name == "Deployment":
                        names.deployment.add(alias.asname or alias.name)
                    elif alias.name == "Autoscaling":
                        names.autoscaling.add(alias.asname or alias.name)
        return names


def _calls(func: ast.expr, local: set[str], attr: str) -> bool:
    return (isinstance(func, ast.Name) and func.id in local) or (isinstance(func, ast.Attribute) and func.attr == attr)


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == name), None)


def _name_of(call: ast.Call) -> str | None:
    kw = _keyword(call, "name")
    return kw.value.value if kw and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str) else None


def _find(tree: ast.Module, names: _Names, deployment_name: str | None, path: str, block: str) -> ast.Call:
    found = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and _calls(node.func, names.deployment, "Deployment")]
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    listed = ", ".join(f"{_name_of(c)!r} (line {c.lineno})" if _name_of(c) else f"one at line {c.lineno}" for c in found)
    if not found:
        raise ConfigError(f"{path}: defines no Deployment(...); give --deployment the file that defines the "
                          "Deployment to update")
    if deployment_name is None:
        if len(found) > 1:
            raise ConfigError(f"{path}: defines {len(found)} Deployments ({listed}); name the one to update "
                              "(its name=)")
        return found[0]
    chosen = [c for c in found if _name_of(c) == deployment_name]
    if not chosen:
        raise ConfigError(f"{path}: no Deployment named {deployment_name!r}; it defines {listed}")
    if len(chosen) > 1:
        lines = ", ".join(str(c.lineno) for c in chosen)
        raise ConfigError(f"{path}: {len(chosen)} Deployments are named {deployment_name!r} (lines {lines}); "
                          f"update the one you mean by hand with: {block}")
    return chosen[0]


def _last_argument(call: ast.Call) -> ast.AST | None:
    nodes: list[ast.AST] = [*call.args, *call.keywords]
    return max(nodes, key=lambda n: (n.end_lineno, n.end_col_offset), default=None)  # type: ignore[attr-defined]


def _append(text: _Text, call: ast.Call, pieces: list[str]) -> None:
    """Add keyword ``pieces`` at the end of ``call``'s arguments, laid out like the last one: on
    lines of their own (after the last one's comment, with its trailing comma or none) when it
    has a line of its own, else on its line."""
    last = _last_argument(call)
    if last is None:  # Name() -> Name(a=1, b=2): right after the opening parenthesis
        opening = text.end(call.func)
        paren = text.data.index(b"(", opening)
        text.replace(paren + 1, paren + 1, ", ".join(pieces))
        return
    at = text.end(last)
    indent = text.indent_if_first(last) if last.lineno != call.lineno else None  # type: ignore[attr-defined]
    if indent is None:
        text.replace(at, at, ", " + ", ".join(pieces))
        return
    nl = text.newline
    if call.end_lineno == last.end_lineno:  # the closing parenthesis follows it on its line
        text.replace(at, at, "".join(f",{nl}{indent}{piece}" for piece in pieces))
        return
    next_line = text.offset(last.end_lineno + 1, 0)  # type: ignore[operator]
    trailing = text.data[at:next_line].lstrip().startswith(b",")
    if not trailing:
        text.replace(at, at, ",")
    lines = [f"{indent}{piece}," for piece in pieces]
    if not trailing:
        lines[-1] = lines[-1][:-1]
    text.replace(next_line, next_line, "".join(line + nl for line in lines))


def _ensure_import(text: _Text, tree: ast.Module, names: _Names) -> str:
    """The name to call Autoscaling by where the Deployment is called ``Deployment``; imports it
    beside Deployment when the file does not."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "Autoscaling":
                    return alias.asname or "Autoscaling"
    if names.star:
        return "Autoscaling"
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == "Deployment" for a in node.names):
            after = [a for a in node.names if a.name > "Autoscaling"]
            if after:  # before the first name sorting after it, keeping a sorted list sorted
                anchor = after[0]
                indent = text.indent_if_first(anchor)
                at = text.start(anchor)
                text.replace(at, at, f"Autoscaling,{text.newline}{indent}" if indent is not None else "Autoscaling, ")
            else:
                at = text.end(node.names[-1])
                text.replace(at, at, ", Autoscaling")
            return "Autoscaling"
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    if imports:
        at = text.offset(imports[-1].end_lineno + 1, 0)  # type: ignore[operator]
        text.replace(at, at, f"from ferry import Autoscaling{text.newline}")
    else:
        at = 0
        if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant):
            at = text.offset(tree.body[0].end_lineno + 1, 0)  # type: ignore[operator]  # after the docstring
        text.replace(at, at, f"from ferry import Autoscaling{text.newline}")
    return "Autoscaling"


def rewrite_autoscaling(source: str, deployment_name: str | None, values: dict[str, Any], *,
                        path: str = "<deployment file>") -> str:
    """``source`` with the named Deployment's ``Autoscaling(...)`` set to ``values`` (keyword ->
    value: min_replicas, max_replicas, metric, target), every other byte kept. ``deployment_name``
    may be None when the file defines a single Deployment. Raises :class:`ConfigError` naming
    ``path`` and the fix when the Deployment is not found or ambiguous, or its autoscaling is not
    a literal ``Autoscaling(...)`` call (the message holds :func:`autoscaling_block`)."""
    items = _ordered(values)
    block = autoscaling_block(values)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid Python ({exc.msg}); fix it, or set {block} by hand") from exc
    names = _Names.of(tree)
    deployment = _find(tree, names, deployment_name, path, block)
    label = f"Deployment {_name_of(deployment)!r}" if _name_of(deployment) else f"the Deployment at line {deployment.lineno}"
    text = _Text(source)
    kw = _keyword(deployment, "autoscaling")
    if kw is None:
        if any(k.arg is None for k in deployment.keywords):  # Deployment(**settings) may hold it
            raise ConfigError(f"{path}:{deployment.lineno}: {label} takes **keywords, which may set autoscaling; "
                              f"set it there, or add this keyword by hand: {block}")
        if isinstance(deployment.func, ast.Attribute):  # ferry.Deployment(...) -> ferry.Autoscaling(...)
            callee = f"{text.segment(deployment.func.value)}.Autoscaling"
        else:
            callee = _ensure_import(text, tree, names)
        inner = ", ".join(f"{k}={_literal(v)}" for k, v in items)
        _append(text, deployment, [f"autoscaling={callee}({inner})"])
        return _checked(text.result(), path)
    call = kw.value
    if not (isinstance(call, ast.Call) and _calls(call.func, names.autoscaling, "Autoscaling")):
        raise ConfigError(f"{path}:{call.lineno}: {label} sets autoscaling={text.segment(call)}, not a literal "
                          f"Autoscaling(...) call, which cannot be rewritten safely; set it by hand: {block}")
    if any(k.arg is None for k in call.keywords) or call.args:
        raise ConfigError(f"{path}:{call.lineno}: {label}'s Autoscaling(...) takes **keywords or positional "
                          f"arguments, which may set the same fields; set them by hand: {block}")
    missing: list[str] = []
    for key, value in items:
        existing = _keyword(call, key)
        if existing is None:
            missing.append(f"{key}={_literal(value)}")
            continue
        old = text.segment(existing.value)
        quote = old[-1] if isinstance(value, str) and old[-1:] in ("'", '"') else '"'
        new = _literal(value, quote)
        if isinstance(existing.value, ast.Constant) and existing.value.value == value and type(existing.value.value) is type(value):
            continue  # already the value: not even a quote changes
        text.replace(text.start(existing.value), text.end(existing.value), new)
    if missing:
        _append(text, call, missing)
    return _checked(text.result(), path)


def _checked(result: str, path: str) -> str:
    try:
        ast.parse(result)
    except SyntaxError as exc:  # pragma: no cover - an edit that breaks the file is Ferry's bug
        raise ConfigError(f"{path}: rewriting its autoscaling would break the file ({exc.msg}); "
                          "set it by hand") from exc
    return result
