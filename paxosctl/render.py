"""Output for people (tables, on a TTY) and for scripts (--json, one stable object)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    stdout: Console
    stderr: Console

# Exit codes, documented in `paxosctl --help` and the README.
EXIT_OK = 0
EXIT_FAILED_CHECK = 1  # not found, CAS mismatch, or a simulation/drill found a violation
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_AUTH = 4


def __getattr__(name: str) -> Any:
    """``render.stdout`` / ``render.stderr``: rich consoles, made on first use, because
    importing rich.console is a good part of a plain command's start-up and most commands
    print a line or a JSON document without it."""
    if name not in ("stdout", "stderr"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    console = Console(stderr=name == "stderr", highlight=False, soft_wrap=True)
    globals()[name] = console
    return console


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _get(name: str) -> Console:
    """The console as the module holds it now (made, or replaced by a caller, e.g. a test)."""
    console = globals().get(name)
    return console if console is not None else __getattr__(name)  # type: ignore[no-any-return]


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from rich.table import Table

    t = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(x) for x in r))
    _get("stdout").print(t)


def error(message: str) -> None:
    """One line on stderr, never a traceback."""
    _get("stderr").print(f"[red]error:[/red] {message}", markup=True)


def error_text(message: str) -> None:
    """As ``error``, for a message that is plain text (never markup): on a terminal in red
    through rich, else written as it is, so a script's failing command does not load rich."""
    if sys.stderr.isatty():
        from rich.markup import escape

        error(escape(message))
    else:
        sys.stderr.write(f"error: {message}\n")
