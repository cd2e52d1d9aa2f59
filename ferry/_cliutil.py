"""What every CLI command shares: consoles and the error-to-exit-code wrapper."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ferry.errors import FerryError

F = TypeVar("F", bound=Callable[..., Any])


def _stdout() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail_cleanly(func: F) -> F:
    """Print a FerryError as one clear message (no traceback) and exit with its code:
    2 for bad input, 1 for manifests that fail validation or a refused promotion."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FerryError as exc:
            from rich.markup import escape

            _stderr().print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
