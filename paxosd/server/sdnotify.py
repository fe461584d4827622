"""A minimal sd_notify(3) client: tells systemd we are ready, alive, busy or stopping.

No dependency, because the protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` ("@name" is Linux's abstract namespace). Outside systemd the variable
is unset and every call is a cheap no-op, so the daemon calls these unconditionally.

With ``Type=notify`` systemd considers the unit started only at READY=1, so the daemon sends it
after recovery and once both listeners are bound. With ``WatchdogSec=`` systemd kills a unit
that stops sending WATCHDOG=1; sending it from the main loop (never from a helper thread) is
what turns a wedged loop into a restart.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final

# A notification is a few short lines; a bound keeps a runaway STATUS from becoming a large
# datagram that systemd would truncate or drop.
MESSAGE_BYTES_MAX: Final = 4096
STATUS_CHARS_MAX: Final = 400


def _socket_address(value: str) -> str | bytes | None:
    """The sockaddr for ``$NOTIFY_SOCKET``, or None if it is not a kind we speak."""
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte, no file system entry.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd 253+ for VMs): not used by a service on a host


class Notifier:
    """One connection-less socket to systemd, opened once and reused by the main loop."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram. True if it was sent.

        A lost notification must never take the daemon down (systemd being restarted is not
        our failure), so send errors are reported by the return value, not raised.
        """
        if self._address is None:
            return False
        for a in assignments:
            assert "=" in a and "\n" not in a, f"not a KEY=value line: {a!r}"
        message = "\n".join(assignments).encode()
        assert len(message) <= MESSAGE_BYTES_MAX, "notification too large"
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([] if status is None else [_status_line(status)]))

    def status(self, text: str) -> bool:
        return self.notify(_status_line(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([] if status is None else [_status_line(status)]))

    def extend_timeout(self, timeout_ms: int) -> bool:
        """Ask for ``timeout_ms`` more before start-up (or stop) counts as failed: a long log
        replay in recovery is progress, not a hang."""
        assert timeout_ms > 0
        return self.notify(f"EXTEND_TIMEOUT_USEC={timeout_ms * 1000}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _status_line(text: str) -> str:
    # STATUS is one line; newlines would start new assignments systemd would misread.
    flat = " ".join(text.split())
    return "STATUS=" + flat[:STATUS_CHARS_MAX]


def watchdog_interval_ms(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> int | None:
    """How often to send WATCHDOG=1: half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3)
    advises, so one late loop iteration is not a kill), or None when no watchdog applies.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that
    inherited the environment must not think it is the one being watched.
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text and (not pid_text.isdigit() or int(pid_text) != pid):
        return None
    return max(1, int(usec_text) // 2000)
