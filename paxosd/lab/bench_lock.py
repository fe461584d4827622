"""Lock round trips: N contenders acquire and release one lock in a closed loop.

Each contender is a thread with its own ``Client`` and one lease of its own (granted once and
kept alive, as etcd's ``concurrency.Session`` is), so a round trip is what a lock costs
by itself: the create transaction (with the queue read), the wait (a watch on the
predecessor, then a queue read) and the release (a fenced delete). The figure is whole
acquire+release round trips per second over the measured window, with the latency of
acquire (from asking to holding) as percentiles. Fencing tokens are checked on the way: every
holder's token must be higher than the previous holder's (a lower one is a violation and
ends the run with an error, not a figure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from paxosd.client.client import Client
from paxosd.client.routing import Address

CONTENDERS_MAX: Final = 256
DURATION_S_MAX: Final = 3600.0


@dataclass(frozen=True, slots=True)
class LockSpec:
    """What the bench does; ``ttl_s`` is each contender's lease TTL."""

    contenders: int = 16
    duration_s: float = 10.0
    warmup_s: float = 1.0
    ttl_s: int = 10
    name: str = "bench/lock"
    timeout_ms: int = 5000

    def __post_init__(self) -> None:
        if not 1 <= self.contenders <= CONTENDERS_MAX:
            raise ValueError(f"contenders must be 1..{CONTENDERS_MAX}")
        if not 0 < self.duration_s <= DURATION_S_MAX or not 0 <= self.warmup_s <= DURATION_S_MAX:
            raise ValueError(f"duration must be in (0, {DURATION_S_MAX}] s, warm-up >= 0")


class FencingViolation(Exception):
    """Two holders' tokens out of order: the lock did not serialize them."""


def _leases(client: Client) -> Any:
    """The client's lease calls (``lease_grant``, ``lease_keep_alive_once``,
    ``lease_revoke``), typed loosely so this module does not pin their result types."""
    return client


def _percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def run_lock_bench(spec: LockSpec, endpoints: Sequence[Address], key: bytes) -> dict[str, Any]:
    """Run the closed loop; the report (JSON-ready)."""
    start = time.monotonic()
    measure_from = start + spec.warmup_s
    stop_at = measure_from + spec.duration_s
    guard = threading.Lock()
    last_token = [0]
    latencies_ms: list[float] = []
    counted = [0]
    errors: list[str] = []

    def record(e: BaseException) -> None:
        with guard:
            errors.append(f"{type(e).__name__}: {e}")

    def contender() -> None:
        try:
            with Client(endpoints, key, timeout_ms=spec.timeout_ms) as c:
                lease = int(_leases(c).lease_grant(spec.ttl_s).id)
                try:
                    loop(c, lease)
                finally:
                    _leases(c).lease_revoke(lease)
        except Exception as e:  # reported, not raised: the other contenders finish
            record(e)

    def loop(c: Client, lease: int) -> None:
        keeper = threading.Event()

        def keep_alive() -> None:
            try:
                with c.clone() as k:
                    while not keeper.wait(spec.ttl_s / 3):
                        _leases(k).lease_keep_alive_once(lease)
            except Exception as e:
                record(e)

        kt = threading.Thread(target=keep_alive, daemon=True)
        kt.start()
        try:
            while time.monotonic() < stop_at:
                asked = time.monotonic()
                lock = c.lock(spec.name, ttl=None, lease=lease)
                token = lock.acquire()
                held = time.monotonic()
                with guard:
                    if token.revision <= last_token[0]:
                        errors.append(
                            f"token {token.revision} after token {last_token[0]}: "
                            "two holders at once"
                        )
                    last_token[0] = token.revision
                lock.release()
                if asked >= measure_from and time.monotonic() <= stop_at:
                    with guard:
                        counted[0] += 1
                        latencies_ms.append((held - asked) * 1000)
        finally:
            keeper.set()
            kt.join()

    threads = [threading.Thread(target=contender) for _ in range(spec.contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any("two holders" in e for e in errors):
        raise FencingViolation("; ".join(errors[:3]))
    ordered = sorted(latencies_ms)
    return {
        "workload": {
            "op": "lock",
            "contenders": spec.contenders,
            "duration_s": spec.duration_s,
            "warmup_s": spec.warmup_s,
            "ttl_s": spec.ttl_s,
        },
        "round_trips_s": counted[0] / spec.duration_s,
        "round_trips": counted[0],
        "acquire_ms": {
            "p50": _percentile(ordered, 0.50),
            "p90": _percentile(ordered, 0.90),
            "p99": _percentile(ordered, 0.99),
        },
        "errors": errors[:10],
    }


__all__ = ["FencingViolation", "LockSpec", "run_lock_bench"]
