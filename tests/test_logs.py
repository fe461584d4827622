"""Logging setup: JSON off a TTY, console on one, levels, node binding, and no secret ever."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog

from paxosd.client.client import Client
from paxosd.core.types import NodeId
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.transport import ClientConnection, ClientServer, PeerTransport
from paxosd.server.logs import (
    REDACTED,
    Condition,
    bind_node,
    configure_logging,
    fatal,
    get_logger,
    redact_secrets,
    unbind_all,
)
from tests import waiting

KEY = bytes(range(32))


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    unbind_all()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_redaction_hides_every_field_named_like_a_secret() -> None:
    event = {
        "event": "handshake",
        "peer_key": KEY,
        "authkey": KEY,
        "client_secret": "s",
        "KEY": "k",
        "api_token": "t",
        "password": "p",
        "peer": 2,
        "config": {"peer_key_file": "/etc/k", "nested": {"authkey": KEY}, "port": 7101},
        "frames": [{"session_key": KEY, "n": 1}],
    }
    out = redact_secrets(None, "info", event)
    for name in ("peer_key", "authkey", "client_secret", "KEY", "api_token", "password"):
        assert out[name] == REDACTED, name
    assert out["event"] == "handshake" and out["peer"] == 2
    assert out["config"] == {
        "peer_key_file": REDACTED,
        "nested": {"authkey": REDACTED},
        "port": 7101,
    }
    assert out["frames"] == [{"session_key": REDACTED, "n": 1}]


def test_redaction_does_not_recurse_without_bound() -> None:
    deep: dict[str, Any] = {"authkey": KEY}
    for _ in range(10):
        deep = {"inner": deep}
    out = redact_secrets(None, "info", {"event": "x", "deep": deep})
    assert KEY.hex() not in json.dumps(out, default=lambda b: b.hex())


def test_json_lines_when_the_stream_is_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream, env={})
    bind_node(3, "local-3")
    get_logger().info("promise sent", ballot="4.1", slot=17)
    (line,) = json_lines(stream)
    assert line["event"] == "promise sent"
    assert (line["node"], line["cluster"], line["ballot"], line["slot"]) == (
        3,
        "local-3",
        "4.1",
        17,
    )
    assert line["level"] == "info"
    stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)


def test_a_key_passed_to_a_log_call_never_reaches_the_output() -> None:
    for fmt, stream in (("json", io.StringIO()), ("console", FakeTTY())):
        configure_logging("debug", fmt, stream=stream, env={"NO_COLOR": "1"})
        get_logger().info("connected", authkey=KEY, peer_key=KEY.hex(), info={"secret": KEY})
        text = stream.getvalue()
        assert "connected" in text
        assert KEY.hex() not in text and repr(KEY) not in text, fmt
        assert REDACTED in text


def test_console_rendering_on_a_tty() -> None:
    stream = FakeTTY()
    configure_logging("info", "auto", stream=stream, env={"NO_COLOR": "1"})
    bind_node(1)
    get_logger().warning("election started", ballot="2.1")
    text = stream.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "election started" in text and "ballot=2.1" in text and "node=1" in text
    assert "\x1b[" not in text  # NO_COLOR is honoured


def test_levels_below_the_configured_one_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream, env={})
    log = get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [line["event"] for line in json_lines(stream)] == ["w", "e"]


def test_the_bound_node_is_on_lines_from_other_threads_too() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, env={})
    bind_node(5)
    t = threading.Thread(target=lambda: get_logger().info("from a handshake thread"))
    t.start()
    t.join()
    (line,) = json_lines(stream)
    assert line["node"] == 5


def test_tracebacks_do_not_show_local_variables() -> None:
    def fail() -> None:
        # A local that a locals-showing formatter would print. Built at run time so that the
        # source line a traceback quotes does not contain it.
        authkey = "".join(reversed("rekram-terces"))
        raise ValueError("handshake failed " + str(len(authkey)))

    for fmt, stream in (("json", io.StringIO()), ("console", FakeTTY())):
        configure_logging("info", fmt, stream=stream, env={"NO_COLOR": "1"})
        try:
            fail()
        except ValueError:
            get_logger().exception("peer dropped")
        text = stream.getvalue()
        assert "handshake failed 13" in text and "Traceback" in text, fmt
        assert "secret-marker" not in text, fmt


def test_lines_to_the_journal_carry_their_syslog_priority(tmp_path: Path) -> None:
    path = tmp_path / "journal-stream"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        configure_logging("info", "auto", stream=stream, env=env)
        get_logger().warning("lagging peer", peer=2)
        get_logger().info("applied", slot=9)
    warning, info = path.read_text().splitlines()
    assert warning.startswith("<4>") and json.loads(warning[3:])["event"] == "lagging peer"
    assert info.startswith("<6>") and json.loads(info[3:])["slot"] == 9


def test_lines_to_another_stream_have_no_priority_prefix(tmp_path: Path) -> None:
    path = tmp_path / "not-the-journal"
    with path.open("w") as stream:
        configure_logging("info", "auto", stream=stream, env={"JOURNAL_STREAM": "1:2"})
        get_logger().info("x")
    assert json.loads(path.read_text())["event"] == "x"


def test_a_fatal_start_up_line_is_an_error_in_the_journal_and_plain_elsewhere(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal-stream"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        fatal("paxosd: database is corrupt", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        fatal("paxosd: again", stream, {})
    assert path.read_text().splitlines() == ["<3>paxosd: database is corrupt", "paxosd: again"]


# -------------------------------------------------------------- once-only warnings


def assert_warned_once(
    lines: list[dict[str, Any]], event: str, cleared: str | None, **fields: Any
) -> None:
    """Exactly one warning ``event`` and (unless None) then exactly one info ``cleared``,
    among the lines whose fields include ``fields``."""
    mine = [x for x in lines if all(x.get(k) == v for k, v in fields.items())]
    warnings = [x for x in mine if x["event"] == event]
    assert len(warnings) == 1, f"{len(warnings)} {event} lines: {warnings}"
    assert warnings[0]["level"] == "warning", warnings[0]
    if cleared is None:
        assert not [x for x in mine if x["event"] == cleared]
        return
    recoveries = [x for x in mine if x["event"] == cleared]
    assert len(recoveries) == 1, f"{len(recoveries)} {cleared} lines: {recoveries}"
    assert recoveries[0]["level"] == "info", recoveries[0]
    assert mine.index(warnings[0]) < mine.index(recoveries[0])


def test_a_lasting_problem_is_one_warning_and_its_end_one_info_line() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream, env={})
    cond = Condition("peer_unreachable", "peer_reachable", after_ms=600)
    # Shorter than after_ms: nothing at all.
    for t in range(0, 500, 100):
        cond.update(True, t, peer=2)
    cond.update(False, 500, peer=2)
    assert stream.getvalue() == ""
    # Checked every 100 ms for 5 s, i.e. once per retry: one warning, at 600 ms.
    for t in range(1000, 6000, 100):
        cond.update(True, t, peer=2)
    for t in range(6000, 7000, 100):
        cond.update(False, t, peer=2)
    lines = json_lines(stream)
    assert_warned_once(lines, "peer_unreachable", "peer_reachable", peer=2)
    assert len(lines) == 2
    assert lines[0]["for_ms"] == 600
    assert lines[1]["after_ms"] == 5000 and lines[1]["times"] == 44


def test_a_flapping_problem_clears_only_after_a_quiet_period() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, env={})
    cond = Condition("fsync_slow", "fsync_fast_again", clear_after_ms=1000)
    for t in range(0, 5000, 250):  # slow, fast, slow, fast, ...
        cond.update(t % 500 == 0, t, seconds=0.2)
    assert [x["event"] for x in json_lines(stream)] == ["fsync_slow"]
    assert cond.active
    cond.update(True, 5000, seconds=0.2)
    cond.update(False, 5500, seconds=0.01)
    cond.update(False, 6400, seconds=0.01)
    assert cond.active  # 1 s without a slow write has not passed yet
    cond.update(False, 6500, seconds=0.01)
    assert not cond.active
    assert_warned_once(json_lines(stream), "fsync_slow", "fsync_fast_again")


def test_the_once_only_check_fails_on_a_warning_per_retry() -> None:
    """The planted bug for assert_warned_once: a logger that warns on every failed retry
    (what peer_connect_failed would be at warning level) must be caught."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, env={})
    for failures in range(1, 4):
        get_logger().warning("peer_unreachable", peer=2, failures=failures)
    get_logger().info("peer_reachable", peer=2)
    with pytest.raises(AssertionError, match="3 peer_unreachable lines"):
        assert_warned_once(json_lines(stream), "peer_unreachable", "peer_reachable", peer=2)
    with pytest.raises(AssertionError, match="0 peer_unreachable lines"):
        assert_warned_once(json_lines(stream), "peer_unreachable", "peer_reachable", peer=3)


