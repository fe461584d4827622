"""Auto-compaction: the policy (pure, on a given clock) and, on a real local cluster, the
leader proposing ``Compact`` through the log until every node's compact revision moves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paxosd.client.errors import CompactedError
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import StatusReply
from paxosd.server.compaction import (
    PROPOSAL_TIMEOUT_MS,
    AutoCompactor,
    CompactionSettings,
    parse_duration_ms,
)
from paxosd.statemachine.commands import Compact, Found, Written, decode_command
from tests.waiting import wait_for

PERIODIC_10S = CompactionSettings(mode="periodic", retention="10s", keep=10_000)


def test_durations_as_etcd_writes_them() -> None:
    assert parse_duration_ms("1h") == 3_600_000
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("90s") == 90_000
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("3") == 3 * 3_600_000  # a bare number is hours
    assert isinstance(parse_duration_ms("1d"), str)
    assert isinstance(parse_duration_ms("h"), str)
    assert isinstance(parse_duration_ms(""), str)


def test_periodic_compacts_to_the_revision_seen_one_retention_ago() -> None:
    c = AutoCompactor(PERIODIC_10S, now_ms=0)
    assert c.interval_ms == 1000  # a tenth of the retention
    proposals = []
    for t in range(0, 25_001, 100):
        revision = 1 + t // 100  # one write every 100 ms
        target = c.due(t, revision, 0, leader=True)
        if target is not None:
            proposals.append((t, target))
            c.answered()
    # Nothing before a full retention has passed; then each look compacts to the revision
    # recorded retention ago, never newer.
    assert proposals[0] == (10_000, 1)
    for t, target in proposals:
        assert target <= 1 + (t - 10_000) // 100
    assert proposals[-1] == (25_000, 1 + 15_000 // 100)


def test_only_the_leader_proposes_and_never_below_the_compact_revision() -> None:
    c = AutoCompactor(CompactionSettings(mode="revision", retention="5", keep=5), now_ms=0)
    assert c.due(0, 100, 0, leader=False) is None
    assert c.due(300_000, 100, 0, leader=True) == 95
    c.answered()
    assert c.due(600_000, 100, 95, leader=True) is None  # already compacted that far
    assert c.due(900_000, 4, 0, leader=True) is None  # not enough history to keep 5


def test_one_proposal_in_flight_until_answered_or_timed_out() -> None:
    c = AutoCompactor(CompactionSettings(mode="revision", retention="1", keep=1), now_ms=0)
    c.interval_ms = 10
    assert c.due(0, 10, 0, leader=True) == 9
    assert c.due(10, 20, 0, leader=True) is None  # the first is not answered yet
    assert c.due(PROPOSAL_TIMEOUT_MS + 10, 30, 0, leader=True) == 29  # given up on
    c.answered()
    assert c.due(PROPOSAL_TIMEOUT_MS + 20, 40, 29, leader=True) == 39


def test_off_never_proposes() -> None:
    c = AutoCompactor(CompactionSettings(mode="off", retention="", keep=0), now_ms=0)
    assert all(c.due(t, 1000, 0, leader=True) is None for t in range(0, 10**7, 10**5))


# ------------------------------------------------------------------ on a real cluster

AUTO_REVISION_5 = '[compaction]\nmode = "revision"\nretention = 5\ninterval_ms = 100\n'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(
        tmp_path_factory.mktemp("autocompact") / "c",
        3,
        durability="unsafe-no-fsync",
        extra_config=AUTO_REVISION_5,
    )
    c.up()
    try:
        yield c
    finally:
        c.down()


def test_the_leader_compacts_through_the_log_to_keep_the_last_revisions(
    cluster: LocalCluster,
) -> None:
    with cluster.client() as c:
        first = c.put("auto/k", b"0")
        assert isinstance(first, Written)
        for i in range(1, 20):
            c.put("auto/k", str(i).encode())
        last = c.get("auto/k")
        assert isinstance(last, Found)

        def compacted_everywhere() -> list[StatusReply] | None:
            answers = [a for _, a in c.status_each() if isinstance(a, StatusReply)]
            ok = len(answers) == 3 and all(
                a.compact_revision >= last.mod_revision - 5 for a in answers
            )
            return answers if ok else None

        answers = wait_for("every node compacted to 5 revisions behind", compacted_everywhere)
        # One compaction point for all: it went through the log.
        assert (
            len(
                {a.compact_revision for a in answers if a.applied_index == answers[0].applied_index}
            )
            == 1
        )
        point = max(a.compact_revision for a in answers)
        with pytest.raises(CompactedError) as e:
            c.get("auto/k", revision=first.revision)
        assert e.value.compact_revision >= point
        assert c.get("auto/k", revision=point).value == b"%d" % (19 - (last.mod_revision - point))
        # The proposals were the daemon's own commands, visible in the log.
        leader = c.status().leader
        assert leader is not None
        page = c.view_log(max(1, answers[0].decided_index - 30), limit=100, node=leader)
        compacts = [
            cmd
            for row in page.rows
            for raw in row.value
            if (cmd := decode_command(raw)).client_id == "paxosd-auto-compaction"
        ]
        assert compacts and all(isinstance(cmd.op, Compact) for cmd in compacts)
