"""Linearizability checker for client histories, shared by the simulator and the real-process
drill.

The search is the Wing-Gong algorithm with Lowe's memoization, in the shape Porcupine uses:
walk the history's call/return events in time order, try to linearize a pending call, and
backtrack when a return is reached whose operation is not yet linearized; a set of
(linearized operations, model state) pairs already explored prunes repeats. The history is
split per key first (P-compositionality, Horn & Kroening 2015): linearizability is local, so
a history is linearizable exactly when each per-object sub-history is.

Objects and what is checked:
- each key is a register holding (value, version), for Put/Get/Delete/Cas;
- each (site, other) pair is a boolean "site blocks other", for Block/Unblock;
- a Scan result is projected onto every key of the history that matches its prefix, as a
  read of that key at the scan's time (present with its value and version, or absent when
  the page says so). This checks each key's consistency with the scan, not the scan's
  atomicity across keys: a scan mixing two moments could pass.
- a Blocks result is projected the same way onto every (site, other) pair it covers.
- View results are not checked (the timeline is a derived, log-ordered view whose order the
  per-object models do not capture).

Outcomes: "ok" has a result; "fail" never took effect and is dropped; "unknown" may take
effect at any time after its invocation or never, so it is modelled as completing at
infinity with any result, and unknown reads are dropped (they constrain nothing). Results
that say a command was not applied (Stale, Malformed, Full) count as "fail".
"""

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from paxosd.statemachine.commands import (
    NOT_APPLIED,
    Block,
    BlockList,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Delete,
    Deleted,
    Found,
    Get,
    NotFound,
    Op,
    Put,
    Result,
    Rows,
    Scan,
    Unblock,
    View,
    Written,
)

