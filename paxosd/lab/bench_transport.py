"""Benchmark: the encrypted peer transport against plain ``send_bytes`` in the same run.

Both sides run in this process over TCP loopback, so the figures are a ratio, not a claim
about a network. The reference is the cheapest thing ``multiprocessing.connection`` can do:
``send_bytes``/``recv_bytes`` of the same encoded frame on a TCP ``Connection``, no crypto,
no decoding, no threads between the socket and the caller. The transport does everything
the daemon pays for: msgspec encode, batch, seal, a non-blocking write from the caller (the
writer thread only for what the socket buffer cannot take), the receiver's epoll, its own
record parsing, open, typed decode, src check.

- throughput: one thread sends frames as fast as the receiver takes them (pipelined);
  frames/s counted at the receiver. Batched: ``send_many`` of 256 frames at a time, as the
  daemon sends one Ready's messages (many frames per sealed record). Unbatched: one
  ``send`` per frame, the worst case (one seal, one record, one write per frame).
- round trip: one frame out, echoed by a thread playing the peer's loop; p50 and p99.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from paxosd.core.messages import Accept, Message
from paxosd.core.types import Ballot, DecidedEntry, NodeId
from paxosd.net.framing import peer_codec
from paxosd.net.transport import PeerTransport, TransportLimits

_A = NodeId(1)
_B = NodeId(2)
# The sender stops adding frames while this many wait in its queue, so the transport's
# drop-oldest policy never kicks in and every frame sent is a frame counted.
_QUEUE_HIGH_WATER_FRAMES = 2048
_SEND_CHUNK_FRAMES = 256
_WAIT_S = 1.0
_ROUND_TRIP_TIMEOUT_S = 5.0


def _message(frame_bytes: int, slot: int) -> Message:
    """An Accept whose envelope encodes to ``frame_bytes`` (or the smallest possible)."""
    codec = peer_codec()

    def make(payload_bytes: int) -> Message:
        entry = DecidedEntry(slot, (b"x" * payload_bytes,))
        return Accept(Ballot(1, int(_A)), (entry,), slot)

    payload = 0
    for _ in range(4):  # msgpack headers grow at 32/256/65536 bytes: converge in a few steps
        size = len(codec.encode(_A, make(payload)))
        payload = max(0, payload + frame_bytes - size)
    return make(payload)


def _plain_pair() -> tuple[Connection[Any, Any], Connection[Any, Any]]:
    """Two ends of one TCP loopback connection, tuned as the transport tunes its sockets."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
    for s in (client, accepted):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(True)
    return Connection(client.detach()), Connection(accepted.detach())


def _plain_throughput(frame: bytes, seconds: float) -> float:
    tx, rx = _plain_pair()
    stop = threading.Event()

    def sender() -> None:
        try:
            while not stop.is_set():
                for _ in range(_SEND_CHUNK_FRAMES):
                    tx.send_bytes(frame)
        except OSError:
            return  # the receiver closed: we are done

    t = threading.Thread(target=sender, name="bench-plain-sender", daemon=True)
    t.start()
    received = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(_SEND_CHUNK_FRAMES):
            rx.recv_bytes(len(frame))
        received += _SEND_CHUNK_FRAMES
    elapsed = time.perf_counter() - started
    stop.set()
    rx.close()
    t.join(_WAIT_S * 5)
    tx.close()
    return received / elapsed


def _plain_round_trips(frame: bytes, seconds: float) -> list[float]:
    a, b = _plain_pair()

    def echo() -> None:
        try:
            while True:
                b.send_bytes(b.recv_bytes(len(frame)))
        except (EOFError, OSError):
            return

    t = threading.Thread(target=echo, name="bench-plain-echo", daemon=True)
    t.start()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a.send_bytes(frame)
        a.recv_bytes(len(frame))
        samples.append(time.perf_counter() - started)
    a.close()
    t.join(_WAIT_S * 5)
    b.close()
    return samples


def _transport_pair(limits: TransportLimits) -> tuple[PeerTransport, PeerTransport]:
    key = os.urandom(32)
    a = PeerTransport(node=_A, listen=("127.0.0.1", 0), cluster_key=key, limits=limits)
    b = PeerTransport(node=_B, listen=("127.0.0.1", 0), cluster_key=key, limits=limits)
    a.start({_B: b.address})
    b.start({_A: a.address})
    deadline = time.monotonic() + 10 * _ROUND_TRIP_TIMEOUT_S
    while not (a.stats()[_B].connected and b.stats()[_A].connected):
        if time.monotonic() > deadline:
            raise RuntimeError("transport bench: peers did not connect")
        time.sleep(0.01)
    return a, b


