"""The revision checker: replays the decided log through a small reference model of etcd's data
model and holds every client answer, every replica and every real-time order against it.

The reference model is written from the design (docs: revisions, history, transactions) and
etcd's documented behaviour, not from ``paxosd/statemachine/machine.py``: two independent
readings of one specification that must agree on every answer. It keeps every version of
every key forever (compaction only moves the point below which it refuses), so it can answer
a read as of any log position, which is what checking read-index reads needs.

What is checked, after a seed has healed and converged (``check``):

- results: every acknowledged write (put, delete, cas, txn, compact, block, ...) got exactly
  the answer the model gives at the command's first position in the log (txn succeeded flag,
  each response with its revisions and prev kvs, errors such as TxnRefused or
  RevisionCompacted). An acknowledged write that is not in the log is a violation.
- real time: a command in the log sits after every write acknowledged before it was invoked.
  Positions, not revisions, because a write that changes nothing keeps the revision.
- reads (served by read-index, or through the log; the client cannot tell which): the
  answer equals the model's at some log position that is after every write acknowledged
  before the read was invoked, at or above the revision of every read acknowledged before it
  (so reads never go back in time), and no later than the log decided when it was
  acknowledged. With one revision per command this is linearizability of the store as a
  whole, across keys: a transaction is atomic and isolated exactly when no read sees half
  of it.
- replicas: every replica reports (revision, compact_revision) after each slot it applies or
  restores; two replicas disagreeing after one slot is a violation at once (``Recorder``),
  and at the end each slot's figures must equal the model's.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from paxosd.core.membership import is_membership_command
from paxosd.core.types import Value
from paxosd.sim.checker import Violation
from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    NOT_APPLIED,
    BadCommand,
    Block,
    BlockList,
    BlockPair,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Compact,
    Compacted,
    Compare,
    Delete,
    Deleted,
    Event,
    Found,
    FutureRevision,
    Get,
    KeyValue,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
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
    NotFound,
    Op,
    Put,
    Result,
    RevisionCompacted,
    Row,
    Rows,
    Scan,
    Stale,
    Txn,
    TxnOp,
    TxnRefused,
    TxnResponse,
    TxnResult,
    Unblock,
    View,
    Written,
    decode_command,
    is_read,
)

PROPERTY: Final = "revisions"
_SHOWN_CHARS_MAX: Final = 600


def _short(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= _SHOWN_CHARS_MAX else text[:_SHOWN_CHARS_MAX] + "…"


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class _StateAt:
    """What a read's answer depends on, after some prefix of the log."""

    revision: int
    compact_revision: int
    blocks: frozenset[tuple[str, str]]


