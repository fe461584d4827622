"""Locks under the drill's faults: lock workers contending with ``client.lock``, fenced writes,
and the check that the store took the writes in fencing-token order.

A lock worker (its own ``Client``) picks one of ``LOCKS`` locks (seeded), acquires it with a
lease of ``LOCK_TTL_S``, and while holding it makes one fenced write: a transaction that puts
``fenced/<lock>`` = ``worker/token/n`` only if the lock key's create_revision is still the
token (README "Locks"), then releases. A holder that lost its lock (its lease expired during
a pause or a partition) finds its compare false and writes nothing.

The check reads the history of the ``fenced/`` keys from the store (a watch from before the
workers started to a mark put after they stopped: every applied change, in revision order)
and requires, per lock: the tokens of the writes never go down, each token is one worker's,
and every fenced write a worker saw succeed is there.

``check_fencing`` is a pure function of its inputs: the unit tests feed it made-up histories.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from paxosd.client import txn
from paxosd.client.client import Client
from paxosd.client.errors import PaxosdError
from paxosd.lab.drill.checks import Violation
from paxosd.lab.drill.nodes import Nodes
from paxosd.lab.drill.streams import Change

LOCK_WORKERS: Final = 3
LOCKS: Final = 2
LOCK_TTL_S: Final = 3
# A worker gives up one wait after this long and tries again (a lock or another).
LOCK_WAIT_S: Final = 10.0
# How long a holder keeps the lock after its write (seconds, seeded).
HOLD_S: Final = (0.02, 0.3)
# Between a worker's attempts.
PAUSE_S: Final = (0.0, 0.2)
SHOWN_MAX: Final = 5


@dataclass(slots=True)
class LockStats:
    acquisitions: int = 0
    wait_failures: int = 0  # timed out, lost while waiting, unavailable
    fenced_ok: int = 0
    fenced_refused: int = 0  # the compare was false: the lock was lost before the write
    fenced_unknown: int = 0
    release_failures: int = 0
    # (lock, value) of every fenced write acknowledged as applied
    acked: list[tuple[str, str]] = field(default_factory=list)


class LockWorker:
    """One lock worker thread. ``plant`` "unfenced_write" (test only): after its first
    release, the worker waits until another holder has written and then writes its own,
    older token without the compare, as a holder that paused past its lease would."""

    def __init__(
        self,
        i: int,
        nodes: Nodes,
        root: str,
        seed: int,
        stop: threading.Event,
        *,
        run_id: str,
        op_timeout_ms: int,
        plant: str = "",
    ) -> None:
        self.i = i
        self.nodes = nodes
        self.root = root
        self.rng = random.Random(seed)
        self.stop = stop
        self.run_id = run_id
        self.op_timeout_ms = op_timeout_ms
        self.plant = plant
        self.stats = LockStats()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name=f"drill-lock{i}", daemon=True)

    def _run(self) -> None:
        c = self.nodes.client(
            timeout_ms=self.op_timeout_ms, client_id=f"{self.run_id}-lock{self.i}"
        )
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                name = f"lock{self.rng.randrange(LOCKS)}"
                self._one(c, name, n)
                self.stop.wait(self.rng.uniform(*PAUSE_S))
        except Exception as e:  # a worker bug must end the drill's claims, not hide
            self.errors.append(f"lock worker {self.i}: {type(e).__name__}: {e}")
        finally:
            c.close()

    def _one(self, c: Client, name: str, n: int) -> None:
        s = self.stats
        lock = c.lock(f"{self.root}locks/{name}", ttl=LOCK_TTL_S, timeout_s=LOCK_WAIT_S)
        try:
            token = lock.acquire()
        except PaxosdError:
            s.wait_failures += 1
            return
        s.acquisitions += 1
        fenced = f"{self.root}fenced/{name}"
        value = f"w{self.i}/{token.revision}/{n}"
        try:
            try:
                r = c.txn(
                    compare=[txn.create(token.key) == token.revision],
                    success=[txn.put(fenced, value.encode())],
                )
            except PaxosdError:
                s.fenced_unknown += 1
            else:
                if r.succeeded:
                    s.fenced_ok += 1
                    s.acked.append((name, value))
                else:
                    s.fenced_refused += 1
            self.stop.wait(self.rng.uniform(*HOLD_S))
        finally:
            try:
                lock.release()
            except PaxosdError:
                s.release_failures += 1
        if self.plant == "unfenced_write":
            self.plant = ""
            self._stale_write(c, fenced, value, token.revision, n)

    def _stale_write(self, c: Client, fenced: str, mine: str, token: int, n: int) -> None:
        """The planted bug: wait (bounded) for a later holder's write, then write over it."""
        for _ in range(200):
            if self.stop.wait(0.05):
                return
            try:
                found = c.get(fenced)
            except PaxosdError:
                continue
            value = getattr(found, "value", b"").decode()
            if value != mine and int(value.split("/")[1]) > token:
                c.put(fenced, f"w{self.i}/{token}/{n}.stale".encode())
                return


