"""What the host delivers to a client: one ``Reply`` per answered command.

Its own module because both the runner (which makes most replies) and the lease keeper (which
answers keep-alives itself) build them, and the keeper is driven by the runner: a reply type
in the runner would tie the two in a loop of imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from paxosd.core.types import NodeId


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer for the host to deliver: ``status`` "ok" with the encoded ``result``, or a
    refusal ("not_leader", "busy", "bad_request") with ``leader`` as a hint and ``result``
    the leader's client address when known."""

    conn_id: int
    request_id: int
    status: str
    result: bytes
    leader: NodeId | None = None


__all__ = ["Reply"]
