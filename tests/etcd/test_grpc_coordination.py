"""etcd's Lease, Lock and Election services through the generated stubs, used as an etcd
client uses them, against a local 3-node cluster: grants (server-chosen and requested ids),
etcd's errors, a KeepAlive stream across many leases, puts with leases, a Lock that blocks a
second one until Unlock or the holder's lease is revoked, and an election's campaign,
proclaim, leader, observe and resign."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest

from paxosd.lab.localcluster import LocalCluster
from tests.waiting import wait_for

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.etcd.proto import (  # noqa: E402
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)

R = rpc_pb2.RangeRequest
E = v3election_pb2


@dataclass
class Stubs:
    kv: rpc_pb2_grpc.KVStub
    lease: rpc_pb2_grpc.LeaseStub
    lock: v3lock_pb2_grpc.LockStub
    election: v3election_pb2_grpc.ElectionStub


def _answering(ep: str) -> Stubs | None:
    return _answering_on(grpc.insecure_channel(ep))


def _answering_on(ch: Any) -> Stubs | None:
    kv = rpc_pb2_grpc.KVStub(ch)
    try:
        kv.Range(R(key=b"probe"), timeout=5)
    except grpc.RpcError:
        return None
    return Stubs(
        kv,
        rpc_pb2_grpc.LeaseStub(ch),
        v3lock_pb2_grpc.LockStub(ch),
        v3election_pb2_grpc.ElectionStub(ch),
    )


@pytest.fixture(scope="module")
def stubs(cluster: LocalCluster) -> list[Stubs]:
    return [
        wait_for(f"{ep} answers", lambda ep=ep: _answering(ep)) for ep in cluster.etcd_endpoints()
    ]


def grant(s: Stubs, ttl: int = 60, lease_id: int = 0) -> int:
    return int(s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id), timeout=10).ID)


def get(s: Stubs, key: str) -> list[Any]:
    return list(s.kv.Range(R(key=key.encode()), timeout=10).kvs)


def error(call: Any, *args: Any) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, timeout=10)
    return e.value.code(), e.value.details()


def test_grant_revoke_time_to_live_list_and_etcds_errors(stubs: list[Stubs]) -> None:
    s = stubs[1]  # a follower's listener: grants and revokes go to the leader
    chosen = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10)
    assert chosen.ID > 0 and chosen.TTL == 60 and chosen.header.member_id == 2
    asked = grant(s, 60, 0x7E57)
    assert asked == 0x7E57
    assert error(s.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=60, ID=0x7E57)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: lease already exists",
    )
    assert error(s.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001)) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: too large lease TTL",
    )
    code, message = error(s.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=0))
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: lease TTL 0 s is outside 1..9000000000",
    )

    s.kv.Put(rpc_pb2.PutRequest(key=b"l/a", value=b"1", lease=asked), timeout=10)
    s.kv.Put(rpc_pb2.PutRequest(key=b"l/b", value=b"2", lease=asked), timeout=10)
    assert get(s, "l/a")[0].lease == asked
    ttl = s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=asked, keys=True), timeout=10)
    assert (ttl.ID, ttl.grantedTTL, sorted(ttl.keys)) == (asked, 60, [b"l/a", b"l/b"])
    assert 0 < ttl.TTL <= 60
    listed = s.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=10)
    assert {chosen.ID, asked} <= {x.ID for x in listed.leases}

    # ignore_lease keeps the key's lease; a put without one detaches it (as etcd).
    s.kv.Put(rpc_pb2.PutRequest(key=b"l/a", value=b"1b", ignore_lease=True), timeout=10)
    assert (get(s, "l/a")[0].value, get(s, "l/a")[0].lease) == (b"1b", asked)
    s.kv.Put(rpc_pb2.PutRequest(key=b"l/a", ignore_value=True, lease=chosen.ID), timeout=10)
    assert (get(s, "l/a")[0].value, get(s, "l/a")[0].lease) == (b"1b", chosen.ID)
    assert error(s.kv.Put, rpc_pb2.PutRequest(key=b"l/a", ignore_lease=True, lease=asked)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: lease is provided",
    )
    assert error(s.kv.Put, rpc_pb2.PutRequest(key=b"l/none", ignore_lease=True)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: key not found",
    )
    # A put in a transaction carries its lease too.
    put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"l/t", value=b"t", lease=asked))
    assert s.kv.Txn(rpc_pb2.TxnRequest(success=[put]), timeout=10).succeeded
    assert get(s, "l/t")[0].lease == asked

    revoked = s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=asked), timeout=10)
    assert revoked.header.revision > 1
    assert get(s, "l/b") == [] and get(s, "l/t") == [] and get(s, "l/a") != []
    not_found = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert error(s.lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=asked)) == not_found
    assert error(s.kv.Put, rpc_pb2.PutRequest(key=b"l/c", value=b"x", lease=asked)) == not_found
    gone = s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=asked), timeout=10)
    assert (asked, -1) == (gone.ID, gone.TTL)


def keepalive_stream(
    s: Stubs,
) -> tuple[queue.Queue[rpc_pb2.LeaseKeepAliveRequest | None], Iterator[Any]]:
    requests: queue.Queue[rpc_pb2.LeaseKeepAliveRequest | None] = queue.Queue()

    def feed() -> Iterator[rpc_pb2.LeaseKeepAliveRequest]:
        while (r := requests.get()) is not None:
            yield r

    return requests, s.lease.LeaseKeepAlive(feed(), timeout=60)


def test_one_keepalive_stream_renews_many_leases(stubs: list[Stubs]) -> None:
    s = stubs[2]
    ids = [grant(s, 30) for _ in range(40)]
    dead = grant(s, 30)
    s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=dead), timeout=10)
    requests, responses = keepalive_stream(s)
    try:
        for _ in range(2):
            for i in [*ids, dead]:
                requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=i))
            answers = {a.ID: a.TTL for a in (next(responses) for _ in range(len(ids) + 1))}
            assert answers == {**dict.fromkeys(ids, 30), dead: 0}  # etcd: TTL 0, gone
    finally:
        requests.put(None)
        responses.cancel()
    for i in ids:
        s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=i), timeout=10)


def test_a_lock_blocks_a_second_until_unlock_or_the_holders_revoke(stubs: list[Stubs]) -> None:
    s = stubs[0]
    a, b, c, d = (grant(s, 60) for _ in range(4))
    held = s.lock.Lock(v3lock_pb2.LockRequest(name=b"job", lease=a), timeout=20)
    assert held.key == f"job/{a:x}".encode()  # etcd's layout: NAME/<lease hex>
    token_a = get(s, held.key.decode())[0].create_revision

    second: Future[Any] = s.lock.Lock.future(v3lock_pb2.LockRequest(name=b"job", lease=b))
    wait_for("the second contender's key is in the queue", lambda: get(s, f"job/{b:x}"))
    assert not second.done(), "the second Lock returned while the first still holds"
    s.lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=10)
    got_b = second.result(timeout=30)
    assert got_b.key == f"job/{b:x}".encode()
    assert get(s, got_b.key.decode())[0].create_revision > token_a  # the fencing token grows

    third: Future[Any] = s.lock.Lock.future(v3lock_pb2.LockRequest(name=b"job", lease=c))
    wait_for("the third contender's key is in the queue", lambda: get(s, f"job/{c:x}"))
    # A waiter whose own lease is revoked stops waiting, with etcd's lease error.
    fourth: Future[Any] = s.lock.Lock.future(v3lock_pb2.LockRequest(name=b"job", lease=d))
    wait_for("the fourth contender's key is in the queue", lambda: get(s, f"job/{d:x}"))
    s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=d), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        fourth.result(timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not third.done()
    s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=b), timeout=10)  # the holder's lease
    assert third.result(timeout=30).key == f"job/{c:x}".encode()

    # A cancelled wait leaves the queue.
    e_lease = grant(s, 60)
    fifth: Future[Any] = s.lock.Lock.future(v3lock_pb2.LockRequest(name=b"job", lease=e_lease))
    wait_for("the fifth contender's key is in the queue", lambda: get(s, f"job/{e_lease:x}"))
    fifth.cancel()
    wait_for("a cancelled Lock's key is removed", lambda: not get(s, f"job/{e_lease:x}"))
    assert error(s.lock.Lock, v3lock_pb2.LockRequest(name=b"other", lease=d)) == (
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    )
    for lease_id in (a, c, e_lease):
        s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=10)


def test_an_election_campaign_proclaim_leader_observe_and_resign(stubs: list[Stubs]) -> None:
    s = stubs[1]
    a, b = grant(s, 60), grant(s, 60)
    assert error(s.election.Leader, E.LeaderRequest(name=b"svc")) == (
        grpc.StatusCode.UNKNOWN,
        "election: no leader",
    )
    won = s.election.Campaign(E.CampaignRequest(name=b"svc", lease=a, value=b"a1"), timeout=20)
    leader_a = won.leader
    assert (leader_a.name, leader_a.key, leader_a.lease) == (b"svc", f"svc/{a:x}".encode(), a)
    assert leader_a.rev == get(s, f"svc/{a:x}")[0].create_revision

    observed = s.election.Observe(E.LeaderRequest(name=b"svc"), timeout=60)
    assert next(observed).kv.value == b"a1"
    second: Future[Any] = s.election.Campaign.future(
        E.CampaignRequest(name=b"svc", lease=b, value=b"b1")
    )
    wait_for("the second candidate's key is in the queue", lambda: get(s, f"svc/{b:x}"))
    assert not second.done()

    s.election.Proclaim(E.ProclaimRequest(leader=leader_a, value=b"a2"), timeout=10)
    assert next(observed).kv.value == b"a2"
    now = s.election.Leader(E.LeaderRequest(name=b"svc"), timeout=10).kv
    assert (now.key, now.value, now.lease, now.version) == (leader_a.key, b"a2", a, 2)
    stale = E.LeaderKey(name=b"svc", key=leader_a.key, rev=leader_a.rev + 1000, lease=a)
    assert error(s.election.Proclaim, E.ProclaimRequest(leader=stale, value=b"x")) == (
        grpc.StatusCode.UNKNOWN,
        "election: not leader",
    )
    assert error(s.election.Proclaim, E.ProclaimRequest(value=b"x")) == (
        grpc.StatusCode.UNKNOWN,
        '"leader" field must be provided',
    )

    s.election.Resign(E.ResignRequest(leader=leader_a), timeout=10)
    leader_b = second.result(timeout=30).leader
    assert leader_b.key == f"svc/{b:x}".encode() and leader_b.rev > leader_a.rev
    assert next(observed).kv.value == b"b1"
    observed.cancel()
    # Resigning a leadership already gone is not an error (etcd's Resign).
    s.election.Resign(E.ResignRequest(leader=leader_a), timeout=10)
    for lease_id in (a, b):
        s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=10)


def test_long_lived_calls_are_bounded_per_connection(cluster: LocalCluster) -> None:
    """KeepAlive streams (as Observe streams and waiting Locks) hold a worker each: one
    connection gets HELD_CALLS_PER_PEER_MAX of them, the next is RESOURCE_EXHAUSTED, and
    another connection still gets its own."""
    from paxosd.etcd.coordination import HELD_CALLS_PER_PEER_MAX

    ep = cluster.etcd_endpoints()[0]

    def connection() -> Stubs:
        # Its own TCP connection (gRPC shares one between channels to a target by default).
        ch = grpc.insecure_channel(ep, options=[("grpc.use_local_subchannel_pool", 1)])
        stubs = _answering_on(ch)
        assert stubs is not None
        return stubs

    one = connection()
    lease_id = grant(one, 60)
    streams = []
    try:
        for _ in range(HELD_CALLS_PER_PEER_MAX):
            requests, responses = keepalive_stream(one)
            requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            assert next(responses).TTL == 60
            streams.append((requests, responses))
        requests, responses = keepalive_stream(one)
        requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
        with pytest.raises(grpc.RpcError) as e:
            next(responses)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = connection()
        requests, responses = keepalive_stream(other)
        requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
        assert next(responses).TTL == 60
        streams.append((requests, responses))
    finally:
        for requests, responses in streams:
            requests.put(None)
            responses.cancel()
    one.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=10)


def test_a_campaign_ends_when_its_lease_is_revoked(stubs: list[Stubs]) -> None:
    s = stubs[2]
    a, b = grant(s, 60), grant(s, 60)
    s.election.Campaign(E.CampaignRequest(name=b"ended", lease=a, value=b"a"), timeout=20)
    waiting: Future[Any] = s.election.Campaign.future(
        E.CampaignRequest(name=b"ended", lease=b, value=b"b")
    )
    wait_for("the second candidate's key is in the queue", lambda: get(s, f"ended/{b:x}"))
    s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=b), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        waiting.result(timeout=30)
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    )
    leader = s.election.Leader(E.LeaderRequest(name=b"ended"), timeout=10).kv
    assert (leader.value, leader.lease) == (b"a", a)
    s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=a), timeout=10)
    assert error(s.election.Leader, E.LeaderRequest(name=b"ended"))[1] == "election: no leader"


def test_a_python_lock_and_an_etcd_lock_on_one_name_exclude_each_other(
    cluster: LocalCluster, stubs: list[Stubs]
) -> None:
    """One key layout: a lock held with paxosd's recipe blocks etcd's Lock on that name."""
    s = stubs[0]
    lease_id = grant(s, 60)
    with cluster.client() as c, c.lock("mixed", ttl=30) as token:
        waiting: Future[Any] = s.lock.Lock.future(
            v3lock_pb2.LockRequest(name=b"mixed", lease=lease_id)
        )
        wait_for("the etcd contender's key is in the queue", lambda: get(s, f"mixed/{lease_id:x}"))
        assert not waiting.done(), "etcd's Lock returned while paxosd's recipe held the lock"
        assert get(s, token.key)[0].create_revision == token.revision
    got = waiting.result(timeout=30)
    assert got.key == f"mixed/{lease_id:x}".encode()
    s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=10)


def test_held_call_slots_come_back_when_calls_are_cancelled(cluster: LocalCluster) -> None:
    """Cancelled Observe streams and cancelled waiting Locks give their held-call slots back
    (else a client that cancels is refused for good once it has cancelled 16), and a
    cancelled Lock leaves no key behind."""
    from paxosd.etcd.coordination import HELD_CALLS_PER_PEER_MAX

    ep = cluster.etcd_endpoints()[0]
    ch = grpc.insecure_channel(ep, options=[("grpc.use_local_subchannel_pool", 1)])
    one = wait_for("a connection of its own", lambda: _answering_on(ch))
    holder, waiter = grant(one, 60), grant(one, 60)
    one.election.Campaign(E.CampaignRequest(name=b"slots", lease=holder, value=b"h"), timeout=20)
    held = one.lock.Lock(v3lock_pb2.LockRequest(name=b"slots-lock", lease=holder), timeout=20)
    for _ in range(2):  # twice the bound in all: the first round's slots must come back
        observes = []
        for _ in range(HELD_CALLS_PER_PEER_MAX // 2):
            stream = one.election.Observe(E.LeaderRequest(name=b"slots"), timeout=60)
            assert next(stream).kv.value == b"h"
            observes.append(stream)
        locks: list[Future[Any]] = []
        for _ in range(HELD_CALLS_PER_PEER_MAX - len(observes)):
            locks.append(
                one.lock.Lock.future(v3lock_pb2.LockRequest(name=b"slots-lock", lease=waiter))
            )
        wait_for("the waiter queued", lambda: get(one, f"slots-lock/{waiter:x}"))
        for stream in observes:
            stream.cancel()
        for f in locks:
            f.cancel()
        wait_for("cancelled Locks leave no key", lambda: not get(one, f"slots-lock/{waiter:x}"))

        def slots_free() -> bool:
            # Every slot of this connection is back: as many KeepAlive streams as the bound.
            streams = [keepalive_stream(one) for _ in range(HELD_CALLS_PER_PEER_MAX)]
            try:
                for requests, responses in streams:
                    requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=holder))
                    next(responses)
                return True
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                return False
            finally:
                for requests, responses in streams:
                    requests.put(None)
                    responses.cancel()

        wait_for("the held-call slots are back", slots_free)
    one.lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=10)
    for lease_id in (holder, waiter):
        one.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=10)
    ch.close()
