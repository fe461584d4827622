"""Snapshots off the event loop: the forked child that writes them (paxosd/server/snapshots.py)
and, on a real cluster, a daemon that snapshots while a client writes, restarts from its
snapshot file, and feeds a lagging follower its snapshot in chunks."""

from __future__ import annotations

import gc
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from paxosd.core.io import PersistRecord
from paxosd.core.messages import SnapshotChunk
from paxosd.core.types import Snapshot
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import StatusReply
from paxosd.server.snapshots import _CHILD_STALL_ENV, ForkSnapshots
from paxosd.statemachine.commands import Command, Put, encode_command
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.snapfile import SnapshotFile
from paxosd.storage.store import DB_FILENAME, Storage
from tests.waiting import wait_for

CLUSTER = "test-cluster"


def machine(slots: int, *, start: int = 1) -> StateMachine:
    sm = StateMachine()
    return grow(sm, slots, start=start)


def grow(sm: StateMachine, slots: int, *, start: int) -> StateMachine:
    for slot in range(start, start + slots):
        sm.apply(
            slot,
            tuple(
                encode_command(Command("w", slot * 100 + i, "A", Put(f"k{i}", b"v" * 200)))
                for i in range(20)
            ),
        )
    return sm


def test_the_child_writes_the_state_the_parent_had_at_the_fork(tmp_path: Path) -> None:
    sm = machine(30)
    digest = sm.digest()
    maker = ForkSnapshots(tmp_path / "snapshots", structlog.get_logger())
    assert maker.start(30, sm)
    assert not maker.start(30, sm)  # one child at a time
    grow(sm, 5, start=31)  # the parent goes on applying meanwhile
    slot, state = wait_for("the child's snapshot", maker.poll)
    assert slot == 30 and isinstance(state, SnapshotFile)
    assert state.name == "00000000000000000030.snap"
    restored = maker.restore(StateMachine(), state)
    assert (restored.applied_through, restored.digest()) == (30, digest)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [state.name]
    # What the "snapshot taken" line reports: this snapshot's fork, its time, its bytes.
    assert maker.made is not None
    made_slot, fork_ms, seconds, size = maker.made
    assert (made_slot, size) == (30, state.path.stat().st_size)
    assert 0 < fork_ms <= seconds * 1000


def test_the_state_leaves_the_collectors_generations_at_a_fork_and_a_restore(
    tmp_path: Path,
) -> None:
    # A full cycle collection walks every tracked object: with a big state that stops the
    # loop past an election timeout, unless the state was frozen out of the generations.
    sm = machine(10)
    index = sm._index  # a tracked container of the state
    gc.unfreeze()
    try:
        maker = ForkSnapshots(tmp_path / "snapshots", structlog.get_logger())
        assert maker.start(10, sm)
        assert gc.get_freeze_count() > 0
        assert not any(o is index for o in gc.get_objects())
        _, state = wait_for("the child's snapshot", maker.poll)
        gc.unfreeze()
        restored = maker.restore(StateMachine(), state)
        assert gc.get_freeze_count() > 0
        assert not any(o is restored._index for o in gc.get_objects())
    finally:
        gc.unfreeze()


def test_a_child_killed_mid_write_leaves_the_previous_snapshot_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / DB_FILENAME
    storage = Storage.open(db, cluster_id=CLUSTER, node_id=1, create=True)
    maker = ForkSnapshots(storage.snapshot_dir, structlog.get_logger())
    sm = machine(10)
    first = maker.take_now(10, sm)
    storage.write(PersistRecord(snapshot=Snapshot(10, first)))
    grow(sm, 10, start=11)
    # The child stops itself once it has written some bytes; then it is killed there.
    monkeypatch.setenv(_CHILD_STALL_ENV, "1000")
    assert maker.start(20, sm)
    monkeypatch.delenv(_CHILD_STALL_ENV)
    assert maker._child is not None
    pid, tmp = maker._child[0], maker._child[3]
    wait_for("the child stopped mid-write", lambda: _stopped(pid) and tmp.exists())
    assert tmp.stat().st_size > 0
    os.kill(pid, signal.SIGKILL)
    wait_for("the failed child reaped", lambda: maker.poll() is None and not maker.busy)
    assert maker.failures == 1 and not tmp.exists()
    assert storage.load().snapshot == Snapshot(10, first)
    # The next due point tries again, and succeeds.
    assert maker.start(20, sm)
    slot, state = wait_for("the retried snapshot", maker.poll)
    assert slot == 20
    storage.write(PersistRecord(snapshot=Snapshot(20, state)))
    storage.close()
    # The whole process dies with a child's tmp on disk: the next start ignores it.
    stray = storage.snapshot_dir / "00000000000000000030.snap.999.tmp"
    stray.write_bytes(b"torn")
    with Storage.open(db, cluster_id=CLUSTER, node_id=1, create=False) as again:
        loaded = again.load().snapshot
        assert loaded is not None and loaded.slot == 20
        assert StateMachine.restore(loaded.state).digest() == sm.digest()
    assert sorted(p.name for p in storage.snapshot_dir.iterdir()) == ["00000000000000000020.snap"]