STATES_EXPLORED_MAX: Final = 1_000_000  # per partition (key or block pair)
_INFINITY: Final = float("inf")
_EXPLAIN_PREFIX_OPS_MAX: Final = 6


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation as the client saw it. Times are the client's, in ms."""

    client_id: str
    op: Op
    invoke_ms: int
    complete_ms: int | None
    outcome: Literal["ok", "fail", "unknown"]
    result: Result | None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``verdict`` "ok": linearizable. "violation": ``partition`` (a key or a block pair)
    has no linearization; ``explanation`` and ``ops`` show the failing spot. "undecided":
    the search hit its bound, so nothing is claimed."""

    verdict: Literal["ok", "violation", "undecided"]
    partition: str | None = None
    explanation: str = ""
    ops: tuple[Operation, ...] = ()
    states_explored: int = 0

    @property
    def is_ok(self) -> bool:
        return self.verdict == "ok"


# ----------------------------------------------------------------------- partition models

# Register state: (value or None when absent, version; 0 when absent).
_Register = tuple[bytes | None, int]
_ABSENT: Final[_Register] = (None, 0)


@dataclass(frozen=True, slots=True)
class _KeyRead:
    """A scan projected onto one key: what the scan says the register held."""

    value: bytes | None
    version: int


@dataclass(frozen=True, slots=True)
class _PairRead:
    """A Blocks listing projected onto one pair."""

    blocked: bool


_Input = Op | _KeyRead | _PairRead


def _register_step(state: _Register, op: _Input, result: Result | None) -> _Register | None:
    """The register's next state, or None when ``result`` cannot come from ``state``.
    ``result`` None means unknown: any result is accepted."""
    # Results are compared on the fields this model holds (value and version); revisions
    # are a store-wide counter that a per-key register cannot predict.
    value, version = state
    match op:
        case Put(value=new):
            if result is not None and not (
                isinstance(result, Written) and result.version == version + 1
            ):
                return None
            return (new, version + 1)
        case Cas(new=new, expect_value=ev, expect_version=evv):
            matches = evv == version if evv is not None else (value is not None and value == ev)
            if matches:
                if result is not None and not (
                    isinstance(result, Written) and result.version == version + 1
                ):
                    return None
                return (new, version + 1)
            if result is not None and not (
                isinstance(result, CasMismatch)
                and (result.value, result.version) == (value, version)
            ):
                return None
            return state
        case Delete():
            if result is not None and not (
                isinstance(result, Deleted) and result.prior_version == version
            ):
                return None
            return _ABSENT
        case Get():
            if value is None:
                return state if isinstance(result, NotFound) else None
            ok = isinstance(result, Found) and (result.value, result.version) == (value, version)
            return state if ok else None
        case _KeyRead(value=read_value, version=read_version):
            return state if (read_value, read_version) == state else None
    return None


def _pair_step(state: bool, op: _Input, result: Result | None) -> bool | None:
    match op:
        case Block():
            ok = result is None or result == Changed(changed=not state)
            return True if ok else None
        case Unblock():
            ok = result is None or result == Changed(changed=state)
            return False if ok else None
        case _PairRead(blocked=blocked):
            return state if blocked == state else None
    return None


def _reject(state: None, op: _Input, result: Result | None) -> None:
    return None


# -------------------------------------------------------------------------- partitioning


@dataclass(slots=True)
class _Entry:
    """One operation of a partition: the model input and the result to explain."""

    source: Operation
    input: _Input
    result: Result | None  # None: unknown, accept anything
    invoke_ms: float
    complete_ms: float  # infinity for unknown outcomes


@dataclass(slots=True)
class _Partition:
    label: str
    initial: Hashable
    step: Callable[..., Hashable | None]
    entries: list[_Entry] = field(default_factory=list)


def _validate(op: Operation) -> None:
    if op.outcome not in ("ok", "fail", "unknown"):
        raise ValueError(f"unknown outcome {op.outcome!r}")
    if op.outcome == "ok":
        if op.complete_ms is None or op.result is None:
            raise ValueError(f"ok operation without completion time or result: {op!r}")
        if op.complete_ms < op.invoke_ms:
            raise ValueError(f"operation completes before it is invoked: {op!r}")


def _partitions(history: Iterable[Operation]) -> list[_Partition]:
    ops = list(history)
    for op in ops:
        _validate(op)
    live = [
        o
        for o in ops
        if o.outcome != "fail" and not (o.outcome == "ok" and isinstance(o.result, NOT_APPLIED))
    ]
    keys: dict[str, _Partition] = {}
    pairs: dict[tuple[str, str], _Partition] = {}

    def key_part(key: str) -> _Partition:
        if key not in keys:
            keys[key] = _Partition(f"key {key!r}", _ABSENT, _register_step)
        return keys[key]

    def pair_part(site: str, other: str) -> _Partition:
        if (site, other) not in pairs:
            pairs[(site, other)] = _Partition(f"block {site!r}->{other!r}", False, _pair_step)
        return pairs[(site, other)]

    # First pass: every object the history names, so projections know what to cover.
    for o in live:
        match o.op, o.result:
            case Put(key=k) | Get(key=k) | Delete(key=k) | Cas(key=k), _:
                key_part(k)
            case Block(site=s, other=t) | Unblock(site=s, other=t), _:
                pair_part(s, t)
            case Scan(), Rows(rows=rows) if o.outcome == "ok":
                for row in rows:
                    key_part(row.key)
            case Blocks(), BlockList(pairs=listed) if o.outcome == "ok":
                for p in listed:
                    pair_part(p.site, p.other)

    # A scan or listing answered with the wrong result type (or a row outside its prefix)
    # fits no object's model; this partition rejects every operation put in it.
    mistyped = _Partition("result types", None, _reject)
    for o in live:
        unknown = o.outcome == "unknown"
        result = None if unknown else o.result
        end = _INFINITY if unknown or o.complete_ms is None else float(o.complete_ms)

        def add(
            part: _Partition, inp: _Input, res: Result | None, o: Operation = o, end: float = end
        ) -> None:
            part.entries.append(_Entry(o, inp, res, float(o.invoke_ms), end))

        match o.op:
            case Put(key=k) | Delete(key=k) | Cas(key=k):
                add(keys[k], o.op, result)
            case Block(site=s, other=t) | Unblock(site=s, other=t):
                add(pairs[(s, t)], o.op, result)
            case Get(key=k) if not unknown:
                add(keys[k], o.op, result)
            case Scan(prefix=prefix) if not unknown:
                if not isinstance(result, Rows) or any(
                    not row.key.startswith(prefix) for row in result.rows
                ):
                    add(mistyped, o.op, result)
                    continue
                seen = {row.key: row for row in result.rows}
                last = result.rows[-1].key if result.rows else None
                for k, part in keys.items():
                    if not k.startswith(prefix):
                        continue
                    if k in seen:
                        add(part, _KeyRead(seen[k].value, seen[k].version), None)
                    elif not result.more or (last is not None and k < last):
                        add(part, _KeyRead(None, 0), None)
            case Blocks(site=site) if not unknown:
                if not isinstance(result, BlockList):
                    add(mistyped, o.op, result)
                    continue
                listed_pairs = {(p.site, p.other) for p in result.pairs}
                for (s, t), part in pairs.items():
                    if site is None or s == site:
                        add(part, _PairRead((s, t) in listed_pairs), None)
            case Get() | Scan() | Blocks() | View():
                pass  # an unknown read, or a View: constrains nothing we model
    return sorted([*keys.values(), *pairs.values(), mistyped], key=lambda p: p.label)


# -------------------------------------------------------------------------------- search


@dataclass(slots=True)
class _Outcome:
    verdict: Literal["ok", "violation", "undecided"]
    explored: int
    explanation: str = ""
    ops: tuple[Operation, ...] = ()


def _describe(e: _Entry) -> str:
    o = e.source
    when = f"[{o.invoke_ms}..{o.complete_ms if o.outcome == 'ok' else '?'} ms]"
    if isinstance(e.input, _KeyRead):
        seen = "absent" if e.input.value is None else f"{e.input.value!r} v{e.input.version}"
        what = f"{o.op!r} saw this key {seen}"
    elif isinstance(e.input, _PairRead):
        what = f"{o.op!r} saw this pair {'blocked' if e.input.blocked else 'not blocked'}"
    else:
        what = f"{o.op!r} -> {o.result!r}" if o.outcome == "ok" else f"{o.op!r} -> {o.outcome}"
    return f"{o.client_id} {what} {when}"


def _search(part: _Partition, budget: int) -> _Outcome:
    """Porcupine's algorithm over a doubly linked list of call/return events."""
    entries = part.entries
    n = len(entries)
    if n == 0:
        return _Outcome("ok", 0)
    # Events: (time, kind, op). Calls sort before returns at equal times, so operations that
    # touch at a millisecond boundary count as concurrent: no false violations from clock
    # granularity.
    events = sorted(
        [(e.invoke_ms, 0, i) for i, e in enumerate(entries)]
        + [(e.complete_ms, 1, i) for i, e in enumerate(entries)]
    )
    head = 2 * n  # sentinel node
    nil = -1
    nxt = [nil] * (2 * n + 1)
    prv = [nil] * (2 * n + 1)
    op_of = [0] * (2 * n)
    is_call = [False] * (2 * n)
    match_of = [0] * (2 * n)
    call_node = [0] * n
    return_node = [0] * n
    prior = head
    for node, (_, kind, i) in enumerate(events):
        op_of[node] = i
        is_call[node] = kind == 0
        if kind == 0:
            call_node[i] = node
        else:
            return_node[i] = node
        nxt[prior] = node
        prv[node] = prior
        prior = node
    for i in range(n):
        match_of[call_node[i]] = return_node[i]

    def lift(c: int) -> None:
        r = match_of[c]
        nxt[prv[c]] = nxt[c]
        prv[nxt[c]] = prv[c]  # a call always has its return after it, so nxt[c] != nil
        nxt[prv[r]] = nxt[r]
        if nxt[r] != nil:
            prv[nxt[r]] = prv[r]

    def unlift(c: int) -> None:
        r = match_of[c]
        nxt[prv[r]] = r
        if nxt[r] != nil:
            prv[nxt[r]] = r
        nxt[prv[c]] = c
        prv[nxt[c]] = c

    # Unknown-outcome writes accept any result, so once every definite operation is
    # linearized the rest can always follow: stop there instead of enumerating them.
    definite_left = sum(1 for e in entries if e.complete_ms != _INFINITY)
    step = part.step
    state: Hashable = part.initial
    linearized = 0
    cache: set[tuple[int, Hashable]] = {(0, state)}
    stack: list[tuple[int, Hashable]] = []  # (call node, state before it)
    explored = 0
    best_depth = -1
    best: tuple[list[int], int, Hashable] = ([], 0, state)
    node = nxt[head]
    while definite_left > 0:
        assert node != nil, "ran off the event list with definite operations left"
        if is_call[node]:
            i = op_of[node]
            explored += 1
            if explored > budget:
                return _Outcome("undecided", explored)
            e = entries[i]
            new_state = step(state, e.input, e.result)
            if new_state is not None:
                new_linearized = linearized | (1 << i)
                if (new_linearized, new_state) not in cache:
                    cache.add((new_linearized, new_state))
                    stack.append((node, state))
                    state = new_state
                    linearized = new_linearized
                    if e.complete_ms != _INFINITY:
                        definite_left -= 1
                    lift(node)
                    node = nxt[head]
                    continue
            node = nxt[node]
        else:
            # A return of an operation we have not linearized: this order is dead.
            if len(stack) > best_depth:
                best_depth = len(stack)
                best = ([op_of[c] for c, _ in stack], op_of[node], state)
            if not stack:
                return _explain(part, best, explored)
            c, state = stack.pop()
            i = op_of[c]
            linearized &= ~(1 << i)
            if entries[i].complete_ms != _INFINITY:
                definite_left += 1
            unlift(c)
            node = nxt[c]
    return _Outcome("ok", explored)


