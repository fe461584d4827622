"""h11's "Rule 1", checked by code: the core does no I/O, reads no clock, draws no global
randomness. That is what lets the simulator replay any run from a seed."""

from __future__ import annotations

import ast
from pathlib import Path

import paxosd.core

BANNED = {
    "sqlite3",
    "sqlite_utils",
    "socket",
    "time",
    "random",
    "threading",
    "multiprocessing",
    "os",
    "asyncio",
    "select",
    "structlog",
    "datetime",
    "secrets",
    "subprocess",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_import_nothing_that_does_io_or_reads_a_clock() -> None:
    core = Path(paxosd.core.__file__).parent
    files = sorted(core.glob("*.py"))
    assert len(files) >= 5, "the core's modules were not found"
    for f in files:
        bad = _imports(f) & BANNED
        assert not bad, f"{f.name} imports {sorted(bad)}"


def test_the_purity_check_notices_a_banned_import(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import time\nfrom socket import socket\n")
    assert _imports(f) & BANNED == {"time", "socket"}
