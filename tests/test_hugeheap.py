"""The daemon's heap in huge pages: when it asks glibc for them, and that it does at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from paxosd.lab.localcluster import LocalCluster, pick_base_port
from paxosd.server.hugeheap import child_env, describe, thp_mode, tunables_for_huge_heap
from tests.waiting import wait_for

GLIBC = ("glibc", "2.36")


def test_the_tunable_is_added_only_where_it_helps() -> None:
    assert tunables_for_huge_heap({}, "madvise", GLIBC) == "glibc.malloc.hugetlb=1"
    # Other tunables are kept.
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    got = tunables_for_huge_heap(env, "madvise", GLIBC)
    assert got == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # Already set, either way: left alone (=0 is how an operator turns it off).
    for value in ("glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=0", "a=1:glibc.malloc.hugetlb=0"):
        assert tunables_for_huge_heap({"GLIBC_TUNABLES": value}, "madvise", GLIBC) is None
    # Moot: every heap has huge pages, none can, or glibc cannot ask.
    assert tunables_for_huge_heap({}, "always", GLIBC) is None
    assert tunables_for_huge_heap({}, "never", GLIBC) is None
    assert tunables_for_huge_heap({}, None, GLIBC) is None
    assert tunables_for_huge_heap({}, "madvise", ("glibc", "2.34")) is None
    assert tunables_for_huge_heap({}, "madvise", ("", "")) is None


def test_the_start_up_log_says_whether_the_heap_has_huge_pages() -> None:
    assert describe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise") == "on"
    assert describe({}, "always") == "on (kernel: always)"
    assert describe({}, "never") == "off (kernel: never)"
    assert describe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise").startswith("off")


def test_thp_mode_reads_the_bracketed_word(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    assert thp_mode(tmp_path / "absent") is None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


@pytest.mark.skipif(
    not child_env({}), reason="this machine's kernel or glibc cannot put the heap in huge pages"
)
def test_paxosd_run_re_executes_itself_with_the_tunable(tmp_path: Path) -> None:
    c = LocalCluster.create(tmp_path / "c", 1, base_port=pick_base_port(1), extra_config="")
    # An empty GLIBC_TUNABLES: the launcher's own addition is overridden, as for a daemon
    # started by hand or by a unit file without it.
    pid = c.start(1, env={"GLIBC_TUNABLES": ""})
    try:
        c.wait_answering(1)
        # Same process (systemd's main pid stays right), now with the tunable.
        assert c.pid(1) == pid
        assert _environ(pid).get("GLIBC_TUNABLES") == "glibc.malloc.hugetlb=1"
        wait_for("the serving line", lambda: '"heap_huge_pages": "on"' in c.logs_tail(1, 200))
    finally:
        c.down()
