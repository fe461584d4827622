"""Membership change and leader transfer (issue #9), as scripted interleavings of the core.

The membership is itself a decided command (Lamport's reconfigurable state machine); these
tests pin the rules in paxosd.core.membership: learners catch up but do not vote, promotion
waits for a caught-up and answering learner, one change at a time, no change that leaves too
few live voters, and a candidate asks every membership its promises report. The last test
builds, message by message, the interleaving where skipping that last rule loses a chosen
value.
"""

from __future__ import annotations

import itertools
import random

import pytest

from paxosd.core.io import (
    AdminResult,
    ChangeMembership,
    DurableState,
    Received,
    SnapshotTaken,
    TransferLeadership,
)
from paxosd.core.membership import (
    ChangeKind,
    ChangeRefused,
    MembershipChange,
    apply_change,
    encode_membership,
    membership_of,
)
from paxosd.core.messages import (
    Accept,
    Accepted,
    CatchUpReply,
    CatchUpRequest,
    Prepare,
    Promise,
    TimeoutNow,
)
from paxosd.core.replica import Replica, Role
from paxosd.core.types import Member, Membership, NodeId, Snapshot
from tests.core.harness import Cluster, between, kind

ADD, PROMOTE, REMOVE = ChangeKind.ADD, ChangeKind.PROMOTE, ChangeKind.REMOVE
_tokens = itertools.count(1)


def elect(c: Cluster, nid: int) -> None:
    c.campaign(nid)
    c.deliver()
    assert c.replicas[nid].role is Role.LEADER  # type: ignore[index]


def settle(c: Cluster, rounds: int = 4, ms: int = 60) -> None:
    """Let heartbeats, their acks and catch-up run for ``rounds`` heartbeat intervals."""
    for _ in range(rounds):
        c.tick_all(ms)
        c.deliver()


def result(c: Cluster, token: int) -> AdminResult | None:
    found = [r for _, r in c.admin if r.token == token]
    assert len(found) <= 1, f"token {token} answered twice: {found}"
    return found[0] if found else None


def change(c: Cluster, leader: int, how: ChangeKind, node: int, deliver: bool = True) -> int:
    """Ask ``leader`` for a change; with ``deliver``, let the cluster run until it is decided."""
    token = next(_tokens)
    address = f"10.0.0.{node}:7000" if how is ADD else ""
    c.step(leader, ChangeMembership(token, MembershipChange(how, NodeId(node), address)))
    if deliver:
        c.deliver()
    return token


def ok(c: Cluster, leader: int, how: ChangeKind, node: int) -> AdminResult:
    res = result(c, change(c, leader, how, node))
    assert res is not None and res.ok, res
    return res


def refused(c: Cluster, leader: int, how: ChangeKind, node: int) -> str:
    res = result(c, change(c, leader, how, node, deliver=False))
    assert res is not None and not res.ok and not res.unknown, res
    return res.detail


def prepares_from(c: Cluster, nid: int) -> list[Prepare]:
    return [m for s, _, m in c.inflight if s == nid and isinstance(m, Prepare)]


def decided_at(c: Cluster, slot: int) -> dict[int, object]:
    """Every replica's decided value for ``slot`` (replicas that decided it)."""
    return {n: r.decided[slot] for n, r in c.replicas.items() if slot in r.decided}


# ------------------------------------------------------------------------------ learners


def test_an_added_learner_is_sent_the_log_and_catches_up() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    for i in range(3):
        c.propose(1, b"c%d" % i)
        c.deliver()
    res = ok(c, 1, ADD, 4)
    assert res.slot == 4
    settle(c)
    r4 = c.replicas[4]  # type: ignore[index]
    assert r4.decided_through == 4 and r4.applied_through == 4
    assert c.applied[4] == c.applied[1]
    assert r4.membership == c.replicas[1].membership  # type: ignore[index]
    assert r4.membership.learners == {4} and r4.membership.voters == {1, 2, 3}
    assert r4.membership.get(4) == Member(4, "10.0.0.4:7000", False)
    # From now on the learner is sent every accept, like a voter.
    c.propose(1, b"after")
    assert any(d == 4 and isinstance(m, Accept) for _, d, m in c.inflight)


