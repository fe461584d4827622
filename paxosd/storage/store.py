"""Durable Paxos state in SQLite: what an acceptor promised and voted, what was decided, and
the latest snapshot, so that a restart after ``kill -9`` or a power cut rebuilds exactly the
state the node had acknowledged.

Why each choice:
  - WAL + ``synchronous=FULL``: a commit returns only after its WAL frames are fsynced, which
    is the moment the daemon may release the messages that depend on it (the Paxos
    durability rule in paxosd/core/io.py). Both pragmas are read back at open, because SQLite
    silently keeps the old journal mode when it cannot switch (for example on a file system
    without shared memory).
  - One transaction per ``write()`` (group commit): everything one Ready produced costs one
    fsync, and a crash leaves either all of it or none of it.
  - A crc32 per log row, per snapshot and over the promised ballot: SQLite checks its page
    structure, not the bytes of a value, so a flipped bit in a vote would otherwise be
    replayed as if it were the truth.
  - Cluster id and node id are stored at creation and checked at every open: a data dir
    copied to the wrong host must not vote under someone else's name.

A ``Storage`` is not thread-safe: one thread at a time (the daemon's loop) may use it. After
any error from ``write()`` the object refuses further writes, because whether the failed
transaction reached the disk is unknown; the daemon must exit and recover by restarting.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NoReturn

import msgspec
import structlog

from paxosd.core.io import DurableState, PersistRecord
from paxosd.core.types import (
    ZERO_BALLOT,
    AcceptedEntry,
    Ballot,
    DecidedEntry,
    Membership,
    Snapshot,
    SnapshotState,
    Value,
)
from paxosd.storage.snapfile import (
    REAPER,
    SnapshotFile,
    SnapshotFileError,
    file_name,
    remove_older,
    remove_tmp_files,
    snapshot_dir,
    write_bytes_file,
)
from paxosd.storage.sqlite_utils_lean import sqlite_utils

__all__ = [
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "ChecksumMismatch",
    "CorruptDatabase",
    "CorruptRecord",
    "DatabaseLocked",
    "DiskFull",
    "Durability",
    "IdentityMismatch",
    "LogRow",
    "NotInitialized",
    "SchemaVersionError",
    "Storage",
    "StorageError",
    "StorageIOError",
    "StorageMeta",
    "VacuumStats",
    "WalTruncated",
    "decode_value",
    "encode_value",
    "vacuum_database",
]

_log = structlog.get_logger(__name__)

# The database file inside a node's data dir. SQLite keeps "-wal" and "-shm" files next to it.
DB_FILENAME = "paxosd.sqlite3"

Durability = Literal["fsync", "unsafe-no-fsync"]

# How long a statement waits for another connection's lock before failing. The daemon is
# the only writer; the wait only covers a reader (inspect) that holds the WAL-index briefly.
BUSY_TIMEOUT_S = 2.0
# Bound on rows returned by one read_log() call.
LOG_ROWS_MAX = 100_000
# Bound on how many quick_check problems an error message quotes.
QUICK_CHECK_PROBLEMS_MAX = 3

# ------------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base of every storage failure. ``str()`` is one line: the file, then the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(problem.split())
        super().__init__(f"{self.path}: {self.problem}")


class NotInitialized(StorageError):
    """No database (or an empty one) where one was required: a node that forgot its promises
    must not vote as if it had made none, so only an explicit bootstrap may create one."""


class CorruptDatabase(StorageError):
    """The file is not a readable paxosd database, or SQLite found it damaged."""


class WalTruncated(CorruptDatabase):
    """The WAL file's header was cut or damaged: SQLite would silently drop the committed
    transactions in it."""


class ChecksumMismatch(CorruptDatabase):
    """A row's bytes differ from what was written (its checksum does not match)."""

    def __init__(self, path: Path | str, table: str, slot: int | None) -> None:
        self.table = table
        self.slot = slot
        where = f"table {table}" + (f" slot {slot}" if slot is not None else "")
        super().__init__(path, f"checksum mismatch in {where}: the stored bytes were altered")


class CorruptRecord(CorruptDatabase):
    """A row passed its checksum (or had none to pass) but does not decode."""


class IdentityMismatch(StorageError):
    """The database belongs to another cluster or another node id."""


class SchemaVersionError(StorageError):
    """The schema version is unknown to this build (written by a newer paxosd)."""


class DatabaseLocked(StorageError):
    """Another process holds the database lock (is another paxosd running on this dir?)."""


class StorageIOError(StorageError):
    """The operating system refused a read or write (permissions, disk full, I/O error)."""


class DiskFull(StorageIOError):
    """A write failed for want of space (SQLITE_FULL: the file system is full, or the
    database reached its page limit; or SQLITE_IOERR_SHMSIZE: the WAL index could not
    grow, which is how opening a database on a full disk fails). Unlike an I/O error this
    is an operating condition the node can wait out: SQLite rolled the failed transaction
    back, so the file holds exactly the transactions committed before it, and once space
    is back a restart recovers."""


# SQLite primary result codes (https://sqlite.org/rescode.html) that are not corruption.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_CONSTRAINT = 10, 13, 14, 19
_SQLITE_IOERR_SHMSIZE = 4874  # an extended code: SQLITE_IOERR | (19 << 8)


