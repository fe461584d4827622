"""The ceiling lab's servers answer etcd's KV.Put, KV.Range and Maintenance.Status as an etcd
client expects (what the Go generator needs to find the "leader" and count hits), in both
flavours. Its figures are BENCHMARKS.md's, never asserted here."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from paxosd.lab.grpc_ceiling import CLUSTER_ID, MEMBER_ID, free_port  # noqa: E402


@pytest.fixture(params=["sync", "aio"])
def server(request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "paxosd.lab.grpc_ceiling", "serve", "--flavour", request.param]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "serving"
        yield port
    finally:
        p.terminate()
        p.wait(timeout=30)
        if p.stdout is not None:
            p.stdout.close()


def test_the_ceiling_server_answers_like_an_etcd_leader(server: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as ch:
        kv = rpc_pb2_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
        put = kv.Put(rpc_pb2.PutRequest(key=b"k00000001", value=b"v"), timeout=30)
        assert (put.header.cluster_id, put.header.member_id) == (CLUSTER_ID, MEMBER_ID)
        got = kv.Range(rpc_pb2.RangeRequest(key=b"k00000001"), timeout=30)
        assert got.count == 1 and len(got.kvs) == 1 and got.header.revision > 0
        m = rpc_pb2_grpc.MaintenanceStub(ch)  # type: ignore[no-untyped-call]
        status = m.Status(rpc_pb2.StatusRequest(), timeout=30)
        assert status.leader == status.header.member_id
