"""A full disk and a failing disk lose nothing: real 3-node clusters on loopback, one node's
database on a disk that fills (a small tmpfs where mounting is allowed; everywhere, the
test-only emulated small disk) or that fails with EIO.

Full disk: the node stops voting and answering, says so (log line, status), waits, and once
space is freed recovers from disk by itself (same pid: it re-executes) and agrees with the
others; the cluster keeps accepting writes meanwhile; every acknowledged put is readable at
the end; SQLite's integrity_check is clean. EIO: the node exits with code 74 and one line,
and a restart on a healthy disk recovers and agrees.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from paxosd.client.client import Client, UnavailableError, statuses_json
from paxosd.client.pipeline import Pipeline, Session
from paxosd.lab import localcluster
from paxosd.lab.localcluster import LocalCluster
from paxosd.server.diskspace import (
    EXIT_STORAGE_FAILED,
    TEST_DISK_BYTES_ENV,
    TEST_DISK_FAULT_ENV,
)
from paxosd.statemachine.commands import Found, Put, Written
from paxosd.storage.store import DB_FILENAME
from tests.waiting import wait_for

SMALL = 3  # the node whose disk fills or fails
VALUE_BYTES = 4096
PUTS_MAX = 5000  # a liveness bound on filling the disk


def _value(i: int) -> bytes:
    return f"{i:08d}".encode() * (VALUE_BYTES // 8)


def _status_of(c: LocalCluster, k: int) -> dict[str, Any] | None:
    with c.client(timeout_ms=2000) as cl:
        for row in statuses_json(cl):
            if row.get("node_id") == k:
                return row
    return None


def _converged(c: LocalCluster) -> list[dict[str, Any]] | None:
    with c.client(timeout_ms=2000) as cl:
        rows = statuses_json(cl)
    if any("error" in r or r.get("disk_full") for r in rows) or len(rows) != c.nodes:
        return None
    if len({r["applied_index"] for r in rows}) != 1 or len({r["digest"] for r in rows}) != 1:
        return None
    return rows


def _fill(c: LocalCluster, cl: Client, acked: dict[str, bytes]) -> dict[str, Any]:
    """Put through the cluster until node SMALL reports its disk full; every acknowledged
    put goes in ``acked``. Returns node SMALL's status."""
    for i in range(PUTS_MAX):
        key = f"k{i:05d}"
        cl.put(key, _value(i))
        acked[key] = _value(i)
        if i % 10 == 9:
            row = _status_of(c, SMALL)
            if row is not None and row.get("disk_full"):
                return row
    raise AssertionError(f"node {SMALL} never reported a full disk after {PUTS_MAX} puts")


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def _paxosctl_status(c: LocalCluster) -> subprocess.CompletedProcess[str]:
    endpoints = ",".join(c.endpoint_strings())
    key = str(c.root / "keys" / "client.key")
    argv = [sys.executable, "-m", "paxosctl", "status", "--endpoints", endpoints]
    return subprocess.run(
        [*argv, "--key-file", key], capture_output=True, text=True, check=False, timeout=60
    )


