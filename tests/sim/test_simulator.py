"""The simulator as CI's safety gate: many seeds over 3 and 5 replicas with every fault kind,
and planted bugs that the checkers must catch (so the checkers are not vacuous)."""

from __future__ import annotations

import os
import re

import pytest

from paxosd.core.io import PersistRecord
from paxosd.server.runner import Runner
from paxosd.sim.disk import SimDisk
from paxosd.sim.fuzz import fuzz, replay_command
from paxosd.sim.leases import BOUND_ELECTION_TIMEOUTS
from paxosd.sim.planted import PLANTED_BUGS
from paxosd.sim.run import FAULT_KINDS, run_seed
from paxosd.statemachine.machine import StateMachine

# CI budget, in CPU seconds (process time, one core): with the revision and watch checkers and
# a WatchHub on every node, 3 nodes run ~49 seeds/s and 5 nodes ~32 (without them 59 and 42),
# so 1000 + 600 seeds cost ~40 s of CPU; wall time is that on an idle core, more on a shared one.
# The lock clients and their checker (paxosd/sim/locks.py) add a quarter to a third: 200 seeds
# on 3 nodes took 6.3 and 6.6 CPU s without them, 8.1 and 8.6 with them (load 3).
# PAXOSD_SIM_SEEDS scales both counts (e.g. 0.1 for a quick local run).
_SCALE = float(os.environ.get("PAXOSD_SIM_SEEDS", "1"))
SEEDS_3 = max(1, round(1000 * _SCALE))
SEEDS_5 = max(1, round(600 * _SCALE))


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
    # Peers' snapshots were decoded across ticks while the node went on, as in the daemon.
    assert report.snapshot_installs_in_pieces > 0
    assert report.linearizability["ok"] == seeds
    assert report.client_ops["ok"] > seeds * 10, "the workload barely ran"
    # The runner's unsynced writes met power cuts, and lost something each time they did.
    assert report.fault_detail["power-cut"] > 0
    assert report.fault_detail["unsynced-writes-lost"] > 0
    # The revision checker replayed every seed and checked both reads and writes; the watch
    # checker saw every kind of watch traffic: reconnections, a slow watcher held back,
    # progress notifications and compacted cancels.
    assert report.revisions["ok"] == seeds and report.watch["ok"] == seeds
    rf, wf = report.revision_figures, report.watch_figures
    assert rf["writes_checked"] > seeds * 10 and rf["reads_checked"] > seeds * 10
    assert rf["seeds_with_compaction"] > 0
    assert wf["events_checked"] > seeds * 10
    for what in ("recreated", "slow", "progress", "compacted"):
        assert wf[what] > 0, f"no watcher saw {what}"
    # Every seed has lease clients (half of them pause the leader) and lock clients (some
    # holders pause past their TTL). The checks were not vacuous: leases were kept alive,
    # expired on their own, were revoked by their clients, a paused leader's expiries were
    # refused; locks changed hands by release and by expiry, fenced writes were applied and
    # a paused holder's late ones refused, and holding intervals were compared.
    assert report.leases["ok"] == seeds and report.locks["ok"] == seeds
    lf = report.lease_figures
    assert lf["keepalives_acked"] > seeds and lf["expired"] > seeds
    assert lf["revoked_by_client"] > 0
    assert lf["leader_pauses"] > seeds // 4 and lf["stale_expiries_refused"] > 0
    assert report.lease_worst_overrun_ets <= BOUND_ELECTION_TIMEOUTS
    kf = report.lock_figures
    assert kf["acquisitions"] > seeds and kf["handoffs_by_release"] > seeds // 2
    assert kf["handoffs_by_expiry"] > seeds // 10 and kf["paused_holders"] > seeds // 10
    assert kf["fenced_writes_applied"] > seeds and kf["fenced_writes_refused"] > 0
    assert kf["waiter_timeouts"] > 0 and kf["holding_intervals_checked"] > seeds


# Membership changes (add, promote, remove, leader transfer) under every fault kind.
RECONFIG_SEEDS = 100


@pytest.mark.parametrize("nodes", [3, 5])
def test_fuzzed_membership_changes_have_no_violation_and_converge(nodes: int) -> None:
    kinds = (*FAULT_KINDS, "reconfig")
    report = fuzz(RECONFIG_SEEDS, nodes, kinds=kinds)
    failures = [(f.seed, str(f.violation)) for f in report.failures]
    assert failures == [], replay_command(failures[0][0], nodes, kinds) if failures else ""
    assert report.converged == RECONFIG_SEEDS
    assert report.linearizability["ok"] == RECONFIG_SEEDS
    assert report.fault_detail["reconfig-ok"] > RECONFIG_SEEDS, "changes were rarely decided"
    assert report.fault_detail["reconfig-refused"] > 0, "no change was ever refused"
    for kind in FAULT_KINDS:
        assert report.faults[kind] > 0, f"fault kind {kind} was never injected"


