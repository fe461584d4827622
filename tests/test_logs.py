"""Logging setup: JSON off a TTY, console on one, levels, node binding, and no secret ever."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from paxosd.server.logs import (
    REDACTED,
    bind_node,
    configure_logging,
    get_logger,
    redact_secrets,
    unbind_all,
)

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
