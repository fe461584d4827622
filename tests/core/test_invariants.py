"""The core's invariant checks fire: each is shown failing on a planted violation, so a
green run means the invariants held, not that nothing was checked."""

from __future__ import annotations

import random

import pytest

from paxosd.core.config import CoreConfig
from paxosd.core.io import Campaign, ClientCommand, DurableState, ReadIndex, Received, Tick
from paxosd.core.messages import Accept, Heartbeat, Promise
from paxosd.core.readindex import ReadRounds
from paxosd.core.replica import Replica
from paxosd.core.types import (
    ZERO_BALLOT,
    AcceptedEntry,
    Ballot,
    Member,
    Membership,
    NodeId,
)


def replica(cls: type[Replica] = Replica, nodes: int = 3) -> Replica:
    members = tuple(NodeId(i) for i in range(1, nodes + 1))
    return cls(CoreConfig(node_id=NodeId(1), members=members), random.Random(1))


def test_a_healthy_replica_passes_its_checks() -> None:
    r = replica(nodes=1)
    r.step(Campaign())
    r.step(Tick(1000))
    assert r.is_leader


class AppliesAhead(Replica):
    """Planted: hands out a slot for apply before it is decided."""

    def _hand_out_decided(self) -> None:
        self.applied_through = self.decided_through + 1


def test_applied_beyond_decided_is_caught() -> None:
    # A lone voter wins at once and decides a command when ready() proposes it.
    r = replica(AppliesAhead, nodes=1)
    r.step(Campaign())
    r.step(ClientCommand(b"put"))
    with pytest.raises(AssertionError, match="applied beyond decided"):
        r.ready()


def test_a_vote_above_the_promise_is_caught() -> None:
    r = replica()
    with pytest.raises(AssertionError, match="other than the one promised"):
        r._vote(AcceptedEntry(1, Ballot(5, 2), (b"x",)), durable=True)


def test_a_vote_above_the_promise_on_disk_is_caught_at_recovery() -> None:
    durable = DurableState(
        promised=ZERO_BALLOT,
        accepted={1: AcceptedEntry(1, Ballot(3, 2), (b"x",))},
        decided={},
    )
    with pytest.raises(AssertionError, match="accepted above promised"):
        Replica(CoreConfig(NodeId(1), (NodeId(1), NodeId(2))), random.Random(1), durable)


class LeadsWithoutPromise(Replica):
    """Planted: a leader that forgets it promised its own ballot."""

    def _heartbeat(self, resend: bool = True) -> None:
        super()._heartbeat(resend)
        self.promised = Ballot(self.promised.round + 1, 9)
        self.ballot_seen = self.promised


def test_a_leader_above_its_promise_is_caught() -> None:
    r = replica(LeadsWithoutPromise, nodes=1)
    with pytest.raises(AssertionError, match="promised someone else"):
        r.step(Campaign())


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ((Member(2, "", True), Member(1, "", True)), "sorted"),
        ((Member(1, "", True), Member(1, "", False)), "unique"),
        ((Member(1, "", False),), "at least one voter"),
    ],
    ids=["unsorted", "duplicate", "no-voter"],
)
def test_a_broken_membership_is_refused(members: tuple[Member, ...], why: str) -> None:
    Membership((Member(1, "", True), Member(2, "", False))).check()
    with pytest.raises(AssertionError, match=why):
        Membership(members).check()


def test_a_replica_refuses_to_install_a_broken_membership() -> None:
    r = replica()
    with pytest.raises(AssertionError, match="at least one voter"):
        r._set_membership(Membership((Member(1, "", False),)), 0)


def leader_with_work(cls: type[Replica] = Replica) -> Replica:
    """A 3-voter leader (node 2 promised) with a command queued and a read registered."""
    r = replica(cls)
    r.step(Campaign())
    ballot = r.ballot
    r.step(Received(NodeId(2), Promise(ballot, 1, (), 0, True)))
    assert r.is_leader
    r.advance(r.ready())
    r.step(ClientCommand(b"put"))
    r.step(ReadIndex(7))
    return r


def check_has_ready_is_pure(r: Replica) -> None:
    ld = r.leader
    assert ld is not None
    before = (r.pending_commands, ld.next_slot, ld.reads.seq, len(ld.accept_out))
    assert r.has_ready()
    assert r.has_ready()
    assert (r.pending_commands, ld.next_slot, ld.reads.seq, len(ld.accept_out)) == before


def test_has_ready_proposes_nothing_and_ready_does() -> None:
    r = leader_with_work()
    check_has_ready_is_pure(r)
    rd = r.ready()
    assert r.pending_commands == 0
    assert any(isinstance(o.msg, Accept) for o in rd.early_messages)
    assert any(isinstance(o.msg, Heartbeat) and o.msg.read_seq == 1 for o in rd.early_messages)
    r.advance(rd)
    assert not r.has_ready()


class ProposesInHasReady(Replica):
    """Planted: the old has_ready, which proposed as a side effect."""

    def has_ready(self) -> bool:
        self._flush_proposals()
        return super().has_ready()


def test_the_purity_check_catches_a_has_ready_that_proposes() -> None:
    with pytest.raises(AssertionError):
        check_has_ready_is_pure(leader_with_work(ProposesInHasReady))


def test_a_read_is_released_by_a_majority_echoing_its_round_and_not_before() -> None:
    rounds = ReadRounds()
    rounds.register(token=5, index=9)
    assert rounds.start_round() and not rounds.start_round()
    voters = frozenset({NodeId(1), NodeId(2), NodeId(3)})
    assert rounds.release(voters, NodeId(1)) == []  # only our own echo so far
    assert rounds.ack(NodeId(3), 1) and not rounds.ack(NodeId(3), 1)
    assert rounds.release(voters, NodeId(1)) == [(5, 9)]
    rounds.check()


def test_the_read_round_check_catches_an_echo_of_a_round_never_sent() -> None:
    rounds = ReadRounds()
    rounds.ack(NodeId(2), 3)  # planted: credited with round 3 while none was sent
    with pytest.raises(AssertionError, match="never sent"):
        rounds.check()