def test_a_learners_vote_does_not_count_toward_a_quorum() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    ok(c, 1, ADD, 4)
    settle(c)
    c.propose(1, b"v")
    # Node 4 accepts and answers; nodes 2 and 3 hear nothing. 2 votes of 4 nodes would be a
    # majority of the nodes, but only 1 of the 3 voters.
    c.deliver(between(1, 4))
    assert c.replicas[4].accepted[2].value == (b"v",)  # type: ignore[index]
    assert 2 not in c.decided(1)
    c.deliver(between(1, 2))
    assert c.decided(1)[2] == (b"v",)


def test_a_learner_never_campaigns_even_when_its_election_timer_fires() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    ok(c, 1, ADD, 4)
    settle(c)
    c.campaign(4)
    assert c.replicas[4].role is Role.FOLLOWER  # type: ignore[index]
    assert prepares_from(c, 4) == []
    # Not even when the leader is gone and the voters elect a new one.
    c.crash(1)
    for _ in range(30):
        c.tick_all(100)
        assert prepares_from(c, 4) == []
        c.deliver()
    leaders = [n for n in (2, 3) if c.replicas[n].role is Role.LEADER]  # type: ignore[index]
    assert len(leaders) == 1
    assert c.replicas[4].role is Role.FOLLOWER  # type: ignore[index]


# ----------------------------------------------------------------------------- promotion


def test_promotion_is_refused_while_the_learner_lags_and_allowed_once_it_caught_up() -> None:
    c = Cluster(4, voters=(1, 2, 3), promote_lag_slots_max=2)
    elect(c, 1)
    c.cut = {4}
    for i in range(5):
        c.propose(1, b"c%d" % i)
        c.deliver()
    ok(c, 1, ADD, 4)  # slot 6; node 4 hears nothing yet
    assert "not answered" in refused(c, 1, PROMOTE, 4)
    # Node 4 answers a heartbeat, but its catch-up is lost: the leader knows it is behind.
    c.cut = set()
    c.tick_all(60)
    c.deliver(lambda s, d, m: not isinstance(m, CatchUpRequest | CatchUpReply))
    assert c.replicas[1].peer_decided(NodeId(4)) == 0  # type: ignore[index]
    detail = refused(c, 1, PROMOTE, 4)
    assert "6 slots behind" in detail and "within 2" in detail
    settle(c)
    assert c.replicas[1].peer_decided(NodeId(4)) == 6  # type: ignore[index]
    res = ok(c, 1, PROMOTE, 4)
    assert res.slot == 7
    assert c.replicas[1].membership.voters == {1, 2, 3, 4}  # type: ignore[index]


def test_after_a_promotion_a_value_needs_a_majority_of_the_new_voters() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    ok(c, 1, ADD, 4)
    settle(c)
    ok(c, 1, PROMOTE, 4)  # slot 2: voters {1, 2, 3, 4}, quorum 3
    settle(c)
    c.propose(1, b"v")
    c.deliver(between(1, 2))
    assert 3 not in c.decided(1), "2 votes of 4 voters decided a value"
    c.deliver(between(1, 4))
    assert c.decided(1)[3] == (b"v",)


# ----------------------------------------------------------------------- one at a time


def test_a_second_change_while_one_is_in_flight_is_refused() -> None:
    c = Cluster(5, voters=(1, 2, 3))
    elect(c, 1)
    r1 = c.replicas[1]  # type: ignore[index]
    first = change(c, 1, ADD, 4, deliver=False)
    # Proposed, not yet decided.
    assert any(isinstance(m, Accept) for _, _, m in c.inflight)
    assert "another membership change is in progress" in refused(c, 1, ADD, 5)
    # Requested but not yet proposed (both arrive in one event-loop turn): refused too.
    c.deliver()
    assert result(c, first) is not None
    t1, t2 = next(_tokens), next(_tokens)
    r1.step(ChangeMembership(t1, MembershipChange(ADD, NodeId(5), "10.0.0.5:7000")))
    r1.step(ChangeMembership(t2, MembershipChange(REMOVE, NodeId(3))))
    c.drain(1)
    res = result(c, t2)
    assert res is not None and not res.ok and "another membership change" in res.detail
    c.deliver()
    res = result(c, t1)
    assert res is not None and res.ok
    assert r1.membership.learners == {4, 5}


