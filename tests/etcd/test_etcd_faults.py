"""Writers and readers through every member's etcd listener while the leader is killed
(SIGKILL, its listener goes with it) and restarted, twice. Checked afterwards:

- 0 lost: every acknowledged put is in the history at the revision it was acknowledged
  with (a Range of its key at that revision finds its value, with that mod revision);
- unique: no two acknowledged puts share a revision;
- linearizable in real time: a put acknowledged before another was sent has the smaller
  revision, and a read sent after a put was acknowledged reflects at least its revision
  (a revisioned store orders every write by revision, so these are its real-time order).

Calls that fail (their listener died under them) have unknown outcomes and are not counted
as acknowledged; if applied, they are applied once (the gateway's client retries with one
session, exactly once).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from paxosd.lab.localcluster import LocalCluster
from tests.waiting import wait_for

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402

WRITERS = 6
ROUNDS = 2


@dataclass(frozen=True)
class Acked:
    key: bytes
    value: bytes
    revision: int
    sent: float
    done: float


@dataclass(frozen=True)
class Read:
    revision: int
    sent: float


def kv_of(c: LocalCluster, k: int) -> rpc_pb2_grpc.KVStub:
    return rpc_pb2_grpc.KVStub(grpc.insecure_channel(c.etcd_endpoints()[k - 1]))


def answering(c: LocalCluster, k: int) -> bool:
    try:
        kv_of(c, k).Range(rpc_pb2.RangeRequest(key=b"probe"), timeout=5)
    except grpc.RpcError:
        return False
    return True


def test_leader_kills_lose_nothing_and_keep_real_time_order(cluster: LocalCluster) -> None:
    for k in cluster.node_ids():
        wait_for(f"node {k}'s listener answers", lambda k=k: answering(cluster, k))
    stop = threading.Event()
    acked: list[Acked] = []
    reads: list[Read] = []
    failures = [0]
    lock = threading.Lock()

    def writer(i: int) -> None:
        node = i % 3 + 1
        kv = kv_of(cluster, node)
        n = 0
        while not stop.is_set():
            n += 1
            key, value = f"f/{i}/{n % 20}".encode(), f"{i}.{n}".encode()
            sent = time.monotonic()
            try:
                resp = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10)
                got = Acked(key, value, resp.header.revision, sent, time.monotonic())
                rsent = time.monotonic()
                read = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=10)
                with lock:
                    acked.append(got)
                    reads.append(Read(read.header.revision, rsent))
            except grpc.RpcError:
                with lock:
                    failures[0] += 1
                node = node % 3 + 1  # as a client given every endpoint: the next one
                kv = kv_of(cluster, node)

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        for _ in range(ROUNDS):
            before = len(acked)
            wait_for("writes go through", lambda b=before: len(acked) > b + 50)
            leader = int(cluster.wait_ready()["node_id"])
            cluster.kill(leader)
            after = len(acked)
            wait_for("writes go on without the old leader", lambda a=after: len(acked) > a + 50)
            cluster.start(leader)
            wait_for("the old leader's listener is back", lambda k=leader: answering(cluster, k))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(acked) > 200

    # 0 lost, and at the acknowledged revision.
    kv = kv_of(cluster, 1)
    for a in acked:
        got = kv.Range(rpc_pb2.RangeRequest(key=a.key, revision=a.revision), timeout=10)
        assert [(x.value, x.mod_revision) for x in got.kvs] == [(a.value, a.revision)], a
    # Unique revisions.
    assert len({a.revision for a in acked}) == len(acked)
    assert order_problems(acked, reads) == []


def order_problems(acked: list[Acked], reads: list[Read]) -> list[str]:
    """Writes acknowledged before a write was sent have smaller revisions; reads sent after
    a write was acknowledged reflect at least its revision."""
    problems = []
    by_done = sorted(acked, key=lambda a: a.done)
    events: list[tuple[float, Acked | Read]] = [(a.sent, a) for a in acked]
    events += [(r.sent, r) for r in reads]
    j, highest = 0, 0
    for sent, x in sorted(events, key=lambda e: e[0]):
        while j < len(by_done) and by_done[j].done < sent:
            highest = max(highest, by_done[j].revision)
            j += 1
        if isinstance(x, Acked) and not x.revision > highest:
            problems.append(f"{x} follows a put acknowledged at revision {highest}")
        if isinstance(x, Read) and not x.revision >= highest:
            problems.append(f"{x} misses a put acknowledged at revision {highest}")
    return problems


def test_the_order_check_can_fail() -> None:
    """Planted: puts in real-time order with revisions swapped, and a stale read."""
    first = Acked(b"a", b"1", revision=9, sent=0.0, done=1.0)
    second = Acked(b"b", b"2", revision=8, sent=2.0, done=3.0)
    assert len(order_problems([first, second], [])) == 1
    assert len(order_problems([first], [Read(revision=8, sent=1.5)])) == 1
    assert order_problems([second], [Read(revision=8, sent=3.5)]) == []


def test_serializable_reads_are_the_members_own_even_without_a_quorum(
    cluster: LocalCluster,
) -> None:
    """As etcd's: a serializable Range is answered by the member asked, from what it has
    applied, with no round to the leader; with its peers stopped it still answers, and a
    linearizable Range fails (no quorum to confirm it)."""
    kv = kv_of(cluster, 1)
    wait_for("node 1's listener answers", lambda: answering(cluster, 1))
    put = kv.Put(rpc_pb2.PutRequest(key=b"s/k", value=b"v"), timeout=10)
    wait_for(
        "node 1 applied the put",
        lambda: kv.Range(rpc_pb2.RangeRequest(key=b"s/k", serializable=True), timeout=10).count,
    )
    others = [k for k in cluster.node_ids() if k != 1]
    for k in others:
        cluster.stop(k)
    try:
        got = kv.Range(rpc_pb2.RangeRequest(key=b"s/k", serializable=True), timeout=10)
        assert [(x.value, x.mod_revision) for x in got.kvs] == [(b"v", put.header.revision)]
        with pytest.raises(grpc.RpcError) as e:
            kv.Range(rpc_pb2.RangeRequest(key=b"s/k"), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for k in others:
            cluster.start(k)
