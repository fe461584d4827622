"""The core's boundary: what goes in (inputs), what comes out (Ready), what survives a crash.

The caller's contract, in the shape of etcd-io/raft's Ready:
  0. ``ready.early_messages`` may be sent at once: they carry no promise or vote of this
     replica (a leader's accepts and heartbeats, catch-up traffic), so the peers' disks can
     work while ours does (Raft thesis 10.2.1: the leader writes its log in parallel);
  1. write ``ready.persist`` durably (one transaction, fsync);
  2. only then send ``ready.messages``;
  3. if ``ready.restore`` is set, restore the state machine from it, then apply
     ``ready.to_apply`` in order;
  4. answer ``ready.redirects`` (commands this replica cannot order);
  5. call ``replica.advance(ready)``.
The order is the Paxos durability rule: no promise or vote leaves the process before it is
on disk, or a crash could make an acceptor vote twice in one ballot. One host loop keeps this
contract for the daemon, the simulator and the core tests: paxosd/server/runner.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paxosd.core.membership import MembershipChange
from paxosd.core.messages import Message, SnapshotChunk
from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry, NodeId, Snapshot

# ---------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Received:
    """A message from peer ``src``. The transport has authenticated ``src``."""

    src: NodeId
    msg: Message


@dataclass(frozen=True, slots=True)
class ClientCommand:
    """An encoded client command (the state machine's bytes) to be ordered by the log."""

    command: bytes


@dataclass(frozen=True, slots=True)
class Tick:
    """The current time. The core's only clock: it never reads one itself."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    """The caller snapshotted its state machine after applying ``snapshot.slot``."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class SnapshotReceived:
    """The caller assembled a peer's snapshot from ``Ready.snapshot_chunks`` (the core keeps
    no chunk itself), decoded it, and hands it back: the core installs it if still behind it.

    Between the last chunk and this (the caller decodes a big state over many loop turns)
    the core asks no peer for the slots the snapshot covers, so the transfer does not start
    again; it keeps voting and answering heartbeats meanwhile."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class SnapshotRefused:
    """The caller could not use the peer's snapshot through ``slot`` it assembled (torn,
    corrupt, unwritable): the core asks for one again from the start."""

    slot: int


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """A linearizable read that skips the log: answered by a ReadReady once this replica
    has shown it still leads. ``token`` is the caller's, echoed back."""

    token: int


@dataclass(frozen=True, slots=True)
class ChangeMembership:
    """An operator's membership change (add a learner, promote it, remove a member).
    Answered by an AdminResult with the same ``token`` once decided, or refused."""

    token: int
    change: MembershipChange


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    """Hand leadership to ``target`` (None: the most caught-up voter), e.g. before
    maintenance. Answered by an AdminResult with the same ``token``."""

    token: int
    target: NodeId | None = None


@dataclass(frozen=True, slots=True)
class Campaign:
    """Ask to lead now, without waiting for the election timer (learners, non-members and a
    leader ignore it).

    ``prevote=False``: a forced election, as a leader-transfer target runs: phase 1 at once,
    with prepares marked ``transfer`` so acceptors answer though they may still hear a leader
    (scripted tests and the simulator's labs build competing proposers with it).
    ``prevote=True``: exactly what the election timer firing does (pre-vote first)."""

    prevote: bool = False


Input = (
    Received
    | ClientCommand
    | Tick
    | SnapshotTaken
    | SnapshotReceived
    | SnapshotRefused
    | ReadIndex
    | ChangeMembership
    | TransferLeadership
    | Campaign
)

# --------------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Outbound:
    dst: NodeId
    msg: Message


@dataclass(frozen=True, slots=True)
class Redirect:
    """A command this replica did not take; ``leader`` is a hint where to send it instead.

    ``reason`` is "not_leader" (send it to ``leader``, or retry once one is elected) or "busy"
    (this leader's queue is full: back off and retry).
    """

    command: bytes
    leader: NodeId | None
    reason: str = "not_leader"


