"""Revisions, history, compaction and transactions through paxosctl, against a real 3-node
cluster: every flag (--rev, --prev-kv, delete --prefix), the header of each answer, compact
and its errors, txn in etcdctl's format (both branches, bad input, refused and oversized
transactions), cas as a transaction, and status's revisions."""

from __future__ import annotations

import json
import re
from typing import Any

from paxosd.statemachine.commands import TXN_OPS_MAX
from tests.cli.conftest import Cli
from tests.waiting import wait_for


def txn(cli: Cli, text: str, *args: str) -> Any:
    return cli.runner.invoke(cli_app(), ["txn", *args], input=text)


def cli_app() -> object:
    from paxosctl.app import app

    return app


def current_revision(cli: Cli) -> int:
    return int(cli.json("scan", "--prefix", "no-such-prefix/")["header"]["revision"])


def test_every_answer_carries_a_header_and_writes_move_the_revision_by_one(cli: Cli) -> None:
    first = cli.json("put", "rev/a", "1")
    second = cli.json("put", "rev/b", "2")
    assert second["revision"] == first["revision"] + 1
    header = second["header"]
    assert header["revision"] == second["revision"]
    assert header["node"] in cli.cluster.node_ids()
    assert header["leader"] in cli.cluster.node_ids()
    assert re.fullmatch(r"\d+\.\d+", header["ballot"])
    got = cli.json("get", "rev/a")
    assert got["header"]["revision"] >= second["revision"]
    assert (got["create_revision"], got["mod_revision"], got["version"], got["lease"]) == (
        first["revision"],
        first["revision"],
        1,
        0,
    )
    # A stale read's answer has the header of the node that answered it.
    stale = cli.json("get", "rev/a", "--stale")
    assert stale["header"]["node"] == stale["node_id"]
    # A read and a failed delete change nothing: the revision stays.
    before = current_revision(cli)
    assert cli.run("delete", "rev/absent").exit_code == 1
    assert current_revision(cli) == before


def test_get_and_scan_read_the_past_with_rev(cli: Cli) -> None:
    one = cli.json("put", "past/k", "one")["revision"]
    two = cli.json("put", "past/k", "two")["revision"]
    cli.ok("put", "past/later", "x")
    assert cli.ok("get", "past/k", "--rev", str(one)).stdout == "one\n"
    old = cli.json("get", "past/k", "--rev", str(one))
    assert (old["value"], old["version"], old["mod_revision"]) == ("one", 1, one)
    assert cli.json("get", "past/k")["value"] == "two"
    assert cli.json("get", "past/k")["create_revision"] == one
    assert cli.json("get", "past/k")["mod_revision"] == two
    before = cli.run("get", "past/k", "--rev", str(one - 1))
    assert before.exit_code == 1 and f"not found at revision {one - 1}" in before.stderr
    rows = cli.json("scan", "--prefix", "past/", "--rev", str(two))["rows"]
    assert [(r["key"], r["value"], r["mod_revision"]) for r in rows] == [("past/k", "two", two)]
    assert [r["key"] for r in cli.json("scan", "--prefix", "past/")["rows"]] == [
        "past/k",
        "past/later",
    ]


def test_a_future_revision_exits_1_with_one_clear_line(cli: Cli) -> None:
    now = current_revision(cli)
    for args in (("get", "past/k"), ("scan", "--prefix", "past/")):
        result = cli.run(*args, "--rev", str(now + 1000))
        assert result.exit_code == 1, result.output
        assert result.stdout == "" and result.stderr.count("\n") == 1
        assert f"revision {now + 1000} is a future revision" in result.stderr


def test_put_prev_kv_shows_the_key_as_it_was(cli: Cli) -> None:
    new = cli.json("put", "prev/k", "first", "--prev-kv")
    assert new["prev_kv"] is None
    again = cli.json("put", "prev/k", "second", "--prev-kv")
    assert again["prev_kv"]["value"] == "first"
    assert again["prev_kv"]["mod_revision"] == new["revision"]
    assert again["prev_kv"]["version"] == 1
    plain = cli.ok("put", "prev/k", "third", "--prev-kv").stdout
    assert plain == "OK (version 3)\nprev/k\nsecond\n"


def test_delete_prefix_removes_every_match_at_one_revision(cli: Cli) -> None:
    for k in ("a", "b", "c"):
        cli.ok("put", f"gone/{k}", k)
    cli.ok("put", "gonex", "not under gone/")
    out = cli.json("delete", "gone/", "--prefix", "--prev-kv")
    assert out["deleted"] == 3
    assert [kv["key"] for kv in out["prev_kvs"]] == ["gone/a", "gone/b", "gone/c"]
    assert [kv["value"] for kv in out["prev_kvs"]] == ["a", "b", "c"]
    assert out["header"]["revision"] == out["revision"]
    assert cli.json("scan", "--prefix", "gone/")["rows"] == []
    assert cli.ok("get", "gonex").stdout == "not under gone/\n"
    # All three went at one revision: the state just before it still has them all.
    assert (
        len(cli.json("scan", "--prefix", "gone/", "--rev", str(out["revision"] - 1))["rows"]) == 3
    )
    # Nothing left to delete is not an error for a prefix (as etcdctl), unlike a key.
    again = cli.ok("delete", "gone/", "--prefix")
    assert again.stdout == "OK (deleted 0 keys)\n"
    single = cli.json("delete", "gonex", "--prev-kv")
    assert single["prior_version"] == 1 and single["prev_kvs"][0]["value"] == "not under gone/"


