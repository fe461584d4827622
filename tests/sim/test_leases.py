"""The lease checker (paxosd/sim/leases.py): a scenario of repeated leader changes with no
keep-alives, and the planted lease bugs each check must catch. The fuzzed seeds of
tests/sim/test_simulator.py run the lease checker on every seed (and assert its figures)."""

from __future__ import annotations

import pytest

from paxosd.core.io import TransferLeadership
from paxosd.sim.fuzz import fuzz
from paxosd.sim.leases import BOUND_ELECTION_TIMEOUTS, TTL_S, bound_election_timeouts
from paxosd.sim.run import FAULT_KINDS, run_seed
from paxosd.sim.world import World, WorldOptions


def _repeated_leader_changes(
    bugs: frozenset[str], ttl_s: int = TTL_S
) -> tuple[int, int | None, int]:
    """One lease kept alive for a second, then left alone while leadership moves every 700 ms
    (well under TTL + an election timeout) for 12 s. Returns (last keep-alive sent, revoked
    at, election timeout)."""
    opts = WorldOptions(
        clients=0, lease_clients=1, lease_window_ms=3000, planted_bugs=bugs, lease_ttl_s=ttl_s
    )
    world = World(7, opts)
    driver = world.leases
    assert driver is not None
    lease = driver.leases[0]
    lease.stop_ms = 1500
    lease.revoke_at_stop = False
    token = 0

    def transfer() -> None:
        nonlocal token
        leader = world.leader()
        if leader is not None:
            token += 1
            world._step(leader, TransferLeadership(token, None))

    for at in range(2000, 14000, 700):
        world.at(at, transfer)
    world.run_until(20000 + ttl_s * 1000, lambda: lease.gone_ms is not None)
    return lease.last_ack_sent_ms, lease.gone_ms, driver.election_timeout_ms


def test_repeated_leader_changes_do_not_renew_a_lease_forever() -> None:
    last, gone, et = _repeated_leader_changes(frozenset())
    assert last > 0 and gone is not None
    assert gone >= last + TTL_S * 1000  # not early
    assert gone <= last + TTL_S * 1000 + BOUND_ELECTION_TIMEOUTS * et  # and bounded


# A TTL long enough that the checkpoint waits its longest (8 election timeouts of 600 ms).
LONG_TTL_S = 10


def test_repeated_leader_changes_bound_a_long_ttl_lease() -> None:
    last, gone, et = _repeated_leader_changes(frozenset(), LONG_TTL_S)
    bound = bound_election_timeouts(LONG_TTL_S, et)
    assert bound == 12  # w = 8: the checkpoint wait is at its cap
    assert last > 0 and gone is not None
    assert gone >= last + LONG_TTL_S * 1000
    assert gone <= last + LONG_TTL_S * 1000 + bound * et


def _leader_crash_after_quiet(
    ttl_s: int, crash_after_ms: int, bugs: frozenset[str] = frozenset()
) -> tuple[int, int | None, int]:
    """One lease kept alive once after its grant (which clears the checkpoint the first
    takeover gave it), then left alone; the leader crashes ``crash_after_ms`` after that
    keep-alive was sent (around the checkpoint wait: not yet checkpointed, the next leader's
    takeover gives the lease its full TTL from there). Returns (last keep-alive sent, revoked
    at, election timeout)."""
    opts = WorldOptions(
        clients=0, lease_clients=1, lease_window_ms=3000, lease_ttl_s=ttl_s, planted_bugs=bugs
    )
    world = World(11, opts)
    driver = world.leases
    assert driver is not None
    lease = driver.leases[0]
    lease.stop_ms = ttl_s * 1000 // 3 + 1000
    lease.revoke_at_stop = False
    world.run_until(lease.stop_ms + 2 * 400)
    assert lease.acks >= 1
    leader = world.leader()
    assert leader is not None

    def crash() -> None:
        assert leader is not None
        world.crash(leader.id)

    world.at(max(world.now_ms, lease.last_ack_sent_ms + crash_after_ms), crash)
    world.run_until(lease.stop_ms + 4 * ttl_s * 1000 + 60000, lambda: lease.gone_ms is not None)
    return lease.last_ack_sent_ms, lease.gone_ms, driver.election_timeout_ms


