"""Fold the daemon's memory back into huge pages between snapshots, so the next fork is cheap.

A snapshot is made by a forked child (paxosd/server/snapshots.py), and ``fork`` copies the
parent's page tables inside one turn of the event loop, one entry per 4 KiB page: in the
daemon at 1,000,000 keys of 1 KiB (1.37 GB of state), 20-88 ms per fork (median 66; with
this folder 7-43 ms, median 10). Memory in 2 MiB pages has 512 times fewer entries: 3 ms
for a process holding 1,000,000 values of 1 KiB, against 38-43 ms in 4 KiB pages. Putting
the heap in huge pages from the start (glibc's ``glibc.malloc.hugetlb=1``) helps only the
first fork: every page the parent writes while a child shares it is split to 4 KiB pages
(that is how Linux copies on write a shared huge page) and stays split, so the later forks
took 39-81 ms, as without.

``madvise(MADV_COLLAPSE)`` (Linux 6.1) folds a range back into huge pages. The folder does
that on a thread of its own once a snapshot child has exited (while one lives, folding would
copy the pages it shares: more memory, no gain) and when the daemon starts serving, over the
heap and the other private anonymous mappings, 2 MiB per call with a pause between calls:
measured in one process, with 64 MiB calls a busy thread beside the folder stalled 50-90 ms
at worst, with 2 MiB calls 5-10 ms (about one switch of the interpreter's lock).
Folding 1.1 GB took ~1 s of that thread and left the resident size as it was. The next fork
stops a fold in progress. Where the call is not supported (an older kernel, not Linux) the
folder does nothing; nothing here is needed for correctness.
"""

from __future__ import annotations

import ctypes
import errno
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

HUGE_PAGE_BYTES: Final = 2 << 20
MADV_COLLAPSE: Final = 25
# The pause between two 2 MiB folds: the loop gets the interpreter's lock and the memory map.
STEP_PAUSE_S: Final = 0.001
MAPS: Final = Path("/proc/self/maps")


def foldable_ranges(maps_text: str) -> list[tuple[int, int]]:
    """The 2 MiB-aligned parts of the heap and of the private anonymous read-write mappings
    (the interpreter's arenas, big buffers) in a ``/proc/<pid>/maps`` text: where the
    state's objects live. File mappings, stacks and the like are left out."""
    ranges: list[tuple[int, int]] = []
    for line in maps_text.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[1] != "rw-p":
            continue
        name = fields[5] if len(fields) > 5 else ""
        if name not in ("", "[heap]"):
            continue
        start_s, _, end_s = fields[0].partition("-")
        start = -(-int(start_s, 16) // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        end = int(end_s, 16) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if end > start:
            ranges.append((start, end))
    return ranges


@dataclass(slots=True)
class Fold:
    """One pass of the folder: how much it asked to fold, how much the kernel refused (no
    free huge page, a range unmapped meanwhile), its seconds, and whether a fork stopped it."""

    bytes_asked: int = 0
    bytes_refused: int = 0
    seconds: float = 0.0
    stopped: bool = False


class HugePageFolder:
    """Folds this process's memory back into huge pages on a thread (see the module doc)."""

    def __init__(self, pause_s: float = STEP_PAUSE_S) -> None:
        self.pause_s = pause_s
        self._madvise = _libc_madvise()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last: Fold | None = None

    @property
    def supported(self) -> bool:
        return self._madvise is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Begin a pass unless one is running or the call is not supported."""
        if self._madvise is None or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hugepages", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Have a pass in progress end at its next step (before a fork)."""
        self._stop.set()

    def _run(self) -> None:
        madvise = self._madvise
        assert madvise is not None
        fold = Fold()
        invalid = 0
        began = time.perf_counter()
        try:
            ranges = foldable_ranges(MAPS.read_text())
        except OSError:
            ranges = []
        for start, end in ranges:
            for addr in range(start, end, HUGE_PAGE_BYTES):
                if self._stop.is_set():
                    fold.stopped = True
                    break
                fold.bytes_asked += HUGE_PAGE_BYTES
                if madvise(addr, HUGE_PAGE_BYTES, MADV_COLLAPSE) != 0:
                    fold.bytes_refused += HUGE_PAGE_BYTES
                    if ctypes.get_errno() == errno.EINVAL:
                        invalid += HUGE_PAGE_BYTES
                time.sleep(self.pause_s)
            if fold.stopped:
                break
        if fold.bytes_asked and invalid == fold.bytes_asked:
            self._madvise = None  # the kernel does not know the call: never ask again
        fold.seconds = time.perf_counter() - began
        self.last = fold


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise, or None off Linux."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], madvise)
