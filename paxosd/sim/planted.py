"""Known bugs, planted on purpose so tests can show that the simulator's checkers catch them.

Each bug is a subclass that overrides one small method of the real code, so that code holds
no trace of them: the daemon has no switch that could turn one on. Core bugs subclass
``Replica`` (``replica_class`` picks the class for a set of bug names: ``paxosctl simulate
--plant-bug``, the simulator's options, the scenario and round labs, and the tests' harness);
state machine bugs subclass ``StateMachine`` (``machine_class``), caught by the revision
checker (paxosd/sim/revisions.py); watch bugs subclass ``WatchHub`` (``hub_class``), caught
by the watch checker (paxosd/sim/watches.py); lock recipe bugs subclass the simulated lock
clients' ``LockRule`` (``lock_rule_class``), caught by the lock checker (paxosd/sim/locks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from paxosd.core.io import DurableState, ReadReady
from paxosd.core.messages import Accept, Promise
from paxosd.core.replica import Replica
from paxosd.core.types import (
    ZERO_BALLOT,
    AcceptedEntry,
    Ballot,
    DecidedEntry,
    Membership,
    NodeId,
    Value,
)
from paxosd.server.leases import LeaseKeeper, LeaseSettings, LeaseView
from paxosd.server.runner import Runner
from paxosd.server.watch import WatchHub, _Shared, _Watcher
from paxosd.sim.locks import LockRule
from paxosd.statemachine.commands import (
    Delete,
    Event,
    KeyValue,
    LeaseExpire,
    Put,
    Result,
    Txn,
    TxnOp,
    decode_command,
    encode_command,
)
from paxosd.statemachine.machine import StateMachine, _compare


class AmnesiaOnRestart(Replica):
    """The acceptor forgets its promise and votes when it restarts."""

    def _recover(self, durable: DurableState) -> None:
        super()._recover(
            DurableState(
                promised=ZERO_BALLOT,
                accepted={},
                decided=durable.decided,
                snapshot=durable.snapshot,
            )
        )


class IgnorePhase1Values(Replica):
    """A new leader ignores the values its promises report (no-ops everywhere)."""

    def _phase1_values(self, promises: Iterable[Promise]) -> dict[int, tuple[Ballot, Value, bool]]:
        return {}


class MinorityQuorum(Replica):
    """A value counts as chosen on one vote."""

    def _votes_needed(self, voters: frozenset[NodeId]) -> int:
        return 1


class ApplyBeforeDecided(Replica):
    """The replica applies a value as soon as it votes for it, not once it is decided."""

    def _hand_out_decided(self) -> None:
        return

    def _on_accept(self, src: NodeId, msg: Accept) -> None:
        super()._on_accept(src, msg)
        for e in msg.entries:
            if self._out.accepted.get(e.slot) == AcceptedEntry(e.slot, msg.ballot, e.value):
                self._out.to_apply.append(DecidedEntry(e.slot, e.value))


class StaleReads(Replica):
    """Any replica answers a read-index read from its own state at once."""

    def _on_read_index(self, token: int) -> None:
        self._out.reads.append(ReadReady(token, 0))


class Phase1IgnoresNewMembership(Replica):
    """A candidate asks only the membership it knows, not the ones its promises report."""

    def _reported_memberships(
        self, chosen: dict[int, tuple[Ballot, Value, bool]]
    ) -> list[Membership]:
        return []


class TxnAppliedHalf(StateMachine):
    """A transaction's branch applies its reads and only its first write; the rest of its
    writes are lost (every replica alike, so digests agree: only the model sees it)."""

    def apply(self, slot: int, value: tuple[bytes, ...]) -> list[tuple[str, int, bytes]]:
        return super().apply(slot, tuple(_first_write_only(raw) for raw in value))


def _first_write_only(raw: bytes) -> bytes:
    try:
        cmd = decode_command(raw)
    except ValueError:
        return raw  # not a client command (a membership change, or garbage)
    if not isinstance(cmd.op, Txn):
        return raw

    def cut(branch: tuple[TxnOp, ...]) -> tuple[TxnOp, ...]:
        writes = [op for op in branch if isinstance(op, Put | Delete)]
        return tuple(op for op in branch if not isinstance(op, Put | Delete) or op is writes[0])

    txn = cmd.op
    op = replace(txn, success=cut(txn.success), failure=cut(txn.failure))
    return encode_command(replace(cmd, op=op))


# ------------------------------------------------------------------ lease bugs
# Planted in the lease keeper (paxosd/server/leases.py) or the state machine's lease apply,
# for the simulator's lease checker (paxosd/sim/leases.py).


class WallClockDeadline(LeaseKeeper):
    """The leader expires a lease at a deadline the client wrote from its own wall clock
    (PySyncObj's TTLs): a client whose clock is behind gets its lease expired early.
    ``client_skew_ms`` maps a connection to its client's clock skew (the simulator sets it)."""

    client_skew_ms: Callable[[int], int] = staticmethod(lambda conn_id: 0)

    def keep_alive_deadline(self, conn_id: int, receipt_ms: int, ttl_ms: int) -> int:
        return receipt_ms + self.client_skew_ms(conn_id) + ttl_ms


class NewLeaderDoesNotExtend(LeaseKeeper):
    """A new leader counts each lease from when it first saw it granted, as if the keep-alives
    the old leader answered never happened (no extension on promotion)."""

    def __init__(self, settings: LeaseSettings, node_id: int) -> None:
        super().__init__(settings, node_id)
        self.first_seen: dict[int, int] = {}

    def after_drain(self, runner: Runner[Any]) -> None:
        now = runner.clock.now_ms()
        for lease_id in runner.sm.lease_ids():
            self.first_seen.setdefault(lease_id, now)
        super().after_drain(runner)

    def _adopt(self, sm: LeaseView, lease_id: int, now: int) -> None:
        ttl = sm.lease_ttl(lease_id)
        assert ttl is not None
        deadline = self.first_seen.get(lease_id, now) + ttl * 1000
        self.deadline[lease_id] = deadline
        self._set_expiry(lease_id, deadline)


class TakeoverRenewsFullTtl(LeaseKeeper):
    """etcd #9888: every new leader gives each lease its full TTL from its own election,
    ignoring the log's checkpoint, so frequent elections renew leases forever."""

    def _adopt(self, sm: LeaseView, lease_id: int, now: int) -> None:
        ttl = sm.lease_ttl(lease_id)
        assert ttl is not None
        self.deadline[lease_id] = now + ttl * 1000
        self._set_expiry(lease_id, now + ttl * 1000 + self.settings.grace_ms)


@dataclass(frozen=True, slots=True)
class _UncappedCheckpointWait(LeaseSettings):
    def checkpoint_after_ms_for(self, ttl_s: int) -> int:
        return max(self.checkpoint_after_ms, ttl_s * 500)


class CheckpointWaitUncapped(LeaseKeeper):
    """A quiet lease is checkpointed after half its TTL, however long: a leader that goes just
    before that leaves a long-TTL lease unchecked, and the next leader's takeover gives it its
    full TTL again, so the bound grows with the TTL instead of TTL + 11 election timeouts."""

    def __init__(self, settings: LeaseSettings, node_id: int) -> None:
        super().__init__(_UncappedCheckpointWait(settings.election_timeout_ms), node_id)


@dataclass(frozen=True, slots=True)
class _NoRecheckpoint(LeaseSettings):
    def recheckpoint_after_ms_for(self, ttl_s: int) -> int:
        return 1 << 62


class CheckpointNeverRenewed(LeaseKeeper):
    """A checkpointed quiet lease is never checkpointed again with a smaller remaining time:
    a node that restarts (or installs a snapshot) anchors the old checkpoint at its replay, so
    while such nodes keep being handed leadership the lease never runs out."""

    def __init__(self, settings: LeaseSettings, node_id: int) -> None:
        super().__init__(_NoRecheckpoint(settings.election_timeout_ms), node_id)


class StaleRevokeApplied(StateMachine):
    """Apply revokes a lease on an expiry from any ballot, a deposed leader's included."""

    def _lease_write(self, op: Any) -> Result:
        if isinstance(op, LeaseExpire):
            return self._revoke(op.lease_id)
        return super()._lease_write(op)


LEASE_KEEPER_BUGS: dict[str, type[LeaseKeeper]] = {
    "lease_wall_clock_deadline": WallClockDeadline,
    "lease_new_leader_does_not_extend": NewLeaderDoesNotExtend,
    "lease_takeover_renews_full_ttl": TakeoverRenewsFullTtl,
    "lease_checkpoint_wait_uncapped": CheckpointWaitUncapped,
    "lease_checkpoint_never_renewed": CheckpointNeverRenewed,
}


def keeper_class(bugs: frozenset[str]) -> type[LeaseKeeper] | None:
    """The planted lease keeper among ``bugs`` (None: the runner's own)."""
    found = [LEASE_KEEPER_BUGS[b] for b in sorted(bugs) if b in LEASE_KEEPER_BUGS]
    assert len(found) <= 1, "one planted lease keeper at a time"
    return found[0] if found else None


# ------------------------------------------------------------------ lock bugs
# For the simulator's lock checker (paxosd/sim/locks.py): one in the state machine's
# transaction apply, one in the lock clients' recipe.


class CompareSeesDeletedKey(StateMachine):
    """A transaction's compare on a deleted key sees the key's last version before the
    deletion (an index lookup that skips the tombstone): a fenced write whose lock key
    expired still passes ``create(key) == token``."""

    def _txn(self, slot: int, site: str, txn: Txn) -> Result:
        live = all(_compare(c, self._live(c.key)) for c in txn.compares)
        if not live and all(_compare(c, self._last_live(c.key)) for c in txn.compares):
            txn = replace(txn, compares=())
        return super()._txn(slot, site, txn)

    def _last_live(self, key: str) -> KeyValue | None:
        versions = self._index.get(key, [])
        return next((kv for kv in reversed(versions) if kv.version > 0), None)


class WaiterSkipsRescan(LockRule):
    """A waiter takes the lock as soon as its predecessor's key goes, without reading the
    queue again: when the predecessor was a waiter that gave up, the holder ahead of it
    still holds."""

    def holds_once_gone(self) -> bool:
        return True


LOCK_RULE_BUGS: dict[str, type[LockRule]] = {"lock_waiter_skips_rescan": WaiterSkipsRescan}


def lock_rule_class(bugs: frozenset[str]) -> type[LockRule]:
    """The simulated lock clients' decision rule, with the planted one among ``bugs``."""
    found = [LOCK_RULE_BUGS[b] for b in sorted(bugs) if b in LOCK_RULE_BUGS]
    assert len(found) <= 1, "one planted lock rule at a time"
    return found[0] if found else LockRule


PLANTED_MACHINES: dict[str, type[StateMachine]] = {
    "txn_applied_half": TxnAppliedHalf,
    "lease_stale_revoke_applied": StaleRevokeApplied,
    "lock_compare_sees_deleted_key": CompareSeesDeletedKey,
}


def machine_class(
    bugs: frozenset[str], base: type[StateMachine] = StateMachine
) -> type[StateMachine]:
    """``base`` with every state machine bug in ``bugs`` planted."""
    mine = sorted(b for b in bugs if b in PLANTED_MACHINES)
    if not mine:
        return base
    mixins = tuple(PLANTED_MACHINES[b] for b in mine)
    return type("Planted" + "".join(m.__name__ for m in mixins), (*mixins, base), {})


class HubSkipsEvent(WatchHub):
    """A batch of several revisions for one watcher loses its first event."""

    def select(self, w: _Watcher, events: Iterable[Event], shared: _Shared) -> list[Event]:
        out = super().select(w, events, shared)
        if len(out) >= 2 and out[0].revision != out[-1].revision:
            return out[1:]
        return out


class HubEarlyProgress(WatchHub):
    """Progress notifications go to watchers that are still catching up, with the revision
    the caught-up ones have reached (so before the events in between)."""

    def _pump_progress(self, now_ms: int) -> None:
        assert self.synced_rev is not None
        for w in list(self._watchers.values()):
            if not w.progress_notify or now_ms - w.last_sent_ms < self.limits.progress_interval_ms:
                continue
            if self.sink.backlog(w.conn_id) >= self.limits.backlog_frames_max:
                continue
            resp = self._response(w.watch_id, self.synced_rev, progress=True)
            if self._send(w.conn_id, [resp]):
                w.last_sent_ms = now_ms


PLANTED_HUBS: dict[str, type[WatchHub]] = {
    "hub_skips_event": HubSkipsEvent,
    "hub_early_progress": HubEarlyProgress,
}


def hub_class(bugs: frozenset[str], base: type[WatchHub] = WatchHub) -> type[WatchHub]:
    """``base`` with every watch hub bug in ``bugs`` planted."""
    mine = sorted(b for b in bugs if b in PLANTED_HUBS)
    if not mine:
        return base
    mixins = tuple(PLANTED_HUBS[b] for b in mine)
    return type("Planted" + "".join(m.__name__ for m in mixins), (*mixins, base), {})


PLANTED: dict[str, type[Replica]] = {
    "amnesia_on_restart": AmnesiaOnRestart,
    "ignore_phase1_values": IgnorePhase1Values,
    "minority_quorum": MinorityQuorum,
    "apply_before_decided": ApplyBeforeDecided,
    "stale_reads": StaleReads,
    "phase1_ignores_new_membership": Phase1IgnoresNewMembership,
}
PLANTED_BUGS = (
    frozenset(PLANTED)
    | frozenset(PLANTED_MACHINES)
    | frozenset(PLANTED_HUBS)
    | frozenset(LEASE_KEEPER_BUGS)
    | frozenset(LOCK_RULE_BUGS)
)


def replica_class(bugs: frozenset[str], base: type[Replica] = Replica) -> type[Replica]:
    """``base`` with every core bug in ``bugs`` planted (``base`` itself when there is none)."""
    unknown = bugs - PLANTED_BUGS
    assert not unknown, f"unknown planted bugs {sorted(unknown)}"
    core = sorted(b for b in bugs if b in PLANTED)
    if not core:
        return base
    mixins = tuple(PLANTED[b] for b in core)
    return type("Planted" + "".join(m.__name__ for m in mixins), (*mixins, base), {})
