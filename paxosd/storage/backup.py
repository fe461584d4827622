"""Backups: one node's snapshot of the replicated state in a self-checking file, the query that
streams it out of a live node, and the client loop that assembles it.

A snapshot is consistent by construction: it is the state machine after applying every slot up
to ``applied_index``, and every replica that applied that prefix holds the same bytes (the
digest says so). So a backup needs no cluster-wide pause, only one node's snapshot.

File layout (integers big-endian), in the spirit of a tar member: a fixed prefix that says
what the file is, a small typed header, the payload, a checksum over all of it:

    magic       8 bytes   b"PAXOSBAK"
    version     2 bytes   FORMAT_VERSION
    header_len  4 bytes   at most HEADER_BYTES_MAX
    header      msgpack BackupHeader (who, which slot, which digest, how long the state is)
    state       header.state_bytes bytes: StateMachine.snapshot() at header.applied_index
    checksum    32 bytes: sha256 over every byte before it

The state is sealed by the state machine's own checksum too; the file's sha256 covers the
header as well, so a flipped bit anywhere is refused before anything trusts it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Protocol

import msgspec

from paxosd.core.types import Snapshot
from paxosd.statemachine.machine import SNAPSHOT_BYTES_MAX, BadSnapshot, StateMachine

__all__ = [
    "CHUNK_BYTES_MAX",
    "FORMAT_VERSION",
    "MAGIC",
    "Backup",
    "BackupChecksumMismatch",
    "BackupFileWriter",
    "BackupError",
    "BackupHeader",
    "BackupStateMismatch",
    "BackupTooBig",
    "BackupTruncated",
    "BadBackupHeader",
    "FetchedSnapshot",
    "NotABackup",
    "SnapshotStreamError",
    "UnsupportedBackupVersion",
    "WrittenBackup",
    "decode_backup",
    "encode_backup",
    "fetch_snapshot",
    "is_backup_file",
    "read_backup",
    "serve_snapshot_read",
    "verify_state",
    "write_backup",
]

MAGIC: Final = b"PAXOSBAK"
FORMAT_VERSION: Final = 1
_PREFIX = struct.Struct(">8sHI")  # magic, version, header length
_CHECKSUM_BYTES: Final = 32
HEADER_BYTES_MAX: Final = 4096
# The state is one state-machine snapshot, which the state machine itself bounds.
STATE_BYTES_MAX: Final = SNAPSHOT_BYTES_MAX
FILE_BYTES_MAX: Final = _PREFIX.size + HEADER_BYTES_MAX + STATE_BYTES_MAX + _CHECKSUM_BYTES
# One chunk of a streamed snapshot: a quarter of the 4 MiB client frame cap
# (framing.FRAME_BYTES_MAX_DEFAULT), so the reply's envelope and AEAD tag always fit.
CHUNK_BYTES_MAX: Final = 1 << 20
# A snapshot replaced while it streams (the node snapshots every snapshot_every_entries
# applied entries) restarts the transfer; a cluster that outruns this many is told so.
FETCH_ATTEMPTS_MAX: Final = 8
# A whole fetch gives up after this long by default (paxosctl passes --timeout-ms): a GiB
# snapshot is a child's few seconds to make plus a GiB over the encrypted client port.
FETCH_TIMEOUT_S_DEFAULT: Final = 600.0
# While a node makes the snapshot asked for, ask again after this long, doubling up to the max.
POLL_FIRST_S: Final = 0.05
POLL_MAX_S: Final = 1.0

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

# ------------------------------------------------------------------------------- errors


class BackupError(Exception):
    """Base of every backup-file failure. ``str()`` is one line: the file, then the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(problem.split())
        super().__init__(f"{self.path}: {self.problem}")


class NotABackup(BackupError):
    """The file does not start with the backup magic: some other file was named."""


class UnsupportedBackupVersion(BackupError):
    """Written by a newer paxosd (or damaged where the version is)."""


class BackupTruncated(BackupError):
    """The file ends before the length its header promises (a copy cut short)."""


class BackupTooBig(BackupError):
    """Over FILE_BYTES_MAX, or a header claims more than the bounds allow: refused before
    reading, so a hostile file cannot make us allocate without limit."""


class BackupChecksumMismatch(BackupError):
    """The bytes differ from what was written."""


