"""paxosd.client.client.Pipeline: many sessions' commands in flight from one thread, against real
daemons on loopback (and, for the failure paths, against nothing at all).

No assertion here is about time: waits are bounded only so that a bug fails the test
instead of hanging it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxosd.client.errors import AuthError, BadRequestError, ClientError, UnavailableError
from paxosd.client.pipeline import Pipeline, Session
from paxosd.lab.localcluster import LocalCluster
from paxosd.statemachine.commands import Found, Get, Put, Result, Written

BOUND_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path_factory.mktemp("mux") / "c", 3)
    c.up()
    yield c
    c.down()


def run_all(
    pipe: Pipeline[int],
    count: int,
    got: dict[int, Result | ClientError] | None = None,
) -> dict[int, Result | ClientError]:
    """Poll until ``count`` commands have finished (counting those already in ``got``, which
    an earlier ``poll`` returned); their outcomes by tag."""
    got = dict(got or {})
    deadline = time.monotonic() + BOUND_S
    while len(got) < count:
        # Outcomes are returned once: with nothing left in the pipeline, waiting is pointless.
        assert pipe.in_flight() > 0, f"only {len(got)} of {count} finished, none in flight"
        assert time.monotonic() < deadline, f"only {len(got)} of {count} finished"
        for tag, outcome in pipe.poll(100):
            assert tag not in got, f"command {tag} finished twice"
            got[tag] = outcome
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_many_sessions_in_flight_on_shared_connections_each_get_their_own_result(
    cluster: LocalCluster,
) -> None:
    sessions = [Session(site="mux") for _ in range(60)]
    with Pipeline[int](cluster.endpoints(), cluster.client_key(), lanes=4) as pipe:
        for i, s in enumerate(sessions):
            pipe.submit(s.next_command(Put(key=f"many/{i}", value=b"v%d" % i)), i, lane=i)
        puts = run_all(pipe, len(sessions))
        assert all(isinstance(r, Written) and r.version == 1 for r in puts.values()), puts
        for i, s in enumerate(sessions):
            pipe.submit(s.next_command(Get(key=f"many/{i}")), i, lane=i)
        gets = run_all(pipe, len(sessions))
    assert {i: (r.value, r.version) for i, r in gets.items() if isinstance(r, Found)} == {
        i: (b"v%d" % i, 1) for i in range(len(sessions))
    }


def test_a_pipeline_that_knows_only_a_follower_is_sent_to_the_leader(
    cluster: LocalCluster,
) -> None:
    leader = int(cluster.wait_ready()["node_id"])
    follower = next(k for k in cluster.node_ids() if k != leader)
    only = [cluster.endpoints()[follower - 1]]
    session = Session()
    with Pipeline[int](only, cluster.client_key()) as pipe:
        pipe.submit(session.next_command(Put(key="redirected", value=b"x")), 0)
        (written,) = run_all(pipe, 1).values()
        assert isinstance(written, Written) and written.version == 1


def test_commands_whose_connections_drop_are_resent_and_applied_once(
    cluster: LocalCluster,
) -> None:
    sessions = [Session() for _ in range(20)]
    with Pipeline[int](cluster.endpoints(), cluster.client_key(), lanes=2) as pipe:
        for i, s in enumerate(sessions):  # connect every lane first
            pipe.submit(s.next_command(Get(key=f"drop/{i}")), i, lane=i)
        run_all(pipe, len(sessions))
        for i, s in enumerate(sessions):
            pipe.submit(s.next_command(Put(key=f"drop/{i}", value=b"once")), i, lane=i)
        # The puts leave; on a loaded machine some (or all) are applied and even answered
        # before their connection drops, and those outcomes are returned here, only once.
        early = dict(pipe.poll(0))
        dropped = list(pipe._conns.values())
        for conn in dropped:
            with socket.socket(fileno=os.dup(conn.fileno())) as copy:
                copy.shutdown(socket.SHUT_RDWR)  # both copies: the connection drops
        puts = run_all(pipe, len(sessions), early)
        # A retry carries the same (client_id, seq): the session table answers it with the
        # first outcome, so every key was written exactly once.
        assert all(isinstance(r, Written) and r.version == 1 for r in puts.values()), puts
        for i, s in enumerate(sessions):
            pipe.submit(s.next_command(Get(key=f"drop/{i}")), i, lane=i)
        gets = run_all(pipe, len(sessions))
        # Replies already received when a connection dropped are still read from it, so only
        # commands sent after the drop prove a reconnect: these gets, on every lane.
        leader = pipe._router.leader
        assert leader is not None
        used = [c for (ep_id, _), c in pipe._conns.items() if ep_id == id(leader)]
        assert used and not any(c is d for c in used for d in dropped), "no reconnect"
    assert all(isinstance(r, Found) and (r.value, r.version) == (b"once", 1) for r in gets.values())


def test_a_command_no_member_answers_ends_with_unavailable(tmp_path: Path) -> None:
    with Pipeline[int]([("127.0.0.1", free_port())], os.urandom(32), timeout_ms=300) as pipe:
        pipe.submit(Session().next_command(Put(key="k", value=b"v")), 7)
        got = run_all(pipe, 1)
    assert isinstance(got[7], UnavailableError)
    assert pipe.in_flight() == 0


def test_a_wrong_client_key_ends_with_an_auth_error(cluster: LocalCluster) -> None:
    with Pipeline[int](cluster.endpoints(), os.urandom(32), timeout_ms=2000) as pipe:
        pipe.submit(Session().next_command(Get(key="k")), 1)
        got = run_all(pipe, 1)
    assert isinstance(got[1], AuthError)


def test_lanes_are_bounded_and_a_bad_command_is_refused_before_it_is_sent() -> None:
    with pytest.raises(BadRequestError):
        Pipeline([("127.0.0.1", 1)], os.urandom(32), lanes=0)
    with pytest.raises(BadRequestError):
        Session().next_command(Put(key="", value=b"v"))


def test_members_that_accept_but_never_handshake_cost_a_few_attempts_not_one_per_command() -> None:
    """A stalled member (it accepts, then says nothing) makes each connection attempt block
    until the handshake deadline; round the members, one attempt per command would keep
    ``submit``/``poll`` blocked long past every command's deadline. Every command must still
    end with UnavailableError, after a few attempts in all."""
    listeners = [socket.socket() for _ in range(3)]
    try:
        for s in listeners:
            s.bind(("127.0.0.1", 0))
            s.listen(64)  # the kernel completes connections; nothing ever answers them
        endpoints = [s.getsockname() for s in listeners]
        commands = 20
        with Pipeline[int](endpoints, os.urandom(32), timeout_ms=300) as pipe:
            for i in range(commands):
                pipe.submit(Session().next_command(Put(key="k", value=b"v")), i)
            got = run_all(pipe, commands)
            assert pipe.in_flight() == 0
        assert all(isinstance(o, UnavailableError) for o in got.values()), got
        attempts = 0
        for s in listeners:
            s.setblocking(False)
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                attempts += 1
        assert 1 <= attempts < commands // 2, f"{attempts} connection attempts"
    finally:
        for s in listeners:
            s.close()
