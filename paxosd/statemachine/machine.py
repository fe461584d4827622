"""The replicated state machine: etcd's key-value data model (one store revision, per-key
create/mod revision and version, history back to a compaction revision, transactions), the
sites' block relation and timeline, and the exactly-once session table.

History is replicated state like the rest: every replica keeps the same versions and events,
compacts at the same points (an explicit ``Compact``, or the history byte budget crossed by
a slot), and carries them in its snapshots, so any replica can answer a read at a revision
or feed a watch (``events_since``).

Every replica applies the same decided slots in the same order, so ``apply`` must be a pure
function of (state, slot, value): no clock, no randomness, no dependence on set or dict
iteration order in anything it returns or keeps. Every bound below evicts or refuses in a way
that depends only on the applied log, so all replicas evict and refuse identically.

Reads are linearizable by read-index: the leader confirms it still leads with one heartbeat
round, then answers from this state once it has applied that far (``query``); reads are not
written to the log. A read that does reach the log (the simulator sends some that way, to
check both paths) is applied like a write and changes nothing but session bookkeeping.
"""

import bisect
import hashlib
import heapq
import itertools
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final, Protocol, Self, runtime_checkable

import msgspec

from paxosd.core.membership import is_membership_command
from paxosd.core.types import SnapshotState
from paxosd.statemachine.commands import (
    ALARMS,
    CLIENT_ID_BYTES_MAX,
    KEY_BYTES_MAX,
    LEASE_ID_MAX,
    LEASE_KEYS_MAX,
    LEASE_TTL_S_MAX,
    LEASES_MAX,
    SEQ_MAX,
    SITE_BYTES_MAX,
    VALUE_BYTES_MAX,
    VERSION_MAX,
    Alarm,
    AlarmMember,
    Alarms,
    BadCommand,
    Block,
    BlockList,
    BlockPair,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Command,
    Compact,
    Compacted,
    Compare,
    Delete,
    Deleted,
    Event,
    Found,
    Full,
    FutureRevision,
    Get,
    KeyValue,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseInfo,
    LeaseKeepAlive,
    LeaseLeases,
    LeaseList,
    LeaseNotFound,
    LeaseRefused,
    LeaseRevoke,
    LeaseRevoked,
    LeaseTakenOver,
    LeaseTakeover,
    LeaseTimeToLive,
    Malformed,
    NoSpace,
    NotFound,
    Op,
    Post,
    Put,
    Range,
    Result,
    RevisionCompacted,
    Row,
    Rows,
    Scan,
    Stale,
    Timeline,
    Txn,
    TxnOp,
    TxnRefused,
    TxnResponse,
    TxnResult,
    Unblock,
    View,
    Written,
    adds_data,
    decode_command,
    decode_result,
    encode_result,
    is_read,
)
from paxosd.statemachine.slices import (
    ArrayReader,
    SliceError,
    array_header,
    page_dropper,
    read_array_header,
    sorted_in_pieces,
)

SNAPSHOT_FORMAT: Final = 3
# format 1: before revisions and history; format 2: before leases (old data dirs)
SNAPSHOT_FORMATS: Final = (1, 2, 3)
# Checked before decoding a snapshot from disk or a peer. It fits a store at the default
# quota ([limits] quota_bytes, 2 GiB of keys and values) plus every other byte budget of
# Limits (history, timeline, sessions), with room to spare; the core's
# Config.snapshot_bytes_max (what a peer may announce) is the same number.
SNAPSHOT_BYTES_MAX: Final = 4 << 30
# Bytes charged per stored entry on top of its payload, so that many tiny entries cannot
# slip past the byte budgets (and so the budgets also bound the snapshot's encoded size).
ENTRY_OVERHEAD_BYTES: Final = 64
# Result shaping: a scan or view page stops at this many payload bytes, well under
# commands.RESULT_BYTES_MAX even with per-row overhead. A write's answer (a transaction's
# responses, a prefix delete's prev_kv) shares one budget of this size too.
PAGE_BYTES_MAX: Final = 4 << 20
# Keys one scan (or one transaction's scans) may look at, present or not.
SCAN_VISITS_MAX: Final = 100_000
# A hard ceiling on the sum of the byte budgets, so a valid state always snapshots under
# SNAPSHOT_BYTES_MAX.
_BUDGET_BYTES_MAX: Final = SNAPSHOT_BYTES_MAX - (64 << 20)
_ONE_ENTRY_BYTES_MAX: Final = 1 << 20
_BLOCKS_MAX_MAX: Final = 20_000  # keeps a full BlockList under RESULT_BYTES_MAX
_CHECKSUM_BYTES: Final = 32
# Compacted events whose references one apply releases, on top of as many as the slot added
# (_release_compacted): a fraction of a millisecond of cache misses.
RELEASE_EVENTS_MAX: Final = 4096
# write_snapshot encodes the long fields this many entries at a time (a few MiB at 1 KiB).
_STREAM_ITEMS: Final = 4096
# restoring's default piece of work between yields: ~1-3 ms of decoding or checking.
RESTORE_BATCH: Final = 1024
# More than one slot's commands can write (the core's batches are a few MiB at most).
_SLOT_BYTES_MAX: Final = 16 << 20
_CHAIN_SEED: Final = hashlib.sha256(b"paxosd.statemachine.machine/v1").digest()
# The first revision a change can have: a fresh store is at revision 1 and holds nothing.
_FIRST_CHANGE: Final = 2
# The last revision and version apply makes, one below what the wire and snapshots carry, so
# that revision + 1 (a watch's next revision) still encodes. A write past them is refused, and
# restore refuses a state past them: every state apply reaches restores, and every restored
# state applies without overflow.
_REVISION_LAST: Final = SEQ_MAX - 1
_VERSION_LAST: Final = VERSION_MAX - 1

_mod_revision: Final = attrgetter("mod_revision")
# Stands in for a compacted event until the event list's compacted prefix is trimmed.
_COMPACTED: Final = KeyValue(key="", value=b"", create_revision=0, mod_revision=0, version=0)


@runtime_checkable
class Mappable(Protocol):
    """Snapshot bytes kept in a file, readable as one mapped buffer while ``view()`` lasts."""

    def view(self) -> AbstractContextManager[memoryview]: ...


class BadSnapshot(ValueError):
    """Snapshot bytes that are not a valid state. The only exception ``restore`` raises on
    bad input."""


class Limits(msgspec.Struct, frozen=True, array_like=True):
    """The state machine's bounds. They shape results and evictions, so replicas must agree:
    they travel inside every snapshot and a restored replica keeps the snapshot's limits.

    ``history_bytes_max`` bounds the superseded versions and deletions kept for reads at a
    revision and for watches; past it, apply compacts the oldest history. It is the last
    field so that a format-1 snapshot's limits decode with its default."""

    sessions_max: int = 10_000
    sessions_bytes_max: int = 64 << 20
    timeline_max: int = 100_000
    timeline_bytes_max: int = 64 << 20
    # The default quota ([limits] quota_bytes): the alarm, not this bound, stops a store.
    kv_bytes_max: int = 2 << 30
    blocks_max: int = 10_000
    history_bytes_max: int = 256 << 20

    def check(self) -> None:
        """Raise ValueError unless every limit is positive and their sum fits a snapshot."""
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name}={value!r} must be a positive integer")
        budget = (
            self.sessions_bytes_max
            + self.timeline_bytes_max
            + self.kv_bytes_max
            + self.history_bytes_max
        )
        if budget > _BUDGET_BYTES_MAX:
            raise ValueError(f"byte budgets sum to {budget}, over {_BUDGET_BYTES_MAX}")
        if self.blocks_max > _BLOCKS_MAX_MAX:
            raise ValueError(f"blocks_max {self.blocks_max} is over {_BLOCKS_MAX_MAX}")
        # One session (a cached cas mismatch carries a whole value) and one post must always
        # fit, or eviction would throw away the entry it just made room for.
        for name in ("sessions_bytes_max", "timeline_bytes_max"):
            if getattr(self, name) < _ONE_ENTRY_BYTES_MAX:
                raise ValueError(f"limit {name} must be at least {_ONE_ENTRY_BYTES_MAX}")


@dataclass(slots=True)
class _Session:
    last_seq: int
    # The encoded answer to last_seq, or None when last_seq was a read: a read's answer can
    # be large, and running a retried read again is still linearizable (it runs inside the
    # retried operation's interval), so only write answers are kept.
    result: bytes | None


class _KvEntry(msgspec.Struct, frozen=True, array_like=True):
    """A key in a format-1 snapshot (before revisions)."""

    key: str
    value: bytes
    version: int


class _SessionEntry(msgspec.Struct, frozen=True, array_like=True):
    client_id: str
    last_seq: int
    result: bytes | None


class _LeaseEntry(msgspec.Struct, frozen=True, array_like=True):
    """A lease in a snapshot; its keys are the live keys whose ``lease`` names it."""

    id: int
    ttl: int
    remaining_ms: int


@dataclass(slots=True)
class _Lease:
    """A lease as the log knows it: its TTL in seconds, its keys, and ``remaining_ms``, the
    last checkpoint of its remaining time (0: none since it was granted or kept alive, so it
    has its full TTL). Time itself is the leader's (paxosd/server/leases.py), never apply's."""

    ttl: int
    remaining_ms: int = 0
    keys: set[str] | None = None