class BadBackupHeader(BackupError):
    """The header passed the checksum (or could not be checked yet) but is not valid."""


class BackupStateMismatch(BackupError):
    """The state does not restore, or restores to another slot or digest than the header
    says: the file was written wrong, and restoring it would start a cluster on a lie."""


class SnapshotStreamError(Exception):
    """A node's answers to snapshot_read do not add up (or the snapshot kept moving)."""


# ------------------------------------------------------------------------------ format

ClusterId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class BackupHeader(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a backup holds. Typed and bounded: decoding validates every field."""

    cluster_id: ClusterId
    node_id: Annotated[int, msgspec.Meta(ge=1, le=1 << 31)]
    # The snapshot's slot: the state machine after applying slots 1..applied_index.
    applied_index: Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
    # StateMachine.digest() at applied_index: equal on every replica that applied that prefix.
    digest: Digest
    created_at: Annotated[str, msgspec.Meta(max_length=64)]
    state_bytes: Annotated[int, msgspec.Meta(ge=1, le=STATE_BYTES_MAX)]


_header_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(BackupHeader)


@dataclass(frozen=True, slots=True)
class Backup:
    header: BackupHeader
    state: bytes
    # sha256 of the file (hex): names one backup exactly in a log or a runbook.
    sha256: str
    file_bytes: int
    version: int = FORMAT_VERSION


def encode_backup(header: BackupHeader, state: bytes) -> bytes:
    """The file's bytes. Asserts what read_backup checks, so we never write what we refuse."""
    assert len(state) == header.state_bytes, (len(state), header.state_bytes)
    assert 1 <= len(state) <= STATE_BYTES_MAX, len(state)
    assert _DIGEST_RE.fullmatch(header.digest), header.digest
    head = _header_encoder.encode(header)
    assert len(head) <= HEADER_BYTES_MAX, len(head)
    body = b"".join((_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)), head, state))
    return body + hashlib.sha256(body).digest()


# etcd's snapshot stream (and so ``etcdctl snapshot save``'s file) is a database whose size
# is a multiple of this, followed by the sha256 of it; etcdctl refuses any other shape.
ETCD_SNAPSHOT_ALIGN: Final = 512


def etcd_wrap(backup: bytes) -> bytes:
    """A backup file's bytes in the shape of etcd's snapshot stream: zero-padded to a
    multiple of 512 bytes, then the sha256 of the padded bytes. decode_backup reads both."""
    padded = backup + bytes(-len(backup) % ETCD_SNAPSHOT_ALIGN)
    return padded + hashlib.sha256(padded).digest()


def is_etcd_wrapped(data: bytes, backup_bytes: int) -> bool:
    """Whether ``data`` is exactly ``etcd_wrap`` of its first ``backup_bytes`` bytes."""
    padded = backup_bytes + (-backup_bytes % ETCD_SNAPSHOT_ALIGN)
    return (
        len(data) == padded + _CHECKSUM_BYTES
        and not any(data[backup_bytes:padded])
        and hashlib.sha256(data[:padded]).digest() == data[padded:]
    )


