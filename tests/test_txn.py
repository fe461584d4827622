"""Transactions (etcd's Txn) on the state machine: compares, branches, one revision, and all
or nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paxosd.statemachine.commands import (
    Cas,
    CasMismatch,
    Compact,
    Compare,
    Delete,
    Deleted,
    Found,
    Full,
    FutureRevision,
    Get,
    KeyValue,
    NotFound,
    Put,
    RevisionCompacted,
    Row,
    Rows,
    Scan,
    Timeline,
    Txn,
    TxnOp,
    TxnRefused,
    TxnResult,
    View,
    Written,
)
from paxosd.statemachine.machine import Limits, StateMachine
from tests.test_statemachine import Driver


def _store() -> Driver:
    """k = b"m" at version 2, created at 2 and modified at 4; the store at revision 4."""
    d = Driver()
    d.run(Put("k", b"a"))  # 2
    d.run(Put("other", b"o"))  # 3
    d.run(Put("k", b"m"))  # 4
    return d


def _succeeds(d: Driver, *compares: Compare) -> bool:
    result = d.run(Txn(compares, (Get("k"),), ()))
    assert isinstance(result, TxnResult)
    return result.succeeded


# (target, operand that equals k's field, a smaller operand, a larger operand)
_FIELDS = [
    ("value", b"m", b"l", b"n"),
    ("version", 2, 1, 3),
    ("create", 2, 1, 3),
    ("mod", 4, 3, 5),
    ("lease", 0, None, 1),
]


@pytest.mark.parametrize(("target", "equal", "smaller", "larger"), _FIELDS)
def test_every_compare_target_and_operator_on_a_present_key(target, equal, smaller, larger):
    d = _store()

    def c(op: str, operand: object) -> Compare:
        if target == "value":
            return Compare("k", target, op, value=operand)  # type: ignore[arg-type]
        return Compare("k", target, op, number=operand)  # type: ignore[arg-type]

    assert _succeeds(d, c("=", equal))
    assert not _succeeds(d, c("!=", equal))
    assert not _succeeds(d, c("<", equal)) and not _succeeds(d, c(">", equal))
    assert _succeeds(d, c("<", larger)) and not _succeeds(d, c(">", larger))
    assert not _succeeds(d, c("=", larger)) and _succeeds(d, c("!=", larger))
    if smaller is not None:
        assert _succeeds(d, c(">", smaller)) and not _succeeds(d, c("<", smaller))
    assert d.sm.revision == 4  # compares and reads change nothing


def test_compares_on_an_absent_key_see_zeros_and_value_compares_are_false():
    d = _store()
    for target in ("version", "create", "mod", "lease"):
        assert _succeeds(d, Compare("nope", target, "=", number=0))
        assert not _succeeds(d, Compare("nope", target, ">", number=0))
        assert _succeeds(d, Compare("nope", target, "<", number=1))
    for op in ("=", "!=", "<", ">"):  # etcd: a value compare on an absent key always fails
        assert not _succeeds(d, Compare("nope", "value", op, value=b""))
        assert not _succeeds(d, Compare("nope", "value", op, value=b"zzz"))


def test_every_compare_must_hold_for_the_success_branch():
    d = _store()
    yes = Compare("k", "version", "=", number=2)
    no = Compare("k", "version", "=", number=9)
    assert _succeeds(d, yes, yes)
    assert not _succeeds(d, yes, no)
    assert _succeeds(d)  # no compares: success (etcd)


def test_the_taken_branch_runs_and_its_writes_share_one_revision():
    d = _store()
    txn = Txn(
        (Compare("k", "value", "=", value=b"m"),),
        (Put("k", b"s", prev_kv=True), Put("new", b"n"), Delete("other")),
        (Put("k", b"f"),),
    )
    assert d.run(txn) == TxnResult(
        succeeded=True,
        responses=(
            Written(3, revision=5, prev=KeyValue("k", b"m", 2, 4, 2)),
            Written(1, revision=5),
            Deleted(1, revision=5, deleted=1),
        ),
        revision=5,
    )
    assert d.run(Get("new")) == Found(b"n", 1, 5, 5, revision=5)
    assert [e.kv.key for e in d.sm.events_since(5, 10)] == ["k", "new", "other"]
    # The same txn again: the compare fails now, the failure branch runs.
    assert d.run(txn) == TxnResult(False, (Written(4, revision=6),), revision=6)


def test_reads_inside_a_txn_see_its_earlier_writes():
    d = _store()
    txn = Txn(
        (),
        (
            Get("k"),
            Put("k", b"x"),
            Get("k"),
            Put("k2", b"y"),
            Scan("k", 10),
            Delete("other"),
            Get("other"),
            Scan("", 10),
            Get("k", revision=4),  # a read at a revision reads history, not the txn
        ),
    )
    assert d.run(txn) == TxnResult(
        True,
        (
            # Before the txn's first write a read reflects the store's revision (etcd's
            # per-op header in a txn); after it, the txn's own.
            Found(b"m", 2, 2, 4, revision=4),
            Written(3, revision=5),
            Found(b"x", 3, 2, 5, revision=5),
            Written(1, revision=5),
            Rows((Row("k", b"x", 3, 2, 5), Row("k2", b"y", 1, 5, 5)), False, revision=5),
            Deleted(1, revision=5, deleted=1),
            NotFound(revision=5),
            Rows((Row("k", b"x", 3, 2, 5), Row("k2", b"y", 1, 5, 5)), False, revision=5),
            Found(b"m", 2, 2, 4, revision=5),
        ),
        revision=5,
    )


def test_a_branch_that_writes_nothing_does_not_move_the_revision():
    d = _store()
    result = d.run(Txn((), (Get("k"), Delete("absent"), Scan("o", 1))))
    assert result == TxnResult(
        True,
        (
            Found(b"m", 2, 2, 4, revision=4),
            Deleted(0, revision=4),
            Rows((Row("other", b"o", 1, 3, 3),), False, revision=4),
        ),
        revision=4,
    )
    assert d.run(Txn((), ())) == TxnResult(True, (), revision=4)


@pytest.mark.parametrize(
    "branch",
    [
        (Put("a", b"1"), Put("a", b"2")),
        (Put("a", b"1"), Delete("a")),
        (Delete("a"), Put("a", b"1")),
        (Put("ab", b"1"), Delete("a", prefix=True)),
        (Put("x", b"1"), Delete("", prefix=True)),
    ],
)
def test_a_branch_writing_one_key_twice_is_refused_with_no_effect(branch: tuple[TxnOp, ...]):
    d = _store()
    events, history = d.sm.events_since(2, 100), d.sm.history_bytes
    for txn in (Txn((), branch), Txn((), (), branch)):  # either branch, taken or not (etcd)
        result = d.run(txn)
        assert isinstance(result, TxnRefused) and "duplicate key" in result.reason
    assert d.sm.revision == 4
    assert d.run(Scan("", 10)) == Rows(
        (Row("k", b"m", 2, 2, 4), Row("other", b"o", 1, 3, 3)), False, revision=4
    )
    assert (d.sm.events_since(2, 100), d.sm.history_bytes) == (events, history)


def test_deleting_one_key_twice_in_a_branch_is_allowed_as_in_etcd():
    d = _store()
    result = d.run(Txn((), (Delete("k"), Delete("", prefix=True))))
    assert result == TxnResult(
        True, (Deleted(2, revision=5, deleted=1), Deleted(1, revision=5, deleted=1)), revision=5
    )
    assert [e.kv.key for e in d.sm.events_since(5, 10)] == ["k", "other"]


def test_a_txn_over_the_kv_budget_is_full_and_leaves_no_partial_effect():
    d = Driver(StateMachine(Limits(kv_bytes_max=400)))
    d.run(Put("a", b"x" * 100))  # 2
    txn = Txn((), (Delete("a"), Put("b", b"y" * 100), Put("c", b"z" * 250)))
    assert d.run(txn) == Full("kv")
    assert d.sm.revision == 2
    assert d.run(Get("a")) == Found(b"x" * 100, 1, 2, 2, revision=2)
    assert d.run(Get("b")) == NotFound(revision=2)
    assert d.sm.events_since(2, 10)[-1].kv.key == "a"
    view = d.run(View("A", 10))
    assert isinstance(view, Timeline) and [p.key for p in view.posts] == ["a"]
    # The deletion frees room: the same writes without the big one fit.
    ok = d.run(Txn((), (Delete("a"), Put("b", b"y" * 100))))
    assert isinstance(ok, TxnResult) and ok.revision == 3


def test_a_txn_whose_answer_would_not_fit_is_refused_whole():
    d = Driver()
    big = b"x" * (500 << 10)
    for i in range(10):
        d.run(Put(f"big/{i}", big))
    gets = tuple(Get(f"big/{i}") for i in range(10))
    assert d.run(Txn((), (Put("marker", b"1"), *gets))) == Full("result")
    assert d.run(Get("marker")) == NotFound(revision=11)
    # Scans share the answer's budget: they page (more=True) instead of refusing.
    result = d.run(Txn((), (Scan("big/", 100), Scan("big/", 100))))
    assert isinstance(result, TxnResult)
    first, second = result.responses
    assert isinstance(first, Rows) and isinstance(second, Rows)
    assert first.more and 0 < len(first.rows) < 10 and second.more and len(second.rows) < 2


def test_reads_at_a_compacted_or_future_revision_refuse_the_whole_txn():
    d = _store()
    d.run(Compact(3))
    assert d.run(Txn((), (Put("x", b"1"), Get("k", revision=2)))) == RevisionCompacted(3, 2)
    assert d.run(Txn((), (Put("x", b"1"), Scan("", 5, revision=5)))) == FutureRevision(4)
    assert d.run(Get("x")) == NotFound(revision=4)
    # Only the branch taken is checked.
    failing = Compare("k", "version", "=", number=0)
    ok = d.run(Txn((failing,), (Get("k", revision=1),), (Get("k", revision=3),)))
    assert ok == TxnResult(False, (Found(b"a", 1, 2, 2, revision=4),), revision=4)


def test_a_txn_put_is_a_timeline_post_by_the_commands_site():
    d = _store()
    d.run(Txn((), (Put("t1", b"hi"), Get("k"), Put("t2", b"there"))), site="B")
    d.run(Txn((Compare("k", "version", "=", number=0),), (Put("t3", b"no"),)), site="B")
    view = d.run(View("Z", 10))
    assert isinstance(view, Timeline)
    assert [(p.site, p.key) for p in view.posts][-2:] == [("B", "t1"), ("B", "t2")]


def test_a_retried_txn_answers_from_the_session_and_applies_once():
    d = _store()
    txn = Txn((Compare("k", "version", "=", number=2),), (Put("k", b"once"),), (Get("k"),))
    first = d.raw("t", 1, txn)
    assert first == TxnResult(True, (Written(3, revision=5),), revision=5)
    assert d.raw("t", 1, txn) == first
    assert d.sm.revision == 5


def test_cas_keeps_its_semantics_with_revisions_filled():
    d = _store()
    assert d.run(Cas("k", b"z", expect_value=b"nope")) == CasMismatch(b"m", 2, revision=4)
    assert d.run(Cas("k", b"z", expect_version=2)) == Written(3, revision=5)
    assert d.run(Cas("new", b"z", expect_version=0)) == Written(1, revision=6)
    assert d.run(Cas("gone", b"z", expect_value=b"")) == CasMismatch(None, 0, revision=6)


@pytest.mark.parametrize(
    ("branch", "named"),
    [
        # The first put in operation order that breaks the rule is the one named (etcd checks
        # the puts in order, each against the earlier puts and every delete of the branch).
        ((*(Put(f"k/{i}", b"v") for i in range(8)), Delete("k/", prefix=True)), "k/0"),
        ((Put("b", b"1"), Put("a", b"1"), Delete("", prefix=True)), "b"),
        ((Put("a", b"1"), Put("b", b"1"), Put("b", b"2"), Delete("a")), "a"),
        ((Put("x", b"1"), Put("b", b"1"), Put("b", b"2"), Delete("a")), "b"),
    ],
)
def test_a_refused_branch_names_the_first_put_that_breaks_the_rule(
    branch: tuple[TxnOp, ...], named: str
) -> None:
    result = _store().run(Txn((), branch))
    assert result == TxnRefused(f"duplicate key given in txn request: {named!r}")


_REFUSAL_SCRIPT = """
import hashlib
from paxosd.statemachine.commands import Command, Delete, Put, Txn, encode_command
from paxosd.statemachine.commands import decode_result
from paxosd.statemachine.machine import StateMachine
sm = StateMachine()
ops = tuple(Put(f"k/{i}", b"v") for i in range(8)) + (Delete("k/", prefix=True),)
out = sm.apply(1, (encode_command(Command("c1", 1, "s", Txn((), ops))),))
print(decode_result(out[0][2]).reason, hashlib.sha256(sm.snapshot()).hexdigest())
"""


def test_a_refusal_and_the_snapshot_keeping_it_do_not_depend_on_the_hash_seed() -> None:
    # The reason is kept in the session table, so in snapshots: replicas with different
    # string hash seeds must keep the same bytes.
    answers = set()
    for seed in ("1", "2", "3", "4", "5"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", _REFUSAL_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        answers.add(run.stdout)
    assert len(answers) == 1, f"different answers under different hash seeds: {answers}"
    assert answers.pop().startswith("duplicate key given in txn request: 'k/0' ")
