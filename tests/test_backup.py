"""Backup files, the snapshot_read query and its client loop, and restore into a data dir.

The file faces the disk and the operator's copy tools: any bytes give a Backup or one typed
BackupError. The stream faces a node that may move on (or lie): the client restarts or says so.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from paxosd.cli import app as paxosd_app
from paxosd.core.types import Snapshot
from paxosd.statemachine.commands import Block, Command, Put, encode_command
from paxosd.statemachine.machine import StateMachine
from paxosd.storage import backup as backup_mod
from paxosd.storage.backup import (
    CHUNK_BYTES_MAX,
    FILE_BYTES_MAX,
    MAGIC,
    Backup,
    BackupChecksumMismatch,
    BackupError,
    BackupFileWriter,
    BackupHeader,
    BackupStateMismatch,
    BackupTooBig,
    BackupTruncated,
    BadBackupHeader,
    NotABackup,
    SnapshotStreamError,
    UnsupportedBackupVersion,
    decode_backup,
    encode_backup,
    fetch_snapshot,
    read_backup,
    serve_snapshot_read,
    verify_state,
    write_backup,
)
from paxosd.storage.store import DB_FILENAME, Storage
from paxosd.tools.restore import STAGING_SUFFIX, RestoreError, restore_into


def _machine(slots: int = 5) -> StateMachine:
    sm = StateMachine()
    for s in range(1, slots + 1):
        put = Command("c1", s, "A", Put(key=f"k{s}", value=b"v" * 50 + bytes([s])))
        sm.apply(s, (encode_command(put),))
    sm.apply(slots + 1, (encode_command(Command("c1", slots + 1, "A", Block("A", "B"))),))
    return sm


def _header(sm: StateMachine, state: bytes, **changes: Any) -> BackupHeader:
    fields: dict[str, Any] = {
        "cluster_id": "prod-kv",
        "node_id": 2,
        "applied_index": sm.applied_through,
        "digest": sm.digest(),
        "created_at": "2026-01-01T00:00:00+00:00",
        "state_bytes": len(state),
    }
    return BackupHeader(**(fields | changes))


_SM = _machine()
_STATE = _SM.snapshot()
_HEADER = _header(_SM, _STATE)
_VALID = encode_backup(_HEADER, _STATE)


# ------------------------------------------------------------------------------ format


def test_a_backup_round_trips_through_its_bytes() -> None:
    b = decode_backup(_VALID)
    assert (b.header, b.state, b.file_bytes) == (_HEADER, _STATE, len(_VALID))
    assert verify_state(b.header, b.state).digest() == _SM.digest()


def test_write_backup_is_private_atomic_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "b.pxb"
    path.write_bytes(b"an older backup")
    written = write_backup(path, _HEADER, _STATE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "b.pxb.tmp").exists()
    assert read_backup(path) == written
    assert written.state == _STATE


def _stream(path: Path, header: BackupHeader, state: bytes, step: int = 100) -> Any:
    writer = BackupFileWriter(path)
    try:
        writer.begin(header)
        for at in range(0, len(state), step):
            writer.write(state[at : at + step])
        return writer.finish()
    finally:
        writer.abandon()


def test_a_backup_streamed_to_its_file_is_the_one_encoded_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "b.pxb"
    writer = BackupFileWriter(path)
    other = _machine(3)
    writer.begin(_header(other, other.snapshot()))
    writer.write(other.snapshot()[:50])  # a transfer that moved: started over below
    written = _stream(path, _HEADER, _STATE)
    assert path.read_bytes() == _VALID
    back = read_backup(path)
    assert (written.header, written.sha256, written.file_bytes) == (
        back.header,
        back.sha256,
        back.file_bytes,
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["b.pxb"]


def test_a_streamed_state_that_is_not_the_one_its_header_names_is_not_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.pxb"
    path.write_bytes(b"the previous backup")
    lying = _header(_SM, _STATE, digest="0" * 64)
    with pytest.raises(BackupStateMismatch, match="digest"):
        _stream(path, lying, _STATE)
    assert path.read_bytes() == b"the previous backup"
    assert sorted(os.listdir(tmp_path)) == ["b.pxb"]


def test_a_file_that_is_not_a_backup_says_so() -> None:
    with pytest.raises(NotABackup, match="PAXOSBAK"):
        decode_backup(b"SQLite format 3\x00" + b"\x00" * 100)


def test_a_newer_format_version_is_refused_by_name() -> None:
    data = bytearray(_VALID)
    data[len(MAGIC) + 1] = 9
    with pytest.raises(UnsupportedBackupVersion, match="version 9"):
        decode_backup(bytes(data))


@pytest.mark.parametrize("keep", [0, 3, len(MAGIC) + 2, 20, len(_VALID) // 2, len(_VALID) - 1])
def test_every_truncation_is_refused(keep: int) -> None:
    with pytest.raises((BackupTruncated, NotABackup)):
        decode_backup(_VALID[:keep])


def test_a_copy_cut_inside_the_state_is_called_truncated() -> None:
    with pytest.raises(BackupTruncated, match="cut short"):
        decode_backup(_VALID[:-40])


def test_a_flipped_bit_in_the_state_is_a_checksum_mismatch() -> None:
    data = bytearray(_VALID)
    data[len(_VALID) - 100] ^= 0x04
    with pytest.raises(BackupChecksumMismatch, match="altered or damaged"):
        decode_backup(bytes(data))


def test_bytes_after_the_checksum_are_refused() -> None:
    with pytest.raises(BadBackupHeader, match="after the checksum"):
        decode_backup(_VALID + b"\x00")


def test_a_header_length_over_its_bound_is_refused_before_reading_it() -> None:
    data = bytearray(_VALID)
    data[len(MAGIC) + 2 : len(MAGIC) + 6] = (1 << 30).to_bytes(4, "big")
    with pytest.raises(BackupTooBig, match="header"):
        decode_backup(bytes(data))


def test_a_file_over_the_size_bound_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.pxb"
    with path.open("wb") as f:
        f.write(MAGIC)
        f.truncate(FILE_BYTES_MAX + 1)  # sparse: costs no disk
    with pytest.raises(BackupTooBig, match="over the"):
        read_backup(path)


def test_a_missing_file_is_a_backup_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="nope.pxb: cannot read"):
        read_backup(tmp_path / "nope.pxb")


def test_a_state_that_is_not_the_one_the_header_names_is_refused() -> None:
    other = _machine(6)
    wrong_digest = _header(_SM, _STATE, digest=other.digest())
    with pytest.raises(BackupStateMismatch, match="digest"):
        verify_state(wrong_digest, _STATE)
    wrong_slot = _header(_SM, _STATE, applied_index=_SM.applied_through + 1)
    with pytest.raises(BackupStateMismatch, match="applied index"):
        verify_state(wrong_slot, _STATE)


def test_garbage_state_under_a_valid_checksum_is_refused_by_restore() -> None:
    garbage = b"\x01" * 100
    b = decode_backup(encode_backup(_header(_SM, garbage), garbage))
    with pytest.raises(BackupStateMismatch, match="does not restore"):
        verify_state(b.header, b.state)


# --------------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_give_only_the_typed_error(data: bytes) -> None:
    with pytest.raises(BackupError):
        decode_backup(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_after_a_valid_prefix_give_only_the_typed_error(tail: bytes) -> None:
    with pytest.raises(BackupError):
        decode_backup(_VALID[: len(MAGIC) + 6] + tail)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_every_bit_flip_of_a_valid_file_is_refused(data: st.DataObject) -> None:
    # Every byte is covered: the prefix by its own checks, the rest by the sha256.
    flips = data.draw(st.lists(st.integers(0, len(_VALID) * 8 - 1), min_size=1, max_size=4))
    mutated = bytearray(_VALID)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    if bytes(mutated) == _VALID:  # two flips of the same bit cancel out
        return
    with pytest.raises(BackupError):
        decode_backup(bytes(mutated))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_edits_that_keep_the_length_or_not_give_only_the_typed_error(
    data: st.DataObject,
) -> None:
    mutated = bytearray(_VALID)
    at = data.draw(st.integers(0, len(mutated)))
    kind = data.draw(st.sampled_from(["insert", "delete", "set"]))
    junk = data.draw(st.binary(min_size=1, max_size=8))
    if kind == "insert":
        mutated[at:at] = junk
    elif kind == "delete":
        del mutated[at : at + len(junk)]
    else:
        mutated[at : at + len(junk)] = junk
    if bytes(mutated) == _VALID:
        return
    with pytest.raises(BackupError):
        decode_backup(bytes(mutated))


# ------------------------------------------------------------------- the stream


class _Replica:
    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None


class _Node:
    """What serve_snapshot_read uses of paxosd.server.node.Node, with a state machine that
    grows. ``instant``: a begun snapshot is made on the spot (InlineSnapshots); else it stays
    in flight until ``finish`` (a forked child still writing)."""

    def __init__(self, sm: StateMachine, *, instant: bool = True) -> None:
        self.replica = _Replica()
        self.sm = sm
        self.instant = instant
        self.taken = 0
        self.digests: dict[int, str] = {}
        self.in_flight: tuple[int, bytes] | None = None

    def begin_snapshot(self) -> int:
        if self.in_flight is not None:
            return self.in_flight[0]
        slot = self.sm.applied_through
        if slot:
            self.taken += 1
            self.digests[slot] = self.sm.digest()  # as Node.note_snapshot_digest
            self.in_flight = (slot, self.sm.snapshot())
            if self.instant:
                self.finish()
        return slot

    def finish(self) -> None:
        assert self.in_flight is not None
        slot, state = self.in_flight
        self.in_flight = None
        self.replica.snapshot = Snapshot(slot=slot, state=state)

    def snapshot_digest(self, slot: int) -> str | None:
        return self.digests.get(slot)

    def take_snapshot(self) -> int:
        slot = self.begin_snapshot()
        if self.in_flight is not None:
            self.finish()
        return slot

    def advance(self) -> None:
        """Apply one more slot and snapshot it, as the node does every N entries."""
        s = self.sm.applied_through + 1
        self.sm.apply(s, (encode_command(Command("c2", s, "B", Put(key="x", value=b"y"))),))
        self.take_snapshot()


def _serve(node: _Node, fresh_entries: int = 0) -> Any:
    return lambda args: serve_snapshot_read(
        node, args, node_id=2, cluster_id="prod-kv", fresh_entries=fresh_entries
    )


def _no_sleep(seconds: float) -> None:
    """fetch_snapshot's pause between polls, in tests where the snapshot is made at once."""


