"""Identifiers and ballots shared by every role of the core.

Ballots are ``(round, node)`` pairs compared lexicographically: two proposers can never
issue the same ballot because the node id breaks ties, which is what lets Paxos tell a
proposal apart from every other one (Paxos Made Simple, section 2.2).
"""

from __future__ import annotations

from typing import NewType

import msgspec

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


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """The state machine after applying every slot up to and including ``slot``.

    ``state`` is opaque to the core (the state machine encodes and decodes it).
    """

    slot: int
    state: bytes
