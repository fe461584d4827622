"""Client commands and their results: the bytes the log orders and the state machine answers.

A command travels client -> leader -> log -> every replica's state machine, so its decoder
faces bytes from the network and from disk. Decoding is therefore typed (msgspec, never
pickle), size-capped before any parsing, validated after it, and fails with exactly one
exception type, ``BadCommand``: a replica that applies a decided slot must be able to turn
any garbage into a deterministic error result instead of crashing or diverging.

Results are encoded the same way so that the CLI, the client library and the
linearizability checker read one typed vocabulary.
"""

from typing import Annotated, Final

import msgspec

# Bounds. They are part of the replicated contract: a command valid on one replica must be
# valid on all, so these are constants, not configuration.
COMMAND_BYTES_MAX: Final = 1 << 20  # 1 MiB: checked before decoding anything
RESULT_BYTES_MAX: Final = 8 << 20  # the biggest result (a full scan page) fits with room
KEY_BYTES_MAX: Final = 1024  # UTF-8 bytes
VALUE_BYTES_MAX: Final = 512 << 10
SITE_BYTES_MAX: Final = 64
CLIENT_ID_BYTES_MAX: Final = 128
SEQ_MAX: Final = (1 << 63) - 1  # msgpack int64; a client never gets near it
VERSION_MAX: Final = (1 << 63) - 1
SCAN_LIMIT_MAX: Final = 1000
VIEW_LIMIT_MAX: Final = 1000
REASON_CHARS_MAX: Final = 200

_Version = Annotated[int, msgspec.Meta(ge=0, le=VERSION_MAX)]
_Revision = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
_Slot = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]


class BadCommand(ValueError):
    """Bytes (or a Command) that are not a valid command or result. The only exception the
    decoders raise on bad input; anything else escaping them is a bug."""


# ------------------------------------------------------------------------------ operations