def test_nothing_is_proposed_above_an_undecided_membership_slot() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    token = change(c, 1, ADD, 4, deliver=False)
    c.propose(1, b"x")
    slots = {e.slot for _, _, m in c.inflight if isinstance(m, Accept) for e in m.entries}
    assert slots == {1}, "a command was proposed above the undecided membership slot"
    c.deliver()
    assert result(c, token) is not None
    assert membership_of(c.decided(1)[1]) is not None and c.decided(1)[2] == (b"x",)


def test_a_retried_change_already_in_effect_succeeds_without_a_new_slot() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    ok(c, 1, ADD, 4)
    res = ok(c, 1, ADD, 4)
    assert res.detail == "already in effect"
    assert c.replicas[1].decided_through == 1  # type: ignore[index]


# ------------------------------------------------------------------------ live voters


def test_removing_a_voter_while_another_is_down_is_refused() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.crash(3)
    settle(c, rounds=12)  # node 3 silent for longer than an election timeout
    assert c.replicas[1].role is Role.LEADER  # type: ignore[index]
    detail = refused(c, 1, REMOVE, 2)
    assert "1 live voters of 2 (quorum 2)" in detail and "[3]" in detail
    # Removing the node that is down is fine: the two live voters remain a majority.
    ok(c, 1, REMOVE, 3)
    assert c.replicas[1].membership.voters == {1, 2}  # type: ignore[index]


@pytest.mark.parametrize("voter_down", [False, True])
def test_promoting_a_learner_that_never_answered_is_refused(voter_down: bool) -> None:
    # With node 3 down too, promoting would leave {1,2,3,4} with 2 live voters of quorum 3:
    # the cluster would stop. A learner that never answered must not count as live.
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    c.crash(4)  # its daemon was never started
    if voter_down:
        c.crash(3)
        settle(c, rounds=12)
    ok(c, 1, ADD, 4)
    assert "has not answered this leader" in refused(c, 1, PROMOTE, 4)
    assert c.replicas[1].membership.voters == {1, 2, 3}  # type: ignore[index]


def test_promoting_a_learner_when_it_and_a_voter_are_down_is_refused() -> None:
    # {1,2,3,4} needs 3 live voters; with 3 and 4 down only 1 and 2 answer.
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    ok(c, 1, ADD, 4)
    settle(c)
    assert c.replicas[1].peer_decided(NodeId(4)) == 1  # type: ignore[index]
    c.crash(3)
    c.crash(4)
    settle(c, rounds=12)
    assert c.replicas[1].role is Role.LEADER  # type: ignore[index]
    detail = refused(c, 1, PROMOTE, 4)
    # The learner itself has gone quiet: that alone refuses it (with the learner alive, the
    # voters a leader still has always make a majority of the grown membership).
    assert "node 4 has not answered this leader lately" in detail


# ------------------------------------------------------------------------- removal


def test_a_removed_leader_hands_over_and_the_remaining_voters_keep_deciding() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.propose(1, b"before")
    c.deliver()
    settle(c)
    token = change(c, 1, REMOVE, 1, deliver=False)
    c.propose(1, b"queued")  # waits behind the membership slot
    c.deliver(kind(Accept))
    c.deliver(kind(Accepted))
    res = result(c, token)
    assert res is not None and res.ok and res.slot == 2
    r1 = c.replicas[1]  # type: ignore[index]
    assert r1.role is Role.FOLLOWER and r1.membership.voters == {2, 3}
    handover = [(d, m) for s, d, m in c.inflight if s == 1 and isinstance(m, TimeoutNow)]
    assert len(handover) == 1 and handover[0][0] in (2, 3)
    successor = handover[0][0]
    # The queued command goes back to its client, pointed at the successor (not at node 1).
    assert [(n, r.command, r.leader) for n, r in c.redirects] == [(1, b"queued", successor)]
    assert r1.leader_hint == successor
    c.deliver()
    r2 = c.replicas[successor]  # type: ignore[index]
    assert r2.role is Role.LEADER and r2.membership.voters == {2, 3}
    c.propose(successor, b"after")
    c.deliver()
    settle(c)
    for n in (2, 3):
        assert c.decided(n)[3] == (b"after",)
    # The removed node is no longer sent the log, and never campaigns again.
    assert 3 not in c.decided(1)
    c.campaign(1)
    assert prepares_from(c, 1) == [] and r1.role is Role.FOLLOWER


