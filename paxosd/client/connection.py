"""Opening a client connection to one member, and how its failures are classified.

A refused key is the caller's problem (``AuthError``, never retried). Anything else (refused
connection, timeout, handshake trouble) is ``Lost``: the router marks the endpoint down with
the reason, and the caller tries another member.
"""

from __future__ import annotations

import os
import time

from paxosd.client.errors import AuthError, KeyFileError
from paxosd.client.routing import (
    DOWN_S,
    HANDSHAKE_DOWN_S,
    Endpoint,
    Router,
    is_refusal,
    os_reason,
)
from paxosd.net.handshake import HandshakeError
from paxosd.net.keyfile import exposure
from paxosd.net.transport import ClientConnection

CONNECT_TIMEOUT_MS = 1000
# A key file is one line of hex; anything much bigger is not one (and is not read whole).
KEY_FILE_BYTES_MAX = 4096
KEY_BYTES_MIN = 32


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The client key in ``path`` (hex text), refusing a file others may read.

    :raises KeyFileError: naming the file and what to do about it.
    """
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            exposed = exposure(os.fstat(f.fileno()).st_mode)
            if exposed is not None:
                raise KeyFileError(
                    f"key file {shown}: {exposed}; a client key must be private to its "
                    f"owner: chmod 600 {shown}"
                )
            raw = f.read(KEY_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {shown}: {e.strerror or 'error'}") from None
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        # Never echo the content: it may be a real key in the wrong format.
        raise KeyFileError(f"key file {shown} does not hold hex") from None
    if len(raw) > KEY_FILE_BYTES_MAX or len(key) < KEY_BYTES_MIN:
        raise KeyFileError(
            f"key file {shown} holds {len(key)} bytes; {KEY_BYTES_MIN} to "
            f"{KEY_FILE_BYTES_MAX // 2} expected"
        )
    return key


class Lost(Exception):
    """One attempt failed in a way a retry elsewhere may fix; ``str(e)`` is the reason."""


def open_connection(
    router: Router,
    ep: Endpoint,
    key: bytes,
    conn_id: int,
    *,
    timeout_ms: int = CONNECT_TIMEOUT_MS,
) -> ClientConnection:
    """Connect and handshake to ``ep`` within ``timeout_ms`` (the caller passes less when its
    request has less time left); on failure the router marks it down with the reason, for
    longer the longer the attempt blocked."""
    assert timeout_ms > 0, timeout_ms
    started = time.monotonic()
    try:
        conn = ClientConnection.connect(
            ep.address, client_key=key, client_id=conn_id, timeout_ms=timeout_ms
        )
    except HandshakeError as e:
        text = str(e)
        router.connect_failed(
            ep,
            f"handshake failed: {text}",
            refused=False,
            down_s=HANDSHAKE_DOWN_S,
            spent_s=time.monotonic() - started,
        )
        if any(word in text.lower() for word in ("auth", "digest", "key")):
            raise AuthError(f"{ep.name} refused the client key ({text})") from None
        raise Lost(f"{ep.name}: handshake failed: {text}") from None
    except OSError as e:
        reason = os_reason(e)
        router.connect_failed(
            ep,
            reason,
            refused=is_refusal(e),
            down_s=DOWN_S,
            spent_s=time.monotonic() - started,
        )
        raise Lost(f"{ep.name}: {reason}") from None
    router.connected(ep, conn.server_node)
    return conn


__all__ = ["CONNECT_TIMEOUT_MS", "Lost", "open_connection", "read_key_file"]
