"""The Basic-Paxos race scenarios of the Paxos labs, on the real core.

Two of the replicas act as proposers: A (node 1) and B (node N), each with a value of its
own. Every replica is a real ``paxosd.core.replica.Replica``; a scenario is a deterministic
schedule that decides which in-flight message is delivered when, so each race the labs could
only hope to hit with ``sleep(random...)`` happens every time. Each scenario knows the value
Paxos' rules force and checks it against what the replicas did:

- "chosen" is computed from every vote the acceptors made durable (a value accepted by a
  majority at one ballot), independently of the learners;
- every replica that decided slot 1 must have decided that value, and after the schedule the
  winner's commit point is delivered so that every replica learns it.

A proposer puts its own value in slot 1 only when its phase 1 found no vote there: the core
re-proposes a reported vote by itself (Paxos Made Simple, P2c), and the driver submits the
proposer's value as a client command otherwise.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paxosd.core.config import CoreConfig
from paxosd.core.io import Campaign, ClientCommand, DurableState, Received, Tick
from paxosd.core.messages import (
    Accept,
    Accepted,
    CatchUpReply,
    CatchUpRequest,
    Heartbeat,
    Message,
    Nack,
    Prepare,
    Promise,
)
from paxosd.core.quorum import majority
from paxosd.core.replica import Role
from paxosd.core.types import ZERO_BALLOT, Ballot, NodeId, Value
from paxosd.sim.planted import replica_class

SLOT = 1
NODES_MIN = 3  # A, B and at least one acceptor that is neither
NODES_MAX = 9
LIVELOCK_ROUNDS_DEFAULT = 3
LIVELOCK_ROUNDS_MAX = 100
# Bounds that turn a schedule that keeps talking into a loud failure instead of a hang.
DRAIN_READIES_MAX = 64
SETTLE_PASSES_MAX = 20
# The timed half of "livelock": a simulated clock, ticks for everyone, random delays.
TICK_MS = 10
DELAY_MS_MIN = 1
DELAY_MS_MAX = 20
DECIDE_WITHIN_MS = 60_000

VALUE_A = b"A-value"
VALUE_B = b"B-value"

Pred = Callable[[NodeId, NodeId, Message], bool]


@dataclass(slots=True)
class ScenarioResult:
    """What a scenario did and whether the outcome is the one Paxos' rules require."""

    name: str
    nodes: int
    seed: int
    expected: str | None  # the value the rules force; None: no value may be chosen
    chosen: list[str]  # values accepted by a majority at one ballot (more than one = unsafe)
    decisions: dict[str, str | None]  # replica name -> the value it decided for slot 1
    ok: bool
    rule: str
    trace: list[str]
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "nodes": self.nodes,
            "seed": self.seed,
            "expected": self.expected,
            "chosen": self.chosen,
            "decisions": self.decisions,
            "ok": self.ok,
            "rule": self.rule,
            "facts": self.facts,
            "trace": self.trace,
        }


def show(value: Value) -> str:
    if value == ():
        return "no-op"
    return ",".join(c.decode(errors="replace") for c in value)


