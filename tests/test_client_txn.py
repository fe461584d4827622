"""The client's transaction helpers, cas as a transaction, and the typed errors for refused
revisions (no cluster: these are pure mappings; tests/cli/test_cli_revisions.py runs them
against one)."""

from __future__ import annotations

import pytest

from paxosd.client import txn
from paxosd.client.client import check_revision, result_revision, revision_error
from paxosd.client.errors import CompactedError, FutureRevisionError, TxnRefusedError
from paxosd.statemachine.commands import (
    CasMismatch,
    Command,
    Compare,
    Delete,
    Found,
    FutureRevision,
    Get,
    NotFound,
    Put,
    RevisionCompacted,
    Rows,
    Scan,
    Stale,
    Txn,
    TxnRefused,
    TxnResult,
    Written,
    decode_command,
    encode_command,
)


def test_compare_builders_read_like_the_condition() -> None:
    assert (txn.value("k") == b"v") == Compare(key="k", target="value", op="=", value=b"v")
    assert (txn.value("k") != "text") == Compare(key="k", target="value", op="!=", value=b"text")
    assert (txn.version("k") == 0) == Compare(key="k", target="version", op="=", number=0)
    assert (txn.create("k") < 5) == Compare(key="k", target="create", op="<", number=5)
    assert (txn.mod("k") > 3) == Compare(key="k", target="mod", op=">", number=3)
    assert (txn.lease("k") == 0) == Compare(key="k", target="lease", op="=", number=0)
    with pytest.raises(TypeError):
        _ = txn.version("k") == b"1"
    with pytest.raises(TypeError):
        _ = txn.value("k") == 1


def test_op_builders_and_a_whole_transaction_encode() -> None:
    t = Txn(
        compares=(txn.version("lock") == 0,),
        success=(
            txn.put("lock", b"me", prev_kv=True),
            txn.get("config", revision=4),
            txn.scan("p/", 10),
            txn.delete("old/", prefix=True, prev_kv=True),
        ),
        failure=(txn.get("lock"),),
    )
    assert t.success == (
        Put(key="lock", value=b"me", prev_kv=True),
        Get(key="config", revision=4),
        Scan(prefix="p/", limit=10),
        Delete(key="old/", prefix=True, prev_kv=True),
    )
    cmd = Command(client_id="c", seq=1, site="s", op=t)
    assert decode_command(encode_command(cmd)) == cmd


def test_cas_is_a_transaction_and_maps_back_to_written_or_mismatch() -> None:
    by_value = txn.cas_txn("k", b"new", expect_value=b"old")
    assert by_value == Txn(
        compares=(Compare(key="k", target="value", op="=", value=b"old"),),
        success=(Put(key="k", value=b"new"),),
        failure=(Get(key="k"),),
    )
    by_version = txn.cas_txn("k", b"new", expect_version=0)
    assert by_version.compares == (Compare(key="k", target="version", op="=", number=0),)
    with pytest.raises(ValueError, match="exactly one"):
        txn.cas_txn("k", b"new")
    with pytest.raises(ValueError, match="exactly one"):
        txn.cas_txn("k", b"new", expect_value=b"a", expect_version=1)

    written = Written(version=3, revision=9)
    assert txn.cas_result(TxnResult(True, (written,), 9)) == written
    assert txn.cas_result(TxnResult(False, (Found(b"cur", 2, 4, 6, 0, 8),), 8)) == CasMismatch(
        b"cur", 2, 8
    )
    assert txn.cas_result(TxnResult(False, (NotFound(8),), 8)) == CasMismatch(None, 0, 8)
    # Anything else (a refusal) passes through for the caller to report.
    assert txn.cas_result(Stale(4)) == Stale(4)


def test_refused_revisions_become_typed_errors_with_the_numbers() -> None:
    compacted = revision_error(RevisionCompacted(compact_revision=12, revision=5), 5)
    assert isinstance(compacted, CompactedError)
    assert compacted.compact_revision == 12 and compacted.revision == 5
    assert str(compacted) == "revision 5 was compacted; the oldest readable revision is 12"
    future = revision_error(FutureRevision(revision=20), 99)
    assert isinstance(future, FutureRevisionError)
    assert str(future) == "revision 99 is a future revision; the current revision is 20"
    refused = revision_error(TxnRefused("duplicate key 'k' in one branch"), 0)
    assert isinstance(refused, TxnRefusedError)
    assert revision_error(Rows((), False, 3), 0) is None
    with pytest.raises(CompactedError):
        check_revision(RevisionCompacted(compact_revision=3, revision=1), 1)
    assert check_revision(NotFound(4)) == NotFound(4)


def test_the_header_revision_is_the_store_revision_an_answer_reflects() -> None:
    assert result_revision(Written(1, 7)) == 7
    assert result_revision(Rows((), False, 9)) == 9
    # A refusal names the revision asked for, not the store's.
    assert result_revision(RevisionCompacted(compact_revision=3, revision=1)) == 0
    assert result_revision(Stale(3)) == 0


def test_a_refused_txn_or_compact_is_a_typed_error_not_a_result() -> None:
    from paxosd.client.client import not_applied
    from paxosd.client.errors import BadRequestError, UnavailableError
    from paxosd.statemachine.commands import Full, Malformed

    assert isinstance(not_applied(Full("kv")), UnavailableError)
    assert "kv bound is reached" in str(not_applied(Full("kv")))
    assert isinstance(not_applied(Malformed("bad")), BadRequestError)
    assert isinstance(not_applied(Stale(3)), BadRequestError)
