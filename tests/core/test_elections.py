"""Leader stability, scripted: pre-vote, stickiness and check-quorum.

Each test that says "the leader stays" has a twin running ``EagerReplica`` (no pre-vote, no
stickiness: the behaviour before them) that shows the same script *does* change the leader,
so the assertion can fail.
"""

from __future__ import annotations

import random

import pytest

from paxosd.core.io import ReadIndex, Received, Tick, TransferLeadership
from paxosd.core.messages import Heartbeat, Prepare, PreVote, PreVoteReply
from paxosd.core.quorum import has_majority, majority, nth_highest
from paxosd.core.replica import Replica, Role
from paxosd.core.types import Ballot, NodeId
from tests.core.harness import Cluster, kind, to

HEARTBEAT_MS = 50  # CoreConfig's default heartbeat interval


class EagerReplica(Replica):
    """Planted bug: campaigns as soon as its timer fires and promises any higher ballot,
    however recently it heard the leader (no pre-vote, no stickiness)."""

    def _hears_leader(self) -> bool:
        return False

    def _start_prevote(self) -> None:
        self._start_election()


def make(n: int = 3, eager: bool = False) -> Cluster:
    c = Cluster(n)
    if eager:
        for m in c.members:
            c._start(m, EagerReplica(c.configs[m], random.Random(m)))
    return c


def restart(c: Cluster, nid: int, eager: bool) -> None:
    """The harness's restart, with this test's replica class."""
    c.down.discard(nid)
    durable = c.sim_disks[nid].recover()
    cls = EagerReplica if eager else Replica
    c._start(nid, cls(c.configs[NodeId(nid)], random.Random(nid + 100), durable, c.now_ms))
    c.applied[nid] = []
    c.drain(nid)


def elect(c: Cluster, nid: int) -> Ballot:
    c.campaign(nid)
    c.deliver()
    r = c.replicas[nid]  # type: ignore[index]
    assert r.role is Role.LEADER
    heartbeat(c)
    return r.ballot


def heartbeat(c: Cluster, rounds: int = 1) -> None:
    """One heartbeat interval: every live node ticks, everything in flight is delivered."""
    for _ in range(rounds):
        c.tick_all(HEARTBEAT_MS)
        c.deliver()


def leaders(c: Cluster) -> list[tuple[int, Ballot]]:
    return [
        (m, r.ballot) for m, r in c.replicas.items() if m not in c.down and r.role is Role.LEADER
    ]


# ---------------------------------------------------------------- majority math


def test_majority_is_more_than_half_and_any_two_intersect() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    for n in range(1, 8):
        q = majority(n)
        assert 2 * q > n and 2 * (q - 1) <= n
    voters = frozenset({1, 2, 3})
    assert has_majority(voters, {1, 2}) and not has_majority(voters, {1, 4, 5})
    assert nth_highest([9, 5, 1], 3) == 5 and nth_highest([9], 3) == 0


# ---------------------------------------------------------------- follower faults


@pytest.mark.parametrize("eager", [False, True], ids=["real-code", "planted-eager"])
def test_a_restarted_follower_that_hears_no_leader_does_not_depose_it(eager: bool) -> None:
    """The field report: the leader's connection to the restarted node was still backing
    off, so the node heard nothing, timed out and campaigned with a higher ballot."""
    c = make(eager=eager)
    ballot = elect(c, 1)
    c.crash(3)
    heartbeat(c, 3)
    restart(c, 3, eager)
    c.cut = set()
    # Nothing from the others reaches node 3 (their reconnect back-off); it times out.
    c.time_out(3)
    c.drop(lambda s, d, m: d == 3)
    c.deliver()
    heartbeat(c, 4)  # the connections are back
    if eager:
        assert leaders(c) != [(1, ballot)], "the planted bug should have deposed node 1"
        return
    assert leaders(c) == [(1, ballot)]
    r3 = c.replicas[3]  # type: ignore[index]
    assert r3.role is Role.FOLLOWER and r3.leader_hint == 1 and r3.promised == ballot


@pytest.mark.parametrize("eager", [False, True], ids=["real-code", "planted-eager"])
def test_a_follower_cut_off_alone_rejoins_without_an_election(eager: bool) -> None:
    c = make(eager=eager)
    ballot = elect(c, 1)
    c.cut = {3}
    for _ in range(30):  # 1.5 s: node 3's timer fires again and again
        heartbeat(c)
    assert leaders(c) == [(1, ballot)]
    c.cut = set()
    heartbeat(c, 4)
    if eager:
        assert leaders(c) != [(1, ballot)], "the planted bug should have deposed node 1"
        return
    assert leaders(c) == [(1, ballot)]
    assert c.replicas[3].promised == ballot  # type: ignore[index]


