"""paxosctl view_log/data/status/leader/members/snapshot against a real 3-node cluster: the
same log on every node, the internals of one node, the digest check, and unreachable nodes."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

from tests.cli.conftest import Cli


def decided_index(cli: Cli) -> int:
    return int(cli.json("data", "--node", str(cli.json("leader")["leader"]))["decided_index"])


def test_view_log_shows_the_same_entries_on_every_node(cli: Cli) -> None:
    for i in range(5):
        cli.ok("put", f"log/{i}", f"v{i}", "--site", f"site{i}")
    cli.ok("block", "site1", "site2")
    top = decided_index(cli)
    cli.wait_all_decided(top)
    logs = []
    for k in cli.cluster.node_ids():
        out = cli.json("view_log", "--from", "1", "--to", str(top), "--node", str(k))
        assert out["node_id"] == k
        logs.append([(e["slot"], e["state"], e["commands"]) for e in out["entries"]])
    assert logs[0] == logs[1] == logs[2]
    assert [slot for slot, _, _ in logs[0]] == list(range(1, top + 1))
    assert {state for _, state, _ in logs[0]} == {"decided"}
    commands = [c for _, _, batch in logs[0] for c in batch]
    assert {"op": "put", "command": "put log/3 v3", "site": "site3"}.items() <= next(
        c for c in commands if c["command"] == "put log/3 v3"
    ).items()
    assert any(c["command"] == "block site1 site2" for c in commands)
    put3 = next(c for c in commands if c["command"] == "put log/3 v3")
    # Rendered as `put` prints it, never as a Python repr.
    assert put3["result"] == "OK (version 1)"
    assert all(set(c) == {"client_id", "seq", "site", "op", "command", "result"} for c in commands)


def test_view_log_table_has_one_row_per_command_with_ballot_site_and_client(cli: Cli) -> None:
    cli.ok("put", "log/table", "x y", "--site", "tablesite")
    leader = str(cli.json("leader")["leader"])
    out = cli.ok("view_log", "--limit", "1", "--node", leader).stdout
    assert f"log of node {leader}" in out
    for column in ("slot", "state", "ballot", "site", "client", "command"):
        assert column in out
    assert "tablesite" in out and "put log/table 'x y'" in out
    entry = cli.json("view_log", "--limit", "1", "--node", leader)["entries"][0]
    assert entry["ballot"] is not None and "." in entry["ballot"]


def test_view_log_alias_and_range_checks(cli: Cli) -> None:
    cli.ok("put", "log/alias", "v")
    a = cli.json("view_log", "--from", "1", "--to", "3", "--node", "1")
    b = cli.json("view-log", "--from", "1", "--to", "3", "--node", "1")
    # A follower may learn one more slot between the two calls: compare the entries only.
    assert a["entries"] == b["entries"] and len(a["entries"]) == 3
    assert cli.run("view_log", "--from", "5", "--to", "2").exit_code == 2
    assert cli.run("view_log", "--limit", "0").exit_code == 2
    assert len(cli.json("view_log", "--from", "1", "--limit", "2")["entries"]) == 2


def test_view_log_follow_prints_new_slots_until_to(cli: Cli) -> None:
    start = decided_index(cli) + 1
    stop = threading.Event()

    def writer() -> None:
        with cli.cluster.client(timeout_ms=2000, site="follower-test") as c:
            for i in range(50):  # bounded: the follow below needs three slots
                if stop.is_set():
                    return
                c.put(f"follow/{i}", b"x")

    t = threading.Thread(target=writer)
    t.start()
    try:
        result = cli.ok(
            "view_log", "--follow", "--from", str(start), "--to", str(start + 2), "--json"
        )
    finally:
        stop.set()
        t.join()
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["slot"] for e in lines] == [start, start + 1, start + 2]
    assert all(e["state"] == "decided" for e in lines)
    assert any(c["site"] == "follower-test" for e in lines for c in e["commands"])


def test_data_shows_one_nodes_paxos_internals(cli: Cli) -> None:
    cli.ok("put", "data/k", "v")
    for k in cli.cluster.node_ids():
        d = cli.json("data", "--node", str(k))
        assert d["node_id"] == k
        assert set(d) == {
            "node_id",
            "role",
            "leader",
            "promised",
            "ballot",
            "decided_index",
            "applied_index",
            "snapshot_index",
            "log_start",
            "digest",
            "accepted_not_decided",
        }
        assert 0 < d["applied_index"] <= d["decided_index"]
        assert d["role"] in ("leader", "follower", "candidate")
    table = cli.ok("data", "--node", "2").stdout
    for word in ("promised", "decided index", "applied index", "snapshot index", "accepted"):
        assert word in table


def test_status_shows_every_node_and_agreeing_digests(cli: Cli) -> None:
    top = decided_index(cli)
    cli.wait_all_decided(top)
    out = cli.json("status")
    assert out["digests_agree"] is True and out["mismatches"] == []
    nodes = out["nodes"]
    assert sorted(n["node_id"] for n in nodes) == [1, 2, 3]
    assert [n["role"] for n in nodes].count("leader") == 1
    assert out["leader"] == cli.json("leader")["leader"]
    for n in nodes:
        assert set(n) == {
            "node_id",
            "address",
            "role",
            "ballot",
            "decided_index",
            "applied_index",
            "lag",
            "revision",
            "compact_revision",
            "digest",
            "last_contact_ms_ago",
            "watchers",
            "watchers_catching_up",
            "watchers_canceled_compacted",
            "db_bytes",
            "disk_free_bytes",
            "disk_full",
            "store_bytes",
            "quota_bytes",
            "alarms",
        }
        assert n["lag"] >= 0 and n["last_contact_ms_ago"] is not None
        assert n["watchers"] >= n["watchers_catching_up"] >= 0
        assert n["db_bytes"] > 0 and n["disk_free_bytes"] > 0 and n["disk_full"] is False
        assert n["store_bytes"] >= 0 and n["quota_bytes"] == 2 << 30 and n["alarms"] == []
    table = cli.ok("status").stdout
    assert "last contact" in table and "leader" in table and "MISMATCH" not in table
    assert "watchers" in table
    assert "disk free" in table and "FULL" not in table


def _fake_status(node_id: int, applied: int, digest: str, role: str = "follower") -> dict[str, Any]:
    return {
        "endpoint": f"127.0.0.1:{7000 + node_id}",
        "node_id": node_id,
        "role": role,
        "ballot": "2.1",
        "decided_index": 10,
        "applied_index": applied,
        "digest": digest,
        "peer_last_ack_ms_ago": {},
    }


def test_status_exits_1_loudly_on_a_digest_mismatch_at_equal_applied_index(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [
        _fake_status(1, 10, "aa" * 32, role="leader"),
        _fake_status(2, 10, "bb" * 32),
        _fake_status(3, 9, "cc" * 32),
    ]
    monkeypatch.setattr("paxosctl.admin.statuses_json", lambda c: answers)
    result = cli.run("status")
    assert result.exit_code == 1
    assert "DIGEST MISMATCH at applied index 10" in result.stderr
    assert "MISMATCH" in result.stdout  # the rows themselves are marked
    out = json.loads(cli.run("status", "--json").stdout)
    assert out["digests_agree"] is False
    assert out["mismatches"] == [{"applied_index": 10, "digests": {"1": "aa" * 32, "2": "bb" * 32}}]


def test_status_does_not_flag_different_digests_at_different_applied_indexes(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [_fake_status(1, 10, "aa" * 32, role="leader"), _fake_status(2, 8, "bb" * 32)]
    monkeypatch.setattr("paxosctl.admin.statuses_json", lambda c: answers)
    out = cli.json("status")
    assert out["digests_agree"] is True
    assert [n["lag"] for n in out["nodes"]] == [0, 2]


def test_status_marks_an_unreachable_node_and_exits_3_when_none_answers(cli: Cli) -> None:
    victim = next(k for k in cli.cluster.node_ids() if k != cli.json("leader")["leader"])
    cli.cluster.kill(victim)
    try:
        out = cli.json("status", "--timeout-ms", "500")
        down = [n for n in out["nodes"] if n["role"] == "unreachable"]
        assert len(down) == 1 and down[0]["node_id"] == victim
        assert "error" in down[0]
        # The leader notices the dead connection when the kernel reports it closed.
        deadline = time.monotonic() + 10
        while True:
            members = cli.json("members")["members"]
            connected = [m["connected"] for m in members]
            if connected == [k != victim for k in (1, 2, 3)] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert connected == [k != victim for k in (1, 2, 3)]
    finally:
        cli.restart(victim)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nothing = f"127.0.0.1:{s.getsockname()[1]}"
    key = str(cli.cluster.root / "keys" / "client.key")
    result = cli.run("status", "--endpoints", nothing, "--key-file", key, "--timeout-ms", "300")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: unavailable") and result.stderr.count("\n") == 1


def test_leader_and_members_describe_the_cluster(cli: Cli) -> None:
    # A node restarted by the previous test may still be reconnecting (back-off) or campaign.
    cli.cluster.wait_ready()
    deadline = time.monotonic() + 10
    while not all(m["connected"] for m in cli.json("members")["members"]):
        assert time.monotonic() < deadline, "the leader never reconnected to every member"
        time.sleep(0.1)
    lead = cli.json("leader")
    assert set(lead) == {"leader", "address", "ballot"}
    assert lead["address"] in cli.cluster.endpoint_strings()
    assert f"node {lead['leader']}" in cli.ok("leader").stdout
    members = cli.json("members")
    assert members["leader"] == lead["leader"]
    assert [m["node_id"] for m in members["members"]] == [1, 2, 3]
    assert [m["role"] for m in members["members"]] == ["voter"] * 3
    assert members["epoch"] == 0
    assert all(m["connected"] and m["peer_address"] for m in members["members"])
    assert "peer address" in cli.ok("members").stdout


def test_snapshot_on_every_node_or_one(cli: Cli) -> None:
    cli.ok("put", "snap/k", "v")
    top = decided_index(cli)
    cli.wait_all_decided(top)
    snaps = cli.json("snapshot")["snapshots"]
    assert sorted(s["node_id"] for s in snaps) == [1, 2, 3]
    assert all(s["snapshot_index"] >= top for s in snaps)
    assert cli.json("data", "--node", "2")["snapshot_index"] >= top
    one = cli.json("snapshot", "--node", "2")["snapshots"]
    assert [s["node_id"] for s in one] == [2]
    # The state survives the snapshot.
    assert cli.ok("get", "snap/k").stdout == "v\n"
