"""Fuzz the two decoders that see network bytes: the AEAD opener and the record decoder.

Whatever the bytes, the only outcomes are a valid result or the typed error the transport
turns into "close this connection": FrameAuthError from the opener, BadFrame from the
decoder. Any other exception would escape a reader thread, so it fails these tests.
"""

from __future__ import annotations

import contextlib
import os
import typing
from typing import Any

import msgspec
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from paxosd.core.messages import (
    Accept,
    Accepted,
    CatchUpReply,
    CatchUpRequest,
    Heartbeat,
    Message,
    Nack,
    Prepare,
    Promise,
    PromiseEntry,
    SnapshotChunk,
)
from paxosd.core.types import Ballot, DecidedEntry
from paxosd.net import admin, handshake
from paxosd.net.framing import (
    BadFrame,
    ClientBody,
    ClientReply,
    ClientRequest,
    Envelope,
    FrameCodec,
    QueryReply,
    QueryRequest,
    WatchCancel,
    WatchCreate,
    WatchResponse,
    client_codec,
    peer_codec,
)
from paxosd.net.handshake import FrameAuthError, HandshakeError, SecureSession
from paxosd.statemachine.commands import Event, KeyValue

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ints = st.integers(min_value=0, max_value=2**63 - 1)
ballots = st.builds(Ballot, ints, ints)
key_values = st.builds(
    KeyValue, st.text(max_size=12), st.binary(max_size=20), ints, ints, ints, ints
)
events = st.builds(Event, st.sampled_from(["PUT", "DELETE"]), key_values, st.none() | key_values)
values = st.lists(st.binary(max_size=40), max_size=3).map(tuple)
decided = st.builds(DecidedEntry, ints, values)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Prepare, ballots, ints),
    st.builds(
        Promise,
        ballots,
        ints,
        st.lists(st.builds(PromiseEntry, ints, ballots, values, st.booleans()), max_size=3).map(
            tuple
        ),
        ints,
        st.booleans(),
    ),
    st.builds(Nack, ballots, ballots),
    st.builds(Accept, ballots, st.lists(decided, max_size=3).map(tuple), ints),
    st.builds(Accepted, ballots, st.lists(ints, max_size=5).map(tuple)),
    st.builds(Heartbeat, ballots, ints, ints),
    st.builds(CatchUpRequest, ints, ints),
    st.builds(
        CatchUpReply,
        st.none() | st.builds(SnapshotChunk, ints, ints, ints, st.binary(max_size=40)),
        st.lists(decided, max_size=3).map(tuple),
        ints,
    ),
)
batches = st.lists(st.tuples(ints, messages), min_size=1, max_size=8)

# Every admin query and answer, with fields drawn from their type hints: a new struct added to
# AdminQuery/AdminAnswer is fuzzed without touching this file.
queries = st.one_of([st.builds(q) for q in typing.get_args(admin.AdminQuery)])
answers = st.one_of([st.builds(a) for a in typing.get_args(admin.AdminAnswer)])
client_bodies: st.SearchStrategy[ClientBody] = st.one_of(
    st.builds(ClientRequest, ints, st.binary(max_size=40)),
    st.builds(
        ClientReply,
        ints,
        st.sampled_from(["ok", "bad_request", "not_leader", "busy"]),
        st.binary(max_size=40),
        st.none() | ints,
        st.none() | st.text(max_size=30),
    ),
    st.builds(QueryRequest, ints, queries),
    st.builds(QueryReply, ints, answers),
    st.builds(
        WatchCreate,
        ints,
        st.text(max_size=20),
        prefix=st.booleans(),
        start_revision=ints,
        prev_kv=st.booleans(),
        progress_notify=st.booleans(),
        filters=st.lists(st.text(max_size=8), max_size=3).map(tuple),
    ),
    st.builds(WatchCancel, ints),
    st.builds(
        WatchResponse,
        ints,
        events=st.lists(events, max_size=3).map(tuple),
        revision=ints,
        created=st.booleans(),
        canceled=st.booleans(),
        progress=st.booleans(),
        compact_revision=ints,
        reason=st.text(max_size=20),
        node=ints,
        ballot_round=ints,
        ballot_node=ints,
    ),
)
client_batches = st.lists(st.tuples(ints, client_bodies), min_size=1, max_size=8)

PEER = peer_codec(frame_bytes_max=64 * 1024, batch_frames_max=16)
CLIENT = client_codec(frame_bytes_max=64 * 1024, batch_frames_max=16)


def record_of(codec: FrameCodec[Message], batch: list[tuple[int, Message]]) -> bytes:
    return codec.join([codec.encode(src, msg) for src, msg in batch])


