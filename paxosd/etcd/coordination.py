"""etcd's Lease, Lock (v3lockpb) and Election (v3electionpb) services over paxosd's leases
and its lock/election recipes.

Why the recipes of ``paxosd.client.recipes`` rather than a second copy: etcd's own Lock and
Election servers are clientv3's ``concurrency`` package run inside the server (a Mutex or
an Election on the caller's lease), and the recipes are that package's counterpart here,
with the same key layout (``NAME/<lease id hex>``, ordered by create_revision), so a lock
taken through this listener and one taken with ``paxosctl lock`` or a Python ``Lock`` on the
same name exclude each other.

As etcd's servers do, a Lock or Campaign never keeps the caller's lease alive (etcd's
session is "orphaned" at once): the caller does, with LeaseKeepAlive. A call given lease 0
gets a fresh lease of ``TTL_S_DEFAULT`` seconds that nobody keeps alive, as etcd's does.

Bounds: a waiting Lock or Campaign, a KeepAlive stream and an Observe stream each hold a
gRPC worker thread for their life, so there are at most ``HELD_CALLS_MAX`` of them (and
``HELD_CALLS_PER_PEER_MAX`` per client connection); with ``gateway.WATCH_STREAMS_MAX`` they
stay below ``serve.WORKERS``, so a unary call always finds a worker. A wait ends when its
RPC is cancelled or its deadline passes, or when its lease is gone (asked every
``LEASE_POLL_S``); a KeepAlive stream renews at most ``KEEPALIVE_LEASES_MAX`` leases.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc
import structlog

from paxosd.client.client import Client
from paxosd.client.errors import ClientError, LeaseNotFoundError
from paxosd.client.recipes import (
    TTL_S_DEFAULT,
    Election,
    Leader,
    Lock,
    LockLostError,
    LockTimeoutError,
    NoLeaderError,
    NotLeaderError,
)
from paxosd.etcd.gateway import (
    LEASE_NOT_FOUND,
    Abort,
    Backend,
    _aborting,
    _text,
    status_of,
)
from paxosd.etcd.proto import (
    kv_pb2,
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)
from paxosd.statemachine.commands import LEASE_ID_MAX, LEASE_TTL_S_MAX

log = structlog.get_logger("paxosd.etcd")

# Calls that hold a worker for long (see the module docstring): in all, and per connection.
HELD_CALLS_MAX: Final = 24
HELD_CALLS_PER_PEER_MAX: Final = 16
# Distinct leases one KeepAlive stream renews (clientv3 puts all of a client's on one).
KEEPALIVE_LEASES_MAX: Final = 10_000
# Threads (each with its own paxosd client) that renew the leases of every KeepAlive stream of
# this gateway: a stream of many leases is not one round trip after another.
KEEPALIVE_WORKERS: Final = 8
# Keep-alives one stream has asked and not had answered; past it, its reader waits.
KEEPALIVE_IN_FLIGHT_MAX: Final = 256
# How often a waiting Lock or Campaign asks whether its lease still exists.
LEASE_POLL_S: Final = 1.0
# etcd's words (clientv3/concurrency and v3election), which its clients match.
NOT_LEADER: Final = "election: not leader"
NO_LEADER: Final = "election: no leader"
MISSING_LEADER_KEY: Final = '"leader" field must be provided'
# etcd's Mutex when its own key is gone after the wait (clientv3/concurrency ErrSessionExpired).
SESSION_EXPIRED: Final = "mutex: session is expired"
CANCELED: Final = "etcdserver: the request was canceled"


class HeldCalls:
    """Counts the long-lived calls (waits and streams), in all and per gRPC peer (one peer
    is one client connection), and refuses one past either bound."""

    def __init__(self, total: int = HELD_CALLS_MAX, per_peer: int = HELD_CALLS_PER_PEER_MAX):
        self.total = total
        self.per_peer = per_peer
        self._lock = threading.Lock()
        self._by_peer: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, context: grpc.ServicerContext) -> Iterator[None]:
        peer = context.peer()
        with self._lock:
            held = sum(self._by_peer.values())
            mine = self._by_peer.get(peer, 0)
            refused = held >= self.total or mine >= self.per_peer
            if not refused:
                self._by_peer[peer] = mine + 1
        if refused:
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"etcdserver: too many waiting calls and streams (at most {self.per_peer} per "
                f"connection and {self.total} in all: keep-alives, locks, campaigns, observes)",
            )
        try:
            yield
        finally:
            with self._lock:
                left = self._by_peer[peer] - 1
                if left:
                    self._by_peer[peer] = left
                else:
                    del self._by_peer[peer]


def _mapped(e: ClientError) -> Abort:
    code, message = status_of(e)
    return Abort(code, message)


def _abort_in_stream(context: grpc.ServicerContext, e: Abort) -> None:
    context.abort(e.code, e.message)


# ---------------------------------------------------------------------------------- Lease

_Answer = rpc_pb2.LeaseKeepAliveResponse | Abort


class KeepAlivePool:
    """The KEEPALIVE_WORKERS threads that renew leases for every KeepAlive stream (started
    on first use). A stream hands a lease id and where to put the answer; each stream has at
    most KEEPALIVE_IN_FLIGHT_MAX ids handed and not answered, so the queue is bounded too."""

    def __init__(self, backend: Backend, workers: int = KEEPALIVE_WORKERS) -> None:
        self.b = backend
        self.workers = workers
        self._jobs: queue.Queue[tuple[int, Callable[[_Answer], None], threading.Event]] = (
            queue.Queue(HELD_CALLS_MAX * KEEPALIVE_IN_FLIGHT_MAX)
        )
        self._lock = threading.Lock()
        self._started = False

    def renew(
        self, lease_id: int, answer: Callable[[_Answer], None], closed: threading.Event
    ) -> None:
        """Renew ``lease_id`` and ``answer`` with the result, unless the stream that asked
        is ``closed`` by the time a worker gets to it."""
        with self._lock:
            if not self._started:
                self._started = True
                for i in range(self.workers):
                    threading.Thread(
                        target=self._run, name=f"etcd-keepalive-{i}", daemon=True
                    ).start()
        self._jobs.put((lease_id, answer, closed))

    def _run(self) -> None:
        while True:
            lease_id, answer, closed = self._jobs.get()
            if closed.is_set():
                # Nobody reads the answer, and its client may have ended the stream to let
                # the lease lapse; renewing anyway would also delay the open streams'.
                continue
            try:
                result = self._renew(lease_id)
            except Exception:  # a bug here must not cost the gateway a worker
                log.exception("keep-alive failed", lease=lease_id)
                result = Abort(
                    grpc.StatusCode.INTERNAL,
                    "etcdserver: keep-alive failed (see the gateway's log)",
                )
            answer(result)

    def _renew(self, lease_id: int) -> _Answer:
        c = self.b.client()  # this worker thread's own
        try:
            ttl = c.lease_keep_alive_once(lease_id) if lease_id > 0 else 0
        except LeaseNotFoundError:
            ttl = 0
        except ClientError as e:
            return _mapped(e)
        return rpc_pb2.LeaseKeepAliveResponse(
            header=self.b.header(c.last_header), ID=lease_id, TTL=ttl
        )


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    """Grant, revoke, keep-alive, time-to-live and list, each one paxosd lease request."""

    def __init__(self, backend: Backend, held: HeldCalls) -> None:
        self.b = backend
        self.held = held
        self.pool = KeepAlivePool(backend)

    @_aborting
    def LeaseGrant(  # noqa: N802
        self, request: rpc_pb2.LeaseGrantRequest, context: Any
    ) -> rpc_pb2.LeaseGrantResponse:
        """ID 0: the cluster picks the next free id; another id is granted as asked, or
        refused with etcd's "lease already exists" when it is taken."""
        if request.TTL > LEASE_TTL_S_MAX:
            raise Abort(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
        if request.ID < 0 or request.ID > LEASE_ID_MAX:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease ID must be >= 0")
        ttl, lease_id = request.TTL, request.ID
        granted, h = self.b.call(lambda c: c.lease_grant(ttl, lease_id))
        return rpc_pb2.LeaseGrantResponse(
            header=self.b.header(h, granted.revision), ID=granted.id, TTL=granted.ttl
        )

    @_aborting
    def LeaseRevoke(  # noqa: N802
        self, request: rpc_pb2.LeaseRevokeRequest, context: Any
    ) -> rpc_pb2.LeaseRevokeResponse:
        if request.ID <= 0:
            raise Abort(grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND)
        lease_id = request.ID
        revoked, h = self.b.call(lambda c: c.lease_revoke(lease_id))
        return rpc_pb2.LeaseRevokeResponse(header=self.b.header(h, revoked.revision))

    @_aborting
    def LeaseTimeToLive(  # noqa: N802
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: Any
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        """A lease that does not exist is answered with TTL -1, as etcd does (etcdctl prints
        "already expired"), not with an error."""
        lease_id, keys = request.ID, request.keys
        try:
            if lease_id <= 0:
                raise LeaseNotFoundError(LEASE_NOT_FOUND, lease_id)
            info = self.b.client().lease_time_to_live(lease_id, keys=keys)
        except LeaseNotFoundError:
            return rpc_pb2.LeaseTimeToLiveResponse(
                header=self.b.header(self.b.client().last_header), ID=lease_id, TTL=-1
            )
        except ClientError as e:
            raise _mapped(e) from None
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=self.b.header(self.b.client().last_header, info.revision),
            ID=info.id,
            TTL=info.ttl,
            grantedTTL=info.granted_ttl,
            keys=[k.encode() for k in info.keys],
        )

    @_aborting
    def LeaseLeases(  # noqa: N802
        self, request: rpc_pb2.LeaseLeasesRequest, context: Any
    ) -> rpc_pb2.LeaseLeasesResponse:
        ids, h = self.b.call(lambda c: c.leases())
        return rpc_pb2.LeaseLeasesResponse(
            header=self.b.header(h), leases=[rpc_pb2.LeaseStatus(ID=i) for i in ids]
        )

    def LeaseKeepAlive(  # noqa: N802
        self,
        request_iterator: Iterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[rpc_pb2.LeaseKeepAliveResponse]:
        """One answer per request, on the leader's clock, renewed by the gateway's
        keep-alive workers (so answers to different leases may come in another order than
        asked, which etcd clients allow: each names its lease). A lease that does not exist is
        answered with TTL 0 (etcd's way: the client then knows it expired); past
        KEEPALIVE_LEASES_MAX distinct leases the stream is ended with RESOURCE_EXHAUSTED."""
        try:
            with self.held.hold(context):
                yield from self._keep_alive(request_iterator, context.is_active)
        except Abort as e:
            _abort_in_stream(context, e)

    def _keep_alive(
        self,
        requests: Iterator[rpc_pb2.LeaseKeepAliveRequest],
        active: Callable[[], bool] = lambda: True,
    ) -> Iterator[rpc_pb2.LeaseKeepAliveResponse]:
        # Answers, an Abort, or None once the reader has handed its last request. Bounded by
        # the window: at most KEEPALIVE_IN_FLIGHT_MAX answers, plus one Abort and one None.
        out: queue.Queue[_Answer | None] = queue.Queue()
        window = threading.BoundedSemaphore(KEEPALIVE_IN_FLIGHT_MAX)
        closed = threading.Event()
        handed = [0]

        def read() -> None:
            seen: set[int] = set()
            try:
                for req in requests:
                    if req.ID not in seen:
                        if len(seen) >= KEEPALIVE_LEASES_MAX:
                            out.put(
                                Abort(
                                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"etcdserver: at most {KEEPALIVE_LEASES_MAX} leases per "
                                    "keep-alive stream; open another stream",
                                )
                            )
                            return
                        seen.add(req.ID)
                    while not window.acquire(timeout=0.2):
                        if closed.is_set():
                            return
                    handed[0] += 1
                    self.pool.renew(req.ID, out.put, closed)
            except grpc.RpcError:
                pass  # the client went away
            finally:
                out.put(None)

        threading.Thread(target=read, name="etcd-keepalive-stream", daemon=True).start()
        answered = 0
        read_all = False
        try:
            while not (read_all and answered == handed[0]):
                try:
                    item = out.get(timeout=0.5)
                except queue.Empty:
                    if not active():
                        return
                    continue
                if item is None:
                    read_all = True
                    continue
                if isinstance(item, Abort):
                    raise item
                window.release()
                answered += 1
                yield item
        finally:
            closed.set()


# ---------------------------------------------------------------------------------- waits


class _LeaseWatch:
    """While a Lock or Campaign waits: asks every LEASE_POLL_S (on a client of its own)
    whether the lease still exists, and when the cluster says it does not, sets ``gone``
    and calls ``on_gone`` (which cancels the wait)."""

    def __init__(self, client: Client, lease_id: int, on_gone: Callable[[], None]) -> None:
        self.gone = threading.Event()
        self._stop = threading.Event()
        self._client = client.clone()
        self._lease_id = lease_id
        self._on_gone = on_gone
        self._thread = threading.Thread(
            target=self._run, name=f"etcd-lease-watch-{lease_id:x}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(LEASE_POLL_S):
                try:
                    self._client.lease_time_to_live(self._lease_id)
                except LeaseNotFoundError:
                    self.gone.set()
                    self._on_gone()
                    return
                except ClientError:
                    continue  # unavailable for now: the lease's own expiry decides
        finally:
            self._client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._client.timeout_ms / 1000 + 1)


def _lease_for(c: Client, lease_id: int) -> int:
    """The caller's lease, or for 0 a fresh one nobody keeps alive (etcd's server does so:
    its session grants one of the default TTL and orphans it)."""
    if lease_id < 0:
        raise Abort(grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND)
    if lease_id:
        return lease_id
    try:
        return c.lease_grant(TTL_S_DEFAULT).id
    except ClientError as e:
        raise _mapped(e) from None


def _name(raw: bytes, what: str) -> str:
    try:
        name = _text(raw, what)
    except ClientError as e:
        raise _mapped(e) from None
    if not name or name.endswith("/"):
        raise Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"etcdserver: a {what} must be non-empty and not end with '/'",
        )
    return name


def _on_end(context: grpc.ServicerContext, fn: Callable[[], None]) -> None:
    """Call ``fn`` when the RPC ends, or now if it has ended already: gRPC's add_callback
    registers nothing for an RPC that is over (it returns False), and a wait nobody ends
    holds its worker, its held-call slot and, once won, the lock for a caller who is gone."""
    if not context.add_callback(fn):
        fn()


def _wait(
    context: grpc.ServicerContext,
    c: Client,
    lease_id: int,
    cancel: Callable[[], None],
    wait: Callable[[float | None], Leader | str],
    undo: Callable[[], None],
) -> Leader | str:
    """Run a Lock's or Campaign's wait, ended early by the RPC's cancel or deadline or by
    the lease's end; each end answered with etcd's status. A wait won when the RPC is
    already over is undone (``undo``: unlock, resign): its caller never learns the key, so
    nobody would give it back, and on a lease the caller keeps alive it would stay forever."""
    watch = _LeaseWatch(c, lease_id, cancel)
    _on_end(context, cancel)
    try:
        got = wait(context.time_remaining())
    except (LockTimeoutError, LockLostError) as e:
        if watch.gone.is_set() or not _lease_exists(c, lease_id):
            raise Abort(grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND) from None
        if not context.is_active():
            raise Abort(grpc.StatusCode.CANCELLED, CANCELED) from None
        if isinstance(e, LockLostError):
            # Our key was deleted while the lease lives (an Unlock or delete from elsewhere):
            # etcd's Mutex finds its key gone and says the session expired.
            raise Abort(grpc.StatusCode.UNKNOWN, SESSION_EXPIRED) from None
        raise Abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "etcdserver: context deadline exceeded"
        ) from None
    except ClientError as e:
        raise _mapped(e) from None
    finally:
        watch.stop()
    if not context.is_active():
        with contextlib.suppress(ClientError):  # else the lease's end removes the key
            undo()
        raise Abort(grpc.StatusCode.CANCELLED, CANCELED)
    return got


