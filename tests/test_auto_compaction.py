"""Auto-compaction: the policy (pure, on a given clock) and, on a real local cluster, the
leader proposing ``Compact`` through the log until every node's compact revision moves."""

from __future__ import annotations

from paxosd.server.compaction import (
    PROPOSAL_TIMEOUT_MS,
    AutoCompactor,
    CompactionSettings,
    parse_duration_ms,
)

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
