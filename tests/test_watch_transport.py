"""The watch hub over the real client transport: a reader that stops reading never makes the
transport drop a frame (its queue drops the oldest when full), it is held back and caught up
from history instead; a connection that closes loses its watchers; a client that floods its
own queue is disconnected, loudly, rather than losing frames silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxosd.core.types import NodeId
from paxosd.net.framing import ClientReply, WatchCancel, WatchCreate, WatchResponse, client_codec
from paxosd.net.transport import ClientConnection, ClientServer, TransportLimits
from paxosd.server.daemon import ClientSink
from paxosd.server.watch import FrameEncoder, WatchHub, WatchLimits
from paxosd.statemachine.commands import Event, KeyValue
from tests.waiting import BOUND_S, wait_for
from tests.watchmodel import FakeStore, check_stream

LOOPBACK = ("127.0.0.1", 0)
ints = st.integers(min_value=0, max_value=2**63 - 1)
HEADER = (1, 1)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def server(key: bytes) -> Iterator[ClientServer]:
    s = ClientServer(
        node=NodeId(1),
        listen=LOOPBACK,
        client_key=key,
        limits=TransportLimits(send_queue_frames_max=300),
    )
    s.start()
    yield s
    s.close()


def first_frame(server: ClientServer) -> tuple[int, Any]:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if wait(server.waitables(), 0.2):
            got = server.drain()
            if got:
                return got[0]
    raise AssertionError("no frame arrived")


def test_a_reader_that_stops_is_held_back_without_a_dropped_frame_then_caught_up(
    server: ClientServer, key: bytes
) -> None:
    limits = WatchLimits(backlog_frames_max=100, backlog_resume_frames=20, frames_per_send_max=16)
    assert limits.queue_frames_max < server.limits.send_queue_frames_max
    hub = WatchHub(ClientSink(server), node=1, limits=limits)
    store = FakeStore()
    client = ClientConnection.connect(server.address, client_key=key, client_id=5)
    try:
        client.send(WatchCreate(1, "k", prefix=True))
        conn_id, body = first_frame(server)
        assert isinstance(body, WatchCreate)
        hub.create(conn_id, body, store, HEADER)
        value = os.urandom(32 * 1024)
        high = 0
        # The client reads nothing: the kernel's buffers fill, then the transport's queue.
        for i in range(600):
            store.put(f"k{i % 7}", value + b"%d" % i)
            hub.pump(store, i, HEADER)
            high = max(high, server.backlog(conn_id))
        assert high <= limits.queue_frames_max
        assert hub.stats().catching_up == 1 and hub.stats().slow_events >= 1
        assert server.stats().dropped_queue_full == 0
        # Now it reads; the hub feeds it from history as its queue drains.
        got: list[WatchResponse] = []

        def caught_up() -> bool:
            hub.pump(store, 10_000, HEADER)
            got.extend(b for b in client.recv(50) if isinstance(b, WatchResponse))
            n = sum(len(r.events) for r in got)
            return n == len(store.history) and hub.stats().catching_up == 0

        wait_for("the reader caught up", caught_up)
        check_stream([r for r in got if not r.created], store.history, "k", prefix=True, start=2)
        assert server.stats().dropped_queue_full == 0
    finally:
        client.close()


def test_a_closed_connection_is_reported_and_loses_its_watchers(
    server: ClientServer, key: bytes
) -> None:
    hub = WatchHub(ClientSink(server), node=1)
    store = FakeStore()
    client = ClientConnection.connect(server.address, client_key=key, client_id=6)
    client.send(WatchCreate(1, "k"))
    conn_id, body = first_frame(server)
    assert isinstance(body, WatchCreate)
    hub.create(conn_id, body, store, HEADER)
    assert hub.stats().watchers == 1
    client.close()

    def reported() -> bool:
        server.drain()
        for gone in server.closed_connections():
            hub.drop_connection(gone)
        return hub.stats().watchers == 0

    wait_for("the closed connection is reported", reported)
    assert not server.is_open(conn_id) and server.backlog(conn_id) == 0


def test_the_sink_closes_a_connection_rather_than_let_its_queue_drop_a_frame(
    server: ClientServer, key: bytes
) -> None:
    sink = ClientSink(server)
    client = ClientConnection.connect(server.address, client_key=key, client_id=7)
    try:
        client.send(WatchCreate(1, "k"))
        conn_id, _ = first_frame(server)
        big = WatchResponse(1, reason="x" * 60_000)
        sent = 0
        # Never read: the sink must refuse (and close) before the queue would drop.
        while sent < 10_000 and sink.send(conn_id, [big] * 10):
            sent += 10
        assert sent < 10_000, "the queue never filled"
        assert server.stats().dropped_queue_full == 0
        wait_for("the connection closed", lambda: not server.is_open(conn_id))

        def ended() -> bool:
            try:
                client.recv(50)
            except (EOFError, OSError):
                return True
            return False

        wait_for("the client sees the end", ended)
    finally:
        client.close()


def test_ordinary_replies_close_a_connection_with_watches_rather_than_drop_a_frame(
    server: ClientServer, key: bytes
) -> None:
    hub = WatchHub(ClientSink(server), node=1)
    client = ClientConnection.connect(server.address, client_key=key, client_id=8)
    try:
        client.send(WatchCreate(1, "k"))
        conn_id, body = first_frame(server)
        assert isinstance(body, WatchCreate)
        hub.create(conn_id, body, FakeStore(), HEADER)
        # Replies to its other requests, never read: the queue fills with ordinary frames,
        # no watch frame among them, and must close rather than drop the created response
        # or anything after it.
        big = ClientReply(1, "ok", b"x" * 60_000, None)
        sent = 0
        while sent < 10_000 and server.is_open(conn_id):
            server.reply_many([(conn_id, big)] * 10)
            sent += 10
        assert sent < 10_000, "the queue never filled"
        assert server.stats().dropped_queue_full == 0
        assert not server.is_open(conn_id)
    finally:
        client.close()


def test_a_connection_without_watches_still_drops_its_oldest_reply(
    server: ClientServer, key: bytes
) -> None:
    # The control: the transport's own policy is unchanged for connections without watches
    # (so the test above can tell the two apart).
    client = ClientConnection.connect(server.address, client_key=key, client_id=9)
    try:
        client.send(WatchCancel(1))
        conn_id, _ = first_frame(server)
        big = ClientReply(1, "ok", b"x" * 60_000, None)
        sent = 0
        while sent < 10_000 and server.stats().dropped_queue_full == 0:
            server.reply_many([(conn_id, big)] * 10)
            sent += 10
        assert server.stats().dropped_queue_full > 0 and server.is_open(conn_id)
    finally:
        client.close()


def test_the_sink_keeps_no_encoded_events_after_a_pump(server: ClientServer, key: bytes) -> None:
    sink = ClientSink(server)
    hub = WatchHub(sink, node=1)
    store = FakeStore()
    client = ClientConnection.connect(server.address, client_key=key, client_id=10)
    try:
        client.send(WatchCreate(1, "k", prefix=True))
        conn_id, body = first_frame(server)
        assert isinstance(body, WatchCreate)
        hub.create(conn_id, body, store, HEADER)
        for i in range(20):
            store.put(f"k{i}", os.urandom(256 << 10))
            hub.pump(store, i, HEADER)
            # The frames went to the transport; the sink holds none of their events.
            assert sink.encoder.cached_bytes == 0 and not sink.encoder._cache
        assert hub.stats().events_sent == 20
    finally:
        client.close()


def test_the_frame_cache_is_bounded_by_bytes_without_an_end_of_pump() -> None:
    encoder = FrameEncoder(1, cache_bytes_max=1 << 20)
    for rev in range(2, 40):
        events = (Event("PUT", KeyValue("k", os.urandom(300 << 10), 2, rev, 1)),)
        encoder.frame(WatchResponse(1, events=events, revision=rev))
        assert encoder.cached_bytes <= 1 << 20
    assert 0 < len(encoder._cache) <= 3
    encoder.clear()
    assert encoder.cached_bytes == 0 and not encoder._cache


kvs = st.builds(KeyValue, st.text(max_size=8), st.binary(max_size=16), ints, ints, ints, ints)
responses = st.builds(
    WatchResponse,
    ints,
    events=st.lists(
        st.builds(Event, st.sampled_from(["PUT", "DELETE"]), kvs, st.none() | kvs), max_size=3
    ).map(tuple),
    revision=ints,
    created=st.booleans(),
    canceled=st.booleans(),
    progress=st.booleans(),
    compact_revision=ints,
    reason=st.text(max_size=10),
    node=ints,
    ballot_round=ints,
    ballot_node=ints,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(responses, min_size=1, max_size=5), st.integers(0, 2**31))
def test_the_shared_event_encoding_is_byte_for_byte_the_codecs(
    batch: list[WatchResponse], src: int
) -> None:
    codec = client_codec()
    encoder = FrameEncoder(src, cache_max=2)
    for r in batch + batch:  # the second round hits the cache
        frame = encoder.frame(r)
        assert frame == codec.encode(src, r)
        assert codec.decode(codec.join([frame]))[0].body == r