@pytest.mark.parametrize("ttl_s", [TTL_S, LONG_TTL_S])
def test_leader_crash_just_before_the_checkpoint_keeps_the_bound(ttl_s: int) -> None:
    """The worst case the bound's w covers: the leader goes just before it would checkpoint a
    quiet lease (checkpoints are proposed on an election-timeout tick once the wait is over)."""
    et = 600
    wait_ms = int((bound_election_timeouts(ttl_s, et) - 4) * et)
    worst = 0.0
    for crash_after_ms in range(wait_ms - et, wait_ms + 2 * et + 1, et // 3):
        last, gone, et = _leader_crash_after_quiet(ttl_s, crash_after_ms)
        assert gone is not None
        assert gone >= last + ttl_s * 1000
        worst = max(worst, (gone - last - ttl_s * 1000) / et)
    assert worst <= bound_election_timeouts(ttl_s, et), worst


def test_planted_uncapped_checkpoint_wait_is_caught() -> None:
    """A lease of TTL 30 s whose checkpoint waits half its TTL (25 election timeouts): the
    leader crashes an election timeout before that, long after the capped wait (8 election
    timeouts) would have checkpointed it."""
    ttl_s, et = 30, 600
    crash_after_ms = ttl_s * 500 - et
    bugs = frozenset({"lease_checkpoint_wait_uncapped"})
    last, gone, et = _leader_crash_after_quiet(ttl_s, crash_after_ms)
    assert (
        gone is not None and gone <= last + ttl_s * 1000 + bound_election_timeouts(ttl_s, et) * et
    )
    last, gone, et = _leader_crash_after_quiet(ttl_s, crash_after_ms, bugs)
    assert gone is None or gone > last + ttl_s * 1000 + bound_election_timeouts(ttl_s, et) * et


def test_planted_takeover_that_renews_the_full_ttl_is_caught() -> None:
    """etcd #9888: each new leader counting the full TTL from its own election keeps the
    lease alive as long as elections come faster than TTL + an election timeout."""
    last, gone, et = _repeated_leader_changes(frozenset({"lease_takeover_renews_full_ttl"}))
    assert gone is None or gone > last + TTL_S * 1000 + BOUND_ELECTION_TIMEOUTS * et


@pytest.mark.parametrize(
    ("bug", "prop", "seeds"),
    [
        ("lease_wall_clock_deadline", "lease-early-expiry", 20),
        ("lease_new_leader_does_not_extend", "lease-early-expiry", 40),
        ("lease_stale_revoke_applied", "lease-", 60),
    ],
)
def test_planted_lease_bugs_are_caught(bug: str, prop: str, seeds: int) -> None:
    report = fuzz(seeds, 3, bugs=frozenset({bug}), stop_at_first=True)
    assert report.failures, f"{bug} survived {seeds} seeds"
    violation = report.failures[0].violation
    assert violation is not None and violation.prop.startswith(prop), violation


def _rolling_restarts(
    period_ms: int, down_ms: int = 0, bugs: frozenset[str] = frozenset()
) -> tuple[int, int | None, int, World]:
    """Every ``period_ms`` a follower goes down for ``down_ms`` and, 300 ms after it is back,
    leadership moves to it; the lease (TTL 10 s) is left alone after one keep-alive, so each
    new leader counts the lease's checkpoint from its own replay (or snapshot install: with
    ``down_ms``, a client's puts compact the log past the node while it is down). Returns
    (last keep-alive sent, revoked at, election timeout, the world)."""
    ttl_s = LONG_TTL_S
    opts = WorldOptions(
        clients=1 if down_ms else 0,
        lease_clients=1,
        lease_window_ms=3000,
        lease_ttl_s=ttl_s,
        planted_bugs=bugs,
        snapshot_every_entries=8,
        log_retain_entries=2,
    )
    world = World(7, opts)
    driver = world.leases
    assert driver is not None
    lease = driver.leases[0]
    lease.stop_ms = ttl_s * 1000 // 3 + 1000
    lease.revoke_at_stop = False
    token = 0

    def roll() -> None:
        leader = world.leader()
        if leader is None:
            return
        follower = next(n for n in world.member_nodes() if n.id != leader.id and n.up)
        world.crash(follower.id)

        def hand_over() -> None:
            nonlocal token
            now_leader = world.leader()
            if now_leader is not None and now_leader.id != follower.id:
                token += 1
                world._step(now_leader, TransferLeadership(token, follower.id))

        def back() -> None:
            world.restart(follower.id)
            world.at(world.now_ms + 300, hand_over)

        if down_ms:
            world.at(world.now_ms + down_ms, back)
        else:
            back()

    for at in range(lease.stop_ms + 1000, 90_000, period_ms):
        world.at(at, roll)
    world.run_until(90_000, lambda: lease.gone_ms is not None)
    return lease.last_ack_sent_ms, lease.gone_ms, driver.election_timeout_ms, world


@pytest.mark.parametrize("period_ms", [700, 1500, 3000])
def test_rolling_restarts_that_hand_leadership_to_the_restarted_node_keep_the_bound(
    period_ms: int,
) -> None:
    """A restarted node anchors every logged checkpoint at its replay; the leader keeps the
    logged remaining time current, so each such node adds at most the re-checkpoint step."""
    last, gone, et, _ = _rolling_restarts(period_ms)
    ttl_s = LONG_TTL_S
    assert last > 0 and gone is not None
    assert gone >= last + ttl_s * 1000
    assert gone <= last + ttl_s * 1000 + bound_election_timeouts(ttl_s, et) * et


def test_rolling_snapshot_installs_that_hand_leadership_to_the_node_keep_the_bound() -> None:
    """As above, but each follower is down long enough for the log to be compacted past it,
    so it comes back by installing a snapshot (which carries the lease's logged remaining
    time, anchored at the install) before it leads."""
    last, gone, et, world = _rolling_restarts(4000, down_ms=1500)
    assert world.stats.snapshot_restores >= 3
    ttl_s = LONG_TTL_S
    assert last > 0 and gone is not None
    assert gone >= last + ttl_s * 1000
    assert gone <= last + ttl_s * 1000 + bound_election_timeouts(ttl_s, et) * et


@pytest.mark.parametrize(("period_ms", "down_ms"), [(700, 0), (3000, 0), (4000, 1500)])
def test_planted_checkpoint_never_renewed_is_caught(period_ms: int, down_ms: int) -> None:
    """Without re-checkpointing, each restarted (or snapshot-installed) leader counts the
    lease's one checkpoint from its own replay: the lease outlives the bound."""
    bugs = frozenset({"lease_checkpoint_never_renewed"})
    last, gone, et, _ = _rolling_restarts(period_ms, down_ms, bugs)
    bound_ms = LONG_TTL_S * 1000 + bound_election_timeouts(LONG_TTL_S, et) * et
    assert gone is None or gone > last + bound_ms


def test_a_lease_that_expired_before_its_grant_was_answered_is_judged() -> None:
    """A retried grant answered from the session cache can tell the client its lease id after
    the lease expired on every node (seed 81 of 5 nodes with membership changes): the checker
    takes the revoke's time from the log rather than reporting the lease alive forever."""
    r = run_seed(81, nodes=5, kinds=frozenset((*FAULT_KINDS, "reconfig")))
    assert r.violation is None, r.violation
    assert r.lease_report is not None and r.lease_report.expired_before_granted >= 1