class _SnapshotState(msgspec.Struct, frozen=True, array_like=True):
    """The encoded state. ``sessions`` is in least-recently-used-first order, which is what
    lets a restored replica evict exactly like the others.

    Format 1 (old data dirs) has only the fields up to ``sessions``, its keys in ``kv``.
    Format 2 leaves ``kv`` empty and stores every retained version of every key: ``base``
    holds the versions older than the history's floor (max(compact_revision, 2)), one per key
    at most, sorted by key; ``events`` holds every version from the floor on, in revision
    order (a deletion is a version with version 0). The current state, the per-key index and
    each event's prev_kv are all derived from these two on restore, so nothing is stored twice.
    """

    format: int
    applied_through: int
    chain: bytes
    limits: Limits
    kv: tuple[_KvEntry, ...]  # format 1 only, sorted by key
    blocks: tuple[BlockPair, ...]  # sorted
    timeline: tuple[Post, ...]  # log order
    sessions: tuple[_SessionEntry, ...]
    revision: int = 1
    compact_revision: int = 0
    base: tuple[KeyValue, ...] = ()
    events: tuple[KeyValue, ...] = ()
    # The raised alarms, sorted by member (absent from older snapshots: none raised).
    alarms: tuple[AlarmMember, ...] = ()
    # Format 3: leases (sorted by id), the ballot that took them over, the next id to pick.
    leases: tuple[_LeaseEntry, ...] = ()
    lease_ballot: tuple[int, int] = (0, 0)
    next_lease_id: int = 1


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_SnapshotState)
# The state's fields in order, each's decoder, and which are long arrays decoded in batches
# by ``restoring`` (a tuple decoder decodes a batch as well as the whole).
_FIELDS: Final = tuple(f.name for f in msgspec.structs.fields(_SnapshotState))
_FIELDS_REQUIRED: Final = sum(f.required for f in msgspec.structs.fields(_SnapshotState))
_field_decoders: Final = {
    f.name: msgspec.msgpack.Decoder(f.type) for f in msgspec.structs.fields(_SnapshotState)
}
_LONG_FIELDS: Final = frozenset(
    {"kv", "blocks", "timeline", "sessions", "base", "events", "alarms", "leases"}
)


def _kv_cost(key: str, value: bytes) -> int:
    return ENTRY_OVERHEAD_BYTES + len(key.encode("utf-8")) + len(value)


def _entry_cost(kv: KeyValue) -> int:
    return ENTRY_OVERHEAD_BYTES + len(kv.key.encode("utf-8")) + len(kv.value)


def _post_cost(post: Post) -> int:
    return (
        ENTRY_OVERHEAD_BYTES
        + len(post.site.encode("utf-8"))
        + len(post.key.encode("utf-8"))
        + len(post.value)
    )


def _session_cost(client_id: str, result: bytes | None) -> int:
    return ENTRY_OVERHEAD_BYTES + len(client_id.encode("utf-8")) + len(result or b"")


def _chain(prior: bytes, slot: int, value: tuple[bytes, ...]) -> bytes:
    """One link of the running digest: length-prefixed so that no two different
    (slot, batch) sequences hash the same input bytes."""
    h = hashlib.sha256(prior)
    h.update(slot.to_bytes(8, "big"))
    h.update(len(value).to_bytes(8, "big"))
    for command in value:
        h.update(len(command).to_bytes(8, "big"))
        h.update(command)
    return h.digest()


def _tombstone(key: str, revision: int) -> KeyValue:
    """A deletion as history keeps it and a DELETE event carries it (etcd's shape: only the
    key and the deletion's revision; version 0 is what marks it)."""
    return KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)


def _compare(c: Compare, kv: KeyValue | None) -> bool:
    """One transaction condition, etcd's rules: an absent key has version, create, mod and
    lease 0, and every value compare on it is false."""
    if c.target == "value":
        if kv is None:
            return False
        mine: bytes | int = kv.value
        theirs: bytes | int = c.value
    else:
        theirs = c.number
        if kv is None:
            mine = 0
        elif c.target == "version":
            mine = kv.version
        elif c.target == "create":
            mine = kv.create_revision
        elif c.target == "mod":
            mine = kv.mod_revision
        else:
            mine = kv.lease
    match c.op:
        case "=":
            return mine == theirs
        case "!=":
            return mine != theirs
        case "<":
            return mine < theirs  # type: ignore[operator]
        case ">":
            return mine > theirs  # type: ignore[operator]
    raise AssertionError(f"compare operator {c.op!r} passed validation")


def _duplicate_write(ops: tuple[TxnOp, ...]) -> str | None:
    """etcd's rule for one branch: a key may be put once, and not both put and deleted
    (deleting it twice is fine). Returns the reason when the branch breaks it, naming the
    first put in operation order that breaks it (etcd's checkIntervals order): the reason is
    kept in the session table and snapshots, so it must not depend on set iteration order."""
    deletes = [op for op in ops if isinstance(op, Delete)]
    puts: set[str] = set()
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts or any(
                d.key == op.key or (d.prefix and op.key.startswith(d.key)) for d in deletes
            ):
                return f"duplicate key given in txn request: {op.key!r}"
            puts.add(op.key)
    return None


def _row(kv: KeyValue) -> Row:
    return Row(
        key=kv.key,
        value=kv.value,
        version=kv.version,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        lease=kv.lease,
    )


def _found(kv: KeyValue, revision: int) -> Found:
    return Found(
        value=kv.value,
        version=kv.version,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        lease=kv.lease,
        revision=revision,
    )


def _prefixed(keys: list[str], prefix: str) -> Iterator[str]:
    """The keys of a sorted list that start with ``prefix``, in order."""
    start = bisect.bisect_left(keys, prefix)
    return itertools.takewhile(lambda k: k.startswith(prefix), itertools.islice(keys, start, None))


def _between(keys: list[str], start: str, end: str) -> Iterator[str]:
    """The keys of a sorted list in ``[start, end)`` (``end`` empty: no upper bound)."""
    rest = itertools.islice(keys, bisect.bisect_left(keys, start), None)
    return rest if not end else itertools.takewhile(lambda k: k < end, rest)


class _ResultTooLarge(Exception):
    """A write's answer would not fit its byte budget; the write is refused whole."""


class _Exhausted(Exception):
    """A write would take the store's revision or a key's version past its last value: the
    command is refused whole, as ``Full(what)``. Raised only while a write is staged or at its
    commit, before the store changed (the callers change nothing else before commit)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _Writes:
    """The writes of one command, staged so that the command takes effect whole or not at
    all: a transaction checks every bound before the store changes, and its reads see its
    own earlier writes. Every staged version carries the command's revision, ``revision``.
    Each key is written at most once (``_duplicate_write`` enforces it for transactions)."""

    __slots__ = ("budget", "history_bytes", "kv_bytes", "revision", "sm", "staged", "visits")

    def __init__(self, sm: "StateMachine") -> None:
        self.sm = sm
        self.revision = sm.revision + 1
        self.staged: dict[str, KeyValue] = {}  # in write order: the revision's events
        self.kv_bytes = sm._kv_bytes  # the live bytes once the writes are made
        self.history_bytes = 0  # what the writes add to history (superseded, tombstones)
        self.budget = PAGE_BYTES_MAX  # payload bytes left for this command's answer
        self.visits = SCAN_VISITS_MAX  # keys its scans may still look at

    def current(self, key: str) -> KeyValue | None:
        kv = self.staged.get(key)
        if kv is None:
            kv = self.sm._live(key)
        return kv if kv is not None and kv.version > 0 else None

    def _charge(self, kv: KeyValue | None) -> None:
        if kv is not None:
            self.budget -= _entry_cost(kv)
            if self.budget < 0:
                raise _ResultTooLarge

    def put(self, key: str, value: bytes, prev_kv: bool, lease: int = 0) -> Written:
        versions = self.sm._index.get(key)
        if versions is not None:
            key = versions[0].key  # one string per key for all its versions, not one each
        prev = self.current(key)
        if prev is not None and prev.version >= _VERSION_LAST:
            raise _Exhausted("version")
        key_cost = ENTRY_OVERHEAD_BYTES + len(key.encode("utf-8"))
        if prev is None:
            new = KeyValue(key, value, self.revision, self.revision, 1, lease)
        else:
            assert prev.version < VERSION_MAX, f"key {key!r} version overflow"
            new = KeyValue(key, value, prev.create_revision, self.revision, prev.version + 1, lease)
            self.kv_bytes -= key_cost + len(prev.value)
            self.history_bytes += key_cost + len(prev.value)
        self.kv_bytes += key_cost + len(value)
        self.staged[key] = new
        if prev_kv:
            self._charge(prev)
        return Written(version=new.version, revision=self.revision, prev=prev if prev_kv else None)

    def delete(self, key: str, prefix: bool, prev_kv: bool) -> Deleted:
        keys: Iterable[str] = _prefixed(self.sm._keys, key) if prefix else (key,)
        removed: list[KeyValue] = []
        for k in keys:
            prev = self.current(k)
            if prev is None:
                continue
            removed.append(prev)
            if prev_kv:
                self._charge(prev)
        for prev in removed:
            self.staged[prev.key] = tombstone = _tombstone(prev.key, self.revision)
            self.kv_bytes -= _entry_cost(prev)
            self.history_bytes += _entry_cost(prev) + _entry_cost(tombstone)
        return Deleted(
            prior_version=removed[0].version if removed else 0,
            revision=self.revision if removed else self.sm.revision,
            deleted=len(removed),
            prev=tuple(removed) if prev_kv else (),
        )

    def get(self, key: str, revision: int) -> Found | NotFound:
        kv = self.current(key) if revision == 0 else self.sm._at(key, revision)
        if kv is None:
            return NotFound(revision=self.sm.revision)
        self._charge(kv)
        return _found(kv, self.sm.revision)

    def scan(self, prefix: str, limit: int, revision: int) -> Rows:
        sm = self.sm
        if revision != 0:
            return sm._scan_rows(
                _prefixed(sm._hkeys, prefix), lambda k: sm._at(k, revision), limit, self
            )
        new = sorted(k for k in self.staged if k.startswith(prefix) and sm._live(k) is None)
        keys = heapq.merge(_prefixed(sm._keys, prefix), new) if new else _prefixed(sm._keys, prefix)
        return sm._scan_rows(keys, self.current, limit, self)

    def commit(self) -> None:
        """Make the staged writes the store's: one new revision for all of them."""
        if self.staged:
            if self.revision > _REVISION_LAST:
                raise _Exhausted("revision")
            self.sm._install(self)


