"""The watch hub on its own: the four guarantees against a replayed history, slow watchers,
compaction, progress, filters, prev_kv, bad requests and fan-out to many watchers.

The hub is sans-I/O, so every test drives it directly: writes go to a ``FakeStore`` (the
shared design's revision rules), ``pump`` runs as the daemon's loop would after each apply,
and a ``QueueSink`` stands for the connections (its queue bound is the transport's, asserted).
``check_stream`` (tests/watchmodel.py) compares each stream with the history's projection.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxosd.net.framing import WatchCreate, WatchResponse
from paxosd.server.watch import (
    REASON_CANCELED,
    REASON_COMPACTED,
    WatchHub,
    WatchLimits,
    _Shared,
    _Watcher,
)
from paxosd.statemachine.commands import (
    Command,
    Compact,
    Delete,
    Event,
    Op,
    Put,
    Txn,
    encode_command,
)
from paxosd.statemachine.machine import StateMachine
from tests.watchmodel import FakeStore, QueueSink, check_stream, delivered

HEADER = (3, 1)


def hub_with(
    limits: WatchLimits | None = None, hub_class: type[WatchHub] = WatchHub
) -> tuple[WatchHub, QueueSink, FakeStore]:
    sink = QueueSink()
    return hub_class(sink, node=1, limits=limits), sink, FakeStore()


def random_writes(store: FakeStore, rng: random.Random, n: int, keys: list[str]) -> None:
    for _ in range(n):
        roll = rng.random()
        if roll < 0.15:
            store.delete(rng.choice(keys))
        elif roll < 0.3:
            store.txn([(k, b"t%d" % rng.randrange(100)) for k in rng.sample(keys, 3)])
        else:
            store.put(rng.choice(keys), b"v%d" % rng.randrange(1000))


KEYS = ["a", "ab", "abc", "b", "b/1", "b/2", "c"]

# ------------------------------------------------------------------ the guarantees


@pytest.mark.parametrize("seed", range(5))
def test_every_watch_gets_exactly_the_projection_of_the_history(seed: int) -> None:
    rng = random.Random(seed)
    hub, sink, store = hub_with(WatchLimits(synced_events_per_pump=7, catchup_events_per_pump=5))
    random_writes(store, rng, 20, KEYS)
    watches = [
        (1, WatchCreate(1, "a")),
        (1, WatchCreate(2, "a", prefix=True)),
        (2, WatchCreate(1, "", prefix=True, start_revision=1)),
        (2, WatchCreate(2, "b/", prefix=True, start_revision=5, prev_kv=True)),
        (3, WatchCreate(7, "c", start_revision=store.revision + 3)),  # a future revision
    ]
    for conn, req in watches:
        hub.create(conn, req, store, HEADER)
        random_writes(store, rng, rng.randrange(5), KEYS)
        hub.pump(store, 0, HEADER)
    for turn in range(60):
        random_writes(store, rng, rng.randrange(4), KEYS)
        hub.pump(store, turn, HEADER)
    for _ in range(1000):  # the clients read; let every bounded pump finish
        for conn in (1, 2, 3):
            sink.take(conn)
        if hub.stats().catching_up == 0 and hub.synced_rev == store.revision:
            break
        hub.pump(store, 100, HEADER)
    created = {}
    for conn, req in watches:
        responses = sink.responses(conn, req.watch_id)
        assert responses[0].created and not responses[0].canceled
        created[(conn, req.watch_id)] = responses[0].revision
        start = req.start_revision or responses[0].revision + 1
        check_stream(
            responses[1:],
            store.history,
            req.key,
            prefix=req.prefix,
            start=start,
            prev_kv=req.prev_kv,
        )
    assert hub.stats().catching_up == 0


class SkipsOneEvent(WatchHub):
    """A planted bug: the hub loses the third event it would deliver to a watcher."""

    def select(self, w: _Watcher, events: Iterable[Event], shared: _Shared) -> list[Event]:
        out = super().select(w, events, shared)
        if out:
            seen = getattr(self, "_seen", 0)
            self._seen = seen + len(out)
            if seen <= 2 < seen + len(out):
                del out[2 - seen]
        return out


def test_the_completeness_check_catches_a_hub_that_skips_one_event() -> None:
    hub, sink, store = hub_with(hub_class=SkipsOneEvent)
    hub.create(1, WatchCreate(1, "k"), store, HEADER)
    for i in range(6):
        store.put("k", b"%d" % i)
        hub.pump(store, i, HEADER)
    with pytest.raises(AssertionError, match="stream differs|missing"):
        check_stream(sink.responses(1, 1)[1:], store.history, "k", start=2)


def test_one_response_never_splits_a_revision() -> None:
    hub, sink, store = hub_with(WatchLimits(events_per_response_max=2))
    hub.create(1, WatchCreate(1, "", prefix=True), store, HEADER)
    store.txn([(k, b"x") for k in ("a", "b", "c", "d", "e")])
    store.put("a", b"y")
    store.put("b", b"y")
    store.put("c", b"y")
    hub.pump(store, 0, HEADER)
    responses = sink.responses(1, 1)[1:]
    assert [len(r.events) for r in responses] == [5, 2, 1]
    check_stream(responses, store.history, "", prefix=True, start=2)


def test_a_watch_from_an_old_revision_catches_up_then_follows_live_writes() -> None:
    hub, sink, store = hub_with(WatchLimits(catchup_events_per_pump=3))
    for i in range(30):
        store.put(f"k{i % 3}", b"%d" % i)
    hub.pump(store, 0, HEADER)
    hub.create(1, WatchCreate(1, "k1", start_revision=2), store, HEADER)
    assert hub.stats().catching_up == 1
    for i in range(30, 40):
        store.put(f"k{i % 3}", b"%d" % i)
        hub.pump(store, i, HEADER)
    for turn in range(100):
        if hub.stats().catching_up == 0:
            break
        hub.pump(store, 100 + turn, HEADER)
    assert hub.stats().catching_up == 0
    check_stream(sink.responses(1, 1)[1:], store.history, "k1", start=2)


# ------------------------------------------------------------------ slow watchers


def test_a_slow_watcher_is_held_within_the_bound_then_caught_up_from_history() -> None:
    limits = WatchLimits(backlog_frames_max=20, backlog_resume_frames=5, frames_per_send_max=4)
    hub, sink, store = hub_with(limits)
    sink.frames_max = limits.queue_frames_max  # the hub must never need more than this
    hub.create(1, WatchCreate(1, "k"), store, HEADER)  # the slow reader
    hub.create(2, WatchCreate(1, "k"), store, HEADER)  # a fast one on the same key
    for i in range(200):
        store.put("k", b"%d" % i)
        hub.pump(store, i, HEADER)
        sink.take(2)
    assert sink.backlog(1) <= limits.queue_frames_max
    stats = hub.stats()
    assert stats.catching_up == 1 and stats.slow_events >= 1
    # The fast watcher was never held back by the slow one.
    check_stream(sink.responses(2, 1)[1:], store.history, "k", start=2)
    for turn in range(500):
        sink.take(1, 7)
        hub.pump(store, 1000 + turn, HEADER)
        if hub.stats().catching_up == 0 and not sink.backlog(1):
            break
    assert hub.stats().catching_up == 0
    check_stream(sink.responses(1, 1)[1:], store.history, "k", start=2)
    assert sink.high_water <= limits.queue_frames_max


def test_many_slow_readers_together_are_held_within_the_node_bound_then_caught_up() -> None:
    limits = WatchLimits(
        backlog_frames_max=20,
        backlog_resume_frames=5,
        frames_per_send_max=2,
        node_backlog_frames_max=50,
        events_per_response_max=1,
    )
    hub, sink, store = hub_with(limits)
    conns = range(1, 11)
    for conn in conns:
        hub.create(conn, WatchCreate(1, "k"), store, HEADER)
    sink.take(None)  # the created answers
    high = 0
    for i in range(100):
        store.put("k", b"%d" % i)
        hub.pump(store, i, HEADER)
        high = max(high, sum(sink.backlog(c) for c in conns))
    # Ten connections of 20 frames each would be 200: the node's bound holds them to 50.
    assert high <= limits.node_backlog_frames_max + limits.frames_per_send_max
    assert hub.stats().catching_up == 10
    for turn in range(1000):
        for conn in conns:
            sink.take(conn, 3)
        hub.pump(store, 1000 + turn, HEADER)
        if hub.stats().catching_up == 0 and not any(sink.backlog(c) for c in conns):
            break
    for conn in conns:
        check_stream(sink.responses(conn, 1)[1:], store.history, "k", start=2)


def test_a_catching_up_watcher_overtaken_by_compaction_is_canceled_with_its_revision() -> None:
    limits = WatchLimits(backlog_frames_max=4, backlog_resume_frames=1, frames_per_send_max=1)
    hub, sink, store = hub_with(limits)
    hub.create(1, WatchCreate(1, "k"), store, HEADER)
    for i in range(20):
        store.put("k", b"%d" % i)
        hub.pump(store, i, HEADER)
    assert hub.stats().catching_up == 1
    store.compact(15)
    hub.pump(store, 50, HEADER)
    responses = sink.responses(1, 1)
    last = responses[-1]
    assert last.canceled and last.compact_revision == 15 and last.reason == REASON_COMPACTED
    got = delivered(responses[1:-1])
    assert [e.kv.mod_revision for e in got] == list(range(2, 2 + len(got)))
    stats = hub.stats()
    assert (stats.watchers, stats.catching_up, stats.canceled_compacted) == (0, 0, 1)
    assert stats.events_sent == len(got)


def test_a_watch_from_a_compacted_revision_is_created_then_canceled() -> None:
    hub, sink, store = hub_with()
    for i in range(10):
        store.put("k", b"%d" % i)
    store.compact(6)
    hub.create(1, WatchCreate(1, "k", start_revision=3), store, HEADER)
    created, canceled = sink.responses(1, 1)
    assert created.created and not created.canceled
    assert canceled.canceled and canceled.compact_revision == 6
    # From the compaction revision itself it is served.
    hub.create(1, WatchCreate(2, "k", start_revision=6), store, HEADER)
    hub.pump(store, 0, HEADER)
    check_stream(sink.responses(1, 2)[1:], store.history, "k", start=6)


def test_a_snapshot_install_cancels_only_the_watchers_it_left_behind() -> None:
    hub, sink, store = hub_with(WatchLimits(backlog_frames_max=2, backlog_resume_frames=0))
    hub.create(1, WatchCreate(1, "k"), store, HEADER)  # will be behind
    hub.create(2, WatchCreate(1, "k"), store, HEADER)  # reads everything
    for i in range(10):
        store.put("k", b"%d" % i)
        hub.pump(store, i, HEADER)
        sink.take(2)
    # A snapshot install replaces the state machine: same history from 8 on.
    newer = FakeStore()
    newer.revision, newer.kv = store.revision, dict(store.kv)
    newer.history = [e for e in store.history if e.kv.mod_revision >= 8]
    newer.compact_revision = 8
    hub.pump(newer, 20, HEADER)
    assert sink.responses(1, 1)[-1].compact_revision == 8
    newer.put("k", b"after")
    hub.pump(newer, 21, HEADER)
    check_stream(sink.responses(2, 1)[1:], store.history + newer.history[-1:], "k", start=2)


# ------------------------------------------------------------------ progress


def test_progress_goes_only_to_caught_up_watchers_and_never_ahead_of_their_events() -> None:
    limits = WatchLimits(progress_interval_ms=100, backlog_frames_max=3, backlog_resume_frames=0)
    hub, sink, store = hub_with(limits)
    hub.create(1, WatchCreate(1, "k", progress_notify=True), store, HEADER)  # slow
    hub.create(2, WatchCreate(1, "k", progress_notify=True), store, HEADER)  # reads
    hub.create(2, WatchCreate(2, "quiet", progress_notify=True), store, HEADER)
    now = 0
    for i in range(40):
        store.put("k", b"%d" % i)
        now += 30
        hub.pump(store, now, HEADER)
        sink.take(2)
    slow = [r for r in sink.queues[1] if r.progress]
    assert not slow, "a catching-up watcher got a progress notification"
    quiet = [r for r in sink.responses(2, 2) if r.progress]
    assert quiet and all(r.revision <= store.revision for r in quiet)
    for _ in range(100):
        sink.take(1)
        now += 30
        hub.pump(store, now, HEADER)
    for conn in (1, 2):
        check_stream(sink.responses(conn, 1)[1:], store.history, "k", start=2)
    assert any(r.progress for r in sink.responses(1, 1))


def test_a_busy_watcher_gets_no_progress_and_a_quiet_one_waits_a_whole_interval() -> None:
    hub, sink, store = hub_with(WatchLimits(progress_interval_ms=1000))
    hub.pump(store, 5000, HEADER)
    hub.create(1, WatchCreate(1, "k", progress_notify=True), store, HEADER)
    hub.pump(store, 5900, HEADER)
    assert len(sink.responses(1, 1)) == 1  # created only: not a whole interval yet
    hub.pump(store, 6000, HEADER)
    progress = sink.responses(1, 1)[-1]
    assert progress.progress and progress.revision == store.revision and not progress.events
    store.put("k", b"1")
    hub.pump(store, 6500, HEADER)
    hub.pump(store, 7400, HEADER)
    assert not sink.responses(1, 1)[-1].progress  # the event was the news


# ------------------------------------------------------------------ what is sent


def test_filters_leave_out_the_event_types_asked_for() -> None:
    hub, sink, store = hub_with()
    hub.create(1, WatchCreate(1, "k", filters=("DELETE",)), store, HEADER)
    hub.create(1, WatchCreate(2, "k", filters=("PUT",)), store, HEADER)
    store.put("k", b"1")
    store.delete("k")
    store.put("k", b"2")
    hub.pump(store, 0, HEADER)
    assert [e.type for e in delivered(sink.responses(1, 1)[1:])] == ["PUT", "PUT"]
    assert [e.type for e in delivered(sink.responses(1, 2)[1:])] == ["DELETE"]
    check_stream(sink.responses(1, 1)[1:], store.history, "k", start=2, filters=("DELETE",))


def test_prev_kv_is_sent_only_to_watchers_that_asked() -> None:
    hub, sink, store = hub_with()
    hub.create(1, WatchCreate(1, "k", prev_kv=True), store, HEADER)
    hub.create(1, WatchCreate(2, "k"), store, HEADER)
    store.put("k", b"1")
    store.put("k", b"2")
    hub.pump(store, 0, HEADER)
    with_prev = delivered(sink.responses(1, 1)[1:])
    assert with_prev[0].prev_kv is None and with_prev[1].prev_kv is not None
    assert with_prev[1].prev_kv.value == b"1"
    assert all(e.prev_kv is None for e in delivered(sink.responses(1, 2)[1:]))


def test_many_watchers_on_one_prefix_share_each_event() -> None:
    hub, sink, store = hub_with()
    for conn in range(1, 201):
        hub.create(conn, WatchCreate(1, "p/", prefix=True), store, HEADER)
    hub.create(999, WatchCreate(1, "other/", prefix=True), store, HEADER)
    for i in range(10):
        store.put(f"p/{i}", b"%d" % i)
        store.put(f"q/{i}", b"%d" % i)
    hub.pump(store, 0, HEADER)
    streams = [delivered(sink.responses(conn, 1)[1:]) for conn in range(1, 201)]
    check_stream(sink.responses(1, 1)[1:], store.history, "p/", prefix=True, start=2)
    for s in streams[1:]:
        # The same event objects, not a copy per watcher.
        assert all(a is b for a, b in zip(s, streams[0], strict=True))
    assert sink.responses(999, 1)[1:] == []


def test_a_revision_too_large_for_a_frame_cancels_the_watch_with_a_reason() -> None:
    limits = WatchLimits(response_bytes_max=1000, frame_bytes_max=4000)
    hub, sink, store = hub_with(limits)
    hub.create(1, WatchCreate(1, "", prefix=True), store, HEADER)
    store.put("small", b"x")
    store.txn([(f"big{i}", b"y" * 900) for i in range(6)])
    hub.pump(store, 0, HEADER)
    responses = sink.responses(1, 1)
    assert len(delivered(responses[1:-1])) == 1
    assert responses[-1].canceled and "too large" in responses[-1].reason
    assert hub.stats().watchers == 0


# ------------------------------------------------------------------ requests


def test_cancel_answers_canceled_and_stops_events() -> None:
    hub, sink, store = hub_with()
    hub.create(1, WatchCreate(1, "k"), store, HEADER)
    store.put("k", b"1")
    hub.pump(store, 0, HEADER)
    hub.cancel(1, 1)
    store.put("k", b"2")
    hub.pump(store, 1, HEADER)
    responses = sink.responses(1, 1)
    assert responses[-1].canceled and responses[-1].reason == REASON_CANCELED
    assert len(delivered(responses)) == 1
    assert hub.stats().watchers == 0


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (WatchCreate(5, ""), "empty"),
        (WatchCreate(5, "k", filters=("PUTS",)), "unknown event filter"),
        (WatchCreate(5, "k" * 2000), "over 1024"),
        (WatchCreate(5, "k", start_revision=-1), "negative"),
        (WatchCreate(1, "k"), "already in use"),
    ],
)
def test_a_bad_request_gets_a_canceled_answer_and_the_connection_keeps_working(
    req: WatchCreate, reason: str
) -> None:
    hub, sink, store = hub_with()
    hub.create(1, WatchCreate(1, "k"), store, HEADER)
    hub.create(1, req, store, HEADER)
    refused = sink.responses(1, 5 if req.watch_id == 5 else 1)[-1]
    assert refused.canceled and reason in refused.reason
    store.put("k", b"1")
    hub.pump(store, 0, HEADER)
    assert len(delivered(sink.responses(1, 1))) == 1


def test_watchers_are_bounded_per_connection_and_per_node() -> None:
    hub, sink, store = hub_with(WatchLimits(watchers_per_connection_max=2, watchers_per_node_max=3))
    for wid in (1, 2, 3):
        hub.create(1, WatchCreate(wid, "k"), store, HEADER)
    assert "too many watchers on this connection" in sink.responses(1, 3)[-1].reason
    hub.create(2, WatchCreate(1, "k"), store, HEADER)
    hub.create(2, WatchCreate(2, "k"), store, HEADER)
    assert "too many watchers on this node" in sink.responses(2, 2)[-1].reason
    assert hub.stats().watchers == 3


def test_a_connection_that_is_gone_loses_its_watchers() -> None:
    hub, sink, store = hub_with()
    hub.create(1, WatchCreate(1, "k"), store, HEADER)
    hub.create(1, WatchCreate(2, "k"), store, HEADER)
    hub.create(2, WatchCreate(1, "k"), store, HEADER)
    sink.gone.add(1)
    store.put("k", b"1")
    hub.pump(store, 0, HEADER)
    assert hub.stats().watchers == 1
    hub.drop_connection(2)
    assert hub.stats().watchers == 0


def test_responses_carry_the_node_and_ballot_header() -> None:
    hub, sink, store = hub_with()
    hub.create(1, WatchCreate(1, "k"), store, (7, 2))
    store.put("k", b"1")
    hub.pump(store, 0, (8, 3))
    created, events = sink.responses(1, 1)
    assert (created.node, created.ballot_round, created.ballot_node) == (1, 7, 2)
    assert (events.node, events.ballot_round, events.ballot_node) == (1, 8, 3)
    assert isinstance(events, WatchResponse) and events.revision == store.revision


# ------------------------------------------------------------------ fuzz

watch_creates = st.builds(
    WatchCreate,
    st.integers(0, 5),
    st.sampled_from(["", "k", "k/", "\ud800", "x" * 1025]) | st.text(max_size=6),
    prefix=st.booleans(),
    start_revision=st.integers(-3, 40),
    prev_kv=st.booleans(),
    progress_notify=st.booleans(),
    filters=st.lists(st.sampled_from(["PUT", "DELETE", "put", ""]), max_size=2).map(tuple),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(1, 3), watch_creates),
        st.tuples(st.just("cancel"), st.integers(1, 3), st.integers(0, 5)),
        st.tuples(st.just("drop"), st.integers(1, 3), st.none()),
        st.tuples(st.just("write"), st.integers(0, 4), st.none()),
        st.tuples(st.just("compact"), st.integers(0, 3), st.none()),
        st.tuples(st.just("read"), st.integers(1, 3), st.integers(0, 30)),
        st.tuples(st.just("pump"), st.integers(0, 20_000), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_any_sequence_of_requests_keeps_every_stream_ordered_and_unique(
    ops: list[tuple[str, int, object]],
) -> None:
    """Whatever clients send (bad keys, reused ids, cancels of unknown watches, closed
    connections) and whatever the store does, the hub never raises, answers every create
    exactly once with created, and every stream stays ordered and unique."""
    limits = WatchLimits(
        backlog_frames_max=4,
        backlog_resume_frames=1,
        frames_per_send_max=2,
        watchers_per_connection_max=3,
        watchers_per_node_max=5,
        progress_interval_ms=1000,
        events_per_response_max=2,
    )
    hub, sink, store = hub_with(limits)
    # Creates and cancels are answered at once, so a client flooding them without reading
    # passes the bound: then, as in the daemon, its connection is closed.
    sink.frames_max = limits.queue_frames_max + 2
    sink.close_when_full = True
    now = 0
    creates: dict[tuple[int, int], int] = {}
    requests: dict[tuple[int, int], WatchCreate] = {}
    for op, n, arg in ops:
        if op == "create":
            assert isinstance(arg, WatchCreate)
            before = hub._watchers.get((n, arg.watch_id))
            hub.create(n, arg, store, HEADER)
            creates[(n, arg.watch_id)] = creates.get((n, arg.watch_id), 0) + 1
            if hub._watchers.get((n, arg.watch_id)) not in (None, before):
                requests[(n, arg.watch_id)] = arg  # a watch was made (not refused)
        elif op == "cancel":
            assert isinstance(arg, int)
            hub.cancel(n, arg)
        elif op == "drop":
            hub.drop_connection(n)
            sink.take(n)
        elif op == "write":
            for i in range(n):
                store.put(f"k/{i}", b"%d" % i) if i % 3 else store.delete("k/1")
        elif op == "compact" and store.revision > store.compact_revision + n:
            store.compact(store.revision - n)
        elif op == "read":
            assert isinstance(arg, int)
            sink.take(n, arg)
        elif op == "pump":
            now += n
            hub.pump(store, now, HEADER)
    for conn in (1, 2, 3):
        sink.take(conn)
        for wid in range(6):
            responses = [r for r in sink.read.get(conn, []) if r.watch_id == wid]
            assert sum(1 for r in responses if r.created) <= creates.get((conn, wid), 0)
            # Each created answer starts a stream (an id may be used again after a cancel).
            stream: list[WatchResponse] = []
            for r in [*responses, None]:
                if r is None or r.created:
                    delivered(stream)
                    stream = []
                else:
                    stream.append(r)
    # Complete: once every reader has read and the hub has caught up, each watch still open
    # has been sent exactly the projection of the history from its start.
    for _ in range(1000):
        for conn in (1, 2, 3):
            sink.take(conn)
        now += 1
        hub.pump(store, now, HEADER)
        if hub.stats().catching_up == 0 and hub.synced_rev in (None, store.revision):
            break
    for (conn, wid), w in hub._watchers.items():
        sink.take(conn)
        responses = [r for r in sink.read.get(conn, []) if r.watch_id == wid]
        last = max(i for i, r in enumerate(responses) if r.created and not r.canceled)
        created, stream = responses[last], responses[last + 1 :]
        req = requests[(conn, wid)]
        start = req.start_revision or created.revision + 1
        check_stream(
            stream,
            store.all_history,
            req.key,
            prefix=req.prefix,
            start=start,
            filters=req.filters,
            prev_kv=req.prev_kv,
        )
        assert w.synced


# ------------------------------------------------------------------ the real state machine


class Applier:
    """Commands applied to the real StateMachine, one slot each, as the log would."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.slot = 0

    def do(self, op: Op) -> None:
        self.slot += 1
        cmd = Command(client_id="t", seq=self.slot, site="s", op=op)
        self.sm.apply(self.slot, (encode_command(cmd),))


