"""The revision checker (paxosd/sim/revisions.py): its reference model against etcd's documented
behaviour, and the checker against small histories with a known answer, each bad one a way a
store can break revision order (a read that sees half a transaction, a write answered with the
wrong revision, a write ordered before one acknowledged earlier)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from paxosd.sim.checker import Violation
from paxosd.sim.linearizability import Operation
from paxosd.sim.revisions import Recorder, ReferenceStore, check
from paxosd.statemachine.commands import (
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
    NotFound,
    Op,
    Put,
    Result,
    RevisionCompacted,
    Row,
    Rows,
    Scan,
    Txn,
    TxnRefused,
    TxnResult,
    Written,
    encode_command,
)


def kv(key: str, value: bytes, create: int, mod: int, version: int) -> KeyValue:
    return KeyValue(key=key, value=value, create_revision=create, mod_revision=mod, version=version)


# ------------------------------------------------------------------------- the model


def test_a_fresh_store_is_at_revision_1_and_each_change_adds_one() -> None:
    s = ReferenceStore()
    assert s.revision == 1
    assert s.apply(Put("a", b"1")) == Written(version=1, revision=2)
    assert s.apply(Put("a", b"2", prev_kv=True)) == Written(
        version=2, revision=3, prev=kv("a", b"1", 2, 2, 1)
    )
    assert s.apply(Get("a")) == Found(b"2", 2, create_revision=2, mod_revision=3, revision=3)
    # A delete of an absent key and a read change nothing, so they keep the revision.
    assert s.apply(Delete("b")) == Deleted(prior_version=0, revision=3)
    assert s.revision == 3
    assert s.apply(Delete("a", prev_kv=True)) == Deleted(
        prior_version=2, revision=4, deleted=1, prev=(kv("a", b"2", 2, 3, 2),)
    )
    # A key put again after a delete starts over: new create revision, version 1.
    assert s.apply(Put("a", b"3")) == Written(version=1, revision=5)
    assert s.current("a") == kv("a", b"3", 5, 5, 1)


def test_a_prefix_delete_removes_its_keys_at_one_revision_in_key_order() -> None:
    s = ReferenceStore()
    for key in ("t/b", "t/a", "u/a"):
        s.apply(Put(key, key.encode()))
    assert s.apply(Delete("t/", prefix=True)) == Deleted(prior_version=1, revision=5, deleted=2)
    assert [(e.type, e.kv.key, e.revision) for e in s.events[-2:]] == [
        ("DELETE", "t/a", 5),
        ("DELETE", "t/b", 5),
    ]
    assert s.events[-1].prev_kv == kv("t/b", b"t/b", 2, 2, 1)


def test_reads_at_a_revision_and_compaction_follow_etcd() -> None:
    s = ReferenceStore()
    s.apply(Put("a", b"1"))  # 2
    s.apply(Put("a", b"2"))  # 3
    s.apply(Put("b", b"1"))  # 4
    assert s.apply(Get("a", revision=2)) == Found(b"1", 1, 2, 2, revision=4)
    assert s.apply(Get("b", revision=3)) == NotFound(revision=4)
    assert s.apply(Get("a", revision=5)) == FutureRevision(revision=4)
    assert s.apply(Compact(5)) == FutureRevision(revision=4)
    assert s.apply(Compact(3)) == Compacted(compact_revision=3, revision=4)
    # The state as of the compaction revision stays readable; below it is gone.
    assert s.apply(Get("a", revision=3)) == Found(b"2", 2, 2, 3, revision=4)
    # A refusal names the revision asked for (a future one: the store's).
    assert s.apply(Get("a", revision=2)) == RevisionCompacted(compact_revision=3, revision=2)
    assert s.apply(Scan("", 10, revision=1)) == RevisionCompacted(3, 1)
    assert s.apply(Compact(3)) == RevisionCompacted(compact_revision=3, revision=3)
    in_txn = Txn(compares=(), success=(Put("c", b"1"), Get("a", revision=2)))
    assert s.apply(in_txn) == RevisionCompacted(compact_revision=3, revision=2)
    assert s.revision == 4  # compaction never moves the revision


def test_a_txn_is_one_revision_and_its_reads_see_its_earlier_writes() -> None:
    s = ReferenceStore()
    s.apply(Put("a", b"1"))  # 2
    txn = Txn(
        compares=(Compare("a", "value", "=", value=b"1"), Compare("a", "version", "<", number=2)),
        success=(Get("b"), Put("b", b"x"), Get("b"), Delete("a"), Scan("", 5)),
        failure=(Get("a"),),
    )
    assert s.apply(txn) == TxnResult(
        succeeded=True,
        responses=(
            NotFound(revision=2),
            Written(version=1, revision=3),
            Found(b"x", 1, 3, 3, revision=3),
            Deleted(prior_version=1, revision=3, deleted=1),
            Rows(rows=(Row("b", b"x", 1, 3, 3),), more=False, revision=3),
        ),
        revision=3,
    )
    assert [e.revision for e in s.events] == [2, 3, 3]
    # The same compares fail now: the failure branch runs, and reads change nothing.
    assert s.apply(txn) == TxnResult(succeeded=False, responses=(NotFound(revision=3),), revision=3)


def test_txn_compares_on_an_absent_key_and_duplicate_writes() -> None:
    s = ReferenceStore()
    absent = [
        Compare("k", "value", "!=", value=b"x"),  # etcd: any value compare on absent is false
        Compare("k", "version", "=", number=0),
        Compare("k", "create", "=", number=0),
        Compare("k", "mod", "<", number=1),
        Compare("k", "lease", "=", number=0),
    ]
    results = [s.apply(Txn(compares=(c,), success=())) for c in absent]
    assert [r.succeeded for r in results if isinstance(r, TxnResult)] == [
        False,
        True,
        True,
        True,
        True,
    ]
    dup = Txn(compares=(), success=(Put("k", b"1"), Put("k", b"2")))
    assert isinstance(s.apply(dup), TxnRefused)
    overlap = Txn(compares=(), success=(Put("t/a", b"1"), Delete("t/", prefix=True)))
    assert isinstance(s.apply(overlap), TxnRefused)
    assert s.revision == 1 and not s.events


# ------------------------------------------------------------------------ the checker


def _log(*commands: tuple[str, int, Op]) -> dict[int, tuple[bytes, ...]]:
    return {
        slot: (encode_command(Command(client_id=cid, seq=seq, site="s1", op=op)),)
        for slot, (cid, seq, op) in enumerate(commands, start=1)
    }


def _op(cid: str, op: Op, start: int, end: int | None, result: Result | None) -> Operation:
    return Operation(
        client_id=cid,
        op=op,
        invoke_ms=start,
        complete_ms=end,
        outcome="ok" if end is not None else "unknown",
        result=result,
    )


def _recorder(decided_ms: Sequence[int]) -> Recorder:
    r = Recorder()
    for slot, ms in enumerate(decided_ms, start=1):
        r.on_decided(slot, ms)
    return r


TXN = Txn(compares=(), success=(Put("x", b"1"), Put("y", b"1")))


def test_a_consistent_history_passes() -> None:
    decided = _log(("w", 1, TXN), ("r", 1, Get("x")))
    histories = [
        [_op("w", TXN, 0, 10, TxnResult(True, (Written(1, 2), Written(1, 2)), 2))],
        [
            _op("r", Get("x"), 11, 20, Found(b"1", 1, 2, 2, revision=2)),
            # Read-index (not in the log): y as the txn left it.
            _op("r", Get("y"), 21, 30, Found(b"1", 1, 2, 2, revision=2)),
        ],
    ]
    _, report = check(decided, histories, _recorder([5, 15]))
    assert (report.writes_checked, report.reads_checked, report.revision) == (1, 2, 2)


def test_a_read_that_sees_half_a_transaction_is_a_violation() -> None:
    decided = _log(("w", 1, TXN))
    histories = [
        [_op("w", TXN, 0, 10, TxnResult(True, (Written(1, 2), Written(1, 2)), 2))],
        # Concurrent with the txn, so either before or after it is fine; half of it is not.
        [
            _op("r", Get("x"), 1, 12, Found(b"1", 1, 2, 2, revision=2)),
            _op("r", Get("y"), 13, 14, NotFound(revision=2)),
        ],
    ]
    with pytest.raises(Violation, match="revisions: r seq 2 Get"):
        check(decided, histories, _recorder([5]))


def test_a_read_that_goes_back_in_time_is_a_violation() -> None:
    put2 = Put("x", b"2")
    decided = _log(("w", 1, Put("x", b"1")), ("w", 2, put2))
    histories = [
        [_op("w", Put("x", b"1"), 0, None, None), _op("w", put2, 0, None, None)],
        [
            _op("r", Get("x"), 10, 11, Found(b"2", 2, 2, 3, revision=3)),
            _op("r", Get("x"), 12, 13, Found(b"1", 1, 2, 2, revision=2)),
        ],
    ]
    with pytest.raises(Violation, match="r seq 2"):
        check(decided, histories, _recorder([1, 2]))


def test_a_write_answered_with_another_revision_is_a_violation() -> None:
    decided = _log(("w", 1, Put("x", b"1")))
    histories = [[_op("w", Put("x", b"1"), 0, 10, Written(version=1, revision=3))]]
    with pytest.raises(Violation, match="reference model gives Written"):
        check(decided, histories, _recorder([5]))


def test_a_write_logged_before_one_acknowledged_earlier_is_a_violation() -> None:
    # b's put was invoked after a's was acknowledged, yet sits before it in the log.
    decided = _log(("b", 1, Put("y", b"1")), ("a", 1, Put("x", b"1")))
    histories = [
        [_op("a", Put("x", b"1"), 0, 10, Written(version=1, revision=3))],
        [_op("b", Put("y", b"1"), 11, None, None)],
    ]
    with pytest.raises(Violation, match="b seq 1 .* before a seq 1"):
        check(decided, histories, _recorder([12, 12]))


def test_a_read_of_a_state_the_log_had_not_decided_yet_is_a_violation() -> None:
    decided = _log(("w", 1, Put("x", b"1")))
    histories = [
        [_op("w", Put("x", b"1"), 0, None, None)],
        [_op("r", Get("x"), 0, 3, Found(b"1", 1, 2, 2, revision=2))],
    ]
    with pytest.raises(Violation, match="decided when it was acknowledged"):
        check(decided, histories, _recorder([5]))  # decided at 5 ms, read answered at 3 ms


def test_replicas_disagreeing_on_the_revision_after_a_slot_is_a_violation() -> None:
    r = Recorder()
    r.on_state(1, 7, 5, 0)
    r.on_state(2, 7, 5, 0)
    with pytest.raises(Violation, match="node 3 has .* after slot 7, node 1 had"):
        r.on_state(3, 7, 6, 0)
    decided = _log(("w", 1, Put("x", b"1")))
    wrong = Recorder()
    wrong.on_state(1, 1, 1, 0)  # the put should have moved it to 2
    with pytest.raises(Violation, match="the reference model"):
        check(decided, [], wrong)
