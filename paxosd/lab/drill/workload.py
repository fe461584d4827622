"""The client load and its history: the op mix on rotating keys, one operation's submission
and classification (ok / fail / unknown), and the thread-safe history that the checks and
the history file are made from.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from paxosd.client.client import BadRequestError, Client, ClientError, UnavailableError
from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    Block,
    Cas,
    CasMismatch,
    Compare,
    Delete,
    Deleted,
    Found,
    Get,
    NotFound,
    Op,
    Put,
    Result,
    Txn,
    TxnOp,
    TxnResult,
    Unblock,
    Written,
    decode_command,
)

KEYS_PER_EPOCH: Final = 4
# The final state comparison reads each replica's drill keys with one scan page.
KEYS_TOTAL_MAX: Final = 800
EPOCH_S_MIN: Final = 5.0
OLD_KEY_READ_FRACTION: Final = 0.06  # gets of earlier epochs' keys: durability across faults
HISTORY_OPS_MAX: Final = 3_000_000  # workers stop issuing past this (memory bound)
# After an operation that failed at once (every node refused), a worker pauses this long.
WORKER_PAUSE_S: Final = 0.05
# Transactions: a share of every worker's ops, on their own keys (TXN_KEYS_PER_EPOCH per
# epoch, under Workload.txn_prefix) so that the register checker's keys keep their meaning
# (it does not model a txn) and the txn check sees only txns on its keys.
TXN_FRACTION: Final = 0.12
TXN_KEYS_PER_EPOCH: Final = 4

Outcome = Literal["ok", "fail", "unknown"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One operation as a worker saw it, plus what the checks need beyond the checker's
    Operation: the (client_id, seq) it was submitted as, the error text, and the front end
    it went through (``via`` "etcd": the etcd API, whose (client, seq) is the gateway's and
    unknown to the drill, so seq is 0 and the log check finds it by its unique value)."""

    operation: Operation
    seq: int
    error: str = ""
    via: str = "paxosd"


class History:
    """Thread-safe, append-only. Times are ms since the drill's start (one monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self._outcomes: Counter[str] = Counter()
        self._t0_ns = time.monotonic_ns()

    def now_ms(self) -> int:
        return (time.monotonic_ns() - self._t0_ns) // 1_000_000

    def add(self, entry: Entry) -> None:
        with self._lock:
            self._entries.append(entry)
            self._outcomes[entry.operation.outcome] += 1

    def outcomes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._outcomes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)


def entry_to_json(e: Entry) -> dict[str, Any]:
    """One JSON line: exact (``op``/``result`` decode back with msgspec) and readable
    (``text``)."""
    o = e.operation
    return {
        "client": o.client_id,
        "seq": e.seq,
        "op": msgspec.to_builtins(o.op),
        "invoke_ms": o.invoke_ms,
        "complete_ms": o.complete_ms,
        "outcome": o.outcome,
        "result": None if o.result is None else msgspec.to_builtins(o.result),
        "text": f"{o.op!r} -> {o.result!r}" if o.outcome == "ok" else f"{o.op!r} -> {o.outcome}",
        "error": e.error,
        "via": e.via,
    }


def entry_from_json(obj: Mapping[str, Any]) -> Entry:
    result = obj.get("result")
    op = Operation(
        client_id=str(obj["client"]),
        op=msgspec.convert(obj["op"], type=Op),
        invoke_ms=int(obj["invoke_ms"]),
        complete_ms=None if obj["complete_ms"] is None else int(obj["complete_ms"]),
        outcome=obj["outcome"],
        result=None if result is None else msgspec.convert(result, type=Result),
    )
    return Entry(
        op, int(obj.get("seq", 0)), str(obj.get("error", "")), str(obj.get("via", "paxosd"))
    )


def write_history(path: Path, entries: Iterable[Entry]) -> int:
    n = 0
    with path.open("w") as f:
        for e in entries:
            f.write(json.dumps(entry_to_json(e), separators=(",", ":")) + "\n")
            n += 1
    return n


def load_history(path: Path) -> list[Entry]:
    """Read a drill's history.jsonl back, e.g. to check it again offline."""
    with path.open() as f:
        return [entry_from_json(json.loads(line)) for line in f if line.strip()]