class Stage:
    """A cluster whose network is a list the schedule delivers from (like the core tests'
    harness), with a trace in the core's vocabulary and a record of every vote."""

    def __init__(
        self, nodes: int, seed: int = 0, planted_bugs: frozenset[str] = frozenset()
    ) -> None:
        assert NODES_MIN <= nodes <= NODES_MAX, f"nodes must be in {NODES_MIN}..{NODES_MAX}"
        self.n = nodes
        self.quorum = majority(nodes)
        self.members = tuple(NodeId(i) for i in range(1, nodes + 1))
        self.a, self.b = self.members[0], self.members[-1]
        self.rng = random.Random(seed)
        self.now_ms = 0
        cls = replica_class(planted_bugs)
        self.replicas = {
            m: cls(
                CoreConfig(node_id=m, members=self.members),
                random.Random(self.rng.getrandbits(64)),
                DurableState(promised=ZERO_BALLOT),
            )
            for m in self.members
        }
        self.disks = {m: DurableState(promised=ZERO_BALLOT) for m in self.members}
        self.inflight: list[tuple[NodeId, NodeId, Message]] = []
        self.trace: list[str] = []
        self.votes: list[tuple[NodeId, Ballot, Value]] = []
        self.decided: dict[NodeId, Value] = {}
        self.clock_in_trace = False

    # ------------------------------------------------------------------ naming and tracing

    def name(self, m: int) -> str:
        return "A" if m == self.a else "B" if m == self.b else f"n{m}"

    def names(self, ms: list[NodeId] | tuple[NodeId, ...]) -> str:
        return "{" + ", ".join(self.name(m) for m in ms) + "}"

    def log(self, line: str) -> None:
        prefix = f"{self.now_ms:>6}ms " if self.clock_in_trace else ""
        self.trace.append(prefix + line)

    def describe(self, msg: Message) -> str:
        match msg:
            case Prepare(ballot=b):
                return f"prepare {b}"
            case Promise(ballot=b, entries=entries):
                for e in entries:
                    if e.slot == SLOT and e.decided:
                        return f"promise {b}: slot 1 is decided = {show(e.value)}"
                    if e.slot == SLOT:
                        return f"promise {b}: voted {e.ballot} = {show(e.value)}"
                return f"promise {b}: no vote"
            case Accept(ballot=b, entries=entries, commit_through=c):
                vals = [show(e.value) for e in entries if e.slot == SLOT]
                what = f"slot 1 = {vals[0]}" if vals else "no new slot"
                return f"accept {b}: {what}" + (f", commit point {c}" if c else "")
            case Accepted(ballot=b, slots=slots):
                return f"accepted {b}" if slots else f"ack {b}"
            case Nack(ballot=b, promised=p):
                return f"nack {b}: promised {p}"
            case Heartbeat(ballot=b, commit_through=c):
                return f"heartbeat {b}, commit point {c}"
            case CatchUpRequest(from_slot=lo, to_slot=hi):
                return f"catch-up request slots {lo}..{hi}"
            case CatchUpReply(entries=entries):
                return "catch-up reply " + ", ".join(
                    f"slot {e.slot} = {show(e.value)}" for e in entries
                )
        return type(msg).__name__  # pragma: no cover - the union is exhausted above

    # ------------------------------------------------------------------ driving the core

    def step(self, m: NodeId, event: Received | Tick | ClientCommand) -> None:
        r = self.replicas[m]
        before = (r.role, r.ballot)
        r.step(event)
        self._drain(m)
        if (r.role, r.ballot) != before:
            self._role_changed(m, before[0])

    def _role_changed(self, m: NodeId, was: Role) -> None:
        r = self.replicas[m]
        if r.role is Role.CANDIDATE:
            self.log(f"{self.name(m)} campaigns: phase 1 at ballot {r.ballot}")
        elif r.role is Role.LEADER:
            self.log(f"{self.name(m)} has a majority of promises: leads at ballot {r.ballot}")
        elif was is not Role.FOLLOWER:
            wait = r.election_deadline_ms - self.now_ms
            self.log(
                f"{self.name(m)} steps down (pre-empted at {r.ballot}); "
                f"its next election timer fires in {wait} ms"
            )

    def _drain(self, m: NodeId) -> None:
        r = self.replicas[m]
        for _ in range(DRAIN_READIES_MAX):
            if not r.has_ready():
                return
            rd = r.ready()
            self.disks[m].apply(rd.persist)  # persist, then send: the core's contract
            for a in rd.persist.accepted:
                if a.slot == SLOT:
                    self.votes.append((m, a.ballot, a.value))
            for d in rd.persist.decided:
                if d.slot == SLOT:
                    self.decided[m] = d.value
                    self.log(f"{self.name(m)} decides slot 1 = {show(d.value)}")
            outs = rd.early_messages + rd.messages
            self.inflight.extend((m, out.dst, out.msg) for out in outs)
            r.advance(rd)
        raise AssertionError(f"{self.name(m)} kept producing output")

    def campaign(self, m: NodeId) -> None:
        """Make ``m`` run phase 1 now (the schedule, not the clock, picks the moment): a
        forced election, so acceptors answer though they may still hear a leader."""
        self.replicas[m].step(Campaign())
        self.step(m, Tick(self.now_ms))

    def propose_own(self, m: NodeId, value: bytes) -> None:
        """If ``m`` leads and its phase 1 left slot 1 free, its client's value goes there."""
        r = self.replicas[m]
        if not r.is_leader:
            return
        mine = r.accepted.get(SLOT)
        if mine is not None and mine.ballot == r.ballot:
            if mine.value == (value,):
                why = "its own value again, as the highest-ballot vote its promises reported"
            else:
                why = f"the highest-ballot vote its promises reported, not its own {value.decode()}"
            self.log(f"{self.name(m)} must propose {show(mine.value)}: {why}")
            return
        self.log(f"{self.name(m)}'s phase 1 found no vote for slot 1: it proposes {value.decode()}")
        self.step(m, ClientCommand(value))

    def deliver(self, pred: Pred, order: tuple[NodeId, ...] | None = None) -> int:
        """Deliver the in-flight messages that match, once each (not what they cause), in
        the order of their senders in ``order`` if given. Returns how many."""
        batch = [x for x in self.inflight if pred(*x)]
        self.inflight = [x for x in self.inflight if not pred(*x)]
        if order is not None:
            batch.sort(key=lambda x: order.index(x[0]) if x[0] in order else len(order))
        for src, dst, msg in batch:
            self.log(f"  {self.name(src):>3} -> {self.name(dst):<3} {self.describe(msg)}")
            self.step(dst, Received(src, msg))
        return len(batch)

    def drop(self, pred: Pred, why: str) -> None:
        """Lose matching messages. Heartbeats and acks are counted, not listed: they are not
        part of the labs' protocol and would bury the messages that matter."""
        lost = [x for x in self.inflight if pred(*x)]
        self.inflight = [x for x in self.inflight if not pred(*x)]
        quiet = 0
        for src, dst, msg in lost:
            if isinstance(msg, Heartbeat) or _is_ack(msg):
                quiet += 1
                continue
            self.log(f"  {self.name(src):>3} -x {self.name(dst):<3} {self.describe(msg)} ({why})")
        if quiet:
            self.log(f"  ({quiet} heartbeats and acks in flight are dropped too: {why})")

    def learn(self, winner: NodeId) -> None:
        """Let every replica learn the outcome: what is still in flight is stale and lost,
        then the winner's next heartbeat carries its commit point (and catch-up fills in)."""
        self.drop(lambda s, d, m: True, "stale, lost")
        self.log(f"{self.name(winner)}'s heartbeat tells every replica how far it may commit:")
        self.now_ms += self.replicas[winner].config.heartbeat_interval_ms
        self.step(winner, Tick(self.now_ms))
        for _ in range(SETTLE_PASSES_MAX):
            if not self.deliver(lambda s, d, m: not _is_ack(m)):
                break
        self.inflight = []

    # ------------------------------------------------------------------ outcome

    def chosen(self) -> list[str]:
        """Values accepted by a majority at one ballot: Paxos' definition of chosen."""
        voters: dict[tuple[Ballot, Value], set[NodeId]] = {}
        for m, b, v in self.votes:
            voters.setdefault((b, v), set()).add(m)
        return sorted({show(v) for (_, v), who in voters.items() if len(who) >= self.quorum})

    def outcome(
        self, name: str, expected: bytes | None, rule: str, label: str = "rule", **facts: Any
    ) -> ScenarioResult:
        chosen = self.chosen()
        decisions = {self.name(m): None for m in self.members} | {
            self.name(m): show(v) for m, v in self.decided.items()
        }
        want = None if expected is None else show((expected,))
        if want is None:
            ok = chosen == [] and not self.decided
        else:
            ok = chosen == [want] and all(v == want for v in decisions.values())
        self.log(
            f"chosen: {', '.join(chosen) or 'nothing'}; decided: "
            + ", ".join(f"{k}={v or '-'}" for k, v in decisions.items())
        )
        if not ok:
            self.log(f"UNEXPECTED: Paxos' rules require {want or 'no decision'} here")
        self.log(f"{label}: {rule}")
        return ScenarioResult(
            name=name,
            nodes=self.n,
            seed=0,
            expected=want,
            chosen=chosen,
            decisions=decisions,
            ok=ok,
            rule=rule,
            trace=self.trace,
            facts=facts,
        )


