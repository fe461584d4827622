"""The drill's watch-stream and transaction checks on made-up histories: each check passes
the right history and fails a planted wrong one (a dropped, repeated or foreign event, a
lost write, a half-applied txn, a failure branch whose compares held)."""

from __future__ import annotations

from paxosd.lab.drill.streams import Change, Stream, check_all, check_reference, check_stream
from paxosd.lab.drill.workload import Entry, Workload
from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    Compare,
    Delete,
    Deleted,
    Found,
    Get,
    NotFound,
    Put,
    Result,
    Txn,
    TxnResult,
    Written,
)

W = Workload("t00000", 5.0)
K = W.key(0, 0)
A, B = W.txn_key(0, 0), W.txn_key(0, 1)


def entry(op: Put | Delete | Txn | Get, result: Result | None, seq: int = 1) -> Entry:
    outcome = "ok" if result is not None else "unknown"
    done = None if result is None else 2
    return Entry(Operation("c1", op, 1, done, outcome, result), seq)


def put(rev: int, key: str, value: bytes, version: int = 1, create: int = 0) -> Change:
    return Change(rev, "PUT", key, value, version, create or rev)


def deleted(rev: int, key: str) -> Change:
    return Change(rev, "DELETE", key, b"", 0, 0)


def txn_ok() -> Txn:
    return Txn(
        compares=(Compare(key=A, target="version", op="=", number=0),),
        success=(Put(key=A, value=b"t/a"), Put(key=B, value=b"t/b"), Get(key=A)),
        failure=(Get(key=A), Get(key=B)),
    )


def scenario() -> tuple[list[Change], list[Entry]]:
    """Revision 10 start mark, 11 a put, 12 a txn, 13 a delete, 14 a txn that failed (no
    revision), 14 the end mark."""
    ref = [
        put(10, W.mark_key, b"start"),
        put(11, K, b"c1/1"),
        put(12, A, b"t/a"),
        put(12, B, b"t/b"),
        deleted(13, K),
        put(14, W.mark_key, b"end", version=2, create=10),
    ]
    failing = Txn(
        compares=(Compare(key=A, target="version", op="=", number=0),),
        success=(Put(key=A, value=b"u/a"), Put(key=B, value=b"u/b")),
        failure=(Get(key=A), Get(key=B)),
    )
    found_a = Found(value=b"t/a", version=1, create_revision=12, mod_revision=12, revision=13)
    found_b = Found(value=b"t/b", version=1, create_revision=12, mod_revision=12, revision=13)
    entries = [
        entry(Put(key=K, value=b"c1/1"), Written(version=1, revision=11), 1),
        entry(
            txn_ok(),
            TxnResult(
                succeeded=True,
                responses=(
                    Written(version=1, revision=12),
                    Written(version=1, revision=12),
                    Found(value=b"t/a", version=1, create_revision=12, mod_revision=12),
                ),
                revision=12,
            ),
            2,
        ),
        entry(Delete(key=K), Deleted(prior_version=1, revision=13, deleted=1), 3),
        entry(failing, TxnResult(succeeded=False, responses=(found_a, found_b), revision=13), 4),
    ]
    return ref, entries


def stream(ref: list[Change], name: str = "w") -> Stream:
    return Stream(name=name, start=10, changes=list(ref), last=14, creations=[(1, 10)])


def kinds(violations: list) -> list[str]:  # type: ignore[type-arg]
    return [v.kind for v in violations]


def test_a_faithful_history_and_streams_pass() -> None:
    ref, entries = scenario()
    violations, info = check_all(ref, 10, 14, [stream(ref), stream(ref, "v")], entries, W)
    assert violations == []
    assert info["txns"] == {"total": 2, "succeeded": 1, "failed_compare": 1, "unknown": 0}


def test_a_stream_that_dropped_an_event_is_caught() -> None:
    ref, entries = scenario()
    s = stream(ref)
    del s.changes[2]
    violations, _ = check_all(ref, 10, 14, [s], entries, W)
    assert kinds(violations) == ["watch"]
    assert "missed PUT" in violations[0].message and "revision 12" in violations[0].message


def test_a_repeated_reordered_or_foreign_event_is_caught() -> None:
    ref, _ = scenario()
    history, problems = check_reference(ref, 10, 14)
    assert problems == []
    twice = stream(ref)
    twice.changes.insert(2, twice.changes[1])
    assert "twice" in check_stream(twice, history)[0].message
    swapped = stream(ref)
    swapped.changes[1], swapped.changes[4] = swapped.changes[4], swapped.changes[1]
    assert check_stream(swapped, history)
    foreign = stream(ref)
    foreign.changes[1] = put(11, K, b"nobody")
    assert "not in the history" in check_stream(foreign, history)[0].message


def test_a_stream_covering_part_of_the_history_is_judged_on_that_part() -> None:
    ref, _ = scenario()
    history, _ = check_reference(ref, 10, 14)
    tail = Stream(name="late", start=12, changes=ref[2:], last=14)
    assert check_stream(tail, history) == []
    tail.changes = ref[3:]
    assert check_stream(tail, history)


