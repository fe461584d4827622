"""The synchronous-rounds experiment of the Paxos labs, on the real core.

The labs run binary consensus in lockstep rounds: the proposer of round r is node ``r mod N``;
it broadcasts START, nodes answer JOIN with their highest voted round and value, the proposer
PROPOSEs the value of the highest voted round among the joiners (else its own default) and
nodes VOTE. Every message a node sends is replaced by CRASH with probability P. Agreement
and Validity must hold whatever crashes; Termination is not promised.

Here every node is a real ``paxosd.core.replica.Replica`` (the daemon's code) and every round
runs Paxos on slot 1, driven message by message:

- START = Prepare, JOIN = Promise, PROPOSE = Accept, VOTE = Accepted. Round r uses ballot
  ``r.p``: the lockstep barrier of the labs gives every node the round number, which we model
  by telling the proposer, before it campaigns, that round r-1 happened (``ballot_seen``), so
  the core's own ballot choice lands exactly on round r.
- A proposer whose phase 1 found no vote for slot 1 proposes nothing by itself; the driver then
  submits the node's default as a client command, which the new leader puts in slot 1.
- Decisions do not travel between rounds. In the labs a node carries only its max voted
  round/value from one round to the next; likewise, at each round boundary every replica
  restarts through the core's recovery path from its durable acceptor state (promise and
  votes) without its learner log, heartbeats (and their commit points) are never delivered,
  and only a round's proposer learns that round's decision. So a later proposer must
  rediscover earlier votes through JOINs: Agreement across rounds tests Paxos' phase-1 rule,
  not a shortcut.
- The proposer's promise and vote to itself are local to the core (no message), so they never
  CRASH; in the labs the proposer also messages itself.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from paxosd.core.config import CoreConfig
from paxosd.core.io import (
    Campaign,
    ClientCommand,
    DurableState,
    Outbound,
    PersistRecord,
    Received,
)
from paxosd.core.messages import Accept, Accepted, Message, Nack, Prepare, Promise
from paxosd.core.quorum import majority
from paxosd.core.replica import Replica
from paxosd.core.types import ZERO_BALLOT, Ballot, NodeId, Value
from paxosd.sim.planted import replica_class

SLOT = 1
# A decided or proposed value: a default bit, or the text of anything that is not one.
Bit = int | str
NODES_MAX = 9
ROUNDS_MAX = 10_000
# A Ready chain inside one round is short (prepare, promise, accept, accepted); the bound
# turns a core that keeps talking into a loud failure instead of a hang.
DRAIN_READIES_MAX = 64

# The labs' names for the core's messages; anything else is not part of the experiment.
SEED_NAME: dict[type, str] = {
    Prepare: "START",
    Promise: "JOIN",
    Accept: "PROPOSE",
    Accepted: "VOTE",
    Nack: "NACK",
}


@dataclass(slots=True)
class RoundRecord:
    """What one round did, in the labs' terms."""

    round: int
    proposer: int
    ballot: str
    joins: list[int] = field(default_factory=list)
    votes: list[int] = field(default_factory=list)
    proposed: Bit | None = None
    # "default" (no joiner had voted) or "voted in round k" (adopted from the JOINs).
    proposal_source: str | None = None
    decided: Bit | None = None
    outcome: str = "no join quorum"

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "proposer": self.proposer,
            "ballot": self.ballot,
            "joins": self.joins,
            "votes": self.votes,
            "proposed": self.proposed,
            "proposal_source": self.proposal_source,
            "decided": self.decided,
            "outcome": self.outcome,
        }


