"""Many commands in flight from one thread: ``Session`` and ``Pipeline``.

Routing (which member, redirects, backoff) is ``paxosd.client.routing``'s, as for ``Client``;
what differs is that nothing here blocks: ``poll`` multiplexes every connection.
"""

from __future__ import annotations

import itertools
import secrets
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from paxosd.client.client import ATTEMPT_TIMEOUT_MS, TIMEOUT_MS_DEFAULT, encode, gave_up
from paxosd.client.connection import CONNECT_TIMEOUT_MS, Lost, open_connection
from paxosd.client.errors import AuthError, BadRequestError, ClientError
from paxosd.client.routing import UNAVAILABLE_S, Address, Endpoint, Router
from paxosd.net.framing import BadFrame, ClientReply, ClientRequest
from paxosd.net.transport import ClientConnection
from paxosd.statemachine.commands import BadCommand, Op, Result, decode_result

T = TypeVar("T")

# A pipeline sweeps its requests for timeouts this often (not per reply: that would be
# O(in flight) per reply).
_SWEEP_INTERVAL_S = 0.05
PIPELINE_IN_FLIGHT_MAX = 65_536
PIPELINE_LANES_MAX = 1024
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.5


class Session:
    """One logical client: its own ``client_id`` and ``seq``, so the session table answers
    its retries exactly once. At most one command of a session may be in flight, because
    the table remembers only a session's latest seq."""

    def __init__(self, *, site: str = "local", client_id: str | None = None) -> None:
        self.site = site
        self.client_id = client_id or secrets.token_hex(8)
        self._seq = 0

    def next_command(self, op: Op) -> bytes:
        """``op`` with this session's next seq, for ``Pipeline.submit``."""
        self._seq += 1
        return encode(self.client_id, self._seq, self.site, op)


@dataclass(slots=True)
class _Flight(Generic[T]):
    tag: T
    command: bytes
    lane: int
    deadline: float
    read: bool = False
    ep: Endpoint | None = None
    rid: int = 0
    sent_at: float = 0.0
    retry_at: float = 0.0
    backoff_s: float = BACKOFF_FIRST_S
    sent: bool = False


