"""The watch service of one node: who watches what, and the events each watcher is owed.

A ``WatchHub`` turns the state machine's history (``sm.events_since``) into ``WatchResponse``
frames for every watcher on this node. It does no I/O and reads no clock: the daemon (and the
simulator) hand it a ``WatchSink`` to send through, the current state machine and the time in
``pump``. That keeps it drivable by the deterministic simulator, which runs the same hub.

The four guarantees, and where each one is kept:

- ordered: a watcher has one cursor, ``next_rev``; every response carries whole revisions at
  or above it and moves it past them, so revisions only increase.
- unique: the cursor only moves forward, past what was sent.
- complete: a watcher is fed from the history in revision order from its cursor, with no
  revision skipped: either with the shared "synced" batch (``_pump_synced``, every caught-up
  watcher at once) or, while it is behind, from its own cursor (``_pump_catching_up``, one
  history read for a batch of such watchers).
- resumable: a watch created again with ``start_revision`` = last delivered + 1, on any node,
  continues the same projection of the same log.

Slow watchers. A connection whose transport queue holds ``backlog_frames_max`` frames gets
nothing more: its watchers with something to send move to "catching up" and are fed again
from the history, in bounded batches, once the queue has drained to
``backlog_resume_frames``. So a slow reader costs the node a cursor, never a growing buffer,
and the transport's own bound (which drops the oldest frame) is never reached by watch
traffic. Compaction can overtake a watcher that is behind: it is then canceled with the
compaction revision, never silently given a history with a hole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

from paxosd.net.framing import FRAME_BYTES_MAX_DEFAULT, Envelope, WatchCreate, WatchResponse
from paxosd.statemachine.commands import EVENT_TYPES, KEY_BYTES_MAX, Event

# What a canceled response says, by cause (the client maps them to its errors).
REASON_CANCELED: Final = "canceled by the client"
REASON_COMPACTED: Final = "required revision has been compacted"
# An envelope's fields around the events (ids, flags, revisions, header): well under this.
_RESPONSE_OVERHEAD_BYTES: Final = 1024
_EVENT_OVERHEAD_BYTES: Final = 64
_encoder = msgspec.msgpack.Encoder()


class _WireResponse(msgspec.Struct, frozen=True, tag="WatchResponse", array_like=True):
    """``WatchResponse`` as it is encoded, with its events already encoded: the same bytes
    (the same tag and fields, in order), so a client decodes it as a WatchResponse."""

    watch_id: int
    events: msgspec.Raw
    revision: int
    created: bool
    canceled: bool
    progress: bool
    compact_revision: int
    reason: str
    node: int
    ballot_round: int
    ballot_node: int


class FrameEncoder:
    """Encodes WatchResponses into client frames, encoding each shared events tuple once.

    The hub hands every watcher of one key or prefix (with the same options) the same tuple
    of events; a sink that encodes responses one by one would encode those events once per
    watcher. This keeps the encoding of recent tuples by identity (holding the tuple, so an
    id is never reused while it is cached).

    Tuples are shared only within one pump, so the sink calls ``clear`` at the end of each
    (``WatchHub.pump`` tells it): kept longer, the cache would hold revisions that were sent
    long ago, up to ``cache_max`` of them of up to a frame each (a GiB), outside every bound
    the hub keeps. ``cache_bytes_max`` bounds it within a pump too (and for a user that
    never clears): past it the oldest entries go, which only costs a re-encoding.
    """

    def __init__(self, src: int, cache_max: int = 256, cache_bytes_max: int = 16 << 20) -> None:
        assert cache_max >= 1 and cache_bytes_max >= 1
        self.src = src
        self.cache_max = cache_max
        self.cache_bytes_max = cache_bytes_max
        self._cache: dict[int, tuple[tuple[Event, ...], msgspec.Raw]] = {}
        self._cached_bytes = 0

    @property
    def cached_bytes(self) -> int:
        """Bytes of encoded events the cache holds (the events themselves come on top)."""
        return self._cached_bytes

    def clear(self) -> None:
        """Forget every cached encoding (and let go of its events)."""
        self._cache.clear()
        self._cached_bytes = 0

    def frame(self, r: WatchResponse) -> bytes:
        hit = self._cache.get(id(r.events))
        if hit is None or hit[0] is not r.events:
            if hit is not None:  # an id reused by a new tuple: the old entry goes first
                self._evict(id(r.events))
            raw = msgspec.Raw(_encoder.encode(r.events))
            hit = (r.events, raw)
            if r.events:
                while self._cache and (
                    len(self._cache) >= self.cache_max
                    or self._cached_bytes + len(raw) > self.cache_bytes_max
                ):
                    self._evict(next(iter(self._cache)))
                self._cache[id(r.events)] = hit
                self._cached_bytes += len(raw)
        wire = _WireResponse(
            r.watch_id,
            hit[1],
            r.revision,
            r.created,
            r.canceled,
            r.progress,
            r.compact_revision,
            r.reason,
            r.node,
            r.ballot_round,
            r.ballot_node,
        )
        return _encoder.encode(Envelope(self.src, wire))

    def _evict(self, key: int) -> None:
        _, raw = self._cache.pop(key)
        self._cached_bytes -= len(raw)


class History(Protocol):
    """What the hub reads from the state machine (``paxosd.statemachine.machine``): the names
    of the shared design. A Protocol so that unit tests and the simulator may pass a small
    stand-in; the daemon passes its ``StateMachine``."""

    @property
    def revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def events_since(self, revision: int, limit: int) -> list[Event]: ...


class WatchSink(Protocol):
    """Where the hub's responses go: one client connection each (the daemon's ClientServer,
    or the simulator's recorder). A sink may also define ``end_pump()``, called after each
    pump (see ``_end_pump``); it is not part of the protocol so that sinks without it fit."""

    def send(self, conn_id: int, responses: list[WatchResponse]) -> bool:
        """Queue ``responses`` on ``conn_id`` in order; False when the connection is gone
        (the hub then forgets its watchers)."""
        ...

    def backlog(self, conn_id: int) -> int:
        """Frames queued for ``conn_id`` and not yet written to its socket."""
        ...


def _end_pump(sink: WatchSink) -> None:
    """Tell ``sink`` that a pump is over, if it wants to know: a sink may define
    ``end_pump()`` to let go of what it shares between the responses of one pump (the
    daemon's drops its encoding cache). Optional, so a sink of two methods still fits."""
    end = getattr(sink, "end_pump", None)
    if end is not None:
        end()


@dataclass(frozen=True, slots=True)
class WatchLimits:
    """Every bound of the watch service. Units are last in each name."""

    # Watchers one client connection may hold (etcd has none; a bound keeps one client from
    # taking the node's whole budget).
    watchers_per_connection_max: int = 1000
    # Watchers on this node, all connections together.
    watchers_per_node_max: int = 10_000
    # Events in one response, unless one revision alone has more (a revision is never split).
    events_per_response_max: int = 1000
    # Estimated bytes of one response's events, with the same exception; the frame bound
    # (``frame_bytes_max``) is the hard one: a single revision over it cancels the watcher.
    # With the backlog bound it caps what a reader that stops reading costs this node:
    # (backlog_frames_max + frames_per_send_max) = 192 frames of about this, 12 MiB, unless
    # its revisions are bigger (each at most frame_bytes_max). etcd keeps 128 responses per
    # watch stream.
    response_bytes_max: int = 64 << 10
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    # A connection with this many frames queued gets nothing more until it is down to
    # ``backlog_resume_frames``. It must stay well below the transport's send queue bound
    # (TransportLimits.send_queue_frames_max, 4096), which drops frames: the daemon checks.
    backlog_frames_max: int = 128
    backlog_resume_frames: int = 32
    # The same bound for all connections together: while this many frames are queued on
    # the watch connections of this node, no watcher is sent more (they catch up later).
    # Client connections are at most 256 (TransportLimits.client_connections_max), each
    # holding up to queue_frames_max frames: this keeps the node's total well below that.
    node_backlog_frames_max: int = 4096
    # Responses handed to the sink in one send; the backlog is checked before each send, so a
    # connection's queue never holds more than backlog_frames_max + frames_per_send_max.
    frames_per_send_max: int = 64
    # History events read per pump for the caught-up watchers together, and for the watchers
    # catching up together: each loop turn does a bounded amount of watch work.
    synced_events_per_pump: int = 5000
    catchup_events_per_pump: int = 2000
    # Watchers catching up that one pump serves from that one read (etcd: 512 a sync).
    catchup_watchers_per_pump: int = 512
    # A caught-up watcher that asked for progress notifications and was sent nothing for this
    # long gets an empty response with the revision it is complete through (etcd: 10 minutes
    # by default, --experimental-watch-progress-notify-interval).
    progress_interval_ms: int = 10_000

    def __post_init__(self) -> None:
        assert 1 <= self.watchers_per_connection_max <= self.watchers_per_node_max
        assert self.events_per_response_max >= 1
        assert 1 <= self.response_bytes_max < self.frame_bytes_max
        assert 0 <= self.backlog_resume_frames < self.backlog_frames_max
        assert self.node_backlog_frames_max >= 1
        assert self.frames_per_send_max >= 1
        assert self.synced_events_per_pump >= 1 and self.catchup_events_per_pump >= 1
        assert self.catchup_watchers_per_pump >= 1
        assert self.progress_interval_ms >= 1

    @property
    def queue_frames_max(self) -> int:
        """The most frames watch traffic can leave queued on one connection."""
        return self.backlog_frames_max + self.frames_per_send_max


@dataclass(frozen=True, slots=True)
class WatchStats:
    """The hub's gauges (``watchers``, ``catching_up``) and counters since start."""

    watchers: int
    catching_up: int
    canceled_compacted: int
    # Times a watcher fell behind its connection's backlog bound and moved to catching up.
    slow_events: int
    events_sent: int
    responses_sent: int


@dataclass(eq=False, slots=True)
class _Watcher:
    conn_id: int
    watch_id: int
    key: str
    prefix: bool
    prev_kv: bool
    progress_notify: bool
    want_put: bool
    want_delete: bool
    # The first revision not yet delivered (every event below it that matches was sent).
    next_rev: int
    synced: bool = False
    # When this watcher was last sent anything (events or progress), for progress notify.
    last_sent_ms: int = 0

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def wants(self, ev: Event) -> bool:
        return self.want_put if ev.type == "PUT" else self.want_delete


@dataclass(slots=True)
class _Counters:
    canceled_compacted: int = 0
    slow_events: int = 0
    events_sent: int = 0
    responses_sent: int = 0


@dataclass(slots=True)
class _Shared:
    """Per-pump memo: an event's prev_kv-less copy and its size are made once, whatever the
    number of watchers that receive it. Keyed by identity and holding the event, so an id is
    never reused while it is remembered."""

    stripped: dict[int, tuple[Event, Event]] = field(default_factory=dict)
    sizes: dict[int, tuple[Event, int]] = field(default_factory=dict)

    def strip(self, ev: Event) -> Event:
        if ev.prev_kv is None:
            return ev
        hit = self.stripped.get(id(ev))
        if hit is None or hit[0] is not ev:
            hit = self.stripped[id(ev)] = (ev, msgspec.structs.replace(ev, prev_kv=None))
        return hit[1]

    def size(self, ev: Event) -> int:
        hit = self.sizes.get(id(ev))
        if hit is None or hit[0] is not ev:
            n = _EVENT_OVERHEAD_BYTES + len(ev.kv.key.encode()) + len(ev.kv.value)
            if ev.prev_kv is not None:
                n += _EVENT_OVERHEAD_BYTES + len(ev.prev_kv.key.encode()) + len(ev.prev_kv.value)
            hit = self.sizes[id(ev)] = (ev, n)
        return hit[1]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one selection of events becomes: the events of each response (shared by every
    watcher with that selection), and the revision too large to send, if one stopped it."""

    chunks: list[tuple[Event, ...]]
    too_large: int | None


def check_create(req: WatchCreate) -> str:
    """Why a well-formed WatchCreate cannot be served ("" when it can): a bad key, a bad
    filter, a negative revision. The connection stays open: the answer is a canceled
    response with this reason."""
    try:
        size = len(req.key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the key is not valid UTF-8 text"
    if size > KEY_BYTES_MAX:
        return f"the key is {size} bytes, over {KEY_BYTES_MAX}"
    if size == 0 and not req.prefix:
        return "the key is empty (watch every key with an empty prefix)"
    bad = [f for f in req.filters if f not in EVENT_TYPES]
    if bad:
        return f"unknown event filter {bad[0]!r}: filters are {', '.join(EVENT_TYPES)}"
    if req.start_revision < 0:
        return f"start revision {req.start_revision} is negative"
    return ""


class WatchHub:
    """Every watcher of one node and the cursor of each; see the module docstring.

    Invariant: a synced watcher's ``next_rev`` is at least ``synced_rev + 1`` (equal, unless it
    asked to start at a future revision); a catching-up watcher's is at most ``synced_rev + 1``.
    """

    def __init__(self, sink: WatchSink, *, node: int, limits: WatchLimits | None = None) -> None:
        self.sink = sink
        self.node = node
        self.limits = limits or WatchLimits()
        self._watchers: dict[tuple[int, int], _Watcher] = {}
        self._per_conn: dict[int, dict[int, _Watcher]] = {}
        # Synced watchers by key (exact) and by prefix string (prefix watchers).
        self._exact: dict[str, set[_Watcher]] = {}
        self._prefixes: dict[str, set[_Watcher]] = {}
        self._synced_count = 0
        self._progress: set[_Watcher] = set()
        self._catching_up: deque[_Watcher] = deque()
        # Every event up to synced_rev has been offered to the synced watchers; None before
        # the hub has seen a state machine.
        self.synced_rev: int | None = None
        self._compact_seen = -1
        self._sm_seen: object = None
        self._header = (0, 0)
        self._counters = _Counters()
        # The time of the last pump (a new watcher's progress interval starts there) and when
        # progress is next looked at (a tenth of the interval: not every watcher every turn).
        self._now_ms = 0
        self._next_progress_ms = 0
        self._node_frames = 0

    # ------------------------------------------------------------------ requests

    def create(self, conn_id: int, req: WatchCreate, sm: History, header: tuple[int, int]) -> None:
        """Answer ``req`` with a created response (and, when it cannot be served, a canceled
        one with the reason); start delivering from its start revision."""
        self._header = header
        if self.synced_rev is None:
            self.synced_rev = sm.revision
        revision = sm.revision
        created = self._response(req.watch_id, revision, created=True)
        reason = check_create(req)
        conn = self._per_conn.get(conn_id, {})
        if not reason and req.watch_id in conn:
            reason = f"watch id {req.watch_id} is already in use on this connection"
        if not reason and len(conn) >= self.limits.watchers_per_connection_max:
            reason = (
                f"too many watchers on this connection ({self.limits.watchers_per_connection_max})"
            )
        if not reason and len(self._watchers) >= self.limits.watchers_per_node_max:
            reason = f"too many watchers on this node ({self.limits.watchers_per_node_max})"
        if reason:
            refused = self._response(req.watch_id, revision, created=True, canceled=True)
            self._send(conn_id, [msgspec.structs.replace(refused, reason=reason)])
            return
        start = req.start_revision if req.start_revision > 0 else revision + 1
        w = _Watcher(
            conn_id=conn_id,
            watch_id=req.watch_id,
            key=req.key,
            prefix=req.prefix,
            prev_kv=req.prev_kv,
            progress_notify=req.progress_notify,
            want_put="PUT" not in req.filters,
            want_delete="DELETE" not in req.filters,
            next_rev=start,
            last_sent_ms=self._now_ms,
        )
        if not self._send(conn_id, [created]):
            return
        if start < sm.compact_revision:
            self._counters.canceled_compacted += 1
            self._send(conn_id, [self._compacted(w.watch_id, sm)])
            return
        self._watchers[(conn_id, w.watch_id)] = w
        self._per_conn.setdefault(conn_id, {})[w.watch_id] = w
        if start > self.synced_rev:
            self._join_synced(w)
        else:
            self._catching_up.append(w)

    def cancel(self, conn_id: int, watch_id: int) -> None:
        """The client's cancel: a canceled response, and nothing more for that watch."""
        w = self._watchers.get((conn_id, watch_id))
        if w is not None:
            self._remove(w)
        resp = self._response(watch_id, 0, canceled=True)
        self._send(conn_id, [msgspec.structs.replace(resp, reason=REASON_CANCELED)])

    def drop_connection(self, conn_id: int) -> None:
        """The connection closed: forget its watchers (nothing to tell anyone)."""
        for w in list(self._per_conn.get(conn_id, {}).values()):
            self._remove(w)
        self._per_conn.pop(conn_id, None)

    # ------------------------------------------------------------------ the pump

    def pump(self, sm: History, now_ms: int, header: tuple[int, int]) -> None:
        """One turn of delivery with the node's current state machine (see the module
        docstring): compaction cancels, the synced batch, catch-up, then progress. The sink
        hears of the end of each (``end_pump``, when it has one)."""
        try:
            self._pump(sm, now_ms, header)
        finally:
            _end_pump(self.sink)

    def _pump(self, sm: History, now_ms: int, header: tuple[int, int]) -> None:
        self._header = header
        self._now_ms = now_ms
        if not self._watchers:
            # Nothing to deliver, nothing to read: the next watcher starts a new synced batch
            # at the revision of its creation (and no old state machine is kept alive here).
            self.synced_rev = None
            self._sm_seen = None
            return
        if self.synced_rev is None:
            self.synced_rev = sm.revision
        assert sm.revision >= self.synced_rev, (sm.revision, self.synced_rev)
        # Frames queued on all watch connections now; each send this pump adds its own (as
        # if none were written yet: the bound holds whatever the sockets take meanwhile).
        self._node_frames = sum(self.sink.backlog(c) for c in self._per_conn)
        if sm is not self._sm_seen or sm.compact_revision != self._compact_seen:
            self._cancel_compacted(sm)
            self._sm_seen = sm
            self._compact_seen = sm.compact_revision
        if sm.revision > self.synced_rev:
            if self._synced_count:
                self._pump_synced(sm, now_ms)
            else:
                # Nobody to hand a batch to: the watchers catching up read the history
                # themselves, up to here.
                self.synced_rev = sm.revision
        if self._catching_up:
            self._pump_catching_up(sm, now_ms)
        if self._progress and now_ms >= self._next_progress_ms:
            self._next_progress_ms = now_ms + max(1, self.limits.progress_interval_ms // 10)
            self._pump_progress(now_ms)

    def connections(self) -> list[int]:
        """The connections that hold watchers."""
        return list(self._per_conn)

    def stats(self) -> WatchStats:
        c = self._counters
        return WatchStats(
            watchers=len(self._watchers),
            catching_up=len(self._watchers) - self._synced_count,
            canceled_compacted=c.canceled_compacted,
            slow_events=c.slow_events,
            events_sent=c.events_sent,
            responses_sent=c.responses_sent,
        )

    def select(self, w: _Watcher, events: Iterable[Event], shared: _Shared) -> list[Event]:
        """The events of ``events`` that ``w`` gets, as it gets them: its keys, its filters,
        prev_kv only when asked, nothing below its cursor."""
        out: list[Event] = []
        for ev in events:
            if ev.kv.mod_revision >= w.next_rev and w.matches(ev.kv.key) and w.wants(ev):
                out.append(ev if w.prev_kv else shared.strip(ev))
        return out

    def _pump_synced(self, sm: History, now_ms: int) -> None:
        """Read the next batch of history once and fan it out to the synced watchers through
        the key and prefix indexes. Watchers of one index entry with the same options get the
        same events cut the same way: that plan is made once and shared (the events, the
        tuples of each response), so a watcher costs a few response headers, not a pass over
        the events."""
        assert self.synced_rev is not None
        # Compaction may have passed the batch: the synced watchers it left behind were just
        # canceled, so the ones left start at or after it.
        first_new = max(self.synced_rev + 1, sm.compact_revision)
        events = sm.events_since(first_new, self.limits.synced_events_per_pump)
        through = events[-1].kv.mod_revision if events else sm.revision
        assert through <= sm.revision, (through, sm.revision)
        if self._synced_count and events:
            shared = _Shared()
            for (is_prefix, key), matched in self._match(events).items():
                group = (self._prefixes if is_prefix else self._exact).get(key)
                if not group:
                    continue
                plans: dict[tuple[bool, bool, bool], _Plan] = {}
                for w in list(group):  # a copy: delivering may take watchers out of it
                    if not w.synced:
                        continue  # gone, or fell behind, since the batch was matched
                    if w.next_rev > first_new:  # it asked to start later: its own plan
                        plan = self._plan(self.select(w, matched, shared), sm, shared)
                    else:
                        options = (w.prev_kv, w.want_put, w.want_delete)
                        found = plans.get(options)
                        if found is None:
                            selected = self.select(w, matched, shared)
                            found = plans[options] = self._plan(selected, sm, shared)
                        plan = found
                    if plan.chunks or plan.too_large is not None:
                        self._deliver(w, plan, sm, now_ms)
        self.synced_rev = through

    def _match(self, events: list[Event]) -> dict[tuple[bool, str], list[Event]]:
        """The events of each index entry that has synced watchers: (is_prefix, key) ->
        events in order. A key's prefixes are found by looking up its own prefixes (at most
        KEY_BYTES_MAX + 1 lookups) or by testing every indexed prefix, whichever is fewer."""
        out: dict[tuple[bool, str], list[Event]] = {}
        exact = self._exact
        prefixes = self._prefixes
        for ev in events:
            key = ev.kv.key
            if key in exact:
                out.setdefault((False, key), []).append(ev)
            if not prefixes:
                continue
            if len(prefixes) < len(key) + 1:
                hits = [p for p in prefixes if key.startswith(p)]
            else:
                hits = [key[:i] for i in range(len(key) + 1) if key[:i] in prefixes]
            for p in hits:
                out.setdefault((True, p), []).append(ev)
        return out

    def _pump_catching_up(self, sm: History, now_ms: int) -> None:
        """Feed watchers that are behind, as etcd's ``syncWatchers`` does: take up to
        ``catchup_watchers_per_pump`` of them whose connections have room (round-robin), read
        the history once from the lowest of their cursors (within the per-pump budget), and
        hand each its share. Watchers at one cursor with one key and the same options share
        one plan. One that reaches the synced batch joins it.

        Reading once for the batch is what lets many watchers that fell behind together (a
        burst on a prefix with a thousand watchers) catch up together: read per watcher, the
        budget bought one watcher's events per pump and the rest waited their turn."""
        assert self.synced_rev is not None
        limits = self.limits
        backlog = self.sink.backlog
        resume = limits.backlog_resume_frames
        node_max = limits.node_backlog_frames_max
        ready: list[_Watcher] = []
        for _ in range(len(self._catching_up)):
            if len(ready) >= limits.catchup_watchers_per_pump:
                break
            w = self._catching_up.popleft()
            if self._watchers.get((w.conn_id, w.watch_id)) is not w or w.synced:
                continue  # removed (its id maybe reused since), or rejoined, since queued
            if w.next_rev < sm.compact_revision:
                self._cancel_one(w, sm)
                continue
            if w.next_rev > self.synced_rev:
                self._join_synced(w)  # nothing older left to read
                continue
            if backlog(w.conn_id) > resume or self._node_frames >= node_max:
                self._catching_up.append(w)
                continue
            ready.append(w)
        if not ready:
            return
        start = min(w.next_rev for w in ready)
        budget = min(limits.catchup_events_per_pump, limits.synced_events_per_pump)
        events = sm.events_since(start, budget)
        upto = [ev for ev in events if ev.kv.mod_revision <= self.synced_rev]
        scanned = upto[-1].kv.mod_revision if upto else start - 1
        if len(upto) < len(events) or not events:
            scanned = self.synced_rev  # the whole rest up to the synced batch was read
        shared = _Shared()
        plans: dict[tuple[int, bool, str, bool, bool, bool], _Plan] = {}
        for w in ready:
            if self._watchers.get((w.conn_id, w.watch_id)) is not w:
                continue  # its connection went while an earlier watcher was served
            options = (w.next_rev, w.prefix, w.key, w.prev_kv, w.want_put, w.want_delete)
            plan = plans.get(options)
            if plan is None:
                plan = plans[options] = self._plan(self.select(w, upto, shared), sm, shared)
            if (plan.chunks or plan.too_large is not None) and not self._deliver(
                w, plan, sm, now_ms
            ):
                if self._watchers.get((w.conn_id, w.watch_id)) is w:
                    self._catching_up.append(w)
                continue
            # Everything up to ``scanned`` that concerns w was sent (a watcher whose cursor
            # is above it keeps its cursor: nothing was read for it yet).
            w.next_rev = max(w.next_rev, scanned + 1)
            if w.next_rev > self.synced_rev:
                self._join_synced(w)
            else:
                self._catching_up.append(w)

    def _pump_progress(self, now_ms: int) -> None:
        """An empty response with ``synced_rev`` to each caught-up watcher that asked for
        progress and was sent nothing for an interval. Only synced watchers: they have been
        sent every event up to synced_rev, so the revision is never early."""
        assert self.synced_rev is not None
        interval = self.limits.progress_interval_ms
        bound = self.limits.backlog_frames_max
        node_max = self.limits.node_backlog_frames_max
        for w in list(self._progress):
            if not w.synced or now_ms - w.last_sent_ms < interval:
                continue
            if self._node_frames >= node_max or self.sink.backlog(w.conn_id) >= bound:
                continue
            resp = self._response(w.watch_id, self.synced_rev, progress=True)
            if self._send(w.conn_id, [resp]):
                w.last_sent_ms = now_ms
                self._node_frames += 1

    # ------------------------------------------------------------------ delivery

    def _deliver(self, w: _Watcher, plan: _Plan, sm: History, now_ms: int) -> bool:
        """Send ``plan`` (whole revisions, ascending, all >= w.next_rev) to ``w`` and move its
        cursor past each response sent. True when all went; False when its connection's
        backlog stopped it (it is then catching up from the first revision not sent), or the
        watcher is gone (its connection closed, or a revision too large to send)."""
        bound = self.limits.backlog_frames_max
        node_max = self.limits.node_backlog_frames_max
        step = self.limits.frames_per_send_max
        chunks = plan.chunks
        for i in range(0, len(chunks), step):
            part = chunks[i : i + step]
            if self._node_frames >= node_max or self.sink.backlog(w.conn_id) >= bound:
                # Everything before this part was sent or did not concern w.
                self._counters.slow_events += 1
                self._fall_behind(w)
                w.next_rev = max(w.next_rev, part[0][0].kv.mod_revision)
                return False
            if not self._send(w.conn_id, [self._events_response(w, c, sm) for c in part]):
                return False
            w.next_rev = part[-1][-1].kv.mod_revision + 1
            w.last_sent_ms = now_ms
            self._counters.events_sent += sum(len(c) for c in part)
            self._node_frames += len(part)
        if plan.too_large is not None:
            # It cannot be delivered whole, and it is never skipped: the watch ends, loudly.
            resp = self._response(w.watch_id, sm.revision, canceled=True)
            reason = f"the events of revision {plan.too_large} are too large for one response"
            self._remove(w)
            self._send(w.conn_id, [msgspec.structs.replace(resp, reason=reason)])
            return False
        return True

    def _plan(self, events: list[Event], sm: History, shared: _Shared) -> _Plan:
        """``events`` cut into the events of each response at revision boundaries, each
        within the count and byte bounds unless one revision alone is bigger; and the first
        revision too big for a frame, if any (the plan stops before it)."""
        limit_n = self.limits.events_per_response_max
        limit_b = self.limits.response_bytes_max
        out: list[tuple[Event, ...]] = []
        current: list[Event] = []
        current_b = 0
        i, n = 0, len(events)
        while i < n:
            rev = events[i].kv.mod_revision
            j, size = i, 0
            while j < n and events[j].kv.mod_revision == rev:
                size += shared.size(events[j])
                j += 1
            group = events[i:j]
            if current and (len(current) + len(group) > limit_n or current_b + size > limit_b):
                out.append(tuple(current))
                current, current_b = [], 0
            if size > limit_b:
                one = len(_encoder.encode(group))
                if one + _RESPONSE_OVERHEAD_BYTES > self.limits.frame_bytes_max:
                    if current:
                        out.append(tuple(current))
                    return _Plan(out, rev)
            current.extend(group)
            current_b += size
            i = j
        if current:
            out.append(tuple(current))
        return _Plan(out, None)

    def _events_response(
        self, w: _Watcher, events: tuple[Event, ...], sm: History
    ) -> WatchResponse:
        round_, node = self._header
        return WatchResponse(
            watch_id=w.watch_id,
            events=events,
            revision=sm.revision,
            node=self.node,
            ballot_round=round_,
            ballot_node=node,
        )

    def _response(
        self,
        watch_id: int,
        revision: int,
        *,
        created: bool = False,
        canceled: bool = False,
        progress: bool = False,
    ) -> WatchResponse:
        round_, node = self._header
        return WatchResponse(
            watch_id=watch_id,
            revision=revision,
            created=created,
            canceled=canceled,
            progress=progress,
            node=self.node,
            ballot_round=round_,
            ballot_node=node,
        )

    def _compacted(self, watch_id: int, sm: History) -> WatchResponse:
        resp = self._response(watch_id, sm.revision, canceled=True)
        return msgspec.structs.replace(
            resp, compact_revision=sm.compact_revision, reason=REASON_COMPACTED
        )

    def _send(self, conn_id: int, responses: list[WatchResponse]) -> bool:
        if self.sink.send(conn_id, responses):
            self._counters.responses_sent += len(responses)
            return True
        self.drop_connection(conn_id)
        return False

    # ------------------------------------------------------------------ bookkeeping

    def _cancel_compacted(self, sm: History) -> None:
        """Cancel every watcher whose cursor fell below the compaction revision (after a
        compaction, or a snapshot install that replaced the state machine)."""
        compact = sm.compact_revision
        for w in [w for w in self._watchers.values() if self._cursor(w) < compact]:
            self._cancel_one(w, sm)

    def _cancel_one(self, w: _Watcher, sm: History) -> None:
        self._remove(w)
        self._counters.canceled_compacted += 1
        self._send(w.conn_id, [self._compacted(w.watch_id, sm)])

    def _cursor(self, w: _Watcher) -> int:
        """The first revision ``w`` still needs. A synced watcher's own ``next_rev`` is moved
        only by what it is sent (moving every cursor per batch would cost O(watchers)), so
        for it the synced batch's position counts too."""
        if w.synced and self.synced_rev is not None:
            return max(w.next_rev, self.synced_rev + 1)
        return w.next_rev

    def _join_synced(self, w: _Watcher) -> None:
        assert not w.synced
        w.synced = True
        self._synced_count += 1
        index = self._prefixes if w.prefix else self._exact
        index.setdefault(w.key, set()).add(w)
        if w.progress_notify:
            self._progress.add(w)

    def _leave_synced(self, w: _Watcher) -> None:
        assert w.synced
        w.synced = False
        self._synced_count -= 1
        index = self._prefixes if w.prefix else self._exact
        group = index[w.key]
        group.discard(w)
        if not group:
            del index[w.key]

    def _fall_behind(self, w: _Watcher) -> None:
        if w.synced:
            w.next_rev = self._cursor(w)
            self._leave_synced(w)
            self._catching_up.append(w)

    def _remove(self, w: _Watcher) -> None:
        if self._watchers.pop((w.conn_id, w.watch_id), None) is None:
            return
        conn = self._per_conn.get(w.conn_id)
        if conn is not None:
            conn.pop(w.watch_id, None)
            if not conn:
                del self._per_conn[w.conn_id]
        if w.synced:
            self._leave_synced(w)
        self._progress.discard(w)


__all__ = [
    "FrameEncoder",
    "REASON_CANCELED",
    "REASON_COMPACTED",
    "History",
    "WatchHub",
    "WatchLimits",
    "WatchSink",
    "WatchStats",
    "check_create",
]