@dataclass(slots=True)
class RoundsResult:
    nodes: int
    crash_probability: float
    rounds_run: int
    seed: int
    defaults: list[int]
    records: list[RoundRecord]
    trace: list[str]
    messages: Counter[str]
    agreement: bool
    validity: bool

    @property
    def decisions(self) -> list[tuple[int, Bit]]:
        """(round, value) for every round that decided."""
        return [(r.round, r.decided) for r in self.records if r.decided is not None]

    @property
    def decided(self) -> bool:
        return bool(self.decisions)

    @property
    def decided_value(self) -> Bit | None:
        d = self.decisions
        return d[0][1] if d else None

    @property
    def ok(self) -> bool:
        """Agreement and Validity; Termination is reported, never required."""
        return self.agreement and self.validity

    def summary(self) -> list[str]:
        quorum = majority(self.nodes)
        rounds = ", ".join(f"round {r} -> {v}" for r, v in self.decisions) or "none"
        values = sorted({str(v) for _, v in self.decisions})
        agreement = "holds" if self.agreement else f"VIOLATED (decided values {values})"
        validity = (
            "holds"
            if self.validity
            else f"VIOLATED (decided {values}, defaults were {self.defaults})"
        )
        if self.decided:
            termination = f"not guaranteed; this run decided {self.decided_value}"
        else:
            termination = "not guaranteed; this run did NOT decide (no round got a vote quorum)"
        return [
            f"decisions: {rounds}",
            f"Agreement: {agreement}",
            f"Validity: {validity}",
            f"Termination: {termination}",
            f"({self.nodes} nodes, quorum {quorum}, crash probability {self.crash_probability}, "
            f"{self.rounds_run} rounds, seed {self.seed}; messages {dict(self.messages)})",
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": "rounds",
            "nodes": self.nodes,
            "quorum": majority(self.nodes),
            "crash_probability": self.crash_probability,
            "rounds": self.rounds_run,
            "seed": self.seed,
            "defaults": self.defaults,
            "decided": self.decided,
            "decided_value": self.decided_value,
            "decisions": [{"round": r, "value": v} for r, v in self.decisions],
            "agreement": self.agreement,
            "validity": self.validity,
            "termination_guaranteed": False,
            "messages": dict(self.messages),
            "round_log": [r.to_json() for r in self.records],
            "trace": self.trace,
        }


def encode(bit: int) -> bytes:
    return str(bit).encode()


def decode(value: Value) -> Bit:
    """A slot-1 value is one command, a proposer's default bit. Anything else (a no-op from
    a faulty leader) is kept visible as text, so Validity can reject it instead of crashing."""
    if len(value) == 1 and value[0] in (b"0", b"1"):
        return int(value[0])
    return "no-op" if value == () else repr(value)


