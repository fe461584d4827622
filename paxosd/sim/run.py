"""One seed, end to end: safety phase with faults, heal, liveness phase, then the checks.

A seed fixes everything (fault plan, timings, workload), so a seed is a complete bug report:
``paxosctl simulate --seed S --trace`` replays it exactly.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial

import msgspec

from paxosd.core.types import NodeId
from paxosd.server.runner import Runner
from paxosd.sim import linearizability, revisions, watches
from paxosd.sim.checker import Violation
from paxosd.sim.disk import SimDisk
from paxosd.sim.leases import LeaseReport
from paxosd.sim.linearizability import Operation
from paxosd.sim.locks import LockReport
from paxosd.sim.network import NetworkFaults
from paxosd.sim.revisions import RevisionReport
from paxosd.sim.workload import KEYS, SimClient
from paxosd.sim.world import World, WorldOptions
from paxosd.statemachine.commands import (
    Block,
    Blocks,
    Cas,
    Delete,
    Get,
    Put,
    Rows,
    Scan,
    Unblock,
    View,
)
from paxosd.statemachine.machine import StateMachine

# Lock clients in every fuzzed seed (paxosd/sim/locks.py).
LOCK_CLIENTS = 3
FAULT_KINDS = ("drop", "dup", "delay", "partition", "crash")
# Kinds a run includes only when named (they change what every seed does).
OPTIONAL_KINDS = ("reconfig",)
KNOWN_KINDS = FAULT_KINDS + OPTIONAL_KINDS


@dataclass(slots=True)
class SeedResult:
    seed: int
    nodes: int
    violation: Violation | None
    trace_tail: list[str]
    sim_ms: int
    core_steps: int
    decided_slots: int
    client_ops: Counter[str]
    faults: Counter[str]
    linearizability: str
    converged_ms: int | None = None
    # "ok" once the lease checker passed (paxosd/sim/leases.py), "violation" when it failed,
    # else "not-checked".
    leases: str = "not-checked"
    lease_report: LeaseReport | None = None
    # "ok" once the lock checker passed (paxosd/sim/locks.py), "violation" when it failed,
    # else "not-checked".
    locks: str = "not-checked"
    lock_report: LockReport | None = None
    # "ok" once the revision checker passed (paxosd/sim/revisions.py), "violation" when it
    # failed, else "not-checked".
    revisions: str = "not-checked"
    revision_figures: RevisionReport | None = None
    # "ok" once the watch checker passed (paxosd/sim/watches.py), "violation" when it
    # failed, else "not-checked".
    watch: str = "not-checked"
    watch_events: int = 0
    watch_stats: Counter[str] = field(default_factory=Counter)
    snapshot_restores: int = 0
    snapshot_installs_in_pieces: int = 0
    trace: list[str] = field(default_factory=list)


def _options(
    rng: random.Random, nodes: int, kinds: frozenset[str], bugs: frozenset[str]
) -> WorldOptions:
    faults = NetworkFaults(
        drop_probability=rng.uniform(0.0, 0.08) if "drop" in kinds else 0.0,
        duplicate_probability=rng.uniform(0.0, 0.08) if "dup" in kinds else 0.0,
        delay_ms_min=1,
        delay_ms_max=rng.randint(5, 60) if "delay" in kinds else 2,
    )
    return WorldOptions(
        nodes=nodes,
        clients=rng.randint(2, 5),
        faults=faults,
        crash_mid_ready_probability=0.002 if "crash" in kinds else 0.0,
        power_cut_share=0.3,
        planted_bugs=bugs,
        reconfig="reconfig" in kinds,
        thrifty_accepts=rng.random() < 0.5,
    )


def _plan_faults(world: World, rng: random.Random, kinds: frozenset[str], safety_ms: int) -> None:
    ids: list[int] = [int(n) for n in world.nodes]
    minority = (len(ids) - 1) // 2
    if "crash" in kinds:
        for _ in range(rng.randint(1, 5)):
            at = rng.randint(100, safety_ms - 100)
            # Mostly a minority; sometimes everyone at once (a power cut): safety must hold
            # whatever crashes, and durability is what brings the data back.
            k = len(ids) if rng.random() < 0.15 else rng.randint(1, max(1, minority))
            victims = rng.sample(ids, k)
            down_ms = rng.randint(20, 1500)
            for v in victims:
                world.at(at, partial(world.crash, NodeId(v)))
                world.at(at + down_ms, partial(world.restart, NodeId(v)))
    if "reconfig" in kinds:
        at = rng.randint(50, 400)
        while at < safety_ms - 100:
            world.at(at, world.operate)
            at += rng.randint(50, 600)
    if "partition" in kinds:
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(50, safety_ms - 100)
            dur = rng.randint(100, 1500)
            side: set[int] = set(rng.sample(ids, rng.randint(1, len(ids) - 1)))
            rest: set[int] = set(ids) - side
            one_way = rng.random() < 0.3

            def start(
                side: set[int] = side, rest: set[int] = rest, one_way: bool = one_way
            ) -> None:
                world.network.partition(side, rest, one_way)
                world.stats.faults["partition-one-way" if one_way else "partition"] += 1
                world.log(f"PARTITION {sorted(side)} {'->' if one_way else '|'} {sorted(rest)}")

            def heal() -> None:
                world.network.heal()
                world.log("partition healed")

            world.at(at, start)
            world.at(at + dur, heal)


def run_seed(
    seed: int,
    nodes: int = 3,
    kinds: frozenset[str] = frozenset(FAULT_KINDS),
    safety_ms: int = 3000,
    converge_ms_max: int = 15000,
    bugs: frozenset[str] = frozenset(),
    trace: bool = False,
    runner_class: type[Runner[StateMachine]] = Runner,
    disk_class: type[SimDisk] = SimDisk,
    machine_class: type[StateMachine] = StateMachine,
    lease_clients: int | None = None,
    lock_clients: int | None = None,
) -> SeedResult:
    """Run one seed and check it. Never raises for a protocol failure: it is reported.

    ``runner_class``, ``disk_class`` and ``machine_class``: the host loop, disk and state
    machine each replica runs (tests plant broken ones to show the checks catch them)."""
    rng = random.Random(seed)
    opts = _options(rng, nodes, kinds, bugs)
    opts.trace_all = trace
    opts.runner_class = runner_class
    opts.disk_class = disk_class
    opts.machine_class = machine_class
    if lease_clients is not None:  # 0: the schedules of before lease clients existed
        opts.lease_clients = lease_clients
    # 0: the schedules of before lock clients existed.
    opts.lock_clients = LOCK_CLIENTS if lock_clients is None else lock_clients
    # Its own stream, so that seeds keep their fault plans: half the seeds pause the leader.
    opts.lease_pause = random.Random(seed * 31 + 7).random() < 0.5
    world = World(rng.getrandbits(64), opts)
    _plan_faults(world, rng, kinds, safety_ms)
    violation: Violation | None = None
    verdict = "not-checked"
    revisions_verdict = "not-checked"
    watch_verdict = "not-checked"
    watch_events = 0
    lease_verdict = "not-checked"
    lease_report: LeaseReport | None = None
    lock_verdict = "not-checked"
    lock_report: LockReport | None = None
    figures: RevisionReport | None = None
    converged_at: int | None = None
    try:
        try:
            world.run_until(safety_ms)
            _heal(world)
            if world.leases is not None:
                world.leases.heal_ms = world.now_ms
            world.run_until(safety_ms + 500)
            world.issuing = False
            deadline = world.now_ms + converge_ms_max
            while world.now_ms < deadline and not world.converged():
                world.run_until(world.now_ms + 50)
            world.check_convergence()
            converged_at = world.now_ms - safety_ms
            _check_durability(world)
            _final_reads(world)
            verdict = _check_linearizable(world)
            if world.locks is not None:
                # The lock clients ran through the faults and the healing (paused holders
                # resuming on the healed cluster); they stop before the leases' long wait.
                world.locks.stop()
            if world.leases is not None:
                # First: waiting out the leases writes their revokes, which the revision and
                # watch checks below must see in the log they replay.
                lease_report = world.leases.finish()
                lease_verdict = "ok"
            if world.locks is not None:
                world.locks.settle()  # the same for the lock clients' leases
            replay = revisions.replay(world.checker.decided)
            if world.locks is not None:
                # Before the revision checker: a write applied on a failed compare is the
                # lock checker's to name (the model disagrees with the replicas' revisions).
                lock_report = world.locks.check(replay)
                lock_verdict = "ok"
            rp, figures = revisions.check(
                world.checker.decided,
                [c.history for c in world.clients],
                world.recorder,
                replayed=replay,
            )
            revisions_verdict = "ok"
            if world.watches is not None:
                watch_events = _check_watches(world, rp)
                watch_verdict = "ok"
        except AssertionError as e:
            # A core invariant assert fired: in the daemon this crashes the process, here it
            # is the earliest evidence of the bug.
            raise Violation("invariant", str(e) or "assertion failed") from e
    except Violation as v:
        violation = v
        world.log(f"VIOLATION {v}")
        if v.prop == revisions.PROPERTY:
            revisions_verdict = "violation"
        elif v.prop == watches.PROPERTY:
            watch_verdict = "violation"
        elif v.prop.startswith("lease-"):
            lease_verdict = "violation"
        elif v.prop.startswith("lock-"):
            lock_verdict = "violation"
    n = world.network.counters
    faults = Counter(world.stats.faults)
    for outcome, count in world.stats.admin.items():
        faults[f"reconfig-{outcome}"] += count
    if "drop" in kinds:
        faults["drop"] = n.dropped
    if "dup" in kinds:
        faults["dup"] = n.duplicated
    if "delay" in kinds:
        faults["delay"] = n.sent - n.dropped - n.blocked
    return SeedResult(
        seed=seed,
        nodes=nodes,
        violation=violation,
        trace_tail=list(world.trace),
        sim_ms=world.now_ms,
        core_steps=world.stats.core_steps,
        decided_slots=len(world.checker.decided),
        client_ops=Counter(world.stats.client_ops),
        faults=faults,
        linearizability=verdict,
        converged_ms=converged_at,
        leases=lease_verdict,
        lease_report=lease_report,
        locks=lock_verdict,
        lock_report=lock_report,
        snapshot_restores=world.stats.snapshot_restores,
        snapshot_installs_in_pieces=world.stats.snapshot_installs_in_pieces,
        trace=world.trace_all,
        revisions=revisions_verdict,
        revision_figures=figures,
        watch=watch_verdict,
        watch_events=watch_events,
        watch_stats=world.watches.final_stats() if world.watches is not None else Counter(),
    )


def _heal(world: World) -> None:
    world.log("HEAL: network calm, partitions healed, every replica restarted")
    world.network.heal()
    world.network.calm()
    world.options.crash_mid_ready_probability = 0.0
    for nid, node in world.nodes.items():
        if not node.up:
            world.restart(nid)


def _final_reads(world: World) -> None:
    """Read every key linearizably at the end: an acknowledged write lost by a crash shows up here
    as a read the linearizability checker cannot explain."""
    reader = SimClient(index=len(world.clients), client_id="final-reader", site="s1")
    world.clients.append(reader)
    world.issuing = False
    for key in KEYS:
        cmd = reader.begin(Get(key=key), world.now_ms, world.options.op_timeout_ms)
        world.checker.submitted.add(cmd)
        leader = world.leader()
        assert leader is not None, "converged without a leader"
        reader.target = leader.id
        world._send_attempt(reader)
        world.run_until(world.now_ms + world.options.op_timeout_ms + 1000, lambda: not reader.busy)
        last = reader.history[-1] if reader.history else None
        if reader.busy or last is None or last.outcome != "ok":
            raise Violation("convergence", f"final read of {key!r} did not complete after healing")


# How long the healed cluster has to bring every watcher up to the final revision.
WATCH_CATCH_UP_MS = 5000


def _check_watches(world: World, rp: revisions.Replay) -> int:
    """Give the watchers a bounded time to catch up on the healed cluster, then check every
    stream against the model's events (paxosd/sim/watches.py)."""
    driver = world.watches
    assert driver is not None
    final = rp.store.revision
    driver.heal()
    world.run_until(world.now_ms + WATCH_CATCH_UP_MS, lambda: driver.caught_up(final))
    return watches.check(driver.watchers, rp, final)


