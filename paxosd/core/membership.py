"""Membership changes as log commands, and the rules that keep every change safe.

A change is a whole new ``Membership`` proposed alone in a slot. It governs every slot after
its own once decided; the leader proposes nothing beyond a membership slot until that slot is
decided ("stop" semantics), so no value is ever chosen under a membership that might not be
the chosen one. A candidate needs promises from a majority of the membership it knows and of
every membership it hears of in the promises (see Replica._maybe_win), which is what makes a
change safe across leader changes. One change at a time, one member at a time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from paxosd.core.types import Member, Membership, NodeId, Value

# A membership command's bytes start with this; client commands never do (they are msgpack
# arrays, and the daemon decodes every client command before it reaches the core).
MEMBERSHIP_PREFIX = b"\x00paxosd:membership\x00"

_decoder = msgspec.msgpack.Decoder(Membership)


class ChangeKind(enum.Enum):
    ADD = "add"  # a new member, as a learner
    PROMOTE = "promote"  # a caught-up learner becomes a voter
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class MembershipChange:
    kind: ChangeKind
    node: NodeId
    address: str = ""


class ChangeRefused(ValueError):
    """The change is not allowed; the message says why, for the operator."""


def encode_membership(m: Membership) -> Value:
    return (MEMBERSHIP_PREFIX + msgspec.msgpack.encode(m),)


def membership_of(value: Value) -> Membership | None:
    """The membership a slot's value installs, or None for an ordinary batch."""
    if len(value) != 1 or not value[0].startswith(MEMBERSHIP_PREFIX):
        return None
    return _decoder.decode(value[0][len(MEMBERSHIP_PREFIX) :])


def is_membership_command(command: bytes) -> bool:
    return command.startswith(MEMBERSHIP_PREFIX)


def apply_change(current: Membership, change: MembershipChange) -> Membership | None:
    """The membership after ``change``, or None when it is already in effect (so a retried
    request succeeds without a second change). Raises ChangeRefused when it is not allowed."""
    node = change.node
    existing = current.get(node)
    retired = current.retired
    match change.kind:
        case ChangeKind.ADD:
            if not change.address:
                raise ChangeRefused(f"adding node {node} needs its peer address (host:port)")
            if node in current.retired:
                raise ChangeRefused(
                    f"node id {node} was removed before and is never reused (a node that lost "
                    "its disk must not come back under its old id): give the new node a new id"
                )
            if existing is not None:
                if existing.address == change.address:
                    return None
                where = existing.address or "its configured address"
                raise ChangeRefused(
                    f"node {node} is already a member at {where}; remove it first to replace it"
                )
            members = (*current.members, Member(int(node), change.address, False))
        case ChangeKind.PROMOTE:
            if existing is None:
                raise ChangeRefused(f"node {node} is not a member; add it first")
            if existing.voter:
                return None
            members = tuple(
                Member(m.node, m.address, True) if m.node == node else m for m in current.members
            )
        case ChangeKind.REMOVE:
            if existing is None:
                return None
            if existing.voter and len(current.voters) == 1:
                raise ChangeRefused(f"node {node} is the last voter; a cluster needs one")
            members = tuple(m for m in current.members if m.node != node)
            retired = tuple(sorted({*retired, int(node)}))
    new = Membership(tuple(sorted(members, key=lambda m: m.node)), current.epoch + 1, retired)
    new.check()
    return new
