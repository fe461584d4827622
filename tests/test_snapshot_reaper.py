"""Superseded snapshot files are deleted off the event loop, by the reaper's thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from paxosd.storage import snapfile
from paxosd.storage.snapfile import (
    OLD_SUFFIX,
    REAPER,
    Reaper,
    SnapshotFile,
    file_name,
    remove_older,
    remove_tmp_files,
)


def _files(folder: Path, *slots: int) -> list[Path]:
    paths = []
    for slot in slots:
        p = folder / file_name(slot)
        p.write_bytes(b"x" * 100)
        paths.append(p)
    return paths


def test_superseded_files_are_renamed_at_once_and_deleted_by_the_reaper(tmp_path: Path) -> None:
    gate = threading.Event()
    REAPER.submit(gate.wait)  # holds the reaper: what remove_older leaves is visible
    try:
        _files(tmp_path, 3, 7, 9)
        writer = tmp_path / f"{file_name(11)}.123.tmp"  # a child still writing: not touched
        writer.write_bytes(b"partial")
        remove_older(tmp_path, keep=file_name(9))
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(
            [file_name(3) + OLD_SUFFIX, file_name(7) + OLD_SUFFIX, file_name(9), writer.name]
        )
    finally:
        gate.set()
    REAPER.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([file_name(9), writer.name])


def test_a_crash_before_the_reaper_ran_leaves_only_tmp_files_the_next_start_removes(
    tmp_path: Path,
) -> None:
    (kept,) = _files(tmp_path, 9)
    left = tmp_path / (file_name(3) + OLD_SUFFIX)
    left.write_bytes(b"superseded, not yet deleted")
    assert remove_tmp_files(tmp_path) == [left.name]
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]


def test_a_snapshot_file_close_goes_through_the_reaper_once(tmp_path: Path) -> None:
    (path,) = _files(tmp_path, 4)
    sf = SnapshotFile(path, 100, 0)
    fd = sf.fd
    assert sf[0:3] == b"xxx"
    sf.close()
    sf.close()  # idempotent: the number may belong to another file by now
    assert sf.fd == -1
    REAPER.wait()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_in_a_forked_child_or_with_a_full_queue_the_work_is_done_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reaper = Reaper()
    done: list[str] = []
    monkeypatch.setattr(reaper, "_pid", os.getpid() + 1)  # as seen from a forked child
    reaper.submit(lambda: done.append("child"))
    assert done == ["child"] and reaper._thread is None

    monkeypatch.setattr(snapfile, "REAPER_QUEUE_MAX", 1)
    gate = threading.Event()
    small = Reaper()
    small.submit(gate.wait)  # the thread takes this one and waits
    for i in range(snapfile.REAPER_QUEUE_MAX + 3):
        small.submit(lambda i=i: done.append(f"w{i}"))
    assert "w3" in done  # the queue was full: done in place, not dropped
    gate.set()
    small.wait()
    assert sorted(done) == sorted(["child"] + [f"w{i}" for i in range(4)])


def test_a_superseded_file_still_read_is_not_shrunk_under_its_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapfile, "TRUNCATE_STEP_BYTES", 1000)
    data = bytes(range(256)) * 40  # 10,240 bytes: several steps
    held, free = tmp_path / file_name(1), tmp_path / file_name(2)
    held.write_bytes(data)
    free.write_bytes(data)
    reader = SnapshotFile(held, len(data), 0)  # a transfer or a save still reading it
    ident = (held.stat().st_dev, held.stat().st_ino)
    sizes: list[int] = []
    real_ftruncate = os.ftruncate

    def ftruncate(fd: int, size: int) -> None:
        sizes.append(size)
        real_ftruncate(fd, size)

    monkeypatch.setattr(snapfile.os, "ftruncate", ftruncate)
    snapfile.delete_gently(str(held))
    assert sizes == [] and not held.exists()
    assert reader[0 : len(data)] == data  # whole, from its descriptor
    snapfile.delete_gently(str(free))
    assert sizes == list(range(len(data) - 1000, 0, -1000)) + [0] and not free.exists()
    reader.close()
    REAPER.wait()
    assert ident not in snapfile._OPEN_FILES


def test_a_process_holding_a_snapshot_file_at_exit_exits(tmp_path: Path) -> None:
    # The file is closed while the interpreter finalizes: no reaper thread may be started
    # then (Thread.start would wait forever for a thread that cannot run).
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from paxosd.storage.snapfile import SnapshotFile, file_name
        p = Path({str(tmp_path)!r}) / file_name(1)
        p.write_bytes(b"state")
        held = SnapshotFile(p, 5, 0)
        print(held[0:5].decode())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "state", done.stderr


# A SnapshotFile's finalizer (__del__) hands its descriptor to the reaper. The cycle
# collector runs finalizers in whichever thread it happens to run, at any allocation: also
# while that thread is inside Reaper.submit (the loop) or the reaper's own queue get. The
# script makes a collection happen at each C call inside submit in turn, each time with a
# SnapshotFile only the collector can free; a submit that takes a lock its finalizer needs
# again (queue.Queue's, or a plain Lock around the thread's start) hangs there for good.
_FINALIZER_INSIDE_SUBMIT = """
import gc
import sys
from pathlib import Path

from paxosd.storage import snapfile
from paxosd.storage.snapfile import Reaper, SnapshotFile, file_name

path = Path(sys.argv[1]) / file_name(1)
path.write_bytes(b"state")
gc.disable()


def collect_at_call(k, submit):
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "c_call":
            calls += 1
            if calls == k:
                gc.collect()  # finalizes the SnapshotFile below, in this thread, here

    held = SnapshotFile(path, 5, 0)
    cycle = [held]
    cycle.append(cycle)  # only the collector can free it now
    del held, cycle
    sys.setprofile(profile)
    try:
        submit()
    finally:
        sys.setprofile(None)
    return calls >= k


for fresh in (False, True):  # the reaper's thread running, and not started yet
    k = 1
    while True:
        if fresh:
            snapfile.REAPER = Reaper()
        reaper = snapfile.REAPER
        if not collect_at_call(k, lambda: reaper.submit(lambda: None)):
            break
        reaper.wait()
        k += 1
    print("fresh" if fresh else "running", k)
"""


def test_a_snapshot_file_finalized_inside_the_reapers_submit_does_not_hang(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FINALIZER_INSIDE_SUBMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,  # a bound on a hang, not a speed: the script takes well under a second
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0::2] == ["running", "fresh"], done.stdout


def test_a_closed_snapshot_file_cannot_be_mapped(tmp_path: Path) -> None:
    """Closed, its descriptor is -1, and mmap(-1) is an anonymous mapping: zeros, not the file."""
    (path,) = _files(tmp_path, 5)
    sf = SnapshotFile(path, 100, 0)
    sf.close()
    with pytest.raises(snapfile.SnapshotFileError, match="closed"), sf.view():
        pass
    REAPER.wait()
