"""The Python client of a paxosd cluster: leader discovery, fail-over, exactly-once retries.

Every command carries ``(client_id, seq)``; a retry after a timeout or a leader change
re-sends the same pair, and the replicated session table answers it with the original result
instead of applying it twice. Errors are typed (``paxosd.client.errors``) so that callers (and
paxosctl's exit codes) can tell "the key is absent" from "the cluster is unavailable" from
"wrong key". Which member to ask is ``paxosd.client.routing``'s policy, shared with
``Pipeline``.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from paxosd.client.connection import Lost, open_connection, read_key_file
from paxosd.client.errors import (
    AuthError,
    BadRequestError,
    CasMismatchError,
    ClientError,
    CompactedError,
    FutureRevisionError,
    LeaseNotFoundError,
    LeaseRefusedError,
    NoSpaceError,
    NotFoundError,
    RefusedError,
    TxnRefusedError,
    UnavailableError,
)
from paxosd.client.localdir import cluster_from_config
from paxosd.client.routing import (
    UNAVAILABLE_S,
    Address,
    Backoff,
    Endpoint,
    Router,
    parse_endpoint,
)
from paxosd.client.txn import cas_result, cas_txn
from paxosd.net.admin import (
    AdminAnswer,
    AdminQuery,
    BadQuery,
    Busy,
    ChangeMember,
    Decided,
    LogPage,
    Members,
    MembersReply,
    OutcomeUnknown,
    Partition,
    Partitioned,
    ReadStale,
    Refused,
    Snapshot,
    SnapshotChunk,
    SnapshotRead,
    SnapshotTaken,
    StaleRead,
    Status,
    StatusReply,
    Transfer,
    ViewLog,
    to_json,
)
from paxosd.net.framing import BadFrame, ClientReply, ClientRequest, QueryReply, QueryRequest
from paxosd.net.transport import ClientConnection
from paxosd.statemachine.commands import (
    Alarm,
    Alarms,
    BadCommand,
    Block,
    Blocks,
    CasMismatch,
    Command,
    Compact,
    Compacted,
    Compare,
    Delete,
    Full,
    FutureRevision,
    Get,
    LeaseGrant,
    LeaseGranted,
    LeaseInfo,
    LeaseKeepAlive,
    LeaseKept,
    LeaseLeases,
    LeaseList,
    LeaseNotFound,
    LeaseRefused,
    LeaseRevoke,
    LeaseRevoked,
    LeaseTimeToLive,
    Malformed,
    NoSpace,
    Op,
    Put,
    Result,
    RevisionCompacted,
    Scan,
    Stale,
    Txn,
    TxnOp,
    TxnRefused,
    TxnResult,
    Unblock,
    View,
    decode_result,
    encode_command,
    is_read,
)
from paxosd.statemachine.commands import NotFound as NotFoundResult

if TYPE_CHECKING:
    from paxosd.client.lease import Lease
    from paxosd.client.recipes import Election, Lock
    from paxosd.client.watch import Watch

TIMEOUT_MS_DEFAULT = 5000
ATTEMPT_TIMEOUT_MS = 1500
_ANY_ANSWER: Any = object  # for ``ask``: every answer type passes the check

A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Header:
    """What every answer says about where it came from, as etcd's ResponseHeader does.

    ``revision``: the store revision the answer reflects (a write: its own revision); 0 when
    the answer carries none (a refusal, or a block/view result). ``leader``: the node the
    answering node believed led (None during an election). ``ballot``: the ballot it had
    promised, as "round.node" (etcd's raft_term: it only grows, and a new leader has a
    higher one). ``node``: the id of the node that answered (etcd's member_id)."""

    revision: int
    leader: int | None
    ballot: str
    node: int

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "leader": self.leader,
            "ballot": self.ballot,
            "node": self.node,
        }


def result_revision(result: Result) -> int:
    """The store revision ``result`` reflects; 0 for results that carry none. A refusal of a
    revision names the revision asked for, not the store's, so it counts as none."""
    if isinstance(result, RevisionCompacted | FutureRevision):
        return 0
    revision = getattr(result, "revision", 0)
    return revision if isinstance(revision, int) else 0


