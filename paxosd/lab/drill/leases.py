"""Leases under the drill's faults: lease workers, the watchers that see their keys go, and
the expiry checks.

Each lease worker (its own ``Client``) grants a lease of ``LEASE_TTL_S``, attaches one key to
it, keeps it alive every TTL/3 and records, on the drill's monotonic clock, the SEND time of
every keep-alive the leader acknowledged. At a seeded moment it lets the lease go: it revokes
it, or abandons it (sends nothing more); then it starts again with a new lease. One watcher
per node (pinned, re-created at last + 1 when its node fails; ``watchers.DrillWatcher``)
records when each DELETE of a lease key arrives; a key's deletion time is the earliest
arrival, so one killed or paused node does not delay it.

Every process of a local drill runs on one host, so the daemons' monotonic clocks and the
drill's are one clock, and the checks compare them directly:

- no early expiry: a key's DELETE never arrives before (the last acknowledged keep-alive's
  send, or the grant's send) + TTL, unless the client had sent a revoke by then. The leader
  counts the TTL from when a keep-alive *arrived*, which is after it was sent, and the DELETE
  is applied after the expiry is decided, so any earlier arrival is a lease cut short;
- bounded expiry: once nothing more is sent for a lease (its last keep-alive, acknowledged or
  not, or its grant), its key is gone by that + TTL + ``expiry_slack_ms`` (README "Leases":
  the checkpoint's wait, half the TTL but 2 to 8 election timeouts, + 3 election timeouts
  for a failover, the takeover and the new leader's extension: 5 election timeouts for a
  short TTL) + the time within that window when the cluster had no majority of live,
  connected voters (``no_majority``) or no leader (``leaderless``: from the start of the
  fault that deposed a leader until a new leader was seen; README's bound holds "once a
  leader stays long enough to act"): nothing expires without a leader, so that time is
  added, and the window is stretched by it until it no longer grows. When a majority comes
  back after a span without one in which nodes restarted (``recoveries``), a lease's clock
  starts again from there, and each hand-over of leadership to a node that restarted inside
  the window (``restarted_leaders``) adds ``HANDOVER_ELECTION_TIMEOUTS`` election timeouts
  (README "Leases": a restarted node counts a lease from when it replays its checkpoint,
  which the leader keeps at most about 2 election timeouts old);
- final state: after the drill, no key of any lease is left (every lease was revoked or let
  go, so every one must have expired).

The checks are pure functions of their inputs: the unit tests feed them made-up lives.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from paxosd.client.client import Client
from paxosd.client.errors import LeaseNotFoundError, PaxosdError
from paxosd.client.watch import WatchBatch
from paxosd.lab.drill.checks import Violation
from paxosd.lab.drill.faults import FaultEvent, RestartEvent
from paxosd.lab.drill.nodes import Nodes
from paxosd.lab.drill.watchers import DrillWatcher
from paxosd.server.leases import LeaseSettings

# A short TTL (above the cluster's minimum of 1.5 election timeouts, 1 s by default) so that
# a 60 s drill sees many leases expire.
LEASE_TTL_S: Final = 3
LEASE_WORKERS: Final = 3
# README "Leases": with no keep-alive after time k, a lease is revoked by k + TTL + the
# checkpoint's wait + 3 election timeouts (a failover, the takeover, the extension).
FAILOVER_ELECTION_TIMEOUTS: Final = 3
# README "Leases": each hand-over to a node that restarted may add this many election timeouts.
HANDOVER_ELECTION_TIMEOUTS: Final = 2
# How long a lease is kept alive before it is let go, in TTLs (seeded per lease).
HOLD_TTLS: Final = (0.5, 3.0)
REVOKE_FRACTION: Final = 0.5
# After an unacknowledged keep-alive, the next is sent this fraction of the period later.
RETRY_FRACTION: Final = 0.25
# A worker whose grant failed waits this long before it asks again.
GRANT_RETRY_S: Final = 0.2
# How long after the drill the checks wait past a lease's deadline for its DELETE.
DEADLINE_MARGIN_S: Final = 2.0
SHOWN_MAX: Final = 5


@dataclass(slots=True)
class LeaseLife:
    """One lease of one worker, on the drill's clock (ms)."""

    worker: int
    lease: int
    key: str
    grant_ms: int  # the grant was sent
    acks: list[int] = field(default_factory=list)  # sends of acknowledged keep-alives
    last_send_ms: int = 0  # the last thing sent that keeps it alive (a keep-alive or the grant)
    attached: bool | None = None  # the key's put: acknowledged, refused, or unknown (None)
    end: str = "held"  # "revoked", "abandoned", "lost" (the cluster said it is gone, or
    # no keep-alive was acknowledged for a whole TTL), "held" (never let go: a harness bug)
    end_ms: int | None = None
    revoke_ms: int | None = None  # the revoke was sent
    note: str = ""


