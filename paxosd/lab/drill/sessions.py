"""The drill's lease and lock part: starts the lease workers, their watchers and the lock
workers beside the drill's workload, and after the drill waits for the leases let go to
expire, reads the final state and the fenced writes' history, and runs the checks of
``leases`` and ``locks``.

Their keys live outside the workload's root (``drill.lease/<run>/`` and
``drill.lock/<run>/``), so the workload's watchers and checks do not see them.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from paxosd.client.errors import PaxosdError
from paxosd.lab.drill.checks import Violation
from paxosd.lab.drill.faults import FaultEvent, RestartEvent
from paxosd.lab.drill.leases import (
    DEADLINE_MARGIN_S,
    LEASE_TTL_S,
    LEASE_WORKERS,
    LeaseLife,
    LeaseWorker,
    TimedWatcher,
    check_leases,
    deadline_ms,
    first_deletes,
    leaderless,
    no_majority,
    recoveries,
    restarted_leaders,
    union,
)
from paxosd.lab.drill.locks import LOCK_WORKERS, LockWorker, check_fencing
from paxosd.lab.drill.nodes import Nodes
from paxosd.lab.drill.watchers import read_history
from paxosd.server.config import Timeouts
from paxosd.statemachine.commands import SCAN_LIMIT_MAX, Put, Rows, Scan, Written

# The local cluster's nodes run the default timeouts; the bound uses the longest.
ELECTION_TIMEOUT_MS: Final = Timeouts().election_timeout_ms_max
POLL_S: Final = 0.1
WORKER_JOIN_S: Final = 15.0
WATCH_FINISH_S: Final = 30.0


class Sessions:
    """Lease and lock workers for one drill; ``start`` before the workload, ``stop`` with
    it, ``check`` after the heal."""

    def __init__(
        self,
        nodes: Nodes,
        run_id: str,
        clock: Callable[[], int],
        seeds: Sequence[int],
        stop: threading.Event,
        *,
        op_timeout_ms: int,
        plant_lease: str = "",
        plant_lock: str = "",
        folder: Path | None = None,
    ) -> None:
        self.nodes = nodes
        self.folder = folder
        self.run_id = run_id
        self.clock = clock
        self.stop_event = stop
        self.op_timeout_ms = op_timeout_ms
        self.lease_prefix = f"drill.lease/{run_id}/"
        self.lock_root = f"drill.lock/{run_id}/"
        self.fenced_prefix = f"{self.lock_root}fenced/"
        self.hidden_stop = threading.Event()
        self.notes: list[str] = []
        self.lease_start = 0
        self.fenced_start = 0
        self.watchers: list[TimedWatcher] = []
        self.lease_workers = [
            LeaseWorker(
                i,
                nodes,
                self.lease_prefix,
                clock,
                seeds[i],
                stop,
                run_id=run_id,
                op_timeout_ms=op_timeout_ms,
                plant=plant_lease if i == 0 else "",
                hidden_stop=self.hidden_stop,
            )
            for i in range(LEASE_WORKERS)
        ]
        self.lock_workers = [
            LockWorker(
                i,
                nodes,
                self.lock_root,
                seeds[LEASE_WORKERS + i],
                stop,
                run_id=run_id,
                op_timeout_ms=op_timeout_ms,
                plant=plant_lock if i == 0 else "",
            )
            for i in range(LOCK_WORKERS)
        ]

    @staticmethod
    def seeds_needed() -> int:
        return LEASE_WORKERS + LOCK_WORKERS

    def _mark(self, key: str, value: bytes) -> int:
        with self.nodes.client(
            timeout_ms=3 * self.op_timeout_ms, client_id=f"{self.run_id}-{key}-{value.decode()}"
        ) as c:
            result = c.execute(Put(key=key, value=value))
        if not isinstance(result, Written) or not result.revision:
            raise PaxosdError(f"the mark {key} was answered {type(result).__name__}")
        return result.revision

    def start(self) -> None:
        """The start marks, one lease watcher per node from its mark, then the workers."""
        self.lease_start = self._mark(f"{self.lease_prefix}mark", b"start")
        self.fenced_start = self._mark(f"{self.fenced_prefix}mark", b"start")
        for k in self.nodes.ids:
            w = TimedWatcher(
                f"lease n{k}",
                self.nodes,
                self.lease_prefix,
                self.lease_start,
                lambda _n, k=k: k,
                pinned=True,
                clock=self.clock,
            )
            self.watchers.append(w)
            w.start()
        for lw in self.lease_workers:
            lw.thread.start()
        for kw in self.lock_workers:
            kw.thread.start()

    def join(self) -> None:
        """After ``stop`` is set: the workers' last leases are revoked, their locks released."""
        deadline = time.monotonic() + WORKER_JOIN_S + self.op_timeout_ms / 1000
        for t in [w.thread for w in self.lease_workers] + [w.thread for w in self.lock_workers]:
            t.join(max(0.0, deadline - time.monotonic()))

    def errors(self) -> list[str]:
        """Worker bugs, and workers that did not stop: the drill's claims end there."""
        workers: list[LeaseWorker | LockWorker] = [*self.lease_workers, *self.lock_workers]
        out = [e for w in workers for e in w.errors]
        out += [
            f"{w.thread.name} still running after the drill" for w in workers if w.thread.is_alive()
        ]
        return out

    def _write_lives(self, lives: Sequence[LeaseLife], spans: Sequence[tuple[int, int]]) -> None:
        """``leases.jsonl`` in the drill's folder: every lease's life, each key's DELETE
        arrivals per watcher, and the spans without a majority (the evidence behind a lease
        violation)."""
        if self.folder is None:
            return
        deletes: dict[str, dict[str, int]] = {}
        for w in self.watchers:
            for kind, key, rev, t in w.arrivals:
                if kind == "DELETE":
                    deletes.setdefault(key, {})[w.stream.name] = t
                    deletes[key]["revision"] = rev
        with (self.folder / "leases.jsonl").open("w") as f:
            f.write(json.dumps({"no_majority_or_leader": spans}) + "\n")
            for life in lives:
                row = dataclasses.asdict(life)
                row["deletes"] = deletes.get(life.key, {})
                f.write(json.dumps(row) + "\n")

    def check(
        self,
        events: Sequence[FaultEvent],
        restarts: Sequence[RestartEvent],
        voters: int,
        leader_changes: Sequence[tuple[int, tuple[int, int], int]] = (),
    ) -> tuple[list[Violation], dict[str, Any]]:
        lives = [life for w in self.lease_workers for life in w.lives]
        now = self.clock()
        no_quorum = no_majority(events, restarts, voters, now)
        spans = union(no_quorum, leaderless(events, leader_changes))
        restarted = recoveries(no_quorum, restarts)
        handovers = restarted_leaders(leader_changes, restarts)
        ttl_ms = LEASE_TTL_S * 1000
        # Wait (bounded) for every lease let go to be seen deleted, or for its deadline.
        pending = [life for life in lives if life.end != "held" and life.attached is not False]
        musts = [
            deadline_ms(life, ttl_ms, ELECTION_TIMEOUT_MS, spans, restarted, handovers)[0]
            for life in pending
        ]
        last = max(musts, default=now)
        until = last + int(DEADLINE_MARGIN_S * 1000)
        while self.clock() < until:
            seen = first_deletes(self.watchers)
            if all(life.key in seen for life in pending):
                break
            time.sleep(POLL_S)
        violations: list[Violation] = []
        info: dict[str, Any] = {"notes": self.notes}
        watched_until = self.clock()
        try:
            end = self._mark(f"{self.lease_prefix}mark", b"end")
        except PaxosdError as e:
            end = 0
            violations.append(Violation("harness", f"the lease end mark failed: {e}"))
        deadline = time.monotonic() + WATCH_FINISH_S
        for w in self.watchers:
            if end:
                w.finish(end)
        for w in self.watchers:
            if end:
                w.thread.join(max(0.0, deadline - time.monotonic()))
            w.stop()
            w.thread.join(5)
        remaining: list[str] = []
        try:
            with self.nodes.client(timeout_ms=3 * self.op_timeout_ms) as c:
                rows = c.execute(Scan(prefix=self.lease_prefix, limit=SCAN_LIMIT_MAX))
            if not isinstance(rows, Rows):
                raise PaxosdError(f"the scan was answered {type(rows).__name__}")
            remaining = [
                r.key for r in rows.rows if r.key[len(self.lease_prefix) :].startswith("w")
            ]
        except PaxosdError as e:
            violations.append(Violation("harness", f"could not read the lease keys: {e}"))
        self.hidden_stop.set()
        lv, lease_info = check_leases(
            lives,
            first_deletes(self.watchers),
            remaining,
            ttl_ms=ttl_ms,
            election_ms=ELECTION_TIMEOUT_MS,
            spans=spans,
            watched_until_ms=watched_until,
            events=events,
            restarted=restarted,
            handovers=handovers,
        )
        self._write_lives(lives, spans)
        violations += lv
        lease_info["workers"] = len(self.lease_workers)
        lease_info["grant_failures"] = sum(w.grant_failures for w in self.lease_workers)
        lease_info["watch_errors"] = sum(len(w.stream.errors) for w in self.watchers)
        held = [life for life in lives if life.end == "held"]
        for life in held:
            violations.append(
                Violation("harness", f"lease {life.lease:x} was never let go by its worker")
            )
        info["leases"] = lease_info
        try:
            fenced_end = self._mark(f"{self.fenced_prefix}mark", b"end")
            with self.nodes.client(timeout_ms=5000) as c:
                changes = read_history(c, self.fenced_prefix, self.fenced_start, fenced_end)
        except (PaxosdError, OSError, TimeoutError) as e:
            violations.append(Violation("fencing", f"could not read the fenced writes: {e}"))
            changes = []
        fv, lock_info = check_fencing(
            changes, self.fenced_prefix, [w.stats for w in self.lock_workers]
        )
        violations += fv
        info["locks"] = lock_info
        return violations, info