def test_a_removed_nodes_prepares_are_ignored_and_cannot_depose_the_leader() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.cut = {3}  # node 3 never hears of its removal
    ok(c, 1, REMOVE, 3)
    settle(c)
    assert c.replicas[2].membership.voters == {1, 2}  # type: ignore[index]
    ballot = c.replicas[1].ballot  # type: ignore[index]
    c.cut = set()
    r3 = c.replicas[3]  # type: ignore[index]
    assert r3.membership.voters == {1, 2, 3}
    for _ in range(3):  # ever higher ballots
        c.campaign(3)
        assert prepares_from(c, 3)
        c.deliver(lambda s, d, m: s == 3)
        assert not [m for s, _, m in c.inflight if s in (1, 2) and isinstance(m, Promise)]
        c.drop(lambda s, d, m: d == 3)
    assert r3.ballot > ballot and r3.role is Role.CANDIDATE
    assert c.replicas[1].role is Role.LEADER and c.replicas[1].ballot == ballot  # type: ignore[index]
    c.propose(1, b"still")
    c.deliver(lambda s, d, m: d != 3)
    assert c.decided(1)[2] == (b"still",)


# --------------------------------------------------------------------- leader transfer


def test_a_transfer_hands_over_without_losing_a_proposed_or_queued_command() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.propose(1, b"proposed")  # slot 1, in flight
    token = next(_tokens)
    c.step(1, TransferLeadership(token, NodeId(2)))
    # Node 2 has not voted for slot 1 yet: no hand-over until it has.
    assert not any(isinstance(m, TimeoutNow) for _, _, m in c.inflight)
    c.propose(1, b"queued")  # waits: the next leader orders it
    assert c.replicas[1].pending_commands == 1  # type: ignore[index]
    c.deliver()
    assert c.replicas[2].role is Role.LEADER  # type: ignore[index]
    assert c.replicas[1].role is Role.FOLLOWER  # type: ignore[index]
    res = result(c, token)
    assert res is not None and res.ok and "node 2 took over" in res.detail
    assert [(n, r.command, r.leader) for n, r in c.redirects] == [(1, b"queued", 2)]
    c.propose(2, b"queued")
    c.deliver()
    settle(c)
    for n in (1, 2, 3):
        assert c.decided(n) == {1: (b"proposed",), 2: (b"queued",)}


def test_a_transfer_to_a_non_voter_is_refused() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    ok(c, 1, ADD, 4)
    for target in (4, 9):
        token = next(_tokens)
        c.step(1, TransferLeadership(token, NodeId(target)))
        res = result(c, token)
        assert res is not None and not res.ok and f"node {target} is not a voter" in res.detail
    assert c.replicas[1].role is Role.LEADER  # type: ignore[index]


def test_a_transfer_to_a_down_target_times_out_and_the_leader_resumes() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.crash(3)
    token = next(_tokens)
    c.step(1, TransferLeadership(token, NodeId(3)))
    c.propose(1, b"waiting")
    c.deliver()
    assert c.replicas[1].pending_commands == 1  # type: ignore[index]
    assert result(c, token) is None
    for _ in range(12):
        c.tick_all(60)
        c.deliver()
        if result(c, token) is not None:
            break
    res = result(c, token)
    assert res is not None and not res.ok and "did not take over" in res.detail
    assert c.replicas[1].role is Role.LEADER  # type: ignore[index]
    c.deliver()
    assert c.decided(1)[1] == (b"waiting",)
    c.propose(1, b"later")
    c.deliver()
    assert c.decided(1)[2] == (b"later",)


# ---------------------------------------------------------------------------- snapshots


def test_a_node_that_installs_a_snapshot_learns_the_membership_it_carries() -> None:
    c = Cluster(4, voters=(1, 2, 3), log_retain_entries=0)
    elect(c, 1)
    c.crash(3)
    ok(c, 1, ADD, 4)
    settle(c)
    ok(c, 1, PROMOTE, 4)
    c.propose(1, b"x")
    c.deliver()
    r1 = c.replicas[1]  # type: ignore[index]
    assert r1.applied_through == 3
    c.step(1, SnapshotTaken(Snapshot(slot=3, state=b"state-at-3")))
    assert r1.log_start == 4 and r1.snapshot is not None
    assert r1.snapshot.membership == r1.membership
    c.restart(3)
    settle(c)
    r3 = c.replicas[3]  # type: ignore[index]
    assert r3.snapshot is not None and r3.snapshot.state == b"state-at-3"
    assert r3.decided_through == 3 and r3.log_start == 4
    assert r3.membership == r1.membership
    assert r3.membership.voters == {1, 2, 3, 4}
    assert r3.membership_at(3) == r1.membership


