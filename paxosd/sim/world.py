"""One simulated cluster: real replicas and state machines over SimNetwork, SimDisk and an
integer clock, driven by one event queue. The same seed replays the same run exactly.

Each replica's host loop is the daemon's own runner (paxosd/server/runner.py: persist with
the same synced/unsynced split, send, apply, reply, snapshot policy), given a simulated disk,
network and clock; so the simulator checks the policies the daemon runs, not a model of them.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from paxosd.core.config import CoreConfig
from paxosd.core.io import (
    ChangeMembership,
    Input,
    PersistRecord,
    Ready,
    Received,
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
from paxosd.core.types import ZERO_BALLOT, DecidedEntry, Membership, NodeId, Value
from paxosd.server.runner import Hooks, Runner, SnapshotPolicy
from paxosd.sim.checker import SafetyChecker, Violation
from paxosd.sim.disk import SimDisk
from paxosd.sim.leases import LEASE_CLIENT_CONN, LeaseDriver
from paxosd.sim.locks import LOCK_CLIENT_CONN, LockDriver
from paxosd.sim.network import NetworkFaults, SimNetwork
from paxosd.sim.planted import machine_class, replica_class
from paxosd.sim.revisions import Recorder
from paxosd.sim.watches import WatchDriver
from paxosd.sim.workload import SimClient, random_op
from paxosd.statemachine.commands import decode_result, is_read
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
    # The daemon's default ([snapshot] snapshot_log_percent): measured over 40 seeds, it
    # holds back 4 of 232 snapshots, so the gate is in play without thinning them out.
    snapshot_log_percent: int = 40
    log_retain_entries: int = 10
    snapshot_chunk_bytes: int = 256
    crash_mid_ready_probability: float = 0.0
    # Of those crashes, the share that are a power cut of every node at once (a rack losing
    # power): the moment when writes that were committed but not synced are lost everywhere.
    power_cut_share: float = 0.0
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    planted_bugs: frozenset[str] = frozenset()
    # The host loop and the disk each replica runs: the daemon's runner and a faithful disk,
    # unless a test plants a broken one (tests/sim/test_simulator.py).
    runner_class: type[Runner[StateMachine]] = Runner
    disk_class: type[SimDisk] = SimDisk
    # The core each node runs: Replica, unless a test injects a policy that must be caught
    # (tests/sim/test_elections.py: campaigning without pre-vote).
    replica_class: type[Replica] = Replica
    # The state machine each node runs (planted bugs go on top of it).
    machine_class: type[StateMachine] = StateMachine
    # Membership changes (add learner, promote, remove, leader transfer) while faults run.
    reconfig: bool = False
    members_max: int = 6
    thrifty_accepts: bool = False
    # Simulated watchers (paxosd/sim/watches.py); 0: no watch hubs at all.
    watchers: int = 4
    # The faulty phase the watchers' creations and slow spells are spread over.
    watch_window_ms: int = 3000
    trace_lines_max: int = 200
    trace_all: bool = False
    # Lease clients (paxosd/sim/leases.py); 0: none. ``lease_pause``: pause the leader once
    # past the TTL (the stale-leader fault).
    lease_clients: int = 3
    lease_pause: bool = False
    lease_window_ms: int = 3000
    lease_ttl_s: int = 2  # the TTL every lease client asks for
    # Lock clients with fenced writes and paused holders (paxosd/sim/locks.py); 0: none.
    lock_clients: int = 0


class _PowerCut(Exception):
    """Raised by a node's disk to crash the node in the middle of a Ready."""


@dataclass(slots=True)
class SimNode:
    id: NodeId
    disk: SimDisk
    # The host loop; replaced at every restart (everything in it is volatile). A client's
    # connection id in it is the client's index, its request id the command's seq.
    runner: Runner[StateMachine] = field(init=False)
    up: bool = True
    # A paused process (SIGSTOP, a long GC): no ticks, no messages, its memory kept.
    paused: bool = False

    @property
    def replica(self) -> Replica:
        return self.runner.replica

    @property
    def sm(self) -> StateMachine:
        return self.runner.sm


