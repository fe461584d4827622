"""`paxosctl simulate`: the labs' commands (rounds, scenarios, --list), their exit codes and
--json shape, and the fuzz modes they share the command with."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paxosctl.app import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["simulate", *args])
    return result.exit_code, result.output


def test_rounds_print_the_labs_trace_and_the_three_properties() -> None:
    code, out = invoke("--rounds", "6", "--crash-prob", "0.2", "--nodes", "3", "--seed", "7")
    assert code == 0, out
    for word in ("round 1: proposer 1, ballot 1.1", "START", "JOIN", "PROPOSE", "VOTE"):
        assert word in out
    assert "CRASH" in out and "DECIDE" in out
    assert "Agreement: holds" in out and "Validity: holds" in out
    assert "Termination: not guaranteed" in out


def test_rounds_json_has_the_facts() -> None:
    code, out = invoke("--rounds", "5", "--crash-prob", "0.3", "--nodes", "5", "--json")
    assert code == 0
    j = json.loads(out)
    assert j["experiment"] == "rounds"
    assert (j["nodes"], j["quorum"], j["rounds"], j["seed"]) == (5, 3, 5, 0)
    assert j["crash_probability"] == 0.3
    assert j["agreement"] is True and j["validity"] is True
    assert j["termination_guaranteed"] is False
    assert len(j["defaults"]) == 5 and set(j["defaults"]) <= {0, 1}
    assert [r["round"] for r in j["round_log"]] == [1, 2, 3, 4, 5]
    assert set(j["round_log"][0]) >= {"proposer", "ballot", "joins", "votes", "outcome"}
    assert j["decided"] == bool(j["decisions"])
    assert isinstance(j["trace"], list) and j["trace"]


def test_rounds_exit_one_when_agreement_fails() -> None:
    code, out = invoke(
        "--rounds", "3", "--crash-prob", "0", "--seed", "3", "--plant-bug", "ignore_phase1_values"
    )
    assert code == 1
    assert "Agreement: VIOLATED" in out


def test_list_prints_one_line_per_scenario() -> None:
    code, out = invoke("--list")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        "single",
        "a-wins",
        "b-wins",
        "b-wins-late",
        "livelock",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("single", "A-value"),
        ("a-wins", "A-value"),
        ("b-wins", "B-value"),
        ("b-wins-late", "A-value"),
    ],
)
def test_scenario_prints_the_chosen_value_and_ends_with_the_rule(name: str, value: str) -> None:
    code, out = invoke("--scenario", name)
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("rule: ")
    assert lines[-2].startswith(f"chosen: {value};")


def test_livelock_scenario_takes_rounds_and_seed() -> None:
    code, out = invoke("--scenario", "livelock", "--rounds", "4", "--seed", "1", "--json")
    assert code == 0
    j = json.loads(out)
    assert j["scenario"] == "livelock" and j["seed"] == 1 and j["ok"] is True
    assert j["facts"]["rounds_without_backoff"] == 4
    assert j["facts"]["decided_without_backoff"] is False
    assert j["facts"]["decided_with_backoff"] is True


def test_scenario_json_has_the_facts() -> None:
    code, out = invoke("--scenario", "b-wins-late", "--json")
    assert code == 0
    j = json.loads(out)
    assert set(j) == {
        "scenario",
        "nodes",
        "seed",
        "expected",
        "chosen",
        "decisions",
        "ok",
        "rule",
        "facts",
        "trace",
    }
    assert (j["nodes"], j["expected"], j["chosen"], j["ok"]) == (5, "A-value", ["A-value"], True)


def test_scenario_exits_one_when_the_outcome_breaks_the_rules() -> None:
    code, out = invoke("--scenario", "a-wins", "--plant-bug", "ignore_phase1_values")
    assert code == 1
    assert "UNEXPECTED" in out


@pytest.mark.parametrize(
    "args",
    [
        ("--scenario", "nope"),
        ("--crash-prob", "0.1"),
        ("--fuzz", "--rounds", "3"),
        ("--scenario", "a-wins", "--rounds", "3"),
        ("--scenario", "single", "--nodes", "2"),
        ("--rounds", "3", "--crash-prob", "1.5"),
        (),
    ],
)
def test_usage_errors_exit_two(args: tuple[str, ...]) -> None:
    code, _ = invoke(*args)
    assert code == 2


def test_fuzz_modes_still_work() -> None:
    code, out = invoke("--fuzz", "--seeds", "2", "--json")
    assert code == 0
    assert json.loads(out)["seeds_run"] == 2
    code, out = invoke("--seed", "3")
    assert code == 0 and "seed 3: no violation" in out


def test_help_maps_the_labs_names_onto_paxos() -> None:
    code, out = invoke("--help")
    assert code == 0
    text = " ".join(out.split())
    for mapping in ("START = prepare", "JOIN = promise", "PROPOSE = accept", "VOTE = accepted"):
        assert mapping in text
    assert "--scenario b-wins-late" in text


def test_simulate_accepts_reconfig_as_a_fault_kind() -> None:
    result = runner.invoke(
        app,
        ["simulate", "--fuzz", "--seeds", "3", "--faults", "crash,reconfig", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["violations"] == [] and report["faults_injected"]["reconfig"] > 0


def test_simulate_elections_reports_elections_per_fault_kind_as_one_json_document() -> None:
    result = runner.invoke(app, ["simulate", "--elections", "--seeds", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    per = report["elections_per_fault"]
    assert set(per) == {
        "follower-restart",
        "follower-pause",
        "follower-partition",
        "leader-kill",
        "leader-pause",
    }
    assert per["follower-restart"] == per["follower-restart"] | {"faults": 2, "elections": 0}
    assert per["leader-kill"]["elections"] >= 2 and report["violations"] == []


def test_simulate_elections_text_and_replay_of_one_seed() -> None:
    code, out = invoke("--elections", "--seeds", "1", "--faults", "leader-pause")
    assert code == 0, out
    assert "leader-pause" in out and "follower-pause" not in out
    code, out = invoke("--elections", "--seed", "1", "--faults", "follower-pause")
    assert code == 0, out
    assert "follower-pause on node" in out and "0 election(s)" in out
    code, out = invoke("--elections", "--seed", "1")
    assert code == 2 and "name it in --faults" in out
    code, out = invoke("--elections", "--faults", "crash")
    assert code == 2 and "unknown fault kind" in out