@dataclass(frozen=True, slots=True)
class ReadReady:
    """Serve read ``token`` from the state machine once it has applied ``index``; or, when
    ``index`` is None, this replica does not lead: send the read to ``leader``."""

    token: int
    index: int | None
    leader: NodeId | None = None


@dataclass(frozen=True, slots=True)
class AdminResult:
    """The outcome of a ChangeMembership or TransferLeadership with this ``token``.

    ``ok`` False with ``unknown`` True: leadership was lost before the change was decided;
    it may still take effect (read the membership to know)."""

    token: int
    ok: bool
    detail: str
    slot: int = 0
    unknown: bool = False


@dataclass(frozen=True, slots=True)
class PersistRecord:
    """Everything one Ready must make durable, written as one transaction.

    ``snapshot``, if set, replaces the stored snapshot; log entries (accepted and decided)
    at or below ``compact_through`` may then be dropped.
    """

    promised: Ballot | None = None
    accepted: tuple[AcceptedEntry, ...] = ()
    decided: tuple[DecidedEntry, ...] = ()
    snapshot: Snapshot | None = None
    compact_through: int | None = None

    def only_decided(self) -> bool:
        """True when losing this record in a power cut is safe: decided entries are relearned
        from peers (and from this node's own durable votes), so they need not wait for fsync."""
        return (
            self.promised is None
            and not self.accepted
            and self.snapshot is None
            and self.compact_through is None
        )

    def is_empty(self) -> bool:
        return (
            self.promised is None
            and not self.accepted
            and not self.decided
            and self.snapshot is None
            and self.compact_through is None
        )


@dataclass(frozen=True, slots=True)
class Ready:
    persist: PersistRecord
    early_messages: tuple[Outbound, ...]
    messages: tuple[Outbound, ...]
    restore: Snapshot | None
    to_apply: tuple[DecidedEntry, ...]
    redirects: tuple[Redirect, ...]
    reads: tuple[ReadReady, ...] = ()
    admin: tuple[AdminResult, ...] = ()
    # Chunks of a peer's snapshot, in order, for the caller to write where it assembles the
    # snapshot (a chunk at offset 0 starts a new one). When the last one is written, the
    # caller steps SnapshotReceived.
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()


# ------------------------------------------------------------------------ durable state


@dataclass(slots=True)
class DurableState:
    """What a replica had made durable: the input of recovery after a crash.

    Storage (SQLite in the daemon, SimDisk in the simulator) folds PersistRecords into this
    and hands it back on restart. Invariant: nothing above ``snapshot.slot`` was compacted, so
    restoring the snapshot and applying the decided slots after it rebuilds the state machine.
    """

    promised: Ballot
    accepted: dict[int, AcceptedEntry] = field(default_factory=dict)
    decided: dict[int, DecidedEntry] = field(default_factory=dict)
    snapshot: Snapshot | None = None
    # Log rows at or below it were compacted; a later write there is dropped too (the core
    # never makes one: it writes nothing below its log start).
    compacted_through: int = 0

    def apply(self, record: PersistRecord) -> None:
        """Fold one durable record in, exactly as storage does on disk."""
        if record.promised is not None:
            assert record.promised >= self.promised, "promised ballot went backwards"
            self.promised = record.promised
        floor = self.compacted_through
        for a in record.accepted:
            if a.slot > floor:
                self.accepted[a.slot] = a
        for d in record.decided:
            if d.slot <= floor:
                continue
            prior = self.decided.get(d.slot)
            assert prior is None or prior.value == d.value, f"slot {d.slot} decided twice"
            self.decided[d.slot] = d
        if record.snapshot is not None and (
            self.snapshot is None or record.snapshot.slot >= self.snapshot.slot
        ):
            self.snapshot = record.snapshot
        if record.compact_through is not None:
            cut = record.compact_through
            self.compacted_through = max(self.compacted_through, cut)
            for slot in [s for s in self.accepted if s <= cut]:
                del self.accepted[slot]
            for slot in [s for s in self.decided if s <= cut]:
                del self.decided[slot]
