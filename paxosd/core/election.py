"""What a replica holds while it asks to lead: a pre-vote round, then a phase-1 campaign.

Both are made when they start and dropped when they end, so a follower carries neither.
The rules that use them (when to ask, whom to count) are in ``paxosd.core.replica``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paxosd.core.messages import Promise
from paxosd.core.types import Ballot, NodeId


@dataclass(slots=True)
class PreVoteRound:
    """A follower asking "would you promise ``ballot``?": binds nobody, raises no ballot.

    Invariant: ``granted`` holds ourselves and the voters that said yes to ``ballot``."""

    ballot: Ballot
    granted: set[NodeId]


@dataclass(slots=True)
class CandidateState:
    """Phase 1 in progress at the replica's ballot, for every slot from ``prepare_from``.

    Invariant: every promise held is for our ballot, our own included (asserted in
    ``Replica._on_promise``); ``prepare_targets`` only grows (memberships reported in
    promises add their voters)."""

    # The leader asked for this election (TimeoutNow, or a forced Campaign): prepares say so,
    # and acceptors answer them even while they hear a leader.
    transfer: bool
    prepare_from: int
    promises: dict[NodeId, Promise] = field(default_factory=dict)
    prepare_targets: set[NodeId] = field(default_factory=set)
    prepare_sent_ms: int = 0
