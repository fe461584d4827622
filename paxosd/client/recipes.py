"""Locks and leader elections on leases, transactions and watches: etcd's ``concurrency``
package (and the ZooKeeper recipes), as client code over the public API.

A contender (a lock waiter, an election candidate) writes one key, ``NAME/<lease id hex>``,
attached to its lease, with a transaction that creates it only if it is absent. The key's
``create_revision`` is the contender's place in the queue: the store revision is one total
order, so places never tie. The holder (the leader) is the key with the smallest
create_revision; a contender waits by watching ONLY its predecessor (the key with the
largest create_revision below its own) for a DELETE, then looks again. One release wakes one
waiter, never all of them (no herd), and a waiter whose predecessor gave up early just
watches the next one.

The holder's create_revision is its fencing token: it only grows from one holder to the
next. A lock does not give mutual exclusion on its own: a holder can pause (GC, swap, a
stopped VM) past its lease's TTL, lose the lock while it is paused, and then act as if it
still held it. The resource must check the token: refuse a token lower than the highest
it has seen, or (for state in this store) write with a transaction that compares the lock
key's ``create_revision`` (``txn.create(token.key) == token.revision``). See README "Locks".

How a holder learns that it lost the lock: a lock that owns its lease (``ttl=...``, the
default) keeps it alive from a thread of its own every TTL/3; when the cluster says the
lease is gone, or no keep-alive was acknowledged for a whole TTL (the leader may have
expired it meanwhile), ``lock.lost`` is set, ``on_lost`` is called and ``token.check()``
raises ``LockLostError``. ``lock.is_held()`` asks the cluster (a linearizable read).

Bounds: a lock or election has at most ``CONTENDERS_MAX`` contenders (one scan page: the
queue is read in one linearizable scan); every wait is bounded by the caller's timeout or
by the session (a lease not kept alive ends the wait with ``LockLostError``).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from paxosd.client.errors import (
    BadRequestError,
    CompactedError,
    CompareFailedError,
    LeaseNotFoundError,
    NotFoundError,
    PaxosdError,
    UnavailableError,
)
from paxosd.client.lease import Lease
from paxosd.client.txn import create
from paxosd.statemachine.commands import (
    SCAN_LIMIT_MAX,
    Delete,
    Found,
    Get,
    KeyValue,
    Put,
    Row,
    Rows,
    Scan,
    TxnResult,
)

if TYPE_CHECKING:
    from paxosd.client.client import Client

T = TypeVar("T")

# One scan page holds the whole queue (see the module docstring).
CONTENDERS_MAX: Final = SCAN_LIMIT_MAX
# etcd's concurrency.Session default.
TTL_S_DEFAULT: Final = 60
# One wait on a watch lasts at most this long, so a lost session or a timeout is noticed.
WAIT_SLICE_MS: Final = 200
# Between attempts when the cluster is unavailable during a wait.
RETRY_S: Final = 0.2


class LockLostError(PaxosdError):
    """The lock (or the leadership) is gone: its lease expired or was revoked, or its key
    was deleted. Whatever the holder was doing under it must stop; the next holder may
    already be acting, with a higher fencing token."""


class LockTimeoutError(PaxosdError):
    """The lock (or the leadership) was not obtained within the timeout; this contender's
    key was removed, so it holds no place in the queue."""


class NotLeaderError(CompareFailedError):
    """``proclaim``/``resign`` by a candidate that is not (or no longer) the leader."""


class NoLeaderError(NotFoundError):
    """The election has no leader now (no candidate holds a key)."""


@dataclass(frozen=True, slots=True)
class LockToken:
    """What a holder has: ``key`` (``NAME/<lease hex>``), ``revision`` (the key's
    create_revision: the fencing token; higher for every later holder) and ``lease``.

    ``lost`` is set when the holder's session is gone; ``check()`` raises then."""

    key: str
    revision: int
    lease: int
    lost: threading.Event

    def check(self) -> None:
        """Raise ``LockLostError`` if the session holding this lock is known to be gone."""
        if self.lost.is_set():
            raise LockLostError(f"lock {self.key} (revision {self.revision}) was lost")


