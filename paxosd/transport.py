"""Authenticated, encrypted connections between nodes (peer port) and to clients (client port).

Built on ``multiprocessing.connection.Connection`` and nothing but ``send_bytes`` /
``recv_bytes(maxlength=...)``: ``send()``/``recv()`` pickle, and unpickling peer bytes runs
peer code. Each connection is set up by ``paxosd.handshake`` (authkey challenge, X25519 +
HKDF, key confirmation) and then carries AEAD-sealed records of typed envelopes
(``paxosd.framing``).

Threads, and why each exists (the daemon has one event loop; everything that can block on a
remote party lives on a thread of its own, so one bad or slow party only stalls itself):

- one listener per port: accepts, and hands each socket to a handshake thread. It never reads
  from a socket, so a connector that says nothing cannot stop it accepting others. At most
  ``pending_handshakes_max`` handshakes run at once; beyond that new sockets are closed.
- one handshake thread per pending connection, bounded by the handshake deadline.
- one reader thread per connection: ``recv_bytes`` has no timeout and returns only with a
  whole frame, so if the loop read sockets itself a peer stopping half-way through a frame
  (or a network stalling mid-frame) would stop the loop. Readers decode, check the sender,
  and queue ``(src, body)`` for the loop, signalling one pipe the loop waits on.
- one writer thread per connection: a peer that stops reading fills its socket buffer, and a
  blocking ``send_bytes`` from the loop would then stop the loop. The writer drains the
  send queue in batches (one seal and one ``send_bytes`` for many frames).
- one connector per peer (peer port only): connects, handshakes, waits for the connection to
  end, then reconnects after a jittered exponential back-off.

The loop's side is ``waitables()`` (pass them to ``multiprocessing.connection.wait``),
``drain()`` (decoded ``(src, body)`` pairs) and ``send()`` (encode and queue; never blocks).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from typing import Any, Generic, Self, TypeVar

import structlog

from paxosd.core.messages import Message
from paxosd.core.types import NodeId
from paxosd.framing import (
    BATCH_FRAMES_MAX_DEFAULT,
    BATCH_HEADER_BYTES_MAX,
    FRAME_BYTES_MAX_DEFAULT,
    BadFrame,
    ClientBody,
    FrameCodec,
    client_codec,
    peer_codec,
)
from paxosd.handshake import (
    AEAD_TAG_BYTES,
    CLIENT_LABEL,
    HANDSHAKE_TIMEOUT_MS_DEFAULT,
    IDENTITY_MAX,
    PEER_LABEL,
    Established,
    HandshakeError,
    SecureConnection,
    initiate,
    respond,
)


def _logger() -> Any:
    # Looked up per use (never on the per-frame path): a module-level logger would freeze
    # whatever structlog configuration was current at its first use.
    return structlog.get_logger("paxosd.transport")


Address = tuple[str, int]
B = TypeVar("B")

# Bounds on joining our own threads at close(); they are daemon threads, so one stuck in a
# kernel call cannot keep the process alive, but tests want them gone.
_JOIN_TIMEOUT_S = 5.0
# The largest record the loop writes itself rather than via the writer thread; see
# _Channel.flush for why a write this small to a socket that polls writable cannot block.
DIRECT_WRITE_BYTES_MAX = 2048
# What a record adds to its frames on the wire: length header, batch header, AEAD tag.
_RECORD_OVERHEAD_BYTES = 4 + BATCH_HEADER_BYTES_MAX + AEAD_TAG_BYTES
# The drain() default: how many frames the loop takes per wake-up before it does other work.
DRAIN_FRAMES_MAX_DEFAULT = 4096


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Every bound the transport keeps. Units are last in each name."""

    handshake_timeout_ms: int = HANDSHAKE_TIMEOUT_MS_DEFAULT
    # Plaintext bytes of one record (a batch of frames); checked before anything is read.
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    batch_frames_max: int = BATCH_FRAMES_MAX_DEFAULT
    # Connections accepted but not yet through the handshake, per port.
    pending_handshakes_max: int = 64
    # Encoded frames waiting to be written, per peer (or per client connection).
    send_queue_frames_max: int = 4096
    # Decoded frames waiting for the loop, per connection. When full the reader stops
    # reading, so TCP pushes back on that sender alone.
    inbox_frames_max: int = 4096
    # Established client connections (the peer port holds one inbound per known peer).
    client_connections_max: int = 256
    connect_timeout_ms: int = 2000
    reconnect_delay_ms_min: int = 50
    reconnect_delay_ms_max: int = 5000
    listen_backlog: int = 64

    def __post_init__(self) -> None:
        assert self.handshake_timeout_ms > 0
        assert self.frame_bytes_max > 64
        assert self.batch_frames_max >= 1
        assert self.pending_handshakes_max >= 1
        assert self.send_queue_frames_max >= 1
        assert self.inbox_frames_max >= 1
        assert self.client_connections_max >= 1
        assert self.connect_timeout_ms > 0
        assert 0 < self.reconnect_delay_ms_min <= self.reconnect_delay_ms_max
        assert self.listen_backlog >= 1

    @property
    def record_bytes_max(self) -> int:
        """The ``recv_bytes`` maxlength: a full record plus its AEAD tag."""
        return self.frame_bytes_max + AEAD_TAG_BYTES


