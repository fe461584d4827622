"""Watches in the simulator: every node runs the daemon's WatchHub, simulated clients watch keys
and prefixes through crashes, restarts and snapshot installs, and a checker holds each
watcher's stream against the reference model's events (paxosd/sim/revisions.py).

Each node gets a ``WatchHub`` (paxosd/server/watch.py) over a sink that hands responses
straight to the simulated watcher; the hub is pumped after every turn of the node, as the
daemon pumps it after every loop turn. A crash loses the hub (it is volatile) and every
connection to it; a snapshot install either keeps the connections (the hub is then pumped
with the new state machine, as in the daemon) or, half the time, drops them. A watcher that
lost its connection creates its watch again on a random up node (or the restarted one), at
the revision after the last event it got: etcd's resume rule.

One watcher per run is slow: for a while its sink reports a backlog over the hub's bound
(the hub must stop sending and later catch it up from history), then one between the resume
and the stop bound (catch-up waits; progress notifications may still go out, but only for
revisions whose events were all delivered).

The checker (``check``), per watcher and per segment (a segment starts at creation and again
after a compacted cancel, from the compaction revision):

- ordered and unique: revisions increase strictly from one response to the next, never
  decrease within one, and no (revision, key) is delivered twice;
- complete: the events delivered equal the model's events on the watcher's key or prefix
  from the segment's start revision through the last revision delivered (prev_kv only when
  asked);
- progress: a progress response with revision P comes after every such event up to P;
- compacted cancel: only when the next revision the watcher needs is below the compaction
  revision given, which must be one the log really compacted to;
- live: after healing, every watcher gets every event up to the final revision.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Final

from paxosd.core.types import NodeId
from paxosd.net.framing import WatchCreate, WatchResponse
from paxosd.server.watch import WatchHub, WatchLimits
from paxosd.sim.checker import Violation
from paxosd.sim.planted import hub_class
from paxosd.sim.revisions import Replay
from paxosd.sim.workload import KEYS, TXN_KEYS
from paxosd.statemachine.commands import Event

if TYPE_CHECKING:
    from paxosd.sim.world import SimNode, World

PROPERTY: Final = "watch"
# Small bounds, so that one simulated second splits responses, pauses slow watchers, feeds
# them back in several batches and sends progress notifications.
SIM_WATCH_LIMITS: Final = WatchLimits(
    events_per_response_max=3,
    backlog_frames_max=8,
    backlog_resume_frames=2,
    frames_per_send_max=2,
    synced_events_per_pump=50,
    catchup_events_per_pump=4,
    progress_interval_ms=150,
)
# What the slow watcher's sink reports: over the stop bound, then between the two bounds.
_BACKLOG_STOPPED: Final = SIM_WATCH_LIMITS.backlog_frames_max + 2
_BACKLOG_DRAINING: Final = (
    SIM_WATCH_LIMITS.backlog_resume_frames + SIM_WATCH_LIMITS.backlog_frames_max
) // 2
_CONN_BASE: Final = 1_000_000  # watch connections, apart from the clients' ids in a runner


@dataclass(slots=True)
class Segment:
    """One unbroken stretch of a watcher's stream (see the module docstring)."""

    start: int  # the first revision it covers; 0 until the created response says
    events: list[Event] = field(default_factory=list)
    # Each events response's (first, last) revision, in order.
    responses: list[tuple[int, int]] = field(default_factory=list)
    # (P, events delivered in this segment before the progress response).
    progress: list[tuple[int, int]] = field(default_factory=list)
    # The compaction revision of a compacted cancel that ended it, and the next revision the
    # watcher needed then.
    compacted: int = 0
    needed: int = 0

    def next_revision(self) -> int:
        return self.events[-1].revision + 1 if self.events else self.start