def test_a_paused_follower_whose_timer_fires_first_does_not_depose_the_leader() -> None:
    c = make()
    ballot = elect(c, 1)
    for _ in range(20):  # node 3 stalls for a second; what is sent to it waits
        c.now_ms += HEARTBEAT_MS
        for n in (1, 2):
            c.step(n, Tick(c.now_ms))
        c.deliver(lambda s, d, m: d != 3)
    # It resumes and its loop sees only timers for a while (its election deadline is long
    # past; the first tick re-counts it from now, then it fires).
    sent: list[object] = []
    for _ in range(c.configs[NodeId(3)].election_timeout_ms_max // HEARTBEAT_MS + 1):
        c.tick_all(HEARTBEAT_MS)
        sent += [m for s, _, m in c.inflight if s == 3]
        c.deliver(lambda s, d, m: d != 3)
    assert any(isinstance(m, PreVote) for m in sent)
    assert not any(isinstance(m, Prepare) for m in sent)
    c.deliver()
    heartbeat(c, 3)
    assert leaders(c) == [(1, ballot)]


def test_an_acceptor_that_hears_the_leader_refuses_a_prevote_and_a_plain_prepare() -> None:
    c = make()
    ballot = elect(c, 1)
    higher = Ballot(ballot.round + 5, 3)
    c.step(2, Received(NodeId(3), PreVote(ballot=higher)))
    replies = [m for s, d, m in c.inflight if s == 2 and isinstance(m, PreVoteReply)]
    assert [r.granted for r in replies] == [False]
    c.inflight = []
    c.step(2, Received(NodeId(3), Prepare(ballot=higher, from_slot=1)))
    assert c.inflight == [], "a plain prepare is ignored while the leader is heard"
    assert c.replicas[2].promised == ballot  # type: ignore[index]
    # A transfer's prepare is answered: the leader itself asked for the election.
    c.step(2, Received(NodeId(3), Prepare(ballot=higher, from_slot=1, transfer=True)))
    assert c.replicas[2].promised == higher  # type: ignore[index]


def test_an_acceptor_that_stopped_hearing_the_leader_grants_a_prevote_without_promising() -> None:
    c = make()
    ballot = elect(c, 1)
    c.crash(1)
    c.now_ms += c.configs[NodeId(2)].election_timeout_ms_min
    c.step(2, Tick(c.now_ms))
    c.inflight = []
    higher = Ballot(ballot.round + 1, 3)
    c.step(2, Received(NodeId(3), PreVote(ballot=higher)))
    replies = [m for s, d, m in c.inflight if s == 2 and isinstance(m, PreVoteReply)]
    assert [r.granted for r in replies] == [True]
    assert c.replicas[2].promised == ballot, "a pre-vote binds nobody"  # type: ignore[index]


# ---------------------------------------------------------------- leader faults


def test_a_dead_leader_is_replaced_within_a_few_election_timeouts() -> None:
    c = make()
    ballot = elect(c, 1)
    c.crash(1)
    limit = 4 * c.configs[NodeId(2)].election_timeout_ms_max // HEARTBEAT_MS
    for _ in range(limit):
        heartbeat(c)
        if leaders(c):
            break
    assert [b > ballot for _, b in leaders(c)] == [True]


def test_leader_transfer_still_moves_leadership_to_the_target() -> None:
    c = make()
    elect(c, 1)
    c.step(1, TransferLeadership(token=5, target=NodeId(3)))
    c.deliver()
    heartbeat(c, 2)
    assert [n for n, _ in leaders(c)] == [3]
    assert [(x.token, x.ok) for _, x in c.admin] == [(5, True)]


# ---------------------------------------------------------------- check-quorum


def test_a_cut_off_leader_steps_down_within_an_election_timeout_and_answers_no_read() -> None:
    c = make()
    elect(c, 1)
    c.cut = {1}
    r1 = c.replicas[1]  # type: ignore[index]
    cut_at = c.now_ms
    c.step(1, ReadIndex(11))
    stepped_down_at = None
    for _ in range(40):
        heartbeat(c)
        if r1.role is not Role.LEADER:
            stepped_down_at = c.now_ms
            break
    assert stepped_down_at is not None, "a leader cut off from every follower kept leading"
    # "About an election timeout": the check-quorum window plus one heartbeat of slack.
    window = c.configs[NodeId(1)].election_timeout_ms_max
    assert stepped_down_at - cut_at <= window + 2 * HEARTBEAT_MS
    out = [x for n, x in c.reads if n == 1]
    assert [(x.token, x.index) for x in out] == [(11, None)]  # type: ignore[attr-defined]
    # And a read that arrives after stepping down is refused at once.
    c.step(1, ReadIndex(12))
    out = [x for n, x in c.reads if n == 1]
    assert (12, None) in [(x.token, x.index) for x in out]  # type: ignore[attr-defined]


def test_a_leader_with_a_majority_keeps_leading_while_one_follower_is_gone() -> None:
    c = make()
    ballot = elect(c, 1)
    c.crash(3)
    heartbeat(c, 40)
    assert leaders(c) == [(1, ballot)]


def test_the_majority_side_elects_and_the_old_leader_follows_after_healing() -> None:
    c = make(5)
    old = elect(c, 1)
    c.cut = {1}
    for _ in range(60):
        heartbeat(c)
    new = [(n, b) for n, b in leaders(c) if n != 1]
    assert len(new) == 1 and new[0][1] > old
    assert c.replicas[1].role is not Role.LEADER  # type: ignore[index]
    c.cut = set()
    heartbeat(c, 4)
    assert leaders(c) == new
    assert c.replicas[1].leader_hint == new[0][0]  # type: ignore[index]


def test_heartbeats_from_the_leader_reach_a_follower_that_was_campaigning_alone() -> None:
    """A pre-vote in progress ends when the leader is heard."""
    c = make()
    ballot = elect(c, 1)
    c.cut = {3}
    c.time_out(3)
    assert c.replicas[3]._prevote is not None  # type: ignore[index]
    c.cut = set()
    c.inflight = [x for x in c.inflight if x[1] != 3]
    c.tick_all(HEARTBEAT_MS)
    c.deliver(kind(Heartbeat))
    c.deliver(to(3))
    r3 = c.replicas[3]  # type: ignore[index]
    assert r3._prevote is None and r3.leader_hint == 1
    heartbeat(c, 2)
    assert leaders(c) == [(1, ballot)]