class ReferenceStore:
    """etcd's data model, as simply as it can be written: per key, every version it ever had."""

    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = 0
        self.events: list[Event] = []
        self.blocks: frozenset[tuple[str, str]] = frozenset()
        # key -> [(revision, the key from then on, None once deleted)], revisions increasing.
        self._versions: dict[str, list[tuple[int, KeyValue | None]]] = {}
        self._names: list[str] = []  # every key that ever existed, sorted
        self._sessions: dict[str, tuple[int, Result | None]] = {}
        # Leases, as far as they touch keys and revisions (time is the keeper's): each
        # lease's keys and last checkpoint, the ballot that took them over, the next id.
        self._leases: dict[int, set[str]] = {}
        self._lease_ttl: dict[int, int] = {}
        self._lease_checkpoint: dict[int, int] = {}
        self._lease_ballot = (0, 0)
        self._next_lease_id = 1

    # ------------------------------------------------------------------ reads at a revision

    def kv_at(self, key: str, revision: int) -> KeyValue | None:
        versions = self._versions.get(key)
        if not versions:
            return None
        i = bisect.bisect_right(versions, revision, key=lambda v: v[0])
        return versions[i - 1][1] if i else None

    def current(self, key: str) -> KeyValue | None:
        versions = self._versions.get(key)
        return versions[-1][1] if versions else None

    def read(self, op: Op, at: _StateAt) -> Result | None:
        """``op``'s answer in state ``at``; None for a read the model does not cover (a
        View: the timeline is not part of the revision model)."""
        match op:
            case Get(key=key, revision=asked) | Scan(prefix=key, revision=asked):
                refused = _revision_refused(asked, at)
                if refused is not None:
                    return refused
                as_of = asked or at.revision
                if isinstance(op, Get):
                    kv = self.kv_at(key, as_of)
                    if kv is None:
                        return NotFound(revision=at.revision)
                    return Found(
                        value=kv.value,
                        version=kv.version,
                        create_revision=kv.create_revision,
                        mod_revision=kv.mod_revision,
                        lease=kv.lease,
                        revision=at.revision,
                    )
                return self._scan(key, op.limit, as_of, at.revision)
            case Blocks(site=site):
                pairs = sorted(p for p in at.blocks if site is None or p[0] == site)
                return BlockList(pairs=tuple(BlockPair(s, o) for s, o in pairs))
            case LeaseLeases():
                return LeaseList(ids=tuple(sorted(self._leases)), revision=at.revision)
            case LeaseKeepAlive(lease_id=lid) | LeaseTimeToLive(lease_id=lid):
                if lid not in self._leases:
                    return LeaseNotFound(id=lid, revision=at.revision)
                return None  # the leader's clock answers these
        return None

    def _scan(self, prefix: str, limit: int, as_of: int, revision: int) -> Rows:
        rows: list[Row] = []
        i = bisect.bisect_left(self._names, prefix)
        while i < len(self._names) and self._names[i].startswith(prefix):
            kv = self.kv_at(self._names[i], as_of)
            i += 1
            if kv is None:
                continue
            if len(rows) == limit:
                return Rows(rows=tuple(rows), more=True, revision=revision)
            rows.append(
                Row(
                    key=kv.key,
                    value=kv.value,
                    version=kv.version,
                    create_revision=kv.create_revision,
                    mod_revision=kv.mod_revision,
                    lease=kv.lease,
                )
            )
        return Rows(rows=tuple(rows), more=False, revision=revision)

    def state(self) -> _StateAt:
        return _StateAt(self.revision, self.compact_revision, self.blocks)

    # ------------------------------------------------------------------------ writes

    def _keys_with(self, prefix: str) -> list[str]:
        i = bisect.bisect_left(self._names, prefix)
        out = []
        while i < len(self._names) and self._names[i].startswith(prefix):
            if self.current(self._names[i]) is not None:
                out.append(self._names[i])
            i += 1
        return out

    def _set(self, key: str, kv: KeyValue | None, prev: KeyValue | None, revision: int) -> None:
        old = prev.lease if prev is not None else 0
        new_lease = kv.lease if kv is not None else 0
        if old != new_lease:
            if old in self._leases:
                self._leases[old].discard(key)
            if new_lease:
                self._leases[new_lease].add(key)
        if key not in self._versions:
            self._versions[key] = []
            bisect.insort(self._names, key)
        self._versions[key].append((revision, kv))
        if kv is None:
            gone = KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)
            self.events.append(Event(type="DELETE", kv=gone, prev_kv=prev))
        else:
            self.events.append(Event(type="PUT", kv=kv, prev_kv=prev))

    def _put(
        self, key: str, value: bytes, revision: int, lease: int = 0
    ) -> tuple[KeyValue, KeyValue | None]:
        prev = self.current(key)
        kv = KeyValue(
            key=key,
            value=value,
            create_revision=prev.create_revision if prev is not None else revision,
            mod_revision=revision,
            version=prev.version + 1 if prev is not None else 1,
            lease=lease,
        )
        self._set(key, kv, prev, revision)
        return kv, prev

    def _delete(self, op: Delete, revision: int) -> tuple[KeyValue, ...]:
        """Remove what ``op`` names at ``revision``; the removed keys in key order."""
        if op.prefix:
            names = self._keys_with(op.key)
        else:
            names = [op.key] if self.current(op.key) is not None else []
        removed = []
        for name in names:
            prev = self.current(name)
            assert prev is not None
            self._set(name, None, prev, revision)
            removed.append(prev)
        return tuple(removed)

    def _compare(self, c: Compare) -> bool:
        kv = self.current(c.key)
        if c.target == "value":
            if kv is None:
                return False  # etcd: a value compare on an absent key always fails
            return _holds(kv.value, c.op, c.value)
        number = 0
        if kv is not None:
            number = {
                "version": kv.version,
                "create": kv.create_revision,
                "mod": kv.mod_revision,
                "lease": kv.lease,
            }[c.target]
        return _holds(number, c.op, c.number)

    def _txn(self, txn: Txn) -> Result:
        for branch in (txn.success, txn.failure):
            duplicate = _duplicate_write(branch)
            if duplicate is not None:
                return TxnRefused(reason=f"duplicate key {duplicate!r} given in txn request")
        succeeded = all(self._compare(c) for c in txn.compares)
        branch = txn.success if succeeded else txn.failure
        for op in branch:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                return LeaseNotFound(id=op.lease, revision=self.revision)
        for op in branch:
            # etcd fails the whole transaction when one of its reads names a revision it
            # cannot serve, before anything is written.
            if isinstance(op, Get | Scan) and op.revision:
                refused = _revision_refused(op.revision, self.state())
                if refused is not None:
                    return refused
        begin = self.revision
        wrote = False
        responses: list[TxnResponse] = []
        for op in branch:
            responses.append(self._txn_op(op, begin, wrote))
            wrote = wrote or _wrote(responses[-1])
        if wrote:
            self.revision = begin + 1
        return TxnResult(succeeded=succeeded, responses=tuple(responses), revision=self.revision)

    def _txn_op(self, op: TxnOp, begin: int, wrote: bool) -> TxnResponse:
        """One op of a transaction. Every write in it has revision ``begin + 1``. A response's
        revision is etcd's header for that op: a put's is ``begin + 1``; a read's, or a delete
        that removed nothing, is ``begin`` until the transaction has written something, then
        ``begin + 1`` (mvcc's storeTxnWrite: Range reads at beginRev, +1 once it has
        changes; DeleteRange returns beginRev + 1 if it or an earlier op changed a key)."""
        new = begin + 1
        match op:
            case Put(key=key, value=value, prev_kv=want_prev, lease=lease):
                kv, prev = self._put(key, value, new, lease)
                return Written(version=kv.version, revision=new, prev=prev if want_prev else None)
            case Delete():
                removed = self._delete(op, new)
                now = new if removed or wrote else begin
                return _deleted(op, removed, now)
        at = _StateAt(new if wrote else begin, self.compact_revision, self.blocks)
        # Reads in a transaction see its earlier writes (at revision begin + 1).
        answer = self.read(op, at)
        assert isinstance(answer, Found | NotFound | Rows), f"txn read gave {answer!r}"
        return answer

    def apply(self, op: Op) -> Result | None:
        """Apply one decided operation (sessions aside); None for a View (not modelled)."""
        if is_read(op):
            return self.read(op, self.state())
        new = self.revision + 1
        match op:
            case Put(key=key, value=value, prev_kv=want_prev, lease=lease):
                if lease and lease not in self._leases:
                    return LeaseNotFound(id=lease, revision=self.revision)
                kv, prev = self._put(key, value, new, lease)
                self.revision = new
                return Written(version=kv.version, revision=new, prev=prev if want_prev else None)
            case Delete():
                removed = self._delete(op, new)
                if removed:
                    self.revision = new
                return _deleted(op, removed, self.revision)
            case Cas(key=key, new=value, expect_value=ev, expect_version=evv):
                cur = self.current(key)
                version = cur.version if cur is not None else 0
                ok = evv == version if evv is not None else cur is not None and cur.value == ev
                if not ok:
                    return CasMismatch(
                        value=cur.value if cur is not None else None,
                        version=version,
                        revision=self.revision,
                    )
                kv, _ = self._put(key, value, new)
                self.revision = new
                return Written(version=kv.version, revision=new)
            case Txn():
                return self._txn(op)
            case Compact(revision=asked):
                if asked <= self.compact_revision:
                    return RevisionCompacted(compact_revision=self.compact_revision, revision=asked)
                if asked > self.revision:
                    return FutureRevision(revision=self.revision)
                self.compact_revision = asked
                return Compacted(compact_revision=asked, revision=self.revision)
            case Block(site=site, other=other):
                changed = (site, other) not in self.blocks
                self.blocks = self.blocks | {(site, other)}
                return Changed(changed=changed)
            case Unblock(site=site, other=other):
                changed = (site, other) in self.blocks
                self.blocks = self.blocks - {(site, other)}
                return Changed(changed=changed)
            case LeaseGrant() | LeaseRevoke() | LeaseExpire() | LeaseTakeover() | LeaseCheckpoint():
                return self._lease(op)
        raise AssertionError(f"the reference model does not know {type(op).__name__}")

    def _lease(
        self, op: LeaseGrant | LeaseRevoke | LeaseExpire | LeaseTakeover | LeaseCheckpoint
    ) -> Result:
        """etcd's lease rules as they touch the store: a revoke (or an expiry under the
        newest takeover's ballot) deletes the lease's keys at one new revision."""
        match op:
            case LeaseGrant(ttl=ttl, lease_id=lid, min_ttl=min_ttl):
                if ttl < min_ttl or lid in self._leases:
                    return LeaseRefused(reason="")
                if lid == 0:
                    while self._next_lease_id in self._leases:
                        self._next_lease_id += 1
                    lid = self._next_lease_id
                    self._next_lease_id += 1
                self._leases[lid] = set()
                self._lease_ttl[lid] = ttl
                self._lease_checkpoint[lid] = 0
                return LeaseGranted(id=lid, ttl=ttl, revision=self.revision)
            case LeaseExpire(lease_id=lid, ballot_round=r, ballot_node=n) if (
                r,
                n,
            ) != self._lease_ballot:
                return LeaseRefused(reason="")
            case LeaseRevoke(lease_id=lid) | LeaseExpire(lease_id=lid):
                keys = self._leases.get(lid)
                if keys is None:
                    return LeaseNotFound(id=lid, revision=self.revision)
                new = self.revision + 1
                attached = sorted(keys)
                for key in attached:
                    self._set(key, None, self.current(key), new)
                if attached:
                    self.revision = new
                deleted = len(attached)
                del self._leases[lid], self._lease_ttl[lid], self._lease_checkpoint[lid]
                return LeaseRevoked(id=lid, deleted=deleted, revision=self.revision)
            case LeaseTakeover(ballot_round=r, ballot_node=n):
                if (r, n) <= self._lease_ballot:
                    return LeaseRefused(reason="")
                self._lease_ballot = (r, n)
                clean = [i for i, cp in self._lease_checkpoint.items() if cp == 0]
                for i in clean:
                    self._lease_checkpoint[i] = self._lease_ttl[i] * 1000
                return LeaseTakenOver(leases=len(clean))
            case LeaseCheckpoint(ballot_round=r, ballot_node=n, leases=items):
                if (r, n) != self._lease_ballot:
                    return LeaseRefused(reason="")
                touched = 0
                for lid, remaining in items:
                    if lid in self._lease_checkpoint:
                        self._lease_checkpoint[lid] = min(remaining, self._lease_ttl[lid] * 1000)
                        touched += 1
                return LeaseTakenOver(leases=touched)
        raise AssertionError(f"not a lease write: {op!r}")

    def apply_command(self, raw: bytes) -> tuple[str, int, Result | None]:
        """One decided command with the exactly-once session rules: a retry of the session's
        last write gets the cached answer, of its last read a fresh read, an older seq Stale."""
        try:
            cmd = decode_command(raw)
        except BadCommand as e:
            return ("", 0, Malformed(reason=str(e)))
        cid, seq = cmd.client_id, cmd.seq
        session = self._sessions.get(cid)
        if session is not None:
            last, cached = session
            if seq < last:
                return (cid, seq, Stale(last_seq=last))
            if seq == last:
                if cached is not None:
                    return (cid, seq, cached)
                if is_read(cmd.op):
                    return (cid, seq, self.read(cmd.op, self.state()))
                return (cid, seq, Stale(last_seq=last))
        result = self.apply(cmd.op)
        self._sessions[cid] = (seq, None if is_read(cmd.op) else result)
        return (cid, seq, result)


