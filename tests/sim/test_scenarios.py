"""The Basic-Paxos race scenarios of the Paxos labs on the real core: each one's chosen value,
the livelock and its cure, and planted bugs that make a scenario fail (so the checks bite)."""

from __future__ import annotations

import pytest

from paxosd.sim.scenarios import SCENARIOS, run_scenario

EXPECTED = {
    "single": "A-value",
    "a-wins": "A-value",
    "b-wins": "B-value",
    "b-wins-late": "A-value",
}


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenario_chooses_the_value_paxos_requires_and_every_replica_decides_it(
    name: str, nodes: int
) -> None:
    r = run_scenario(name, nodes=nodes)
    assert r.ok, "\n".join(r.trace)
    assert r.chosen == [EXPECTED[name]]
    assert r.expected == EXPECTED[name]
    assert set(r.decisions.values()) == {EXPECTED[name]}
    assert len(r.decisions) == nodes
    assert r.trace[-1].startswith("rule: ")


def test_b_wins_late_shows_that_b_adopted_a_vote_reported_by_a_minority_holder() -> None:
    r = run_scenario("b-wins-late")
    assert r.nodes == 5
    assert r.facts["a_minority"] == ["A", "n2"]
    assert "n2" in r.facts["b_majority"]
    assert "   n2 -> B   promise 2.5: voted 1.1 = A-value" in r.trace
    assert any("B must propose A-value" in line for line in r.trace)


def test_b_wins_shows_a_accepts_rejected_below_bs_promise() -> None:
    r = run_scenario("b-wins")
    assert "   n2 -> A   nack 1.1: promised 2.3" in r.trace
    assert any("B's phase 1 found no vote for slot 1: it proposes B-value" in t for t in r.trace)


@pytest.mark.parametrize("nodes", [3, 5])
def test_livelock_shows_rounds_without_a_decision_then_decides_with_backoff(nodes: int) -> None:
    r = run_scenario("livelock", nodes=nodes, rounds=4)
    assert r.ok, "\n".join(r.trace)
    assert r.facts["rounds_without_backoff"] == 4
    assert r.facts["decided_without_backoff"] is False
    assert r.facts["chosen_without_backoff"] == []
    assert [t.split(":")[0] for t in r.trace if t.startswith("round ")] == [
        f"round {i}" for i in range(1, 5)
    ]
    assert r.facts["decided_with_backoff"] is True
    assert len(r.chosen) == 1 and r.chosen[0] in ("A-value", "B-value")
    assert set(r.decisions.values()) == set(r.chosen)
    assert r.trace[-1].startswith("rule: ")


@pytest.mark.parametrize("nodes", [3, 5])
def test_backoff_race_decides_for_every_seed(nodes: int) -> None:
    failed = [s for s in range(100) if not run_scenario("livelock", nodes=nodes, seed=s).ok]
    assert failed == []


def test_scenarios_replay_exactly() -> None:
    for name in SCENARIOS:
        assert run_scenario(name, seed=3).trace == run_scenario(name, seed=3).trace


@pytest.mark.parametrize(
    ("bug", "name"),
    [
        ("ignore_phase1_values", "a-wins"),
        ("ignore_phase1_values", "b-wins-late"),
        ("minority_quorum", "b-wins"),
    ],
)
def test_a_planted_bug_makes_the_scenario_fail(bug: str, name: str) -> None:
    r = run_scenario(name, planted_bugs=frozenset({bug}))
    assert not r.ok
    assert any(line.startswith("UNEXPECTED") for line in r.trace)


def test_every_scenario_is_listed_with_a_summary() -> None:
    assert list(SCENARIOS) == ["single", "a-wins", "b-wins", "b-wins-late", "livelock"]
    assert all(s.summary for s in SCENARIOS.values())
