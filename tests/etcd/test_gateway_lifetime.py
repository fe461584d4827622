"""A node's etcd listeners live and die with it, as the drill's faults need: kill -9 of the
node ends its listener processes even while a call through them waits for a cluster that
cannot answer (the other nodes paused); the caller gets UNAVAILABLE (an unknown outcome, as for
any call cut off), and the restarted node's new listeners serve the port, with no leftover
process from before. A paused node's listeners go on serving through the other nodes (they
are clients of the cluster, as any etcd client of a live member would be).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxosd.lab.localcluster import LocalCluster
from tests.waiting import wait_for

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from paxosd.lab.etcd_api_sitting import children  # noqa: E402


def _listeners(cluster: LocalCluster, k: int) -> list[int]:
    """Every live ``paxosd etcd-gateway`` of node ``k``, whoever its parent is now."""
    out = []
    needle = f"etcd-gateway\0--config\0{cluster.config_path(k)}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            out.append(int(entry.name))
    return out


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path / "c", 3, etcd=True, etcd_tls=False)
    c.up()
    try:
        yield c
    finally:
        for k in c.node_ids():
            c.signal(k, signal.SIGCONT)
        c.down()


def _kv(cluster: LocalCluster, k: int) -> rpc_pb2_grpc.KVStub:
    ch = grpc.insecure_channel(cluster.etcd_endpoints()[k - 1])
    grpc.channel_ready_future(ch).result(timeout=60)
    return rpc_pb2_grpc.KVStub(ch)


def test_a_killed_nodes_listeners_go_and_its_restart_serves_again(cluster: LocalCluster) -> None:
    leader = cluster.wait_ready()["node_id"]
    follower = next(k for k in cluster.node_ids() if k != leader)
    kv = _kv(cluster, follower)
    kv.Put(rpc_pb2.PutRequest(key=b"life/warm", value=b"1"), timeout=30)
    before = wait_for("the follower's two listeners", lambda: children(cluster.pid(follower) or 0))
    # A paused node's listeners still answer (through the others).
    other = next(k for k in cluster.node_ids() if k not in (leader, follower))
    cluster.signal(other, signal.SIGSTOP)
    assert kv.Put(rpc_pb2.PutRequest(key=b"life/p", value=b"1"), timeout=30).header.revision
    cluster.signal(other, signal.SIGCONT)

    # Calls that cannot be answered: both other nodes are paused.
    cluster.signal(leader, signal.SIGSTOP)
    cluster.signal(other, signal.SIGSTOP)
    codes: list[grpc.StatusCode] = []

    def call(i: int) -> None:
        try:
            kv.Put(rpc_pb2.PutRequest(key=f"life/{i}".encode(), value=b"x"), timeout=60)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())

    calls = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in calls:
        t.start()
    cluster.kill(follower)
    wait_for("the killed node's listeners exit", lambda: not _listeners(cluster, follower))
    for t in calls:
        t.join(60)
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 3, codes
    cluster.signal(leader, signal.SIGCONT)
    cluster.signal(other, signal.SIGCONT)

    cluster.start(follower)
    pid = cluster.pid(follower)
    assert pid is not None
    after = wait_for("two new listeners", lambda: len(c := children(pid)) == 2 and c)
    assert not set(after) & set(before)
    again = _kv(cluster, follower)
    put = again.Put(rpc_pb2.PutRequest(key=b"life/back", value=b"1"), timeout=30)
    got = again.Range(rpc_pb2.RangeRequest(key=b"life/back"), timeout=30)
    assert got.kvs[0].mod_revision == put.header.revision
    assert sorted(_listeners(cluster, follower)) == sorted(after)  # nothing left from before
