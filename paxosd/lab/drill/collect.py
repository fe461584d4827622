"""Collecting the decided log while the replicas still hold it: snapshots compact it, so a
copy made only at the end would have gaps.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from paxosd.client.client import Client, ClientError
from paxosd.lab.drill.nodes import Nodes, poll_members

LOG_POLL_S: Final = 0.3
LOG_PAGE_ROWS: Final = 1000  # the daemon's VIEW_LOG_ROWS_MAX


@dataclass(slots=True)
class LogCopy:
    """Decided slots copied from the replicas while they still held them."""

    start: int  # the first slot the drill needs (decided index + 1 when it began)
    next_slot: int
    slots: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # compacted before copied

    def complete_through(self, top: int) -> bool:
        return not self.gaps and self.next_slot > top


class LogCollector:
    def __init__(self, nodes: Nodes, start: int) -> None:
        self.nodes = nodes
        self.copy = LogCopy(start=start, next_slot=start)
        self._stop = threading.Event()
        self._preferred: int | None = None

    def run(self) -> None:
        # A new member's log starts at the snapshot it caught up from; it may still hold
        # slots the others compacted.
        poll_members(
            self.nodes,
            lambda clients: self.pull(clients, top=None),
            every_s=LOG_POLL_S,
            stop=self._stop,
        )

    def stop(self) -> None:
        self._stop.set()

    def pull(self, clients: Mapping[int, Client], top: int | None) -> None:
        """Copy decided slots from next_slot on, from whichever node still has them;
        ``top``: keep going until this slot is copied (or nobody has it)."""
        c = self.copy
        for _ in range(100_000):  # bounded: each round copies a page or gives up
            if top is not None and c.next_slot > top:
                return
            order = sorted(clients, key=lambda k: k != self._preferred)
            progressed = False
            log_starts: list[int] = []
            for k in order:
                try:
                    d = clients[k].view_log(c.next_slot, limit=LOG_PAGE_ROWS)
                except ClientError:
                    continue
                log_starts.append(d.log_start)
                got = 0
                for row in d.rows:
                    if row.kind != "decided" or row.slot != c.next_slot:
                        continue
                    c.slots[c.next_slot] = tuple(row.value)
                    c.next_slot += 1
                    got += 1
                if got:
                    self._preferred = k
                    progressed = True
                    break
            if progressed:
                continue
            if len(log_starts) == len(clients) and min(log_starts) > c.next_slot:
                # Every node compacted past what we have: report, skip on. A node that did
                # not answer (paused, killed) may still hold the slots: wait for it.
                jump = min(log_starts)
                c.gaps.append((c.next_slot, jump - 1))
                c.next_slot = jump
                continue
            return