def _explain(part: _Partition, best: tuple[list[int], int, Hashable], explored: int) -> _Outcome:
    """The deepest dead end: the longest prefix that could be linearized and the operation
    whose result no continuation of it explains."""
    prefix, blocked, state = best
    entries = part.entries
    shown = prefix[-_EXPLAIN_PREFIX_OPS_MAX:]
    lines = [
        f"{part.label}: no linearization explains {_describe(entries[blocked])}.",
        f"Longest linearizable prefix has {len(prefix)} ops"
        + (f"; its last {len(shown)}:" if shown else "."),
    ]
    lines += [f"  {_describe(entries[i])}" for i in shown]
    lines.append(f"State after it: {state!r}.")
    ops = tuple(entries[i].source for i in [*shown, blocked])
    return _Outcome("violation", explored, "\n".join(lines), ops)


def check(
    history: Sequence[Operation], states_explored_max: int = STATES_EXPLORED_MAX
) -> CheckResult:
    """Check ``history``; raises ValueError only for a malformed history (a harness bug).

    ``states_explored_max`` bounds the search of each partition. A violation in any
    partition wins over an undecided one: a violation is a proof, while "undecided" only
    says the budget ran out somewhere.
    """
    assert states_explored_max >= 1
    explored = 0
    undecided: str | None = None
    for part in _partitions(history):
        outcome = _search(part, states_explored_max)
        explored += outcome.explored
        if outcome.verdict == "violation":
            return CheckResult("violation", part.label, outcome.explanation, outcome.ops, explored)
        if outcome.verdict == "undecided" and undecided is None:
            undecided = part.label
    if undecided is not None:
        explanation = f"{undecided}: search exceeded {states_explored_max} explored states"
        return CheckResult("undecided", undecided, explanation, (), explored)
    return CheckResult("ok", None, "", (), explored)


__all__ = ["STATES_EXPLORED_MAX", "CheckResult", "Operation", "check"]