def _translate(path: Path, doing: str, exc: sqlite3.Error) -> StorageError:
    """Map a sqlite3 exception to a typed StorageError: the caller must never see a raw
    sqlite3 traceback for something that is an operating condition, not a bug."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    problem = f"{doing}: {exc}"
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return DatabaseLocked(path, f"{problem} (is another paxosd using this data dir?)")
    if primary == _SQLITE_FULL:
        return DiskFull(path, problem)
    if code == _SQLITE_IOERR_SHMSIZE:
        # Growing the WAL index (the -shm file) failed: ENOSPC in practice. Opening a WAL
        # database creates it, so a restart onto a full disk fails here, not with FULL.
        return DiskFull(path, f"{problem} (the WAL index file could not grow: disk full?)")
    if primary in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN):
        return StorageIOError(path, problem)
    if primary == _SQLITE_CONSTRAINT:
        return StorageError(path, problem)
    return CorruptDatabase(path, problem)


@contextmanager
def _sqlite_errors(path: Path, doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise _translate(path, doing, exc) from exc


# ----------------------------------------------------------------------------- encoding

_VALUE_ENCODER = msgspec.msgpack.Encoder()
_VALUE_DECODER = msgspec.msgpack.Decoder(tuple[bytes, ...])

# Checksum headers bind a row's bytes to its identity, so a row copied to another slot (or
# a value moved between tables) fails its check too. Different lengths per kind keep the
# domains apart.
_ACCEPTED_HEADER = struct.Struct("<qqq")  # slot, ballot round, ballot node
_DECIDED_HEADER = struct.Struct("<q")  # slot
_SNAPSHOT_HEADER = struct.Struct("<qB")  # slot, kind tag
_PROMISED_HEADER = struct.Struct("<qqB")  # round, node, kind tag
_SNAPSHOT_TAG = 1
_SNAPSHOT_FILE_TAG = 2
_PROMISED_TAG = 2


def encode_value(value: Value) -> bytes:
    """A slot's value as stored: a msgpack array of byte strings."""
    return _VALUE_ENCODER.encode(value)


def decode_value(blob: bytes, *, path: Path | str = "<memory>", where: str = "value") -> Value:
    """Decode a stored value. Any bytes that are not one raise CorruptRecord, never
    something untyped: a damaged file is an operating condition, not a bug."""
    try:
        return _VALUE_DECODER.decode(blob)
    except (msgspec.DecodeError, TypeError) as exc:
        raise CorruptRecord(path, f"{where} does not decode: {exc}") from exc


def _accepted_checksum(slot: int, ballot_round: int, ballot_node: int, blob: bytes) -> int:
    return zlib.crc32(blob, zlib.crc32(_ACCEPTED_HEADER.pack(slot, ballot_round, ballot_node)))


def _decided_checksum(slot: int, blob: bytes) -> int:
    return zlib.crc32(blob, zlib.crc32(_DECIDED_HEADER.pack(slot)))


def _snapshot_checksum(slot: int, state: bytes, membership: bytes = b"") -> int:
    # Schema 1 had no membership; crc32 over b"" is the identity, so old rows still check.
    return zlib.crc32(
        membership, zlib.crc32(state, zlib.crc32(_SNAPSHOT_HEADER.pack(slot, _SNAPSHOT_TAG)))
    )


def _snapshot_file_checksum(slot: int, name: str, size: int, crc: int, membership: bytes) -> int:
    """Over the row of a snapshot kept in a file: which file, how big, its crc32 (the file's
    own bytes are checked against ``crc`` when it is opened)."""
    head = _SNAPSHOT_HEADER.pack(slot, _SNAPSHOT_FILE_TAG) + struct.pack("<qI", size, crc)
    return zlib.crc32(membership, zlib.crc32(name.encode(), zlib.crc32(head)))


def _promised_checksum(ballot_round: int, ballot_node: int) -> int:
    return zlib.crc32(_PROMISED_HEADER.pack(ballot_round, ballot_node, _PROMISED_TAG))


# ------------------------------------------------------------------------------- schema

Migration = Callable[[sqlite_utils.Database], None]


def _migration_1_initial_schema(db: sqlite_utils.Database) -> None:
    """The first schema. Single-row tables use id 0. Log tables key on slot, which SQLite
    makes the rowid: no separate index, and slot-ordered scans read pages in order."""
    db.create_table(
        "identity",
        {"id": int, "cluster_id": str, "node_id": int, "created_at": str},
        pk="id",
        not_null={"cluster_id", "node_id", "created_at"},
        strict=True,
    )
    db.create_table(
        "paxos_state",
        {
            "id": int,
            "promised_round": int,
            "promised_node": int,
            "promised_checksum": int,
            "applied_through": int,
        },
        pk="id",
        not_null={"promised_round", "promised_node", "promised_checksum"},
        strict=True,
    )
    db.table("paxos_state").insert(
        {
            "id": 0,
            "promised_round": ZERO_BALLOT.round,
            "promised_node": ZERO_BALLOT.node,
            "promised_checksum": _promised_checksum(ZERO_BALLOT.round, ZERO_BALLOT.node),
            "applied_through": None,
        }
    )
    db.create_table(
        "accepted",
        {"slot": int, "ballot_round": int, "ballot_node": int, "value": bytes, "checksum": int},
        pk="slot",
        not_null={"ballot_round", "ballot_node", "value", "checksum"},
        strict=True,
    )
    db.create_table(
        "decided",
        {"slot": int, "value": bytes, "checksum": int},
        pk="slot",
        not_null={"value", "checksum"},
        strict=True,
    )
    db.create_table(
        "snapshot",
        {"id": int, "slot": int, "state": bytes, "checksum": int},
        pk="id",
        not_null={"slot", "state", "checksum"},
        strict=True,
    )


def _migration_2_snapshot_membership(db: sqlite_utils.Database) -> None:
    """Snapshots carry the cluster membership in effect at their slot (msgpack; empty: the
    bootstrap membership), since membership changes are log commands compaction drops."""
    db.conn.execute("ALTER TABLE snapshot ADD COLUMN membership BLOB NOT NULL DEFAULT x''")


def _migration_3_snapshot_file(db: sqlite_utils.Database) -> None:
    """Snapshots move out of the database into a file beside it (paxosd/storage/snapfile.py):
    the row names the file, its size and crc32. A row from before keeps its blob in ``state``
    (``file`` empty) and is read as it was, until the next snapshot replaces it."""
    conn = db.conn
    conn.execute("ALTER TABLE snapshot ADD COLUMN file TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE snapshot ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE snapshot ADD COLUMN file_crc INTEGER NOT NULL DEFAULT 0")
    # Log rows at or below it are compacted: never read, deleted a batch per write.
    conn.execute("ALTER TABLE paxos_state ADD COLUMN compacted_through INTEGER NOT NULL DEFAULT 0")


# MIGRATIONS[i] takes the schema from version i to version i + 1. Append only: a released
# migration never changes, because databases in the field have already run it.
MIGRATIONS: tuple[Migration, ...] = (
    _migration_1_initial_schema,
    _migration_2_snapshot_membership,
    _migration_3_snapshot_file,
)
SCHEMA_VERSION = len(MIGRATIONS)

