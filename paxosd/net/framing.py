"""The wire codec: typed envelopes, batched into one plaintext record per AEAD frame.

A record (the plaintext of one sealed frame) is a msgpack array of ``Envelope``s. Batching
lets a writer that finds many frames queued pay for one seal and one socket write instead
of one per frame. Decoding is typed (msgspec) so bytes from the network can only ever become
the structs listed here: no pickle, no code runs, and anything else is a ``BadFrame``.

Envelope bodies are unions per port: the peer port decodes ``Envelope[Message]`` (the core's
messages) and the client port ``Envelope[ClientBody]``, so a client cannot even express a
Prepare. To add a client message, define a tagged struct and add it to ``ClientBody``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, cast

import msgspec

from paxosd.core.messages import Message
from paxosd.net.admin import AdminAnswer, AdminQuery
from paxosd.statemachine.commands import Event

# A record bigger than this is refused from its length prefix, before its body is read, and
# again before it is decoded. It bounds the memory one frame can make us allocate; a CatchUpReply
# larger than this must be split by its sender.
FRAME_BYTES_MAX_DEFAULT = 4 * 1024 * 1024
# Bounds the objects one record can make the decoder build (tiny frames x a 4 MiB record
# would otherwise be ~10^5 objects).
BATCH_FRAMES_MAX_DEFAULT = 1024
# msgpack array32 header: the most framing a batch adds on top of its envelopes.
BATCH_HEADER_BYTES_MAX = 5


class BadFrame(Exception):
    """Bytes from the network that are not a valid record. The connection must be closed."""


# ------------------------------------------------------------------------ client protocol


class ClientRequest(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A client asks the cluster to run ``command`` (the state machine's encoding).

    ``request_id`` is chosen by the client and echoed in the reply, so one connection can
    carry several requests in flight.
    """

    request_id: int
    command: bytes


