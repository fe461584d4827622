"""The members a drill talks to, and the status questions every part of the drill asks them.

The membership can change under a running drill (the reconfig fault), so every part that
holds clients follows ``Nodes.generation`` rather than a list it took at the start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

from paxosd.client.client import Address, Client, ClientError
from paxosd.lab.drill.spec import DrillError
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import to_json
from paxosd.tools.initcluster import client_address

STATUS_TIMEOUT_MS: Final = 800


class Nodes:
    """The members a drill talks to: node id -> client address, the key, and the processes
    when the drill started them itself (``cluster``)."""

    def __init__(
        self,
        endpoints: Mapping[int, Address],
        key: bytes,
        cluster: LocalCluster | None = None,
        node_env: Mapping[str, str] | None = None,
    ) -> None:
        assert endpoints, "a drill needs at least one node"
        # Replaced whole (never mutated) when the membership changes, so a reader holding
        # the old dict sees one consistent set.
        self.endpoints = dict(sorted(endpoints.items()))
        self.voter_ids: list[int] = list(self.endpoints)
        self.key = key
        self.cluster = cluster
        self.node_env = dict(node_env or {})
        # Bumped on every membership change: workers then reconnect to the new members.
        self.generation = 0
        # Ids after the cluster's highest that clients also know (the reconfig fault adds
        # nodes: see client()).
        self.spare_ids = 0
        self._lock = threading.Lock()

    @classmethod
    def of_cluster(cls, cluster: LocalCluster, node_env: Mapping[str, str]) -> Nodes:
        eps = dict(zip(cluster.node_ids(), cluster.endpoints(), strict=True))
        return cls(eps, cluster.client_key(), cluster, node_env)

    @classmethod
    def discover(cls, endpoints: Sequence[Address], key: bytes) -> Nodes:
        """Ask each endpoint its node id: the partition hook names peers by id."""
        found: dict[int, Address] = {}
        for addr in endpoints:
            with Client([addr], key, timeout_ms=3000) as c:
                try:
                    node_id = c.status().node_id
                except ClientError as e:
                    raise DrillError(f"{addr[0]}:{addr[1]} did not answer: {e}") from None
            found[node_id] = addr
        return cls(found, key)

    @property
    def ids(self) -> list[int]:
        return list(self.endpoints)

    def set_members(self, members: Iterable[int], voters: Iterable[int]) -> None:
        """The membership the log decided (the reconfig fault changes it): the local
        cluster's processes are the members from now on."""
        cluster = self.cluster
        assert cluster is not None, "only a drill's own cluster changes membership"
        ids = sorted(set(members))
        assert ids, "a cluster keeps at least one member"
        with self._lock:
            self.endpoints = {k: client_endpoint(cluster, k) for k in ids}
            self.voter_ids = sorted(set(voters) & set(ids))
            self.generation += 1

    def client(
        self,
        *,
        timeout_ms: int,
        client_id: str | None = None,
        first: int | None = None,
        site: str = "drill",
    ) -> Client:
        """A client of every node; ``first``: the node its first attempt goes to.

        In a local cluster it also knows the next ids' addresses: a member redirects only to
        leaders its config names, so a client must find a node added meanwhile itself."""
        endpoints = self.endpoints
        order = list(endpoints)
        if first is not None:
            order = [first] + [k for k in order if k != first]
        spare: list[Address] = []
        if self.cluster is not None:
            top = self.cluster.nodes
            spare = [
                client_endpoint(self.cluster, k) for k in range(top + 1, top + 1 + self.spare_ids)
            ]
        return Client(
            [endpoints[k] for k in order] + spare,
            self.key,
            timeout_ms=timeout_ms,
            client_id=client_id,
            site=site,
        )

    def node_clients(self, timeout_ms: int = STATUS_TIMEOUT_MS) -> dict[int, Client]:
        """One client per node, each talking only to that node. Not thread-safe: per thread."""
        endpoints = self.endpoints
        return {k: Client([a], self.key, timeout_ms=timeout_ms) for k, a in endpoints.items()}


def client_endpoint(cluster: LocalCluster, k: int) -> Address:
    a = client_address(cluster.host, cluster.base_port, k)
    return (a.host, a.port)


def node_status(c: Client) -> dict[str, Any] | None:
    try:
        return dict(to_json(c.status()))
    except ClientError:
        return None


def find_leader(clients: Mapping[int, Client]) -> int | None:
    for k, c in clients.items():
        s = node_status(c)
        if s is not None and s.get("role") == "leader":
            return k
    return None


def cluster_view(clients: Mapping[int, Client], voters: Iterable[int]) -> tuple[int | None, bool]:
    """Who leads, and whether every voter answers and follows that leader (healthy)."""
    statuses = {k: node_status(c) for k, c in clients.items()}
    leader = next(
        (k for k, s in statuses.items() if s is not None and s.get("role") == "leader"), None
    )
    healthy = leader is not None and all(
        (s := statuses.get(k)) is not None and s.get("leader") == leader for k in voters
    )
    return leader, healthy


@contextmanager
def closing_all(clients: Mapping[int, Client]) -> Iterator[Mapping[int, Client]]:
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()


def poll_members(
    nodes: Nodes,
    turn: Callable[[Mapping[int, Client]], None],
    *,
    every_s: float,
    stop: threading.Event,
    timeout_ms: int = STATUS_TIMEOUT_MS,
) -> None:
    """Call ``turn`` with one client per member every ``every_s`` until ``stop`` is set.

    The clients follow the membership (a new set on every ``nodes.generation``): a removed
    node is gone, and a node added meanwhile is asked too."""
    generation = -1
    clients: dict[int, Client] = {}
    try:
        while not stop.is_set():
            if nodes.generation != generation:
                for c in clients.values():
                    c.close()
                generation = nodes.generation
                clients = nodes.node_clients(timeout_ms=timeout_ms)
            turn(clients)
            stop.wait(every_s)
    finally:
        for c in clients.values():
            c.close()