def decode_or_bad_frame(codec: FrameCodec[object], data: bytes) -> list[Envelope[object]] | None:
    try:
        return codec.decode(data)
    except BadFrame:
        return None


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted, deleted, or cut short."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and out:
            del out[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


@FUZZ
@given(batches)
def test_records_round_trip_through_the_peer_codec(batch: list[tuple[int, Message]]) -> None:
    got = PEER.decode(record_of(PEER, batch))
    assert [(e.src, e.body) for e in got] == batch


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x90")  # an empty batch
@example(b"\xdd\xff\xff\xff\xff")  # a batch claiming 4 billion frames
@example(b"\x91\x92\x01\xc1")  # a reserved msgpack byte
def test_decoders_raise_only_bad_frame_on_arbitrary_bytes(data: bytes) -> None:
    for codec in (PEER, CLIENT):
        result = decode_or_bad_frame(codec, data)  # type: ignore[arg-type]
        assert result is None or len(result) >= 1


@FUZZ
@given(st.data(), batches)
def test_decoder_raises_only_bad_frame_on_mutated_records(
    data: st.DataObject, batch: list[tuple[int, Message]]
) -> None:
    mutated = data.draw(mutations(record_of(PEER, batch)))
    result = decode_or_bad_frame(PEER, mutated)  # type: ignore[arg-type]
    if result is not None:
        for envelope in result:  # whatever survived is still fully typed
            assert isinstance(envelope.src, int)
            assert isinstance(envelope.body, Message)


def client_record_of(batch: list[tuple[int, ClientBody]]) -> bytes:
    try:
        return CLIENT.join([CLIENT.encode(src, body) for src, body in batch])
    except (OverflowError, AssertionError):
        assume(False)  # an int past 64 bits, or a record past the cap: not a record at all
        raise


@FUZZ
@given(client_batches)
def test_records_round_trip_through_the_client_codec(batch: list[tuple[int, ClientBody]]) -> None:
    record = client_record_of(batch)
    got = CLIENT.decode(record)
    # Compared as bytes: a NaN in a float field is not equal to itself.
    assert CLIENT.join([CLIENT.encode(e.src, e.body) for e in got]) == record
    assert [type(e.body) for e in got] == [type(body) for _, body in batch]


@FUZZ
@given(st.data(), client_batches)
def test_client_decoder_raises_only_bad_frame_on_mutated_records(
    data: st.DataObject, batch: list[tuple[int, ClientBody]]
) -> None:
    mutated = data.draw(mutations(client_record_of(batch)))
    result = decode_or_bad_frame(CLIENT, mutated)  # type: ignore[arg-type]
    if result is not None:
        for envelope in result:  # whatever survived is still fully typed
            assert isinstance(envelope.body, ClientBody)  # type: ignore[arg-type,misc]
            if isinstance(envelope.body, QueryRequest):
                assert isinstance(envelope.body.query, admin.AdminQuery)  # type: ignore[arg-type,misc]


def test_a_query_with_a_wrong_field_type_is_a_bad_frame() -> None:
    """The daemon never sees a query whose fields are not their declared types."""
    good = msgspec.msgpack.encode([[1, ["QueryRequest", 1, ["member_change", "add", 4, "h:1"]]]])
    assert CLIENT.decode(good)[0].body == QueryRequest(1, admin.ChangeMember("add", 4, "h:1"))
    for bad in (
        ["member_change", "add", "four", "h:1"],  # node not an int
        ["member_change", "join", 4, "h:1"],  # kind not one of add/promote/remove
        ["no_such_query"],
    ):
        record = msgspec.msgpack.encode([[1, ["QueryRequest", 1, bad]]])
        assert decode_or_bad_frame(CLIENT, record) is None, bad  # type: ignore[arg-type]


def test_decoder_refuses_records_over_the_size_and_count_caps() -> None:
    small = peer_codec(frame_bytes_max=100, batch_frames_max=2)
    frame = small.encode(1, Prepare(Ballot(1, 1), 0))
    three = b"\x93" + frame * 3
    for data in (three, b"\x91" + b"\xc4\x80" + bytes(128)):
        try:
            small.decode(data)
        except BadFrame:
            continue
        raise AssertionError(f"accepted {data!r}")


def test_client_and_peer_bodies_do_not_cross() -> None:
    client_record = CLIENT.join([CLIENT.encode(5, ClientRequest(1, b"x"))])
    peer_record = record_of(PEER, [(1, Prepare(Ballot(1, 1), 0))])
    assert decode_or_bad_frame(PEER, client_record) is None  # type: ignore[arg-type]
    assert decode_or_bad_frame(CLIENT, peer_record) is None  # type: ignore[arg-type]
    assert CLIENT.decode(CLIENT.join([CLIENT.encode(1, ClientReply(1, "ok", b"", 2))]))


def sessions() -> tuple[SecureSession, SecureSession]:
    k1, k2 = os.urandom(32), os.urandom(32)
    return SecureSession(k1, k2), SecureSession(k2, k1)


@FUZZ
@given(st.binary(max_size=512))
def test_opener_raises_only_frame_auth_error_on_arbitrary_bytes(data: bytes) -> None:
    _, receiver = sessions()
    try:
        receiver.open(data)
    except FrameAuthError:
        return
    raise AssertionError("forged frame accepted")


@FUZZ
@given(st.data(), st.binary(max_size=256))
def test_opener_rejects_every_mutation_of_a_sealed_frame(
    data: st.DataObject, plaintext: bytes
) -> None:
    sender, receiver = sessions()
    sealed = sender.seal(plaintext)
    mutated = data.draw(mutations(sealed))
    try:
        opened = receiver.open(mutated)
    except FrameAuthError:
        return
    assert mutated == sealed and opened == plaintext


class _OneMessage:
    """Stands in for a connection that delivers one handshake message."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        return self.data


@FUZZ
@given(st.binary(max_size=600))
@example(b"\x94\x01\xa4\xc3abc\x01\xc4\x20" + bytes(32))  # invalid UTF-8 in the label
def test_handshake_message_decoders_raise_only_handshake_error(data: bytes) -> None:
    conn: Any = _OneMessage(data)
    decoders: list[Any] = [
        handshake._hello_decoder,
        handshake._reply_decoder,
        handshake._finished_decoder,
    ]
    for decoder in decoders:
        with contextlib.suppress(HandshakeError):
            handshake._recv_message(conn, decoder)
