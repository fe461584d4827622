"""The linearizability checker on hand-made histories and on generated ones."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal

import pytest

from paxosd.sim.linearizability import Operation, check
from paxosd.statemachine.commands import (
    Block,
    BlockList,
    BlockPair,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Command,
    Delete,
    Deleted,
    Found,
    Get,
    NotFound,
    Op,
    Put,
    Result,
    Row,
    Rows,
    Scan,
    Stale,
    Timeline,
    Unblock,
    View,
    Written,
    decode_result,
    encode_command,
)
from paxosd.statemachine.machine import StateMachine


def ok(client: str, op: Op, t0: int, t1: int, result: Result) -> Operation:
    return Operation(client, op, t0, t1, "ok", result)


def unknown(client: str, op: Op, t0: int) -> Operation:
    return Operation(client, op, t0, None, "unknown", None)


def fail(client: str, op: Op, t0: int, t1: int) -> Operation:
    return Operation(client, op, t0, t1, "fail", None)


def verdict(history: list[Operation]) -> Literal["ok", "violation", "undecided"]:
    return check(history).verdict


def test_sequential_history_is_linearizable():
    h = [
        ok("a", Put("x", b"1"), 0, 10, Written(1)),
        ok("a", Get("x"), 20, 30, Found(b"1", 1)),
        ok("b", Put("x", b"2"), 40, 50, Written(2)),
        ok("a", Delete("x"), 60, 70, Deleted(2)),
        ok("b", Get("x"), 80, 90, NotFound()),
    ]
    assert check(h).is_ok


def test_empty_history_is_linearizable():
    assert check([]).is_ok


def test_concurrent_writes_may_take_effect_in_either_order():
    h = [
        ok("a", Put("x", b"1"), 0, 100, Written(2)),
        ok("b", Put("x", b"2"), 10, 90, Written(1)),
        ok("c", Get("x"), 20, 30, Found(b"2", 1)),
        ok("c", Get("x"), 110, 120, Found(b"1", 2)),
    ]
    assert verdict(h) == "ok"


def test_read_concurrent_with_a_write_may_see_old_or_new_but_not_flip_back():
    base = [
        ok("w", Put("x", b"1"), 0, 100, Written(1)),
        ok("r", Get("x"), 10, 20, Found(b"1", 1)),
    ]
    assert verdict(base) == "ok"
    assert verdict([*base, ok("r", Get("x"), 30, 40, NotFound())]) == "violation"


def test_stale_read_after_a_completed_write_is_a_violation():
    h = [
        ok("a", Put("x", b"1"), 0, 10, Written(1)),
        ok("a", Put("x", b"2"), 20, 30, Written(2)),
        ok("b", Get("x"), 40, 50, Found(b"1", 1)),
    ]
    result = check(h)
    assert result.verdict == "violation"
    assert result.partition == "key 'x'"
    # The explanation names the read nobody can explain and the writes before it.
    assert "Get(key='x', revision=0) -> Found(value=b'1', version=1," in result.explanation
    assert h[2] in result.ops and h[1] in result.ops


def test_lost_acknowledged_write_is_a_violation():
    h = [
        ok("a", Put("x", b"1"), 0, 10, Written(1)),
        ok("b", Get("x"), 20, 30, NotFound()),
    ]
    assert verdict(h) == "violation"


def test_wrong_version_is_a_violation():
    assert verdict([ok("a", Put("x", b"1"), 0, 10, Written(2))]) == "violation"
    h = [
        ok("a", Put("x", b"1"), 0, 10, Written(1)),
        ok("b", Get("x"), 20, 30, Found(b"1", 2)),
    ]
    assert verdict(h) == "violation"


def test_unknown_write_observed_later_is_linearizable():
    h = [
        unknown("a", Put("x", b"1"), 0),
        ok("b", Get("x"), 5, 10, NotFound()),
        ok("b", Get("x"), 500, 510, Found(b"1", 1)),
        ok("b", Get("x"), 600, 610, Found(b"1", 1)),
    ]
    assert verdict(h) == "ok"


def test_unknown_write_never_observed_is_linearizable():
    h = [
        unknown("a", Put("x", b"1"), 0),
        ok("b", Get("x"), 500, 510, NotFound()),
    ]
    assert verdict(h) == "ok"


def test_unknown_write_cannot_be_observed_before_it_was_invoked():
    h = [
        ok("b", Get("x"), 0, 10, Found(b"1", 1)),
        unknown("a", Put("x", b"1"), 20),
    ]
    assert verdict(h) == "violation"


def test_unknown_write_once_observed_cannot_be_unobserved():
    h = [
        unknown("a", Put("x", b"1"), 0),
        ok("b", Get("x"), 500, 510, Found(b"1", 1)),
        ok("b", Get("x"), 600, 610, NotFound()),
    ]
    assert verdict(h) == "violation"


def test_failed_write_must_never_be_observed():
    h = [
        fail("a", Put("x", b"1"), 0, 10),
        ok("b", Get("x"), 20, 30, NotFound()),
    ]
    assert verdict(h) == "ok"
    h.append(ok("b", Get("x"), 40, 50, Found(b"1", 1)))
    assert verdict(h) == "violation"


def test_not_applied_results_count_as_failed():
    h = [
        ok("a", Put("x", b"1"), 0, 10, Stale(last_seq=9)),
        ok("b", Get("x"), 20, 30, NotFound()),
    ]
    assert verdict(h) == "ok"


def test_cas_history_with_a_matching_and_a_mismatching_cas_is_linearizable():
    h = [
        ok("a", Cas("x", b"1", expect_version=0), 0, 10, Written(1)),
        ok("b", Cas("x", b"2", expect_value=b"1"), 20, 40, Written(2)),
        ok("c", Cas("x", b"3", expect_value=b"1"), 25, 35, CasMismatch(b"2", 2)),
        ok("c", Get("x"), 50, 60, Found(b"2", 2)),
    ]
    assert verdict(h) == "ok"


def test_two_concurrent_creates_cannot_both_succeed():
    h = [
        ok("a", Cas("x", b"a", expect_version=0), 0, 10, Written(1)),
        ok("b", Cas("x", b"b", expect_version=0), 0, 10, Written(1)),
    ]
    assert verdict(h) == "violation"


def test_cas_mismatch_must_report_the_current_value():
    h = [
        ok("a", Put("x", b"1"), 0, 10, Written(1)),
        ok("b", Cas("x", b"2", expect_value=b"0"), 20, 30, CasMismatch(None, 0)),
    ]
    assert verdict(h) == "violation"


def test_unknown_cas_may_or_may_not_have_taken_effect():
    h = [
        ok("a", Put("x", b"1"), 0, 10, Written(1)),
        unknown("b", Cas("x", b"2", expect_value=b"1"), 20),
        ok("c", Get("x"), 30, 40, Found(b"1", 1)),
        ok("c", Get("x"), 50, 60, Found(b"2", 2)),
    ]
    assert verdict(h) == "ok"


def test_block_unblock_reblock_history_is_linearizable():
    h = [
        ok("b", Block("B", "A"), 0, 10, Changed(True)),
        ok("b", Block("B", "A"), 20, 30, Changed(False)),
        ok("x", Blocks("B"), 35, 38, BlockList((BlockPair("B", "A"),))),
        ok("b", Unblock("B", "A"), 40, 50, Changed(True)),
        ok("x", Blocks(None), 55, 58, BlockList(())),
        ok("b", Block("B", "A"), 60, 70, Changed(True)),
        ok("x", View("A", 10), 75, 80, Timeline((), more=False)),
    ]
    assert verdict(h) == "ok"


def test_block_that_claims_a_change_twice_is_a_violation():
    h = [
        ok("b", Block("B", "A"), 0, 10, Changed(True)),
        ok("c", Block("B", "A"), 20, 30, Changed(True)),
    ]
    result = check(h)
    assert result.verdict == "violation"
    assert result.partition == "block 'B'->'A'"


def test_blocks_listing_that_misses_a_completed_block_is_a_violation():
    h = [
        ok("b", Block("B", "A"), 0, 10, Changed(True)),
        ok("x", Blocks(None), 20, 30, BlockList(())),
    ]
    assert verdict(h) == "violation"


def test_scan_is_checked_per_key():
    h = [
        ok("a", Put("x1", b"1"), 0, 10, Written(1)),
        ok("a", Put("x2", b"2"), 20, 30, Written(1)),
        ok("s", Scan("x", 10), 40, 50, Rows((Row("x1", b"1", 1), Row("x2", b"2", 1)), False)),
    ]
    assert verdict(h) == "ok"
    # Leaving out a completed write (the page is complete, so x2 claims to be absent).
    missing = replace(h[2], result=Rows((Row("x1", b"1", 1),), more=False))
    assert verdict([h[0], h[1], missing]) == "violation"
    # A truncated page says nothing about keys after its last row.
    truncated = replace(h[2], result=Rows((Row("x1", b"1", 1),), more=True))
    assert verdict([h[0], h[1], truncated]) == "ok"
    # A row for a key nobody wrote.
    ghost = replace(h[2], result=Rows((Row("x0", b"?", 1),), more=True))
    assert verdict([h[0], h[1], ghost]) == "violation"


def test_scan_or_listing_with_the_wrong_result_type_is_a_violation():
    assert verdict([ok("s", Scan("", 10), 0, 10, NotFound())]) == "violation"
    assert verdict([ok("s", Blocks(None), 0, 10, Written(1))]) == "violation"
    outside = ok("s", Scan("x", 10), 0, 10, Rows((Row("y", b"1", 1),), more=False))
    assert verdict([ok("a", Put("y", b"1"), 0, 5, Written(1)), outside]) == "violation"


def test_search_over_its_bound_is_undecided_not_ok():
    # Many concurrent writes and a read at the end: more orders than 5 steps can explore.
    # Versions are handed out in the reverse of the order the search tries first.
    h = [ok(f"c{i}", Put("x", str(i).encode()), 0, 100, Written(6 - i)) for i in range(6)]
    h.append(ok("r", Get("x"), 200, 210, Found(b"0", 6)))
    assert check(h).verdict == "ok"
    result = check(h, states_explored_max=5)
    assert result.verdict == "undecided"
    assert not result.is_ok


def test_malformed_history_is_a_harness_error():
    with pytest.raises(ValueError):
        check([Operation("a", Get("x"), 10, 5, "ok", NotFound())])
    with pytest.raises(ValueError):
        check([Operation("a", Get("x"), 0, None, "ok", NotFound())])


# ---------------------------------------------------------------------- generated histories


def _random_history(seed: int, ops_per_client: int = 80, clients: int = 5) -> list[Operation]:
    """Clients issue overlapping operations against a real StateMachine: each op takes effect
    at a random instant inside its interval (or, for an unknown outcome, maybe never), which is
    linearizable by construction."""
    rng = random.Random(seed)
    keys = ["a", "b", "c"]
    planned: list[tuple[float, int, str, Op, int, int | None]] = []
    n = 0
    for c in range(clients):
        t = rng.randint(0, 10)
        for _ in range(ops_per_client):
            key = rng.choice(keys)
            choices: list[Op] = [
                Put(key, f"v{n}".encode()),
                Get(key),
                Get(key),
                Delete(key),
                Cas(key, f"v{n}".encode(), expect_version=rng.randint(0, 2)),
                Scan("", 10),
            ]
            op = rng.choice(choices)
            duration = rng.randint(1, 30)
            lost = not isinstance(op, Get | Scan) and rng.random() < 0.03
            if lost:
                # Unknown: takes effect later than the client waited, or never.
                at = t + rng.uniform(0, 300) if rng.random() < 0.5 else float("inf")
                planned.append((at, n, f"c{c}", op, t, None))
            else:
                planned.append((rng.uniform(t, t + duration), n, f"c{c}", op, t, t + duration))
            n += 1
            t += duration + rng.randint(0, 5)
    sm = StateMachine()
    history: list[Operation] = []
    for at, i, client, op, t0, t1 in sorted(planned):
        result: Result | None = None
        if at != float("inf"):
            # One session per operation: sessions are not what this history exercises.
            raw = encode_command(Command(f"{client}-{i}", 1, "A", op))
            [(_, _, encoded)] = sm.apply(sm.applied_through + 1, (raw,))
            result = decode_result(encoded)
        if t1 is None:
            history.append(Operation(client, op, t0, None, "unknown", None))
        else:
            assert result is not None
            history.append(Operation(client, op, t0, t1, "ok", result))
    history.sort(key=lambda o: o.invoke_ms)
    return history


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_linearizable_history_is_accepted(seed):
    history = _random_history(seed)
    assert len(history) == 400
    assert any(o.outcome == "unknown" for o in history)
    result = check(history, states_explored_max=200_000)
    assert result.verdict == "ok", result.explanation


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_history_with_one_corrupted_read_is_rejected(seed):
    history = _random_history(seed)
    rng = random.Random(seed)
    reads = [i for i, o in enumerate(history) if isinstance(o.result, Found)]
    i = rng.choice(reads)
    history[i] = replace(history[i], result=Found(b"never written", 1))
    result = check(history, states_explored_max=200_000)
    assert result.verdict == "violation"
    assert history[i] in result.ops