def _holds(left: int | bytes, op: str, right: int | bytes) -> bool:
    match op:
        case "=":
            return left == right
        case "!=":
            return left != right
        case "<":
            return left < right  # type: ignore[operator]
        case ">":
            return left > right  # type: ignore[operator]
    raise AssertionError(f"compare operator {op!r}")


def _duplicate_write(branch: Iterable[TxnOp]) -> str | None:
    """etcd's rule: a put's key may not be put again nor fall in a delete's range."""
    puts: list[str] = []
    deletes: list[Delete] = []
    for op in branch:
        if isinstance(op, Put):
            if op.key in puts:
                return op.key
            puts.append(op.key)
        elif isinstance(op, Delete):
            deletes.append(op)
    for d in deletes:
        for key in puts:
            if key == d.key or (d.prefix and key.startswith(d.key)):
                return key
    return None


def _wrote(response: TxnResponse) -> bool:
    return isinstance(response, Written) or (isinstance(response, Deleted) and response.deleted > 0)


def _deleted(op: Delete, removed: tuple[KeyValue, ...], revision: int) -> Deleted:
    return Deleted(
        prior_version=removed[0].version if removed else 0,
        revision=revision,
        deleted=len(removed),
        prev=removed if op.prev_kv else (),
    )


def _revision_refused(asked: int, at: _StateAt) -> Result | None:
    """A read of revision ``asked`` (0: the current one) refused: a future revision names the
    store's revision, a compacted one the revision asked for (the team's reading of the
    shared vocabulary; etcd's errors carry neither)."""
    if asked > at.revision:
        return FutureRevision(revision=at.revision)
    if 0 < asked < at.compact_revision:
        return RevisionCompacted(compact_revision=at.compact_revision, revision=asked)
    return None


