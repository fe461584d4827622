"""Thrifty accepts: the leader asks only a majority's worth of followers to vote; the others
keep the value quietly (no fsync, no vote) and learn it at the commit point."""

from __future__ import annotations

from paxosd.core.io import ClientCommand
from paxosd.core.messages import Accept, Accepted, Message
from paxosd.core.replica import Role
from paxosd.net.framing import peer_codec
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


def test_big_values_travel_in_messages_that_fit_the_frame_cap_and_all_decide() -> None:
    """Big values against a small message budget (12 KiB commands and 64 KiB here; 512 KiB
    puts and 3 MiB in a daemon). The leader keeps at most a third of the budget undecided,
    so no accept or promise outgrows it, and catch-up replies are split by bytes. Before,
    ten such commands arriving together went out as one Accept, which the transport (4 MiB
    frames) dropped at every re-send: nothing was ever decided."""
    budget = 64 << 10
    codec = peer_codec(frame_bytes_max=1 << 30)
    c = Cluster(3, thrifty_accepts=False, message_bytes_max=budget, batch_bytes_max=16 << 10)
    elect(c, 1)
    c.crash(3)  # misses all ten, and catches up afterwards
    leader = c.replicas[1]  # type: ignore[index]
    for i in range(10):
        leader.step(ClientCommand(b"%d" % i + b"x" * (12 << 10)))
    c.drain(1)  # one loop turn: one Ready for all ten
    sizes: list[int] = []

    def up(s: int, d: int, m: Message) -> bool:
        sizes.append(len(codec.encode(s, m)))  # every message, also those sent in cascades
        return d not in c.down

    for _ in range(60):
        if len(c.decided(1)) >= 10 and 3 in c.down:
            c.restart(3)
        c.deliver(up)
        c.drop(lambda s, d, m: d in c.down)
        c.tick_all(60)
    assert max(sizes) <= budget, max(sizes)
    assert all(len(c.decided(n)) >= 10 for n in (1, 2, 3)), [len(c.decided(n)) for n in (1, 2, 3)]


def test_a_new_leader_recovers_big_undecided_values_from_promises_within_the_budget() -> None:
    """The leader dies after its followers accepted big values but before any vote reached it.
    The undecided bytes it may leave behind fit one promise, so the next candidate wins and
    re-proposes them. Were all ten proposed at once, every promise would be over the budget
    (incomplete), and no candidate could ever lead."""
    budget = 64 << 10
    codec = peer_codec(frame_bytes_max=1 << 30)
    c = Cluster(3, thrifty_accepts=False, message_bytes_max=budget, batch_bytes_max=16 << 10)
    elect(c, 1)
    leader = c.replicas[1]  # type: ignore[index]
    for i in range(10):
        leader.step(ClientCommand(b"%d" % i + b"x" * (12 << 10)))
    c.drain(1)
    c.deliver(lambda s, d, m: isinstance(m, Accept))  # accepted; the votes never arrive
    c.crash(1)
    c.drop(lambda s, d, m: d == 1)
    undecided = {s for s in c.replicas[2].accepted if s not in c.decided(2)}  # type: ignore[index]
    assert undecided, "the scenario needs values accepted and not decided"
    sizes: list[int] = []

    def up(s: int, d: int, m: Message) -> bool:
        sizes.append(len(codec.encode(s, m)))
        return d not in c.down

    c.campaign(2)
    for _ in range(40):
        c.deliver(up)
        c.drop(lambda s, d, m: d in c.down)
        if c.replicas[2].role is Role.LEADER:  # type: ignore[index]
            break
        c.tick_all(60)
    assert c.replicas[2].role is Role.LEADER  # type: ignore[index]
    c.tick_all(60)
    c.deliver(up)
    assert undecided <= set(c.decided(2)) and undecided <= set(c.decided(3))
    assert max(sizes) <= budget, max(sizes)