class Pipeline(Generic[T]):
    """Many commands in flight at once, from one thread, over ``lanes`` connections per
    member: what a load generator needs (``paxosd.lab.bench``), where a thread per request
    would measure the GIL instead of the cluster.

    ``submit(command, tag, lane)`` queues a command (from a ``Session``); ``poll`` sends
    everything queued (one record per connection), waits at most ``timeout_ms`` and returns
    ``(tag, result or ClientError)`` for each command that finished. Retries, redirects to
    the leader and fail-over follow the same routing policy as ``Client`` and re-send the
    same bytes, so a command is applied at most once. Not thread-safe.
    """

    def __init__(
        self,
        endpoints: Sequence[Address],
        client_key: bytes,
        *,
        lanes: int = 1,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
    ) -> None:
        if not 1 <= lanes <= PIPELINE_LANES_MAX:
            raise BadRequestError(f"lanes must be 1..{PIPELINE_LANES_MAX}")
        self._router = Router(endpoints)
        self._key = client_key
        self.lanes = lanes
        self.timeout_ms = timeout_ms
        self._conn_id = secrets.randbelow(1 << 31)
        self._request_ids = itertools.count(1)
        # (endpoint, lane) -> connection, and fd -> (endpoint, lane, connection).
        self._conns: dict[tuple[int, int], ClientConnection] = {}
        self._where: dict[int, tuple[Endpoint, int, ClientConnection]] = {}
        self._poller = select.poll()
        self._flights: dict[int, _Flight[T]] = {}
        self._waiting: list[_Flight[T]] = []
        self._outbox: dict[int, list[ClientRequest]] = {}
        self._done: list[tuple[T, Result | ClientError]] = []
        self._next_sweep = 0.0
        self._connect_quiet_until = 0.0

    def in_flight(self) -> int:
        """Commands submitted and not yet returned by ``poll``."""
        return len(self._flights) + len(self._waiting) + len(self._done)

    def submit(self, command: bytes, tag: T, lane: int = 0, *, read: bool = False) -> None:
        """Queue ``command``; ``read`` only changes what a failure says."""
        if self.in_flight() >= PIPELINE_IN_FLIGHT_MAX:
            raise BadRequestError(f"more than {PIPELINE_IN_FLIGHT_MAX} commands in flight")
        now = time.monotonic()
        flight = _Flight(tag, command, lane % self.lanes, now + self.timeout_ms / 1000, read)
        self._dispatch(flight, now)

    def poll(self, timeout_ms: int) -> list[tuple[T, Result | ClientError]]:
        now = time.monotonic()
        if self._waiting:
            self._retry_waiting(now)
        self._flush()
        if self._done:
            timeout_ms = 0
        elif self._waiting:
            soonest = min(f.retry_at for f in self._waiting)
            timeout_ms = max(0, min(timeout_ms, int((soonest - now) * 1000) + 1))
        for fd, _ in self._poller.poll(timeout_ms):
            where = self._where.get(fd)
            if where is None:
                continue
            ep, lane, conn = where
            try:
                bodies = conn.read_available()
            except (OSError, EOFError, BadFrame):
                self._lost(ep, lane, "connection lost")
                continue
            for body in bodies:
                if isinstance(body, ClientReply):
                    flight = self._flights.pop(body.request_id, None)
                    if flight is not None:
                        self._on_reply(flight, body, ep)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + _SWEEP_INTERVAL_S
        self._flush()  # re-sends decided above go out now, not a poll later
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._where.clear()

    def __enter__(self) -> Pipeline[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _on_reply(self, flight: _Flight[T], reply: ClientReply, ep: Endpoint) -> None:
        if reply.status == "ok":
            self._router.ok(ep)
            try:
                self._done.append((flight.tag, decode_result(reply.result)))
            except BadCommand as e:
                error = BadRequestError(f"undecodable result from the server: {e}")
                self._done.append((flight.tag, error))
            return
        if reply.status == "bad_request":
            message = reply.result.decode(errors="replace")
            self._done.append((flight.tag, BadRequestError(message)))
            return
        now = time.monotonic()
        if reply.status == "unavailable":
            # This member cannot serve anyone for a while (its disk is full): elsewhere.
            message = reply.result.decode(errors="replace")
            self._router.failed(ep, message, down_s=UNAVAILABLE_S)
            self._wait(flight, now)
            return
        # not_leader / busy: follow the hint, or back off and try elsewhere.
        if self._router.redirect(ep, reply.leader, reply.leader_address, self._connect_first):
            self._dispatch(flight, now)
            return
        self._wait(flight, now)

    def _wait(self, flight: _Flight[T], now: float) -> None:
        flight.retry_at = now + flight.backoff_s
        flight.backoff_s = min(flight.backoff_s * 2, BACKOFF_MAX_S)
        self._waiting.append(flight)

    def _retry_waiting(self, now: float) -> None:
        due = [f for f in self._waiting if f.retry_at <= now]
        if due:
            self._waiting = [f for f in self._waiting if f.retry_at > now]
            for flight in due:
                self._dispatch(flight, now)

    def _dispatch(self, flight: _Flight[T], now: float) -> None:
        if now >= flight.deadline:
            self._give_up(flight)
            return
        ep = self._router.pick(now)
        if ep is None:
            self._wait(flight, now)
            return
        # A new connection blocks while it is made: never past this command's deadline.
        left_ms = max(1, min(CONNECT_TIMEOUT_MS, int((flight.deadline - now) * 1000)))
        try:
            conn = self._connect(ep, flight.lane, left_ms)
        except AuthError as e:
            self._done.append((flight.tag, e))
            return
        except Lost:
            self._wait(flight, now)
            return
        rid = next(self._request_ids)
        flight.ep, flight.rid, flight.sent_at, flight.sent = ep, rid, now, True
        self._flights[rid] = flight
        self._outbox.setdefault(conn.fileno(), []).append(ClientRequest(rid, flight.command))

    def _give_up(self, flight: _Flight[T]) -> None:
        error = gave_up(
            self.timeout_ms,
            self._router.problems(),
            read=flight.read,
            sent=flight.sent,
            refused=False,
        )
        self._done.append((flight.tag, error))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for fd, requests in outbox.items():
            where = self._where.get(fd)
            if where is None:
                continue  # lost meanwhile; its flights were re-dispatched
            ep, lane, conn = where
            try:
                conn.send(*requests)
            except OSError as e:
                self._lost(ep, lane, f"connection lost: {e.strerror or 'send failed'}")

    def _sweep(self, now: float) -> None:
        """Attempts unanswered for ATTEMPT_TIMEOUT_MS go elsewhere; past their deadline,
        commands end with UnavailableError, sent or not (a reply that comes later is
        dropped: its command already has its outcome)."""
        attempt_s = ATTEMPT_TIMEOUT_MS / 1000
        expired = [f for f in self._flights.values() if now >= f.deadline]
        for flight in expired:
            del self._flights[flight.rid]
            self._give_up(flight)
        stale = [f for f in self._flights.values() if now - f.sent_at >= attempt_s]
        for flight in stale:
            del self._flights[flight.rid]
            if flight.ep is not None:
                self._router.failed(flight.ep, f"no answer in {ATTEMPT_TIMEOUT_MS} ms")
            self._dispatch(flight, now)
        late = [f for f in self._waiting if now >= f.deadline]
        if late:
            self._waiting = [f for f in self._waiting if now < f.deadline]
            for flight in late:
                self._give_up(flight)

    def _lost(self, ep: Endpoint, lane: int, problem: str) -> None:
        conn = self._conns.pop((id(ep), lane), None)
        if conn is not None:
            self._where.pop(conn.fileno(), None)
            self._poller.unregister(conn.fileno())
            self._outbox.pop(conn.fileno(), None)
            conn.close()
        self._router.failed(ep, problem)
        now = time.monotonic()
        orphans = [f for f in self._flights.values() if f.ep is ep and f.lane == lane]
        for flight in orphans:
            del self._flights[flight.rid]
            self._dispatch(flight, now)

    def _connect(
        self, ep: Endpoint, lane: int, timeout_ms: int = CONNECT_TIMEOUT_MS
    ) -> ClientConnection:
        conn = self._conns.get((id(ep), lane))
        if conn is not None:
            return conn
        started = time.monotonic()
        if started < self._connect_quiet_until:
            raise Lost("a connection attempt failed a moment ago")
        try:
            conn = open_connection(
                self._router, ep, self._key, self._conn_id, timeout_ms=timeout_ms
            )
        except (Lost, AuthError):
            # Connecting blocks every command of this pipeline: after a failed attempt, make
            # none (to any member) for as long as it took, so that at most about half of the
            # time goes to attempts, whatever the number of members and commands.
            now = time.monotonic()
            self._connect_quiet_until = now + (now - started)
            raise
        self._conns[(id(ep), lane)] = conn
        self._where[conn.fileno()] = (ep, lane, conn)
        self._poller.register(conn.fileno(), select.POLLIN)
        return conn

    def _connect_first(self, ep: Endpoint) -> None:
        self._connect(ep, 0)


__all__ = ["PIPELINE_IN_FLIGHT_MAX", "PIPELINE_LANES_MAX", "Pipeline", "Session"]
