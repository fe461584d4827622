"""``paxosctl batch`` and the global options, against a real local cluster.

batch: one result per line in input order, JSON lines, stop at the first error with that
error's exit code, --keep-going, a file argument, and the ordering promise (a read sees every
write before it, even when writes are sent ahead). Global options: accepted before and after
the command name, the one after wins, env vars still work, and a global option given to a
command that has no such option is a usage error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cli


def batch(cli: Cli, text: str, *args: str) -> Any:
    return cli.runner.invoke(cli_app(), ["batch", "-", *args], input=text)


def cli_app() -> Any:
    from paxosctl.app import app

    return app


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_batch_prints_one_result_per_line_in_order(cli: Cli) -> None:
    text = "put b1 one\n# a comment\n\nput b2 'two words'\nget b2\ndelete b1\nblock s1 s2\n"
    result = batch(cli, text)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "OK (version 1)",
        "OK (version 1)",
        "two words",
        "OK (deleted version 1)",
        "OK: s1 now blocks s2",
    ]


def test_batch_json_is_one_object_per_line_with_line_numbers(cli: Cli) -> None:
    result = batch(cli, "put j1 a\n\nget j1\nscan --prefix j\n", "--json")
    assert result.exit_code == 0, result.output
    rows = json_lines(result.stdout)
    assert [r["line"] for r in rows] == [1, 3, 4]
    revision = rows[0]["result"].pop("revision")
    assert rows[0] == {"line": 1, "command": "put j1 a", "result": {"key": "j1", "version": 1}}
    assert rows[1]["result"]["mod_revision"] == revision
    assert rows[1]["result"]["value"] == "a"
    assert [r["key"] for r in rows[2]["result"]["rows"]] == ["j1"]


def test_batch_stops_at_the_first_error_with_its_exit_code(cli: Cli) -> None:
    result = batch(cli, "put e1 x\nget e-missing\nput e2 y\n", "--json")
    assert result.exit_code == 1, result.output
    rows = json_lines(result.stdout)
    assert [r["line"] for r in rows] == [1, 2]
    assert rows[1]["exit_code"] == 1 and "not found" in rows[1]["error"]
    assert "line 2:" in result.stderr
    # Line 3 never ran.
    assert cli.run("get", "e2").exit_code == 1


def test_batch_usage_error_in_a_line_exits_2(cli: Cli) -> None:
    result = batch(cli, "put u1 x\nput u2\n")
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == ["OK (version 1)"]
    assert "line 2:" in result.stderr


def test_batch_keep_going_runs_every_line_and_exits_with_the_first_code(cli: Cli) -> None:
    text = "get k-missing\nput kg1 x\nnosuchcommand a\nget kg1\n"
    result = batch(cli, text, "--keep-going", "--json")
    assert result.exit_code == 1, result.output
    rows = json_lines(result.stdout)
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["exit_code"] == 1
    assert rows[2]["exit_code"] == 2
    assert rows[3]["result"]["value"] == "x"


def test_batch_reads_a_file(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "cmds.txt"
    f.write_text("put f1 from-file\nget f1\n")
    result = cli.runner.invoke(cli_app(), ["batch", str(f)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["OK (version 1)", "from-file"]
    missing = cli.runner.invoke(cli_app(), ["batch", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr


@pytest.mark.parametrize("in_flight", ["1", "64"])
def test_batch_keeps_the_order_of_writes_to_one_key(cli: Cli, in_flight: str) -> None:
    # Many writes to a few keys, sent ahead where they are independent: the final values and
    # every read in between must be those of the input order.
    lines = []
    expected: dict[str, str] = {}
    reads: list[str] = []
    for i in range(300):
        key = f"o{in_flight}-{i % 7}"
        lines.append(f"put {key} v{i}")
        expected[key] = f"v{i}"
        if i % 50 == 49:
            lines.append(f"get {key}")
            reads.append(f"v{i}")
    result = batch(cli, "\n".join(lines) + "\n", "--in-flight", in_flight, "--json")
    assert result.exit_code == 0, result.output
    rows = json_lines(result.stdout)
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 1))
    got_reads = [r["result"]["value"] for r in rows if r["command"].startswith("get ")]
    assert got_reads == reads
    for key, value in expected.items():
        assert cli.json("get", key)["value"] == value


def test_batch_refuses_per_line_connection_options(cli: Cli) -> None:
    result = batch(cli, "put p1 x --endpoints 127.0.0.1:1\n")
    assert result.exit_code == 2
    assert "whole batch" in result.stderr


def test_global_options_before_the_command(cli: Cli) -> None:
    cli.ok("put", "g1", "v1")
    endpoints = ",".join(cli.cluster.endpoint_strings())
    before = cli.run("--json", "--endpoints", endpoints, "--timeout-ms", "3000", "get", "g1")
    assert before.exit_code == 0, before.output
    assert json.loads(before.stdout)["value"] == "v1"
    after = cli.run("get", "g1", "--json", "--endpoints", endpoints)
    assert json.loads(after.stdout) == json.loads(before.stdout)
    status = cli.run("--endpoints", endpoints, "--json", "status")
    assert status.exit_code == 0, status.output
    assert "nodes" in json.loads(status.stdout)


def test_the_option_after_the_command_wins(cli: Cli) -> None:
    cli.ok("put", "g2", "v2")
    # A bad endpoint before the name, a good one after: the good one is used.
    endpoints = ",".join(cli.cluster.endpoint_strings())
    result = cli.run("--endpoints", "127.0.0.1:1", "get", "g2", "--endpoints", endpoints)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "v2"
    # And the one before is really used when nothing is given after.
    bad = cli.run("--endpoints", "127.0.0.1:1", "--timeout-ms", "200", "get", "g2")
    assert bad.exit_code == 3, bad.output


def test_global_site_before_a_write(cli: Cli) -> None:
    cli.ok("--site", "lisbon", "put", "g3", "post")
    posts = cli.json("view", "--as", "anyone")["posts"]
    assert {"site": "lisbon", "key": "g3"}.items() <= next(
        p for p in posts if p["key"] == "g3"
    ).items()


def test_env_vars_still_work(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAXOSCTL_ENDPOINTS", "127.0.0.1:1")
    result = cli.run("--timeout-ms", "200", "get", "anything")
    assert result.exit_code == 3, result.output


def test_a_global_option_a_command_does_not_take_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("--endpoints", "127.0.0.1:1", "simulate", "--list")
    assert result.exit_code == 2
    assert "does not apply" in result.output
    # blocks --site is a filter, not the origin site: the global --site does not become it.
    filtered = cli.run("--site", "paris", "blocks")
    assert filtered.exit_code == 2
