"""Benchmark: the watch hub's fan-out, against the same hub encoding every response on its own.

W watchers on one prefix (each on a connection of its own), E new events (puts applied to a
real StateMachine) delivered by one ``pump``, every response encoded into its client frame as
the daemon's sink does. The reference, measured in the same run on the same history, encodes
each response whole (``FrameCodec.encode``), the events once per watcher; the hub's sink
encodes each shared tuple of events once (``FrameEncoder``). Figures are per pump: the time a
loop turn spends on it, event deliveries per second and the ratio.
"""

from __future__ import annotations

import time
from typing import Any

from paxosd.net.framing import WatchCreate, WatchResponse, client_codec
from paxosd.server.watch import FrameEncoder, WatchHub, WatchLimits
from paxosd.statemachine.commands import Command, Put, encode_command
from paxosd.statemachine.machine import StateMachine

_HEADER = (1, 1)


class _Sink:
    """Encodes every response into a frame and counts the bytes; never slow."""

    def __init__(self, shared: bool) -> None:
        self.shared = shared
        self.encoder = FrameEncoder(1)
        self.codec = client_codec()
        self.bytes = 0

    def send(self, conn_id: int, responses: list[WatchResponse]) -> bool:
        for r in responses:
            frame = self.encoder.frame(r) if self.shared else self.codec.encode(1, r)
            self.bytes += len(frame)
        return True

    def backlog(self, conn_id: int) -> int:
        return 0


def _apply_puts(sm: StateMachine, events: int, value_bytes: int) -> None:
    value = b"x" * value_bytes
    for i in range(events):
        cmd = Command(client_id="bench", seq=i + 1, site="bench", op=Put(f"p/{i % 100}", value))
        sm.apply(i + 1, (encode_command(cmd),))


def _pump_once(watchers: int, events: int, value_bytes: int, shared: bool) -> tuple[float, int]:
    """Caught-up watchers, then ``events`` puts, then the one timed pump that delivers them."""
    sink = _Sink(shared)
    defaults = WatchLimits()
    limits = WatchLimits(
        watchers_per_node_max=max(watchers, defaults.watchers_per_node_max),
        synced_events_per_pump=max(events, defaults.synced_events_per_pump),
    )
    hub = WatchHub(sink, node=1, limits=limits)
    sm = StateMachine()
    for conn in range(watchers):
        hub.create(conn, WatchCreate(1, "p/", prefix=True), sm, _HEADER)
    hub.pump(sm, 0, _HEADER)
    _apply_puts(sm, events, value_bytes)
    started = time.perf_counter()
    hub.pump(sm, 1, _HEADER)
    seconds = time.perf_counter() - started
    stats = hub.stats()
    assert stats.events_sent == watchers * events and stats.catching_up == 0, stats
    return seconds, sink.bytes


def run_watch_bench(
    watchers: int, events: int, value_bytes: int = 100, repeats: int = 3
) -> dict[str, Any]:
    """The best of ``repeats`` pumps for each way of encoding (best: the least disturbed)."""
    out: dict[str, Any] = {"watchers": watchers, "events": events, "value_bytes": value_bytes}
    for name, shared in (("per_response", False), ("shared", True)):
        best = min(_pump_once(watchers, events, value_bytes, shared) for _ in range(repeats))
        seconds, encoded = best
        out[f"{name}_pump_ms"] = seconds * 1000
        out[f"{name}_deliveries_per_s"] = watchers * events / seconds
        out[f"{name}_encoded_bytes"] = encoded
    out["speedup"] = out["per_response_pump_ms"] / out["shared_pump_ms"]
    return out


__all__ = ["run_watch_bench"]
