"""Who led when: a leader watch over every node's status, and the elections charged to the
fault that caused them (a follower-only fault on a healthy cluster should cause none).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from paxosd.client.client import Client
from paxosd.lab.drill.faults import FaultEvent
from paxosd.lab.drill.nodes import Nodes, node_status, poll_members

LEADER_POLL_S: Final = 0.1  # how often the leader watch asks every node's status
LEADER_POLL_TIMEOUT_MS: Final = 300  # a paused node must not stall the watch for long


def _parse_ballot(text: object) -> tuple[int, int] | None:
    """A status ballot ("round.node") as a comparable pair; None if absent or malformed."""
    if not isinstance(text, str):
        return None
    round_, _, node = text.partition(".")
    try:
        return int(round_), int(node)
    except ValueError:
        return None


class LeaderWatch:
    """Polls every node's status and records each leader ballot the first time any node
    shows it (the leader itself, or a follower naming it at that ballot): the elections.

    Polling can miss a leader that lasted less than a poll round and that no follower
    reported; the count is then a lower bound. The daemons' ``leader`` log lines say the
    same, per node, for a closer look."""

    def __init__(self, nodes: Nodes, clock: Callable[[], int]) -> None:
        self.nodes = nodes
        self.clock = clock
        self.changes: list[tuple[int, tuple[int, int], int]] = []  # (ms, ballot, leader)
        self.polls = 0
        self._top: tuple[int, int] = (0, 0)
        self._stop = threading.Event()

    def observe(self, t_ms: int, status: Mapping[str, Any]) -> None:
        leader = status.get("leader")
        if status.get("role") == "leader":
            ballot = _parse_ballot(status.get("ballot"))
        elif isinstance(leader, int):
            ballot = _parse_ballot(status.get("promised"))
            if ballot is not None and ballot[1] != leader:
                return  # promised a candidate, not (yet) following a leader at it
        else:
            return
        if ballot is None or ballot <= self._top:
            return
        self._top = ballot
        self.changes.append((t_ms, ballot, ballot[1]))

    def run(self) -> None:
        poll_members(
            self.nodes,
            self._poll,
            every_s=LEADER_POLL_S,
            stop=self._stop,
            timeout_ms=LEADER_POLL_TIMEOUT_MS,
        )

    def _poll(self, clients: Mapping[int, Client]) -> None:
        for c in clients.values():
            st = node_status(c)
            if st is not None:
                self.observe(self.clock(), st)
        self.polls += 1

    def stop(self) -> None:
        self._stop.set()


def attribute_elections(
    events: Sequence[FaultEvent], changes: Sequence[tuple[int, tuple[int, int], int]]
) -> dict[str, dict[str, Any]]:
    """Charge each leader change to the fault in progress or last begun when it was first
    seen (faults run one at a time), and sum per fault class. Changes before the first
    fault (the initial election) are no fault's."""
    ordered = sorted(events, key=lambda ev: ev.start_ms)
    starts = [ev.start_ms for ev in ordered]
    for ev in ordered:
        ev.elections = 0
    for t_ms, _, _ in changes:
        i = bisect.bisect_right(starts, t_ms) - 1
        if i >= 0:
            ordered[i].elections += 1
    figures: dict[str, dict[str, Any]] = {}
    for ev in ordered:
        f = figures.setdefault(
            ev.fault_class, {"faults": 0, "elections": 0, "faults_with_an_election": 0}
        )
        f["faults"] += 1
        f["elections"] += ev.elections
        f["faults_with_an_election"] += ev.elections > 0
    for f in figures.values():
        f["elections_per_fault"] = round(f["elections"] / f["faults"], 3)
    return dict(sorted(figures.items()))


def follower_faults_with_elections(events: Sequence[FaultEvent]) -> list[FaultEvent]:
    """Faults that hit only followers of a healthy cluster and yet were followed by a
    leader change."""
    return [ev for ev in events if ev.touches_leader is False and ev.healthy and ev.elections > 0]
