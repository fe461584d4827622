"""A hand-driven cluster for scripted interleavings: nothing moves unless the test says so.

Messages wait in ``inflight`` until the test delivers or drops them, so a test can build the
exact race it wants (etcd-io/raft's InteractionEnv, in a few lines).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from paxosd.core.config import CoreConfig
from paxosd.core.io import (
    AdminResult,
    ClientCommand,
    DurableState,
    Input,
    Received,
    Redirect,
    Tick,
)
from paxosd.core.messages import Message
from paxosd.core.replica import Replica
from paxosd.core.types import ZERO_BALLOT, NodeId, Value

Pred = Callable[[int, int, Message], bool]


class Cluster:
    """Nodes 1..n. ``voters`` are the bootstrap voters (default: all of them); the other nodes
    run too, as non-members, until the log adds them (membership change)."""

    def __init__(self, n: int = 3, voters: tuple[int, ...] | None = None, **config: object) -> None:
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
        self.disks = {m: DurableState(promised=ZERO_BALLOT) for m in self.members}
        self.replicas = {m: Replica(self.configs[m], random.Random(m)) for m in self.members}
        self.inflight: list[tuple[int, int, Message]] = []
        self.applied: dict[int, list[tuple[int, Value]]] = {m: [] for m in self.members}
        self.down: set[int] = set()
        self.reads: list[tuple[int, object]] = []
        self.redirects: list[tuple[int, Redirect]] = []
        self.admin: list[tuple[int, AdminResult]] = []
        # Nodes whose messages (both ways) the network loses: a partition, without a crash.
        self.cut: set[int] = set()

    def step(self, nid: int, event: Input) -> None:
        assert nid not in self.down
        self.replicas[nid].step(event)  # type: ignore[index]
        self.drain(nid)

    def drain(self, nid: int) -> None:
        r = self.replicas[nid]  # type: ignore[index]
        while r.has_ready():
            rd = r.ready()
            self.disks[nid].apply(rd.persist)  # type: ignore[index]
            for out in rd.early_messages + rd.messages:
                if nid not in self.cut and out.dst not in self.cut:
                    self.inflight.append((nid, out.dst, out.msg))
            for e in rd.to_apply:
                self.applied[nid].append((e.slot, e.value))
            self.reads.extend((nid, x) for x in rd.reads)
            self.redirects.extend((nid, x) for x in rd.redirects)
            self.admin.extend((nid, x) for x in rd.admin)
            r.advance(rd)

    def campaign(self, nid: int) -> None:
        """Make ``nid``'s election timer fire now, without moving anyone's clock."""
        r = self.replicas[nid]  # type: ignore[index]
        r.election_deadline_ms = self.now_ms
        self.step(nid, Tick(self.now_ms))

    def tick_all(self, ms: int) -> None:
        self.now_ms += ms
        for m in self.members:
            if m not in self.down:
                self.step(m, Tick(self.now_ms))

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
        durable = DurableState(
            promised=self.disks[nid].promised,  # type: ignore[index]
            accepted=dict(self.disks[nid].accepted),  # type: ignore[index]
            decided=dict(self.disks[nid].decided),  # type: ignore[index]
            snapshot=self.disks[nid].snapshot,  # type: ignore[index]
        )
        self.replicas[NodeId(nid)] = Replica(
            self.configs[NodeId(nid)], random.Random(nid + 100), durable, self.now_ms
        )
        self.applied[nid] = []
        self.drain(nid)

    def decided(self, nid: int) -> dict[int, Value]:
        return dict(self.replicas[nid].decided)  # type: ignore[index]


def to(dst: int) -> Pred:
    return lambda s, d, m: d == dst


def between(*nodes: int) -> Pred:
    return lambda s, d, m: s in nodes and d in nodes


def kind(cls: type) -> Pred:
    return lambda s, d, m: isinstance(m, cls)