def decode_backup(data: bytes, *, path: Path | str = "<memory>") -> Backup:
    """Parse and check a backup's bytes. Raises BackupError (a subclass naming the problem)
    for any input that is not a whole, unaltered backup, and nothing else."""
    size = len(data)
    if size > FILE_BYTES_MAX:
        raise BackupTooBig(path, f"{size} bytes, over the {FILE_BYTES_MAX} a backup may have")
    if size < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise NotABackup(path, "not a paxosd backup (no PAXOSBAK magic at the start)")
    if size < _PREFIX.size:
        raise BackupTruncated(path, f"file ends inside its prefix ({size} bytes)")
    _, version, header_len = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise UnsupportedBackupVersion(
            path, f"backup format version {version}; this paxosd reads version {FORMAT_VERSION}"
        )
    if header_len > HEADER_BYTES_MAX:
        raise BackupTooBig(path, f"header of {header_len} bytes, over {HEADER_BYTES_MAX}")
    header_end = _PREFIX.size + header_len
    if size < header_end + _CHECKSUM_BYTES:
        raise BackupTruncated(path, f"file ends inside its header ({size} bytes)")
    try:
        header = _header_decoder.decode(data[_PREFIX.size : header_end])
    # msgspec raises DecodeError (ValidationError included) for structure, but a bare
    # UnicodeDecodeError (a ValueError) for a string that is not UTF-8: the fuzzer found it.
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
        # A header that does not decode is damage either way; say which, when we can.
        if hashlib.sha256(data[:-_CHECKSUM_BYTES]).digest() != data[-_CHECKSUM_BYTES:]:
            raise BackupChecksumMismatch(
                path, f"checksum mismatch (the header does not decode either: {e})"[:300]
            ) from None
        raise BadBackupHeader(path, f"header does not decode: {e}"[:300]) from None
    expected = header_end + header.state_bytes + _CHECKSUM_BYTES
    if size < expected:
        raise BackupTruncated(
            path, f"file is {size} bytes, its header says {expected}: the copy was cut short"
        )
    if size > expected and is_etcd_wrapped(data, expected):
        data = data[:expected]
        size = expected
    if size > expected:
        raise BadBackupHeader(path, f"{size - expected} unexpected bytes after the checksum")
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.sha256(body).digest() != checksum:
        raise BackupChecksumMismatch(path, "checksum mismatch: the file was altered or damaged")
    return Backup(
        header=header,
        state=bytes(data[header_end : header_end + header.state_bytes]),
        sha256=hashlib.sha256(data).hexdigest(),
        file_bytes=size,
    )