# -------------------------------------------------------------- in the daemon

WAIT_S = 30.0  # a liveness bound for the waits below, never an assertion about speed


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    waiting.wait_for(what, condition, WAIT_S)


def node_lines(c: LocalCluster, k: int) -> list[dict[str, Any]]:
    out = []
    for line in c.log_path(k).read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def logged(c: LocalCluster, k: int, event: str, **fields: Any) -> bool:
    return any(
        x.get("event") == event and all(x.get(f) == v for f, v in fields.items())
        for x in node_lines(c, k)
    )


def test_client_connections_are_logged_at_debug_and_peer_connections_at_info() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream, env={})
    key = os.urandom(32)
    server = ClientServer(node=NodeId(1), listen=("127.0.0.1", 0), client_key=key)
    peers = [
        PeerTransport(node=NodeId(n), listen=("127.0.0.1", 0), cluster_key=key) for n in (1, 2)
    ]
    try:
        server.start()
        peers[0].start({NodeId(2): peers[1].address})
        peers[1].start({NodeId(1): peers[0].address})
        ClientConnection.connect(server.address, client_key=key, client_id=7).close()

        def lines(port: str, event: str) -> list[dict[str, Any]]:
            return [x for x in json_lines(stream) if x.get("port") == port and x["event"] == event]

        def client_closed() -> bool:
            server.drain()  # the loop's drain is what notices a closed connection
            return bool(lines("client", "connection_closed"))

        wait_for("client lines", client_closed)
        wait_for("peer lines", lambda: bool(lines("peer", "connection_established")))
        client = lines("client", "connection_established") + lines("client", "connection_closed")
        assert client and {x["level"] for x in client} == {"debug"}, client
        # The same check on the peer port sees info: it tells the levels apart.
        assert {x["level"] for x in lines("peer", "connection_established")} == {"info"}
    finally:
        server.close()
        for p in peers:
            p.close()