def test_the_real_state_machine_history_with_txns_and_prefix_deletes_is_delivered() -> None:
    rng = random.Random(7)
    sink = QueueSink()
    hub = WatchHub(sink, node=1, limits=WatchLimits(synced_events_per_pump=5))
    a = Applier()
    specs = [
        (1, WatchCreate(1, "", prefix=True, prev_kv=True)),
        (1, WatchCreate(2, "d/", prefix=True, filters=("PUT",))),
        (2, WatchCreate(1, "d/1")),
    ]
    for conn, req in specs:
        hub.create(conn, req, a.sm, HEADER)
    for turn in range(120):
        roll = rng.random()
        k = f"d/{rng.randrange(4)}"
        if roll < 0.1:
            a.do(Delete(key="d/", prefix=True))
        elif roll < 0.25:
            a.do(Txn(compares=(), success=(Put("d/1", b"t%d" % turn), Put("e", b"%d" % turn))))
        elif roll < 0.35:
            a.do(Delete(key=k))
        else:
            a.do(Put(k, b"v%d" % turn))
        if turn % 3 == 0:
            hub.pump(a.sm, turn, HEADER)
    for turn in range(200):
        hub.pump(a.sm, 1000 + turn, HEADER)
        if hub.synced_rev == a.sm.revision:
            break
    truth = a.sm.events_since(2, 1_000_000)
    assert truth and truth[-1].kv.mod_revision == a.sm.revision
    for conn, req in specs:
        check_stream(
            sink.responses(conn, req.watch_id)[1:],
            truth,
            req.key,
            prefix=req.prefix,
            start=2,
            filters=req.filters,
            prev_kv=req.prev_kv,
        )
    # A watch from the compaction revision after a compaction: the rest of the same history.
    middle = a.sm.revision // 2
    a.do(Compact(revision=middle))
    assert a.sm.compact_revision == middle
    hub.create(3, WatchCreate(1, "", prefix=True, start_revision=middle), a.sm, HEADER)
    hub.create(3, WatchCreate(2, "", prefix=True, start_revision=middle - 1), a.sm, HEADER)
    for turn in range(200):
        hub.pump(a.sm, 2000 + turn, HEADER)
        if hub.stats().catching_up == 0:
            break
    check_stream(sink.responses(3, 1)[1:], truth, "", prefix=True, start=middle)
    assert sink.responses(3, 2)[-1].compact_revision == middle