def _is_ack(msg: Message) -> bool:
    return isinstance(msg, Accepted) and not msg.slots


def frm(src: NodeId, kind: type, dsts: tuple[NodeId, ...] | None = None) -> Pred:
    """Messages of ``kind`` sent by ``src`` (to ``dsts`` if given)."""
    return lambda s, d, m: s == src and isinstance(m, kind) and (dsts is None or d in dsts)


def to(dst: NodeId, kind: type, srcs: tuple[NodeId, ...] | None = None) -> Pred:
    return lambda s, d, m: d == dst and isinstance(m, kind) and (srcs is None or s in srcs)


# ---------------------------------------------------------------------------- scenarios


def single(
    nodes: int = 3, seed: int = 0, planted_bugs: frozenset[str] = frozenset()
) -> ScenarioResult:
    st = Stage(nodes, seed, planted_bugs)
    a = st.a
    st.log(f"{nodes} acceptors {st.names(st.members)}, majority {st.quorum}; A proposes alone")
    st.campaign(a)
    st.deliver(frm(a, Prepare))
    st.deliver(to(a, Promise))
    st.propose_own(a, VALUE_A)
    st.deliver(frm(a, Accept))
    st.deliver(to(a, Accepted))
    st.learn(a)
    return st.outcome(
        "single",
        VALUE_A,
        "with no competing proposer, A's phase 1 finds no vote, so A proposes its own value "
        "and a majority accepting it at one ballot makes it chosen (Paxos Made Simple, 2.2).",
    )


