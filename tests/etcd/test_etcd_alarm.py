"""etcd's NOSPACE through the etcd API, mapped onto paxosd's replicated alarms: a put past
the quota fails as etcd's does ("database space exceeded"), Alarm lists NOSPACE on every
member and Status carries it in errors; after deletes and a compaction, Alarm DEACTIVATE
(etcdctl alarm disarm) lets writes in again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paxosd.lab.localcluster import LocalCluster
from tests.waiting import wait_for

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402

QUOTA = 1 << 20
VALUE = b"v" * (30 << 10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(
        tmp_path_factory.mktemp("alarm") / "c",
        3,
        durability="unsafe-no-fsync",
        extra_config=f"[limits]\nquota_bytes = {QUOTA}\n",
        etcd=True,
        etcd_tls=False,
    )
    c.up()
    try:
        c.wait_ready()
        yield c
    finally:
        c.down()


def stubs(c: LocalCluster, k: int) -> tuple[rpc_pb2_grpc.KVStub, rpc_pb2_grpc.MaintenanceStub]:
    ch = grpc.insecure_channel(c.etcd_endpoints()[k - 1])
    return rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.MaintenanceStub(ch)


def alarms(m: rpc_pb2_grpc.MaintenanceStub) -> list[tuple[int, int]]:
    got = m.Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), timeout=10)
    return [(a.memberID, a.alarm) for a in got.alarms]


def test_nospace_through_the_etcd_api(cluster: LocalCluster) -> None:
    kv, m = wait_for("node 1's listener", lambda: _ready(cluster, 1))
    written = []
    with pytest.raises(grpc.RpcError) as e:
        for i in range(200):
            kv.Put(rpc_pb2.PutRequest(key=f"q{i:03d}".encode(), value=VALUE), timeout=10)
            written.append(f"q{i:03d}".encode())
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.details() == "etcdserver: mvcc: database space exceeded"
    for k in cluster.node_ids():
        _, mk = wait_for(f"node {k}'s listener", lambda k=k: _ready(cluster, k))
        wait_for(f"node {k} lists NOSPACE", lambda mk=mk: alarms(mk))
        assert all(alarm == rpc_pb2.NOSPACE for _, alarm in alarms(mk))
    status = m.Status(rpc_pb2.StatusRequest(), timeout=10)
    assert any("alarm:NOSPACE" in err for err in status.errors)
    with pytest.raises(grpc.RpcError):
        m.Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE), timeout=10)
    for key in written:
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=10)
    rev = kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=rev), timeout=10)

    def disarmed() -> bool:
        m.Alarm(
            rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.DEACTIVATE, alarm=rpc_pb2.NOSPACE),
            timeout=10,
        )
        return not alarms(m)

    wait_for("the disarm holds once the store is under its quota", disarmed)
    assert kv.Put(rpc_pb2.PutRequest(key=b"after", value=b"ok"), timeout=10).header.revision


def _ready(
    c: LocalCluster, k: int
) -> tuple[rpc_pb2_grpc.KVStub, rpc_pb2_grpc.MaintenanceStub] | None:
    kv, m = stubs(c, k)
    try:
        m.Status(rpc_pb2.StatusRequest(), timeout=5)
    except grpc.RpcError:
        return None
    return kv, m
