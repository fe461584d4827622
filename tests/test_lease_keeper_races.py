"""The leader's lease keeper (paxosd/server/leases.py) against a scripted runner: the test
decides when each of the keeper's proposals is applied, so races between a checkpoint and a
keep-alive can be laid out step by step."""

from __future__ import annotations

from dataclasses import dataclass, field

from paxosd.server.leases import LEASE_CONN, LeaseKeeper, LeaseSettings
from paxosd.server.replies import Reply
from paxosd.statemachine.commands import (
    Command,
    LeaseCheckpoint,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseKept,
    decode_command,
    encode_command,
)
from paxosd.statemachine.machine import StateMachine

ET = 600


@dataclass
class _Ballot:
    round: int
    node: int


@dataclass
class _Replica:
    is_leader: bool
    ballot: _Ballot
    leader_hint: int | None = None


@dataclass
class _Clock:
    now: int = 0

    def now_ms(self) -> int:
        return self.now


class _Hooks:
    def proposed(self, command: bytes) -> None:
        pass


@dataclass
class ScriptedRunner:
    """What the keeper touches of a Runner; proposals wait in ``proposed`` until decided."""

    sm: StateMachine
    replica: _Replica
    clock: _Clock = field(default_factory=_Clock)
    replies: list[Reply] = field(default_factory=list)
    proposed: dict[int, bytes] = field(default_factory=dict)
    hooks: _Hooks = field(default_factory=_Hooks)

    def address_of(self, node: int | None) -> bytes:
        return b""

    def on_client_command(self, conn_id: int, token: int, command: bytes, via_log: bool) -> None:
        assert conn_id == LEASE_CONN and via_log
        self.proposed[token] = command


class Cluster:
    """One log (a state machine shared by the nodes, applied in order) and a keeper per
    node, each with its own runner view; time is the same on every node."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.clock = _Clock()
        self.seq = 0
        self.nodes: dict[int, tuple[LeaseKeeper, ScriptedRunner]] = {}
        for nid in (1, 2):
            runner = ScriptedRunner(self.sm, _Replica(False, _Ballot(0, 0)), self.clock)
            self.nodes[nid] = (LeaseKeeper(LeaseSettings(ET), nid), runner)

    def lead(self, nid: int, rnd: int) -> None:
        for other, (_, runner) in self.nodes.items():
            runner.replica.is_leader = other == nid
            runner.replica.ballot = _Ballot(rnd, nid)
        self.drain()

    def at(self, ms: int) -> None:
        self.clock.now = ms
        for keeper, runner in self.nodes.values():
            keeper.tick(runner)

    def drain(self) -> None:
        """Every node's keeper after a drain, as the runner calls it (the changes of the
        shared log are seen by each node at once)."""
        changes = self.sm.take_lease_changes()
        for keeper, runner in self.nodes.values():
            self.sm._lease_changes = list(changes)
            keeper.after_drain(runner)
        self.sm._lease_changes = []

    def client(self, op: object) -> None:
        self.seq += 1
        raw = encode_command(Command("c", self.seq, "s", op))  # type: ignore[arg-type]
        self.sm.apply(self.sm.applied_through + 1, (raw,))
        self.drain()

    def decide(self, nid: int, token: int) -> object:
        """Apply the keeper's proposal ``token`` of node ``nid`` and answer it."""
        runner = self.nodes[nid][1]
        raw = runner.proposed.pop(token)
        ((_, _, result),) = self.sm.apply(self.sm.applied_through + 1, (raw,))
        runner.replies.append(Reply(LEASE_CONN, token, "ok", result))
        self.drain()
        return decode_command(raw).op

    def decide_all(self, nid: int) -> None:
        for token in sorted(self.nodes[nid][1].proposed):
            self.decide(nid, token)

    def keep_alive(self, nid: int, lease_id: int, receipt_ms: int) -> object:
        keeper, runner = self.nodes[nid]
        return keeper.serve(runner, 7, 1, LeaseKeepAlive(lease_id=lease_id), receipt_ms)


def test_a_checkpoint_given_up_but_decided_later_does_not_shorten_an_acknowledged_lease() -> None:
    """A checkpoint that waited in the leader's queue past the keeper's retry time is given
    up, and a keep-alive is acknowledged without clearing it through the log; the checkpoint
    is then decided after all, with the remaining time of before the keep-alive. A next
    leader counting from it must not expire the lease before TTL from that keep-alive."""
    c = Cluster()
    c.lead(1, 1)
    c.client(LeaseGrant(ttl=10, lease_id=5, min_ttl=1))
    c.at(10)
    c.decide_all(1)  # the takeover: the lease is checkpointed at its full TTL
    assert c.keep_alive(1, 5, 100) is None  # parked until that checkpoint is cleared
    c.at(110)
    c.decide_all(1)  # the reset
    assert c.nodes[1][1].replies.pop().status == "ok"
    quiet = LeaseSettings(ET).checkpoint_after_ms_for(10)
    since = 100 + quiet + 10
    c.at(since)  # quiet long enough: a checkpoint is proposed
    ((token, raw),) = c.nodes[1][1].proposed.items()
    assert isinstance(decode_command(raw).op, LeaseCheckpoint)
    for ms in range(since + 10, since + LeaseSettings(ET).retry_ms + 20, 10):
        c.at(ms)  # the runner ticks often; not answered in time: given up
    assert not c.nodes[1][0]._checkpointing
    receipt = c.clock.now + 50
    c.at(receipt)
    answer = c.keep_alive(1, 5, receipt)
    if answer is None:  # parked: the lease is cleared through the log first
        c.at(receipt + 10)
        for t in sorted(c.nodes[1][1].proposed):
            c.decide(1, t)  # the old checkpoint first (one queue), then the reset
        assert c.nodes[1][1].replies.pop().status == "ok"
    else:
        assert isinstance(answer, LeaseKept)
        c.at(receipt + 10)
        c.decide(1, token)  # the old checkpoint, decided after all
    c.lead(2, 2)  # node 1 fails; node 2 takes over
    c.at(receipt + 20)
    c.decide_all(2)
    new_leader = c.nodes[2][0]
    assert new_leader.ready
    assert new_leader.deadline[5] >= receipt + 10_000