@dataclass(frozen=True, slots=True)
class Leader:
    """An election's leader: its ``key``, ``value`` (what it proclaimed), ``revision`` (its
    key's create_revision: the leadership's fencing token), ``mod_revision`` (the last
    proclaim), and the key's ``version`` and ``lease`` (0 where not read: a candidate's own
    answer from ``campaign``)."""

    key: str
    value: bytes
    revision: int
    mod_revision: int
    version: int = 0
    lease: int = 0


class _Session:
    """The lease a contender's key lives on (etcd's concurrency.Session): a ``Lease`` this
    session granted and keeps alive, or a lease id of the caller's (who keeps it alive), or
    none (``ttl_s`` None: the key stays until deleted, so a crashed holder keeps the lock
    forever; for tests and for callers that manage expiry themselves).

    ``lost`` is the kept lease's: set when the cluster says the lease is gone, or when no
    keep-alive was acknowledged for a whole TTL (see ``Lease``); from then on this session
    cannot claim to hold anything."""

    def __init__(
        self,
        client: Client,
        ttl_s: int | None,
        lease: int | None,
        on_lost: Callable[[str], None] | None,
    ) -> None:
        self.client = client
        self._kept: Lease | None = None
        if lease is not None:
            self.lease = lease
            self.name = f"{lease:x}"
            self.lost = threading.Event()
        elif ttl_s is None:
            self.lease = 0
            self.name = secrets.token_hex(8)
            self.lost = threading.Event()
        else:
            asked = time.monotonic()
            granted = client.lease_grant(ttl_s)
            self._kept = Lease(client, granted.id, granted.ttl, on_lost=on_lost, alive_since=asked)
            self._kept.start_keepalive()
            self.lease = granted.id
            self.name = f"{granted.id:x}"
            self.lost = self._kept.lost

    @property
    def reason(self) -> str:
        return self._kept.reason if self._kept is not None else ""

    def check(self, what: str) -> None:
        if self.lost.is_set():
            raise LockLostError(f"{what}: {self.reason}")

    def close(self) -> None:
        """Stop keeping the lease alive; revoke it when this session granted it (its keys go
        with it at once, rather than a TTL later)."""
        kept, self._kept = self._kept, None
        if kept is None:
            return
        kept.stop_keepalive()
        if not kept.lost.is_set():
            # Gone already, or unreachable: then it expires within its TTL.
            with contextlib.suppress(LeaseNotFoundError, UnavailableError):
                self.client.lease_revoke(kept.id)


