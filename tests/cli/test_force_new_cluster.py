"""Quorum-loss recovery on real processes: a majority is gone for good, `paxosd
force-new-cluster` makes the survivor the only voter, it serves again with every write it had
applied, and new members can be added back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxosd.lab.localcluster import LocalCluster, pick_base_port


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path / "c", 3, base_port=pick_base_port(3, preferred=31500))
    c.up()
    try:
        yield c
    finally:
        for k in range(1, c.nodes + 1):
            c.kill(k)


def ctl(c: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PAXOSD_LOCAL_DIR": str(c.root)}
    return subprocess.run(
        [sys.executable, "-m", "paxosctl", *args], env=env, capture_output=True, text=True
    )


def force(c: LocalCluster, k: int, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paxosd", "force-new-cluster", "--config", str(c.config_path(k))]
        + list(flags),
        capture_output=True,
        text=True,
    )


def test_a_survivor_forced_into_a_new_cluster_serves_its_data_and_takes_new_members(
    cluster: LocalCluster,
) -> None:
    for i in range(5):
        assert ctl(cluster, "put", f"k{i}", f"v{i}").returncode == 0
    cluster.kill(2)
    cluster.kill(3)
    assert ctl(cluster, "put", "lost", "x", "--timeout-ms", "1000").returncode == 3
    running = force(cluster, 1, "--yes-i-lost-the-majority")
    assert running.returncode == 1 and "another paxosd process" in running.stderr
    cluster.stop(1)
    refused = force(cluster, 1)
    assert refused.returncode == 2 and "--yes-i-lost-the-majority" in refused.stderr
    forced = force(cluster, 1, "--yes-i-lost-the-majority")
    assert forced.returncode == 0, forced.stderr
    assert "FORCED" in forced.stderr and "only voter" in forced.stderr
    cluster.start(1)
    # Until it listens every endpoint refuses, and a client fails at once rather than wait.
    cluster.wait_ready()
    assert ctl(cluster, "put", "after", "yes").returncode == 0
    for i in range(5):
        assert ctl(cluster, "get", f"k{i}").stdout == f"v{i}\n"
    k = cluster.add_node()
    cluster.start(k)
    added = ctl(cluster, "member", "add", str(k), cluster.peer_address(k), "--promote")
    assert added.returncode == 0, added.stderr
    members = ctl(cluster, "members", "--json")
    assert '"role": "voter"' in members.stdout and f'"node_id": {k}' in members.stdout
    assert ctl(cluster, "put", "grown", "again").returncode == 0