def test_a_stream_that_stopped_before_the_end_is_reported() -> None:
    ref, entries = scenario()
    s = Stream(name="short", start=10, changes=ref[:4], last=12)
    violations, _ = check_all(ref, 10, 14, [s], entries, W)
    assert kinds(violations) == ["watch"]
    assert "not the drill's end 14" in violations[0].message


def test_an_acknowledged_write_missing_from_the_history_is_caught() -> None:
    ref, entries = scenario()
    lost = [c for c in ref if c.value != b"c1/1"]
    violations, _ = check_all(lost, 10, 14, [stream(lost)], entries, W)
    assert "watch-lost" in kinds(violations)


def test_a_value_no_operation_wrote_is_caught() -> None:
    ref, entries = scenario()
    ref.insert(5, put(13, W.txn_key(0, 2), b"ghost"))
    violations, _ = check_all(ref, 10, 14, [stream(ref)], entries, W)
    assert "watch-phantom" in kinds(violations)


def test_a_half_applied_txn_is_caught() -> None:
    ref, entries = scenario()
    half = [c for c in ref if c.value != b"t/b"]
    violations, _ = check_all(half, 10, 14, [stream(half)], entries, W)
    assert "txn" in kinds(violations)
    assert any("half applied" in v.message or "succeeded=True" in v.message for v in violations)


def test_a_txn_split_over_two_revisions_is_caught() -> None:
    ref, entries = scenario()
    split = [c if c.value != b"t/b" else put(13, B, b"t/b") for c in ref]
    violations, _ = check_all(split, 10, 14, [], entries, W)
    assert any(v.kind == "txn" and "half applied" in v.message for v in violations)


def test_a_failure_branch_whose_compares_held_is_caught() -> None:
    ref, entries = scenario()
    # The same history, but the failed txn's compare (version(A) = 0) holds at revision 11.
    wrong = Txn(
        compares=(Compare(key=A, target="version", op="=", number=0),),
        success=(Put(key=A, value=b"v/a"), Put(key=B, value=b"v/b")),
        failure=(Get(key=A), Get(key=B)),
    )
    entries.append(
        entry(
            wrong,
            TxnResult(
                succeeded=False,
                responses=(NotFound(revision=11), NotFound(revision=11)),
                revision=11,
            ),
            5,
        )
    )
    violations, _ = check_all(ref, 10, 14, [], entries, W)
    assert [v.message for v in violations if v.kind == "txn"] == [
        "c1 txn 5: took the failure branch at revision 11, but every compare held"
    ]


def test_a_txn_read_that_does_not_see_its_own_write_is_caught() -> None:
    ref, entries = scenario()
    result = entries[1].operation.result
    assert isinstance(result, TxnResult)
    stale = TxnResult(
        succeeded=True, responses=(*result.responses[:2], NotFound(revision=12)), revision=12
    )
    entries[1] = entry(txn_ok(), stale, 2)
    violations, _ = check_all(ref, 10, 14, [], entries, W)
    assert any(v.kind == "txn" and "not its own write" in v.message for v in violations)


def test_an_unknown_txn_may_be_applied_or_not_but_not_half() -> None:
    ref, entries = scenario()
    entries[1] = entry(txn_ok(), None, 2)
    assert check_all(ref, 10, 14, [], entries, W)[0] == []
    none = [c for c in ref if c.revision != 12]
    # (without the later txn, whose reads saw this one's writes)
    assert check_all(none, 10, 14, [], entries[:3], W)[0] == []
    half = [c for c in ref if c.value != b"t/a"]
    assert "txn" in kinds(check_all(half, 10, 14, [], entries, W)[0])


def etcd_read(key: str, result: Result) -> Entry:
    return Entry(Operation("e1", Get(key=key), 1, 2, "ok", result), 0, via="etcd")


def test_an_etcd_read_is_the_historys_state_at_its_header_revision() -> None:
    """An etcd client takes a Range's header revision as the moment of its answer (it
    watches from revision + 1 next): a value from one moment under the header of another
    is an answer the register check cannot see, as it compares values only."""
    ref, entries = scenario()
    at_12 = Found(value=b"c1/1", version=1, create_revision=11, mod_revision=11, revision=12)
    right = [
        etcd_read(K, at_12),
        etcd_read(K, NotFound(revision=13)),
        etcd_read(K, NotFound(revision=10)),
    ]
    violations, _ = check_all(ref, 10, 14, [], entries + right, W)
    assert violations == []
    # The value of revision 11 answered with the header of 13 (K was deleted at 13): a
    # watch from 14 would never show the delete.
    late_header = Found(value=b"c1/1", version=1, create_revision=11, mod_revision=11, revision=13)
    # Absent, with the header of a revision at which K held a value.
    absent_at_12 = NotFound(revision=12)
    for wrong in (late_header, absent_at_12):
        violations, _ = check_all(ref, 10, 14, [], [*entries, etcd_read(K, wrong)], W)
        assert [v.kind for v in violations] == ["etcd-read"], (wrong, violations)