_SCHEMA_VERSION_TABLE = "schema_version"


def _read_schema_version(db: sqlite_utils.Database) -> int | None:
    """The stored version, or None when the file has no paxosd schema at all."""
    row = db.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_SCHEMA_VERSION_TABLE,)
    ).fetchone()
    if row is None:
        return None
    version_row = db.conn.execute(
        f"SELECT version FROM {_SCHEMA_VERSION_TABLE} WHERE id = 0"
    ).fetchone()
    if version_row is None or not isinstance(version_row[0], int):
        return -1
    return int(version_row[0])


def _apply_migrations(
    db: sqlite_utils.Database, path: Path, current: int, identity: tuple[str, int] | None
) -> int:
    """Bring the schema from ``current`` to ``len(MIGRATIONS)``.

    A fresh database (``current == 0``) is built in ONE transaction together with its
    identity, so a crash during creation leaves either a complete database or none. Upgrades
    run one transaction per migration, each with its version bump, so a crash or a failing
    migration leaves a consistent older version that the next start continues from.
    """
    migrations = MIGRATIONS
    target = len(migrations)
    if current == 0:
        assert identity is not None
        with db.atomic():
            db.create_table(_SCHEMA_VERSION_TABLE, {"id": int, "version": int}, pk="id")
            for migration in migrations:
                migration(db)
            db.conn.execute(
                f"INSERT INTO {_SCHEMA_VERSION_TABLE} (id, version) VALUES (0, ?)", (target,)
            )
            cluster_id, node_id = identity
            db.conn.execute(
                "INSERT INTO identity (id, cluster_id, node_id, created_at) VALUES (0, ?, ?, ?)",
                (cluster_id, node_id, datetime.now(UTC).isoformat(timespec="seconds")),
            )
        return target
    for version in range(current, target):
        with db.atomic():
            migrations[version](db)
            db.conn.execute(
                f"UPDATE {_SCHEMA_VERSION_TABLE} SET version = ? WHERE id = 0", (version + 1,)
            )
        _log.info("storage_migrated", path=str(path), schema_version=version + 1)
    return target


# --------------------------------------------------------------------------- WAL check

_WAL_MAGIC_LE = 0x377F0682
_WAL_MAGIC_BE = 0x377F0683
_WAL_HEADER_BYTES = 32
_WAL_FRAME_HEADER_BYTES = 24


