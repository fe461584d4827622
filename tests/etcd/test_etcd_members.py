"""Cluster membership through etcd's Cluster service, mapped onto paxosd's: MemberAdd of a
learner (the next free node id), the new node shows in MemberList as a learner, MemberPromote
makes it a voter once it has caught up, MemberRemove takes it out. MemberAdd of a voter is
refused (paxosd adds learners, then promotes)."""

from __future__ import annotations

import pytest

from paxosd.lab.localcluster import LocalCluster
from tests.waiting import wait_for

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402


def members(cl: rpc_pb2_grpc.ClusterStub) -> dict[int, bool] | None:
    try:
        got = cl.MemberList(rpc_pb2.MemberListRequest(), timeout=10)
    except grpc.RpcError:
        return None
    return {m.ID: m.isLearner for m in got.members}


def test_add_promote_remove_through_etcds_cluster_service(cluster: LocalCluster) -> None:
    cl = rpc_pb2_grpc.ClusterStub(grpc.insecure_channel(cluster.etcd_endpoints()[1]))
    wait_for("the listener answers", lambda: members(cl))
    with pytest.raises(grpc.RpcError) as e:
        cl.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1:1"]), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    k = cluster.add_node()
    url = f"http://{cluster.peer_address(k)}"
    added = cl.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=[url], isLearner=True), timeout=10)
    assert k == added.member.ID and added.member.isLearner
    assert {m.ID: m.isLearner for m in added.members} == {1: False, 2: False, 3: False, k: True}
    # MemberList is the answering member's view (as etcd 3.4's): a follower's may lag.
    wait_for(
        "the follower lists the learner",
        lambda: members(cl) == {1: False, 2: False, 3: False, k: True},
    )
    cluster.start(k)

    def promoted() -> bool:
        try:
            cl.MemberPromote(rpc_pb2.MemberPromoteRequest(ID=k), timeout=10)
        except grpc.RpcError as e:  # refused until the learner has caught up
            assert e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
            return False
        return True

    wait_for("the learner is promoted", promoted)
    wait_for(
        "the follower lists it as a voter",
        lambda: members(cl) == {1: False, 2: False, 3: False, k: False},
    )
    removed = cl.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=k), timeout=10)
    assert sorted(m.ID for m in removed.members) == [1, 2, 3]
    cluster.remove_node(k)
