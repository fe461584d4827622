"""Scripted interleavings of the core: the classic Paxos races, built message by message."""

from __future__ import annotations

import pytest

from paxosd.core.io import Tick
from paxosd.core.messages import Accept, Accepted, Heartbeat, Nack, Prepare, Promise
from paxosd.core.replica import Role
from paxosd.core.types import NOOP, Ballot
from tests.core.harness import Cluster, between, kind, to


def elect(c: Cluster, nid: int) -> None:
    c.campaign(nid)
    c.deliver()
    assert c.replicas[nid].role is Role.LEADER  # type: ignore[index]


def test_a_single_leader_decides_and_every_replica_applies_in_order() -> None:
    c = Cluster(3)
    elect(c, 1)
    for i in range(5):
        c.propose(1, f"cmd{i}".encode())
        c.deliver()
    c.tick_all(60)  # a heartbeat carries the commit point to followers
    c.deliver()
    for n in (1, 2, 3):
        values = [v for _, v in c.applied[n]]
        assert values == [(f"cmd{i}".encode(),) for i in range(5)], n


def test_commands_that_arrive_together_share_one_slot() -> None:
    c = Cluster(3)
    elect(c, 1)
    r = c.replicas[1]  # type: ignore[index]
    for i in range(10):
        r.step(__import__("paxosd.core.io", fromlist=["ClientCommand"]).ClientCommand(b"x%d" % i))
    c.drain(1)
    c.deliver()
    assert c.decided(1) == {1: tuple(b"x%d" % i for i in range(10))}


def test_acceptor_rejects_accept_below_promised_ballot() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.campaign(2)  # node 2 prepares a higher ballot; node 3 promises it
    c.deliver(to(3))
    c.deliver(kind(Promise))
    c.propose(1, b"late")
    # Node 1's accept reaches node 3, which promised node 2's higher ballot: it nacks.
    c.deliver(lambda s, d, m: s == 1 and d == 3 and isinstance(m, Accept))
    nacks = [m for s, d, m in c.inflight if isinstance(m, Nack) and d == 1]
    assert nacks and nacks[0].promised > nacks[0].ballot
    c.deliver(kind(Nack))
    assert c.replicas[1].role is Role.FOLLOWER  # type: ignore[index]


def test_competing_proposers_the_higher_ballot_wins_and_the_lower_steps_down() -> None:
    c = Cluster(3)
    c.campaign(1)
    c.campaign(2)
    b1, b2 = c.replicas[1].ballot, c.replicas[2].ballot  # type: ignore[index]
    assert b1 != b2
    c.deliver()
    leaders = [n for n in (1, 2, 3) if c.replicas[n].role is Role.LEADER]  # type: ignore[index]
    assert len(leaders) == 1
    assert c.replicas[leaders[0]].ballot == max(b1, b2)  # type: ignore[index]


def test_value_accepted_by_a_minority_is_recovered_by_the_next_leader() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.propose(1, b"v")
    # Only node 2 receives the accept; node 1 dies before it learns anything.
    c.deliver(lambda s, d, m: s == 1 and d == 2 and isinstance(m, Accept))
    c.crash(1)
    c.drop(lambda s, d, m: True)
    c.campaign(3)
    c.deliver(between(2, 3))
    assert c.replicas[3].role is Role.LEADER  # type: ignore[index]
    assert c.decided(3)[1] == (b"v",), "phase 1 must adopt the value node 2 accepted"


def test_a_gap_below_a_recovered_slot_is_filled_with_a_noop() -> None:
    c = Cluster(3)
    elect(c, 1)
    for cmd in (b"s1", b"s2", b"s3"):
        c.propose(1, cmd)
    # Accepts for slots 1 and 2 are lost; only slot 3 reaches node 2.
    for s, d, m in list(c.inflight):
        if isinstance(m, Accept) and d == 2:
            c.inflight.remove((s, d, m))
            c.inflight.append(
                (
                    s,
                    d,
                    Accept(
                        ballot=m.ballot,
                        entries=tuple(e for e in m.entries if e.slot == 3),
                        commit_through=0,
                    ),
                )
            )
    c.deliver(lambda s, d, m: s == 1 and d == 2 and isinstance(m, Accept))
    c.crash(1)
    c.drop(lambda s, d, m: True)
    c.campaign(3)
    c.deliver(between(2, 3))
    assert c.decided(3) == {1: NOOP, 2: NOOP, 3: (b"s3",)}


