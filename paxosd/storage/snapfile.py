"""Snapshot files: a node's latest snapshot lives beside its database, in
``<data dir>/snapshots/<slot>.snap``, and SQLite records which file is in force (slot, file
name, size, crc32, membership).

Why a file and not a blob in SQLite: a state of a GiB written as a blob is one transaction
holding the write lock, the WAL growing by a GiB and the bytes in memory while they are bound;
a file is written by a forked child (paxosd/server/snapshots.py), streamed chunk by chunk from
a peer, and read back through ``pread`` or a read-only ``mmap`` without a copy in the heap.

Every file is written ``<name>.tmp`` -> fsync -> rename -> fsync of the folder, so a name
without ``.tmp`` is whole once the rename is durable; a stray ``.tmp`` (a crash mid-write, a
child killed) is removed at the next start and never read. The database row is written only
after the file is durable, so a power cut leaves the previous row, whose file is still there
(older files are deleted only once a newer row is committed).
"""

from __future__ import annotations

import functools
import mmap
import os
import queue
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final, overload

SNAPSHOT_DIR: Final = "snapshots"
SUFFIX: Final = ".snap"
TMP_SUFFIX: Final = ".tmp"
# Reads for the checksum and writes of bytes go in pieces this big (bounded memory).
_PIECE_BYTES: Final = 4 << 20
# A file being written is synced every this many bytes (see FileWriter.write).
SYNC_EVERY_BYTES: Final = 32 << 20
# A superseded file is renamed to this before the reaper deletes it: a crash before the
# delete leaves a ``.tmp``, which the next start removes.
OLD_SUFFIX: Final = ".old" + TMP_SUFFIX
# Deletions and closes waiting for the reaper; past this they are done in the caller.
REAPER_QUEUE_MAX: Final = 256
# The reaper shrinks a superseded file by this much at a time, pausing between steps.
TRUNCATE_STEP_BYTES: Final = 8 << 20
TRUNCATE_PAUSE_S: Final = 0.002


class SnapshotFileError(Exception):
    """A recorded snapshot file is missing, torn or altered: one line, naming the file."""


def snapshot_dir(db_path: Path) -> Path:
    """The snapshot folder of the database at ``db_path`` (beside it)."""
    return Path(db_path).parent / SNAPSHOT_DIR


def file_name(slot: int) -> str:
    return f"{slot:020d}{SUFFIX}"


def slot_of(name: str) -> int | None:
    """The slot a finished snapshot file's name carries; None for anything else."""
    if not name.endswith(SUFFIX):
        return None
    stem = name[: -len(SUFFIX)]
    return int(stem) if stem.isdigit() else None


def fsync_dir(path: Path) -> None:
    """Make a rename or an unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Reaper:
    """Frees superseded snapshot files' disk blocks on a thread of its own.

    Freeing a big file's blocks is the filesystem's work and takes time: measured on this
    machine's ext4, 130 ms for a 600 MB file and 270 ms for 1.4 GB, in whichever call drops
    the last reference (the ``unlink`` of a closed file, or the ``close`` of the last
    descriptor of an unlinked one). Done in the event loop that is a stop as long as an
    election timeout at 1 GiB of state, once per snapshot. So both calls come here: the
    thread makes them with the interpreter's lock released (``os.unlink`` and ``os.close``
    release it), and the loop goes on. A file no descriptor holds is first shrunk in
    ``TRUNCATE_STEP_BYTES`` steps with a pause between them (``delete_gently``): one
    ``unlink`` of 1.4 GB held ext4's journal long enough to delay the loop's fsyncs by up
    to 55 ms (a slow turn of 100-150 ms in the bench); in 8 MB steps they were not delayed
    at all. Nothing here is needed for correctness: a crash before a deletion leaves a
    ``.tmp`` the next start removes. In a forked child (the snapshot writer) the thread
    does not exist, so the call is made in place; a full queue does the same (bounded,
    never lost)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        # A SimpleQueue, whose put may be re-entered: SnapshotFile.__del__ submits, and the
        # cycle collector runs finalizers in whatever thread allocates, also one that is
        # inside submit or get already (queue.Queue's lock would be taken twice: a hang).
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Held while the thread is started, and never waited for (see _start).
        self._starting = threading.Lock()

    def submit(self, work: Callable[[], None]) -> None:
        if os.getpid() != self._pid or sys.is_finalizing():
            # A forked child has no thread here and no need of one; an interpreter that is
            # exiting cannot start a thread (start() would wait forever) nor run one.
            _quietly(work)
            return
        if self._queue.qsize() >= REAPER_QUEUE_MAX:
            _quietly(work)
            return
        self._queue.put(work)
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()

    def _start(self) -> None:
        """Start the thread unless it runs. A submit that finds it being started (by another
        thread, or by this one re-entered from a finalizer) returns at once: the thread being
        started takes the work queued before it."""
        if not self._starting.acquire(blocking=False):
            return
        try:
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._run, name="snapshot-file-reaper", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # no thread can be started (shutdown, limits)
                    self._drain_in_place()
                    return
                self._thread = thread
        finally:
            self._starting.release()

    def _drain_in_place(self) -> None:
        while True:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                return
            _quietly(work)

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            with suppress(Exception):  # the thread must outlive any one piece of work
                work()

    def wait(self) -> None:
        """Return once everything submitted so far is done (at close, and for tests)."""
        thread = self._thread
        mine = os.getpid() == self._pid and not sys.is_finalizing()
        if not (mine and thread is not None and thread.is_alive()):
            return
        done = threading.Event()
        self._queue.put(done.set)  # behind everything submitted so far
        while not done.wait(1.0):
            if not thread.is_alive():
                return