class _SimClock:
    def __init__(self, world: World) -> None:
        self._world = world

    def now_ms(self) -> int:
        return self._world.now_ms


class _SimLink:
    """One node's way onto the simulated network."""

    def __init__(self, world: World, src: NodeId) -> None:
        self._world = world
        self._src = src

    def send_many(self, messages: list[tuple[NodeId, Message]]) -> None:
        w = self._world
        for dst, msg in messages:
            for delay in w.network.delays_ms(self._src, dst):
                w._schedule(delay, _DELIVER, (dst, self._src, msg))


class _CrashingDisk:
    """The node's SimDisk, with the crash-mid-ready fault around each write."""

    def __init__(self, world: World, node: NodeId, disk: SimDisk) -> None:
        self._world = world
        self._node = node
        self._disk = disk

    def write(self, record: PersistRecord, *, sync: bool) -> None:
        w = self._world
        p = w.options.crash_mid_ready_probability
        if p and w.rng.random() < p:
            raise _PowerCut  # early messages (accepts) left, our own vote never reached disk
        self._disk.write(record, sync=sync)
        if p and w.rng.random() < p:
            # Durable, but nothing sent or applied: what the ordering is for. The decisions
            # this write holds stand now (a restart applies them), though the runner never got
            # to report them; tell the checker here. Not before the write: a decision that
            # counts this node's own vote is real only once that vote is on disk.
            for d in record.decided:
                w.checker.on_decided(self._node, d.slot, d.value)
                w.recorder.on_decided(d.slot, w.now_ms)
            raise _PowerCut


class _SimHooks(Hooks):
    """The safety checker and the trace, fed as the runner goes."""

    def __init__(self, world: World, node: SimNode) -> None:
        self._world = world
        self._node = node
        # When the runner began decoding a peer's snapshot (None: it is not).
        self._preparing_since: int | None = None

    def decided(self, entries: tuple[DecidedEntry, ...]) -> None:
        checker = self._world.checker
        recorder = self._world.recorder
        for d in entries:
            checker.on_decided(self._node.id, d.slot, d.value)
            recorder.on_decided(d.slot, self._world.now_ms)

    def preparing(self, slot: int) -> None:
        self._preparing_since = self._world.now_ms
        self._world.log(f"n{self._node.id} decoding a peer's snapshot through slot {slot}")

    def restored(self, slot: int) -> None:
        w = self._world
        sm = self._node.sm
        w.checker.on_restore(self._node.id, slot, sm.digest())
        w.recorder.on_state(self._node.id, slot, sm.revision, sm.compact_revision)
        w.stats.snapshot_restores += 1
        since, self._preparing_since = self._preparing_since, None
        if since is not None and w.now_ms > since:
            # A peer's snapshot decoded across ticks while the node went on (the daemon's way).
            w.stats.snapshot_installs_in_pieces += 1
        if w.leases is not None:
            w.leases.restored(self._node)
        if w.watches is not None:
            w.watches.restored.add(self._node.id)
        w.log(f"n{self._node.id} restored snapshot through slot {slot}")

    def applied(self, slot: int, value: Value, results: list[tuple[str, int, bytes]]) -> None:
        w = self._world
        nid = self._node.id
        if w.options.trace_all and membership_of(value) is not None:
            w.log(f"n{nid} applies membership {membership_of(value)}")
        sm = self._node.sm
        w.checker.on_applied(nid, slot, value, sm.digest())
        w.recorder.on_state(nid, slot, sm.revision, sm.compact_revision)
        if w.leases is not None:
            w.leases.applied(self._node)
        if w.locks is not None:
            w.locks.applied(self._node, slot)

    def proposed(self, command: bytes) -> None:
        self._world.checker.submitted.add(command)

    def snapshotted(self, slot: int) -> None:
        self._world.stats.core_steps += 1

    def handled(self, ready: Ready) -> None:
        if self._world.options.trace_all:
            self._world._trace_ready(
                self._node, ready.persist.decided, ready.early_messages + ready.messages
            )


