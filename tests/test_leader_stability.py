"""A follower that comes back must not depose a healthy leader: real processes.

The field report: ``paxosctl cluster kill 1 && paxosctl cluster start 1`` made node 1 leader
three times out of three (the leader was still backing off its reconnect, node 1 heard no
heartbeat, campaigned with a higher ballot, and the others promised). Here a follower is
restarted 20 times (SIGKILL and SIGTERM alternately, each time started again at once) and
the leader's ballot must never change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from paxosctl.members import admin_query
from paxosd.client.client import statuses_json
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import Transfer
from tests import waiting

BOUND_S = 30.0  # liveness bound for each wait; never an assertion about speed
RESTARTS = 20


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path / "cluster", 3, durability="unsafe-no-fsync")
    try:
        c.up()
        yield c
    finally:
        c.down()


def statuses(c: LocalCluster) -> dict[int, dict[str, Any]]:
    with c.client(timeout_ms=1000) as client:
        rows = statuses_json(client)
    return {int(r["node_id"]): r for r in rows if "error" not in r}


def wait_for(what: str, probe: Callable[[], Any]) -> Any:
    return waiting.wait_for(what, probe, BOUND_S)


def leader_ballots(c: LocalCluster) -> set[str]:
    """Every ballot a node logged as its leader's (the daemon's ``leader`` log line)."""
    found: set[str] = set()
    for k in c.node_ids():
        for line in c.log_path(k).read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "leader" and ev.get("leader") is not None:
                found.add(str(ev.get("ballot")))
    return found


def restart_a_follower(
    cluster: LocalCluster, times: int, planted: Callable[[int, int], None] | None = None
) -> None:
    """Restart one follower ``times`` times; after each, check that it follows the same
    leader at the same ballot, and that a write goes through. ``planted(i, follower)`` runs
    after restart i: a test hook that must make these checks fail."""

    def settled() -> tuple[int, str] | None:
        rows = statuses(cluster)
        leaders = [r for r in rows.values() if r["role"] == "leader"]
        if len(rows) < 3 or len(leaders) != 1:
            return None
        lead = leaders[0]
        if all(r["leader"] == lead["node_id"] for r in rows.values()):
            return int(lead["node_id"]), str(lead["ballot"])
        return None

    leader, ballot = wait_for("one leader that every node follows", settled)
    follower = next(k for k in cluster.node_ids() if k != leader)
    with cluster.client(timeout_ms=5000) as client:
        for i in range(times):
            if i % 2 == 0:
                cluster.kill(follower)  # SIGKILL, as `paxosctl cluster kill`
            else:
                cluster.stop(follower)  # SIGTERM: a follower's graceful stop
            cluster.start(follower)
            if planted is not None:
                planted(i, follower)

            def back(i: int = i) -> bool:
                rows = statuses(cluster)
                me = rows.get(follower)
                return me is not None and me["leader"] is not None

            wait_for(f"restart {i + 1}: node {follower} follows a leader again", back)
            rows = statuses(cluster)
            me = rows[follower]
            assert (me["leader"], me["promised"]) == (leader, ballot), f"restart {i + 1}: {me}"
            assert rows[leader]["role"] == "leader", f"restart {i + 1}: {rows[leader]}"
            assert rows[leader]["ballot"] == ballot, f"restart {i + 1}: {rows[leader]}"
            # And the cluster still takes writes through the same leader.
            client.put(f"stability/{i}", b"v")
    # Nobody ever followed another leader, not even for a moment between two polls.
    assert leader_ballots(cluster) == {ballot}


def test_restarting_a_follower_20_times_never_changes_the_leaders_ballot(
    cluster: LocalCluster,
) -> None:
    restart_a_follower(cluster, RESTARTS)


def test_planted_leader_change_after_a_restart_is_caught(cluster: LocalCluster) -> None:
    """The checks above can fail: hand leadership to the restarted follower once."""

    def transfer(i: int, follower: int) -> None:
        if i == 1:
            wait_for(
                f"node {follower} follows a leader",
                lambda: statuses(cluster).get(follower, {}).get("leader") is not None,
            )
            with cluster.client(timeout_ms=5000) as c:
                admin_query(c, Transfer(follower))

    with pytest.raises(AssertionError, match="restart 2"):
        restart_a_follower(cluster, 3, planted=transfer)