class Workload:
    """The drill's objects and the op mix. Keys and site pairs rotate per epoch: a key's
    history stays short (the checker's search is exponential in the worst case) while
    old keys keep being read now and then, so a write lost to a later fault still shows."""

    def __init__(self, run_id: str, epoch_s: float, *, txns: bool = True) -> None:
        self.run_id = run_id
        # Every key the drill writes starts with ``root`` (what its watchers watch): the
        # register keys under ``prefix``, the txn keys under ``txn_prefix`` and the start and
        # end marks. run_id has a fixed length, so no other drill's root starts with ours.
        self.root = f"drill/{run_id}"
        self.prefix = f"{self.root}/"
        self.txn_prefix = f"{self.root}.t/"
        self.mark_key = f"{self.root}.mark"
        self.txns = txns
        self.site_prefix = f"d{run_id}"
        self.epoch_s = epoch_s
        self._top_epoch = 0
        self._lock = threading.Lock()

    def key(self, epoch: int, j: int) -> str:
        return f"{self.prefix}e{epoch}/k{j}"

    def txn_key(self, epoch: int, j: int) -> str:
        return f"{self.txn_prefix}e{epoch}/k{j}"

    def pairs(self, epoch: int) -> tuple[tuple[str, str], tuple[str, str]]:
        a, b = f"{self.site_prefix}e{epoch}a", f"{self.site_prefix}e{epoch}b"
        return (a, b), (b, a)

    def epoch_at(self, ms: int) -> int:
        e = int(ms / 1000 / self.epoch_s)
        with self._lock:
            self._top_epoch = max(self._top_epoch, e)
        return e

    def all_keys(self) -> list[str]:
        with self._lock:
            top = self._top_epoch
        return [self.key(e, j) for e in range(top + 1) for j in range(KEYS_PER_EPOCH)]

    def all_pairs(self) -> list[tuple[str, str]]:
        with self._lock:
            top = self._top_epoch
        return [p for e in range(top + 1) for p in self.pairs(e)]

    def is_drill_site(self, site: str) -> bool:
        return site.startswith(self.site_prefix)

    def next_op(
        self,
        rng: random.Random,
        epoch: int,
        value: bytes,
        seen: Mapping[str, tuple[bytes | None, int]],
    ) -> Op:
        if self.txns and rng.random() < TXN_FRACTION:
            return self.next_txn(rng, epoch, value, seen)
        if epoch > 0 and rng.random() < OLD_KEY_READ_FRACTION:
            return Get(key=self.key(rng.randrange(epoch), rng.randrange(KEYS_PER_EPOCH)))
        key = self.key(epoch, rng.randrange(KEYS_PER_EPOCH))
        r = rng.random()
        if r < 0.28:
            return Put(key=key, value=value)
        if r < 0.52:
            return Get(key=key)
        if r < 0.74:
            # Expect what this worker last saw, so a fair share of CASes succeed.
            last_value, last_version = seen.get(key, (None, 0))
            if last_value is not None and rng.random() < 0.5:
                return Cas(key=key, new=value, expect_value=last_value)
            return Cas(key=key, new=value, expect_version=last_version)
        if r < 0.80:
            return Delete(key=key)
        site, other = rng.choice(self.pairs(epoch))
        return Block(site=site, other=other) if r < 0.90 else Unblock(site=site, other=other)

    def next_txn(
        self,
        rng: random.Random,
        epoch: int,
        value: bytes,
        seen: Mapping[str, tuple[bytes | None, int]],
    ) -> Txn:
        """A 2- or 3-key transaction on this epoch's txn keys: one or two compares aimed at
        what this worker last saw (so both branches are taken often), success puts two keys
        with unique values (``value`` + "/a", "/b"), sometimes deletes a third, and reads the
        first back (it must see its own write); failure reads the compared keys."""
        a, b, c = (self.txn_key(epoch, j) for j in rng.sample(range(TXN_KEYS_PER_EPOCH), 3))
        compares = [_aimed_compare(rng, a, seen.get(a, (None, 0)))]
        if rng.random() < 0.3:
            compares.append(_aimed_compare(rng, b, seen.get(b, (None, 0))))
        success: list[TxnOp] = [Put(key=a, value=value + b"/a"), Put(key=b, value=value + b"/b")]
        if rng.random() < 0.25:
            success.append(Delete(key=c))
        success.append(Get(key=a))
        return Txn(
            compares=tuple(compares),
            success=tuple(success),
            failure=(Get(key=a), Get(key=b)),
        )