def test_a_recovered_replica_rebuilds_its_membership_from_snapshot_and_log() -> None:
    c = Cluster(5, voters=(1, 2, 3), log_retain_entries=0)
    elect(c, 1)
    ok(c, 1, ADD, 4)  # slot 1
    settle(c)
    c.step(1, SnapshotTaken(Snapshot(slot=1, state=b"s1")))
    ok(c, 1, PROMOTE, 4)  # slot 2, after the snapshot: only in the decided log
    ok(c, 1, ADD, 5)  # slot 3
    before = c.replicas[1].membership  # type: ignore[index]
    assert before.voters == {1, 2, 3, 4} and before.learners == {5} and before.epoch == 3
    # Decided-only records wait for the next tick's unsynced write (the runner's policy):
    # write them, so that the durable log holds slots 2 and 3.
    c.runners[1].flush_decided()
    disk = c.disks[1]  # type: ignore[index]
    assert disk.snapshot is not None and disk.snapshot.membership is not None
    assert disk.snapshot.membership.learners == {4} and 1 not in disk.decided
    c.crash(1)
    c.restart(1)
    r1 = c.replicas[1]  # type: ignore[index]
    assert r1.membership == before
    assert r1.membership_at(1).learners == {4}
    # The same from the bare durable state, without the harness.
    fresh = Replica(
        c.configs[1],  # type: ignore[index]
        random.Random(0),
        DurableState(
            promised=disk.promised,
            accepted=dict(disk.accepted),
            decided=dict(disk.decided),
            snapshot=disk.snapshot,
        ),
    )
    assert fresh.membership == before and fresh.voters == {1, 2, 3, 4}


# ------------------------------------------------- phase 1 asks every reported membership


def _grow_while_node_3_is_cut_off(c: Cluster) -> None:
    """Leader 1 turns {1,2,3} into {1,2,3,4,5} (add 4, promote 4, add 5, promote 5) with votes
    from 1, 2 and later 4 only; node 3 learns none of it."""
    c.cut = {3}
    elect(c, 1)
    for how, node in ((ADD, 4), (PROMOTE, 4), (ADD, 5), (PROMOTE, 5)):
        settle(c, rounds=2)
        ok(c, 1, how, node)
    settle(c, rounds=2)
    r1, r2 = c.replicas[1], c.replicas[2]  # type: ignore[index]
    assert r1.membership.voters == {1, 2, 3, 4, 5} and r1.decided_through == 4
    assert r2.decided_through == 4, "node 2 must know the memberships to report them"
    assert c.replicas[3].decided_through == 0  # type: ignore[index]


