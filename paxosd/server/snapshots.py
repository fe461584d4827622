"""Snapshots off the event loop: the daemon forks, and the child writes the state to a file.

This is Redis's BGSAVE and PySyncObj's way. ``fork()`` gives the child a copy-on-write view
of the state machine at one applied slot for free; the child encodes it with msgspec,
streams it to ``snapshots/<slot>.snap.<pid>.tmp`` in the data dir, fsyncs it, reports its
size and crc32 on a pipe and leaves with ``os._exit``. The parent never waits: each turn of
the loop polls the child (``waitpid(WNOHANG)``), and when it has exited cleanly renames the
file to its final name, fsyncs the folder and hands the core a file-backed state
(paxosd/storage/snapfile.py). Applying continues meanwhile; only one child runs at a time; a
child that fails is logged and the next due point tries again.

Why not the others:
  - encode in the loop (what was here): a 300 MB state stalled the loop ~1.5 s per
    snapshot, long enough for the followers to elect another leader every time;
  - a thread: the encoder holds the GIL, and the state keeps changing under it, so it would
    need a copy (twice the memory, and the copy itself stalls) or locks on every apply;
  - an incremental or persistent structure (etcd's bbolt, a HAMT): a rewrite of the state
    machine, not of the snapshot path.
The price of fork in CPython: reading an object writes its reference count, so the child's
pages are copied as it walks the state (the parent's are not), and the child must be
careful. The daemon has threads (client readers): the child touches no lock, logs nothing
and calls nothing but msgspec, hashlib, zlib and os before ``os._exit``. The garbage
collector is off in the child, so it does not walk (and copy) every object.

``InlineSnapshots`` in paxosd/server/runner.py is the synchronous path the simulator and
unit tests keep; the Runner does not know which one it drives.
"""

from __future__ import annotations

import gc
import os
import struct
import time
import zlib
from collections.abc import Callable, Generator
from contextlib import suppress
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from paxosd.core.messages import SnapshotChunk
from paxosd.core.types import SnapshotState
from paxosd.server.hugepages import HugePageFolder
from paxosd.server.runner import Machine, Preparation
from paxosd.statemachine.machine import RESTORE_BATCH
from paxosd.storage.snapfile import FileWriter, SnapshotFile, discard_file, file_name, fsync_dir

_RESULT: Final = struct.Struct("<QI")  # size, crc32: the child's report on its pipe
# The child syncs the file every this many bytes (Redis's rdb-save-incremental-fsync): a
# GiB of dirty pages flushed by one final fsync stalls the daemon's own small synced
# commits behind it on the same disk for as long as it takes (seen: elections, every time
# the leader's child finished).
SYNC_EVERY_BYTES: Final = 32 << 20
# A peer's snapshot is decoded for about this long per loop turn (ForkSnapshots.prepare): a
# turn stays far under the election timeout (300 ms) and heartbeats (tens of ms) get answered.
PREPARE_TURN_S: Final = 0.01
# Past any descriptor the daemon opens (closerange is one close_range syscall).
_FD_MAX: Final = 1 << 20
M = TypeVar("M", bound=Machine)

# Test-only: the child stops itself (SIGSTOP) once, at the first write that reaches this many
# bytes, so a test can kill it mid-write or hold it as long as it likes and resume it
# (SIGCONT). Read at each fork; logged as a warning when set.
_CHILD_STALL_ENV: Final = "PAXOSD_TEST_SNAPSHOT_CHILD_STALL"


@runtime_checkable
class _Streams(Protocol):
    """A state machine that can hand out its snapshot piece by piece."""

    def write_snapshot(self, write: Callable[[memoryview | bytes], None]) -> None: ...


def _settle_gc() -> None:
    """Move every object alive now into the collector's permanent generation (``gc.freeze``).

    CPython's cycle collector runs a full collection over every tracked object whenever the
    objects that survived since the last one reach a quarter of the rest; with a big state
    (a list per key in the index) that is a stop of the loop proportional to the state:
    ~0.4 s at 300,000 keys, over an election timeout at 1,000,000, and the followers elect
    another leader. The state is acyclic: its objects are freed by reference counting when
    they go, frozen or not; only a reference cycle among objects frozen here would never be
    collected (the young generations are collected first, which is cheap, so short-lived
    cycles are not frozen). The daemon freezes after each restore and before each snapshot's
    fork, so a full collection only walks what was made since: measured with 300,000 keys,
    a full collection took 573 ms unfrozen and under 1 ms after a freeze and 200,000 more
    puts (Instagram's and the gc docs' advice for a process that forks)."""
    gc.collect(1)
    gc.freeze()


