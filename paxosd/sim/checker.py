"""Safety properties checked while a simulation runs, after every Ready a replica handles.

Checking as we go (TigerBeetle's StateChecker) pins a violation to the moment it happens, so
the trace tail printed with it shows the cause, not a symptom found seconds later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paxosd.core.types import Value


class Violation(Exception):
    """A safety or liveness property failed. ``prop`` names it for reports and tests."""

    def __init__(self, prop: str, detail: str) -> None:
        super().__init__(f"{prop}: {detail}")
        self.prop = prop
        self.detail = detail


@dataclass(slots=True)
class SafetyChecker:
    """Cross-replica invariants over everything any replica decided or applied.

    - agreement: never two values decided for one slot, by any replicas, ever;
    - validity: every decided command was submitted by a client (no-ops are empty);
    - applied prefix: every replica applies slots in order, only decided ones, with the
      chosen value; its digest after slot s equals every other replica's after slot s.
    """

    submitted: set[bytes] = field(default_factory=set)
    decided: dict[int, Value] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)
    applied_through: dict[int, int] = field(default_factory=dict)
    slot_of: dict[bytes, int] = field(default_factory=dict)

    def on_decided(self, node: int, slot: int, value: Value) -> None:
        prior = self.decided.get(slot)
        if prior is None:
            for cmd in value:
                if cmd not in self.submitted:
                    raise Violation(
                        "validity", f"node {node} decided slot {slot} with a command no client sent"
                    )
                self.slot_of.setdefault(cmd, slot)
            self.decided[slot] = value
        elif prior != value:
            raise Violation(
                "agreement",
                f"node {node} decided slot {slot} = {_short(value)}, "
                f"but {_short(prior)} was decided before",
            )

    def on_restore(self, node: int, slot: int, digest: str) -> None:
        self.applied_through[node] = slot
        self._digest(node, slot, digest)

    def on_applied(self, node: int, slot: int, value: Value, digest: str) -> None:
        last = self.applied_through.get(node, 0)
        if slot != last + 1:
            raise Violation("applied-prefix", f"node {node} applied slot {slot} after slot {last}")
        chosen = self.decided.get(slot)
        if chosen is None:
            raise Violation(
                "applied-prefix", f"node {node} applied slot {slot} before any replica decided it"
            )
        if chosen != value:
            raise Violation(
                "applied-prefix",
                f"node {node} applied slot {slot} = {_short(value)}, "
                f"but {_short(chosen)} was chosen",
            )
        self.applied_through[node] = slot
        self._digest(node, slot, digest)

    def _digest(self, node: int, slot: int, digest: str) -> None:
        prior = self.digests.setdefault(slot, digest)
        if prior != digest:
            raise Violation(
                "digest",
                f"node {node} has digest {digest[:12]} after slot {slot}, others {prior[:12]}",
            )


def _short(value: Value) -> str:
    if not value:
        return "no-op"
    return f"batch of {len(value)} ({value[0][:24]!r}…)"
