"""paxosd.storage.store: what goes in comes back out, in one transaction, under the right
identity."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path
from typing import Any, cast

import pytest
import sqlite_utils
from structlog.testing import capture_logs

from paxosd.core.io import DurableState, PersistRecord
from paxosd.core.types import (
    ZERO_BALLOT,
    AcceptedEntry,
    Ballot,
    DecidedEntry,
    Member,
    Membership,
    Snapshot,
)
from paxosd.storage import store as storage_mod
from paxosd.storage.store import (
    DB_FILENAME,
    SCHEMA_VERSION,
    Durability,
    IdentityMismatch,
    NotInitialized,
    SchemaVersionError,
    Storage,
    StorageError,
)

CLUSTER = "test-cluster"
NODE = 2


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / DB_FILENAME


def new_storage(path: Path, durability: Durability = "fsync") -> Storage:
    return Storage.open(path, cluster_id=CLUSTER, node_id=NODE, durability=durability, create=True)


def reopen(path: Path) -> Storage:
    return Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=False)


def fold(records: list[PersistRecord]) -> DurableState:
    state = DurableState(promised=ZERO_BALLOT)
    for r in records:
        state.apply(r)
    return state


def files_state(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


EVERY_KIND = PersistRecord(
    promised=Ballot(3, 2),
    accepted=(
        AcceptedEntry(5, Ballot(3, 2), (b"put a", b"put b")),
        AcceptedEntry(6, Ballot(3, 2), ()),  # a no-op
        AcceptedEntry(7, Ballot(2, 1), (bytes(range(256)) * 64,)),
    ),
    decided=(DecidedEntry(4, (b"\x00",)), DecidedEntry(5, (b"put a", b"put b"))),
    snapshot=Snapshot(3, b"state through slot 3"),
    compact_through=3,
)


def test_write_then_load_round_trips_every_record_kind(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(EVERY_KIND)
        assert storage.load() == fold([EVERY_KIND])
    with reopen(db_path) as storage:
        assert storage.load() == fold([EVERY_KIND])


def test_load_matches_the_durable_state_fold_over_random_record_sequences(db_path: Path) -> None:
    rng = random.Random(7)
    records: list[PersistRecord] = []
    promised = ZERO_BALLOT
    snapshot_slot = 0
    with new_storage(db_path) as storage:
        for i in range(300):
            new_promise = None
            if rng.random() < 0.3:
                promised = new_promise = max(promised, Ballot(rng.randint(1, 9), rng.randint(1, 3)))
            accepted = tuple(
                AcceptedEntry(
                    rng.randint(0, 60),
                    Ballot(rng.randint(1, 9), rng.randint(1, 3)),
                    tuple(rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(0, 3))),
                )
                for _ in range(rng.randint(0, 4))
            )
            # A slot is decided at most once with one value, as the core guarantees.
            decided = tuple(DecidedEntry(s, (b"d%d" % s,)) for s in {i % 60, (i * 7) % 60})
            snapshot = None
            cut = None
            if rng.random() < 0.1:
                snapshot_slot = max(snapshot_slot, rng.randint(0, 50))
                # Sometimes older than the stored one: it must then be ignored.
                snapshot = Snapshot(rng.choice([snapshot_slot, max(0, snapshot_slot - 5)]), b"s")
                cut = snapshot.slot - rng.randint(0, 5)
            record = PersistRecord(
                promised=new_promise,
                accepted=accepted,
                decided=decided,
                snapshot=snapshot,
                compact_through=cut,
            )
            storage.write(record)
            records.append(record)
        expected = fold(records)
        assert storage.load() == expected
    with reopen(db_path) as storage:
        assert storage.load() == expected


def test_a_write_that_fails_midway_leaves_none_of_its_record(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(accepted=(AcceptedEntry(1, Ballot(1, 1), (b"kept",)),)))
        # The snapshot is the last statement of the transaction but one: make it fail, after
        # the promise, the accepts and the decisions of the same record were inserted.
        side = sqlite3.connect(db_path)
        side.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON snapshot BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        side.commit()
        side.close()
        with pytest.raises(StorageError, match="write failed"):
            storage.write(
                PersistRecord(
                    promised=Ballot(9, 9),
                    accepted=(AcceptedEntry(2, Ballot(9, 9), (b"lost",)),),
                    decided=(DecidedEntry(1, (b"kept",)),),
                    snapshot=Snapshot(1, b"s"),
                )
            )
        # Whether a failed commit reached the disk is unknown in general: no more writes.
        with pytest.raises(AssertionError, match="after a failed write"):
            storage.write(PersistRecord(promised=Ballot(10, 1)))
    with reopen(db_path) as storage:
        state = storage.load()
    assert state.promised == ZERO_BALLOT
    assert list(state.accepted) == [1]
    assert state.decided == {}
    assert state.snapshot is None


def test_an_empty_record_runs_no_statement(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        statements: list[str] = []
        storage.db.conn.set_trace_callback(statements.append)
        storage.write(PersistRecord())
        assert statements == []
        storage.write(PersistRecord(), applied_through=4)
        assert "BEGIN IMMEDIATE" in statements
        assert storage.applied_through() == 4


def test_compaction_drops_log_entries_at_or_below_the_cut_and_keeps_the_rest(
    db_path: Path,
) -> None:
    entries = tuple(AcceptedEntry(s, Ballot(1, 1), (b"%d" % s,)) for s in range(1, 11))
    decided = tuple(DecidedEntry(s, (b"%d" % s,)) for s in range(1, 9))
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(accepted=entries, decided=decided))
        storage.write(PersistRecord(snapshot=Snapshot(6, b"six"), compact_through=4))
        state = storage.load()
        meta = storage.meta()
    assert sorted(state.accepted) == [5, 6, 7, 8, 9, 10]
    assert sorted(state.decided) == [5, 6, 7, 8]
    assert state.snapshot == Snapshot(6, b"six")
    assert (meta.accepted.first, meta.accepted.last, meta.accepted.count) == (5, 10, 6)
    assert (meta.decided.first, meta.decided.last, meta.decided.count) == (5, 8, 4)
    assert meta.snapshot_slot == 6


def test_an_older_snapshot_never_replaces_a_newer_one(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(snapshot=Snapshot(10, b"ten")))
        storage.write(PersistRecord(snapshot=Snapshot(8, b"eight")))
        assert storage.load().snapshot == Snapshot(10, b"ten")
        storage.write(PersistRecord(snapshot=Snapshot(12, b"twelve")))
        assert storage.load().snapshot == Snapshot(12, b"twelve")


def test_a_promise_below_the_stored_one_is_refused_before_it_reaches_disk(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(promised=Ballot(5, 1)))
    with reopen(db_path) as storage:
        with pytest.raises(AssertionError, match="went backwards"):
            storage.write(PersistRecord(promised=Ballot(4, 3)))
        assert storage.load().promised == Ballot(5, 1)


def test_read_log_lists_decided_before_accepted_within_a_slot_inside_the_range(
    db_path: Path,
) -> None:
    with new_storage(db_path) as storage:
        storage.write(
            PersistRecord(
                accepted=tuple(AcceptedEntry(s, Ballot(2, 1), (b"a%d" % s,)) for s in range(1, 8)),
                decided=tuple(DecidedEntry(s, (b"a%d" % s,)) for s in range(1, 5)),
            )
        )
        rows = storage.read_log(3, 5)
        assert [(r.slot, r.kind) for r in rows] == [
            (3, "decided"),
            (3, "accepted"),
            (4, "decided"),
            (4, "accepted"),
            (5, "accepted"),
        ]
        assert rows[1].ballot == Ballot(2, 1) and rows[0].ballot is None
        assert rows[0].value == (b"a3",)
        assert len(storage.read_log(0, 100, limit=3)) == 3


def test_meta_reports_identity_promise_and_applied_index(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(promised=Ballot(4, 2)), applied_through=17)
        meta = storage.meta()
    assert (meta.cluster_id, meta.node_id, meta.schema_version) == (CLUSTER, NODE, SCHEMA_VERSION)
    assert meta.promised == Ballot(4, 2)
    assert meta.applied_through == 17
    assert meta.accepted.count == 0 and meta.accepted.first is None
    assert meta.snapshot_slot is None


# ------------------------------------------------------------------ identity and creation


def test_open_without_create_refuses_a_missing_database_and_creates_nothing(
    db_path: Path,
) -> None:
    with pytest.raises(NotInitialized, match="no memory of its promises") as info:
        reopen(db_path)
    assert str(db_path) in str(info.value)
    assert list(db_path.parent.iterdir()) == []


def test_open_without_create_refuses_an_empty_database_file(db_path: Path) -> None:
    db_path.touch()
    with pytest.raises(NotInitialized, match="empty"):
        reopen(db_path)
    sqlite3.connect(db_path).execute("VACUUM").connection.close()  # valid header, no tables
    with pytest.raises(NotInitialized, match="empty"):
        reopen(db_path)


def test_open_refuses_a_database_of_another_node_or_cluster(db_path: Path) -> None:
    new_storage(db_path).close()
    before = files_state(db_path.parent)
    with pytest.raises(IdentityMismatch, match="node 2, not cluster 'test-cluster' node 3"):
        Storage.open(db_path, cluster_id=CLUSTER, node_id=3, create=False)
    with pytest.raises(IdentityMismatch, match="cluster 'other'"):
        Storage.open(db_path, cluster_id="other", node_id=NODE, create=True)
    assert files_state(db_path.parent) == before


def test_create_on_an_existing_database_opens_it_without_resetting(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(promised=Ballot(2, 2)))
    with new_storage(db_path) as storage:
        assert storage.load().promised == Ballot(2, 2)


# ---------------------------------------------------------------------- schema version


def test_a_new_database_is_at_the_current_schema_version(db_path: Path) -> None:
    new_storage(db_path).close()
    db = sqlite_utils.Database(db_path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.close()


def _add_note_column(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE identity ADD COLUMN note TEXT")


def test_opening_an_older_database_runs_each_pending_migration_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(promised=Ballot(3, 1)))
    calls: list[int] = []

    def migration_2(db: sqlite_utils.Database) -> None:
        calls.append(1)
        _add_note_column(db)

    monkeypatch.setattr(storage_mod, "MIGRATIONS", (*storage_mod.MIGRATIONS, migration_2))
    with reopen(db_path) as storage:
        assert storage.schema_version == SCHEMA_VERSION + 1
        assert "note" in storage.db.table("identity").columns_dict
        assert storage.load().promised == Ballot(3, 1)
    with reopen(db_path) as storage:
        assert storage.meta().schema_version == SCHEMA_VERSION + 1
    assert calls == [1]


def test_a_failing_migration_leaves_the_previous_version_intact(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_storage(db_path).close()

    def broken(db: sqlite_utils.Database) -> None:
        _add_note_column(db)
        raise sqlite3.OperationalError("migration bug")

    monkeypatch.setattr(storage_mod, "MIGRATIONS", (*storage_mod.MIGRATIONS, broken))
    with pytest.raises(StorageError, match="migration bug"):
        reopen(db_path)
    monkeypatch.undo()
    with reopen(db_path) as storage:
        assert storage.schema_version == SCHEMA_VERSION
        assert "note" not in storage.db.table("identity").columns_dict


def test_a_database_from_a_newer_paxosd_is_refused(db_path: Path) -> None:
    new_storage(db_path).close()
    side = sqlite3.connect(db_path)
    side.execute("UPDATE schema_version SET version = 99")
    side.commit()
    side.close()
    with pytest.raises(SchemaVersionError, match="schema version 99 is newer"):
        reopen(db_path)
    with pytest.raises(SchemaVersionError):
        Storage.open_readonly(db_path)


# ---------------------------------------------------------------------------- durability


def test_wal_and_synchronous_full_are_in_effect_after_open(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        conn = storage.db.conn
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)


def test_unsafe_no_fsync_turns_synchronous_off_and_warns_at_every_open(db_path: Path) -> None:
    for _ in range(2):
        with capture_logs() as logs:
            storage = new_storage(db_path, durability="unsafe-no-fsync")
        assert storage.db.conn.execute("PRAGMA synchronous").fetchone() == (0,)
        storage.close()
        warnings = [e for e in logs if e["event"] == "storage_unsafe_no_fsync"]
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    with capture_logs() as logs:
        reopen(db_path).close()
    assert not [e for e in logs if e["log_level"] == "warning"]


def test_a_refused_pragma_is_an_error_not_a_silent_downgrade(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_storage(db_path).close()

    class NoWal:
        """A connection whose journal mode cannot be switched, as on a file system without
        shared memory; everything else goes to the real connection."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("PRAGMA journal_mode"):
                return self._conn.execute("SELECT 'delete'")
            return self._conn.execute(sql, *args)

    real_set_pragmas = storage_mod._set_pragmas
    monkeypatch.setattr(
        storage_mod,
        "_set_pragmas",
        lambda c, p, d: real_set_pragmas(cast(sqlite3.Connection, NoWal(c)), p, d),
    )
    with pytest.raises(StorageError, match="cannot switch to WAL mode"):
        reopen(db_path)


