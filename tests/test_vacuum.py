"""``paxosd vacuum``: it shrinks a database that compaction left with free pages, keeps its
content (the digest recovery rebuilds), refuses while the node runs, and its digest check
catches a vacuum that changed the content (a planted fault)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

import paxosd.tools.vacuum as vacuum_mod
from paxosd.cli import app
from paxosd.core.io import PersistRecord
from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry, Snapshot
from paxosd.lab.localcluster import LocalCluster, pick_base_port
from paxosd.statemachine.commands import Command, Put, encode_command
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.store import (
    COMPACT_SLOTS_PER_WRITE,
    DB_FILENAME,
    Storage,
    StorageError,
    VacuumStats,
)

SLOTS = 2000
BATCH = 100
SNAPSHOT_EVERY = 500
RETAIN = 50
BALLOT = Ballot(1, 1)


def compacted_node(data_dir: Path) -> str:
    """A node's database after SLOTS puts of 2 KB, snapshotted and compacted as the daemon
    does (the deleted log rows and replaced snapshots leave free pages); its digest."""
    sm = StateMachine()
    with Storage.open(data_dir / DB_FILENAME, cluster_id="c", node_id=1, create=True) as st:
        st.write(PersistRecord(promised=BALLOT))
        for first in range(1, SLOTS + 1, BATCH):
            slots = range(first, first + BATCH)
            values = [
                (encode_command(Command("c1", s, "s", Put(f"k{s % 300}", bytes(2000)))),)
                for s in slots
            ]
            snapshot = compact = None
            for s, v in zip(slots, values, strict=True):
                sm.apply(s, v)
                # Mid-interval, so recovery replays the slots after the last snapshot too.
                if s % SNAPSHOT_EVERY == SNAPSHOT_EVERY // 2:
                    snapshot, compact = Snapshot(s, sm.snapshot()), s - RETAIN
            st.write(
                PersistRecord(
                    accepted=tuple(
                        AcceptedEntry(s, BALLOT, v) for s, v in zip(slots, values, strict=True)
                    ),
                    decided=tuple(DecidedEntry(s, v) for s, v in zip(slots, values, strict=True)),
                    snapshot=snapshot,
                    compact_through=compact,
                ),
                applied_through=slots[-1],
            )
        # Compacted rows are deleted a batch per later write, as the daemon goes on writing.
        for _ in range(SLOTS // COMPACT_SLOTS_PER_WRITE + 1):
            st.write(PersistRecord(promised=BALLOT))
    return sm.digest()


def free_pages(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["vacuum", *args])
    return result.exit_code, result.stdout, result.stderr


def test_vacuum_shrinks_a_compacted_database_and_keeps_its_content(tmp_path: Path) -> None:
    digest = compacted_node(tmp_path)
    db = tmp_path / DB_FILENAME
    assert free_pages(db) > 100, "compaction should have left free pages"
    size = db.stat().st_size
    code, out, err = invoke("--data-dir", str(tmp_path), "--json")
    assert (code, err) == (0, ""), err
    r = json.loads(out)
    assert r["bytes_before"] == size
    assert r["bytes_after"] < size and r["bytes_freed"] == size - r["bytes_after"]
    assert r["free_pages_before"] > 100 and r["free_pages_after"] == 0
    assert (r["verified"], r["digest"], r["applied_through"]) == (True, digest, SLOTS)
    assert db.stat().st_size == r["bytes_after"]
    assert not (tmp_path / (DB_FILENAME + "-wal")).exists() or (
        (tmp_path / (DB_FILENAME + "-wal")).stat().st_size == 0
    )
    # It opens as the daemon opens it (quick_check, schema, identity).
    with Storage.open(db, cluster_id="c", node_id=1, create=False) as st:
        state = st.load()
    assert state.snapshot is not None and state.snapshot.slot == SLOTS - SNAPSHOT_EVERY // 2
    assert max(state.decided) == SLOTS
    assert free_pages(db) == 0


def test_vacuum_text_report_and_missing_database(tmp_path: Path) -> None:
    compacted_node(tmp_path)
    code, out, err = invoke("--data-dir", str(tmp_path), "--no-verify")
    assert (code, err) == (0, "")
    assert "MB freed" in out and "not verified" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = invoke("--data-dir", str(empty))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "no database here" in err
    assert not (empty / "paxosd.lock").exists(), "a refused vacuum leaves nothing behind"
    code, out, err = invoke("--data-dir", str(tmp_path / "absent"))
    assert code == 1 and out == "" and "no such directory" in err


def test_vacuum_refuses_while_the_node_runs(tmp_path: Path) -> None:
    c = LocalCluster.create(tmp_path / "c", 1, base_port=pick_base_port(1))
    c.up()
    try:
        with c.client() as cl:
            cl.put("k", b"v")
        code, out, err = invoke("--data-dir", str(tmp_path / "c" / "data" / "n1"))
        assert code == 3 and out == ""
        assert err.count("\n") == 1 and "stop the node first" in err
        with c.client() as cl:
            assert cl.get("k").value == b"v"  # type: ignore[attr-defined]
    finally:
        c.down()
    code, _out, err = invoke("--data-dir", str(tmp_path / "c" / "data" / "n1"))
    assert code == 0, err


def test_a_vacuum_that_changed_the_content_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted fault: the vacuum also drops the newest decided slot. The digest check must
    turn that into an error (exit 1), not a success."""
    compacted_node(tmp_path)
    real = vacuum_mod.vacuum_database

    def lossy(path: Path, *, clock: object) -> VacuumStats:
        stats = real(path, clock=clock)  # type: ignore[arg-type]
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM decided WHERE slot = ?", (SLOTS,))
        return stats

    monkeypatch.setattr(vacuum_mod, "vacuum_database", lossy)
    with pytest.raises(StorageError, match="digest changed"):
        vacuum_mod.vacuum_data_dir(tmp_path)
    again = tmp_path / "again"  # the first one has lost its slot already
    again.mkdir()
    compacted_node(again)
    code, _out, err = invoke("--data-dir", str(again))
    assert code == 1 and err.count("\n") == 1 and "digest changed" in err