def _parse(value: bytes) -> tuple[str, int] | None:
    """``worker/token/n`` -> (worker, token); None if it is not a fenced write's value."""
    parts = value.decode(errors="replace").split("/")
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


def check_fencing(
    changes: Sequence[Change], fenced_prefix: str, stats: Sequence[LockStats]
) -> tuple[list[Violation], dict[str, Any]]:
    """Per lock, over the ``fenced/`` history in revision order: tokens never go down, one
    worker per token, and every acknowledged fenced write is there."""
    problems: list[str] = []
    per_lock: dict[str, dict[str, Any]] = {}
    last: dict[str, tuple[int, str, int]] = {}  # lock -> (token, worker, revision)
    owner: dict[tuple[str, int], str] = {}
    seen: set[tuple[str, str]] = set()
    for ch in changes:
        if ch.type != "PUT" or not ch.key.startswith(fenced_prefix):
            continue
        lock = ch.key[len(fenced_prefix) :]
        parsed = _parse(ch.value)
        if parsed is None:
            continue  # the marks
        worker, token = parsed
        seen.add((lock, ch.value.decode()))
        f = per_lock.setdefault(lock, {"writes": 0, "holders": 0, "handoffs": 0})
        f["writes"] += 1
        prev = last.get(lock)
        if prev is None:
            f["holders"] += 1
        elif token < prev[0]:
            problems.append(
                f"{ch.key}: token {token} of {worker} at revision {ch.revision} after token "
                f"{prev[0]} of {prev[1]} at revision {prev[2]}"
            )
        elif token > prev[0]:
            f["holders"] += 1
            f["handoffs"] += worker != prev[1]
        first = owner.setdefault((lock, token), worker)
        if first != worker:
            problems.append(
                f"{ch.key}: token {token} written by {first} and by {worker} "
                f"(revision {ch.revision})"
            )
        last[lock] = (token, worker, ch.revision)
    missing = [
        f"fenced/{lock} = {value} was acknowledged but is not in the history"
        for s in stats
        for lock, value in s.acked
        if (lock, value) not in seen
    ]
    violations = [Violation("fencing", p) for p in problems[:SHOWN_MAX]]
    violations += [Violation("fencing-lost", p) for p in missing[:SHOWN_MAX]]
    for kind, found in (("fencing", problems), ("fencing-lost", missing)):
        if len(found) > SHOWN_MAX:
            violations.append(Violation(kind, f"... {len(found)} in all"))
    figures: dict[str, Any] = {
        "workers": len(stats),
        "locks": LOCKS,
        "ttl_s": LOCK_TTL_S,
        "acquisitions": sum(s.acquisitions for s in stats),
        "wait_failures": sum(s.wait_failures for s in stats),
        "fenced_writes": {
            "ok": sum(s.fenced_ok for s in stats),
            "refused": sum(s.fenced_refused for s in stats),
            "unknown": sum(s.fenced_unknown for s in stats),
        },
        "release_failures": sum(s.release_failures for s in stats),
        "history": dict(sorted(per_lock.items())),
        "handoffs": sum(f["handoffs"] for f in per_lock.values()),
    }
    return violations, figures
