"""The etcd v3 services, each request mapped onto paxosd's client protocol.

Why a gateway over ``paxosd.client`` rather than handlers inside the daemon's loop: the
client already does everything a follower's front end must (find the leader, forward
writes and linearizable reads to it, retry exactly once with one session, fail over,
resume watches without a gap), and the daemon's loop stays single-threaded with no new
lock or queue in it. It runs as its own process (its own GIL: gRPC's per-request Python
cost is paid on another core than the node's loop). The price is one extra hop on the
loopback per request; see BENCHMARKS.md for what it costs.

Each gRPC worker thread has its own ``Client`` (the client is not thread-safe), whose
endpoint list starts with the local node: serializable reads and watches are answered by
the node this gateway stands beside, the rest by whoever leads.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, TypeVar

import grpc

from paxosd.client.client import Client, Header, result_revision
from paxosd.client.errors import (
    AuthError,
    BadRequestError,
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
from paxosd.client.routing import Address
from paxosd.client.watch import Watch, WatchCanceledError
from paxosd.etcd.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc
from paxosd.net.admin import ReadStale, StaleRead
from paxosd.statemachine.commands import (
    KEY_BYTES_MAX,
    SCAN_LIMIT_MAX,
    BadCommand,
    Compare,
    Delete,
    Deleted,
    Found,
    Get,
    KeyValue,
    NotFound,
    Op,
    Put,
    Range,
    Result,
    Row,
    Rows,
    Scan,
    TxnOp,
    TxnResult,
    Written,
    decode_result,
)

# The version Status reports: etcdctl and clientv3 read it as a 3.4 server's.
ETCD_VERSION = "3.4.0"
# Watches one Watch stream may hold open (each holds a connection and a thread).
WATCHES_PER_STREAM_MAX = 64
# Watch streams open at once. Each holds one of the server's worker threads for its life, so
# this stays well below serve.WORKERS: unary calls always find a free worker.
WATCH_STREAMS_MAX = 32
# Responses queued for one Watch stream before its watchers wait for the client to read.
STREAM_QUEUE_MAX = 256
# How many times a read-modify-write put (ignore_value) retries when the key moved under it.
IGNORE_VALUE_RETRIES = 16
# A Range reads its keys in pages of SCAN_LIMIT_MAX at one revision; at most this many pages
# (and RANGE_BYTES_MAX of keys and values) per request, past which the answer is cut with
# ``more`` set and ``count`` counts what was read.
RANGE_PAGES_MAX = 100
RANGE_BYTES_MAX = 12 << 20
# How long a watch waits for the node to confirm its creation.
WATCH_CREATE_MS = 5000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who answers: the ids etcd's ResponseHeader carries. ``cluster_id`` is a hash of
    paxosd's cluster name (etcd's is a number); ``member_id`` is this node's id."""

    cluster_id: int
    member_id: int


def cluster_number(cluster_id: str) -> int:
    """A stable 64-bit number for paxosd's cluster name."""
    return int.from_bytes(hashlib.sha256(cluster_id.encode()).digest()[:8], "big") >> 1


