"""paxosctl put/get/delete/cas/scan against a real 3-node cluster: results, JSON shapes, bytes
that are not text, and the exit codes of every failure (1 not found / CAS mismatch, 2 usage,
3 no quorum, 4 wrong key)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli


def plain(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without its header and revisions (tests/cli/test_cli_revisions.py checks
    those): what these tests compare exactly."""
    revisions = ("header", "revision", "create_revision", "mod_revision", "lease")
    return {k: v for k, v in answer.items() if k not in revisions}


def test_put_then_get_returns_the_value_and_versions_count_up(cli: Cli) -> None:
    assert plain(cli.json("put", "kv/a", "one")) == {"key": "kv/a", "version": 1}
    assert "OK (version 2)" in cli.ok("put", "kv/a", "two").stdout
    assert cli.ok("get", "kv/a").stdout == "two\n"
    assert plain(cli.json("get", "kv/a")) == {
        "key": "kv/a",
        "value": "two",
        "value_encoding": "utf-8",
        "version": 2,
        "stale": False,
        "node_id": None,
        "applied_index": None,
    }


def test_get_of_an_absent_key_exits_1_with_one_line_on_stderr(cli: Cli) -> None:
    result = cli.run("get", "kv/absent")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "not found" in result.stderr and "Traceback" not in result.stderr


def test_stale_get_reads_one_node_and_says_so(cli: Cli) -> None:
    cli.ok("put", "kv/stale", "v")
    # A stale read may come from a follower that has not applied the put yet (that is what
    # --stale means), so the first answers may be "not found"; the node must catch up within a
    # few heartbeats, and every answer must say where it was read.
    deadline = time.monotonic() + 10
    while True:
        result = cli.run("get", "kv/stale", "--stale")
        assert "stale read from node" in result.stderr or "not found" in result.stderr
        if result.exit_code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert result.exit_code == 0, result.output
    assert result.stdout == "v\n"
    assert "stale read from node" in result.stderr
    stale_json = cli.json("get", "kv/stale", "--stale")
    assert stale_json["stale"] is True
    assert stale_json["node_id"] in (1, 2, 3) and stale_json["applied_index"] > 0


def test_values_that_are_not_utf8_round_trip_and_print_safely(cli: Cli) -> None:
    raw = b"\xff\xfe\x00ok"
    # argv as Python hands it over: bytes that are not UTF-8 arrive surrogate-escaped.
    cli.ok("put", "kv/bin", os.fsdecode(raw.replace(b"\x00", b"")))
    got = cli.json("get", "kv/bin")
    assert got["value_encoding"] == "base64"
    assert base64.b64decode(got["value"]) == b"\xff\xfeok"
    assert cli.ok("get", "kv/bin").stdout == "\\xff\\xfeok\n"
    assert cli.ok("get", "kv/bin", "--raw").stdout_bytes == b"\xff\xfeok"


def test_terminal_control_characters_in_values_are_escaped(cli: Cli) -> None:
    cli.ok("put", "kv/ansi", "a\x1b[31mred")
    out = cli.ok("get", "kv/ansi").stdout
    assert "\x1b" not in out
    assert out == "a\\x1b[31mred\n"
    assert cli.json("get", "kv/ansi")["value"] == "a\x1b[31mred"


def test_delete_removes_the_key_and_a_second_delete_exits_1(cli: Cli) -> None:
    cli.ok("put", "kv/del", "x")
    deleted = plain(cli.json("delete", "kv/del"))
    assert deleted == {"key": "kv/del", "prior_version": 1, "deleted": 1}
    assert cli.run("get", "kv/del").exit_code == 1
    again = cli.run("delete", "kv/del")
    assert again.exit_code == 1 and "not found" in again.stderr


def test_cas_swaps_on_a_matching_value_or_version(cli: Cli) -> None:
    cli.ok("put", "kv/cas", "1")
    assert cli.json("cas", "kv/cas", "2", "--expect-value", "1") == {"key": "kv/cas", "version": 2}
    assert cli.json("cas", "kv/cas", "3", "--expect-version", "2")["version"] == 3
    assert cli.json("cas", "kv/new", "x", "--expect-version", "0")["version"] == 1
    assert cli.ok("get", "kv/cas").stdout == "3\n"