def test_the_first_chunk_begins_a_snapshot_and_then_serves_it_with_its_digest() -> None:
    node = _Node(_machine(), instant=False)
    serve = _serve(node)
    pending = serve({"offset": 0, "chunk_bytes": 100})
    assert pending == {
        "node_id": 2,
        "cluster_id": "prod-kv",
        "slot": node.sm.applied_through,
        "moved": False,
        "pending": True,
    }
    assert node.taken == 1
    # Asked again while the child writes: still pending, and no second child.
    assert serve({"offset": 0, "slot": pending["slot"]})["pending"] is True
    assert node.taken == 1
    node.finish()
    reply = serve({"offset": 0, "slot": pending["slot"], "chunk_bytes": 100})
    snap = node.replica.snapshot
    assert snap is not None and node.taken == 1
    assert reply["slot"] == snap.slot == node.sm.applied_through
    assert reply["digest"] == node.sm.digest()
    assert (reply["offset"], reply["total"], reply["data"]) == (
        0,
        len(snap.state),
        snap.state[:100],
    )


def test_a_recent_snapshot_is_served_as_it_is_and_an_older_one_is_replaced() -> None:
    node = _Node(_machine())
    node.take_snapshot()
    snap = node.replica.snapshot
    assert snap is not None
    for s in range(snap.slot + 1, snap.slot + 4):  # three slots applied past it
        node.sm.apply(s, ())
    taken = node.taken
    within = _serve(node, fresh_entries=3)({"offset": 0})
    assert within["slot"] == snap.slot and "data" in within and node.taken == taken
    behind = _serve(node, fresh_entries=2)({"offset": 0})
    assert behind["pending"] is True and behind["slot"] == node.sm.applied_through
    assert node.taken == taken + 1


