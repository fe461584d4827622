"""The runner on a disk whose write fails (ENOSPC or EIO): the error reaches the host, and
nothing that depended on the failed write has left -- no vote, no promise, no reply. The
daemon then stops stepping that node (it waits for space, or exits); the others go on.

Driven on test_runner's hand-driven 3-node bench over the simulator's disk. The check is
test_runner's ``order_violations``; a planted runner that swallows the error and carries on
shows that it catches a vote sent without its write.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import pytest

from paxosd.core.io import PersistRecord, Received
from paxosd.core.messages import Accepted
from paxosd.core.types import NodeId
from paxosd.server.runner import Runner
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.store import DiskFull, StorageError, StorageIOError
from tests.test_runner import Bench, Event, _put, order_violations


class _FailingDisk:
    """test_runner's recording disk, whose synced writes fail once ``armed``."""

    def __init__(self, bench: Bench, node: int, error: StorageError) -> None:
        self.bench, self.node, self.error = bench, node, error
        self.armed = False

    def write(self, record: PersistRecord, *, sync: bool) -> None:
        if self.armed and sync:
            raise self.error
        self.bench.events.append(Event(self.node, "write", sync=sync, record=record))
        self.bench.disks[self.node].write(record, sync=sync)


class _SwallowsDiskErrors(Runner[StateMachine]):
    """Planted: a failed write is logged and forgotten, and the Ready carries on."""

    def write_synced(self, record: PersistRecord) -> None:
        with suppress(StorageError):
            self.disk.write(record, sync=True)


def _deliver(bench: Bench, stopped: set[int]) -> list[tuple[int, StorageError]]:
    """Deliver until quiet; a node whose drain raises a StorageError is stopped (the daemon
    never steps it again). Returns who failed, with what."""
    failures: list[tuple[int, StorageError]] = []
    for _ in range(50):
        if not bench.inflight:
            return failures
        batch, bench.inflight = bench.inflight, []
        for src, dst, msg in batch:
            if dst in stopped or src in stopped:
                continue
            r = bench.runners[dst]
            r.step(Received(NodeId(src), msg))
            try:
                r.drain()
            except StorageError as e:
                stopped.add(dst)
                failures.append((dst, e))
    raise AssertionError("messages still flowing after the round bound")


def _bench(node: int, error: StorageError, runner: type[Runner[StateMachine]]) -> _FailingDisk:
    bench = Bench(runner_class=runner)
    disk = _FailingDisk(bench, node, error)
    bench.runners[node].disk = disk
    return disk


FULL = DiskFull(Path("db"), "write failed: database or disk is full")
EIO = StorageIOError(Path("db"), "write failed: [Errno 5] Input/output error")


@pytest.mark.parametrize("error", [FULL, EIO], ids=["full", "eio"])
def test_a_follower_whose_write_fails_sends_no_vote_and_the_others_decide(
    error: StorageError,
) -> None:
    disk = _bench(2, error, Runner)
    bench = disk.bench
    bench.elect(1)
    leader = bench.runners[1]
    leader.on_client_command(7, 101, _put(1))
    leader.drain()
    bench.deliver()
    disk.armed = True
    armed_at = len(bench.events)
    leader.on_client_command(7, 102, _put(2))
    leader.drain()
    stopped: set[int] = set()
    assert _deliver(bench, stopped) == [(2, error)]
    after = bench.events[armed_at:]
    assert not [e for e in after if e.node == 2 and e.kind == "send"], "node 2 spoke"
    assert [e for e in after if e.node == 3 and isinstance(e.msg, Accepted)], "node 3 voted"
    assert order_violations(bench.events) == []
    # The majority with a working disk decided it and answered the client.
    assert [r.request_id for r in leader.replies if r.status == "ok"] == [101, 102]


@pytest.mark.parametrize("error", [FULL, EIO], ids=["full", "eio"])
def test_a_leader_whose_write_fails_answers_nothing_that_depended_on_it(
    error: StorageError,
) -> None:
    disk = _bench(1, error, Runner)
    bench = disk.bench
    bench.elect(1)
    leader = bench.runners[1]
    disk.armed = True
    leader.on_client_command(7, 101, _put(1))
    with pytest.raises(type(error)):
        leader.drain()
    stopped = {1}
    _deliver(bench, stopped)
    assert leader.replies == []
    assert order_violations(bench.events) == []


def test_the_check_catches_a_runner_that_swallows_a_failed_write() -> None:
    disk = _bench(2, EIO, _SwallowsDiskErrors)
    bench = disk.bench
    bench.elect(1)
    disk.armed = True
    leader = bench.runners[1]
    leader.on_client_command(7, 101, _put(1))
    leader.drain()
    assert _deliver(bench, set()) == []
    assert order_violations(bench.events) != []