def prefix_end(key: bytes) -> bytes:
    """etcd's range end of "every key starting with ``key``" (clientv3.GetPrefixRangeEnd)."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class KeyRange:
    """An etcd key range as paxosd reads it: a scan of ``prefix`` whose rows are kept when
    ``lo <= key < hi`` (``hi`` None: no upper bound), or one key (``single``)."""

    prefix: str
    lo: str
    hi: str | None
    single: bool

    def holds(self, key: str) -> bool:
        return key.startswith(self.prefix) and key >= self.lo and (self.hi is None or key < self.hi)


def _text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError(f"paxosd keys are UTF-8 text; this {what} is not") from None
    if len(raw) > KEY_BYTES_MAX:
        raise BadRequestError(f"the {what} is longer than {KEY_BYTES_MAX} bytes")
    return text


def key_range(key: bytes, range_end: bytes) -> KeyRange:
    """Map etcd's ``[key, range_end)`` onto a prefix scan. ``range_end`` empty: one key;
    ``\\0``: every key from ``key`` on; otherwise the longest common prefix of the two is
    scanned and filtered (exactly the etcd range, since every key in it has that prefix)."""
    if not range_end:
        k = _text(key, "key")
        return KeyRange(k, k, None, True)
    if key == b"\0":
        key = b""
    lo = _text(key, "key")
    if range_end == b"\0":
        return KeyRange("", lo, None, False)
    if range_end == prefix_end(key):
        return KeyRange(lo, lo, None, False)
    hi = _text(range_end, "range end")
    common = 0
    while common < min(len(key), len(range_end)) and key[common] == range_end[common]:
        common += 1
    try:
        prefix = key[:common].decode("utf-8")
    except UnicodeDecodeError:
        prefix = ""
    return KeyRange(prefix, lo, hi, False)


def to_kv(kv: KeyValue | Row | Found, key: str, *, keys_only: bool = False) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=key.encode(),
        value=b"" if keys_only else kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _kv(kv: KeyValue) -> kv_pb2.KeyValue:
    return to_kv(kv, kv.key)


class Abort(Exception):
    """A request refused with a gRPC status (the servicer turns it into context.abort)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_of(e: ClientError) -> tuple[grpc.StatusCode, str]:
    """etcd's gRPC status for a client error, with etcd's words where clientv3 matches them
    (``etcdserver: mvcc: required revision has been compacted`` is how clients recognise a
    compaction)."""
    if isinstance(e, NoSpaceError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"
    if isinstance(e, CompactedError):
        return (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
        )
    if isinstance(e, FutureRevisionError):
        return (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision",
        )
    if isinstance(e, TxnRefusedError):
        return grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
    if isinstance(e, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE, f"etcdserver: request timed out ({e})"
    if isinstance(e, AuthError):
        return grpc.StatusCode.UNAVAILABLE, f"etcdserver: the gateway cannot reach its node ({e})"
    if isinstance(e, RefusedError):
        return grpc.StatusCode.FAILED_PRECONDITION, f"etcdserver: {e}"
    if isinstance(e, LeaseNotFoundError):
        return grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND
    if isinstance(e, LeaseRefusedError):
        return lease_refusal(e)
    if isinstance(e, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, f"etcdserver: {e}"
    return grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: {e}"


# etcd's words for a lease that does not exist (clientv3 matches them: rpctypes.ErrLeaseNotFound).
LEASE_NOT_FOUND = "etcdserver: requested lease not found"


def lease_refusal(e: LeaseRefusedError) -> tuple[grpc.StatusCode, str]:
    """etcd's status for a lease the cluster refused. The state machine's reasons are
    worded by paxosd (paxosd/statemachine/machine.py); the one etcd has its own words for,
    an id already taken, is recognised by them."""
    text = str(e)
    if "already exists" in text:
        return grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists"
    if "bound on" in text:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"etcdserver: {text}"
    # A TTL below the cluster's minimum: etcd raises such a TTL to its minimum instead; paxosd
    # refuses it (README "Using etcd tools"), with the minimum in the message.
    return grpc.StatusCode.OUT_OF_RANGE, f"etcdserver: {text}"


def unsupported(what: str) -> NoReturn:
    raise Abort(grpc.StatusCode.UNIMPLEMENTED, f"paxosd does not serve {what} (see its README)")


class Backend:
    """What every service shares: the node's identity and one paxosd Client per thread."""

    def __init__(
        self,
        endpoints: Sequence[Address],
        client_key: bytes,
        identity: Identity,
        *,
        etcd_urls: dict[int, str] | None = None,
        timeout_ms: int = 5000,
    ) -> None:
        self.endpoints = list(endpoints)
        self.client_key = client_key
        self.identity = identity
        self.etcd_urls = etcd_urls or {}
        self.timeout_ms = timeout_ms
        self._local = threading.local()
        self.watch_streams = threading.BoundedSemaphore(WATCH_STREAMS_MAX)
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def client(self) -> Client:
        c: Client | None = getattr(self._local, "client", None)
        if c is None:
            c = Client(self.endpoints, self.client_key, site="etcd", timeout_ms=self.timeout_ms)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()

    def header(
        self, h: Header | None = None, revision: int | None = None
    ) -> rpc_pb2.ResponseHeader:
        """etcd's header: raft_term is the ballot round (it grows with every new leader)."""
        term = 0
        rev = 0
        if h is not None:
            term = int(h.ballot.split(".")[0]) if h.ballot else 0
            rev = h.revision
        return rpc_pb2.ResponseHeader(
            cluster_id=self.identity.cluster_id,
            member_id=self.identity.member_id,
            revision=rev if revision is None else revision,
            raft_term=term,
        )

    def call(self, fn: Callable[[Client], T]) -> tuple[T, Header | None]:
        c = self.client()
        try:
            out = fn(c)
        except ClientError as e:
            code, message = status_of(e)
            raise Abort(code, message) from None
        return out, c.last_header


def _aborting(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn ``Abort`` into the gRPC status (one line for the client, never a traceback)."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return fn(self, request, context)
        except Abort as e:
            context.abort(e.code, e.message)
            raise AssertionError("context.abort returns only by raising") from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# ---------------------------------------------------------------------------------- KV


_SORT_KEYS: dict[int, Callable[[kv_pb2.KeyValue], Any]] = {
    rpc_pb2.RangeRequest.KEY: lambda kv: kv.key,
    rpc_pb2.RangeRequest.VERSION: lambda kv: kv.version,
    rpc_pb2.RangeRequest.CREATE: lambda kv: kv.create_revision,
    rpc_pb2.RangeRequest.MOD: lambda kv: kv.mod_revision,
    rpc_pb2.RangeRequest.VALUE: lambda kv: kv.value,
}

_COMPARE_TARGETS = {
    rpc_pb2.Compare.VERSION: "version",
    rpc_pb2.Compare.CREATE: "create",
    rpc_pb2.Compare.MOD: "mod",
    rpc_pb2.Compare.VALUE: "value",
    rpc_pb2.Compare.LEASE: "lease",
}
_COMPARE_OPS = {
    rpc_pb2.Compare.EQUAL: "=",
    rpc_pb2.Compare.NOT_EQUAL: "!=",
    rpc_pb2.Compare.LESS: "<",
    rpc_pb2.Compare.GREATER: ">",
}


R_NONE, R_ASCEND, R_DESCEND = (
    rpc_pb2.RangeRequest.NONE,
    rpc_pb2.RangeRequest.ASCEND,
    rpc_pb2.RangeRequest.DESCEND,
)


def range_op(req: rpc_pb2.RangeRequest) -> tuple[Get | Scan, KeyRange]:
    if req.revision < 0:
        raise BadRequestError("revision must not be negative")
    if req.sort_target not in _SORT_KEYS or req.sort_order not in (R_NONE, R_ASCEND, R_DESCEND):
        raise BadRequestError(f"unknown sort target {req.sort_target} or order {req.sort_order}")
    kr = key_range(req.key, req.range_end)
    if kr.single:
        return Get(key=kr.lo, revision=req.revision), kr
    return Scan(prefix=kr.prefix, limit=SCAN_LIMIT_MAX, revision=req.revision), kr


def range_response(
    req: rpc_pb2.RangeRequest, kr: KeyRange, result: Result, header: rpc_pb2.ResponseHeader
) -> rpc_pb2.RangeResponse:
    """Filter, sort, limit and count as etcd does, from the rows paxosd returned. ``count``
    is the range's size before ``limit`` (and before the min/max revision filters, as
    etcd's); a range over more than one scan page (SCAN_LIMIT_MAX keys) is cut there
    with ``more`` set."""
    kvs: list[kv_pb2.KeyValue] = []
    cut = False
    match result:
        case Found():
            kvs = [to_kv(result, kr.lo, keys_only=req.keys_only)]
        case NotFound():
            kvs = []
        case Rows(rows=rows, more=more):
            kvs = [to_kv(r, r.key, keys_only=req.keys_only) for r in rows if kr.holds(r.key)]
            cut = more
        case _:
            raise Abort(grpc.StatusCode.INTERNAL, f"unexpected answer {type(result).__name__}")
    count = len(kvs)
    if req.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
    if req.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
    if req.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
    if req.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
    order = req.sort_order
    if order == rpc_pb2.RangeRequest.NONE and req.sort_target != rpc_pb2.RangeRequest.KEY:
        order = rpc_pb2.RangeRequest.ASCEND  # etcd: a target without an order ascends
    if order != rpc_pb2.RangeRequest.NONE:
        kvs.sort(key=_SORT_KEYS[req.sort_target], reverse=order == rpc_pb2.RangeRequest.DESCEND)
    more = cut
    if req.limit > 0 and len(kvs) > req.limit:
        kvs = kvs[: req.limit]
        more = True
    if req.count_only:
        kvs = []
    return rpc_pb2.RangeResponse(header=header, kvs=kvs, more=more, count=count)


def delete_op(req: rpc_pb2.DeleteRangeRequest) -> Delete:
    kr = key_range(req.key, req.range_end)
    if kr.single:
        return Delete(key=kr.lo, prev_kv=req.prev_kv)
    if kr.hi is None and kr.lo == kr.prefix:
        return Delete(key=kr.prefix, prefix=True, prev_kv=req.prev_kv)
    unsupported("DeleteRange over a range that is not one key, a prefix or every key")


def delete_response(
    req: rpc_pb2.DeleteRangeRequest, result: Result, header: rpc_pb2.ResponseHeader
) -> rpc_pb2.DeleteRangeResponse:
    match result:
        case Deleted(deleted=deleted, prev=prev):
            kvs = [_kv(kv) for kv in prev] if req.prev_kv else []
            return rpc_pb2.DeleteRangeResponse(header=header, deleted=deleted, prev_kvs=kvs)
        case NotFound():
            return rpc_pb2.DeleteRangeResponse(header=header, deleted=0)
    raise Abort(grpc.StatusCode.INTERNAL, f"unexpected answer {type(result).__name__}")


def put_response(
    req: rpc_pb2.PutRequest, result: Result, header: rpc_pb2.ResponseHeader
) -> rpc_pb2.PutResponse:
    if not isinstance(result, Written):
        raise Abort(grpc.StatusCode.INTERNAL, f"unexpected answer {type(result).__name__}")
    if req.prev_kv and result.prev is not None:
        return rpc_pb2.PutResponse(header=header, prev_kv=_kv(result.prev))
    return rpc_pb2.PutResponse(header=header)


def check_put(req: rpc_pb2.PutRequest) -> str:
    """The key of a put paxosd can carry, refusing what etcd refuses: a lease with
    ignore_lease, a value with ignore_value, a negative lease id (paxosd's ids are 63-bit:
    no such lease exists)."""
    if req.ignore_lease and req.lease != 0:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided")
    if req.ignore_value and req.value:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided")
    if req.lease < 0:
        raise Abort(grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND)
    return _text(req.key, "key")


def txn_compare(c: rpc_pb2.Compare) -> Compare:
    if c.range_end:
        unsupported("a transaction compare over a key range")
    key = _text(c.key, "key")
    if c.target not in _COMPARE_TARGETS or c.result not in _COMPARE_OPS:
        raise BadRequestError(f"unknown compare target {c.target} or result {c.result}")
    target = _COMPARE_TARGETS[c.target]
    op = _COMPARE_OPS[c.result]
    if target == "value":
        return Compare(key=key, target="value", op=op, value=c.value)
    number = {
        "version": c.version,
        "create": c.create_revision,
        "mod": c.mod_revision,
        "lease": c.lease,
    }[target]
    if number < 0:
        raise BadRequestError(f"a compare's {target} must not be negative")
    return Compare(key=key, target=target, op=op, number=number)


@dataclass(frozen=True, slots=True)
class _Planned:
    """One etcd RequestOp as the paxosd op it became, with what maps its answer back."""

    op: TxnOp
    answer: Callable[[Result, rpc_pb2.ResponseHeader], rpc_pb2.ResponseOp]


def txn_plan(r: rpc_pb2.RequestOp) -> _Planned:
    which = r.WhichOneof("request")
    if which == "request_range":
        rr = r.request_range
        if rr.serializable:
            pass  # inside a transaction every read is ordered with it
        op, kr = range_op(rr)
        return _Planned(
            op,
            lambda res, h: rpc_pb2.ResponseOp(response_range=range_response(rr, kr, res, h)),
        )
    if which == "request_put":
        rp = r.request_put
        if rp.ignore_value or rp.ignore_lease:
            unsupported("ignore_value or ignore_lease inside a transaction")
        key = check_put(rp)
        return _Planned(
            Put(key=key, value=rp.value, prev_kv=rp.prev_kv, lease=rp.lease),
            lambda res, h: rpc_pb2.ResponseOp(response_put=put_response(rp, res, h)),
        )
    if which == "request_delete_range":
        rd = r.request_delete_range
        return _Planned(
            delete_op(rd),
            lambda res, h: rpc_pb2.ResponseOp(response_delete_range=delete_response(rd, res, h)),
        )
    unsupported("nested transactions")


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    @_aborting
    def Range(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:  # noqa: N802
        try:
            op, kr = range_op(request)
        except BadRequestError as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: {e}") from None
        if kr.single:
            result, h = self._read(op, request.revision, request.serializable)
            return range_response(request, kr, result, self.b.header(h))
        rows, cut, h = self._pages(kr, request.revision, request.serializable)
        result = Rows(rows=tuple(rows), more=cut, revision=h.revision if h else 0)
        return range_response(request, kr, result, self.b.header(h))

    def _read(self, op: Op, revision: int, serializable: bool) -> tuple[Result, Header | None]:
        if serializable:
            me = self.b.identity.member_id
            (result, header), _ = self.b.call(lambda c: local_read(c, op, me))
            return _checked_or_abort(result, revision), header
        return self.b.call(lambda c: _checked(c.execute(op), revision))

    def _pages(
        self, kr: KeyRange, revision: int, serializable: bool
    ) -> tuple[list[Row], bool, Header | None]:
        """Every row of the range, page after page at the first page's revision (so the
        pages are one consistent read): ``(rows, cut, header of the first page)``."""
        rows: list[Row] = []
        cursor = kr.lo
        first: Header | None = None
        size = 0
        for _ in range(RANGE_PAGES_MAX):
            op = Range(start=cursor, end=kr.hi or "", limit=SCAN_LIMIT_MAX, revision=revision)
            result, h = self._read(op, revision, serializable)
            if not isinstance(result, Rows):
                raise Abort(grpc.StatusCode.INTERNAL, f"unexpected answer {type(result).__name__}")
            if first is None:
                first = h
                # Later pages read as of the first one (asked for "now": its revision).
                revision = revision or result.revision
            held = [r for r in result.rows if kr.holds(r.key)]
            rows += held
            size += sum(len(r.key) + len(r.value) for r in held)
            if len(held) < len(result.rows) or not result.more or not result.rows:
                return rows, False, first
            if size > RANGE_BYTES_MAX:
                break
            cursor = result.rows[-1].key + "\0"
        return rows, True, first

    @_aborting
    def Put(self, request: rpc_pb2.PutRequest, context: Any) -> rpc_pb2.PutResponse:  # noqa: N802
        try:
            key = check_put(request)
        except BadRequestError as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: {e}") from None
        if request.ignore_value or request.ignore_lease:
            return self._put_keeping(request, key)
        value, lease = request.value, request.lease
        result, h = self.b.call(lambda c: c.put(key, value, prev_kv=request.prev_kv, lease=lease))
        return put_response(request, result, self.b.header(h))

    def _put_keeping(self, request: rpc_pb2.PutRequest, key: str) -> rpc_pb2.PutResponse:
        """ignore_value / ignore_lease: write the key again keeping its current value and/or
        lease, atomically: a transaction guarded by the mod revision read, retried if the key
        moved in between (a put carries its lease, so keeping it means naming it again)."""
        for _ in range(IGNORE_VALUE_RETRIES):
            found, _ = self.b.call(lambda c: c.execute(Get(key=key)))
            if not isinstance(found, Found):
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
            guard = Compare(key=key, target="mod", op="=", number=found.mod_revision)
            put = Put(
                key=key,
                value=found.value if request.ignore_value else request.value,
                prev_kv=request.prev_kv,
                lease=found.lease if request.ignore_lease else request.lease,
            )
            txn: Callable[[Client], TxnResult] = partial(_txn_of, [guard], [put])
            result, h = self.b.call(txn)
            if result.succeeded:
                return put_response(request, result.responses[0], self.b.header(h))
        raise Abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: the key kept changing; retry")

    @_aborting
    def DeleteRange(  # noqa: N802
        self, request: rpc_pb2.DeleteRangeRequest, context: Any
    ) -> rpc_pb2.DeleteRangeResponse:
        try:
            op = delete_op(request)
        except BadRequestError as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: {e}") from None
        result, h = self.b.call(lambda c: c.execute(op))
        return delete_response(request, result, self.b.header(h))

    @_aborting
    def Txn(self, request: rpc_pb2.TxnRequest, context: Any) -> rpc_pb2.TxnResponse:  # noqa: N802
        try:
            compares = [txn_compare(c) for c in request.compare]
            success = [txn_plan(r) for r in request.success]
            failure = [txn_plan(r) for r in request.failure]
        except BadRequestError as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: {e}") from None
        result, h = self.b.call(
            lambda c: c.txn(compares, [p.op for p in success], [p.op for p in failure])
        )
        assert isinstance(result, TxnResult)
        header = self.b.header(h)
        # etcd's responses inside a transaction carry only the revision in their header.
        inner = rpc_pb2.ResponseHeader(revision=result.revision)
        plans = success if result.succeeded else failure
        responses = [p.answer(r, inner) for p, r in zip(plans, result.responses, strict=True)]
        return rpc_pb2.TxnResponse(header=header, succeeded=result.succeeded, responses=responses)

    @_aborting
    def Compact(  # noqa: N802
        self, request: rpc_pb2.CompactionRequest, context: Any
    ) -> rpc_pb2.CompactionResponse:
        if request.revision <= 0:
            raise Abort(
                grpc.StatusCode.OUT_OF_RANGE,
                "etcdserver: mvcc: required revision is a future revision",
            )
        result, h = self.b.call(lambda c: c.compact(request.revision))
        return rpc_pb2.CompactionResponse(header=self.b.header(h, result.revision))


def local_read(c: Client, op: Op, node: int) -> tuple[Result, Header]:
    """etcd's serializable read: ``node``'s own applied state (this gateway's node), with no
    round to the leader, so it answers even without a quorum."""
    answer = c.ask(ReadStale(c.next_command(op)), node=node)
    if not isinstance(answer, StaleRead) or answer.node_id != node:
        raise BadRequestError("the local node did not answer the serializable read")
    try:
        result = decode_result(answer.result)
    except BadCommand as e:
        raise BadRequestError(f"undecodable result from the node: {e}") from None
    header = Header(
        revision=result_revision(result),
        leader=answer.leader,
        ballot=f"{answer.ballot_round}.{answer.ballot_node}",
        node=answer.node_id,
    )
    return result, header


def _checked_or_abort(result: Result, revision: int) -> Result:
    try:
        return _checked(result, revision)
    except ClientError as e:
        code, message = status_of(e)
        raise Abort(code, message) from None


def _txn_of(compares: list[Compare], success: list[TxnOp], c: Client) -> TxnResult:
    return c.txn(compares, success)


def _checked(result: Result, revision: int) -> Result:
    from paxosd.client.client import check_revision

    return check_revision(result, revision)


# ---------------------------------------------------------------------------------- Watch


class _Stream:
    """One Watch RPC: its watchers (each a paxosd Watch read by a thread of its own) and
    the bounded queue of responses the RPC's generator sends. A watcher whose responses are
    not read waits (bounded queue), so a slow client slows only its own watches."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.out: queue.Queue[rpc_pb2.WatchResponse | None] = queue.Queue(STREAM_QUEUE_MAX)
        self.watches: dict[int, Watch] = {}
        self.lock = threading.Lock()
        self.next_id = 0
        self.closed = threading.Event()

    def send(self, response: rpc_pb2.WatchResponse) -> bool:
        while not self.closed.is_set():
            try:
                self.out.put(response, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def header(self, revision: int) -> rpc_pb2.ResponseHeader:
        return self.b.header(None, revision)

    def create(self, req: rpc_pb2.WatchCreateRequest) -> None:
        with self.lock:
            watch_id = req.watch_id if req.watch_id > 0 else self.next_id
            taken = watch_id in self.watches
            self.next_id = max(self.next_id, watch_id + 1)
            full = len(self.watches) >= WATCHES_PER_STREAM_MAX
        if taken or full:
            reason = (
                "etcdserver: mvcc: watcher ID is already in use"  # noqa: S105
                if taken
                else f"paxosd: at most {WATCHES_PER_STREAM_MAX} watches per stream"
            )
            self.send(
                rpc_pb2.WatchResponse(
                    header=self.header(0),
                    watch_id=-1 if taken else watch_id,
                    created=True,
                    canceled=True,
                    cancel_reason=reason,
                )
            )
            return
        try:
            kr = key_range(req.key, req.range_end)
            if not kr.single and not (kr.hi is None and kr.lo == kr.prefix):
                raise BadRequestError("paxosd watches one key, a prefix or every key")
            names = {
                rpc_pb2.WatchCreateRequest.NOPUT: "PUT",
                rpc_pb2.WatchCreateRequest.NODELETE: "DELETE",
            }
            if any(f not in names for f in req.filters):
                raise BadRequestError("unknown watch filter")
            filters = [names[f] for f in req.filters]
            watch = Watch(
                self.b.endpoints,
                self.b.client_key,
                kr.lo,
                prefix=not kr.single,
                start_revision=max(0, req.start_revision),
                prev_kv=req.prev_kv,
                progress_notify=req.progress_notify,
                filters=filters,
                timeout_ms=self.b.timeout_ms,
            )
        except ClientError as e:
            self.send(
                rpc_pb2.WatchResponse(
                    header=self.header(0),
                    watch_id=watch_id,
                    created=True,
                    canceled=True,
                    cancel_reason=f"etcdserver: {e}",
                )
            )
            return
        with self.lock:
            self.watches[watch_id] = watch
        threading.Thread(
            target=self._run, args=(watch_id, watch), name=f"etcd-watch-{watch_id}", daemon=True
        ).start()

    def _run(self, watch_id: int, watch: Watch) -> None:
        try:
            try:
                created = watch.wait_created(WATCH_CREATE_MS)
            except CompactedError as e:
                self.send(
                    rpc_pb2.WatchResponse(header=self.header(0), watch_id=watch_id, created=True)
                )
                self.send(
                    rpc_pb2.WatchResponse(
                        header=self.header(0),
                        watch_id=watch_id,
                        canceled=True,
                        compact_revision=e.compact_revision,
                        cancel_reason="etcdserver: mvcc: required revision has been compacted",
                    )
                )
                return
            if not self.send(
                rpc_pb2.WatchResponse(header=self.header(created), watch_id=watch_id, created=True)
            ):
                return
            for batch in watch:
                events = [
                    kv_pb2.Event(
                        type=kv_pb2.Event.PUT if ev.type == "PUT" else kv_pb2.Event.DELETE,
                        kv=_kv(ev.kv),
                        prev_kv=_kv(ev.prev_kv) if ev.prev_kv is not None else None,
                    )
                    for ev in batch.events
                ]
                response = rpc_pb2.WatchResponse(
                    header=self.header(batch.revision), watch_id=watch_id, events=events
                )
                if not self.send(response):
                    return
        except CompactedError as e:
            self.send(
                rpc_pb2.WatchResponse(
                    header=self.header(0),
                    watch_id=watch_id,
                    canceled=True,
                    compact_revision=e.compact_revision,
                    cancel_reason="etcdserver: mvcc: required revision has been compacted",
                )
            )
        except (WatchCanceledError, ClientError) as e:
            self.send(
                rpc_pb2.WatchResponse(
                    header=self.header(0),
                    watch_id=watch_id,
                    canceled=True,
                    cancel_reason=f"etcdserver: {e}",
                )
            )
        finally:
            watch.close()
            with self.lock:
                if self.watches.get(watch_id) is watch:
                    del self.watches[watch_id]

    def cancel(self, watch_id: int) -> None:
        with self.lock:
            watch = self.watches.pop(watch_id, None)
        if watch is not None:
            watch.cancel()
            self.send(
                rpc_pb2.WatchResponse(header=self.header(0), watch_id=watch_id, canceled=True)
            )

    def progress(self) -> None:
        """etcd's progress request: a response (watch id -1) whose revision every watcher of
        the stream has been sent all events up to; sent only once every watcher knows one."""
        with self.lock:
            known = [w.next_revision for w in self.watches.values()]
        if known and all(n is not None for n in known):
            revision = min(n for n in known if n is not None) - 1
            self.send(rpc_pb2.WatchResponse(header=self.header(revision), watch_id=-1))

    def read_requests(self, requests: Iterator[rpc_pb2.WatchRequest]) -> None:
        try:
            for req in requests:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    self.create(req.create_request)
                elif which == "cancel_request":
                    self.cancel(req.cancel_request.watch_id)
                elif which == "progress_request":
                    self.progress()
        except grpc.RpcError:
            pass  # the client went away: close() below ends every watcher
        finally:
            self.close()

    def close(self) -> None:
        self.closed.set()
        with self.lock:
            watches = list(self.watches.values())
            self.watches.clear()
        for w in watches:
            w.cancel()
        with contextlib.suppress(queue.Full):
            self.out.put_nowait(None)


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    def Watch(  # noqa: N802
        self, request_iterator: Iterator[rpc_pb2.WatchRequest], context: grpc.ServicerContext
    ) -> Iterator[rpc_pb2.WatchResponse]:
        if not self.b.watch_streams.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"etcdserver: too many watch streams (at most {WATCH_STREAMS_MAX}); "
                "put several watches on one stream",
            )
        try:
            yield from self._serve(request_iterator, context)
        finally:
            self.b.watch_streams.release()

    def _serve(
        self, request_iterator: Iterator[rpc_pb2.WatchRequest], context: grpc.ServicerContext
    ) -> Iterator[rpc_pb2.WatchResponse]:
        stream = _Stream(self.b)
        context.add_callback(stream.close)
        threading.Thread(
            target=stream.read_requests,
            args=(request_iterator,),
            name="etcd-watch-stream",
            daemon=True,
        ).start()
        while True:
            try:
                response = stream.out.get(timeout=0.5)
            except queue.Empty:
                if stream.closed.is_set() or not context.is_active():
                    return
                continue
            if response is None:
                return
            yield response


# ---------------------------------------------------------------------------------- Maintenance


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, backend: Backend, db_size: Callable[[], int]) -> None:
        self.b = backend
        self.db_size = db_size

    def _status(self) -> Any:
        status, _ = self.b.call(lambda c: c.status(node=self.b.identity.member_id))
        return status

    @_aborting
    def Status(self, request: rpc_pb2.StatusRequest, context: Any) -> rpc_pb2.StatusResponse:  # noqa: N802
        s = self._status()
        term = int(s.promised.split(".")[0]) if s.promised else 0
        size = self.db_size()
        header = rpc_pb2.ResponseHeader(
            cluster_id=self.b.identity.cluster_id,
            member_id=self.b.identity.member_id,
            revision=s.revision,
            raft_term=term,
        )
        return rpc_pb2.StatusResponse(
            header=header,
            version=ETCD_VERSION,
            dbSize=size,
            dbSizeInUse=size,
            leader=s.leader or 0,
            raftIndex=s.decided_index,
            raftTerm=term,
            raftAppliedIndex=s.applied_index,
            isLearner=s.node_id in s.learners,
            errors=[f"memberID:{a.member} alarm:{a.alarm}" for a in s.alarms],
        )

    @_aborting
    def HashKV(self, request: rpc_pb2.HashKVRequest, context: Any) -> rpc_pb2.HashKVResponse:  # noqa: N802
        """The node's state digest (keys, values, revisions, history bounds) folded to 32
        bits: equal on members that applied the same log, as etcd's HashKV is."""
        s = self._status()
        if request.revision not in (0, s.revision):
            unsupported("HashKV at a revision other than the member's current one")
        return rpc_pb2.HashKVResponse(
            header=self.b.header(None, s.revision),
            hash=zlib.crc32(s.digest.encode()),
            compact_revision=s.compact_revision,
        )

    @_aborting
    def Hash(self, request: rpc_pb2.HashRequest, context: Any) -> rpc_pb2.HashResponse:  # noqa: N802
        s = self._status()
        return rpc_pb2.HashResponse(
            header=self.b.header(None, s.revision), hash=zlib.crc32(s.digest.encode())
        )

    @_aborting
    def Alarm(self, request: rpc_pb2.AlarmRequest, context: Any) -> rpc_pb2.AlarmResponse:  # noqa: N802
        """paxosd's replicated alarms (NOSPACE, raised by the leader when the store passes a
        member's quota). GET lists them; DEACTIVATE of NOSPACE is paxosd's disarm (the
        leader raises it again if the store is still over quota); ACTIVATE is refused: the
        quota raises it."""
        nospace = rpc_pb2.NOSPACE
        if request.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            if request.alarm not in (nospace, rpc_pb2.NONE):
                unsupported(f"alarm type {request.alarm}")
            self.b.call(lambda c: c.alarm_disarm())
        elif request.action != rpc_pb2.AlarmRequest.GET:
            unsupported("raising alarms by hand (the quota raises NOSPACE)")
        return rpc_pb2.AlarmResponse(header=self.b.header(), alarms=self._alarms(request))

    def _alarms(self, request: rpc_pb2.AlarmRequest | None = None) -> list[rpc_pb2.AlarmMember]:
        s = self._status()
        out = []
        for a in s.alarms:
            if a.alarm != "NOSPACE":
                continue
            if request is not None and request.action == rpc_pb2.AlarmRequest.GET:
                if request.memberID and request.memberID != a.member:
                    continue
                if request.alarm not in (rpc_pb2.NONE, rpc_pb2.NOSPACE):
                    continue
            out.append(rpc_pb2.AlarmMember(memberID=a.member, alarm=rpc_pb2.NOSPACE))
        return out

    @_aborting
    def Defragment(  # noqa: N802
        self, request: rpc_pb2.DefragmentRequest, context: Any
    ) -> rpc_pb2.DefragmentResponse:
        return rpc_pb2.DefragmentResponse(header=self.b.header())

    @_aborting
    def MoveLeader(  # noqa: N802
        self, request: rpc_pb2.MoveLeaderRequest, context: Any
    ) -> rpc_pb2.MoveLeaderResponse:
        status = self._status()
        if status.leader is None:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        target = request.targetID
        self.b.call(lambda c: c.transfer(target, node=status.leader))
        return rpc_pb2.MoveLeaderResponse(header=self.b.header())

    def Snapshot(  # noqa: N802
        self, request: rpc_pb2.SnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[rpc_pb2.SnapshotResponse]:
        """This node's snapshot as a paxosd backup file in the shape etcdctl checks (padded
        to 512 bytes, then a sha256): ``paxosd restore`` reads it; etcd's ``snapshot
        restore`` cannot (it is not a bbolt database)."""
        from paxosd.storage.backup import (
            SnapshotStreamError,
            encode_backup,
            etcd_wrap,
            fetch_snapshot,
            header_for,
        )

        me = self.b.identity.member_id

        def ask(args: dict[str, Any]) -> dict[str, Any]:
            chunk = self.b.client().snapshot_read(
                int(args.get("offset", 0)), args.get("slot"), args.get("chunk_bytes"), node=me
            )
            return {f: v for f in chunk.__struct_fields__ if (v := getattr(chunk, f)) is not None}

        try:
            fetched = fetch_snapshot(ask)
        except (SnapshotStreamError, ClientError) as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"etcdserver: snapshot: {e}")
        blob = etcd_wrap(encode_backup(header_for(fetched), fetched.state))
        step = 1 << 20
        for at in range(0, len(blob), step):
            part = blob[at : at + step]
            yield rpc_pb2.SnapshotResponse(
                header=self.b.header(),
                remaining_bytes=len(blob) - at - len(part),
                blob=part,
            )


# ---------------------------------------------------------------------------------- Cluster


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    def _members(self, node: int | None = None) -> list[rpc_pb2.Member]:
        reply, _ = self.b.call(lambda c: c.members(node=node))
        out = []
        for m in reply.members:
            url = self.b.etcd_urls.get(m.node_id)
            out.append(
                rpc_pb2.Member(
                    ID=m.node_id,
                    name=f"n{m.node_id}",
                    peerURLs=[f"http://{m.peer_address}"] if m.peer_address else [],
                    clientURLs=[url] if url else [],
                    isLearner=m.role == "learner",
                )
            )
        return out

    def _leader(self) -> int:
        reply, _ = self.b.call(lambda c: c.members(node=self.b.identity.member_id))
        if reply.leader is None:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        return int(reply.leader)

    @_aborting
    def MemberList(  # noqa: N802
        self, request: rpc_pb2.MemberListRequest, context: Any
    ) -> rpc_pb2.MemberListResponse:
        members = self._members(self.b.identity.member_id)
        return rpc_pb2.MemberListResponse(header=self.b.header(), members=members)

    @_aborting
    def MemberAdd(  # noqa: N802
        self, request: rpc_pb2.MemberAddRequest, context: Any
    ) -> rpc_pb2.MemberAddResponse:
        """paxosd adds a member as a learner (it votes once promoted), so only a learner
        add is served; its id is the next free node id."""
        if not request.isLearner:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "etcdserver: paxosd adds members as learners: use --learner, then member promote",
            )
        if len(request.peerURLs) != 1:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: give exactly one peer URL")
        address = request.peerURLs[0].split("://", 1)[-1].rstrip("/")
        current = self._members()
        member_id = max((m.ID for m in current), default=0) + 1
        leader = self._leader()
        self.b.call(lambda c: c.change_member("add", member_id, address, node=leader))
        members = self._members(leader)  # the leader has decided it; a follower may lag
        added = next(
            (m for m in members if member_id == m.ID),
            rpc_pb2.Member(ID=member_id, peerURLs=[request.peerURLs[0]], isLearner=True),
        )
        return rpc_pb2.MemberAddResponse(header=self.b.header(), member=added, members=members)

    @_aborting
    def MemberRemove(  # noqa: N802
        self, request: rpc_pb2.MemberRemoveRequest, context: Any
    ) -> rpc_pb2.MemberRemoveResponse:
        leader = self._leader()
        self.b.call(lambda c: c.change_member("remove", request.ID, node=leader))
        members = self._members(leader)
        return rpc_pb2.MemberRemoveResponse(header=self.b.header(), members=members)

    @_aborting
    def MemberPromote(  # noqa: N802
        self, request: rpc_pb2.MemberPromoteRequest, context: Any
    ) -> rpc_pb2.MemberPromoteResponse:
        leader = self._leader()
        self.b.call(lambda c: c.change_member("promote", request.ID, node=leader))
        members = self._members(leader)
        return rpc_pb2.MemberPromoteResponse(header=self.b.header(), members=members)

    @_aborting
    def MemberUpdate(  # noqa: N802
        self, request: rpc_pb2.MemberUpdateRequest, context: Any
    ) -> rpc_pb2.MemberUpdateResponse:
        unsupported("MemberUpdate (a member's peer address is set when it is added)")