# -------------------------------------------------------------------------- replay


@dataclass(slots=True)
class Replay:
    """The decided log run through the model.

    Positions count applied client commands (membership commands and no-ops hold none):
    ``states[n]`` is the state after the first ``n`` of them, ``through_slot[s]`` how many
    were applied through slot ``s``, ``first[(client_id, seq)]`` the position of the
    command's first occurrence and the model's answer there."""

    store: ReferenceStore
    states: list[_StateAt]
    through_slot: dict[int, int]
    slot_states: dict[int, tuple[int, int]]
    first: dict[tuple[str, int], tuple[int, Result | None]]

    @property
    def top_slot(self) -> int:
        return max(self.through_slot, default=0)


def replay(decided: Mapping[int, Value]) -> Replay:
    """Run slots 1..max through the model; a missing slot below the top is a violation."""
    store = ReferenceStore()
    states = [store.state()]
    through: dict[int, int] = {}
    slot_states: dict[int, tuple[int, int]] = {}
    first: dict[tuple[str, int], tuple[int, Result | None]] = {}
    top = max(decided, default=0)
    for slot in range(1, top + 1):
        value = decided.get(slot)
        if value is None:
            raise Violation(PROPERTY, f"slot {slot} below the top {top} was never decided")
        for raw in value:
            if is_membership_command(raw):
                continue
            cid, seq, result = store.apply_command(raw)
            first.setdefault((cid, seq), (len(states) - 1, result))
            states.append(store.state())
        through[slot] = len(states) - 1
        slot_states[slot] = (store.revision, store.compact_revision)
    return Replay(store, states, through, slot_states, first)


