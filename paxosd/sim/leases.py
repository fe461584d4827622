"""Leases in the simulator: lease clients, a paused leader, and the lease checker.

The simulator owns time, so it can judge what the real daemon cannot see: when each keep-alive
was *sent* and when each lease's keys were first deleted on any replica. The checker holds the
lease machinery (paxosd/server/leases.py, the state machine's lease apply) to:

- no early expiry: a lease (and so its keys) is never revoked before TTL has passed since the
  send of its last acknowledged keep-alive (or of its grant), whichever leaders came and went;
- bounded extension: once keep-alives stop at time k, the lease is revoked by
  max(k, the end of the faults) + TTL + BOUND_ELECTION_TIMEOUTS x election timeout;
- stale leader: a leader paused past the TTL, replaced, then resumed, proposes expiries under
  its old ballot; they are also pushed into the new leader's log ("decided anyway"), and apply
  must refuse every one of them;
- log only: every replica that applied the revoke deleted the lease's keys at one revision.

The lease clients are apart from the linearizability clients (paxosd/sim/workload.py), on
connection ids from LEASE_CLIENT_CONN, so that checker's history is unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from paxosd.core.types import NodeId
from paxosd.server.leases import LeaseSettings
from paxosd.sim.checker import Violation
from paxosd.sim.planted import WallClockDeadline, keeper_class
from paxosd.statemachine.commands import (
    BadCommand,
    Command,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseKept,
    LeaseNotFound,
    LeaseRefused,
    LeaseRevoke,
    LeaseRevoked,
    Op,
    Put,
    Result,
    Written,
    decode_result,
    encode_command,
)

if TYPE_CHECKING:
    from paxosd.server.replies import Reply
    from paxosd.sim.world import SimNode, World

LEASE_CLIENT_CONN = 10_000
STALE_CONN = 20_000
TTL_S = 2
KEYS_PER_LEASE = 2
REQUEST_TIMEOUT_MS = 400
# The documented bound (README "Leases"): with no keep-alives after k, a lease is revoked by
# k + TTL + (3 + w) election timeouts once a leader can act, w the checkpoint wait in election
# timeouts (2 for TTL_S); one more for the simulated network.
BOUND_ELECTION_TIMEOUTS = 6


def bound_election_timeouts(ttl_s: int, election_timeout_ms: int) -> float:
    """The checked bound past TTL, in election timeouts, for a lease of ``ttl_s``: 3 + w + 1
    (w = LeaseSettings.checkpoint_after_ms_for, which grows with the TTL up to 8)."""
    wait_ms = LeaseSettings(election_timeout_ms).checkpoint_after_ms_for(ttl_s)
    return 4 + wait_ms / election_timeout_ms


@dataclass(slots=True)
class SimLease:
    """One lease client: grant, attach keys, keep alive every TTL/3 until ``stop_ms``."""

    index: int
    skew_ms: int
    stop_ms: int
    revoke_at_stop: bool
    lease_id: int = 0
    keys: list[str] = field(default_factory=list)
    stage: str = "grant"  # grant, attach, alive, stopping, done
    attached: int = 0
    seq: int = 0
    command: bytes = b""
    request: int = 0
    sent_ms: dict[int, int] = field(default_factory=dict)  # request id -> send time
    target: int = 1
    first_sent_ms: int = 0  # of the command in flight (its retries share its seq)
    last_ack_sent_ms: int = -1  # send time of the last acknowledged keep-alive (or grant)
    revoked_sent_ms: int | None = None  # the client's own revoke: no expiry to judge after it
    gone_ms: int | None = None
    gone_revisions: dict[int, int] = field(default_factory=dict)
    acks: int = 0

    @property
    def conn(self) -> int:
        return LEASE_CLIENT_CONN + self.index


@dataclass(slots=True)
class LeaseReport:
    leases: int = 0
    keepalives_acked: int = 0
    expired: int = 0
    revoked_by_client: int = 0
    stale_expiries_refused: int = 0
    pauses: int = 0
    # Leases whose grant was answered (from the session cache) only after they expired.
    expired_before_granted: int = 0
    # The longest wait from "keep-alives stopped" (or heal) + TTL to the revoke, in election
    # timeouts: what BOUND_ELECTION_TIMEOUTS must cover.
    worst_overrun_ets: float = 0.0


class LeaseDriver:
    """Lease clients and the paused-leader fault of one world, and their check."""

    def __init__(self, world: World, clients: int, window_ms: int, pause: bool) -> None:
        self.world = world
        # Its own stream: lease clients do not shift the other random choices of a seed.
        self.rng = random.Random(world.seed * 7919 + 17)
        self.election_timeout_ms = 600
        self.ttl_s = world.options.lease_ttl_s
        self.leases: list[SimLease] = []
        self.report = LeaseReport()
        self.stale: dict[int, Result | None] = {}  # request id -> answer (None: unanswered)
        self._stale_requests = 0
        self.heal_ms: int | None = None
        self.resumed_ms = 0  # the end of the paused-leader fault
        self.keeper_class = keeper_class(world.options.planted_bugs)
        self._seen: dict[int, set[int]] = {}  # node -> lease ids seen alive there
        # Every lease id any node had, and when a node first applied its revoke: a retried
        # grant answered from the session cache can tell a client its lease id after the
        # lease already expired everywhere, so no node sees it go after the client knows it.
        self._ids: dict[int, set[int]] = {}  # node -> every lease id alive there
        self._first_gone: dict[int, int] = {}  # lease id -> first revoke applied
        for i in range(clients):
            lease = SimLease(
                index=i,
                skew_ms=-self.rng.randint(0, self.ttl_s * 800),
                stop_ms=self.rng.randint(window_ms // 3, window_ms * 3),
                revoke_at_stop=self.rng.random() < 0.3,
            )
            self.leases.append(lease)
            world.at(self.rng.randint(0, 300), partial(self._send_next, lease))
        if pause:
            world.at(self.rng.randint(600, max(700, window_ms - 600)), self._pause_leader)

    # ------------------------------------------------------------------ the world's hooks

    def install(self, node: SimNode) -> None:
        """A node's runner was (re)built (start, restart): it replays from nothing, and the
        planted keeper bug, if any, goes in."""
        self._seen[int(node.id)] = set()
        self._ids[int(node.id)] = set()
        cls = self.keeper_class
        if cls is None:
            return
        old = node.runner.leases
        assert old is not None
        keeper = cls(old.settings, old.node_id)
        if isinstance(keeper, WallClockDeadline):
            keeper.client_skew_ms = self._skew_of
        node.runner.leases = keeper
        self.election_timeout_ms = old.settings.election_timeout_ms

    def _skew_of(self, conn_id: int) -> int:
        i = conn_id - LEASE_CLIENT_CONN
        return self.leases[i].skew_ms if 0 <= i < len(self.leases) else 0

    def applied(self, node: SimNode) -> None:
        """After every slot a node applies: which of our leases it no longer has."""
        sm = node.sm
        ids = set(sm.lease_ids())
        for lid in self._ids.get(int(node.id), set()) - ids:
            self._first_gone.setdefault(lid, self.world.now_ms)
        self._ids[int(node.id)] = ids
        seen = self._seen.setdefault(int(node.id), set())
        for lease in self.leases:
            lid = lease.lease_id
            if not lid:
                continue
            alive = sm.lease_ttl(lid) is not None
            if alive:
                seen.add(lid)
                continue
            if lid not in seen:
                continue
            seen.discard(lid)
            if lease.gone_ms is None:
                lease.gone_ms = self.world.now_ms
                self._judge_expiry(lease)
            revisions = set()
            for key in lease.keys:
                kv = sm.last_change(key)
                if kv is not None and kv.version == 0:
                    revisions.add(kv.mod_revision)
            if len(revisions) > 1:
                raise Violation(
                    "lease-log-only",
                    f"n{node.id} deleted lease {lid}'s keys at revisions {sorted(revisions)}",
                )
            if revisions:
                rev = revisions.pop()
                for other, prior in lease.gone_revisions.items():
                    if prior != rev:
                        raise Violation(
                            "lease-log-only",
                            f"lease {lid}'s keys deleted at revision {rev} on n{node.id} but "
                            f"{prior} on n{other}",
                        )
                lease.gone_revisions[int(node.id)] = rev

    def restored(self, node: SimNode) -> None:
        """A snapshot replaced the node's state: what it saw alive is what the snapshot has."""
        sm = node.sm
        self._ids[int(node.id)] = set(sm.lease_ids())
        self._seen[int(node.id)] = {
            lease.lease_id
            for lease in self.leases
            if lease.lease_id and sm.lease_ttl(lease.lease_id) is not None
        }

    def on_reply(self, node: NodeId, reply: Reply) -> None:
        f = self.world.network.faults
        if f.drop_probability and self.rng.random() < f.drop_probability:
            return
        delay = self.rng.randint(f.delay_ms_min, f.delay_ms_max)
        self.world.at(self.world.now_ms + delay, partial(self._reply, reply))

    # ------------------------------------------------------------------ the checks

    def _judge_expiry(self, lease: SimLease) -> None:
        """No early expiry: gone no sooner than TTL after the last acknowledged send."""
        assert lease.gone_ms is not None
        if lease.revoked_sent_ms is not None and lease.revoked_sent_ms <= lease.gone_ms:
            self.report.revoked_by_client += 1
            return
        self.report.expired += 1
        earliest = lease.last_ack_sent_ms + self.ttl_s * 1000
        if lease.gone_ms < earliest:
            raise Violation(
                "lease-early-expiry",
                f"lease {lease.lease_id} (TTL {self.ttl_s} s) was revoked at {lease.gone_ms} ms, "
                f"{earliest - lease.gone_ms} ms before TTL had passed since its last "
                f"acknowledged keep-alive (sent at {lease.last_ack_sent_ms} ms)",
            )

    def finish(self) -> LeaseReport:
        """After healing: stop every keep-alive, give the leases the documented bound to be
        revoked, and check it, and that every stale expiry was refused."""
        w = self.world
        stop = w.now_ms
        self.heal_ms = self.heal_ms if self.heal_ms is not None else stop
        for lease in self.leases:
            lease.stop_ms = min(lease.stop_ms, stop)
        et = self.election_timeout_ms
        bound_ets = bound_election_timeouts(self.ttl_s, et)
        bound_ms = self.ttl_s * 1000 + int(bound_ets * et)
        w.run_until(
            w.now_ms + bound_ms + 2 * REQUEST_TIMEOUT_MS,
            lambda: all(x.gone_ms is not None or x.stage == "grant" for x in self.leases),
        )
        for lease in self.leases:
            if not lease.lease_id or lease.revoked_sent_ms is not None:
                continue
            quiet_from = max(lease.last_ack_sent_ms, self.heal_ms, self.resumed_ms)
            gone = lease.gone_ms if lease.gone_ms is not None else w.now_ms
            overrun = (gone - quiet_from - self.ttl_s * 1000) / et
            self.report.worst_overrun_ets = max(self.report.worst_overrun_ets, overrun)
            if gone > quiet_from + bound_ms:
                state = "revoked" if lease.gone_ms is not None else "still alive"
                raise Violation(
                    "lease-bounded-expiry",
                    f"lease {lease.lease_id} (TTL {self.ttl_s} s), quiet since {quiet_from} ms, "
                    f"was {state} at {gone} ms: over TTL + "
                    f"{bound_ets:g} election timeouts",
                )
        for answer in self.stale.values():
            if isinstance(answer, LeaseRevoked):
                raise Violation(
                    "lease-stale-leader",
                    f"an expiry proposed by a deposed leader was applied: {answer}",
                )
            if isinstance(answer, LeaseRefused):
                self.report.stale_expiries_refused += 1
        self.report.leases = sum(1 for x in self.leases if x.lease_id)
        self.report.keepalives_acked = sum(x.acks for x in self.leases)
        return self.report

    # ------------------------------------------------------------------ the paused leader

    def _pause_leader(self) -> None:
        w = self.world
        leader = w.leader()
        if leader is None or not leader.up:
            return
        keeper = leader.runner.leases
        ballot = leader.replica.ballot
        pause_ms = self.ttl_s * 1000 + self.rng.randint(2, 4) * self.election_timeout_ms
        leader.paused = True
        self.report.pauses += 1
        w.log(f"n{leader.id} PAUSED (leader, ballot {ballot}) for {pause_ms} ms")
        lease_ids = [x.lease_id for x in self.leases if x.lease_id]
        ready = keeper is not None and keeper.ready
        w.at(w.now_ms + pause_ms, partial(self._resume, leader, ballot, lease_ids, ready))

    def _resume(self, node: SimNode, ballot: object, lease_ids: list[int], ready: bool) -> None:
        w = self.world
        node.paused = False
        self.resumed_ms = w.now_ms
        w.log(f"n{node.id} RESUMED")
        r, n = ballot.round, int(ballot.node)  # type: ignore[attr-defined]
        leader = w.leader()
        if not node.up or not ready or leader is None or leader is node:
            return
        if leader.sm.lease_ballot <= (r, n):
            return  # no newer leader took the leases over: its expiries are not stale
        # What it proposes on its own (its clock jumped past every lease) the acceptors
        # refuse; model the worst case too: those expiries decided anyway, in the new log,
        # after the newer takeover (the new leader has applied it).
        for lid in lease_ids:
            self._stale_requests += 1
            rid = STALE_CONN + self._stale_requests
            cmd = encode_command(
                Command(
                    client_id=f"paxosd-leases/{node.id}/{r}.{n}",
                    seq=1_000_000 + self._stale_requests,
                    site="paxosd",
                    op=LeaseExpire(lease_id=lid, ballot_round=r, ballot_node=n),
                )
            )
            w.checker.submitted.add(cmd)
            self.stale[rid] = None
            w.at(w.now_ms + 50, partial(self._push_stale, rid, cmd, 0))

    def _push_stale(self, rid: int, cmd: bytes, tries: int) -> None:
        w = self.world
        if self.stale.get(rid) is not None or tries > 20:
            return
        leader = w.leader()
        if leader is not None and not leader.paused:
            w._drive(leader, lambda: leader.runner.on_client_command(STALE_CONN, rid, cmd))
        w.at(w.now_ms + REQUEST_TIMEOUT_MS, partial(self._push_stale, rid, cmd, tries + 1))

    # ------------------------------------------------------------------ the clients

    def _op(self, lease: SimLease) -> Op | None:
        now = self.world.now_ms
        match lease.stage:
            case "grant":
                return LeaseGrant(ttl=self.ttl_s)
            case "attach":
                key = f"lease{lease.index}/k{lease.attached}"
                return Put(key=key, value=b"x", lease=lease.lease_id)
            case "alive":
                if now >= lease.stop_ms:
                    lease.stage = "stopping"
                    return self._op(lease)
                return LeaseKeepAlive(lease_id=lease.lease_id)
            case "stopping":
                if lease.revoke_at_stop:
                    return LeaseRevoke(lease_id=lease.lease_id)
                lease.stage = "done"
        return None

    def _send_next(self, lease: SimLease) -> None:
        op = self._op(lease)
        if op is None:
            return
        lease.seq += 1
        lease.command = encode_command(
            Command(client_id=f"lease{lease.index}", seq=lease.seq, site="s1", op=op)
        )
        self.world.checker.submitted.add(lease.command)
        lease.first_sent_ms = self.world.now_ms
        lease.target = self.rng.choice(list(self.world.nodes))
        self._attempt(lease)

    def _attempt(self, lease: SimLease) -> None:
        w = self.world
        lease.request += 1
        rid = lease.request
        lease.sent_ms[rid] = w.now_ms
        if isinstance(self._decoded_op(lease), LeaseRevoke) and lease.revoked_sent_ms is None:
            lease.revoked_sent_ms = w.now_ms
        f = w.network.faults
        if not (f.drop_probability and self.rng.random() < f.drop_probability):
            delay = self.rng.randint(f.delay_ms_min, f.delay_ms_max)
            w.at(w.now_ms + delay, partial(self._deliver, lease, lease.target, rid, lease.command))
        w.at(w.now_ms + REQUEST_TIMEOUT_MS, partial(self._timeout, lease, rid))

    def _decoded_op(self, lease: SimLease) -> Op | None:
        from paxosd.statemachine.commands import decode_command

        try:
            return decode_command(lease.command).op
        except BadCommand:
            return None

    def _deliver(self, lease: SimLease, nid: int, rid: int, cmd: bytes) -> None:
        w = self.world
        node = w.nodes[NodeId(nid)]
        if not node.up or node.paused:
            return
        w._drive(node, lambda: node.runner.on_client_command(lease.conn, rid, cmd, via_log=True))

    def _timeout(self, lease: SimLease, rid: int) -> None:
        if lease.request != rid or lease.stage == "done":
            return
        lease.target = self.rng.choice(list(self.world.nodes))
        self._attempt(lease)

    def _reply(self, reply: Reply) -> None:
        if reply.conn_id == STALE_CONN:
            if reply.status == "ok" and reply.request_id in self.stale:
                self.stale[reply.request_id] = decode_result(reply.result)
            return
        i = reply.conn_id - LEASE_CLIENT_CONN
        if not 0 <= i < len(self.leases):
            return
        lease = self.leases[i]
        if reply.request_id != lease.request:
            return  # an older attempt's answer
        w = self.world
        if reply.status != "ok":
            hint = reply.leader
            lease.target = (
                int(hint) if hint is not None else self.rng.choice(list(self.world.nodes))
            )
            w.at(w.now_ms + self.rng.randint(20, 80), partial(self._attempt, lease))
            return
        result = decode_result(reply.result)
        sent = lease.sent_ms[reply.request_id]
        lease.sent_ms.clear()
        lease.request += 1  # no later answer to this command counts
        match result:
            case LeaseGranted(id=lid):
                lease.lease_id = lid
                # A retried grant may have taken effect at its first attempt.
                lease.last_ack_sent_ms = lease.first_sent_ms
                if lid in self._first_gone and lease.gone_ms is None:
                    # Expired before this answer came (from the session cache): judge it.
                    lease.gone_ms = self._first_gone[lid]
                    self.report.expired_before_granted += 1
                    self._judge_expiry(lease)
                lease.stage = "attach"
            case Written():
                lease.keys.append(f"lease{lease.index}/k{lease.attached}")
                lease.attached += 1
                if lease.attached >= KEYS_PER_LEASE:
                    lease.stage = "alive"
            case LeaseKept():
                lease.acks += 1
                lease.last_ack_sent_ms = max(lease.last_ack_sent_ms, sent)
                if lease.gone_ms is not None and lease.gone_ms <= w.now_ms:
                    self._judge_expiry(lease)
            case LeaseRevoked() | LeaseNotFound():
                lease.stage = "done"
                return
            case _:
                lease.stage = "done"
                return
        interval = self.ttl_s * 1000 // 3 if lease.stage == "alive" else 0
        w.at(w.now_ms + interval, partial(self._send_next, lease))


__all__ = ["BOUND_ELECTION_TIMEOUTS", "LeaseDriver", "LeaseReport", "bound_election_timeouts"]