def _full_disk_scenario(
    c: LocalCluster,
    free_space: Callable[[], None],
    metrics_port: int | None = None,
    restart_env: dict[str, str] | None = None,
    before_restart: Callable[[], None] = lambda: None,
) -> None:
    """Fill node SMALL's disk, check it stops and says so while the others go on, free
    space, check it comes back by itself and nothing acknowledged was lost. With
    ``restart_env``, the full node is also stopped (SIGTERM: a clean exit, code 0), then
    ``before_restart`` runs, and it is started again (with that env) onto the still-full
    disk: it waits again (same process, another disk_full line), no crash loop."""
    c.up()
    pid = c.pid(SMALL)
    assert pid is not None
    acked: dict[str, bytes] = {}
    with c.client(timeout_ms=20_000) as cl:
        row = _fill(c, cl, acked)
        assert row["role"] == "disk-full" and row["leader"] is None
        # It says so, once, naming its data dir and its free bytes.
        log = wait_for("the disk_full log line", lambda: _log_line(c, SMALL, "disk_full"))
        assert str(c.root / "data" / f"n{SMALL}") in log and "free_bytes" in log
        shown = _paxosctl_status(c)
        assert "disk-full" in shown.stdout and "FULL" in shown.stdout, shown
        assert f"node {SMALL}: disk full" in shown.stderr, shown
        if metrics_port is not None:
            wait_for("paxosd_disk_full 1", lambda: "paxosd_disk_full 1.0" in _metrics(metrics_port))
        # The majority has space: the cluster goes on.
        for i in range(PUTS_MAX, PUTS_MAX + 30):
            cl.put(f"k{i:05d}", _value(i))
            acked[f"k{i:05d}"] = _value(i)

        # It neither votes (the others see its peer link down) nor answers commands.
        def others_lost_it() -> bool:
            return not any(
                r["peers"].get(str(SMALL), {}).get("connected")
                for r in statuses_json(cl)
                if r.get("node_id") not in (None, SMALL) and "error" not in r
            )

        wait_for(f"the others see node {SMALL}'s peer link down", others_lost_it)
        small = c.endpoints()[SMALL - 1]
        with (
            Client([small], c.client_key(), timeout_ms=1500) as only_small,
            pytest.raises(UnavailableError, match="disk full"),
        ):
            only_small.put("refused", b"x")
        # A client or pipeline that asks the full node first goes on to the others.
        others = [a for i, a in enumerate(c.endpoints(), 1) if i != SMALL]
        with Client([small, *others], c.client_key(), timeout_ms=20_000) as small_first:
            assert isinstance(small_first.put("small-first", b"x"), Written)
            acked["small-first"] = b"x"
        with Pipeline[str]([small, *others], c.client_key(), timeout_ms=20_000) as p:
            p.submit(Session().next_command(Put(key="piped", value=b"y")), "piped")
            done = wait_for("the pipelined put", lambda: p.poll(100))
            assert done[0][0] == "piped" and isinstance(done[0][1], Written), done
            acked["piped"] = b"y"
        if restart_env is not None:
            proc = localcluster._CHILDREN[pid]
            assert c.stop(SMALL) and proc.wait(timeout=30) == 0
            before_restart()
            seen = _count(c, SMALL, '"event": "disk_full"')
            pid = c.start(SMALL, env=restart_env)
            cl.put("restarted", b"x")  # something for the restarted node to write
            acked["restarted"] = b"x"
            wait_for(
                f"node {SMALL} restarted onto a full disk waits again",
                lambda: _count(c, SMALL, '"event": "disk_full"') > seen,
            )
            assert c.pid(SMALL) == pid, "it exited instead of waiting"
        # Space comes back: the node recovers from disk by itself, in the same process.
        free_space()
        rows = wait_for("the replicas agree again", lambda: _converged(c), bound_s=60)
        assert c.pid(SMALL) == pid, "the node was restarted, not re-executed"
        assert _log_line(c, SMALL, "disk_space_back")
        assert all(not r["disk_full"] for r in rows)
        if metrics_port is not None:
            wait_for("paxosd_disk_full 0", lambda: "paxosd_disk_full 0.0" in _metrics(metrics_port))
            body = _metrics(metrics_port)
            assert "paxosd_db_bytes" in body and "paxosd_disk_free_bytes" in body
        # Nothing acknowledged was lost.
        for key, value in acked.items():
            got = cl.get(key)
            assert isinstance(got, Found) and got.value == value, key
        for i in range(3):
            cl.put(f"after{i}", b"ok")
    c.down()
    _integrity_ok(c.root / "data" / f"n{SMALL}" / DB_FILENAME)


def _log_line(c: LocalCluster, k: int, event: str) -> str:
    for line in c.logs_tail(k, 500).splitlines():
        if event in line:
            return line
    return ""


def _count(c: LocalCluster, k: int, text: str) -> int:
    return c.logs_tail(k, 2000).count(text)