def test_a_later_chunk_of_a_replaced_snapshot_says_it_moved() -> None:
    node = _Node(_machine())
    node.take_snapshot()
    first = _serve(node)({"offset": 0})
    assert "data" in first
    node.advance()
    reply = _serve(node)({"offset": 10, "slot": first["slot"]})
    assert reply == {
        "node_id": 2,
        "cluster_id": "prod-kv",
        "slot": first["slot"] + 1,
        "moved": True,
    }


def test_the_digest_of_a_snapshot_behind_the_state_machine_is_the_recorded_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = _Node(_machine())
    node.take_snapshot()
    snap = node.replica.snapshot
    assert snap is not None
    expected = node.sm.digest()
    s = node.sm.applied_through + 1
    node.sm.apply(s, ())  # applied past the snapshot, not snapshotted again

    def no_restore(*args: object) -> None:
        raise AssertionError("the node restored a snapshot on its loop to learn its digest")

    monkeypatch.setattr(StateMachine, "restore", no_restore)
    reply = _serve(node)({"offset": 0, "slot": snap.slot})
    assert reply["digest"] == expected != node.sm.digest()


def test_a_snapshot_whose_digest_is_not_known_is_not_served_but_made_again() -> None:
    node = _Node(_machine())
    node.take_snapshot()
    node.sm.apply(node.sm.applied_through + 1, ())
    node.digests.clear()  # e.g. a snapshot from before a restart, not restored since
    reply = _serve(node, fresh_entries=10)({"offset": 0})
    assert reply["pending"] is True and reply["slot"] == node.sm.applied_through


