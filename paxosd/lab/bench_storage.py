"""Storage benchmark: what group commit, replay and restart cost on this machine's disk.

Figures are ratios against a reference measured in the same run where one exists: the raw
reference is a bare sqlite3 insert loop with the same pragmas, the same table and the same
row bytes, so the ratio isolates what paxosd.storage.store adds (encoding, checksums, Python).
Nothing here is a test: it measures, it asserts nothing about speed.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paxosd.core.io import PersistRecord
from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry, Snapshot, Value
from paxosd.statemachine.commands import Command, Put, encode_command
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.store import (
    DB_FILENAME,
    Durability,
    Storage,
    _accepted_checksum,
    db_file_bytes,
    encode_value,
)

ProgressFn = Callable[[str], None]

BENCH_CLUSTER_ID = "bench"
BENCH_NODE_ID = 1
_BALLOT = Ballot(1, BENCH_NODE_ID)
# Slots per write() while building large logs: big enough to amortise the commit.
_BUILD_BATCH_SLOTS = 1000
# Distinct keys and clients in the generated workload (bounds the state machine's size).
_KEYS = 10_000
_CLIENTS = 100


def _noop(_: str) -> None:
    pass


def _command(i: int, command_bytes: int) -> bytes:
    """The i-th command of a deterministic put workload (slot i + 1 carries it)."""
    value = (b"%012d" % i) * (command_bytes // 12 + 1)
    cmd = Command(
        client_id=f"bench-{i % _CLIENTS}",
        seq=i // _CLIENTS + 1,
        site="bench",
        op=Put(key=f"k{i % _KEYS}", value=value[: max(1, command_bytes - 40)]),
    )
    return encode_command(cmd)


def _fresh_dir(parent: Path, name: str) -> Path:
    d = parent / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _open_raw(path: Path, durability: Durability) -> sqlite3.Connection:
    """The reference: a bare connection with the pragmas Storage uses."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA synchronous = {2 if durability == 'fsync' else 0}")
    conn.execute("PRAGMA fullfsync = ON")
    conn.execute("PRAGMA cell_size_check = ON")
    return conn