def _integrity_ok(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path / "c", 3)
    yield c
    c.down()


def test_an_emulated_full_disk_stops_the_node_and_space_back_restores_it(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """No privileges needed: node SMALL's database may grow to the size a file names."""
    cap = tmp_path / "disk_bytes"
    db = cluster.root / "data" / f"n{SMALL}" / DB_FILENAME
    cap.write_text(str(db.stat().st_size + 400_000))
    cfg = cluster.config_path(SMALL)
    cfg.write_text(cfg.read_text().replace("# metrics_address", "metrics_address"))
    for k in cluster.node_ids():
        cluster.start(k, env={TEST_DISK_BYTES_ENV: str(cap)} if k == SMALL else None)
    port = int(re.search(r'metrics_address = "[^"]*:(\d+)"', cfg.read_text())[1])  # type: ignore[index]
    env = {TEST_DISK_BYTES_ENV: str(cap)}
    _full_disk_scenario(cluster, lambda: cap.write_text(str(256 << 20)), port, env)


def test_a_full_tmpfs_stops_the_node_and_freeing_space_restores_it(
    cluster: LocalCluster,
) -> None:
    """Node SMALL's data dir on an 8 MiB tmpfs, filled but for ~300 KB by a file the test
    deletes to free space."""
    data = cluster.root / "data" / f"n{SMALL}"
    saved = cluster.root / "saved"
    shutil.copytree(data, saved)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); "
            "the emulated full disk test covers the same behaviour"
        )
    try:
        for f in saved.iterdir():
            shutil.copy2(f, data / f.name)
        filler = data / "filler"
        free = shutil.disk_usage(data).free
        with filler.open("wb") as out:
            out.write(b"\0" * max(0, free - 300_000))

        def fill_up() -> None:
            # Not a byte left, and no WAL index (SQLite rebuilds it from the WAL): the
            # restart's open fails creating it, so the node waits before it recovers.
            (data / f"{DB_FILENAME}-shm").unlink(missing_ok=True)
            with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
                while True:
                    out.write(b"\0" * 4096)

        _full_disk_scenario(cluster, filler.unlink, restart_env={}, before_restart=fill_up)
        lines = cluster.logs_tail(SMALL, 2000).splitlines()
        assert any('"disk_full"' in line and "starts by itself" in line for line in lines), (
            "the restart waited for space before recovering"
        )
    finally:
        cluster.down()
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_an_io_error_stops_the_node_with_exit_74_and_a_restart_recovers(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    fault = tmp_path / "eio"
    for k in cluster.node_ids():
        env = {TEST_DISK_FAULT_ENV: str(fault)} if k == SMALL else None
        cluster.start(k, env=env)
    cluster.wait_ready()
    pid = cluster.pid(SMALL)
    assert pid is not None
    proc = localcluster._CHILDREN[pid]
    acked: dict[str, bytes] = {}
    with cluster.client(timeout_ms=20_000) as cl:
        for i in range(20):
            cl.put(f"k{i}", _value(i))
            acked[f"k{i}"] = _value(i)
        fault.touch()
        i = 20
        while proc.poll() is None:
            assert i < PUTS_MAX, f"node {SMALL} never hit the injected fault"
            cl.put(f"k{i}", _value(i))
            acked[f"k{i}"] = _value(i)
            i += 1
        assert proc.returncode == EXIT_STORAGE_FAILED
        line = _log_line(cluster, SMALL, "storage failed")
        assert "Input/output error" in line and f"exit {EXIT_STORAGE_FAILED}" in line
        # The others go on; then the node restarts on a healthy disk and catches up.
        cl.put("while-down", b"x")
        acked["while-down"] = b"x"
        fault.unlink()
        cluster.start(SMALL)
        wait_for("the replicas agree again", lambda: _converged(cluster), bound_s=60)
        for key, value in acked.items():
            got = cl.get(key)
            assert isinstance(got, Found) and got.value == value, key