def _aimed_compare(rng: random.Random, key: str, last: tuple[bytes | None, int]) -> Compare:
    value, version = last
    r = rng.random()
    if value is not None and r < 0.35:
        return Compare(key=key, target="value", op="=", value=value)
    if r < 0.75:
        return Compare(key=key, target="version", op="=", number=version)
    if r < 0.9:
        return Compare(key=key, target="version", op="<", number=version + 1)
    return Compare(key=key, target="mod", op=">", number=0)


def remember(seen: dict[str, tuple[bytes | None, int]], op: Op, result: Result) -> None:
    """A worker's last observation per key, to aim its CASes (and its txns' compares)."""
    if isinstance(op, Txn) and isinstance(result, TxnResult):
        branch = op.success if result.succeeded else op.failure
        for sub, res in zip(branch, result.responses, strict=False):
            if not isinstance(sub, Put):  # a put's answer does not carry the value
                remember(seen, sub, res)
            else:
                match res:
                    case Written(version=ver):
                        seen[sub.key] = (sub.value, ver)
        return
    match op, result:
        case ((Put(key=k, value=v) | Cas(key=k, new=v)), Written(version=ver)):
            seen[k] = (v, ver)
        case Cas(key=k), CasMismatch(value=v, version=ver):
            seen[k] = (v, ver)
        case Get(key=k), Found(value=v, version=ver):
            seen[k] = (v, ver)
        case ((Get(key=k) | Delete(key=k)), (NotFound() | Deleted())):
            seen[k] = (None, 0)


def run_op(client: Client, op: Op, history: History) -> Entry:
    """Submit ``op`` once (the client retries internally with the same seq) and classify.

    "fail" only when the command was certainly not applied: rejected before it was sent, or
    refused as a bad request by the server. A BadRequestError raised *after* a reply
    (an unexpected or undecodable answer) says nothing about whether it was applied, so it is
    "unknown", like every other error.
    """
    invoke = history.now_ms()
    try:
        command = client.next_command(op)
    except BadRequestError as e:
        never_sent = Operation(client.client_id, op, invoke, history.now_ms(), "fail", None)
        return Entry(never_sent, 0, str(e))
    seq = decode_command(command).seq
    outcome: Outcome
    result: Result | None = None
    error = ""
    try:
        result = client.submit(command)
        outcome = "ok"
    except BadRequestError as e:
        error = str(e)
        after_reply = error.startswith(("undecodable result", "the server answered"))
        outcome = "unknown" if after_reply else "fail"
    except UnavailableError as e:
        # Certainly not applied when it never left the client (every endpoint refused) or
        # was a read (no effect); otherwise it may still be applied.
        outcome, error = ("unknown" if e.outcome_unknown else "fail"), str(e)
    except ClientError as e:
        outcome, error = "unknown", f"{type(e).__name__}: {e}"
    except OSError as e:
        outcome, error = "unknown", f"OSError: {e}"
    complete = None if outcome == "unknown" else history.now_ms()
    return Entry(Operation(client.client_id, op, invoke, complete, outcome, result), seq, error)
