"""Leases in the state machine (grant, attach, revoke at one revision, expiry under a ballot,
takeover, checkpoints, snapshots) and the keeper's pure parts (minimum TTL, keep-alive rate)."""

from __future__ import annotations

import pytest

import paxosd.statemachine.machine as machine
from paxosd.server.leases import (
    CHECKPOINT_WAIT_ETS,
    KEEPALIVES_PER_SECOND_PER_CONN,
    LeaseKeeper,
    LeaseSettings,
    min_ttl_s,
)
from paxosd.statemachine.commands import (
    Command,
    Compare,
    Delete,
    Event,
    Full,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseInfo,
    LeaseKeepAlive,
    LeaseLeases,
    LeaseList,
    LeaseNotFound,
    LeaseRefused,
    LeaseRevoke,
    LeaseRevoked,
    LeaseTakenOver,
    LeaseTakeover,
    LeaseTimeToLive,
    Op,
    Put,
    Result,
    Txn,
    TxnResult,
    Written,
    decode_result,
    encode_command,
)
from paxosd.statemachine.machine import StateMachine


class Applier:
    """One command per slot, from one client."""

    def __init__(self, sm: StateMachine | None = None) -> None:
        self.sm = sm or StateMachine()
        self.seq = 0

    def __call__(self, op: Op) -> Result:
        self.seq += 1
        raw = encode_command(Command("c", self.seq, "s", op))
        (_, _, result) = self.sm.apply(self.sm.applied_through + 1, (raw,))[0]
        return decode_result(result)


def test_keys_of_a_revoked_lease_are_deleted_at_one_revision_with_delete_events() -> None:
    run = Applier()
    granted = run(LeaseGrant(ttl=10))
    assert isinstance(granted, LeaseGranted) and granted.id == 1 and granted.ttl == 10
    assert isinstance(run(Put("a", b"1", lease=1)), Written)
    assert isinstance(run(Put("b", b"2", lease=1)), Written)
    assert isinstance(run(Put("c", b"3")), Written)
    before = run.sm.revision
    revoked = run(LeaseRevoke(1))
    assert revoked == LeaseRevoked(id=1, deleted=2, revision=before + 1)
    events = run.sm.events_since(before + 1, 10)
    assert [(e.type, e.kv.key, e.revision) for e in events] == [
        ("DELETE", "a", before + 1),
        ("DELETE", "b", before + 1),
    ]
    assert all(isinstance(e, Event) and e.prev_kv and e.prev_kv.lease == 1 for e in events)
    assert run.sm.lease_ids() == []
    assert run(LeaseRevoke(1)) == LeaseNotFound(id=1, revision=before + 1)


def test_puts_attach_detach_and_refuse_an_unknown_lease() -> None:
    run = Applier()
    run(LeaseGrant(ttl=10, lease_id=5))
    run(LeaseGrant(ttl=10, lease_id=6))
    assert run(Put("k", b"1", lease=9)) == LeaseNotFound(id=9, revision=1)
    run(Put("k", b"1", lease=5))
    run(Put("k", b"2", lease=6))  # moves to lease 6
    assert run.sm.lease_keys(5) == [] and run.sm.lease_keys(6) == ["k"]
    run(Put("k", b"3"))  # a put without a lease detaches it, as in etcd
    assert run.sm.lease_keys(6) == []
    run(Put("k", b"4", lease=6))
    run(Delete("k"))
    assert run.sm.lease_keys(6) == []
    # Transactions: a compare on the lease, a put naming a missing lease refuses the whole.
    run(Put("t", b"1", lease=5))
    ok = run(Txn((Compare("t", "lease", "=", number=5),), (Put("u", b"1", lease=6),)))
    assert isinstance(ok, TxnResult) and ok.succeeded and run.sm.lease_keys(6) == ["u"]
    refused = run(Txn((), (Put("v", b"1", lease=6), Put("w", b"1", lease=77))))
    assert isinstance(refused, LeaseNotFound) and run.sm.lease_keys(6) == ["u"]


def test_grant_refusals_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Applier()
    low = run(LeaseGrant(ttl=1, min_ttl=2))
    assert isinstance(low, LeaseRefused) and "below the minimum 2 s" in low.reason
    run(LeaseGrant(ttl=3, lease_id=4))
    taken = run(LeaseGrant(ttl=3, lease_id=4))
    assert isinstance(taken, LeaseRefused) and "already exists" in taken.reason
    assert run(LeaseGrant(ttl=3)) == LeaseGranted(id=1, ttl=3, revision=1)  # the next free id
    monkeypatch.setattr(machine, "LEASE_KEYS_MAX", 1)
    run(Put("a", b"1", lease=4))
    assert run(Put("b", b"1", lease=4)) == Full(what="lease keys")
    assert isinstance(run(Put("a", b"2", lease=4)), Written)  # the same key again is fine
    monkeypatch.setattr(machine, "LEASES_MAX", 2)
    assert run(LeaseGrant(ttl=3)) == Full(what="leases")