def test_txn_takes_the_success_branch_and_prints_like_etcdctl(cli: Cli) -> None:
    created = cli.json("put", "tx/key1", "v1")["revision"]
    script = 'value("tx/key1") = "v1"\n\nput tx/key1 "v 2"\nget tx/key1\n\nget tx/key1\n\n'
    result = txn(cli, script)
    assert result.exit_code == 0, result.output
    assert result.stdout == "SUCCESS\n\nOK (version 2)\n\ntx/key1\nv 2\n"
    # The same compare fails now: the failure branch runs.
    out = json.loads(txn(cli, script, "--json").stdout)
    assert out["succeeded"] is False
    assert out["responses"] == [
        {
            "op": "get",
            "key": "tx/key1",
            "kvs": [
                {
                    "key": "tx/key1",
                    "value": "v 2",
                    "value_encoding": "utf-8",
                    "create_revision": created,
                    "mod_revision": out["revision"],
                    "version": 2,
                    "lease": 0,
                }
            ],
        }
    ]
    assert out["header"]["revision"] == out["revision"]


def test_txn_writes_of_one_branch_share_one_revision(cli: Cli) -> None:
    script = 'version("tx/new") = "0"\n\nput tx/new a\nput tx/other b\ndel tx/key1\n\n\n'
    out = json.loads(txn(cli, script, "--json").stdout)
    assert out["succeeded"] is True
    revisions = {r["revision"] for r in out["responses"] if r["op"] == "put"}
    assert revisions == {out["revision"]}
    assert out["responses"][2] == {"op": "delete", "key": "tx/key1", "prefix": False, "deleted": 1}
    assert cli.json("get", "tx/new")["mod_revision"] == cli.json("get", "tx/other")["mod_revision"]


def test_bad_txn_input_exits_2_naming_the_line_before_anything_is_sent(cli: Cli) -> None:
    before = current_revision(cli)
    bad = txn(cli, 'mod("k") > "0"\n\nput k\n')
    assert bad.exit_code == 2
    assert bad.stdout == "" and bad.stderr.count("\n") == 1
    assert "line 3: put takes a key and a value" in bad.stderr
    too_many = txn(cli, "\n" + "put tx/k v\n" * (TXN_OPS_MAX + 1))
    assert too_many.exit_code == 2 and "too many success requests" in too_many.stderr
    too_big = txn(cli, "\n" + "".join(f"put tx/big{i} {'x' * 20_000}\n" for i in range(60)))
    assert too_big.exit_code == 2 and "over 1048576" in too_big.stderr
    assert current_revision(cli) == before


def test_a_branch_writing_one_key_twice_is_refused_and_changes_nothing(cli: Cli) -> None:
    before = current_revision(cli)
    refused = txn(cli, "\nput tx/dup 1\nput tx/dup 2\n\n")
    assert refused.exit_code == 2, refused.output
    assert "transaction refused" in refused.stderr and refused.stderr.count("\n") == 1
    assert cli.run("get", "tx/dup").exit_code == 1
    assert current_revision(cli) == before


def test_cas_runs_as_a_transaction_with_unchanged_output(cli: Cli) -> None:
    cli.ok("put", "tx/cas", "1")
    assert cli.json("cas", "tx/cas", "2", "--expect-value", "1") == {"key": "tx/cas", "version": 2}
    miss = cli.run("cas", "tx/cas", "3", "--expect-version", "7")
    assert miss.exit_code == 1
    assert "cas on key 'tx/cas': mismatch: current version 2, value 2" in miss.stderr
    absent = cli.run("cas", "tx/cas-absent", "3", "--expect-value", "x")
    assert absent.exit_code == 1 and "mismatch: the key is absent" in absent.stderr
    # In the log it is a transaction.
    decided = max(n["decided_index"] for n in cli.json("status")["nodes"] if "error" not in n)
    page = cli.json("view_log", "--from", str(max(1, decided - 20)), "--limit", "100")
    commands = [c["command"] for e in page["entries"] for c in e["commands"]]
    assert any(c.startswith("txn if value(tx/cas) = 1 then put tx/cas 2") for c in commands)


def test_compact_forgets_the_past_but_keeps_the_compaction_point(cli: Cli) -> None:
    old = cli.json("put", "cmp/k", "old")["revision"]
    point = cli.json("put", "cmp/k", "new")["revision"]
    out = cli.json("compact", str(point))
    assert out["compact_revision"] == point and out["header"]["revision"] == out["revision"]
    assert cli.ok("get", "cmp/k", "--rev", str(point)).stdout == "new\n"
    gone = cli.run("get", "cmp/k", "--rev", str(old))
    assert gone.exit_code == 1 and gone.stderr.count("\n") == 1
    assert f"revision {old} was compacted; the oldest readable revision is {point}" in gone.stderr
    assert cli.run("scan", "--prefix", "cmp/", "--rev", str(old)).exit_code == 1
    again = cli.run("compact", str(point))
    assert again.exit_code == 1 and "was compacted" in again.stderr
    future = cli.run("compact", str(current_revision(cli) + 100))
    assert future.exit_code == 1 and "is a future revision" in future.stderr

    # Every node reports the revision and the compaction point (they agree once applied).
    def agreed() -> list[dict[str, Any]] | None:
        nodes = cli.json("status")["nodes"]
        pairs = {(n["revision"], n["compact_revision"]) for n in nodes}
        return nodes if len(pairs) == 1 else None

    nodes = wait_for("every node at one revision and compaction point", agreed)
    assert nodes[0]["compact_revision"] >= point
    table = cli.ok("status").stdout
    assert "revision" in table and "compacted" in table