def test_a_peers_chunks_are_assembled_in_a_file(tmp_path: Path) -> None:
    sm = machine(12)
    data = sm.snapshot()
    maker = ForkSnapshots(tmp_path, structlog.get_logger())
    got = None
    # A transfer abandoned half-way, then one from the start.
    assert maker.receive(SnapshotChunk(12, 0, len(data), data[:100])) is None
    for offset in range(0, len(data), 4096):
        got = maker.receive(SnapshotChunk(12, offset, len(data), data[offset : offset + 4096]))
        assert (got is None) == (offset + 4096 < len(data))
    assert isinstance(got, SnapshotFile) and got == data
    assert maker.restore(StateMachine(), got).digest() == sm.digest()
    assert [p.name for p in tmp_path.iterdir()] == ["00000000000000000012.snap"]


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


# ------------------------------------------------------------------ on a real cluster

SNAPSHOT_OFTEN = (
    "[snapshot]\nsnapshot_every_entries = 40\nlog_retain_entries = 5\nsnapshot_log_percent = 0\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(
        tmp_path_factory.mktemp("forksnap") / "c", 3, extra_config=SNAPSHOT_OFTEN
    )
    c.up()
    try:
        yield c
    finally:
        c.down()


def _events(c: LocalCluster, k: int, event: str) -> list[dict[str, Any]]:
    """Node ``k``'s JSON log lines of ``event``."""
    found = []
    for line in c.log_path(k).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def _snapshots_taken(c: LocalCluster, k: int) -> list[int]:
    return [int(e["slot"]) for e in _events(c, k, "snapshot taken")]


def _status(c: LocalCluster, k: int) -> StatusReply | None:
    with c.client() as client:
        try:
            return client.status(node=k)
        except Exception:
            return None


def _leader(c: LocalCluster) -> int:
    with c.client() as client:
        leader = client.status().leader
    assert leader is not None
    return leader


def test_snapshots_while_writing_a_restart_from_the_file_and_a_learner_fed_by_chunks(
    cluster: LocalCluster,
) -> None:
    c = cluster
    with c.client() as client:
        for i in range(300):
            client.put(f"fork/k{i % 50}", b"x" * 100 + str(i).encode())
        expected = client.get("fork/k7")
    for k in c.node_ids():
        wait_for(f"n{k} took 3 snapshots", lambda k=k: len(_snapshots_taken(c, k)) >= 3)
        folder = c.root / "data" / f"n{k}" / "snapshots"
        # One recorded file, older ones deleted; no child's tmp left once it is done.
        wait_for(
            f"n{k}'s snapshot folder settled",
            lambda f=folder: [p.suffix for p in f.iterdir()] == [".snap"],
        )
    # A new member starts empty; the log before the leader's snapshot is gone everywhere,
    # so it can only catch up by a snapshot transfer.
    new = c.add_node(extra_config=SNAPSHOT_OFTEN)
    c.start(new)
    with c.client() as client:
        client.change_member("add", new, c.peer_address(new), node=_leader(c))
    target = wait_for("a leader status", lambda: _status(c, _leader(c)))
    wait_for(
        "the new member caught up",
        lambda: (s := _status(c, new)) is not None and s.applied_index >= target.applied_index,
    )
    restored = _events(c, new, "snapshot restored")
    assert restored and restored[0]["slot"] > 0
    # Installed from a peer: decoded over loop turns, whose figures the line carries.
    assert restored[0]["from_peer"] and restored[0]["turns"] >= 1
    assert 0 < restored[0]["longest_turn_ms"] <= restored[0]["seconds"] * 1000
    folder = c.root / "data" / f"n{new}" / "snapshots"
    # The received file (or the member's own next snapshot): one, and no tmp once settled.
    wait_for(
        "the new member's snapshot folder settled",
        lambda: [p.suffix for p in folder.iterdir()] == [".snap"],
    )
    # A restart recovers from the snapshot file, then replays only the log after it.
    k = 1
    c.stop(k)
    c.start(k)
    wait_for(f"n{k} answers again", lambda: _status(c, k))
    recovered = _events(c, k, "recovered")
    assert len(recovered) == 2 and recovered[-1]["snapshot_index"] > 0
    assert len(_events(c, k, "snapshot restored")) == 1

    def one_digest() -> bool:
        seen = {(s.applied_index, s.digest) for n in c.node_ids() if (s := _status(c, n))}
        return len(seen) == 1

    wait_for("every node at one digest", one_digest)
    with c.client() as client:
        got = client.get("fork/k7")
    assert got == expected