class ForkSnapshots:
    """The daemon's SnapshotMaker (see paxosd.server.runner.SnapshotMaker)."""

    def __init__(self, folder: Path, log: Any) -> None:
        self.folder = Path(folder)
        self.log = log
        # The child in flight: (pid, slot, read end of its pipe, tmp path).
        self._child: tuple[int, int, int, Path] | None = None
        self._done: tuple[int, SnapshotState] | None = None
        self._rx: FileWriter | None = None
        self.failures = 0
        # The last snapshot made: its slot, the fork's milliseconds in the loop, the child's
        # seconds from fork to the file kept, its bytes (the "snapshot taken" log line).
        self.made: tuple[int, float, float, int] | None = None
        self._forked_at = 0.0
        self._fork_ms = 0.0
        # Folds the memory back into huge pages while no child lives, so forks stay cheap.
        self.hugepages = HugePageFolder()
        # How a peer's snapshot is decoded (see prepare); tests make the pieces tiny.
        self.prepare_turn_s = PREPARE_TURN_S
        self.prepare_batch = RESTORE_BATCH

    # ------------------------------------------------------------------ taking

    def start(self, slot: int, sm: Machine) -> bool:
        if self._child is not None:
            self._check(block=False)
            if self._child is not None:
                return False
        self.folder.mkdir(parents=True, exist_ok=True)
        if isinstance(sm, _Streams):
            write_state = sm.write_snapshot
        else:  # a machine that only encodes whole (the core tests' recorder)

            def write_state(write: Callable[[memoryview | bytes], None]) -> None:
                write(sm.snapshot())

        tmp = self.folder / f"{file_name(slot)}.{os.getpid()}.tmp"
        stall = int(os.environ.get(_CHILD_STALL_ENV, "0"))
        if stall:
            self.log.warning(
                "TEST-ONLY SNAPSHOT CHILD STALL: the snapshot child stops itself until "
                "resumed; never run it with real data",
                **{_CHILD_STALL_ENV: stall},
            )
        try:
            r, w = os.pipe()
        except OSError as e:
            self._failed(slot, f"no pipe: {e}")
            return False
        # Everything alive now leaves the collector's generations (see _settle_gc): fewer
        # pages for the child to copy, and no full collection over the state in the parent.
        _settle_gc()
        self.hugepages.stop()
        forked_at = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as e:
            os.close(r)
            os.close(w)
            self._failed(slot, f"fork failed: {e}")
            return False
        if pid == 0:  # the child: encode, write, report, leave; nothing else
            code = 1
            try:
                # Only the pipe stays open: the sockets, the database and the data dir's lock
                # must not outlive the daemon in a child (a restart could not bind or lock).
                os.closerange(3, w)
                os.closerange(w + 1, _FD_MAX)
                gc.disable()
                code = _child_write(tmp, write_state, w, stall)
            finally:
                os._exit(code)
        self._forked_at = forked_at
        self._fork_ms = (time.perf_counter() - forked_at) * 1000
        os.close(w)
        os.set_blocking(r, False)
        self._child = (pid, slot, r, tmp)
        return True

    def poll(self) -> tuple[int, SnapshotState] | None:
        if self._child is not None:
            self._check(block=False)
        done, self._done = self._done, None
        return done

    def take_now(self, slot: int, sm: Machine) -> SnapshotState:
        """Fork and wait: the loop stops for the encode, but the parent makes no copy."""
        if self._child is not None:
            self._check(block=True)
        if self._done is not None and self._done[0] == slot:
            state = self._done[1]
            self._done = None
            return state
        if self.start(slot, sm):
            self._check(block=True)
        done, self._done = self._done, None
        if done is None or done[0] != slot:
            # The child failed (logged): encode in this process, as before snapshots forked;
            # storage writes these bytes to the file.
            return sm.snapshot()
        return done[1]

    @property
    def busy(self) -> bool:
        return self._child is not None

    def fold_memory(self) -> None:
        """Fold the memory into huge pages now unless a child shares it (the daemon calls
        this once it serves; after that each child's exit does)."""
        if self._child is None:
            self.hugepages.start()

    @property
    def running(self) -> int | None:
        return None if self._child is None else self._child[1]

    def _check(self, *, block: bool) -> None:
        assert self._child is not None
        pid, slot, r, tmp = self._child
        try:
            got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            got, status = pid, -1
        if got == 0:
            return
        self._child = None
        self.hugepages.start()  # the child's pages are no longer shared
        report = b""
        try:
            report = os.read(r, _RESULT.size)
        except BlockingIOError:
            pass
        finally:
            os.close(r)
        if status != 0 or len(report) != _RESULT.size:
            _unlink(tmp)
            self._failed(slot, f"the child exited with status {status}")
            return
        size, crc = _RESULT.unpack(report)
        final = self.folder / file_name(slot)
        try:
            os.replace(tmp, final)
            fsync_dir(self.folder)
            self._done = (slot, SnapshotFile(final, size, crc))
            self.made = (slot, self._fork_ms, time.perf_counter() - self._forked_at, size)
        except OSError as e:
            _unlink(tmp)
            self._failed(slot, f"cannot keep the file: {e}")

    def _failed(self, slot: int, why: str) -> None:
        self.failures += 1
        self.log.warning("snapshot child failed", slot=slot, why=why, retry="at the next due point")

    # ------------------------------------------------------------------ receiving

    def receive(self, chunk: SnapshotChunk) -> SnapshotState | None:
        try:
            if chunk.offset == 0:
                if self._rx is not None:
                    self._rx.abandon()
                self._rx = FileWriter(self.folder, chunk.slot, tag=".rx")
            rx = self._rx
            if rx is None or rx.slot != chunk.slot or rx.size != chunk.offset:
                return None  # the core starts over at offset 0 when this one never ends
            rx.write(chunk.data)
            if rx.size < chunk.total:
                return None
            self._rx = None
            return rx.finish()
        except OSError as e:
            # Dropped: the core asks for the snapshot again from the start.
            self.log.warning("snapshot from a peer not written", slot=chunk.slot, error=str(e))
            if self._rx is not None:
                self._rx.abandon()
                self._rx = None
            return None

    def discard(self, state: SnapshotState) -> None:
        """A refused peer's snapshot: its assembled file goes (a follower that refuses every
        snapshot it is sent would otherwise keep one full-size file per slot)."""
        if isinstance(state, SnapshotFile) and state.path.parent == self.folder:
            discard_file(state)

    # ------------------------------------------------------------------ reading back

    def prepare(self, sm: M, state: SnapshotState) -> Preparation[M]:
        """Decode ``state`` in pieces for up to PREPARE_TURN_S per loop turn (see
        _TimedPreparation); a file stays mapped until it is done (the descriptor the state
        holds keeps it readable even if a newer snapshot's rename replaces its name)."""
        return _TimedPreparation(
            sm.restoring(state, batch=self.prepare_batch), turn_s=self.prepare_turn_s
        )

    def restore(self, sm: M, state: SnapshotState) -> M:
        if isinstance(state, SnapshotFile):
            with state.view() as buf:
                restored = sm.restore(buf)
        else:
            restored = sm.restore(state if isinstance(state, bytes) else state[0 : len(state)])
        _settle_gc()
        return restored

    def close(self) -> None:
        """Reap a child still running (the daemon is stopping); its tmp file is removed at the
        next start."""
        if self._child is not None:
            pid = self._child[0]
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(self._child[2])
            _unlink(self._child[3])
            self._child = None


