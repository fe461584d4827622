"""What a replica holds only while it leads, in one object.

A candidate that wins phase 1 makes a ``LeaderState``; stepping down drops it
(``replica.leader = None``). Nothing here survives a change of leadership, so there is no
field-by-field reset to keep in step with the fields: a new leadership starts from a fresh
object, and a former leader cannot act on a stale pipeline by mistake.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from paxosd.core.readindex import ReadRounds
from paxosd.core.types import DecidedEntry, Membership, NodeId, Value


@dataclass(slots=True)
class LeaderState:
    """The proposer's pipeline, its followers' progress and its read-index rounds.

    Invariants (checked by ``check``): every slot with votes is proposed, in flight
    (``commit_through < slot < next_slot``) and has its voters recorded; at most one
    membership slot is undecided, and nothing is proposed above it until it is decided.
    """

    # Slots in [first_slot, commit_through] have a majority at our ballot (or were decided
    # before we led). ``commit_durable`` is that point as of the previous Ready, whose votes
    # are on disk: messages that leave before this Ready's persist say no more than it (with a
    # single voter the leader's own vote decides, and it is not durable until persist).
    commit_through: int
    next_slot: int
    commit_durable: int
    # Commands waiting for room in the pipeline (never proposed: redirected on step-down).
    queue: deque[bytes] = field(default_factory=deque)
    proposals: dict[int, Value] = field(default_factory=dict)  # slot -> value at our ballot
    # Bytes of the values proposed and not yet decided, per slot and in all: bounded so that
    # what an acceptor holds undecided always fits one promise.
    undecided_bytes: dict[int, int] = field(default_factory=dict)
    undecided_total: int = 0
    votes: dict[int, set[NodeId]] = field(default_factory=dict)  # slot -> who accepted it
    # slot -> whose votes count for it: the voters when it was proposed (stop semantics make
    # that the membership in effect for the slot).
    slot_voters: dict[int, frozenset[NodeId]] = field(default_factory=dict)
    proposed_ms: dict[int, int] = field(default_factory=dict)  # slot -> accept last sent
    # Values phase 1 found (or no-ops for gaps) for slots up to backlog_top, proposed through
    # the same window as new commands.
    backlog: dict[int, Value] = field(default_factory=dict)
    backlog_top: int = 0
    # The undecided membership slot in flight, the change waiting to be proposed, and the
    # admin token to answer per membership slot.
    config_slot: int | None = None
    config_request: tuple[int, Membership] | None = None
    config_tokens: dict[int, int] = field(default_factory=dict)
    # Leader transfer in progress: (token, target, give up at ms).
    transfer: tuple[int, NodeId, int] | None = None
    # Followers, as they last answered this leader: when, how far decided, highest vote.
    last_ack_ms: dict[NodeId, int] = field(default_factory=dict)
    peer_decided: dict[NodeId, int] = field(default_factory=dict)
    peer_voted_slot: dict[NodeId, int] = field(default_factory=dict)
    last_heartbeat_ms: int = 0
    # Read-index rounds and the reads waiting on them.
    reads: ReadRounds = field(default_factory=ReadRounds)
    # Accepts for the next Ready, per follower; the followers asked to vote on re-sends.
    accept_out: dict[NodeId, list[DecidedEntry]] = field(default_factory=dict)
    accept_loud: set[NodeId] = field(default_factory=set)
    # Thrifty accepts for the followers not asked to vote wait here until the next tick: one
    # message per tick instead of one per slot spares a wakeup and a send per write on both
    # ends (bounded: a full message's worth is sent at once).
    quiet_held: dict[NodeId, list[DecidedEntry]] = field(default_factory=dict)
    quiet_held_bytes: dict[NodeId, int] = field(default_factory=dict)
    flush_quiet: bool = False

    def forget_peer(self, p: NodeId) -> None:
        """``p`` left the membership: stop tracking and feeding it."""
        self.last_ack_ms.pop(p, None)
        self.peer_voted_slot.pop(p, None)
        self.reads.acked.pop(p, None)
        self.peer_decided.pop(p, None)
        self.accept_out.pop(p, None)
        self.quiet_held.pop(p, None)
        self.quiet_held_bytes.pop(p, None)

    def check(self) -> None:
        """Assert the invariants above (cheap: proportional to the slots in flight)."""
        assert self.commit_through < self.next_slot, "commit point beyond what was proposed"
        for s in self.votes:
            assert self.commit_through < s < self.next_slot, f"votes for slot {s} out of flight"
            assert s in self.proposals and s in self.slot_voters, f"slot {s} not proposed"
        assert self.config_slot is None or self.config_slot < self.next_slot
        assert self.undecided_total >= 0
        self.reads.check()