def _group_commit_case(
    root: Path, durability: Durability, batch: int, seconds: float, command_bytes: int
) -> dict[str, Any]:
    d = _fresh_dir(root, f"write-{durability}-{batch}")
    storage = Storage.open(
        d / DB_FILENAME,
        cluster_id=BENCH_CLUSTER_ID,
        node_id=BENCH_NODE_ID,
        durability=durability,
        create=True,
    )
    # The reference writes into the same schema, created by Storage in a second file.
    raw_path = d / "raw.sqlite3"
    Storage.open(raw_path, cluster_id=BENCH_CLUSTER_ID, node_id=BENCH_NODE_ID, create=True).close()
    raw = _open_raw(raw_path, durability)
    value: Value = (b"x" * command_bytes,)
    blob = encode_value(value)
    sql = (
        "INSERT OR REPLACE INTO accepted (slot, ballot_round, ballot_node, value, checksum) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    storage_s = raw_s = 0.0
    storage_records = raw_records = 0
    next_slot = 1
    perf = time.perf_counter
    # One storage commit, then one reference commit, alternately: both sides see the same
    # moments of the disk (fsync latency on shared or virtual disks drifts by 2x within
    # seconds, which would swamp the ratio if the sides ran one after the other).
    end = perf() + 2 * seconds
    try:
        while perf() < end:
            slots = range(next_slot, next_slot + batch)
            next_slot += batch
            record = PersistRecord(accepted=tuple(AcceptedEntry(s, _BALLOT, value) for s in slots))
            rows = [
                (s, _BALLOT.round, _BALLOT.node, blob, _accepted_checksum(s, 1, 1, blob))
                for s in slots
            ]
            t0 = perf()
            storage.write(record)
            t1 = perf()
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(sql, rows)
            raw.execute("COMMIT")
            t2 = perf()
            storage_s += t1 - t0
            raw_s += t2 - t1
            storage_records += batch
            raw_records += batch
    finally:
        storage.close()
        raw.close()
        shutil.rmtree(d)
    storage_rate = storage_records / storage_s
    raw_rate = raw_records / raw_s
    return {
        "durability": durability,
        "batch": batch,
        "storage_records_per_s": round(storage_rate),
        "raw_records_per_s": round(raw_rate),
        "ratio": round(storage_rate / raw_rate, 3),
    }


def _build_log(
    path: Path,
    slots: int,
    *,
    command_bytes: int,
    snapshot_every: int | None,
    retain_entries: int,
    progress: ProgressFn,
) -> None:
    """A node's database after deciding ``slots`` slots, each with its vote and decision.

    With ``snapshot_every``, the state machine is snapshotted every that many slots and the
    log is compacted to the last ``retain_entries`` entries before the snapshot, as the
    daemon does. Built with synchronous=OFF: how it was built does not change what is read.
    """
    sm = StateMachine() if snapshot_every is not None else None
    with Storage.open(
        path,
        cluster_id=BENCH_CLUSTER_ID,
        node_id=BENCH_NODE_ID,
        durability="unsafe-no-fsync",
        create=True,
    ) as storage:
        storage.write(PersistRecord(promised=_BALLOT))
        slot = 1
        report_every = max(slots // 10, 1)
        next_report = report_every
        while slot <= slots:
            last = min(slot + _BUILD_BATCH_SLOTS - 1, slots)
            values = [(_command(s - 1, command_bytes),) for s in range(slot, last + 1)]
            snapshot = None
            compact_through = None
            if sm is not None:
                assert snapshot_every is not None
                for s, v in zip(range(slot, last + 1), values, strict=True):
                    sm.apply(s, v)
                    # Offset by half an interval: the restart then replays the average
                    # backlog (half an interval), not the best case of none.
                    if (s + snapshot_every // 2) % snapshot_every == 0:
                        snapshot = Snapshot(s, sm.snapshot())
                        compact_through = max(s - retain_entries, 0)
            storage.write(
                PersistRecord(
                    accepted=tuple(
                        AcceptedEntry(s, _BALLOT, v)
                        for s, v in zip(range(slot, last + 1), values, strict=True)
                    ),
                    decided=tuple(
                        DecidedEntry(s, v)
                        for s, v in zip(range(slot, last + 1), values, strict=True)
                    ),
                    snapshot=snapshot,
                    compact_through=compact_through or None,
                ),
                applied_through=last if sm is not None else None,
            )
            slot = last + 1
            if slot > next_report:
                progress(f"  built {slot - 1:,} of {slots:,} slots")
                next_report += report_every


def _restart(path: Path) -> dict[str, Any]:
    """What a node does on start, timed by phase: open (with quick_check), load, restore the
    snapshot, replay the decided slots after it. Warm page cache: the file was just built."""
    perf = time.perf_counter
    t0 = perf()
    storage = Storage.open(path, cluster_id=BENCH_CLUSTER_ID, node_id=BENCH_NODE_ID, create=False)
    t1 = perf()
    state = storage.load()
    t2 = perf()
    storage.close()
    sm = StateMachine.restore(state.snapshot.state) if state.snapshot else StateMachine()
    t3 = perf()
    replayed = 0
    slot = sm.applied_through + 1
    decided = state.decided
    while slot in decided:  # bounded by len(decided)
        sm.apply(slot, decided[slot].value)
        slot += 1
        replayed += 1
    t4 = perf()
    return {
        "open_s": round(t1 - t0, 3),
        "load_s": round(t2 - t1, 3),
        "restore_s": round(t3 - t2, 3),
        "replay_s": round(t4 - t3, 3),
        "total_s": round(t4 - t0, 3),
        "rows_loaded": len(state.accepted) + len(state.decided),
        "entries_replayed": replayed,
        "applied_through": sm.applied_through,
        "digest": sm.digest()[:16],
        "db_bytes": db_file_bytes(path),
    }


def run_restart_bench(
    data_dir: Path,
    *,
    log_entries: int = 1_000_000,
    command_bytes: int = 100,
    snapshot_every: int = 10_000,
    retain_entries: int = 1_000,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Restart time of a node whose log reached ``log_entries`` slots, without snapshots
    (every slot is loaded and replayed) and with them (only the retained tail is loaded;
    only the slots after the snapshot are replayed)."""
    say = progress or _noop
    results = []
    for snapshots in (False, True):
        d = _fresh_dir(Path(data_dir), f"restart-{'snap' if snapshots else 'nosnap'}")
        path = d / DB_FILENAME
        state = "on" if snapshots else "off"
        say(f"restart: building a {log_entries:,}-slot log, snapshots {state}")
        _build_log(
            path,
            log_entries,
            command_bytes=command_bytes,
            snapshot_every=snapshot_every if snapshots else None,
            retain_entries=retain_entries,
            progress=say,
        )
        say("restart: timing open + load + restore + replay")
        result = {"snapshots": snapshots, "log_entries": log_entries, **_restart(path)}
        if snapshots:
            result |= {"snapshot_every": snapshot_every, "retain_entries": retain_entries}
        results.append(result)
        say(f"restart: {result['total_s']} s")
        shutil.rmtree(d)
    return results


def run_storage_bench(
    data_dir: Path,
    seconds_per_case: float,
    *,
    progress: ProgressFn | None = None,
    batch_sizes: tuple[int, ...] = (1, 10, 100),
    durabilities: tuple[Durability, ...] = ("fsync", "unsafe-no-fsync"),
    command_bytes: int = 100,
    replay_entries: int = 200_000,
    restart_entries: int = 1_000_000,
    snapshot_every: int = 10_000,
    retain_entries: int = 1_000,
) -> dict[str, Any]:
    """Run every storage measurement once; returns plain data (JSON-encodable).

    ``data_dir`` must be on the disk to measure; the bench creates and removes its own
    subdirectories there. ``restart_entries=0`` skips the (slow to build) restart case.
    """
    assert seconds_per_case > 0 and command_bytes > 0
    say = progress or _noop
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    group_commit = []
    for durability in durabilities:
        for batch in batch_sizes:
            say(f"group commit: {durability}, batch {batch}")
            case = _group_commit_case(root, durability, batch, seconds_per_case, command_bytes)
            storage_rate, raw_rate = case["storage_records_per_s"], case["raw_records_per_s"]
            say(f"  storage {storage_rate:,}/s, raw {raw_rate:,}/s, ratio {case['ratio']}")
            group_commit.append(case)

    say(f"replay: building {replay_entries:,} decided entries")
    d = _fresh_dir(root, "replay")
    path = d / DB_FILENAME
    with Storage.open(
        path,
        cluster_id=BENCH_CLUSTER_ID,
        node_id=BENCH_NODE_ID,
        durability="unsafe-no-fsync",
        create=True,
    ) as storage:
        for first in range(1, replay_entries + 1, _BUILD_BATCH_SLOTS):
            last = min(first + _BUILD_BATCH_SLOTS - 1, replay_entries)
            storage.write(
                PersistRecord(
                    decided=tuple(
                        DecidedEntry(s, (_command(s - 1, command_bytes),))
                        for s in range(first, last + 1)
                    )
                )
            )
    with Storage.open(
        path, cluster_id=BENCH_CLUSTER_ID, node_id=BENCH_NODE_ID, create=False
    ) as storage:
        t0 = time.perf_counter()
        state = storage.load()
        load_s = time.perf_counter() - t0
    assert len(state.decided) == replay_entries
    shutil.rmtree(d)
    replay = {
        "entries": replay_entries,
        "load_s": round(load_s, 3),
        "entries_per_s": round(replay_entries / load_s),
    }
    say(f"  {replay['entries_per_s']:,} entries/s")

    restart = (
        run_restart_bench(
            root,
            log_entries=restart_entries,
            command_bytes=command_bytes,
            snapshot_every=snapshot_every,
            retain_entries=retain_entries,
            progress=say,
        )
        if restart_entries > 0
        else []
    )
    return {
        "data_dir": str(root),
        "sqlite_version": sqlite3.sqlite_version,
        "command_bytes": command_bytes,
        "seconds_per_case": seconds_per_case,
        "group_commit": group_commit,
        "replay": replay,
        "restart": restart,
    }
