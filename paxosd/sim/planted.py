"""Known bugs, planted on purpose so tests can show that the simulator's checkers catch them.

Each bug is a ``Replica`` subclass that overrides one small method of the core, so the core
itself holds no trace of them: the daemon's code has no switch that could turn one on.
``replica_class`` picks the class for a set of bug names (``paxosctl simulate --plant-bug``,
the simulator's options, the scenario and round labs, and the tests' harness).
"""

from __future__ import annotations

from collections.abc import Iterable

from paxosd.core.io import DurableState, ReadReady
from paxosd.core.messages import Accept, Promise
from paxosd.core.replica import Replica
from paxosd.core.types import (
    ZERO_BALLOT,
    AcceptedEntry,
    Ballot,
    DecidedEntry,
    Membership,
    NodeId,
    Value,
)


class AmnesiaOnRestart(Replica):
    """The acceptor forgets its promise and votes when it restarts."""

    def _recover(self, durable: DurableState) -> None:
        super()._recover(
            DurableState(
                promised=ZERO_BALLOT,
                accepted={},
                decided=durable.decided,
                snapshot=durable.snapshot,
            )
        )


class IgnorePhase1Values(Replica):
    """A new leader ignores the values its promises report (no-ops everywhere)."""

    def _phase1_values(self, promises: Iterable[Promise]) -> dict[int, tuple[Ballot, Value, bool]]:
        return {}


class MinorityQuorum(Replica):
    """A value counts as chosen on one vote."""

    def _votes_needed(self, voters: frozenset[NodeId]) -> int:
        return 1


class ApplyBeforeDecided(Replica):
    """The replica applies a value as soon as it votes for it, not once it is decided."""

    def _hand_out_decided(self) -> None:
        return

    def _on_accept(self, src: NodeId, msg: Accept) -> None:
        super()._on_accept(src, msg)
        for e in msg.entries:
            if self._out.accepted.get(e.slot) == AcceptedEntry(e.slot, msg.ballot, e.value):
                self._out.to_apply.append(DecidedEntry(e.slot, e.value))


class StaleReads(Replica):
    """Any replica answers a read-index read from its own state at once."""

    def _on_read_index(self, token: int) -> None:
        self._out.reads.append(ReadReady(token, 0))


class Phase1IgnoresNewMembership(Replica):
    """A candidate asks only the membership it knows, not the ones its promises report."""

    def _reported_memberships(
        self, chosen: dict[int, tuple[Ballot, Value, bool]]
    ) -> list[Membership]:
        return []


PLANTED: dict[str, type[Replica]] = {
    "amnesia_on_restart": AmnesiaOnRestart,
    "ignore_phase1_values": IgnorePhase1Values,
    "minority_quorum": MinorityQuorum,
    "apply_before_decided": ApplyBeforeDecided,
    "stale_reads": StaleReads,
    "phase1_ignores_new_membership": Phase1IgnoresNewMembership,
}
PLANTED_BUGS = frozenset(PLANTED)


def replica_class(bugs: frozenset[str], base: type[Replica] = Replica) -> type[Replica]:
    """``base`` with every bug in ``bugs`` planted (``base`` itself when there is none)."""
    unknown = bugs - PLANTED_BUGS
    assert not unknown, f"unknown planted bugs {sorted(unknown)}"
    if not bugs:
        return base
    mixins = tuple(PLANTED[b] for b in sorted(bugs))
    return type("Planted" + "".join(m.__name__ for m in mixins), (*mixins, base), {})