def is_backup_file(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with the backup magic."""
    try:
        with path.open("rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_backup(path: Path) -> Backup:
    """Read and check a backup file (size bound first, then format and checksum).

    :raises BackupError: the file cannot be read, or is not a whole, unaltered backup.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > FILE_BYTES_MAX:
                raise BackupTooBig(path, f"{size} bytes, over the {FILE_BYTES_MAX} allowed")
            # One byte more than allowed: a file that grows while we read is still refused.
            data = f.read(FILE_BYTES_MAX + 1)
    except OSError as e:
        raise BackupError(path, f"cannot read: {e.strerror or e}") from None
    return decode_backup(data, path=path)


def write_backup(path: Path, header: BackupHeader, state: bytes) -> Backup:
    """Write atomically: FILE.tmp, fsync, rename, fsync the directory. A crash leaves the old
    FILE or the new one, never half of one; the file is private (0600): it holds all data.

    :raises OSError: the file system refused.
    """
    data = encode_backup(header, state)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        written = 0
        while written < len(data):  # bounded: each write makes progress or raises
            written += os.write(fd, view[written:])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    # Read back what is on disk: a backup that does not read is worse than no backup.
    return read_backup(path)


def verify_state(
    header: BackupHeader, state: bytes | memoryview, *, path: Path | str = "<memory>"
) -> StateMachine:
    """Restore the state and check it is the one the header names (slot and digest)."""
    try:
        sm = StateMachine.restore(state)
    except BadSnapshot as e:
        raise BackupStateMismatch(path, f"the state does not restore: {e}") from None
    if sm.applied_through != header.applied_index:
        raise BackupStateMismatch(
            path,
            f"the state is at applied index {sm.applied_through}, the header says "
            f"{header.applied_index}",
        )
    if sm.digest() != header.digest:
        raise BackupStateMismatch(
            path, f"the state's digest is {sm.digest()}, the header says {header.digest}"
        )
    return sm


@dataclass(frozen=True, slots=True)
class WrittenBackup:
    """What BackupFileWriter wrote: the header, the file's sha256 (hex) and its size."""

    header: BackupHeader
    sha256: str
    file_bytes: int


class BackupFileWriter:
    """A backup file written as its state arrives (``paxosctl snapshot save``), so the state
    is never held whole in memory: the header first (all it says is known with the first
    chunk), then each chunk, into FILE.tmp (0600), hashing as it goes. ``begin`` again
    starts over (the node replaced its snapshot mid-stream). ``finish`` appends the
    checksum, syncs, reads the file back (the header decoded, the state restored from the
    file mapped and checked against the header's slot and digest), then renames it to FILE
    and syncs the folder: a crash leaves the old FILE or the new one, never half of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self._fd: int | None = None
        self._header: BackupHeader | None = None
        self._body = hashlib.sha256()  # the checksum's: every byte before it
        self._file = hashlib.sha256()  # the file's, checksum included
        self._state_at = 0
        self._written = 0

    def begin(self, header: BackupHeader) -> None:
        """Start the file over with this header. :raises OSError: the file system refused."""
        assert 1 <= header.state_bytes <= STATE_BYTES_MAX, header.state_bytes
        assert _DIGEST_RE.fullmatch(header.digest), header.digest
        self._close()
        head = _header_encoder.encode(header)
        assert len(head) <= HEADER_BYTES_MAX, len(head)
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._header = header
        self._body = hashlib.sha256()
        self._file = hashlib.sha256()
        self._written = 0
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head
        self._state_at = len(prefix)
        self._put(prefix, body=True)

    def write(self, data: bytes) -> None:
        """The next bytes of the state. :raises OSError: the file system refused."""
        assert self._header is not None, "write before begin"
        assert self._written + len(data) <= self._header.state_bytes, "more state than said"
        self._put(data, body=True)
        self._written += len(data)

    def finish(self) -> WrittenBackup:
        """Checksum, sync, check by reading back, rename.

        :raises BackupError: what was written does not read back as the header says
            (BackupStateMismatch: the state is not the one the node's digest names).
        :raises OSError: the file system refused.
        """
        header = self._header
        assert header is not None and self._fd is not None, "finish before begin"
        assert self._written == header.state_bytes, (self._written, header.state_bytes)
        self._put(self._body.digest(), body=False)
        os.fsync(self._fd)
        self._close()
        size = self._state_at + header.state_bytes + _CHECKSUM_BYTES
        with self.tmp.open("rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                raise BackupTruncated(self.tmp, "the file written is not the length it should be")
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        try:
            with memoryview(mm) as buf:
                if _header_decoder.decode(buf[_PREFIX.size : self._state_at]) != header:
                    raise BadBackupHeader(self.tmp, "the header written does not read back")
                state = buf[self._state_at : self._state_at + header.state_bytes]
                try:
                    verify_state(header, state, path=self.tmp)
                finally:
                    state.release()
        finally:
            mm.close()
        os.replace(self.tmp, self.path)
        self._header = None  # done: abandon has nothing to remove
        fsync_dir_of(self.path)
        return WrittenBackup(header=header, sha256=self._file.hexdigest(), file_bytes=size)

    def abandon(self) -> None:
        """Remove FILE.tmp (after a failure); FILE is untouched. Nothing once finished."""
        self._close()
        if self._header is not None:
            self.tmp.unlink(missing_ok=True)

    def _put(self, data: bytes, *, body: bool) -> None:
        assert self._fd is not None
        if body:
            self._body.update(data)
        self._file.update(data)
        view = memoryview(data)
        while view:  # bounded: each write makes progress or raises
            view = view[os.write(self._fd, view) :]

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def fsync_dir_of(path: Path) -> None:
    """Sync ``path``'s folder, so a rename into it survives a crash."""
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------- the daemon's side


class _SnapshotHolder(Protocol):
    @property
    def snapshot(self) -> Snapshot | None: ...


class SnapshotSource(Protocol):
    """What serve_snapshot_read needs of a node (paxosd.server.node.Node has it)."""

    @property
    def replica(self) -> _SnapshotHolder: ...

    @property
    def sm(self) -> StateMachine: ...

    def begin_snapshot(self) -> int: ...

    def snapshot_digest(self, slot: int) -> str | None: ...


def _int_arg(args: dict[str, Any], name: str, default: int | None) -> int | None:
    value = args.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"snapshot read: {name} must be a non-negative integer")
    return value


def serve_snapshot_read(
    node: SnapshotSource,
    args: dict[str, Any],
    *,
    node_id: int,
    cluster_id: str,
    fresh_entries: int = 0,
) -> dict[str, Any]:
    """Answer the client query ``snapshot_read``: one chunk of this node's latest snapshot.
    Never waits for a snapshot to be made: the node's loop answers this between two turns.

    ``{"offset": 0}`` asks for a recent snapshot: the node's latest, if it is at most
    ``fresh_entries`` (the node's snapshot_every_entries) behind the applied index, which
    the periodic snapshots keep true under a steady load. ``{"offset": 0, "slot": S}`` asks
    for one at S or newer. When the node has none that fits, it begins one (a forked child
    writes it, see paxosd/server/snapshots.py) unless one is in flight already, and answers
    ``{"pending": True, "slot": S}`` with the slot being made: the client asks again for S,
    backing off. Later chunks name the ``slot`` they continue; if the node has replaced that
    snapshot since, the answer is ``{"moved": True, "slot": newer}`` and the client starts
    over. The daemon keeps no per-client state, so an abandoned backup costs nothing.

    The digest comes with chunk 0. It was recorded when the snapshot was begun or restored
    (Node.snapshot_digests), never computed by restoring the snapshot here: that took
    seconds on the loop for a few hundred MB.

    :raises ValueError: bad arguments, or nothing applied yet (the daemon answers
        bad_request).
    """
    offset = _int_arg(args, "offset", 0)
    slot = _int_arg(args, "slot", None)
    chunk = _int_arg(args, "chunk_bytes", CHUNK_BYTES_MAX)
    assert offset is not None and chunk is not None
    chunk = max(1, min(chunk, CHUNK_BYTES_MAX))
    if slot is None and offset != 0:
        raise ValueError("snapshot read: an offset past 0 must name its slot")
    applied = node.sm.applied_through
    snap = node.replica.snapshot
    base = {"node_id": node_id, "cluster_id": cluster_id}
    if offset == 0:
        if applied == 0:
            raise ValueError("nothing to back up: this node has applied no slot yet")
        wanted = max(1, applied - max(0, fresh_entries)) if slot is None else slot
        digest = None if snap is None else node.snapshot_digest(snap.slot)
        if snap is not None and digest is None and snap.slot == applied:
            digest = node.sm.digest()  # the live state machine is at the snapshot's slot
        if snap is None or digest is None or snap.slot < wanted:
            taking = node.begin_snapshot()
            assert taking >= 1, taking  # something is applied
            return base | {"slot": taking, "moved": False, "pending": True}
    else:
        if snap is None or snap.slot != slot:
            return base | {"slot": 0 if snap is None else snap.slot, "moved": True}
        digest = None
    total = len(snap.state)
    if offset > total:
        raise ValueError(f"snapshot read: offset {offset} is past the end ({total} bytes)")
    reply = base | {
        "slot": snap.slot,
        "moved": False,
        "offset": offset,
        "total": total,
        "data": bytes(snap.state[offset : offset + chunk]),
    }
    if digest is not None:
        reply["digest"] = digest
    return reply


# ------------------------------------------------------------------- the client's side


@dataclass(frozen=True, slots=True)
class FetchedSnapshot:
    node_id: int
    cluster_id: str
    slot: int
    digest: str
    state: bytes
    restarts: int
    chunks: int


Query = Callable[[dict[str, Any]], dict[str, Any]]


class StateSink(Protocol):
    """Where fetch_snapshot puts the state as it arrives (BackupFileWriter)."""

    def begin(self, header: BackupHeader) -> None: ...

    def write(self, data: bytes) -> None: ...


def _field(reply: dict[str, Any], name: str, kind: type) -> Any:
    value = reply.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SnapshotStreamError(f"a snapshot chunk from the node has no valid {name}")
    return value


def fetch_snapshot(
    query: Query,
    *,
    chunk_bytes: int = CHUNK_BYTES_MAX,
    attempts_max: int = FETCH_ATTEMPTS_MAX,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = FETCH_TIMEOUT_S_DEFAULT,
    waiting: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    sink: StateSink | None = None,
) -> FetchedSnapshot:
    """Stream one node's snapshot chunk by chunk. ``query(args)`` must ask the SAME node every
    time (pin it after the first answer). Every reply is checked: a node that answers
    inconsistent offsets, lengths or slots gets a SnapshotStreamError, not a corrupt backup.

    A node that has no recent snapshot begins one and answers "pending": we ask again for
    that slot, backing off from POLL_FIRST_S to POLL_MAX_S, until it is made; the whole
    fetch gives up after ``timeout_s`` (SnapshotStreamError). ``waiting(slot)`` is called
    at each pending answer, ``progress(received_bytes, total_bytes)`` after each chunk.
    With a ``sink`` (a BackupFileWriter), the state goes to it as it arrives (``begin``
    at each transfer's first chunk, with the backup's header) and FetchedSnapshot.state is
    empty; without one, it is assembled in memory.
    """
    assert 1 <= chunk_bytes <= CHUNK_BYTES_MAX, chunk_bytes
    assert 1 <= attempts_max <= 100, attempts_max
    assert timeout_s > 0, timeout_s
    deadline = clock() + timeout_s
    wanted: int | None = None  # the slot a pending answer named
    pause = POLL_FIRST_S
    attempt = 0
    # Bounded: each round either polls (bounded by the deadline), restarts a moved transfer
    # (bounded by attempts_max) or returns.
    while True:
        ask: dict[str, Any] = {"offset": 0, "chunk_bytes": chunk_bytes}
        if wanted is not None:
            ask["slot"] = wanted
        first = query(ask)
        if first.get("pending") is True:
            wanted = _field(first, "slot", int)
            if waiting is not None:
                waiting(wanted)
            left = deadline - clock()
            if left <= 0:
                raise SnapshotStreamError(
                    f"the node's snapshot at slot {wanted} was not made within {timeout_s:g} s"
                    " (a bigger --timeout-ms waits longer)"
                )
            sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX_S)
            continue
        pause = POLL_FIRST_S
        slot = _field(first, "slot", int)
        total = _field(first, "total", int)
        digest = _field(first, "digest", str)
        node_id = _field(first, "node_id", int)
        cluster_id = _field(first, "cluster_id", str)
        if wanted is not None and slot < wanted:
            raise SnapshotStreamError(f"asked for a snapshot at slot {wanted}, got {slot}")
        if not 1 <= total <= STATE_BYTES_MAX:
            raise SnapshotStreamError(f"snapshot of {total} bytes is outside 1..{STATE_BYTES_MAX}")
        if not _DIGEST_RE.fullmatch(digest):
            raise SnapshotStreamError("a snapshot chunk from the node has a malformed digest")
        parts: list[bytes] = []
        received = 0
        reply = first
        chunks = 0
        if sink is not None:
            sink.begin(
                BackupHeader(
                    cluster_id=cluster_id,
                    node_id=node_id,
                    applied_index=slot,
                    digest=digest,
                    created_at=now_iso(),
                    state_bytes=total,
                )
            )
        # Bounded: every round must deliver exactly min(chunk_bytes, total - received) > 0.
        while True:
            if reply.get("moved") is True:
                break
            if _field(reply, "slot", int) != slot or _field(reply, "total", int) != total:
                raise SnapshotStreamError("the node switched snapshots midway without saying so")
            if _field(reply, "offset", int) != received:
                raise SnapshotStreamError("a snapshot chunk from the node is for another offset")
            data = _field(reply, "data", bytes)
            if len(data) != min(chunk_bytes, total - received):
                raise SnapshotStreamError(
                    f"snapshot_read chunk of {len(data)} bytes at offset {received}, expected "
                    f"{min(chunk_bytes, total - received)}"
                )
            if sink is not None:
                sink.write(data)
            else:
                parts.append(data)
            received += len(data)
            chunks += 1
            if progress is not None:
                progress(received, total)
            if received == total:
                return FetchedSnapshot(
                    node_id=node_id,
                    cluster_id=cluster_id,
                    slot=slot,
                    digest=digest,
                    state=b"".join(parts),
                    restarts=attempt,
                    chunks=chunks,
                )
            if clock() >= deadline:
                raise SnapshotStreamError(
                    f"the snapshot did not arrive within {timeout_s:g} s ({received} of {total}"
                    " bytes; a bigger --timeout-ms waits longer)"
                )
            reply = query({"offset": received, "slot": slot, "chunk_bytes": chunk_bytes})
        attempt += 1
        wanted = None
        if attempt >= attempts_max:
            raise SnapshotStreamError(
                f"the node replaced its snapshot during each of {attempts_max} attempts (it "
                "snapshots every snapshot_every_entries applied entries); retry when the load "
                "is lower"
            )


def header_for(fetched: FetchedSnapshot) -> BackupHeader:
    """The backup header of a fetched snapshot, stamped now."""
    return BackupHeader(
        cluster_id=fetched.cluster_id,
        node_id=fetched.node_id,
        applied_index=fetched.slot,
        digest=fetched.digest,
        created_at=now_iso(),
        state_bytes=len(fetched.state),
    )