class _TimedPreparation(Preparation[M]):
    """Pieces of a peer's snapshot for up to PREPARE_TURN_S of one loop turn (a piece is
    1-3 ms; a count of them would be too long on a loaded host and too short on an idle one),
    then the new objects leave the collector's generations (_settle_gc, as before a fork:
    the young generations are collected first, so the turn's short-lived cycles are not
    frozen): otherwise the half-built state, a million objects, is walked by a full
    collection every few turns."""

    def __init__(self, steps: Generator[None, None, M], *, turn_s: float) -> None:
        super().__init__(steps)
        self.turn_s = turn_s
        self._t0 = 0.0

    def _begin_turn(self) -> None:
        self._t0 = time.perf_counter()

    def _more(self, pieces_done: int) -> bool:
        return time.perf_counter() - self._t0 < self.turn_s

    def _end_turn(self) -> None:
        _settle_gc()


def _child_write(
    tmp: Path,
    write_state: Callable[[Callable[[memoryview | bytes], None]], None],
    report: int,
    stall: int,
) -> int:
    """In the forked child: the state to ``tmp``, synced; (size, crc32) on ``report``."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = 0
    crc = 0
    synced = 0

    def write(data: memoryview | bytes) -> None:
        nonlocal size, crc, synced, stall
        view = memoryview(data)
        crc = zlib.crc32(view, crc)
        size += len(view)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if size - synced >= SYNC_EVERY_BYTES:
            os.fdatasync(fd)
            synced = size
        if stall and size >= stall:
            stall = 0  # once: a resumed child runs to the end
            os.kill(os.getpid(), 19)  # SIGSTOP: a test kills or resumes it here, mid-write

    write_state(write)
    os.fsync(fd)
    os.close(fd)
    os.write(report, _RESULT.pack(size, crc))
    os.close(report)
    return 0


def _unlink(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


__all__ = ["ForkSnapshots"]
