"""Thrifty accepts: the leader asks only a majority's worth of followers to vote; the others
keep the value quietly (no fsync, no vote) and learn it at the commit point."""

from __future__ import annotations

from paxosd.core.messages import Accept, Accepted
from paxosd.core.replica import Role
from tests.core.harness import Cluster


def elect(c: Cluster, nid: int) -> None:
    c.campaign(nid)
    c.deliver()
    assert c.replicas[nid].role is Role.LEADER  # type: ignore[index]


def accepts_for(c: Cluster, slot: int) -> dict[int, bool]:
    """dst -> quiet, for the accepts of ``slot`` waiting in flight."""
    return {
        d: m.quiet
        for _, d, m in c.inflight
        if isinstance(m, Accept) and any(e.slot == slot for e in m.entries)
    }


def test_one_follower_votes_the_other_keeps_the_value_quietly_and_learns_it() -> None:
    c = Cluster(3, thrifty_accepts=True)
    elect(c, 1)
    c.propose(1, b"v")
    sent = accepts_for(c, 1)
    assert list(sent.values()) == [False], "only the voter hears of the value at once"
    quiet = 5 - next(iter(sent))  # the other of nodes 2 and 3
    c.deliver()
    assert c.decided(1) == {1: (b"v",)}
    assert 1 not in c.replicas[quiet].accepted  # type: ignore[index]
    c.tick_all(10)  # the next tick sends the held value, quietly
    assert accepts_for(c, 1) == {quiet: True}
    c.deliver(lambda s, d, m: isinstance(m, Accept))
    assert 1 not in c.disks[quiet].accepted  # type: ignore[index]  # no vote, nothing on disk
    assert not any(isinstance(m, Accepted) and s == quiet for s, _, m in c.inflight)
    c.tick_all(60)  # the heartbeat's commit point
    c.deliver()
    assert c.decided(quiet) == {1: (b"v",)}


def test_held_quiet_accepts_go_out_at_once_when_a_message_is_full() -> None:
    c = Cluster(3, thrifty_accepts=True, accept_entries_per_message_max=4, batch_commands_max=1)
    elect(c, 1)
    for i in range(4):
        c.propose(1, b"v%d" % i)
    quiet_sends = [
        (d, [e.slot for e in m.entries])
        for _, d, m in c.inflight
        if isinstance(m, Accept) and m.quiet
    ]
    assert len(quiet_sends) == 1 and len(quiet_sends[0][1]) == 4, quiet_sends


def test_a_silent_voter_is_replaced_by_a_loud_resend_to_the_quiet_follower() -> None:
    c = Cluster(3, thrifty_accepts=True)
    elect(c, 1)
    c.propose(1, b"v")
    sent = accepts_for(c, 1)
    loud = next(d for d, q in sent.items() if not q)
    quiet = 5 - loud
    c.crash(loud)
    c.drop(lambda s, d, m: d == loud)
    c.deliver()
    assert 1 not in c.decided(1)
    c.tick_all(60)  # heartbeat interval: accepts lacking votes go out again, asking for votes
    assert accepts_for(c, 1)[quiet] is False
    c.deliver()
    assert c.decided(1) == {1: (b"v",)}
    assert c.disks[quiet].accepted[1].value == (b"v",)  # type: ignore[index]  # a durable vote