def a_wins(
    nodes: int = 3, seed: int = 0, planted_bugs: frozenset[str] = frozenset()
) -> ScenarioResult:
    st = Stage(nodes, seed, planted_bugs)
    a, b, q, ms = st.a, st.b, st.quorum, st.members
    a_side = ms[:q]  # A's accept majority: A and the acceptors next to it
    b_side = ms[-q:]  # B's promise majority: B and the acceptors next to it
    both = tuple(m for m in a_side if m in b_side)
    st.log(
        f"{nodes} acceptors {st.names(ms)}, majority {q}. A's accept reaches {st.names(a_side)} "
        f"before B's prepare reaches {st.names(b_side)}"
    )
    st.campaign(a)
    st.deliver(frm(a, Prepare))
    st.deliver(to(a, Promise))
    st.propose_own(a, VALUE_A)
    st.deliver(frm(a, Accept, a_side))
    st.deliver(to(a, Accepted))
    st.log(f"A's value is chosen: {st.names(a_side)} accepted it at one ballot, a majority")
    st.campaign(b)
    st.deliver(frm(b, Prepare, b_side))
    st.deliver(to(b, Promise))
    st.propose_own(b, VALUE_B)
    st.log("A's accepts to the other acceptors arrive late:")
    st.deliver(frm(a, Accept))
    st.deliver(to(a, Nack))
    st.deliver(frm(b, Accept))
    st.deliver(to(b, Accepted))
    st.learn(b)
    return st.outcome(
        "a-wins",
        VALUE_A,
        f"A's value was chosen by {st.names(a_side)}; every majority intersects it, so B's "
        f"promises (from {st.names(b_side)}, sharing {st.names(both)}) reported it, and a "
        "proposer must propose the highest-ballot value its promises report (P2c): B "
        "proposed A's value.",
        a_majority=[st.name(m) for m in a_side],
        b_majority=[st.name(m) for m in b_side],
    )


