"""Locks in the simulator: lock clients with fenced writes, paused holders, and the lock checker.

The lock clients run the lock recipe of paxosd/client/recipes.py over the simulated cluster
(the simulator may not import the client, so the decision rule is written again here, in
``LockRule``): each grants a lease and keeps it alive every TTL/3, then repeatedly enters the
queue of one of ``LOCK_NAMES`` with the create-if-absent transaction of ``NAME/<lease hex>``
on its lease; holds when no key has a smaller create_revision; else waits for its
predecessor (the key with the largest create_revision below its own) to be deleted and
reads the queue again. The recipe watches the predecessor for a DELETE; here the waiter
polls it with a read, and takes "absent, or present with another create_revision" as that
DELETE (a key deleted and created again has a DELETE event in between), which is the same
decision. A holder does a few fenced writes the way README "Locks" tells a careful user to
(a Txn: ``create(lock key) == token``, then put ``RESOURCES[name]`` = "client token n"),
checking before each that its lease is not known lost (no keep-alive acknowledged for a
whole TTL, or the cluster says it is gone), then deletes its key. Some waiters give up
after a timeout and leave the queue. Some holders pause (a stopped process: no keep-alives,
no checks) for longer than the TTL and the lease grace, then carry on with one fenced write
as if they still held: expiry has handed the lock on, and only the compare stops them.

The checker, after healing (``check``, over the revision checker's replay of the log):

- fencing: in log order, the fenced writes whose compare held in the reference model carry
  non-decreasing tokens per resource, and one token is one client's; every fenced write a
  replica applied (seen after each slot on the first replica to apply it) is one whose
  compare held in the model: a failed compare never writes;
- mutual exclusion: the holding intervals of holders that were not paused (from the reply
  that told the client it holds to the send of its release, or to the moment its lease was
  lost by the keep-alive rule) never overlap in simulated time, per lock;
- figures (not verdicts): acquisitions, hand-offs by release and by expiry, fenced writes
  applied and refused, paused holders, waiters that timed out.

The lock clients are on connection ids from LOCK_CLIENT_CONN (two each: operations and
keep-alives), apart from the linearizability clients and the lease clients, with a random
stream of their own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Final

from paxosd.core.types import NodeId
from paxosd.sim.checker import Violation
from paxosd.statemachine.commands import (
    SCAN_LIMIT_MAX,
    Command,
    Compare,
    Delete,
    Found,
    Get,
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseKept,
    LeaseNotFound,
    NotFound,
    Op,
    Put,
    Result,
    Row,
    Rows,
    Scan,
    Txn,
    TxnResult,
    decode_result,
    encode_command,
    is_read,
)

if TYPE_CHECKING:
    from paxosd.server.replies import Reply
    from paxosd.sim.revisions import Replay
    from paxosd.sim.world import SimNode, World

LOCK_CLIENT_CONN: Final = 30_000
LOCK_NAMES: Final = ("locks/a", "locks/b")
RESOURCES: Final = {"locks/a": "fenced/a", "locks/b": "fenced/b"}
TTL_S: Final = 1
REQUEST_TIMEOUT_MS: Final = 400
POLL_MS: Final = (100, 250)
THINK_MS: Final = (150, 500)
# After a lost lease, before granting another (the cluster is likely unavailable).
LOST_BACKOFF_MS: Final = (300, 800)
# A holder's work before each fenced write and before its release.
WORK_MS: Final = (20, 150)
# Of the acquisitions of a client that pauses, the share where it pauses while holding.
PAUSE_SHARE: Final = 0.35
# Of the waits, the share with a short timeout (the waiter gives up and leaves the queue).
TIMEOUT_SHARE: Final = 0.5
# A pause lasts the TTL, the keeper's grace (one election timeout) and this much more.
PAUSE_EXTRA_MS: Final = (100, 500)
# The simulated nodes' election timeout (the lease keeper's grace is one).
ELECTION_TIMEOUT_MS: Final = 600
# Of the reads (the queue, the predecessor's key), the share sent through the log; the rest
# are read-index reads.
READ_VIA_LOG: Final = 0.1


class LockRule:
    """The recipe's decision rule (paxosd/client/recipes.py ``_wait_turn``/``_wait_deleted``),
    apart so that a planted bug can change it (paxosd/sim/planted.py)."""

    def predecessor(self, rows: tuple[Row, ...], revision: int) -> Row | None:
        """The key to wait for, None when ours (of create_revision ``revision``) is first."""
        ahead = [r for r in rows if r.create_revision < revision]
        return max(ahead, key=lambda r: r.create_revision) if ahead else None

    def holds_once_gone(self) -> bool:
        """Whether a waiter holds as soon as its predecessor is gone (False: read the queue
        again, as the recipe does: the predecessor may have been a waiter that gave up)."""
        return False


@dataclass(slots=True)
class Holding:
    """One holding interval of one lock, for the mutual exclusion check."""

    client: int
    name: str
    token: int
    start_ms: int
    end_ms: int | None = None
    paused: bool = False
    released: bool = False


@dataclass(slots=True)
class FencedWrite:
    """One fenced write as its client sent it: ``value`` names it (client, token, count), so
    what a replica applied can be traced back to the command and its place in the log."""

    client_id: str
    seq: int
    resource: str
    token: int
    value: bytes


@dataclass(slots=True)
class SimLocker:
    """One lock client. ``stage``: grant, enter, wait (polling the predecessor), rescan, hold
    (fenced writes), release, leave (a waiter that gave up), stopped."""

    index: int
    pauser: bool
    stage: str = "grant"
    lease_id: int = 0
    ttl_ms: int = TTL_S * 1000
    valid_until: int = 0  # the keep-alive rule: lost from here on unless an ack extends it
    lost: bool = True
    seq: int = 0
    request: int = 0
    command: bytes = b""
    op: Op | None = None
    target: int = 1
    ka_seq: int = 0
    ka_request: int = 0
    ka_sent_ms: dict[int, int] = field(default_factory=dict)
    ka_target: int = 1
    name: str = ""
    key: str = ""
    token: int = 0
    pred: Row | None = None
    deadline_ms: int | None = None
    writes_left: int = 0
    writes: int = 0
    holding: Holding | None = None
    paused_until: int | None = None
    grant_sent_ms: int = 0

    @property
    def conn(self) -> int:
        return LOCK_CLIENT_CONN + 2 * self.index

    @property
    def ka_conn(self) -> int:
        return LOCK_CLIENT_CONN + 2 * self.index + 1

    @property
    def client_id(self) -> str:
        return f"lock{self.index}"


@dataclass(slots=True)
class LockReport:
    """What the lock clients did, for the run report: a check that saw no hand-off or no
    refused write proved little."""

    acquisitions: int = 0
    handoffs_by_release: int = 0
    handoffs_by_expiry: int = 0
    fenced_writes_applied: int = 0
    fenced_writes_refused: int = 0
    paused_holders: int = 0
    waiter_timeouts: int = 0
    leases_lost: int = 0
    intervals_checked: int = 0


class LockDriver:
    """The lock clients of one world, what replicas applied to the fenced resources, and
    their check."""

    def __init__(self, world: World, clients: int) -> None:
        from paxosd.sim.planted import lock_rule_class

        self.world = world
        # Its own stream: lock clients do not shift the other random choices of a seed.
        self.rng = random.Random(world.seed * 104_729 + 31)
        self.rule = lock_rule_class(world.options.planted_bugs)()
        self.report = LockReport()
        self.running = True
        self.clients: list[SimLocker] = []
        self.holdings: list[Holding] = []
        self.last_holding: dict[str, Holding] = {}
        self.fenced: dict[bytes, FencedWrite] = {}
        self.lease_ids: set[int] = set()
        # What replicas applied to the resources: (slot, revision, resource, value), and the
        # slots already looked at (on the first replica to apply each).
        self.applied_writes: list[tuple[int, int, str, bytes]] = []
        self.unobserved_slots = 0
        self._observed: set[int] = set()
        nodes = list(world.nodes) or [NodeId(1)]
        for i in range(clients):
            c = SimLocker(index=i, pauser=i == 0 or self.rng.random() < 0.3)
            c.target = c.ka_target = int(self.rng.choice(nodes))
            self.clients.append(c)
            world.at(self.rng.randint(0, 300), partial(self._next, c))

    # ------------------------------------------------------------------ the world's hooks

    def applied(self, node: SimNode, slot: int) -> None:
        """After a replica applies ``slot``: the first to apply it records what the slot
        wrote to the fenced resources (from the replica's own events)."""
        if slot in self._observed:
            return
        self._observed.add(slot)
        sm = node.sm
        before = (1, 0) if slot == 1 else self.world.recorder.slot_states.get(slot - 1)
        if before is None:
            self.unobserved_slots += 1
            return
        rev_before = before[0]
        if not any(
            (kv := sm.last_change(res)) is not None and kv.mod_revision > rev_before
            for res in RESOURCES.values()
        ):
            return
        if rev_before + 1 < sm.compact_revision:
            self.unobserved_slots += 1
            return
        # The replica has applied nothing after this slot yet: these are the slot's events.
        for ev in sm.events_since(rev_before + 1, 1 << 20):
            if ev.kv.key in RESOURCES.values() and ev.type == "PUT":
                self.applied_writes.append((slot, ev.kv.mod_revision, ev.kv.key, ev.kv.value))

    def on_reply(self, reply: Reply) -> None:
        f = self.world.network.faults
        if f.drop_probability and self.rng.random() < f.drop_probability:
            return
        delay = self.rng.randint(f.delay_ms_min, f.delay_ms_max)
        self.world.at(self.world.now_ms + delay, partial(self._reply, reply))

    def stop(self) -> None:
        """No more lock traffic (the workload has stopped): every client stops where it is,
        as a process that exits; its lease expires, and with it its key."""
        self.running = False
        for c in self.clients:
            if c.holding is not None and c.holding.end_ms is None:
                c.holding.end_ms = min(self.world.now_ms, c.valid_until)
            c.holding = None
            c.stage = "stopped"

    def settle(self) -> None:
        """After ``stop``: wait (bounded by the leases' documented bound) until every lease
        the lock clients were granted is gone, so that their expiries (the deletes of the
        keys) are in the log before the checkers that replay it look."""
        from paxosd.sim.leases import BOUND_ELECTION_TIMEOUTS

        w = self.world
        bound = TTL_S * 1000 + (BOUND_ELECTION_TIMEOUTS + 1) * ELECTION_TIMEOUT_MS
        w.run_until(w.now_ms + bound, self._settled)

    def _settled(self) -> bool:
        leader = self.world.leader()
        if leader is None:
            return False
        sm = leader.sm
        return all(sm.lease_ttl(lid) is None for lid in self.lease_ids)

    # ------------------------------------------------------------------ the check

    def check(self, rp: Replay) -> LockReport:
        """Raise Violation ("lock-fencing", "lock-mutex") at the first broken rule; see the
        module doc."""
        self.stop()
        ok: list[tuple[int, FencedWrite]] = []
        held: set[bytes] = set()
        for w in self.fenced.values():
            first = rp.first.get((w.client_id, w.seq))
            if first is None:
                continue  # never decided
            pos, result = first
            if isinstance(result, TxnResult) and result.succeeded:
                ok.append((pos, w))
                held.add(w.value)
            else:
                self.report.fenced_writes_refused += 1
        ok.sort(key=lambda x: x[0])
        self.report.fenced_writes_applied = len(ok)
        highest: dict[str, FencedWrite] = {}
        owner: dict[int, str] = {}
        for _, w in ok:
            prior = highest.get(w.resource)
            if prior is not None and w.token < prior.token:
                raise Violation(
                    "lock-fencing",
                    f"{w.resource}: {w.client_id}'s fenced write with token {w.token} is in the "
                    f"log after {prior.client_id}'s with token {prior.token}",
                )
            highest[w.resource] = w
            if owner.setdefault(w.token, w.client_id) != w.client_id:
                raise Violation(
                    "lock-fencing",
                    f"{w.resource}: token {w.token} wrote for {owner[w.token]} and {w.client_id}",
                )
        for slot, revision, resource, value in sorted(self.applied_writes):
            if slot > rp.top_slot:
                continue  # past the replayed log
            if value not in held:
                bad = self.fenced.get(value)
                who = f"{bad.client_id}'s (token {bad.token})" if bad is not None else "a"
                raise Violation(
                    "lock-fencing",
                    f"{resource}: a replica applied {who} fenced write at revision {revision}, "
                    "whose compare failed in the log's order",
                )
        for name in LOCK_NAMES:
            kept = sorted(
                (h for h in self.holdings if h.name == name and not h.paused),
                key=lambda h: h.start_ms,
            )
            self.report.intervals_checked += len(kept)
            for a, b in zip(kept, kept[1:], strict=False):
                assert a.end_ms is not None
                if b.start_ms < a.end_ms:
                    raise Violation(
                        "lock-mutex",
                        f"{name}: lock{b.client} (token {b.token}) held from {b.start_ms} ms "
                        f"while lock{a.client} (token {a.token}) held until {a.end_ms} ms, "
                        "both keeping their leases alive",
                    )
        return self.report

    # ------------------------------------------------------------------ the clients

    def _next(self, c: SimLocker) -> None:
        """The client's next operation for its stage (one in flight at a time)."""
        if not self.running or c.stage == "stopped" or self._is_paused(c):
            return
        w = self.world
        now = w.now_ms
        if c.stage != "grant" and (c.lost or now >= c.valid_until):
            self._lose(c)
            return
        op: Op
        match c.stage:
            case "grant":
                c.grant_sent_ms = now
                op = LeaseGrant(ttl=TTL_S)
            case "enter":
                # Mostly the first lock, so that queues of three form (and waiters ahead
                # of a waiter give up).
                c.name = LOCK_NAMES[0] if self.rng.random() < 0.75 else LOCK_NAMES[1]
                c.key = f"{c.name}/{c.lease_id:x}"
                c.deadline_ms = (
                    now + self.rng.randint(100, 600) if self.rng.random() < TIMEOUT_SHARE else None
                )
                queue = Scan(prefix=c.name + "/", limit=SCAN_LIMIT_MAX)
                op = Txn(
                    compares=(Compare(key=c.key, target="create", op="=", number=0),),
                    success=(Put(key=c.key, value=b"", lease=c.lease_id), queue),
                    failure=(Get(key=c.key), queue),
                )
            case "wait":
                if c.deadline_ms is not None and now >= c.deadline_ms:
                    self.report.waiter_timeouts += 1
                    c.stage = "leave"
                    self._next(c)
                    return
                assert c.pred is not None
                op = Get(key=c.pred.key)
            case "rescan":
                op = Scan(prefix=c.name + "/", limit=SCAN_LIMIT_MAX)
            case "hold":
                if c.writes_left <= 0:
                    c.stage = "release"
                    self._next(c)
                    return
                op = self._fenced_write(c)
            case "release" | "leave":
                if c.stage == "release" and c.holding is not None:
                    c.holding.end_ms = now
                    c.holding.released = True
                    c.holding = None
                op = Txn(
                    compares=(Compare(key=c.key, target="create", op="=", number=c.token),),
                    success=(Delete(key=c.key),),
                )
            case _:
                return
        self._send(c, op)

    def _fenced_write(self, c: SimLocker) -> Txn:
        c.writes += 1
        resource = RESOURCES[c.name]
        value = f"{c.client_id} {c.token} {c.writes}".encode()
        self.fenced[value] = FencedWrite(c.client_id, c.seq + 1, resource, c.token, value)
        return Txn(
            compares=(Compare(key=c.key, target="create", op="=", number=c.token),),
            success=(Put(key=resource, value=value),),
        )

    def _send(self, c: SimLocker, op: Op) -> None:
        c.seq += 1
        c.op = op
        c.command = encode_command(Command(client_id=c.client_id, seq=c.seq, site="s1", op=op))
        self.world.checker.submitted.add(c.command)
        self._attempt(c)

    def _attempt(self, c: SimLocker) -> None:
        if not self.running or c.stage == "stopped":
            return
        w = self.world
        c.request += 1
        f = w.network.faults
        if not (f.drop_probability and self.rng.random() < f.drop_probability):
            delay = self.rng.randint(f.delay_ms_min, f.delay_ms_max)
            via_log = c.op is None or not is_read(c.op) or self.rng.random() < READ_VIA_LOG
            w.at(
                w.now_ms + delay,
                partial(self._deliver, c.conn, c.target, c.request, c.command, via_log),
            )
        w.at(w.now_ms + REQUEST_TIMEOUT_MS, partial(self._timeout, c, c.request))

    def _deliver(self, conn: int, nid: int, rid: int, cmd: bytes, via_log: bool) -> None:
        w = self.world
        node = w.nodes.get(NodeId(nid))
        if node is None or not node.up or node.paused:
            return
        w._drive(node, lambda: node.runner.on_client_command(conn, rid, cmd, via_log=via_log))

    def _timeout(self, c: SimLocker, rid: int) -> None:
        if c.request != rid or self._is_paused(c):
            return
        c.target = int(self.rng.choice(list(self.world.nodes)))
        self._attempt(c)

    def _is_paused(self, c: SimLocker) -> bool:
        return c.paused_until is not None and self.world.now_ms < c.paused_until

    # ------------------------------------------------------------------ keep-alives

    def _keepalive(self, c: SimLocker, lease_id: int) -> None:
        """Every TTL/3 while the lease is ours: check the keep-alive rule, then send one."""
        if not self.running or c.stage == "stopped" or c.lease_id != lease_id or c.lost:
            return
        w = self.world
        if self._is_paused(c):
            assert c.paused_until is not None
            w.at(c.paused_until, partial(self._keepalive, c, lease_id))
            return
        if w.now_ms >= c.valid_until:
            self._lose(c)
            return
        if c.ka_request in c.ka_sent_ms:
            # The last one went unanswered (lost, or its node is down): ask another node.
            c.ka_target = int(self.rng.choice(list(w.nodes)))
        self._send_keepalive(c, c.ka_target)
        w.at(w.now_ms + c.ttl_ms // 3, partial(self._keepalive, c, lease_id))

    def _send_keepalive(self, c: SimLocker, target: int) -> None:
        w = self.world
        c.ka_seq += 1
        c.ka_request += 1
        c.ka_sent_ms[c.ka_request] = w.now_ms
        if len(c.ka_sent_ms) > 16:
            del c.ka_sent_ms[min(c.ka_sent_ms)]
        cmd = encode_command(
            Command(
                client_id=f"{c.client_id}/ka",
                seq=c.ka_seq,
                site="s1",
                op=LeaseKeepAlive(lease_id=c.lease_id),
            )
        )
        f = w.network.faults
        if not (f.drop_probability and self.rng.random() < f.drop_probability):
            delay = self.rng.randint(f.delay_ms_min, f.delay_ms_max)
            w.at(
                w.now_ms + delay,
                partial(self._deliver, c.ka_conn, target, c.ka_request, cmd, True),
            )

    def _keepalive_reply(self, c: SimLocker, reply: Reply) -> None:
        sent = c.ka_sent_ms.pop(reply.request_id, None)
        if sent is None or c.lost or self._is_paused(c):
            return
        if reply.status != "ok":
            hint = reply.leader
            c.ka_target = (
                int(hint) if hint is not None else int(self.rng.choice(list(self.world.nodes)))
            )
            if reply.request_id == c.ka_request:
                self._send_keepalive(c, c.ka_target)
            return
        result = decode_result(reply.result)
        now = self.world.now_ms
        if isinstance(result, LeaseKept) and result.id == c.lease_id and result.ttl > 0:
            if now < c.valid_until:
                c.valid_until = max(c.valid_until, sent + c.ttl_ms)
            return
        if isinstance(result, LeaseKept | LeaseNotFound):
            self._lose(c)

    def _lose(self, c: SimLocker) -> None:
        """The lease is known lost (the cluster said so, or no keep-alive was acknowledged
        for a whole TTL): whatever the client held or waited for is gone. It starts over
        with a new lease (the old one takes its key with it)."""
        if c.stage in ("grant", "stopped"):
            return
        self.report.leases_lost += 1
        if c.holding is not None:
            c.holding.end_ms = min(self.world.now_ms, c.valid_until)
            c.holding = None
        c.lost = True
        c.stage = "grant"
        c.request += 1  # the answer to what is in flight no longer counts
        self.world.at(
            self.world.now_ms + self.rng.randint(*LOST_BACKOFF_MS), partial(self._next, c)
        )

    # ------------------------------------------------------------------ answers

    def _reply(self, reply: Reply) -> None:
        i, ka = divmod(reply.conn_id - LOCK_CLIENT_CONN, 2)
        if not 0 <= i < len(self.clients):
            return
        c = self.clients[i]
        if not self.running or c.stage == "stopped":
            return
        if ka:
            self._keepalive_reply(c, reply)
            return
        if reply.request_id != c.request or self._is_paused(c):
            return
        w = self.world
        if reply.status != "ok":
            hint = reply.leader
            c.target = int(hint) if hint is not None else int(self.rng.choice(list(w.nodes)))
            c.request += 1
            rid = c.request
            w.at(w.now_ms + self.rng.randint(20, 80), partial(self._retry, c, rid))
            return
        c.request += 1  # no later answer to this command counts
        self._answer(c, decode_result(reply.result))

    def _retry(self, c: SimLocker, rid: int) -> None:
        if c.request == rid and not self._is_paused(c):
            self._attempt(c)

    def _answer(self, c: SimLocker, result: Result) -> None:
        w = self.world
        now = w.now_ms
        if c.stage != "grant" and now >= c.valid_until:
            self._lose(c)
            return
        match c.stage, result:
            case "grant", LeaseGranted(id=lid, ttl=ttl):
                c.lease_id = lid
                self.lease_ids.add(lid)
                c.ttl_ms = ttl * 1000
                c.valid_until = c.grant_sent_ms + c.ttl_ms
                c.lost = False
                c.ka_sent_ms.clear()
                c.stage = "enter"
                # The first keep-alive at once: the grant may have waited for a leader.
                self._keepalive(c, lid)
            case "enter", TxnResult(succeeded=succeeded, responses=(first, Rows() as rows)):
                if succeeded:
                    c.token = result.revision
                elif isinstance(first, Found):
                    c.token = first.create_revision
                else:
                    self._lose(c)
                    return
                self._queue(c, rows)
                return
            case "enter", _:
                self._lose(c)  # the lease is gone (the put on it was refused)
                return
            case "wait", Found(create_revision=cr) if c.pred is not None and (
                cr == c.pred.create_revision
            ):
                w.at(now + self.rng.randint(*POLL_MS), partial(self._next, c))
                return
            case "wait", Found() | NotFound():
                # The predecessor's key was deleted (and maybe created again since).
                if self.rule.holds_once_gone():
                    self._hold(c)
                    return
                c.stage = "rescan"
            case "rescan", Rows() as rows:
                self._queue(c, rows)
                return
            case "hold", TxnResult(succeeded=True):
                c.writes_left -= 1
            case "hold", TxnResult(succeeded=False):
                # The compare failed: the key is gone, the lock with it.
                self._lose(c)
                return
            case "release" | "leave", TxnResult():
                c.stage = "enter"
                w.at(now + self.rng.randint(*THINK_MS), partial(self._next, c))
                return
            case _:
                self._lose(c)
                return
        w.at(now + self.rng.randint(*WORK_MS), partial(self._next, c))

    def _queue(self, c: SimLocker, rows: Rows) -> None:
        """The recipe's ``_wait_turn``: our key gone means the lock is lost; none older than
        ours means we hold; else wait for the predecessor."""
        mine = [r for r in rows.rows if r.key == c.key]
        if rows.more or not mine or mine[0].create_revision != c.token:
            self._lose(c)
            return
        pred = self.rule.predecessor(rows.rows, c.token)
        if pred is None:
            self._hold(c)
            return
        c.pred = pred
        c.stage = "wait"
        self.world.at(self.world.now_ms + self.rng.randint(*POLL_MS), partial(self._next, c))

    def _hold(self, c: SimLocker) -> None:
        w = self.world
        now = w.now_ms
        h = Holding(client=c.index, name=c.name, token=c.token, start_ms=now)
        prior = self.last_holding.get(c.name)
        if prior is not None:
            if prior.released:
                self.report.handoffs_by_release += 1
            else:
                self.report.handoffs_by_expiry += 1
        self.last_holding[c.name] = h
        self.holdings.append(h)
        self.report.acquisitions += 1
        c.holding = h
        c.stage = "hold"
        c.writes_left = self.rng.randint(1, 2)
        if c.pauser and self.rng.random() < PAUSE_SHARE:
            # Stopped between its check and its first write, past the TTL and the grace.
            h.paused = True
            self.report.paused_holders += 1
            pause = c.ttl_ms + ELECTION_TIMEOUT_MS + self.rng.randint(*PAUSE_EXTRA_MS)
            c.paused_until = now + pause
            w.log(f"lock{c.index} PAUSED holding {c.key} (token {c.token}) for {pause} ms")
            w.at(now + pause, partial(self._resume, c))
            return
        w.at(now + self.rng.randint(*WORK_MS), partial(self._next, c))

    def _resume(self, c: SimLocker) -> None:
        """The paused holder carries on with a fenced write, unaware of the pause."""
        c.paused_until = None
        if not self.running or c.stage != "hold":
            return
        self.world.log(f"lock{c.index} RESUMED, writes with token {c.token}")
        c.writes_left = 1
        self._send(c, self._fenced_write(c))


__all__ = ["LOCK_CLIENT_CONN", "LockDriver", "LockReport", "LockRule"]
