"""Quotas and alarms, etcd's: the store's accounted bytes against ``[limits] quota_bytes``,
the NOSPACE alarm through the log, ``paxosctl alarm list / disarm``; and
``max_request_bytes`` / the value cap refused before proposing.

The state machine's part (apply refuses while the alarm is raised, the alarm is replicated
and survives a snapshot) is checked directly; the leader's part (refusing before proposing,
raising the alarm, clearing it) on a real 3-node cluster through paxosctl.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from paxosctl.app import app
from paxosd.client.client import Client, statuses_json
from paxosd.client.errors import NoSpaceError
from paxosd.lab.localcluster import LocalCluster
from paxosd.server.config import ConfigError, LimitSettings, load_config
from paxosd.server.node import Node
from paxosd.statemachine.commands import (
    Alarm,
    Alarms,
    Cas,
    Command,
    Compact,
    Compacted,
    Delete,
    Deleted,
    Found,
    Get,
    NoSpace,
    Put,
    Txn,
    TxnResult,
    Written,
    decode_result,
    encode_command,
)
from paxosd.statemachine.commands import (
    Result as SmResult,
)
from paxosd.statemachine.machine import StateMachine
from paxosd.tools.initcluster import init_cluster
from tests.waiting import wait_for

# ------------------------------------------------------------------ the state machine


class _Log:
    """Applies commands to several replicas, one slot each, and returns the first's result."""

    def __init__(self, replicas: int = 2) -> None:
        self.sms = [StateMachine() for _ in range(replicas)]
        self.seq = 0

    def __call__(self, op: Any) -> SmResult:
        self.seq += 1
        raw = encode_command(Command("c", self.seq, "s", op))
        results = [sm.apply(sm.applied_through + 1, (raw,)) for sm in self.sms]
        return decode_result(results[0][0][2])


def test_while_nospace_is_raised_apply_refuses_writes_that_add_data_and_nothing_else() -> None:
    apply = _Log()
    assert isinstance(apply(Put(key="a", value=b"x" * 100)), Written)
    assert isinstance(apply(Put(key="b", value=b"y")), Written)
    sm = apply.sms[0]
    revision, size = sm.revision, sm.store_bytes
    raised = apply(Alarm(action="activate", alarm="NOSPACE", member=1, quota_bytes=50))
    assert isinstance(raised, Alarms) and [(a.member, a.alarm) for a in raised.alarms] == [
        (1, "NOSPACE")
    ]
    assert sm.revision == revision, "an alarm changes no key"
    for op in (
        Put(key="c", value=b"y"),
        Cas(key="a", new=b"z", expect_version=1),
        # etcd's rule: a put in either branch, whichever would run.
        Txn(compares=(), success=(Get(key="a"),), failure=(Put(key="c", value=b"w"),)),
    ):
        assert apply(op) == NoSpace(size_bytes=size, quota_bytes=50), op
    assert sm.revision == revision
    assert isinstance(apply(Get(key="a")), Found)
    assert isinstance(apply(Txn(compares=(), success=(Get(key="a"),))), TxnResult)
    assert isinstance(apply(Delete(key="a")), Deleted)
    assert isinstance(apply(Delete(key="b")), Deleted)
    # Compaction keeps the state as of its revision: the last deletion's tombstone stays.
    assert isinstance(apply(Compact(revision=sm.revision)), Compacted)
    assert sm.store_bytes < size
    # Replicated: every replica holds it, across a snapshot too.
    assert apply.sms[1].alarms == sm.alarms
    restored = StateMachine.restore(sm.snapshot())
    assert restored.alarms == sm.alarms and restored.digest() == sm.digest()
    cleared = apply(Alarm(action="deactivate", alarm="NOSPACE", member=0))
    assert cleared == Alarms(alarms=())
    assert isinstance(apply(Put(key="c", value=b"y")), Written)
    assert apply.sms[0].digest() == apply.sms[1].digest()


