"""The checks of the drill's watch streams and transactions against the store's history.

The history (``reference``) is what a fresh watch from the drill's start revision read on
one node after the heal: every change to the drill's keys, in revision order. It is judged
from both sides before anything is judged against it:

- every acknowledged write whose revision the client learned is in it, at that revision
  (put and cas: a PUT of the unique value; delete of a present key: a DELETE), every value in
  it was submitted by some operation that did not certainly fail, and no value is in it
  twice;
- each transaction is all or nothing at one revision: a successful one's puts are all in it
  at the revision it answered with and nothing else changed at that revision but its own
  writes; its compares held on the history's state just before that revision and its reads
  saw its own writes; a failed one wrote nothing, a compare was false on the state at the
  revision it answered with, and its reads are that state; an unknown one is one or the other.

Then each watcher's stream (all its watches concatenated: it re-creates them at last + 1) must
be exactly the history's projection on the revisions it covered — from the revision it first
asked for to the last one it saw — in order, each event once. So every acknowledged write
appears in every stream that covered its revision, exactly once and in order.

Pure functions of their inputs: the unit tests feed them made-up histories.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from paxosd.lab.drill.checks import Violation
from paxosd.lab.drill.workload import Entry, Workload
from paxosd.statemachine.commands import (
    Cas,
    Compare,
    Delete,
    Deleted,
    Event,
    Found,
    Get,
    NotFound,
    Put,
    Txn,
    TxnResult,
    Written,
)

# Violations of one kind past this many are summed up in one line.
SHOWN_MAX: Final = 5


@dataclass(frozen=True, slots=True)
class Change:
    """One event, reduced to what the checks compare (a DELETE has no value)."""

    revision: int
    type: str
    key: str
    value: bytes
    version: int
    create_revision: int

    @classmethod
    def of(cls, e: Event) -> Change:
        kv = e.kv
        return cls(kv.mod_revision, e.type, kv.key, kv.value, kv.version, kv.create_revision)

    def describe(self) -> str:
        what = f"={self.value[:40]!r}" if self.type == "PUT" else ""
        return f"{self.type} {self.key}{what} at revision {self.revision}"


@dataclass(slots=True)
class Stream:
    """What one drill watcher received: every event in the order delivered, across its
    re-creations, from revision ``start`` on; ``last`` is the highest revision it is known to
    have seen everything up to (its last event's, or a later progress notification's)."""

    name: str
    start: int
    changes: list[Change] = field(default_factory=list)
    last: int = 0
    creations: list[tuple[int, int]] = field(default_factory=list)  # (node, start revision)
    errors: list[str] = field(default_factory=list)


class History:
    """The reference history as a per-key index: the state of any drill key at any revision
    between the drill's start and its end."""

    def __init__(self, changes: Sequence[Change], start: int) -> None:
        self.changes = list(changes)
        self.start = start
        self.by_revision: dict[int, list[Change]] = {}
        self.by_value: dict[bytes, list[Change]] = {}
        self._versions: dict[str, tuple[list[int], list[Change]]] = {}
        for c in self.changes:
            self.by_revision.setdefault(c.revision, []).append(c)
            if c.type == "PUT":
                self.by_value.setdefault(c.value, []).append(c)
            revs, items = self._versions.setdefault(c.key, ([], []))
            revs.append(c.revision)
            items.append(c)

    def state(self, key: str, revision: int) -> Change | None:
        """The key's last change at or before ``revision`` if it left the key present
        (None: absent). Keys the drill writes are new to it, so absent before ``start``."""
        revs, items = self._versions.get(key, ([], []))
        i = bisect.bisect_right(revs, revision)
        if i == 0:
            return None
        c = items[i - 1]
        return c if c.type == "PUT" else None