def _lease_exists(c: Client, lease_id: int) -> bool:
    try:
        c.lease_time_to_live(lease_id)
    except LeaseNotFoundError:
        return False
    except ClientError:
        return True
    return True


# ---------------------------------------------------------------------------------- Lock


class LockService(v3lock_pb2_grpc.LockServicer):
    """etcd's v3lock: Lock is a ``recipes.Lock`` on the caller's lease (key
    ``NAME/<lease hex>``, waiting for every older key under ``NAME/`` to go); Unlock deletes
    the key Lock returned."""

    def __init__(self, backend: Backend, held: HeldCalls) -> None:
        self.b = backend
        self.held = held

    @_aborting
    def Lock(self, request: v3lock_pb2.LockRequest, context: Any) -> v3lock_pb2.LockResponse:  # noqa: N802
        name = _name(request.name, "lock name")
        with self.held.hold(context):
            c = self.b.client()
            lease_id = _lease_for(c, request.lease)
            lock = Lock(c, name, ttl=None, lease=lease_id)

            def acquire(timeout_s: float | None) -> str:
                return lock.acquire(timeout_s).key

            key = _wait(context, c, lease_id, lock.cancel, acquire, lock.release)
            assert isinstance(key, str)
            return v3lock_pb2.LockResponse(header=self.b.header(c.last_header), key=key.encode())

    @_aborting
    def Unlock(  # noqa: N802
        self, request: v3lock_pb2.UnlockRequest, context: Any
    ) -> v3lock_pb2.UnlockResponse:
        """Deletes the key (etcd's Unlock is a plain delete: a key already gone is fine)."""
        try:
            key = _text(request.key, "lock key")
        except ClientError as e:
            raise _mapped(e) from None
        if not key:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: the lock key is empty")
        try:
            _, h = self.b.call(lambda c: c.delete(key))
        except Abort as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise
            h = self.b.client().last_header
        return v3lock_pb2.UnlockResponse(header=self.b.header(h))