@dataclass(slots=True)
class PeerStats:
    """Counters for one peer (or all clients). Read them through ``stats()`` (a copy)."""

    frames_queued: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    records_sent: int = 0
    dropped_queue_full: int = 0
    dropped_partitioned: int = 0
    dropped_oversize: int = 0
    lost_on_disconnect: int = 0
    connects: int = 0
    disconnects: int = 0
    connected: bool = False


def _tune(sock: socket.socket) -> None:
    # Frames are already batched by the writer, so Nagle's algorithm would only delay
    # heartbeats and replies. Keepalive finds peers that vanished without a FIN on
    # connections that carry nothing for a while.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _Wakeup:
    """A self-pipe the loop can ``wait()`` on; readable while frames wait in the inbox."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()
        self._signalled = False
        self._closed = False

    def fileno(self) -> int:
        return self._r

    def signal(self) -> None:
        with self._lock:
            if self._signalled or self._closed:
                return
            self._signalled = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._w, b"\x00")

    def clear(self) -> None:
        """Call BEFORE taking items, so an item added meanwhile signals again."""
        with self._lock:
            if not self._signalled or self._closed:
                return
            self._signalled = False
            with contextlib.suppress(BlockingIOError):
                while os.read(self._r, 4096):
                    pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._r)
            os.close(self._w)


class _SendQueue:
    """Encoded frames waiting to be written, bounded, dropping the OLDEST frame when full.

    Why drop rather than block: the loop must never block on a peer. Why the oldest: Paxos
    tolerates lost messages (it retries and re-sends on timeouts), and a newer message
    supersedes an older one to the same peer (a later heartbeat carries a later commit
    point; a later ballot makes older prepares moot), so under overload the newest are the
    ones worth delivering.

    ``put`` does not wake the writer: the loop queues a whole Ready's worth, then
    ``flush`` writes it as one record, directly when it can (see ``_Channel.flush``).
    """

    def __init__(self, frames_max: int, stats: PeerStats) -> None:
        self.frames_max = frames_max
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self._stats = stats

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> int:
        """Queue ``frame``; returns how many older frames were dropped to make room (0 or 1)."""
        with self._cond:
            dropped = 0
            if len(self._frames) >= self.frames_max:
                self._bytes -= len(self._frames.popleft())
                self._stats.dropped_queue_full += 1
                dropped = 1
            self._frames.append(frame)
            self._bytes += len(frame)
            self._stats.frames_queued += 1
            return dropped

    def wait(self, closed: threading.Event) -> bool:
        """Block until a frame is queued (True) or ``closed`` is set (False)."""
        with self._cond:
            while not self._frames:
                if closed.is_set():
                    return False
                self._cond.wait()
            return not closed.is_set()

    def take(self, codec: FrameCodec[B], all_within_bytes: int | None = None) -> list[bytes]:
        """The oldest frames that fit one record; [] if none are queued.

        With ``all_within_bytes``: every queued frame if together they take at most that
        many bytes, else [] (the caller leaves a big backlog to the writer thread).
        """
        with self._cond:
            frames = self._frames
            if all_within_bytes is not None and (
                self._bytes > all_within_bytes or len(frames) > codec.batch_frames_max
            ):
                return []
            batch: list[bytes] = []
            size = 0
            while frames and codec.fits(size + len(frames[0]), len(batch) + 1):
                frame = frames.popleft()
                batch.append(frame)
                size += len(frame)
            self._bytes -= size
            assert not frames or batch, "send() admits only frames that fit a record alone"
            return batch

    def clear(self) -> int:
        with self._cond:
            n = len(self._frames)
            self._frames.clear()
            self._bytes = 0
            return n

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class _Channel(Generic[B]):
    """One established connection: its session, its reader and writer threads.

    Invariant: the connection is closed exactly once, by whichever of the two threads
    exits last, and always after ``closed`` is set, so ``abort()`` never races a close.
    """

    def __init__(
        self,
        endpoint: _Endpoint[B],
        conn: SecureConnection,
        established: Established,
        queue: _SendQueue | None,
        stats: PeerStats,
        channel_id: int,
        direction: str,
    ) -> None:
        """``queue``: where the writer takes frames from; None for a receive-only channel."""
        self.endpoint = endpoint
        self.conn = conn
        self.session = established.session
        self.peer = established.peer
        self.queue = queue
        self.stats = stats
        self.channel_id = channel_id
        self.direction = direction
        self.closed = threading.Event()
        self.close_reason = ""
        self.opened_at = time.monotonic()
        self.inbox_pending = 0
        self.inbox_cond = threading.Condition(threading.Lock())
        self._lock = threading.Lock()
        self._threads_running = 0
        self.threads: list[threading.Thread] = []
        # Held for each seal + send_bytes, so records leave in nonce order.
        self.send_lock = threading.Lock()
        self._poller = select.poll()
        self._poller.register(conn.fileno(), select.POLLOUT)

    def start(self) -> None:
        name = f"paxosd-{self.endpoint.port}-{self.direction}-{self.peer}"
        self.threads = [
            threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True)
        ]
        if self.queue is not None:
            self.threads.append(
                threading.Thread(target=self._write_loop, name=f"{name}-writer", daemon=True)
            )
        with self._lock:
            self._threads_running = len(self.threads)
        for t in self.threads:
            t.start()

    def close(self, reason: str, *, bad_peer: bool = False) -> None:
        """Idempotent. The first reason is the one logged, before the socket goes down, so
        whoever sees the connection end can already find why in the log."""
        with self._lock:
            if self.closed.is_set():
                return
            self.close_reason = reason
            self.closed.set()
            never_started = not self.threads
        log = _logger().warning if bad_peer else _logger().info
        log(
            "connection_closed",
            node=self.endpoint.node,
            port=self.endpoint.port,
            direction=self.direction,
            peer=self.peer,
            conn=self.channel_id,
            reason=reason,
        )
        self.conn.abort()
        if self.queue is not None:
            self.queue.wake()
        with self.inbox_cond:
            self.inbox_cond.notify_all()
        if never_started:
            self.conn.close()
        self.endpoint._channel_closed(self)

    def _thread_exit(self) -> None:
        with self._lock:
            self._threads_running -= 1
            last = self._threads_running == 0
        if last:
            self.conn.close()

    def _read_loop(self) -> None:
        try:
            codec = self.endpoint.codec
            record_bytes_max = self.endpoint.limits.record_bytes_max
            while not self.closed.is_set():
                try:
                    record = self.conn.recv_bytes(record_bytes_max)
                except EOFError:
                    self.close("peer closed the connection")
                    return
                except OSError as e:
                    # Includes recv_bytes' "bad message length": a length header above
                    # record_bytes_max, refused before the body is read.
                    self.close(f"receive failed: {e}", bad_peer=str(e) == "bad message length")
                    return
                try:
                    envelopes = codec.decode(self.session.open(record))
                except BadFrame as e:
                    self.close(f"bad frame: {e}", bad_peer=True)
                    return
                except Exception as e:
                    # A decoder bug, not a peer error: close this connection, then let the
                    # thread die loudly so the bug is seen.
                    self.close(f"decoder bug: {e!r}", bad_peer=True)
                    raise
                bodies: list[B] = []
                for envelope in envelopes:
                    if envelope.src != self.peer:
                        self.close(
                            f"frame claims src {envelope.src} on a connection "
                            f"authenticated as {self.peer}",
                            bad_peer=True,
                        )
                        return
                    bodies.append(envelope.body)
                if not self.endpoint._deliver(self, bodies):
                    return
        finally:
            self._thread_exit()

    def flush(self) -> None:
        """Write what is queued: now, from the calling thread, if that cannot block; else
        wake the writer thread.

        Writing directly saves two thread switches per message (most of a round trip's
        cost in Python), but the loop must never block on a slow peer. A blocking write of
        n bytes returns at once when the socket has n bytes of room, and a socket polls
        writable only with at least SO_SNDLOWAT (BSD, 2048 bytes) or a third of its send
        buffer (Linux, >= 5 KiB by default) free. So the loop writes directly only a record
        of at most DIRECT_WRITE_BYTES_MAX to a socket that polls writable, and only when it
        can take ``send_lock`` at once (else the writer is mid-write and owns the order).
        """
        queue = self.queue
        assert queue is not None, "flush on a receive-only channel"
        if self.closed.is_set():
            return
        if self.send_lock.acquire(blocking=False):
            try:
                if self._writable_now():
                    batch = queue.take(
                        self.endpoint.codec, DIRECT_WRITE_BYTES_MAX - _RECORD_OVERHEAD_BYTES
                    )
                    if batch:
                        self._write(batch)
                        return
            finally:
                self.send_lock.release()
        queue.wake()

    def _writable_now(self) -> bool:
        try:
            return bool(self._poller.poll(0))
        except OSError:
            return False

    def _write(self, batch: list[bytes]) -> bool:
        """Seal and send one record. Caller holds ``send_lock``, which orders the nonces."""
        record = self.session.seal(self.endpoint.codec.join(batch))
        try:
            self.conn.send_bytes(record)
        except OSError as e:
            self.stats.lost_on_disconnect += len(batch)
            self.close(f"send failed: {e}")
            return False
        self.stats.frames_sent += len(batch)
        self.stats.records_sent += 1
        return True

    def _write_loop(self) -> None:
        queue = self.queue
        assert queue is not None
        try:
            codec = self.endpoint.codec
            while queue.wait(self.closed):
                with self.send_lock:
                    batch = queue.take(codec)  # [] if flush() wrote it meanwhile
                    if batch and not self._write(batch):
                        return
        finally:
            self._thread_exit()


class _Endpoint(Generic[B]):
    """What both ports share: the listening socket, handshakes, channels and the inbox."""

    port = ""
    label = ""

    def __init__(
        self,
        *,
        node: int,
        listen: Address,
        authkey: bytes,
        codec: FrameCodec[B],
        limits: TransportLimits,
    ) -> None:
        assert 0 <= node <= IDENTITY_MAX, node
        assert len(authkey) >= 32, "keys must hold at least 32 random bytes"
        self.node = node
        self.limits = limits
        self.codec = codec
        self._authkey = authkey
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._channels: dict[int, _Channel[B]] = {}
        self._channel_ids = itertools.count(1)
        self._handshaking: set[SecureConnection] = set()
        self._handshake_slots = threading.BoundedSemaphore(limits.pending_handshakes_max)
        self._threads: list[threading.Thread] = []
        self._inbox: deque[tuple[_Channel[B], B]] = deque()
        self._wakeup = _Wakeup()
        self._stop_r, self._stop_w = os.pipe()
        self._listener_thread: threading.Thread | None = None
        self._sock = socket.create_server(listen, backlog=limits.listen_backlog)
        self._sock.setblocking(False)
        host, port = self._sock.getsockname()[:2]
        self.address: Address = (str(host), int(port))

    # ------------------------------------------------------------------ the loop's API

    def waitables(self) -> list[int]:
        """File descriptors for ``multiprocessing.connection.wait``, readable while
        ``drain()`` has work. Valid until ``close()``."""
        return [self._wakeup.fileno()]

    def _drain_channels(self, frames_max: int) -> list[tuple[_Channel[B], B]]:
        assert frames_max >= 1
        self._wakeup.clear()
        inbox = self._inbox
        out: list[tuple[_Channel[B], B]] = []
        taken: dict[_Channel[B], int] = {}
        for _ in range(min(frames_max, len(inbox))):
            item = inbox.popleft()
            out.append(item)
            taken[item[0]] = taken.get(item[0], 0) + 1
        for channel, n in taken.items():
            with channel.inbox_cond:
                channel.inbox_pending -= n
                channel.inbox_cond.notify_all()
        if inbox:
            self._wakeup.signal()
        return out

    def close(self) -> None:
        """Stop accepting, close every connection, join our threads (bounded)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        os.write(self._stop_w, b"\x00")
        if self._listener_thread is not None:
            self._listener_thread.join(_JOIN_TIMEOUT_S)
        self._sock.close()
        with self._lock:
            pending = list(self._handshaking)
            channels = list(self._channels.values())
        for conn in pending:
            conn.abort()
        for channel in channels:
            channel.close("transport closing")
        self._close_more()
        for t in list(self._threads):
            t.join(_JOIN_TIMEOUT_S)
        for channel in channels:
            for t in channel.threads:
                t.join(_JOIN_TIMEOUT_S)
        self._wakeup.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- for subclasses

    def _accept_identity(self, identity: int) -> bool:
        raise NotImplementedError

    def _register(self, established: Established, conn: SecureConnection) -> _Channel[B] | None:
        raise NotImplementedError

    def _channel_closed(self, channel: _Channel[B]) -> None:
        with self._lock:
            self._channels.pop(channel.channel_id, None)
            # Its threads are finishing now; close() joins them with the rest.
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.extend(channel.threads)

    def _close_more(self) -> None:
        pass

    def _spawn(self, target: Callable[..., None], args: tuple[object, ...], name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)

    # ---------------------------------------------------------------- listening side

    def _start_listening(self) -> None:
        assert self._listener_thread is None, "started twice"
        self._listener_thread = threading.Thread(
            target=self._listen_loop, name=f"paxosd-{self.port}-listener", daemon=True
        )
        self._listener_thread.start()

    def _listen_loop(self) -> None:
        # The one endless loop of this module: it ends when close() writes the stop pipe.
        while not self._stopping.is_set():
            wait([self._sock, self._stop_r])
            if self._stopping.is_set():
                return
            try:
                sock, remote = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                # Out of file descriptors, usually: back off rather than spin.
                _logger().error("accept_failed", node=self.node, port=self.port, reason=str(e))
                self._stopping.wait(0.1)
                continue
            if not self._handshake_slots.acquire(blocking=False):
                _logger().warning(
                    "handshake_refused",
                    node=self.node,
                    port=self.port,
                    remote=f"{remote[0]}:{remote[1]}",
                    reason=f"{self.limits.pending_handshakes_max} handshakes already pending",
                )
                sock.close()
                continue
            try:
                _tune(sock)
            except OSError:
                self._handshake_slots.release()
                sock.close()
                continue
            conn = SecureConnection.from_socket(sock)
            with self._lock:
                self._handshaking.add(conn)
            remote_text = f"{remote[0]}:{remote[1]}"
            self._spawn(
                self._handshake_inbound, (conn, remote_text), f"paxosd-{self.port}-handshake"
            )

    def _handshake_inbound(self, conn: SecureConnection, remote: str) -> None:
        try:
            established = respond(
                conn,
                authkey=self._authkey,
                label=self.label,
                node=self.node,
                accept_peer=self._accept_identity,
                timeout_ms=self.limits.handshake_timeout_ms,
            )
        except HandshakeError as e:
            _logger().warning(
                "handshake_failed", node=self.node, port=self.port, remote=remote, reason=str(e)
            )
            conn.close()
            return
        finally:
            with self._lock:
                self._handshaking.discard(conn)
            self._handshake_slots.release()
        channel = self._register(established, conn)
        if channel is not None:
            _logger().info(
                "connection_established",
                node=self.node,
                port=self.port,
                direction="inbound",
                peer=channel.peer,
                conn=channel.channel_id,
                remote=remote,
            )

    def _add_channel(self, channel: _Channel[B], channels_max: int | None = None) -> bool:
        """Track and start ``channel``; False (and closed) if shutting down or at the limit."""
        with self._lock:
            if self._stopping.is_set():
                refusal = "transport closing"
            elif channels_max is not None and len(self._channels) >= channels_max:
                refusal = f"{channels_max} connections already open"
            else:
                self._channels[channel.channel_id] = channel
                refusal = ""
        if refusal:
            channel.close(refusal, bad_peer=channels_max is not None)
            return False
        channel.start()
        return True

    def _deliver(self, channel: _Channel[B], bodies: list[B]) -> bool:
        """Queue decoded bodies for the loop; blocks the reader while its share is full."""
        with channel.inbox_cond:
            while (
                channel.inbox_pending >= self.limits.inbox_frames_max
                and not channel.closed.is_set()
            ):
                channel.inbox_cond.wait()
            if channel.closed.is_set():
                return False
            channel.inbox_pending += len(bodies)
        self._inbox.extend((channel, body) for body in bodies)
        self._wakeup.signal()
        return True


