"""Simulated clients: random operations, timeouts, retries with the same (client_id, seq).

Each client has one operation in flight, as a real client library does. It records what it
saw (invoke, then ok / fail / unknown) for the checkers; "fail" is used only when no attempt
can have entered a log (every attempt was redirected), otherwise a client that gives up
records "unknown", which the checkers let take effect or not.

Two key spaces. ``KEYS`` get the single-key operations the per-key linearizability checker
models (registers). ``TXN_KEYS`` get what it cannot model per key: transactions across keys,
prefix deletes, puts with prev_kv, reads at a past revision, and compactions; the revision
checker (paxosd/sim/revisions.py) replays the decided log for every operation of both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    COMPARE_OPS,
    Block,
    Cas,
    Command,
    Compact,
    Compare,
    Delete,
    Get,
    Op,
    Put,
    Scan,
    Txn,
    TxnOp,
    Unblock,
    encode_command,
)

KEYS = ("a", "b", "c", "d")
# Two prefixes, so prefix deletes and prefix scans cover several keys but not all of them.
# They sort after KEYS, so a scan of every key (limit 10) always shows all of KEYS.
TXN_KEYS = ("t/a", "t/b", "t/c", "u/a", "u/b")
TXN_PREFIXES = ("t/", "u/", "t/a")
SITES = ("s1", "s2", "s3")
# Share of operations on TXN_KEYS; the rest keep the single-key mix unchanged.
TXN_SPACE_SHARE = 0.35
# Past revisions asked for: up to this far behind the newest revision a client has seen.
REVISION_LAG_MAX = 8
COMPACT_SHARE = 0.06


def random_op(rng: random.Random, unique: int, recent_revision: int = 1) -> Op:
    """A random operation over a small key space, so operations collide often; every write
    carries a unique value so a read identifies exactly which write it saw.

    ``recent_revision``: the newest store revision any client has seen, which past reads,
    revision compares and compactions aim near (so they hit both kept and compacted history).
    """
    if rng.random() < TXN_SPACE_SHARE:
        return _revision_op(rng, unique, recent_revision)
    key = rng.choice(KEYS)
    value = f"v{unique}".encode()
    r = rng.random()
    if r < 0.30:
        return Put(key=key, value=value)
    if r < 0.55:
        return Get(key=key)
    if r < 0.62:
        return Delete(key=key)
    if r < 0.72:
        if rng.random() < 0.5:
            return Cas(key=key, new=value, expect_version=rng.randint(0, 3))
        return Cas(key=key, new=value, expect_value=f"v{rng.randint(0, unique)}".encode())
    if r < 0.80:
        return Scan(prefix="", limit=10)
    a, b = rng.sample(SITES, 2)
    if r < 0.90:
        return Block(site=a, other=b)
    return Unblock(site=a, other=b)


def _past(rng: random.Random, recent_revision: int) -> int:
    return max(1, recent_revision - rng.randint(0, REVISION_LAG_MAX))


def _revision_op(rng: random.Random, unique: int, recent: int) -> Op:
    value = f"v{unique}".encode()
    r = rng.random()
    if r < COMPACT_SHARE:
        return Compact(revision=max(1, recent - rng.randint(0, REVISION_LAG_MAX)))
    if r < 0.40:
        return _random_txn(rng, unique, recent)
    if r < 0.55:
        return Put(key=rng.choice(TXN_KEYS), value=value, prev_kv=rng.random() < 0.7)
    if r < 0.65:
        prefix = rng.random() < 0.7
        key = rng.choice(TXN_PREFIXES if prefix else TXN_KEYS)
        return Delete(key=key, prefix=prefix, prev_kv=rng.random() < 0.5)
    if r < 0.82:
        return Get(key=rng.choice(TXN_KEYS), revision=_past(rng, recent))
    if r < 0.90:
        return Get(key=rng.choice(TXN_KEYS))
    return Scan(
        prefix=rng.choice(("", *TXN_PREFIXES)),
        limit=rng.randint(1, 4),
        revision=_past(rng, recent) if rng.random() < 0.6 else 0,
    )


def _random_compare(rng: random.Random, unique: int, recent: int) -> Compare:
    key = rng.choice(TXN_KEYS)
    op = rng.choice(COMPARE_OPS)
    target = rng.choice(("value", "value", "version", "create", "mod", "lease"))
    if target == "value":
        return Compare(key=key, target=target, op=op, value=f"v{rng.randint(0, unique)}".encode())
    if target == "version":
        return Compare(key=key, target=target, op=op, number=rng.randint(0, 3))
    if target == "lease":
        return Compare(key=key, target=target, op=op, number=0)
    return Compare(key=key, target=target, op=op, number=_past(rng, recent))


def _random_branch(
    rng: random.Random, unique: int, recent: int, ops_max: int, tag: str
) -> list[TxnOp]:
    """Reads and writes in a random order. Writes touch distinct keys (a prefix delete's
    prefix shares no key with another write), so the branch is valid under etcd's rule."""
    free = list(TXN_KEYS)
    rng.shuffle(free)
    ops: list[TxnOp] = []
    for i in range(rng.randint(1, ops_max)):
        r = rng.random()
        if r < 0.45 and free:
            key = free.pop()
            ops.append(Put(key=key, value=f"v{unique}{tag}{i}".encode(), prev_kv=r < 0.15))
        elif r < 0.60 and free:
            ops.append(Delete(key=free.pop(), prev_kv=rng.random() < 0.5))
        elif r < 0.67 and free and all(k.startswith("u/") for k in TXN_KEYS if k not in free):
            # Every unwritten key under "t/" is still free: delete them all at once.
            ops.append(Delete(key="t/", prefix=True, prev_kv=rng.random() < 0.5))
            free = [k for k in free if not k.startswith("t/")]
        elif r < 0.80:
            ops.append(Get(key=rng.choice(TXN_KEYS)))
        elif r < 0.85:
            ops.append(Get(key=rng.choice(TXN_KEYS), revision=_past(rng, recent)))
        else:
            ops.append(Scan(prefix=rng.choice(("", *TXN_PREFIXES)), limit=rng.randint(1, 4)))
    return ops