def test_a_lone_node_warns_once_and_says_so_when_its_peers_come(tmp_path: Path) -> None:
    """Node 1 of 3 alone: STATUS says no leader yet; each peer unreachable and the lost
    quorum are one warning each however long it waits, and one info line each once the
    others start. A client connection adds nothing to the journal at the default level."""
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(WAIT_S)
        c = LocalCluster.create(tmp_path / "c", 3, durability="unsafe-no-fsync")
        try:
            c.start(1, env={"NOTIFY_SOCKET": str(notify_path)})
            ready = notify.recv(4096).decode().splitlines()
            assert "READY=1" in ready, ready
            (status,) = [a for a in ready if a.startswith("STATUS=")]
            assert "no leader yet" in status and "None" not in status, status
            wait_for("quorum_lost", lambda: logged(c, 1, "quorum_lost"))
            for p in (2, 3):
                wait_for(f"peer {p} unreachable", partial(logged, c, 1, "peer_unreachable", peer=p))
            c.start(2)
            c.start(3)
            c.wait_ready(WAIT_S)
            with c.client(timeout_ms=5000) as client:
                client.put("k", b"v")
            wait_for("quorum_restored", lambda: logged(c, 1, "quorum_restored"))
            for p in (2, 3):
                wait_for(f"peer {p} reachable", partial(logged, c, 1, "peer_reachable", peer=p))
        finally:
            c.down()
    lines = node_lines(c, 1)
    assert_warned_once(lines, "quorum_lost", "quorum_restored")
    for p in (2, 3):
        assert_warned_once(lines, "peer_unreachable", "peer_reachable", peer=p)
    # The first leader after start is news, not a problem (a later change is a warning).
    first = next(x for x in lines if x["event"] == "leader")
    assert first["level"] == "info" and first["previous"] is None, first
    # Clients connected (wait_ready, the put) but only the peers' connections are logged.
    connections = [x for x in lines if x["event"] == "connection_established"]
    assert {x["port"] for x in connections} == {"peer"}, connections