def _check_durability(world: World) -> None:
    """Every acknowledged command sits in a decided slot that every replica now holds, after
    whatever crashes the seed made."""
    top = min(n.replica.decided_through for n in world.member_nodes())
    for cmd in world.acknowledged:
        slot = world.checker.slot_of.get(cmd)
        if slot is None:
            raise Violation("durability", "a command was acknowledged but never decided")
        if slot > top:
            raise Violation(
                "durability",
                f"acknowledged command at slot {slot} is above a replica's decided prefix {top}",
            )


# Operations the per-key models of paxosd/sim/linearizability.py know.
_REGISTER_OPS = (Put, Get, Delete, Cas, Scan, Block, Unblock, Blocks, View)


def _register_history(world: World) -> list[Operation]:
    """What the per-key register model covers: operations on ``KEYS`` (the transactions and
    revision operations on ``TXN_KEYS`` are the revision checker's), with each scan's rows
    cut to ``KEYS``. ``KEYS`` sort first, so a scan's page always holds every one of them
    that its limit allows."""
    ops: list[Operation] = []
    for c in world.clients:
        for o in c.history:
            match o.op:
                case Put(key=k) | Get(key=k) | Delete(key=k) if k not in KEYS:
                    continue
                case Get(revision=r) if r:
                    continue
                case Scan(prefix="", revision=0):
                    if isinstance(o.result, Rows):
                        kept = tuple(r for r in o.result.rows if r.key in KEYS)
                        more = o.result.more and len(kept) == len(o.result.rows)
                        cut = msgspec.structs.replace(o.result, rows=kept, more=more)
                        o = replace(o, result=cut)
                case Scan():
                    continue
                case _ if not isinstance(o.op, _REGISTER_OPS):
                    continue
            ops.append(o)
    return ops


def _check_linearizable(world: World) -> str:
    history = _register_history(world)
    result = linearizability.check(history)
    if result.verdict == "violation":
        raise Violation("linearizability", f"{result.partition}: {result.explanation}")
    return result.verdict