# ------------------------------------------------------------------------------ read-only


def test_readonly_open_of_a_stopped_node_changes_no_file(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(EVERY_KIND)
    before = files_state(db_path.parent)
    assert list(before) == [DB_FILENAME, "snapshots"]  # the snapshot file is beside it
    with Storage.open_readonly(db_path) as ro:
        assert ro.load() == fold([EVERY_KIND])
        ro.meta()
        ro.read_log(0, 100)
        with pytest.raises(AssertionError, match="read-only"):
            ro.write(PersistRecord(promised=Ballot(9, 9)))
    assert files_state(db_path.parent) == before


def test_readonly_open_beside_a_live_writer_leaves_the_database_and_wal_unchanged(
    db_path: Path,
) -> None:
    with new_storage(db_path) as storage:
        storage.write(EVERY_KIND)
        watched = [db_path, db_path.with_name(DB_FILENAME + "-wal")]
        before = [(p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in watched]
        with Storage.open_readonly(db_path) as ro:
            assert ro.load() == fold([EVERY_KIND])
        after = [(p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in watched]
        assert after == before


def test_readonly_open_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(NotInitialized, match="no database file"):
        Storage.open_readonly(tmp_path / DB_FILENAME)
    assert not os.listdir(tmp_path)


def test_a_snapshot_keeps_the_membership_in_effect_at_its_slot(db_path: Path) -> None:
    m = Membership((Member(1, "", True), Member(4, "10.0.0.4:7104", False)), epoch=3)
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(snapshot=Snapshot(slot=7, state=b"s", membership=m)))
    with reopen(db_path) as storage:
        snap = storage.load().snapshot
    assert snap is not None and snap.membership == m


def test_a_schema_1_snapshot_survives_the_membership_migration(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Databases made before membership change: the snapshot, its checksum and the bootstrap
    membership (None) read back unchanged after the upgrade."""
    monkeypatch.setattr(storage_mod, "MIGRATIONS", storage_mod.MIGRATIONS[:1])
    new_storage(db_path).close()
    monkeypatch.undo()
    # Written as schema 1 wrote it (no membership column, crc over slot and state only).
    side = sqlite3.connect(db_path)
    crc = storage_mod._snapshot_checksum(5, b"old state")
    side.execute(
        "INSERT INTO snapshot (id, slot, state, checksum) VALUES (0, 5, ?, ?)", (b"old state", crc)
    )
    side.commit()
    side.close()
    with reopen(db_path) as storage:
        assert storage.schema_version == SCHEMA_VERSION
        assert storage.load().snapshot == Snapshot(slot=5, state=b"old state", membership=None)


def test_forget_log_slots_deletes_only_the_named_slots(db_path: Path) -> None:
    with new_storage(db_path) as storage:
        storage.write(
            PersistRecord(
                accepted=tuple(AcceptedEntry(s, Ballot(1, 1), (b"a%d" % s,)) for s in (5, 6, 7)),
                decided=tuple(DecidedEntry(s, (b"d%d" % s,)) for s in (1, 2, 3)),
            )
        )
        storage.forget_log_slots([2, 6])
        state = storage.load()
    assert sorted(state.accepted) == [5, 7]
    assert sorted(state.decided) == [1, 3]


def test_an_unsynced_write_never_checkpoints(db_path: Path) -> None:
    """A checkpoint inside a synchronous=OFF commit would copy fsynced WAL frames into an
    unsynced database file and let the WAL be reused: a power cut could then lose them."""
    with new_storage(db_path) as storage:
        for s in range(1, 1501):
            storage.write(PersistRecord(decided=(DecidedEntry(s, (b"x" * 4000,)),)), sync=False)
        side = sqlite3.connect(db_path)
        try:
            _, wal_frames, _ = side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            side.close()
        assert wal_frames > 1500  # never restarted: every unsynced commit is still in the WAL
        settings = storage.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert settings == storage_mod.WAL_AUTOCHECKPOINT_PAGES
        assert storage.db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_compaction_is_a_mark_at_once_and_its_rows_go_a_batch_per_write(db_path: Path) -> None:
    from paxosd.storage.store import COMPACT_SLOTS_PER_WRITE

    slots = 3 * COMPACT_SLOTS_PER_WRITE + 5
    decided = tuple(DecidedEntry(s, (b"v%d" % s,)) for s in range(1, slots + 11))
    with new_storage(db_path) as storage:
        storage.write(PersistRecord(decided=decided))
        storage.write(PersistRecord(snapshot=Snapshot(slots, b"s"), compact_through=slots))
        # Compacted for every reader at once...
        assert min(storage.load().decided) == slots + 1
        assert storage.meta().decided.first == slots + 1
        assert [r.slot for r in storage.read_log(1, slots + 1)] == [slots + 1]

        def stored() -> int:
            return int(storage.db.execute("SELECT count(*) FROM decided").fetchone()[0])

        # ...while the rows go one batch per write.
        assert stored() == slots + 10 - COMPACT_SLOTS_PER_WRITE
        storage.write(PersistRecord(promised=Ballot(1, 1)))
        assert stored() == slots + 10 - 2 * COMPACT_SLOTS_PER_WRITE
    with reopen(db_path) as storage:  # the mark survives a restart, and the deleting goes on
        assert min(storage.load().decided) == slots + 1
        for _ in range(2):
            storage.write(PersistRecord(promised=Ballot(1, 1)))
        assert int(storage.db.execute("SELECT count(*) FROM decided").fetchone()[0]) == 10


def test_a_peers_snapshot_still_decoding_survives_an_own_older_snapshot_recorded_meanwhile(
    db_path: Path,
) -> None:
    """A follower decodes a peer's snapshot (slot 9) over many loop turns; its own snapshot
    child (slot 5) finishes meanwhile and is recorded. The peer's file, newer than the one
    recorded, is not superseded: when its install is recorded, the row must name a file
    that exists, or the next start finds the recorded snapshot missing."""
    import structlog

    from paxosd.core.messages import SnapshotChunk
    from paxosd.server.snapshots import ForkSnapshots
    from paxosd.storage.snapfile import REAPER

    with new_storage(db_path) as storage:
        maker = ForkSnapshots(storage.snapshot_dir, structlog.get_logger())
        peers = b"the state through slot 9"
        received = maker.receive(SnapshotChunk(9, 0, len(peers), peers, None))
        assert received is not None  # assembled: being decoded now
        storage.write(PersistRecord(snapshot=Snapshot(5, b"own state through 5")))
        REAPER.wait()
        storage.write(PersistRecord(snapshot=Snapshot(9, received), compact_through=9))
    REAPER.wait()
    with reopen(db_path) as storage:
        state = storage.load()
    assert state.snapshot is not None and state.snapshot.slot == 9
    assert state.snapshot.state == peers


def test_a_slot_accepted_and_decided_with_one_value_loads_as_one_object(db_path: Path) -> None:
    """After a restart the log since the snapshot must not take twice its size in memory."""
    value = (b"x" * 1024, b"y" * 1024)
    other = (b"z" * 1024,)
    with new_storage(db_path) as storage:
        storage.write(
            PersistRecord(
                accepted=(
                    AcceptedEntry(5, Ballot(1, 1), value),
                    AcceptedEntry(6, Ballot(1, 1), other),
                ),
                decided=(DecidedEntry(5, value), DecidedEntry(6, value)),
            )
        )
    with reopen(db_path) as storage:
        durable = storage.load()
    assert durable.decided[5].value is durable.accepted[5].value
    # A slot decided with another value than this node's vote keeps both.
    assert durable.decided[6].value == value and durable.accepted[6].value == other
