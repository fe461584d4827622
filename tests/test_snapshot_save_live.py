"""`paxosctl snapshot save` from a live cluster whose snapshot takes longer to make than one
client request may wait (1.5 s): the node answers "pending" and goes on serving while its
forked child writes, the client polls, and the backup restores to the digest it names.

The child is held for as long as the test likes with the test-only stall variable: every
daemon's snapshot child stops itself (SIGSTOP) after its first bytes, and the test resumes it.
Real paxosd processes on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paxosd.cli import app as paxosd_app
from paxosd.client.client import ATTEMPT_TIMEOUT_MS
from paxosd.lab.localcluster import LocalCluster
from paxosd.server.snapshots import _CHILD_STALL_ENV
from paxosd.statemachine.commands import Found, Get
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.backup import read_backup, verify_state
from paxosd.storage.store import DB_FILENAME, Storage
from tests.waiting import wait_for

# The child is held stopped at least this long: longer than one request may wait.
HELD_S = ATTEMPT_TIMEOUT_MS / 1000 + 0.5


@pytest.fixture
def stalled_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setenv(_CHILD_STALL_ENV, "1")  # the daemons inherit it
    c = LocalCluster.create(tmp_path / "c", 3)
    c.up()
    try:
        yield c
    finally:
        c.down()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _stopped_child(pid: int) -> int | None:
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    return child
        except OSError:
            continue
    return None


def test_a_save_waits_for_a_slow_snapshot_while_the_node_serves_and_restores_equal(
    stalled_cluster: LocalCluster, tmp_path: Path
) -> None:
    c = stalled_cluster
    with c.client() as client:
        for i in range(40):
            client.put(f"before/{i}", f"value {i}".encode())
        leader = wait_for("a leader", lambda: client.status().leader)
    pid = c.pid(leader)
    assert pid is not None
    out, err = tmp_path / "save.out", tmp_path / "save.err"
    key = str(c.root / "keys" / "client.key")
    backup = tmp_path / "live.pxb"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        save = subprocess.Popen(
            [sys.executable, "-m", "paxosctl", "snapshot", "save", str(backup)]
            + ["--node", str(leader), "--json", "--timeout-ms", "120000"]
            + ["--endpoints", ",".join(c.endpoint_strings()), "--key-file", key],
            stdout=stdout,
            stderr=stderr,
        )
    try:
        child = wait_for("the leader's snapshot child stopped", lambda: _stopped_child(pid))
        stopped_at = time.monotonic()
        wait_for("the client told it waits", lambda: b"waiting for it" in err.read_bytes())
        # The leader's loop goes on while its child is held: writes are acknowledged.
        acked = 0
        with c.client() as client:
            applied = client.status(node=leader).applied_index
            while time.monotonic() - stopped_at < HELD_S or acked < 5:
                client.put(f"during/{acked}", b"x")
                acked += 1
            assert client.status(node=leader).applied_index > applied
        assert save.poll() is None  # still waiting, not failed over or given up
        os.kill(child, signal.SIGCONT)
        assert save.wait(timeout=120) == 0, err.read_text()
    finally:
        if save.poll() is None:
            save.kill()
            save.wait()
    saved = json.loads(out.read_text())
    assert saved["node_id"] == leader and saved["applied_index"] <= applied

    # The file checks, and `paxosd restore` seeds a node at the digest it names.
    on_file = read_backup(backup)
    assert verify_state(on_file.header, on_file.state).digest() == saved["digest"]
    r = CliRunner().invoke(
        paxosd_app,
        ["restore", str(backup), "--new-cluster", "--data-dir", str(tmp_path / "n1")]
        + ["--cluster-id", "restored", "--node-id", "1"],
    )
    assert r.exit_code == 0, r.output
    with Storage.open_readonly(tmp_path / "n1" / DB_FILENAME) as s:
        snap = s.load().snapshot
    assert snap is not None and snap.slot == saved["applied_index"]
    sm = StateMachine.restore(snap.state[0 : len(snap.state)])
    assert sm.digest() == saved["digest"]
    found = sm.query(Get(key="before/39"))
    assert isinstance(found, Found) and found.value == b"value 39"


def _paxosctl(c: LocalCluster, *args: str, out: Path, err: Path) -> subprocess.Popen[bytes]:
    key = str(c.root / "keys" / "client.key")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "paxosctl", *args]
            + ["--endpoints", ",".join(c.endpoint_strings()), "--key-file", key],
            stdout=stdout,
            stderr=stderr,
        )


def test_snapshot_now_answers_when_its_child_is_done_and_says_when_it_failed(
    stalled_cluster: LocalCluster, tmp_path: Path
) -> None:
    c = stalled_cluster
    with c.client() as client:
        client.put("k", b"v")
        leader = wait_for("a leader", lambda: client.status().leader)
        applied = client.status(node=leader).applied_index
    pid = c.pid(leader)
    assert pid is not None
    out, err = tmp_path / "out", tmp_path / "err"
    for outcome in ("killed", "resumed"):
        taking = _paxosctl(c, "snapshot", "--node", str(leader), "--json", out=out, err=err)
        try:
            child = wait_for("the snapshot child stopped", lambda: _stopped_child(pid))
            with c.client() as client:  # the loop goes on meanwhile
                client.put(f"during/{outcome}", b"x")
            assert taking.poll() is None
            os.kill(child, signal.SIGKILL if outcome == "killed" else signal.SIGCONT)
            code = taking.wait(timeout=60)
        finally:
            if taking.poll() is None:
                taking.kill()
                taking.wait()
        if outcome == "killed":
            assert code == 3
            lines = err.read_text().strip().splitlines()
            assert len(lines) == 1 and "failed" in lines[0] and "Traceback" not in lines[0]
        else:
            assert code == 0, err.read_text()
            [row] = json.loads(out.read_text())["snapshots"]
            assert row["node_id"] == leader and row["snapshot_index"] > applied
