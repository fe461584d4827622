"""The lease checker (paxosd/sim/leases.py): a scenario of repeated leader changes with no
keep-alives, and the planted lease bugs each check must catch. The fuzzed seeds of
tests/sim/test_simulator.py run the lease checker on every seed (and assert its figures)."""

from __future__ import annotations

import pytest

from paxosd.core.io import TransferLeadership
from paxosd.sim.fuzz import fuzz
from paxosd.sim.leases import BOUND_ELECTION_TIMEOUTS, TTL_S
from paxosd.sim.world import World, WorldOptions


def _repeated_leader_changes(bugs: frozenset[str]) -> tuple[int, int | None, int]:
    """One lease kept alive for a second, then left alone while leadership moves every 700 ms
    (well under TTL + an election timeout) for 12 s. Returns (last keep-alive sent, revoked
    at, election timeout)."""
    opts = WorldOptions(clients=0, lease_clients=1, lease_window_ms=3000, planted_bugs=bugs)
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
    world.run_until(20000, lambda: lease.gone_ms is not None)
    return lease.last_ack_sent_ms, lease.gone_ms, driver.election_timeout_ms


def test_repeated_leader_changes_do_not_renew_a_lease_forever() -> None:
    last, gone, et = _repeated_leader_changes(frozenset())
    assert last > 0 and gone is not None
    assert gone >= last + TTL_S * 1000  # not early
    assert gone <= last + TTL_S * 1000 + BOUND_ELECTION_TIMEOUTS * et  # and bounded


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
