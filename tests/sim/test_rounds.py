"""The synchronous-rounds lab on the real core: Agreement and Validity over
many seeds and crash probabilities, the lab's round/ballot mapping, and planted bugs that the
checks must catch (so they are not vacuous)."""

from __future__ import annotations

import pytest

from paxosd.sim.rounds import run_rounds

SEEDS = 1000


@pytest.mark.parametrize("crash_probability", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("nodes", [3, 5])
def test_rounds_satisfy_agreement_and_validity_over_a_thousand_seeds(
    nodes: int, crash_probability: float
) -> None:
    rounds = nodes + 2  # every node proposes at least once, some twice
    failures: list[int] = []
    decided = adopted = split_defaults = 0
    crashes = 0
    for seed in range(SEEDS):
        r = run_rounds(nodes, crash_probability, rounds, seed=seed)
        if not r.ok:
            failures.append(seed)
        decided += r.decided
        split_defaults += len(set(r.defaults)) == 2
        adopted += any(rec.proposal_source not in (None, "default") for rec in r.records)
        crashes += r.messages["CRASH"]
    assert failures == [], f"replay: paxosctl simulate --rounds {rounds} --seed S"
    # The checks mean something only if defaults disagree and later rounds adopt votes.
    assert split_defaults > SEEDS // 2
    assert adopted > SEEDS // 2
    if crash_probability == 0.0:
        assert decided == SEEDS and crashes == 0
    else:
        assert crashes > 0


def test_round_r_is_led_by_node_r_mod_n_at_ballot_r() -> None:
    r = run_rounds(3, 0.0, 4, seed=1)
    assert [(rec.round, rec.proposer, rec.ballot) for rec in r.records] == [
        (1, 1, "1.1"),
        (2, 2, "2.2"),
        (3, 0, "3.0"),
        (4, 1, "4.1"),
    ]
    assert "round 3: proposer 0, ballot 3.0" in r.trace


def test_without_crashes_round_one_decides_its_proposers_default() -> None:
    r = run_rounds(5, 0.0, 1, seed=11)
    assert r.records[0].outcome == "decided"
    assert r.records[0].proposal_source == "default"
    assert r.decided_value == r.defaults[1]


def test_a_later_proposer_adopts_the_earlier_vote_instead_of_its_own_default() -> None:
    seed = next(s for s in range(100) if run_rounds(3, 0.0, 1, seed=s).defaults[1:3] == [0, 1])
    r = run_rounds(3, 0.0, 2, seed=seed)
    first, second = r.records
    assert first.decided == 0
    assert second.proposal_source == "voted in round 1"
    assert second.proposed == 0 and second.decided == 0  # node 2's default was 1


def test_a_proposer_that_decided_before_runs_phase_one_again_in_its_next_round() -> None:
    r = run_rounds(3, 0.0, 4, seed=2)
    again = r.records[3]  # node 1 decided round 1 and leads round 4
    assert again.proposer == r.records[0].proposer
    assert len(again.joins) >= 2
    assert again.proposal_source == "voted in round 3"
    assert any(line.startswith("  START       1 -> ") for line in r.trace[-12:])


def test_crash_probability_one_loses_every_message_and_nothing_is_decided() -> None:
    r = run_rounds(3, 1.0, 6, seed=0)
    assert not r.decided and r.ok
    assert set(r.messages) == {"CRASH"}
    assert all(rec.outcome == "no join quorum" for rec in r.records)
    assert any("did NOT decide" in line for line in r.summary())


def test_a_seed_replays_the_same_trace() -> None:
    a = run_rounds(5, 0.3, 8, seed=42)
    b = run_rounds(5, 0.3, 8, seed=42)
    assert a.trace == b.trace and a.to_json() == b.to_json()


@pytest.mark.parametrize("bug", ["ignore_phase1_values", "amnesia_on_restart"])
def test_planted_bug_breaks_agreement_or_validity_and_the_check_says_so(bug: str) -> None:
    bad = [
        s for s in range(50) if not run_rounds(3, 0.1, 6, seed=s, planted_bugs=frozenset({bug})).ok
    ]
    assert bad, f"planting {bug} went unnoticed"
    r = run_rounds(3, 0.1, 6, seed=bad[0], planted_bugs=frozenset({bug}))
    assert any("VIOLATED" in line for line in r.summary())
