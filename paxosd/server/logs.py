"""Logging: JSON lines for machines (journald, files, pipes), readable lines for people (a TTY).

Every line carries an ISO-8601 UTC timestamp, the level and the fields bound with ``bind_node``
(node and cluster), so lines from five hosts can be merged and sorted. Paxos events should pass
``ballot=`` and ``slot=`` as fields, never inside the message text, so they stay searchable.

No secret is ever logged: ``redact_secrets`` replaces any field whose name contains "key",
"secret", "authkey", "password" or "token" -- at any nesting depth we look at -- before
rendering. The price is that a key-value store's own keys must be logged under another name
(``item=``) if they should appear at all. Tracebacks are rendered without local variables for
the same reason (structlog's rich formatter would show them, and a local may hold a key).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

LEVELS: Final = ("debug", "info", "warning", "error", "critical")
FORMATS: Final = ("auto", "json", "console")

SECRET_MARKERS: Final = ("key", "secret", "authkey", "password", "token")
REDACTED: Final = "[redacted]"
# Redaction walks nested dicts and lists this deep; deeper values are replaced wholesale, so
# a pathological structure can neither hide a secret nor make logging unbounded.
REDACT_DEPTH_MAX: Final = 4
REDACT_ITEMS_MAX: Final = 1000

# syslog priorities: journald reads a "<N>" prefix on stderr lines (SyslogLevelPrefix=yes, the
# default), which makes `journalctl -p warning` work on our JSON lines.
_SYSLOG_PRIORITY: Final = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

# Process-wide fields (node, cluster). Not contextvars: handshake and I/O threads start with an
# empty context, and their lines must carry the node too. Set once at start-up.
_static_fields: dict[str, Any] = {}


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, Mapping):
        if depth >= REDACT_DEPTH_MAX or len(value) > REDACT_ITEMS_MAX:
            return REDACTED
        return {
            k: REDACTED if isinstance(k, str) and is_secret_name(k) else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if depth >= REDACT_DEPTH_MAX or len(value) > REDACT_ITEMS_MAX:
            return REDACTED
        return [_redact_value(v, depth + 1) for v in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide every field whose name marks it as a secret.

    Redacts instead of dropping, so a reader can see that the field was there.
    """
    return {
        k: REDACTED if is_secret_name(k) else _redact_value(v, 1) for k, v in event_dict.items()
    }


def _add_static_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for k, v in _static_fields.items():
        event_dict.setdefault(k, v)
    return event_dict


def bind_node(node_id: int, cluster_id: str | None = None) -> None:
    """Make every later log line of this process (all threads) carry ``node`` (and ``cluster``)."""
    _static_fields["node"] = node_id
    if cluster_id is not None:
        _static_fields["cluster"] = cluster_id


def unbind_all() -> None:
    """Forget ``bind_node``'s fields (for tests and for tools that log for several nodes)."""
    _static_fields.clear()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError):  # closed or detached stream
        return False


def stream_is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True if ``stream`` is the journald stream systemd connected us to ($JOURNAL_STREAM names
    its device and inode, the documented way to tell)."""
    dev_ino = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = dev_ino.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.StringIO has no descriptor
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class _JournalPrefix:
    """Wraps a renderer to prefix each line with its syslog priority for journald."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        priority = _SYSLOG_PRIORITY.get(str(event_dict.get("level", "info")), 6)
        rendered = self._renderer(logger, method, event_dict)
        return f"<{priority}>{rendered!s}"


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Set up structlog for the whole process.

    ``fmt="auto"`` renders for a person when ``stream`` (default stderr) is a TTY and JSON
    lines otherwise -- under systemd stderr is the journal, which wants one record per line.
    """
    assert level in LEVELS, f"unknown log level {level!r}"
    assert fmt in FORMATS, f"unknown log format {fmt!r}"
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    tty = _is_tty(stream)
    use_json = fmt == "json" or (fmt == "auto" and not tty)

    processors: list[Processor] = [
        _add_static_fields,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if use_json:
        # format_exc_info renders a plain traceback string (no locals); dict_tracebacks would
        # include local variables, which may hold key bytes.
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
        if stream_is_journal(stream, env):
            renderer = _JournalPrefix(renderer)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=tty and "NO_COLOR" not in env,
            exception_formatter=structlog.dev.plain_traceback,
        )
    # Last before rendering, so fields added by any processor above are covered too.
    processors += [redact_secrets, renderer]

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        context_class=dict,
        cache_logger_on_first_use=True,
    )


def _json_dumps(obj: MutableMapping[str, Any], **kwargs: Any) -> str:
    # repr() for anything JSON cannot hold (bytes, Paths, ballots) rather than failing a log call.
    kwargs.pop("default", None)
    return json.dumps(obj, default=repr, ensure_ascii=False, **kwargs)


def get_logger(**initial: Any) -> FilteringBoundLogger:
    """A logger with ``initial`` fields bound, e.g. ``get_logger(component="transport")``."""
    return cast(FilteringBoundLogger, structlog.get_logger(**initial))


class Condition:
    """A problem that persists, logged once when it starts and once when it clears.

    ``journalctl -p warning`` is where an operator looks for problems, so a dead peer or a
    lost quorum must be there -- but once, not once per reconnect attempt or per tick, or the
    warnings drown each other. ``update`` is called as often as the caller likes (every
    tick); it logs ``event`` at warning when the problem has lasted ``after_ms``, and
    ``cleared`` at info when it is gone again for ``clear_after_ms`` (so a flapping problem
    is one warning, not one per flap). A problem shorter than ``after_ms`` logs nothing.
    """

    def __init__(
        self, event: str, cleared: str, *, after_ms: int = 0, clear_after_ms: int = 0
    ) -> None:
        assert after_ms >= 0 and clear_after_ms >= 0
        self.event = event
        self.cleared = cleared
        self.after_ms = after_ms
        self.clear_after_ms = clear_after_ms
        self.since_ms: int | None = None  # when the current problem started
        self.good_since_ms: int | None = None  # when it last looked cleared, while warned
        self.warned = False
        self.times = 0  # bad observations since the warning (e.g. how many slow writes)

    @property
    def active(self) -> bool:
        """Whether the warning has been logged and the recovery line has not."""
        return self.warned

    def update(self, bad: bool, now_ms: int, **fields: Any) -> None:
        if bad:
            self.good_since_ms = None
            if self.since_ms is None:
                self.since_ms = now_ms
            self.times += 1
            if not self.warned and now_ms - self.since_ms >= self.after_ms:
                self.warned = True
                self.times = 1
                get_logger().warning(self.event, for_ms=now_ms - self.since_ms, **fields)
            return
        if not self.warned:
            self.since_ms = None
            self.times = 0
            return
        if self.good_since_ms is None:
            self.good_since_ms = now_ms
        if now_ms - self.good_since_ms < self.clear_after_ms:
            return
        assert self.since_ms is not None
        get_logger().info(
            self.cleared, after_ms=self.good_since_ms - self.since_ms, times=self.times, **fields
        )
        self.since_ms = self.good_since_ms = None
        self.warned = False
        self.times = 0


def fatal(message: str, stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> None:
    """Print a start-up failure as one line on stderr, at error priority in the journal.

    These lines are printed, not logged (they must read well on a terminal, and logging may
    not be set up yet), but under systemd a bare stderr line is priority info, so without the
    prefix ``journalctl -p warning`` would not show why a node does not start.
    """
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    prefix = f"<{_SYSLOG_PRIORITY['error']}>" if stream_is_journal(stream, env) else ""
    print(f"{prefix}{message}", file=stream, flush=True)
