"""Watches for a program: an iterator of batches of events that survives node failures.

A ``Watch`` holds one connection of its own to one member and one watch on it. When the
connection ends (the member restarted, was killed, or went away) it connects to any member
of the client's endpoint list and creates the watch again from the first revision it has not
delivered, so the caller sees every change once, in order, with no gap: the guarantees the
server keeps per connection (ordered, unique, complete) hold across the reconnection too
because the resume point is the client's own count of what it delivered.

A batch is one server response: whole revisions, never a revision split in two. A batch with
no events is a progress notification: every change up to its ``revision`` was delivered.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from paxosd.client.connection import CONNECT_TIMEOUT_MS, Lost, open_connection
from paxosd.client.errors import (
    BadRequestError,
    ClientError,
    CompactedError,
    UnavailableError,
)
from paxosd.client.routing import DOWN_S, Address, Backoff, Endpoint, Router
from paxosd.net.admin import Members
from paxosd.net.framing import BadFrame, QueryRequest, WatchCreate, WatchResponse
from paxosd.net.transport import ClientConnection
from paxosd.statemachine.commands import EVENT_TYPES, KEY_BYTES_MAX, Event

# One wait on the socket lasts at most this long, so that cancel() from another thread and
# the caller's own timeout are noticed promptly whatever the server does.
WAIT_SLICE_MS = 200
# The one watch on a Watch's own connection.
_WATCH_ID = 1
# A member that sent nothing for PING_AFTER_MS is asked a trivial question on the watch's
# connection; one that does not answer within PING_TIMEOUT_MS is taken for gone (stopped,
# hung, or cut off without a reset) and the watch resumes on another. A quiet key alone
# never looks like that: the member answers the question whatever its watchers do.
PING_AFTER_MS = 10_000
PING_TIMEOUT_MS = 5_000
_PING_ID = 1
# A member that refused to create the watch (a bound of its own, such as its number of
# watchers) is skipped this long while the watch tries the others.
REFUSED_DOWN_S = 1.0


class WatchCanceledError(ClientError):
    """The server ended the watch for a reason other than compaction (a revision too large
    to send; every member refused to create it, e.g. each has too many watchers);
    ``reason`` is the server's words."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the watch was canceled by the server: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One response of a watch: ``events`` in revision order (whole revisions).

    ``revision``: for events, the store revision the answering node had applied; for a
    progress batch (``progress``, no events), every change up to it has been delivered.
    ``node``: the member that sent it (it changes when the watch fails over).
    """

    events: tuple[Event, ...]
    revision: int
    progress: bool
    node: int


class Watch:
    """An iterator of ``WatchBatch``es on ``key`` (or every key under a prefix).

    Iterating blocks until the next batch; ``next_batch(timeout_ms)`` waits at most that long.
    ``cancel()`` (from any thread) ends the iteration. A compaction that overtakes the watch
    raises ``CompactedError`` with the compaction revision (resume from there with a new
    watch, after re-reading the state). ``UnavailableError`` when no member could be reached
    for ``timeout_ms`` in a row. An error comes only after every batch that arrived before
    it was returned, so a CompactedError's ``revision`` (the first one still needed) counts
    exactly what the caller was given.

    A member that refuses to create the watch for a reason of its own (too many watchers on
    it) is left for the next endpoint, as a member that is down; only when every endpoint
    refused in a row does the refusal end the watch (``WatchCanceledError``).
    """

    def __init__(
        self,
        endpoints: Sequence[Address],
        client_key: bytes,
        key: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        filters: Sequence[str] = (),
        timeout_ms: int = 5000,
        ping_after_ms: int = PING_AFTER_MS,
        ping_timeout_ms: int = PING_TIMEOUT_MS,
    ) -> None:
        _check_request(key, prefix, start_revision, filters)
        assert ping_after_ms > 0 and ping_timeout_ms > 0
        self.ping_after_ms = ping_after_ms
        self.ping_timeout_ms = ping_timeout_ms
        # When the member last sent anything, and when it was asked whether it is there.
        self._heard_at = 0.0
        self._pinged_at: float | None = None
        self.key = key
        self.prefix = prefix
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.filters = tuple(filters)
        self.timeout_ms = timeout_ms
        self._router = Router(endpoints)
        self._key = client_key
        self._conn_id = secrets.randbelow(1 << 31)
        # The first revision not yet delivered; None until the first created response of a
        # watch that started "from now".
        self.next_revision: int | None = start_revision if start_revision > 0 else None
        # The revision of the first created response: a watch from "now" starts after it.
        self.created_revision: int | None = None
        self.reconnects = 0
        self._conn: ClientConnection | None = None
        self._node = 0
        self._pending: deque[WatchBatch] = deque()
        # What ended the watch, raised once the batches that came before it were taken.
        self._error: ClientError | None = None
        # The endpoint of the current connection, and the refusals to create the watch since
        # the last member that created it: endpoint name -> the member's reason.
        self._ep: Endpoint | None = None
        self._refusals: dict[str, str] = {}
        # Since when no member could be reached (None while connected): the UnavailableError
        # deadline runs across next_batch calls, each of which waits only what it was given.
        self._unreachable_since: float | None = None
        self._lock = threading.Lock()
        self._canceled = threading.Event()
        self._done = False

    # ------------------------------------------------------------------ the caller's API

    def __iter__(self) -> Iterator[WatchBatch]:
        return self

    def __next__(self) -> WatchBatch:
        # Endless by request: a watch waits for changes; every wait inside is bounded. The
        # iteration has no deadline of its own, so a connection attempt gets its full time
        # (a handshake on a busy member may take longer than one slice).
        while True:
            batch = self._next_batch(WAIT_SLICE_MS, CONNECT_TIMEOUT_MS)
            if batch is not None:
                return batch
            if self._done:
                raise StopIteration

    def next_batch(self, timeout_ms: int) -> WatchBatch | None:
        """The next batch, or None if none came within ``timeout_ms`` (or the watch ended:
        see ``done``). Raises CompactedError, WatchCanceledError, UnavailableError.

        A connection attempt (after a failover) gets no more than what is left of
        ``timeout_ms``: a caller that waits less than a handshake takes keeps getting None
        until UnavailableError, so wait at least a second when the watch may need one."""
        return self._next_batch(timeout_ms, None)

    def _next_batch(self, timeout_ms: int, connect_ms: int | None) -> WatchBatch | None:
        """``next_batch``; ``connect_ms``: what a connection attempt may take (None: what
        is left of the wait)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not self._pending:
            self._raise_error()
            if self._canceled.is_set():
                self._finish()
                return None
            if self._done:
                return None
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return None
            self._receive(
                min(left_ms, WAIT_SLICE_MS), left_ms if connect_ms is None else connect_ms
            )
        return self._pending.popleft()

    def wait_created(self, timeout_ms: int) -> int:
        """Wait until the member has created the watch; its revision then (changes after it
        will be delivered). For "watch, then read": a read made after this cannot miss a
        change the watch will not report. UnavailableError after ``timeout_ms``."""
        deadline = time.monotonic() + timeout_ms / 1000
        while self.created_revision is None:
            self._raise_error()
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or self._done:
                raise UnavailableError(f"the watch was not created within {timeout_ms} ms")
            self._receive(min(left_ms, WAIT_SLICE_MS), left_ms)
        return self.created_revision

    @property
    def done(self) -> bool:
        """The watch ended (canceled); nothing more will come."""
        return self._done

    def cancel(self) -> None:
        """End the watch; safe from any thread. The iterator stops at its next step."""
        self._canceled.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.shutdown()  # wakes a reader waiting on the socket; the reader closes it

    def close(self) -> None:
        self.cancel()
        self._finish()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _raise_error(self) -> None:
        """Raise what ended the watch, once (then the watch is simply done)."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _end(self, error: ClientError) -> None:
        """The watch ended with ``error``: raised after the batches already pending."""
        self._finish()
        self._error = error

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            # The watch is the connection's only one: closing it cancels it on the server.
            conn.close()

    def _receive(self, wait_ms: int, connect_ms: int) -> None:
        """Read what arrives within ``wait_ms`` into pending, connecting first if needed
        (within ``connect_ms``)."""
        conn = self._conn if self._conn is not None else self._connect(connect_ms)
        if conn is None:
            return
        try:
            bodies = conn.recv(wait_ms)
            now = time.monotonic()
            if bodies:
                self._heard_at, self._pinged_at = now, None
            elif self._pinged_at is None:
                if now - self._heard_at >= self.ping_after_ms / 1000:
                    conn.send(QueryRequest(_PING_ID, Members()))
                    self._pinged_at = now
            elif now - self._pinged_at >= self.ping_timeout_ms / 1000:
                self._lost(f"node {self._node} did not answer within {self.ping_timeout_ms} ms")
                return
        except (OSError, EOFError, BadFrame) as e:
            self._lost(f"connection lost: {e}" if str(e) else "connection lost")
            return
        for body in bodies:
            if self._conn is not conn or self._done:
                break  # the watch left this connection (refused, or ended): the rest is old
            if isinstance(body, WatchResponse) and body.watch_id == _WATCH_ID:
                self._on_response(body)

    def _on_response(self, r: WatchResponse) -> None:
        if r.canceled:
            if self._canceled.is_set():
                return
            if r.compact_revision:
                self._end(
                    CompactedError(
                        f"the watch needs revision {self.next_revision}, compacted: the "
                        f"oldest revision kept is {r.compact_revision}",
                        r.compact_revision,
                        self.next_revision or 0,
                    )
                )
            elif r.created:
                self._refused(r.reason or "no reason given")
            else:
                self._end(WatchCanceledError(r.reason or "no reason given"))
            return
        if r.created:
            self._refusals.clear()
            if self.created_revision is None:
                self.created_revision = r.revision
            if self.next_revision is None:
                self.next_revision = r.revision + 1
            return
        if self.next_revision is None:
            return  # events before our created answer: not for this watch
        if r.progress and not r.events:
            if r.revision + 1 < self.next_revision:
                return  # a member behind what was delivered: old news
            self.next_revision = r.revision + 1
            self._push(WatchBatch((), r.revision, True, r.node))
            return
        # A resumed watch starts at next_revision, so nothing below it comes; keep it so.
        events = tuple(e for e in r.events if e.kv.mod_revision >= self.next_revision)
        if events:
            self.next_revision = events[-1].kv.mod_revision + 1
            self._push(WatchBatch(events, r.revision, False, r.node))

    def _push(self, batch: WatchBatch) -> None:
        # Bounded: the socket is read only when nothing is pending, and one read returns
        # the responses of at most one read chunk.
        self._pending.append(batch)

    def _refused(self, reason: str) -> None:
        """The member refused to create the watch ("created" and "canceled" at once). Its
        bounds are its own (watchers per node), and the client checked the request before
        sending it, so try the others; a refusal from every endpoint in a row ends it."""
        ep = self._ep
        name = ep.name if ep is not None else f"node {self._node}"
        self._refusals[name] = reason
        if all(e.name in self._refusals for e in self._router.endpoints):
            refusals = "; ".join(f"{n}: {why}" for n, why in self._refusals.items())
            self._end(WatchCanceledError(f"every member refused the watch ({refusals})"))
            return
        self._lost(f"refused the watch: {reason}", down_s=REFUSED_DOWN_S)

    def _connect(self, wait_ms: int) -> ClientConnection | None:
        """Connect to any member within ``wait_ms`` and create the watch from
        ``next_revision``; None when no member answered in that time (the caller's loop tries
        again). UnavailableError once none answered for ``timeout_ms`` in a row, counted
        across calls (``_unreachable_since``)."""
        router = self._router
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        deadline = self._unreachable_since + self.timeout_ms / 1000
        wait_until = min(deadline, now + max(1, wait_ms) / 1000)
        backoff = Backoff()
        router.forget_refusals()
        while not self._canceled.is_set():
            ep = router.pick()
            left_ms = int((wait_until - time.monotonic()) * 1000)
            if ep is not None and left_ms > 0:
                try:
                    conn = open_connection(
                        router,
                        ep,
                        self._key,
                        self._conn_id,
                        timeout_ms=min(CONNECT_TIMEOUT_MS, left_ms),
                    )
                    conn.send(self._create())
                except Lost:
                    ep = None
                except OSError as e:
                    router.failed(ep, f"connection lost: {e}")
                    ep = None
                else:
                    with self._lock:
                        self._conn = conn
                    if self._canceled.is_set():
                        self._finish()
                        return None
                    self._node = conn.server_node
                    self._ep = ep
                    self._unreachable_since = None
                    self._heard_at, self._pinged_at = time.monotonic(), None
                    return conn
            if not self.created_revision and router.all_refused():
                # Never connected and nothing listens: say so at once, as a command does (a
                # watch that ran before waits out the timeout: a member may be restarting).
                raise UnavailableError(
                    f"every endpoint refused the connection ({router.problems()})"
                )
            now = time.monotonic()
            if now >= deadline:
                raise UnavailableError(
                    f"the watch could not reach any member within {self.timeout_ms} ms "
                    f"({router.problems()})"
                )
            if now >= wait_until:
                return None  # the caller's wait is over; the deadline runs on
            time.sleep(min(backoff.next(), wait_until - now))
        return None

    def _create(self) -> WatchCreate:
        return WatchCreate(
            _WATCH_ID,
            self.key,
            prefix=self.prefix,
            start_revision=self.next_revision or 0,
            prev_kv=self.prev_kv,
            progress_notify=self.progress_notify,
            filters=self.filters,
        )

    def _lost(self, reason: str, *, down_s: float = DOWN_S) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._canceled.is_set():
            return
        for ep in self._router.endpoints:
            if ep.node_id == self._node:
                self._router.failed(ep, reason, down_s=down_s)
        self.reconnects += 1


def _check_request(key: str, prefix: bool, start_revision: int, filters: Sequence[str]) -> None:
    """What the server would refuse, refused here first with a BadRequestError."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequestError("the key is not valid UTF-8 text") from None
    if size > KEY_BYTES_MAX:
        raise BadRequestError(f"the key is {size} bytes, over {KEY_BYTES_MAX}")
    if size == 0 and not prefix:
        raise BadRequestError("the key is empty (watch every key with an empty prefix)")
    if start_revision < 0:
        raise BadRequestError(f"start revision {start_revision} is negative")
    for f in filters:
        if f not in EVENT_TYPES:
            raise BadRequestError(f"unknown event filter {f!r}: filters are {EVENT_TYPES}")


__all__ = ["Watch", "WatchBatch", "WatchCanceledError"]
