"""A follower installs a peer's snapshot without stopping its loop: the state is decoded into a
new state machine a few pieces per tick (StateMachine.restoring, Runner's preparation) and
swapped in once whole, while the node keeps voting and answering heartbeats.

The pieces (paxosd/statemachine/slices.py) are checked against msgspec's one-piece decode and
``sorted``; the install on a hand-driven cluster (tests/core/harness.py) with the real state
machine and the daemon's file-backed snapshot maker, including a newer snapshot arriving
mid-way, a restart mid-way and a corrupt or torn snapshot."""

from __future__ import annotations

import mmap
import os
import random
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from paxosd.core.io import Received
from paxosd.core.messages import Accepted, CatchUpReply, CatchUpRequest, Message, SnapshotChunk
from paxosd.core.replica import Role
from paxosd.core.types import NodeId, Snapshot
from paxosd.server.runner import InlineSnapshots, Runner, SnapshotMaker
from paxosd.server.snapshots import ForkSnapshots
from paxosd.statemachine import slices
from paxosd.statemachine.commands import Command, Delete, Put, encode_command
from paxosd.statemachine.machine import (
    BadSnapshot,
    StateMachine,
    _decoding,
    _snapshot_decoder,
)
from paxosd.storage.snapfile import REAPER, SnapshotFile
from tests.core.harness import Cluster

VALUE = b"v" * 1024

# ------------------------------------------------------------------------------ the pieces


def run(steps: Any) -> tuple[Any, int]:
    """Drive a generator to its end: (its value, how many times it yielded)."""
    n = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, n
        n += 1


def machine(keys: int, *, seed: int = 1, deletes: bool = True) -> StateMachine:
    """A state with ``keys`` keys written in a random order, some rewritten or deleted."""
    rnd = random.Random(seed)
    sm = StateMachine()
    names = [f"key/{i:06d}" for i in range(keys)]
    rnd.shuffle(names)
    for slot, i in enumerate(range(0, len(names), 50), 1):
        ops: list[Put | Delete] = [
            Put(k, rnd.randbytes(rnd.randrange(0, 300))) for k in names[i : i + 50]
        ]
        if deletes and i:
            ops.append(Delete(names[rnd.randrange(i)]))
            ops.append(Put(names[rnd.randrange(i)], b"again"))
        sm.apply(
            slot,
            tuple(
                encode_command(Command("w", slot * 100 + j, "A", op)) for j, op in enumerate(ops)
            ),
        )
    return sm


def test_a_batch_ends_where_msgspec_says_the_bytes_left_over_begin() -> None:
    # The reader relies on msgspec naming the byte where trailing data starts; pin it.
    items = [["k" * i, b"v" * (i * 7), i, 2**40 + i] for i in range(50)]
    buf = memoryview(b"".join(msgspec.msgpack.encode(x) for x in items))
    ends = [len(msgspec.msgpack.encode(x)) for x in items]
    assert slices.end_of_items(buf, 0, 1, 1) == ends[0]
    assert slices.end_of_items(buf, 0, 10, 16) == sum(ends[:10])
    assert slices.end_of_items(buf, ends[0], 49, 1 << 20) == len(buf)
    with pytest.raises(slices.SliceError):
        slices.end_of_items(buf, 0, 51, 1 << 20)  # fewer items than asked: truncated


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1000, 5003])
def test_a_sort_in_pieces_is_sorted(n: int) -> None:
    rnd = random.Random(n)
    keys = [f"{rnd.randrange(n * 2 + 1):08d}" for _ in range(n)]  # with duplicates
    got, pieces = run(slices.sorted_in_pieces(list(keys), 16))
    assert got == sorted(keys)
    assert pieces >= n // 16


def test_the_decode_in_pieces_equals_the_one_piece_decode() -> None:
    data = machine(3000).snapshot()
    body = memoryview(data)[:-32]
    state, pieces = run(_decoding(body, 64))
    assert state == _snapshot_decoder.decode(data[:-32])
    assert pieces > 3000 // 64