_MEMBER = re.compile(r"Member\(node=(\d+), address='[^']*', voter=(True|False)\)")


@pytest.mark.parametrize("nodes", [3, 5])
def test_fuzzed_runs_really_promote_and_remove_voters(nodes: int) -> None:
    # "reconfig-ok" also counts leader transfers: read the traces to see that learners were
    # promoted and bootstrap voters removed, i.e. the voter set really moved under the load.
    bootstrap = set(range(1, nodes + 1))
    voter_sets: set[frozenset[int]] = set()
    for seed in range(16):
        r = run_seed(seed, nodes=nodes, kinds=frozenset({*FAULT_KINDS, "reconfig"}), trace=True)
        assert r.violation is None, replay_command(seed, nodes, (*FAULT_KINDS, "reconfig"))
        for line in r.trace:
            if "applies membership" in line:
                members = _MEMBER.findall(line)
                voter_sets.add(frozenset(int(n) for n, voter in members if voter == "True"))
    assert any(max(v) > nodes for v in voter_sets), "no learner was ever promoted"
    assert any(not bootstrap <= v for v in voter_sets), "no bootstrap voter was ever removed"


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
# "phase1_ignores_new_membership" needs a long chain of membership changes that one acceptor
# misses, then that laggard campaigning: the random fuzzer did not find it in 500 seeds (with
# "reconfig"), so a scripted interleaving guards it instead:
# tests/core/test_membership.py::test_a_candidate_that_missed_membership_changes_asks_the_new_voters
# "lease_takeover_renews_full_ttl" (etcd #9888) needs leadership to move faster than TTL + an
# election timeout for many TTLs, which the fuzzer's faults do not do: a scripted run of
# repeated leader changes guards it (tests/sim/test_leases.py). So does a scripted leader
# crash for "lease_checkpoint_wait_uncapped", which needs a TTL far above the fuzzer's 2 s,
# and scripted rolling restarts for "lease_checkpoint_never_renewed", which needs restarted
# nodes handed leadership again and again.
SIM_FOUND_BUGS = PLANTED_BUGS - {
    "phase1_ignores_new_membership",
    "lease_takeover_renews_full_ttl",
    "lease_checkpoint_wait_uncapped",
    "lease_checkpoint_never_renewed",
}


@pytest.mark.parametrize("bug", sorted(SIM_FOUND_BUGS))
def test_the_simulator_catches_a_planted_bug(bug: str) -> None:
    report = fuzz(BUG_SEED_BOUND, 3, bugs=frozenset({bug}), stop_at_first=True)
    assert report.failures, f"planted bug {bug} went unnoticed for {BUG_SEED_BOUND} seeds"


# The revision and watch checkers' planted bugs, with the property that must catch each.
# Measured over 20 windows of 100 seeds: txn_applied_half caught within 1-2 seeds (3 nodes)
# and 1-4 (5 nodes), hub_skips_event within 1-2 and 1-4, hub_early_progress within 1-15 and
# 1-11.
CHECKER_BUGS = {
    "txn_applied_half": "revisions",
    "hub_skips_event": "watch",
    "hub_early_progress": "watch",
}
CHECKER_BUG_SEED_BOUND = 60


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("bug", sorted(CHECKER_BUGS))
def test_the_revision_and_watch_checkers_catch_their_planted_bugs(bug: str, nodes: int) -> None:
    report = fuzz(CHECKER_BUG_SEED_BOUND, nodes, bugs=frozenset({bug}), stop_at_first=True)
    assert report.failures, f"{bug} went unnoticed for {CHECKER_BUG_SEED_BOUND} seeds"
    violation = report.failures[0].violation
    assert violation is not None and violation.prop == CHECKER_BUGS[bug], str(violation)


def test_a_checker_violation_names_its_checker_and_its_replay_plants_the_bug() -> None:
    bug = frozenset({"hub_skips_event"})
    report = fuzz(CHECKER_BUG_SEED_BOUND, 3, bugs=bug, stop_at_first=True)
    failure = report.failures[-1]
    assert (failure.watch, failure.revisions) == ("violation", "ok")
    violations = report.to_json()["violations"]
    assert isinstance(violations, list)
    assert violations[0]["replay"] == (
        f"paxosctl simulate --seed {failure.seed} --nodes 3 --plant-bug hub_skips_event --trace"
    )


def test_a_violation_report_names_the_seed_the_property_and_the_trace_tail() -> None:
    r = run_seed(0, nodes=3, bugs=frozenset({"apply_before_decided"}))
    assert r.violation is not None
    assert r.violation.prop == "applied-prefix"
    assert any("VIOLATION" in line for line in r.trace_tail)


