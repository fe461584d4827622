"""Every command that has ``--json`` prints exactly one JSON document on stdout.

Each runs as a real process (so a log line that structlog, a progress bar or a stray print puts
on stdout is caught, which an in-process runner can hide) against a local test cluster or a
small run of its own. ``batch`` prints JSON lines by design: one object per line is checked.
A command with ``--json`` that has no recipe below fails the first test, so a new one is
covered when it is added.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paxosctl.app import command, walk
from tests.cli.conftest import Cli

# The command line after `paxosctl` (without --json), run in this order. "{tmp}" is a fresh
# folder. Commands that are expected to fail must still print either nothing or one document.
RECIPES: list[tuple[str, list[str]]] = [
    ("put", ["put", "jk", "v1"]),
    ("get", ["get", "jk"]),
    ("cas", ["cas", "jk", "v2", "--expect-value", "v1"]),
    ("scan", ["scan"]),
    ("txn", ["txn"]),
    ("watch", ["watch", "jk", "--rev", "1", "--count", "1"]),
    ("lock", ["lock", "jl", "--ttl", "5", "--", "true"]),
    ("compact", ["compact", "1"]),
    ("lease grant", ["lease", "grant", "60", "--id", "4242"]),
    ("lease keep-alive", ["lease", "keep-alive", "4242", "--once"]),
    ("lease ttl", ["lease", "ttl", "4242", "--keys"]),
    ("lease list", ["lease", "list"]),
    ("lease revoke", ["lease", "revoke", "4242"]),
    ("block", ["block", "a", "b"]),
    ("unblock", ["unblock", "a", "b"]),
    ("blocks", ["blocks"]),
    ("view", ["view", "--as", "a"]),
    ("delete", ["delete", "jk"]),
    ("status", ["status"]),
    ("data", ["data"]),
    ("view_log", ["view_log", "--limit", "5"]),
    ("view-log", ["view-log", "--limit", "5"]),
    ("members", ["members"]),
    ("leader", ["leader"]),
    ("alarm list", ["alarm", "list"]),
    ("alarm disarm", ["alarm", "disarm"]),
    ("leader transfer", ["leader", "transfer"]),
    ("member add", ["member", "add", "9", "127.0.0.1:1"]),
    ("member promote", ["member", "promote", "9", "--timeout-ms", "500"]),
    ("member remove", ["member", "remove", "9"]),
    ("snapshot", ["snapshot"]),
    ("snapshot save", ["snapshot", "save", "{tmp}/backup.pxb"]),
    ("cluster up", ["cluster", "up", "--dir", "{tmp}/c", "--nodes", "1"]),
    ("cluster ps", ["cluster", "ps", "--dir", "{tmp}/c"]),
    ("cluster add-node", ["cluster", "add-node", "--dir", "{tmp}/c"]),
    ("cluster down", ["cluster", "down", "--dir", "{tmp}/c", "--clean"]),
    ("simulate", ["simulate", "--fuzz", "--seeds", "3"]),
    ("bench", ["bench", "--clients", "2", "--duration", "0.5", "--warmup", "0", "--keys", "10"]),
    (
        "bench storage",
        [
            "bench",
            "storage",
            "--dir",
            "{tmp}",
            "--seconds-per-case",
            "0.1",
            "--batches",
            "1",
            "--replay-entries",
            "100",
            "--restart-entries",
            "0",
        ],
    ),
    ("bench transport", ["bench", "transport", "--seconds", "0.5"]),
    ("bench cli", ["bench", "cli", "--runs", "1"]),
    ("bench watch", ["bench", "watch", "--watchers", "10", "--events", "10"]),
    ("bench history", ["bench", "history", "--puts", "200", "--keys", "10", "--rounds", "1"]),
    (
        "bench fanout",
        ["bench", "fanout", "--watchers", "4", "--connections", "2", "--rate", "20"]
        + ["--duration", "1", "--warmup", "0"],
    ),
    (
        "bench bigstate",
        ["bench", "bigstate", "--keys", "50", "--duration", "0.5", "--dir", "{tmp}"]
        + ["--snapshot-every-entries", "20", "--log-retain-entries", "5"],
    ),
    ("drill", ["drill", "--duration", "1", "--faults", "none", "--clients", "1"]),
    ("drill race", ["drill", "race", "--rounds", "1"]),
    ("batch", ["batch", "-"]),
]
# Standard input of each recipe (batch's commands by default).
STDIN = {"txn": 'version("jk") = "0"\n\nput jk v\n\nget jk\n'}
# Commands that print JSON lines until interrupted (no way to end them after one document):
# their JSON lines are read by the tests named here.
STREAMS_UNTIL_INTERRUPTED = {"elect": "tests/cli/test_cli_recipes.py"}
# A learner that never runs cannot catch up: promote refuses it (and must say so in JSON or
# print nothing on stdout).
MAY_FAIL = {"member promote"}


def json_commands() -> set[str]:
    return {
        " ".join(path)
        for path, cmd in walk(command())
        if any("--json" in getattr(p, "opts", ()) for p in cmd.params)
    }


def test_every_json_command_has_a_recipe() -> None:
    assert json_commands() == {name for name, _ in RECIPES} | set(STREAMS_UNTIL_INTERRUPTED)


def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    # --json goes before a "--" (what follows it is another command's, as in `lock -- CMD`).
    cut = args.index("--") if "--" in args else len(args)
    return subprocess.run(
        [sys.executable, "-m", "paxosctl", *args[:cut], "--json", *args[cut:]],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_each_json_output_is_one_document(cli: Cli, tmp_path: Path) -> None:
    del cli  # the module's cluster, found through $PAXOSD_LOCAL_DIR
    problems = []
    for name, args in RECIPES:
        argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
        result = run(argv, stdin=STDIN.get(name, "put b1 x\nget b1\n"))
        if result.returncode != 0 and name not in MAY_FAIL:
            problems.append(f"{name}: exit {result.returncode}: {result.stderr[-500:]}")
            continue
        try:
            if name == "batch":
                lines = result.stdout.splitlines()
                assert len(lines) == 2
                for line in lines:
                    json.loads(line)
            elif result.stdout.strip() or result.returncode == 0:
                json.loads(result.stdout)
        except (ValueError, AssertionError) as e:
            problems.append(f"{name}: not one JSON document ({e}): {result.stdout[:300]!r}")
    assert not problems, "\n".join(problems)


# cluster up with the stderr logging switched off: the old bug, planted back.
PLANTED = """
import sys
import paxosctl.app as a
a.logs_to_stderr = lambda: None
sys.argv = ["paxosctl", *sys.argv[1:]]
try:
    a.main()
finally:
    a.app(["cluster", "down", "--dir", sys.argv[4], "--clean"], standalone_mode=False)
"""


def test_a_log_line_on_stdout_is_caught(tmp_path: Path) -> None:
    # The planted case: with the logs left on stdout, `cluster up --json` is not one document.
    args = ["cluster", "up", "--dir", str(tmp_path / "c"), "--nodes", "1", "--json"]
    result = subprocess.run(
        [sys.executable, "-c", PLANTED, *args], capture_output=True, text=True, timeout=300
    )
    assert "storage_created" in result.stdout
    with pytest.raises(ValueError):
        json.loads(result.stdout)
