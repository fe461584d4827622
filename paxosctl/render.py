"""Output for people (tables, on a TTY) and for scripts (--json, one stable object)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# Exit codes, documented in `paxosctl --help` and the README.
EXIT_OK = 0
EXIT_FAILED_CHECK = 1  # not found, CAS mismatch, or a simulation/drill found a violation
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_AUTH = 4

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    t = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(x) for x in r))
    stdout.print(t)


def error(message: str) -> None:
    """One line on stderr, never a traceback."""
    stderr.print(f"[red]error:[/red] {message}", markup=True)
