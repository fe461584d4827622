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
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseKept,
    LeaseRevoke,
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
        gone = self.sm.take_lease_revocations()
        for keeper, runner in self.nodes.values():
            self.sm._lease_changes = list(changes)
            self.sm._lease_revocations = list(gone)
            keeper.after_drain(runner)
        self.sm._lease_changes = []
        self.sm._lease_revocations = []

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


def _granted_and_kept(c: Cluster, receipt: int) -> None:
    """Lease 5 (TTL 10 s) granted, taken over by node 1 and kept alive at ``receipt``."""
    c.lead(1, 1)
    c.client(LeaseGrant(ttl=10, lease_id=5, min_ttl=1))
    c.at(10)
    c.decide_all(1)  # the takeover
    assert c.keep_alive(1, 5, receipt) is None  # parked until the takeover's checkpoint clears
    c.at(receipt + 10)
    c.decide_all(1)
    assert c.nodes[1][1].replies.pop().status == "ok"


def test_a_lease_revoked_and_granted_again_under_its_id_gets_a_fresh_ttl() -> None:
    """etcd lets a client choose the lease id: revoked, then granted again under the same
    id, the new lease lives its TTL from its grant, not what was left of the old one."""
    c = Cluster()
    _granted_and_kept(c, 100)  # the old lease would run out at 10,100
    c.at(5000)
    c.client(LeaseRevoke(5))
    c.at(9000)
    c.client(LeaseGrant(ttl=10, lease_id=5, min_ttl=1))
    keeper = c.nodes[1][0]
    assert keeper.deadline[5] >= 9000 + 10_000
    proposed = c.nodes[1][1].proposed
    for ms in range(9000, 18_000, 100):
        c.at(ms)
        ops = [decode_command(raw).op for raw in proposed.values()]
        assert not [op for op in ops if isinstance(op, LeaseExpire)], ms  # not before its TTL


def test_the_leader_forgets_the_leases_that_are_gone() -> None:
    """An expired or revoked lease leaves nothing in the leader's tables (they would grow
    with every lease ever granted during a term), and a lease granted again under its id is
    kept alive like any new one."""
    c = Cluster()
    _granted_and_kept(c, 100)
    decided = []
    for ms in range(200, 12_000, 100):
        c.at(ms)
        decided += [c.decide(1, t) for t in sorted(c.nodes[1][1].proposed)]
    assert isinstance(decided[-1], LeaseExpire) and c.sm.lease_ttl(5) is None
    keeper = c.nodes[1][0]
    c.client(LeaseGrant(ttl=10, lease_id=6, min_ttl=1))
    c.client(LeaseRevoke(6))
    tables = (keeper.deadline, keeper.expire_at, keeper.last_ack, keeper.anchor)
    assert [t for t in tables if 5 in t or 6 in t] == []
    c.client(LeaseGrant(ttl=10, lease_id=5, min_ttl=1))
    assert isinstance(c.keep_alive(1, 5, c.clock.now), LeaseKept)


def _checkpoints(c: Cluster, nid: int, until: int, step: int = 100) -> list[tuple[int, int]]:
    """Tick to ``until``, deciding every proposal of node ``nid`` at once; returns the
    (time, remaining) of each checkpoint of lease 5 applied, expiry excluded."""
    applied = []
    for ms in range(c.clock.now + step, until, step):
        c.at(ms)
        for token in sorted(c.nodes[nid][1].proposed):
            op = c.decide(nid, token)
            if isinstance(op, LeaseCheckpoint):
                applied += [(ms, left) for lid, left in op.leases if lid == 5]
    return applied


def test_a_quiet_lease_is_checkpointed_again_as_its_time_runs_down() -> None:
    """Once checkpointed, a quiet lease is checkpointed again whenever the leader's count has
    fallen the re-checkpoint step below the logged time, so a node counting from the log at
    any moment (one that restarted and replayed it) is at most about that step behind. Each
    logged time is what the leader counts (never less: not early), and a TTL 10 s lease
    writes about TTL / step entries before it expires."""
    c = Cluster()
    _granted_and_kept(c, 100)  # the lease runs out at 10,100 on node 1
    settings = LeaseSettings(ET)
    step = settings.recheckpoint_after_ms_for(10)
    applied = _checkpoints(c, 1, 12_000)
    assert c.sm.lease_ttl(5) is None  # expired
    times = [left for _, left in applied]
    assert times == sorted(times, reverse=True) and len(times) >= 2
    for at, left in applied:
        assert at + left >= 10_100  # the logged time never shortens the lease
    quiet = 100 + settings.checkpoint_after_ms_for(10)
    for (at, left), (later_at, later_left) in zip(applied, applied[1:], strict=False):
        # checkpointed again once the count fell the step below the log, within one tick of
        # the keeper's checkpoint round (an election timeout)
        assert step <= left - later_left <= step + ET + 100
        assert later_at - at <= step + ET + 100
    assert applied[0][0] <= quiet + ET + 100
    # about TTL / step entries after the first: (10,100 - first checkpoint) / step, plus one
    assert len(applied) <= (10_100 - applied[0][0]) // step + 2


def test_a_keep_alive_during_a_recheckpoint_clears_it_through_the_log_first() -> None:
    """A keep-alive that arrives while a re-checkpoint is on its way waits for a reset ordered
    after it: a next leader counts the full TTL from after that keep-alive, not the
    re-checkpoint's shorter time."""
    c = Cluster()
    _granted_and_kept(c, 100)
    proposed = c.nodes[1][1].proposed
    ms = c.clock.now
    logged = 0
    while not logged and ms < 10_000:  # the first checkpoint of the quiet spell, applied
        ms += 100
        c.at(ms)
        c.decide_all(1)
        logged = c.sm.lease_remaining_ms(5)
    while not proposed and ms < 10_000:  # tick until the re-checkpoint is proposed
        ms += 100
        c.at(ms)
    ((token, raw),) = proposed.items()
    op = decode_command(raw).op
    assert isinstance(op, LeaseCheckpoint) and 0 < op.leases[0][1] < logged
    receipt = ms + 10
    assert c.keep_alive(1, 5, receipt) is None  # parked behind the re-checkpoint
    c.at(receipt + 10)
    for t in sorted(proposed):
        c.decide(1, t)  # the re-checkpoint first (one queue), then the reset
    assert c.nodes[1][1].replies.pop().status == "ok"
    assert c.sm.lease_remaining_ms(5) == 0
    c.lead(2, 2)
    c.at(receipt + 20)
    c.decide_all(2)
    assert c.nodes[2][0].deadline[5] >= receipt + 10_000


def test_a_lease_kept_alive_every_third_of_its_ttl_writes_nothing() -> None:
    """The re-checkpoint applies only to a lease already checkpointed in a quiet spell: a
    lease kept alive every TTL/3 is never checkpointed, so writes nothing to the log."""
    c = Cluster()
    _granted_and_kept(c, 100)
    proposed = c.nodes[1][1].proposed
    for ms in range(200, 40_000, 100):
        c.at(ms)
        assert not proposed, ms
        if ms % 3300 == 0:
            assert isinstance(c.keep_alive(1, 5, ms), LeaseKept)
