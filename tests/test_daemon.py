"""paxosd as real processes on loopback: the daemon issue's must-show list.

Each test uses its own cluster in tmp_path; nodes are `python -m paxosd run` processes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import time
from collections.abc import Iterator
from multiprocessing.connection import AuthenticationError, Client
from pathlib import Path

import pytest

from paxosd.client.client import AuthError, NotFoundError, statuses_json
from paxosd.client.client import Client as PaxosClient
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.handshake import PEER_LABEL, SecureConnection, initiate
from paxosd.statemachine.commands import Found, Get
from tests.waiting import wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path / "c", 3)
    try:
        # up() raises when the cluster never gets ready: its nodes must still be stopped.
        c.up()
        yield c
    finally:
        c.down()


def eventually_logged(c: LocalCluster, nodes: tuple[int, ...], text: str) -> bool:
    """The refusal is logged by a handshake thread, maybe a moment after the client gave up."""
    deadline = time.monotonic() + 20  # a liveness bound, generous for a busy machine
    while time.monotonic() < deadline:
        if any(text in c.logs_tail(k, 100) for k in nodes):
            return True
        time.sleep(0.05)
    return False


def closed_by_peer(s: socket.socket, timeout_s: float = 20.0) -> bool:
    """Read (the node's challenge, if any) until the node closes the connection."""
    s.settimeout(timeout_s)
    try:
        while s.recv(4096):
            pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


def leader_of(c: LocalCluster) -> int:
    return int(c.wait_ready()["node_id"])


def statuses(c: LocalCluster) -> list[dict[str, object]]:
    with c.client(timeout_ms=2000) as cl:
        return statuses_json(cl)


def wait_converged(c: LocalCluster, timeout_s: float = 15.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        rows = statuses(c)
        if all("error" not in r for r in rows):
            applied = {r["applied_index"] for r in rows}
            digests = {r["digest"] for r in rows}
            if len(applied) == 1 and len(digests) == 1:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"replicas did not converge: {rows}")


def test_put_and_get_through_every_node(cluster: LocalCluster) -> None:
    key = cluster.client_key()
    for k in (1, 2, 3):
        # A client that knows all endpoints but starts at node k: followers redirect it.
        eps = cluster.endpoints()
        eps = eps[k - 1 :] + eps[: k - 1]
        with PaxosClient(eps, key) as c:
            c.put(f"key{k}", f"via{k}".encode())
    with cluster.client() as c:
        for k in (1, 2, 3):
            r = c.get(f"key{k}")
            assert isinstance(r, Found) and r.value == f"via{k}".encode()
        with pytest.raises(NotFoundError):
            c.get("absent")


def test_every_answer_names_the_node_its_ballot_and_the_leader(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put("header", b"h")
        leader = c.status().leader
        assert c.last_header is not None
        assert c.last_header.node == leader == c.last_header.leader
        round_, _, node = c.last_header.ballot.partition(".")
        assert int(round_) >= 1 and int(node) == leader
        # A stale read is answered by the node asked, which names itself.
        _, where = c.stale_read_at(Get(key="header"))
        assert c.last_header.node == where["node_id"]
    follower = next(k for k in (1, 2, 3) if k != leader)
    with PaxosClient([cluster.endpoints()[follower - 1]], cluster.client_key()) as c:
        # The follower learns the decision with the leader's next message: wait for it.
        wait_for(
            "the follower applied the put",
            lambda: isinstance(c.stale_read(Get(key="header")), Found),
        )
        assert c.last_header is not None
        assert (c.last_header.node, c.last_header.leader) == (follower, leader)


def test_a_redirect_carries_the_header_too() -> None:
    from paxosd.server.daemon import _client_reply
    from paxosd.server.replies import Reply

    ok = _client_reply(Reply(1, 7, "ok", b"r"), (2, 5, 1, 1))
    assert (ok.node, ok.ballot_round, ok.ballot_node, ok.leader) == (2, 5, 1, 1)
    moved = _client_reply(Reply(1, 8, "not_leader", b"10.0.0.3:7201", 3), (2, 5, 1, None))
    assert (moved.node, moved.leader, moved.leader_address) == (2, 3, "10.0.0.3:7201")
    assert moved.result == b""


def test_sigkill_of_the_leader_elects_another_and_the_restarted_node_catches_up(
    cluster: LocalCluster,
) -> None:
    with cluster.client() as c:
        for i in range(20):
            c.put(f"k{i}", b"before")
        old = leader_of(cluster)
        cluster.kill(old)
        for i in range(20):
            c.put(f"k{i}", b"after")  # new leader: writes continue
        new = leader_of(cluster)
        assert new != old
        cluster.start(old)
        rows = wait_converged(cluster)
        assert {r["node_id"] for r in rows} == {1, 2, 3}
        restarted = next(r for r in rows if r["node_id"] == old)
        # It replays what it had decided on disk: most of the 20 puts. Decided rows of its last
        # ~10 ms may not have been written (they wait for a tick; a restarted node relearns
        # them from its peers), so not necessarily all of them.
        assert restarted["recovery"]["entries_replayed"] >= 10  # type: ignore[index]
        r = c.get("k7")
        assert isinstance(r, Found) and r.value == b"after"


def test_a_client_with_the_wrong_key_is_refused(cluster: LocalCluster) -> None:
    with (
        PaxosClient(cluster.endpoints(), os.urandom(32), timeout_ms=2000) as c,
        pytest.raises(AuthError),
    ):
        c.put("k", b"v")
    assert eventually_logged(cluster, (1, 2, 3), "handshake")


def _peer_address(c: LocalCluster, k: int) -> tuple[str, int]:
    return ("127.0.0.1", c.base_port + k)


def test_a_peer_with_the_wrong_authkey_is_refused_with_a_logged_reason(
    cluster: LocalCluster,
) -> None:
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(_peer_address(cluster, 1), authkey=os.urandom(32))
    assert eventually_logged(cluster, (1,), "authkey")


def test_garbage_oversized_headers_and_pickles_close_only_their_connection(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    addr = _peer_address(cluster, 2)
    # Random bytes, then a length header announcing 2 GiB: the node must hang up on each.
    for junk in (os.urandom(512), struct.pack("!i", 0x7FFFFFF0) + b"x" * 16):
        with socket.create_connection(addr) as s:
            s.sendall(junk)
            assert closed_by_peer(s), "the node kept a connection that sent junk"
    # After a correct handshake, a pickle that would create a file if unpickled.
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(target), "w"))

    peer_key = bytes.fromhex((cluster.root / "keys" / "peer.key").read_text().strip())
    sock = socket.create_connection(addr)
    conn = SecureConnection.from_socket(sock)
    est = initiate(conn, authkey=peer_key, label=PEER_LABEL, node=3, expect_peer=2)
    conn.send_bytes(est.session.seal(pickle.dumps(Evil())))
    with contextlib.suppress(OSError):  # the node may have closed on the first frame
        conn.send_bytes(pickle.dumps(Evil()))  # and unsealed, too
    # The node has read (and refused) what was sent once it closes the connection.
    deadline = time.monotonic() + 20
    closed = False
    while not closed and time.monotonic() < deadline:
        if conn.poll(0.1):
            try:
                conn.recv_bytes()
            except (EOFError, OSError):
                closed = True
    assert closed, "the node kept a connection that sent pickles"
    conn.close()
    assert not target.exists()
    # The cluster keeps serving, through node 2 as well.
    with cluster.client() as c:
        c.put("still", b"serving")
        assert isinstance(c.get("still"), Found)
    assert "connection_closed" in cluster.logs_tail(2, 100)


def test_stalled_handshakes_do_not_delay_writes(cluster: LocalCluster) -> None:
    stallers = []
    for k in (1, 2, 3):
        for _ in range(5):
            stallers.append(socket.create_connection(_peer_address(cluster, k)))
            stallers.append(socket.create_connection(cluster.endpoints()[k - 1]))
    done = 0
    try:
        # Keep writing until the nodes have hung up on all 30 connections that say nothing
        # (their handshake deadline). Every write must succeed meanwhile: a loop held up by
        # a stalled handshake would leave the client without an answer.
        deadline = time.monotonic() + 60
        stalled = list(stallers)
        with cluster.client(timeout_ms=3000) as c:
            while stalled:
                assert time.monotonic() < deadline, f"{len(stalled)} stalled connections kept"
                c.put(f"s{done % 10}", b"x")
                done += 1
                stalled = [s for s in stalled if not _hung_up(s)]
    finally:
        for s in stallers:
            s.close()
    assert done > 0


def _hung_up(s: socket.socket) -> bool:
    """Whether the node closed ``s`` (reading, without waiting, whatever it sent first)."""
    s.setblocking(False)
    try:
        while s.recv(4096):
            pass
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    return True


def test_the_daemon_tells_systemd_ready_then_watchdog(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(20)
    c = LocalCluster.create(tmp_path / "one", 1)
    c.start(1, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"})
    got: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            any("READY=1" in m for m in got) and any("WATCHDOG=1" in m for m in got)
        ):
            got.append(srv.recv(4096).decode())
    finally:
        c.down()
        srv.close()
    ready_at = next(i for i, m in enumerate(got) if "READY=1" in m)
    watchdog_at = next(i for i, m in enumerate(got) if "WATCHDOG=1" in m)
    assert ready_at < watchdog_at
    assert any("STATUS=" in m for m in got)


def test_sigterm_exits_cleanly_and_a_restart_keeps_the_data(tmp_path: Path) -> None:
    c = LocalCluster.create(tmp_path / "c", 3)
    c.up()
    try:
        with c.client() as cl:
            cl.put("durable", b"yes")
        c.down()  # SIGTERM every node
        assert all(c.pid(k) is None for k in (1, 2, 3))
        c.up()
        with c.client() as cl:
            r = cl.get("durable")
            assert isinstance(r, Found) and r.value == b"yes"
    finally:
        c.down()


def test_a_node_whose_database_is_gone_refuses_to_start(tmp_path: Path) -> None:
    c = LocalCluster.create(tmp_path / "c", 3)
    db = c.root / "data" / "n1" / "paxosd.sqlite3"
    db.unlink()
    c.start(1)
    deadline = time.monotonic() + 15
    while c.pid(1) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.pid(1) is None, "a node that lost its data must not start without --bootstrap"
    assert "paxosd.sqlite3" in c.logs_tail(1)


def test_two_daemons_cannot_share_a_data_dir(cluster: LocalCluster) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "paxosd", "run", "--config", str(cluster.config_path(1))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "another paxosd process is using this data dir" in out.stderr


def test_metrics_endpoint_reports_role_indexes_and_latency(tmp_path: Path) -> None:
    import urllib.request

    from paxosd.lab.localcluster import pick_base_port

    base = pick_base_port(1)
    c = LocalCluster.create(tmp_path / "m", 1, base_port=base, extra_config="")
    cfg = c.config_path(1)
    text = cfg.read_text().replace("# metrics_address", "metrics_address")
    cfg.write_text(text)
    c.up()
    try:
        with c.client() as cl, cl.watch_prefix("m") as w:
            w.wait_created(20_000)
            for i in range(5):
                cl.put(f"m{i}", b"v")
            # The gauges are refreshed once a second: poll until they show the five puts
            # (and the five events the watch was sent).
            url = f"http://127.0.0.1:{base + 200 + 1}/metrics"

            def refreshed() -> str | None:
                body = urllib.request.urlopen(url, timeout=5).read().decode()
                done = "paxosd_applied_index 5.0" in body and "watch_events_sent_total 5.0" in body
                return body if done else None

            body = wait_for("the metrics show the five puts and their events", refreshed)
    finally:
        c.down()
    assert "paxosd_watchers 1.0" in body
    assert "paxosd_watchers_catching_up 0.0" in body
    assert "paxosd_watch_events_sent_total 5.0" in body
    assert 'paxosd_role{role="leader"} 1.0' in body
    assert "paxosd_applied_index 5.0" in body
    assert "paxosd_revision 6.0" in body  # a fresh store is at 1; five puts
    assert "paxosd_compact_revision 0.0" in body
    assert "paxosd_commit_latency_seconds_count 5.0" in body
    assert "paxosd_storage_write_seconds_count" in body


def test_a_client_that_knows_only_a_follower_is_sent_to_the_leader(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    follower = next(k for k in (1, 2, 3) if k != leader)
    with PaxosClient([cluster.endpoints()[follower - 1]], cluster.client_key()) as c:
        c.put("via-follower", b"ok")
        r = c.get("via-follower")
        assert isinstance(r, Found) and r.value == b"ok"
