"""Read-index bookkeeping of a leader (the Raft thesis's ReadIndex, section 6.4; etcd's).

A linearizable read skips the log: the leader notes the highest slot it has proposed, then
proves it still leads by a heartbeat round that a majority echoes. Rounds are numbered, so
one round confirms every read registered before it was sent; followers echo the number.
Owned by ``LeaderState``: a new leader starts with no rounds and no reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paxosd.core.quorum import nth_highest
from paxosd.core.types import NodeId


@dataclass(slots=True)
class ReadRounds:
    """Invariant (``check``): every pending read waits for round ``seq + 1`` at most, and
    no follower is credited with a round that was never sent."""

    seq: int = 0  # the last round sent
    round_needed: bool = False  # reads are registered for round seq + 1, not sent yet
    acked: dict[NodeId, int] = field(default_factory=dict)  # highest round each echoed
    pending: list[tuple[int, int, int]] = field(default_factory=list)  # token, index, round

    def register(self, token: int, index: int) -> None:
        """A read at ``index``, answered once the next round is confirmed."""
        self.pending.append((token, index, self.seq + 1))
        self.round_needed = True

    def start_round(self) -> bool:
        """Number the next round if a read waits for one (the caller sends the heartbeat)."""
        if not self.round_needed:
            return False
        self.round_needed = False
        self.seq += 1
        return True

    def ack(self, peer: NodeId, seq: int) -> bool:
        """``peer`` echoed round ``seq``; True if that is news."""
        if seq <= self.acked.get(peer, 0):
            return False
        self.acked[peer] = seq
        return True

    def release(self, voters: frozenset[NodeId], me: NodeId) -> list[tuple[int, int]]:
        """The reads a majority of ``voters`` has confirmed, as (token, index), removed from
        the pending ones. We echo every round we send."""
        if not self.pending:
            return []
        confirmed = nth_highest(
            (self.seq if p == me else self.acked.get(p, 0) for p in voters), len(voters)
        )
        done = [(token, index) for token, index, seq in self.pending if seq <= confirmed]
        self.pending = [r for r in self.pending if r[2] > confirmed]
        return done

    def check(self) -> None:
        assert all(seq <= self.seq + 1 for _, _, seq in self.pending), "read for a future round"
        assert all(s <= self.seq for s in self.acked.values()), "echo of a round never sent"