def b_wins(
    nodes: int = 3, seed: int = 0, planted_bugs: frozenset[str] = frozenset()
) -> ScenarioResult:
    st = Stage(nodes, seed, planted_bugs)
    a, b, q, ms = st.a, st.b, st.quorum, st.members
    b_side = ms[-q:]
    st.log(
        f"{nodes} acceptors {st.names(ms)}, majority {q}. B's prepare reaches "
        f"{st.names(b_side)} before A's accept requests do"
    )
    st.campaign(a)
    st.deliver(frm(a, Prepare))
    st.deliver(to(a, Promise))
    st.propose_own(a, VALUE_A)
    st.log("A's accept requests are delayed; meanwhile B campaigns:")
    st.campaign(b)
    st.deliver(frm(b, Prepare, b_side))
    st.deliver(to(b, Promise))
    st.propose_own(b, VALUE_B)
    st.log("A's accept requests arrive now:")
    st.deliver(frm(a, Accept))
    st.deliver(to(a, Nack))
    st.deliver(to(a, Accepted))
    st.deliver(frm(b, Accept))
    st.deliver(to(b, Accepted))
    st.learn(b)
    return st.outcome(
        "b-wins",
        VALUE_B,
        f"B's prepare had made {st.names(b_side)} promise a higher ballot, and an acceptor "
        "rejects accept requests below its promise (P1a), so A's value never reached a "
        "majority; none of B's promises reported a vote, so B was free to propose its own "
        "value.",
        b_majority=[st.name(m) for m in b_side],
    )


def b_wins_late(
    nodes: int = 5, seed: int = 0, planted_bugs: frozenset[str] = frozenset()
) -> ScenarioResult:
    st = Stage(nodes, seed, planted_bugs)
    a, b, q, ms = st.a, st.b, st.quorum, st.members
    a_side = ms[: q - 1]  # a minority: A itself and q-2 acceptors
    holder = a_side[-1]  # the acceptor holding A's vote that B's majority includes
    b_side = (holder, *ms[-(q - 1) :])
    st.log(
        f"{nodes} acceptors {st.names(ms)}, majority {q}. A's value reaches only "
        f"{st.names(a_side)}; B's prepare then reaches {st.names(b_side)}"
    )
    st.campaign(a)
    st.deliver(frm(a, Prepare))
    st.deliver(to(a, Promise))
    st.propose_own(a, VALUE_A)
    st.deliver(frm(a, Accept, a_side))
    st.deliver(to(a, Accepted))
    st.log(f"A's value is accepted by {st.names(a_side)} only, a minority: not chosen (yet)")
    st.campaign(b)
    st.deliver(frm(b, Prepare, b_side))
    st.deliver(to(b, Promise), order=tuple(reversed(b_side)))
    st.propose_own(b, VALUE_B)
    st.log("A's remaining accept requests arrive late or never:")
    st.deliver(frm(a, Accept, b_side))
    st.drop(frm(a, Accept), "lost")
    st.deliver(to(a, Nack))
    st.deliver(frm(b, Accept))
    st.deliver(to(b, Accepted))
    st.learn(b)
    return st.outcome(
        "b-wins-late",
        VALUE_A,
        f"B won the ballot, but {st.name(holder)} in its majority reported A's vote; B cannot "
        "tell a minority vote from a chosen value, so P2c makes it propose the highest-ballot "
        "value its promises report: A's value is chosen, at B's ballot.",
        a_minority=[st.name(m) for m in a_side],
        b_majority=[st.name(m) for m in b_side],
    )