class ClientReply(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The answer to ``request_id``.

    ``status`` is "ok" (``result`` is the state machine's encoded result), "bad_request"
    (``result`` is the reason, UTF-8), "not_leader", "busy", or "unavailable" (this node
    serves no one for now, e.g. its disk is full; ``result`` says why: ask another). When
    this node could not serve the command, ``leader`` is the node id it believes leads and
    ``leader_address`` that leader's client address, when its config names it: where to
    send the command instead.
    """

    request_id: int
    status: str
    result: bytes
    leader: int | None
    leader_address: str | None = None
    # The header every answer carries (etcd's ResponseHeader, less the cluster id): the node
    # that answered and the ballot it had promised when it did. The store revision the
    # answer reflects is in the result itself, because a retried write answers from the
    # session table with the revision it had when it was applied.
    node: int = 0
    ballot_round: int = 0
    ballot_node: int = 0


class QueryRequest(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A question for the contacted node itself, not for the log: one of the typed admin
    queries of ``paxosd.net.admin`` (status, a stale read, a range of the log, an operator
    action such as a membership change)."""

    request_id: int
    query: AdminQuery


class QueryReply(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The typed answer to the query ``request_id`` (a refusal is an answer too)."""

    request_id: int
    answer: AdminAnswer


class WatchCreate(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Start watch ``watch_id`` (chosen by the client, unique on its connection) on ``key``,
    or on every key starting with ``key`` when ``prefix``.

    ``start_revision``: the first revision to deliver (0: the next change after now).
    ``prev_kv``: events carry the key before the change. ``progress_notify``: the node sends
    an empty response with its revision while the key is quiet. ``filters``: event types to
    leave out ("PUT", "DELETE").
    """

    watch_id: int
    key: str
    prefix: bool = False
    start_revision: int = 0
    prev_kv: bool = False
    progress_notify: bool = False
    filters: tuple[str, ...] = ()


class WatchCancel(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Stop watch ``watch_id``; the node answers with a ``canceled`` response."""

    watch_id: int


class WatchResponse(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Events for watch ``watch_id``, or news about it.

    ``events`` are in revision order; one response never splits a revision's events.
    ``revision`` is the store revision the node had applied when it sent this: with no
    events and ``progress`` set, every event up to it has been delivered. ``created``
    answers a WatchCreate; ``canceled`` ends the watch, with ``reason`` and, when the watch
    asked for history that was compacted, ``compact_revision`` (the oldest it can resume
    from). ``node`` and the ballot are the answering node's header, as on ClientReply.
    """

    watch_id: int
    events: tuple[Event, ...] = ()
    revision: int = 0
    created: bool = False
    canceled: bool = False
    progress: bool = False
    compact_revision: int = 0
    reason: str = ""
    node: int = 0
    ballot_round: int = 0
    ballot_node: int = 0


ClientBody = (
    ClientRequest
    | ClientReply
    | QueryRequest
    | QueryReply
    | WatchCreate
    | WatchCancel
    | WatchResponse
)

# ---------------------------------------------------------------------------- envelopes

B = TypeVar("B")


class Envelope(msgspec.Struct, Generic[B], frozen=True, array_like=True):
    """One frame: who sent it, and what.

    ``src`` is a claim; the receiver checks it against the identity the handshake bound to
    the connection (a node id on the peer port, a client id on the client port).
    """

    src: int
    body: B


PeerEnvelope = Envelope[Message]
ClientEnvelope = Envelope[ClientBody]

_encoder = msgspec.msgpack.Encoder()


def _batch_header(count: int) -> bytes:
    """The msgpack array header for ``count`` elements (fixarray, array16 or array32)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count <= 0xFFFF:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def _batch_count(data: bytes) -> int:
    """The element count from a record's array header, read before decoding anything."""
    if not data:
        raise BadFrame("empty record")
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(data) >= 3:
        return int(struct.unpack_from(">H", data, 1)[0])
    if first == 0xDD and len(data) >= 5:
        return int(struct.unpack_from(">I", data, 1)[0])
    raise BadFrame("record is not a msgpack array")


class FrameCodec(Generic[B]):
    """Encodes envelopes one at a time and decodes whole records, with size and count caps.

    ``body_type`` is the body union for one port (``Message`` or ``ClientBody``).
    """

    def __init__(
        self,
        body_type: Any,
        *,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        batch_frames_max: int = BATCH_FRAMES_MAX_DEFAULT,
    ) -> None:
        assert frame_bytes_max > BATCH_HEADER_BYTES_MAX, frame_bytes_max
        assert batch_frames_max >= 1, batch_frames_max
        self.frame_bytes_max = frame_bytes_max
        self.batch_frames_max = batch_frames_max
        self._decoder = cast(
            "msgspec.msgpack.Decoder[list[Envelope[B]]]",
            msgspec.msgpack.Decoder(list[Envelope[body_type]]),
        )

    def encode(self, src: int, body: B) -> bytes:
        """One envelope's bytes; the caller batches several with ``join``."""
        return _encoder.encode(Envelope(src, body))

    def join(self, frames: Sequence[bytes]) -> bytes:
        """A record holding ``frames`` (each from ``encode``), in order."""
        assert 1 <= len(frames) <= self.batch_frames_max, len(frames)
        record = _batch_header(len(frames)) + b"".join(frames)
        assert len(record) <= self.frame_bytes_max, len(record)
        return record

    def fits(self, frames_bytes: int, frames: int) -> bool:
        """Whether ``frames`` envelopes totalling ``frames_bytes`` fit one record."""
        return (
            frames <= self.batch_frames_max
            and frames_bytes + BATCH_HEADER_BYTES_MAX <= self.frame_bytes_max
        )

    def decode(self, data: bytes) -> list[Envelope[B]]:
        """The envelopes of one record. Raises BadFrame, and nothing else, on any input."""
        if len(data) > self.frame_bytes_max:
            raise BadFrame(f"record of {len(data)} bytes exceeds {self.frame_bytes_max}")
        count = _batch_count(data)
        if count == 0:
            raise BadFrame("empty batch")
        if count > self.batch_frames_max:
            raise BadFrame(f"batch of {count} frames exceeds {self.batch_frames_max}")
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, ValueError) as e:
            # ValidationError is a DecodeError; invalid UTF-8 in a str field surfaces as
            # UnicodeDecodeError, a ValueError (found by tests/test_framing_fuzz.py).
            raise BadFrame(f"undecodable record: {e}") from None


def peer_codec(
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    batch_frames_max: int = BATCH_FRAMES_MAX_DEFAULT,
) -> FrameCodec[Message]:
    return FrameCodec(Message, frame_bytes_max=frame_bytes_max, batch_frames_max=batch_frames_max)


def client_codec(
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    batch_frames_max: int = BATCH_FRAMES_MAX_DEFAULT,
) -> FrameCodec[ClientBody]:
    return FrameCodec(
        ClientBody, frame_bytes_max=frame_bytes_max, batch_frames_max=batch_frames_max
    )


__all__ = [
    "BATCH_FRAMES_MAX_DEFAULT",
    "FRAME_BYTES_MAX_DEFAULT",
    "BadFrame",
    "ClientBody",
    "ClientEnvelope",
    "ClientReply",
    "ClientRequest",
    "QueryReply",
    "QueryRequest",
    "Envelope",
    "FrameCodec",
    "PeerEnvelope",
    "client_codec",
    "peer_codec",
]