class _Queue:
    """The part locks and elections share: a key in the queue under ``prefix`` and the wait
    for every contender ahead of it to go."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl_s: int | None,
        lease: int | None,
        on_lost: Callable[[str], None] | None,
    ) -> None:
        if not name or name.endswith("/"):
            raise BadRequestError(f"name {name!r} must be non-empty and not end with '/'")
        if ttl_s is not None and ttl_s <= 0:
            raise BadRequestError(f"ttl {ttl_s} must be a positive number of seconds")
        self.client = client
        self.name = name
        self.prefix = name + "/"
        self._ttl_s = ttl_s
        self._lease = lease
        self._on_lost = on_lost
        self._session: _Session | None = None
        self._canceled = threading.Event()
        self.key = ""
        self.revision = 0
        # Every key the last wait watched, in order (a test checks there is no herd).
        self.watched: list[str] = []

    @property
    def lost(self) -> threading.Event:
        """Set when the session (lease) under this contender's key is known to be gone."""
        return self._session.lost if self._session is not None else threading.Event()

    def lost_reason(self) -> str:
        """Why the session was lost ("" while it is not)."""
        return self._session.reason if self._session is not None else ""

    def cancel(self) -> None:
        """Stop a wait in another thread (``acquire``, ``campaign``): it raises
        ``LockTimeoutError`` within WAIT_SLICE_MS and leaves the queue."""
        self._canceled.set()

    def _check(self) -> None:
        assert self._session is not None
        self._session.check(f"waiting for {self.name}")
        if self._canceled.is_set():
            raise LockTimeoutError(f"{self.name}: the wait was canceled")

    def _enter(self, value: bytes, deadline: float | None) -> Rows:
        """Start the session and put this contender's key in the queue (or find it there:
        the same lease is the same contender, as in etcd); the queue as of that revision."""
        if self._session is None:
            self._session = _Session(self.client, self._ttl_s, self._lease, self._on_lost)
        session = self._session
        self.key = self.prefix + session.name
        self.watched = []  # this wait's only: one entry per predecessor it waited on
        queue = Scan(prefix=self.prefix, limit=CONTENDERS_MAX)
        # Retried as a whole while the cluster is unavailable: a first attempt that was
        # applied makes the compare fail the second time, and the failure branch then reads
        # the key it wrote, so the outcome is the same (etcd's design).
        result = self._retry(
            lambda: self.client.txn(
                compare=[create(self.key) == 0],
                success=[Put(key=self.key, value=value, lease=session.lease), queue],
                failure=[Get(key=self.key), queue],
            ),
            deadline,
        )
        first, rows = result.responses
        if result.succeeded:
            self.revision = result.revision
        else:
            assert isinstance(first, Found), first
            self.revision = first.create_revision
        assert isinstance(rows, Rows), rows
        return rows

    def _wait_turn(self, rows: Rows, deadline: float | None) -> None:
        """Until no key older than ours is left: watch only the predecessor for its DELETE,
        then read the queue again. ``rows``: the queue at some revision."""
        while True:
            self._check()
            if rows.more:
                raise BadRequestError(f"{self.name} has over {CONTENDERS_MAX} contenders")
            mine = [r for r in rows.rows if r.key == self.key]
            if not mine or mine[0].create_revision != self.revision:
                raise LockLostError(f"{self.key} was deleted while it waited for its turn")
            ahead = [r for r in rows.rows if r.create_revision < self.revision]
            if not ahead:
                return
            predecessor = max(ahead, key=lambda r: r.create_revision)
            self._wait_deleted(predecessor, rows.revision, deadline)
            rows = self._scan(deadline)

    def _scan(self, deadline: float | None) -> Rows:
        def scan() -> Rows:
            result = self.client.scan(self.prefix, CONTENDERS_MAX)
            assert isinstance(result, Rows), result
            return result

        return self._retry(scan, deadline)

    def _wait_deleted(self, row: Row, revision: int, deadline: float | None) -> None:
        """Until ``row``'s key is deleted after ``revision`` (it existed then)."""
        self.watched.append(row.key)
        watch = self.client.watch(row.key, start_revision=revision + 1)
        try:
            while True:
                self._check()
                slice_ms = WAIT_SLICE_MS
                if deadline is not None:
                    left_ms = int((deadline - time.monotonic()) * 1000)
                    if left_ms <= 0:
                        raise LockTimeoutError(f"{self.name}: not obtained in time")
                    slice_ms = min(slice_ms, left_ms)
                try:
                    batch = watch.next_batch(slice_ms)
                except CompactedError:
                    return  # its history is gone: read the queue again
                except UnavailableError:
                    return  # the watch could not reach a member for a while: look again
                if batch is not None and any(e.type == "DELETE" for e in batch.events):
                    return
        finally:
            watch.close()

    def _retry(self, call: Callable[[], T], deadline: float | None) -> T:
        """``call()``, again while the cluster is unavailable and time and the session
        last (a leader change takes an election timeout or two)."""
        while True:
            try:
                return call()
            except UnavailableError:
                self._check()
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_S)

    def _leave(self) -> None:
        """Delete our key if it is still ours, and end the session."""
        session, self._session = self._session, None
        try:
            if self.key and self.revision:
                self.client.txn(
                    compare=[create(self.key) == self.revision],
                    success=[Delete(key=self.key)],
                )
        finally:
            self.revision = 0
            if session is not None:
                session.close()

    def _still_mine(self) -> bool:
        if not self.revision:
            return False
        try:
            found = self.client.get(self.key)
        except NotFoundError:
            return False
        assert isinstance(found, Found)
        return found.create_revision == self.revision


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


