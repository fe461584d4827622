"""The lock checker (paxosd/sim/locks.py): a paused holder's late fenced write is refused, the
checks catch hand-made histories that break them, and the planted lock bugs are caught.

The fuzzed seeds of tests/sim/test_simulator.py run the lock checker on every seed."""

from __future__ import annotations

import pytest

from paxosd.sim.checker import Violation
from paxosd.sim.locks import Holding, LockDriver
from paxosd.sim.run import run_seed
from paxosd.sim.world import World, WorldOptions


def _paused_holder_world() -> tuple[World, LockDriver]:
    """Two lock clients on a calm network, the first pausing at its first hold."""
    opts = WorldOptions(clients=0, lease_clients=0, watchers=0, lock_clients=2)
    world = World(11, opts)
    driver = world.locks
    assert driver is not None
    return world, driver


def test_a_paused_holder_loses_the_lock_by_expiry_and_its_late_write_is_refused() -> None:
    world, driver = _paused_holder_world()
    report = driver.report
    world.run_until(30_000, lambda: report.paused_holders > 0 and report.handoffs_by_expiry > 0)
    assert report.paused_holders > 0 and report.handoffs_by_expiry > 0
    paused = next(h for h in driver.holdings if h.paused)
    # Let the paused holder resume and its late write be decided, then check.
    world.run_until(world.now_ms + 3000)
    from paxosd.sim.revisions import replay

    report = driver.check(replay(world.checker.decided))
    refused = [w for w in driver.fenced.values() if w.client_id == f"lock{paused.client}"]
    assert refused, "the paused holder never wrote"
    assert report.fenced_writes_refused > 0
    assert report.acquisitions >= 2 and report.fenced_writes_applied > 0


def _checked(holdings: list[Holding]) -> None:
    world, driver = _paused_holder_world()
    driver.holdings = holdings
    from paxosd.sim.revisions import replay

    driver.check(replay({}))


def test_overlapping_holders_that_kept_their_leases_are_a_mutex_violation() -> None:
    a = Holding(client=0, name="locks/a", token=5, start_ms=100, end_ms=300, released=True)
    b = Holding(client=1, name="locks/a", token=9, start_ms=250, end_ms=400)
    with pytest.raises(Violation) as e:
        _checked([a, b])
    assert e.value.prop == "lock-mutex"


def test_a_paused_holder_overlapping_the_next_is_no_mutex_violation() -> None:
    # The fencing token is what protects the resource then.
    a = Holding(client=0, name="locks/a", token=5, start_ms=100, end_ms=3000, paused=True)
    b = Holding(client=1, name="locks/a", token=9, start_ms=2500, end_ms=2600)
    c = Holding(client=1, name="locks/b", token=3, start_ms=150, end_ms=2600)
    _checked([a, b, c])


# The planted lock bugs, the property that must catch each, and the seeds it may take.
# Measured on 3 nodes: the skipped rescan is caught (lock-mutex) first at seed 8, then 41 and
# 82; the compare on a deleted key first at seed 36 by lock-fencing (seeds 12 and 40 by the
# revision checker, where a workload transaction met it before any fenced write did).
LOCK_BUGS = {
    "lock_waiter_skips_rescan": ("lock-", 150),
    "lock_compare_sees_deleted_key": ("lock-fencing", 100),
}


@pytest.mark.parametrize("bug", sorted(LOCK_BUGS))
def test_planted_lock_bugs_are_caught_by_the_lock_checker(bug: str) -> None:
    # Not fuzz(stop_at_first): the revision checker may catch the state machine bug first
    # on a seed where no fenced write met it; the lock checker runs before it on each seed.
    prop, seeds = LOCK_BUGS[bug]
    for seed in range(seeds):
        r = run_seed(seed, bugs=frozenset({bug}))
        if r.violation is not None and r.violation.prop.startswith("lock-"):
            assert r.violation.prop.startswith(prop), r.violation
            assert r.locks == "violation"
            return
    pytest.fail(f"{bug} survived {seeds} seeds")
