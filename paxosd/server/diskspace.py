"""The data dir's disk: how full it is, waiting out a full one, and the test-only faults.

A full disk is an operating condition, not a crash: SQLite rolls the failed transaction
back (SQLITE_FULL), so the database holds exactly what was committed before it. The node
therefore stops (no vote, no acknowledgement: the daemon freezes the core and closes its peer
port), waits with its client port answering "disk full", looks at the free space every
DISK_CHECK_MS, and once there is room again recovers from disk by re-executing its own command
line (``reexec``).

Why re-execute rather than carry on in-process: the core's in-memory state ran ahead of the
disk (it produced the promise or vote whose write failed), so it must be rebuilt from what
is durable, and recovery from disk is the code path every restart already proves. ``execv``
keeps the pid (systemd's MAINPID, the local cluster's pid file) and the command line; every
descriptor paxosd opens is close-on-exec (Python's default), so the data-dir lock and the
ports are released by the exec and taken again by the new image.

An I/O error (EIO from write or fsync) is different: the node exits (EXIT_STORAGE_FAILED)
and lets its supervisor restart it. Retrying an fsync that failed is wrong, as PostgreSQL
learnt in 2018: Linux may drop the dirty pages and clear the error after reporting it once,
so a retry "succeeds" while the data never reached the disk. Only a restart that re-reads
what is really on disk (and checks it) knows what is durable.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from paxosd.storage.store import DB_FILENAME, StorageIOError, db_file_bytes

# How often a node waiting for space looks at the file system again.
DISK_CHECK_MS = 1000
# Space that must be free before a node that filled its disk starts again: a tenth of the
# file system, within these bounds. Some slack, so that the node does not restart into a
# disk that fills again at its first catch-up write, and so that it does not flap.
RESUME_FREE_BYTES_MIN = 1 << 20
RESUME_FREE_BYTES_MAX = 64 << 20
# `paxosd run`'s exit code after a storage I/O error (sysexits.h's EX_IOERR).
EXIT_STORAGE_FAILED = 74

# TEST-ONLY knobs (like PAXOSD_TEST_PLANT_BUG in node.py; a node that has one says so loudly):
# a file holding a byte count: the database may grow to about that size, as if its disk
# were that small (SQLite's max_page_count; a write past it fails with SQLITE_FULL), and the
# free space reported is what is left of it. Raising the number "frees space". It lets a
# test fill a disk without the privileges to mount a small file system.
TEST_DISK_BYTES_ENV = "PAXOSD_TEST_DISK_BYTES_FILE"
# A path: while a file exists there, every storage write fails as if the disk returned EIO.
TEST_DISK_FAULT_ENV = "PAXOSD_TEST_DISK_FAULT_FILE"


@dataclass(frozen=True, slots=True)
class Space:
    """The data dir's file system now: bytes free (to this user), its size, and the bytes of
    the database and its WAL."""

    free_bytes: int
    total_bytes: int
    db_bytes: int

    @property
    def resume_bytes(self) -> int:
        """Free bytes needed before a node that filled this disk starts again."""
        return min(RESUME_FREE_BYTES_MAX, max(RESUME_FREE_BYTES_MIN, self.total_bytes // 10))


def emulated_disk_bytes() -> int | None:
    """The emulated disk size the TEST_DISK_BYTES_ENV file gives, or None (no knob, no
    file, or not a positive number)."""
    name = os.environ.get(TEST_DISK_BYTES_ENV)
    if not name:
        return None
    try:
        value = int(Path(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value > 0 else None


def measure(data_dir: Path) -> Space:
    """Free and total bytes of the file system holding ``data_dir`` and the database's
    size. Cheap (one statvfs, two stats): the daemon calls it for status and metrics."""
    db = db_file_bytes(data_dir / DB_FILENAME)
    try:
        st = os.statvfs(data_dir)
        free = st.f_bavail * st.f_frsize
        total = st.f_blocks * st.f_frsize
    except OSError:
        free = total = 0
    cap = emulated_disk_bytes()
    if cap is not None:
        free = min(free, max(0, cap - db))
        total = min(total, cap)
    return Space(free_bytes=free, total_bytes=total, db_bytes=db)


def injected_fault(path: Path) -> StorageIOError | None:
    """The error a write fails with while the TEST_DISK_FAULT_ENV file exists, else None."""
    name = os.environ.get(TEST_DISK_FAULT_ENV)
    if not name or not os.path.exists(name):
        return None
    return StorageIOError(path, f"write failed: [Errno 5] Input/output error (injected: {name})")


def reexec() -> NoReturn:
    """Replace this process with a fresh run of the same command line (same pid). The
    caller closes what it can first; the exec closes the rest (close-on-exec)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