def test_cas_mismatch_exits_1_and_changes_nothing(cli: Cli) -> None:
    cli.ok("put", "kv/casm", "a")
    by_value = cli.run("cas", "kv/casm", "b", "--expect-value", "zzz")
    assert by_value.exit_code == 1
    # The current value and version, rendered as get/put print them.
    assert "cas on key 'kv/casm': mismatch: current version 1, value a" in by_value.stderr
    assert cli.run("cas", "kv/casm", "b", "--expect-version", "7").exit_code == 1
    assert cli.ok("get", "kv/casm").stdout == "a\n"


def test_cas_needs_exactly_one_expectation(cli: Cli) -> None:
    neither = cli.run("cas", "kv/x", "b")
    both = cli.run("cas", "kv/x", "b", "--expect-value", "a", "--expect-version", "1")
    assert neither.exit_code == both.exit_code == 2
    assert "exactly one" in neither.stderr


def test_scan_lists_keys_in_order_with_prefix_limit_and_more(cli: Cli) -> None:
    for k in ("c", "a", "b"):
        cli.ok("put", f"scan/{k}", k.upper())
    page = cli.json("scan", "--prefix", "scan/", "--limit", "2")
    del page["header"]
    page["rows"] = [plain(r) for r in page["rows"]]
    assert page == {
        "rows": [
            {"key": "scan/a", "version": 1, "value": "A", "value_encoding": "utf-8"},
            {"key": "scan/b", "version": 1, "value": "B", "value_encoding": "utf-8"},
        ],
        "more": True,
    }
    assert [r["key"] for r in cli.json("scan", "--prefix", "scan/")["rows"]] == [
        "scan/a",
        "scan/b",
        "scan/c",
    ]
    table = cli.ok("scan", "--prefix", "scan/", "--limit", "2")
    assert "scan/a" in table.stdout and "scan/c" not in table.stdout
    assert "more keys match" in table.stderr


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli.run("scan", "--limit", "0").exit_code == 2
    assert cli.run("put", "only-a-key").exit_code == 2
    bad_endpoint = cli.run("get", "k", "--endpoints", "no-port-here")
    assert bad_endpoint.exit_code == 2 and "host:port" in bad_endpoint.stderr
    empty_key = cli.run("put", "", "v")
    assert empty_key.exit_code == 2 and "key is empty" in empty_key.stderr


def test_a_wrong_client_key_exits_4(cli: Cli, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text(secrets.token_hex(32) + "\n")
    wrong.chmod(0o600)  # a private key, only the wrong one
    for args in (("put", "kv/k", "v"), ("get", "kv/k"), ("status",)):
        result = cli.run(*args, "--key-file", str(wrong))
        assert result.exit_code == 4, (args, result.output)
        assert "authentication failed" in result.stderr
        assert result.stderr.count("\n") == 1


def test_writes_exit_3_without_a_quorum_and_stale_reads_still_answer(cli: Cli) -> None:
    cli.ok("put", "kv/q", "before")
    leader = cli.json("leader")["leader"]
    followers = [k for k in cli.cluster.node_ids() if k != leader]
    for k in followers:
        cli.cluster.kill(k)
    try:
        result = cli.run("put", "kv/q", "after", "--timeout-ms", "800")
        assert result.exit_code == 3, result.output
        assert "no quorum answered within 800 ms" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
        assert cli.run("get", "kv/q", "--timeout-ms", "800").exit_code == 3
        stale = cli.ok("get", "kv/q", "--stale", "--timeout-ms", "800")
        assert stale.stdout == "before\n"
        # The leader accepted the put but could not decide it: "data" shows it open.
        open_slots = cli.json("data", "--node", str(leader))["accepted_not_decided"]
        commands = [c["command"] for e in open_slots for c in e["commands"]]
        assert "put kv/q after" in commands
        assert all(e["state"] == "accepted" and e["ballot"] for e in open_slots)
    finally:
        cli.restart(*followers)


def test_json_output_is_one_parsable_object(cli: Cli) -> None:
    cli.ok("put", "kv/j", "v")
    out = cli.ok("get", "kv/j", "--json").stdout
    assert json.loads(out)["value"] == "v"
    assert out.startswith("{") and out.rstrip().endswith("}")