@pytest.mark.parametrize(
    "args",
    [
        {"offset": -1},
        {"offset": "0"},
        {"offset": True},
        {"offset": 5},  # past 0 without a slot
        {"offset": 10**9, "slot": 6},  # past the end
        {"offset": 0, "slot": -6},
    ],
)
def test_bad_snapshot_read_arguments_are_a_value_error(args: dict[str, Any]) -> None:
    node = _Node(_machine())
    assert node.take_snapshot() == 6
    with pytest.raises(ValueError, match="snapshot read"):
        _serve(node)(args)


def test_a_node_that_applied_nothing_has_nothing_to_back_up() -> None:
    with pytest.raises(ValueError, match="nothing to back up"):
        _serve(_Node(StateMachine()))({"offset": 0})


def test_fetch_assembles_the_snapshot_from_many_chunks() -> None:
    node = _Node(_machine())
    seen: list[tuple[int, int]] = []
    got = fetch_snapshot(
        _serve(node),
        chunk_bytes=64,
        progress=lambda d, t: seen.append((d, t)),
        sleep=_no_sleep,
    )
    snap = node.replica.snapshot
    assert snap is not None
    assert (got.slot, got.state, got.digest) == (snap.slot, snap.state, node.sm.digest())
    assert got.chunks == len(seen) == -(-len(snap.state) // 64) > 3
    assert seen[-1] == (len(snap.state), len(snap.state)) and got.restarts == 0


def test_fetch_starts_over_when_the_snapshot_moves_and_gets_the_newer_one() -> None:
    node = _Node(_machine())
    serve = _serve(node)
    calls = 0

    def moving(args: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:  # mid-stream of the first attempt (the 1st answer was "pending")
            node.advance()
        return serve(args)

    got = fetch_snapshot(moving, chunk_bytes=64, sleep=_no_sleep)
    assert got.restarts == 1
    assert (got.slot, got.digest) == (node.sm.applied_through, node.sm.digest())
    assert verify_state(backup_mod.header_for(got), got.state).digest() == node.sm.digest()


def test_fetch_gives_up_on_a_snapshot_that_never_holds_still() -> None:
    node = _Node(_machine())
    serve = _serve(node)

    def always_moving(args: dict[str, Any]) -> Any:
        if args["offset"]:
            node.advance()
        return serve(args)

    with pytest.raises(SnapshotStreamError, match="during each of 3 attempts"):
        fetch_snapshot(always_moving, chunk_bytes=64, attempts_max=3, sleep=_no_sleep)


@pytest.mark.parametrize(
    "lie",
    [
        lambda r: r | {"data": r["data"][:-1]},
        lambda r: r | {"offset": r["offset"] + 1},
        lambda r: r | {"total": r["total"] + 1},
        lambda r: r | {"slot": "7"},
        lambda r: {k: v for k, v in r.items() if k != "data"},
    ],
)
def test_fetch_refuses_a_node_whose_answers_do_not_add_up(lie: Any) -> None:
    serve = _serve(_Node(_machine()))

    def lying(args: dict[str, Any]) -> Any:
        reply = serve(args)
        return lie(reply) if args["offset"] else reply

    with pytest.raises(SnapshotStreamError):
        fetch_snapshot(lying, chunk_bytes=64, sleep=_no_sleep)


class _FakeClock:
    """fetch_snapshot's clock and sleep: time passes only when it sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_fetch_waits_for_a_snapshot_being_made_backing_off_then_streams_it() -> None:
    node = _Node(_machine(), instant=False)
    serve = _serve(node)
    clock = _FakeClock()
    waited: list[int] = []

    def query(args: dict[str, Any]) -> Any:
        if len(clock.pauses) == 8 and node.in_flight is not None:
            node.finish()  # the child is done after 8 polls (more than 1.5 s of them)
        return serve(args)

    got = fetch_snapshot(
        query, chunk_bytes=64, clock=clock, sleep=clock.sleep, waiting=waited.append
    )
    assert (got.slot, got.digest, got.restarts) == (6, node.sm.digest(), 0)
    assert waited == [6] * 8 and node.taken == 1
    assert clock.pauses[0] == backup_mod.POLL_FIRST_S
    assert all(b == min(2 * a, backup_mod.POLL_MAX_S) for a, b in itertools.pairwise(clock.pauses))
    assert clock.now > 1.5
    assert verify_state(backup_mod.header_for(got), got.state).digest() == node.sm.digest()


def test_fetch_gives_up_at_its_timeout_on_a_snapshot_never_made() -> None:
    node = _Node(_machine(), instant=False)
    clock = _FakeClock()
    with pytest.raises(SnapshotStreamError, match="not made within 30 s"):
        fetch_snapshot(_serve(node), timeout_s=30, clock=clock, sleep=clock.sleep)
    assert clock.now == 30 and node.taken == 1


def test_the_chunk_size_stays_well_under_the_client_frame_cap() -> None:
    from paxosd.net.framing import FRAME_BYTES_MAX_DEFAULT

    assert CHUNK_BYTES_MAX * 2 <= FRAME_BYTES_MAX_DEFAULT
    big = _Node(_machine())
    big.take_snapshot()
    reply = _serve(big)({"offset": 0, "chunk_bytes": 10 * CHUNK_BYTES_MAX})
    assert len(reply["data"]) <= CHUNK_BYTES_MAX


# --------------------------------------------------------------------------- restore


def _backup() -> Backup:
    return decode_backup(_VALID)


def test_restore_stores_the_snapshot_that_recovery_reads(tmp_path: Path) -> None:
    restored = restore_into(tmp_path / "n1", _backup(), cluster_id="new", node_id=1)
    with Storage.open_readonly(restored.db_path) as s:
        durable = s.load()
        assert (s.cluster_id, s.node_id) == ("new", 1)
    assert durable.snapshot == Snapshot(slot=_SM.applied_through, state=_STATE)
    assert not durable.decided and not durable.accepted
    assert durable.promised.round == 0  # a fresh acceptor: it has promised nothing
    assert sorted(os.listdir(tmp_path / "n1")) == [DB_FILENAME, "snapshots"]


def test_restore_never_replaces_a_database(tmp_path: Path) -> None:
    Storage.open(tmp_path / DB_FILENAME, cluster_id="old", node_id=1, create=True).close()
    before = (tmp_path / DB_FILENAME).read_bytes()
    with pytest.raises(RestoreError, match="never replaces"):
        restore_into(tmp_path, _backup(), cluster_id="new", node_id=1)
    assert (tmp_path / DB_FILENAME).read_bytes() == before


def test_restore_clears_what_a_crashed_restore_left_behind(tmp_path: Path) -> None:
    (tmp_path / (DB_FILENAME + STAGING_SUFFIX)).write_bytes(b"half a database")
    restore_into(tmp_path, _backup(), cluster_id="new", node_id=1)
    assert sorted(os.listdir(tmp_path)) == [DB_FILENAME, "snapshots"]


def test_restore_of_a_state_that_lies_about_its_digest_creates_nothing(tmp_path: Path) -> None:
    lying = decode_backup(encode_backup(_header(_SM, _STATE, digest="0" * 64), _STATE))
    with pytest.raises(RestoreError, match="digest"):
        restore_into(tmp_path / "n1", lying, cluster_id="new", node_id=1)
    assert not (tmp_path / "n1" / DB_FILENAME).exists()


def _paxosd(*args: str) -> Any:
    return CliRunner().invoke(paxosd_app, list(args))


def test_restore_command_refuses_without_new_cluster_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "b.pxb").write_bytes(_VALID)
    r = _paxosd("restore", str(tmp_path / "b.pxb"), "--data-dir", str(tmp_path / "n1"))
    assert r.exit_code == 2
    assert "--new-cluster" in r.stderr and "memory it never had" in r.stderr
    assert not (tmp_path / "n1").exists()


def test_restore_command_wants_config_or_all_three_ids(tmp_path: Path) -> None:
    (tmp_path / "b.pxb").write_bytes(_VALID)
    r = _paxosd("restore", str(tmp_path / "b.pxb"), "--new-cluster", "--node-id", "1")
    assert r.exit_code == 2 and "--cluster-id" in r.stderr


def test_restore_command_refuses_a_damaged_file_in_one_line(tmp_path: Path) -> None:
    damaged = bytearray(_VALID)
    damaged[-50] ^= 1
    (tmp_path / "b.pxb").write_bytes(bytes(damaged))
    r = _paxosd(
        "restore", str(tmp_path / "b.pxb"), "--new-cluster",
        "--data-dir", str(tmp_path / "n1"), "--cluster-id", "new", "--node-id", "1",
    )  # fmt: skip
    assert r.exit_code == 1
    assert "checksum mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "n1" / DB_FILENAME).exists()


# --------------------------------------------------------------------------- inspect


def test_inspect_of_a_backup_shows_its_header_and_checks_it(tmp_path: Path) -> None:
    path = tmp_path / "b.pxb"
    path.write_bytes(_VALID)
    r = _paxosd("inspect", str(path), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["kind"] == "backup" and info["checksum_ok"] and info["state_ok"]
    assert (info["applied_index"], info["digest"]) == (_SM.applied_through, _SM.digest())
    assert (info["cluster_id"], info["node_id"], info["state_bytes"]) == ("prod-kv", 2, len(_STATE))
    text = _paxosd("inspect", str(path)).stdout
    assert f"applied index:   {_SM.applied_through}" in text and _SM.digest() in text


def test_inspect_of_a_damaged_backup_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "b.pxb"
    path.write_bytes(_VALID[:-1])
    r = _paxosd("inspect", str(path))
    assert r.exit_code == 1
    assert "truncated" in r.stderr.lower() or "cut short" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_inspect_of_some_other_file_says_it_is_not_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    r = _paxosd("inspect", str(path))
    assert r.exit_code == 1 and "not a paxosd backup" in r.stderr


def test_inspect_of_a_data_dir_given_as_the_argument_still_works(tmp_path: Path) -> None:
    restore_into(tmp_path, _backup(), cluster_id="new", node_id=1)
    r = _paxosd("inspect", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert (info["snapshot_slot"], info["digest"]) == (_SM.applied_through, _SM.digest())
