"""`paxosctl drill` on real processes: a short drill under faults is clean, a planted bug is
caught, the race agrees on its winners, and the log checks fail when they should.

The CI drill (60 s by default) runs only when PAXOSD_DRILL_SECONDS is set, so the default
suite stays within its time budget: ``PAXOSD_DRILL_SECONDS=60 pytest tests/test_drill.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from paxosctl.app import app
from paxosd.lab.drill import (
    FAULT_GAP_S,
    RECONFIG_OPS,
    Convergence,
    DrillSpec,
    DrillUsageError,
    Entry,
    FaultEvent,
    LeaderWatch,
    LogCopy,
    Nodes,
    Workload,
    attribute_elections,
    check_log,
    diagnose_convergence,
    entry_from_json,
    entry_to_json,
    follower_faults_with_elections,
    load_history,
    run_drill,
    run_race_local,
)
from paxosd.lab.localcluster import LocalCluster
from paxosd.server.node import PLANT_BUG_ENV
from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    Cas,
    Command,
    Compare,
    Delete,
    Get,
    Op,
    Put,
    Txn,
    Written,
    encode_command,
)

FAST_FAULT_GAP_S = (0.3, 0.8)


def _assert_clean(report: dict[str, Any]) -> None:
    assert report["violations"] == [], report["violations"]


def test_short_drill_with_kill_pause_and_partition_finds_no_violation(tmp_path: Path) -> None:
    spec = DrillSpec(
        nodes=3,
        duration_s=15,
        clients=4,
        faults=("kill", "pause", "partition"),
        seed=3,
        fault_gap_s=FAST_FAULT_GAP_S,
    )
    report = run_drill(spec, parent_dir=tmp_path)
    _assert_clean(report)
    faults = report["faults"]
    # Shuffled rounds: every kind asked for happened, so the drill did not pass by luck.
    assert set(faults["by_kind"]) == {"kill", "pause", "partition"}
    ops = report["ops"]
    assert ops["ok"] > 100
    assert report["linearizability"]["verdict"] == "ok"
    log = report["log"]
    assert log["complete"] and log["drill_commands"] > 0
    restarts = report["restarts"]
    assert restarts
    assert all(r["catch_up_ms"] is not None for r in restarts)
    assert not report["kept"] and not Path(str(report["folder"])).exists()
    # Elections per fault: every fault is classed, a leader kill costs an election, a fault
    # that hit only followers costs none.
    el = report["elections"]
    assert sum(f["faults"] for f in el["by_fault"].values()) == faults["total"]
    assert el["status_polls"] > 0 and el["leader_changes"] >= 1
    for cls, f in el["by_fault"].items():
        if cls == "kill/leader":
            assert f["faults_with_an_election"] == f["faults"], el
        if cls.endswith("/follower"):  # a follower fault in a healthy cluster
            assert f["elections"] == 0, el
    assert el["follower_faults_with_an_election"] == []
    # The watch and txn checks ran, on every watcher, with both txn branches taken.
    w = report["watch"]
    assert w["checked"], w
    assert [x["name"].split()[0] for x in w["watchers"]] == ["leader", "follower", "roaming"]
    assert all(x["to"] == w["history"]["end"] and x["events"] > 0 for x in w["watchers"])
    assert w["watchers"][2]["watches"] >= 2  # the roaming one moved after a fault
    assert w["txns"]["succeeded"] > 0 and w["txns"]["failed_compare"] > 0, w["txns"]
    # The lease and lock workers ran: leases were let go and seen to expire, locks changed
    # hands, and fenced writes went through.
    le, lk = report["leases"], report["locks"]
    assert le["deletes_seen"] > 0 and le["keepalives_acked"] > 0, le
    assert lk["handoffs"] > 0 and lk["fenced_writes"]["ok"] > 0, lk


def test_drill_catches_a_watcher_that_drops_an_event(tmp_path: Path) -> None:
    """The planted client-side loss: the leader's watcher drops its 20th event. The stream
    check must name it; nothing else may fail."""
    spec = DrillSpec(nodes=3, duration_s=3, clients=2, faults=(), seed=2, plant_watch_drop=20)
    report = run_drill(spec, parent_dir=tmp_path)
    violations = report["violations"]
    assert [v["kind"] for v in violations] == ["watch"], violations
    assert violations[0]["message"].startswith("leader n") and "missed" in violations[0]["message"]
    assert report["kept"]


def test_drill_catches_a_write_acknowledged_before_it_is_decided(tmp_path: Path) -> None:
    spec = DrillSpec(
        nodes=3,
        duration_s=5,
        clients=4,
        faults=("kill",),
        seed=1,
        fault_gap_s=FAST_FAULT_GAP_S,
        node_env=((PLANT_BUG_ENV, "ack_before_durable"),),
    )
    report = run_drill(spec, parent_dir=tmp_path)
    kinds = {v["kind"] for v in report["violations"]}
    assert kinds & {"linearizability", "lost-write"}, report["violations"]
    # The evidence is kept: the history reads back, and the planted node said so loudly.
    folder = Path(str(report["folder"]))
    assert report["kept"] and folder.is_dir()
    assert len(load_history(folder / "history.jsonl")) == report["ops"]["total"]
    logs = "".join(p.read_text() for p in (folder / "cluster").glob("n*.log"))
    assert "TEST-ONLY PLANTED BUG ENABLED" in logs


def test_drill_on_a_running_cluster_partitions_through_the_hook(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "running", 3)
    cluster.up()
    try:
        nodes = Nodes.discover(cluster.endpoints(), cluster.client_key())
        spec = DrillSpec(
            duration_s=4, clients=2, faults=("partition",), seed=5, fault_gap_s=(0.2, 0.4)
        )
        report = run_drill(spec, nodes=nodes, parent_dir=tmp_path)
    finally:
        cluster.down()
    _assert_clean(report)
    assert report["target"] == "endpoints"
    assert report["faults"]["by_kind"] == {"partition": report["faults"]["total"]}
    assert report["faults"]["total"] >= 1


def test_endpoint_drill_refuses_faults_it_cannot_cause() -> None:
    with pytest.raises(DrillUsageError, match="only cause partition"):
        DrillSpec(faults=("kill", "partition")).validate(endpoints=True)
    # Membership changes need processes to add and stop: only on the drill's own cluster.
    with pytest.raises(DrillUsageError, match="drop reconfig"):
        DrillSpec(faults=("reconfig",)).validate(endpoints=True)


def test_unknown_fault_kind_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["drill", "--faults", "kill,meteor", "--duration", "1"])
    assert result.exit_code == 2, result.output


def test_race_every_node_agrees_on_each_winner(tmp_path: Path) -> None:
    report = run_race_local(6, 3, parent_dir=tmp_path)
    assert report["violations"] == []
    assert report["nodes_agree"] is True
    assert report["a_wins"] + report["b_wins"] == 6
    for r in report["per_round"]:
        # cas(expect_version=0): exactly one contender wins, and it is the one read back.
        assert sorted([r["a"], r["b"]]) == ["lost", "won"]
        assert r["winner"] == ("A" if r["a"] == "won" else "B")


# ----------------------------------------------------------------------- the log checks


@pytest.fixture
def workload() -> Workload:
    return Workload("t0", 5.0)


def _cmd(client: str, seq: int, op: Op) -> bytes:
    return encode_command(Command(client_id=client, seq=seq, site="s", op=op))


def _ok_put(client: str, seq: int, key: str, value: bytes, version: int) -> Entry:
    op = Operation(client, Put(key=key, value=value), 0, 1, "ok", Written(version=version))
    return Entry(op, seq)


def test_log_check_passes_a_retry_decided_twice_but_applied_once(workload: Workload) -> None:
    key = workload.key(0, 0)
    put = _cmd("c1", 1, Put(key=key, value=b"v1"))
    log = LogCopy(start=1, next_slot=3, slots={1: (put,), 2: (put,)})
    replicas = {1: ({key: (b"v1", 1)}, set[tuple[str, str]]())}
    violations, info = check_log(log, [_ok_put("c1", 1, key, b"v1", 1)], workload, replicas)
    assert violations == []
    assert info["decided_more_than_once"] == 1


def test_log_check_finds_a_command_applied_twice(workload: Workload) -> None:
    key = workload.key(0, 0)
    put = _cmd("c1", 1, Put(key=key, value=b"v1"))
    log = LogCopy(start=1, next_slot=3, slots={1: (put,), 2: (put,)})
    # Version 2: the replica applied the retried copy as a second put.
    replicas = {1: ({key: (b"v1", 2)}, set[tuple[str, str]]())}
    violations, _ = check_log(log, [_ok_put("c1", 1, key, b"v1", 1)], workload, replicas)
    assert [v.kind for v in violations] == ["exactly-once"]


def test_log_check_finds_one_value_decided_as_two_commands(workload: Workload) -> None:
    key = workload.key(0, 0)
    log = LogCopy(
        start=1,
        next_slot=3,
        slots={
            1: (_cmd("c1", 1, Put(key=key, value=b"v1")),),
            2: (_cmd("c1", 2, Put(key=key, value=b"v1")),),
        },
    )
    replicas = {1: ({key: (b"v1", 2)}, set[tuple[str, str]]())}
    violations, _ = check_log(log, [], workload, replicas)
    assert [v.kind for v in violations] == ["duplicate"]


def test_log_check_finds_an_acknowledged_write_missing_from_the_log(workload: Workload) -> None:
    key = workload.key(0, 0)
    log = LogCopy(start=1, next_slot=2, slots={1: (_cmd("c1", 1, Put(key=key, value=b"v1")),)})
    replicas = {1: ({key: (b"v1", 1)}, set[tuple[str, str]]())}
    acked = [_ok_put("c1", 1, key, b"v1", 1), _ok_put("c1", 2, key, b"v2", 2)]
    violations, _ = check_log(log, acked, workload, replicas)
    assert [v.kind for v in violations] == ["lost-write"]
    assert "seq 2" in violations[0].message


def test_log_check_ignores_other_clients_keys(workload: Workload) -> None:
    log = LogCopy(start=1, next_slot=2, slots={1: (_cmd("x", 1, Put(key="user/k", value=b"a")),)})
    violations, info = check_log(log, [], workload, {1: ({}, set())})
    assert violations == [] and info["drill_commands"] == 0


def _etcd_swap_log(key: str) -> LogCopy:
    """What the gateway decides for an etcd put of v1, then a txn "mod = 5 ? put v2 : get"."""
    swap = Txn(
        compares=(Compare(key=key, target="mod", op="=", number=5),),
        success=(Put(key=key, value=b"v2", prev_kv=True),),
        failure=(Get(key=key),),
    )
    return LogCopy(
        start=1,
        next_slot=3,
        slots={
            1: (_cmd("gw1", 1, Put(key=key, value=b"v1", prev_kv=True)),),
            2: (_cmd("gw2", 7, swap),),
        },
    )


def _etcd(op: Op, result: Written) -> Entry:
    return Entry(Operation("e", op, 0, 1, "ok", result), 0, via="etcd")


def test_log_check_replays_an_etcd_swap_as_the_cas_it_was_recorded_as(workload: Workload) -> None:
    key = workload.key(0, 0)
    entries = [
        _etcd(Put(key=key, value=b"v1"), Written(version=1, revision=5)),
        _etcd(Cas(key=key, new=b"v2", expect_value=b"v1"), Written(version=2, revision=6)),
    ]
    holds_v2 = {1: ({key: (b"v2", 2)}, set[tuple[str, str]]())}
    violations, _ = check_log(_etcd_swap_log(key), entries, workload, holds_v2)
    assert violations == []
    # The replay applied the swap: a replica that did not is found.
    holds_v1 = {1: ({key: (b"v1", 1)}, set[tuple[str, str]]())}
    violations, _ = check_log(_etcd_swap_log(key), entries, workload, holds_v1)
    assert [v.kind for v in violations] == ["exactly-once"]


def test_log_check_finds_a_register_txn_no_etcd_worker_sent(workload: Workload) -> None:
    key = workload.key(0, 0)
    entries = [_etcd(Put(key=key, value=b"v1"), Written(version=1, revision=5))]
    replicas = {1: ({key: (b"v2", 2)}, set[tuple[str, str]]())}
    violations, _ = check_log(_etcd_swap_log(key), entries, workload, replicas)
    assert violations and violations[0].kind == "exactly-once"
    assert "no etcd worker sent" in violations[0].message


def test_log_check_finds_an_etcd_put_acknowledged_but_not_decided(workload: Workload) -> None:
    key = workload.key(0, 0)
    entries = [
        _etcd(Put(key=key, value=b"v1"), Written(version=1, revision=5)),
        _etcd(Cas(key=key, new=b"v2", expect_value=b"v1"), Written(version=2, revision=6)),
        _etcd(Put(key=key, value=b"v3"), Written(version=3, revision=7)),
    ]
    replicas = {1: ({key: (b"v2", 2)}, set[tuple[str, str]]())}
    violations, _ = check_log(_etcd_swap_log(key), entries, workload, replicas)
    assert [v.kind for v in violations] == ["lost-write"]
    assert "through etcd" in violations[0].message and "v3" in violations[0].message


def test_etcd_drill_needs_its_own_cluster() -> None:
    with pytest.raises(DrillUsageError, match="--etcd needs the drill's own cluster"):
        DrillSpec(etcd=True, faults=("partition",)).validate(endpoints=True)
    assert DrillSpec(clients=1, etcd=True).etcd_workers == 1
    assert DrillSpec(clients=5, etcd=True).etcd_workers == 2
    assert DrillSpec(clients=5).etcd_workers == 0


def _rows(*nodes: tuple[int, int, str]) -> Convergence:
    rows = {k: {"applied_index": a, "digest": d, "role": "follower"} for k, a, d in nodes}
    return Convergence(False, rows, "")


def test_equal_indexes_with_different_digests_are_divergence_not_lag() -> None:
    found = diagnose_convergence(_rows((1, 10, "aa"), (2, 10, "bb"), (3, 10, "aa")))
    assert [v.kind for v in found] == ["digest"]


def test_a_replica_behind_after_healing_is_a_convergence_failure() -> None:
    found = diagnose_convergence(_rows((1, 10, "aa"), (2, 10, "aa"), (3, 7, "cc")))
    assert [v.kind for v in found] == ["convergence"]
    assert "n3 at applied index 7" in found[0].message


def test_history_lines_round_trip() -> None:
    op = Operation("c", Delete(key="k"), 3, None, "unknown", None)
    e = Entry(op, 7, "timed out")
    assert entry_from_json(entry_to_json(e)) == e
    ok = _ok_put("c", 2, "k", b"\xff\x00", 4)
    assert entry_from_json(entry_to_json(ok)) == ok
    through_etcd = _etcd(Put(key="k", value=b"v"), Written(version=1, revision=3))
    assert entry_from_json(entry_to_json(through_etcd)) == through_etcd


# ----------------------------------------------------------------------- the CI drill


@pytest.fixture
def drill_seconds() -> Iterator[float]:
    raw = os.environ.get("PAXOSD_DRILL_SECONDS")
    if raw is None:
        pytest.skip("set PAXOSD_DRILL_SECONDS (CI: 60) to run the long drill")
    yield float(raw or 60)


def test_ci_drill_on_three_nodes_with_kill_pause_and_partition_has_no_violation(
    tmp_path: Path, drill_seconds: float
) -> None:
    spec = DrillSpec(
        nodes=3, duration_s=drill_seconds, clients=4, faults=("kill", "pause", "partition")
    )
    report = run_drill(spec, parent_dir=tmp_path)
    _assert_clean(report)
    assert set(report["faults"]["by_kind"]) == {"kill", "pause", "partition"}


def test_ci_drill_with_membership_changes_and_kills_has_no_violation(tmp_path: Path) -> None:
    """Runs in the default suite for a few seconds, and for PAXOSD_DRILL_SECONDS in CI."""
    raw = os.environ.get("PAXOSD_DRILL_SECONDS")
    spec = DrillSpec(
        nodes=3,
        duration_s=float(raw or 60) if raw is not None else 6.0,
        clients=4,
        faults=("kill", "reconfig"),
        fault_gap_s=FAULT_GAP_S if raw is not None else FAST_FAULT_GAP_S,
    )
    report = run_drill(spec, parent_dir=tmp_path)
    _assert_clean(report)
    # Every slot was copied while some member still held it: the durability checks ran.
    assert report["final"]["converged"] and report["log"]["complete"]
    rc = report["reconfig"]
    assert sum(rc["ops"].values()) >= 1, report["faults"]
    # The final checks ran on the final members: no removed node among them.
    assert not set(rc["removed"]) & set(rc["members"])
    assert set(rc["voters"]) <= set(rc["members"])
    if raw is not None:
        # A minute is enough for every step to happen, and for the membership to move.
        assert set(rc["ops"]) == set(RECONFIG_OPS), rc["ops"]
        assert rc["added"] and rc["removed"], rc
        assert rc["changes"]["promote"].get("ok", 0) >= 1, rc["changes"]
        assert rc["empty_start_refused"] >= 1, rc


def _ev(kind: str, start_ms: int, touches_leader: bool | None) -> FaultEvent:
    return FaultEvent(kind, [1], start_ms, start_ms + 500, touches_leader=touches_leader)


def test_elections_are_charged_to_the_fault_in_progress_and_summed_per_class() -> None:
    events = [
        _ev("kill", 1000, True),
        _ev("pause", 3000, False),
        _ev("kill", 5000, True),
        _ev("reconfig", 7000, None),
    ]
    changes = [
        (200, (1, 1), 1),  # the initial election: before any fault, nobody's
        (1400, (2, 2), 2),
        (5300, (3, 3), 3),
        (5900, (4, 1), 1),
    ]
    figures = attribute_elections(events, changes)
    assert [ev.elections for ev in events] == [1, 0, 2, 0]
    assert figures["kill/leader"] == {
        "faults": 2,
        "elections": 3,
        "faults_with_an_election": 2,
        "elections_per_fault": 1.5,
    }
    assert figures["pause/follower"]["elections"] == 0 and "reconfig" in figures
    assert follower_faults_with_elections(events) == []


def test_planted_election_after_a_follower_fault_is_reported() -> None:
    """The figure can fail: a leader change during a follower's pause is charged to it."""
    events = [_ev("pause", 1000, False), _ev("kill", 4000, True)]
    attribute_elections(events, [(1800, (2, 3), 3), (4200, (3, 2), 2)])
    assert [ev.fault_class for ev in follower_faults_with_elections(events)] == ["pause/follower"]


def test_a_follower_fault_while_another_node_is_still_down_is_classed_apart() -> None:
    degraded = _ev("pause", 1000, False)
    degraded.healthy = False
    figures = attribute_elections([degraded], [(1500, (2, 1), 1)])
    assert list(figures) == ["pause/follower-degraded"]
    assert follower_faults_with_elections([degraded]) == []


def test_the_leader_watch_counts_each_leader_ballot_once() -> None:
    watch = LeaderWatch.__new__(LeaderWatch)
    watch.changes, watch._top = [], (0, 0)
    watch.observe(10, {"role": "follower", "leader": None, "promised": "1.1"})
    watch.observe(20, {"role": "leader", "leader": 1, "ballot": "1.1"})
    watch.observe(30, {"role": "follower", "leader": 1, "promised": "1.1"})
    # A follower that promised a candidate it does not follow yet is no election.
    watch.observe(40, {"role": "follower", "leader": 1, "promised": "2.3"})
    watch.observe(50, {"role": "follower", "leader": 3, "promised": "2.3"})
    watch.observe(60, {"role": "leader", "leader": 1, "ballot": "1.1"})  # stale, lower
    assert watch.changes == [(20, (1, 1), 1), (50, (2, 3), 3)]