def _random_txn(rng: random.Random, unique: int, recent: int) -> Txn:
    compares = tuple(_random_compare(rng, unique, recent) for _ in range(rng.randint(0, 2)))
    success = _random_branch(rng, unique, recent, 4, "s")
    failure = _random_branch(rng, unique, recent, 3, "f") if rng.random() < 0.7 else []
    if rng.random() < 0.05:
        # A key written twice: refused whichever branch is taken.
        key = rng.choice(TXN_KEYS)
        for branch in (success, failure):
            branch.append(Put(key=key, value=b"dup1"))
            branch.append(Put(key=key, value=b"dup2"))
    return Txn(compares=compares, success=tuple(success), failure=tuple(failure))


@dataclass(slots=True)
class SimClient:
    index: int
    client_id: str
    site: str
    seq: int = 0
    op: Op | None = None
    command: bytes = b""
    invoke_ms: int = 0
    give_up_ms: int = 0
    attempt: int = 0
    maybe_applied: bool = False
    target: int = 0
    history: list[Operation] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.op is not None

    def begin(self, op: Op, now_ms: int, op_timeout_ms: int) -> bytes:
        assert self.op is None
        self.seq += 1
        self.op = op
        self.command = encode_command(
            Command(client_id=self.client_id, seq=self.seq, site=self.site, op=op)
        )
        self.invoke_ms = now_ms
        self.give_up_ms = now_ms + op_timeout_ms
        self.attempt = 0
        self.maybe_applied = False
        return self.command

    def finish(self, now_ms: int, outcome: str, result: object) -> None:
        assert self.op is not None
        self.history.append(
            Operation(
                client_id=self.client_id,
                op=self.op,
                invoke_ms=self.invoke_ms,
                complete_ms=now_ms if outcome == "ok" else None,
                outcome=outcome,  # type: ignore[arg-type]
                result=result,  # type: ignore[arg-type]
            )
        )
        self.op = None