class StateMachine:
    """KV map with revisions and history + block relation + timeline + sessions, advanced
    one decided slot at a time.

    The key-value store is etcd's data model: one store ``revision`` (1 when empty, +1 per
    command that changes a key), per key every retained version since ``compact_revision``,
    and the changes in revision order for watches (``events_since``).

    Invariant: ``applied_through`` is the last slot applied; slot ``applied_through + 1`` is
    the only one ``apply`` accepts (slots start at 1).
    Invariant: the history's revisions are exactly max(compact_revision, 2)..revision, each
    with at least one event; compact_revision <= revision.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self.limits.check()
        self.applied_through = 0
        self._chain = _CHAIN_SEED
        self.revision = 1
        self.compact_revision = 0
        # Every retained version of every key, oldest first (a deletion is a tombstone);
        # the last entry is the key's current state. A key is in the index while any
        # version of it is retained.
        self._index: dict[str, list[KeyValue]] = {}
        self._hkeys: list[str] = []  # sorted keys of _index, for scans at a revision
        self._keys: list[str] = []  # sorted keys whose current entry is live, for scans
        self._kv_bytes = 0  # live entries
        self._history_bytes = 0  # superseded entries and tombstones
        # The changes in revision order (each also in _index). Those before _events_start
        # are compacted: the ones before _events_released are _COMPACTED placeholders and
        # wait to be trimmed in bulk, the ones between still hold their versions until
        # apply releases them, a bounded number per slot (_release_compacted).
        # Invariant: 0 <= _events_released <= _events_start <= len(_events).
        self._events: list[KeyValue] = []
        self._events_start = 0
        self._events_released = 0
        # The events that free history when compacted (updates and deletions: version != 1),
        # in revision order, the same objects as in _events; those before _updates_start are
        # compacted (_COMPACTED) and wait to be trimmed in bulk. A bulk load's creations free
        # nothing, so the trim and the compaction walk this list and never pass them one by one.
        self._updates: list[KeyValue] = []
        self._updates_start = 0
        self._blocks: set[tuple[str, str]] = set()
        self._timeline: deque[Post] = deque()
        self._timeline_bytes = 0
        # Least recently used first; every command from a client moves it to the end.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._sessions_bytes = 0
        # Raised alarms by (member, alarm): replicated (raised and cleared only by Alarm
        # commands in the log), so every replica refuses the same writes.
        self._alarms: dict[tuple[int, str], AlarmMember] = {}
        self._leases: dict[int, _Lease] = {}
        # The newest ballot that took the leases over (LeaseTakeover): only its expiries and
        # checkpoints apply.
        self.lease_ballot: tuple[int, int] = (0, 0)
        self._next_lease_id = 1
        # Not replicated state: the leases whose logged time (grant, takeover, checkpoint)
        # changed since the host last asked (take_lease_changes). The host's lease keeper
        # notes *when* it saw each change on its own clock; apply itself knows no time.
        self._lease_changes: list[int] = []
        # Not replicated either: the leases revoked or expired since the host last asked
        # (take_lease_revocations), so the keeper forgets their time (and a lease granted
        # again under the same id starts afresh).
        self._lease_revocations: list[int] = []

    @property
    def history_bytes(self) -> int:
        """Bytes charged to history: superseded versions and deletions still retained."""
        return self._history_bytes

    @property
    def store_bytes(self) -> int:
        """The store's size for its quota: live keys and values plus history, as charged
        (payload + ENTRY_OVERHEAD_BYTES per entry). A function of the applied log only, so
        every replica at one applied index reports the same number, whatever its disk."""
        return self._kv_bytes + self._history_bytes

    def last_seq(self, client_id: str) -> int | None:
        """The last seq applied for ``client_id``'s session, or None (no session): a host
        that refuses commands before proposing them must let retries through, whose answer
        the session table holds."""
        session = self._sessions.get(client_id)
        return None if session is None else session.last_seq

    def nospace(self) -> NoSpace | None:
        """What apply answers a command that adds data while NOSPACE is raised (None: it is
        not): the store's size and the raising member's quota."""
        if not self._alarms:
            return None
        quota = max(a.quota_bytes for a in self._alarms.values())
        return NoSpace(size_bytes=self.store_bytes, quota_bytes=quota)

    @property
    def alarms(self) -> tuple[AlarmMember, ...]:
        """The raised alarms, sorted by member then alarm."""
        return tuple(self._alarms[k] for k in sorted(self._alarms))

    # ---------------------------------------------------------------------------- apply

    def apply(self, slot: int, value: tuple[bytes, ...]) -> list[tuple[str, int, bytes]]:
        """Apply the decided batch of ``slot``; return (client_id, seq, encoded result) for
        each command in order. An undecodable command yields ``("", 0, Malformed)``."""
        assert slot == self.applied_through + 1, (
            f"apply out of order: slot {slot} after {self.applied_through}"
        )
        assert isinstance(value, tuple), f"slot {slot} value is {type(value).__name__}"
        self._chain = _chain(self._chain, slot, value)
        self.applied_through = slot
        first_revision = self.revision + 1
        # A membership command is the core's (it already acted on it): it enters the digest
        # chain like any value, and has no result.
        events_before = len(self._events)
        out = [self._apply_command(slot, raw) for raw in value if not is_membership_command(raw)]
        if self.revision >= first_revision:
            self._trim_history(first_revision)
        if self._events_released < self._events_start:
            self._release_compacted(len(self._events) - events_before)
        return out

    def _apply_command(self, slot: int, raw: bytes) -> tuple[str, int, bytes]:
        try:
            cmd = decode_command(raw)
        except BadCommand as e:
            return ("", 0, encode_result(Malformed(reason=str(e))))
        cid, seq = cmd.client_id, cmd.seq
        session = self._sessions.get(cid)
        # An unknown client starts a session at whatever seq it sends. Known gap: a client
        # whose session was evicted (sessions_max other clients were active since its last
        # command) and which then retries that command gets it applied a second time.
        if session is not None:
            self._sessions.move_to_end(cid)
            if seq < session.last_seq:
                return (cid, seq, encode_result(Stale(last_seq=session.last_seq)))
            if seq == session.last_seq:
                if session.result is not None:
                    return (cid, seq, session.result)
                if is_read(cmd.op):
                    return (cid, seq, encode_result(self._read(cmd.op)))
                # The client reused a read's seq for a write: refuse rather than guess.
                return (cid, seq, encode_result(Stale(last_seq=session.last_seq)))
        if is_read(cmd.op):
            encoded = encode_result(self._read(cmd.op))
            self._remember(cid, seq, None)
        else:
            try:
                result = self._write(slot, cmd)
            except _Exhausted as e:
                result = Full(what=e.what)
            encoded = encode_result(result)
            self._remember(cid, seq, encoded)
        return (cid, seq, encoded)

    def _remember(self, client_id: str, seq: int, result: bytes | None) -> None:
        old = self._sessions.pop(client_id, None)
        if old is not None:
            self._sessions_bytes -= _session_cost(client_id, old.result)
        self._sessions[client_id] = _Session(seq, result)
        self._sessions_bytes += _session_cost(client_id, result)
        limits = self.limits
        while (
            len(self._sessions) > limits.sessions_max
            or self._sessions_bytes > limits.sessions_bytes_max
        ) and len(self._sessions) > 1:
            evicted_id, evicted = self._sessions.popitem(last=False)
            self._sessions_bytes -= _session_cost(evicted_id, evicted.result)

    # ---------------------------------------------------------------------------- writes

    def _write(self, slot: int, cmd: Command) -> Result:
        if self._alarms and adds_data(cmd.op):
            refusal = self.nospace()
            assert refusal is not None
            return refusal
        match cmd.op:
            case Put(key=key, value=value, prev_kv=prev_kv, lease=lease):
                lease_refusal = self._refuse_lease_puts(((key, lease),))
                if lease_refusal is not None:
                    return lease_refusal
                writes = _Writes(self)
                written = writes.put(key, value, prev_kv, lease)
                if writes.kv_bytes > self.limits.kv_bytes_max:
                    return Full(what="kv")
                writes.commit()
                # Interned: a site's posts then share one string, not one each.
                self._post(Post(slot=slot, site=sys.intern(cmd.site), key=key, value=value))
                return written
            case Cas(key=key, new=new, expect_value=ev, expect_version=evv):
                current = self._live(key)
                if evv is not None:
                    matches = evv == (current.version if current is not None else 0)
                else:
                    matches = current is not None and current.value == ev
                if not matches:
                    if current is None:
                        return CasMismatch(value=None, version=0, revision=self.revision)
                    return CasMismatch(
                        value=current.value, version=current.version, revision=self.revision
                    )
                writes = _Writes(self)
                written = writes.put(key, new, False)
                if writes.kv_bytes > self.limits.kv_bytes_max:
                    return Full(what="kv")
                writes.commit()
                return written
            case Delete(key=key, prefix=prefix, prev_kv=prev_kv):
                writes = _Writes(self)
                try:
                    deleted = writes.delete(key, prefix, prev_kv)
                except _ResultTooLarge:
                    return Full(what="result")
                writes.commit()
                return deleted
            case Txn():
                return self._txn(slot, cmd.site, cmd.op)
            case Compact(revision=revision):
                if revision <= self.compact_revision:
                    return RevisionCompacted(
                        compact_revision=self.compact_revision, revision=revision
                    )
                if revision > self.revision:
                    return FutureRevision(revision=self.revision)
                self._compact(revision)
                return Compacted(compact_revision=revision, revision=self.revision)
            case Alarm(action=action, alarm=alarm, member=member, quota_bytes=quota):
                if action == "activate":
                    self._alarms.setdefault((member, alarm), AlarmMember(member, alarm, quota))
                else:
                    for k in [k for k in self._alarms if k[1] == alarm and member in (0, k[0])]:
                        del self._alarms[k]
                return Alarms(alarms=self.alarms)
            case Block(site=site, other=other):
                if (site, other) in self._blocks:
                    return Changed(changed=False)
                if len(self._blocks) >= self.limits.blocks_max:
                    return Full(what="blocks")
                self._blocks.add((site, other))
                return Changed(changed=True)
            case Unblock(site=site, other=other):
                if (site, other) not in self._blocks:
                    return Changed(changed=False)
                self._blocks.remove((site, other))
                return Changed(changed=True)
            case LeaseGrant() | LeaseRevoke() | LeaseExpire() | LeaseTakeover() | LeaseCheckpoint():
                return self._lease_write(cmd.op)
        raise AssertionError(f"not a write: {cmd.op!r}")

    # --------------------------------------------------------------------------- leases

    def _refuse_lease_puts(self, puts: Iterable[tuple[str, int]]) -> Result | None:
        """A put naming a lease that does not exist is refused (etcd: "lease not found"), and
        so is one that would attach more than LEASE_KEYS_MAX keys to one lease."""
        added: dict[int, int] = {}
        for key, lease_id in puts:
            if lease_id == 0:
                continue
            lease = self._leases.get(lease_id)
            if lease is None:
                return LeaseNotFound(id=lease_id, revision=self.revision)
            live = self._live(key)
            if live is None or live.lease != lease_id:
                added[lease_id] = added.get(lease_id, 0) + 1
                if len(lease.keys or ()) + added[lease_id] > LEASE_KEYS_MAX:
                    return Full(what="lease keys")
        return None

    def _lease_write(
        self, op: LeaseGrant | LeaseRevoke | LeaseExpire | LeaseTakeover | LeaseCheckpoint
    ) -> Result:
        leases = self._leases
        match op:
            case LeaseGrant(ttl=ttl, lease_id=lease_id, min_ttl=min_ttl):
                if ttl < min_ttl:
                    return LeaseRefused(
                        reason=f"lease TTL {ttl} s is below the minimum {min_ttl} s "
                        "(1.5 election timeouts, as etcd: a shorter lease could expire in "
                        "an ordinary leader election)"
                    )
                if lease_id in leases:
                    return LeaseRefused(reason=f"lease {lease_id} already exists")
                if len(leases) >= LEASES_MAX:
                    return Full(what="leases")
                if lease_id == 0:
                    while self._next_lease_id in leases:
                        self._next_lease_id += 1
                    lease_id = self._next_lease_id
                    self._next_lease_id = 1 if lease_id >= LEASE_ID_MAX else lease_id + 1
                leases[lease_id] = _Lease(ttl=ttl)
                self._lease_changes.append(lease_id)
                return LeaseGranted(id=lease_id, ttl=ttl, revision=self.revision)
            case LeaseRevoke(lease_id=lease_id):
                return self._revoke(lease_id)
            case LeaseExpire(lease_id=lease_id, ballot_round=r, ballot_node=n):
                if (r, n) != self.lease_ballot:
                    return LeaseRefused(
                        reason=f"expiry proposed under ballot {r}.{n}, but the leases were "
                        f"taken over under {self.lease_ballot[0]}.{self.lease_ballot[1]}"
                    )
                return self._revoke(lease_id)
            case LeaseTakeover(ballot_round=r, ballot_node=n):
                if (r, n) <= self.lease_ballot:
                    return LeaseRefused(reason=f"takeover under an older ballot {r}.{n}")
                self.lease_ballot = (r, n)
                touched = 0
                for lease_id in sorted(leases):
                    lease = leases[lease_id]
                    if lease.remaining_ms == 0:
                        lease.remaining_ms = lease.ttl * 1000
                        self._lease_changes.append(lease_id)
                        touched += 1
                return LeaseTakenOver(leases=touched)
            case LeaseCheckpoint(ballot_round=r, ballot_node=n, leases=items):
                if (r, n) != self.lease_ballot:
                    return LeaseRefused(reason=f"checkpoint from a deposed leader {r}.{n}")
                touched = 0
                for lease_id, remaining_ms in items:
                    found = leases.get(lease_id)
                    if found is None:
                        continue
                    found.remaining_ms = min(remaining_ms, found.ttl * 1000)
                    self._lease_changes.append(lease_id)
                    touched += 1
                return LeaseTakenOver(leases=touched)
        raise AssertionError(f"not a lease write: {op!r}")

    def _revoke(self, lease_id: int) -> Result:
        """Delete the lease and all its keys in one revision, so every watcher sees each
        key's DELETE at the same revision on every replica."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return LeaseNotFound(id=lease_id, revision=self.revision)
        deleted = 0
        if lease.keys:
            writes = _Writes(self)
            for key in sorted(lease.keys):
                deleted += writes.delete(key, False, False).deleted
            writes.commit()
        del self._leases[lease_id]
        self._lease_revocations.append(lease_id)
        return LeaseRevoked(id=lease_id, deleted=deleted, revision=self.revision)

    def take_lease_changes(self) -> list[int]:
        """The leases whose logged time changed since the last call (for the host's keeper)."""
        changes, self._lease_changes = self._lease_changes, []
        return changes

    def take_lease_revocations(self) -> list[int]:
        """The leases revoked or expired since the last call (for the host's keeper)."""
        gone, self._lease_revocations = self._lease_revocations, []
        return gone

    def lease_ids(self) -> list[int]:
        return sorted(self._leases)

    def lease_count(self) -> int:
        return len(self._leases)

    def lease_ttl(self, lease_id: int) -> int | None:
        """The lease's granted TTL in seconds, None when it does not exist."""
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.ttl

    def lease_remaining_ms(self, lease_id: int) -> int:
        """The lease's last checkpoint of remaining time (0: none, the full TTL)."""
        lease = self._leases.get(lease_id)
        return 0 if lease is None else lease.remaining_ms

    def last_change(self, key: str) -> KeyValue | None:
        """The key's newest retained version, a deletion's tombstone included (for checkers:
        at which revision a key went)."""
        versions = self._index.get(key)
        return versions[-1] if versions else None

    def lease_keys(self, lease_id: int) -> list[str]:
        lease = self._leases.get(lease_id)
        return sorted(lease.keys) if lease is not None and lease.keys else []

    def _txn(self, slot: int, site: str, txn: Txn) -> Result:
        """etcd's transaction, all or nothing: every refusal is decided before the store
        changes, and the writes are staged until the branch has run to its end."""
        for branch in (txn.success, txn.failure):
            reason = _duplicate_write(branch)
            if reason is not None:
                return TxnRefused(reason=reason)
        succeeded = all(_compare(c, self._live(c.key)) for c in txn.compares)
        ops = txn.success if succeeded else txn.failure
        refusal = self._refuse_lease_puts((op.key, op.lease) for op in ops if isinstance(op, Put))
        if refusal is not None:
            return refusal
        for op in ops:
            if isinstance(op, Get | Scan) and op.revision != 0:
                refusal = self._refuse_revision(op.revision)
                if refusal is not None:
                    return refusal
        writes = _Writes(self)
        responses: list[TxnResponse] = []
        # The revision each answer reflects, as etcd's per-op headers in a txn: the txn's own
        # once it has written something, the store's before (mvcc's storeTxnWrite).
        seen: list[int] = []
        try:
            for op in ops:
                match op:
                    case Put(key=key, value=value, prev_kv=prev_kv, lease=lease):
                        responses.append(writes.put(key, value, prev_kv, lease))
                    case Delete(key=key, prefix=prefix, prev_kv=prev_kv):
                        responses.append(writes.delete(key, prefix, prev_kv))
                    case Get(key=key, revision=revision):
                        responses.append(writes.get(key, revision))
                    case Scan(prefix=prefix, limit=limit, revision=revision):
                        responses.append(writes.scan(prefix, limit, revision))
                seen.append(writes.revision if writes.staged else self.revision)
        except _ResultTooLarge:
            return Full(what="result")
        if writes.kv_bytes > self.limits.kv_bytes_max:
            return Full(what="kv")
        writes.commit()
        site = sys.intern(site)
        for op in ops:
            if isinstance(op, Put):
                self._post(Post(slot=slot, site=site, key=op.key, value=op.value))
        return TxnResult(
            succeeded=succeeded,
            responses=tuple(
                msgspec.structs.replace(r, revision=rev)
                for r, rev in zip(responses, seen, strict=True)
            ),
            revision=self.revision,
        )

    def _install(self, writes: _Writes) -> None:
        """Make one command's staged versions (bounds already checked) the store's, at its
        revision. A superseded live version (by a put or a deletion) becomes history."""
        assert writes.revision == self.revision + 1, f"{writes.revision} after {self.revision}"
        self.revision = writes.revision
        self._kv_bytes = writes.kv_bytes
        self._history_bytes += writes.history_bytes
        index = self._index
        deleted: list[str] = []
        for key, kv in writes.staged.items():
            versions = index.get(key)
            old_lease = 0
            if versions is None:
                index[key] = [kv]
                bisect.insort(self._hkeys, key)
                was_live = False
            else:
                was_live = versions[-1].version > 0
                if was_live:
                    old_lease = versions[-1].lease
                versions.append(kv)
            if old_lease != kv.lease:
                self._move_lease(key, old_lease, kv.lease)
            if kv.version == 0:
                assert was_live, f"deletion of absent key {key!r}"
                deleted.append(key)
            elif not was_live:
                bisect.insort(self._keys, key)
            self._events.append(kv)
            if kv.version != 1:
                self._updates.append(kv)
        _remove_sorted(self._keys, deleted)

    def _move_lease(self, key: str, old: int, new: int) -> None:
        """Detach ``key`` from lease ``old`` and attach it to ``new`` (0: none)."""
        if old:
            lease = self._leases.get(old)
            if lease is not None and lease.keys is not None:
                lease.keys.discard(key)
        if new:
            lease = self._leases.get(new)
            assert lease is not None, f"key {key!r} attached to a missing lease {new}"
            if lease.keys is None:
                lease.keys = set()
            lease.keys.add(key)

    def _post(self, post: Post) -> None:
        self._timeline.append(post)
        self._timeline_bytes += _post_cost(post)
        limits = self.limits
        while (
            len(self._timeline) > limits.timeline_max
            or self._timeline_bytes > limits.timeline_bytes_max
        ) and self._timeline:
            self._timeline_bytes -= _post_cost(self._timeline.popleft())

    # ------------------------------------------------------------------------- history

    def _compact(self, revision: int) -> None:
        """etcd's compaction at ``revision``: versions older than it are dropped, except each
        key's newest one below it when that is a value, not a deletion: it is the key as of
        ``revision`` when nothing changed it at ``revision``, and the prev_kv of the event
        that did. Only the keys the compacted events touched can hold something to drop,
        and of those only the ones an update or a deletion touched: a creation (version 1)
        supersedes nothing but a deletion, whose own event is compacted too. So this walks
        only the compacted updates and deletions (``_updates``) and prunes only their keys:
        O(updates compacted) in Python, not O(events compacted), so the first compaction
        after a bulk load of a million creations does not pass them one by one. (Keys that
        leave the index altogether are cut from the sorted key list by ``_remove_sorted``,
        at C speed.) The event list's compacted prefix is found by bisection; its
        references are released later, a bounded number per slot (``_release_compacted``)."""
        assert self.compact_revision < revision <= self.revision
        updates = self._updates
        j = self._updates_start
        touched: set[str] = set()
        while j < len(updates) and (kv := updates[j]).mod_revision < revision:
            touched.add(kv.key)
            updates[j] = _COMPACTED  # the event list still holds it until it is released
            j += 1
        self._updates_start = j
        if j > 1024 and j * 2 > len(updates):
            del updates[:j]
            self._updates_start = 0
        events = self._events
        self._events_start = bisect.bisect_left(
            events, revision, lo=self._events_start, key=_mod_revision
        )
        self.compact_revision = revision
        gone: list[str] = []
        for key in touched:  # each key's pruning is independent of the others: order-free
            versions = self._index[key]
            n = bisect.bisect_left(versions, revision, key=_mod_revision)
            if n > 0 and versions[n - 1].version > 0:
                n -= 1  # the newest older version stays: the prev_kv of an event at C
            if n == 0:
                continue
            for kv in versions[:n]:
                self._history_bytes -= _entry_cost(kv)
            if n == len(versions):
                del self._index[key]
                gone.append(key)
            else:
                del versions[:n]
        _remove_sorted(self._hkeys, gone)

    def release_compacted(self) -> None:
        """Release a bounded number of compacted events (as each apply does), for a host
        that is idle: without slots to apply, what a big compaction dropped would stay
        referenced. Changes nothing replicated, so any host may call it at any time."""
        if self._events_released < self._events_start:
            self._release_compacted(0)

    def _release_compacted(self, added: int) -> None:
        """Drop the event list's references to compacted events, at most
        RELEASE_EVENTS_MAX + ``added`` (the events this slot appended) per slot, so the
        backlog drains even while every slot compacts as much as it adds. Releasing touches
        each event (its reference count), a cache miss apiece: the first compaction after a
        bulk load of a million keys would spend tens of ms on it in one slot. Only memory
        waits: what the compacted versions hold (history's charge already dropped them), and
        nothing replicated depends on when, since nothing reads before ``_events_start``.
        Once over half the list is released placeholders, they go in one C-speed cut."""
        events = self._events
        start = self._events_released
        end = min(self._events_start, start + RELEASE_EVENTS_MAX + added)
        events[start:end] = itertools.repeat(_COMPACTED, end - start)
        if end > 1024 and end * 2 > len(events):
            del events[:end]
            self._events_start -= end
            end = 0
        self._events_released = end
        assert 0 <= self._events_released <= self._events_start <= len(events)

    def _trim_history(self, first_revision: int) -> None:
        """Past the history budget, compact the oldest revisions: at the oldest revision
        that brings history within its budget, but never past ``first_revision``, the first
        revision of the slot being applied (its events stay deliverable). A function of the
        applied log only, so every replica trims alike. The target is found first and
        compacted in one pass: compacting one revision at a time cost a pass over the key
        list per revision, seconds for one slot after many small revisions."""
        over = self._history_bytes > self.limits.history_bytes_max
        if over and self.compact_revision < first_revision:
            self._compact(self._trim_target(first_revision))

    def _trim_target(self, first_revision: int) -> int:
        """The oldest revision C (compact_revision < C <= first_revision) whose compaction
        brings history within its budget, else ``first_revision``: the revision that
        compacting one revision at a time stops at. Compacting past an event frees the value
        it superseded and, for a deletion, the event itself; a creation (version 1) frees
        nothing (what it superseded is a deletion, which frees itself). Each charged history
        entry is freed by exactly one event, so the freed bytes add up event by event, and
        only updates and deletions (``_updates``) need adding: a revision of creations only
        leaves the excess as it was, so the first revision after which it is gone is an
        update's. Each update frees at least ENTRY_OVERHEAD_BYTES, so this walks at most
        excess / ENTRY_OVERHEAD_BYTES updates and one revision more."""
        excess = self._history_bytes - self.limits.history_bytes_max
        updates, index = self._updates, self._index
        i, end = self._updates_start, len(updates)
        target = first_revision
        while excess > 0 and i < end and (revision := updates[i].mod_revision) < first_revision:
            while i < end and (kv := updates[i]).mod_revision == revision:
                versions = index[kv.key]
                n = bisect.bisect_left(versions, revision, key=_mod_revision)
                if n > 0 and (prev := versions[n - 1]).version > 0:
                    excess -= _entry_cost(prev)
                if kv.version == 0:
                    excess -= _entry_cost(kv)
                i += 1
            target = revision + 1
        return target if excess <= 0 else first_revision

    def events_since(self, revision: int, limit: int) -> list[Event]:
        """The changes with revision >= ``revision`` in revision order: at least ``limit``
        of them unless history ends first, and never part of a revision (so a few more than
        ``limit`` when the last revision has several). Each carries ``prev_kv`` (None when the
        key was absent before). Callers check ``compact_revision`` first."""
        assert revision >= self.compact_revision, (
            f"events since {revision}, compacted to {self.compact_revision}"
        )
        assert limit >= 1, f"limit {limit}"
        events = self._events
        i = bisect.bisect_left(events, revision, lo=self._events_start, key=_mod_revision)
        end = min(i + limit, len(events))
        while end < len(events) and events[end].mod_revision == events[end - 1].mod_revision:
            end += 1
        out: list[Event] = []
        for kv in events[i:end]:
            versions = self._index[kv.key]
            n = bisect.bisect_left(versions, kv.mod_revision, key=_mod_revision)
            prev = versions[n - 1] if n > 0 and versions[n - 1].version > 0 else None
            out.append(Event(type="PUT" if kv.version > 0 else "DELETE", kv=kv, prev_kv=prev))
        return out

    # ----------------------------------------------------------------------------- reads

    def _live(self, key: str) -> KeyValue | None:
        versions = self._index.get(key)
        if versions is None:
            return None
        kv = versions[-1]
        return kv if kv.version > 0 else None

    def _at(self, key: str, revision: int) -> KeyValue | None:
        """The key as of ``revision`` (within the retained history), None when absent."""
        versions = self._index.get(key)
        if versions is None:
            return None
        n = bisect.bisect_right(versions, revision, key=_mod_revision)
        if n == 0:
            return None
        kv = versions[n - 1]
        return kv if kv.version > 0 else None

    def _refuse_revision(self, revision: int) -> RevisionCompacted | FutureRevision | None:
        if revision < self.compact_revision:
            return RevisionCompacted(compact_revision=self.compact_revision, revision=revision)
        if revision > self.revision:
            return FutureRevision(revision=self.revision)
        return None

    def query(self, op: Op) -> Result:
        """Answer a read from the applied state without going through the log: a stale read
        (``--stale``), or a read-index read once leadership is confirmed."""
        return self._read(op)

    def _read(self, op: Op) -> Result:
        match op:
            case Get(key=key, revision=revision):
                if revision != 0:
                    refusal = self._refuse_revision(revision)
                    if refusal is not None:
                        return refusal
                    kv = self._at(key, revision)
                else:
                    kv = self._live(key)
                if kv is None:
                    return NotFound(revision=self.revision)
                return _found(kv, self.revision)
            case Scan(prefix=prefix, limit=limit, revision=revision):
                if revision == 0:
                    return self._scan_rows(_prefixed(self._keys, prefix), self._live, limit)
                refusal = self._refuse_revision(revision)
                if refusal is not None:
                    return refusal
                return self._scan_rows(
                    _prefixed(self._hkeys, prefix), lambda k: self._at(k, revision), limit
                )
            case Range(start=start, end=end, limit=limit, revision=revision):
                if revision == 0:
                    return self._scan_rows(_between(self._keys, start, end), self._live, limit)
                refusal = self._refuse_revision(revision)
                if refusal is not None:
                    return refusal
                return self._scan_rows(
                    _between(self._hkeys, start, end), lambda k: self._at(k, revision), limit
                )
            case Blocks(site=site):
                pairs = sorted(p for p in self._blocks if site is None or p[0] == site)
                return BlockList(pairs=tuple(BlockPair(site=s, other=o) for s, o in pairs))
            case View(as_site=as_site, limit=limit):
                return self._view(as_site, limit)
            case LeaseTimeToLive(lease_id=lease_id, keys=keys):
                lease = self._leases.get(lease_id)
                if lease is None:
                    return LeaseNotFound(id=lease_id, revision=self.revision)
                # Without the leader's clock, the log's own view: the last checkpoint.
                remaining = lease.remaining_ms // 1000 if lease.remaining_ms else lease.ttl
                return LeaseInfo(
                    id=lease_id,
                    ttl=remaining,
                    granted_ttl=lease.ttl,
                    keys=tuple(self.lease_keys(lease_id)) if keys else (),
                    revision=self.revision,
                )
            case LeaseLeases():
                return LeaseList(ids=tuple(sorted(self._leases)), revision=self.revision)
            case LeaseKeepAlive(lease_id=lease_id):
                if lease_id not in self._leases:
                    return LeaseNotFound(id=lease_id, revision=self.revision)
                return LeaseRefused(reason="keep-alives are answered by the leader, not the log")
        raise AssertionError(f"not a read: {op!r}")

    def _scan_rows(
        self,
        keys: Iterable[str],
        resolve: Callable[[str], KeyValue | None],
        limit: int,
        writes: _Writes | None = None,
    ) -> Rows:
        """Rows for ``keys`` (in key order) that ``resolve`` finds present, a page at most:
        ``limit`` rows and PAGE_BYTES_MAX payload bytes (within a transaction, what is left
        of its answer's budget). At most SCAN_VISITS_MAX keys are looked at (within a
        transaction, for all its scans): a scan at an old revision, or after a transaction's
        deletions, may pass many keys that are absent, and apply must not stall on them."""
        rows: list[Row] = []
        page_bytes = 0
        page_max = PAGE_BYTES_MAX if writes is None else writes.budget
        visits = SCAN_VISITS_MAX if writes is None else writes.visits
        more = False
        for key in keys:
            visits -= 1
            if visits < 0:
                more = True  # unknown: the keys not visited may hold more rows
                break
            kv = resolve(key)
            if kv is None:
                continue
            cost = _entry_cost(kv)
            if len(rows) >= limit or page_bytes + cost > page_max:
                more = True
                break
            rows.append(_row(kv))
            page_bytes += cost
        if writes is not None:
            writes.budget -= page_bytes
            writes.visits = max(visits, 0)
        return Rows(rows=tuple(rows), more=more, revision=self.revision)

    def _view(self, as_site: str, limit: int) -> Timeline:
        """A site sees every post except those of the sites that block it, judged
        by the block relation now (an unblock makes older posts visible again)."""
        blockers = {site for site, other in self._blocks if other == as_site}
        posts: list[Post] = []
        page_bytes = 0
        for post in reversed(self._timeline):
            if post.site in blockers:
                continue
            cost = _post_cost(post)
            if len(posts) >= limit or page_bytes + cost > PAGE_BYTES_MAX:
                posts.reverse()
                return Timeline(posts=tuple(posts), more=True)
            posts.append(post)
            page_bytes += cost
        posts.reverse()
        return Timeline(posts=tuple(posts), more=False)

    # ------------------------------------------------------------------ digest, snapshot

    def digest(self) -> str:
        """A hash chained over every applied (slot, value), with the store's revision and
        compaction revision: equal exactly when two replicas applied the same prefix and
        agree on the revisions (up to SHA-256 collisions). It survives snapshot/restore.

        While the store is at revision 1 (no change since it was created or restored from a
        format-1 snapshot) it is the bare chain, as before revisions existed, so a backup
        made then still verifies against its recorded digest. Lease state (how many, and
        the ballot that took them over) counts too once any lease was ever granted."""
        leases = bool(self._leases) or self.lease_ballot != (0, 0)
        if self.revision == 1 and self.compact_revision <= 1 and not leases:
            return self._chain.hex()
        h = hashlib.sha256(self._chain)
        h.update(self.revision.to_bytes(8, "big"))
        h.update(self.compact_revision.to_bytes(8, "big"))
        if leases:
            h.update(len(self._leases).to_bytes(8, "big"))
            h.update(self.lease_ballot[0].to_bytes(8, "big"))
            h.update(self.lease_ballot[1].to_bytes(8, "big"))
        return h.hexdigest()

    def snapshot(self) -> bytes:
        # The entry structs die as soon as they are encoded, before _seal copies the bytes:
        # a snapshot's transient peak is then two copies of its bytes (~22 MB each with
        # 100,000 keys and a full timeline), not two copies plus ~7 MB of structs.
        data = _seal(_snapshot_encoder.encode(self._snapshot_state()))
        assert len(data) <= SNAPSHOT_BYTES_MAX, f"snapshot of {len(data)} bytes"
        return data

    def write_snapshot(self, write: Callable[[memoryview | bytes], None]) -> None:
        """The bytes ``snapshot()`` would return, handed to ``write`` piece by piece, so the
        encoded state never sits in memory whole: the forked snapshot child streams it to a
        file with this (paxosd/server/snapshots.py). The long fields go out in slices of
        _STREAM_ITEMS entries under one msgpack array header; the decoder reads the result
        exactly as the one-piece encoding (headers may be wider than the minimal ones)."""
        h = hashlib.sha256()

        def out(data: memoryview | bytes) -> None:
            h.update(data)
            write(data)

        state = self._snapshot_state()
        names = state.__struct_fields__
        out(array_header(len(names)))
        encode = _snapshot_encoder.encode
        for name in names:
            value = getattr(state, name)
            if isinstance(value, tuple) and len(value) > _STREAM_ITEMS:
                out(array_header(len(value)))
                for i in range(0, len(value), _STREAM_ITEMS):
                    piece = value[i : i + _STREAM_ITEMS]
                    out(memoryview(encode(piece))[len(array_header(len(piece))) :])
            else:
                out(encode(value))
        write(h.digest())

    def _snapshot_state(self) -> _SnapshotState:
        floor = max(self.compact_revision, _FIRST_CHANGE)
        base = []
        for key in self._hkeys:
            oldest = self._index[key][0]
            if oldest.mod_revision < floor:
                base.append(oldest)
        return _SnapshotState(
            format=SNAPSHOT_FORMAT,
            applied_through=self.applied_through,
            chain=self._chain,
            limits=self.limits,
            kv=(),
            blocks=tuple(BlockPair(s, o) for s, o in sorted(self._blocks)),
            timeline=tuple(self._timeline),
            sessions=tuple(
                _SessionEntry(cid, s.last_seq, s.result) for cid, s in self._sessions.items()
            ),
            revision=self.revision,
            compact_revision=self.compact_revision,
            base=tuple(base),
            events=tuple(self._events[self._events_start :]),
            alarms=self.alarms,
            leases=tuple(
                _LeaseEntry(i, self._leases[i].ttl, self._leases[i].remaining_ms)
                for i in sorted(self._leases)
            ),
            lease_ballot=self.lease_ballot,
            next_lease_id=self._next_lease_id,
        )

    @classmethod
    def restore(cls, data: bytes | bytearray | memoryview | SnapshotState) -> Self:
        """Rebuild from ``snapshot()`` bytes (from disk or a peer); BadSnapshot on any defect.
        A snapshot file (paxosd/storage/snapfile.py) is decoded from its mapping, uncopied.
        All at once: ``restoring`` run to its end (start-up, tools, tests)."""
        steps = cls.restoring(data)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                sm: Self = done.value
                return sm

    @classmethod
    def restoring(
        cls, data: bytes | bytearray | memoryview | SnapshotState, *, batch: int = RESTORE_BATCH
    ) -> Generator[None, None, Self]:
        """``restore`` in pieces: a generator that yields after each piece of work (about
        ``batch`` entries decoded or checked, or ``batch`` KiB checksummed) and returns the
        new state machine; BadSnapshot on any defect, before anything is returned. Nothing
        outside the new object changes, so the caller may drop it half-way (``close()``).

        Why: a follower installing a peer's snapshot of a GiB would otherwise stop its loop
        for seconds (no heartbeats answered: elections). The host runs a few pieces per loop
        turn (paxosd/server/runner.py, Preparation)."""
        assert batch >= 1
        if isinstance(data, Mappable):
            with data.view() as view:
                return (yield from cls.restoring(view, batch=batch))
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadSnapshot(f"expected bytes, got {type(data).__name__}")
        if len(data) > SNAPSHOT_BYTES_MAX:
            raise BadSnapshot(f"snapshot is {len(data)} bytes, over {SNAPSHOT_BYTES_MAX}")
        # Views, not copies: ``data`` may be a GiB mapped from a snapshot file. Every view is
        # released before this returns or raises, so the caller can unmap the file.
        whole = memoryview(data).cast("B")
        body = whole[: max(0, len(whole) - _CHECKSUM_BYTES)]
        drop = page_dropper(whole)  # a mapped file's pages, once read (see slices.py)
        try:
            if len(whole) < _CHECKSUM_BYTES:
                raise BadSnapshot("snapshot checksum mismatch (truncated or corrupted)")
            h = hashlib.sha256()
            piece = batch << 10
            for i in range(0, len(body), piece):
                h.update(body[i : i + piece])
                drop(i, i + piece)
                yield
            if h.digest() != whole[len(body) :]:
                raise BadSnapshot("snapshot checksum mismatch (truncated or corrupted)")
            try:
                state = yield from _decoding(body, batch, drop)
            except SliceError as e:
                raise BadSnapshot(f"undecodable snapshot: {e}"[:200]) from None
            try:
                return (yield from cls._from_state(state, batch))
            except (ValueError, TypeError) as e:
                raise BadSnapshot(str(e)) from None
        finally:
            body.release()
            whole.release()

    def dismantling(self, batch: int = 4 * RESTORE_BATCH) -> Generator[None, None, None]:
        """Empty this state machine (replaced by a peer's snapshot) a piece at a time,
        yielding every ``batch`` keys or entries: dropping a big one at once frees millions of
        objects in one call (56 ms at 300,000 keys x 1 KiB, ~4x that at 1,000,000), a stop of
        the loop the install in pieces is there to avoid. Nothing may read it meanwhile."""
        for events in (self._events, self._updates, self._hkeys, self._keys):
            while events:
                del events[-batch:]
                yield
        yield from _emptying(self._index.popitem, self._index, batch)
        yield from _emptying(self._timeline.pop, self._timeline, batch)
        yield from _emptying(self._sessions.popitem, self._sessions, batch)
        self._leases.clear()
        self._blocks.clear()

    @classmethod
    def _from_state(cls, state: _SnapshotState, batch: int) -> Generator[None, None, Self]:
        """Validate every field before trusting it: a snapshot is read from disk or a peer.
        Yields every ``batch`` entries (see restoring)."""
        if state.format not in SNAPSHOT_FORMATS:
            raise ValueError(f"snapshot format {state.format}, expected one of {SNAPSHOT_FORMATS}")
        if not 0 <= state.applied_through <= SEQ_MAX:
            raise ValueError(f"applied_through {state.applied_through} out of range")
        if len(state.chain) != len(_CHAIN_SEED):
            raise ValueError(f"digest chain is {len(state.chain)} bytes")
        state.limits.check()
        sm = cls(state.limits)
        limits = state.limits
        sm.applied_through = state.applied_through
        sm._chain = bytes(state.chain)

        if state.format == 1:
            yield from _restore_format_1(sm, state, batch)
        else:
            _restore_leases(sm, state)
            yield from _restore_history(sm, state, batch)
        for a in state.alarms:
            if a.alarm not in ALARMS or not 0 <= a.member <= SEQ_MAX or a.quota_bytes < 0:
                raise ValueError(f"bad alarm in snapshot: {a}")
            sm._alarms[(a.member, a.alarm)] = a
        if sm._kv_bytes > limits.kv_bytes_max:
            raise ValueError(f"kv holds {sm._kv_bytes} bytes, over {limits.kv_bytes_max}")
        # Apply may leave history over its budget by what the last slot superseded, since it
        # never compacts the slot it applies: at most every live version (each one's prior
        # kept as a prev_kv, plus a tombstone no bigger than it) and the slot's own writes.
        history_max = limits.history_bytes_max + 2 * limits.kv_bytes_max + _SLOT_BYTES_MAX
        if sm._history_bytes > history_max:
            raise ValueError(f"history holds {sm._history_bytes} bytes, over {history_max}")

        prior_pair: tuple[str, str] | None = None
        for i, p in enumerate(state.blocks, 1):
            _valid_text("site", p.site, SITE_BYTES_MAX)
            _valid_text("site", p.other, SITE_BYTES_MAX)
            pair = (p.site, p.other)
            if p.site == p.other or (prior_pair is not None and pair <= prior_pair):
                raise ValueError(f"block pair {pair!r} invalid or not strictly sorted")
            sm._blocks.add(pair)
            prior_pair = pair
            if i % batch == 0:
                yield
        if len(sm._blocks) > limits.blocks_max:
            raise ValueError(f"{len(sm._blocks)} block pairs, over {limits.blocks_max}")

        prior_slot = 0
        for i, post in enumerate(state.timeline, 1):
            _valid_text("site", post.site, SITE_BYTES_MAX)
            _valid_text("key", post.key, KEY_BYTES_MAX)
            if len(post.value) > VALUE_BYTES_MAX:
                raise ValueError("timeline post value too long")
            if not prior_slot <= post.slot <= state.applied_through:
                raise ValueError(f"timeline post slot {post.slot} out of order")
            # Interned as in _write, so that a restored replica's posts share site strings too.
            if post.site is not (site := sys.intern(post.site)):
                post = Post(slot=post.slot, site=site, key=post.key, value=post.value)
            sm._timeline.append(post)
            sm._timeline_bytes += _post_cost(post)
            prior_slot = post.slot
            if i % batch == 0:
                yield
        if (
            len(sm._timeline) > limits.timeline_max
            or sm._timeline_bytes > limits.timeline_bytes_max
        ):
            raise ValueError("timeline over its bounds")

        for i, s in enumerate(state.sessions, 1):
            _valid_text("client_id", s.client_id, CLIENT_ID_BYTES_MAX)
            if s.client_id in sm._sessions or not 0 <= s.last_seq <= SEQ_MAX:
                raise ValueError(f"session {s.client_id!r} duplicated or out of range")
            if s.result is not None:
                try:
                    decode_result(s.result)
                except BadCommand as e:
                    raise ValueError(f"session {s.client_id!r}: {e}") from None
            sm._sessions[s.client_id] = _Session(s.last_seq, s.result)
            sm._sessions_bytes += _session_cost(s.client_id, s.result)
            if i % batch == 0:
                yield
        if (
            len(sm._sessions) > limits.sessions_max
            or sm._sessions_bytes > limits.sessions_bytes_max
        ):
            raise ValueError("session table over its bounds")
        return sm


