"""etcd's v3 API through the generated stubs, used as an etcd client uses them, against a
local 3-node cluster: the parts of the API etcdctl's session does not reach (sorts, filters,
ranges with an arbitrary end, ignore_value, watch cancel/filters/compaction/progress,
serializable reads on a follower, HashKV agreement, MoveLeader)."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest

from paxosd.lab.localcluster import LocalCluster
from tests.waiting import wait_for

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402

R = rpc_pb2.RangeRequest


def answering(ep: str) -> rpc_pb2_grpc.KVStub | None:
    kv = rpc_pb2_grpc.KVStub(grpc.insecure_channel(ep))
    try:
        kv.Range(R(key=b"probe"), timeout=5)
    except grpc.RpcError:
        return None
    return kv


@pytest.fixture(scope="module")
def kvs(cluster: LocalCluster) -> list[rpc_pb2_grpc.KVStub]:
    return [
        wait_for(f"{ep} answers", lambda ep=ep: answering(ep)) for ep in cluster.etcd_endpoints()
    ]


def channel(cluster: LocalCluster, k: int) -> grpc.Channel:
    return grpc.insecure_channel(cluster.etcd_endpoints()[k - 1])


def put(kv: rpc_pb2_grpc.KVStub, key: str, value: str, **kw: object) -> rpc_pb2.PutResponse:
    return kv.Put(rpc_pb2.PutRequest(key=key.encode(), value=value.encode(), **kw), timeout=10)


def keys(resp: rpc_pb2.RangeResponse) -> list[str]:
    return [kv.key.decode() for kv in resp.kvs]


def test_range_sorts_limits_filters_and_counts(kvs: list[rpc_pb2_grpc.KVStub]) -> None:
    kv = kvs[0]
    for k, v in [("r/b", "2"), ("r/a", "3"), ("r/c", "1")]:
        put(kv, k, v)
    whole = dict(key=b"r/", range_end=b"r0")
    resp = kv.Range(R(**whole), timeout=10)
    assert keys(resp) == ["r/a", "r/b", "r/c"] and resp.count == 3 and not resp.more
    resp = kv.Range(R(**whole, sort_target=R.VALUE, sort_order=R.DESCEND, limit=2), timeout=10)
    assert keys(resp) == ["r/a", "r/b"] and resp.more and resp.count == 3
    resp = kv.Range(R(**whole, count_only=True), timeout=10)
    assert (list(resp.kvs), resp.count) == ([], 3)
    resp = kv.Range(R(**whole, keys_only=True), timeout=10)
    assert [x.value for x in resp.kvs] == [b"", b"", b""]
    b_rev = kv.Range(R(key=b"r/b"), timeout=10).kvs[0].mod_revision
    resp = kv.Range(R(**whole, min_mod_revision=b_rev + 1), timeout=10)
    assert keys(resp) == ["r/a", "r/c"]
    # An arbitrary end: [r/a, r/c) is r/a and r/b.
    assert keys(kv.Range(R(key=b"r/a", range_end=b"r/c"), timeout=10)) == ["r/a", "r/b"]
    # Every member answers; a serializable read is the member's own.
    for other in kvs[1:]:
        resp = wait_for(
            "a follower applied the puts",
            lambda o=other: (
                (r := o.Range(R(**whole, serializable=True), timeout=10)).count == 3 and r
            ),
        )
        assert keys(resp) == ["r/a", "r/b", "r/c"]


def test_put_options_and_header(cluster: LocalCluster, kvs: list[rpc_pb2_grpc.KVStub]) -> None:
    kv = kvs[1]  # a follower forwards the writes
    first = put(kv, "p/k", "v1")
    assert first.header.revision > 1 and first.header.raft_term >= 1
    assert first.header.member_id == 2 and first.header.cluster_id != 0
    again = put(kv, "p/k", "v2", prev_kv=True)
    assert again.prev_kv.value == b"v1" and again.header.revision == first.header.revision + 1
    kept = put(kv, "p/k", "", ignore_value=True, prev_kv=True)
    assert kept.prev_kv.value == b"v2"
    got = kv.Range(R(key=b"p/k"), timeout=10).kvs[0]
    assert (got.value, got.version) == (b"v2", 3)
    with pytest.raises(grpc.RpcError) as e:
        put(kv, "p/absent", "", ignore_value=True)
    assert "key not found" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        put(kv, "p/k", "x", lease=7)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_txn_and_delete_range(kvs: list[rpc_pb2_grpc.KVStub]) -> None:
    kv = kvs[0]
    put(kv, "t/a", "1")
    cmp = rpc_pb2.Compare(
        key=b"t/a", target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL, value=b"1"
    )
    req = rpc_pb2.TxnRequest(
        compare=[cmp],
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t/b", value=b"2")),
            rpc_pb2.RequestOp(request_range=R(key=b"t/", range_end=b"t0")),
        ],
        failure=[rpc_pb2.RequestOp(request_range=R(key=b"t/a"))],
    )
    resp = kv.Txn(req, timeout=10)
    assert resp.succeeded
    assert keys(resp.responses[1].response_range) == ["t/a", "t/b"]  # sees its own put
    resp = kv.Txn(req, timeout=10)  # t/a is still 1: succeeds again, same keys
    assert resp.succeeded
    dup = rpc_pb2.TxnRequest(
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t/a", value=b"x")),
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t/a", value=b"y")),
        ]
    )
    with pytest.raises(grpc.RpcError) as e:
        kv.Txn(dup, timeout=10)
    assert "duplicate key" in e.value.details()
    deleted = kv.DeleteRange(
        rpc_pb2.DeleteRangeRequest(key=b"t/", range_end=b"t0", prev_kv=True), timeout=10
    )
    assert deleted.deleted == 2 and sorted(x.key for x in deleted.prev_kvs) == [b"t/a", b"t/b"]


def watch_stream(
    ch: grpc.Channel,
) -> tuple[queue.Queue[rpc_pb2.WatchRequest | None], Iterator[rpc_pb2.WatchResponse]]:
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()

    def gen() -> Iterator[rpc_pb2.WatchRequest]:
        while (r := requests.get()) is not None:
            yield r

    return requests, rpc_pb2_grpc.WatchStub(ch).Watch(gen(), timeout=60)


def test_watch_from_a_revision_with_filters_cancel_and_progress(
    cluster: LocalCluster, kvs: list[rpc_pb2_grpc.KVStub]
) -> None:
    kv = kvs[0]
    start = put(kv, "w/a", "1").header.revision
    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"w/a"), timeout=10)
    put(kv, "w/b", "2")
    requests, responses = watch_stream(channel(cluster, 3))  # a follower serves it
    create = rpc_pb2.WatchCreateRequest(
        key=b"w/",
        range_end=b"w0",
        start_revision=start,
        prev_kv=True,
        filters=[rpc_pb2.WatchCreateRequest.NODELETE],
        watch_id=5,
    )
    requests.put(rpc_pb2.WatchRequest(create_request=create))
    created = next(responses)
    assert created.created and created.watch_id == 5
    events = []
    while len(events) < 2:
        r = next(responses)
        events += [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in r.events]
    assert events == [(0, b"w/a", b"1", start), (0, b"w/b", b"2", start + 2)]
    requests.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
    progress = next(responses)
    assert progress.watch_id == -1 and progress.header.revision >= start + 2
    requests.put(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=5)))
    assert next(responses).canceled
    requests.put(None)


def test_compaction_cancels_an_old_watch_and_refuses_old_reads(
    cluster: LocalCluster, kvs: list[rpc_pb2_grpc.KVStub]
) -> None:
    kv = kvs[0]
    old = put(kv, "c/a", "1").header.revision
    now = put(kv, "c/a", "2").header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=now), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        kv.Range(R(key=b"c/a", revision=old), timeout=10)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert e.value.details() == "etcdserver: mvcc: required revision has been compacted"
    requests, responses = watch_stream(channel(cluster, 1))
    create = rpc_pb2.WatchCreateRequest(key=b"c/a", start_revision=old)
    requests.put(rpc_pb2.WatchRequest(create_request=create))
    got = [next(responses), next(responses)]
    assert got[0].created and got[1].canceled and got[1].compact_revision == now
    requests.put(None)


def test_maintenance_and_cluster(cluster: LocalCluster, kvs: list[rpc_pb2_grpc.KVStub]) -> None:
    put(kvs[0], "m/a", "1")
    statuses = [
        rpc_pb2_grpc.MaintenanceStub(channel(cluster, k)).Status(
            rpc_pb2.StatusRequest(), timeout=10
        )
        for k in cluster.node_ids()
    ]
    leaders = {s.leader for s in statuses}
    assert len(leaders) == 1 and leaders.pop() in cluster.node_ids()
    assert all(s.version.startswith("3.4.") and s.dbSize > 0 for s in statuses)
    assert all(s.raftTerm == s.header.raft_term >= 1 for s in statuses)

    def hashes() -> set[int] | None:
        revs = set()
        out = set()
        for k in cluster.node_ids():
            h = rpc_pb2_grpc.MaintenanceStub(channel(cluster, k)).HashKV(
                rpc_pb2.HashKVRequest(), timeout=10
            )
            revs.add(h.header.revision)
            out.add(h.hash)
        return out if len(revs) == 1 else None

    assert len(wait_for("every member at one revision", hashes)) == 1
    members = rpc_pb2_grpc.ClusterStub(channel(cluster, 2)).MemberList(
        rpc_pb2.MemberListRequest(), timeout=10
    )
    assert sorted(m.ID for m in members.members) == cluster.node_ids()
    assert all(m.clientURLs and not m.isLearner for m in members.members)
    # MoveLeader: leadership goes to the member named.
    leader = statuses[0].leader
    target = next(k for k in cluster.node_ids() if k != leader)
    rpc_pb2_grpc.MaintenanceStub(channel(cluster, target)).MoveLeader(
        rpc_pb2.MoveLeaderRequest(targetID=target), timeout=10
    )
    wait_for(
        "the named member leads",
        lambda: (
            rpc_pb2_grpc.MaintenanceStub(channel(cluster, target))
            .Status(rpc_pb2.StatusRequest(), timeout=10)
            .leader
            == target
        ),
    )


def test_a_bad_request_closes_nothing(kvs: list[rpc_pb2_grpc.KVStub]) -> None:
    kv = kvs[0]
    with pytest.raises(grpc.RpcError) as e:
        kv.Range(R(key=b"\xff\xfe"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in e.value.details()
    assert put(kv, "still", "fine").header.revision > 1


def test_watch_streams_are_bounded_and_unary_calls_still_run(
    cluster: LocalCluster, kvs: list[rpc_pb2_grpc.KVStub]
) -> None:
    from paxosd.etcd.gateway import WATCH_STREAMS_MAX

    ch = channel(cluster, 2)
    streams = []
    for _ in range(WATCH_STREAMS_MAX):
        requests, responses = watch_stream(ch)
        requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"b")))
        assert next(responses).created
        streams.append((requests, responses))
    requests, responses = watch_stream(ch)
    with pytest.raises(grpc.RpcError) as e:
        next(responses)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_pb2_grpc.KVStub(ch).Range(R(key=b"b"), timeout=10).header.revision > 1
    for requests, responses in streams:
        requests.put(None)
        responses.cancel()


def test_a_range_over_more_than_one_page(kvs: list[rpc_pb2_grpc.KVStub]) -> None:
    """1,280 keys (over SCAN_LIMIT_MAX): read in pages at one revision, counted whole."""
    kv = kvs[0]
    for t in range(10):
        ops = [
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=f"big/{t:02}{i:03}".encode()))
            for i in range(128)
        ]
        assert kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=10).succeeded
    whole = dict(key=b"big/", range_end=b"big0")
    resp = kv.Range(R(**whole), timeout=30)
    assert resp.count == 1280 and len(resp.kvs) == 1280 and not resp.more
    assert keys(resp) == sorted(keys(resp))
    resp = kv.Range(R(**whole, limit=5, sort_order=R.DESCEND), timeout=30)
    assert resp.count == 1280 and resp.more and keys(resp)[0] == "big/09127"
    resp = kv.Range(R(key=b"big/05", range_end=b"big/06", count_only=True), timeout=30)
    assert resp.count == 128


def test_a_listener_that_dies_is_started_again(
    cluster: LocalCluster, kvs: list[rpc_pb2_grpc.KVStub]
) -> None:
    import os
    import signal

    from paxosd.lab.etcd_api_sitting import children

    node = cluster.pid(3)
    assert node is not None
    first = children(node)
    assert len(first) == 2  # [etcd] processes: 2 by default
    os.kill(first[0], signal.SIGKILL)
    wait_for(
        "a new listener process beside the other",
        lambda: len(now := children(node)) == 2 and first[0] not in now and first[1] in now,
    )
    wait_for("node 3's listener answers again", lambda: answering(cluster.etcd_endpoints()[2]))
