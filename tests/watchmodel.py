"""A small history with etcd's revision rules, a sink with a bounded queue, and the checker
of a watch stream: what the watch hub tests (and the cluster tests' checker) share.

``FakeStore`` follows the shared design's data model so the hub can be tested without the
state machine: one revision per change, whole revisions from ``events_since``, compaction.
``check_stream`` is the statement of the four guarantees as code: the events a watch
delivered are exactly the history's projection on its key or prefix from its start, in
revision order, each once, never splitting a revision across responses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from paxosd.net.framing import WatchResponse
from paxosd.statemachine.commands import Event, KeyValue


class FakeStore:
    """Keys with create/mod revision and version, and every change as an Event."""

    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = 0
        self.kv: dict[str, KeyValue] = {}
        self.history: list[Event] = []
        # Every change ever, compaction or not: what a watch that was not canceled owes.
        self.all_history: list[Event] = []

    def put(self, key: str, value: bytes) -> int:
        return self.txn([(key, value)])

    def delete(self, key: str) -> int:
        return self.txn([(key, None)])

    def txn(self, changes: Sequence[tuple[str, bytes | None]]) -> int:
        """Apply puts (bytes) and deletes (None) at one revision; the revision (unchanged
        when nothing changed, as a delete of an absent key)."""
        rev = self.revision + 1
        events: list[Event] = []
        for key, value in changes:
            prev = self.kv.get(key)
            if value is None:
                if prev is None:
                    continue
                del self.kv[key]
                events.append(Event("DELETE", KeyValue(key, b"", 0, rev, 0), prev))
            else:
                kv = KeyValue(
                    key,
                    value,
                    prev.create_revision if prev else rev,
                    rev,
                    prev.version + 1 if prev else 1,
                )
                self.kv[key] = kv
                events.append(Event("PUT", kv, prev))
        if events:
            self.revision = rev
            self.history.extend(events)
            self.all_history.extend(events)
        return self.revision

    def compact(self, revision: int) -> None:
        assert self.compact_revision < revision <= self.revision
        self.compact_revision = revision
        self.history = [e for e in self.history if e.kv.mod_revision >= revision]

    def events_since(self, revision: int, limit: int) -> list[Event]:
        assert revision >= self.compact_revision, (revision, self.compact_revision)
        out: list[Event] = []
        for ev in self.history:
            if ev.kv.mod_revision < revision:
                continue
            if len(out) >= limit and ev.kv.mod_revision != out[-1].kv.mod_revision:
                break
            out.append(ev)
        return out


@dataclass
class QueueSink:
    """Responses per connection in a bounded-by-assertion queue the test reads from.

    ``frames_max`` plays the transport's send queue bound: reaching it would drop a frame,
    so it is asserted never to be exceeded. ``gone`` connections refuse sends."""

    frames_max: int = 4096
    # As the daemon's sink: a connection whose queue would pass frames_max is closed (the
    # send fails) instead of the bound being asserted.
    close_when_full: bool = False
    queues: dict[int, deque[WatchResponse]] = field(default_factory=dict)
    read: dict[int, list[WatchResponse]] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)
    high_water: int = 0

    def send(self, conn_id: int, responses: list[WatchResponse]) -> bool:
        if conn_id in self.gone:
            return False
        q = self.queues.setdefault(conn_id, deque())
        if self.close_when_full and len(q) + len(responses) > self.frames_max:
            self.gone.add(conn_id)
            return False
        q.extend(responses)
        self.high_water = max(self.high_water, len(q))
        assert len(q) <= self.frames_max, f"connection {conn_id} queue over {self.frames_max}"
        return True

    def backlog(self, conn_id: int) -> int:
        return len(self.queues.get(conn_id, ()))

    def take(self, conn_id: int | None, n: int | None = None) -> list[WatchResponse]:
        """The client reads ``n`` frames (all when None); every connection's when
        ``conn_id`` is None."""
        if conn_id is None:
            return [r for c in list(self.queues) for r in self.take(c, n)]
        q = self.queues.get(conn_id, deque())
        count = len(q) if n is None else min(n, len(q))
        got = [q.popleft() for _ in range(count)]
        self.read.setdefault(conn_id, []).extend(got)
        return got

    def responses(self, conn_id: int, watch_id: int) -> list[WatchResponse]:
        """Every response read so far for one watch."""
        self.take(conn_id)
        return [r for r in self.read.get(conn_id, []) if r.watch_id == watch_id]


def projection(
    history: Iterable[Event],
    key: str,
    *,
    prefix: bool = False,
    start: int = 0,
    filters: Sequence[str] = (),
    prev_kv: bool = False,
) -> list[Event]:
    """What a watch on ``key`` from ``start`` must deliver, in order."""
    out = []
    for ev in history:
        k = ev.kv.key
        if ev.kv.mod_revision < start or ev.type in filters:
            continue
        if k.startswith(key) if prefix else k == key:
            out.append(ev if prev_kv else Event(ev.type, ev.kv, None))
    return out


def delivered(responses: Sequence[WatchResponse]) -> list[Event]:
    """The events of a watch's responses, checking order and whole revisions on the way:
    revisions never go down, and a revision never continues in a later response."""
    out: list[Event] = []
    last_rev = 0
    last_progress = 0
    for r in responses:
        if r.progress:
            assert not r.events
            assert r.revision >= last_progress, "a progress revision went back"
            last_progress = r.revision
        for i, ev in enumerate(r.events):
            rev = ev.kv.mod_revision
            if i == 0:
                assert rev > last_rev, f"revision {rev} after {last_rev}: repeat or disorder"
            else:
                assert rev >= last_rev, f"revision {rev} after {last_rev} in one response"
            last_rev = rev
            out.append(ev)
    return out


def check_stream(
    responses: Sequence[WatchResponse],
    history: Sequence[Event],
    key: str,
    *,
    prefix: bool = False,
    start: int = 0,
    filters: Sequence[str] = (),
    prev_kv: bool = False,
) -> list[Event]:
    """Assert the watch's stream is exactly the projection of ``history`` (ordered, unique,
    complete), and that every progress revision came after every event up to it."""
    got = delivered(responses)
    want = projection(history, key, prefix=prefix, start=start, filters=filters, prev_kv=prev_kv)
    assert [_id(e) for e in got] == [_id(e) for e in want[: len(got)]], "stream differs"
    assert len(got) == len(want), f"{len(want) - len(got)} events missing of {len(want)}"
    assert got == want, "an event differs from the history (prev_kv or content)"
    seen = 0
    for r in responses:
        seen += len(r.events)
        if r.progress:
            owed = [e for e in want if e.kv.mod_revision <= r.revision]
            assert len(owed) <= seen, f"progress {r.revision} sent before events up to it"
    return got


def _id(ev: Event) -> tuple[int, str, str]:
    return (ev.kv.mod_revision, ev.kv.key, ev.type)