def _decoding(
    body: memoryview, batch: int, drop: Callable[[int, int], None] = lambda start, stop: None
) -> Generator[None, None, _SnapshotState]:
    """``_snapshot_decoder.decode(body)``, the long fields ``batch`` entries at a time (see
    paxosd/statemachine/slices.py); SliceError on anything msgspec would refuse."""
    reader = ArrayReader(body, drop)
    try:
        n, reader.pos = read_array_header(body, 0)
        if not _FIELDS_REQUIRED <= n <= len(_FIELDS):
            raise SliceError(f"a state of {n} fields, expected {_FIELDS_REQUIRED}..{len(_FIELDS)}")
        values: dict[str, Any] = {}
        for name in _FIELDS[:n]:
            decoder = _field_decoders[name]
            if name in _LONG_FIELDS:
                values[name] = tuple((yield from reader.items(decoder, batch)))
            else:
                values[name] = reader.value(decoder)
        if reader.pos != len(body):
            raise SliceError(f"trailing bytes after the state (byte {reader.pos})")
    finally:
        reader.buf.release()
    return _SnapshotState(**values)


def _remove_sorted(keys: list[str], remove: list[str]) -> None:
    """Remove ``remove`` (present, distinct, any order) from the sorted list ``keys``: one
    at a time while they are few, else by copying the runs of keys between them (a prefix
    delete or a compaction can remove most keys at once; one at a time would be quadratic).
    The runs are list slices, copied at C speed: a removal costs a bisect per removed key
    and one copy of the list, not a Python step per key kept."""
    if len(remove) <= 16:
        for key in remove:
            del keys[bisect.bisect_left(keys, key)]
        return
    kept: list[str] = []
    start = 0
    for key in sorted(remove):
        at = bisect.bisect_left(keys, key, start)
        kept += keys[start:at]
        start = at + 1
    kept += keys[start:]
    keys[:] = kept