def _wal_checksum(data: bytes, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum (https://sqlite.org/fileformat2.html#walformat)."""
    words = struct.unpack((">" if big_endian else "<") + f"{len(data) // 4}I", data)
    s0 = s1 = 0
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _check_wal(db_path: Path) -> None:
    """Refuse a WAL file whose header was cut or damaged, before SQLite sees it.

    SQLite treats a WAL whose header is short or fails its checksum as empty, which silently
    drops every committed transaction not yet checkpointed: the votes this node acknowledged.
    No crash produces such a header (SQLite writes the 32 header bytes in one write() and
    syncs them), so it means damage: stop and let the operator decide. Moving the -wal file
    aside accepts the loss explicitly.

    A WAL that ends in a partial frame is NOT refused: kill -9 during an append leaves one
    (Linux can stop a write() at a page boundary on a fatal signal; the crash test hits it),
    and SQLite then ignores the uncommitted tail, which is correct. A truncation that cuts
    committed frames looks exactly like that and cannot be told apart without a witness
    outside the file; it is logged, not refused.
    """
    wal = db_path.with_name(db_path.name + "-wal")
    try:
        size = wal.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageIOError(wal, f"cannot stat the WAL file: {exc}") from exc
    if size == 0:
        return
    remedy = "committed transactions would be lost; move the file aside to accept that"
    if size < _WAL_HEADER_BYTES:
        raise WalTruncated(wal, f"WAL file truncated inside its header ({size} bytes); {remedy}")
    try:
        with wal.open("rb") as f:
            header = f.read(_WAL_HEADER_BYTES)
    except OSError as exc:
        raise StorageIOError(wal, f"cannot read the WAL file: {exc}") from exc
    magic, _version, page_size = struct.unpack(">III", header[:12])
    if magic not in (_WAL_MAGIC_LE, _WAL_MAGIC_BE):
        raise WalTruncated(wal, f"WAL file header is not a WAL header; {remedy}")
    if _wal_checksum(header[:24], magic == _WAL_MAGIC_BE) != struct.unpack(">II", header[24:]):
        raise WalTruncated(wal, f"WAL file header fails its checksum; {remedy}")
    page_size = 65536 if page_size == 1 else page_size
    frame_bytes = _WAL_FRAME_HEADER_BYTES + page_size
    partial_bytes = (size - _WAL_HEADER_BYTES) % frame_bytes
    if partial_bytes:
        _log.warning(
            "storage_wal_partial_frame",
            path=str(wal),
            partial_bytes=partial_bytes,
            problem="the WAL ends in a partial frame: a crash during a write (its transaction "
            "was not committed, and is ignored) or a truncated file",
        )


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class SlotRange:
    first: int | None
    last: int | None
    count: int


@dataclass(frozen=True, slots=True)
class StorageMeta:
    """What ``paxosd inspect`` shows: enough to tell which node this is and how far it got."""

    path: str
    cluster_id: str
    node_id: int
    schema_version: int
    created_at: str
    promised: Ballot
    accepted: SlotRange
    decided: SlotRange
    snapshot_slot: int | None
    snapshot_bytes: int | None
    applied_through: int | None
    file_bytes: int


@dataclass(frozen=True, slots=True)
class LogRow:
    """One stored log entry. ``ballot`` is None for decided entries (a decision is final,
    whatever ballot chose it)."""

    slot: int
    kind: Literal["accepted", "decided"]
    ballot: Ballot | None
    value: Value
    value_bytes: int


# ------------------------------------------------------------------------------ storage

_SQL_PROMISE = (
    "UPDATE paxos_state SET promised_round = ?, promised_node = ?, promised_checksum = ? "
    "WHERE id = 0"
)
_SQL_APPLIED = "UPDATE paxos_state SET applied_through = ? WHERE id = 0"
_SQL_ACCEPT = (
    "INSERT OR REPLACE INTO accepted (slot, ballot_round, ballot_node, value, checksum) "
    "VALUES (?, ?, ?, ?, ?)"
)
_SQL_DECIDE = "INSERT OR REPLACE INTO decided (slot, value, checksum) VALUES (?, ?, ?)"
# Mirrors DurableState.apply: a snapshot only ever moves forward.
_SQL_SNAPSHOT = (
    "INSERT INTO snapshot (id, slot, state, checksum, membership, file, size, file_crc) "
    "VALUES (0, ?, x'', ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET slot = excluded.slot, state = excluded.state, "
    "checksum = excluded.checksum, membership = excluded.membership, file = excluded.file, "
    "size = excluded.size, file_crc = excluded.file_crc "
    "WHERE excluded.slot >= snapshot.slot"
)
_SQL_COMPACT_MARK = (
    "UPDATE paxos_state SET compacted_through = max(compacted_through, ?) WHERE id = 0"
)
_SQL_COMPACT_ACCEPTED = "DELETE FROM accepted WHERE slot > ? AND slot <= ?"
_SQL_COMPACT_DECIDED = "DELETE FROM decided WHERE slot > ? AND slot <= ?"
_SQL_COMPACTED = "SELECT compacted_through FROM paxos_state WHERE id = 0"
# Compacted slots whose rows one write deletes, beyond one per row the write itself adds (so
# the deleting keeps up with the log's growth). A compaction is a mark (one row); the rows go
# a batch per later write, because deleting thousands of slots of big values at once held a
# leader's loop for seconds (BENCHMARKS.md): SQLite reads every overflow page of a deleted
# row to free it, mostly from the disk, as the rows are old. At 64 slots the 300,000-key
# bench still had writes of 100-160 ms with hundreds of disk waits (the turn clock's count;
# that they were these reads is inferred, not traced); at 8 its next run had none.
COMPACT_SLOTS_PER_WRITE = 8


def _uri(path: Path, mode: str, *, immutable: bool = False) -> str:
    # as_uri() percent-encodes '?' and '#', which SQLite would otherwise read as URI syntax.
    return path.absolute().as_uri() + f"?mode={mode}" + ("&immutable=1" if immutable else "")


class Storage:
    """One node's durable Paxos state in one SQLite file. Build with ``open`` or
    ``open_readonly``; never construct directly."""

    def __init__(
        self,
        *,
        path: Path,
        db: sqlite_utils.Database,
        readonly: bool,
        cluster_id: str,
        node_id: int,
        schema_version: int,
        promised: Ballot,
        durability: Durability = "fsync",
    ) -> None:
        self.path = path
        self.durability = durability
        self.db = db
        self.readonly = readonly
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.schema_version = schema_version
        self._conn = db.conn
        # Invariant: equals the promised ballot on disk (checked against writes, so a core bug
        # that lowers a promise is caught before it is made durable).
        self._promised = promised
        self._failed: str | None = None
        # Snapshot files live beside the database (paxosd/storage/snapfile.py).
        self.snapshot_dir = snapshot_dir(path)
        # Log rows at or below _compacted_through are compacted (hidden from every read);
        # those above _rows_from are still to be deleted (see COMPACT_SLOTS_PER_WRITE).
        self._compacted_through = 0
        self._rows_from = 0
        if schema_version >= 3:
            self._compacted_through = int(self._conn.execute(_SQL_COMPACTED).fetchone()[0])
            self._rows_from = self._compacted_through
            low = self._conn.execute(
                "SELECT min(slot) FROM (SELECT min(slot) AS slot FROM accepted "
                "UNION ALL SELECT min(slot) FROM decided)"
            ).fetchone()[0]
            if low is not None:
                self._rows_from = min(self._compacted_through, int(low) - 1)

    # ------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        cluster_id: str,
        node_id: int,
        durability: Durability = "fsync",
        create: bool,
    ) -> Storage:
        """Open (and with ``create=True``, create if absent or empty) the database at ``path``.

        Every check (WAL, quick_check, schema version, identity) runs first on a read-only
        connection, so a refused database is left exactly as it was: a read-write connection
        would checkpoint the WAL into the file when it closed, even after a failed check.

        :raises NotInitialized: ``create`` is False and there is no database, or it is empty.
        :raises CorruptDatabase: SQLite reports damage, the WAL was cut, a check fails.
        :raises IdentityMismatch: the database belongs to another cluster id or node id.
        :raises StorageError: any other reason the database cannot be used, named in one line.
        """
        path = Path(path)
        assert cluster_id, "cluster_id must be non-empty"
        assert durability in ("fsync", "unsafe-no-fsync"), durability
        wal = path.with_name(path.name + "-wal")
        refuse_empty = (
            "this node would start with no memory of its promises; create one only for a new "
            "member, with the explicit bootstrap flag"
        )
        if not path.exists():
            if wal.exists() and wal.stat().st_size > 0:
                raise CorruptDatabase(
                    path,
                    "database file is missing but its WAL file exists; refusing to create a new "
                    "database over it (restore the file from a backup)",
                )
            if not create:
                raise NotInitialized(path, f"no database: {refuse_empty}")
            found = None
        elif path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0):
            found = None
        else:
            found = _validate(path)
        if found is None:
            if not create:
                raise NotInitialized(path, f"database is empty: {refuse_empty}")
            version = 0
        else:
            version, identity = found
            if identity != (cluster_id, node_id):
                raise IdentityMismatch(
                    path,
                    f"database belongs to cluster {identity[0]!r} node {identity[1]}, "
                    f"not cluster {cluster_id!r} node {node_id}",
                )
        try:
            conn = sqlite3.connect(
                _uri(path, "rwc" if create else "rw"),
                uri=True,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # explicit BEGIN/COMMIT only: no hidden transactions
                check_same_thread=False,  # the caller serialises use (see module docstring)
            )
        except sqlite3.Error as exc:
            raise StorageIOError(path, f"cannot open the database: {exc}") from exc
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        try:
            with _sqlite_errors(path, "cannot open the database"):
                _set_pragmas(conn, path, durability)
                if version == 0:
                    _log.info(
                        "storage_created", path=str(path), cluster_id=cluster_id, node=node_id
                    )
                version = _apply_migrations(db, path, version, (cluster_id, node_id))
                # Read back, not trusted: what the rest of the run relies on is what is stored.
                assert _read_identity(conn, path) == (cluster_id, node_id)
                promised = _read_promised(conn, path)
            # A crash, or a snapshot child killed mid-write, leaves a .tmp: never read, and
            # no recovery needs it.
            gone = remove_tmp_files(snapshot_dir(path))
            if gone:
                _log.info("snapshot_tmp_removed", path=str(snapshot_dir(path)), files=gone)
        except BaseException:
            conn.close()
            raise
        if durability == "unsafe-no-fsync":
            _log.warning(
                "storage_unsafe_no_fsync",
                path=str(path),
                problem="synchronous=OFF: a power cut can lose acknowledged promises and votes; "
                "for benchmarks only",
            )
        return cls(
            path=path,
            db=db,
            readonly=False,
            cluster_id=cluster_id,
            node_id=node_id,
            schema_version=version,
            promised=promised,
            durability=durability,
        )

    @classmethod
    def open_readonly(cls, path: Path) -> Storage:
        """Open for inspection: never writes the database or its WAL, never creates it.

        With the daemon stopped and the WAL checkpointed (no -wal and no -shm file), the file
        is opened ``immutable``, which creates nothing at all. Otherwise SQLite must read the
        WAL and may rebuild the -shm index, which holds no data. Opening while a daemon
        starts up at the same moment is not supported.
        """
        path = Path(path)
        if not path.exists():
            raise NotInitialized(path, "no database file")
        found = _validate(path)
        if found is None:
            raise NotInitialized(path, "database is empty")
        version, (cluster_id, node_id) = found
        if version != len(MIGRATIONS):
            raise SchemaVersionError(
                path,
                f"schema version {version} is older than {len(MIGRATIONS)}; start the daemon "
                "once to migrate it, then inspect",
            )
        conn = _connect_readonly(path)
        try:
            db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            with _sqlite_errors(path, "cannot read the database"):
                promised = _read_promised(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(
            path=path,
            db=db,
            readonly=True,
            cluster_id=cluster_id,
            node_id=node_id,
            schema_version=version,
            promised=promised,
        )

    def limit_bytes(self, bytes_max: int) -> int:
        """Cap the database at about ``bytes_max`` (SQLite's ``max_page_count``; never below
        its current size) and return the cap in bytes. Past it a write fails with DiskFull
        exactly as on a full file system: tests use it to fill a disk without the
        privileges to make a small file system."""
        assert bytes_max > 0
        with _sqlite_errors(self.path, "cannot set the page limit"):
            page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            pages = max(1, bytes_max // page_size)
            got = int(self._conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0])
        return got * page_size

    def close(self) -> None:
        """Close the connection; SQLite checkpoints the WAL into the main file if it can.
        Superseded snapshot files handed to the reaper are deleted before this returns."""
        with _sqlite_errors(self.path, "cannot close the database"):
            self._conn.close()
        REAPER.wait()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------- writing

    def write(
        self, record: PersistRecord, *, applied_through: int | None = None, sync: bool = True
    ) -> None:
        """Make ``record`` durable in ONE transaction; when this returns, it is on disk.

        ``applied_through``, if given, is stored in the same transaction (a hint for
        inspection; recovery rebuilds the state machine by replay, not from it).
        An empty record with no ``applied_through`` costs nothing: no transaction, no fsync.

        ``sync=False`` commits without waiting for the disk: the transaction is atomic but
        may be lost by a power cut until the next synced commit (which flushes the WAL in
        order, this one included). Only for records whose loss is safe, such as decided
        entries, which a node relearns from its peers and its own durable votes.
        """
        if applied_through is None and record.is_empty():
            return
        assert not self.readonly, "write() on a read-only Storage"
        assert self._failed is None, f"write() after a failed write: {self._failed}"
        promised = record.promised
        if promised is not None:
            assert promised >= self._promised, (
                f"promised ballot went backwards: {promised} < {self._promised}"
            )
        # Encode before BEGIN so the transaction (and the lock) is held only for SQLite work.
        accepted_rows: list[tuple[int, int, int, bytes, int]] | None = None
        if record.accepted:
            encode = _VALUE_ENCODER.encode
            crc = zlib.crc32
            pack = _ACCEPTED_HEADER.pack
            accepted_rows = []
            append = accepted_rows.append
            for entry in record.accepted:
                slot = entry.slot
                ballot = entry.ballot
                blob = encode(entry.value)
                append(
                    (
                        slot,
                        ballot.round,
                        ballot.node,
                        blob,
                        crc(blob, crc(pack(slot, ballot.round, ballot.node))),
                    )
                )
        decided_rows: list[tuple[int, bytes, int]] | None = None
        if record.decided:
            encode = _VALUE_ENCODER.encode
            crc = zlib.crc32
            pack_slot = _DECIDED_HEADER.pack
            decided_rows = []
            append_d = decided_rows.append
            for decided in record.decided:
                slot = decided.slot
                blob = encode(decided.value)
                append_d((slot, blob, crc(blob, crc(pack_slot(slot)))))
        snapshot_row = None
        deleting: int | None = None
        if record.snapshot is not None:
            snapshot_row = self._snapshot_row(record.snapshot)
        conn = self._conn
        lazy = not sync and self.durability == "fsync"
        try:
            if lazy:
                # No checkpoint in an unsynced commit: a checkpoint run with synchronous=OFF
                # copies synced WAL frames into the database file without syncing it, and the
                # WAL may then be reused, so a power cut could lose records fsynced before.
                conn.execute("PRAGMA wal_autocheckpoint = 0")
                conn.execute("PRAGMA synchronous = 0")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if promised is not None:
                    conn.execute(
                        _SQL_PROMISE,
                        (
                            promised.round,
                            promised.node,
                            _promised_checksum(promised.round, promised.node),
                        ),
                    )
                if accepted_rows is not None:
                    conn.executemany(_SQL_ACCEPT, accepted_rows)
                if decided_rows is not None:
                    conn.executemany(_SQL_DECIDE, decided_rows)
                if snapshot_row is not None:
                    conn.execute(_SQL_SNAPSHOT, snapshot_row)
                cut = record.compact_through
                if cut is not None:
                    conn.execute(_SQL_COMPACT_MARK, (cut,))
                deleting = None
                if self._rows_from < self._compacted_through or (
                    cut is not None and self._rows_from < cut
                ):
                    upto = max(self._compacted_through, cut or 0)
                    batch = COMPACT_SLOTS_PER_WRITE + len(record.accepted) + len(record.decided)
                    deleting = min(upto, self._rows_from + batch)
                    conn.execute(_SQL_COMPACT_ACCEPTED, (self._rows_from, deleting))
                    conn.execute(_SQL_COMPACT_DECIDED, (self._rows_from, deleting))
                if applied_through is not None:
                    conn.execute(_SQL_APPLIED, (applied_through,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                if lazy:
                    conn.execute("PRAGMA synchronous = 2")
                    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        except sqlite3.DatabaseError as exc:
            self._failed = str(exc)
            raise _translate(self.path, "write failed (nothing after it is durable)", exc) from exc
        if promised is not None:
            self._promised = promised
        if record.compact_through is not None:
            self._compacted_through = max(self._compacted_through, record.compact_through)
        if deleting is not None:
            self._rows_from = deleting
        if snapshot_row is not None:
            # The row is durable: older files are no longer any recovery's, delete them.
            remove_older(self.snapshot_dir, keep=snapshot_row[3])

    def _snapshot_row(self, snapshot: Snapshot) -> tuple[int, int, bytes, str, int, int] | None:
        """The file of ``snapshot`` made durable in the snapshot folder (written here when the
        state is in memory), and the row that records it; None when an equal or newer one is
        recorded (a snapshot only moves forward, as in DurableState.apply)."""
        with _sqlite_errors(self.path, "cannot read the snapshot row"):
            row = self._conn.execute("SELECT slot FROM snapshot WHERE id = 0").fetchone()
        if row is not None and int(row[0]) > snapshot.slot:
            return None
        state = snapshot.state
        if isinstance(state, SnapshotFile) and state.path.parent == self.snapshot_dir:
            sf = state
        else:
            data = state if isinstance(state, bytes) else state[0 : len(state)]
            try:
                sf = write_bytes_file(self.snapshot_dir, snapshot.slot, data)
            except OSError as exc:
                self._failed = str(exc)
                raise StorageIOError(
                    self.snapshot_dir, f"cannot write the snapshot: {exc}"
                ) from exc
            sf.close()
        members = _encode_membership(snapshot.membership)
        checksum = _snapshot_file_checksum(snapshot.slot, sf.name, sf.size, sf.crc, members)
        return (snapshot.slot, checksum, members, sf.name, sf.size, sf.crc)

    # ------------------------------------------------------------------- reading

    def forget_log_slots(self, slots: list[int]) -> None:
        """Delete these slots' accepted and decided rows, in one transaction. Only for
        ``paxosd force-new-cluster``, which must drop membership commands naming dead voters:
        no Paxos path ever deletes a vote."""
        if not slots:
            return
        conn = self._conn
        rows = [(s,) for s in slots]
        with _sqlite_errors(self.path, "cannot forget log slots"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM accepted WHERE slot = ?", rows)
                conn.executemany("DELETE FROM decided WHERE slot = ?", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def load(self) -> DurableState:
        """Everything that was made durable, exactly as ``DurableState.apply`` folded it.

        Every row's checksum is verified before its value is decoded.

        :raises ChecksumMismatch: a row's bytes changed after they were written.
        :raises CorruptRecord: a row passed its checksum but does not decode.
        """
        path = self.path
        conn = self._conn
        decode = _VALUE_DECODER.decode
        crc = zlib.crc32
        with _sqlite_errors(path, "cannot read the log"):
            conn.execute("BEGIN")  # one read snapshot across all tables
            try:
                promised = _read_promised(conn, path)
                accepted: dict[int, AcceptedEntry] = {}
                pack3 = _ACCEPTED_HEADER.pack
                slot = -1
                try:
                    for slot, b_round, b_node, blob, checksum in conn.execute(
                        "SELECT slot, ballot_round, ballot_node, value, checksum "
                        "FROM accepted WHERE slot > ? ORDER BY slot",
                        (self._compacted_through,),
                    ):
                        if crc(blob, crc(pack3(slot, b_round, b_node))) != checksum:
                            raise ChecksumMismatch(path, "accepted", slot)
                        accepted[slot] = AcceptedEntry(slot, Ballot(b_round, b_node), decode(blob))
                except (msgspec.DecodeError, TypeError, struct.error) as exc:
                    _raise_corrupt_row(path, "accepted", slot, exc)
                decided: dict[int, DecidedEntry] = {}
                pack1 = _DECIDED_HEADER.pack
                slot = -1
                try:
                    # Most decided slots were accepted here too, with the same bytes: those
                    # take the vote's value, decoded once, or the log since the snapshot
                    # would take twice its size in memory (and its decoding twice the time)
                    # after a restart. SQLite compares the two blobs.
                    for slot, blob, checksum, as_voted in conn.execute(
                        "SELECT d.slot, d.value, d.checksum, d.value IS a.value FROM decided AS d "
                        "LEFT JOIN accepted AS a ON a.slot = d.slot "
                        "WHERE d.slot > ? ORDER BY d.slot",
                        (self._compacted_through,),
                    ):
                        if crc(blob, crc(pack1(slot))) != checksum:
                            raise ChecksumMismatch(path, "decided", slot)
                        vote = accepted.get(slot) if as_voted else None
                        value = vote.value if vote is not None else decode(blob)
                        decided[slot] = DecidedEntry(slot, value)
                except (msgspec.DecodeError, TypeError, struct.error) as exc:
                    _raise_corrupt_row(path, "decided", slot, exc)
                snapshot = _read_snapshot(conn, path, self.snapshot_dir)
            finally:
                conn.execute("COMMIT")
        return DurableState(
            promised=promised,
            accepted=accepted,
            decided=decided,
            snapshot=snapshot,
            compacted_through=self._compacted_through,
        )

    def applied_through(self) -> int | None:
        """The last ``applied_through`` passed to write(), or None if never set."""
        with _sqlite_errors(self.path, "cannot read paxos_state"):
            row = self._conn.execute(
                "SELECT applied_through FROM paxos_state WHERE id = 0"
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def meta(self) -> StorageMeta:
        """A summary for inspection. Counts scan the log tables: O(log size)."""
        path = self.path
        conn = self._conn
        with _sqlite_errors(path, "cannot read the database summary"):
            conn.execute("BEGIN")
            try:
                created_at = conn.execute(
                    "SELECT created_at FROM identity WHERE id = 0"
                ).fetchone()[0]
                ranges = {
                    table: SlotRange(
                        *conn.execute(
                            f"SELECT min(slot), max(slot), count(*) FROM {table} WHERE slot > ?",
                            (self._compacted_through,),
                        ).fetchone()
                    )
                    for table in ("accepted", "decided")
                }
                snap = conn.execute(
                    "SELECT slot, CASE WHEN file = '' THEN length(state) ELSE size END "
                    "FROM snapshot WHERE id = 0"
                ).fetchone()
                promised = _read_promised(conn, path)
                applied_row = conn.execute(
                    "SELECT applied_through FROM paxos_state WHERE id = 0"
                ).fetchone()
                page_count = conn.execute("PRAGMA page_count").fetchone()[0]
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            finally:
                conn.execute("COMMIT")
        return StorageMeta(
            path=str(path),
            cluster_id=self.cluster_id,
            node_id=self.node_id,
            schema_version=self.schema_version,
            created_at=str(created_at),
            promised=promised,
            accepted=ranges["accepted"],
            decided=ranges["decided"],
            snapshot_slot=None if snap is None else int(snap[0]),
            snapshot_bytes=None if snap is None else int(snap[1]),
            applied_through=None if applied_row[0] is None else int(applied_row[0]),
            file_bytes=int(page_count) * int(page_size),
        )

    def read_log(self, from_slot: int, to_slot: int, limit: int = 1000) -> list[LogRow]:
        """Accepted and decided entries with ``from_slot <= slot <= to_slot``, by slot (the
        decided row first where a slot has both), at most ``limit`` rows. Checksums are
        verified as in load()."""
        assert 1 <= limit <= LOG_ROWS_MAX, f"limit must be in 1..{LOG_ROWS_MAX}"
        path = self.path
        conn = self._conn
        rows: list[LogRow] = []
        from_slot = max(from_slot, self._compacted_through + 1)
        with _sqlite_errors(path, "cannot read the log"):
            conn.execute("BEGIN")
            try:
                for slot, blob, checksum in conn.execute(
                    "SELECT slot, value, checksum FROM decided WHERE slot BETWEEN ? AND ? "
                    "ORDER BY slot LIMIT ?",
                    (from_slot, to_slot, limit),
                ):
                    if _decided_checksum(slot, blob) != checksum:
                        raise ChecksumMismatch(path, "decided", slot)
                    value = decode_value(blob, path=path, where=f"table decided slot {slot}")
                    rows.append(LogRow(slot, "decided", None, value, len(blob)))
                for slot, b_round, b_node, blob, checksum in conn.execute(
                    "SELECT slot, ballot_round, ballot_node, value, checksum FROM accepted "
                    "WHERE slot BETWEEN ? AND ? ORDER BY slot LIMIT ?",
                    (from_slot, to_slot, limit),
                ):
                    if _accepted_checksum(slot, b_round, b_node, blob) != checksum:
                        raise ChecksumMismatch(path, "accepted", slot)
                    value = decode_value(blob, path=path, where=f"table accepted slot {slot}")
                    rows.append(LogRow(slot, "accepted", Ballot(b_round, b_node), value, len(blob)))
            finally:
                conn.execute("COMMIT")
        rows.sort(key=lambda r: (r.slot, r.kind != "decided"))
        return rows[:limit]


# ------------------------------------------------------------------------------ helpers


def _connect_readonly(path: Path) -> sqlite3.Connection:
    wal = path.with_name(path.name + "-wal")
    shm = path.with_name(path.name + "-shm")
    # No -wal and no -shm: nobody has the file open and everything is in the main file, so
    # immutable is exact and creates nothing. Otherwise SQLite must read the WAL.
    immutable = not wal.exists() and not shm.exists()
    try:
        conn = sqlite3.connect(
            _uri(path, "ro", immutable=immutable),
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise StorageIOError(path, f"cannot open the database: {exc}") from exc
    try:
        with _sqlite_errors(path, "cannot read the database"):
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA cell_size_check = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _validate(path: Path) -> tuple[int, tuple[str, int]] | None:
    """Check an existing file without changing it: WAL intact, quick_check clean, a schema
    version this build knows. Returns (schema version, (cluster id, node id)), or None when
    the file holds no tables at all (an empty database)."""
    _check_wal(path)
    conn = _connect_readonly(path)
    try:
        with _sqlite_errors(path, "cannot read the database"):
            _quick_check(conn, path)
            db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            version = _read_schema_version(db)
            if version is None:
                if _has_tables(conn):
                    raise CorruptDatabase(path, "not a paxosd database (no schema_version table)")
                return None
            _check_version(path, version)
            return version, _read_identity(conn, path)
    finally:
        conn.close()


# SQLite's default; set explicitly because unsynced commits switch it off and back.
WAL_AUTOCHECKPOINT_PAGES = 1000


def _set_pragmas(conn: sqlite3.Connection, path: Path, durability: Durability) -> None:
    """Set and read back: SQLite keeps the old journal mode silently when it cannot switch."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(path, f"cannot switch to WAL mode (journal_mode is {mode})")
    sync_wanted = 2 if durability == "fsync" else 0  # FULL / OFF
    conn.execute(f"PRAGMA synchronous = {sync_wanted}")
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    if sync != sync_wanted:
        raise StorageError(path, f"synchronous is {sync}, not {sync_wanted} as set")
    # macOS fsync() does not flush the drive's cache; these make SQLite use F_FULLFSYNC there
    # and are no-ops elsewhere.
    conn.execute("PRAGMA fullfsync = ON")
    conn.execute("PRAGMA checkpoint_fullfsync = ON")
    conn.execute("PRAGMA cell_size_check = ON")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        shown = "; ".join(problems[:QUICK_CHECK_PROBLEMS_MAX])
        more = len(problems) - QUICK_CHECK_PROBLEMS_MAX
        suffix = f" (and {more} more)" if more > 0 else ""
        raise CorruptDatabase(path, f"quick_check failed: {shown}{suffix}")


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None


def _check_version(path: Path, version: int) -> None:
    if version < 0:
        raise CorruptDatabase(path, "schema_version table has no valid version row")
    if version > len(MIGRATIONS):
        raise SchemaVersionError(
            path,
            f"schema version {version} is newer than this paxosd understands "
            f"({len(MIGRATIONS)}); run the newer paxosd",
        )


def _read_identity(conn: sqlite3.Connection, path: Path) -> tuple[str, int]:
    row = conn.execute("SELECT cluster_id, node_id FROM identity WHERE id = 0").fetchone()
    if row is None:
        raise CorruptDatabase(path, "identity row (cluster id, node id) is missing")
    return str(row[0]), int(row[1])


def _read_promised(conn: sqlite3.Connection, path: Path) -> Ballot:
    row = conn.execute(
        "SELECT promised_round, promised_node, promised_checksum FROM paxos_state WHERE id = 0"
    ).fetchone()
    if row is None:
        raise CorruptDatabase(path, "paxos_state row (promised ballot) is missing")
    b_round, b_node, checksum = row
    if _promised_checksum(b_round, b_node) != checksum:
        raise ChecksumMismatch(path, "paxos_state", None)
    return Ballot(b_round, b_node)


def _read_snapshot(conn: sqlite3.Connection, path: Path, folder: Path) -> Snapshot | None:
    """The recorded snapshot: from its file (checked against the row's size and crc32), or
    the blob of a row written before snapshots moved to files."""
    row = conn.execute(
        "SELECT slot, state, checksum, membership, file, size, file_crc FROM snapshot WHERE id = 0"
    ).fetchone()
    if row is None:
        return None
    slot, blob, checksum, members, name, size, crc = row
    state: SnapshotState
    if name:
        if _snapshot_file_checksum(slot, name, size, crc, members) != checksum:
            raise ChecksumMismatch(path, "snapshot", slot)
        if name != file_name(slot):
            raise CorruptRecord(path, f"snapshot row names the file {name!r} for slot {slot}")
        try:
            state = SnapshotFile.verified(folder / name, size, crc)
        except SnapshotFileError as e:
            raise CorruptDatabase(folder / name, str(e).split(": ", 1)[-1]) from None
    else:
        if _snapshot_checksum(slot, blob, members) != checksum:
            raise ChecksumMismatch(path, "snapshot", slot)
        state = blob
    try:
        membership = _MEMBERSHIP_DECODER.decode(members) if members else None
    except msgspec.DecodeError as e:
        raise CorruptRecord(path, f"snapshot membership does not decode: {e}") from e
    return Snapshot(slot=slot, state=state, membership=membership)


_MEMBERSHIP_DECODER = msgspec.msgpack.Decoder(Membership)


def _encode_membership(m: Membership | None) -> bytes:
    return b"" if m is None else msgspec.msgpack.encode(m)


def _raise_corrupt_row(path: Path, table: str, slot: int, exc: Exception) -> NoReturn:
    raise CorruptRecord(path, f"table {table} slot {slot}: row does not decode: {exc}") from exc


def data_dir_db_path(data_dir: Path) -> Path:
    """The database file of the node whose data dir is ``data_dir``."""
    return Path(data_dir) / DB_FILENAME


@dataclass(frozen=True, slots=True)
class VacuumStats:
    """What ``vacuum_database`` did: file bytes (database + WAL) and free pages around it."""

    bytes_before: int
    bytes_after: int
    page_size: int
    free_pages_before: int
    free_pages_after: int
    seconds: float


def vacuum_database(path: Path, *, clock: Callable[[], float]) -> VacuumStats:
    """Rewrite the database without its free pages (SQLite's VACUUM), offline.

    Why: compaction deletes log rows and old snapshots, but SQLite keeps the pages they held
    as free pages inside the file, for reuse; the file never shrinks by itself. VACUUM copies
    the live content into a fresh temporary database and writes it back in ONE transaction
    through the WAL, so a crash midway leaves the old content (the uncommitted frames are
    ignored) or the new (replayed from the WAL on the next open): nothing is lost either way.
    It needs free space of about the new file's size twice (the temporary copy, in SQLite's
    temporary directory, and the WAL). The caller holds the data dir's lock: this must never
    run beside the daemon. The file is validated first (quick_check, schema version): a
    damaged database is not rewritten. ``clock``: seconds, for the timing only.

    :raises NotInitialized: there is no database at ``path``.
    :raises StorageError: validation, SQLite or the file system refused.
    """
    if not path.exists():
        raise NotInitialized(path, "no database here")
    if _validate(path) is None:
        raise NotInitialized(path, "the database holds no tables")
    before = db_file_bytes(path)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        with _sqlite_errors(path, "cannot vacuum the database"):
            _set_pragmas(conn, path, "fsync")
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            free_before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            t0 = clock()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            # Into the main file, and the WAL back to zero bytes: the space is returned now.
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:
                raise StorageError(path, "the checkpoint after VACUUM was blocked by a reader")
            seconds = clock() - t0
            free_after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    finally:
        conn.close()
    return VacuumStats(
        bytes_before=before,
        bytes_after=db_file_bytes(path),
        page_size=page_size,
        free_pages_before=free_before,
        free_pages_after=free_after,
        seconds=seconds,
    )


def db_file_bytes(path: Path) -> int:
    """Bytes on disk of the database and its WAL (for benchmarks and inspection)."""
    total = 0
    for suffix in ("", "-wal"):
        with suppress(FileNotFoundError):
            total += os.stat(str(path) + suffix).st_size
    return total