def _quietly(work: Callable[[], None]) -> None:
    with suppress(OSError):
        work()


# The files SnapshotFile objects hold open, by (device, inode), with how many hold each:
# a file still read (a transfer, a save) must not be shrunk under its reader. Guarded by
# _OPEN_LOCK (opened in the loop, closed by the reaper). Re-entrant: a SnapshotFile finalizer
# run by the collector inside one of these sections may close in place (see Reaper.submit).
_OPEN_FILES: dict[tuple[int, int], int] = {}
_OPEN_LOCK = threading.RLock()


def _opened(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    ident = (st.st_dev, st.st_ino)
    with _OPEN_LOCK:
        _OPEN_FILES[ident] = _OPEN_FILES.get(ident, 0) + 1
    return ident


def _close(fd: int, ident: tuple[int, int]) -> None:
    with _OPEN_LOCK:
        left = _OPEN_FILES.get(ident, 0) - 1
        if left > 0:
            _OPEN_FILES[ident] = left
        else:
            _OPEN_FILES.pop(ident, None)
    os.close(fd)


def delete_gently(path: str) -> None:
    """Delete ``path``, a superseded snapshot file: shrunk step by step first unless a
    SnapshotFile still reads it (then its last close frees what is left)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        with _OPEN_LOCK:
            read = ident in _OPEN_FILES
        size = st.st_size
        while size > 0 and not read:
            size = max(0, size - TRUNCATE_STEP_BYTES)
            os.ftruncate(fd, size)
            time.sleep(TRUNCATE_PAUSE_S)
    finally:
        os.close(fd)
    os.unlink(path)


REAPER: Final = Reaper()


def remove_tmp_files(folder: Path) -> list[str]:
    """Delete what a crash or a killed child left half-written; returns their names."""
    gone: list[str] = []
    with suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.endswith(TMP_SUFFIX):
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)
                gone.append(entry.name)
    return gone


def remove_older(folder: Path, keep: str) -> None:
    """Delete every finished snapshot file older than ``keep`` (recorded, so those are not
    needed by any recovery); in-progress ``.tmp`` files are left to their writers, and so
    are newer files: a peer's snapshot assembled and still being decoded over many loop
    turns is recorded only once installed (its row must find its file). Each is renamed to
    a ``.tmp`` at once (cheap) and deleted by the REAPER (see why there)."""
    keep_slot = slot_of(keep)
    with suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            slot = slot_of(entry.name)
            if slot is None or entry.name == keep:
                continue
            if keep_slot is not None and slot > keep_slot:
                continue
            old = entry.path + OLD_SUFFIX
            try:
                os.rename(entry.path, old)
            except FileNotFoundError:
                continue
            REAPER.submit(functools.partial(delete_gently, old))


def discard_file(sf: SnapshotFile) -> None:
    """Close ``sf`` and delete its file (never recorded: a refused peer's snapshot), renamed
    to a ``.tmp`` at once and deleted by the REAPER like a superseded one."""
    sf.close()
    old = str(sf.path) + OLD_SUFFIX
    try:
        os.rename(sf.path, old)
    except FileNotFoundError:
        return
    REAPER.submit(functools.partial(delete_gently, old))


def file_crc(path: Path, size: int) -> int:
    """crc32 of the first ``size`` bytes of ``path``, read in bounded pieces."""
    crc = 0
    with open(path, "rb", buffering=0) as f:
        left = size
        while left:
            piece = f.read(min(left, _PIECE_BYTES))
            if not piece:
                raise SnapshotFileError(f"{path}: ends {left} bytes early (torn)")
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
    return crc


class SnapshotFile:
    """A finished snapshot file as ``bytes``-like state for the core: its length, and slices
    read with ``pread`` (from the page cache, so serving a peer costs no resident memory).
    ``view()`` maps it read-only for a decoder that wants one buffer.

    The descriptor stays open while the object lives, so the state stays readable after a
    newer snapshot is recorded and this file is unlinked."""

    __slots__ = ("_ident", "crc", "fd", "name", "path", "size")

    def __init__(self, path: Path, size: int, crc: int) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.size = size
        self.crc = crc
        self.fd = -1  # closed, should the open fail
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._ident = _opened(self.fd)

    @classmethod
    def verified(cls, path: Path, size: int, crc: int) -> SnapshotFile:
        """Open a recorded file after checking its size and checksum against the record."""
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            raise SnapshotFileError(f"{path}: recorded snapshot file is missing") from None
        if actual != size:
            raise SnapshotFileError(
                f"{path}: {actual} bytes, but {size} were recorded (torn or replaced)"
            )
        if file_crc(path, size) != crc:
            raise SnapshotFileError(f"{path}: checksum does not match the record (altered)")
        return cls(path, size, crc)

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> bytes: ...

    def __getitem__(self, index: int | slice) -> int | bytes:
        if isinstance(index, int):
            got = self[index : index + 1]
            if not got:
                raise IndexError(index)
            return got[0]
        start, stop, step = index.indices(self.size)
        assert step == 1, "snapshot slices are contiguous"
        if stop <= start:
            return b""
        return os.pread(self.fd, stop - start, start)

    @contextmanager
    def view(self) -> Iterator[memoryview]:
        """The whole file as one read-only buffer (an mmap), unmapped on exit; its pages are
        the page cache's, not a copy."""
        if self.fd < 0:  # mmap(-1) would be an anonymous mapping: zeros, not the file
            raise SnapshotFileError(f"{self.path}: the snapshot file was closed")
        if self.size == 0:
            yield memoryview(b"")
            return
        mm = mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ)
        try:
            with memoryview(mm) as buf:
                yield buf
        finally:
            mm.close()

    def close(self) -> None:
        """Give the descriptor to the REAPER: if the file was superseded and deleted, this
        close is the one that frees its blocks. Idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            REAPER.submit(functools.partial(_close, fd, self._ident))

    def __del__(self) -> None:
        self.close()

    def __eq__(self, other: object) -> bool:
        """Equal to the same bytes, in memory or in another file (reads both: for tests and
        tools, never on a hot path)."""
        if isinstance(other, SnapshotFile):
            return self.size == other.size and self.crc == other.crc and self[:] == other[:]
        if isinstance(other, bytes | bytearray | memoryview):
            return len(other) == self.size and self[:] == bytes(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SnapshotFile({self.name}, {self.size} bytes)"


def write_bytes_file(folder: Path, slot: int, data: bytes | bytearray | memoryview) -> SnapshotFile:
    """Write ``data`` as the snapshot file of ``slot`` (tmp, fsync, rename, fsync folder)."""
    writer = FileWriter(folder, slot)
    try:
        view = memoryview(data)
        for i in range(0, len(view), _PIECE_BYTES):
            writer.write(view[i : i + _PIECE_BYTES])
        return writer.finish()
    except BaseException:
        writer.abandon()
        raise


class FileWriter:
    """A snapshot file being written in order (a peer's chunks, or bytes in memory): crc32 as
    it goes, made durable and given its final name by ``finish``."""

    def __init__(self, folder: Path, slot: int, *, tag: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.slot = slot
        self.final = folder / file_name(slot)
        self.tmp = folder / f"{file_name(slot)}{tag}{TMP_SUFFIX}"
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.size = 0
        self.crc = 0
        self.synced = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            self.crc = zlib.crc32(view[:n], self.crc)
            self.size += n
            view = view[n:]
        if self.size - self.synced >= SYNC_EVERY_BYTES:
            # Flushed as it goes, so the final fsync (and the daemon's own synced commits
            # behind it on the same disk) never waits for a GiB of dirty pages.
            os.fdatasync(self.fd)
            self.synced = self.size

    def finish(self) -> SnapshotFile:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.final)
        fsync_dir(self.folder)
        return SnapshotFile(self.final, self.size, self.crc)

    def abandon(self) -> None:
        if self.fd >= 0:
            with suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with suppress(FileNotFoundError):
            os.unlink(self.tmp)


__all__ = [
    "SNAPSHOT_DIR",
    "FileWriter",
    "SnapshotFile",
    "SnapshotFileError",
    "file_crc",
    "file_name",
    "fsync_dir",
    "remove_older",
    "remove_tmp_files",
    "snapshot_dir",
    "write_bytes_file",
]