# -------------------------------------------------------------------------- recorder


@dataclass(slots=True)
class Recorder:
    """Fed by the simulator as it runs: when each slot was first decided, and every
    replica's (revision, compact_revision) after each slot it applied or restored."""

    decided_ms: dict[int, int] = field(default_factory=dict)
    slot_states: dict[int, tuple[int, int]] = field(default_factory=dict)
    reported_by: dict[int, int] = field(default_factory=dict)

    def on_decided(self, slot: int, now_ms: int) -> None:
        self.decided_ms.setdefault(slot, now_ms)

    def on_state(self, node: int, slot: int, revision: int, compact_revision: int) -> None:
        prior = self.slot_states.setdefault(slot, (revision, compact_revision))
        self.reported_by.setdefault(slot, node)
        if prior != (revision, compact_revision):
            raise Violation(
                PROPERTY,
                f"node {node} has (revision, compact_revision) = {(revision, compact_revision)} "
                f"after slot {slot}, node {self.reported_by[slot]} had {prior}",
            )


# --------------------------------------------------------------------------- check


@dataclass(frozen=True, slots=True)
class RevisionReport:
    """What ``check`` looked at, for the run report."""

    commands: int
    revision: int
    compact_revision: int
    writes_checked: int
    reads_checked: int
    events: int