class Put(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Set ``key`` to ``value``; a new key starts at version 1. Also a post on the timeline.
    ``prev_kv``: the answer carries the key as it was before (None if it was absent).
    ``lease``: attach the key to that lease (0: none; a put without a lease detaches the key
    from the one it had, as in etcd), so the lease's revoke or expiry deletes it."""

    key: str
    value: bytes
    prev_kv: bool = False
    lease: int = 0


class Get(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Read ``key``: ``Found`` or ``NotFound``. ``revision`` > 0 reads the key as it was at
    that store revision (``RevisionCompacted`` below the compaction point, ``FutureRevision``
    above the current one); 0 reads the current state."""

    key: str
    revision: _Revision = 0


class Delete(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Remove ``key``; a later put starts its version at 1 again (as etcd does).

    ``prefix``: remove every key that starts with ``key`` instead (``""`` with ``prefix``
    removes every key), all at one revision. ``prev_kv``: the answer carries the removed keys.
    """

    key: str
    prefix: bool = False
    prev_kv: bool = False


class Cas(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Set ``key`` to ``new`` if exactly one expectation holds.

    ``expect_value``: the current value equals it (an absent key never matches).
    ``expect_version``: the current version equals it; 0 means "the key must be absent".
    """

    key: str
    new: bytes
    expect_value: bytes | None = None
    expect_version: int | None = None


class Scan(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Keys starting with ``prefix`` in key order, at most ``limit`` rows (and a byte budget).
    ``revision`` > 0 scans the store as it was at that revision, as ``Get`` does."""

    prefix: str
    limit: int
    revision: _Revision = 0


class Range(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The keys in ``[start, end)`` in key order (``end`` empty: every key from ``start``
    on), as of ``revision`` (0: now), a page at most (``limit`` rows; ``Rows.more`` if cut).
    etcd's Range with an arbitrary end; a reader pages on by starting after its last key, at
    the first page's revision. Answered with ``Rows``."""

    start: str
    end: str
    limit: int
    revision: _Revision = 0


class Block(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """``site`` blocks ``other``: ``other``'s view leaves out ``site``'s posts."""

    site: str
    other: str


class Unblock(msgspec.Struct, frozen=True, tag=True, array_like=True):
    site: str
    other: str


class Blocks(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """List the block relation, only the pairs where ``site`` is the blocker when given."""

    site: str | None = None


class View(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The newest ``limit`` posts ``as_site`` may see, in log order."""

    as_site: str
    limit: int


# What a transaction compares: the key's value, or one of its numbers. A compare on an absent
# key sees version, create and mod revision 0, lease 0 and no value (so ``value`` compares
# on an absent key are false, as in etcd).
COMPARE_TARGETS: Final = ("value", "version", "create", "mod", "lease")
COMPARE_OPS: Final = ("=", "!=", "<", ">")


class Compare(msgspec.Struct, frozen=True, array_like=True):
    """One condition of a transaction: ``<target>(key) <op> <operand>``.

    ``number`` is the operand for ``version``, ``create``, ``mod`` and ``lease``; ``value``
    for ``value`` (compared bytewise). The other operand is ignored and must be left at its
    default.
    """

    key: str
    target: str
    op: str
    number: _Revision = 0
    value: bytes = b""


TxnOp = Put | Get | Delete | Scan


class Txn(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """etcd's transaction: if every compare holds, run ``success`` in order, else ``failure``.

    It is one command in one slot: every write in it shares one new revision (none if the
    branch taken writes nothing), and reads inside it see the writes before them. The branch
    may not write one key twice (etcd's rule: "duplicate key given in txn request").
    """

    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...] = ()


class Compact(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Forget every key's history before ``revision``: reads and watches below it fail with
    ``RevisionCompacted``. A key's value as of ``revision`` stays readable."""

    revision: _Revision


ALARMS: Final = ("NOSPACE",)
ALARM_ACTIONS: Final = ("activate", "deactivate")


class Alarm(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Raise or clear a cluster alarm through the log, as etcd's AlarmRequest does, so every
    replica agrees on it. NOSPACE: the store passed ``quota_bytes`` (the raising member's
    quota); while it is raised, apply refuses every command that would add data (put, cas,
    a transaction with a put) with ``NoSpace``; reads, deletes and compaction still work.
    ``member``: the node that raised it; on "deactivate", 0 clears it for every member."""

    action: str
    alarm: str = "NOSPACE"
    member: int = 0
    quota_bytes: int = 0


# ---------------------------------------------------------------------------- leases
# etcd's leases on our log. Grant, revoke, expiry and checkpoints are log commands, so every
# replica deletes a lease's keys at one revision; keep-alives and time-to-live are answered by
# the leader from its monotonic clock (paxosd/server/leases.py) and never enter the log.
LEASE_ID_MAX: Final = (1 << 63) - 1
LEASE_TTL_S_MAX: Final = 9_000_000_000  # etcd's MaxLeaseTTL (about 285 years)
LEASES_MAX: Final = 100_000  # leases the cluster holds at once
LEASE_KEYS_MAX: Final = 10_000  # keys attached to one lease
LEASE_CHECKPOINTS_MAX: Final = 1000  # leases one checkpoint command names

_LeaseId = Annotated[int, msgspec.Meta(ge=0, le=LEASE_ID_MAX)]


class LeaseGrant(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Create lease ``lease_id`` (0: the state machine picks the next free id) that lives
    ``ttl`` seconds past its last keep-alive. ``min_ttl``: the smallest TTL the proposing
    daemon allows (tied to its election timeout); carried so that apply refuses below it."""

    ttl: int
    lease_id: _LeaseId = 0
    min_ttl: int = 1


class LeaseRevoke(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Delete lease ``lease_id`` and every key attached to it, all at one revision."""

    lease_id: _LeaseId


class LeaseExpire(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The leader's revoke of an expired lease, proposed under ballot (``ballot_round``,
    ``ballot_node``). Applied only if that ballot is the newest that took the leases over
    (``LeaseTakeover``): a deposed leader's expiry, decided anyway, changes nothing."""

    lease_id: _LeaseId
    ballot_round: int
    ballot_node: int


class LeaseTakeover(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A new leader takes the leases over under its ballot: from here on only its expiries
    and checkpoints apply, and every lease not checkpointed yet is checkpointed at its full
    TTL (so the next leader counts its time from here, not from its own election)."""

    ballot_round: int
    ballot_node: int


class LeaseCheckpoint(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """etcd's lease checkpoint: the remaining milliseconds of each lease as the leader of
    ballot (``ballot_round``, ``ballot_node``) counts them; 0 clears a checkpoint (a
    keep-alive arrived: the lease is back to its full TTL)."""

    ballot_round: int
    ballot_node: int
    leases: tuple[tuple[int, int], ...]


class LeaseKeepAlive(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Renew ``lease_id`` to its full TTL. Answered by the leader, never logged."""

    lease_id: _LeaseId


class LeaseTimeToLive(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The lease's remaining and granted TTL (and its keys when ``keys``)."""

    lease_id: _LeaseId
    keys: bool = False


class LeaseLeases(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Every lease id, sorted."""


LEASE_LOG_OPS: Final = (LeaseGrant, LeaseRevoke, LeaseExpire, LeaseTakeover, LeaseCheckpoint)
# Answered by the leader's lease keeper (with the monotonic remaining time), not the log.
LEASE_LEADER_OPS: Final = (LeaseKeepAlive, LeaseTimeToLive)

Op = (
    Put
    | Get
    | Delete
    | Cas
    | Scan
    | Range
    | Block
    | Unblock
    | Blocks
    | View
    | Txn
    | Compact
    | Alarm
    | LeaseGrant
    | LeaseRevoke
    | LeaseExpire
    | LeaseTakeover
    | LeaseCheckpoint
    | LeaseKeepAlive
    | LeaseTimeToLive
    | LeaseLeases
)
READ_OPS: Final = (Get, Scan, Range, Blocks, View, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases)
TXN_OPS_MAX: Final = 128  # etcd's --max-txn-ops default


class Command(msgspec.Struct, frozen=True, array_like=True):
    """One client request. ``(client_id, seq)`` makes retries exactly-once; ``site`` is the
    site the command came from (the author of a post)."""

    client_id: str
    seq: int
    site: str
    op: Op


def is_read(op: Op) -> bool:
    """Reads change no state (only session bookkeeping), so a retry may run them again."""
    return isinstance(op, READ_OPS)


def adds_data(op: Op) -> bool:
    """Whether ``op`` may grow the store, so is refused while NOSPACE is raised. etcd's
    rule: a transaction with a put in either branch counts, whichever branch would run; a
    lease grant too (etcd's capped applier refuses LeaseGrant)."""
    match op:
        case Put() | Cas() | LeaseGrant():
            return True
        case Txn(success=success, failure=failure):
            return any(isinstance(o, Put) for o in (*success, *failure))
    return False


# --------------------------------------------------------------------------------- results


class KeyValue(msgspec.Struct, frozen=True, array_like=True):
    """A key as stored, etcd's ``mvccpb.KeyValue``: ``create_revision`` is the revision of
    the put that created it, ``mod_revision`` of its last change, ``version`` the number of
    puts since it was created (a delete resets it), ``lease`` the lease it is attached to
    (0: none). A DELETE event's key has only ``key`` and ``mod_revision`` (the deletion's)."""

    key: str
    value: bytes
    create_revision: _Revision
    mod_revision: _Revision
    version: _Version
    lease: _Revision = 0


class Written(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A put or a successful cas: ``version`` is the key's new version and ``revision`` the
    store revision of the write (the key's new ``mod_revision``). ``prev`` is the key before
    the write when the put asked for ``prev_kv`` (None when it was absent)."""

    version: _Version
    revision: _Revision = 0
    prev: KeyValue | None = None


class Found(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A get's answer: the key's value and its version (1 after the first put), its
    revisions, and ``revision``, the store revision the answer reflects."""

    value: bytes
    version: _Version
    create_revision: _Revision = 0
    mod_revision: _Revision = 0
    lease: _Revision = 0
    revision: _Revision = 0


class NotFound(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A get of a key that is absent (``Client.get`` raises ``NotFoundError`` instead), as of
    store revision ``revision``."""

    revision: _Revision = 0


class Deleted(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """``prior_version`` is the version the key had, 0 if it was already absent (for a prefix
    delete: the first removed key's). ``deleted`` counts the keys removed, ``revision`` is the
    store revision after the delete (unchanged when nothing was removed), ``prev`` the removed
    keys when the delete asked for ``prev_kv``."""

    prior_version: _Version
    revision: _Revision = 0
    deleted: _Version = 0
    prev: tuple[KeyValue, ...] = ()


class CasMismatch(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The expectation failed; the key's current value (None when absent, version 0)."""

    value: bytes | None
    version: _Version
    revision: _Revision = 0


class Row(msgspec.Struct, frozen=True, array_like=True):
    """One key of a scan, with its value, version and revisions."""

    key: str
    value: bytes
    version: _Version
    create_revision: _Revision = 0
    mod_revision: _Revision = 0
    lease: _Revision = 0


class Rows(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Scan result in key order. ``more``: matching keys after the last row were left out.
    ``revision``: the store revision the rows reflect."""

    rows: tuple[Row, ...]
    more: bool
    revision: _Revision = 0


TxnResponse = Written | Found | NotFound | Deleted | Rows


class TxnResult(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Whether every compare held, one response per op of the branch taken, in order, and the
    store revision after the transaction."""

    succeeded: bool
    responses: tuple[TxnResponse, ...]
    revision: _Revision


class Compacted(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A compaction took effect: history before ``compact_revision`` is gone."""

    compact_revision: _Revision
    revision: _Revision


class RevisionCompacted(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Refused: the revision asked for is older than ``compact_revision``, whose history was
    compacted (etcd: "mvcc: required revision has been compacted")."""

    compact_revision: _Revision
    revision: _Revision


class FutureRevision(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Refused: the revision asked for is newer than the store's ``revision`` (etcd: "mvcc:
    required revision is a future revision")."""

    revision: _Revision


class TxnRefused(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the transaction breaks a rule only the state can show (today: a branch
    that writes one key twice)."""

    reason: str


class LeaseGranted(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A lease exists now: its id and TTL in seconds (``revision``: the store's, unchanged)."""

    id: int
    ttl: int
    revision: _Revision = 0


class LeaseRevoked(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The lease is gone: ``deleted`` keys were deleted at ``revision`` (the unchanged
    store revision when it had none)."""

    id: int
    deleted: int
    revision: _Revision = 0


class LeaseNotFound(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """No such lease (never granted, revoked or expired): etcd's "requested lease not found"."""

    id: int
    revision: _Revision = 0


class LeaseRefused(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: a TTL below the minimum, an id already taken, too many leases or keys on
    one lease, or an expiry or checkpoint from a leader that was deposed."""

    reason: str


class LeaseKept(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A keep-alive's answer: the lease has ``ttl`` seconds again."""

    id: int
    ttl: int


class LeaseInfo(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Time-to-live: ``ttl`` seconds remain (as the leader counts; rounded down),
    ``granted_ttl`` was asked at grant, ``keys`` are attached (when asked, sorted)."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[str, ...] = ()
    revision: _Revision = 0


class LeaseList(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Every lease id, sorted."""

    ids: tuple[int, ...]
    revision: _Revision = 0


class LeaseTakenOver(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A takeover or checkpoint took effect (``leases``: how many it touched)."""

    leases: int


class Changed(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Block/unblock result: whether the relation changed. It reveals the prior state, which
    is what makes block/unblock checkable for linearizability."""

    changed: bool


class BlockPair(msgspec.Struct, frozen=True, array_like=True):
    """``site`` blocks ``other``."""

    site: str
    other: str


class BlockList(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Every matching pair, sorted (the relation is bounded, so there is no ``more``)."""

    pairs: tuple[BlockPair, ...]


class Post(msgspec.Struct, frozen=True, array_like=True):
    """One put as the timeline records it: log position, author site, key and value."""

    slot: _Slot
    site: str
    key: str
    value: bytes


class Timeline(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """View result in log order. ``more``: older visible posts were left out."""

    posts: tuple[Post, ...]
    more: bool


class Stale(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the session already moved past this seq (``last_seq``)."""

    last_seq: int


class Malformed(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the decided bytes were not a valid command."""

    reason: str


class NoSpace(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the store's accounted bytes (keys, values and history) passed its quota
    and the NOSPACE alarm is raised (etcd's "database space exceeded"). Delete or compact,
    then disarm the alarm (paxosctl alarm disarm)."""

    size_bytes: int
    quota_bytes: int


class AlarmMember(msgspec.Struct, frozen=True, array_like=True):
    """One raised alarm: which member raised it, which alarm, and that member's quota."""

    member: int
    alarm: str
    quota_bytes: int = 0


class Alarms(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The alarms raised after an Alarm command was applied, sorted by member."""

    alarms: tuple[AlarmMember, ...]


class Full(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the state machine's bound on ``what`` ("kv", "blocks") was reached."""

    what: str


Result = (
    Written
    | Found
    | NotFound
    | Deleted
    | CasMismatch
    | Rows
    | Changed
    | BlockList
    | Timeline
    | Stale
    | Malformed
    | Full
    | TxnResult
    | Compacted
    | RevisionCompacted
    | FutureRevision
    | TxnRefused
    | NoSpace
    | Alarms
    | LeaseGranted
    | LeaseRevoked
    | LeaseNotFound
    | LeaseRefused
    | LeaseKept
    | LeaseInfo
    | LeaseList
    | LeaseTakenOver
)
# Results that mean "this command had no effect": a history checker treats them as "fail".
NOT_APPLIED: Final = (
    Stale,
    Malformed,
    Full,
    RevisionCompacted,
    FutureRevision,
    TxnRefused,
    NoSpace,
    LeaseNotFound,
    LeaseRefused,
)

# ---------------------------------------------------------------------------------- events

EVENT_TYPES: Final = ("PUT", "DELETE")


class Event(msgspec.Struct, frozen=True, array_like=True):
    """One change to one key, as a watch delivers it (etcd's ``mvccpb.Event``): ``kv`` is the
    key after the change (for a DELETE only its key and ``mod_revision``, the deletion's
    revision), ``prev_kv`` the key before it when the watcher asked for it."""

    type: str
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


# ---------------------------------------------------------------------------------- codec

_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_result_decoder: msgspec.msgpack.Decoder[Result] = msgspec.msgpack.Decoder(Result)
# Every way msgspec (or UTF-8) can reject bytes; caught only around decoding.
_DECODE_ERRORS = (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError)


def _check_text(name: str, text: str, bytes_max: int, *, empty_ok: bool = False) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadCommand(f"{name} is not valid UTF-8 text") from None
    if size > bytes_max:
        raise BadCommand(f"{name} is {size} bytes, over {bytes_max}")
    if size == 0 and not empty_ok:
        raise BadCommand(f"{name} is empty")


def _check_value(name: str, value: bytes) -> None:
    if len(value) > VALUE_BYTES_MAX:
        raise BadCommand(f"{name} is {len(value)} bytes, over {VALUE_BYTES_MAX}")


def _check_limit(limit: int, limit_max: int) -> None:
    if not 1 <= limit <= limit_max:
        raise BadCommand(f"limit {limit} is outside 1..{limit_max}")


def validate_command(cmd: Command) -> None:
    """Raise BadCommand unless ``cmd`` is within every bound. Run on both encode and decode,
    so a client learns about a bad command before it is ordered."""
    _check_text("client_id", cmd.client_id, CLIENT_ID_BYTES_MAX)
    _check_text("site", cmd.site, SITE_BYTES_MAX)
    if not 0 <= cmd.seq <= SEQ_MAX:
        raise BadCommand(f"seq {cmd.seq} is outside 0..{SEQ_MAX}")
    op = cmd.op
    match op:
        case Txn(compares=compares, success=success, failure=failure):
            _check_txn(compares, success, failure)
        case Compact(revision=revision):
            _check_revision(revision)
        case Alarm(action=action, alarm=alarm, member=member, quota_bytes=quota):
            if action not in ALARM_ACTIONS:
                raise BadCommand(f"alarm action {action!r} is not one of {ALARM_ACTIONS}")
            if alarm not in ALARMS:
                raise BadCommand(f"alarm {alarm!r} is not one of {ALARMS}")
            if not 0 <= member <= SEQ_MAX or not 0 <= quota <= SEQ_MAX:
                raise BadCommand("alarm member and quota_bytes must be in 0.." + str(SEQ_MAX))
        case _:
            _validate_op(op)


def _validate_op(op: Op) -> None:
    match op:
        case Put(key=key, value=value, lease=lease):
            _check_text("key", key, KEY_BYTES_MAX)
            _check_value("value", value)
            _check_lease_id(lease)
        case Get(key=key, revision=revision):
            _check_text("key", key, KEY_BYTES_MAX)
            _check_revision(revision)
        case Delete(key=key, prefix=prefix):
            _check_text("key", key, KEY_BYTES_MAX, empty_ok=prefix)
        case Cas(key=key, new=new, expect_value=ev, expect_version=evv):
            _check_text("key", key, KEY_BYTES_MAX)
            _check_value("new", new)
            if (ev is None) == (evv is None):
                raise BadCommand("cas needs exactly one of expect_value and expect_version")
            if ev is not None:
                _check_value("expect_value", ev)
            if evv is not None and not 0 <= evv <= VERSION_MAX:
                raise BadCommand(f"expect_version {evv} is outside 0..{VERSION_MAX}")
        case Scan(prefix=prefix, limit=limit, revision=revision):
            _check_text("prefix", prefix, KEY_BYTES_MAX, empty_ok=True)
            _check_limit(limit, SCAN_LIMIT_MAX)
            _check_revision(revision)
        case Range(start=start, end=end, limit=limit, revision=revision):
            _check_text("start", start, KEY_BYTES_MAX, empty_ok=True)
            _check_text("end", end, KEY_BYTES_MAX, empty_ok=True)
            _check_limit(limit, SCAN_LIMIT_MAX)
            _check_revision(revision)
        case Block(site=site, other=other) | Unblock(site=site, other=other):
            _check_text("site", site, SITE_BYTES_MAX)
            _check_text("other", other, SITE_BYTES_MAX)
            if site == other:
                raise BadCommand(f"site {site!r} cannot block or unblock itself")
        case Blocks(site=site):
            if site is not None:
                _check_text("site", site, SITE_BYTES_MAX)
        case View(as_site=as_site, limit=limit):
            _check_text("as_site", as_site, SITE_BYTES_MAX)
            _check_limit(limit, VIEW_LIMIT_MAX)
        case LeaseGrant(ttl=ttl, lease_id=lease_id, min_ttl=min_ttl):
            if not 1 <= min_ttl <= LEASE_TTL_S_MAX:
                raise BadCommand(f"min_ttl {min_ttl} is outside 1..{LEASE_TTL_S_MAX}")
            if not 1 <= ttl <= LEASE_TTL_S_MAX:
                raise BadCommand(f"lease TTL {ttl} s is outside 1..{LEASE_TTL_S_MAX}")
            _check_lease_id(lease_id)
        case (
            LeaseRevoke(lease_id=lease_id)
            | LeaseKeepAlive(lease_id=lease_id)
            | LeaseTimeToLive(lease_id=lease_id)
        ):
            _check_lease_id(lease_id)
            if lease_id == 0:
                raise BadCommand("lease id 0 names no lease")
        case LeaseExpire(lease_id=lease_id, ballot_round=r, ballot_node=n):
            _check_lease_id(lease_id)
            _check_ballot(r, n)
        case LeaseTakeover(ballot_round=r, ballot_node=n):
            _check_ballot(r, n)
        case LeaseCheckpoint(ballot_round=r, ballot_node=n, leases=leases):
            _check_ballot(r, n)
            if not 1 <= len(leases) <= LEASE_CHECKPOINTS_MAX:
                raise BadCommand(f"a checkpoint names 1..{LEASE_CHECKPOINTS_MAX} leases")
            for pair in leases:
                if len(pair) != 2:
                    raise BadCommand("a checkpoint entry is (lease id, remaining ms)")
                _check_lease_id(pair[0])
                if not 0 <= pair[1] <= LEASE_TTL_S_MAX * 1000:
                    raise BadCommand(f"remaining {pair[1]} ms is out of range")
        case LeaseLeases():
            pass
        case _:
            raise BadCommand(f"unknown operation {type(op).__name__}")


def _check_lease_id(lease_id: int) -> None:
    if not 0 <= lease_id <= LEASE_ID_MAX:
        raise BadCommand(f"lease id {lease_id} is outside 0..{LEASE_ID_MAX}")


def _check_ballot(ballot_round: int, ballot_node: int) -> None:
    if not (0 <= ballot_round <= SEQ_MAX and 0 <= ballot_node <= SEQ_MAX):
        raise BadCommand("ballot out of range")


def _check_revision(revision: int) -> None:
    if not 0 <= revision <= SEQ_MAX:
        raise BadCommand(f"revision {revision} is outside 0..{SEQ_MAX}")


def _check_txn(
    compares: tuple[Compare, ...], success: tuple[TxnOp, ...], failure: tuple[TxnOp, ...]
) -> None:
    """etcd's bounds: at most TXN_OPS_MAX ops in each branch (and as many compares); the
    command's byte bound (COMMAND_BYTES_MAX) is checked by the codec."""
    for name, items in (("compares", compares), ("success", success), ("failure", failure)):
        if len(items) > TXN_OPS_MAX:
            raise BadCommand(f"too many operations in txn {name}: {len(items)}, over {TXN_OPS_MAX}")
    for c in compares:
        _check_text("compare key", c.key, KEY_BYTES_MAX)
        if c.target not in COMPARE_TARGETS:
            raise BadCommand(f"compare target {c.target!r} is not one of {COMPARE_TARGETS}")
        if c.op not in COMPARE_OPS:
            raise BadCommand(f"compare operator {c.op!r} is not one of {COMPARE_OPS}")
        if c.target == "value":
            _check_value("compare value", c.value)
            if c.number != 0:
                raise BadCommand("a value compare takes a value, not a number")
        else:
            _check_revision(c.number)
            if c.value:
                raise BadCommand(f"a {c.target} compare takes a number, not a value")
    for branch in (success, failure):
        for op in branch:
            if not isinstance(op, TxnOp):
                raise BadCommand(f"{type(op).__name__} cannot be part of a transaction")
            _validate_op(op)


def encode_command(cmd: Command) -> bytes:
    """Validate and encode; BadCommand if ``cmd`` breaks a bound."""
    validate_command(cmd)
    try:
        data = _encoder.encode(cmd)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadCommand(f"cannot encode command: {e}") from None
    if len(data) > COMMAND_BYTES_MAX:
        raise BadCommand(f"command is {len(data)} bytes, over {COMMAND_BYTES_MAX}")
    return data


def decode_command(data: bytes) -> Command:
    """Decode and validate bytes from the network or the log; BadCommand on any defect."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadCommand(f"expected bytes, got {type(data).__name__}")
    if len(data) > COMMAND_BYTES_MAX:
        raise BadCommand(f"command is {len(data)} bytes, over {COMMAND_BYTES_MAX}")
    try:
        cmd = _command_decoder.decode(data)
    except _DECODE_ERRORS as e:
        raise BadCommand(f"undecodable command: {e}"[:REASON_CHARS_MAX]) from None
    validate_command(cmd)
    return cmd


def encode_result(result: Result) -> bytes:
    data = _encoder.encode(result)
    # Results are built by the state machine within its own bounds: exceeding this is a bug.
    assert len(data) <= RESULT_BYTES_MAX, f"result of {len(data)} bytes over {RESULT_BYTES_MAX}"
    return data


def decode_result(data: bytes) -> Result:
    """Decode a result from a replica; BadCommand on any defect."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadCommand(f"expected bytes, got {type(data).__name__}")
    if len(data) > RESULT_BYTES_MAX:
        raise BadCommand(f"result is {len(data)} bytes, over {RESULT_BYTES_MAX}")
    try:
        return _result_decoder.decode(data)
    except _DECODE_ERRORS as e:
        raise BadCommand(f"undecodable result: {e}"[:REASON_CHARS_MAX]) from None


__all__ = [
    "ALARMS",
    "ALARM_ACTIONS",
    "Alarm",
    "AlarmMember",
    "Alarms",
    "BadCommand",
    "Block",
    "BlockList",
    "BlockPair",
    "Blocks",
    "COMMAND_BYTES_MAX",
    "COMPARE_OPS",
    "COMPARE_TARGETS",
    "Cas",
    "CasMismatch",
    "Changed",
    "Command",
    "Compact",
    "Compacted",
    "Compare",
    "Delete",
    "Deleted",
    "EVENT_TYPES",
    "Event",
    "Found",
    "Full",
    "FutureRevision",
    "Get",
    "KeyValue",
    "LEASES_MAX",
    "LEASE_CHECKPOINTS_MAX",
    "LEASE_KEYS_MAX",
    "LEASE_LEADER_OPS",
    "LEASE_LOG_OPS",
    "LEASE_TTL_S_MAX",
    "LeaseCheckpoint",
    "LeaseExpire",
    "LeaseGrant",
    "LeaseGranted",
    "LeaseInfo",
    "LeaseKeepAlive",
    "LeaseKept",
    "LeaseLeases",
    "LeaseList",
    "LeaseNotFound",
    "LeaseRefused",
    "LeaseRevoke",
    "LeaseRevoked",
    "LeaseTakenOver",
    "LeaseTakeover",
    "LeaseTimeToLive",
    "Malformed",
    "NOT_APPLIED",
    "NoSpace",
    "NotFound",
    "Op",
    "Post",
    "Put",
    "RESULT_BYTES_MAX",
    "Result",
    "RevisionCompacted",
    "Range",
    "Row",
    "Rows",
    "Scan",
    "Stale",
    "TXN_OPS_MAX",
    "Timeline",
    "Txn",
    "TxnOp",
    "TxnRefused",
    "TxnResponse",
    "TxnResult",
    "Unblock",
    "View",
    "Written",
    "adds_data",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
    "is_read",
    "validate_command",
]
