"""The fault schedule and its injection: one fault at a time from a seeded schedule, every
fault undone before the next, and a watcher per restarted node for the recovery figures.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

from paxosd.client.client import Client, ClientError, UnavailableError
from paxosd.lab.drill.nodes import Nodes, closing_all, cluster_view, node_status
from paxosd.lab.drill.reconfig import Reconfig
from paxosd.lab.drill.spec import KILL_DOWN_S, KILLALL_DOWN_S, PARTITION_S, PAUSE_S, DrillSpec
from paxosd.lab.etcd_api_sitting import children

SNAPSHOT_BEFORE_KILL_FRACTION: Final = 0.3
LEADER_VICTIM_FRACTION: Final = 0.5
# With --etcd, the share of pauses that stop the node's etcd listeners too: the member as a
# whole, as a paused etcd process is, so the etcd workers meet a frozen endpoint. The other
# pauses stop the daemon alone, whose listeners go on answering through the other nodes.
PAUSE_LISTENERS_FRACTION: Final = 0.5
CATCH_UP_TIMEOUT_S: Final = 60.0
READY_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.05


@dataclass(slots=True)
class FaultEvent:
    kind: str
    nodes: list[int]
    start_ms: int
    end_ms: int | None = None
    detail: str = ""
    # Whether the fault hit the node that led when it began (None: nobody was known to lead,
    # or the fault is not one node's, e.g. reconfig).
    touches_leader: bool | None = None
    # Whether, when it began, every voter answered and followed that leader: only then is a
    # follower fault alone to blame for an election (not a node still recovering from the
    # previous fault, with which the leader had no live majority left).
    healthy: bool = True
    elections: int = 0  # leader changes first seen between this fault and the next

    @property
    def fault_class(self) -> str:
        """The kind and whom it hit: "kill/leader", "pause/follower", "killall", ...;
        "pause/follower-degraded": a follower fault while another node was not yet back."""
        if self.touches_leader is None:
            return self.kind
        if self.touches_leader:
            return f"{self.kind}/leader"
        return f"{self.kind}/follower" + ("" if self.healthy else "-degraded")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nodes": self.nodes,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "detail": self.detail,
            "class": self.fault_class,
            "elections": self.elections,
        }


@dataclass(slots=True)
class RestartEvent:
    """One node process started again after a fault. Times in drill ms."""

    node: int
    kind: str  # the fault that stopped it
    down_ms: int  # when it was killed or stopped
    restart_ms: int  # when the new process was started
    ready_ms: int | None = None  # first answered status
    behind_slots: int | None = None  # leader's applied index minus its own, when ready
    caught_up_ms: int | None = None  # its applied index reached the leader's (at ready)
    first_write_ms: int | None = None  # first ok write invoked after restart_ms (computed)

    def as_dict(self) -> dict[str, Any]:
        def since(t: int | None) -> int | None:
            return None if t is None else t - self.restart_ms

        return {
            "node": self.node,
            "kind": self.kind,
            "down_ms": self.restart_ms - self.down_ms,
            "ready_after_ms": since(self.ready_ms),
            "behind_slots": self.behind_slots,
            "catch_up_ms": since(self.caught_up_ms),
            "first_write_after_ms": since(self.first_write_ms),
        }


class FaultInjector:
    """One fault at a time, on a seeded schedule; every fault is undone before the next.

    One at a time keeps each fault's effect readable in the history and the restart figures
    meaningful; "killall" covers the everything-at-once case.
    """

    def __init__(
        self, nodes: Nodes, kinds: Sequence[str], rng: random.Random, spec: DrillSpec
    ) -> None:
        self.nodes = nodes
        self.kinds = list(kinds)
        self.rng = rng
        self.spec = spec
        self.events: list[FaultEvent] = []
        self.restarts: list[RestartEvent] = []
        self.current = ""
        self.errors: list[str] = []
        self.crashed = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._clock: Callable[[], int] = lambda: 0
        self._healthy = True  # as of the last _victims
        self.reconfig = Reconfig(self)

    def run(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        bag: list[str] = []
        try:
            while not self._stop.is_set() and self.kinds:
                if self._stop.wait(self.rng.uniform(*self.spec.fault_gap_s)):
                    break
                if not bag:
                    # Shuffled rounds, not independent draws: every kind asked for
                    # happens within the first len(kinds) faults, even in a short drill.
                    bag = self.rng.sample(self.kinds, len(self.kinds))
                kind = bag.pop()
                # Victims are voters: with the reconfig fault the members change, and a
                # learner's crash does not count against the majority.
                voters = self.nodes.voter_ids
                minority_max = (len(voters) - 1) // 2
                with closing_all(self.nodes.node_clients()) as clients:
                    try:
                        self._one(kind, clients, voters, minority_max)
                    except (ClientError, OSError, RuntimeError) as e:
                        # A fault whose set-up failed is reported; the schedule goes on.
                        self.errors.append(f"{kind}: {e}")
                    finally:
                        self.current = ""
        except Exception as e:  # a harness bug: the drill must not claim "0 violations"
            self.crashed = f"fault injector stopped: {type(e).__name__}: {e}"

    def stop(self) -> None:
        self._stop.set()

    def join_watchers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in list(self._watchers):
            t.join(max(0.0, deadline - time.monotonic()))

    def _sleep(self, bounds: tuple[float, float]) -> None:
        """A fault's duration; cut short when the drill ends (the fault is then undone)."""
        self._stop.wait(self.rng.uniform(*bounds))

    def _victims(
        self, clients: Mapping[int, Client], ids: list[int], count: int
    ) -> tuple[list[int], int | None]:
        leader, self._healthy = cluster_view(clients, self.nodes.voter_ids)
        # Draw the same numbers whoever leads, so the seed fixes the schedule's shape.
        with_leader = self.rng.random() < LEADER_VICTIM_FRACTION and leader is not None
        others = [k for k in ids if k != leader]
        if with_leader and leader is not None:
            return [leader, *self.rng.sample(others, count - 1)], leader
        return self.rng.sample(others, min(count, len(others))), leader

    def _event(
        self, kind: str, nodes: list[int], detail: str, leader: int | None = None
    ) -> FaultEvent:
        touches = None if leader is None else leader in nodes
        ev = FaultEvent(
            kind,
            sorted(nodes),
            self._clock(),
            detail=detail,
            touches_leader=touches,
            healthy=self._healthy,
        )
        with self._lock:
            self.events.append(ev)
        self.current = f"{kind} {','.join(f'n{k}' for k in ev.nodes)} {detail}".strip()
        return ev

    def _one(
        self, kind: str, clients: Mapping[int, Client], ids: list[int], minority_max: int
    ) -> None:
        cluster = self.nodes.cluster
        if kind == "partition":
            count = self.rng.randint(1, minority_max)
            side, leader = self._victims(clients, ids, count)
            rest = [k for k in self.nodes.ids if k not in side]
            note = f"from {','.join(f'n{k}' for k in rest)}" + (
                " (leader isolated)" if leader in side else ""
            )
            ev = self._event("partition", side, note, leader)
            try:
                for a in side:
                    for b in rest:
                        set_partition(clients, a, b, True)
                self._sleep(PARTITION_S)
            finally:
                for a in side:
                    for b in rest:
                        set_partition(clients, a, b, False)
                ev.end_ms = self._clock()
            return
        assert cluster is not None, f"fault {kind} needs processes this drill started"
        if kind == "pause":
            victims, leader = self._victims(clients, ids, 1)
            notes = ["(leader)"] if leader in victims else []
            listeners: list[int] = []
            if self.spec.etcd and self.rng.random() < PAUSE_LISTENERS_FRACTION:
                pid = cluster.pid(victims[0])
                listeners = [] if pid is None else children(pid)
                notes.append("with its etcd listeners")
            ev = self._event("pause", victims, " ".join(notes), leader)
            try:
                cluster.signal(victims[0], signal.SIGSTOP)
                for child in listeners:
                    _signal_child(child, signal.SIGSTOP)
                self._sleep(PAUSE_S)
            finally:
                for child in listeners:
                    _signal_child(child, signal.SIGCONT)
                cluster.signal(victims[0], signal.SIGCONT)
                ev.end_ms = self._clock()
            return
        if kind == "kill":
            victims, leader = self._victims(clients, ids, self.rng.randint(1, minority_max))
            notes = ["(leader)"] if leader in victims else []
            snapshot_first = self.rng.random() < SNAPSHOT_BEFORE_KILL_FRACTION
            if snapshot_first:
                # The snapshot is persisted on the daemon's next loop turn after it answers:
                # killing now lands inside or just before that write.
                with suppress(ClientError):
                    clients[victims[0]].snapshot()
                    notes.append(f"right after a snapshot on n{victims[0]}")
            self._crash("kill", victims, " ".join(notes), KILL_DOWN_S, leader)
            return
        if kind == "killall":
            self._crash("killall", self.nodes.ids, "every node at once", KILLALL_DOWN_S, None)
            return
        if kind == "reconfig":
            self.reconfig.step()
            return
        if kind == "restart":
            victims, leader = self._victims(clients, ids, 1)
            ev = self._event(
                "restart", victims, "SIGTERM (leader)" if leader in victims else "", leader
            )
            down = self._clock()
            cluster.stop(victims[0])
            self._start(victims[0], "restart", down)
            ev.end_ms = self._clock()
            return
        raise AssertionError(f"unhandled fault kind {kind!r}")

    def _crash(
        self,
        kind: str,
        victims: list[int],
        note: str,
        down_s: tuple[float, float],
        leader: int | None,
    ) -> None:
        cluster = self.nodes.cluster
        assert cluster is not None
        ev = self._event(kind, victims, note, leader)
        down = self._clock()
        try:
            # Signal all first, then wait: "at once" means no victim outlives another by a
            # whole process exit.
            for k in victims:
                cluster.signal(k, signal.SIGKILL)
            for k in victims:
                cluster.kill(k)
            self._sleep(down_s)
        finally:
            for k in victims:
                self._start(k, kind, down)
            ev.end_ms = self._clock()

    def _start(self, k: int, kind: str, down_ms: int) -> None:
        cluster = self.nodes.cluster
        assert cluster is not None
        cluster.start(k, env=self.nodes.node_env)
        ev = RestartEvent(node=k, kind=kind, down_ms=down_ms, restart_ms=self._clock())
        with self._lock:
            self.restarts.append(ev)
        t = threading.Thread(target=self._watch, args=(ev,), name=f"drill-restart-n{k}")
        t.daemon = True
        self._watchers.append(t)
        t.start()

    def _watch(self, ev: RestartEvent) -> None:
        """Ready: the node answers. Caught up: its applied index reached the leader's applied
        index at that moment (under load the leader keeps moving, so "equal to the leader
        now" might never hold; "where the leader was when it came back" always can)."""
        deadline = time.monotonic() + READY_TIMEOUT_S + CATCH_UP_TIMEOUT_S
        with closing_all(self.nodes.node_clients(timeout_ms=500)) as clients:
            me = clients.get(ev.node)
            if me is None:
                return  # removed from the cluster meanwhile
            mine: dict[str, Any] | None = None
            while mine is None and time.monotonic() < deadline:
                mine = node_status(me)
                if mine is None:
                    time.sleep(POLL_S)
            if mine is None:
                return
            ev.ready_ms = self._clock()
            target: int | None = None
            while target is None and time.monotonic() < deadline:
                for k, c in clients.items():
                    s = mine if k == ev.node else node_status(c)
                    if s is not None and s.get("role") == "leader":
                        target = int(s["applied_index"])
                        break
                else:
                    time.sleep(POLL_S)
                    mine = node_status(me) or mine
            if target is None:
                return
            ev.behind_slots = max(0, target - int(mine["applied_index"]))
            while time.monotonic() < deadline:
                s = node_status(me)
                if s is not None and int(s["applied_index"]) >= target:
                    ev.caught_up_ms = self._clock()
                    return
                time.sleep(POLL_S)


def _signal_child(pid: int, sig: signal.Signals) -> None:
    """Signal a node's listener process, which may have exited meanwhile."""
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def set_partition(clients: Mapping[int, Client], a: int, b: int, on: bool) -> None:
    """Cut (or restore) the link between ``a`` and ``b``: the hook drops traffic at the node
    it is set on, so both ends are told. A node that is down has nothing to heal."""
    for x, y in ((a, b), (b, a)):
        with suppress(UnavailableError):
            clients[x].partition(y, on)
