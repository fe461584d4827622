"""Elections per fault: one classified fault at a time in an otherwise healthy cluster.

Each election stalls writes for an election timeout or more, so the liveness question is
not only "is there a leader eventually" but "which faults cost one". A fault that touches
only a follower (it restarts, stalls, or is cut off alone and comes back) must cost none: the
leader the others hear keeps leading (pre-vote + stickiness in ``paxosd.core.replica``). A
fault that takes the leader away must cost at least one, and quickly.

A run: a calm network, a few clients writing and reading, a leader elected; then exactly one
fault of the given kind, held long enough that the victim's election timer fires (longer
than election_timeout_ms_max), then healed; then the cluster must converge and pass the
same checks as every fuzz seed (agreement, durability, linearizability). Elections are
counted from the fault on: every time a node wins a ballot higher than any won before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from paxosd.core.messages import Message
from paxosd.core.replica import Replica
from paxosd.core.types import ZERO_BALLOT, Ballot, NodeId
from paxosd.sim.checker import Violation
from paxosd.sim.network import NetworkFaults
from paxosd.sim.run import _check_durability, _check_linearizable, _final_reads
from paxosd.sim.world import _TICK, SimNode, World, WorldOptions

# Fault kinds, and whether each one takes the leader away (>= 1 election expected) or
# touches a follower only (0 expected).
FOLLOWER_FAULTS = ("follower-restart", "follower-pause", "follower-partition")
LEADER_FAULTS = ("leader-kill", "leader-pause")
ELECTION_FAULTS = FOLLOWER_FAULTS + LEADER_FAULTS

WARMUP_MS_MAX = 5000
# After a restart, peers reach the node again only after their transport's reconnect
# back-off (up to this long). The daemon's transport dials back at once when the node calls
# in, but the core must not depend on that: this is what made restarted followers campaign.
RECONNECT_MS_MAX = 1500
SETTLE_MS = 3000
CONVERGE_MS_MAX = 15000


class ElectionWorld(World):
    """A World that can also pause a node (SIGSTOP: it neither ticks nor reads, and what is
    sent to it waits in its socket buffers), and that counts elections won."""

    def __init__(self, seed: int, options: WorldOptions) -> None:
        self.paused: set[NodeId] = set()
        self._held: dict[NodeId, list[tuple[NodeId, Message]]] = {}
        # node -> until when its peers' messages do not reach it (reconnect back-off).
        self._unreachable_until: dict[NodeId, int] = {}
        self.top_ballot: Ballot = ZERO_BALLOT
        self.counting = False
        self.elections: list[tuple[int, NodeId, Ballot]] = []
        super().__init__(seed, options)

    def _drive(self, node: SimNode, first: Callable[[], object] | None = None) -> None:
        super()._drive(node, first)
        if not node.up:
            return
        r = node.replica
        if r.is_leader and r.ballot > self.top_ballot:
            self.top_ballot = r.ballot
            if self.counting:
                self.elections.append((self.now_ms, node.id, r.ballot))
                self.log(f"ELECTION n{node.id} leads at ballot {r.ballot}")

    def _tick(self, nid: NodeId) -> None:
        if nid in self.paused:
            self._schedule(self.options.tick_ms, _TICK, nid)
            return
        super()._tick(nid)

    def _deliver(self, dst: NodeId, src: NodeId, msg: Message) -> None:
        if self.now_ms < self._unreachable_until.get(dst, 0):
            return  # the sender's connection to it is not back yet
        if dst in self.paused:
            self._held.setdefault(dst, []).append((src, msg))
            return
        super()._deliver(dst, src, msg)

    def _client_send(self, nid: NodeId, ci: int, seq: int, attempt: int, cmd: bytes) -> None:
        if nid in self.paused:
            return  # the client times out and tries another node
        super()._client_send(nid, ci, seq, attempt, cmd)

    def restart(self, nid: NodeId) -> None:
        super().restart(nid)
        until = self.now_ms + self.rng.randint(0, RECONNECT_MS_MAX)
        self._unreachable_until[nid] = until
        self.log(f"n{nid} unreachable from its peers until {until}ms (reconnect back-off)")

    def pause(self, nid: NodeId) -> None:
        self.paused.add(nid)
        self.stats.faults["pause"] += 1
        self.log(f"n{nid} PAUSE")

    def resume(self, nid: NodeId) -> None:
        """The process runs again, its clock jumped by the pause. Its loop may see the timer
        first (the election timeout long past) or the messages that waited in its buffers
        first: either, as the seed says."""
        self.paused.discard(nid)
        node = self.nodes[nid]
        timer_first = self.rng.random() < 0.5
        self.log(f"n{nid} RESUME ({'timer' if timer_first else 'messages'} first)")
        if timer_first and node.up:
            self._drive(node, node.runner.tick)
        for src, msg in self._held.pop(nid, []):
            super()._deliver(nid, src, msg)

    def isolate(self, nid: NodeId) -> None:
        others = {int(n) for n in self.nodes if n != nid}
        self.network.partition({int(nid)}, others, one_way=False)
        self.stats.faults["partition"] += 1
        self.log(f"PARTITION n{nid} | {sorted(others)}")

    def heal(self) -> None:
        self.network.heal()
        self.log("partition healed")


@dataclass(slots=True)
class ElectionRun:
    seed: int
    kind: str
    elections: int
    violation: Violation | None
    trace_tail: list[str]
    victim: int = 0
    fault_ms: int = 0


def run_fault(
    seed: int,
    kind: str,
    nodes: int = 3,
    replica_type: type[Replica] = Replica,
    trace: bool = False,
) -> ElectionRun:
    """One run with one fault of ``kind`` (see ELECTION_FAULTS). Never raises for a protocol
    failure: it is reported in ``violation``."""
    assert kind in ELECTION_FAULTS, f"unknown fault kind {kind}"
    rng = random.Random(f"{seed}:{kind}")
    opts = WorldOptions(
        nodes=nodes,
        clients=2,
        faults=NetworkFaults(delay_ms_min=1, delay_ms_max=rng.randint(2, 10)),
        thrifty_accepts=rng.random() < 0.5,
        trace_all=trace,
        replica_class=replica_type,
    )
    world = ElectionWorld(rng.getrandbits(64), opts)
    violation: Violation | None = None
    victim = NodeId(0)
    fault_ms = 0
    try:
        try:
            world.run_until(WARMUP_MS_MAX, stop=lambda: _stable_leader(world))
            leader = world.leader()
            if leader is None:
                raise Violation("liveness", "no leader before the fault")
            # A little healthy traffic under this leader first.
            world.run_until(world.now_ms + rng.randint(100, 1000))
            leader = world.leader()
            if leader is None:
                raise Violation("liveness", "no leader before the fault")
            followers = sorted(n for n in world.nodes if n != leader.id)
            victim = leader.id if kind in LEADER_FAULTS else rng.choice(followers)
            fault_ms = world.now_ms
            # Long enough for the victim's election timer (or everyone's) to fire.
            timeout_max = world.configs[victim].election_timeout_ms_max
            held_ms = rng.randint(timeout_max + 100, 5 * timeout_max)
            world.counting = True
            _inject(world, kind, victim, held_ms)
            world.run_until(fault_ms + held_ms + SETTLE_MS)
            world.issuing = False
            deadline = world.now_ms + CONVERGE_MS_MAX
            while world.now_ms < deadline and not world.converged():
                world.run_until(world.now_ms + 50)
            world.check_convergence()
            _check_durability(world)
            _final_reads(world)
            _check_linearizable(world)
        except AssertionError as e:
            raise Violation("invariant", str(e) or "assertion failed") from e
    except Violation as v:
        violation = v
        world.log(f"VIOLATION {v}")
    return ElectionRun(
        seed=seed,
        kind=kind,
        elections=len(world.elections),
        violation=violation,
        trace_tail=list(world.trace_all if trace else world.trace),
        victim=int(victim),
        fault_ms=fault_ms,
    )


def _stable_leader(world: World) -> bool:
    leader = world.leader()
    return leader is not None and leader.replica.decided_through >= 1


def _inject(world: ElectionWorld, kind: str, victim: NodeId, held_ms: int) -> None:
    end = world.now_ms + held_ms
    if kind in ("follower-restart", "leader-kill"):
        world.crash(victim)
        world.at(end, lambda: world.restart(victim))
    elif kind in ("follower-pause", "leader-pause"):
        world.pause(victim)
        world.at(end, lambda: world.resume(victim))
    elif kind == "follower-partition":
        world.isolate(victim)
        world.at(end, world.heal)
    else:
        raise AssertionError(f"unknown fault kind {kind}")


@dataclass(slots=True)
class KindFigures:
    faults: int = 0
    elections: int = 0
    faults_with_election: int = 0
    elections_max: int = 0

    def add(self, elections: int) -> None:
        self.faults += 1
        self.elections += elections
        self.faults_with_election += elections > 0
        self.elections_max = max(self.elections_max, elections)

    def to_json(self) -> dict[str, object]:
        return {
            "faults": self.faults,
            "elections": self.elections,
            "elections_per_fault": round(self.elections / max(self.faults, 1), 3),
            "faults_with_an_election": self.faults_with_election,
            "faults_without_an_election": self.faults - self.faults_with_election,
            "elections_max": self.elections_max,
        }


@dataclass(slots=True)
class ElectionReport:
    nodes: int
    kinds: tuple[str, ...]
    seeds_run: int = 0
    wall_seconds: float = 0.0
    by_kind: dict[str, KindFigures] = field(default_factory=dict)
    failures: list[ElectionRun] = field(default_factory=list)
    # Follower-only faults that cost an election: the figure the design must keep at 0.
    follower_elections: list[ElectionRun] = field(default_factory=list)
    # Leader faults after which nobody new was elected (a leader fault must cost one).
    leader_without_election: list[ElectionRun] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        return not (self.failures or self.follower_elections or self.leader_without_election)

    def add(self, r: ElectionRun) -> None:
        self.by_kind.setdefault(r.kind, KindFigures()).add(r.elections)
        if r.violation is not None:
            self.failures.append(r)
        elif r.kind in FOLLOWER_FAULTS and r.elections > 0:
            self.follower_elections.append(r)
        elif r.kind in LEADER_FAULTS and r.elections == 0:
            self.leader_without_election.append(r)

    def to_json(self) -> dict[str, object]:
        def runs(rs: list[ElectionRun]) -> list[dict[str, object]]:
            return [
                {
                    "seed": r.seed,
                    "fault": r.kind,
                    "node": r.victim,
                    "elections": r.elections,
                    "replay": replay_command(r.seed, self.nodes, r.kind),
                }
                for r in rs[:20]
            ]

        return {
            "mode": "elections",
            "nodes": self.nodes,
            "seeds_run": self.seeds_run,
            "wall_seconds": round(self.wall_seconds, 3),
            "elections_per_fault": {
                k: self.by_kind.get(k, KindFigures()).to_json() for k in self.kinds
            },
            "follower_faults_with_an_election": runs(self.follower_elections),
            "leader_faults_without_an_election": runs(self.leader_without_election),
            "violations": [
                {
                    "seed": f.seed,
                    "fault": f.kind,
                    "property": f.violation.prop if f.violation else None,
                    "detail": f.violation.detail if f.violation else None,
                    "replay": replay_command(f.seed, self.nodes, f.kind),
                }
                for f in self.failures
            ],
        }


def replay_command(seed: int, nodes: int, kind: str) -> str:
    return f"paxosctl simulate --elections --seed {seed} --nodes {nodes} --faults {kind} --trace"


def elections_fuzz(
    seeds: int,
    nodes: int,
    kinds: tuple[str, ...] = ELECTION_FAULTS,
    first_seed: int = 0,
    replica_type: type[Replica] = Replica,
    progress: Callable[[ElectionReport], None] | None = None,
) -> ElectionReport:
    """Every seed runs one fault of every kind in ``kinds``."""
    assert seeds >= 1 and nodes >= 1
    assert set(kinds) <= set(ELECTION_FAULTS), f"unknown fault kinds {kinds}"
    report = ElectionReport(nodes=nodes, kinds=kinds)
    start = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        for kind in kinds:
            report.add(run_fault(seed, kind, nodes=nodes, replica_type=replica_type))
        report.seeds_run += 1
        report.wall_seconds = time.perf_counter() - start
        if progress is not None:
            progress(report)
    return report