def check_reference(
    changes: Sequence[Change], start: int, end: int
) -> tuple[History, list[Violation]]:
    """The history itself: revisions never go down, one change per key and revision, and it
    spans the drill (its first change is the start mark's, its last the end mark's)."""
    out: list[Violation] = []
    seen: set[tuple[int, str]] = set()
    previous = 0
    for c in changes:
        if c.revision < previous:
            out.append(
                Violation("watch-history", f"revision goes back: {c.describe()} after {previous}")
            )
            break
        if (c.revision, c.key) in seen:
            out.append(Violation("watch-history", f"{c.describe()} is in the history twice"))
            break
        seen.add((c.revision, c.key))
        previous = c.revision
    if not changes or changes[0].revision != start or changes[-1].revision != end:
        got = f"{changes[0].revision}..{changes[-1].revision}" if changes else "nothing"
        out.append(
            Violation(
                "watch-history",
                f"the history read from revision {start} should span the drill's marks "
                f"{start}..{end}, got {got}",
            )
        )
    return History(changes, start), out


def _limited(kind: str, problems: list[str]) -> list[Violation]:
    out = [Violation(kind, p) for p in problems[:SHOWN_MAX]]
    if len(problems) > SHOWN_MAX:
        out.append(Violation(kind, f"... {len(problems)} in all"))
    return out


def check_writes(history: History, entries: Iterable[Entry], workload: Workload) -> list[Violation]:
    """Acknowledged writes are in the history at their revision; every value in it was
    submitted by an operation that may have been applied, and is in it once."""
    problems: list[str] = []
    possible: set[bytes] = set()
    for e in entries:
        o = e.operation
        if o.outcome != "fail":
            possible.update(_written_values(o.op))
        if o.outcome != "ok":
            continue
        match o.op, o.result:
            case ((Put(key=k, value=v) | Cas(key=k, new=v)), Written(revision=rev)) if rev:
                if not any(c.key == k and c.type == "PUT" for c in history.by_value.get(v, [])):
                    problems.append(f"{o.client_id}: {o.op!r} acknowledged at revision {rev}")
                elif not any(c.revision == rev and c.key == k for c in history.by_value.get(v, [])):
                    problems.append(
                        f"{o.client_id}: {o.op!r} answered revision {rev}, the history has "
                        f"it at {[c.revision for c in history.by_value[v]]}"
                    )
            case Delete(key=k), Deleted(prior_version=pv, revision=rev) if pv and rev:
                if not any(
                    c.key == k and c.type == "DELETE" for c in history.by_revision.get(rev, [])
                ):
                    problems.append(
                        f"{o.client_id}: {o.op!r} acknowledged at revision {rev}, no DELETE there"
                    )
    out = _limited("watch-lost", [f"not in the history: {p}" for p in problems])
    phantom: list[str] = []
    twice: list[str] = []
    for v, cs in history.by_value.items():
        drill = [c for c in cs if c.key.startswith((workload.prefix, workload.txn_prefix))]
        if not drill:
            continue
        if v not in possible:
            phantom.append(f"{drill[0].describe()}: no operation that may have run wrote it")
        if len(drill) > 1:
            twice.append(f"value {v[:40]!r} written {len(drill)} times: {drill[1].describe()}")
    out += _limited("watch-phantom", phantom)
    out += _limited("duplicate", twice)
    return out


def _written_values(op: object) -> list[bytes]:
    match op:
        case Put(value=v):
            return [v]
        case Cas(new=v):
            return [v]
        case Txn(success=success, failure=failure):
            return [p.value for p in (*success, *failure) if isinstance(p, Put)]
    return []


def _holds(c: Compare, state: Change | None) -> bool:
    """etcd's compare on the state of the key (None: absent, whose numbers are 0 and whose
    value compares false)."""
    if c.target == "value":
        if state is None:
            return False
        a: bytes | int = state.value
        b: bytes | int = c.value
    else:
        a = (
            0
            if state is None
            else {
                "version": state.version,
                "create": state.create_revision,
                "mod": state.revision,
                "lease": 0,
            }[c.target]
        )
        b = c.number
    match c.op:
        case "=":
            return a == b
        case "!=":
            return a != b
        case "<":
            return a < b  # type: ignore[operator]
        case ">":
            return a > b  # type: ignore[operator]
    return False