def _transport_throughput(
    msg: Message, seconds: float, limits: TransportLimits, *, batched: bool
) -> dict[str, float]:
    """``batched``: send_many() of a chunk, as the daemon sends a Ready's messages; else one
    send() per frame, which writes (and seals) each frame on its own."""
    a, b = _transport_pair(limits)
    stop = threading.Event()
    chunk = [(_B, msg)] * _SEND_CHUNK_FRAMES

    def sender() -> None:
        while not stop.is_set():
            if a.queued(_B) > _QUEUE_HIGH_WATER_FRAMES:
                time.sleep(0.0002)
                continue
            if batched:
                a.send_many(chunk)
            else:
                for _ in range(_SEND_CHUNK_FRAMES):
                    a.send(_B, msg)

    t = threading.Thread(target=sender, name="bench-transport-sender", daemon=True)
    received = 0
    t.start()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        if wait(b.waitables(), _WAIT_S):
            received += len(b.drain())
    elapsed = time.perf_counter() - started
    stop.set()
    t.join(_WAIT_S * 5)
    stats = a.stats()[_B]
    a.close()
    b.close()
    return {
        "frames_per_s": received / elapsed,
        "frames_per_record": stats.frames_sent / max(1, stats.records_sent),
        "dropped": float(stats.dropped_queue_full + stats.lost_on_disconnect),
    }


def _transport_round_trips(msg: Message, seconds: float, limits: TransportLimits) -> list[float]:
    a, b = _transport_pair(limits)
    stop = threading.Event()

    def echo() -> None:  # plays node B's event loop
        while not stop.is_set():
            if wait(b.waitables(), 0.1):
                for src, m in b.drain():
                    b.send(src, m)

    t = threading.Thread(target=echo, name="bench-transport-echo", daemon=True)
    t.start()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a.send(_B, msg)
        got: list[tuple[NodeId, Message]] = []
        while not got:
            if not wait(a.waitables(), _ROUND_TRIP_TIMEOUT_S):
                raise RuntimeError("transport bench: a round trip timed out")
            got = a.drain()
        samples.append(time.perf_counter() - started)
    stop.set()
    t.join(_WAIT_S * 5)
    a.close()
    b.close()
    return samples


def _percentiles_us(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        only = samples[0] * 1e6 if samples else float("nan")
        return only, only
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1e6, cuts[98] * 1e6


def run_transport_bench(seconds: float, frame_bytes: int = 100) -> dict[str, float]:
    """Measure for about ``seconds`` in total; returns figures and ratios (transport/plain).

    ``throughput_ratio`` and ``round_trip_p50_ratio`` are >= 1 when the transport is at
    least as good as plain ``send_bytes`` (the latter is plain_p50 / transport_p50).
    """
    assert seconds > 0 and frame_bytes > 0
    phase_s = seconds / 5
    msg = _message(frame_bytes, slot=1)
    frame = peer_codec().encode(_A, msg)
    limits = TransportLimits(handshake_timeout_ms=10_000)

    plain_fps = _plain_throughput(frame, phase_s)
    transport = _transport_throughput(msg, phase_s, limits, batched=True)
    unbatched = _transport_throughput(msg, phase_s, limits, batched=False)
    plain_p50, plain_p99 = _percentiles_us(_plain_round_trips(frame, phase_s))
    transport_p50, transport_p99 = _percentiles_us(_transport_round_trips(msg, phase_s, limits))
    return {
        "frame_bytes": float(len(frame)),
        "plain_frames_per_s": plain_fps,
        "transport_frames_per_s": transport["frames_per_s"],
        "throughput_ratio": transport["frames_per_s"] / plain_fps,
        "transport_frames_per_record": transport["frames_per_record"],
        "transport_frames_dropped": transport["dropped"] + unbatched["dropped"],
        "transport_unbatched_frames_per_s": unbatched["frames_per_s"],
        "unbatched_throughput_ratio": unbatched["frames_per_s"] / plain_fps,
        "plain_round_trip_p50_us": plain_p50,
        "plain_round_trip_p99_us": plain_p99,
        "transport_round_trip_p50_us": transport_p50,
        "transport_round_trip_p99_us": transport_p99,
        "round_trip_p50_ratio": plain_p50 / transport_p50,
        "round_trip_p99_ratio": plain_p99 / transport_p99,
    }


if __name__ == "__main__":
    import json
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(json.dumps(run_transport_bench(8.0), indent=2))
