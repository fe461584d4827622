"""Many leases kept alive from one thread: ``KeepAlives``.

A ``Lease`` keeps itself alive from a thread and a ``Client`` of its own, which is right for a
handful of leases and wrong for thousands (a thread and a connection per lease). A service
registry, or a proxy holding a lease per backend, holds thousands; etcd's client sends every
lease's keep-alive over one gRPC stream. ``KeepAlives`` does the same over a ``Pipeline``:
every lease's keep-alive goes out every TTL/3, the leases' turns spread evenly over that
period (so the leader sees a steady rate, not a burst every TTL/3), from one thread, over
``lanes`` connections per member, each paced below the leader's per-connection keep-alive
limit (README "Leases": 2,000 per second; more are answered "busy")::

    keeper = KeepAlives(endpoints, client_key, ttl=10)
    for lease_id in granted:
        keeper.add(lease_id)
    keeper.start()
    ...
    keeper.stop()
    assert not keeper.lost

A lease is *lost* (and no longer kept) under the same rule as ``Lease``: the leader says it
is gone or answers TTL 0, or no keep-alive was acknowledged for a whole TTL.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from paxosd.client.errors import ClientError
from paxosd.client.pipeline import PIPELINE_LANES_MAX, Pipeline, Session
from paxosd.client.routing import Address
from paxosd.statemachine.commands import LeaseKeepAlive, LeaseKept, LeaseNotFound

KEEPALIVES_LEASES_MAX: Final = 1_000_000
# At most this many keep-alives in flight: a leader that answers slowly slows the keeper
# instead of growing its queue.
KEEPALIVES_IN_FLIGHT_MAX: Final = 4096
# Keep-alives sent per second per connection, at most: under the leader's 2,000 (README
# "Leases"). Above it the leader answers "busy", the answers come back as retries, and after
# a stall (a starved machine, a failover) the retries alone could keep a connection over the
# limit for good, failing every keep-alive on it. ``lanes`` x this is the keeper's ceiling:
# 10,000 leases at TTL 10 s ask 3,000 per second.
KEEPALIVES_PER_SECOND_PER_LANE: Final = 1500
# Answer times kept for the percentiles (a ring: the latest ones).
LATENCIES_KEPT: Final = 100_000


@dataclass(slots=True)
class KeepAliveStats:
    """What the keeper did. ``late``: acknowledgements that came more than TTL/2 after the
    lease's previous one (half way from the schedule, TTL/3, to the expiry); ``failed``:
    keep-alives answered with an error (unavailable, busy past the time limit), each retried
    sooner; ``lost``: leases given up (see the module's docstring)."""

    sent: int = 0
    acked: int = 0
    late: int = 0
    failed: int = 0
    lost: int = 0
    max_gap_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def latency_ms(self, q: float) -> float | None:
        """The ``q`` quantile of the keep-alives' answer times (sent to acknowledged)."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class KeepAlives:
    """Keep many leases of one TTL alive from one thread over a ``Pipeline``.

    ``add`` leases (before or after ``start``), ``start()`` the thread, ``stop()`` it.
    ``lost`` maps each lost lease to the reason; ``stats`` counts the rest. Not for leases of
    several TTLs at once (make one keeper per TTL)."""

    def __init__(
        self,
        endpoints: Sequence[Address],
        client_key: bytes,
        ttl: int,
        *,
        lanes: int = 4,
        site: str = "keepalive",
    ) -> None:
        if ttl < 1:
            raise ValueError("ttl must be at least 1 s")
        if not 1 <= lanes <= PIPELINE_LANES_MAX:
            raise ValueError(f"lanes must be 1..{PIPELINE_LANES_MAX}")
        self.ttl = ttl
        self.period_s = ttl / 3
        self.lanes = lanes
        self.stats = KeepAliveStats()
        self.lost: dict[int, str] = {}
        self._endpoints = list(endpoints)
        self._key = client_key
        self._site = site
        self._guard = threading.Lock()
        self._added: list[int] = []
        self._sessions: dict[int, Session] = {}
        self._acked_at: dict[int, float] = {}  # when the lease's last ack came (for stats)
        # The lease lives a TTL from this: its grant's ask, then the send of its last
        # acknowledged keep-alive (the "lost" rule counts from here, never from an answer).
        self._alive_since: dict[int, float] = {}
        self._sent_at: dict[int, float] = {}
        self._due: list[tuple[float, int]] = []
        # (alive_since + ttl, lease): when each lease is lost unless acknowledged again, in
        # flight or not (stale entries, from before a later acknowledgement, are skipped).
        self._ends: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._rate = lanes * KEEPALIVES_PER_SECOND_PER_LANE
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._next_lane = 0
        self.cpu_s = 0.0  # the keeper thread's CPU time

    def add(self, lease_id: int, alive_since: float | None = None) -> None:
        """Keep ``lease_id`` alive from now on. ``alive_since``: a ``time.monotonic()`` from
        which the lease surely lives a TTL (when its grant was asked); now when not given."""
        with self._guard:
            if len(self._sessions) + len(self._added) >= KEEPALIVES_LEASES_MAX:
                raise ValueError(f"more than {KEEPALIVES_LEASES_MAX} leases")
            self._added.append(lease_id)
            self._alive_since[lease_id] = time.monotonic() if alive_since is None else alive_since

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="paxosd-keepalives", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop keeping; leases keep their TTL from their last keep-alive."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=self.period_s + 5)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> KeepAlives:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the thread

    def _take_added(self, now: float) -> None:
        with self._guard:
            added, self._added = self._added, []
        if not added:
            return
        # The new leases' first turns spread over one period from now.
        step = self.period_s / len(added)
        for i, lease_id in enumerate(added):
            self._sessions[lease_id] = Session(site=self._site)
            self._acked_at.setdefault(lease_id, self._alive_since[lease_id])
            heapq.heappush(self._due, (now + i * step, lease_id))
            heapq.heappush(self._ends, (self._alive_since[lease_id] + self.ttl, lease_id))

    def _run(self) -> None:
        started_cpu = time.thread_time()
        # A period per keep-alive (the Pipeline tries other members within it): one given up
        # sooner is sent again while the leader may still be working through the first,
        # which is what a starved leader can least afford; two periods still leave a third.
        timeout_ms = max(200, int(self.period_s * 1000))
        pipe: Pipeline[int] = Pipeline(
            self._endpoints, self._key, lanes=self.lanes, timeout_ms=timeout_ms
        )
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._take_added(now)
                self._send_due(pipe, now)
                wait_ms = 50
                if self._due and len(self._sent_at) < KEEPALIVES_IN_FLIGHT_MAX:
                    # Due now and paced: the next token comes within a few milliseconds.
                    due_ms = int((self._due[0][0] - now) * 1000)
                    wait_ms = max(2 if self._tokens < 1 else 0, min(wait_ms, due_ms))
                for lease_id, result in pipe.poll(wait_ms):
                    self._answered(lease_id, result, time.monotonic())
        except BaseException as e:  # reported by stop(): a keeper that died keeps nothing
            self._error = e
        finally:
            pipe.close()
            self.cpu_s = time.thread_time() - started_cpu

    def _send_due(self, pipe: Pipeline[int], now: float) -> None:
        ends = self._ends
        while ends and ends[0][0] <= now:
            end, lease_id = heapq.heappop(ends)
            if end == self._alive_since[lease_id] + self.ttl:
                self._lose(lease_id, f"no keep-alive of lease {lease_id:x} acknowledged for "
                           f"{self.ttl} s")  # fmt: skip
        due = self._due
        # A token bucket over all lanes (a tenth of a second's worth at most): lanes are
        # taken in turn, so each gets a lanes-th of the rate.
        self._tokens = min(self._rate / 10, self._tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now
        while (
            due
            and due[0][0] <= now
            and self._tokens >= 1
            and len(self._sent_at) < KEEPALIVES_IN_FLIGHT_MAX
        ):
            _, lease_id = heapq.heappop(due)
            if lease_id in self.lost or lease_id in self._sent_at:
                continue
            if now - self._alive_since[lease_id] >= self.ttl:
                self._lose(lease_id, f"no keep-alive of lease {lease_id:x} acknowledged for "
                           f"{self.ttl} s")  # fmt: skip
                continue
            command = self._sessions[lease_id].next_command(LeaseKeepAlive(lease_id=lease_id))
            self._sent_at[lease_id] = now
            pipe.submit(command, lease_id, lane=self._next_lane)
            self._next_lane = (self._next_lane + 1) % self.lanes
            self._tokens -= 1
            self.stats.sent += 1

    def _answered(self, lease_id: int, result: object, now: float) -> None:
        sent = self._sent_at.pop(lease_id, now)
        if isinstance(result, LeaseKept) and result.ttl > 0:
            gap = now - self._acked_at[lease_id]
            self.stats.acked += 1
            self.stats.max_gap_s = max(self.stats.max_gap_s, gap)
            if gap > self.ttl / 2:
                self.stats.late += 1
            self._acked_at[lease_id] = now
            # The leader counts the TTL from when the keep-alive reached it, as early as its
            # send: the answer's arrival is no lower bound.
            if sent > self._alive_since[lease_id]:
                self._alive_since[lease_id] = sent
                heapq.heappush(self._ends, (sent + self.ttl, lease_id))
            lat = self.stats.latencies_ms
            if len(lat) >= LATENCIES_KEPT:
                lat[self.stats.acked % LATENCIES_KEPT] = (now - sent) * 1000
            else:
                lat.append((now - sent) * 1000)
            # The next turn one period after this one's, so the spread stays even.
            heapq.heappush(self._due, (max(now, sent + self.period_s), lease_id))
            return
        if isinstance(result, LeaseNotFound | LeaseKept):
            self._lose(lease_id, f"lease {lease_id:x} expired or was revoked")
            return
        self.stats.failed += 1
        if not isinstance(result, ClientError):
            self._lose(lease_id, f"keep-alive of lease {lease_id:x} answered unexpectedly")
            return
        # Unavailable for now: try again soon; the TTL runs (checked when it is due).
        heapq.heappush(self._due, (now + self.period_s / 8, lease_id))

    def _lose(self, lease_id: int, reason: str) -> None:
        if lease_id not in self.lost:
            self.lost[lease_id] = reason
            self.stats.lost += 1


__all__ = [
    "KEEPALIVES_LEASES_MAX",
    "KEEPALIVES_PER_SECOND_PER_LANE",
    "KeepAliveStats",
    "KeepAlives",
]
