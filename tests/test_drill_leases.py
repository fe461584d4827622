"""The drill's lease and lock checks: made-up lives and histories that each check must pass
or fail, then short drills on real daemons with a planted client-side bug per check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paxosd.lab.drill import DrillSpec, FaultEvent, RestartEvent, run_drill
from paxosd.lab.drill.leases import (
    LeaseLife,
    check_leases,
    deadline_ms,
    expiry_slack_ms,
    leaderless,
    no_majority,
    recoveries,
    restarted_leaders,
    union,
)
from paxosd.lab.drill.locks import LockStats, check_fencing
from paxosd.lab.drill.streams import Change

TTL = 3000
ET = 600
PREFIX = "drill.lock/r/fenced/"


def _life(end: str = "abandoned", **kw: object) -> LeaseLife:
    life = LeaseLife(worker=0, lease=0xA, key="drill.lease/r/w0/a", grant_ms=0, attached=True)
    life.end = end
    for k, v in kw.items():
        setattr(life, k, v)
    return life


def _check(
    life: LeaseLife,
    deleted: int | None,
    left: tuple[str, ...] = (),
    spans: Sequence[tuple[int, int]] = (),
    restarted: Sequence[tuple[int, int]] = (),
    handovers: Sequence[tuple[int, int]] = (),
) -> list[str]:
    deletes = {} if deleted is None else {life.key: deleted}
    violations, _ = check_leases(
        [life],
        deletes,
        left,
        ttl_ms=TTL,
        election_ms=ET,
        spans=list(spans),
        watched_until_ms=100_000,
        restarted=list(restarted),
        handovers=list(handovers),
    )
    return [v.kind for v in violations]


def test_a_lease_that_expires_between_ttl_and_the_bound_passes() -> None:
    life = _life(acks=[1000, 2000], last_send_ms=2500)
    assert _check(life, 2500 + TTL + 2 * ET) == []


def test_a_key_deleted_before_the_last_acknowledged_keepalive_plus_ttl_is_early() -> None:
    life = _life(acks=[1000, 2000], last_send_ms=2000)
    assert _check(life, 2000 + TTL - 1) == ["lease-early-expiry"]


def test_a_revoked_lease_may_go_at_once_but_not_before_its_revoke() -> None:
    life = _life("revoked", acks=[1000], last_send_ms=1000, revoke_ms=1500)
    assert _check(life, 1600) == []
    assert _check(life, 1400) == ["lease-early-expiry"]


def test_a_key_deleted_past_the_bound_is_late_unless_the_cluster_had_no_majority() -> None:
    life = _life(acks=[1000], last_send_ms=1000)
    late = 1000 + TTL + 5 * ET + 500
    assert _check(life, late) == ["lease-late-expiry"]
    # 700 ms without a majority inside the window: the bound moves by that much.
    assert _check(life, late, spans=[(2000, 2700)]) == []


def test_the_bound_past_the_ttl_is_the_readmes() -> None:
    # The checkpoint waits half the TTL, between 2 and 8 election timeouts; then 3 more.
    assert expiry_slack_ms(1000, ET) == 5 * ET
    assert expiry_slack_ms(TTL, ET) == TTL // 2 + 3 * ET
    assert expiry_slack_ms(10_000, ET) == 11 * ET


def test_a_key_left_after_the_drill_is_late_and_a_leftover() -> None:
    life = _life(acks=[1000], last_send_ms=1000)
    assert _check(life, None, left=(life.key,)) == ["lease-late-expiry", "lease-final-state"]


def test_no_majority_counts_only_the_time_a_majority_was_out() -> None:
    restarts = [RestartEvent(node=1, kind="kill", down_ms=100, restart_ms=300, ready_ms=500)]
    pause = FaultEvent("pause", [2], 400, end_ms=900)
    part = FaultEvent("partition", [3], 2000, end_ms=2500)  # alone: one out of three
    assert no_majority([pause, part], restarts, 3, 10_000) == [(400, 500)]
    killall = [
        RestartEvent(node=k, kind="killall", down_ms=5000, restart_ms=5500, ready_ms=5600 + k)
        for k in (1, 2, 3)
    ]
    assert no_majority([], killall, 3, 10_000) == [(5000, 5602)]


def test_a_leader_change_counts_from_the_fault_that_began_it_to_the_new_leader() -> None:
    kill = FaultEvent("kill", [1], 1000, end_ms=3000)
    pause = FaultEvent("pause", [2], 5000, end_ms=5500)
    changes = [(100, (1, 1), 1), (1800, (2, 2), 2), (9000, (3, 3), 3)]
    # The first change is the initial election; the last has only the pause before it.
    assert leaderless([pause, kill], changes) == [(1000, 1800), (5000, 9000)]
    assert union([(0, 10), (5, 20)], [(30, 40), (40, 45)]) == [(0, 20), (30, 45)]


def test_after_a_restart_without_a_majority_the_lease_clock_starts_again() -> None:
    life = _life(acks=[1000], last_send_ms=1000)
    slack = TTL + expiry_slack_ms(TTL, ET)
    killall = [
        RestartEvent(node=k, kind="killall", down_ms=2000, restart_ms=2500, ready_ms=4000)
        for k in (1, 2, 3)
    ]
    spans = no_majority([], killall, 3, 100_000)
    restarted = recoveries(spans, killall)
    assert restarted == [(2000, 4000)]
    must, allowance = deadline_ms(life, TTL, ET, spans, restarted)
    assert must == 4000 + slack and allowance == 3000
    assert _check(life, must, spans=spans, restarted=restarted) == []
    assert _check(life, must + 1, spans=spans, restarted=restarted) == ["lease-late-expiry"]
    # A span without a majority but no restart only adds its own time.
    pause = [FaultEvent("pause", [1, 2], 2000, end_ms=4000)]
    paused = no_majority(pause, [], 3, 100_000)
    assert recoveries(paused, []) == []
    assert deadline_ms(life, TTL, ET, paused, []) == (1000 + slack + 2000, 2000)
    # A restart after the key had to be gone changes nothing.
    late = [(1000 + slack + 1, 1000 + slack + 5000)]
    assert deadline_ms(life, TTL, ET, late, late) == (1000 + slack, 0)


def test_each_hand_over_to_a_leader_that_restarted_adds_two_election_timeouts() -> None:
    life = _life(acks=[1000], last_send_ms=1000)
    slack = TTL + expiry_slack_ms(TTL, ET)
    kill = [RestartEvent(node=2, kind="kill", down_ms=1500, restart_ms=2000, ready_ms=2500)]
    changes = [(100, (1, 1), 1), (1600, (2, 3), 3), (4000, (3, 2), 2)]
    # Node 3 never restarted; node 2 did, before it took over at 4000.
    handovers = restarted_leaders(changes, kill)
    assert handovers == [(1500, 4000)]
    assert deadline_ms(life, TTL, ET, [], (), handovers) == (1000 + slack + 2 * ET, 2 * ET)
    assert _check(life, 1000 + slack + 2 * ET, handovers=handovers) == []
    assert _check(life, 1000 + slack + 2 * ET + 1, handovers=handovers) == ["lease-late-expiry"]
    # A takeover after the key had to be gone changes nothing.
    later = [(100, (1, 1), 1), (1000 + slack + 1, (2, 2), 2)]
    assert deadline_ms(life, TTL, ET, [], (), restarted_leaders(later, kill))[0] == 1000 + slack


def test_a_late_expiry_near_a_membership_change_is_not_judged_but_a_leftover_is() -> None:
    life = _life(acks=[1000], last_send_ms=1000)
    late = 1000 + TTL + expiry_slack_ms(TTL, ET) + 1000
    reconfig = [FaultEvent("reconfig", [4], 900, end_ms=950)]
    assert _check(life, late) == ["lease-late-expiry"]
    kinds, figures = _check_with(life, late, events=reconfig)
    assert kinds == [] and figures["late_not_judged_near_a_membership_change"] == 1
    kinds, _ = _check_with(life, None, left=(life.key,), events=reconfig)
    assert kinds == ["lease-final-state"]
    # Early expiry is judged whatever the membership did.
    kinds, _ = _check_with(life, 1000 + TTL - 1, events=reconfig)
    assert kinds == ["lease-early-expiry"]


def _check_with(
    life: LeaseLife,
    deleted: int | None,
    left: tuple[str, ...] = (),
    events: Sequence[FaultEvent] = (),
) -> tuple[list[str], dict[str, Any]]:
    deletes = {} if deleted is None else {life.key: deleted}
    violations, figures = check_leases(
        [life],
        deletes,
        left,
        ttl_ms=TTL,
        election_ms=ET,
        spans=[],
        watched_until_ms=100_000,
        events=list(events),
    )
    return [v.kind for v in violations], figures


def _put(rev: int, lock: str, value: str) -> Change:
    return Change(rev, "PUT", PREFIX + lock, value.encode(), 1, rev)


def test_fenced_writes_in_token_order_pass_and_count_hand_offs() -> None:
    stats = LockStats(acked=[("lock0", "w1/10/1"), ("lock0", "w2/14/1")])
    history = [
        Change(9, "PUT", PREFIX + "mark", b"start", 1, 9),
        _put(11, "lock0", "w1/10/1"),
        _put(15, "lock0", "w2/14/1"),
        _put(18, "lock0", "w2/17/2"),
    ]
    violations, figures = check_fencing(history, PREFIX, [stats])
    assert violations == []
    assert figures["handoffs"] == 1 and figures["history"]["lock0"]["holders"] == 3


def test_a_lower_token_after_a_higher_one_is_a_fencing_violation() -> None:
    history = [_put(11, "lock0", "w1/10/1"), _put(15, "lock0", "w2/14/1")]
    history.append(_put(16, "lock0", "w1/10/1.stale"))
    violations, _ = check_fencing(history, PREFIX, [])
    assert [v.kind for v in violations] == ["fencing"]
    assert "token 10" in violations[0].message


def test_one_token_written_by_two_workers_is_a_fencing_violation() -> None:
    history = [_put(11, "lock0", "w1/10/1"), _put(12, "lock0", "w2/10/1")]
    violations, _ = check_fencing(history, PREFIX, [])
    assert [v.kind for v in violations] == ["fencing"]


def test_an_acknowledged_fenced_write_missing_from_the_history_is_reported() -> None:
    stats = LockStats(acked=[("lock1", "w0/20/3")])
    violations, _ = check_fencing([], PREFIX, [stats])
    assert [v.kind for v in violations] == ["fencing-lost"]


# ----------------------------------------------------------------- planted, on real daemons


def _kinds(report: dict[str, Any]) -> set[str]:
    return {str(v["kind"]) for v in report["violations"]}


def test_drill_catches_keepalive_acks_that_were_never_received(tmp_path: Path) -> None:
    spec = DrillSpec(nodes=3, duration_s=4, clients=1, faults=(), seed=6, plant_lease="fake_acks")
    report = run_drill(spec, parent_dir=tmp_path)
    assert _kinds(report) == {"lease-early-expiry"}, report["violations"]


def test_drill_catches_a_lease_kept_alive_after_it_was_abandoned(tmp_path: Path) -> None:
    spec = DrillSpec(
        nodes=3, duration_s=4, clients=1, faults=(), seed=7, plant_lease="hidden_keepalive"
    )
    report = run_drill(spec, parent_dir=tmp_path)
    assert _kinds(report) == {"lease-late-expiry", "lease-final-state"}, report["violations"]
    # The evidence is kept: every lease's life and the DELETE arrivals per watcher.
    lines = (Path(report["folder"]) / "leases.jsonl").read_text().splitlines()
    assert len(lines) == 1 + report["leases"]["leases"]


def test_drill_catches_a_fenced_write_without_the_compare(tmp_path: Path) -> None:
    spec = DrillSpec(
        nodes=3, duration_s=4, clients=1, faults=(), seed=8, plant_lock="unfenced_write"
    )
    report = run_drill(spec, parent_dir=tmp_path)
    assert _kinds(report) == {"fencing"}, report["violations"]
    assert report["locks"]["acquisitions"] > 1