def test_a_restarted_acceptor_keeps_its_promise() -> None:
    c = Cluster(3)
    c.campaign(2)
    c.deliver(to(3))
    promised = c.replicas[3].promised  # type: ignore[index]
    c.crash(3)
    c.restart(3)
    assert c.replicas[3].promised == promised  # type: ignore[index]
    # A lower ballot's prepare is refused after the restart.
    c.step(
        3,
        __import__("paxosd.core.io", fromlist=["Received"]).Received(
            1, Prepare(ballot=Ballot(1, 1), from_slot=1)
        ),
    )
    assert any(isinstance(m, Nack) for _, _, m in c.inflight)


def test_a_lagging_follower_catches_up_from_decided_slots() -> None:
    c = Cluster(3)
    elect(c, 1)
    for i in range(5):
        c.propose(1, b"c%d" % i)
        c.deliver(between(1, 2))
    c.drop(to(3))
    assert c.replicas[3].decided_through == 0  # type: ignore[index]
    for _ in range(4):
        c.tick_all(60)
        c.deliver()
    assert c.replicas[3].decided_through == 5  # type: ignore[index]
    assert [v for _, v in c.applied[3]] == [v for _, v in c.applied[1]]


def test_a_replica_far_behind_a_compacted_log_installs_a_snapshot() -> None:
    from paxosd.core.io import SnapshotTaken
    from paxosd.core.types import Snapshot

    # Chunks of 3 bytes: the 10-byte snapshot crosses in four round trips.
    c = Cluster(3, log_retain_entries=2, snapshot_chunk_bytes=3)
    elect(c, 1)
    c.crash(3)
    for i in range(8):
        c.propose(1, b"c%d" % i)
        c.deliver()
    c.step(1, SnapshotTaken(Snapshot(slot=8, state=b"state-at-8")))
    assert c.replicas[1].log_start == 7  # type: ignore[index]
    c.restart(3)
    for _ in range(5):
        c.tick_all(60)
        c.deliver()
    r3 = c.replicas[3]  # type: ignore[index]
    assert r3.snapshot is not None and r3.snapshot.state == b"state-at-8"
    assert r3.decided_through == 8


def test_a_compacted_log_is_gone_at_once_and_its_values_freed_a_few_per_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paxosd.core import replica as replica_mod
    from paxosd.core.io import SnapshotTaken
    from paxosd.core.types import Snapshot

    monkeypatch.setattr(replica_mod, "RELEASE_PER_READY", 2)
    c = Cluster(3, log_retain_entries=0)
    elect(c, 1)
    for i in range(6):
        c.propose(1, b"c%d" % i)
        c.deliver()
    r1 = c.replicas[1]  # type: ignore[index]
    top = r1.applied_through
    c.step(1, SnapshotTaken(Snapshot(slot=top, state=b"state")))
    # The log below the snapshot is gone for every reader now...
    assert r1.log_start == top + 1
    assert not [s for s in r1.decided if s <= top] and not [s for s in r1.accepted if s <= top]
    # ...and what it held is freed two entries per ready(), not all in the step.
    waiting = len(r1._released)
    assert waiting > 2
    c.propose(1, b"after")
    c.deliver()
    assert len(r1._released) < waiting
    for _ in range(waiting):
        c.propose(1, b"more")
        c.deliver()
    assert r1._released == []


