"""The leader's lease keeper: etcd's lessor on our log.

Grant, revoke, expiry and checkpoints are log commands (paxosd/statemachine), so every replica
deletes a lease's keys at one revision. *Time* is only here, on the host's monotonic clock (the
runner's Clock), never in apply and never a deadline a client wrote:

- Keep-alives go to the leader and are not logged. One is answered only once the core has
  confirmed, by a read-index round, that this node still leads (so a deposed leader cannot
  promise time), and the lease's deadline becomes *the time the request arrived* + TTL.
- A new leader first gets a ``LeaseTakeover`` under its ballot decided and applied (so every
  older slot is applied before it answers anything); it proposes one once any lease exists,
  and answers "busy" to keep-alives until then. From then on only expiries and
  checkpoints naming its ballot apply: a deposed leader's expiry that is decided anyway is
  refused by apply.
- The takeover checkpoints every lease that had no checkpoint at its full TTL. A lease with a
  checkpoint of ``r`` ms has, on each node, the local time it saw that checkpoint applied (the
  *anchor*); a new leader sets its deadline to anchor + r and expires it an election timeout
  later (etcd's extension on promotion). A leader checkpoints a lease with no keep-alive for
  ``checkpoint_after_ms``; a keep-alive of a checkpointed lease first clears the checkpoint
  through the log (etcd's rule since 3.5). A checkpointed lease that stays quiet is
  checkpointed again whenever the leader's count has fallen ``recheckpoint_after_ms_for`` below
  the logged time (up to about one entry per election timeout of TTL per quiet spell, each
  entry carrying every lease due in that round).

Why re-checkpoint: a node that restarts, replays the log or installs a snapshot cannot know
how long ago a checkpoint was applied and anchors it at its replay. If the logged time were
never renewed, each restarted node handed leadership would count the same old checkpoint from
its own replay, and rolling restarts kept a quiet lease alive forever. Kept current, the logged
time is at most the step + one checkpoint round (an election timeout) old while a leader acts,
so each hand-over to such a node adds at most that much: README "Leases" states the bound.

Why this bounds the extension (etcd #9888: frequent elections renewed leases forever): a new
leader extends a lease from *its* election only if the lease had no checkpoint, and its
takeover checkpoints it, so the next leader counts from that checkpoint's anchor, not from its
own election. With no keep-alives after time k, a lease is revoked by
k + TTL + checkpoint_after + (failover) + grace + (one commit): README "Leases" states it as
TTL + 5 x election timeout when leaders come and go within an election timeout, plus up to
6 more for a lease whose TTL is long enough to wait longer for its checkpoint
(``checkpoint_after_ms_for``): TTL + 11 x election timeout at most.

Why no early expiry: every acknowledged keep-alive arrived before any later leader's ballot won
(read-index), so a new leader's takeover time (unchecked leases) or the anchor of a checkpoint
made after the keep-alive (checked leases: a keep-alive clears the checkpoint first) lies after
it, and the deadline counted from there is at least keep-alive + TTL.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

from paxosd.server.replies import Reply
from paxosd.statemachine.commands import (
    LEASE_CHECKPOINTS_MAX,
    BadCommand,
    Command,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseInfo,
    LeaseKeepAlive,
    LeaseKept,
    LeaseNotFound,
    LeaseRefused,
    LeaseTakeover,
    LeaseTimeToLive,
    Op,
    Result,
    decode_result,
    encode_command,
    encode_result,
)

if TYPE_CHECKING:
    from paxosd.server.runner import Runner


class LeaseView(Protocol):
    """What the keeper reads of the state machine (paxosd.statemachine.StateMachine)."""

    revision: int
    lease_ballot: tuple[int, int]

    def take_lease_changes(self) -> list[int]: ...
    def take_lease_revocations(self) -> list[int]: ...
    def lease_ids(self) -> list[int]: ...
    def lease_count(self) -> int: ...
    def lease_ttl(self, lease_id: int) -> int | None: ...
    def lease_remaining_ms(self, lease_id: int) -> int: ...
    def lease_keys(self, lease_id: int) -> list[str]: ...


def _sm(runner: Runner[Any]) -> LeaseView:
    return cast(LeaseView, runner.sm)


# The keeper's own proposals are client commands with this connection id (no real connection
# has it); their replies are taken out before the host sees them.
LEASE_CONN: Final = -2
LEASE_SITE: Final = "paxosd"
# Keep-alives per second one connection may send before it is answered "busy".
KEEPALIVES_PER_SECOND_PER_CONN: Final = 2000
CONNECTIONS_TRACKED_MAX: Final = 10_000
# Keep-alives waiting for their lease's checkpoint to be cleared through the log.
PARKED_MAX: Final = 10_000
EXPIRIES_IN_FLIGHT_MAX: Final = 256


# The longest quiet spell, in election timeouts, before a lease's remaining time is
# checkpointed through the log (LeaseSettings.checkpoint_after_ms_for).
CHECKPOINT_WAIT_ETS: Final = 8
# How far, in election timeouts, a checkpointed quiet lease's remaining time may fall below
# the logged one before it is checkpointed again (LeaseSettings.recheckpoint_after_ms_for).
RECHECKPOINT_ETS: Final = 1


def min_ttl_s(election_timeout_ms: int) -> int:
    """etcd's minimum TTL: 1.5 election timeouts (rounded up to whole seconds). Anything
    shorter could expire during an ordinary leader election."""
    return max(1, -(-3 * election_timeout_ms // 2000))


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """``election_timeout_ms`` is the longest election timeout (the config's max)."""

    election_timeout_ms: int

    @property
    def min_ttl_s(self) -> int:
        return min_ttl_s(self.election_timeout_ms)

    @property
    def grace_ms(self) -> int:
        """What a new leader adds to each lease (etcd: the election timeout)."""
        return self.election_timeout_ms

    @property
    def checkpoint_after_ms(self) -> int:
        """A lease with no keep-alive for this long gets its remaining time checkpointed
        (a lease of a long TTL waits longer: ``checkpoint_after_ms_for``)."""
        return 2 * self.election_timeout_ms

    def checkpoint_after_ms_for(self, ttl_s: int) -> int:
        """The quiet spell after which a lease of ``ttl_s`` is checkpointed: half its TTL,
        but at least 2 and at most ``CHECKPOINT_WAIT_ETS`` election timeouts. A client keeps a
        lease alive every TTL/3 (etcd's and ours), so a lease kept alive with a TTL up to
        3 x CHECKPOINT_WAIT_ETS election timeouts (14.4 s with the default 600 ms) is never
        checkpointed and writes nothing to the log; at 2 election timeouts, a lease of TTL
        10 s kept alive every 3.3 s was checkpointed and then cleared through the log on
        every keep-alive. The cap keeps the bound of the form TTL + k x election timeout
        (README "Leases": k = 3 + CHECKPOINT_WAIT_ETS at most), whatever the TTL."""
        et = self.election_timeout_ms
        return max(self.checkpoint_after_ms, min(ttl_s * 500, CHECKPOINT_WAIT_ETS * et))

    def recheckpoint_after_ms_for(self, ttl_s: int) -> int:
        """How far a checkpointed quiet lease's remaining time may fall below the logged one
        before the leader checkpoints it again. A node that restarts (or installs a snapshot)
        anchors every logged checkpoint at its replay, as if just applied; keeping the logged
        time this current bounds what each such node can add when it leads."""
        return RECHECKPOINT_ETS * self.election_timeout_ms

    @property
    def retry_ms(self) -> int:
        """A proposal not answered within this long is proposed again."""
        return 2 * self.election_timeout_ms


@dataclass(slots=True)
class _Parked:
    conn_id: int
    request_id: int
    receipt_ms: int


@dataclass(slots=True)
class _Bucket:
    at_ms: int
    tokens: float


@dataclass(slots=True)
class _Proposal:
    kind: str  # "takeover", "expire", "checkpoint", "reset"
    ids: tuple[int, ...]
    since_ms: int


@dataclass(slots=True)
class LeaseStats:
    keepalives: int = 0
    keepalives_parked: int = 0
    busy: int = 0
    expiries_proposed: int = 0
    checkpoints_proposed: int = 0
    takeovers: int = 0


class LeaseKeeper:
    """One per node (every node observes the log; only the leader keeps time for leases).

    The runner calls ``request`` for a lease op from a client, ``serve`` once a keep-alive or
    time-to-live read is confirmed, ``after_drain`` after every drain (all nodes), and
    ``tick`` on every tick (proposals go out from there)."""

    def __init__(self, settings: LeaseSettings, node_id: int) -> None:
        self.settings = settings
        self.node_id = node_id
        # Every node: when (this node's clock) it saw each lease's logged time change.
        self.anchor: dict[int, int] = {}
        # The leader's state, valid while ``ready`` under ``ballot``.
        self.ballot: tuple[int, int] | None = None
        self.ready = False
        self.deadline: dict[int, int] = {}  # TTL runs out (no grace)
        self.expire_at: dict[int, int] = {}  # when to propose the expiry
        self.last_ack: dict[int, int] = {}  # arrival of the last keep-alive acknowledged
        self._heap: list[tuple[int, int]] = []  # (expire_at, id), stale entries skipped
        self._parked: dict[int, list[_Parked]] = {}
        self._parked_count = 0
        self._proposals: dict[int, _Proposal] = {}
        self._expiring: dict[int, int] = {}  # lease -> token of its expiry in flight
        self._checkpointing: dict[int, int] = {}  # lease -> token of its checkpoint in flight
        self._resetting: dict[int, int] = {}  # lease -> token of its reset in flight
        # Leases whose checkpoint was given up unanswered: it may still be decided (it can
        # wait in the core's queue past retry_ms), so a keep-alive clears it through the log
        # first, ordered after it, as for a checkpoint in flight.
        self._unsure: set[int] = set()
        self._takeover_token: int | None = None
        self._tokens = itertools.count(1)
        self._seq = 0
        self._next_checkpoint_ms = 0
        self._next_takeover_ms = 0
        self._buckets: OrderedDict[int, _Bucket] = OrderedDict()
        self.stats = LeaseStats()

    # ------------------------------------------------------------------ client requests

    def request(self, runner: Runner[Any], conn_id: int, op: Op) -> Result | str | None:
        """A lease op arrived from a client. Returns a result to answer now, "busy", or None
        to let the runner carry on (a grant to the log, a keep-alive to read-index)."""
        if isinstance(op, LeaseGrant):
            minimum = self.settings.min_ttl_s
            if op.ttl < minimum:
                return LeaseRefused(
                    reason=f"lease TTL {op.ttl} s is below the minimum {minimum} s "
                    f"(1.5 election timeouts of {self.settings.election_timeout_ms} ms)"
                )
            return None
        if isinstance(op, LeaseKeepAlive) and not self._allow(conn_id, runner.clock.now_ms()):
            self.stats.busy += 1
            return "busy"
        return None

    def grant_command(self, cmd: Command) -> Command:
        """The grant as proposed: it carries this cluster's minimum TTL, so apply refuses a
        TTL below it even from a daemon that did not check."""
        assert isinstance(cmd.op, LeaseGrant)
        op = LeaseGrant(ttl=cmd.op.ttl, lease_id=cmd.op.lease_id, min_ttl=self.settings.min_ttl_s)
        return Command(client_id=cmd.client_id, seq=cmd.seq, site=cmd.site, op=op)

    def _allow(self, conn_id: int, now: int) -> bool:
        """A token bucket per connection: KEEPALIVES_PER_SECOND_PER_CONN, bursts of as many."""
        rate = KEEPALIVES_PER_SECOND_PER_CONN
        b = self._buckets.get(conn_id)
        if b is None:
            b = self._buckets[conn_id] = _Bucket(now, float(rate))
            while len(self._buckets) > CONNECTIONS_TRACKED_MAX:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(conn_id)
        b.tokens = min(float(rate), b.tokens + (now - b.at_ms) * rate / 1000)
        b.at_ms = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def serve(
        self,
        runner: Runner[Any],
        conn_id: int,
        request_id: int,
        op: LeaseKeepAlive | LeaseTimeToLive,
        receipt_ms: int,
    ) -> Result | str | None:
        """A keep-alive or time-to-live whose read-index round confirmed our leadership.
        Returns the answer, "busy" (not ready to answer for leases yet), or None (parked
        until the lease's checkpoint is cleared through the log)."""
        sm = _sm(runner)
        now = runner.clock.now_ms()
        if not runner.replica.is_leader:
            return "busy"
        ttl = sm.lease_ttl(op.lease_id)
        lease_id = op.lease_id
        if ttl is not None and not self.ready:
            return "busy"  # our takeover is on its way
        if ttl is None or self.expire_at.get(lease_id, now + 1) <= now:
            # Gone, or expired on our clock (its revoke is on its way).
            return LeaseNotFound(id=lease_id, revision=sm.revision)
        if isinstance(op, LeaseTimeToLive):
            remaining = max(0, self.expire_at.get(lease_id, now) - now) // 1000
            keys = tuple(sm.lease_keys(lease_id)) if op.keys else ()
            return LeaseInfo(lease_id, remaining, ttl, keys, sm.revision)
        self.stats.keepalives += 1
        if (
            sm.lease_remaining_ms(lease_id) == 0
            and lease_id not in self._checkpointing
            and lease_id not in self._unsure
        ):
            self._renew(lease_id, conn_id, receipt_ms, ttl)
            return LeaseKept(id=lease_id, ttl=ttl)
        # The log holds a checkpoint of this lease (or one is on its way): a new leader
        # would count from it, so it must be cleared through the log before we answer.
        if self._parked_count >= PARKED_MAX:
            return "busy"
        self._parked.setdefault(lease_id, []).append(_Parked(conn_id, request_id, receipt_ms))
        self._parked_count += 1
        self.stats.keepalives_parked += 1
        return None

    def _renew(self, lease_id: int, conn_id: int, receipt_ms: int, ttl: int) -> None:
        deadline = self.keep_alive_deadline(conn_id, receipt_ms, ttl * 1000)
        self.deadline[lease_id] = max(self.deadline.get(lease_id, 0), deadline)
        self.last_ack[lease_id] = max(self.last_ack.get(lease_id, 0), receipt_ms)
        self._set_expiry(lease_id, max(self.expire_at.get(lease_id, 0), deadline))

    def keep_alive_deadline(self, conn_id: int, receipt_ms: int, ttl_ms: int) -> int:
        """When a keep-alive arriving at ``receipt_ms`` (our monotonic clock) lets the lease
        run out: never anything the client wrote."""
        return receipt_ms + ttl_ms

    def _set_expiry(self, lease_id: int, at_ms: int) -> None:
        self.expire_at[lease_id] = at_ms
        heapq.heappush(self._heap, (at_ms, lease_id))

    # ------------------------------------------------------------------ after each drain

    def after_drain(self, runner: Runner[Any]) -> None:
        """Note the logged lease changes on this node's clock, take our proposals' answers
        out of the replies, and follow leadership changes."""
        sm = _sm(runner)
        now = runner.clock.now_ms()
        # Revocations first: a lease revoked and granted again under its id in one drain
        # is a new lease (its grant is among the changes).
        for lease_id in sm.take_lease_revocations():
            self._forget(lease_id)
        changed = sm.take_lease_changes()
        for lease_id in changed:
            self.anchor[lease_id] = now
        if len(self.anchor) > 2 * sm.lease_count() + 1000:  # revoked leases' anchors
            self.anchor = {i: t for i, t in self.anchor.items() if sm.lease_ttl(i) is not None}
        if runner.replies and any(r.conn_id == LEASE_CONN for r in runner.replies):
            mine = [r for r in runner.replies if r.conn_id == LEASE_CONN]
            runner.replies[:] = [r for r in runner.replies if r.conn_id != LEASE_CONN]
            for reply in mine:
                self._answered(runner, reply.request_id, reply.status, reply.result)
        replica = runner.replica
        if not replica.is_leader:
            if self.ballot is not None:
                self._step_down(runner)
            return
        ballot = (replica.ballot.round, int(replica.ballot.node))
        if self.ballot != ballot:
            self._step_down(runner)
            self.ballot = ballot
        if not self.ready:
            if sm.lease_ballot == ballot:
                self._take_over(sm, now)
            return
        if sm.lease_ballot != ballot:
            # A newer leader's takeover is applied: our expiries would be refused anyway.
            self._step_down(runner)
            return
        for lease_id in changed:
            ttl = sm.lease_ttl(lease_id)
            if ttl is not None and lease_id not in self.deadline:
                # Granted while we lead: its TTL runs from the grant's apply.
                self.deadline[lease_id] = now + ttl * 1000
                self._set_expiry(lease_id, now + ttl * 1000)

    def _take_over(self, sm: LeaseView, now: int) -> None:
        """Our takeover is applied: every lease's deadline counts from the log's view of it
        (its checkpoint, seen at its anchor), plus an election timeout (etcd's extension)."""
        self.ready = True
        self.stats.takeovers += 1
        for lease_id in sm.lease_ids():
            self._adopt(sm, lease_id, now)

    def _adopt(self, sm: LeaseView, lease_id: int, now: int) -> None:
        ttl = sm.lease_ttl(lease_id)
        assert ttl is not None
        remaining = sm.lease_remaining_ms(lease_id) or ttl * 1000
        deadline = self.anchor.get(lease_id, now) + remaining
        self.deadline[lease_id] = deadline
        self._set_expiry(lease_id, deadline + self.settings.grace_ms)

    def _step_down(self, runner: Runner[Any]) -> None:
        """Leadership lost (or a new term): forget the leader's clocks; parked keep-alives
        are redirected like any command this node can no longer order."""
        leader = runner.replica.leader_hint
        where = runner.address_of(leader)
        for parked in self._parked.values():
            for p in parked:
                runner.replies.append(Reply(p.conn_id, p.request_id, "not_leader", where, leader))
        self._parked.clear()
        self._parked_count = 0
        self.ballot = None
        self.ready = False
        self.deadline.clear()
        self.expire_at.clear()
        self.last_ack.clear()
        self._heap.clear()
        self._proposals.clear()
        self._expiring.clear()
        self._checkpointing.clear()
        self._resetting.clear()
        self._unsure.clear()
        self._takeover_token = None

    def _answered(self, runner: Runner[Any], token: int, status: str, raw: bytes) -> None:
        """One of our proposals was applied (``ok``) or could not be ordered here."""
        prop = self._proposals.pop(token, None)
        if prop is None:
            return
        ok = status == "ok"
        result: Result | None = None
        if ok:
            try:
                result = decode_result(raw)
            except BadCommand:
                ok = False
        refused = isinstance(result, LeaseRefused)
        for lease_id in prop.ids:
            for table in (self._expiring, self._checkpointing, self._resetting):
                if table.get(lease_id) == token:
                    del table[lease_id]
        if prop.kind == "takeover":
            self._takeover_token = None
        if prop.kind in ("checkpoint", "reset"):
            if ok and not refused:  # applied: ordered after any checkpoint given up before
                self._unsure.difference_update(prop.ids)
            elif prop.kind == "checkpoint":
                self._unsure.update(prop.ids)
        if prop.kind == "expire" and (not ok or refused):
            for lease_id in prop.ids:  # not applied: due again at once
                at = self.expire_at.get(lease_id)
                if at is not None:
                    heapq.heappush(self._heap, (at, lease_id))
        if prop.kind == "reset":
            for lease_id in prop.ids:
                parked = self._parked.pop(lease_id, [])
                self._parked_count -= len(parked)
                ttl = _sm(runner).lease_ttl(lease_id)
                if lease_id in self._expiring:
                    ttl = None  # its expiry is on its way: never promise it more time
                for p in parked:
                    if ok and not refused and ttl is not None:
                        self._renew(lease_id, p.conn_id, p.receipt_ms, ttl)
                        answer = encode_result(LeaseKept(id=lease_id, ttl=ttl))
                        runner.replies.append(Reply(p.conn_id, p.request_id, "ok", answer))
                    elif ttl is None:
                        gone = encode_result(LeaseNotFound(id=lease_id))
                        runner.replies.append(Reply(p.conn_id, p.request_id, "ok", gone))
                    else:
                        runner.replies.append(Reply(p.conn_id, p.request_id, "busy", b""))

    # ------------------------------------------------------------------ ticks: proposals

    def tick(self, runner: Runner[Any]) -> None:
        """On the leader: propose the takeover, due expiries, checkpoints and resets."""
        if self.ballot is None or not runner.replica.is_leader:
            return
        now = runner.clock.now_ms()
        retry = self.settings.retry_ms
        for token, prop in list(self._proposals.items()):
            if now - prop.since_ms > retry:  # lost: try again
                self._answered(runner, token, "lost", b"")
        if not self.ready:
            # Only once there are leases: a cluster without leases logs no takeover.
            if (
                self._takeover_token is None
                and now >= self._next_takeover_ms
                and _sm(runner).lease_count()
            ):
                self._next_takeover_ms = now + retry
                r, n = self.ballot
                self._takeover_token = self._propose(
                    runner, "takeover", (), LeaseTakeover(ballot_round=r, ballot_node=n)
                )
            return
        sm = _sm(runner)
        self._propose_expiries(runner, sm, now)
        if self._parked:
            todo = [i for i in self._parked if i not in self._resetting]
            for chunk in _chunks(todo, LEASE_CHECKPOINTS_MAX):
                self._checkpoint(runner, "reset", [(i, 0) for i in chunk])
        if now >= self._next_checkpoint_ms:
            self._next_checkpoint_ms = now + self.settings.election_timeout_ms
            self._propose_checkpoints(runner, sm, now)

    def _propose_expiries(self, runner: Runner[Any], sm: LeaseView, now: int) -> None:
        heap = self._heap
        r, n = self.ballot or (0, 0)
        renewing: list[tuple[int, int]] = []
        while heap and heap[0][0] <= now and len(self._expiring) < EXPIRIES_IN_FLIGHT_MAX:
            at, lease_id = heapq.heappop(heap)
            if self.expire_at.get(lease_id) != at:
                continue  # renewed since, or gone
            if sm.lease_ttl(lease_id) is None:
                self._forget(lease_id)
                continue
            if lease_id in self._expiring:
                continue
            if lease_id in self._parked:
                # A keep-alive that arrived in time waits for its checkpoint to clear: the
                # lease is being renewed, not expiring. Due again if the renewal fails.
                renewing.append((at, lease_id))
                continue
            token = self._propose(runner, "expire", (lease_id,), LeaseExpire(lease_id, r, n))
            self._expiring[lease_id] = token
            self.stats.expiries_proposed += 1
        for entry in renewing:
            heapq.heappush(heap, entry)

    def _forget(self, lease_id: int) -> None:
        self.deadline.pop(lease_id, None)
        self.expire_at.pop(lease_id, None)
        self.last_ack.pop(lease_id, None)
        self.anchor.pop(lease_id, None)
        self._unsure.discard(lease_id)

    def _propose_checkpoints(self, runner: Runner[Any], sm: LeaseView, now: int) -> None:
        """Checkpoint each lease without a checkpoint whose last keep-alive is older than
        ``checkpoint_after_ms_for`` its TTL, at the time its deadline leaves (no grace): a
        next leader counts from there instead of granting its full TTL again. A checkpointed
        lease is checkpointed again once our count is ``recheckpoint_after_ms_for`` below the
        logged time, so a node that counts it from its replay is never far behind (never
        early: the time logged is our deadline's, and a keep-alive parks behind it)."""
        due: list[tuple[int, int]] = []
        for lease_id, deadline in self.deadline.items():
            if lease_id in self._checkpointing or lease_id in self._resetting:
                continue
            if lease_id in self._parked or lease_id in self._expiring:
                continue
            ttl = sm.lease_ttl(lease_id)
            if ttl is None:
                continue
            left = max(1, deadline - now)
            logged = sm.lease_remaining_ms(lease_id)
            if logged != 0:
                if logged - left >= self.settings.recheckpoint_after_ms_for(ttl):
                    due.append((lease_id, left))
                continue
            after = self.settings.checkpoint_after_ms_for(ttl)
            if now - self.last_ack.get(lease_id, self.anchor.get(lease_id, now)) < after:
                continue
            due.append((lease_id, left))
        for chunk in _chunks(due, LEASE_CHECKPOINTS_MAX):
            self._checkpoint(runner, "checkpoint", chunk)

    def _checkpoint(self, runner: Runner[Any], kind: str, items: list[tuple[int, int]]) -> None:
        r, n = self.ballot or (0, 0)
        ids = tuple(i for i, _ in items)
        op = LeaseCheckpoint(ballot_round=r, ballot_node=n, leases=tuple(items))
        token = self._propose(runner, kind, ids, op)
        table = self._resetting if kind == "reset" else self._checkpointing
        for lease_id in ids:
            table[lease_id] = token
        self.stats.checkpoints_proposed += 1

    def _propose(self, runner: Runner[Any], kind: str, ids: tuple[int, ...], op: Op) -> int:
        """Hand one command to the core as the keeper's own client (one session per leader
        term, so a new leader's seqs never collide with a deposed one's)."""
        assert self.ballot is not None
        token = next(self._tokens)
        self._seq += 1
        r, n = self.ballot
        cmd = Command(
            client_id=f"paxosd-leases/{self.node_id}/{r}.{n}", seq=self._seq, site=LEASE_SITE, op=op
        )
        self._proposals[token] = _Proposal(kind, ids, runner.clock.now_ms())
        command = encode_command(cmd)
        runner.hooks.proposed(command)
        runner.on_client_command(LEASE_CONN, token, command, via_log=True)
        return token


T = TypeVar("T")


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


__all__ = [
    "LEASE_CONN",
    "LeaseKeeper",
    "LeaseSettings",
    "LeaseStats",
    "min_ttl_s",
]