class _Rounds:
    def __init__(
        self, nodes: int, crash_probability: float, seed: int, planted_bugs: frozenset[str]
    ) -> None:
        self.n = nodes
        self.p = crash_probability
        self.seed = seed
        # One stream for the experiment (defaults, then every crash draw in message order),
        # so a seed replays the same run; replicas get their own (the core only uses it for
        # election timeouts, which this experiment never waits for).
        self.rng = random.Random(seed)
        self.defaults = [self.rng.randint(0, 1) for _ in range(nodes)]
        self.members = tuple(NodeId(i) for i in range(nodes))
        self.configs = {m: CoreConfig(node_id=m, members=self.members) for m in self.members}
        self.replica_class = replica_class(planted_bugs)
        # Acceptor state only (promise and votes): see the module docstring.
        self.disks = {m: DurableState(promised=ZERO_BALLOT) for m in self.members}
        self.replicas: dict[NodeId, Replica] = {}
        self.trace: list[str] = []
        self.messages: Counter[str] = Counter()

    # ------------------------------------------------------------------ plumbing

    def restart_all(self, round_: int) -> None:
        for m in self.members:
            d = self.disks[m]
            durable = DurableState(promised=d.promised, accepted=dict(d.accepted))
            rng = random.Random(self.seed * 1_000_003 + round_ * 16 + m)
            self.replicas[m] = self.replica_class(self.configs[m], rng, durable)

    def drain(self, m: NodeId) -> tuple[list[Outbound], Value | None]:
        """Persist and collect one replica's output; returns its messages and, if it just
        learned slot 1, the value."""
        r = self.replicas[m]
        out: list[Outbound] = []
        learned: Value | None = None
        for _ in range(DRAIN_READIES_MAX):
            if not r.has_ready():
                return out, learned
            rd = r.ready()
            p = rd.persist
            self.disks[m].apply(PersistRecord(promised=p.promised, accepted=p.accepted))
            out.extend(rd.early_messages)
            out.extend(rd.messages)
            for d in p.decided:
                if d.slot == SLOT:
                    learned = d.value
            assert not rd.redirects, f"node {m} refused a command it was asked to order"
            r.advance(rd)
        raise AssertionError(f"node {m} kept producing output")

    def send(self, out: Outbound, src: NodeId) -> bool:
        """The labs' unreliable send: with probability P the node sends CRASH instead.
        Returns whether the message is delivered."""
        name = SEED_NAME.get(type(out.msg))
        if name is None:
            return False  # heartbeats and catch-up are not part of the experiment: withheld
        if self.rng.random() < self.p:
            self.messages["CRASH"] += 1
            self.trace.append(f"  {'CRASH':<11} {src} -> {out.dst}   instead of {name}")
            return False
        self.messages[name] += 1
        self.trace.append(f"  {name:<11} {src} -> {out.dst}{_detail(out.msg)}")
        return True

    def exchange(
        self, src: NodeId, outs: list[Outbound], kind: type
    ) -> list[tuple[NodeId, Outbound]]:
        """One lockstep phase: ``src`` broadcasts its ``kind`` messages (each may CRASH), every
        recipient handles its copy, then the replies travel back (each may CRASH). Returns the
        delivered replies with their senders, in node order."""
        replies: list[tuple[NodeId, Outbound]] = []
        for out in outs:
            if isinstance(out.msg, kind) and self.send(out, src):
                self.replicas[out.dst].step(Received(src, out.msg))
                sent, _ = self.drain(out.dst)
                replies.extend((out.dst, r) for r in sent)
        return [(s, r) for s, r in replies if self.send(r, s)]

    # ------------------------------------------------------------------ one round

    def run_round(self, round_: int) -> RoundRecord:
        n = self.n
        p = NodeId(round_ % n)
        rec = RoundRecord(round=round_, proposer=p, ballot=str(Ballot(round_, p)))
        self.trace.append(f"round {round_}: proposer {p}, ballot {rec.ballot}")
        self.restart_all(round_)
        prop = self.replicas[p]
        # The barrier: the proposer knows round r-1 happened, so its next ballot is r.p.
        prop.ballot_seen = max(prop.ballot_seen, Ballot(round_ - 1, 0))
        own = prop.accepted.get(SLOT)
        if own is not None:
            self.trace.append(
                f"  {'(own vote)':<11} {p}        maxVotedRound={own.ballot.round} "
                f"maxVotedValue={decode(own.value)}   (local to the core, never a message)"
            )
        prop.step(Campaign())  # the proposer starts its round at will (no pre-vote, no timer)
        assert prop.ballot == Ballot(round_, p), f"ballot {prop.ballot} is not round {round_}"

        # Phase 1: START to everyone, JOINs back; the proposer counts its own promise.
        starts, _ = self.drain(p)
        joins_in = [
            (reply.dst, src, reply.msg)
            for src, reply in self.exchange(p, starts, Prepare)
            if isinstance(reply.msg, Promise)
        ]
        rec.joins = [p]
        best: tuple[Ballot, Bit] | None = None
        if own is not None:
            best = (own.ballot, decode(own.value))
        held: list[Outbound] = []
        for _, src, promise in joins_in:
            if prop.is_leader:
                self.trace.append(f"  (JOIN from {src} arrived after the quorum; not needed)")
                continue
            rec.joins.append(src)
            for e in promise.entries:
                if e.slot == SLOT and (best is None or e.ballot > best[0]):
                    best = (e.ballot, decode(e.value))
            prop.step(Received(src, promise))
            out, _ = self.drain(p)
            held.extend(out)
        if not prop.is_leader:
            self.trace.append(
                f"  {'ROUNDCHANGE':<11} {p} -> all   joined: {_count(rec.joins, n)}: no quorum"
            )
            return rec

        # Phase 2. The core proposes a vote it found; if none, it waits for a command.
        mine = prop.accepted.get(SLOT)
        if mine is None or mine.ballot != prop.ballot:
            prop.step(ClientCommand(encode(self.defaults[p])))
            out, _ = self.drain(p)
            held.extend(out)
        mine = prop.accepted.get(SLOT)
        assert mine is not None and mine.ballot == prop.ballot, "leader did not propose slot 1"
        rec.proposed = decode(mine.value)
        if best is None:
            rec.proposal_source = "default"
            why = "no joiner had voted: its own default"
        else:
            rec.proposal_source = f"voted in round {best[0].round}"
            why = f"the value of the highest voted round among the joiners, {best[0].round}"
        self.trace.append(f"  joined: {_count(rec.joins, n)}; proposes {rec.proposed}, {why}")
        votes_in = [
            (src, reply.msg)
            for src, reply in self.exchange(p, held, Accept)
            if isinstance(reply.msg, Accepted)
        ]
        rec.votes = [p]
        learned: Value | None = prop.decided.get(SLOT)
        for src, accepted in votes_in:
            rec.votes.append(src)
            prop.step(Received(src, accepted))
            _, got = self.drain(p)
            learned = got if got is not None else learned
        if learned is None:
            self.trace.append(
                f"  {'ROUNDCHANGE':<11} {p} -> all   voted: {_count(rec.votes, n)}: no quorum"
            )
            rec.outcome = "no vote quorum"
            return rec
        rec.decided = decode(learned)
        rec.outcome = "decided"
        self.trace.append(
            f"  {'DECIDE':<11} {p}        value={rec.decided}   voted: {_count(rec.votes, n)}"
        )
        return rec


