"""sd_notify client against a datagram socket the test owns (standing in for systemd)."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxosd.server.sdnotify import STATUS_CHARS_MAX, Notifier, watchdog_interval_ms

RECV_TIMEOUT_S = 10.0  # a bound on a hang, not a speed assertion: datagrams arrive at once


@pytest.fixture
def systemd_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket and the $NOTIFY_SOCKET value naming it.

    A short directory of its own: sun_path holds only 108 bytes, less than pytest's tmp paths.
    """
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT_S)
        try:
            yield sock, path
        finally:
            sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(65536).decode().split("\n")


def test_ready_status_watchdog_and_stopping_arrive_as_datagrams(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, path = systemd_socket
    with Notifier({"NOTIFY_SOCKET": path}) as n:
        assert n.enabled
        assert n.ready(status="leader of ballot 3.1, decided 10, applied 10")
        assert n.watchdog()
        assert n.status("follower")
        assert n.extend_timeout(30_000)
        assert n.stopping()
    assert received(sock) == ["READY=1", "STATUS=leader of ballot 3.1, decided 10, applied 10"]
    assert received(sock) == ["WATCHDOG=1"]
    assert received(sock) == ["STATUS=follower"]
    assert received(sock) == ["EXTEND_TIMEOUT_USEC=30000000"]
    assert received(sock) == ["STOPPING=1"]


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux", reason="Linux")
def test_an_abstract_namespace_socket_is_named_with_an_at_sign() -> None:
    name = "paxosd-test-" + secrets.token_hex(8)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(RECV_TIMEOUT_S)
        with Notifier({"NOTIFY_SOCKET": "@" + name}) as n:
            assert n.watchdog()
        assert received(sock) == ["WATCHDOG=1"]


def test_status_is_one_line_and_bounded(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    with Notifier({"NOTIFY_SOCKET": path}) as n:
        n.status("role: leader\nREADY=1\n" + "x" * 5000)
    (line,) = received(sock)  # an embedded newline must not smuggle in a second assignment
    assert line.startswith("STATUS=role: leader READY=1 xxx")
    assert len(line) == len("STATUS=") + STATUS_CHARS_MAX


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.status("x") and not n.stopping()
    n.close()


def test_an_unsupported_socket_kind_is_a_no_op() -> None:
    n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and not n.ready()


def test_a_notification_that_cannot_be_delivered_is_reported_not_raised(tmp_path: Path) -> None:
    with Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}) as n:
        assert n.enabled
        assert n.ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval_ms({"WATCHDOG_USEC": "10000000"}) == 5000
    assert watchdog_interval_ms({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, pid=42) == 5000
    assert watchdog_interval_ms({"WATCHDOG_USEC": "1000"}) == 1  # never zero: that would spin


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "41"},  # meant for another process
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "x"},
    ],
)
def test_no_watchdog_interval_when_no_watchdog_applies_to_us(env: dict[str, str]) -> None:
    assert watchdog_interval_ms(env, pid=42) is None
