"""A hand-driven cluster for scripted interleavings: nothing moves unless the test says so.

Messages wait in ``inflight`` until the test delivers or drops them, so a test can build the
exact race it wants (etcd-io/raft's InteractionEnv, in a few lines). Each replica's Readies
are carried out by the daemon's runner (paxosd/server/runner.py) over a simulated disk, with
a state machine that only records what it is given and no automatic snapshots.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from typing import Any, Self

from paxosd.core.config import CoreConfig
from paxosd.core.io import (
    AdminResult,
    Campaign,
    ClientCommand,
    DurableState,
    Input,
    Ready,
    Received,
    Redirect,
)
from paxosd.core.messages import Message
from paxosd.core.replica import Replica
from paxosd.core.types import NodeId, Value
from paxosd.server.runner import Hooks, Machine, Runner, SnapshotMaker, SnapshotPolicy
from paxosd.sim.disk import SimDisk
from paxosd.sim.planted import replica_class
from paxosd.statemachine.commands import Op, Result

Pred = Callable[[int, int, Message], bool]


class Recorder:
    """A state machine that keeps nothing but its position: the commands in these tests are
    opaque bytes, and the harness records what is applied through its hooks."""

    def __init__(self) -> None:
        self.applied_through = 0
        self.store_bytes = 0

    def apply(self, slot: int, value: Value) -> list[tuple[str, int, bytes]]:
        self.applied_through = slot
        return []

    def query(self, op: Op) -> Result:
        raise AssertionError("the core tests read nothing through the state machine")

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> Self:
        return type(self)()

    def restoring(self, data: object, *, batch: int = 1) -> Generator[None, None, Self]:
        yield
        return type(self)()


class _Clock:
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def now_ms(self) -> int:
        return self._cluster.now_ms


class _Link:
    def __init__(self, cluster: Cluster, src: int) -> None:
        self._cluster = cluster
        self._src = src

    def send_many(self, messages: list[tuple[NodeId, Message]]) -> None:
        c = self._cluster
        for dst, msg in messages:
            if self._src not in c.cut and dst not in c.cut:
                c.inflight.append((self._src, dst, msg))


class _Record(Hooks):
    def __init__(self, cluster: Cluster, nid: int) -> None:
        self._cluster = cluster
        self._nid = nid

    def applied(self, slot: int, value: Value, results: list[tuple[str, int, bytes]]) -> None:
        self._cluster.applied[self._nid].append((slot, value))

    def refused(self, slot: int, why: str) -> None:
        self._cluster.refused.append((self._nid, slot, why))

    def handled(self, ready: Ready) -> None:
        c, nid = self._cluster, self._nid
        c.reads.extend((nid, x) for x in ready.reads)
        c.redirects.extend((nid, x) for x in ready.redirects)
        c.admin.extend((nid, x) for x in ready.admin)


class Cluster:
    """Nodes 1..n. ``voters`` are the bootstrap voters (default: all of them); the other nodes
    run too, as non-members, until the log adds them (membership change)."""

    def __init__(
        self,
        n: int = 3,
        voters: tuple[int, ...] | None = None,
        planted_bugs: frozenset[str] = frozenset(),
        machine: Callable[[], Machine] = Recorder,
        maker: Callable[[int], SnapshotMaker] | None = None,
        **config: object,
    ) -> None:
        # The state machine and snapshot maker each node runs (a restart makes new ones):
        # the recorder and in-memory snapshots unless a test asks for the real ones.
        self.machine = machine
        self.maker = maker
        self.members = tuple(NodeId(i) for i in range(1, n + 1))
        self.voters = tuple(NodeId(i) for i in voters) if voters is not None else self.members
        self.now_ms = 0
        # Scripted interleavings assume every follower votes; thrifty accepts (only a
        # majority's worth asked) have their own tests and run in the simulator.
        config.setdefault("thrifty_accepts", False)
        self.configs = {
            m: CoreConfig(node_id=m, members=self.voters, **config)  # type: ignore[arg-type]
            for m in self.members
        }
        # The core each node runs: Replica, or a subclass with a planted bug.
        self.replica_class = replica_class(planted_bugs)
        self.sim_disks = {m: SimDisk() for m in self.members}
        self.runners: dict[int, Runner[Any]] = {}
        # Snapshots a runner refused: (node, slot, why).
        self.refused: list[tuple[int, int, str]] = []
        for m in self.members:
            self._start(m, self.replica_class(self.configs[m], random.Random(m)))
        self.inflight: list[tuple[int, int, Message]] = []
        self.applied: dict[int, list[tuple[int, Value]]] = {m: [] for m in self.members}
        self.down: set[int] = set()
        self.reads: list[tuple[int, object]] = []
        self.redirects: list[tuple[int, Redirect]] = []
        self.admin: list[tuple[int, AdminResult]] = []
        # Nodes whose messages (both ways) the network loses: a partition, without a crash.
        self.cut: set[int] = set()

    def _start(self, nid: int, replica: Replica) -> None:
        self.runners[nid] = Runner(
            replica,
            self.machine(),
            disk=self.sim_disks[nid],
            network=_Link(self, nid),
            clock=_Clock(self),
            snapshots=SnapshotPolicy(every_entries=0),
            hooks=_Record(self, nid),
            maker=None if self.maker is None else self.maker(nid),
        )

    @property
    def replicas(self) -> dict[int, Replica]:
        return {m: r.replica for m, r in self.runners.items()}

    @property
    def disks(self) -> dict[int, DurableState]:
        """What each node has written (kept by a kill -9; see SimDisk for a power cut)."""
        return {m: d.state for m, d in self.sim_disks.items()}

    def step(self, nid: int, event: Input) -> None:
        assert nid not in self.down
        self.runners[nid].step(event)
        self.drain(nid)

    def drain(self, nid: int) -> None:
        runner = self.runners[nid]
        runner.drain()
        runner.admin_results.clear()

    def campaign(self, nid: int) -> None:
        """Make ``nid`` run phase 1 now (a forced election: no pre-vote, and acceptors answer
        though they may still hear a leader), without moving anyone's clock."""
        self.step(nid, Campaign())

    def time_out(self, nid: int) -> None:
        """Make ``nid``'s election timer fire now (pre-vote first), without moving anyone's
        clock."""
        self.step(nid, Campaign(prevote=True))

    def tick_all(self, ms: int) -> None:
        self.now_ms += ms
        for m in self.members:
            if m not in self.down:
                self.runners[m].tick()
                self.drain(m)

    def install_snapshots(self, nid: int) -> None:
        """Let ``nid`` finish decoding a peer's snapshot it has whole (the runner does it a
        piece per tick), without moving anyone's clock; the core installs it at the end."""
        runner = self.runners[nid]
        for _ in range(1000):
            if runner.preparing is None:
                return
            runner.tick()
            self.drain(nid)
        raise AssertionError("a snapshot still decoding after the tick bound")

    def propose(self, nid: int, command: bytes) -> None:
        self.step(nid, ClientCommand(command))

    def deliver(self, pred: Pred = lambda s, d, m: True, rounds: int = 50) -> int:
        """Deliver matching messages (and what they cause) until none match; returns count."""
        count = 0
        for _ in range(rounds):
            batch = [x for x in self.inflight if pred(*x)]
            if not batch:
                return count
            self.inflight = [x for x in self.inflight if not pred(*x)]
            for src, dst, msg in batch:
                count += 1
                if dst not in self.down:
                    self.step(dst, Received(NodeId(src), msg))
        raise AssertionError("messages still flowing after the round bound")

    def drop(self, pred: Pred) -> None:
        self.inflight = [x for x in self.inflight if not pred(*x)]

    def crash(self, nid: int) -> None:
        self.down.add(nid)
        self.inflight = [x for x in self.inflight if x[0] != nid]

    def restart(self, nid: int) -> None:
        self.down.discard(nid)
        durable = self.sim_disks[nid].recover()
        self._start(
            nid,
            self.replica_class(
                self.configs[NodeId(nid)], random.Random(nid + 100), durable, self.now_ms
            ),
        )
        self.applied[nid] = []
        self.drain(nid)

    def decided(self, nid: int) -> dict[int, Value]:
        return dict(self.runners[nid].replica.decided)


def to(dst: int) -> Pred:
    return lambda s, d, m: d == dst


def between(*nodes: int) -> Pred:
    return lambda s, d, m: s in nodes and d in nodes


def kind(cls: type) -> Pred:
    return lambda s, d, m: isinstance(m, cls)