@pytest.mark.parametrize("bug", [False, True], ids=["real-code", "planted-bug"])
def test_a_candidate_that_missed_membership_changes_asks_the_new_voters(bug: bool) -> None:
    """A value chosen by a majority of a newer membership survives a candidate that only knows
    an older one: the candidate learns the newer membership from a promise and must also win a
    majority of it, which includes an acceptor of the chosen value.

    With the planted bug "phase1_ignores_new_membership", node 3 wins with {2, 3} (a majority
    of the bootstrap voters it knows), never hears of X, and decides Y in X's slot."""
    bugs = frozenset({"phase1_ignores_new_membership"}) if bug else frozenset()
    c = Cluster(5, voters=(1, 2, 3), planted_bugs=bugs)
    _grow_while_node_3_is_cut_off(c)
    # X is chosen in slot 5 by {1, 4, 5}: a majority of the five voters. Nodes 2 and 3 never
    # see it, and node 1 is partitioned away at once.
    c.propose(1, b"X")
    c.drop(lambda s, d, m: isinstance(m, Accept) and d == 2)
    c.deliver(lambda s, d, m: {s, d} <= {1, 4, 5})
    assert decided_at(c, 5) == {1: (b"X",)}
    c.cut = {1}
    c.drop(lambda s, d, m: 1 in (s, d))

    # Node 3 still believes the voters are {1, 2, 3}; it campaigns, and a client sends it Y.
    r3 = c.replicas[3]  # type: ignore[index]
    assert r3.membership.voters == {1, 2, 3}
    c.campaign(3)
    c.deliver(between(2, 3))
    if bug:
        assert r3.role is Role.LEADER, "won on {2, 3} alone"
    else:
        # Node 2's promise reports {1,2,3,4,5}: a majority of it is needed too.
        assert r3.role is Role.CANDIDATE
        asked = {d for s, d, m in c.inflight if s == 3 and isinstance(m, Prepare)}
        assert asked == {4, 5}
    c.deliver()
    assert r3.role is Role.LEADER
    c.propose(3, b"Y")
    c.deliver()
    settle(c)
    assert r3.membership.voters == {1, 2, 3, 4, 5}, "node 3 re-proposed the memberships"
    assert r3.decided[6 if not bug else 5] == (b"Y",)
    if bug:
        # Agreement is broken: X was chosen in slot 5, and node 3 decided Y there.
        assert c.decided(1)[5] == (b"X",) and r3.decided[5] == (b"Y",)
        return
    # Nodes 4 and 5 promised and reported X, which node 3 re-proposed: it survives.
    for n in (2, 3, 4, 5):
        assert c.decided(n)[5] == (b"X",), n
        assert c.decided(n)[6] == (b"Y",), n


def test_the_membership_command_encoding_round_trips() -> None:
    m = Membership((Member(1, "", True), Member(4, "h:1", False)), epoch=1)
    assert membership_of(encode_membership(m)) == m
    assert membership_of((b"plain",)) is None
    c = Cluster(3)
    elect(c, 1)
    # A client cannot smuggle a membership in as an ordinary command.
    c.propose(1, encode_membership(m)[0])
    assert [r.reason for _, r in c.redirects] == ["refused"]
    assert not any(isinstance(x, Accept) for _, _, x in c.inflight)


# ------------------------------------------------ found while testing: compaction mid-campaign


@pytest.mark.parametrize("how", ["installs-a-snapshot", "takes-a-snapshot"])
def test_a_candidate_whose_log_is_compacted_mid_campaign_never_reuses_a_chosen_slot(
    how: str,
) -> None:
    """Slot 2 holds b, chosen by {1, 2}; node 3 never saw it. Node 2 campaigns from slot 1,
    then (still a candidate) compacts slot 2 away: it installs a peer's snapshot, or catches
    up and snapshots itself. Its own promise can no longer report slot 2, node 3's does not
    either: leading from slot 1 would propose a new command into slot 2."""
    c = Cluster(3, log_retain_entries=0)
    elect(c, 1)
    c.propose(1, b"a")  # slot 1: accepted by 1 and 3
    c.propose(1, b"b")  # slot 2: accepted by 1 and 2
    c.deliver(lambda s, d, m: isinstance(m, Accept) and d == 3 and m.entries[0].slot == 1)
    c.deliver(lambda s, d, m: isinstance(m, Accept) and d == 2 and m.entries[0].slot == 2)
    c.drop(kind(Accept))
    c.deliver(kind(Accepted))
    assert c.decided(1) == {1: (b"a",), 2: (b"b",)}
    if how == "installs-a-snapshot":
        c.step(1, SnapshotTaken(Snapshot(slot=2, state=b"state-at-2")))
    # Node 2 learns slot 2 is decided, and asks node 1 for slot 1: a snapshot or the entries.
    c.tick_all(60)
    c.drop(lambda s, d, m: d == 3 or s == 3)
    c.deliver(lambda s, d, m: d == 2 and not isinstance(m, CatchUpReply))
    c.deliver(kind(CatchUpRequest))
    held = [x for x in c.inflight if isinstance(x[2], CatchUpReply)]
    assert len(held) == 1
    c.inflight = []
    c.cut = {1}  # node 1 is partitioned away
    r2 = c.replicas[2]  # type: ignore[index]
    assert r2.decided_through == 0 and 2 in r2.decided
    c.campaign(2)  # phase 1 from slot 1
    c.inflight.extend(held)
    c.deliver(kind(CatchUpReply))
    c.install_snapshots(2)
    assert r2.role is Role.CANDIDATE and r2.decided_through == 2
    if how == "takes-a-snapshot":
        c.step(2, SnapshotTaken(Snapshot(slot=2, state=b"state-at-2")))
    assert r2.log_start == 3
    # Node 3 promises (it reports slot 1 only); node 2 leads and is sent a new command. Node 3
    # is kept from catching up, so it can only learn slots from node 2's commit point.
    not_catchup = lambda s, d, m: not isinstance(m, CatchUpRequest | CatchUpReply)  # noqa: E731
    c.deliver(not_catchup)
    assert c.replicas[2].role is Role.LEADER  # type: ignore[index]
    c.propose(2, b"w")
    for _ in range(3):
        c.deliver(not_catchup)
        c.drop(lambda s, d, m: True)
        c.tick_all(60)
    r3 = c.replicas[3]  # type: ignore[index]
    assert r3.decided.get(2) in (None, (b"b",)), "a new command decided in chosen slot 2"
    assert r3.decided[3] == (b"w",)


