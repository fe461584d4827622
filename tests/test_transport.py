"""The encrypted transport on real loopback sockets: delivery, reconnects, bounds, and what
happens to connections that are wrong (bad keys, garbage, pickles, stalls, replays).

No assertion here is about time: waits are bounded only so that a bug fails the test
instead of hanging it.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, wait
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from paxosd.core.messages import Heartbeat, Message, Prepare
from paxosd.core.types import Ballot, NodeId
from paxosd.net.framing import ClientReply, ClientRequest, peer_codec
from paxosd.net.handshake import (
    CLIENT_LABEL,
    PEER_LABEL,
    Established,
    FrameAuthError,
    HandshakeError,
    SecureConnection,
    SecureSession,
    initiate,
)
from paxosd.net.transport import (
    ClientConnection,
    ClientServer,
    PeerStats,
    PeerTransport,
    TransportLimits,
    _SendQueue,
)
from tests import waiting

BOUND_S = 20.0  # liveness bound for every wait below; never an assertion about speed
LOOPBACK = ("127.0.0.1", 0)
FAST = TransportLimits(
    handshake_timeout_ms=5000, reconnect_delay_ms_min=20, reconnect_delay_ms_max=200
)
N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)


@pytest.fixture(autouse=True)
def _plain_structlog() -> Iterator[None]:
    # Another test may have configured structlog (e.g. JSON to journald); capture_logs
    # needs the default lazy loggers.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _no_threads_left_behind() -> Iterator[None]:
    """close() joins every thread the transport started (deadline timers end on their own)."""
    yield
    left = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("paxosd-") and t.name != "paxosd-handshake-deadline"
    ]
    assert not left, f"threads outlived the transport: {left}"


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def closer() -> Iterator[Callable[[Any], Any]]:
    things: list[Any] = []

    def add(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield add
    for thing in reversed(things):
        thing.close()


def make_cluster(
    closer: Callable[[Any], Any],
    key: bytes,
    nodes: tuple[NodeId, ...],
    limits: TransportLimits = FAST,
    extra_peers: dict[NodeId, tuple[str, int]] | None = None,
) -> dict[NodeId, PeerTransport]:
    ts = {
        n: closer(PeerTransport(node=n, listen=LOOPBACK, cluster_key=key, limits=limits))
        for n in nodes
    }
    for n, t in ts.items():
        peers = {m: u.address for m, u in ts.items() if m != n}
        peers.update(extra_peers or {})
        t.start(peers)
    return ts


def until(condition: Callable[[], bool], what: str) -> None:
    waiting.wait_for(what, condition, BOUND_S)


def receive(t: PeerTransport, count: int) -> list[tuple[NodeId, Message]]:
    got: list[tuple[NodeId, Message]] = []
    deadline = time.monotonic() + BOUND_S
    while len(got) < count:
        assert time.monotonic() < deadline, f"received only {got}"
        if wait(t.waitables(), 0.2):
            got += t.drain()
    return got


def quiet(t: PeerTransport, window_s: float = 0.3) -> list[tuple[NodeId, Message]]:
    """Whatever arrives within ``window_s`` (used to show that nothing does)."""
    got: list[tuple[NodeId, Message]] = []
    deadline = time.monotonic() + window_s
    while (left := deadline - time.monotonic()) > 0:
        if wait(t.waitables(), left):
            got += t.drain()
    return got


def prepare(n: int) -> Prepare:
    return Prepare(Ballot(7, 1), n)


def roundtrip_ok(a: PeerTransport, b: PeerTransport, tag: int) -> None:
    """``a`` and ``b`` can still talk both ways (retrying while a connection comes up)."""
    for src, dst in ((a, b), (b, a)):
        msg = Heartbeat(Ballot(tag, src.node), tag, tag)
        deadline = time.monotonic() + BOUND_S
        while True:
            assert time.monotonic() < deadline, "no delivery"
            src.send(NodeId(dst.node), msg)
            got = quiet(dst, 0.2)
            if (NodeId(src.node), msg) in got:
                break


def connect_as(
    address: tuple[str, int],
    key: bytes,
    node: int,
    expect_peer: int | None,
    label: str = PEER_LABEL,
) -> tuple[SecureConnection, Established]:
    """A hand-driven client of the real handshake, for sending frames the transport won't."""
    conn = SecureConnection.from_socket(socket.create_connection(address, timeout=BOUND_S))
    try:
        return conn, initiate(
            conn, authkey=key, label=label, node=node, expect_peer=expect_peer, timeout_ms=5000
        )
    except BaseException:
        conn.close()
        raise