def _restore_format_1(
    sm: StateMachine, state: _SnapshotState, batch: int
) -> Generator[None, None, None]:
    """An old snapshot has no revisions: the store is at revision 1 and every key was created
    and last changed at 1. History before it is unknown, so it is compacted at 1 (0 when the
    store is empty, as a fresh one)."""
    if (state.revision, state.compact_revision, state.base, state.events) != (1, 0, (), ()):
        raise ValueError("a format-1 snapshot has no revisions or history")
    prior: str | None = None
    for i, e in enumerate(state.kv, 1):
        if i % batch == 0:
            yield
        _valid_text("key", e.key, KEY_BYTES_MAX)
        if prior is not None and e.key <= prior:
            raise ValueError(f"kv keys not strictly sorted at {e.key!r}")
        if len(e.value) > VALUE_BYTES_MAX or not 1 <= e.version <= _VERSION_LAST:
            raise ValueError(f"kv entry {e.key!r} out of bounds")
        kv = KeyValue(e.key, e.value, 1, 1, e.version)
        sm._index[e.key] = [kv]
        sm._hkeys.append(e.key)
        sm._keys.append(e.key)
        sm._kv_bytes += _entry_cost(kv)
        prior = e.key
    sm.compact_revision = 1 if state.kv else 0


def _restore_leases(sm: StateMachine, state: _SnapshotState) -> None:
    """Format 3's leases (format 2 has none: its defaults)."""
    if state.format < 3 and (state.leases or state.lease_ballot != (0, 0)):
        raise ValueError(f"a format-{state.format} snapshot has no leases")
    prior = 0
    for e in state.leases:
        if not prior < e.id <= LEASE_ID_MAX:
            raise ValueError(f"lease {e.id} out of range or not strictly sorted")
        if not 1 <= e.ttl <= LEASE_TTL_S_MAX or not 0 <= e.remaining_ms <= e.ttl * 1000:
            raise ValueError(f"lease {e.id}: TTL {e.ttl} / remaining {e.remaining_ms} invalid")
        sm._leases[e.id] = _Lease(ttl=e.ttl, remaining_ms=e.remaining_ms)
        prior = e.id
    if len(sm._leases) > LEASES_MAX:
        raise ValueError(f"{len(sm._leases)} leases, over {LEASES_MAX}")
    r, n = state.lease_ballot
    if not (0 <= r <= SEQ_MAX and 0 <= n <= SEQ_MAX):
        raise ValueError("lease ballot out of range")
    if not 1 <= state.next_lease_id <= LEASE_ID_MAX:
        raise ValueError(f"next lease id {state.next_lease_id} out of range")
    sm.lease_ballot = (r, n)
    sm._next_lease_id = state.next_lease_id
    sm._lease_changes = sorted(sm._leases)