def livelock(
    nodes: int = 3,
    seed: int = 0,
    planted_bugs: frozenset[str] = frozenset(),
    rounds: int = LIVELOCK_ROUNDS_DEFAULT,
) -> ScenarioResult:
    assert 1 <= rounds <= LIVELOCK_ROUNDS_MAX, f"rounds must be in 1..{LIVELOCK_ROUNDS_MAX}"
    part1 = _duel_without_backoff(nodes, seed, planted_bugs, rounds)
    part2 = _race_with_backoff(nodes, seed, planted_bugs)
    ok = part1.ok and part2.ok
    trace = [
        f"part 1: no back-off, each pre-empted proposer prepares again at once ({rounds} rounds)",
        *part1.trace,
        "part 2: the same two eager proposers with paxosd's randomized election timeouts and "
        f"back-off (seed {seed})",
        *part2.trace,
        "rule: Paxos is always safe but not always live (FLP): two proposers that pre-empt "
        "each other forever never finish phase 2; randomized, backed-off election timeouts "
        "let one of them finish both phases alone, and it decides.",
    ]
    return ScenarioResult(
        name="livelock",
        nodes=nodes,
        seed=seed,
        expected=None,
        chosen=part2.chosen,
        decisions=part2.decisions,
        ok=ok,
        rule=trace[-1].removeprefix("rule: "),
        trace=trace,
        facts={
            "rounds_without_backoff": rounds,
            "decided_without_backoff": bool(part1.chosen)
            or any(v is not None for v in part1.decisions.values()),
            "chosen_without_backoff": part1.chosen,
            "decided_with_backoff": bool(part2.chosen),
            "decided_at_ms": part2.facts.get("decided_at_ms"),
            "elections_with_backoff": part2.facts.get("elections"),
            "without_backoff_ok": part1.ok,
            "with_backoff_ok": part2.ok,
        },
    )


def _duel_without_backoff(
    nodes: int, seed: int, planted_bugs: frozenset[str], rounds: int
) -> ScenarioResult:
    st = Stage(nodes, seed, planted_bugs)
    a, b, q, ms = st.a, st.b, st.quorum, st.members
    side = {a: ms[:q], b: ms[-q:]}
    value = {a: VALUE_A, b: VALUE_B}
    st.campaign(a)
    st.deliver(frm(a, Prepare))
    st.deliver(to(a, Promise), order=side[a])
    st.propose_own(a, VALUE_A)
    x, y = a, b
    for i in range(1, rounds + 1):
        st.log(f"round {i}: {st.name(y)} pre-empts {st.name(x)} before its accepts land")
        st.campaign(y)
        st.deliver(frm(y, Prepare))
        st.deliver(to(y, Promise), order=tuple(reversed(side[y])) if y == b else side[y])
        st.propose_own(y, value[y])
        st.deliver(frm(x, Accept))
        st.deliver(to(x, Nack))
        st.deliver(to(x, Accepted))
        x, y = y, x
    st.drop(lambda s, d, m: True, "the run stops here")
    return st.outcome(
        "livelock-no-backoff",
        None,
        f"after {rounds} rounds of pre-emption no value is chosen and nothing is decided",
        label="part 1 outcome",
    )


