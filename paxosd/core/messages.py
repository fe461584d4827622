"""Peer-to-peer messages of the core: a msgspec tagged union, so decoding is typed and
never runs code (no pickle). Every message names its sender's ballot where it has one.

Vocabulary (one word per idea, everywhere): prepare/promise is phase 1, accept/accepted is
phase 2, decide is learning a chosen value, apply is running it on the state machine.
"""

from __future__ import annotations

import msgspec

from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry, Membership


class Prepare(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Phase 1a for every slot from ``from_slot`` on (multi-Paxos runs phase 1 once).

    ``transfer``: the leader asked for this election (leader transfer, or a removed leader
    handing over), so acceptors answer even though they still hear that leader.
    """

    ballot: Ballot
    from_slot: int
    transfer: bool = False


class PreVote(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Would you promise ``ballot`` if I asked? (etcd's pre-vote.) Binds nobody: a node
    campaigns for real only once a majority says yes, so a node that merely lost touch (a
    restart, a pause, a partition of one) cannot raise the ballot and depose a leader the
    others still hear."""

    ballot: Ballot


class PreVoteReply(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The answer to a PreVote for ``ballot``; ``promised`` lets a refused candidate aim
    above what the acceptor already promised."""

    ballot: Ballot
    granted: bool
    promised: Ballot


class PromiseEntry(msgspec.Struct, frozen=True, array_like=True):
    """What an acceptor knows about one slot: its vote, or that the slot is decided."""

    slot: int
    ballot: Ballot
    value: tuple[bytes, ...]
    decided: bool


class Promise(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Phase 1b: the acceptor will not accept anything below ``ballot`` for slots >= from_slot.

    ``entries`` holds every vote and decision at or above ``from_slot``, in slot order. When
    there are more than the sender may put in one message, ``complete`` is False and the
    proposer must catch up before it can lead.
    """

    ballot: Ballot
    from_slot: int
    entries: tuple[PromiseEntry, ...]
    decided_through: int
    complete: bool


class Nack(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A refusal of ``ballot``, carrying the higher ballot the acceptor promised instead."""

    ballot: Ballot
    promised: Ballot


class Accept(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Phase 2a for a run of slots, plus the leader's commit point (see Heartbeat).

    ``quiet``: keep the values (to learn them at the commit point) but do not vote. The
    leader asks only as many followers to vote as it needs for a majority, so the others
    spend no fsync on it; a value never voted for may be forgotten in a crash.
    """

    ballot: Ballot
    entries: tuple[DecidedEntry, ...]
    commit_through: int
    quiet: bool = False


class Accepted(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Phase 2b: the sender accepted ``slots`` at ``ballot``."""

    ballot: Ballot
    slots: tuple[int, ...]
    # Echo of the heartbeat's read_seq this answers (0 when it answers an accept).
    read_seq: int = 0
    # The sender's decided prefix: how caught up a learner is before it may be promoted.
    decided_through: int = 0


class Heartbeat(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The leader is alive at ``ballot``.

    ``commit_through``: every slot up to it that this leader proposed at ``ballot`` was
    accepted by a majority at ``ballot``, so a follower that accepted the slot at exactly
    ``ballot`` holds the chosen value. ``decided_through`` tells followers how far to catch up.
    """

    ballot: Ballot
    commit_through: int
    decided_through: int
    # Read-index rounds: followers echo it, so a majority echo proves the leader still led
    # after every read registered before this heartbeat was sent (Raft thesis 6.4).
    read_seq: int = 0


class CatchUpRequest(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Send me the decided values of slots ``from_slot`` .. ``to_slot`` (inclusive).

    While a snapshot is being received, ``snapshot_slot``/``snapshot_offset`` say which one
    and how much of it already arrived, so the transfer resumes instead of restarting.
    """

    from_slot: int
    to_slot: int
    snapshot_slot: int = 0
    snapshot_offset: int = 0


class SnapshotChunk(msgspec.Struct, frozen=True, array_like=True):
    """``data`` is ``state[offset : offset + len(data)]`` of the snapshot through ``slot``,
    whose state is ``total`` bytes. Snapshots travel in chunks so no frame outgrows the
    transport's size cap, however large the state machine gets."""

    slot: int
    offset: int
    total: int
    data: bytes
    # The membership in effect after ``slot`` (see Snapshot.membership).
    membership: Membership | None = None


class CatchUpReply(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Decided values in slot order, or a chunk of a snapshot when the log was compacted."""

    chunk: SnapshotChunk | None
    entries: tuple[DecidedEntry, ...]
    decided_through: int


class TimeoutNow(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The leader at ``ballot`` hands over: campaign now instead of waiting for a timeout
    (leader transfer, as Raft's TimeoutNow). Ignored unless we follow that very ballot."""

    ballot: Ballot


Message = (
    Prepare
    | PreVote
    | PreVoteReply
    | Promise
    | Nack
    | Accept
    | Accepted
    | Heartbeat
    | CatchUpRequest
    | CatchUpReply
    | TimeoutNow
)

__all__ = [
    "Accept",
    "Accepted",
    "AcceptedEntry",
    "CatchUpReply",
    "CatchUpRequest",
    "Heartbeat",
    "Message",
    "Nack",
    "PreVote",
    "PreVoteReply",
    "Prepare",
    "Promise",
    "PromiseEntry",
    "SnapshotChunk",
    "TimeoutNow",
]