# ---------------------------------------------------------------------------------- Election


def _leader_kv(leader: Leader) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=leader.key.encode(),
        value=leader.value,
        create_revision=leader.revision,
        mod_revision=leader.mod_revision,
        version=leader.version,
        lease=leader.lease,
    )


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    """etcd's v3election: Campaign is a ``recipes.Election`` campaign on the caller's
    lease; Proclaim and Resign resume the leadership the LeaderKey names (a transaction
    guarded by its key's create_revision, as etcd's); Leader and Observe read and follow the
    oldest key under ``NAME/``."""

    def __init__(self, backend: Backend, held: HeldCalls) -> None:
        self.b = backend
        self.held = held

    @_aborting
    def Campaign(  # noqa: N802
        self, request: v3election_pb2.CampaignRequest, context: Any
    ) -> v3election_pb2.CampaignResponse:
        name = _name(request.name, "election name")
        with self.held.hold(context):
            c = self.b.client()
            lease_id = _lease_for(c, request.lease)
            election = Election(c, name, ttl=None, lease=lease_id)
            value = request.value

            def campaign(timeout_s: float | None) -> Leader:
                return election.campaign(value, timeout_s)

            leader = _wait(context, c, lease_id, election.cancel, campaign, election.resign)
            assert isinstance(leader, Leader)
            return v3election_pb2.CampaignResponse(
                header=self.b.header(c.last_header),
                leader=v3election_pb2.LeaderKey(
                    name=request.name, key=leader.key.encode(), rev=leader.revision, lease=lease_id
                ),
            )

    def _resumed(self, leader: v3election_pb2.LeaderKey) -> Election:
        name = _name(leader.name, "election name")
        key = _name(leader.key, "leader key")
        return Election.resume(self.b.client(), name, key, leader.rev, leader.lease)

    @_aborting
    def Proclaim(  # noqa: N802
        self, request: v3election_pb2.ProclaimRequest, context: Any
    ) -> v3election_pb2.ProclaimResponse:
        if not request.HasField("leader"):
            raise Abort(grpc.StatusCode.UNKNOWN, MISSING_LEADER_KEY)
        election = self._resumed(request.leader)
        try:
            election.proclaim(request.value)
        except NotLeaderError:
            raise Abort(grpc.StatusCode.UNKNOWN, NOT_LEADER) from None
        except ClientError as e:
            raise _mapped(e) from None
        return v3election_pb2.ProclaimResponse(header=self.b.header(self.b.client().last_header))

    @_aborting
    def Resign(  # noqa: N802
        self, request: v3election_pb2.ResignRequest, context: Any
    ) -> v3election_pb2.ResignResponse:
        """Deletes the leader key if it is still that leadership's (etcd: resigning a
        leadership already gone is not an error)."""
        if not request.HasField("leader"):
            raise Abort(grpc.StatusCode.UNKNOWN, MISSING_LEADER_KEY)
        election = self._resumed(request.leader)
        try:
            election.resign()
        except ClientError as e:
            raise _mapped(e) from None
        return v3election_pb2.ResignResponse(header=self.b.header(self.b.client().last_header))

    @_aborting
    def Leader(  # noqa: N802
        self, request: v3election_pb2.LeaderRequest, context: Any
    ) -> v3election_pb2.LeaderResponse:
        name = _name(request.name, "election name")
        c = self.b.client()
        try:
            leader = Election(c, name, ttl=None).leader()
        except NoLeaderError:
            raise Abort(grpc.StatusCode.UNKNOWN, NO_LEADER) from None
        except ClientError as e:
            raise _mapped(e) from None
        return v3election_pb2.LeaderResponse(
            header=self.b.header(c.last_header), kv=_leader_kv(leader)
        )

    def Observe(  # noqa: N802
        self, request: v3election_pb2.LeaderRequest, context: grpc.ServicerContext
    ) -> Iterator[v3election_pb2.LeaderResponse]:
        """Each leader and each proclaimed value, in revision order, starting with the
        current leader; waits while there is none. Ends when the client cancels."""
        try:
            name = _name(request.name, "election name")
            with self.held.hold(context):
                stop = threading.Event()
                _on_end(context, stop.set)
                c = self.b.client()
                try:
                    for leader in Election(c, name, ttl=None).observe(stop=stop):
                        yield v3election_pb2.LeaderResponse(
                            header=self.b.header(None, leader.mod_revision),
                            kv=_leader_kv(leader),
                        )
                except ClientError as e:
                    raise _mapped(e) from None
        except Abort as e:
            _abort_in_stream(context, e)


__all__ = ["ElectionService", "HeldCalls", "LeaseService", "LockService"]