def check(
    decided: Mapping[int, Value],
    histories: Sequence[Sequence[Operation]],
    recorder: Recorder,
    replayed: Replay | None = None,
) -> tuple[Replay, RevisionReport]:
    """Raise Violation (property "revisions") at the first discrepancy; see the module doc.

    ``histories``: each client's operations in order, so the i-th has seq i + 1 (a client
    issues one command per seq). ``replayed``: ``decided`` already run through the model (by
    another checker), so it is not run twice."""
    rp = replay(decided) if replayed is None else replayed
    for slot, figures in recorder.slot_states.items():
        expected = rp.slot_states.get(slot)
        if expected is not None and figures != expected:
            raise Violation(
                PROPERTY,
                f"replicas have (revision, compact_revision) = {figures} after slot {slot}, "
                f"the reference model {expected}",
            )
    ops = [(op, seq + 1) for history in histories for seq, op in enumerate(history)]
    writes = _check_writes(rp, ops)
    _check_real_time(rp, ops)
    reads = _check_reads(rp, ops, recorder)
    report = RevisionReport(
        commands=len(rp.states) - 1,
        revision=rp.store.revision,
        compact_revision=rp.store.compact_revision,
        writes_checked=writes,
        reads_checked=reads,
        events=len(rp.store.events),
    )
    return rp, report


def _comparable(result: Result | None) -> Result | None:
    """A refusal's reason is prose for people: only its kind is compared."""
    if isinstance(result, TxnRefused):
        return TxnRefused(reason="")
    if isinstance(result, Malformed):
        return Malformed(reason="")
    if isinstance(result, LeaseRefused):
        return LeaseRefused(reason="")
    return result


def _acked(op: Operation) -> bool:
    return op.outcome == "ok" and op.result is not None


def _check_writes(rp: Replay, ops: list[tuple[Operation, int]]) -> int:
    checked = 0
    for op, seq in ops:
        if not _acked(op) or is_read(op.op):
            continue
        first = rp.first.get((op.client_id, seq))
        if first is None:
            raise Violation(
                PROPERTY, f"{op.client_id} seq {seq} {_short(op.op)} was acknowledged, not logged"
            )
        position, expected = first
        if expected is not None and _comparable(op.result) != _comparable(expected):
            raise Violation(
                PROPERTY,
                f"{op.client_id} seq {seq} {_short(op.op)} at log position {position} "
                f"got {_short(op.result)}; the reference model gives {_short(expected)}",
            )
        checked += 1
    return checked


