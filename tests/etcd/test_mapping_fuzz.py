"""Fuzz the gateway's mapping of etcd requests onto paxosd's ops.

gRPC hands the gateway whatever protobuf bytes a client sent, decoded by protobuf into
messages with any field values. Whatever they are, the mapping must give a paxosd op that
the command codec accepts, or a typed refusal (BadRequestError: INVALID_ARGUMENT; Abort:
its status) — never another exception, which would surface as an opaque INTERNAL error.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("google.protobuf", reason="the etcd extra is not installed")

from google.protobuf.message import DecodeError  # noqa: E402

from paxosd.client.errors import BadRequestError  # noqa: E402
from paxosd.etcd.gateway import (  # noqa: E402
    Abort,
    KeyRange,
    delete_op,
    key_range,
    prefix_end,
    range_op,
    range_response,
    txn_compare,
    txn_plan,
)
from paxosd.etcd.proto import rpc_pb2  # noqa: E402
from paxosd.statemachine.commands import (  # noqa: E402
    BadCommand,
    Command,
    NotFound,
    Row,
    Rows,
    Txn,
    encode_command,
)

keys = st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode))


def accepted(op: object) -> None:
    """The op encodes as a command (what the client would send), or BadCommand says why."""
    with contextlib.suppress(BadCommand):
        encode_command(Command(client_id="c", seq=1, site="etcd", op=op))  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_as_any_request(data: bytes) -> None:
    for kind, mapper in (
        (rpc_pb2.RangeRequest, lambda m: range_op(m)[0]),
        (rpc_pb2.DeleteRangeRequest, delete_op),
        (rpc_pb2.Compare, txn_compare),
        (rpc_pb2.RequestOp, lambda m: txn_plan(m).op),
    ):
        try:
            msg = kind.FromString(data)
        except DecodeError:
            continue
        with contextlib.suppress(BadRequestError, Abort):
            accepted(mapper(msg))


@settings(max_examples=300, deadline=None)
@given(keys, keys, st.integers(-5, 5), st.integers(-1, 9), st.integers(-1, 4), st.booleans())
def test_range_fields(
    key: bytes, end: bytes, limit: int, target: int, order: int, count_only: bool
) -> None:
    req = rpc_pb2.RangeRequest(
        key=key,
        range_end=end,
        limit=limit,
        sort_target=target,
        sort_order=order,
        count_only=count_only,
    )
    try:
        op, kr = range_op(req)
    except BadRequestError:
        return
    accepted(op)
    rows = Rows(rows=(Row(key="a", value=b"v", version=1),), more=False, revision=2)
    resp = range_response(
        req, kr, rows if not kr.single else NotFound(revision=2), rpc_pb2.ResponseHeader()
    )
    assert resp.count <= 1


def test_key_ranges_are_etcds() -> None:
    assert (
        prefix_end(b"foo") == b"fop"
        and prefix_end(b"a\xff") == b"b"
        and prefix_end(b"\xff") == b"\0"
    )
    assert key_range(b"k", b"") == KeyRange("k", "k", None, True)
    assert key_range(b"foo", b"fop") == KeyRange("foo", "foo", None, False)  # prefix
    assert key_range(b"\0", b"\0") == KeyRange("", "", None, False)  # every key
    assert key_range(b"b", b"\0") == KeyRange("", "b", None, False)  # from b on
    kr = key_range(b"r/a", b"r/c")
    assert kr.prefix == "r/" and kr.holds("r/b") and not kr.holds("r/c") and not kr.holds("r/")


def test_a_planted_wrong_range_is_caught() -> None:
    """Planted: a range that forgot its upper bound would keep r/c; holds() must not."""
    wrong = KeyRange("r/", "r/a", None, False)
    assert wrong.holds("r/c") and not key_range(b"r/a", b"r/c").holds("r/c")


def test_txn_compare_targets() -> None:
    c = rpc_pb2.Compare(
        key=b"k", target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.LESS, mod_revision=5
    )
    got = txn_compare(c)
    assert (got.key, got.target, got.op, got.number) == ("k", "mod", "<", 5)
    txn = Txn(compares=(got,), success=())
    accepted(txn)


@pytest.mark.parametrize("field", ["target", "result"])
def test_unknown_enum_values_are_refused(field: str) -> None:
    """proto3 enums are open: a client may send a number etcd never defined."""
    c = rpc_pb2.Compare(key=b"k")
    setattr(c, field, 99)
    with pytest.raises(BadRequestError):
        txn_compare(c)
    with pytest.raises(BadRequestError):
        range_op(rpc_pb2.RangeRequest(key=b"k", sort_target=99))