def _count(who: list[int], n: int) -> str:
    """The proposer comes first: its own promise and vote are local, never messages."""
    return f"{', '.join(map(str, who))} ({len(who)} of {n}, quorum {majority(n)})"


def _detail(msg: Message) -> str:
    match msg:
        case Prepare(ballot=b):
            return f"   ballot {b}"
        case Promise(entries=entries):
            for e in entries:
                if e.slot == SLOT:
                    return f"   maxVotedRound={e.ballot.round} maxVotedValue={decode(e.value)}"
            return "   maxVotedRound=none maxVotedValue=none"
        case Accept(entries=entries):
            values = [decode(e.value) for e in entries if e.slot == SLOT]
            return f"   value={values[0]}" if values else ""
        case Accepted(ballot=b):
            return f"   ballot {b}"
        case Nack(promised=b):
            return f"   promised {b}"
        case _:
            return ""


def run_rounds(
    nodes: int,
    crash_probability: float,
    rounds: int,
    seed: int = 0,
    planted_bugs: frozenset[str] = frozenset(),
) -> RoundsResult:
    """Run ``rounds`` lockstep rounds of binary consensus on slot 1 of ``nodes`` replicas.

    Deterministic: the same arguments give the same trace.
    """
    assert 1 <= nodes <= NODES_MAX, f"nodes must be in 1..{NODES_MAX}"
    assert 0.0 <= crash_probability <= 1.0, "crash probability is a probability"
    assert 1 <= rounds <= ROUNDS_MAX, f"rounds must be in 1..{ROUNDS_MAX}"
    ex = _Rounds(nodes, crash_probability, seed, planted_bugs)
    ex.trace.append("defaults: " + ", ".join(f"node {m}={v}" for m, v in enumerate(ex.defaults)))
    records = [ex.run_round(r) for r in range(1, rounds + 1)]
    decided = {r.decided for r in records if r.decided is not None}
    defaults: set[Bit] = set(ex.defaults)
    return RoundsResult(
        nodes=nodes,
        crash_probability=crash_probability,
        rounds_run=rounds,
        seed=seed,
        defaults=ex.defaults,
        records=records,
        trace=ex.trace,
        messages=ex.messages,
        agreement=len(decided) <= 1,
        validity=decided <= defaults,
    )
