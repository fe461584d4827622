"""The cluster most etcd front-end tests share: 3 nodes, each with a loopback etcd listener
without TLS (a module gets its own; modules that need another shape define their own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paxosd.lab.localcluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path_factory.mktemp("etcd") / "c", 3, etcd=True, etcd_tls=False)
    c.up()
    try:
        c.wait_ready()
        yield c
    finally:
        c.down()
