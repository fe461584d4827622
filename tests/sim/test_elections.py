"""Elections per fault in the simulator: follower-only faults cost none, leader faults one.

The planted twin runs every node as ``EagerReplica`` (no pre-vote, no stickiness) and must
show elections after follower faults: the figure can fail.
"""

from __future__ import annotations

from paxosd.sim.elections import (
    ELECTION_FAULTS,
    FOLLOWER_FAULTS,
    LEADER_FAULTS,
    elections_fuzz,
    run_fault,
)
from tests.core.test_elections import EagerReplica

SEEDS = 8


def test_follower_faults_cost_no_election_and_leader_faults_at_least_one() -> None:
    report = elections_fuzz(SEEDS, nodes=3)
    assert report.violations == 0, report.to_json()["violations"]
    figures = report.to_json()["elections_per_fault"]
    for kind in FOLLOWER_FAULTS:
        assert figures[kind]["faults"] == SEEDS  # type: ignore[index]
        assert figures[kind]["elections"] == 0, (kind, figures[kind])  # type: ignore[index]
    for kind in LEADER_FAULTS:
        assert figures[kind]["faults_without_an_election"] == 0, figures[kind]  # type: ignore[index]
    assert report.ok


def test_five_nodes_too() -> None:
    report = elections_fuzz(3, nodes=5)
    assert report.ok, report.to_json()


def test_planted_eager_elections_show_up_after_follower_faults() -> None:
    report = elections_fuzz(SEEDS, nodes=3, replica_type=EagerReplica)
    assert report.violations == 0  # eager elections are slow, not unsafe
    figures = report.to_json()["elections_per_fault"]
    assert figures["follower-restart"]["elections"] > 0  # type: ignore[index]
    assert figures["follower-partition"]["elections"] > 0  # type: ignore[index]
    assert not report.ok and report.follower_elections


def test_a_run_replays_exactly_from_its_seed() -> None:
    for kind in ELECTION_FAULTS:
        a, b = run_fault(4, kind), run_fault(4, kind)
        assert (a.elections, a.victim, a.fault_ms, a.trace_tail) == (
            b.elections,
            b.victim,
            b.fault_ms,
            b.trace_tail,
        )