def serve_until_closed(t: PeerTransport, conn: SecureConnection) -> list[tuple[NodeId, Message]]:
    """Play ``t``'s event loop (it is the loop that reads sockets) until ``t`` has closed
    ``conn`` (EOF or reset); returns what it delivered meanwhile."""
    got: list[tuple[NodeId, Message]] = []
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if wait(t.waitables(), 0.05):
            got += t.drain()
        try:
            if conn.poll(0):
                conn.recv_bytes(1 << 20)
        except (EOFError, OSError):
            return got
    raise AssertionError("the server never closed the connection")


def raw_socket(address: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(address, timeout=BOUND_S)
    return s


def read_until_eof(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def events(logs: list[Any], name: str) -> list[Any]:
    return [e for e in logs if e["event"] == name]


class Evil:
    """Unpickling this creates ``path``: proof that nothing unpickled our bytes."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------ delivery


def test_three_endpoints_exchange_core_messages_both_ways(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1, N2, N3))
    for src in ts.values():
        src.send_many([(dst, prepare(100 * src.node + dst)) for dst in ts if dst != src.node])
    for dst, t in ts.items():
        got = sorted(receive(t, 2), key=repr)
        expected = sorted(
            ((NodeId(src), prepare(100 * src + dst)) for src in ts if src != dst), key=repr
        )
        assert got == expected


def test_messages_on_one_connection_arrive_in_order(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1, N2))
    for i in range(300):  # several records: some written directly, some by the writer
        ts[N1].send(N2, prepare(i))
    ts[N1].send_many([(N2, prepare(i)) for i in range(300, 3000)])
    got = receive(ts[N2], 3000)
    assert [m for _, m in got] == [prepare(i) for i in range(3000)]


def test_frames_queued_as_the_connection_comes_up_are_sent_on_it(
    closer: Callable[[Any], Any], key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """send() finds no connection and queues; the connection comes up and flushes the queue
    before the frame is in it. The frame must still go out on that connection, not wait for
    the next send (the test sends nothing more)."""
    n2 = closer(PeerTransport(node=N2, listen=LOOPBACK, cluster_key=key, limits=FAST))
    n1 = closer(PeerTransport(node=N1, listen=LOOPBACK, cluster_key=key, limits=FAST))
    # Node 2 is not started: node 1's handshake cannot finish, so send() finds no connection.
    n1.start({N2: n2.address})
    put = n1._put

    def put_once_connected(peer: Any, frame: bytes) -> None:
        # Between send()'s look at the connection and its queueing: node 2 comes up and the
        # connection is made and flushed (connects counts it after its flush).
        n2.start({N1: n1.address})
        until(lambda: n1.stats()[N2].connects >= 1, "node 1 connected to node 2")
        put(peer, frame)

    monkeypatch.setattr(n1, "_put", put_once_connected)
    assert n1.send(N2, prepare(7))
    monkeypatch.setattr(n1, "_put", put)
    assert [m for _, m in receive(n2, 1)] == [prepare(7)]


def test_a_writer_of_a_closed_connection_leaves_the_wake_up_to_the_new_one() -> None:
    """The send queue is the peer's; the writer of a connection that ended and wakes late
    must not take the kick meant for the new connection's writer, or that writer sleeps
    with a record half-written."""
    queue = _SendQueue(8, PeerStats())
    old_closed, new_closed = threading.Event(), threading.Event()
    old_closed.set()
    queue.kick()  # the new connection's flush left bytes for its writer
    assert not queue.wait(old_closed)
    woke: list[bool] = []
    writer = threading.Thread(target=lambda: woke.append(queue.wait(new_closed)))
    writer.start()
    writer.join(BOUND_S)
    new_closed.set()
    queue.kick()
    writer.join(BOUND_S)
    assert woke[:1] == [True]


def test_a_flooding_peer_does_not_starve_another(closer: Callable[[Any], Any], key: bytes) -> None:
    """Each turn reads a bounded share of each readable connection, so a message from a
    quiet peer is drained long before a flood that arrived with it."""
    limits = TransportLimits(
        read_bytes_per_turn=512,
        inbox_frames_max=16,
        reconnect_delay_ms_min=20,
        reconnect_delay_ms_max=200,
    )
    ts = make_cluster(closer, key, (N1, N2, N3), limits=limits)
    roundtrip_ok(ts[N1], ts[N2], 1)
    roundtrip_ok(ts[N1], ts[N3], 1)
    flood = [prepare(i) for i in range(3000)]
    sent_n2 = ts[N2].stats()[N1].frames_sent
    sent_n3 = ts[N3].stats()[N1].frames_sent
    ts[N2].send_many([(N1, m) for m in flood])
    ts[N3].send(N1, prepare(-1))
    # Both written to their sockets (so readable at N1) before N1 reads anything.
    until(
        lambda: (
            ts[N2].stats()[N1].frames_sent >= sent_n2 + len(flood)
            and ts[N3].stats()[N1].frames_sent >= sent_n3 + 1
        ),
        "the flood and the quiet peer's frame sent",
    )
    got: list[tuple[NodeId, Message]] = []
    deadline = time.monotonic() + BOUND_S
    while len(got) < len(flood) + 1:
        assert time.monotonic() < deadline, f"received only {len(got)}"
        if wait(ts[N1].waitables(), 0.2):
            got += ts[N1].drain(frames_max=8)
    assert [m for src, m in got if src == N2] == flood
    assert got.index((N3, prepare(-1))) < len(flood) // 2


def test_sender_reconnects_after_peer_restarts(closer: Callable[[Any], Any], key: bytes) -> None:
    ts = make_cluster(closer, key, (N1, N2))
    roundtrip_ok(ts[N1], ts[N2], 1)
    address = ts[N2].address
    ts[N2].close()
    until(lambda: not ts[N1].stats()[N2].connected, "node 1 notices node 2 is gone")

    restarted = closer(PeerTransport(node=N2, listen=address, cluster_key=key, limits=FAST))
    restarted.start({N1: ts[N1].address})
    roundtrip_ok(ts[N1], restarted, 2)
    assert ts[N1].stats()[N2].connects >= 2


def test_send_queue_is_bounded_and_keeps_the_newest_frames(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    limits = TransportLimits(
        send_queue_frames_max=8, reconnect_delay_ms_min=20, reconnect_delay_ms_max=100
    )
    placeholder = PeerTransport(node=N2, listen=LOOPBACK, cluster_key=key, limits=limits)
    address = placeholder.address
    placeholder.close()  # node 2 is down: nothing accepts on its port
    a = closer(PeerTransport(node=N1, listen=LOOPBACK, cluster_key=key, limits=limits))
    a.start({N2: address})
    for i in range(20):
        assert a.send(N2, prepare(i))
    assert a.queued(N2) == 8
    assert a.stats()[N2].dropped_queue_full == 12

    b = closer(PeerTransport(node=N2, listen=address, cluster_key=key, limits=limits))
    b.start({N1: a.address})
    got = receive(b, 8)
    assert [m for _, m in got] == [prepare(i) for i in range(12, 20)]


def test_partition_switch_drops_both_directions_until_healed(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1, N2, N3))
    roundtrip_ok(ts[N1], ts[N2], 1)
    roundtrip_ok(ts[N1], ts[N3], 1)
    ts[N1].set_partitioned(N2, True)
    assert not ts[N1].send(N2, prepare(1))
    ts[N2].send(N1, prepare(2))
    ts[N3].send(N1, prepare(3))
    assert receive(ts[N1], 1) == [(N3, prepare(3))]
    assert quiet(ts[N1]) == []
    assert quiet(ts[N2]) == []
    assert ts[N1].stats()[N2].dropped_partitioned >= 2
    ts[N1].set_partitioned(N2, False)
    roundtrip_ok(ts[N1], ts[N2], 3)


def test_client_request_and_reply_round_trip(closer: Callable[[Any], Any], key: bytes) -> None:
    client_key = os.urandom(32)
    server = closer(ClientServer(node=N1, listen=LOOPBACK, client_key=client_key, limits=FAST))
    server.start()
    client = closer(ClientConnection.connect(server.address, client_key=client_key, client_id=42))
    assert client.server_node == N1
    client.send(ClientRequest(1, b"put k v"), ClientRequest(2, b"get k"))
    got: list[tuple[int, Any]] = []
    deadline = time.monotonic() + BOUND_S
    while len(got) < 2 and time.monotonic() < deadline:
        if wait(server.waitables(), 0.2):
            got += server.drain()
    assert [body for _, body in got] == [ClientRequest(1, b"put k v"), ClientRequest(2, b"get k")]
    conn_id = got[0][0]
    assert server.client_id(conn_id) == 42
    assert server.reply(conn_id, ClientReply(1, "ok", b"", None))
    assert client.recv(int(BOUND_S * 1000)) == [ClientReply(1, "ok", b"", None)]


def serve_one_request(server: ClientServer) -> int:
    """The connection id of the first request ``server`` receives."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if wait(server.waitables(), 0.2):
            for conn_id, _ in server.drain():
                return conn_id
    raise AssertionError("no request arrived")


def test_replies_to_one_connection_in_one_call_leave_as_one_record(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    server = closer(ClientServer(node=N1, listen=LOOPBACK, client_key=key, limits=FAST))
    server.start()
    client = closer(ClientConnection.connect(server.address, client_key=key, client_id=7))
    client.send(ClientRequest(1, b"hello"))
    conn_id = serve_one_request(server)
    before = server.stats().records_sent
    replies = [ClientReply(i, "ok", b"r%d" % i, None) for i in range(5)]
    assert server.reply_many([(conn_id, r) for r in replies] + [(conn_id + 99, replies[0])]) == 5
    assert server.stats().records_sent == before + 1
    got: list[Any] = []
    deadline = time.monotonic() + BOUND_S
    while len(got) < 5 and time.monotonic() < deadline:
        got += client.recv(200)
    assert got == replies


def test_replies_beyond_the_socket_buffer_reach_a_slow_reader_whole_and_in_order(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    """The loop hands the kernel what it takes and never waits; the writer thread finishes
    the rest while the client is not reading."""
    server = closer(ClientServer(node=N1, listen=LOOPBACK, client_key=key, limits=FAST))
    server.start()
    client = closer(ClientConnection.connect(server.address, client_key=key, client_id=8))
    client.send(ClientRequest(1, b"hello"))
    conn_id = serve_one_request(server)
    payload = os.urandom(64 * 1024)
    replies = [ClientReply(i, "ok", payload, None) for i in range(200)]  # ~13 MB
    for reply in replies:
        assert server.reply(conn_id, reply)
    got: list[Any] = []
    deadline = time.monotonic() + BOUND_S
    while len(got) < len(replies) and time.monotonic() < deadline:
        got += client.recv(200)
    assert [r.request_id for r in got] == list(range(200))
    assert all(r.result == payload for r in got)


# ------------------------------------------------------------------------------- keys


def test_wrong_authkey_is_refused_with_a_logged_reason(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1,), extra_peers={N2: ("127.0.0.1", 1)})
    with capture_logs() as logs:
        with pytest.raises(AuthenticationError):
            # The stock multiprocessing client speaks the same authkey challenge.
            Client(ts[N1].address, authkey=os.urandom(32))
        with pytest.raises(HandshakeError, match="authkey"):
            connect_as(ts[N1].address, os.urandom(32), N2, N1)
        until(lambda: len(events(logs, "handshake_failed")) >= 2, "two refusals logged")
    reasons = [e["reason"] for e in events(logs, "handshake_failed")]
    assert all("authkey challenge failed" in r for r in reasons), reasons


def test_client_key_cannot_connect_to_the_peer_port_and_peer_key_not_to_the_client_port(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    client_key = os.urandom(32)
    ts = make_cluster(closer, key, (N1,), extra_peers={N2: ("127.0.0.1", 1)})
    server = closer(ClientServer(node=N1, listen=LOOPBACK, client_key=client_key, limits=FAST))
    server.start()
    with pytest.raises(HandshakeError, match="authkey"):
        ClientConnection.connect(ts[N1].address, client_key=client_key, client_id=5)
    with pytest.raises(HandshakeError, match="authkey"):
        connect_as(server.address, key, N2, N1)
    with pytest.raises(HandshakeError, match="authkey"):
        connect_as(ts[N1].address, client_key, N2, N1)
    # The right key on the right port works, so the refusals above were about the keys.
    closer(ClientConnection.connect(server.address, client_key=client_key, client_id=5))
    conn, _ = connect_as(ts[N1].address, key, N2, N1)
    closer(conn)


def test_one_secret_on_both_ports_still_cannot_cross_ports(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1,), extra_peers={N2: ("127.0.0.1", 1)})
    server = closer(ClientServer(node=N1, listen=LOOPBACK, client_key=key, limits=FAST))
    server.start()
    with capture_logs() as logs:
        with pytest.raises(HandshakeError):
            connect_as(server.address, key, N2, N1, label=PEER_LABEL)
        with pytest.raises(HandshakeError):
            ClientConnection.connect(ts[N1].address, client_key=key, client_id=2)
        until(lambda: len(events(logs, "handshake_failed")) >= 2, "two refusals logged")
    reasons = [e["reason"] for e in events(logs, "handshake_failed")]
    assert all("protocol label" in r for r in reasons), reasons
    assert CLIENT_LABEL != PEER_LABEL


def test_handshake_binds_the_claimed_node_id(closer: Callable[[Any], Any], key: bytes) -> None:
    ts = make_cluster(closer, key, (N1, N2))
    with pytest.raises(HandshakeError):
        connect_as(ts[N1].address, key, N1, N1)  # claims to be the node itself
    with pytest.raises(HandshakeError, match="expected node 3"):
        connect_as(ts[N1].address, key, N2, N3)  # the node there is not who we dialled


def test_a_node_not_yet_known_is_heard_and_can_be_added_and_removed(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    """A member added at run time calls before our log told us about it: the cluster key
    admits it receive-only; add_peer gives it a connector, remove_peer forgets it."""
    ts = make_cluster(closer, key, (N1, N2))
    t3 = closer(PeerTransport(node=N3, listen=("127.0.0.1", 0), cluster_key=key))
    t3.start({N1: ts[N1].address})
    t3.send(N1, prepare(3))
    assert receive(ts[N1], 1) == [(N3, prepare(3))]
    assert ts[N1].peers()[N3] is None  # heard, but no address to call back yet
    assert not ts[N1].send(N3, prepare(4)) or quiet(t3) == []
    ts[N1].add_peer(N3, t3.address)
    roundtrip_ok(ts[N1], t3, 5)
    ts[N1].remove_peer(N3)
    assert N3 not in ts[N1].peers()
    assert ts[N1].send(N3, prepare(6)) is False
    assert quiet(t3) == []
    roundtrip_ok(ts[N1], ts[N2], 7)


def test_frame_with_a_foreign_src_closes_that_connection(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1, N2), extra_peers={N3: ("127.0.0.1", 1)})
    conn, est = connect_as(ts[N1].address, key, N3, N1)
    closer(conn)
    codec = peer_codec()
    with capture_logs() as logs:
        forged = codec.join([codec.encode(N2, prepare(1))])  # authenticated as 3, claims 2
        conn.send_bytes(est.session.seal(forged))
        got = serve_until_closed(ts[N1], conn)
    assert got + quiet(ts[N1]) == []
    assert any("claims src 2" in e.get("reason", "") for e in logs)
    roundtrip_ok(ts[N1], ts[N2], 1)


def test_a_decoder_bug_closes_that_connection_and_the_loop_goes_on(
    closer: Callable[[Any], Any], key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = make_cluster(closer, key, (N1, N2), extra_peers={N3: ("127.0.0.1", 1)})
    roundtrip_ok(ts[N1], ts[N2], 1)
    conn, est = connect_as(ts[N1].address, key, N3, N1)
    closer(conn)
    real = ts[N1].codec.decode

    def buggy(data: bytes) -> Any:
        envelopes = real(data)
        if any(e.src == N3 for e in envelopes):
            raise RuntimeError("a decoder bug")
        return envelopes

    monkeypatch.setattr(ts[N1].codec, "decode", buggy)
    codec = peer_codec()
    with capture_logs() as logs:
        conn.send_bytes(est.session.seal(codec.join([codec.encode(N3, prepare(1))])))
        assert serve_until_closed(ts[N1], conn) == []
    assert events(logs, "decoder_bug")
    reasons = [e["reason"] for e in events(logs, "connection_closed")]
    assert any("decoder bug" in r for r in reasons), reasons
    roundtrip_ok(ts[N1], ts[N2], 2)


# -------------------------------------------------------------------------- bad input


def test_random_bytes_close_only_that_connection(closer: Callable[[Any], Any], key: bytes) -> None:
    ts = make_cluster(closer, key, (N1, N2))
    roundtrip_ok(ts[N1], ts[N2], 1)
    with capture_logs() as logs:
        framed = closer(raw_socket(ts[N1].address))
        framed.sendall(struct.pack("!i", 40) + os.urandom(40))  # a well-framed wrong answer
        read_until_eof(framed)
        for _ in range(3):
            garbage = closer(raw_socket(ts[N1].address))
            garbage.sendall(os.urandom(1000))
            read_until_eof(garbage)
        until(lambda: len(events(logs, "handshake_failed")) >= 4, "refusals logged")
    roundtrip_ok(ts[N1], ts[N2], 2)


def test_oversized_length_header_is_refused_before_reading_the_body(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1, N2), extra_peers={N3: ("127.0.0.1", 1)})
    with capture_logs() as logs:
        # During the handshake: a 2 GiB claim where 256 bytes are allowed.
        s = closer(raw_socket(ts[N1].address))
        s.sendall(struct.pack("!i", 0x7FFFFFFF))
        read_until_eof(s)
        # After a correct handshake: the 8-byte length form, far above frame_bytes_max.
        conn, _ = connect_as(ts[N1].address, key, N3, N1)
        closer(conn)
        s2 = socket.socket(fileno=os.dup(conn.fileno()))
        closer(s2)
        s2.sendall(struct.pack("!i", -1) + struct.pack("!Q", 1 << 40))
        assert serve_until_closed(ts[N1], conn) == []
        until(lambda: bool(events(logs, "connection_closed")), "close logged")
    assert any("bad message length" in e["reason"] for e in events(logs, "handshake_failed"))
    assert any("bad message length" in e["reason"] for e in events(logs, "connection_closed"))
    roundtrip_ok(ts[N1], ts[N2], 1)


def test_pickle_payload_after_handshake_runs_nothing_and_closes_only_that_connection(
    closer: Callable[[Any], Any], key: bytes, tmp_path: Path
) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps(Evil(target))
    # The payload is live: unpickling it elsewhere does create a file.
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(Evil(canary))).close()
    assert canary.exists()

    ts = make_cluster(closer, key, (N1, N2), extra_peers={N3: ("127.0.0.1", 1)})
    with capture_logs() as logs:
        sealed_conn, est = connect_as(ts[N1].address, key, N3, N1)
        closer(sealed_conn)
        sealed_conn.send_bytes(est.session.seal(payload))  # authentic, but not a record
        assert serve_until_closed(ts[N1], sealed_conn) == []
        bare_conn, _ = connect_as(ts[N1].address, key, N3, N1)
        closer(bare_conn)
        bare_conn.send_bytes(payload)  # not even sealed
        assert serve_until_closed(ts[N1], bare_conn) == []
        until(lambda: len(events(logs, "connection_closed")) >= 2, "closes logged")
    reasons = [e["reason"] for e in events(logs, "connection_closed")]
    assert any("undecodable record" in r or "not a msgpack array" in r for r in reasons), reasons
    assert any("failed authentication" in r for r in reasons), reasons
    assert not target.exists()
    assert quiet(ts[N1]) == []
    roundtrip_ok(ts[N1], ts[N2], 1)


def test_send_and_recv_that_pickle_are_refused(key: bytes) -> None:
    a, b = socket.socketpair()
    ca, cb = SecureConnection.from_socket(a), SecureConnection.from_socket(b)
    try:
        with pytest.raises(TypeError):
            ca.send(Evil(Path("/nonexistent/x")))
        cb.send_bytes(pickle.dumps(1))
        with pytest.raises(TypeError):
            ca.recv()
    finally:
        ca.close()
        cb.close()


# ----------------------------------------------------------------------- replays, AEAD


def session_pair() -> tuple[SecureSession, SecureSession]:
    k1, k2 = os.urandom(32), os.urandom(32)
    return SecureSession(k1, k2), SecureSession(k2, k1)


@pytest.mark.parametrize("attack", ["tamper", "replay", "reorder", "truncate", "reflect"])
def test_aead_rejects_tampered_replayed_reordered_truncated_and_reflected_frames(
    attack: str,
) -> None:
    a, b = session_pair()
    f0, f1, f2 = (a.seal(f"frame {i}".encode()) for i in range(3))
    assert b.open(f0) == b"frame 0"
    bad = {
        "tamper": bytes([f1[0] ^ 1]) + f1[1:],
        "replay": f0,
        "reorder": f2,
        "truncate": f1[:-1],
        "reflect": b.seal(b"frame 1"),  # our own frame echoed back
    }[attack]
    with pytest.raises(FrameAuthError):
        b.open(bad)
    with pytest.raises(FrameAuthError):
        b.open(f1)  # and the stream is dead from then on


def test_replayed_and_reordered_frames_close_a_live_connection(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    ts = make_cluster(closer, key, (N1, N2), extra_peers={N3: ("127.0.0.1", 1)})
    codec = peer_codec()
    for attack in ("replay", "reorder"):
        conn, est = connect_as(ts[N1].address, key, N3, N1)
        closer(conn)
        records = [est.session.seal(codec.join([codec.encode(N3, prepare(i))])) for i in range(2)]
        with capture_logs() as logs:
            if attack == "replay":
                conn.send_bytes(records[0])
                conn.send_bytes(records[0])
                delivered = [(N3, prepare(0))]
            else:
                conn.send_bytes(records[1])
                delivered = []
            got = serve_until_closed(ts[N1], conn)
        assert got + quiet(ts[N1]) == delivered
        assert any("failed authentication" in e.get("reason", "") for e in logs)
    roundtrip_ok(ts[N1], ts[N2], 1)


# ---------------------------------------------------------------------------- stalls


def still_pending(s: socket.socket) -> bool:
    """The server has not closed ``s``: only the challenge (or nothing yet) to read, no EOF."""
    s.setblocking(False)
    try:
        while s.recv(4096):
            pass
    except BlockingIOError:
        return True
    return False


def test_stalled_handshakes_do_not_delay_others_and_the_listener_keeps_accepting(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    # A deadline far beyond this test: the stallers stay pending throughout.
    limits = TransportLimits(
        handshake_timeout_ms=120_000, reconnect_delay_ms_min=20, reconnect_delay_ms_max=200
    )
    ts = {
        n: closer(PeerTransport(node=n, listen=LOOPBACK, cluster_key=key, limits=limits))
        for n in (N1, N2, N3)
    }
    addresses = {n: t.address for n, t in ts.items()}
    for n in (N1, N2):
        ts[n].start({m: a for m, a in addresses.items() if m != n})
    roundtrip_ok(ts[N1], ts[N2], 1)
    stallers = [closer(raw_socket(ts[N1].address)) for _ in range(3)]
    stallers[1].sendall(b"\x00\x00")  # half a length header, then nothing
    # Node 3 joins only now: its connection to node 1 goes through the listener and the
    # handshake pool the stallers sit in.
    ts[N3].start({m: a for m, a in addresses.items() if m != N3})
    roundtrip_ok(ts[N1], ts[N3], 2)
    for i in range(3):
        stallers.append(closer(raw_socket(ts[N1].address)))
        roundtrip_ok(ts[N1], ts[N2], 3 + i)
        roundtrip_ok(ts[N3], ts[N1], 3 + i)
    assert all(still_pending(s) for s in stallers)


def test_stalled_handshake_is_closed_at_its_deadline(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    limits = TransportLimits(handshake_timeout_ms=300)
    t = closer(PeerTransport(node=N1, listen=LOOPBACK, cluster_key=key, limits=limits))
    t.start({})
    with capture_logs() as logs:
        s = closer(raw_socket(t.address))
        s.sendall(b"\x00")  # start a length header and never finish it
        data = read_until_eof(s)
        until(lambda: bool(events(logs, "handshake_failed")), "deadline logged")
    assert data.startswith(struct.pack("!i", len(b"#CHALLENGE#") + 20) + b"#CHALLENGE#")
    assert "deadline" in events(logs, "handshake_failed")[0]["reason"]


def test_pending_handshakes_are_bounded(closer: Callable[[Any], Any], key: bytes) -> None:
    limits = TransportLimits(handshake_timeout_ms=120_000, pending_handshakes_max=2)
    t = closer(PeerTransport(node=N1, listen=LOOPBACK, cluster_key=key, limits=limits))
    t.start({})
    with capture_logs() as logs:
        stallers = [closer(raw_socket(t.address)) for _ in range(2)]
        for s in stallers:  # each got its challenge: both handshakes are running
            assert b"#CHALLENGE#" in s.recv(4096)
        excess = closer(raw_socket(t.address))
        assert read_until_eof(excess) == b""  # closed without a challenge
        until(lambda: bool(events(logs, "handshake_refused")), "refusal logged")
    assert "2 handshakes already pending" in events(logs, "handshake_refused")[0]["reason"]


# Back-off far longer than any wait in these tests: only the peer calling can cut it short.
SLOW_REDIAL = TransportLimits(
    handshake_timeout_ms=5000, reconnect_delay_ms_min=120_000, reconnect_delay_ms_max=240_000
)


class _NoRedial(PeerTransport):
    """Planted bug: ignores the peer calling in, so the connector sleeps out its back-off."""

    def _peer_called(self, peer: Any) -> None:
        pass


def _restart_behind_a_long_back_off(
    closer: Callable[[Any], Any], key: bytes, first: PeerTransport
) -> PeerTransport:
    """Node 2 goes away while node 1 is connected to it (node 1's connector then sleeps a
    back-off of minutes), and comes back on the same address, calling node 1."""
    second = closer(PeerTransport(node=N2, listen=LOOPBACK, cluster_key=key, limits=SLOW_REDIAL))
    second.start({N1: first.address})  # refused (node 1 not listening yet): backs off
    first.start({N2: second.address})  # node 1 calling in brings node 2's connector back
    roundtrip_ok(first, second, 1)
    address = second.address
    second.close()
    until(lambda: not first.stats()[N2].connected, "node 1 notices node 2 is gone")
    restarted = closer(PeerTransport(node=N2, listen=address, cluster_key=key, limits=SLOW_REDIAL))
    restarted.start({N1: first.address})
    until(lambda: restarted.stats()[N1].connected, "node 2 connects to node 1")
    return restarted


def test_a_peer_that_calls_in_is_dialled_back_at_once(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    first = closer(PeerTransport(node=N1, listen=LOOPBACK, cluster_key=key, limits=SLOW_REDIAL))
    restarted = _restart_behind_a_long_back_off(closer, key, first)
    until(lambda: first.stats()[N2].connected, "node 1 dials node 2 back without back-off")
    roundtrip_ok(first, restarted, 2)


def test_planted_no_redial_leaves_the_peer_unreachable_for_the_back_off(
    closer: Callable[[Any], Any], key: bytes
) -> None:
    """The test above can fail: without the redial, node 1 stays disconnected (its back-off
    is two minutes, the wait two seconds)."""
    first = closer(_NoRedial(node=N1, listen=LOOPBACK, cluster_key=key, limits=SLOW_REDIAL))
    _restart_behind_a_long_back_off(closer, key, first)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert not first.stats()[N2].connected
        time.sleep(0.05)