def revision_error(result: Result, asked: int) -> ClientError | None:
    """The typed error for a refused revision (``asked``: the revision the request named),
    worded as etcd words it, with the numbers; None when ``result`` is not such a refusal."""
    match result:
        case RevisionCompacted(compact_revision=oldest, revision=revision):
            asked = asked or revision
            return CompactedError(
                f"revision {asked} was compacted; the oldest readable revision is {oldest}",
                oldest,
                asked,
            )
        case FutureRevision(revision=current):
            if asked and asked > current:
                message = (
                    f"revision {asked} is a future revision; the current revision is {current}"
                )
            else:
                message = f"required revision {asked or current} is a future revision"
            return FutureRevisionError(message, asked or current, current)
        case TxnRefused(reason=reason):
            return TxnRefusedError(f"transaction refused: {reason}")
        case LeaseNotFound(id=lease_id):
            return LeaseNotFoundError(f"lease {lease_id} not found", lease_id)
        case LeaseRefused(reason=reason):
            return LeaseRefusedError(f"lease refused: {reason}")
        case Full(what="leases" | "lease keys" as what):
            return LeaseRefusedError(f"lease refused: the cluster's bound on {what} is reached")
    return None


def not_applied(result: Result) -> ClientError:
    """The error for a result that is not the answer asked for: the state machine refused
    the command (a bound reached, a malformed or stale command), or a server bug."""
    match result:
        case NoSpace(size_bytes=size, quota_bytes=quota):
            return NoSpaceError(size, quota)
        case Full(what=what):
            return UnavailableError(f"the cluster's {what} bound is reached; nothing changed")
        case Malformed(reason=reason):
            return BadRequestError(f"the cluster refused the command: {reason}")
        case Stale(last_seq=seq):
            return BadRequestError(f"the session already moved past this request (seq {seq})")
    return BadRequestError(f"the server answered with {type(result).__name__}, not expected here")


def check_revision(result: Result, asked: int = 0) -> Result:
    """``result``, unless it refuses a revision (or a transaction): then its typed error."""
    error = revision_error(result, asked)
    if error is not None:
        raise error
    return result


def encode(client_id: str, seq: int, site: str, op: Op) -> bytes:
    """One command's bytes: the same bytes go out again on every retry."""
    try:
        return encode_command(Command(client_id=client_id, seq=seq, site=site, op=op))
    except BadCommand as e:
        raise BadRequestError(str(e)) from None


def gave_up(
    timeout_ms: int, problems: str, *, read: bool, sent: bool, refused: bool
) -> UnavailableError:
    """The one wording of "the cluster did not answer", for ``Client`` and ``Pipeline``.

    A read had no effect whatever happened. A write that never left this process had none
    either; one that was sent may still be applied (exactly once: the same client may retry).
    """
    what = (
        "every endpoint refused the connection"
        if refused
        else (f"no quorum answered within {timeout_ms} ms")
    )
    if read:
        outcome = "the read had no effect"
    elif sent:
        outcome = "a write's outcome is unknown (it may still be applied)"
    else:
        outcome = "the write was not sent"
    return UnavailableError(f"{what} ({problems}); {outcome}", outcome_unknown=sent and not read)