class LeaseWorker:
    """One lease worker thread; see the module's doc. ``plant``: a test-only client-side bug
    ("fake_acks": after letting a lease go it records acknowledgements of keep-alives it
    never sent; "hidden_keepalive": an abandoned lease is kept alive secretly until
    ``hidden_stop`` is set)."""

    def __init__(
        self,
        i: int,
        nodes: Nodes,
        prefix: str,
        clock: Callable[[], int],
        seed: int,
        stop: threading.Event,
        *,
        run_id: str,
        ttl_s: int = LEASE_TTL_S,
        op_timeout_ms: int,
        plant: str = "",
        hidden_stop: threading.Event | None = None,
    ) -> None:
        self.i = i
        self.nodes = nodes
        self.prefix = prefix
        self.clock = clock
        self.rng = random.Random(seed)
        self.stop = stop
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.op_timeout_ms = op_timeout_ms
        self.plant = plant
        self.hidden_stop = hidden_stop or threading.Event()
        self.lives: list[LeaseLife] = []
        self.errors: list[str] = []
        self.grant_failures = 0
        self._hidden: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._run, name=f"drill-lease{i}", daemon=True)

    def _run(self) -> None:
        cid = f"{self.run_id}-lease{self.i}"
        c = self.nodes.client(timeout_ms=self.op_timeout_ms, client_id=cid)
        # Keep-alives go through a client of their own, a third of the TTL per call (as the
        # library's Lease does), so that neither a slow call nor a lost attempt uses up a TTL.
        keeper = self.nodes.client(timeout_ms=max(200, self.ttl_s * 1000 // 3))
        try:
            while not self.stop.is_set():
                self._one(c, keeper)
        except Exception as e:  # a worker bug must end the drill's claims, not hide
            self.errors.append(f"lease worker {self.i}: {type(e).__name__}: {e}")
        finally:
            c.close()
            keeper.close()

    def _one(self, c: Client, keeper: Client) -> None:
        sent = self.clock()
        try:
            granted = c.lease_grant(self.ttl_s)
        except PaxosdError:
            self.grant_failures += 1
            self.stop.wait(GRANT_RETRY_S)
            return
        life = LeaseLife(
            self.i, granted.id, f"{self.prefix}w{self.i}/{granted.id:x}", sent, last_send_ms=sent
        )
        self.lives.append(life)
        try:
            c.put(life.key, f"{self.run_id}/{self.i}".encode(), lease=granted.id)
            life.attached = True
        except LeaseNotFoundError:
            life.attached = False
        except PaxosdError:
            life.attached = None  # it may be there
        period_ms = self.ttl_s * 1000 / 3
        hold_until = self.clock() + self.rng.uniform(*HOLD_TTLS) * self.ttl_s * 1000
        revoke = self.rng.random() < REVOKE_FRACTION
        if self.plant == "hidden_keepalive":  # its first lease is abandoned, soon
            revoke, hold_until = False, self.clock() + period_ms
        acked = sent
        wait_ms = period_ms
        while life.end == "held" and not self.stop.is_set():
            if self.stop.wait(wait_ms / 1000) or self.clock() >= hold_until:
                break
            sent = self.clock()
            life.last_send_ms = sent
            try:
                ttl = keeper.lease_keep_alive_once(granted.id)
            except LeaseNotFoundError:
                life.end, life.end_ms, life.note = "lost", self.clock(), "the cluster says gone"
                break
            except PaxosdError:
                if self.clock() - acked >= self.ttl_s * 1000:
                    life.end, life.end_ms = "lost", self.clock()
                    life.note = "no keep-alive acknowledged for a TTL"
                    break
                wait_ms = period_ms * RETRY_FRACTION
                continue
            if ttl <= 0:
                life.end, life.end_ms, life.note = "lost", self.clock(), "answered TTL 0"
                break
            life.acks.append(sent)
            acked = sent
            wait_ms = period_ms
        if life.end != "held":
            return
        # The drill's end revokes what is still held.
        if revoke or (self.stop.is_set() and self.plant != "hidden_keepalive"):
            life.revoke_ms = self.clock()
            life.end, life.end_ms = "revoked", life.revoke_ms
            try:
                c.lease_revoke(granted.id)
            except LeaseNotFoundError:
                life.note = "revoke: already gone"
            except PaxosdError as e:
                life.note = f"revoke unanswered: {e}"
        else:
            life.end, life.end_ms = "abandoned", self.clock()
        if self.plant == "fake_acks":
            # Acknowledgements recorded for keep-alives that were never sent: the lease goes
            # a TTL after the real last one, "before" these plus a TTL.
            t = life.last_send_ms
            for _ in range(6):
                t += int(period_ms)
                life.acks.append(t)
            life.revoke_ms = None
        if self.plant == "hidden_keepalive" and life.end == "abandoned":
            self.plant = ""  # one such lease is enough
            h = threading.Thread(
                target=self._keep_secretly, args=(granted.id,), name="drill-lease-hidden"
            )
            h.daemon = True
            self._hidden.append(h)
            h.start()

    def _keep_secretly(self, lease_id: int) -> None:
        with self.nodes.client(timeout_ms=max(200, self.ttl_s * 1000 // 3)) as keeper:
            while not self.hidden_stop.wait(self.ttl_s / 3):
                try:
                    keeper.lease_keep_alive_once(lease_id)
                except LeaseNotFoundError:
                    return
                except PaxosdError:
                    continue


class TimedWatcher(DrillWatcher):
    """A ``DrillWatcher`` that also records when each event arrived (drill ms)."""

    def __init__(self, *args: Any, clock: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.arrivals: list[tuple[str, str, int, int]] = []  # (type, key, revision, ms)

    def _take(self, batch: WatchBatch) -> None:
        t = self.clock()
        before = len(self.stream.changes)
        super()._take(batch)
        for ch in self.stream.changes[before:]:
            self.arrivals.append((ch.type, ch.key, ch.revision, t))


def first_deletes(watchers: Iterable[TimedWatcher]) -> dict[str, int]:
    """Each key's earliest DELETE arrival over every watcher (a lease key is deleted once)."""
    out: dict[str, int] = {}
    for w in watchers:
        for kind, key, _rev, t in w.arrivals:
            if kind == "DELETE" and (key not in out or t < out[key]):
                out[key] = t
    return out


def no_majority(
    events: Sequence[FaultEvent],
    restarts: Sequence[RestartEvent],
    voters: int,
    end_ms: int,
) -> list[tuple[int, int]]:
    """The intervals (drill ms) in which fewer than a majority of ``voters`` were up and
    connected: a node is out from its kill or stop until it answered again (``ready``; the
    drill's end if it never did), while paused, and while on the cut side of a partition
    (the drill cuts off a minority, so the other side holds the majority)."""
    out_at: list[tuple[int, int, int]] = []  # (start, end, node)
    for r in restarts:
        out_at.append((r.down_ms, r.ready_ms if r.ready_ms is not None else end_ms, r.node))
    for ev in events:
        if ev.kind in ("pause", "partition"):
            for k in ev.nodes:
                out_at.append((ev.start_ms, ev.end_ms if ev.end_ms is not None else end_ms, k))
    points: list[tuple[int, int, int]] = []  # (ms, +1 out / -1 back, node)
    for s, e, k in out_at:
        if e > s:
            points += [(s, 1, k), (e, -1, k)]
    points.sort(key=lambda p: (p[0], -p[1]))
    majority = voters // 2 + 1
    count: dict[int, int] = {}
    spans: list[tuple[int, int]] = []
    opened: int | None = None
    for t, d, k in points:
        count[k] = count.get(k, 0) + d
        up = voters - sum(1 for v in count.values() if v > 0)
        if up < majority and opened is None:
            opened = t
        elif up >= majority and opened is not None:
            if t > opened:
                spans.append((opened, t))
            opened = None
    if opened is not None:
        spans.append((opened, max(opened, end_ms)))
    return spans


def leaderless(
    events: Sequence[FaultEvent], changes: Sequence[tuple[int, tuple[int, int], int]]
) -> list[tuple[int, int]]:
    """The spans (drill ms) in which a leader change was under way: for each leader first
    seen after the initial one (``LeaderWatch.changes``), from the start of the fault in
    progress or last begun then, to that moment (a change with no fault before it counts
    from the previous change)."""
    ordered = sorted(events, key=lambda ev: ev.start_ms)
    starts = [ev.start_ms for ev in ordered]
    out: list[tuple[int, int]] = []
    for (before, _, _), (t, _, _) in zip(changes, changes[1:], strict=False):
        i = bisect.bisect_right(starts, t) - 1
        s = ordered[i].start_ms if i >= 0 else before
        if t > s:
            out.append((s, t))
    return out


def union(*groups: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans of every group merged, sorted and disjoint (time is counted once)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(x for g in groups for x in g):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def recoveries(
    no_majority_spans: Sequence[tuple[int, int]], restarts: Sequence[RestartEvent]
) -> list[tuple[int, int]]:
    """The spans without a majority in which a node restarted: when the majority comes back,
    the new leader may count every lease from its own replay (README "Leases")."""
    return [
        (s, e)
        for s, e in no_majority_spans
        if any(r.down_ms <= e and r.restart_ms >= s for r in restarts)
    ]


def restarted_leaders(
    changes: Sequence[tuple[int, tuple[int, int], int]], restarts: Sequence[RestartEvent]
) -> list[tuple[int, int]]:
    """(when it went down, when it was first seen leading) for each leader that restarted
    before it took over: it counts a lease from when it replayed the lease's checkpoint while
    it caught up (README "Leases")."""
    out: list[tuple[int, int]] = []
    for t, _, leader in changes:
        downs = [r.down_ms for r in restarts if r.node == leader and r.restart_ms <= t]
        if downs:
            out.append((max(downs), t))
    return out


def _overlap(spans: Sequence[tuple[int, int]], lo: int, hi: int) -> int:
    return sum(max(0, min(e, hi) - max(s, lo)) for s, e in spans)


def expiry_slack_ms(ttl_ms: int, election_ms: int) -> int:
    """What README "Leases" allows past the TTL: the server's own checkpoint wait for this
    TTL (half the TTL, between 2 and 8 election timeouts) + 3 election timeouts."""
    wait = LeaseSettings(election_ms).checkpoint_after_ms_for(ttl_ms // 1000)
    return wait + FAILOVER_ELECTION_TIMEOUTS * election_ms


def deadline_ms(
    life: LeaseLife,
    ttl_ms: int,
    election_ms: int,
    spans: Sequence[tuple[int, int]],
    restarted: Sequence[tuple[int, int]] = (),
    handovers: Sequence[tuple[int, int]] = (),
) -> tuple[int, int]:
    """(the time its key must be gone by, the allowance in it past README's bound): the
    window from the last send is stretched by the time without a majority or a leader inside
    it (``spans``) until it stops growing; a span of ``restarted`` (``recoveries``) that
    ends inside the window starts the clock again at its end; each of ``handovers``
    (``restarted_leaders``) inside the window adds HANDOVER_ELECTION_TIMEOUTS."""
    start = life.last_send_ms
    slack = ttl_ms + expiry_slack_ms(ttl_ms, election_ms)
    base = start + slack
    must = base
    for _ in range(100):
        anchor = start
        for _s, e in restarted:
            # It must end while the key may still be there (a span without a majority that
            # begins inside the window ends inside it too, as that time is added to it).
            if start < e <= must:
                anchor = max(anchor, e)
        # A restart long before the lease's last send had caught up by then.
        extra = sum(
            HANDOVER_ELECTION_TIMEOUTS * election_ms
            for s, e in handovers
            if start < e <= must and s >= start - slack
        )
        grown = max(must, anchor + slack + _overlap(spans, anchor, must) + extra)
        if grown == must:
            break
        must = grown
    return must, must - base


def _limited(kind: str, problems: list[str]) -> list[Violation]:
    out = [Violation(kind, p) for p in problems[:SHOWN_MAX]]
    if len(problems) > SHOWN_MAX:
        out.append(Violation(kind, f"... {len(problems)} in all"))
    return out


def check_leases(
    lives: Sequence[LeaseLife],
    deletes: dict[str, int],
    remaining: Iterable[str],
    *,
    ttl_ms: int,
    election_ms: int,
    spans: Sequence[tuple[int, int]],
    watched_until_ms: int,
    events: Sequence[FaultEvent] = (),
    restarted: Sequence[tuple[int, int]] = (),
    handovers: Sequence[tuple[int, int]] = (),
) -> tuple[list[Violation], dict[str, Any]]:
    """The three checks of the module's doc. ``deletes``: each key's first DELETE arrival;
    ``remaining``: the lease keys in the store after the drill; ``watched_until_ms``: when
    the watchers stopped (a deadline after it cannot be judged by arrival); ``events``: the
    faults, named in a late expiry's message (the ones that overlap its window)."""

    def faults_in(lo: int, hi: int) -> str:
        kinds = [
            ev.kind for ev in events if ev.start_ms <= hi and (ev.end_ms is None or ev.end_ms >= lo)
        ]
        return "; faults in that window: " + (", ".join(kinds) or "none")

    slack = expiry_slack_ms(ttl_ms, election_ms)
    early: list[str] = []
    late: list[str] = []
    never: list[str] = []
    left = set(remaining)
    stays: list[str] = []
    worst_overrun: float | None = None
    worst_net: float | None = None
    min_margin: int | None = None
    after_stop: list[int] = []
    acks_after_delete = 0
    unjudged = 0
    for life in lives:
        d = deletes.get(life.key)
        who = f"lease {life.lease:x} of worker {life.worker} ({life.end})"
        if d is not None:
            before = [a for a in life.acks if a < d]
            acks_after_delete += len(life.acks) - len(before)
            alive_from = max([life.grant_ms, *before])
            revoked = life.revoke_ms is not None and d >= life.revoke_ms
            if not revoked:
                margin = d - (alive_from + ttl_ms)
                min_margin = margin if min_margin is None else min(min_margin, margin)
                if margin < 0:
                    early.append(
                        f"{who}: its key's DELETE arrived at {d} ms, {-margin} ms before the "
                        f"last acknowledged keep-alive (sent at {alive_from} ms) + TTL"
                    )
        if life.end == "held":
            continue  # never let go: reported as a harness error by the drill
        must, allowance = deadline_ms(life, ttl_ms, election_ms, spans, restarted, handovers)
        if any(
            ev.kind == "reconfig" and life.last_send_ms - ttl_ms <= ev.start_ms <= must
            for ev in events
        ):
            # A membership change near the window: a new voter still catching up (or a leader
            # that just joined) holds back the expiry's commit for as long as it catches up,
            # which README's bound ("plus one commit") does not put a number on. The lease is
            # still judged for early expiry and for being gone at the end.
            unjudged += 1
            if life.key in left:
                stays.append(f"{who}: its key {life.key} is still in the store after the drill")
            continue
        if d is not None:
            after_stop.append(d - life.last_send_ms)
            over = (d - life.last_send_ms - ttl_ms) / election_ms
            worst_overrun = over if worst_overrun is None else max(worst_overrun, over)
            net = (d - life.last_send_ms - ttl_ms - allowance) / election_ms
            worst_net = net if worst_net is None else max(worst_net, net)
            if d > must:
                late.append(
                    f"{who}: nothing sent after {life.last_send_ms} ms, its key's DELETE "
                    f"arrived at {d} ms, {d - must} ms past TTL + {slack} ms (README's bound) "
                    f"+ {allowance} ms without a majority or a leader, or after a restart"
                    + faults_in(life.last_send_ms, d)
                )
        elif life.attached is not False and life.key not in left and must <= watched_until_ms:
            if life.attached:
                never.append(f"{who}: its key is gone but no watcher saw its DELETE")
        elif life.key in left and must <= watched_until_ms:
            late.append(
                f"{who}: nothing sent after {life.last_send_ms} ms, its key was still there at "
                f"{watched_until_ms} ms, past {must} ms (TTL + {slack} ms, README's "
                f"bound, + {allowance} ms without a majority or a leader, or after a restart)"
                + faults_in(life.last_send_ms, watched_until_ms)
            )
        if life.key in left:
            stays.append(f"{who}: its key {life.key} is still in the store after the drill")
    violations = (
        _limited("lease-early-expiry", early)
        + _limited("lease-late-expiry", late)
        + _limited("lease-final-state", stays)
        + _limited("lease-watch", never)
    )
    ends: dict[str, int] = {}
    for life in lives:
        ends[life.end] = ends.get(life.end, 0) + 1
    after_stop.sort()
    figures: dict[str, Any] = {
        "ttl_s": ttl_ms // 1000,
        "election_timeout_ms": election_ms,
        "bound_past_ttl_ms": slack,
        "bound_past_ttl_election_timeouts": round(slack / election_ms, 2),
        "leases": len(lives),
        "early": len(early),
        "late": len(late),
        "late_not_judged_near_a_membership_change": unjudged,
        "left_at_end": len(stays),
        "ends": dict(sorted(ends.items())),
        "keys_attached": sum(1 for life in lives if life.attached),
        "keepalives_acked": sum(len(life.acks) for life in lives),
        "deletes_seen": sum(1 for life in lives if life.key in deletes),
        "gone_after_last_send_ms": (
            {"median": after_stop[len(after_stop) // 2], "max": after_stop[-1]}
            if after_stop
            else None
        ),
        "worst_overrun_election_timeouts": None
        if worst_overrun is None
        else round(worst_overrun, 2),
        "worst_overrun_net_of_allowance": None if worst_net is None else round(worst_net, 2),
        "min_early_margin_ms": min_margin,
        "no_majority_or_leader_ms": sum(e - s for s, e in spans),
        "restarts_without_majority": len(restarted),
        "handovers_to_restarted_nodes": len(handovers),
        "acks_sent_after_delete_seen": acks_after_delete,
    }
    return violations, figures