def _read_matches(res: object, state: Change | None) -> bool:
    match res:
        case Found(value=v, version=ver, mod_revision=mod):
            if state is None:
                return False
            return (v, ver, mod) == (state.value, state.version, state.revision)
        case NotFound():
            return state is None
    return False


def check_etcd_reads(history: History, entries: Iterable[Entry]) -> list[Violation]:
    """Each acknowledged read through the etcd API is the history's state of its key at the
    header revision it answered with. An etcd client takes that revision as the moment of
    the answer (a Get, then a Watch from revision + 1, is how it follows a key): a value
    from another moment loses or repeats changes for it, and the register check cannot see
    that, as it compares values and versions only."""
    problems: list[str] = []
    for e in entries:
        o = e.operation
        if e.via != "etcd" or o.outcome != "ok" or not isinstance(o.op, Get):
            continue
        rev = o.result.revision if isinstance(o.result, Found | NotFound) else 0
        if rev < history.start:
            continue  # no revision to judge (or one before the history: cannot happen)
        state = history.state(o.op.key, rev)
        if not _read_matches(o.result, state):
            had = state.describe() if state is not None else "absent"
            problems.append(
                f"{o.client_id}: {o.op!r} answered {o.result!r}, the history at that "
                f"revision: {had}"
            )
    return _limited("etcd-read", problems)


def check_txns(history: History, entries: Iterable[Entry]) -> list[Violation]:
    """All or nothing at one revision, compares and reads right (see the module's doc)."""
    problems: list[str] = []
    for e in entries:
        o = e.operation
        if not isinstance(o.op, Txn) or o.outcome == "fail":
            continue
        txn = o.op
        puts = {p.key: p.value for p in txn.success if isinstance(p, Put)}
        found = {k: history.by_value.get(v, []) for k, v in puts.items()}
        revisions = {c.revision for cs in found.values() for c in cs if c.key in puts}
        applied = bool(revisions)
        who = f"{o.client_id} txn {e.seq}"
        if applied and (len(revisions) != 1 or any(not cs for cs in found.values())):
            problems.append(
                f"{who}: half applied: its puts are at revisions "
                f"{ {k: [c.revision for c in cs] for k, cs in found.items()} }"
            )
            continue
        result = o.result if o.outcome == "ok" else None
        if isinstance(result, TxnResult) and result.succeeded != applied:
            problems.append(
                f"{who}: answered succeeded={result.succeeded} at revision {result.revision}, "
                f"the history {'has' if applied else 'lacks'} its writes"
            )
            continue
        if o.outcome == "ok" and not isinstance(result, TxnResult):
            if applied:
                problems.append(f"{who}: answered {result!r} but its writes are in the history")
            continue
        if applied:
            rev = revisions.pop()
            done = result if isinstance(result, TxnResult) else None
            problems += _check_applied(who, txn, done, rev, history)
        elif isinstance(result, TxnResult):
            problems += _check_refused(who, txn, result, history)
    return _limited("txn", problems)


def _check_applied(
    who: str, txn: Txn, result: TxnResult | None, rev: int, history: History
) -> list[str]:
    out: list[str] = []
    if result is not None and result.revision != rev:
        out.append(f"{who}: answered revision {result.revision}, its writes are at {rev}")
    for c in txn.compares:
        if not _holds(c, history.state(c.key, rev - 1)):
            out.append(f"{who}: applied at revision {rev} but {c!r} was false before it")
    written = {p.key for p in txn.success if isinstance(p, Put)}
    deleted = {d.key for d in txn.success if isinstance(d, Delete)}
    for ch in history.by_revision.get(rev, []):
        if ch.key not in written and not (ch.key in deleted and ch.type == "DELETE"):
            out.append(f"{who}: revision {rev} also holds {ch.describe()}, not the txn's")
    for d in deleted:
        was = history.state(d, rev - 1) is not None
        at_rev = history.by_revision.get(rev, [])
        is_deleted = any(c.key == d and c.type == "DELETE" for c in at_rev)
        if was != is_deleted:
            out.append(f"{who}: delete of {d} (present before: {was}) at revision {rev}")
    if result is not None:
        for op, res in zip(txn.success, result.responses, strict=False):
            if isinstance(op, Get) and not _read_matches(res, history.state(op.key, rev)):
                out.append(f"{who}: its read of {op.key} gave {res!r}, not its own write")
    return out