class Client:
    """A connection to a cluster: leader discovery, fail-over, exactly-once retries.

    Example::

        from paxosd import Client

        with Client(["10.0.0.1:7201", "10.0.0.2:7202"], key_file="client.key") as c:
            c.put("config", b"v1")
            print(c.get("config").value, c.last_header.revision)

        with Client.from_config("/etc/paxosd/n1.toml") as c:  # or a local cluster's folder
            print(c.scan("config").rows)

    Thread-safe: every call (``put``, ``get``, ``txn``, ``status``, ...) holds the client's
    one lock while it talks to the cluster, so threads may share one ``Client``; their
    requests go one at a time over its connections (use a ``Pipeline``, or one client per
    thread, for throughput). ``last_header`` is the header of the last answer any thread
    got. The exceptions: ``next_command`` followed by ``submit`` is two calls, so a thread
    that makes commands itself must hold ``client.thread_lock`` around the pair (the cluster's
    session table refuses a seq older than the newest one it applied). Watches, leases'
    keep-alive threads and the recipes' waits use connections of their own.

    :param endpoints: client addresses of the members, ``(host, port)`` or ``"host:port"``
        (any subset works; all is best: the client learns the leader's address from a
        redirect).
    :param client_key: the cluster's client key bytes (or give ``key_file``).
    :param key_file: a file holding the client key in hex, readable by its owner only.
    :param site: the origin site recorded with every write (the timeline's author).
    :param timeout_ms: how long one call may take before it raises ``UnavailableError``.
    :param client_id: this client's session id; give the same id (and keep the object) to
        retry across failures exactly once; default: a random one.
    """

    def __init__(
        self,
        endpoints: Sequence[Address | str],
        client_key: bytes | None = None,
        *,
        key_file: str | os.PathLike[str] | None = None,
        site: str = "local",
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        client_id: str | None = None,
    ) -> None:
        if (client_key is None) == (key_file is None):
            raise BadRequestError("give exactly one of client_key / key_file")
        if client_key is None:
            assert key_file is not None
            client_key = read_key_file(key_file)
        addresses = [parse_endpoint(e) if isinstance(e, str) else e for e in endpoints]
        if not addresses:
            raise BadRequestError("no endpoints given")
        self._router = Router(addresses)
        self._conns: dict[int, ClientConnection] = {}  # id(endpoint) -> its connection
        self._key = client_key
        self.site = site
        self.timeout_ms = timeout_ms
        self.client_id = client_id or secrets.token_hex(8)
        self._conn_id = secrets.randbelow(1 << 31)
        self._seq = 0
        self._request_ids = itertools.count(1)
        # Held by every call that talks to the cluster (reentrant: a call may make another).
        self.thread_lock = threading.RLock()
        # The header of the last answer a command or a stale read got (None before the first).
        self.last_header: Header | None = None

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Client:
        """A client for the cluster ``path`` describes: a node's paxosd TOML (its
        ``client_address``, the ``[clients]`` table and ``client_key_file``), a local
        cluster's folder or its ``cluster.json`` (``paxosctl cluster up``); None: the local
        cluster of ``$PAXOSD_LOCAL_DIR``. ``kwargs`` go to ``Client`` (site, timeout_ms, ...).

        Example::

            with Client.from_config("/etc/paxosd/n1.toml", timeout_ms=2000) as c:
                c.put("k", b"v")
        """
        endpoints, key_file = cluster_from_config(path)
        return cls(endpoints, key_file=key_file, **kwargs)

    def clone(self, **kwargs: Any) -> Client:
        """A new client to the same cluster with the same key, with its own session and
        connections (e.g. for a keep-alive thread that must not wait behind this client's
        calls); ``kwargs`` replace ``site``, ``timeout_ms`` or ``client_id``."""
        options: dict[str, Any] = {"site": self.site, "timeout_ms": self.timeout_ms} | kwargs
        endpoints = [ep.address for ep in self._router.endpoints]
        return Client(endpoints, self._key, **options)

    def close(self) -> None:
        with self.thread_lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ key-value

    def put(self, key: str, value: bytes, *, prev_kv: bool = False, lease: int = 0) -> Result:
        """Set ``key`` to ``value``; returns ``Written(version, revision)``, with ``prev`` (the
        key before, None if it was absent) when ``prev_kv``. ``lease``: attach the key to
        that lease (``LeaseNotFoundError`` if it does not exist); without one, a key loses
        the lease it had (as in etcd)."""
        return check_revision(self.execute(Put(key=key, value=value, prev_kv=prev_kv, lease=lease)))

    # ------------------------------------------------------------------ leases

    def lease_grant(self, ttl: int, lease_id: int = 0) -> LeaseGranted:
        """Grant a lease of ``ttl`` seconds (``lease_id`` 0: the cluster picks the id).
        Returns ``LeaseGranted(id, ttl)``. Raises ``LeaseRefusedError`` for a TTL below the
        cluster's minimum (1.5 election timeouts) or an id already taken.

        Example: ``lease = client.lease_grant(10); client.put("k", b"v", lease=lease.id)``"""
        result = check_revision(self.execute(LeaseGrant(ttl=ttl, lease_id=lease_id)))
        if not isinstance(result, LeaseGranted):
            raise BadRequestError(f"lease grant answered with {type(result).__name__}")
        return result

    def lease_revoke(self, lease_id: int) -> LeaseRevoked:
        """Revoke the lease: every key attached to it is deleted, at one revision.
        Raises ``LeaseNotFoundError`` if it does not exist."""
        result = check_revision(self.execute(LeaseRevoke(lease_id=lease_id)))
        if not isinstance(result, LeaseRevoked):
            raise BadRequestError(f"lease revoke answered with {type(result).__name__}")
        return result

    def lease_keep_alive_once(self, lease_id: int) -> int:
        """One keep-alive, answered by the leader (never logged): the lease has its full TTL
        again from when the leader received it. Returns that TTL in seconds."""
        result = check_revision(self.execute(LeaseKeepAlive(lease_id=lease_id)))
        if not isinstance(result, LeaseKept):
            raise BadRequestError(f"keep-alive answered with {type(result).__name__}")
        return result.ttl

    def lease_time_to_live(self, lease_id: int, keys: bool = False) -> LeaseInfo:
        """``LeaseInfo(id, ttl, granted_ttl, keys)``: the seconds the leader still gives the
        lease, its granted TTL, and its keys when ``keys``."""
        result = check_revision(self.execute(LeaseTimeToLive(lease_id=lease_id, keys=keys)))
        if not isinstance(result, LeaseInfo):
            raise BadRequestError(f"lease ttl answered with {type(result).__name__}")
        return result

    def leases(self) -> list[int]:
        """Every lease id, sorted."""
        result = check_revision(self.execute(LeaseLeases()))
        if not isinstance(result, LeaseList):
            raise BadRequestError(f"lease list answered with {type(result).__name__}")
        return list(result.ids)

    def lease(self, ttl: int, lease_id: int = 0) -> Lease:
        """Grant a lease and return it as a ``Lease``: ``with client.lease(10) as lease:``
        keeps it alive from a background thread (every TTL/3) and revokes it on exit."""
        from paxosd.client.lease import Lease

        asked = time.monotonic()
        granted = self.lease_grant(ttl, lease_id)
        return Lease(self, granted.id, granted.ttl, alive_since=asked)

    def get(self, key: str, *, stale: bool = False, revision: int = 0) -> Result:
        """``Found(value, version, create_revision, mod_revision, lease, revision)``; raises
        ``NotFoundError`` when the key is absent. ``revision`` > 0 reads the key as it was at
        that store revision (``CompactedError`` below the compaction point,
        ``FutureRevisionError`` above the current revision). Linearizable by read-index
        unless ``stale`` (this member's applied state)."""
        op = Get(key=key, revision=revision)
        result = self.stale_read(op) if stale else self.execute(op)
        if isinstance(result, NotFoundResult):
            at = f" at revision {revision}" if revision else ""
            raise NotFoundError(f"key {key!r} not found{at}")
        return check_revision(result, revision)

    def delete(self, key: str, *, prefix: bool = False, prev_kv: bool = False) -> Result:
        """Remove ``key`` (every key starting with it when ``prefix``, all at one revision);
        returns ``Deleted(prior_version, revision, deleted)`` (``prior_version`` 0: it was
        absent), with the removed keys in ``prev`` when ``prev_kv``."""
        return self.execute(Delete(key=key, prefix=prefix, prev_kv=prev_kv))

    def cas(
        self,
        key: str,
        new: bytes,
        *,
        expect_value: bytes | None = None,
        expect_version: int | None = None,
    ) -> Result:
        """Set ``key`` to ``new`` only if it holds ``expect_value`` (or is at
        ``expect_version``; 0: absent). Raises ``CasMismatchError`` otherwise.

        Sent as one transaction (compare, then put, else get), the way every conditional
        write is; the answer is mapped back to ``Written`` or the mismatch."""
        if (expect_value is None) == (expect_version is None):
            raise BadRequestError("give exactly one of expect_value / expect_version")
        txn = cas_txn(key, new, expect_value=expect_value, expect_version=expect_version)
        result = check_revision(cas_result(self.execute(txn)))
        if isinstance(result, CasMismatch):
            raise CasMismatchError(
                f"cas on {key!r} failed: current version {result.version}", result
            )
        return result

    def scan(
        self, prefix: str = "", limit: int = 100, *, stale: bool = False, revision: int = 0
    ) -> Result:
        """``Rows`` of keys starting with ``prefix``, in key order; ``more`` if cut.
        ``revision`` > 0 scans the store as it was then (see ``get``)."""
        op = Scan(prefix=prefix, limit=limit, revision=revision)
        return check_revision(self.stale_read(op) if stale else self.execute(op), revision)

    def compact(self, revision: int) -> Compacted:
        """Forget the history before ``revision`` (etcd's compaction): reads and watches of
        older revisions fail with ``CompactedError`` afterwards; the state as of ``revision``
        stays readable. Raises ``CompactedError`` if the cluster is already compacted that
        far, ``FutureRevisionError`` if ``revision`` is newer than the store."""
        result = check_revision(self.execute(Compact(revision=revision)), revision)
        if not isinstance(result, Compacted):
            raise not_applied(result)
        return result

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnResult:
        """etcd's transaction, in one slot at one revision: if every compare holds, run the
        ``success`` ops in order, else the ``failure`` ops. Returns ``TxnResult(succeeded,
        responses, revision)``, one response per op of the branch taken. Build compares and
        ops with ``paxosd.client.txn`` (``txn.value("k") == b"v"``, ``txn.put("k", b"v")``).
        Raises ``BadRequestError`` for a transaction over the bounds (before sending),
        ``TxnRefusedError`` when a branch writes one key twice, ``CompactedError`` /
        ``FutureRevisionError`` when a read in it names such a revision."""
        txn = Txn(compares=tuple(compare), success=tuple(success), failure=tuple(failure))
        result = check_revision(self.execute(txn))
        if not isinstance(result, TxnResult):
            raise not_applied(result)
        return result

    def block(self, site: str, other: str) -> Result:
        return self.execute(Block(site=site, other=other))

    def unblock(self, site: str, other: str) -> Result:
        return self.execute(Unblock(site=site, other=other))

    def blocks(self, site: str | None = None) -> Result:
        return self.execute(Blocks(site=site))

    def view(self, as_site: str, limit: int = 100) -> Result:
        return self.execute(View(as_site=as_site, limit=limit))

    # ------------------------------------------------------------------ watches

    def watch(
        self,
        key: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        filters: Sequence[str] = (),
    ) -> Watch:
        """Watch ``key`` (or, with ``prefix``, every key starting with it) from
        ``start_revision`` (0: changes after now): an iterator of ``WatchBatch``es on a
        connection of its own, which fails over to any endpoint without a gap or a repeat.
        ``filters``: event types to leave out ("PUT", "DELETE"). Use it as a context manager,
        or ``cancel()`` it (from any thread). See paxosd.client.watch."""
        from paxosd.client.watch import Watch

        return Watch(
            [ep.address for ep in self._router.endpoints],
            self._key,
            key,
            prefix=prefix,
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            filters=filters,
            timeout_ms=self.timeout_ms,
        )

    def watch_prefix(
        self,
        prefix: str,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        filters: Sequence[str] = (),
    ) -> Watch:
        """``watch(prefix, prefix=True, ...)``: every key starting with ``prefix`` ("" for
        every key)."""
        return self.watch(
            prefix,
            prefix=True,
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            filters=filters,
        )

    # ------------------------------------------------------------------ recipes

    def lock(
        self,
        name: str,
        *,
        ttl: int | None = 60,
        lease: int | None = None,
        timeout_s: float | None = None,
        value: bytes = b"",
        on_lost: Callable[[str], None] | None = None,
    ) -> Lock:
        """A distributed lock named ``name`` on a lease of ``ttl`` seconds (or your own
        ``lease``); use it as a context manager, which gives the ``LockToken``::

            with client.lock("jobs/nightly", ttl=10) as token:
                run(fencing_token=token.revision)

        Waiters queue by revision and each watches only its predecessor. See
        ``paxosd.client.recipes.Lock`` (timeouts, how a holder learns it lost the lock)."""
        from paxosd.client.recipes import Lock

        return Lock(
            self, name, ttl=ttl, lease=lease, timeout_s=timeout_s, value=value, on_lost=on_lost
        )

    def election(
        self,
        name: str,
        *,
        ttl: int | None = 60,
        lease: int | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> Election:
        """A leader election named ``name``: ``campaign(value)`` blocks until this candidate
        leads, ``proclaim``, ``resign``, ``leader()``, ``observe()``::

            e = client.election("service/leader", ttl=10)
            e.campaign(b"host-a")
            ...
            e.resign()

        See ``paxosd.client.recipes.Election``."""
        from paxosd.client.recipes import Election

        return Election(self, name, ttl=ttl, lease=lease, on_lost=on_lost)

    # ------------------------------------------------------------------ the protocol

    def next_command(self, op: Op) -> bytes:
        """Encode ``op`` with a fresh seq; pass the bytes to ``submit`` (and again on retry).
        From several threads, hold ``client.thread_lock`` around the pair (see the class)."""
        with self.thread_lock:
            self._seq += 1
            return encode(self.client_id, self._seq, self.site, op)

    def execute(self, op: Op) -> Result:
        """Order ``op`` through the leader and return its result (linearizable: writes go
        through the log, reads through read-index). Raises ``NoSpaceError`` when the store
        is over its quota and ``op`` would add data."""
        with self.thread_lock:
            result = self.submit(self.next_command(op), read=is_read(op))
        if isinstance(result, NoSpace):
            raise NoSpaceError(result.size_bytes, result.quota_bytes)
        return result

    def alarm_disarm(self) -> Alarms:
        """Clear every member's NOSPACE alarm through the log (etcd's alarm disarm); the
        leader raises it again if the store is still over its quota."""
        result = self.execute(Alarm(action="deactivate", alarm="NOSPACE", member=0))
        if not isinstance(result, Alarms):
            raise BadRequestError("the server answered the disarm with another result")
        return result

    def submit(self, command: bytes, *, read: bool = False) -> Result:
        """Send ``command`` until a node applies it or the timeout passes. Retries carry the
        same bytes, so the same (client_id, seq): applied at most once. ``read`` only
        changes what a failure says (a read's outcome is never unknown)."""
        with self.thread_lock:
            return self._submit(command, read=read)

    def _submit(self, command: bytes, *, read: bool) -> Result:
        router = self._router
        deadline = time.monotonic() + self.timeout_ms / 1000
        backoff = Backoff()
        sent = False
        router.forget_refusals()
        while time.monotonic() < deadline:
            ep = router.pick()
            if ep is None:
                if router.all_refused() and not sent:
                    break
                time.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
                continue
            rid = next(self._request_ids)
            wait_ms = max(1, min(ATTEMPT_TIMEOUT_MS, int((deadline - time.monotonic()) * 1000)))
            try:
                conn = self._connect(ep)
                sent = True
                reply = self._roundtrip(ep, conn, ClientRequest(rid, command), rid, wait_ms)
            except Lost:
                if router.all_refused() and not sent:
                    break
                continue
            if not isinstance(reply, ClientReply):
                raise BadRequestError("the server answered a command with a query reply")
            if reply.status == "ok":
                router.ok(ep)
                try:
                    result = decode_result(reply.result)
                except BadCommand as e:
                    raise BadRequestError(f"undecodable result from the server: {e}") from None
                self.last_header = Header(
                    revision=result_revision(result),
                    leader=reply.leader,
                    ballot=f"{reply.ballot_round}.{reply.ballot_node}",
                    node=reply.node,
                )
                return result
            if reply.status == "bad_request":
                raise BadRequestError(reply.result.decode(errors="replace"))
            if reply.status == "unavailable":
                # This member cannot serve anyone for a while (its disk is full): elsewhere.
                router.failed(ep, reply.result.decode(errors="replace"), down_s=UNAVAILABLE_S)
                continue
            # not_leader / busy: follow the hint, or back off and try elsewhere.
            if router.redirect(ep, reply.leader, reply.leader_address, self._connect_quietly):
                continue
            time.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
        raise gave_up(
            self.timeout_ms,
            router.problems(),
            read=read,
            sent=sent,
            refused=router.all_refused() and not sent,
        )

    def stale_read(self, op: Op) -> Result:
        """Read the contacted node's applied state: no log round, possibly stale."""
        return self.stale_read_at(op)[0]

    def stale_read_at(self, op: Op) -> tuple[Result, dict[str, Any]]:
        """As ``stale_read``, plus where it was read: ``{"node_id", "applied_index"}``, so
        a caller can say how stale the answer may be."""
        if not is_read(op):
            raise BadRequestError("only reads may be stale")
        with self.thread_lock:
            return self._stale_read_at(op)

    def _stale_read_at(self, op: Op) -> tuple[Result, dict[str, Any]]:
        answer = self._ask(ReadStale(self.next_command(op)), StaleRead, "the stale read")
        try:
            result = decode_result(answer.result)
        except BadCommand as e:
            raise BadRequestError(f"undecodable result from the server: {e}") from None
        self.last_header = Header(
            revision=result_revision(result),
            leader=answer.leader,
            ballot=f"{answer.ballot_round}.{answer.ballot_node}",
            node=answer.node_id,
        )
        return result, {"node_id": answer.node_id, "applied_index": answer.applied_index}

    # ------------------------------------------------------------------ admin

    def status(self, *, node: int | None = None) -> StatusReply:
        """One member's view of the cluster (``node``, or the first that answers)."""
        return self._ask(Status(), StatusReply, "the status query", node=node)

    def status_each(self) -> list[tuple[str, StatusReply | str]]:
        """Every endpoint's status, or the reason it did not answer: ``(endpoint, answer)``."""
        return self._ask_each(Status(), StatusReply)

    def members(self, *, node: int | None = None) -> MembersReply:
        """The membership as ``node`` (or the first that answers) knows it."""
        return self._ask(Members(), MembersReply, "the members query", node=node)

    def change_member(
        self,
        kind: Literal["add", "promote", "remove"],
        member: int,
        address: str = "",
        *,
        node: int | None = None,
    ) -> Decided:
        """Add (as a learner, at ``address``), promote or remove ``member``; ask the leader
        (``node``). Raises ``RefusedError`` (with ``not_leader``) when it declines."""
        if kind not in ("add", "promote", "remove"):
            raise BadRequestError(f"membership change {kind!r} is not add, promote or remove")
        query = ChangeMember(kind, member, address)
        return self._ask(query, Decided, "the membership change", node=node)

    def transfer(self, target: int | None = None, *, node: int | None = None) -> Decided:
        """Ask the leader (``node``) to hand leadership to ``target`` (None: its choice)."""
        return self._ask(Transfer(target), Decided, "the leader transfer", node=node)

    def snapshot(self, *, node: int | None = None) -> SnapshotTaken:
        """Make ``node`` (or the first that answers) take a snapshot now. The member answers
        when its snapshot is made (a forked child writes it: seconds for a GiB), so one
        attempt may take the whole timeout."""
        return self._ask(
            Snapshot(), SnapshotTaken, "the snapshot", node=node, attempt_ms=self.timeout_ms
        )

    def snapshot_each(self) -> list[tuple[str, SnapshotTaken | str]]:
        """Every endpoint takes a snapshot: ``(endpoint, answer or reason)``; each may take
        the whole timeout (see ``snapshot``)."""
        return self._ask_each(Snapshot(), SnapshotTaken, attempt_ms=self.timeout_ms)

    def snapshot_read(
        self,
        offset: int = 0,
        slot: int | None = None,
        chunk_bytes: int | None = None,
        *,
        node: int | None = None,
        attempt_ms: int = ATTEMPT_TIMEOUT_MS,
    ) -> SnapshotChunk:
        """One chunk of ``node``'s snapshot (for a backup); ``attempt_ms`` bounds each try
        (a MiB chunk from a loaded node may take longer than a small answer)."""
        query = SnapshotRead(offset, slot, chunk_bytes)
        return self._ask(
            query, SnapshotChunk, "the snapshot read", node=node, attempt_ms=attempt_ms
        )

    def view_log(
        self, first: int = 1, last: int | None = None, limit: int = 100, *, node: int | None = None
    ) -> LogPage:
        """Stored log rows of ``node`` (or the first that answers)."""
        return self._ask(ViewLog(first, last, limit), LogPage, "the log query", node=node)

    def partition(self, peer: int, on: bool, *, node: int | None = None) -> Partitioned:
        """A drill's fault: make ``node`` drop (``on``) or restore its traffic to ``peer``."""
        return self._ask(Partition(peer, on), Partitioned, "the partition", node=node)

    def ask(self, query: AdminQuery, *, node: int | None = None) -> AdminAnswer:
        """Any admin query and its typed answer; refusals raise (``RefusedError``,
        ``UnavailableError``, ``BadRequestError``)."""
        answer: AdminAnswer = self._ask(query, _ANY_ANSWER, "the query", node=node)
        return answer

    # ------------------------------------------------------------------ internals

    def _ask(
        self,
        query: AdminQuery,
        kind: type[A],
        what: str,
        *,
        node: int | None = None,
        attempt_ms: int = ATTEMPT_TIMEOUT_MS,
    ) -> A:
        """Ask one member (``node``, or the first that answers) and check the answer's type.
        Each try waits at most ``attempt_ms``; all of them, at most the client's timeout."""
        with self.thread_lock:
            return self._ask_locked(query, kind, what, node=node, attempt_ms=attempt_ms)

    def _ask_locked(
        self,
        query: AdminQuery,
        kind: type[A],
        what: str,
        *,
        node: int | None = None,
        attempt_ms: int = ATTEMPT_TIMEOUT_MS,
    ) -> A:
        router = self._router
        deadline = time.monotonic() + self.timeout_ms / 1000
        router.forget_refusals()
        if node is not None:
            candidates = [ep for ep in router.endpoints if ep.node_id in (None, node)]
        else:
            candidates = list(router.endpoints)
        sent = False
        for ep in itertools.islice(itertools.cycle(candidates), 3 * len(candidates)):
            if time.monotonic() >= deadline:
                break
            if node is not None and ep.node_id is not None and ep.node_id != node:
                continue
            wait_ms = max(1, min(attempt_ms, int((deadline - time.monotonic()) * 1000)))
            try:
                self._connect(ep)
                if node is not None and ep.node_id != node:
                    continue
                sent = True
                answer = self._ask_one(ep, query, kind, wait_ms)
            except Lost:
                if all(e.refused for e in candidates):
                    break
                continue
            return answer
        problems = router.problems()
        if node is not None and not any(ep.node_id == node for ep in router.endpoints):
            problems = f"node {node} is not among the endpoints reached; {problems}"
        # A change that was sent and not answered may still be decided.
        unknown = sent and isinstance(query, ChangeMember | Transfer)
        outcome = "; its outcome is unknown" if unknown else ""
        if all(e.refused for e in candidates):
            raise UnavailableError(f"{what}: every endpoint refused the connection ({problems})")
        raise UnavailableError(
            f"{what}: no node answered within {self.timeout_ms} ms ({problems}){outcome}",
            outcome_unknown=unknown,
        )

    def _ask_each(
        self, query: AdminQuery, kind: type[A], *, attempt_ms: int = ATTEMPT_TIMEOUT_MS
    ) -> list[tuple[str, A | str]]:
        """Ask every endpoint once; one that does not answer gets the reason instead."""
        out: list[tuple[str, A | str]] = []
        with self.thread_lock:
            for ep in list(self._router.endpoints):
                try:
                    out.append((ep.name, self._ask_one(ep, query, kind, attempt_ms)))
                except Lost as e:
                    out.append((ep.name, ep.problem or str(e)))
        return out

    def _ask_one(self, ep: Endpoint, query: AdminQuery, kind: type[A], wait_ms: int) -> A:
        conn = self._connect(ep)
        rid = next(self._request_ids)
        reply = self._roundtrip(ep, conn, QueryRequest(rid, query), rid, wait_ms)
        if not isinstance(reply, QueryReply):
            raise BadRequestError("the server answered a query with a command reply")
        answer = _check(reply.answer)
        if kind is not _ANY_ANSWER and not isinstance(answer, kind):
            raise BadRequestError("the server answered a different question (a server bug)")
        return answer  # type: ignore[return-value]

    def _connect(self, ep: Endpoint) -> ClientConnection:
        conn = self._conns.get(id(ep))
        if conn is None:
            conn = open_connection(self._router, ep, self._key, self._conn_id)
            self._conns[id(ep)] = conn
        return conn

    def _connect_quietly(self, ep: Endpoint) -> None:
        self._connect(ep)

    def _roundtrip(
        self, ep: Endpoint, conn: ClientConnection, body: Any, rid: int, wait_ms: int
    ) -> Any:
        try:
            conn.send(body)
            deadline = time.monotonic() + wait_ms / 1000
            while True:
                left = int((deadline - time.monotonic()) * 1000)
                if left <= 0:
                    self._router.failed(ep, f"no answer in {wait_ms} ms")
                    raise Lost(f"{ep.name}: no answer in {wait_ms} ms")
                for reply in conn.recv(left):
                    if getattr(reply, "request_id", None) == rid:
                        return reply
        except (TimeoutError, OSError, EOFError, BadFrame) as e:
            conn.close()
            self._conns.pop(id(ep), None)
            reason = (
                "connection lost"
                if isinstance(e, EOFError | BadFrame)
                else "connection lost: " + (getattr(e, "strerror", None) or "timed out")
            )
            self._router.failed(ep, reason)
            raise Lost(f"{ep.name}: {reason}") from None


def statuses_json(client: Client) -> list[dict[str, Any]]:
    """Every endpoint's status as a JSON-ready object with its ``endpoint``; one that did not
    answer is ``{"endpoint", "error"}``. The shape ``paxosctl status --json`` builds on."""
    out: list[dict[str, Any]] = []
    for endpoint, answer in client.status_each():
        if isinstance(answer, str):
            out.append({"endpoint": endpoint, "error": answer})
        else:
            out.append(to_json(answer) | {"endpoint": endpoint})
    return out


def _check(answer: AdminAnswer) -> AdminAnswer:
    """Refusals as exceptions: the caller gets the answer it asked for or an error."""
    match answer:
        case Refused(reason=reason, not_leader=not_leader, leader=leader):
            raise RefusedError(reason, not_leader=not_leader, leader=leader)
        case OutcomeUnknown(reason=reason):
            raise UnavailableError(
                f"{reason}; the change may still take effect", outcome_unknown=True
            )
        case Busy(reason=reason):
            raise UnavailableError(f"the member is busy: {reason}")
        case BadQuery(reason=reason):
            raise BadRequestError(reason)
    return answer


__all__ = [
    "ATTEMPT_TIMEOUT_MS",
    "TIMEOUT_MS_DEFAULT",
    "Address",
    "AuthError",
    "BadRequestError",
    "CasMismatchError",
    "Client",
    "ClientError",
    "CompactedError",
    "FutureRevisionError",
    "Header",
    "NotFoundError",
    "RefusedError",
    "TxnRefusedError",
    "UnavailableError",
    "check_revision",
    "not_applied",
    "parse_endpoint",
    "result_revision",
    "revision_error",
    "statuses_json",
]
