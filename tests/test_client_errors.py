"""What a user sees when things go wrong, and the one routing policy behind it.

Against endpoints where nothing listens a command fails at once and names each endpoint with
its reason; a read never claims an unknown outcome; a key file others can read is refused.
The routing policy (pick, redirect, learn an address, back off) is one module that Client and
Pipeline both use, checked here on its own and through both clients against a cluster.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paxosd.client.client import Client
from paxosd.client.connection import read_key_file
from paxosd.client.errors import KeyFileError, RefusedError, UnavailableError
from paxosd.client.pipeline import Pipeline, Session
from paxosd.client.routing import ENDPOINTS_MAX, Endpoint, Router
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import Decided, LogPage, MembersReply, SnapshotTaken, StatusReply
from paxosd.statemachine.commands import Found, Get, Put, Written

# A command that should fail at once gets this long before the test calls it hung: the
# clients below are given a timeout at least this long, so only failing fast passes (a client
# that waited would say "within N ms", which the tests refuse).
HUNG_S = 120
NEVER_MS = 3_600_000


@pytest.fixture
def refused() -> Iterator[list[tuple[str, int]]]:
    """Two addresses where nothing listens: bound (so nobody else takes them), not listening."""
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    yield [s.getsockname() for s in socks]
    for s in socks:
        s.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    f = tmp_path / "client.key"
    f.write_text(secrets.token_hex(32) + "\n")
    f.chmod(0o600)
    return f


def names(addresses: list[tuple[str, int]]) -> list[str]:
    return [f"{h}:{p}" for h, p in addresses]


# ---------------------------------------------------------------------- nothing listens


def test_a_read_where_nothing_listens_fails_at_once_and_names_each_endpoint(
    refused: list[tuple[str, int]], key_file: Path
) -> None:
    with (
        Client(refused, read_key_file(key_file), timeout_ms=HUNG_S * 1000) as c,
        pytest.raises(UnavailableError) as e,
    ):
        c.get("k")
    text = str(e.value)
    a, b = names(refused)
    assert f"{a}: connection refused; {b}: connection refused" in text
    assert "every endpoint refused the connection" in text
    assert "the read had no effect" in text and "unknown" not in text
    assert e.value.outcome_unknown is False


def test_a_write_that_never_left_says_so_and_is_not_unknown(
    refused: list[tuple[str, int]], key_file: Path
) -> None:
    with (
        Client(refused, read_key_file(key_file), timeout_ms=HUNG_S * 1000) as c,
        pytest.raises(UnavailableError) as e,
    ):
        c.put("k", b"v")
    assert "the write was not sent" in str(e.value)
    assert e.value.outcome_unknown is False


def test_a_silent_endpoint_is_named_with_its_own_reason(
    refused: list[tuple[str, int]], key_file: Path
) -> None:
    # Accepts TCP (the kernel's backlog) but never answers the handshake.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoints = [refused[0], silent.getsockname()]
        with (
            Client(endpoints, read_key_file(key_file), timeout_ms=1500) as c,
            pytest.raises(UnavailableError) as e,
        ):
            c.get("k")
    text = str(e.value)
    a, b = names(endpoints)
    assert f"{a}: connection refused" in text
    assert re.search(rf"{re.escape(b)}: (handshake failed|timed out|no answer)", text), text
    assert "the read had no effect" in text


def paxosctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paxosctl", *args],
        capture_output=True,
        text=True,
        timeout=HUNG_S,
        check=False,
        env={**os.environ, **(env or {})},
    )


INTERNAL = re.compile(r"read_stale|'status'|view_log'|QueryRequest|Traceback|[A-Z][a-z]+\(")


@pytest.mark.parametrize(
    "args",
    [("get", "k"), ("get", "k", "--stale"), ("put", "k", "v"), ("view_log",), ("status",)],
)
def test_paxosctl_where_nothing_listens_exits_3_at_once_in_plain_words(
    refused: list[tuple[str, int]], key_file: Path, args: tuple[str, ...]
) -> None:
    endpoints = ",".join(names(refused))
    done = paxosctl(
        *args, "--endpoints", endpoints, "--key-file", str(key_file), "--timeout-ms", str(NEVER_MS)
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: unavailable") and done.stderr.count("\n") == 1
    for endpoint in names(refused):
        assert f"{endpoint}: connection refused" in done.stderr, done.stderr
    assert not INTERNAL.search(done.stderr), done.stderr
    assert f"{NEVER_MS} ms" not in done.stderr  # it did not wait, so it must not say it did
    if args[0] in ("get", "view_log", "status"):
        assert "unknown" not in done.stderr


# ---------------------------------------------------------------------- key files


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused_naming_file_mode_and_fix(
    key_file: Path, mode: int
) -> None:
    key_file.chmod(mode)
    with pytest.raises(KeyFileError) as e:
        read_key_file(key_file)
    text = str(e.value)
    assert str(key_file) in text and f"mode {mode:04o}" in text
    assert text.endswith(f"chmod 600 {key_file}")
    key_file.chmod(0o600)
    assert len(read_key_file(key_file)) == 32
    key_file.chmod(0o400)
    assert len(read_key_file(key_file)) == 32


def test_paxosctl_refuses_a_readable_key_file_with_exit_2(
    key_file: Path, refused: list[tuple[str, int]]
) -> None:
    key_file.chmod(0o644)
    done = paxosctl("get", "k", "--endpoints", names(refused)[0], "--key-file", str(key_file))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "mode 0644" in done.stderr and f"chmod 600 {key_file}" in done.stderr


def test_a_local_cluster_writes_its_keys_private(tmp_path: Path) -> None:
    """What `paxosctl cluster up` writes: the default flow must pass the check above."""
    LocalCluster.create(tmp_path / "c", 3)
    for name in ("client.key", "peer.key"):
        found = list((tmp_path / "c").rglob(name))
        assert found, name
        for f in found:
            assert f.stat().st_mode & 0o077 == 0, f"{f}: {f.stat().st_mode & 0o777:04o}"
    assert len(read_key_file(tmp_path / "c" / "keys" / "client.key")) == 32


# ---------------------------------------------------------------------- the routing policy


def test_the_router_prefers_the_leader_and_skips_endpoints_that_just_failed() -> None:
    r = Router([("a", 1), ("b", 2), ("c", 3)])
    a, b, c = r.endpoints
    assert [r.pick(0.0) for _ in range(4)] == [a, b, c, a]  # round robin
    r.ok(b)
    assert [r.pick(0.0) for _ in range(2)] == [b, b]  # the leader while it answers
    r.failed(b, "connection refused", refused=True, down_s=100)
    assert r.leader is None
    picked = {ep.name for _ in range(4) if (ep := r.pick()) is not None}
    assert picked == {"a:1", "c:3"}
    for ep in (a, c):
        r.failed(ep, "no answer in 1500 ms", down_s=100)
    assert r.pick() is None  # everyone failed a moment ago: the caller backs off
    assert (
        r.problems()
        == "a:1: no answer in 1500 ms; b:2: connection refused; c:3: no answer in 1500 ms"
    )
    assert not r.all_refused()


def test_a_redirect_goes_to_the_named_leader_or_learns_its_address() -> None:
    r = Router([("a", 1), ("b", 2)])
    a, b = r.endpoints
    a.node_id, b.node_id = 1, 2

    def no_connect(ep: Endpoint) -> None:
        raise AssertionError("known ids need no connection")

    assert r.redirect(a, 2, None, no_connect) is b and r.leader is b
    learned = r.redirect(a, 7, "[::1]:9", lambda ep: None)
    assert learned is not None and learned.address == ("::1", 9) and learned.name == "[::1]:9"
    assert r.redirect(a, None, None, no_connect) is None and r.leader is None  # an election
    assert r.redirect(a, 1, None, no_connect) is None  # "busy" from the leader itself: wait
    assert r.redirect(a, None, "not an address", no_connect) is None
    for port in range(100, 100 + 2 * ENDPOINTS_MAX):  # a stream of made-up leaders is bounded
        r.learn(f"h:{port}")
    assert len(r.endpoints) == ENDPOINTS_MAX


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path_factory.mktemp("errors") / "c", 3)
    c.up()
    try:
        yield c
    finally:
        c.down()


def leader_of(cluster: LocalCluster) -> int:
    return int(cluster.wait_ready()["node_id"])


def test_client_and_pipeline_follow_a_redirect_through_the_one_router(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = leader_of(cluster)
    follower = next(k for k in cluster.node_ids() if k != leader)
    only_follower = [cluster.endpoints()[follower - 1]]
    seen: list[tuple[str, int | None, str | None]] = []
    original = Router.redirect

    def spy(self: Router, ep: Endpoint, lead: int | None, address: str | None, c: Any) -> Any:
        seen.append((type(self).__name__, lead, address))
        return original(self, ep, lead, address, c)

    monkeypatch.setattr(Router, "redirect", spy)
    with Client(only_follower, cluster.client_key()) as c:
        assert isinstance(c.put("routed/client", b"1"), Written)
    with Pipeline[str](only_follower, cluster.client_key()) as p:
        p.submit(Session().next_command(Put(key="routed/pipeline", value=b"1")), "w")
        done: list[tuple[str, Any]] = []
        while not done:
            done = p.poll(100)
    assert isinstance(done[0][1], Written), done
    leader_address = cluster.endpoint_strings()[leader - 1]
    # Both clients were redirected by the follower, with the leader's address in its own field.
    assert seen[0] == ("Router", leader, leader_address)
    assert len(seen) >= 2 and seen[-1] == ("Router", leader, leader_address)


# ---------------------------------------------------------------------- typed admin queries


def test_typed_admin_queries_round_trip(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    with cluster.client() as c:
        c.put("admin/k", b"v")
        st = c.status(node=leader)
        assert isinstance(st, StatusReply) and st.role == "leader" and st.node_id == leader
        each = c.status_each()
        assert [type(a) for _, a in each] == [StatusReply] * 3
        m = c.members()
        assert isinstance(m, MembersReply) and sorted(x.node_id for x in m.members) == [1, 2, 3]
        page = c.view_log(1, limit=10, node=leader)
        assert isinstance(page, LogPage) and page.node_id == leader and page.rows
        assert all(row.kind in ("accepted", "decided") for row in page.rows)
        taken = c.snapshot(node=leader)
        assert isinstance(taken, SnapshotTaken) and taken.snapshot_index >= 1
    # The leader applied the put before it answered it: its stale read sees the value.
    with Client([cluster.endpoints()[leader - 1]], cluster.client_key()) as c:
        result, where = c.stale_read_at(Get(key="admin/k"))
    assert isinstance(result, Found) and (result.value, result.version) == (b"v", 1)
    assert where["node_id"] == leader


def test_a_refusal_is_typed_with_its_reason(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    follower = next(k for k in cluster.node_ids() if k != leader)
    with cluster.client() as c:
        c.status_each()  # learn every endpoint's node id
        with pytest.raises(RefusedError) as e:
            c.change_member("add", 2, "127.0.0.1:1", node=leader)  # already a member
        assert not e.value.not_leader and "2" in e.value.reason
        with pytest.raises(RefusedError) as e:
            c.change_member("promote", 3, node=follower)
        assert e.value.not_leader and e.value.leader == leader


def test_a_transfer_is_answered_with_a_typed_decision(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    target = next(k for k in cluster.node_ids() if k != leader)
    with cluster.client() as c:
        c.status_each()
        done = c.transfer(target, node=leader)
    assert isinstance(done, Decided) and done.node_id == leader
    deadline = time.monotonic() + 30
    while leader_of(cluster) != target:
        assert time.monotonic() < deadline, f"node {target} did not take over"
        time.sleep(0.05)
