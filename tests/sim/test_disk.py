"""SimDisk keeps what SQLite in WAL mode keeps through a power cut, and loses what it loses."""

from __future__ import annotations

from paxosd.core.io import PersistRecord
from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry
from paxosd.sim.disk import SimDisk


def _vote(slot: int) -> PersistRecord:
    return PersistRecord(accepted=(AcceptedEntry(slot, Ballot(1, 1), (b"v",)),))


def _decided(slot: int) -> PersistRecord:
    return PersistRecord(decided=(DecidedEntry(slot, (b"v",)),))


def test_a_power_cut_loses_the_unsynced_writes_and_keeps_the_synced_ones() -> None:
    d = SimDisk()
    d.write(_vote(1), sync=True)
    d.write(_decided(1), sync=False)
    assert set(d.state.decided) == {1}, "a kill -9 keeps it: it is in the page cache"
    assert d.power_cut() == 1
    assert set(d.state.accepted) == {1} and not d.state.decided


def test_a_synced_write_makes_the_unsynced_ones_before_it_durable() -> None:
    d = SimDisk()
    d.write(_decided(1), sync=False)
    d.write(_vote(2), sync=True)
    assert d.power_cut() == 0
    assert set(d.state.decided) == {1} and set(d.state.accepted) == {2}


def test_checkpoints_keep_everything_synced() -> None:
    d = SimDisk(checkpoint_frames=4)
    for slot in range(1, 11):
        d.write(_vote(slot), sync=True)
    assert d.checkpoints == 2 and len(d.wal) == 2
    d.power_cut()
    assert sorted(d.recover().accepted) == list(range(1, 11))


def test_a_checkpoint_that_skips_the_file_sync_loses_fsynced_votes() -> None:
    # What the planted bug in tests/sim/test_simulator.py does, and why it is a bug.
    d = SimDisk()
    d.write(_vote(1), sync=True)
    d.file_unsynced.extend(d.wal)
    d.wal.clear()
    d.power_cut()
    assert not d.recover().accepted