def test_restoring_in_pieces_rebuilds_the_same_state_machine() -> None:
    sm = machine(3000)
    data = sm.snapshot()
    restored, pieces = run(StateMachine.restoring(data, batch=32))
    assert pieces > 3000 // 32
    assert restored.digest() == sm.digest()
    assert restored.snapshot() == data
    assert restored._hkeys == sm._hkeys and restored._keys == sm._keys
    assert (restored._kv_bytes, restored._history_bytes) == (sm._kv_bytes, sm._history_bytes)


@pytest.mark.parametrize("damage", ["flipped", "torn", "empty", "trailing"])
def test_a_bad_snapshot_is_refused_in_one_line(damage: str) -> None:
    data = bytearray(machine(500).snapshot())
    if damage == "flipped":
        data[len(data) // 2] ^= 0x40
    elif damage == "torn":
        del data[len(data) // 3 :]
    elif damage == "empty":
        data = bytearray()
    else:
        data += b"\x00"
    with pytest.raises(BadSnapshot) as e:
        run(StateMachine.restoring(bytes(data), batch=16))
    assert "\n" not in str(e.value) and len(str(e.value)) <= 200


def test_a_structurally_bad_state_with_a_good_checksum_is_refused() -> None:
    from paxosd.statemachine.machine import _seal

    body = bytearray(machine(50).snapshot()[:-32])
    body[0] = 0x92  # an array of 2 fields: fewer than a state has
    with pytest.raises(BadSnapshot, match="fields"):
        run(StateMachine.restoring(_seal(bytes(body)), batch=16))


def test_a_replaced_state_machine_is_emptied_in_pieces() -> None:
    sm = machine(2000)
    _, pieces = run(sm.dismantling(batch=100))
    assert pieces >= 2000 // 100
    assert not (sm._index or sm._events or sm._hkeys or sm._keys or sm._timeline or sm._sessions)


def test_a_dismantled_state_machine_holds_no_container_with_anything_in_it() -> None:
    """Whatever a container still holds once the pieces are done is freed at once when the
    old machine goes (the stop dismantling is there to avoid): every one must be empty."""
    sm = machine(2000)  # rewrites and deletions: history holds updates, not only creations
    assert sm._updates
    run(sm.dismantling(batch=100))
    held = {
        name: len(v)
        for name, v in vars(sm).items()
        if isinstance(v, list | dict | set | deque) and len(v)
    }
    assert held == {}


def test_a_file_stays_mapped_while_decoding_and_is_unmapped_when_dropped(tmp_path: Path) -> None:
    sm = machine(400)
    path = tmp_path / "s.snap"
    path.write_bytes(sm.snapshot())
    state = SnapshotFile(path, path.stat().st_size, 0)
    restored, pieces = run(StateMachine.restoring(state, batch=8))
    assert restored.digest() == sm.digest()
    # Read through the mapping, its pages are dropped as the decode goes (so that the unmap
    # at the end has nothing left to tear down).
    with state.view() as view:
        whole = memoryview(view).cast("B")
        assert isinstance(whole.obj, mmap.mmap)
        slices.page_dropper(whole)(0, len(whole))  # no error; the bytes still read back
        assert bytes(whole[:16]) == path.read_bytes()[:16]
        whole.release()
    assert slices.page_dropper(memoryview(b"x" * 10000)) is not None  # bytes: a no-op
    # Dropped half-way (checksum, decode, checks): the mapping is closed without an error.
    for at in (1, pieces // 4, pieces // 2, pieces - 1):
        steps = StateMachine.restoring(state, batch=8)
        for _ in range(at):
            next(steps)
        steps.close()


# ------------------------------------------------------------------------------ the install


def put(key: str, seq: int) -> bytes:
    return encode_command(Command("w", seq, "A", Put(key, VALUE)))


class Lab:
    """Three nodes with the real state machine; node 3 is cut off while ``keys`` keys are
    written, then node 1 snapshots and compacts its log, so node 3 needs the snapshot."""

    def __init__(self, tmp_path: Path, keys: int, *, files: bool = True) -> None:
        self.tmp_path = tmp_path
        self.seq = 0

        def maker(nid: int) -> SnapshotMaker:
            if not files:
                return InlineSnapshots()
            m = ForkSnapshots(tmp_path / f"n{nid}" / "snapshots", structlog.get_logger())
            m.prepare_turn_s = 0.0  # one piece per tick: the install spans many ticks
            m.prepare_batch = 64
            return m

        self.c = c = Cluster(
            3,
            machine=StateMachine,
            maker=maker,
            log_retain_entries=0,
            snapshot_chunk_bytes=64 << 10,
        )
        c.campaign(1)
        c.deliver()
        assert c.replicas[1].role is Role.LEADER  # type: ignore[index]
        self.write(300)  # node 3 has these, then misses the rest
        assert c.runners[3].sm.applied_through > 0
        c.cut = {3}
        self.write(keys)
        c.runners[1].take_snapshot()
        assert c.replicas[1].log_start > c.replicas[3].decided_through + 1  # type: ignore[index]

    def write(self, keys: int) -> None:
        c = self.c
        for i in range(0, keys, 200):
            for _ in range(min(200, keys - i)):
                self.seq += 1
                c.propose(1, put(f"key/{self.seq:06d}", self.seq))
            c.deliver()
        c.tick_all(10)
        c.deliver()

    def runner(self, nid: int) -> Runner[Any]:
        return self.c.runners[nid]

    def turn(self, ms: int = 20) -> list[tuple[int, int, Message]]:
        """One tick everywhere and every message it causes; returns what node 3 sent."""
        c = self.c
        c.tick_all(ms)
        sent: list[tuple[int, int, Message]] = []
        for _ in range(50):
            if not c.inflight:
                break
            batch, c.inflight = c.inflight, []
            sent += [x for x in batch if x[0] == 3]
            for src, dst, msg in batch:
                if dst not in c.down:
                    c.step(dst, Received(NodeId(src), msg))
        return sent

    def until_preparing(self) -> None:
        for _ in range(500):
            if self.runner(3).preparing is not None:
                return
            self.turn()
        raise AssertionError("node 3 never started decoding a snapshot")

    def until_installed(self, turns: int = 2000) -> None:
        for _ in range(turns):
            if self.converged():
                return
            self.turn()
        raise AssertionError(f"not converged: {self.applied()}")

    def applied(self) -> dict[int, int]:
        return {m: self.runner(m).sm.applied_through for m in (1, 2, 3)}

    def converged(self) -> bool:
        sms = [self.runner(m).sm for m in (1, 2, 3)]
        return (
            self.runner(3).preparing is None
            and len({sm.applied_through for sm in sms}) == 1
            and len({sm.digest() for sm in sms}) == 1
        )


def test_a_follower_installs_a_big_snapshot_in_pieces_and_answers_heartbeats_meanwhile(
    tmp_path: Path,
) -> None:
    lab = Lab(tmp_path, 3000)
    lab.c.cut = set()
    old = lab.runner(3).sm
    lab.until_preparing()
    slot = lab.runner(3).preparing
    turns = 0
    acks = 0
    while lab.runner(3).preparing is not None:
        # The cluster keeps running: writes go on, node 3 votes on them.
        lab.seq += 1
        lab.c.propose(1, put(f"more/{lab.seq}", lab.seq))
        sent = lab.turn()
        turns += 1
        assert not any(isinstance(m, CatchUpRequest) for _, _, m in sent), "transfer restarted"
        acks += sum(1 for _, d, m in sent if d == 1 and isinstance(m, Accepted))
        if lab.runner(3).preparing is not None:
            assert lab.runner(3).sm is old  # the running state is untouched until the swap
            assert lab.c.replicas[1].role is Role.LEADER  # type: ignore[index]
    assert turns >= 10, "the install should span many ticks at this piece size"
    assert acks >= turns // 2, "node 3 stopped answering the leader while decoding"
    lab.until_installed()
    assert lab.runner(3).replica.snapshot.slot >= (slot or 0)
    assert not lab.c.refused
    # The state it replaced is freed a piece per tick, not in the turn of the swap.
    assert old._index or old._events
    for _ in range(100):
        if not old._index and not old._events:
            break
        lab.turn()
    assert not old._index and not old._events and not old._keys


def test_a_newer_snapshot_arriving_mid_decode_supersedes_it(tmp_path: Path) -> None:
    lab = Lab(tmp_path, 1500)
    c = lab.c
    c.cut = set()
    # Hold back one catch-up answer of the transfer: it arrives late, as a newer snapshot's.
    lab.until_preparing()
    first = lab.runner(3).preparing
    assert first is not None
    lab.turn()
    lab.write(600)
    lab.runner(1).take_snapshot()
    snap = c.replicas[1].snapshot  # type: ignore[index]
    assert snap is not None and snap.slot > first
    assert lab.runner(3).preparing == first
    chunk = Snapshot(snap.slot, snap.state[0 : len(snap.state)], snap.membership)
    late = CatchUpReply(
        chunk=SnapshotChunk(
            chunk.slot, 0, len(chunk.state), chunk.state[0 : 64 << 10], chunk.membership
        ),
        entries=(),
        decided_through=c.replicas[1].decided_through,  # type: ignore[index]
    )
    c.step(3, Received(NodeId(1), late))
    assert lab.runner(3).preparing is None  # the older one was dropped
    lab.until_installed()
    assert lab.runner(3).replica.snapshot.slot == snap.slot
    assert not c.refused


def test_a_restart_mid_decode_starts_the_install_over(tmp_path: Path) -> None:
    lab = Lab(tmp_path, 1500)
    c = lab.c
    c.cut = set()
    lab.until_preparing()
    for _ in range(3):
        lab.turn()
    assert lab.runner(3).preparing is not None
    c.crash(3)
    c.restart(3)
    assert lab.runner(3).preparing is None
    assert lab.runner(3).replica.snapshot is None  # nothing of it was recorded
    lab.until_installed()
    assert not c.refused


@pytest.mark.parametrize("files", [True, False], ids=["file", "bytes"])
def test_a_corrupt_snapshot_is_refused_whole_and_fetched_again(tmp_path: Path, files: bool) -> None:
    lab = Lab(tmp_path, 1000, files=files)
    c = lab.c
    c.cut = set()
    lab.until_preparing()
    state = lab.runner(3)._preparing[1]  # noqa: SLF001
    assert state is not None
    before = lab.runner(3).sm
    if files:
        # Flip a byte of the assembled file on disk (the decode reads it through a mapping).
        path = tmp_path / "n3" / "snapshots"
        (name,) = [p for p in os.listdir(path) if p.endswith(".snap")]
        fd = os.open(path / name, os.O_RDWR)
        try:
            os.pwrite(fd, bytes([os.pread(fd, 1, 100)[0] ^ 0xFF]), 100)
        finally:
            os.close(fd)
    else:
        # A torn copy: the decode in progress is swapped for one of half the bytes.
        data = c.replicas[1].snapshot.state  # type: ignore[index,union-attr]
        snap, _ = lab.runner(3)._preparing  # noqa: SLF001
        lab.runner(3)._preparing = (  # noqa: SLF001
            snap,
            lab.runner(3).maker.prepare(before, bytes(data[0 : len(data) // 2])),
        )
    for _ in range(500):
        if c.refused:
            break
        lab.turn()
        assert lab.runner(3).sm is before  # nothing half-installed
    ((nid, slot, why),) = c.refused
    assert nid == 3 and "checksum" in why and "\n" not in why
    assert lab.runner(3).replica.snapshot is None
    if files:  # the refused file is not kept (one per slot would pile up)
        REAPER.wait()
        left = [p for p in os.listdir(path) if not p.endswith(".rx.tmp")]
        assert name not in left and not [p for p in left if p.endswith(".old.tmp")], left
    lab.until_installed()  # asked again, from the start, and installed whole