# ---------------------------------------------------------------------------- peer port


def _address_text(address: Address | None) -> str:
    return "-" if address is None else f"{address[0]}:{address[1]}"


@dataclass(slots=True)
class _Peer:
    node: NodeId
    address: Address | None
    stats: PeerStats
    queue: _SendQueue
    partitioned: bool = False
    outbound: _Channel[Message] | None = None
    inbound: _Channel[Message] | None = None
    connect_failures: int = 0
    thread: threading.Thread | None = None
    removed: bool = False


class PeerTransport(_Endpoint[Message]):
    """The peer port of one node: a connection to each peer, and one from each.

    Each node sends on the connection it opened and receives on the ones peers opened (two
    TCP connections per pair), so there is never a race over which of two simultaneous
    connections to keep. The identity of an inbound connection is the node id the
    handshake bound; frames on it claiming another ``src`` close it.

    ``listen`` may use port 0; the bound address is ``self.address``. Call ``start(peers)``
    once every peer's address is known.
    """

    port = "peer"
    label = PEER_LABEL

    def __init__(
        self,
        *,
        node: NodeId,
        listen: Address,
        cluster_key: bytes,
        limits: TransportLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        limits = limits or TransportLimits()
        super().__init__(
            node=node,
            listen=listen,
            authkey=cluster_key,
            codec=peer_codec(limits.frame_bytes_max, limits.batch_frames_max),
            limits=limits,
        )
        self._peers: dict[NodeId, _Peer] = {}
        # Jitter only; not the core's seeded randomness, which must stay deterministic.
        self._rng = rng or random.Random()

    def start(self, peers: Mapping[NodeId, Address]) -> None:
        """Begin accepting, and connecting to every peer in ``peers`` (not including us)."""
        assert not self._peers, "started twice"
        assert self.node not in peers, "a node does not connect to itself"
        self._start_listening()
        for node, address in peers.items():
            self.add_peer(node, address)

    def add_peer(self, node: NodeId, address: Address | None) -> None:
        """Start talking to ``node`` (a member added at run time, or one we only heard from).

        ``address`` None: receive only, until a later call names where to connect. Calling
        again with another address moves the connector there (a replaced host)."""
        assert node != self.node, "a node does not connect to itself"
        with self._lock:
            if self._stopping.is_set():
                return
            peer = self._peers.get(node)
            if peer is None:
                stats = PeerStats()
                peer = self._peers[node] = _Peer(
                    node=node,
                    address=address,
                    stats=stats,
                    queue=_SendQueue(self.limits.send_queue_frames_max, stats),
                )
            elif peer.address == address or address is None:
                return
            else:
                peer.address = address
                channel = peer.outbound
                if channel is not None:
                    channel.close("peer moved to another address")
            start = address is not None and (peer.thread is None or not peer.thread.is_alive())
        if start:
            t = threading.Thread(
                target=self._connect_loop,
                args=(peer,),
                name=f"paxosd-peer-connector-{peer.node}",
                daemon=True,
            )
            peer.thread = t
            t.start()

    def remove_peer(self, node: NodeId) -> None:
        """Stop talking to ``node`` (removed from the cluster): close both connections and
        forget what was queued for it. A removed node that calls again is accepted (it holds
        the cluster key) but nothing is sent to it."""
        with self._lock:
            peer = self._peers.pop(node, None)
        if peer is None:
            return
        peer.removed = True
        peer.queue.clear()
        peer.queue.wake()
        for channel in (peer.outbound, peer.inbound):
            if channel is not None:
                channel.close("peer removed from the cluster")

    def peers(self) -> dict[NodeId, Address | None]:
        return {n: p.address for n, p in self._peers.items()}

    # ------------------------------------------------------------------ the loop's API

    def send(self, dst: NodeId, msg: Message) -> bool:
        """Queue ``msg`` for ``dst`` and flush; never blocks. False if dropped at once.

        A True result is not delivery: Paxos assumes messages may be lost, and this
        transport loses them when a queue overflows or a connection drops.
        """
        peer = self._peers.get(dst)
        if peer is None:
            return False  # not (or no longer) a peer: Paxos treats it as a lost message
        queued = self._enqueue(peer, msg, self.codec.encode(self.node, msg))
        self._flush(peer)
        return queued

    def send_many(self, messages: Iterable[tuple[NodeId, Message]]) -> int:
        """Queue several messages, then flush each peer once (one record per peer when
        they fit). A message object sent to several peers is encoded once."""
        sent = 0
        encoded: dict[int, tuple[Message, bytes]] = {}
        touched: dict[NodeId, _Peer] = {}
        for dst, msg in messages:
            peer = self._peers.get(dst)
            if peer is None:
                continue  # not (or no longer) a peer: lost, as Paxos allows
            key = id(msg)
            hit = encoded.get(key)
            if hit is None:
                # Keep msg alive with its bytes so its id cannot be reused meanwhile.
                hit = encoded[key] = (msg, self.codec.encode(self.node, msg))
            sent += self._enqueue(peer, msg, hit[1])
            touched[dst] = peer
        for peer in touched.values():
            self._flush(peer)
        return sent

    def drain(self, frames_max: int = DRAIN_FRAMES_MAX_DEFAULT) -> list[tuple[NodeId, Message]]:
        """Up to ``frames_max`` received ``(src, msg)`` pairs, oldest first."""
        out: list[tuple[NodeId, Message]] = []
        for channel, msg in self._drain_channels(frames_max):
            src = NodeId(channel.peer)
            peer = self._peers.get(src)
            if peer is None:
                continue  # removed while its frames were in the inbox
            if peer.partitioned:
                peer.stats.dropped_partitioned += 1
                continue
            peer.stats.frames_received += 1
            out.append((src, msg))
        return out

    def set_partitioned(self, peer: NodeId, partitioned: bool) -> None:
        """Fault drill: drop everything to and from ``peer`` at this node until cleared.

        Connections stay up (as in a real partition they would at first), so healing is
        immediate; queued frames are discarded, as a partition would lose them.
        """
        p = self._peers[peer]
        p.partitioned = partitioned
        if partitioned:
            p.stats.dropped_partitioned += p.queue.clear()

    def stats(self) -> dict[NodeId, PeerStats]:
        out = {}
        for node, peer in self._peers.items():
            s = replace(peer.stats)
            s.connected = peer.outbound is not None and not peer.outbound.closed.is_set()
            out[node] = s
        return out

    def queued(self, peer: NodeId) -> int:
        p = self._peers.get(peer)
        return 0 if p is None else len(p.queue)

    # -------------------------------------------------------------------- internals

    def _enqueue(self, peer: _Peer, msg: Message, frame: bytes) -> bool:
        if peer.partitioned:
            peer.stats.dropped_partitioned += 1
            return False
        if not self.codec.fits(len(frame), 1):
            peer.stats.dropped_oversize += 1
            _logger().error(
                "frame_oversize",
                node=self.node,
                peer=peer.node,
                message=type(msg).__name__,
                frame_bytes=len(frame),
                frame_bytes_max=self.limits.frame_bytes_max,
            )
            return False
        if peer.queue.put(frame):
            dropped = peer.stats.dropped_queue_full
            if dropped & (dropped - 1) == 0:  # log at 1, 2, 4, 8, ... drops
                _logger().warning(
                    "send_queue_full",
                    node=self.node,
                    peer=peer.node,
                    frames_max=peer.queue.frames_max,
                    dropped_total=dropped,
                )
        return True

    def _flush(self, peer: _Peer) -> None:
        channel = peer.outbound
        if channel is not None:
            # If it is down, the queue waits for the next connection's writer.
            channel.flush()

    def _accept_identity(self, identity: int) -> bool:
        # Any holder of the cluster key may call: a member added at run time is heard before
        # our own log has told us about it. The core decides what a non-member may do.
        return identity != self.node

    def _register(
        self, established: Established, conn: SecureConnection
    ) -> _Channel[Message] | None:
        node = NodeId(established.peer)
        if node not in self._peers:
            self.add_peer(node, None)
        peer = self._peers.get(node)
        if peer is None:
            conn.close()
            return None
        # Receive-only: we send to this peer on the connection we opened to it.
        channel = _Channel(
            self, conn, established, None, peer.stats, next(self._channel_ids), "inbound"
        )
        with self._lock:
            previous = peer.inbound
            peer.inbound = channel
        if previous is not None:
            # The peer reconnected (e.g. it restarted); the old connection is dead or dying.
            previous.close("replaced by a newer connection from the same peer")
        return channel if self._add_channel(channel) else None

    def _connect_loop(self, peer: _Peer) -> None:
        limits = self.limits
        delay_ms = float(limits.reconnect_delay_ms_min)
        while not self._stopping.is_set() and not peer.removed:
            channel = self._connect_once(peer)
            if channel is not None:
                channel.closed.wait()
                peer.stats.disconnects += 1
                lived_ms = (time.monotonic() - channel.opened_at) * 1000
                if lived_ms >= limits.reconnect_delay_ms_max:
                    # It worked for a while: this is a new failure, start the back-off over.
                    delay_ms = float(limits.reconnect_delay_ms_min)
            if self._stopping.is_set() or peer.removed:
                return
            # Full jitter in [delay/2, delay]: peers that lost each other at the same moment
            # do not retry in lockstep.
            self._stopping.wait(delay_ms * self._rng.uniform(0.5, 1.0) / 1000)
            delay_ms = min(delay_ms * 2, float(limits.reconnect_delay_ms_max))

    def _connect_once(self, peer: _Peer) -> _Channel[Message] | None:
        address = peer.address
        assert address is not None, "connectors run only for peers with an address"
        try:
            sock = socket.create_connection(address, timeout=self.limits.connect_timeout_ms / 1000)
        except OSError as e:
            self._connect_failed(peer, f"connect failed: {e}")
            return None
        try:
            _tune(sock)
        except OSError as e:
            sock.close()
            self._connect_failed(peer, f"connect failed: {e}")
            return None
        conn = SecureConnection.from_socket(sock)
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return None
            self._handshaking.add(conn)
        try:
            established = initiate(
                conn,
                authkey=self._authkey,
                label=self.label,
                node=self.node,
                expect_peer=peer.node,
                timeout_ms=self.limits.handshake_timeout_ms,
            )
        except HandshakeError as e:
            conn.close()
            self._connect_failed(peer, f"handshake failed: {e}", handshake=True)
            return None
        finally:
            with self._lock:
                self._handshaking.discard(conn)
        channel = _Channel(
            self,
            conn,
            established,
            peer.queue,
            peer.stats,
            next(self._channel_ids),
            "outbound",
        )
        peer.outbound = channel
        if not self._add_channel(channel):
            return None
        peer.stats.connects += 1
        peer.connect_failures = 0
        _logger().info(
            "connection_established",
            node=self.node,
            port=self.port,
            direction="outbound",
            peer=peer.node,
            conn=channel.channel_id,
            remote=_address_text(peer.address),
        )
        return channel

    def _connect_failed(self, peer: _Peer, reason: str, *, handshake: bool = False) -> None:
        peer.connect_failures += 1
        # A down peer fails every few seconds for as long as it is down: say so once, loudly
        # if it was a handshake (a misconfiguration or an impostor), then quietly.
        if peer.connect_failures == 1 or handshake:
            log = _logger().warning if handshake else _logger().info
        else:
            log = _logger().debug
        log(
            "peer_connect_failed",
            node=self.node,
            peer=peer.node,
            remote=_address_text(peer.address),
            failures=peer.connect_failures,
            reason=reason,
        )

    def _close_more(self) -> None:
        for peer in self._peers.values():
            peer.queue.wake()
            if peer.thread is not None:
                peer.thread.join(_JOIN_TIMEOUT_S)


# -------------------------------------------------------------------------- client port


class ClientServer(_Endpoint[ClientBody]):
    """The client port of one node: its own key, its own label, its own listener.

    A client key cannot pass the authkey challenge on the peer port, and even when an
    operator uses one secret for both, the handshake label differs, so a client can never
    be taken for a peer. ``drain()`` yields ``(conn_id, body)``; answer with
    ``reply(conn_id, body)`` on the same connection.
    """

    port = "client"
    label = CLIENT_LABEL

    def __init__(
        self,
        *,
        node: NodeId,
        listen: Address,
        client_key: bytes,
        limits: TransportLimits | None = None,
    ) -> None:
        limits = limits or TransportLimits()
        super().__init__(
            node=node,
            listen=listen,
            authkey=client_key,
            codec=client_codec(limits.frame_bytes_max, limits.batch_frames_max),
            limits=limits,
        )
        self._stats = PeerStats()

    def start(self) -> None:
        self._start_listening()

    def drain(self, frames_max: int = DRAIN_FRAMES_MAX_DEFAULT) -> list[tuple[int, ClientBody]]:
        """Up to ``frames_max`` ``(conn_id, body)`` pairs from clients, oldest first."""
        out = [(ch.channel_id, body) for ch, body in self._drain_channels(frames_max)]
        self._stats.frames_received += len(out)
        return out

    def reply(self, conn_id: int, body: ClientBody) -> bool:
        """Queue ``body`` on client connection ``conn_id``; False if it is gone or too big."""
        with self._lock:
            channel = self._channels.get(conn_id)
        if channel is None:
            return False
        frame = self.codec.encode(self.node, body)
        if not self.codec.fits(len(frame), 1):
            self._stats.dropped_oversize += 1
            return False
        assert channel.queue is not None, "client connections are two-way"
        channel.queue.put(frame)
        channel.flush()
        return True

    def client_id(self, conn_id: int) -> int | None:
        """The client identity the handshake bound to ``conn_id``."""
        with self._lock:
            channel = self._channels.get(conn_id)
        return None if channel is None else channel.peer

    def connections(self) -> int:
        with self._lock:
            return len(self._channels)

    def stats(self) -> PeerStats:
        return replace(self._stats)

    def _accept_identity(self, identity: int) -> bool:
        return True  # any client id; the key is what admits a client

    def _register(
        self, established: Established, conn: SecureConnection
    ) -> _Channel[ClientBody] | None:
        channel = _Channel(
            self,
            conn,
            established,
            _SendQueue(self.limits.send_queue_frames_max, self._stats),
            self._stats,
            next(self._channel_ids),
            "inbound",
        )
        added = self._add_channel(channel, self.limits.client_connections_max)
        return channel if added else None


class ClientConnection:
    """The client side of the client port: blocking, single-threaded, for paxosd.client.

    ``recv`` waits at most ``timeout_ms`` for a record to start; ``io_timeout_ms`` (a
    kernel receive timeout) bounds how long a record that started may take to finish.
    """

    def __init__(
        self,
        conn: SecureConnection,
        established: Established,
        client_id: int,
        codec: FrameCodec[ClientBody],
    ) -> None:
        self._conn = conn
        self._session = established.session
        self._codec = codec
        self.client_id = client_id
        self.server_node = established.peer

    @classmethod
    def connect(
        cls,
        address: Address,
        *,
        client_key: bytes,
        client_id: int,
        timeout_ms: int = HANDSHAKE_TIMEOUT_MS_DEFAULT,
        io_timeout_ms: int = 10_000,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        label: str = CLIENT_LABEL,
    ) -> ClientConnection:
        """Connect and handshake. Raises HandshakeError or OSError."""
        assert io_timeout_ms > 0
        sock = socket.create_connection(address, timeout=timeout_ms / 1000)
        try:
            _tune(sock)
            seconds, ms = divmod(io_timeout_ms, 1000)
            timeval = struct.pack("@ll", seconds, ms * 1000)  # struct timeval
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        except OSError:
            sock.close()
            raise
        conn = SecureConnection.from_socket(sock)
        try:
            established = initiate(
                conn,
                authkey=client_key,
                label=label,
                node=client_id,
                expect_peer=None,
                timeout_ms=timeout_ms,
            )
        except HandshakeError:
            conn.close()
            raise
        return cls(conn, established, client_id, client_codec(frame_bytes_max))

    def send(self, *bodies: ClientBody) -> None:
        """Send ``bodies`` as one record. Raises OSError if the connection is gone."""
        frames = [self._codec.encode(self.client_id, b) for b in bodies]
        self._conn.send_bytes(self._session.seal(self._codec.join(frames)))

    def recv(self, timeout_ms: int) -> list[ClientBody]:
        """The bodies of the next record, or [] if none started within ``timeout_ms``.

        Raises EOFError / OSError when the connection ends, BadFrame on a bad record
        (then close this connection).
        """
        if not self._conn.poll(timeout_ms / 1000):
            return []
        record = self._conn.recv_bytes(self._codec.frame_bytes_max + AEAD_TAG_BYTES)
        envelopes = self._codec.decode(self._session.open(record))
        for envelope in envelopes:
            if envelope.src != self.server_node:
                raise BadFrame(f"reply from {envelope.src} on a connection to {self.server_node}")
        return [e.body for e in envelopes]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "Address",
    "ClientConnection",
    "ClientServer",
    "PeerStats",
    "PeerTransport",
    "TransportLimits",
]
