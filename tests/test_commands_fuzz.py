"""Decoders face the network and the disk: any bytes give a value or the one typed error."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxosd.statemachine.commands import (
    COMMAND_BYTES_MAX,
    Alarm,
    AlarmMember,
    Alarms,
    BadCommand,
    Block,
    Cas,
    Command,
    Compact,
    Compacted,
    Compare,
    Delete,
    Deleted,
    Found,
    FutureRevision,
    Get,
    KeyValue,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseInfo,
    LeaseKeepAlive,
    LeaseKept,
    LeaseLeases,
    LeaseList,
    LeaseNotFound,
    LeaseRefused,
    LeaseRevoke,
    LeaseRevoked,
    LeaseTakeover,
    LeaseTimeToLive,
    NoSpace,
    Put,
    RevisionCompacted,
    Row,
    Rows,
    Scan,
    Txn,
    TxnRefused,
    TxnResult,
    View,
    Written,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from paxosd.statemachine.machine import _CHECKSUM_BYTES, BadSnapshot, StateMachine, _seal

_VALID_COMMANDS = [
    encode_command(Command("client-1", 1, "A", Put("key", b"value"))),
    encode_command(Command("c", 1, "B", Cas("k", b"n", expect_value=b"o"))),
    encode_command(Command("c", 2, "B", Cas("k", b"n", expect_version=0))),
    encode_command(Command("c", 3, "B", Scan("pre", 10))),
    encode_command(Command("c", 4, "B", Block("B", "A"))),
    encode_command(Command("c", 5, "B", View("A", 3))),
    encode_command(Command("c", 6, "B", Get("key", revision=2))),
    encode_command(Command("c", 7, "B", Scan("k", 5, revision=2))),
    encode_command(Command("c", 8, "B", Put("key", b"v2", prev_kv=True))),
    encode_command(
        Command(
            "c",
            9,
            "B",
            Txn(
                (Compare("key", "value", "=", value=b"v2"), Compare("k", "mod", "=", number=3)),
                (Put("t", b"1"), Get("key"), Delete("k", prefix=True, prev_kv=True)),
                (Scan("", 3, revision=3),),
            ),
        )
    ),
    encode_command(Command("c", 10, "B", Compact(3))),
    encode_command(Command("c", 11, "B", Delete("key", prev_kv=True))),
    encode_command(Command("c", 13, "B", LeaseGrant(5, lease_id=7))),
    encode_command(Command("c", 14, "B", LeaseKeepAlive(7))),
    encode_command(Command("c", 15, "B", LeaseTimeToLive(7, keys=True))),
    encode_command(Command("c", 16, "B", LeaseCheckpoint(1, 2, ((7, 1500),)))),
    encode_command(Command("c", 17, "B", LeaseExpire(7, 1, 2))),
    encode_command(Command("c", 18, "B", LeaseRevoke(7))),
    encode_command(Command("c", 19, "B", LeaseLeases())),
]
_KV = KeyValue("a", b"1", 2, 3, 2)
_VALID_RESULTS = [
    encode_result(Written(3)),
    encode_result(Found(b"v", 2)),
    encode_result(Rows((Row("a", b"1", 1), Row("b", b"2", 5)), more=True)),
    encode_result(Written(3, 7, prev=_KV)),
    encode_result(Deleted(2, 8, 2, prev=(_KV, _KV))),
    encode_result(TxnResult(True, (Written(1, 4), Found(b"v", 1, 2, 4, 0, 4)), 4)),
    encode_result(Compacted(3, 9)),
    encode_result(RevisionCompacted(3, 1)),
    encode_result(FutureRevision(9)),
    encode_result(TxnRefused("duplicate key")),
    encode_result(NoSpace(2 << 20, 1 << 20)),
    encode_result(Alarms((AlarmMember(1, "NOSPACE", 1 << 20),))),
    encode_result(LeaseGranted(7, 5, 3)),
    encode_result(LeaseInfo(7, 3, 5, ("a", "b"), 4)),
    encode_result(LeaseRevoked(7, 2, 5)),
    encode_result(LeaseList((1, 7), 5)),
    encode_result(LeaseKept(7, 5)),
    encode_result(LeaseNotFound(7, 5)),
    encode_result(LeaseRefused("below the minimum")),
]


def _snapshot() -> bytes:
    sm = StateMachine()
    out = sm.apply(1, tuple(_VALID_COMMANDS[:12]))
    txn = decode_result(out[9][2])
    assert isinstance(txn, TxnResult) and txn.succeeded
    sm.apply(2, (encode_command(Command("c", 12, "B", Put("key", b"value"))),))
    # Every part of a format-2 state is present: a compaction, a base version kept below it,
    # deletions and several keys at one revision.
    assert (sm.compact_revision, sm.revision) == (3, 6)
    # The key's value at 2 (kept below the compaction: the prev_kv of the event at 4) and at
    # 6, and its two timeline posts.
    assert sm.snapshot().count(b"value") == 4
    # Format 3: a lease with a checkpoint and a key attached to it.
    sm.apply(
        3,
        (
            encode_command(Command("c", 13, "B", LeaseGrant(5, lease_id=7))),
            encode_command(Command("c", 14, "B", Put("leased", b"x", lease=7))),
            encode_command(Command("c", 15, "B", LeaseTakeover(1, 2))),
            encode_command(Command("c", 16, "B", LeaseCheckpoint(1, 2, ((7, 1500),)))),
        ),
    )
    assert sm.lease_keys(7) == ["leased"] and sm.lease_remaining_ms(7) == 1500
    # A raised alarm, so that restore's alarm checks are fuzzed too.
    raised = Alarm("activate", "NOSPACE", 1, 1 << 20)
    sm.apply(4, (encode_command(Command("c", 17, "B", raised)),))
    assert sm.alarms
    return sm.snapshot()


_VALID_SNAPSHOT = _snapshot()


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


def _decode_command_or_typed_error(data: bytes) -> None:
    try:
        cmd = decode_command(data)
    except BadCommand:
        return
    # Anything accepted must be a valid command that round-trips.
    assert decode_command(encode_command(cmd)) == cmd


def _decode_result_or_typed_error(data: bytes) -> None:
    try:
        decode_result(data)
    except BadCommand:
        return


def _restore_or_typed_error(data: bytes) -> None:
    try:
        sm = StateMachine.restore(data)
    except BadSnapshot:
        return
    assert StateMachine.restore(sm.snapshot()).digest() == sm.digest()


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_command_of_arbitrary_bytes_raises_only_bad_command(data):
    _decode_command_or_typed_error(data)


@settings(max_examples=1500, deadline=None)
@given(_mutated(_VALID_COMMANDS))
def test_decode_command_of_mutated_encodings_raises_only_bad_command(data):
    _decode_command_or_typed_error(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200) | _mutated(_VALID_RESULTS))
def test_decode_result_raises_only_bad_command(data):
    _decode_result_or_typed_error(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | _mutated([_VALID_SNAPSHOT]))
def test_restore_of_bad_bytes_raises_only_bad_snapshot(data):
    _restore_or_typed_error(data)


@settings(max_examples=1500, deadline=None)
@given(_mutated([_VALID_SNAPSHOT[:-_CHECKSUM_BYTES]]))
def test_restore_of_a_mutated_state_under_a_good_checksum_is_valid_or_bad_snapshot(body):
    # Past the checksum (a peer can compute one): validation alone must hold the line.
    _restore_or_typed_error(_seal(body))


def test_mutated_snapshot_is_rejected_even_where_the_structure_stays_valid():
    # A flipped bit inside a value decodes fine structurally; the checksum must catch it.
    i = _VALID_SNAPSHOT.index(b"value")
    flipped = _VALID_SNAPSHOT[:i] + b"valuf" + _VALID_SNAPSHOT[i + 5 :]
    with pytest.raises(BadSnapshot):
        StateMachine.restore(flipped)


def test_oversized_input_is_refused_before_decoding():
    with pytest.raises(BadCommand, match="over"):
        decode_command(b"\x00" * (COMMAND_BYTES_MAX + 1))


@pytest.mark.parametrize(
    "cmd",
    [
        Command("", 1, "A", Get("k")),
        Command("c", -1, "A", Get("k")),
        Command("c", 1, "", Get("k")),
        Command("c", 1, "A", Get("")),
        Command("c", 1, "A", Get("k" * 1025)),
        Command("c", 1, "A", Put("k", b"x" * (512 * 1024 + 1))),
        Command("c", 1, "A", Cas("k", b"n")),
        Command("c", 1, "A", Cas("k", b"n", expect_value=b"o", expect_version=1)),
        Command("c", 1, "A", Cas("k", b"n", expect_version=-1)),
        Command("c", 1, "A", Scan("", 0)),
        Command("c", 1, "A", Scan("", 1001)),
        Command("c", 1, "A", Block("A", "A")),
        Command("c", 1, "A", Get("\udc80")),
        Command("c", 1, "A", Get("k", revision=-1)),
        Command("c", 1, "A", Compact(-1)),
        Command("c", 1, "A", Delete("")),
        Command("c", 1, "A", Txn((Compare("k", "size", "="),), ())),
        Command("c", 1, "A", Txn((Compare("k", "value", "<=", value=b"1"),), ())),
        Command("c", 1, "A", Txn((Compare("k", "value", "=", number=1),), ())),
        Command("c", 1, "A", Txn((Compare("k", "version", "=", value=b"1"),), ())),
        Command("c", 1, "A", Txn((), (Put("k", b"1"),) * 129)),
        Command("c", 1, "A", Txn((), (), (Get(""),))),
        Command("c", 1, "A", Txn((), (Cas("k", b"n", expect_version=0),))),  # type: ignore[arg-type]
        Command("c", 1, "A", Txn((), (Compact(1),))),  # type: ignore[arg-type]
        Command("c", 1, "A", Alarm("sound")),
        Command("c", 1, "A", Alarm("activate", "CORRUPT")),
        Command("c", 1, "A", Alarm("activate", "NOSPACE", -1)),
        Command("c", 1, "A", Txn((), (Alarm("activate"),))),  # type: ignore[arg-type]
    ],
)
def test_out_of_bounds_commands_are_refused_on_encode_and_on_decode(cmd):
    with pytest.raises(BadCommand):
        encode_command(cmd)
    # The same command forged past the encoder's check is refused by the decoder.
    try:
        forged = msgspec.msgpack.encode(cmd)
    except (TypeError, ValueError, OverflowError):
        return  # not even encodable (lone surrogate)
    with pytest.raises(BadCommand):
        decode_command(forged)
