"""Damaged data dirs: each kind of damage gives its own typed error naming the file and the
problem, leaves the files as they were, and makes ``paxosd inspect`` exit non-zero with one
line on stderr."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from paxosd.cli import app
from paxosd.core.io import PersistRecord
from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry, Snapshot
from paxosd.storage.store import (
    DB_FILENAME,
    ChecksumMismatch,
    CorruptDatabase,
    NotInitialized,
    Storage,
    StorageError,
    WalTruncated,
    decode_value,
    encode_value,
)

CLUSTER = "test-cluster"
NODE = 1
MARKER = b"MARKER-VALUE-" * 8


def open_existing(path: Path) -> Storage:
    return Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=False)


def populated(directory: Path) -> Path:
    """A cleanly closed database: everything checkpointed into the main file, no WAL."""
    directory.mkdir(exist_ok=True)
    path = directory / DB_FILENAME
    with Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=True) as storage:
        storage.write(
            PersistRecord(
                promised=Ballot(2, 1),
                accepted=tuple(AcceptedEntry(s, Ballot(2, 1), (b"a%d" % s,)) for s in range(1, 9)),
                decided=tuple(
                    DecidedEntry(s, (MARKER if s == 7 else b"d%d" % s,)) for s in range(1, 9)
                ),
                snapshot=Snapshot(2, b"snapshot-state"),
            )
        )
    return path


def crashed_copy(source_dir: Path, target_dir: Path) -> Path:
    """The files a crash leaves: the main file plus a WAL holding committed transactions
    that were never checkpointed (copied while the writer still has the database open)."""
    source_dir.mkdir()
    path = source_dir / DB_FILENAME
    with Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=True) as storage:
        for s in range(1, 21):
            storage.write(PersistRecord(decided=(DecidedEntry(s, (b"x" * 100,)),)))
        target_dir.mkdir()
        shutil.copy(path, target_dir / DB_FILENAME)
        shutil.copy(source_dir / (DB_FILENAME + "-wal"), target_dir / (DB_FILENAME + "-wal"))
    return target_dir / DB_FILENAME


def snapshot_files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (the snapshot folder's too) with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_inspect(data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["inspect", "--data-dir", str(data_dir), *args])
    return result.exit_code, result.stdout, result.stderr


def assert_inspect_fails_with_one_line(data_dir: Path, expected: str) -> None:
    for args in ((), ("--json",), ("--log",)):
        code, out, err = run_inspect(data_dir, *args)
        assert code != 0
        assert out == ""
        assert err.count("\n") == 1 and expected in err, err
        assert "Traceback" not in err


def set_decided_value(path: Path, slot: int, blob: bytes) -> None:
    side = sqlite3.connect(path)
    side.execute("UPDATE decided SET value = ? WHERE slot = ?", (blob, slot))
    side.commit()
    side.close()


# ----------------------------------------------------------------------------- checksums


def test_a_value_changed_behind_the_checksum_is_reported_with_file_table_and_slot(
    tmp_path: Path,
) -> None:
    path = populated(tmp_path)
    set_decided_value(path, 7, encode_value((b"forged",)))
    with open_existing(path) as storage, pytest.raises(ChecksumMismatch) as info:
        storage.load()
    assert (info.value.table, info.value.slot) == ("decided", 7)
    assert str(path) in str(info.value) and "table decided slot 7" in str(info.value)
    with open_existing(path) as storage, pytest.raises(ChecksumMismatch):
        storage.read_log(0, 100)
    assert_inspect_fails_with_one_line(tmp_path, "checksum mismatch in table decided slot 7")


def test_a_flipped_bit_in_the_file_is_caught_by_the_row_checksum(tmp_path: Path) -> None:
    path = populated(tmp_path)
    data = bytearray(path.read_bytes())
    offset = data.index(MARKER) + 5
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    # SQLite's own checks pass: they cover the page structure, not a value's bytes.
    with open_existing(path) as storage, pytest.raises(ChecksumMismatch, match="decided slot 7"):
        storage.load()
    assert_inspect_fails_with_one_line(tmp_path, "checksum mismatch in table decided slot 7")


def test_a_tampered_promised_ballot_is_refused_at_open(tmp_path: Path) -> None:
    path = populated(tmp_path)
    side = sqlite3.connect(path)
    side.execute("UPDATE paxos_state SET promised_round = 1")
    side.commit()
    side.close()
    with pytest.raises(ChecksumMismatch, match="table paxos_state"):
        open_existing(path)


def test_a_tampered_snapshot_is_refused_at_load(tmp_path: Path) -> None:
    path = populated(tmp_path)
    side = sqlite3.connect(path)
    side.execute("UPDATE snapshot SET file_crc = file_crc + 1")
    side.commit()
    side.close()
    with open_existing(path) as storage, pytest.raises(ChecksumMismatch, match="table snapshot"):
        storage.load()


def test_a_row_with_a_valid_checksum_over_undecodable_bytes_is_a_corrupt_record(
    tmp_path: Path,
) -> None:
    from paxosd.storage.store import CorruptRecord, _decided_checksum

    path = populated(tmp_path)
    garbage = b"\xc1\xff"
    side = sqlite3.connect(path)
    side.execute(
        "UPDATE decided SET value = ?, checksum = ? WHERE slot = 3",
        (garbage, _decided_checksum(3, garbage)),
    )
    side.commit()
    side.close()
    with open_existing(path) as storage, pytest.raises(CorruptRecord, match="decided slot 3"):
        storage.load()


# --------------------------------------------------------------------------------- WAL


def test_an_intact_crash_wal_is_replayed(tmp_path: Path) -> None:
    path = crashed_copy(tmp_path / "live", tmp_path / "crashed")
    with open_existing(path) as storage:
        assert sorted(storage.load().decided) == list(range(1, 21))


def test_a_wal_cut_mid_frame_opens_as_after_a_crash_and_logs_a_warning(tmp_path: Path) -> None:
    # kill -9 during an append leaves exactly this (see test_storage_crash.py), so it cannot
    # be refused; what survives must be a prefix of the committed transactions.
    path = crashed_copy(tmp_path / "live", tmp_path / "crashed")
    wal = path.with_name(DB_FILENAME + "-wal")
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 1000)
    with capture_logs() as logs, Storage.open_readonly(path) as storage:
        slots = sorted(storage.load().decided)
    assert slots == list(range(1, len(slots) + 1)) and len(slots) < 20
    warnings = [e for e in logs if e["event"] == "storage_wal_partial_frame"]
    assert warnings and warnings[0]["path"] == str(wal)


def test_a_wal_truncated_inside_its_header_is_refused(tmp_path: Path) -> None:
    path = crashed_copy(tmp_path / "live", tmp_path / "crashed")
    wal = path.with_name(DB_FILENAME + "-wal")
    with wal.open("r+b") as f:
        f.truncate(10)
    before = snapshot_files(path.parent)
    with pytest.raises(WalTruncated, match="inside its header") as info:
        open_existing(path)
    assert str(wal) in str(info.value)
    with pytest.raises(WalTruncated):
        Storage.open_readonly(path)
    assert snapshot_files(path.parent) == before
    assert_inspect_fails_with_one_line(path.parent, "WAL file truncated inside its header")


def test_a_wal_with_a_damaged_header_is_refused(tmp_path: Path) -> None:
    path = crashed_copy(tmp_path / "live", tmp_path / "crashed")
    wal = path.with_name(DB_FILENAME + "-wal")
    data = bytearray(wal.read_bytes())
    data[17] ^= 0xFF  # a salt byte: the header checksum no longer matches
    wal.write_bytes(bytes(data))
    with pytest.raises(WalTruncated, match="fails its checksum"):
        open_existing(path)


# --------------------------------------------------------------------- main database file


def test_a_truncated_database_file_is_corrupt(tmp_path: Path) -> None:
    path = populated(tmp_path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    before = snapshot_files(tmp_path)
    with pytest.raises(CorruptDatabase, match="malformed") as info:
        open_existing(path)
    assert str(path) in str(info.value)
    with pytest.raises(CorruptDatabase):
        Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=True)
    assert snapshot_files(tmp_path) == before
    assert_inspect_fails_with_one_line(tmp_path, "malformed")


def test_a_deleted_database_is_not_silently_recreated(tmp_path: Path) -> None:
    path = populated(tmp_path)
    path.unlink()
    with pytest.raises(NotInitialized, match="no database"):
        open_existing(path)
    assert [p.name for p in tmp_path.iterdir()] == ["snapshots"]  # no database recreated
    assert_inspect_fails_with_one_line(tmp_path, "no database file")


def test_a_deleted_database_whose_wal_survives_is_refused_even_with_create(
    tmp_path: Path,
) -> None:
    path = crashed_copy(tmp_path / "live", tmp_path / "crashed")
    path.unlink()
    before = snapshot_files(path.parent)
    for create in (False, True):
        with pytest.raises(CorruptDatabase, match="missing but its WAL file exists"):
            Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=create)
    assert snapshot_files(path.parent) == before


def test_a_garbage_file_is_corrupt_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    path.write_bytes(bytes(range(256)) * 32)
    before = snapshot_files(tmp_path)
    for create in (False, True):
        with pytest.raises(CorruptDatabase, match="not a database") as info:
            Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=create)
        assert str(info.value).startswith(str(path) + ": ")
    assert snapshot_files(tmp_path) == before
    assert_inspect_fails_with_one_line(tmp_path, "not a database")


def test_another_programs_sqlite_database_is_not_taken_for_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (body TEXT)")
    other.commit()
    other.close()
    with pytest.raises(CorruptDatabase, match="not a paxosd database"):
        Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=True)


def test_every_error_message_is_one_line_naming_the_file() -> None:
    error = StorageError(Path("/data/x.sqlite3"), "first line\nsecond line")
    assert str(error) == "/data/x.sqlite3: first line second line"


def test_decode_value_round_trips_what_encode_value_wrote() -> None:
    value = (b"", b"\x00\xff", b"x" * 70_000)
    assert decode_value(encode_value(value)) == value


# ------------------------------------------------------------------ snapshot files


def test_a_torn_snapshot_file_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = populated(tmp_path)
    (snap,) = (tmp_path / "snapshots").glob("*.snap")
    with snap.open("r+b") as f:
        f.truncate(snap.stat().st_size - 3)
    with open_existing(path) as storage, pytest.raises(CorruptDatabase, match="torn") as info:
        storage.load()
    assert str(info.value).startswith(str(snap) + ": ")


def test_a_missing_snapshot_file_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = populated(tmp_path)
    (snap,) = (tmp_path / "snapshots").glob("*.snap")
    snap.unlink()
    with open_existing(path) as storage, pytest.raises(CorruptDatabase, match="missing") as info:
        storage.load()
    assert str(info.value).startswith(str(snap) + ": ")


def test_an_altered_snapshot_file_of_the_same_size_is_refused(tmp_path: Path) -> None:
    path = populated(tmp_path)
    (snap,) = (tmp_path / "snapshots").glob("*.snap")
    data = bytearray(snap.read_bytes())
    data[0] ^= 1
    snap.write_bytes(bytes(data))
    with open_existing(path) as storage, pytest.raises(CorruptDatabase, match="checksum"):
        storage.load()


def test_a_stray_tmp_snapshot_file_is_ignored_and_removed_at_open(tmp_path: Path) -> None:
    # What a crash (or a snapshot child killed) mid-write leaves: never read, gone at start.
    path = populated(tmp_path)
    folder = tmp_path / "snapshots"
    stray = folder / "00000000000000000009.snap.4242.tmp"
    stray.write_bytes(b"half a snapshot")
    with open_existing(path) as storage:
        assert storage.load().snapshot == Snapshot(2, b"snapshot-state")
    assert not stray.exists()
    assert [p.name for p in folder.iterdir()] == ["00000000000000000002.snap"]


def test_a_newer_snapshot_replaces_the_file_and_the_old_one_is_deleted(tmp_path: Path) -> None:
    path = populated(tmp_path)
    with open_existing(path) as storage:
        storage.write(PersistRecord(snapshot=Snapshot(5, b"newer")))
        storage.write(PersistRecord(snapshot=Snapshot(4, b"older: ignored")))
        assert storage.load().snapshot == Snapshot(5, b"newer")
        assert storage.meta().snapshot_bytes == len(b"newer")
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["00000000000000000005.snap"]


def test_a_schema_2_database_with_its_snapshot_blob_opens_and_moves_on_to_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paxosd.storage import store as storage_mod

    path = tmp_path / DB_FILENAME
    monkeypatch.setattr(storage_mod, "MIGRATIONS", storage_mod.MIGRATIONS[:2])
    Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=True).close()
    side = sqlite3.connect(path)
    blob = b"state kept in the database"
    side.execute(
        "INSERT INTO snapshot (id, slot, state, checksum, membership) VALUES (0, 3, ?, ?, x'')",
        (blob, storage_mod._snapshot_checksum(3, blob)),
    )
    side.commit()
    side.close()
    monkeypatch.undo()
    with open_existing(path) as storage:
        assert storage.schema_version == 3
        assert storage.load().snapshot == Snapshot(3, blob)
        assert storage.meta().snapshot_bytes == len(blob)
        storage.write(PersistRecord(snapshot=Snapshot(4, b"now in a file")))
    with open_existing(path) as storage:
        assert storage.load().snapshot == Snapshot(4, b"now in a file")
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["00000000000000000004.snap"]