def _check_refused(who: str, txn: Txn, result: TxnResult, history: History) -> list[str]:
    out: list[str] = []
    at = result.revision
    if all(_holds(c, history.state(c.key, at)) for c in txn.compares):
        out.append(f"{who}: took the failure branch at revision {at}, but every compare held")
    for op, res in zip(txn.failure, result.responses, strict=False):
        if isinstance(op, Get) and not _read_matches(res, history.state(op.key, at)):
            out.append(
                f"{who}: read {op.key} at revision {at} as {res!r}; the history has "
                f"{history.state(op.key, at)!r}"
            )
    return out


def check_stream(stream: Stream, history: History) -> list[Violation]:
    """The stream is exactly the history's projection on [stream.start, stream.last]."""
    want = [c for c in history.changes if stream.start <= c.revision <= stream.last]
    got = stream.changes
    if got == want:
        return []
    # Name the first difference: a missed, extra, repeated or reordered event.
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            if g in want[i:]:
                what = f"missed {w.describe()} (the next event delivered was {g.describe()})"
            elif g in got[:i]:
                what = f"delivered {g.describe()} twice"
            elif g in want[:i]:
                what = f"delivered {g.describe()} again, out of order"
            else:
                what = f"delivered {g.describe()}, which is not in the history"
            break
    else:
        if len(got) < len(want):
            left = len(want) - len(got) - 1
            what = f"stopped early: missed {want[len(got)].describe()} and {left} more"
        else:
            what = f"delivered {got[len(want)].describe()} past its last revision {stream.last}"
    return [
        Violation(
            "watch",
            f"{stream.name} (from revision {stream.start} to {stream.last}, "
            f"{len(got)} events, {len(stream.creations)} watches): {what}",
        )
    ]


def check_all(
    reference: Sequence[Change],
    start: int,
    end: int,
    streams: Sequence[Stream],
    entries: Sequence[Entry],
    workload: Workload,
) -> tuple[list[Violation], dict[str, object]]:
    """Every check of this module, and the figures the report shows."""
    history, violations = check_reference(reference, start, end)
    violations += check_writes(history, entries, workload)
    violations += check_txns(history, entries)
    violations += check_etcd_reads(history, entries)
    for s in streams:
        violations += check_stream(s, history)
        if s.last < end:
            violations.append(
                Violation(
                    "watch",
                    f"{s.name} reached revision {s.last}, not the drill's end {end}"
                    + (f": {s.errors[-1]}" if s.errors else ""),
                )
            )
    txns = [e for e in entries if isinstance(e.operation.op, Txn)]
    info: dict[str, object] = {
        "history": {"start": start, "end": end, "events": len(reference)},
        "watchers": [
            {
                "name": s.name,
                "events": len(s.changes),
                "from": s.start,
                "to": s.last,
                "watches": len(s.creations),
                "nodes": sorted({n for n, _ in s.creations}),
                "errors": len(s.errors),
            }
            for s in streams
        ],
        "txns": {
            "total": len(txns),
            "succeeded": sum(
                1
                for e in txns
                if isinstance(e.operation.result, TxnResult) and e.operation.result.succeeded
            ),
            "failed_compare": sum(
                1
                for e in txns
                if isinstance(e.operation.result, TxnResult) and not e.operation.result.succeeded
            ),
            "unknown": sum(1 for e in txns if e.operation.outcome == "unknown"),
        },
    }
    return violations, info