# ------------------------------------------------------------------ planted host bugs
# The simulator runs the daemon's runner over a disk that loses unsynced writes in a power
# cut, so a host that breaks the durability order must be caught like a core bug.


class _AcksBeforeDurable(Runner[StateMachine]):
    """Planted: promises and votes are written without waiting for the disk, so the messages
    that speak for them (and the client answers that follow) leave before they are durable."""

    def write_synced(self, record: PersistRecord) -> None:
        self.disk.write(record, sync=False)


class _SyncsAtTheNextTick(Runner[StateMachine]):
    """Planted, subtler: promises and votes are synced only at the next tick (a group commit
    that lets messages run ahead of the fsync by up to one tick)."""

    def write_synced(self, record: PersistRecord) -> None:
        self.disk.write(record, sync=False)

    def tick(self) -> None:
        self.disk.write(PersistRecord(), sync=True)
        super().tick()


class _CheckpointsUnsynced(SimDisk):
    """Planted: an unsynced write also checkpoints, copying the WAL (synced frames and its
    own) into the database file without syncing the file, then reusing the WAL: SQLite's
    autocheckpoint inside a synchronous=OFF commit. A power cut then loses fsynced votes."""

    def write(self, record: PersistRecord, *, sync: bool) -> None:
        super().write(record, sync=sync)
        if not sync and len(self.wal) + len(self.unsynced) >= self.checkpoint_frames:
            self.checkpoints += 1
            self.file_unsynced.extend((*self.wal, *self.unsynced))
            self.wal.clear()
            self.unsynced.clear()


# Measured: caught within 1-3 seeds (acks) and 1-10 seeds (checkpoint) on 3 and 5 nodes.
HOST_BUG_SEED_BOUND = 60


@pytest.mark.parametrize("nodes", [3, 5])
def test_the_simulator_catches_a_runner_that_acknowledges_before_its_write_is_durable(
    nodes: int,
) -> None:
    report = fuzz(HOST_BUG_SEED_BOUND, nodes, stop_at_first=True, runner_class=_AcksBeforeDurable)
    assert report.failures, f"not caught in {HOST_BUG_SEED_BOUND} seeds"
    # Lost votes let a slot be chosen twice (or a core assert notice the hole first).
    assert report.failures[0].violation is not None
    assert report.failures[0].violation.prop in {"agreement", "durability", "invariant"}


@pytest.mark.parametrize("nodes", [3, 5])
def test_the_simulator_catches_a_checkpoint_of_unsynced_data(nodes: int) -> None:
    report = fuzz(HOST_BUG_SEED_BOUND, nodes, stop_at_first=True, disk_class=_CheckpointsUnsynced)
    assert report.failures, f"not caught in {HOST_BUG_SEED_BOUND} seeds"
    assert report.failures[0].violation is not None
    assert report.failures[0].violation.prop in {"agreement", "durability", "invariant"}


def test_the_simulator_catches_votes_synced_one_tick_late() -> None:
    # Only the power cuts that land inside one tick of a commit can show this one: measured
    # on 3 nodes, caught after 33 to 279 seeds (5 nodes: not within 300).
    report = fuzz(600, 3, stop_at_first=True, runner_class=_SyncsAtTheNextTick)
    assert report.failures, "not caught in 600 seeds"


def test_the_faithful_runner_survives_the_seeds_that_catch_the_planted_ones() -> None:
    # The control: the same seeds with the real runner and disk find nothing.
    report = fuzz(HOST_BUG_SEED_BOUND, 3)
    assert report.failures == []


@pytest.mark.parametrize(("seed", "nodes"), [(1402, 3), (2498, 3), (2467, 5)])
def test_a_crash_between_a_decided_write_and_its_report_is_no_false_alarm(
    seed: int, nodes: int
) -> None:
    # In these runs a node crashed after a decided record reached its disk but before the runner
    # reported it; the restarted node then applied a decision the checker had not been told of
    # (a false "applied-prefix"). The simulated disk now reports what such a write made durable.
    # The seeds were found again, with the disk's report removed, after the workload changed.
    # 1402 replaced 1533 when a peer's snapshot began to arrive through the runner (one more
    # Ready per transfer), which moved 1533's crash off a Ready.
    kinds = frozenset({*FAULT_KINDS, "reconfig"})
    # Lease and lock clients change every seed's schedule: these interleavings were found
    # without them.
    r = run_seed(seed, nodes=nodes, kinds=kinds, lease_clients=0, lock_clients=0)
    assert r.violation is None, replay_command(seed, nodes, tuple(sorted(kinds)))
    assert r.faults.get("crash-mid-ready", 0) > 0, "the seed no longer crashes mid-Ready"
