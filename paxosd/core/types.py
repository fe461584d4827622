"""Identifiers and ballots shared by every role of the core.

Ballots are ``(round, node)`` pairs compared lexicographically: two proposers can never
issue the same ballot because the node id breaks ties, which is what lets Paxos tell a
proposal apart from every other one (Paxos Made Simple, section 2.2).
"""

from __future__ import annotations

from typing import NewType, Protocol, overload

import msgspec

from paxosd.core.quorum import majority

NodeId = NewType("NodeId", int)
Slot = NewType("Slot", int)

# A slot's value: a batch of encoded client commands, applied in order. The empty batch is
# the no-op a new leader uses to fill a gap (Paxos Made Simple, section 3).
Value = tuple[bytes, ...]
NOOP: Value = ()


class Ballot(msgspec.Struct, frozen=True, order=True, array_like=True):
    """A proposal number. Invariant: real ballots have ``round >= 1``."""

    round: int
    node: int

    def __str__(self) -> str:
        return f"{self.round}.{self.node}"


# Lower than every ballot a proposer can issue; the promised ballot of a fresh acceptor.
ZERO_BALLOT = Ballot(0, 0)


class AcceptedEntry(msgspec.Struct, frozen=True, array_like=True):
    """An acceptor's vote: it accepted ``value`` for ``slot`` at ``ballot``."""

    slot: int
    ballot: Ballot
    value: Value


class DecidedEntry(msgspec.Struct, frozen=True, array_like=True):
    """A chosen value: once any replica holds this, no other value can ever be chosen."""

    slot: int
    value: Value


class Member(msgspec.Struct, frozen=True, array_like=True):
    """One member of the cluster. ``address`` is its peer port ("host:port"), carried for
    the daemon (the core never dials); "" for bootstrap members, whose addresses are in the
    nodes' config files. A learner receives the log but neither votes nor campaigns."""

    node: int
    address: str
    voter: bool


class Membership(msgspec.Struct, frozen=True, array_like=True):
    """Who takes part, as decided by the log (Lamport's reconfigurable state machine: the
    membership is itself a decided command). ``epoch`` counts the changes since bootstrap.
    Invariant: members are sorted by node id, ids unique, at least one voter."""

    members: tuple[Member, ...]
    epoch: int = 0
    # Ids removed since bootstrap: never admitted again. A removed node may come back with
    # its disk wiped, and a voter that forgot its votes could let a chosen value be replaced.
    retired: tuple[int, ...] = ()

    @staticmethod
    def bootstrap(voters: tuple[NodeId, ...]) -> Membership:
        m = Membership(tuple(Member(int(n), "", True) for n in sorted(voters)), 0)
        m.check()
        return m

    def check(self) -> None:
        """Assert the invariant above. Called where a membership is made or takes effect
        (not on decode: a malformed peer message must be refused, not crash the node)."""
        ids = [m.node for m in self.members]
        assert ids == sorted(set(ids)), f"membership ids not sorted and unique: {ids}"
        assert any(m.voter for m in self.members), "a membership needs at least one voter"

    @property
    def voters(self) -> frozenset[NodeId]:
        return frozenset(NodeId(m.node) for m in self.members if m.voter)

    @property
    def learners(self) -> frozenset[NodeId]:
        return frozenset(NodeId(m.node) for m in self.members if not m.voter)

    @property
    def ids(self) -> tuple[NodeId, ...]:
        return tuple(NodeId(m.node) for m in self.members)

    @property
    def quorum(self) -> int:
        """A majority of the voters: any two majorities of one membership intersect."""
        return majority(len(self.voters))

    def get(self, node: int) -> Member | None:
        for m in self.members:
            if m.node == node:
                return m
        return None


class SnapshotState(Protocol):
    """A snapshot's bytes as the core sees them: a length and slices. ``bytes`` is one; the
    daemon hands the core a file-backed one (paxosd/storage/snapfile.py) so the state, which
    can be a GiB, is never held in memory twice. Slicing may read a file: that is the host's
    I/O behind an object it handed in, as with an injected random generator, not the core's."""

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> bytes: ...


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """The state machine after applying every slot up to and including ``slot``.

    ``state`` is opaque to the core (the state machine encodes and decodes it); the core
    only measures it and cuts it into chunks for a peer that catches up.
    ``membership`` is the membership in effect after ``slot`` (None: the bootstrap one), so a
    replica that installs the snapshot knows whose votes count without the compacted log.
    """

    slot: int
    state: SnapshotState
    membership: Membership | None = None
