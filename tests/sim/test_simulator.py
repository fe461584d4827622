"""The simulator as CI's safety gate: many seeds over 3 and 5 replicas with every fault kind,
and planted bugs that the checkers must catch (so the checkers are not vacuous)."""

from __future__ import annotations

import pytest

from paxosd.core.config import PLANTED_BUGS
from paxosd.sim.fuzz import fuzz
from paxosd.sim.run import FAULT_KINDS, run_seed

# CI budget: 3 nodes run ~80 seeds/s and 5 nodes ~45 seeds/s on one core of the CI machine.
SEEDS_3 = 1000
SEEDS_5 = 600


@pytest.mark.parametrize(("nodes", "seeds"), [(3, SEEDS_3), (5, SEEDS_5)])
def test_fuzzed_seeds_have_no_violation_and_every_fault_kind_is_injected(
    nodes: int, seeds: int
) -> None:
    report = fuzz(seeds, nodes)
    failures = [(f.seed, str(f.violation)) for f in report.failures]
    assert failures == [], f"replay with: paxosctl simulate --seed S --nodes {nodes} --trace"
    for kind in FAULT_KINDS:
        assert report.faults[kind] > 0, f"fault kind {kind} was never injected"
    assert report.converged == seeds
    assert report.snapshot_restores > 0, "no replica ever restored a snapshot"
    assert report.linearizability["ok"] == seeds
    assert report.client_ops["ok"] > seeds * 10, "the workload barely ran"


def test_one_seed_replays_exactly() -> None:
    a = run_seed(7, nodes=3, trace=True)
    b = run_seed(7, nodes=3, trace=True)
    assert a.trace == b.trace and a.trace
    assert (a.core_steps, a.decided_slots, a.client_ops) == (
        b.core_steps,
        b.decided_slots,
        b.client_ops,
    )


# How many seeds each planted bug may take to be caught; measured well below these bounds.
BUG_SEED_BOUND = 200


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_the_simulator_catches_a_planted_bug(bug: str) -> None:
    report = fuzz(BUG_SEED_BOUND, 3, bugs=frozenset({bug}), stop_at_first=True)
    assert report.failures, f"planted bug {bug} went unnoticed for {BUG_SEED_BOUND} seeds"


def test_a_violation_report_names_the_seed_the_property_and_the_trace_tail() -> None:
    r = run_seed(0, nodes=3, bugs=frozenset({"apply_before_decided"}))
    assert r.violation is not None
    assert r.violation.prop == "applied-prefix"
    assert any("VIOLATION" in line for line in r.trace_tail)