@dataclass(slots=True)
class Stats:
    core_steps: int = 0
    snapshot_restores: int = 0
    snapshot_installs_in_pieces: int = 0
    admin: Counter[str] = field(default_factory=Counter)
    client_ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)


class World:
    def __init__(self, seed: int, options: WorldOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.now_ms = 0
        # The core each node runs, with the planted bugs (if any) on top.
        self.replica_class = replica_class(options.planted_bugs, options.replica_class)
        self.machine_class = machine_class(options.planted_bugs, options.machine_class)
        self.network = SimNetwork(random.Random(self.rng.getrandbits(64)), options.faults)
        self.checker = SafetyChecker()
        self.recorder = Recorder()
        self.stats = Stats()
        self.trace: deque[str] = deque(maxlen=options.trace_lines_max)
        self.trace_all: list[str] = []
        self._queue: list[tuple[int, int, int, object]] = []
        self._seq = 0
        self._unique = 0
        # The newest store revision any client has been told: what the workload's past
        # reads, revision compares and compactions aim near.
        self.revision_seen = 1
        self.issuing = True
        self.acknowledged: list[bytes] = []
        self.bootstrap = tuple(NodeId(i) for i in range(1, options.nodes + 1))
        self.configs: dict[NodeId, CoreConfig] = {}
        self.nodes: dict[NodeId, SimNode] = {}
        self._admin_tokens = 0
        self.leases: LeaseDriver | None = None
        if options.lease_clients:
            self.leases = LeaseDriver(
                self, options.lease_clients, options.lease_window_ms, options.lease_pause
            )
        self.locks = LockDriver(self, options.lock_clients) if options.lock_clients else None
        self.watches = (
            WatchDriver(self, options.watchers, options.watch_window_ms)
            if options.watchers
            else None
        )
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
            thrifty_accepts=opts.thrifty_accepts,
        )
        node = self.nodes[nid] = SimNode(id=nid, disk=opts.disk_class())
        self._start_runner(
            node, self.replica_class(self.configs[nid], random.Random(self.rng.getrandbits(64)))
        )
        self._schedule(self.rng.randint(0, opts.tick_ms), _TICK, nid)
        if self.watches is not None:
            self.watches.start_node(nid)

    def _start_runner(self, node: SimNode, replica: Replica) -> None:
        """A fresh host loop (at start and after a crash) over the node's disk."""
        node.runner = self.options.runner_class(
            replica,
            self.machine_class(),
            disk=_CrashingDisk(self, node.id, node.disk),
            network=_SimLink(self, node.id),
            clock=_SimClock(self),
            snapshots=SnapshotPolicy(
                self.options.snapshot_every_entries,
                log_percent=self.options.snapshot_log_percent,
            ),
            hooks=_SimHooks(self, node),
            address_of=lambda leader: b"" if leader is None else str(leader).encode(),
        )
        if self.leases is not None:
            self.leases.install(node)

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
        self._drive(node, lambda: node.runner.step(event))

    def _tick(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        if node.up and not node.paused:
            self.stats.core_steps += 1
            self._drive(node, node.runner.tick)
        self._schedule(self.options.tick_ms, _TICK, nid)

    def _deliver(self, dst: NodeId, src: NodeId, msg: Message) -> None:
        node = self.nodes[dst]
        if node.up and not node.paused:
            self._step(node, Received(src, msg))

    def _drive(self, node: SimNode, first: Callable[[], object] | None = None) -> None:
        """Give the node's runner one input (``first``), run it over every Ready, then deliver
        what it answered. A crash in the middle of a Ready keeps the answers of the Readies
        before it: they had left."""
        runner = node.runner
        crashed = False
        try:
            if first is not None:
                first()
            runner.drain()
        except _PowerCut:
            crashed = True
        for reply in runner.replies:
            if reply.conn_id >= LOCK_CLIENT_CONN:
                if self.locks is not None:
                    self.locks.on_reply(reply)
                continue
            if reply.conn_id >= LEASE_CLIENT_CONN:
                if self.leases is not None:
                    self.leases.on_reply(node.id, reply)
                continue
            self._reply_to_client(
                node.id, reply.conn_id, reply.request_id, reply.status, reply.result
            )
        runner.replies.clear()
        for res in runner.admin_results:
            self.stats.admin["ok" if res.ok else "unknown" if res.unknown else "refused"] += 1
            self.log(f"n{node.id} admin #{res.token}: {'ok' if res.ok else res.detail}")
        runner.admin_results.clear()
        if self.watches is not None and not crashed:
            self.watches.after_turn(node)
        if crashed:
            self.crash(node.id, "crash-mid-ready")
            share = self.options.power_cut_share
            if share and self.rng.random() < share:
                self._power_cut_everywhere()

    def _trace_ready(
        self, node: SimNode, decided: tuple[object, ...], messages: tuple[object, ...]
    ) -> None:
        for d in decided:
            self.log(f"n{node.id} decided {d}")
        for m in messages:
            self.log(f"n{node.id} -> {m}")

    def _power_cut_everywhere(self) -> None:
        """Every node loses power now (the one mid-Ready is down already); each comes back
        after its own delay."""
        self.log("POWER CUT: every node")
        for nid, node in self.nodes.items():
            if node.up:
                self.crash(nid, "power-cut")
            self._schedule(self.rng.randint(20, 500), _FAULT, partial(self.restart, nid))

    def crash(self, nid: NodeId, why: str = "crash") -> None:
        node = self.nodes[nid]
        if not node.up:
            return
        node.up = False
        node.paused = False
        # A power cut: every write since the last sync is lost (the runner's memory too;
        # restart builds a new one).
        lost = node.disk.power_cut()
        if lost:
            self.stats.faults["unsynced-writes-lost"] += lost
        self.stats.faults[why] += 1
        if self.watches is not None:
            self.watches.crash_node(nid)
        self.log(f"n{nid} CRASH ({why}); durable promised={node.disk.state.promised}")

    def restart(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        if node.up:
            return
        if "amnesia_on_restart" in self.options.planted_bugs:
            # The planted bug's disk side: the votes were never really made durable.
            node.disk.checkpoint()
            node.disk.file.promised = ZERO_BALLOT
            node.disk.file.accepted.clear()
        durable = node.disk.recover()
        self._start_runner(
            node,
            self.replica_class(
                self.configs[nid], random.Random(self.rng.getrandbits(64)), durable, self.now_ms
            ),
        )
        self.checker.applied_through[nid] = 0
        node.up = True
        if self.watches is not None:
            self.watches.start_node(nid)
        self.stats.faults["restart"] += 1
        self.log(f"n{nid} RESTART from promised={durable.promised} decided={len(durable.decided)}")
        self._drive(node)

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
                random_op(self.rng, self._unique, self.revision_seen),
                self.now_ms,
                self.options.op_timeout_ms,
            )
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
        if not node.up or node.paused:
            return
        c = self.clients[ci]
        # Half the reads skip the log (read-index), so both paths face every fault.
        read_index = c.op is not None and is_read(c.op) and self.rng.random() < READ_INDEX_SHARE
        self.stats.core_steps += 1
        self._drive(
            node, lambda: node.runner.on_client_command(ci, seq, cmd, via_log=not read_index)
        )

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
        revision = getattr(result, "revision", 0)
        if isinstance(revision, int) and revision > self.revision_seen:
            self.revision_seen = revision
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
