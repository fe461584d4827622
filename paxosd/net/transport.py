"""Authenticated, encrypted connections between nodes (peer port) and to clients (client port).

The wire is ``multiprocessing.connection``'s: each record is a 4-byte big-endian length (or
-1 then an 8-byte length) and that many bytes. Each connection is set up by
``paxosd.net.handshake`` (authkey challenge, X25519 + HKDF, key confirmation), the only code
that uses the stdlib's ``send_bytes``/``recv_bytes(maxlength=...)`` (never ``send()``/
``recv()``: they pickle, and unpickling peer bytes runs peer code). After it, the connection
carries AEAD-sealed records of typed envelopes (``paxosd.net.framing``), which this module
writes and reads on the socket itself in that same length-prefixed format (non-blocking
``send``/``recv_into``, below), so a record is never pickled either way.

Who does what, and why (the daemon has one event loop, and a message that crosses a thread
costs a GIL hand-off and a pipe write, which on the hot path cost more than the message):

- the event loop reads every established connection itself. ``waitables()`` is one
  long-lived epoll per port; ``drain()`` asks it which sockets are readable, reads each once
  (``MSG_DONTWAIT``, at most ``read_bytes_per_turn``, so one chatty party cannot starve the
  others), splits the bytes into records itself, and opens and decodes them. A party that
  stops half-way through a record leaves bytes in its connection's buffer and stalls nobody.
  A record that fails (bad length, authentication, decoding, a foreign ``src``) closes that
  connection alone, with the reason logged.
- the event loop writes too: ``send()``/``reply()`` seal what is queued into one record and
  hand it to the kernel without blocking. Whatever the socket buffer cannot take is left to
  the connection's writer thread, the only thing that ever blocks on a slow party.
- one listener per port: accepts, and hands each socket to a handshake thread. It never reads
  from a socket, so a connector that says nothing cannot stop it accepting others. At most
  ``pending_handshakes_max`` handshakes run at once; beyond that new sockets are closed.
- one handshake thread per pending connection, bounded by the handshake deadline; it hands
  the established connection to the loop through a list and the wake-up pipe.
- one connector per peer (peer port only): connects, handshakes, watches the connection it
  opened (peers send nothing back on it, so readable means it ended), then reconnects after
  a jittered exponential back-off, or at once when the peer calls us. The send queue is the
  peer's, not the connection's: frames still queued when a connection ends go out on the
  next one, in order. Frames already written to the connection that ended (in the kernel's
  buffers, or in a record half-written) are lost, deliberately, as Paxos allows (the sender
  cannot tell which of them arrived). A connection
  is never replaced while it is up: the connector dials again only after it ended.

Every loop-side call (``drain``, ``send``, ``reply``, ``close``...) must come from one thread.
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
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from typing import Any, Generic, Self, TypeVar

from paxosd.core.messages import Message
from paxosd.core.types import NodeId
from paxosd.net.framing import (
    BATCH_FRAMES_MAX_DEFAULT,
    FRAME_BYTES_MAX_DEFAULT,
    BadFrame,
    ClientBody,
    FrameCodec,
    client_codec,
    peer_codec,
)
from paxosd.net.handshake import (
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
    # whatever structlog configuration was current at its first use. Imported here, not at
    # the top, because a command-line client that never logs should not pay for structlog.
    import structlog

    return structlog.get_logger("paxosd.net.transport")


def _connection_log(port: str) -> Any:
    """The level of a connection's routine lines: info for peers (a peer connection coming
    or going is news), debug for clients (every paxosctl call is one connection, and at info
    they were most of a node's journal)."""
    return _logger().debug if port == "client" else _logger().info


Address = tuple[str, int]
B = TypeVar("B")

# Bounds on joining our own threads at close(); they are daemon threads, so one stuck in a
# kernel call cannot keep the process alive, but tests want them gone.
_JOIN_TIMEOUT_S = 5.0
# The drain() default: how many frames the loop takes per wake-up before it does other work.
DRAIN_FRAMES_MAX_DEFAULT = 4096
# The record header multiprocessing.connection writes: a signed length, or -1 and a u64.
_LENGTH = struct.Struct("!i")
_LENGTH_LONG = struct.Struct("!Q")
# One recv_into of the loop reads at most this much (a buffer shared by every connection of
# a port, allocated once: a fresh buffer this big per recv would be an mmap per call).
_READ_CHUNK_BYTES_MAX = 256 * 1024
# Closed client connection ids kept for ``ClientServer.closed_connections`` between calls.
CLOSED_IDS_MAX = 4096
# How often a connector watching its idle connection re-checks for close(); the end of the
# connection itself wakes it at once.
_WATCH_INTERVAL_MS = 1000


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
    # Decoded frames waiting for the loop, per port. While this many wait, the loop reads
    # no socket of the port, so TCP pushes back on the senders.
    inbox_frames_max: int = 4096
    # Bytes the loop reads from one connection per drain(), so that one busy party cannot
    # starve the rest; unread bytes wait in the kernel for the next turn.
    read_bytes_per_turn: int = 256 * 1024
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
        assert self.read_bytes_per_turn >= 1
        assert self.client_connections_max >= 1
        assert self.connect_timeout_ms > 0
        assert 0 < self.reconnect_delay_ms_min <= self.reconnect_delay_ms_max
        assert self.listen_backlog >= 1

    @property
    def record_bytes_max(self) -> int:
        """The largest record length accepted: a full record plus its AEAD tag."""
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
    # Frames are already batched per record, so Nagle's algorithm would only delay
    # heartbeats and replies. Keepalive finds peers that vanished without a FIN on
    # connections that carry nothing for a while.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _Wakeup:
    """A self-pipe in the loop's epoll: readable while the loop has work it cannot see in
    a socket (frames left in the inbox, connections to adopt or to let go)."""

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


def split_records(data: memoryview, record_bytes_max: int) -> tuple[list[memoryview], int, bool]:
    """The complete records at the start of ``data`` (views into it), how many bytes they
    and their headers take, and whether the header after them declares a length above
    ``record_bytes_max`` (refused at once, so a liar cannot make us buffer its claim)."""
    records: list[memoryview] = []
    pos = 0
    end = len(data)
    while end - pos >= 4:
        size: int = _LENGTH.unpack_from(data, pos)[0]
        head = 4
        if size == -1:
            if end - pos < 12:
                break
            size = _LENGTH_LONG.unpack_from(data, pos + 4)[0]
            head = 12
        if not 0 <= size <= record_bytes_max:
            return records, pos, True
        stop = pos + head + size
        if stop > end:
            break
        records.append(data[pos + head : stop])
        pos = stop
    return records, pos, False


class _SendQueue:
    """Encoded frames waiting to be written, bounded, dropping the OLDEST frame when full.

    Why drop rather than block: the loop must never block on a peer. Why the oldest: Paxos
    tolerates lost messages (it retries and re-sends on timeouts), and a newer message
    supersedes an older one to the same peer (a later heartbeat carries a later commit
    point; a later ballot makes older prepares moot), so under overload the newest are the
    ones worth delivering.

    ``put`` does not wake the writer: the loop queues a whole Ready's worth, then
    ``flush`` writes it as one record itself, and ``kick``s the writer only for what the
    socket would not take.
    """

    def __init__(self, frames_max: int, stats: PeerStats) -> None:
        self.frames_max = frames_max
        self._frames: deque[bytes] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._kicked = False
        self._stats = stats

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> int:
        """Queue ``frame``; returns how many older frames were dropped to make room (0 or 1)."""
        with self._cond:
            dropped = 0
            if len(self._frames) >= self.frames_max:
                self._frames.popleft()
                self._stats.dropped_queue_full += 1
                dropped = 1
            self._frames.append(frame)
            self._stats.frames_queued += 1
            return dropped

    def wait(self, closed: threading.Event) -> bool:
        """Block until a frame is queued or the writer is kicked (True), or ``closed`` is
        set (False)."""
        with self._cond:
            # A closed writer leaves the kick alone: the queue is the peer's, not one
            # connection's, and a writer of an old connection that wakes late must not take
            # the wake-up meant for the writer of the new one (which would then sleep with
            # bytes to write).
            while not closed.is_set():
                if self._frames or self._kicked:
                    self._kicked = False
                    return True
                self._cond.wait()
            return False

    def take(self, codec: FrameCodec[B]) -> list[bytes]:
        """The oldest frames that fit one record; [] if none are queued."""
        with self._cond:
            frames = self._frames
            if not frames:
                return []
            if len(frames) == 1:
                return [frames.popleft()]
            batch: list[bytes] = []
            size = 0
            while frames and codec.fits(size + len(frames[0]), len(batch) + 1):
                frame = frames.popleft()
                batch.append(frame)
                size += len(frame)
            assert not frames or batch, "send() admits only frames that fit a record alone"
            return batch

    def clear(self) -> int:
        with self._cond:
            n = len(self._frames)
            self._frames.clear()
            return n

    def kick(self) -> None:
        """Wake the writer: it has bytes to finish, or the connection is closing."""
        with self._cond:
            self._kicked = True
            self._cond.notify_all()


class _Channel(Generic[B]):
    """One established connection: its session, its receive buffer, its writer thread.

    Reading belongs to one party: the event loop (``loop_reads``: inbound connections) or
    the peer's connector (outbound connections, where only the end can arrive). The file
    descriptor is closed exactly once, by ``release()`` from the last of the reader and the
    writer to let go, and always after ``closed`` is set, so ``abort()`` never races a
    close and the loop never reads or writes a reused descriptor.
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
        *,
        loop_reads: bool,
    ) -> None:
        """``queue``: where the writer takes frames from; None for a receive-only channel."""
        self.endpoint = endpoint
        self.conn = conn
        self.fd = conn.fileno()
        # For MSG_DONTWAIT reads and writes on the (blocking) descriptor the writer shares.
        self.sock = socket.socket(fileno=self.fd)
        self.session = established.session
        self.peer = established.peer
        self.queue = queue
        self.stats = stats
        self.channel_id = channel_id
        self.direction = direction
        self.loop_reads = loop_reads
        self.closed = threading.Event()
        self.close_reason = ""
        self.opened_at = time.monotonic()
        self.started = False
        # Set and cleared only by the loop thread, in _Endpoint._adopt.
        self.registered = False
        # Bytes of a record not yet complete; bounded by one record (record_bytes_max).
        self.rx = bytearray()
        self._lock = threading.Lock()
        self._holders = 0
        self.threads: list[threading.Thread] = []
        # Held for each seal + write, so records leave in nonce order.
        self.send_lock = threading.Lock()
        # The tail of a record the socket did not take; the writer sends it before anything.
        self.unsent = b""
        # Close rather than drop a frame when the send queue is full (a client connection
        # that holds watches: a dropped frame would be a silent gap in a stream). Loop only.
        self.keep_every_frame = False

    def start(self) -> bool:
        """Mark the channel live; False (and nothing started) if it closed already."""
        with self._lock:
            if self.closed.is_set():
                return False
            self.started = True
            self._holders = 1  # the reader; a writer adds itself when it starts
        return True

    def _kick(self) -> None:
        """Hand the rest to the writer thread, starting it the first time: most
        connections never fill their socket buffer and never need one."""
        queue = self.queue
        assert queue is not None
        queue.kick()
        if self.threads:
            return
        with self._lock:
            if self.closed.is_set() or not self.started or self.threads:
                return
            self._holders += 1
            name = f"paxosd-{self.endpoint.port}-{self.direction}-{self.peer}-writer"
            t = threading.Thread(target=self._write_loop, name=name, daemon=True)
            self.threads = [t]
        t.start()

    def close(self, reason: str, *, bad_peer: bool = False) -> None:
        """Idempotent. The first reason is the one logged, before the socket goes down, so
        whoever sees the connection end can already find why in the log."""
        with self._lock:
            if self.closed.is_set():
                return
            self.close_reason = reason
            self.closed.set()
            started = self.started
        log = _logger().warning if bad_peer else _connection_log(self.endpoint.port)
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
            self.queue.kick()
        if not started:
            self._close_fd()
        self.endpoint._channel_closed(self, started)

    def release(self) -> None:
        """The reader or the writer is done with the descriptor; the last one closes it."""
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            # A flush that found the channel open under send_lock finishes its write first.
            with self.send_lock:
                self._close_fd()

    def _close_fd(self) -> None:
        self.sock.detach()
        self.conn.close()

    # ------------------------------------------------------------------ reading (loop)

    def receive(self, inbox: deque[tuple[_Channel[B], B]], buf: bytearray) -> None:
        """Read what the socket has (up to ``read_bytes_per_turn``) and queue the bodies of
        every complete record in ``inbox``. Never blocks. ``buf`` is the port's scratch."""
        budget = self.endpoint.limits.read_bytes_per_turn
        view = memoryview(buf)
        chunk = len(buf)
        while budget > 0 and not self.closed.is_set():
            want = min(chunk, budget)
            try:
                n = self.sock.recv_into(buf, want, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.close(f"receive failed: {e}")
                return
            if n == 0:
                self.close("peer closed the connection")
                return
            budget -= n
            self._absorb(view[:n], inbox)
            if n < want:
                return  # the socket is empty

    def _absorb(self, data: memoryview, inbox: deque[tuple[_Channel[B], B]]) -> None:
        rx = self.rx
        if not rx:
            used = self._records(data, inbox)
            if used < len(data) and not self.closed.is_set():
                rx += data[used:]
            return
        rx += data
        with memoryview(rx) as whole:
            used = self._records(whole, inbox)
        del rx[:used]

    def _records(self, data: memoryview, inbox: deque[tuple[_Channel[B], B]]) -> int:
        """Open and decode the complete records at the start of ``data``; returns how many
        bytes they took. Closes the channel (and stops) at the first bad one."""
        records, used, refused = split_records(data, self.endpoint.limits.record_bytes_max)
        decode = self.endpoint.codec.decode
        session = self.session
        peer = self.peer
        for record in records:
            try:
                envelopes = decode(session.open(record))
            except BadFrame as e:
                self.close(f"bad frame: {e}", bad_peer=True)
                return used
            except Exception as e:
                # A decoder bug, not a peer error. It runs on the loop now, so raising
                # would stop the node for one party's bytes: close this connection and
                # log the traceback loudly instead, so the bug is seen.
                _logger().exception("decoder_bug", node=self.endpoint.node, peer=peer)
                self.close(f"decoder bug: {e!r}", bad_peer=True)
                return used
            for envelope in envelopes:
                if envelope.src != peer:
                    self.close(
                        f"frame claims src {envelope.src} on a connection authenticated as {peer}",
                        bad_peer=True,
                    )
                    return used
            if len(envelopes) == 1:
                inbox.append((self, envelopes[0].body))
            else:
                inbox.extend([(self, e.body) for e in envelopes])
        if refused:
            # The stdlib's words, as when recv_bytes refused it: before a byte of the body
            # is buffered.
            self.close("receive failed: bad message length", bad_peer=True)
        return used

    def watch(self, stopping: threading.Event) -> None:
        """The connector's side of an outbound connection: nothing is ever sent to us on
        it, so wait for it to end (or to be closed here) and say why."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            while not self.closed.is_set() and not stopping.is_set():
                if not poller.poll(_WATCH_INTERVAL_MS) or self.closed.is_set():
                    continue
                try:
                    data = self.sock.recv(4096, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    self.close(f"receive failed: {e}")
                    break
                if not data:
                    self.close("peer closed the connection")
                else:
                    self.close("peer sent on our outbound connection", bad_peer=True)
        finally:
            self.release()

    # ------------------------------------------------------------------ writing

    def flush(self) -> None:
        """Write what is queued, from the calling thread, without blocking: each record
        goes to the kernel with MSG_DONTWAIT, and if the socket buffer cannot take all of
        it, the rest is the writer thread's to finish (it may block; the loop may not).

        If the writer holds ``send_lock`` it is mid-write and owns the order: kick it."""
        queue = self.queue
        assert queue is not None, "flush on a receive-only channel"
        if not self.send_lock.acquire(blocking=False):
            self._kick()
            return
        try:
            if self.closed.is_set() or self.unsent:
                return
            codec = self.endpoint.codec
            while batch := queue.take(codec):
                data = self._seal(batch)
                try:
                    n = self.sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as e:
                    self.stats.lost_on_disconnect += len(batch)
                    self.close(f"send failed: {e}")
                    return
                if n < len(data):
                    self.unsent = data[n:]
                    break
        finally:
            self.send_lock.release()
        if self.unsent:
            self._kick()

    def write_now(self, frames: list[bytes]) -> bool:
        """Loop thread: when nothing is queued or being written, seal ``frames`` into as few
        records as fit and hand them to the kernel at once, skipping the queue and its
        locks; False (and nothing done) otherwise, and the caller queues them. What the
        socket does not take goes to the writer, as in ``flush``."""
        queue = self.queue
        assert queue is not None, "write on a receive-only channel"
        if len(queue) or not self.send_lock.acquire(blocking=False):
            return False
        try:
            if self.closed.is_set() or self.unsent or len(queue):
                return False
            fits = self.endpoint.codec.fits
            stats = self.stats
            i, n = 0, len(frames)
            while i < n:
                j, size = i + 1, len(frames[i])
                while j < n and fits(size + len(frames[j]), j - i + 1):
                    size += len(frames[j])
                    j += 1
                data = self._seal(frames if j - i == n else frames[i:j])
                stats.frames_queued += j - i
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as e:
                    stats.lost_on_disconnect += n - i
                    self.close(f"send failed: {e}")
                    return True
                i = j
                if sent < len(data):
                    self.unsent = data[sent:]
                    for frame in frames[i:]:  # behind the unsent tail, in order
                        queue.put(frame)
                    break
        finally:
            self.send_lock.release()
        if self.unsent:
            self._kick()
        return True

    def _seal(self, batch: list[bytes]) -> bytes:
        """One record on the wire. Caller holds ``send_lock``, which orders the nonces."""
        record = self.session.seal(self.endpoint.codec.join(batch))
        self.stats.frames_sent += len(batch)
        self.stats.records_sent += 1
        return _LENGTH.pack(len(record)) + record

    def _send_all(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.close(f"send failed: {e}")
            return False
        return True

    def _write_loop(self) -> None:
        queue = self.queue
        assert queue is not None
        try:
            codec = self.endpoint.codec
            while queue.wait(self.closed):
                with self.send_lock:
                    if self.closed.is_set():
                        return
                    if self.unsent:
                        if not self._send_all(self.unsent):
                            return
                        self.unsent = b""
                    batch = queue.take(codec)  # [] if flush() wrote it meanwhile
                    if batch and not self._send_all(self._seal(batch)):
                        self.stats.lost_on_disconnect += len(batch)
                        return
        finally:
            self.release()


class _Endpoint(Generic[B]):
    """What both ports share: the listening socket, handshakes, channels, the epoll the loop
    reads them through, and the inbox of decoded frames."""

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
        # Loop thread only: decoded frames not yet drained, and what the epoll watches.
        self._inbox: deque[tuple[_Channel[B], B]] = deque()
        self._epoll = select.epoll()
        self._reading: dict[int, _Channel[B]] = {}
        self._read_buf = bytearray(min(_READ_CHUNK_BYTES_MAX, limits.read_bytes_per_turn))
        self._turns = 0
        # Handed over by other threads (under _lock), taken by the loop in _adopt().
        self._adopting: list[_Channel[B]] = []
        self._closing: list[_Channel[B]] = []
        self._wakeup = _Wakeup()
        self._epoll.register(self._wakeup.fileno(), select.EPOLLIN)
        self._stop_r, self._stop_w = os.pipe()
        self._listener_thread: threading.Thread | None = None
        self._sock = socket.create_server(listen, backlog=limits.listen_backlog)
        self._sock.setblocking(False)
        host, port = self._sock.getsockname()[:2]
        self.address: Address = (str(host), int(port))

    # ------------------------------------------------------------------ the loop's API

    def waitables(self) -> list[int]:
        """File descriptors for ``select.poll`` or ``multiprocessing.connection.wait``:
        readable while ``drain()`` has work. Valid until ``close()``."""
        return [self._epoll.fileno()]

    def _drain_channels(self, frames_max: int) -> list[tuple[_Channel[B], B]]:
        assert frames_max >= 1
        self._wakeup.clear()
        if self._adopting or self._closing:
            self._adopt()
        inbox = self._inbox
        inbox_max = self.limits.inbox_frames_max
        if len(inbox) < inbox_max:
            reading = self._reading
            buf = self._read_buf
            ready = self._epoll.poll(0)
            if len(ready) > 1:
                # Start at a different connection each turn: epoll reports ready ones in
                # the same order, and a turn that fills the inbox stops early.
                self._turns += 1
                k = self._turns % len(ready)
                ready = ready[k:] + ready[:k]
            for fd, _ in ready:
                if len(inbox) >= inbox_max:
                    break  # the rest stay readable for the next turn
                channel = reading.get(fd)
                if channel is not None and not channel.closed.is_set():
                    channel.receive(inbox, buf)
        if len(inbox) <= frames_max:
            out = list(inbox)
            inbox.clear()
            return out
        out = [inbox.popleft() for _ in range(frames_max)]
        self._wakeup.signal()
        return out

    def _adopt(self) -> None:
        """Start reading the connections handshakes finished; stop reading closed ones and
        let go of their descriptors. Loop thread only (it alone touches the epoll)."""
        with self._lock:
            new, self._adopting = self._adopting, []
            gone, self._closing = self._closing, []
        for channel in new:
            if not channel.closed.is_set():
                self._epoll.register(channel.fd, select.EPOLLIN)
                self._reading[channel.fd] = channel
                channel.registered = True
        for channel in gone:
            if channel.registered:
                self._epoll.unregister(channel.fd)
                del self._reading[channel.fd]
                channel.registered = False
            channel.release()

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
        for conn in pending:
            conn.abort()
        self._close_channels()
        self._close_more()
        for t in list(self._threads):
            t.join(_JOIN_TIMEOUT_S)
        # A handshake that finished as we stopped may have registered one more.
        self._close_channels()
        self._adopt()
        self._epoll.close()
        self._wakeup.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _close_channels(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            channel.close("transport closing")
        for channel in channels:
            for t in channel.threads:
                t.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- for subclasses

    def _accept_identity(self, identity: int) -> bool:
        raise NotImplementedError

    def _register(self, established: Established, conn: SecureConnection) -> _Channel[B] | None:
        raise NotImplementedError

    def _channel_closed(self, channel: _Channel[B], started: bool) -> None:
        hand_to_loop = started and channel.loop_reads
        with self._lock:
            self._channels.pop(channel.channel_id, None)
            # Its writer is finishing now; close() joins it with the rest.
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.extend(channel.threads)
            if hand_to_loop:
                self._closing.append(channel)
        if hand_to_loop:
            self._wakeup.signal()

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
            _connection_log(self.port)(
                "connection_established",
                node=self.node,
                port=self.port,
                direction="inbound",
                peer=channel.peer,
                conn=channel.channel_id,
                remote=remote,
            )

    def _add_channel(self, channel: _Channel[B], channels_max: int | None = None) -> bool:
        """Track and start ``channel`` (and hand it to the loop if the loop reads it);
        False (and closed) if shutting down, at the limit, or closed meanwhile."""
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
        if not channel.start():
            return False
        if channel.loop_reads:
            with self._lock:
                self._adopting.append(channel)
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
    # Set when the peer has just connected to us (or we stop): the connector dials now
    # instead of waiting out its back-off. See PeerTransport._peer_called.
    redial: threading.Event = field(default_factory=threading.Event)


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
        peer.redial.set()  # the connector may be sleeping out a back-off: let it go
        peer.queue.clear()
        peer.queue.kick()
        for channel in (peer.outbound, peer.inbound):
            if channel is not None:
                channel.close("peer removed from the cluster")

    def peers(self) -> dict[NodeId, Address | None]:
        # list(): a handshake thread may add a peer it just heard meanwhile.
        return {n: p.address for n, p in list(self._peers.items())}

    # ------------------------------------------------------------------ the loop's API

    def send(self, dst: NodeId, msg: Message) -> bool:
        """Queue ``msg`` for ``dst`` and flush; never blocks. False if dropped at once.

        A True result is not delivery: Paxos assumes messages may be lost, and this
        transport loses them when a queue overflows or a connection drops.
        """
        return self.send_many(((dst, msg),)) == 1

    def send_many(self, messages: Iterable[tuple[NodeId, Message]]) -> int:
        """Queue several messages, then flush each peer once (one record per peer when
        they fit). A message object sent to several peers is encoded once."""
        sent = 0
        encoded: dict[int, tuple[Message, bytes]] = {}
        touched: dict[NodeId, tuple[_Peer, list[bytes]]] = {}
        for dst, msg in messages:
            peer = self._peers.get(dst)
            if peer is None:
                continue  # not (or no longer) a peer: lost, as Paxos allows
            key = id(msg)
            hit = encoded.get(key)
            if hit is None:
                # Keep msg alive with its bytes so its id cannot be reused meanwhile.
                hit = encoded[key] = (msg, self.codec.encode(self.node, msg))
            if self._admit(peer, msg, hit[1]):
                sent += 1
                entry = touched.get(dst)
                if entry is None:
                    touched[dst] = (peer, [hit[1]])
                else:
                    entry[1].append(hit[1])
        for peer, frames in touched.values():
            channel = peer.outbound
            if channel is not None and channel.write_now(frames):
                continue
            for frame in frames:
                self._put(peer, frame)
            # Read outbound again, AFTER queueing: the connector may have published a new
            # connection meanwhile and flushed the queue as it was before our frames went in
            # (it sets outbound, then looks at the queue; we fill the queue, then look at
            # outbound, so one of the two always sees the other). Flushing the channel read
            # before queueing would leave them queued on a live connection until the next
            # send. If there is no connection, the queue waits for the next one.
            channel = peer.outbound
            if channel is not None:
                channel.flush()
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
        for node, peer in list(self._peers.items()):  # see peers()
            s = replace(peer.stats)
            s.connected = peer.outbound is not None and not peer.outbound.closed.is_set()
            out[node] = s
        return out

    def queued(self, peer: NodeId) -> int:
        p = self._peers.get(peer)
        return 0 if p is None else len(p.queue)

    # -------------------------------------------------------------------- internals

    def _admit(self, peer: _Peer, msg: Message, frame: bytes) -> bool:
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
        return True

    def _put(self, peer: _Peer, frame: bytes) -> None:
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
            self,
            conn,
            established,
            None,
            peer.stats,
            next(self._channel_ids),
            "inbound",
            loop_reads=True,
        )
        with self._lock:
            previous = peer.inbound
            peer.inbound = channel
        if previous is not None:
            # The peer reconnected (e.g. it restarted); the old connection is dead or dying.
            previous.close("replaced by a newer connection from the same peer")
        self._peer_called(peer)
        return channel if self._add_channel(channel) else None

    def _peer_called(self, peer: _Peer) -> None:
        """The peer just connected to us, so it is up and reachable now: dial it at once
        instead of sleeping out a back-off that grew while it was down. A restarted follower
        that hears no leader for a second campaigns; the leader's heartbeats must reach it
        as soon as it is back, not after the leader's reconnect back-off."""
        peer.redial.set()

    def close(self) -> None:
        for peer in list(self._peers.values()):
            peer.redial.set()  # wake connectors sleeping out a back-off
        super().close()

    def _connect_loop(self, peer: _Peer) -> None:
        limits = self.limits
        delay_ms = float(limits.reconnect_delay_ms_min)
        while not self._stopping.is_set() and not peer.removed:
            channel = self._connect_once(peer)
            if channel is not None:
                # Connected: a call from the peer from now on (it restarted while this
                # connection was up) must cut the next back-off short, earlier ones need not.
                peer.redial.clear()
                if peer.removed:
                    channel.close("peer removed from the cluster")
                channel.watch(self._stopping)
                peer.stats.disconnects += 1
                lived_ms = (time.monotonic() - channel.opened_at) * 1000
                if lived_ms >= limits.reconnect_delay_ms_max:
                    # It worked for a while: this is a new failure, start the back-off over.
                    delay_ms = float(limits.reconnect_delay_ms_min)
            if self._stopping.is_set() or peer.removed:
                return
            # Full jitter in [delay/2, delay]: peers that lost each other at the same moment
            # do not retry in lockstep. The peer calling us ends the wait (and the back-off).
            if peer.redial.wait(delay_ms * self._rng.uniform(0.5, 1.0) / 1000):
                peer.redial.clear()
                delay_ms = float(limits.reconnect_delay_ms_min)
                continue
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
            loop_reads=False,
        )
        if not self._add_channel(channel):
            return None
        # Only now, started: the loop writes to the outbound channel it finds here.
        # Publish first, then look at the queue: send_many queues, then reads outbound.
        peer.outbound = channel
        if len(peer.queue):
            channel.flush()  # what was queued while the peer was away
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
        for peer in list(self._peers.values()):
            peer.queue.kick()
            if peer.thread is not None:
                peer.thread.join(_JOIN_TIMEOUT_S)


# -------------------------------------------------------------------------- client port


class ClientServer(_Endpoint[ClientBody]):
    """The client port of one node: its own key, its own label, its own listener.

    A client key cannot pass the authkey challenge on the peer port, and even when an
    operator uses one secret for both, the handshake label differs, so a client can never
    be taken for a peer. ``drain()`` yields ``(conn_id, body)``; answer with
    ``reply(conn_id, body)`` on the same connection, or with ``reply_many`` for a loop
    turn's worth (one record and one write per connection).
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
        # Ids of connections that closed since the loop last asked (closed_connections()),
        # bounded for a user that never asks (the oldest go first).
        self._closed_ids: deque[int] = deque(maxlen=CLOSED_IDS_MAX)

    def start(self) -> None:
        self._start_listening()

    def backlog(self, conn_id: int) -> int:
        """Frames queued for ``conn_id`` and not yet handed to its socket (a record the
        socket took only in part counts as one); 0 for a connection that is gone. A sender
        that must not lose frames (a watch) stops below ``send_queue_frames_max``, where the
        queue starts dropping the oldest."""
        channel = self._channels.get(conn_id)
        if channel is None or channel.queue is None:
            return 0
        return len(channel.queue) + (1 if channel.unsent else 0)

    def is_open(self, conn_id: int) -> bool:
        channel = self._channels.get(conn_id)
        return channel is not None and not channel.closed.is_set()

    def keep_every_frame(self, conn_id: int) -> None:
        """From now on ``conn_id`` is closed, with a logged reason, where its full send queue
        would drop a frame, whichever reply filled it: for a connection that carries a
        watch, whose client resumes after a close but cannot see a dropped frame. For
        good: the flag is not worth the bookkeeping of clearing it with the last watch."""
        channel = self._channels.get(conn_id)
        if channel is not None:
            channel.keep_every_frame = True

    def close_connection(self, conn_id: int, reason: str) -> None:
        """Close one client connection, logging ``reason`` (a client that does not read
        what it asked for: closing it is loud, dropping its frames would be silent)."""
        channel = self._channels.get(conn_id)
        if channel is not None:
            channel.close(reason, bad_peer=True)

    def closed_connections(self) -> list[int]:
        """The ids of the connections that closed since the last call (the loop forgets
        what it kept for them, e.g. their watches)."""
        with self._lock:
            out = list(self._closed_ids)
            self._closed_ids.clear()
        return out

    def _channel_closed(self, channel: _Channel[ClientBody], started: bool) -> None:
        super()._channel_closed(channel, started)
        if started:
            with self._lock:
                self._closed_ids.append(channel.channel_id)

    def drain(self, frames_max: int = DRAIN_FRAMES_MAX_DEFAULT) -> list[tuple[int, ClientBody]]:
        """Up to ``frames_max`` ``(conn_id, body)`` pairs from clients, oldest first."""
        out = [(ch.channel_id, body) for ch, body in self._drain_channels(frames_max)]
        self._stats.frames_received += len(out)
        return out

    def reply(self, conn_id: int, body: ClientBody) -> bool:
        """Send ``body`` on client connection ``conn_id``; False if it is gone or too big."""
        return self.reply_many(((conn_id, body),)) == 1

    def reply_many(self, replies: Iterable[tuple[int, ClientBody]]) -> int:
        """Queue every reply, then flush each connection once: the replies one connection
        gets in a loop turn leave as one record and one write. Returns how many were queued
        (a reply to a connection that is gone, or too big for a record, is dropped)."""
        codec = self.codec
        return self.send_frames(
            (conn_id, codec.encode(self.node, body)) for conn_id, body in replies
        )

    def send_frames(self, frames: Iterable[tuple[int, bytes]]) -> int:
        """As ``reply_many``, for frames already encoded (an envelope from this node, as
        ``FrameCodec.encode`` makes them): a sender that encodes shared parts once."""
        touched: dict[int, tuple[_Channel[ClientBody], list[bytes]]] = {}
        channels = self._channels
        codec = self.codec
        queued = 0
        for conn_id, frame in frames:
            entry = touched.get(conn_id)
            if entry is None:
                channel = channels.get(conn_id)
                if channel is None:
                    continue
                entry = touched[conn_id] = (channel, [])
            if not codec.fits(len(frame), 1):
                self._stats.dropped_oversize += 1
                continue
            entry[1].append(frame)
            queued += 1
        for channel, queued_frames in touched.values():
            queue = channel.queue
            assert queue is not None, "client connections are two-way"
            if channel.keep_every_frame and (
                len(queue) + (1 if channel.unsent else 0) + len(queued_frames) > queue.frames_max
            ):
                queued -= len(queued_frames)
                channel.close(
                    "the client does not read its replies (a connection with watches is "
                    "closed rather than lose a frame)",
                    bad_peer=True,
                )
                continue
            if not queued_frames or channel.write_now(queued_frames):
                continue
            for frame in queued_frames:
                queue.put(frame)
            channel.flush()
        return queued

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
            loop_reads=True,
        )
        added = self._add_channel(channel, self.limits.client_connections_max)
        return channel if added else None


class ClientConnection:
    """The client side of the client port: single-threaded, for paxosd.client.client.

    ``recv`` waits at most ``timeout_ms`` and returns every reply that arrived by then; it
    reads whatever the socket holds in one call (many replies when many requests are in
    flight) and keeps a record that is not complete yet for the next call. ``send`` blocks
    until the kernel took the record; ``io_timeout_ms`` (a kernel timeout) bounds that.
    """

    def __init__(
        self,
        sock: socket.socket,
        established: Established,
        client_id: int,
        codec: FrameCodec[ClientBody],
    ) -> None:
        self._sock = sock
        self._session = established.session
        self._codec = codec
        self._record_bytes_max = codec.frame_bytes_max + AEAD_TAG_BYTES
        self._rx = bytearray()
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self.client_id = client_id
        self.server_node = established.peer

    def fileno(self) -> int:
        """For a selector over several connections (a pipelining client)."""
        return self._sock.fileno()

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
            sock.setblocking(True)
            seconds, ms = divmod(io_timeout_ms, 1000)
            timeval = struct.pack("@ll", seconds, ms * 1000)  # struct timeval
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            # The handshake speaks through a Connection on a duplicate of the descriptor
            # (its deadline shuts the shared socket down); the socket object keeps the
            # connection afterwards, and is its only owner.
            conn = SecureConnection(os.dup(sock.fileno()))
        except OSError:
            sock.close()
            raise
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
            sock.close()
            raise
        finally:
            conn.close()
        return cls(sock, established, client_id, client_codec(frame_bytes_max))

    def send(self, *bodies: ClientBody) -> None:
        """Send ``bodies`` as one record (or as few as fit). Raises OSError if the
        connection is gone."""
        codec = self._codec
        frames = [codec.encode(self.client_id, b) for b in bodies]
        start = 0
        while start < len(frames):
            stop = start + 1
            size = len(frames[start])
            while stop < len(frames) and codec.fits(size + len(frames[stop]), stop - start + 1):
                size += len(frames[stop])
                stop += 1
            record = self._session.seal(codec.join(frames[start:stop]))
            self._sock.sendall(_LENGTH.pack(len(record)) + record)
            start = stop

    def recv(self, timeout_ms: int) -> list[ClientBody]:
        """Every reply that arrived, waiting at most ``timeout_ms`` for the first; [] if
        none did.

        Raises EOFError / OSError when the connection ends, BadFrame on a bad record
        (then close this connection).
        """
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            bodies = self._take()
            if bodies:
                return bodies
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0 or not self._poller.poll(left_ms):
                return []
            try:
                data = self._sock.recv(_READ_CHUNK_BYTES_MAX, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                raise EOFError("the server closed the connection")
            self._rx += data

    def read_available(self) -> list[ClientBody]:
        """One read without waiting: the replies of every record complete by now ([] if
        none). For a caller that polls many connections itself. Raises as ``recv``."""
        bodies = self._take()
        if bodies:
            return bodies
        try:
            data = self._sock.recv(_READ_CHUNK_BYTES_MAX, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        if not data:
            raise EOFError("the server closed the connection")
        self._rx += data
        return self._take()

    def _take(self) -> list[ClientBody]:
        rx = self._rx
        if len(rx) < 4:
            return []
        with memoryview(rx) as whole:
            bodies, used, refused = self._open(whole)
        del rx[:used]
        if refused:
            raise OSError("bad message length")
        return bodies

    def _open(self, data: memoryview) -> tuple[list[ClientBody], int, bool]:
        # Its own function so that every view into the buffer is gone when it returns
        # (the buffer cannot shrink while one lives).
        records, used, refused = split_records(data, self._record_bytes_max)
        bodies: list[ClientBody] = []
        for record in records:
            for envelope in self._codec.decode(self._session.open(record)):
                if envelope.src != self.server_node:
                    raise BadFrame(
                        f"reply from {envelope.src} on a connection to {self.server_node}"
                    )
                bodies.append(envelope.body)
        return bodies, used, refused

    def shutdown(self) -> None:
        """End the connection both ways without closing the descriptor: another thread
        waiting in ``recv`` wakes up (to EOF) and closes it. Safe from any thread."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()

    def __del__(self) -> None:
        # As multiprocessing's Connection did: a connection dropped without close() is
        # closed, quietly.
        self._sock.close()

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
