"""The drill's report: the recovery figures and the JSON-able document ``run_drill`` returns
(``paxosctl drill`` renders it as text or prints it with ``--json``).
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paxosd.lab.drill.checks import Convergence, Violation
from paxosd.lab.drill.elections import (
    LeaderWatch,
    attribute_elections,
    follower_faults_with_elections,
)
from paxosd.lab.drill.faults import FaultInjector, RestartEvent
from paxosd.lab.drill.nodes import Nodes
from paxosd.lab.drill.spec import DrillSpec
from paxosd.lab.drill.workload import Entry, Workload
from paxosd.sim import linearizability
from paxosd.statemachine.commands import Changed, Deleted, Written


def restart_figures(restarts: Sequence[RestartEvent], entries: Sequence[Entry]) -> None:
    """Fill each restart's first successful write: the earliest acknowledgement of a write
    that was invoked at or after the restart and took effect."""
    writes = sorted(
        (e.operation.invoke_ms, e.operation.complete_ms)
        for e in entries
        if e.operation.outcome == "ok"
        and e.operation.complete_ms is not None
        and isinstance(e.operation.result, Written | Deleted | Changed)
    )
    invokes = [w[0] for w in writes]
    for ev in restarts:
        best: int | None = None
        for invoke, complete in writes[bisect.bisect_left(invokes, ev.restart_ms) :]:
            if best is not None and invoke > best:
                break  # completes after it was invoked, so nothing later can beat best
            if complete is not None and (best is None or complete < best):
                best = complete
        ev.first_write_ms = best


def _summary(values: Sequence[int | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "missing": len(values)}
    return {
        "n": len(got),
        "missing": len(values) - len(got),
        "median_ms": int(statistics.median(got)),
        "max_ms": max(got),
    }


def build_report(
    *,
    spec: DrillSpec,
    nodes: Nodes,
    workload: Workload,
    injector: FaultInjector,
    watch: LeaderWatch,
    entries: Sequence[Entry],
    run_ms: int,
    conv: Convergence,
    lin: linearizability.CheckResult,
    lin_s: float,
    log_info: dict[str, Any],
    violations: list[Violation],
    history_path: Path,
) -> dict[str, Any]:
    """The report as one JSON-able document: what ran, what was found, and the figures."""
    by_kind: dict[str, Counter[str]] = {}
    for e in entries:
        name = type(e.operation.op).__name__.lower()
        by_kind.setdefault(name, Counter())[e.operation.outcome] += 1
    outcomes = Counter(e.operation.outcome for e in entries)
    restarts = injector.restarts
    per_class = attribute_elections(injector.events, watch.changes)
    leader = [k for k, s in conv.rows.items() if s.get("role") == "leader"]
    some = next(iter(conv.rows.values()), {})
    return {
        "seed": spec.seed,
        "nodes": len(nodes.ids),
        "target": "local" if nodes.cluster is not None else "endpoints",
        "duration_s": round(run_ms / 1000, 1),
        "clients": spec.clients,
        "faults_requested": list(spec.faults),
        "planted": dict(spec.node_env),
        "ops": {
            "total": len(entries),
            "ok": outcomes["ok"],
            "fail": outcomes["fail"],
            "unknown": outcomes["unknown"],
            "per_second": round(len(entries) / max(run_ms / 1000, 0.001), 1),
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        },
        "faults": {
            "total": len(injector.events),
            "by_kind": dict(Counter(ev.kind for ev in injector.events)),
            "errors": injector.errors,
            "events": [ev.as_dict() for ev in injector.events],
        },
        "elections": {
            "leader_changes": len(watch.changes),
            "by_fault": per_class,
            "follower_faults_with_an_election": [
                ev.as_dict() for ev in follower_faults_with_elections(injector.events)
            ],
            "timeline": [
                {"ms": t, "ballot": f"{b[0]}.{b[1]}", "leader": k} for t, b, k in watch.changes
            ],
            "status_polls": watch.polls,
        },
        "reconfig": injector.reconfig.report() if "reconfig" in spec.faults else None,
        "restarts": [ev.as_dict() for ev in restarts],
        "recovery": {
            "catch_up": _summary(
                [
                    None if r.caught_up_ms is None else r.caught_up_ms - r.restart_ms
                    for r in restarts
                ]
            ),
            "first_write": _summary(
                [
                    None if r.first_write_ms is None else r.first_write_ms - r.restart_ms
                    for r in restarts
                ]
            ),
            "ready": _summary(
                [None if r.ready_ms is None else r.ready_ms - r.restart_ms for r in restarts]
            ),
        },
        "final": {
            "converged": conv.ok,
            "leader": leader[0] if leader else None,
            "applied_index": some.get("applied_index"),
            "digest": some.get("digest"),
            "keys": len(workload.all_keys()),
        },
        "linearizability": {
            "verdict": lin.verdict,
            "states_explored": lin.states_explored,
            "seconds": round(lin_s, 2),
            "partition": lin.partition,
        },
        "log": log_info,
        "violations": [v.as_dict() for v in violations],
        "history": str(history_path),
    }