def test_only_the_newest_takeover_ballot_expires_or_checkpoints() -> None:
    run = Applier()
    run(LeaseGrant(ttl=10, lease_id=1))
    run(LeaseGrant(ttl=10, lease_id=2))
    assert run(LeaseTakeover(1, 1)) == LeaseTakenOver(leases=2)
    assert run.sm.lease_remaining_ms(1) == 10_000  # checkpointed at its full TTL
    assert run(LeaseCheckpoint(1, 1, ((1, 4000), (99, 1)))) == LeaseTakenOver(leases=1)
    assert run.sm.lease_remaining_ms(1) == 4000
    assert run(LeaseTakeover(2, 3)) == LeaseTakenOver(leases=0)  # 2 was checkpointed already
    assert isinstance(run(LeaseTakeover(1, 1)), LeaseRefused)  # older: no effect
    stale = run(LeaseExpire(1, 1, 1))
    assert isinstance(stale, LeaseRefused) and "taken over under 2.3" in stale.reason
    assert isinstance(run(LeaseCheckpoint(1, 1, ((1, 0),))), LeaseRefused)
    assert run.sm.lease_ids() == [1, 2]
    assert isinstance(run(LeaseExpire(1, 2, 3)), LeaseRevoked)
    assert run.sm.lease_ids() == [2]
    assert run.sm.take_lease_changes()[-1] == 1  # the host's keeper sees what changed


def test_reads_without_the_leader_answer_from_the_log() -> None:
    run = Applier()
    run(LeaseGrant(ttl=10, lease_id=3))
    run(Put("x", b"1", lease=3))
    assert run.sm.query(LeaseLeases()) == LeaseList(ids=(3,), revision=2)
    info = run.sm.query(LeaseTimeToLive(3, keys=True))
    assert info == LeaseInfo(id=3, ttl=10, granted_ttl=10, keys=("x",), revision=2)
    assert isinstance(run.sm.query(LeaseKeepAlive(3)), LeaseRefused)  # only a leader renews
    assert run.sm.query(LeaseKeepAlive(4)) == LeaseNotFound(id=4, revision=2)


def test_leases_travel_in_snapshots_and_the_digest() -> None:
    run = Applier()
    run(LeaseGrant(ttl=10, lease_id=3))
    run(Put("x", b"1", lease=3))
    run(LeaseTakeover(4, 1))
    run(LeaseCheckpoint(4, 1, ((3, 2500),)))
    restored = StateMachine.restore(run.sm.snapshot())
    assert restored.digest() == run.sm.digest()
    assert restored.lease_keys(3) == ["x"] and restored.lease_remaining_ms(3) == 2500
    assert restored.lease_ballot == (4, 1)
    assert restored.take_lease_changes() == [3]  # a restored node anchors every lease anew
    again = Applier(restored)
    again.seq = run.seq
    assert isinstance(again(LeaseExpire(3, 4, 1)), LeaseRevoked)
    # The digest sees lease state: two stores that differ only by a lease differ.
    a, b = Applier(), Applier()
    a(LeaseGrant(ttl=10, lease_id=1))
    b(LeaseGrant(ttl=10, lease_id=1))
    assert a.sm.digest() == b.sm.digest()
    b.sm._leases.clear()
    assert a.sm.digest() != b.sm.digest()


def test_the_minimum_ttl_is_one_and_a_half_election_timeouts() -> None:
    assert min_ttl_s(600) == 1
    assert min_ttl_s(1000) == 2
    assert min_ttl_s(5000) == 8
    keeper = LeaseKeeper(LeaseSettings(election_timeout_ms=2000), node_id=1)
    grant = Command("c", 1, "s", LeaseGrant(ttl=1))
    assert keeper.grant_command(grant).op == LeaseGrant(ttl=1, min_ttl=3)
    # The daemon refuses before proposing, with the reason; apply refuses too (min_ttl).
    refused = keeper.request(None, 1, LeaseGrant(ttl=2))  # type: ignore[arg-type]
    assert isinstance(refused, LeaseRefused)
    assert refused.reason == (
        "lease TTL 2 s is below the minimum 3 s (1.5 election timeouts of 2000 ms)"
    )
    assert keeper.request(None, 1, LeaseGrant(ttl=3)) is None  # type: ignore[arg-type]


def test_keep_alives_per_connection_are_rate_bounded() -> None:
    keeper = LeaseKeeper(LeaseSettings(election_timeout_ms=600), node_id=1)
    allowed = sum(keeper._allow(7, 0) for _ in range(KEEPALIVES_PER_SECOND_PER_CONN + 10))
    assert allowed == KEEPALIVES_PER_SECOND_PER_CONN
    assert keeper._allow(8, 0)  # another connection has its own budget
    assert keeper._allow(7, 1000)  # and a second later there is room again


def test_the_checkpoint_wait_is_half_the_ttl_between_2_and_8_election_timeouts() -> None:
    s = LeaseSettings(election_timeout_ms=600)
    assert s.checkpoint_after_ms_for(1) == 1200  # 2 election timeouts at least
    assert s.checkpoint_after_ms_for(6) == 3000  # half the TTL
    # Capped, so the bound stays TTL + (3 + 8) election timeouts for any TTL; a lease kept
    # alive every TTL/3 up to 14 s is never checkpointed.
    assert s.checkpoint_after_ms_for(10) == 8 * 600 == CHECKPOINT_WAIT_ETS * 600
    assert s.checkpoint_after_ms_for(3600) == 4800
    assert all(s.checkpoint_after_ms_for(t) > t * 1000 // 3 for t in range(1, 15))