class _Clock:
    """Stands in for node.py's ``time``: perf_counter advances ``step`` per call, so every
    synced write seems to take exactly ``step`` seconds, however busy the machine is."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now

    monotonic_ns = staticmethod(time.monotonic_ns)


def test_slow_synced_writes_are_one_warning_and_one_line_when_fast_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from paxosd.server import node as node_module
    from paxosd.server.config import load_config
    from paxosd.statemachine.commands import Command, Put, encode_command
    from paxosd.tools.initcluster import init_cluster

    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, env={})
    clock = _Clock()
    monkeypatch.setattr(node_module, "time", clock)
    res = init_cluster(tmp_path / "cluster", 1, base_port=24000)
    cfg = dataclasses.replace(load_config(res.configs[0]), durability="unsafe-no-fsync")
    n = node_module.Node(cfg, bootstrap=True)
    try:

        def leading() -> bool:
            n.on_tick()
            n.drain()
            return n.replica.is_leader

        wait_for("a one-member cluster elects itself", leading)
        seq = 0

        def put() -> None:
            nonlocal seq
            seq += 1
            cmd = Command(client_id="c", seq=seq, site="s", op=Put(key="k", value=b"v"))
            n.on_client_command(1, seq, encode_command(cmd))
            n.drain()
            assert n.replies and n.replies[-1].status == "ok"

        clock.step = 0.05  # under the 0.1 s threshold
        put()
        assert not [x for x in json_lines(stream) if x["event"].startswith("fsync")]
        clock.step = 0.2
        for _ in range(5):
            put()
        clock.step = 0.001
        n.slow_write.clear_after_ms = 0  # the quiet period is Condition's, tested above
        put()
        put()
    finally:
        n.storage.close()
    lines = json_lines(stream)
    assert_warned_once(lines, "fsync_slow", "fsync_fast_again")
    (warning,) = [x for x in lines if x["event"] == "fsync_slow"]
    assert warning["seconds"] == 0.2 and warning["threshold_s"] == 0.1
    (cleared,) = [x for x in lines if x["event"] == "fsync_fast_again"]
    assert cleared["times"] >= 5  # at least one synced write per put


def test_a_leader_warns_once_when_a_member_reports_another_digest(tmp_path: Path) -> None:
    """Node 3 is a stand-in on node 3's client port that answers the leader's status
    questions with the leader's applied index and a wrong digest (a replica that diverged),
    then with the right one. The leader warns once, however many rounds it asks, and says
    when the digests agree again."""
    from multiprocessing.connection import wait

    import msgspec

    from paxosd.net.admin import Status
    from paxosd.net.framing import QueryReply, QueryRequest
    from paxosd.server.digestcheck import DIGESTS_KEPT, DigestHistory
    from paxosd.tools.initcluster import client_address

    c = LocalCluster.create(tmp_path / "c", 3, durability="unsafe-no-fsync")
    a = client_address(c.host, c.base_port, 3)
    fake = ClientServer(node=NodeId(3), listen=(a.host, a.port), client_key=c.client_key())
    try:
        c.start(1)
        c.start(2)
        leader = int(c.wait_ready(WAIT_S)["node_id"])
        endpoint = c.endpoints()[leader - 1]
        with Client([endpoint], c.client_key(), timeout_ms=5000) as client:
            client.put("k", b"v")
            status = client.status()
        # The leader's own status, as node 3 with another digest.
        answer = [msgspec.structs.replace(status, node_id=3, digest="0" * 64)]
        fake.start()
        asked = [0]

        def serve_until(condition: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + WAIT_S
            while not condition():
                assert time.monotonic() < deadline, f"never happened: {what}"
                if wait(fake.waitables(), 0.05):
                    for conn_id, body in fake.drain():
                        if isinstance(body, QueryRequest) and isinstance(body.query, Status):
                            asked[0] += 1
                            fake.reply(conn_id, QueryReply(body.request_id, answer[0]))

        serve_until(partial(logged, c, leader, "digest_mismatch", peer=3), "digest_mismatch")
        seen = asked[0]
        serve_until(lambda: asked[0] >= seen + 1, "one more round of questions")
        answer[0] = msgspec.structs.replace(status, node_id=3)
        serve_until(partial(logged, c, leader, "digest_match", peer=3), "digest_match")
    finally:
        fake.close()
        c.down()
    lines = node_lines(c, leader)
    assert_warned_once(lines, "digest_mismatch", "digest_match", peer=3)
    (warning,) = [x for x in lines if x["event"] == "digest_mismatch"]
    assert warning["applied_index"] == status.applied_index
    assert warning["peer_digest"] == "0" * 16
    # The real follower agrees with its leader.
    follower = 3 - leader
    assert not [x for x in lines if x.get("peer") == follower and "digest" in x["event"]]
    # The history keeps a bounded window, and a restore backwards starts it again.
    h = DigestHistory(kept=2)
    for i in range(1, 4):
        h.record(i, f"d{i}")
    assert (h.at(1), h.at(2), h.at(3)) == (None, "d2", "d3") and DIGESTS_KEPT > 2
    h.record(1, "r1")
    assert (h.at(1), h.at(3)) == ("r1", None)