def test_a_leader_without_a_majority_steps_down() -> None:
    c = Cluster(3)
    elect(c, 1)
    for _ in range(20):
        c.tick_all(60)
        c.drop(lambda s, d, m: True)  # node 1 is cut off
    assert c.replicas[1].role is not Role.LEADER  # type: ignore[index]


def test_heartbeat_commit_point_only_decides_values_accepted_at_that_ballot() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.propose(1, b"x")
    c.deliver(kind(Accept))
    c.deliver(kind(Accepted))
    ballot = c.replicas[1].ballot  # type: ignore[index]
    # A heartbeat from a *different* ballot claiming slot 1 committed must not decide it.
    other = Ballot(ballot.round + 1, 3)
    r2 = c.replicas[2]  # type: ignore[index]
    r2.step(
        __import__("paxosd.core.io", fromlist=["Received"]).Received(
            3, Heartbeat(ballot=other, commit_through=1, decided_through=1)
        )
    )
    assert 1 not in r2.decided
    r2.step(Tick(c.now_ms))


def _reads(c: Cluster, nid: int) -> list[object]:
    """Drain ``nid`` and take the read releases it produced so far."""
    c.drain(nid)
    mine = [x for n, x in c.reads if n == nid]
    c.reads = [(n, x) for n, x in c.reads if n != nid]
    return mine


def test_a_read_index_read_waits_for_a_majority_echo() -> None:
    from paxosd.core.io import ReadIndex

    c = Cluster(3)
    elect(c, 1)
    c.propose(1, b"w")
    c.deliver()
    c.step(1, ReadIndex(7))
    assert _reads(c, 1) == [], "released before any follower echoed"
    c.deliver(lambda s, d, m: isinstance(m, Heartbeat) and d == 2)
    c.deliver(lambda s, d, m: isinstance(m, Accepted) and s == 2)
    released = _reads(c, 1)
    assert [(x.token, x.index) for x in released] == [(7, 1)]  # type: ignore[attr-defined]


def test_a_deposed_leader_turns_pending_reads_into_redirects() -> None:
    from paxosd.core.io import ReadIndex

    c = Cluster(3)
    elect(c, 1)
    r1 = c.replicas[1]  # type: ignore[index]
    c.step(1, ReadIndex(9))
    assert _reads(c, 1) == []
    c.drop(lambda s, d, m: s == 1)  # its heartbeats never arrive
    elect(c, 2)  # node 2 takes over; node 1 learns of the higher ballot
    c.deliver()
    out = _reads(c, 1)
    # The pending read comes back refused, never answered from a deposed leader's state.
    assert r1.role is not Role.LEADER
    assert [(x.token, x.index) for x in out] == [(9, None)]  # type: ignore[attr-defined]


def test_a_follower_refuses_read_index_reads_and_names_the_leader() -> None:
    from paxosd.core.io import ReadIndex

    c = Cluster(3)
    elect(c, 1)
    c.tick_all(60)
    c.deliver()
    c.step(2, ReadIndex(3))
    out = _reads(c, 2)
    assert [(x.token, x.index, x.leader) for x in out] == [(3, None, 1)]  # type: ignore[attr-defined]


def test_a_follower_that_stalled_does_not_depose_the_leader_it_heard_meanwhile() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.deliver()
    # Node 3's process stalls for 700 ms (longer than any election timeout) while the leader
    # goes on heartbeating; node 3 handles those heartbeats only after the stall, with the
    # clock of its last tick, and then ticks.
    for _ in range(14):
        c.now_ms += 50
        for n in (1, 2):
            c.step(n, Tick(c.now_ms))
        c.deliver(lambda s, d, m: d != 3)
    assert any(isinstance(m, Heartbeat) for _, d, m in c.inflight if d == 3)
    c.deliver(to(3))
    c.step(3, Tick(c.now_ms))
    assert c.replicas[3].role is Role.FOLLOWER  # type: ignore[index]
    assert not any(isinstance(m, Prepare) for s, _, m in c.inflight if s == 3)
    c.deliver()
    assert c.replicas[1].role is Role.LEADER  # type: ignore[index]