class Lock(_Queue):
    """A distributed lock on a lease (etcd's concurrency.Mutex).

    Example::

        with client.lock("jobs/nightly", ttl=10) as token:
            # token.revision is the fencing token: pass it to what you change, and let
            # that refuse a lower one (or compare it in a transaction, as below).
            client.txn(
                compare=[txn.create(token.key) == token.revision],
                success=[txn.put("jobs/nightly/state", b"running")],
            )

    ``ttl``: the lease's TTL in seconds (the lock is released that long after its holder
    dies); ``lease``: a lease id of your own instead (you keep it alive; then ``lost`` is
    never set by this lock); ``timeout_s``: give up waiting after that long
    (``LockTimeoutError``); ``on_lost(reason)``: called from the keep-alive thread when the
    session is lost. Not reentrant; one ``Lock`` is held by one thread at a time.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl: int | None = TTL_S_DEFAULT,
        lease: int | None = None,
        timeout_s: float | None = None,
        value: bytes = b"",
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(client, name, ttl_s=ttl, lease=lease, on_lost=on_lost)
        self.timeout_s = timeout_s
        self.value = value
        self.token: LockToken | None = None

    def acquire(self, timeout_s: float | None = None) -> LockToken:
        """Wait until this contender holds the lock; its token. Raises ``LockTimeoutError``
        (after ``timeout_s``, default the lock's), ``LockLostError`` (the session ended
        while waiting), ``UnavailableError``; on any of them our key is removed."""
        if self.token is not None:
            raise BadRequestError(f"lock {self.key} is already held by this Lock")
        deadline = _deadline(self.timeout_s if timeout_s is None else timeout_s)
        try:
            rows = self._enter(self.value, deadline)
            self._wait_turn(rows, deadline)
        except BaseException:
            with contextlib.suppress(PaxosdError):  # else the lease removes it in a TTL
                self._leave()
            raise
        assert self._session is not None
        self.token = LockToken(self.key, self.revision, self._session.lease, self._session.lost)
        return self.token

    def release(self) -> None:
        """Delete our key (if it is still ours) and end the session: the next waiter's
        watch sees the DELETE."""
        self.token = None
        self._leave()

    def is_held(self) -> bool:
        """Whether our key is still in the store with our revision (a linearizable read).
        True does not survive a pause: use the fencing token for what matters."""
        return self.token is not None and not self.lost.is_set() and self._still_mine()

    def __enter__(self) -> LockToken:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Election(_Queue):
    """A leader election on a lease (etcd's concurrency.Election).

    Example::

        election = client.election("service/leader", ttl=10)
        election.campaign(b"node-a:8080")  # blocks until this candidate leads
        ...
        election.proclaim(b"node-a:9090")  # change what it announces, still leader
        election.resign()

        for leader in client.election("service/leader").observe():
            print(leader.value)  # each new leader (or proclaimed value), in order

    The leader is the candidate whose key has the smallest create_revision; candidates wait
    for their predecessor only, as lock waiters do. ``Leader.revision`` is the fencing token
    of a leadership.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl: int | None = TTL_S_DEFAULT,
        lease: int | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(client, name, ttl_s=ttl, lease=lease, on_lost=on_lost)
        self.value = b""

    @classmethod
    def resume(cls, client: Client, name: str, key: str, revision: int, lease: int) -> Election:
        """The candidate that holds ``key`` (created at ``revision``, on ``lease``), as a
        ``campaign`` elsewhere left it, for ``proclaim`` and ``resign`` (etcd's
        ResumeElection: how a stateless server acts for a leader it answered earlier). The
        lease stays the caller's to keep alive."""
        election = cls(client, name, ttl=None, lease=lease)
        election._session = _Session(client, None, lease, None)
        election.key = key
        election.revision = revision
        return election

    def campaign(self, value: bytes | str, timeout_s: float | None = None) -> Leader:
        """Stand with ``value`` and wait until this candidate leads; the leadership. A
        candidate already in the queue (the same lease) proclaims the new value. Raises
        ``LockTimeoutError``, ``LockLostError``, ``UnavailableError`` (and leaves the
        queue)."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        deadline = _deadline(timeout_s)
        try:
            rows = self._enter(data, deadline)
            self.value = data
            mine = [r for r in rows.rows if r.key == self.key]
            if mine and mine[0].value != data:
                self.proclaim(data)
            self._wait_turn(rows, deadline)
        except BaseException:
            with contextlib.suppress(PaxosdError):
                self._leave()
            raise
        return Leader(self.key, self.value, self.revision, self.revision)

    def proclaim(self, value: bytes | str) -> None:
        """Announce ``value`` as the leader's, without an election. ``NotLeaderError`` when
        this candidate's key is gone (or it never campaigned)."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        if not self.revision or self._session is None:
            raise NotLeaderError(f"{self.name}: not a candidate (campaign first)")
        result: TxnResult = self.client.txn(
            compare=[create(self.key) == self.revision],
            success=[Put(key=self.key, value=data, lease=self._session.lease)],
        )
        if not result.succeeded:
            raise NotLeaderError(f"{self.name}: {self.key} is no longer ours")
        self.value = data

    def resign(self) -> None:
        """Step down (or leave the queue): delete our key if it is still ours; the next
        candidate's watch sees the DELETE."""
        self._leave()

    def is_leader(self) -> bool:
        """Whether our key is the oldest in the queue now (a linearizable read)."""
        if not self.revision or self.lost.is_set():
            return False
        try:
            return self.leader().revision == self.revision
        except NoLeaderError:
            return False

    def leader(self) -> Leader:
        """The current leader (a linearizable read); ``NoLeaderError`` if there is none."""
        rows = self.client.scan(self.prefix, CONTENDERS_MAX)
        assert isinstance(rows, Rows)
        leader = _oldest(rows)
        if leader is None:
            raise NoLeaderError(f"election {self.name} has no leader")
        return leader

    def observe(self, *, stop: threading.Event | None = None) -> Iterator[Leader]:
        """Each leader as it changes (a new leader, or a new proclaimed value), starting
        with the current one, in revision order; waits while there is none. Ends when
        ``stop`` is set (checked every WAIT_SLICE_MS). Survives member failures (the watch
        resumes on any member from the next revision)."""
        stop = stop or threading.Event()
        shown: list[Leader | None] = [None]  # the last one yielded, across re-reads
        while not stop.is_set():
            rows = self.client.scan(self.prefix, CONTENDERS_MAX)
            assert isinstance(rows, Rows)
            if rows.more:
                raise BadRequestError(f"{self.name} has over {CONTENDERS_MAX} contenders")
            queue = {r.key: _leader_of(r) for r in rows.rows}
            try:
                yield from self._follow(queue, rows.revision, stop, shown)
            except CompactedError:
                continue  # read the queue again at the current revision

    def _follow(
        self,
        queue: dict[str, Leader],
        revision: int,
        stop: threading.Event,
        shown: list[Leader | None],
    ) -> Iterator[Leader]:
        with self.client.watch(self.prefix, prefix=True, start_revision=revision + 1) as watch:
            yield from _shown_if_new(queue, shown)
            while True:
                batch = None
                while batch is None:
                    if stop.is_set():
                        return
                    batch = watch.next_batch(WAIT_SLICE_MS)
                # One step per revision, not per batch: a batch holds every change since the
                # last read, and a proclaim it overtakes is still one the observer must see.
                events = batch.events
                for i, e in enumerate(events):
                    if e.type == "DELETE":
                        queue.pop(e.kv.key, None)
                    else:
                        queue[e.kv.key] = _leader_of(e.kv)
                    if i + 1 < len(events) and events[i + 1].revision == e.revision:
                        continue  # one transaction's changes are one step
                    yield from _shown_if_new(queue, shown)


def _shown_if_new(queue: dict[str, Leader], shown: list[Leader | None]) -> Iterator[Leader]:
    """The queue's leader if it is not the one shown last (then it becomes that one)."""
    leader = _oldest_of(queue)
    if leader is not None and leader != shown[0]:
        shown[0] = leader
        yield leader


def _leader_of(kv: Row | KeyValue) -> Leader:
    return Leader(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _oldest(rows: Rows) -> Leader | None:
    return _oldest_of({r.key: _leader_of(r) for r in rows.rows})


def _oldest_of(queue: dict[str, Leader]) -> Leader | None:
    if not queue:
        return None
    return min(queue.values(), key=lambda leader: leader.revision)


__all__ = [
    "CONTENDERS_MAX",
    "TTL_S_DEFAULT",
    "Election",
    "Leader",
    "Lock",
    "LockLostError",
    "LockTimeoutError",
    "LockToken",
    "NoLeaderError",
    "NotLeaderError",
]
