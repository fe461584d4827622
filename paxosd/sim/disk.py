"""A simulated disk that keeps what SQLite in WAL mode keeps, and loses what it loses.

Three places a record can be, as in SQLite's WAL mode (paxosd/storage/store.py):
  - ``unsynced``: committed without a sync (the daemon's decided-only writes). The process
    reads them and a ``kill -9`` keeps them (they are in the OS's page cache), but a power cut
    loses every one of them, whatever was written after;
  - ``wal``: synced frames. A synced write syncs the whole WAL, so every unsynced record
    written before it becomes durable with it;
  - ``file``: the database file, as last synced. A checkpoint copies the synced WAL into it,
    syncs it, and only then lets the WAL be reused.

A checkpoint that skipped that sync (SQLite's, run inside a ``synchronous=OFF`` commit) would
leave the copied records in ``file_unsynced``: reused WAL, unsynced file, so a power cut loses
records that had been fsynced. The real disk never does that; tests plant it to show the
simulator catches it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from paxosd.core.io import DurableState, PersistRecord
from paxosd.core.types import ZERO_BALLOT

# Synced WAL frames before a checkpoint (SQLite counts pages; records are enough here).
CHECKPOINT_FRAMES = 16


@dataclass(slots=True)
class SimDisk:
    file: DurableState = field(default_factory=lambda: DurableState(promised=ZERO_BALLOT))
    file_unsynced: list[PersistRecord] = field(default_factory=list)
    wal: list[PersistRecord] = field(default_factory=list)
    unsynced: list[PersistRecord] = field(default_factory=list)
    checkpoint_frames: int = CHECKPOINT_FRAMES
    writes: int = 0
    syncs: int = 0
    checkpoints: int = 0

    def write(self, record: PersistRecord, *, sync: bool) -> None:
        """One record, atomically (as one SQLite transaction is). ``sync``: durable, with
        every unsynced record before it, when this returns; otherwise only committed."""
        if not record.is_empty():
            self.writes += 1
            self.unsynced.append(record)
        if sync and self.unsynced:
            self.syncs += 1
            self.wal.extend(self.unsynced)
            self.unsynced.clear()
            if len(self.wal) >= self.checkpoint_frames:
                self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the synced WAL into the file and sync the file; then the WAL may be reused.
        Never run from an unsynced write (store.py turns autocheckpoint off for those)."""
        self.checkpoints += 1
        for record in (*self.file_unsynced, *self.wal):
            self.file.apply(record)
        self.file_unsynced.clear()
        self.wal.clear()

    def power_cut(self) -> int:
        """Everything not synced is gone; returns how many records that was."""
        lost = len(self.unsynced) + len(self.file_unsynced)
        self.unsynced.clear()
        self.file_unsynced.clear()
        return lost

    def recover(self) -> DurableState:
        """What a restarted node reads: a copy, so the replica cannot alias what is on disk."""
        state = copy.deepcopy(self.file)
        for record in (*self.file_unsynced, *self.wal, *self.unsynced):
            state.apply(record)
        return state

    @property
    def state(self) -> DurableState:
        """What is on disk now (what ``recover`` would read without a power cut)."""
        return self.recover()