def _race_with_backoff(nodes: int, seed: int, planted_bugs: frozenset[str]) -> ScenarioResult:
    """Both proposers campaign at the same instant; from then on only the core's timers act:
    every replica is ticked every TICK_MS of simulated time, every message takes a seeded
    random delay, and a proposer that loses waits for its randomized, backed-off timeout."""
    st = Stage(nodes, seed, planted_bugs)
    st.clock_in_trace = True
    a, b = st.a, st.b
    value = {a: VALUE_A, b: VALUE_B}
    elections = 0
    queue: list[tuple[int, int, NodeId, NodeId, Message | None]] = []
    seq = 0
    sent = 0

    def post_new() -> None:
        nonlocal seq, sent
        for src, dst, msg in st.inflight:
            seq += 1
            delay = st.rng.randint(DELAY_MS_MIN, DELAY_MS_MAX)
            heapq.heappush(queue, (st.now_ms + delay, seq, src, dst, msg))
        sent += len(st.inflight)
        st.inflight = []

    def after_step(m: NodeId) -> None:
        if m in value and _leading_with_free_slot(st, m):
            st.propose_own(m, value[m])
        post_new()

    for m in (a, b):
        st.campaign(m)
        elections += 1
        post_new()
    for m in st.members:
        seq += 1
        heapq.heappush(queue, (TICK_MS, seq, m, m, None))
    while queue and len(st.decided) < nodes:
        t, _, src, dst, msg = heapq.heappop(queue)
        if t > DECIDE_WITHIN_MS:
            break
        st.now_ms = t
        r = st.replicas[dst]
        ballot_before = r.ballot
        if msg is None:
            st.step(dst, Tick(t))
            seq += 1
            heapq.heappush(queue, (t + TICK_MS, seq, dst, dst, None))
        else:
            if not (isinstance(msg, Heartbeat) or _is_ack(msg)):  # liveness chatter
                st.log(f"  {st.name(src):>3} -> {st.name(dst):<3} {st.describe(msg)}")
            st.step(dst, Received(src, msg))
        if r.role is Role.CANDIDATE and r.ballot != ballot_before:
            elections += 1
        after_step(dst)
    decided_at = st.now_ms if len(st.decided) == nodes else None
    # Either proposer may win the race; what the rules require is that exactly one of the
    # two values is chosen and that every replica decided it.
    chosen = st.chosen()
    proposed = {show((VALUE_A,)): VALUE_A, show((VALUE_B,)): VALUE_B}
    expected = proposed.get(chosen[0]) if len(chosen) == 1 else None
    res = st.outcome(
        "livelock-backoff",
        expected if expected is not None else b"one of A-value, B-value",
        "one proposer finished both phases alone; every replica decided its value",
        label="part 2 outcome",
    )
    res.ok = res.ok and decided_at is not None
    res.facts = {"decided_at_ms": decided_at, "elections": elections, "messages": sent}
    return res


def _leading_with_free_slot(st: Stage, m: NodeId) -> bool:
    r = st.replicas[m]
    if not r.is_leader or SLOT in r.decided:
        return False
    mine = r.accepted.get(SLOT)
    return mine is None or mine.ballot != r.ballot


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    nodes_default: int
    expected: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("single", "one proposer, no contention: A's value is chosen", 3, "A-value"),
        Scenario(
            "a-wins",
            "A's accept reaches a majority before B's prepare; B adopts A's value",
            3,
            "A-value",
        ),
        Scenario(
            "b-wins",
            "B's prepare reaches a majority before A's accepts, which are rejected",
            3,
            "B-value",
        ),
        Scenario(
            "b-wins-late",
            "A's value reached a minority; B's majority includes one holder, B adopts it",
            5,
            "A-value",
        ),
        Scenario(
            "livelock",
            "two proposers pre-empt each other forever; then paxosd's back-off decides",
            3,
            "no decision, then one",
        ),
    )
}


def run_scenario(
    name: str,
    nodes: int | None = None,
    seed: int = 0,
    rounds: int | None = None,
    planted_bugs: frozenset[str] = frozenset(),
) -> ScenarioResult:
    """Run one scenario by name (see SCENARIOS). Deterministic for given arguments."""
    spec = SCENARIOS[name]
    n = spec.nodes_default if nodes is None else nodes
    if name == "livelock":
        return livelock(
            n, seed, planted_bugs, LIVELOCK_ROUNDS_DEFAULT if rounds is None else rounds
        )
    run = {"single": single, "a-wins": a_wins, "b-wins": b_wins, "b-wins-late": b_wins_late}[name]
    res = run(n, seed, planted_bugs)
    res.seed = seed
    return res