def _check_real_time(rp: Replay, ops: list[tuple[Operation, int]]) -> None:
    """A logged command sits after every write acknowledged before it was invoked."""
    acked = sorted(
        (op.complete_ms, rp.first[(op.client_id, seq)][0], op, seq)
        for op, seq in ops
        if _acked(op) and not is_read(op.op) and op.complete_ms is not None
    )
    ends = [a[0] for a in acked]
    best: list[tuple[int, int]] = []  # running (position, index into acked) maximum
    for i, a in enumerate(acked):
        best.append(max(best[-1], (a[1], i)) if best else (a[1], i))
    for op, seq in ops:
        first = rp.first.get((op.client_id, seq))
        if first is None:
            continue
        k = bisect.bisect_left(ends, op.invoke_ms)
        if k == 0:
            continue
        position, i = best[k - 1]
        if first[0] <= position:
            _, _, before, before_seq = acked[i]
            raise Violation(
                PROPERTY,
                f"{op.client_id} seq {seq} {_short(op.op)} invoked at {op.invoke_ms} ms sits at "
                f"log position {first[0]}, before {before.client_id} seq {before_seq} "
                f"{_short(before.op)} (position {position}) acknowledged at "
                f"{before.complete_ms} ms",
            )


def _check_reads(rp: Replay, ops: list[tuple[Operation, int]], recorder: Recorder) -> int:
    # Positions every acknowledged write or read pins, by acknowledgement time.
    write_acks = sorted(
        (op.complete_ms, rp.first[(op.client_id, seq)][0] + 1)
        for op, seq in ops
        if _acked(op) and not is_read(op.op) and op.complete_ms is not None
    )
    read_acks = sorted(
        (op.complete_ms, getattr(op.result, "revision", 0))
        for op, seq in ops
        if _acked(op) and is_read(op.op) and op.complete_ms is not None
    )
    write_ends = [w[0] for w in write_acks]
    write_floor = _running_max([w[1] for w in write_acks])
    read_ends = [r[0] for r in read_acks]
    read_floor = _running_max([r[1] for r in read_acks])
    # The log decided by each moment: slots by the time they were first decided.
    decided = sorted((ms, slot) for slot, ms in recorder.decided_ms.items())
    decided_ends = [d[0] for d in decided]
    decided_top = _running_max([d[1] for d in decided])
    checked = 0
    for op, seq in ops:
        if not _acked(op) or not is_read(op.op) or isinstance(op.result, NOT_APPLIED):
            continue
        if isinstance(op.op, View):
            continue  # the timeline is not part of the revision model
        assert op.complete_ms is not None
        k = bisect.bisect_left(write_ends, op.invoke_ms)
        lo = write_floor[k - 1] if k else 0
        k = bisect.bisect_left(read_ends, op.invoke_ms)
        revision_floor = read_floor[k - 1] if k else 0
        k = bisect.bisect_right(decided_ends, op.complete_ms)
        top_slot = min(decided_top[k - 1] if k else 0, rp.top_slot)
        hi = rp.through_slot.get(top_slot, 0)
        if _explained(rp, op, lo, hi, revision_floor):
            checked += 1
            continue
        raise Violation(
            PROPERTY,
            f"{op.client_id} seq {seq} {_short(op.op)} [{op.invoke_ms}..{op.complete_ms} ms] "
            f"got {_short(op.result)}; no log position from {lo} (after the writes acknowledged "
            f"before it) to {hi} (decided when it was acknowledged) at revision >= "
            f"{revision_floor} gives it; the model there: "
            f"{_short(rp.store.read(op.op, rp.states[max(lo, min(hi, len(rp.states) - 1))]))}",
        )
    return checked


def _explained(rp: Replay, op: Operation, lo: int, hi: int, revision_floor: int) -> bool:
    seen: set[_StateAt] = set()
    for n in range(lo, min(hi, len(rp.states) - 1) + 1):
        at = rp.states[n]
        if at.revision < revision_floor or at in seen:
            continue
        seen.add(at)
        if rp.store.read(op.op, at) == op.result:
            return True
    return False


def _running_max(values: list[int]) -> list[int]:
    out: list[int] = []
    for v in values:
        out.append(max(out[-1], v) if out else v)
    return out


__all__ = ["PROPERTY", "Recorder", "ReferenceStore", "Replay", "RevisionReport", "check", "replay"]
