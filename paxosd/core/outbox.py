"""The effects a replica produced since its last Ready, waiting for ``ready()``.

One object, swapped for an empty one by each ``ready()``, so nothing produced for one Ready
can leak into the next and the pure ``has_ready()`` is one question: is it empty?
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paxosd.core.io import AdminResult, Outbound, ReadReady, Redirect
from paxosd.core.messages import SnapshotChunk
from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry, NodeId, Snapshot


@dataclass(slots=True)
class Outbox:
    """Records to persist, messages, applies and answers, in the shape ``Ready`` takes.

    Invariant: a vote or promise recorded here is persisted before any message that states
    it leaves (``Replica.ready`` splits the messages accordingly)."""

    # To persist, in one group commit.
    promised: Ballot | None = None
    accepted: dict[int, AcceptedEntry] = field(default_factory=dict)
    decided: list[DecidedEntry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    compact_through: int | None = None
    # To send. Votes are gathered per leader into one Accepted: (ballot, slots, read_seq).
    messages: list[Outbound] = field(default_factory=list)
    accepted_out: dict[NodeId, tuple[Ballot, list[int], int]] = field(default_factory=dict)
    # To apply (after restoring ``restore``, when set), and to answer.
    to_apply: list[DecidedEntry] = field(default_factory=list)
    restore: Snapshot | None = None
    redirects: list[Redirect] = field(default_factory=list)
    reads: list[ReadReady] = field(default_factory=list)
    admin: list[AdminResult] = field(default_factory=list)
    # A peer's snapshot, chunk by chunk, for the caller to assemble (see Ready).
    snapshot_chunks: list[SnapshotChunk] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.reads
            or self.admin
            or self.promised is not None
            or self.accepted
            or self.decided
            or self.snapshot is not None
            or self.compact_through is not None
            or self.messages
            or self.accepted_out
            or self.to_apply
            or self.restore is not None
            or self.redirects
            or self.snapshot_chunks
        )