def test_a_thousand_watchers_that_fell_behind_together_catch_up_together() -> None:
    # 1,000 watchers of one prefix on 10 connections whose readers stall during a burst all
    # fall behind. Once the readers read again, one history read per pump serves a batch of
    # them: they are all caught up within a few dozen pumps. Read per watcher (each pump's
    # budget spent on one watcher's events), the same drain took over a thousand pumps.
    hub, sink, store = hub_with()
    for conn in range(10):
        for watch_id in range(100):
            hub.create(conn, WatchCreate(watch_id, "p/", prefix=True), store, HEADER)
    sink.take(None)  # the created responses
    for i in range(3000):
        store.put(f"p/{i % 50}", b"%d" % i)
        if i % 10 == 9:
            hub.pump(store, i, HEADER)  # nobody reads during the burst
    assert hub.stats().catching_up == 1000
    pumps = 0
    while hub.stats().catching_up:
        assert pumps < 100, f"{hub.stats().catching_up} watchers still behind after 100 pumps"
        sink.take(None)  # the readers keep up from now on
        hub.pump(store, 10_000 + pumps, HEADER)
        pumps += 1
    sink.take(None)
    for conn in (0, 9):
        for watch_id in (0, 99):
            stream = [r for r in sink.read[conn] if r.watch_id == watch_id and not r.created]
            check_stream(stream, store.history, "p/", prefix=True, start=2)
