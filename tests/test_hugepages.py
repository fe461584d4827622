"""The folder that puts the daemon's memory back into huge pages between snapshot forks."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import pytest

from paxosd.server.hugepages import HUGE_PAGE_BYTES, HugePageFolder, foldable_ranges
from tests.waiting import wait_for

MAPS = """\
55f111200000-55f192c00000 rw-p 00000000 00:00 0                          [heap]
7fe646505000-7fe647705000 rw-p 00000000 00:00 0 
7fe647705000-7fe647706000 ---p 00000000 00:00 0 
7fe650000000-7fe650400000 r--p 00000000 fd:00 1234                       /usr/lib/libc.so.6
7fe650400000-7fe650800000 rw-p 00000000 fd:00 1234                       /work/data.snap
7ffc0e000000-7ffc0e800000 rw-p 00000000 00:00 0                          [stack]
7ffd00001000-7ffd00002000 rw-p 00000000 00:00 0 
"""


def test_only_the_heap_and_private_anonymous_memory_is_folded_in_whole_huge_pages() -> None:
    got = foldable_ranges(MAPS)
    assert got == [
        (0x55F111200000, 0x55F192C00000),
        # 7fe646505000 rounded up, 7fe647705000 down, to 2 MiB
        (0x7FE646600000, 0x7FE647600000),
    ]
    assert all(a % HUGE_PAGE_BYTES == 0 and b % HUGE_PAGE_BYTES == 0 for a, b in got)


def _huge_kib(address: int) -> int:
    """AnonHugePages of the mapping holding ``address``, in KiB."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and len(line.split()) >= 5 and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not HugePageFolder().supported, reason="no madvise here (not Linux)")
def test_a_pass_folds_private_anonymous_memory_into_huge_pages() -> None:
    size = 16 * HUGE_PAGE_BYTES
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.write(b"\x01" * size)  # every page touched: 4 KiB pages, as a fork leaves them
        address = ctypes.addressof(ctypes.c_char.from_buffer(region))
        folder = HugePageFolder(pause_s=0)
        folder.start()
        wait_for("the pass to end", lambda: not folder.running)
        if not folder.supported:
            pytest.skip("this kernel has no MADV_COLLAPSE (Linux 6.1 and later have)")
        assert folder.last is not None and folder.last.bytes_asked >= 14 * HUGE_PAGE_BYTES
        # At least the whole 2 MiB pages inside the region are huge now.
        assert _huge_kib(address) >= 14 * HUGE_PAGE_BYTES // 1024
        assert region[:4] == b"\x01" * 4  # the contents are the same memory, folded
    finally:
        region.close()


def test_stop_ends_a_pass_at_its_next_step_as_a_fork_needs() -> None:
    folder = HugePageFolder(pause_s=0.05)
    if not folder.supported:
        pytest.skip("no madvise here (not Linux)")
    folder.start()
    folder.start()  # one pass at a time: a second start is a no-op
    folder.stop()
    wait_for("the pass to end", lambda: not folder.running)
    assert folder.last is not None and folder.last.stopped