def _valid_kv(kv: KeyValue, format: int) -> None:
    _valid_text("key", kv.key, KEY_BYTES_MAX)
    if len(kv.value) > VALUE_BYTES_MAX:
        raise ValueError(f"key {kv.key!r}: value of {len(kv.value)} bytes")
    if format < 3 and kv.lease != 0:
        raise ValueError(f"key {kv.key!r}: lease {kv.lease} in a format-{format} snapshot")
    if not 0 <= kv.lease <= LEASE_ID_MAX:
        raise ValueError(f"key {kv.key!r}: lease {kv.lease} out of range")
    if not 0 <= kv.version <= VERSION_MAX:
        raise ValueError(f"key {kv.key!r}: version {kv.version} out of range")


def _restore_history(
    sm: StateMachine, state: _SnapshotState, batch: int
) -> Generator[None, None, None]:
    """Rebuild the per-key index, the event list and the current state from a format-2
    snapshot's ``base`` and ``events``, checking that they tell one consistent story.
    Yields every ``batch`` entries (see StateMachine.restoring)."""
    if state.kv:
        raise ValueError("a format-2 snapshot keeps its keys in base and events, not kv")
    revision, compact = state.revision, state.compact_revision
    if not 1 <= revision <= _REVISION_LAST:
        raise ValueError(f"revision {revision} is outside 1..{_REVISION_LAST}")
    if not 0 <= compact <= revision:
        raise ValueError(f"revision {revision} / compact_revision {compact} out of order")
    sm.revision, sm.compact_revision = revision, compact
    floor = max(compact, _FIRST_CHANGE)
    index = sm._index
    prior_key: str | None = None
    for i, kv in enumerate(state.base, 1):
        if i % batch == 0:
            yield
        _valid_kv(kv, state.format)
        if compact < 1 or not 1 <= kv.create_revision <= kv.mod_revision < floor:
            raise ValueError(f"base version of {kv.key!r} outside the compacted range")
        if kv.version < 1:
            raise ValueError(f"base version of {kv.key!r} is a deletion")
        if kv.version > _VERSION_LAST:
            raise ValueError(f"base version of {kv.key!r} is past {_VERSION_LAST}")
        if prior_key is not None and kv.key <= prior_key:
            raise ValueError(f"base keys not strictly sorted at {kv.key!r}")
        index[kv.key] = [kv]
        prior_key = kv.key
    expected = floor  # the revision the next event must have (or the one before it)
    seen_in_revision: set[str] = set()
    # Whether keys entered the index in sorted order (base is sorted; events often add
    # keys in order too): then the index's order is the sorted one, and no sort is needed.
    in_order = True
    last_new = prior_key
    for i, kv in enumerate(state.events, 1):
        if i % batch == 0:
            yield
        _valid_kv(kv, state.format)
        if kv.mod_revision == expected:
            expected += 1
            seen_in_revision = set()
        elif kv.mod_revision != expected - 1 or expected == floor:
            raise ValueError(f"event at revision {kv.mod_revision}, expected {expected}")
        if kv.key in seen_in_revision:
            raise ValueError(f"key {kv.key!r} changed twice at revision {kv.mod_revision}")
        seen_in_revision.add(kv.key)
        versions = index.get(kv.key)
        prev = versions[-1] if versions else None
        live = prev is not None and prev.version > 0
        if kv.version == 0:
            if not live or kv.value or kv.create_revision != 0:
                raise ValueError(f"deletion of {kv.key!r} at {kv.mod_revision} is inconsistent")
        elif live:
            assert prev is not None
            if kv.version != prev.version + 1 or kv.create_revision != prev.create_revision:
                raise ValueError(f"version of {kv.key!r} at {kv.mod_revision} is inconsistent")
            if kv.version > _VERSION_LAST:
                raise ValueError(
                    f"version of {kv.key!r} at {kv.mod_revision} is past {_VERSION_LAST}"
                )
        elif kv.version != 1 or kv.create_revision != kv.mod_revision:
            raise ValueError(f"creation of {kv.key!r} at {kv.mod_revision} is inconsistent")
        if versions is None:
            index[kv.key] = [kv]
            if in_order and last_new is not None and kv.key <= last_new:
                in_order = False
            last_new = kv.key
        else:
            # One string per key for all its versions, as apply keeps it.
            kv = msgspec.structs.replace(kv, key=versions[0].key)
            versions.append(kv)
        sm._events.append(kv)
        if kv.version != 1:
            sm._updates.append(kv)
    if expected - 1 != max(revision, floor - 1):
        raise ValueError(f"history ends at revision {expected - 1}, the store is at {revision}")
    keys = list(index)
    sm._hkeys = keys if in_order else (yield from sorted_in_pieces(keys, 4 * batch))
    for i, key in enumerate(sm._hkeys, 1):
        if i % batch == 0:
            yield
        versions = index[key]
        last = versions[-1]
        if last.version > 0:
            sm._keys.append(key)
            sm._kv_bytes += _entry_cost(last)
            if last.lease:
                lease = sm._leases.get(last.lease)
                if lease is None:
                    raise ValueError(f"key {key!r} is attached to a missing lease {last.lease}")
                if lease.keys is None:
                    lease.keys = set()
                lease.keys.add(key)
                if len(lease.keys) > LEASE_KEYS_MAX:
                    raise ValueError(f"lease {last.lease} has over {LEASE_KEYS_MAX} keys")
        for kv in versions:
            if kv is not last or kv.version == 0:
                sm._history_bytes += _entry_cost(kv)


def _seal(body: bytes) -> bytes:
    """Append a checksum: validation catches malformed structure, but only a checksum
    catches a flipped bit inside a value or the digest chain."""
    return body + hashlib.sha256(body).digest()


def _emptying(
    pop: Callable[[], object], container: Sized, batch: int
) -> Generator[None, None, None]:
    """Empty ``container`` through ``pop``, ``batch`` items between yields (dismantling)."""
    while container:
        for _ in range(min(batch, len(container))):
            pop()
        yield


def _valid_text(name: str, text: str, bytes_max: int) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8") from None
    if not 1 <= size <= bytes_max:
        raise ValueError(f"{name} is {size} bytes, outside 1..{bytes_max}")


__all__ = ["SNAPSHOT_BYTES_MAX", "BadSnapshot", "Limits", "StateMachine"]