@dataclass(slots=True)
class SimWatcher:
    index: int
    key: str
    prefix: bool
    prev_kv: bool
    progress_notify: bool
    start_revision: int  # asked at the first creation (0: from now)
    create_at_ms: int
    slow_from_ms: int = -1
    stopped_until_ms: int = -1
    draining_until_ms: int = -1
    node: NodeId | None = None
    conn_id: int = 0
    creations: int = 0
    segments: list[Segment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = f"prefix {self.key!r}" if self.prefix else f"key {self.key!r}"
        return f"watcher w{self.index} ({what})"

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key


class _Sink:
    """One node's WatchSink: responses go straight to the watcher on that connection."""

    def __init__(self, driver: WatchDriver) -> None:
        self._driver = driver

    def send(self, conn_id: int, responses: list[WatchResponse]) -> bool:
        w = self._driver.by_conn.get(conn_id)
        if w is None:
            return False
        for resp in responses:
            self._driver.receive(w, resp)
        return True

    def backlog(self, conn_id: int) -> int:
        w = self._driver.by_conn.get(conn_id)
        if w is None:
            return 0
        now = self._driver.world.now_ms
        if w.slow_from_ms <= now < w.stopped_until_ms:
            return _BACKLOG_STOPPED
        if w.slow_from_ms <= now < w.draining_until_ms:
            return _BACKLOG_DRAINING
        return 0


class WatchDriver:
    """The world's watch side: a hub per up node, the watchers, and their reconnections."""

    def __init__(self, world: World, watchers: int, safety_ms: int) -> None:
        self.world = world
        self.rng = random.Random(world.rng.getrandbits(64))
        self.hub_class = hub_class(world.options.planted_bugs)
        self.hubs: dict[NodeId, WatchHub] = {}
        self.by_conn: dict[int, SimWatcher] = {}
        self._sink = _Sink(self)
        self._conns = _CONN_BASE
        self.restored: set[NodeId] = set()
        # For the run report: creations, reconnections, compacted cancels, progress
        # responses, events, and the hubs' slow-watcher counts.
        self.stats: Counter[str] = Counter()
        self.watchers = [self._new_watcher(i, safety_ms) for i in range(watchers)]
        for w in self.watchers:
            world.at(w.create_at_ms, partial(self.create, w))

    def _new_watcher(self, i: int, safety_ms: int) -> SimWatcher:
        rng = self.rng
        kind = i % 4
        w = SimWatcher(
            index=i,
            key=rng.choice(TXN_KEYS) if kind == 0 else rng.choice(KEYS),
            prefix=False,
            prev_kv=rng.random() < 0.5,
            progress_notify=rng.random() < 0.5,
            start_revision=0,
            create_at_ms=rng.randint(0, safety_ms // 3),
        )
        if kind == 1:
            # The slow one: a prefix, progress notifications, a stalled then draining sink.
            w.key, w.prefix, w.progress_notify = rng.choice(("t/", "u/", "")), True, True
            w.slow_from_ms = rng.randint(w.create_at_ms, safety_ms // 2)
            w.stopped_until_ms = w.slow_from_ms + rng.randint(100, 600)
            w.draining_until_ms = w.stopped_until_ms + rng.randint(100, 400)
        elif kind == 2:
            # Everything from the first revision: replays history, meets compactions.
            w.key, w.prefix, w.start_revision = "", True, 1
            w.create_at_ms = rng.randint(0, safety_ms)
        elif kind == 3:
            w.key = rng.choice(TXN_KEYS)
            w.start_revision = -1  # a recent revision, chosen at creation
        return w

    # ------------------------------------------------------------------ node lifecycle

    def start_node(self, nid: NodeId) -> None:
        self.hubs[nid] = self.hub_class(self._sink, node=int(nid), limits=SIM_WATCH_LIMITS)

    def crash_node(self, nid: NodeId) -> None:
        hub = self.hubs.pop(nid, None)
        if hub is not None:
            self.stats["slow"] += hub.stats().slow_events
        self.restored.discard(nid)
        self._disconnect_all(nid, "crash")

    def _disconnect_all(self, nid: NodeId, why: str) -> None:
        for w in self.watchers:
            if w.node == nid and w.conn_id:
                self.disconnect(w, why)

    def disconnect(self, w: SimWatcher, why: str) -> None:
        """The watcher's connection is gone: create the watch again a little later."""
        self.by_conn.pop(w.conn_id, None)
        hub = self.hubs.get(w.node) if w.node is not None else None
        if hub is not None:
            hub.drop_connection(w.conn_id)
        self.world.log(f"w{w.index} lost its connection to n{w.node} ({why})")
        w.conn_id = 0
        w.node = None
        self.world.at(self.world.now_ms + self.rng.randint(10, 150), partial(self.create, w))

    def after_turn(self, node: SimNode) -> None:
        """The daemon pumps its hub after every loop turn; so does the simulator."""
        hub = self.hubs.get(node.id)
        if hub is None or not node.up:
            return
        if node.id in self.restored:
            self.restored.discard(node.id)
            if self.rng.random() < 0.5:
                self._disconnect_all(node.id, "snapshot installed")
        hub.pump(node.sm, self.world.now_ms, _header(node))

    # ------------------------------------------------------------------ watchers

    def create(self, w: SimWatcher, node: NodeId | None = None) -> None:
        if w.conn_id:
            return  # already connected
        world = self.world
        up = [n for n in world.member_nodes() if n.up and n.id in self.hubs]
        if node is not None:
            up = [n for n in up if n.id == node]
        if not up:
            world.at(world.now_ms + 50, partial(self.create, w, node))
            return
        target = self.rng.choice(up)
        if not w.segments:
            start = w.start_revision
            if start < 0:
                start = max(1, world.revision_seen - self.rng.randint(0, 4))
            w.segments.append(Segment(start=start))
        seg = w.segments[-1]
        start = seg.next_revision() if seg.start else 0
        self._conns += 1
        w.conn_id = self._conns
        w.node = target.id
        w.creations += 1
        self.stats["created" if w.creations == 1 else "recreated"] += 1
        self.by_conn[w.conn_id] = w
        world.log(f"w{w.index} watches {w.describe()} on n{target.id} from {start or 'now'}")
        req = WatchCreate(
            watch_id=1,
            key=w.key,
            prefix=w.prefix,
            start_revision=start,
            prev_kv=w.prev_kv,
            progress_notify=w.progress_notify,
        )
        hub = self.hubs[target.id]
        hub.create(w.conn_id, req, target.sm, _header(target))
        if w.conn_id:
            hub.pump(target.sm, world.now_ms, _header(target))

    def receive(self, w: SimWatcher, resp: WatchResponse) -> None:
        seg = w.segments[-1]
        if resp.created and not resp.canceled:
            if seg.start == 0:
                seg.start = resp.revision + 1
            return
        if resp.canceled:
            self.by_conn.pop(w.conn_id, None)
            w.conn_id, w.node = 0, None
            if resp.compact_revision <= 0:
                w.problems.append(f"canceled without a compaction: {resp.reason!r}")
                return
            # Resume from the oldest revision still kept, as a client that re-lists does.
            self.stats["compacted"] += 1
            seg.compacted = resp.compact_revision
            seg.needed = seg.next_revision() if seg.start else 0
            w.segments.append(Segment(start=resp.compact_revision))
            self.world.log(f"w{w.index} canceled: compacted at {resp.compact_revision}")
            self.world.at(self.world.now_ms + self.rng.randint(10, 100), partial(self.create, w))
            return
        if resp.events:
            self.stats["events"] += len(resp.events)
            seg.events.extend(resp.events)
            seg.responses.append((resp.events[0].revision, resp.events[-1].revision))
            return
        if resp.progress:
            self.stats["progress"] += 1
            seg.progress.append((resp.revision, len(seg.events)))
            return
        w.problems.append(f"a response with nothing in it: {resp!r}")

    def heal(self) -> None:
        """After the faults: a watcher on a node that is down or no longer a member moves."""
        members = {n.id for n in self.world.member_nodes() if n.up}
        for w in self.watchers:
            if w.conn_id and w.node not in members:
                self.disconnect(w, "node left")

    def final_stats(self) -> Counter[str]:
        out = Counter(self.stats)
        for hub in self.hubs.values():
            out["slow"] += hub.stats().slow_events
        return out

    def caught_up(self, revision: int) -> bool:
        """Every watcher is connected to a hub that has caught every watcher up through
        ``revision`` (what the liveness check waits for, within a bound)."""
        for w in self.watchers:
            hub = self.hubs.get(w.node) if w.conn_id and w.node is not None else None
            if hub is None or hub.stats().catching_up or (hub.synced_rev or 0) < revision:
                return False
        return True


def _header(node: SimNode) -> tuple[int, int]:
    b = node.replica.ballot
    return (b.round, b.node)


# ---------------------------------------------------------------------------- check


def check(watchers: Sequence[SimWatcher], rp: Replay, final_revision: int | None) -> int:
    """Raise Violation at the first watcher whose stream breaks a guarantee; return the number
    of events checked. ``final_revision``: every watcher must be complete through it (the
    liveness check, after healing), or None to skip that."""
    compactions = {s.compact_revision for s in rp.states}
    events = rp.store.events
    checked = 0
    for w in watchers:
        if w.problems:
            raise Violation(PROPERTY, f"{w.describe()}: {w.problems[0]}")
        for i, seg in enumerate(w.segments):
            if not seg.start:
                continue
            where = f"{w.describe()} segment {i} from revision {seg.start}"
            _check_order(where, seg)
            last = seg.events[-1].revision if seg.events else seg.start - 1
            expected = [
                _as_delivered(ev, w.prev_kv)
                for ev in events
                if seg.start <= ev.revision <= last and w.matches(ev.kv.key)
            ]
            if seg.events != expected:
                raise Violation(PROPERTY, f"{where}: {_first_difference(seg.events, expected)}")
            for p, delivered in seg.progress:
                owed = sum(
                    1 for ev in events if seg.start <= ev.revision <= p and w.matches(ev.kv.key)
                )
                if delivered < owed:
                    raise Violation(
                        PROPERTY,
                        f"{where}: progress at revision {p} after {delivered} events, but "
                        f"{owed} events up to it were owed",
                    )
            if seg.compacted:
                if seg.compacted not in compactions:
                    raise Violation(
                        PROPERTY,
                        f"{where}: canceled as compacted at {seg.compacted}, "
                        "a revision the log never compacted to",
                    )
                if seg.needed >= seg.compacted:
                    raise Violation(
                        PROPERTY,
                        f"{where}: canceled as compacted at {seg.compacted}, but it needed "
                        f"revision {seg.needed}, which is kept",
                    )
            checked += len(seg.events)
        last_seg = w.segments[-1] if w.segments else None
        if final_revision is not None and last_seg is not None:
            due = [
                ev
                for ev in events
                if last_seg.start <= ev.revision <= final_revision and w.matches(ev.kv.key)
            ]
            if len(last_seg.events) < len(due):
                raise Violation(
                    PROPERTY,
                    f"{w.describe()} got {len(last_seg.events)} of the {len(due)} events up "
                    f"to the final revision {final_revision} after healing; the first missing: "
                    f"{due[len(last_seg.events)]!r}",
                )
    return checked


def _as_delivered(ev: Event, prev_kv: bool) -> Event:
    return ev if prev_kv or ev.prev_kv is None else Event(type=ev.type, kv=ev.kv)


def _check_order(where: str, seg: Segment) -> None:
    prior = seg.start - 1
    for first, last in seg.responses:
        if first <= prior:
            raise Violation(
                PROPERTY, f"{where}: a response starts at revision {first} after {prior}"
            )
        prior = last
    seen: set[tuple[int, str]] = set()
    prev_rev = 0
    for ev in seg.events:
        if ev.revision < prev_rev:
            raise Violation(PROPERTY, f"{where}: revision {ev.revision} after {prev_rev}")
        if (ev.revision, ev.kv.key) in seen:
            raise Violation(PROPERTY, f"{where}: {ev.kv.key!r} at {ev.revision} delivered twice")
        seen.add((ev.revision, ev.kv.key))
        prev_rev = ev.revision


def _first_difference(got: list[Event], expected: list[Event]) -> str:
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            return f"event {i} is {g!r}, the model's is {e!r}"
    if len(got) > len(expected):
        return (
            f"{len(got) - len(expected)} events more than the model's, from {got[len(expected)]!r}"
        )
    return f"missing {len(expected) - len(got)} events, from {expected[len(got)]!r}"


__all__ = ["PROPERTY", "SIM_WATCH_LIMITS", "Segment", "SimWatcher", "WatchDriver", "check"]
