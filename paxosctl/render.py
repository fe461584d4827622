"""Output for people (tables, on a TTY) and for scripts (--json, one stable object).

Every byte paxosctl writes for its user goes through this module, so the rules live in one
place: ``--json`` is one document on stdout (``emit_json``; a stream writes ``json_line``s),
errors are one line on stderr (``error``, ``error_text``), remarks go to stderr (``note``)
and never pollute stdout. Two families of text output, by cost:

- ``line``, ``note``, ``text_table``, ``raw``: for the fast data commands (``get``, ``put``,
  ...). Lines are written as they are, without loading rich; a table loads rich on use.
  Values are literal: they never become markup.
- ``rich_line``, ``rich_note``, ``table``: for the long-running commands (simulate, drill,
  bench) that already show rich progress bars on the same consoles, so lines and bars do
  not tear each other. Their progress bars take ``stderr`` (the console) as theirs.
"""

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


# A terminal narrower than this still gets whole rows when output goes to a pipe or a file.
PIPE_WIDTH_COLUMNS = 200


def emit_json(obj: Any) -> None:
    """The one JSON document of a ``--json`` command, on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def json_line(obj: Any, *, compact: bool = True, flush: bool = False) -> None:
    """One JSON object on one line of stdout: a stream of documents (``batch --json``,
    ``view-log --follow --json``). ``flush`` for a stream a reader follows live."""
    separators = (",", ":") if compact else None
    sys.stdout.write(json.dumps(obj, separators=separators, default=str) + "\n")
    if flush:
        sys.stdout.flush()


def line(text: str, *, flush: bool = False) -> None:
    """One line for people on stdout, written literally (values never become markup). The
    text is already safe (paxosctl.kv.show/show_text escaped its control characters), so
    it is written as it is, without loading rich for it. ``flush`` for a stream a reader
    follows live (``watch``, ``elect``) or a line it waits for (``lock``'s key)."""
    sys.stdout.write(text + "\n")
    if flush:
        sys.stdout.flush()


def note(text: str) -> None:
    """A remark that must not pollute stdout (e.g. "this read may be stale"), on stderr."""
    sys.stderr.write(text + "\n")


def raw(data: bytes) -> None:
    """Bytes exactly as stored (``get --raw``): after any text already buffered."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def rich_line(text: str, *, markup: bool, end: str = "\n", style: str | None = None) -> None:
    """A line on stdout through the rich console (see the module docstring for when)."""
    _get("stdout").print(text, markup=markup, end=end, style=style)


def rich_note(text: str, *, markup: bool, end: str = "\n", style: str | None = None) -> None:
    """A line on stderr through the rich console, e.g. progress while a bar may be live."""
    _get("stderr").print(text, markup=markup, end=end, style=style)


def stderr_is_terminal() -> bool:
    """Whether progress may be drawn live (a bar) rather than as occasional lines."""
    return bool(_get("stderr").is_terminal)


def _get(name: str) -> Console:
    """The console as the module holds it now (made, or replaced by a caller, e.g. a test)."""
    console = globals().get(name)
    return console if console is not None else __getattr__(name)  # type: ignore[no-any-return]


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A table on the stdout console of the long-running commands (cells may hold markup)."""
    from rich.table import Table

    t = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(x) for x in r))
    _get("stdout").print(t)


def text_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    header: bool = True,
) -> None:
    """A table of the data commands: cells are literal text, long cells fold, and on a pipe
    rows are PIPE_WIDTH_COLUMNS wide rather than cut at 80."""
    from rich.table import Table
    from rich.text import Text

    t = Table(
        title=title,
        show_edge=False,
        show_header=header,
        header_style="bold",
        title_justify="left",
    )
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(Text(str(x)) for x in r))
    _table_console().print(t)


def _table_console() -> Console:
    from rich.console import Console

    # Made per call: stdout may be replaced (tests, redirection) after import.
    tty = sys.stdout.isatty()
    return Console(
        file=sys.stdout,
        highlight=False,
        soft_wrap=not tty,
        width=None if tty else PIPE_WIDTH_COLUMNS,
    )


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