def test_a_disarm_naming_a_member_clears_only_that_members_alarm() -> None:
    apply = _Log(1)
    apply(Alarm(action="activate", member=1, quota_bytes=10))
    apply(Alarm(action="activate", member=2, quota_bytes=10))
    left = apply(Alarm(action="deactivate", member=1))
    assert isinstance(left, Alarms) and [a.member for a in left.alarms] == [2]


def test_the_limits_section_is_validated(tmp_path: Path) -> None:
    c = LocalCluster.create(tmp_path / "c", 1)
    cfg = c.config_path(1)
    base = cfg.read_text()
    cfg.write_text(base + "\n[limits]\nquota_bytes = 4194304\nmax_request_bytes = 65536\n")
    limits = load_config(cfg).limits
    assert (limits.quota_bytes, limits.max_request_bytes) == (4 << 20, 64 << 10)
    cfg.write_text(base + "\n[limits]\nmax_request_bytes = 2097152\n")
    with pytest.raises(ConfigError, match="limits.max_request_bytes"):
        load_config(cfg)


# ------------------------------------------------------------------ a real cluster

QUOTA = 1 << 20
REQUEST_MAX = 64 << 10
VALUE = b"v" * (30 << 10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("quota")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAXOSD_LOCAL_DIR", str(root))
        for var in ("PAXOSCTL_ENDPOINTS", "PAXOSCTL_KEY_FILE", "PAXOSCTL_SITE"):
            mp.delenv(var, raising=False)
        extra = f"[limits]\nquota_bytes = {QUOTA}\nmax_request_bytes = {REQUEST_MAX}\n"
        c = LocalCluster.create(root, 3, durability="unsafe-no-fsync", extra_config=extra)
        cfg = c.config_path(1)
        cfg.write_text(cfg.read_text().replace("# metrics_address", "metrics_address"))
        try:
            c.up()
            yield c
        finally:
            c.down()


def _metrics(c: LocalCluster) -> str:
    port = re.search(r'metrics_address = "[^"]*:(\d+)"', c.config_path(1).read_text())
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def _ctl(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _alarms(cl: Client) -> list[list[dict[str, Any]]]:
    return [r.get("alarms", []) for r in statuses_json(cl) if "error" not in r]


def test_past_the_quota_writes_are_refused_until_space_is_freed_and_the_alarm_disarmed(
    cluster: LocalCluster,
) -> None:
    with cluster.client(timeout_ms=10_000) as cl:
        written: list[str] = []
        with pytest.raises(NoSpaceError, match=r"NOSPACE: the store is \d+ bytes, over its"):
            for i in range(200):
                cl.put(f"q{i:03d}", VALUE)
                written.append(f"q{i:03d}")
        assert 20 < len(written) < 200
        # The leader raises NOSPACE through the log: every member shows it.
        wait_for(
            "every member shows NOSPACE",
            lambda: all(a and a[0]["alarm"] == "NOSPACE" for a in _alarms(cl)),
        )
        assert any("alarm_raised" in cluster.logs_tail(k, 200) for k in cluster.node_ids())
        wait_for(
            "the NOSPACE metric",
            lambda: 'paxosd_alarm{alarm="NOSPACE"} 1.0' in _metrics(cluster),
        )
        assert "paxosd_store_bytes" in _metrics(cluster)
        shown = _ctl("status")
        assert "alarm NOSPACE raised by node" in shown.stderr, shown.output
        listed = _ctl("alarm", "list")
        assert listed.exit_code == 0 and "alarm:NOSPACE" in listed.stdout, listed.output
        refused = _ctl("put", "more", "x")
        assert refused.exit_code == 3 and "NOSPACE" in refused.stderr, refused.output
        # Reads work; a disarm while still over the quota is undone by the leader.
        got = cl.get(written[0])
        assert isinstance(got, Found) and got.value == VALUE
        assert _ctl("alarm", "disarm").exit_code == 0
        wait_for(
            "the disarm applied",
            lambda: any("alarm_cleared" in cluster.logs_tail(k, 300) for k in cluster.node_ids()),
        )
        wait_for("NOSPACE raised again everywhere", lambda: all(_alarms(cl)))
        # Deletes and compaction free space; then a disarm lets writes in again.
        for key in written:
            cl.delete(key)
        cl.compact(statuses_json(cl)[0]["revision"])
        wait_for(
            "the store under its quota everywhere",
            lambda: all(r["store_bytes"] < QUOTA for r in statuses_json(cl) if "error" not in r),
        )
        disarmed = json.loads(_ctl("alarm", "disarm", "--json").stdout)
        assert disarmed["alarms"] == []
        assert isinstance(cl.put("after", b"ok"), Written)
        assert json.loads(_ctl("alarm", "list", "--json").stdout)["alarms"] == []


def test_a_request_over_max_request_bytes_is_refused_before_it_is_proposed(
    cluster: LocalCluster,
) -> None:
    def settled() -> int | None:
        # Every member at one applied index (the cluster's own start-up slots included).
        rows = statuses_json(cluster.client())
        indexes = {r["applied_index"] for r in rows if "error" not in r}
        return indexes.pop() if len(indexes) == 1 and len(rows) == 3 else None

    before = wait_for("every member applies the same slots", settled)
    big = _ctl("put", "big", "x" * (REQUEST_MAX + 1000))
    assert big.exit_code == 2 and "over max_request_bytes" in big.stderr, big.output
    # The value cap is the codec's, checked by the client before anything is sent.
    huge = _ctl("put", "huge", "x" * (600 << 10))
    assert huge.exit_code == 2 and "over 524288" in huge.stderr, huge.output
    with cluster.client() as cl:
        rows = statuses_json(cl)
        assert all(r["applied_index"] == before for r in rows if "error" not in r)
        assert _ctl("get", "big").exit_code == 1


# ------------------------------------------------------------------ one node, by hand


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A one-member node without a transport, max_request_bytes 64 KiB."""
    res = init_cluster(tmp_path / "cluster", 1, base_port=24100)
    cfg = load_config(res.configs[0])
    cfg = dataclasses.replace(
        cfg,
        durability="unsafe-no-fsync",
        limits=LimitSettings(quota_bytes=1 << 20, max_request_bytes=REQUEST_MAX),
    )
    n = Node(cfg, bootstrap=True)
    wait_for("a one-member cluster elects itself", lambda: _leads(n))
    yield n
    n.storage.close()


def _leads(n: Node) -> bool:
    n.on_tick()
    n.drain()
    return n.replica.is_leader


def _ask(n: Node, seq: int, op: Any, client: str = "c") -> tuple[str, SmResult | bytes, int]:
    """Submit, drain, and return (status, result, slots decided meanwhile)."""
    before = n.replica.decided_through
    n.on_client_command(1, seq, encode_command(Command(client, seq, "s", op)))
    n.drain()
    (reply,) = n.replies
    n.replies.clear()
    result = decode_result(reply.result) if reply.status == "ok" else reply.result
    return reply.status, result, n.replica.decided_through - before


def test_while_nospace_is_applied_a_node_refuses_new_writes_before_proposing(node: Node) -> None:
    status, written, slots = _ask(node, 1, Put(key="a", value=b"1"))
    assert (status, slots) == ("ok", 1) and isinstance(written, Written)
    _ask(node, 2, Alarm(action="activate", member=1, quota_bytes=10), client="ops")
    status, refused, slots = _ask(node, 2, Put(key="b", value=b"2"))
    assert status == "ok" and isinstance(refused, NoSpace) and slots == 0, "not proposed"
    # A retry of a write the log already applied is answered from the session table.
    assert _ask(node, 1, Put(key="a", value=b"1")) == ("ok", written, 1)
    status, deleted, slots = _ask(node, 3, Delete(key="a"))
    assert isinstance(deleted, Deleted) and deleted.deleted == 1 and slots == 1


def test_a_command_over_max_request_bytes_is_refused_and_not_proposed(node: Node) -> None:
    status, reason, slots = _ask(node, 1, Put(key="big", value=b"x" * REQUEST_MAX))
    assert status == "bad_request" and slots == 0
    assert isinstance(reason, bytes) and b"over max_request_bytes 65536" in reason
