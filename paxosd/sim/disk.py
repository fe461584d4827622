"""A simulated disk: what a replica made durable, and nothing else, survives its crash."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from paxosd.core.io import DurableState, PersistRecord
from paxosd.core.types import ZERO_BALLOT


@dataclass(slots=True)
class SimDisk:
    state: DurableState = field(default_factory=lambda: DurableState(promised=ZERO_BALLOT))
    writes: int = 0

    def write(self, record: PersistRecord) -> None:
        """One Ready's records, atomically durable (as one SQLite transaction is)."""
        if record.is_empty():
            return
        self.writes += 1
        self.state.apply(record)

    def recover(self) -> DurableState:
        """A copy, so the restarted replica cannot alias what is 'on disk'."""
        return copy.deepcopy(self.state)