def test_a_leader_that_steps_down_for_lack_of_a_quorum_does_not_name_itself_leader() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.cut = {1}
    for _ in range(12):
        c.tick_all(60)
        c.deliver()
    r1 = c.replicas[1]  # type: ignore[index]
    assert r1.role is not Role.LEADER and r1.leader_hint != 1
    c.drop(lambda s, d, m: True)
    c.propose(1, b"x")
    assert [r.leader for n, r in c.redirects if n == 1] == [None]


# ------------------------------------------------------------------------- admin answers


def test_a_follower_refuses_a_change_and_names_the_leader() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    settle(c, rounds=1)
    detail = refused(c, 2, ADD, 4)
    assert detail == "not the leader (node 1 is)"
    token = next(_tokens)
    c.step(3, TransferLeadership(token, None))
    res = result(c, token)
    assert res is not None and not res.ok and res.detail == "not the leader (node 1 is)"


def test_a_change_cut_short_by_a_new_leader_is_reported_as_unknown() -> None:
    c = Cluster(4, voters=(1, 2, 3))
    elect(c, 1)
    token = change(c, 1, ADD, 4, deliver=False)
    c.deliver(lambda s, d, m: isinstance(m, Accept) and d == 2)  # accepted by 2 only
    c.drop(lambda s, d, m: True)
    elect(c, 3)  # node 3's phase 1 finds the change at node 2 and finishes it
    res = result(c, token)
    assert res is not None and not res.ok and res.unknown and res.slot == 1
    assert "may still take effect" in res.detail
    assert c.replicas[3].membership.learners == {4}  # type: ignore[index]


def test_a_transfer_to_the_best_voter_picks_an_answering_one() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.crash(2)
    settle(c, rounds=12)  # node 2 silent for longer than an election timeout
    token = next(_tokens)
    c.step(1, TransferLeadership(token, None))
    c.deliver()
    res = result(c, token)
    assert res is not None and res.ok and "node 3 took over" in res.detail
    assert c.replicas[3].role is Role.LEADER  # type: ignore[index]


def test_a_stale_timeout_now_is_ignored() -> None:
    c = Cluster(3)
    elect(c, 1)
    old = c.replicas[1].ballot  # type: ignore[index]
    elect(c, 2)
    c.step(3, Received(NodeId(1), TimeoutNow(old)))
    assert c.replicas[3].role is Role.FOLLOWER  # type: ignore[index]
    assert prepares_from(c, 3) == []


def test_a_removed_node_id_is_never_admitted_again() -> None:
    """A removed node may come back with a wiped disk; under its old id it would vote having
    forgotten its votes. The membership remembers removed ids and refuses them."""
    m = Membership.bootstrap((NodeId(1), NodeId(2), NodeId(3)))
    after = apply_change(m, MembershipChange(ChangeKind.REMOVE, NodeId(3)))
    assert after is not None and after.retired == (3,) and NodeId(3) not in after.voters
    with pytest.raises(ChangeRefused, match="never reused"):
        apply_change(after, MembershipChange(ChangeKind.ADD, NodeId(3), "10.0.0.3:7103"))
    fresh = apply_change(after, MembershipChange(ChangeKind.ADD, NodeId(4), "10.0.0.4:7104"))
    assert fresh is not None and fresh.retired == (3,) and NodeId(4) in fresh.learners
