"""One simulated cluster: real replicas and state machines over SimNetwork, SimDisk and an
integer clock, driven by one event queue. The same seed replays the same run exactly.

The loop per replica is the daemon's loop (persist, send, apply, reply, advance), so the
simulator tests the contract the daemon relies on, not a model of it.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from paxosd.core.config import CoreConfig
from paxosd.core.io import (
    ChangeMembership,
    ClientCommand,
    Input,
    Outbound,
    ReadIndex,
    Received,
    SnapshotTaken,
    Tick,
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
from paxosd.core.messages import Message
from paxosd.core.replica import Replica
from paxosd.core.types import ZERO_BALLOT, Membership, NodeId, Snapshot
from paxosd.sim.checker import SafetyChecker, Violation
from paxosd.sim.disk import SimDisk
from paxosd.sim.network import NetworkFaults, SimNetwork
from paxosd.sim.workload import SimClient, random_op
from paxosd.statemachine.commands import Op, decode_result, encode_result, is_read
from paxosd.statemachine.machine import StateMachine

# Event kinds. Plain ints in tuples keep the heap cheap: the simulator's speed is the
# number of schedules CI can afford.
_DELIVER, _TICK, _CLIENT_SEND, _CLIENT_REPLY, _CLIENT_WAKE, _FAULT = range(6)
_NEXT_OP = -(10**9)
READ_INDEX_SHARE = 0.5


@dataclass(slots=True)
class WorldOptions:
    nodes: int = 3
    clients: int = 3
    tick_ms: int = 10
    request_timeout_ms: int = 400
    op_timeout_ms: int = 3000
    think_ms_max: int = 30
    snapshot_every_entries: int = 40
    log_retain_entries: int = 10
    snapshot_chunk_bytes: int = 256
    crash_mid_ready_probability: float = 0.0
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    planted_bugs: frozenset[str] = frozenset()
    # Membership changes (add learner, promote, remove, leader transfer) while faults run.
    reconfig: bool = False
    members_max: int = 6
    thrifty_accepts: bool = False
    trace_lines_max: int = 200
    trace_all: bool = False


@dataclass(slots=True)
class SimNode:
    id: NodeId
    replica: Replica
    sm: StateMachine
    disk: SimDisk
    up: bool = True
    # (client_id, seq) -> client index: replies this node owes. Volatile, lost on a crash.
    pending: dict[tuple[str, int], int] = field(default_factory=dict)
    snapshot_due_slot: int = 0
    # read-index token -> (client index, seq, op, read index + 1 once confirmed, else 0)
    reads: dict[int, tuple[int, int, Op, int]] = field(default_factory=dict)


@dataclass(slots=True)
class Stats:
    core_steps: int = 0
    snapshot_restores: int = 0
    admin: Counter[str] = field(default_factory=Counter)
    client_ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)


class World:
    def __init__(self, seed: int, options: WorldOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.now_ms = 0
        self.network = SimNetwork(random.Random(self.rng.getrandbits(64)), options.faults)
        self.checker = SafetyChecker()
        self.stats = Stats()
        self.trace: deque[str] = deque(maxlen=options.trace_lines_max)
        self.trace_all: list[str] = []
        self._queue: list[tuple[int, int, int, object]] = []
        self._seq = 0
        self._cmd_owner: dict[bytes, tuple[int, int]] = {}
        self._unique = 0
        self.issuing = True
        self.acknowledged: list[bytes] = []
        self._read_tokens = 0
        self.bootstrap = tuple(NodeId(i) for i in range(1, options.nodes + 1))
        self.configs: dict[NodeId, CoreConfig] = {}
        self.nodes: dict[NodeId, SimNode] = {}
        self._admin_tokens = 0
        for m in self.bootstrap:
            self.add_node(m)
        self.clients = [
            SimClient(index=i, client_id=f"c{i}", site=f"s{i % 3 + 1}")
            for i in range(options.clients)
        ]
        for c in self.clients:
            self._schedule(self.rng.randint(0, 50), _CLIENT_WAKE, (c.index, _NEXT_OP))

    def add_node(self, nid: NodeId) -> None:
        """Start a node with an empty disk. Not a bootstrap member: it waits, as a
        non-member, until the log makes it a learner and the leader's traffic reaches it."""
        opts = self.options
        self.configs[nid] = CoreConfig(
            node_id=nid,
            members=self.bootstrap,
            log_retain_entries=opts.log_retain_entries,
            # Tiny chunks, so every snapshot transfer takes several round trips.
            snapshot_chunk_bytes=opts.snapshot_chunk_bytes,
            planted_bugs=opts.planted_bugs,
            thrifty_accepts=opts.thrifty_accepts,
        )
        self.nodes[nid] = SimNode(
            id=nid,
            replica=Replica(self.configs[nid], random.Random(self.rng.getrandbits(64))),
            sm=StateMachine(),
            disk=SimDisk(),
        )
        self._schedule(self.rng.randint(0, opts.tick_ms), _TICK, nid)

    def membership(self) -> Membership:
        """The latest membership any up replica has decided (what convergence is judged by)."""
        best = max(
            (n for n in self.nodes.values() if n.up),
            key=lambda n: n.replica.decided_through,
            default=next(iter(self.nodes.values())),
        )
        return best.replica.membership

    def member_nodes(self) -> list[SimNode]:
        return [self.nodes[n] for n in self.membership().ids if n in self.nodes]

    def leader(self) -> SimNode | None:
        leaders = [n for n in self.member_nodes() if n.up and n.replica.is_leader]
        return max(leaders, key=lambda n: n.replica.ballot, default=None)

    def operate(self) -> None:
        """An operator's membership change (or leader transfer) sent to the leader: the kind
        of change is random, the leader decides whether it is allowed."""
        leader = self.leader()
        if leader is None:
            return
        m = leader.replica.membership
        learners = sorted(m.learners)
        roll = self.rng.random()
        self._admin_tokens += 1
        token = self._admin_tokens
        if roll < 0.15:
            target = self.rng.choice([None, *sorted(m.voters)])
            self.log(f"OPERATOR transfer leadership from n{leader.id} to {target}")
            self._step(leader, TransferLeadership(token, target))
            return
        if learners and roll < 0.55:
            change = MembershipChange(ChangeKind.PROMOTE, self.rng.choice(learners))
        elif len(m.members) < self.options.members_max and roll < 0.8:
            nid = NodeId(max(self.nodes) + 1)
            self.add_node(nid)
            change = MembershipChange(ChangeKind.ADD, nid, f"sim:{nid}")
        else:
            change = MembershipChange(ChangeKind.REMOVE, self.rng.choice(m.ids))
        try:
            expected = apply_change(m, change)
        except ChangeRefused:
            expected = None
        if expected is not None:
            # Validity: the only membership values a leader may propose are the ones asked for.
            self.checker.submitted.add(encode_membership(expected)[0])
        self.log(f"OPERATOR {change.kind.value} n{change.node} via leader n{leader.id}")
        self._step(leader, ChangeMembership(token, change))

    # ------------------------------------------------------------------ plumbing

    def _schedule(self, delay_ms: int, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now_ms + delay_ms, self._seq, kind, payload))

    def at(self, time_ms: int, action: Callable[[], None]) -> None:
        """Run ``action`` (a fault or a heal) at simulated time ``time_ms``."""
        self._schedule(max(0, time_ms - self.now_ms), _FAULT, action)

    def log(self, line: str) -> None:
        text = f"{self.now_ms:>7}ms {line}"
        self.trace.append(text)
        if self.options.trace_all:
            self.trace_all.append(text)

    def run_until(self, time_ms: int, stop: Callable[[], bool] | None = None) -> None:
        q = self._queue
        while q and q[0][0] <= time_ms:
            t, _, kind, payload = heapq.heappop(q)
            self.now_ms = t
            if kind == _DELIVER:
                self._deliver(*payload)  # type: ignore[misc]
            elif kind == _TICK:
                self._tick(payload)  # type: ignore[arg-type]
            elif kind == _CLIENT_SEND:
                self._client_send(*payload)  # type: ignore[misc]
            elif kind == _CLIENT_REPLY:
                self._client_reply(*payload)  # type: ignore[misc]
            elif kind == _CLIENT_WAKE:
                self._client_wake(*payload)  # type: ignore[misc]
            else:
                payload()  # type: ignore[operator]
            if stop is not None and stop():
                return
        self.now_ms = max(self.now_ms, time_ms)

    # ------------------------------------------------------------------ replicas

    def _step(self, node: SimNode, event: Input) -> None:
        self.stats.core_steps += 1
        node.replica.step(event)
        self._drain(node)

    def _tick(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        if node.up:
            self._step(node, Tick(self.now_ms))
        self._schedule(self.options.tick_ms, _TICK, nid)

    def _deliver(self, dst: NodeId, src: NodeId, msg: Message) -> None:
        node = self.nodes[dst]
        if node.up:
            self._step(node, Received(src, msg))

    def _drain(self, node: SimNode) -> None:
        """The daemon's loop body: persist, then send, then apply, then reply, then advance."""
        r = node.replica
        while node.up and r.has_ready():
            rd = r.ready()
            self._send(node, rd.early_messages)
            crash_p = self.options.crash_mid_ready_probability
            if crash_p and self.rng.random() < crash_p:
                # Accepts left, our own vote never reached the disk.
                self.crash(node.id, "crash-mid-ready")
                return
            node.disk.write(rd.persist)
            for d in rd.persist.decided:
                self.checker.on_decided(node.id, d.slot, d.value)
            if crash_p and self.rng.random() < crash_p:
                # Durable, but nothing sent or applied: the crash the ordering rule is for.
                self.crash(node.id, "crash-mid-ready")
                return
            self._send(node, rd.messages)
            if rd.restore is not None:
                node.sm = StateMachine.restore(rd.restore.state)
                node.pending.clear()
                self.checker.on_restore(node.id, rd.restore.slot, node.sm.digest())
                self.stats.snapshot_restores += 1
                self.log(f"n{node.id} restored snapshot through slot {rd.restore.slot}")
            for entry in rd.to_apply:
                if self.options.trace_all and membership_of(entry.value) is not None:
                    self.log(f"n{node.id} applies membership {membership_of(entry.value)}")
                results = node.sm.apply(entry.slot, entry.value)
                self.checker.on_applied(node.id, entry.slot, entry.value, node.sm.digest())
                for client_id, seq, result in results:
                    ci = node.pending.pop((client_id, seq), None)
                    if ci is not None:
                        self._reply_to_client(node.id, ci, seq, "ok", result)
            for rr in rd.reads:
                waiting = node.reads.get(rr.token)
                if waiting is None:
                    continue
                ci, seq, op, _ = waiting
                if rr.index is None:
                    del node.reads[rr.token]
                    hint = b"" if rr.leader is None else str(rr.leader).encode()
                    self._reply_to_client(node.id, ci, seq, "not_leader", hint)
                else:
                    node.reads[rr.token] = (ci, seq, op, rr.index + 1)
            self._serve_reads(node)
            for red in rd.redirects:
                owner = self._cmd_owner.get(red.command)
                if owner is not None:
                    ci, seq = owner
                    node.pending.pop((self.clients[ci].client_id, seq), None)
                    hint = b"" if red.leader is None else str(red.leader).encode()
                    self._reply_to_client(node.id, ci, seq, red.reason, hint)
            for res in rd.admin:
                self.stats.admin["ok" if res.ok else "unknown" if res.unknown else "refused"] += 1
                self.log(f"n{node.id} admin #{res.token}: {'ok' if res.ok else res.detail}")
            r.advance(rd)
            if self.options.trace_all:
                self._trace_ready(node, rd.persist.decided, rd.early_messages + rd.messages)
            applied = r.applied_through
            if applied >= node.snapshot_due_slot + self.options.snapshot_every_entries:
                node.snapshot_due_slot = applied
                snap = Snapshot(slot=node.sm.applied_through, state=node.sm.snapshot())
                self.stats.core_steps += 1
                r.step(SnapshotTaken(snap))

    def _serve_reads(self, node: SimNode) -> None:
        """Answer confirmed read-index reads whose index the state machine has reached."""
        if not node.reads:
            return
        applied = node.sm.applied_through
        for token, (ci, seq, op, confirmed) in list(node.reads.items()):
            # confirmed = read index + 1 once leadership was confirmed, 0 before.
            if confirmed and confirmed - 1 <= applied:
                del node.reads[token]
                self._reply_to_client(node.id, ci, seq, "ok", encode_result(node.sm.query(op)))

    def _send(self, node: SimNode, messages: tuple[Outbound, ...]) -> None:
        for out in messages:
            for delay in self.network.delays_ms(node.id, out.dst):
                self._schedule(delay, _DELIVER, (out.dst, node.id, out.msg))

    def _trace_ready(
        self, node: SimNode, decided: tuple[object, ...], messages: tuple[object, ...]
    ) -> None:
        for d in decided:
            self.log(f"n{node.id} decided {d}")
        for m in messages:
            self.log(f"n{node.id} -> {m}")

    def crash(self, nid: NodeId, why: str = "crash") -> None:
        node = self.nodes[nid]
        if not node.up:
            return
        node.up = False
        node.pending.clear()
        node.reads.clear()
        self.stats.faults[why] += 1
        self.log(f"n{nid} CRASH ({why}); durable promised={node.disk.state.promised}")

    def restart(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        if node.up:
            return
        if "amnesia_on_restart" in self.options.planted_bugs:
            # The planted bug's disk side: the votes were never really made durable.
            node.disk.state.promised = ZERO_BALLOT
            node.disk.state.accepted.clear()
        durable = node.disk.recover()
        node.replica = Replica(
            self.configs[nid], random.Random(self.rng.getrandbits(64)), durable, self.now_ms
        )
        node.sm = StateMachine()
        self.checker.applied_through[nid] = 0
        node.snapshot_due_slot = durable.snapshot.slot if durable.snapshot else 0
        node.up = True
        self.stats.faults["restart"] += 1
        self.log(f"n{nid} RESTART from promised={durable.promised} decided={len(durable.decided)}")
        self._drain(node)

    # ------------------------------------------------------------------ clients

    def _client_wake(self, ci: int, token: int) -> None:
        """``token``: _NEXT_OP (think time over), an attempt number (that attempt timed out),
        or minus an attempt number (back-off over: send that attempt)."""
        c = self.clients[ci]
        if token < 0 and token != _NEXT_OP:
            if c.busy and -token == c.attempt:
                self._send_attempt(c)
            return
        if token == _NEXT_OP:
            if c.busy or not self.issuing:
                return
            self._unique += 1
            cmd = c.begin(
                random_op(self.rng, self._unique), self.now_ms, self.options.op_timeout_ms
            )
            self._cmd_owner[cmd] = (ci, c.seq)
            self.checker.submitted.add(cmd)
            c.target = self.rng.choice(list(self.nodes))
            self._send_attempt(c)
            return
        if not c.busy or token != c.attempt:
            return  # a timer for an attempt that already finished
        c.maybe_applied = True  # no answer: the attempt may have reached a log
        self._retry(c, None)

    def _send_attempt(self, c: SimClient) -> None:
        if self.now_ms >= c.give_up_ms:
            self._finish(c, "unknown" if c.maybe_applied else "fail", None)
            return
        c.attempt += 1
        # Client traffic is lossy but never duplicated: it models a TCP connection that can
        # break, and a duplicate would muddle which attempt a redirect answers.
        f = self.network.faults
        if not (f.drop_probability and self.network.rng.random() < f.drop_probability):
            delay = self.network.rng.randint(f.delay_ms_min, f.delay_ms_max)
            self._schedule(delay, _CLIENT_SEND, (c.target, c.index, c.seq, c.attempt, c.command))
        self._schedule(self.options.request_timeout_ms, _CLIENT_WAKE, (c.index, c.attempt))

    def _client_send(self, nid: NodeId, ci: int, seq: int, attempt: int, cmd: bytes) -> None:
        node = self.nodes[nid]
        if not node.up:
            return
        c = self.clients[ci]
        if c.op is not None and is_read(c.op) and self.rng.random() < READ_INDEX_SHARE:
            # Half the reads skip the log (read-index), so both paths face every fault.
            self._read_tokens += 1
            token = self._read_tokens
            node.reads[token] = (ci, seq, c.op, 0)
            self._step(node, ReadIndex(token))
            return
        node.pending[(c.client_id, seq)] = ci
        self._step(node, ClientCommand(cmd))

    def _reply_to_client(self, nid: NodeId, ci: int, seq: int, status: str, payload: bytes) -> None:
        f = self.network.faults
        if f.drop_probability and self.network.rng.random() < f.drop_probability:
            return
        delay = self.network.rng.randint(f.delay_ms_min, f.delay_ms_max)
        self._schedule(delay, _CLIENT_REPLY, (ci, seq, self.clients[ci].attempt, status, payload))

    def _client_reply(self, ci: int, seq: int, attempt: int, status: str, payload: bytes) -> None:
        c = self.clients[ci]
        if not c.busy or seq != c.seq:
            return
        if status == "ok":
            self._finish(c, "ok", decode_result(payload))
            return
        if attempt != c.attempt:
            return  # a redirect for an older attempt; the current one is still out
        hint = int(payload) if payload else None
        self._retry(c, NodeId(hint) if hint is not None else None)

    def _retry(self, c: SimClient, hint: NodeId | None) -> None:
        if hint is not None and hint != c.target and self.nodes[hint].up:
            c.target = hint
            self._send_attempt(c)
            return
        c.target = self.rng.choice(list(self.nodes))
        # Back off before asking again: there may be no leader yet.
        c.attempt += 1
        self._schedule(self.rng.randint(20, 80), _CLIENT_WAKE, (c.index, -c.attempt))

    def _finish(self, c: SimClient, outcome: str, result: object) -> None:
        if outcome == "ok" and c.op is not None and not is_read(c.op):
            self.acknowledged.append(c.command)
        c.finish(self.now_ms, outcome, result)
        self.stats.client_ops[outcome] += 1
        if self.issuing:
            think = self.rng.randint(0, self.options.think_ms_max)
            self._schedule(think, _CLIENT_WAKE, (c.index, _NEXT_OP))

    # ------------------------------------------------------------------ convergence

    def converged(self) -> bool:
        """Every replica up, one leader, everything decided applied everywhere, same digest."""
        nodes = self.member_nodes()
        if not all(n.up for n in nodes) or any(c.busy for c in self.clients):
            return False
        if sum(1 for n in nodes if n.replica.is_leader) != 1:
            return False
        top = max(n.replica.decided_through for n in nodes)
        if any(n.replica.applied_through != top or n.sm.applied_through != top for n in nodes):
            return False
        return len({n.sm.digest() for n in nodes}) == 1

    def check_convergence(self) -> None:
        if not self.converged():
            rows = ", ".join(
                f"n{n.id}:{'up' if n.up else 'down'} {n.replica.role.value} "
                f"decided={n.replica.decided_through} applied={n.sm.applied_through}"
                for n in self.member_nodes()
            )
            busy = sum(1 for c in self.clients if c.busy)
            raise Violation(
                "convergence", f"not converged after healing: {rows}; busy clients {busy}"
            )
