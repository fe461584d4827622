"""Leases on real processes: a lease left alone expires and its keys go at one revision; a
lease kept alive survives the leader's SIGKILL; the client API and its typed errors."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from paxosd.client.errors import (
    BadRequestError,
    LeaseNotFoundError,
    LeaseRefusedError,
    NotFoundError,
)
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import StatusReply
from paxosd.statemachine.commands import Found, LeaseInfo, Written
from tests.waiting import wait_for

# The documented bound (README "Leases"): revoked within TTL + 5 election timeouts of the
# last keep-alive once a leader can act; the daemon's default election timeout is 600 ms.
ELECTION_TIMEOUT_S = 0.6
BOUND_ELECTION_TIMEOUTS = 5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(
        tmp_path_factory.mktemp("leases") / "c", 3, durability="unsafe-no-fsync"
    )
    c.up()
    try:
        yield c
    finally:
        c.down()


def test_grant_attach_ttl_list_revoke_and_typed_errors(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        # The daemon's minimum is 1.5 election timeouts (1 s at 600 ms); 0 is not a TTL.
        with pytest.raises(BadRequestError):
            c.lease_grant(0)
        granted = c.lease_grant(60)
        assert granted.ttl == 60 and granted.id > 0
        assert c.lease_grant(60, lease_id=granted.id + 1000).id == granted.id + 1000
        with pytest.raises(LeaseRefusedError, match="already exists"):
            c.lease_grant(60, lease_id=granted.id)
        written = c.put("lease-api/a", b"1", lease=granted.id)
        assert isinstance(written, Written)
        found = c.get("lease-api/a")
        assert isinstance(found, Found) and found.lease == granted.id
        info = c.lease_time_to_live(granted.id, keys=True)
        assert isinstance(info, LeaseInfo)
        assert info.granted_ttl == 60 and 0 < info.ttl <= 60 and info.keys == ("lease-api/a",)
        assert c.lease_keep_alive_once(granted.id) == 60
        assert {granted.id, granted.id + 1000} <= set(c.leases())
        with pytest.raises(LeaseNotFoundError):
            c.put("lease-api/b", b"1", lease=987654321)
        revoked = c.lease_revoke(granted.id)
        assert revoked.deleted == 1
        with pytest.raises(NotFoundError):
            c.get("lease-api/a")
        with pytest.raises(LeaseNotFoundError):
            c.lease_keep_alive_once(granted.id)
        with pytest.raises(LeaseNotFoundError):
            c.lease_revoke(granted.id)
        c.lease_revoke(granted.id + 1000)
        # The Lease object: refresh, remaining_ttl, keys, revoke.
        lease = c.lease(60)
        c.put("lease-api/c", b"1", lease=lease.id)
        assert lease.refresh() == 60
        assert 0 < lease.remaining_ttl <= 60 and lease.keys == ["lease-api/c"]
        lease.revoke()
        assert lease.remaining_ttl == -1
        with pytest.raises(NotFoundError):
            c.get("lease-api/c")


def test_a_lease_left_alone_expires_and_a_watch_sees_its_keys_deleted_at_one_revision(
    cluster: LocalCluster,
) -> None:
    ttl = 2
    with cluster.client() as c:
        granted = c.lease_grant(ttl)
        first = c.put("lease-expiry/a", b"1", lease=granted.id)
        c.put("lease-expiry/b", b"2", lease=granted.id)
        assert isinstance(first, Written)
        with c.watch_prefix("lease-expiry/", start_revision=first.revision) as watch:
            sent = time.monotonic()
            c.lease_keep_alive_once(granted.id)
            deletes: list[tuple[str, int]] = []

            def both_deleted() -> bool:
                batch = watch.next_batch(100)
                if batch is not None:
                    deletes.extend(
                        (e.kv.key, e.revision) for e in batch.events if e.type == "DELETE"
                    )
                return len(deletes) == 2

            wait_for("the watch saw both keys deleted", both_deleted)
            elapsed = time.monotonic() - sent
        # Both keys went in one revision (one decided revoke), and not before the TTL.
        assert [k for k, _ in deletes] == ["lease-expiry/a", "lease-expiry/b"]
        assert deletes[0][1] == deletes[1][1]
        assert elapsed >= ttl, f"gone {elapsed:.2f} s after the last keep-alive: early"
        for key in ("lease-expiry/a", "lease-expiry/b"):
            with pytest.raises(NotFoundError):
                c.get(key)
        with pytest.raises(LeaseNotFoundError):
            c.lease_time_to_live(granted.id)
        bound = ttl + BOUND_ELECTION_TIMEOUTS * ELECTION_TIMEOUT_S
        print(f"lease of {ttl} s gone {elapsed:.2f} s after its last keep-alive (bound {bound} s)")


def _leader(cluster: LocalCluster) -> int:
    with cluster.client() as c:

        def leader() -> int | None:
            for _, a in c.status_each():
                if isinstance(a, StatusReply) and a.role == "leader":
                    return int(a.node_id)
            return None

        return wait_for("a leader", leader)


def test_keep_alives_across_a_leader_kill_keep_the_lease(cluster: LocalCluster) -> None:
    ttl = 5
    old = _leader(cluster)
    with cluster.client() as c, c.lease(ttl) as lease:
        c.put("lease-failover/a", b"1", lease=lease.id)
        cluster.kill(old)
        try:
            new = wait_for("a new leader", lambda: (n := _leader(cluster)) != old and n)
            assert new != old
            # Seven keep-alives at TTL/3 after the kill: over two TTLs of time, all on the
            # new leader, and the key is still there.
            start = lease.keepalives
            wait_for("keep-alives after the kill", lambda: lease.keepalives >= start + 7)
            assert not lease.lost.is_set()
            found = c.get("lease-failover/a")
            assert isinstance(found, Found) and found.lease == lease.id
        finally:
            cluster.start(old)
    with cluster.client() as c, pytest.raises(NotFoundError):
        c.get("lease-failover/a")  # the context manager revoked it on exit


def test_leases_and_their_keys_survive_a_full_cluster_restart(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        granted = c.lease_grant(600)
        c.put("lease-restart/a", b"1", lease=granted.id)
    cluster.down()
    cluster.up()
    with cluster.client() as c:
        found = c.get("lease-restart/a")
        assert isinstance(found, Found) and found.lease == granted.id
        assert granted.id in c.leases()
        # The new leader took the lease over: keep-alives work again, and a revoke deletes.
        assert wait_for("a keep-alive after the restart", lambda: _kept(c, granted.id)) == 600
        assert c.lease_revoke(granted.id).deleted == 1
        with pytest.raises(NotFoundError):
            c.get("lease-restart/a")


def _kept(c: object, lease_id: int) -> int:
    from paxosd.client.client import Client
    from paxosd.client.errors import UnavailableError

    assert isinstance(c, Client)
    try:
        return c.lease_keep_alive_once(lease_id)
    except UnavailableError:
        return 0


def _checkpointed(cluster: LocalCluster, lease_ids: set[int]) -> set[int]:
    """The leases among ``lease_ids`` that a decided checkpoint in the log names."""
    from paxosd.statemachine.commands import BadCommand, LeaseCheckpoint, decode_command

    named: set[int] = set()
    with cluster.client() as c:
        slot = 1
        for _ in range(10_000):  # bounded: one page a round
            page = c.view_log(slot, limit=200)
            rows = [r for r in page.rows if r.kind == "decided" and r.slot >= slot]
            if not rows:
                return named
            for row in rows:
                for value in row.value:
                    try:
                        op = decode_command(value).op
                    except BadCommand:
                        continue  # a no-op or a member change
                    if isinstance(op, LeaseCheckpoint):
                        named |= {i for i, _ in op.leases} & lease_ids
            slot = rows[-1].slot + 1
    return named


def test_a_lease_kept_alive_every_third_of_its_ttl_writes_no_checkpoint(
    cluster: LocalCluster,
) -> None:
    """A lease of TTL 9 s is checkpointed after TTL/2 = 4.5 s without a keep-alive (more
    than 2 election timeouts): one kept alive every 3 s never is, one left alone is (the
    control: the log scan sees checkpoints)."""
    from paxosd.client.keepalives import KeepAlives

    ttl = 9
    with cluster.client() as c:
        kept, alone = c.lease_grant(ttl).id, c.lease_grant(ttl).id
    keeper = KeepAlives(cluster.endpoints(), cluster.client_key(), ttl, lanes=1)
    keeper.add(kept)
    with keeper:
        wait_for(
            "the lease left alone checkpointed",
            lambda: alone in _checkpointed(cluster, {alone}),
        )
        # Three keep-alives: past 6 s, longer than the old 2-election-timeout rule waited.
        wait_for("three keep-alives", lambda: keeper.stats.acked >= 3)
        assert _checkpointed(cluster, {kept}) == set()
    assert not keeper.lost and keeper.stats.failed == 0
