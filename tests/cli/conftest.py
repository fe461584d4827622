"""One real local 3-node cluster per test module, and a CliRunner that talks to it.

The cluster runs real ``paxosd`` processes on loopback: paxosctl's commands are wiring over
the client library, and wiring is only tested by driving it against the real thing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from paxosctl.app import app
from paxosd.client.client import statuses_json
from paxosd.lab.localcluster import LocalCluster

# Generous: on a loaded 2-core CI machine a leader election plus catch-up can take seconds.
CONVERGE_TIMEOUT_S = 20.0


@dataclass
class Cli:
    """Runs paxosctl in-process against one cluster."""

    cluster: LocalCluster
    runner: CliRunner

    def run(self, *args: str) -> Result:
        return self.runner.invoke(app, list(args))

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, (args, result.exit_code, result.output)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def wait_all_decided(self, slot: int) -> None:
        """Until every node has decided and applied ``slot``: followers learn decisions
        with the leader's next message, a moment after the client got its answer."""
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        with self.cluster.client(timeout_ms=1000) as c:
            while time.monotonic() < deadline:
                rows = statuses_json(c)
                if all("error" not in r and r["applied_index"] >= slot for r in rows):
                    return
                time.sleep(0.05)
        raise AssertionError(f"nodes did not all apply slot {slot}: {rows}")

    def restart(self, *nodes: int) -> None:
        for k in nodes:
            self.cluster.start(k)
        self.cluster.wait_ready(CONVERGE_TIMEOUT_S)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    root = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as mp:
        # paxosctl finds the local cluster through this; nothing from the outer shell leaks in.
        mp.setenv("PAXOSD_LOCAL_DIR", str(root))
        for var in ("PAXOSCTL_ENDPOINTS", "PAXOSCTL_KEY_FILE", "PAXOSCTL_SITE"):
            mp.delenv(var, raising=False)
        mp.setenv("COLUMNS", "200")
        cluster = LocalCluster.create(root, 3, durability="unsafe-no-fsync")
        try:
            cluster.up()
            yield Cli(cluster, CliRunner())
        finally:
            cluster.down()
