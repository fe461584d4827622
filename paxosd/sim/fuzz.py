"""Many seeds, one report: the simulator's CI gate and ``paxosctl simulate --fuzz``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from paxosd.server.runner import Runner
from paxosd.sim.disk import SimDisk
from paxosd.sim.run import FAULT_KINDS, KNOWN_KINDS, SeedResult, run_seed
from paxosd.statemachine.machine import StateMachine

# Sub-kinds the report folds into the kinds a user names on the command line.
_KIND_OF = {
    "crash": "crash",
    "crash-mid-ready": "crash",
    "power-cut": "crash",
    "restart": "restart",
    "partition": "partition",
    "partition-one-way": "partition",
    "drop": "drop",
    "dup": "dup",
    "delay": "delay",
    "reconfig-ok": "reconfig",
    "reconfig-refused": "reconfig-refused",
    "reconfig-unknown": "reconfig-refused",
}


@dataclass(slots=True)
class FuzzReport:
    nodes: int
    kinds: tuple[str, ...]
    # The planted bugs of the run (test only), so that a replay command plants them too.
    bugs: frozenset[str] = frozenset()
    seeds_run: int = 0
    wall_seconds: float = 0.0
    simulated_ms: int = 0
    core_steps: int = 0
    decided_slots: int = 0
    client_ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fault_detail: Counter[str] = field(default_factory=Counter)
    converged: int = 0
    snapshot_restores: int = 0
    # Peers' snapshots decoded over several ticks before they were installed.
    snapshot_installs_in_pieces: int = 0
    linearizability: Counter[str] = field(default_factory=Counter)
    # The revision checker's and the watch checker's verdicts per seed, and what they saw.
    revisions: Counter[str] = field(default_factory=Counter)
    watch: Counter[str] = field(default_factory=Counter)
    revision_figures: Counter[str] = field(default_factory=Counter)
    watch_figures: Counter[str] = field(default_factory=Counter)
    leases: Counter[str] = field(default_factory=Counter)
    lease_figures: Counter[str] = field(default_factory=Counter)
    lease_worst_overrun_ets: float = 0.0
    locks: Counter[str] = field(default_factory=Counter)
    lock_figures: Counter[str] = field(default_factory=Counter)
    failures: list[SeedResult] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return len(self.failures)

    def add(self, r: SeedResult) -> None:
        self.seeds_run += 1
        self.simulated_ms += r.sim_ms
        self.core_steps += r.core_steps
        self.decided_slots += r.decided_slots
        self.client_ops.update(r.client_ops)
        for k, n in r.faults.items():
            self.fault_detail[k] += n
            self.faults[_KIND_OF.get(k, k)] += n
        self.linearizability[r.linearizability] += 1
        self.revisions[r.revisions] += 1
        self.watch[r.watch] += 1
        f = r.revision_figures
        if f is not None:
            self.revision_figures.update(
                writes_checked=f.writes_checked,
                reads_checked=f.reads_checked,
                revisions=f.revision - 1,
                events=f.events,
                seeds_with_compaction=int(f.compact_revision > 0),
            )
        self.watch_figures.update(r.watch_stats)
        self.watch_figures["events_checked"] += r.watch_events
        self.leases[r.leases] += 1
        lr = r.lease_report
        if lr is not None:
            self.lease_figures.update(
                leases=lr.leases,
                keepalives_acked=lr.keepalives_acked,
                expired=lr.expired,
                revoked_by_client=lr.revoked_by_client,
                leader_pauses=lr.pauses,
                stale_expiries_refused=lr.stale_expiries_refused,
            )
            self.lease_worst_overrun_ets = max(self.lease_worst_overrun_ets, lr.worst_overrun_ets)
        self.locks[r.locks] += 1
        kr = r.lock_report
        if kr is not None:
            self.lock_figures.update(
                acquisitions=kr.acquisitions,
                handoffs_by_release=kr.handoffs_by_release,
                handoffs_by_expiry=kr.handoffs_by_expiry,
                fenced_writes_applied=kr.fenced_writes_applied,
                fenced_writes_refused=kr.fenced_writes_refused,
                paused_holders=kr.paused_holders,
                waiter_timeouts=kr.waiter_timeouts,
                leases_lost=kr.leases_lost,
                holding_intervals_checked=kr.intervals_checked,
            )
        self.snapshot_restores += r.snapshot_restores
        self.snapshot_installs_in_pieces += r.snapshot_installs_in_pieces
        if r.converged_ms is not None:
            self.converged += 1
        if r.violation is not None:
            self.failures.append(r)

    def to_json(self) -> dict[str, object]:
        secs = max(self.wall_seconds, 1e-9)
        return {
            "nodes": self.nodes,
            "fault_kinds": list(self.kinds),
            "seeds_run": self.seeds_run,
            "seeds_per_second": round(self.seeds_run / secs, 2),
            "core_steps": self.core_steps,
            "core_steps_per_second": round(self.core_steps / secs),
            "wall_seconds": round(self.wall_seconds, 3),
            "simulated_seconds": round(self.simulated_ms / 1000, 1),
            "decided_slots": self.decided_slots,
            "client_ops": dict(sorted(self.client_ops.items())),
            "faults_injected": {k: self.faults.get(k, 0) for k in (*self.kinds, "restart")},
            "faults_detail": dict(sorted(self.fault_detail.items())),
            "converged_seeds": self.converged,
            "snapshot_restores": self.snapshot_restores,
            "snapshot_installs_in_pieces": self.snapshot_installs_in_pieces,
            "linearizability": dict(sorted(self.linearizability.items())),
            "revisions": dict(sorted(self.revisions.items())),
            "revisions_checked": dict(sorted(self.revision_figures.items())),
            "watch": dict(sorted(self.watch.items())),
            "watch_checked": dict(sorted(self.watch_figures.items())),
            "leases": dict(sorted(self.leases.items())),
            "lease_figures": dict(sorted(self.lease_figures.items()))
            | {"worst_overrun_election_timeouts": round(self.lease_worst_overrun_ets, 2)},
            "locks": dict(sorted(self.locks.items())),
            "lock_figures": dict(sorted(self.lock_figures.items())),
            "violations": [
                {
                    "seed": f.seed,
                    "property": f.violation.prop if f.violation else None,
                    "detail": f.violation.detail if f.violation else None,
                    "replay": replay_command(f.seed, self.nodes, self.kinds, self.bugs),
                }
                for f in self.failures
            ],
        }


def replay_command(
    seed: int, nodes: int, kinds: tuple[str, ...], bugs: frozenset[str] = frozenset()
) -> str:
    faults = "" if set(kinds) == set(FAULT_KINDS) else f" --faults {','.join(kinds)}"
    # --plant-bug takes one bug; a run with several planted cannot be replayed from the CLI.
    planted = f" --plant-bug {next(iter(bugs))}" if len(bugs) == 1 else ""
    return f"paxosctl simulate --seed {seed} --nodes {nodes}{faults}{planted} --trace"


def fuzz(
    seeds: int,
    nodes: int,
    kinds: tuple[str, ...] = FAULT_KINDS,
    first_seed: int = 0,
    bugs: frozenset[str] = frozenset(),
    stop_at_first: bool = False,
    progress: Callable[[FuzzReport], None] | None = None,
    runner_class: type[Runner[StateMachine]] = Runner,
    disk_class: type[SimDisk] = SimDisk,
    machine_class: type[StateMachine] = StateMachine,
) -> FuzzReport:
    assert seeds >= 1 and nodes >= 1
    unknown = set(kinds) - set(KNOWN_KINDS)
    assert not unknown, f"unknown fault kinds {sorted(unknown)}"
    report = FuzzReport(nodes=nodes, kinds=kinds, bugs=bugs)
    start = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        r = run_seed(
            seed,
            nodes=nodes,
            kinds=frozenset(kinds),
            bugs=bugs,
            runner_class=runner_class,
            disk_class=disk_class,
            machine_class=machine_class,
        )
        report.add(r)
        report.wall_seconds = time.perf_counter() - start
        if progress is not None:
            progress(report)
        if stop_at_first and r.violation is not None:
            break
    return report
