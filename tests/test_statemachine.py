"""The replicated state machine: every op, sessions, blocks and the timeline, snapshots, digests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxosd.statemachine.commands import (
    Block,
    BlockList,
    BlockPair,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Command,
    Compact,
    Compare,
    Delete,
    Deleted,
    Found,
    Full,
    Get,
    Malformed,
    NotFound,
    Op,
    Post,
    Put,
    Result,
    Row,
    Rows,
    Scan,
    Stale,
    Timeline,
    Txn,
    Unblock,
    View,
    Written,
    decode_result,
    encode_command,
)
from paxosd.statemachine.machine import (
    BadSnapshot,
    Limits,
    StateMachine,
    _KvEntry,
    _seal,
    _SessionEntry,
    _snapshot_encoder,
    _SnapshotState,
)


class Driver:
    """Feeds one command per slot and hands back the decoded result."""

    def __init__(self, sm: StateMachine | None = None) -> None:
        self.sm = sm if sm is not None else StateMachine()
        self.seqs: dict[str, int] = {}

    def raw(self, client: str, seq: int, op: Op, site: str = "A") -> Result:
        out = self.sm.apply(
            self.sm.applied_through + 1, (encode_command(Command(client, seq, site, op)),)
        )
        assert len(out) == 1
        assert out[0][:2] == (client, seq)
        return decode_result(out[0][2])

    def run(self, op: Op, client: str = "c1", site: str = "A") -> Result:
        seq = self.seqs.get(client, 0) + 1
        self.seqs[client] = seq
        return self.raw(client, seq, op, site)


def test_put_get_delete_with_versions():
    d = Driver()
    assert d.run(Get("k")) == NotFound(revision=1)
    assert d.run(Put("k", b"1")) == Written(1, revision=2)
    assert d.run(Put("k", b"2")) == Written(2, revision=3)
    assert d.run(Get("k")) == Found(b"2", 2, create_revision=2, mod_revision=3, revision=3)
    assert d.run(Delete("k")) == Deleted(2, revision=4, deleted=1)
    assert d.run(Get("k")) == NotFound(revision=4)
    assert d.run(Delete("k")) == Deleted(0, revision=4)


def test_put_after_delete_restarts_version_at_one():
    d = Driver()
    d.run(Put("k", b"1"))
    d.run(Put("k", b"2"))
    d.run(Delete("k"))
    assert d.run(Put("k", b"3")) == Written(1, revision=5)
    assert d.run(Get("k")) == Found(b"3", 1, create_revision=5, mod_revision=5, revision=5)


def test_cas_by_value_matches_only_the_current_value():
    d = Driver()
    assert d.run(Cas("k", b"x", expect_value=b"")) == CasMismatch(None, 0, revision=1)
    d.run(Put("k", b"a"))
    assert d.run(Cas("k", b"b", expect_value=b"zzz")) == CasMismatch(b"a", 1, revision=2)
    assert d.run(Cas("k", b"b", expect_value=b"a")) == Written(2, revision=3)
    assert d.run(Get("k")) == Found(b"b", 2, create_revision=2, mod_revision=3, revision=3)


def test_cas_by_version_and_version_zero_means_absent():
    d = Driver()
    assert d.run(Cas("k", b"a", expect_version=0)) == Written(1, revision=2)
    assert d.run(Cas("k", b"b", expect_version=0)) == CasMismatch(b"a", 1, revision=2)
    assert d.run(Cas("k", b"b", expect_version=2)) == CasMismatch(b"a", 1, revision=2)
    assert d.run(Cas("k", b"b", expect_version=1)) == Written(2, revision=3)
    d.run(Delete("k"))
    assert d.run(Cas("k", b"c", expect_version=0)) == Written(1, revision=5)


def test_scan_returns_prefix_in_key_order_and_pages_with_more():
    d = Driver()
    created = {}
    for k in ["b2", "a", "b1", "b3", "c"]:
        written = d.run(Put(k, k.encode()))
        assert isinstance(written, Written)
        created[k] = written.revision

    def row(k: str) -> Row:
        return Row(k, k.encode(), 1, create_revision=created[k], mod_revision=created[k])

    assert d.run(Scan("b", 10)) == Rows((row("b1"), row("b2"), row("b3")), False, revision=6)
    assert d.run(Scan("b", 2)) == Rows((row("b1"), row("b2")), more=True, revision=6)
    assert d.run(Scan("", 10)) == Rows(
        tuple(row(k) for k in ["a", "b1", "b2", "b3", "c"]), more=False, revision=6
    )
    d.run(Delete("b2"))
    assert d.run(Scan("b", 10)) == Rows((row("b1"), row("b3")), more=False, revision=7)
    assert d.run(Scan("zz", 10)) == Rows((), more=False, revision=7)


def test_a_batch_applies_in_order_and_an_empty_batch_is_a_noop():
    sm = StateMachine()
    ops: list[Op] = [Put("k", b"1"), Get("k"), Put("k", b"2")]
    cmds = tuple(encode_command(Command("c", i + 1, "A", op)) for i, op in enumerate(ops))
    out = sm.apply(1, cmds)
    assert [decode_result(r) for _, _, r in out] == [
        Written(1, revision=2),
        Found(b"1", 1, create_revision=2, mod_revision=2, revision=2),
        Written(2, revision=3),
    ]
    assert sm.apply(2, ()) == []
    assert sm.applied_through == 2


def test_slots_must_be_applied_in_order_without_gaps():
    sm = StateMachine()
    sm.apply(1, ())
    with pytest.raises(AssertionError):
        sm.apply(3, ())
    with pytest.raises(AssertionError):
        sm.apply(1, ())


def test_undecodable_command_yields_a_deterministic_error_and_the_rest_applies():
    good = encode_command(Command("c", 1, "A", Put("k", b"v")))
    results = []
    for _ in range(2):
        sm = StateMachine()
        results.append(sm.apply(1, (b"\xc1garbage", good)))
    assert results[0] == results[1]
    cid, seq, raw = results[0][0]
    assert (cid, seq) == ("", 0)
    assert isinstance(decode_result(raw), Malformed)
    assert decode_result(results[0][1][2]) == Written(1, revision=2)


def test_retry_returns_the_original_result_and_does_not_apply_twice():
    d = Driver()
    assert d.raw("c", 1, Put("k", b"a")) == Written(1, revision=2)
    assert d.raw("c", 1, Put("k", b"a")) == Written(1, revision=2)
    assert d.raw("other", 1, Get("k")) == Found(b"a", 1, 2, 2, revision=2)
    assert d.raw("c", 2, Cas("k", b"b", expect_version=1)) == Written(2, revision=3)
    # The retried cas would now mismatch if it ran again; it must answer as it first did.
    assert d.raw("c", 2, Cas("k", b"b", expect_version=1)) == Written(2, revision=3)
    assert d.raw("other", 2, Get("k")) == Found(b"b", 2, 2, 3, revision=3)


def test_timeline_gets_one_post_per_applied_put_despite_retries():
    d = Driver()
    d.raw("c", 1, Put("k", b"a"))
    d.raw("c", 1, Put("k", b"a"))
    assert d.raw("r", 1, View("A", 10)) == Timeline((Post(1, "A", "k", b"a"),), more=False)


def test_seq_below_the_session_is_stale_and_not_applied():
    d = Driver()
    d.raw("c", 1, Put("k", b"a"))
    d.raw("c", 2, Put("k", b"b"))
    assert d.raw("c", 1, Put("k", b"zzz")) == Stale(last_seq=2)
    assert d.raw("x", 1, Get("k")) == Found(b"b", 2, 2, 3, revision=3)


def test_retried_read_runs_again_and_sees_the_current_state():
    d = Driver()
    assert d.raw("r", 1, Get("k")) == NotFound(revision=1)
    d.raw("w", 1, Put("k", b"a"))
    assert d.raw("r", 1, Get("k")) == Found(b"a", 1, 2, 2, revision=2)
    # A write may not reuse a read's seq.
    assert d.raw("r", 1, Put("k", b"b")) == Stale(last_seq=1)
    assert d.raw("w", 2, Get("k")) == Found(b"a", 1, 2, 2, revision=2)


def test_unknown_client_starts_a_session_at_any_seq():
    d = Driver()
    assert d.raw("new", 5, Put("k", b"a")) == Written(1, revision=2)
    assert d.raw("new", 4, Put("k", b"b")) == Stale(last_seq=5)
    assert d.raw("zero", 0, Put("k", b"c")) == Written(2, revision=3)


def _session_trace(sm: StateMachine, clients: list[str]) -> list[Result]:
    d = Driver(sm)
    out = [d.raw(c, 1, Put("k", c.encode())) for c in clients]
    # Every client retries its seq 1: a live session answers from its cache, an evicted one
    # applies again (the documented gap), which also evicts the next least recently used.
    out += [d.raw(c, 1, Put("k", c.encode())) for c in sorted(set(clients))]
    return out


def test_session_eviction_is_least_recently_used_and_identical_on_every_replica():
    limits = Limits(sessions_max=3)
    clients = ["a", "b", "c", "a", "d"]  # "b" is the least recently used when "d" arrives
    one = _session_trace(StateMachine(limits), clients)
    two = _session_trace(StateMachine(limits), clients)
    assert one == two
    assert one[:5] == [Written(1, 2), Written(2, 3), Written(3, 4), Written(1, 2), Written(4, 5)]
    retries = dict(zip(sorted(set(clients)), one[5:], strict=True))
    assert retries["a"] == Written(1, 2)  # live: cached answer
    assert retries["b"] == Written(5, 6)  # evicted by "d": applied again
    assert retries["c"] == Written(6, 7)  # evicted by b's new session
    assert retries["d"] == Written(7, 8)  # evicted by c's new session


def test_session_eviction_continues_identically_after_restore():
    limits = Limits(sessions_max=3)
    sm = StateMachine(limits)
    d = Driver(sm)
    for c in ["a", "b", "c", "a"]:
        d.raw(c, 1, Put("k", c.encode()))
    restored = StateMachine.restore(sm.snapshot())
    for m in (sm, restored):
        dm = Driver(m)
        assert dm.raw("d", 1, Put("k", b"d")) == Written(4, 5)  # evicts "b"
        assert dm.raw("a", 1, Put("k", b"a")) == Written(1, 2)
        assert dm.raw("b", 1, Put("k", b"b")) == Written(5, 6)
    assert sm.digest() == restored.digest()


def test_block_unblock_and_reblock_change_the_relation():
    d = Driver()
    assert d.run(Block("B", "A")) == Changed(True)
    assert d.run(Block("B", "A")) == Changed(False)
    assert d.run(Block("C", "A")) == Changed(True)
    assert d.run(Blocks(None)) == BlockList((BlockPair("B", "A"), BlockPair("C", "A")))
    assert d.run(Blocks("C")) == BlockList((BlockPair("C", "A"),))
    assert d.run(Unblock("B", "A")) == Changed(True)
    assert d.run(Unblock("B", "A")) == Changed(False)
    assert d.run(Blocks(None)) == BlockList((BlockPair("C", "A"),))
    assert d.run(Block("B", "A")) == Changed(True)
    assert d.run(Blocks("B")) == BlockList((BlockPair("B", "A"),))


def test_view_leaves_out_posts_of_sites_that_block_the_viewer_as_in_seed_002():
    d = Driver()
    d.run(Put("t1", b"hello from A"), client="a", site="A")
    d.run(Put("t2", b"hello from B"), client="b", site="B")
    d.run(Block("B", "A"), client="b", site="B")  # B blocks A: A no longer sees B's tweets
    d.run(Put("t3", b"B again"), client="b", site="B")
    d.run(Put("t4", b"C here"), client="c", site="C")
    a_view = d.run(View("A", 100), client="a", site="A")
    assert a_view == Timeline(
        (Post(1, "A", "t1", b"hello from A"), Post(5, "C", "t4", b"C here")), more=False
    )
    # Blocking is one-way: B still sees A, and C sees everyone.
    b_view = d.run(View("B", 100), client="b", site="B")
    assert isinstance(b_view, Timeline)
    assert [p.key for p in b_view.posts] == ["t1", "t2", "t3", "t4"]
    # Unblock makes B's earlier posts visible to A again; re-block hides them again.
    d.run(Unblock("B", "A"), client="b", site="B")
    a_view = d.run(View("A", 100), client="a", site="A")
    assert isinstance(a_view, Timeline)
    assert [p.key for p in a_view.posts] == ["t1", "t2", "t3", "t4"]
    d.run(Block("B", "A"), client="b", site="B")
    a_view = d.run(View("A", 100), client="a", site="A")
    assert isinstance(a_view, Timeline)
    assert [p.key for p in a_view.posts] == ["t1", "t4"]


def test_view_limit_keeps_the_newest_posts_in_log_order():
    d = Driver()
    for i in range(5):
        d.run(Put(f"t{i}", b"x"))
    view = d.run(View("Z", 2))
    assert isinstance(view, Timeline)
    assert [p.key for p in view.posts] == ["t3", "t4"]
    assert view.more


def test_timeline_is_bounded_and_drops_the_oldest_posts():
    d = Driver(StateMachine(Limits(timeline_max=3)))
    for i in range(5):
        d.run(Put(f"t{i}", b"x"))
    view = d.run(View("Z", 100))
    assert isinstance(view, Timeline)
    assert [p.key for p in view.posts] == ["t2", "t3", "t4"]
    assert not view.more


def test_kv_byte_budget_refuses_writes_without_applying_them():
    d = Driver(StateMachine(Limits(kv_bytes_max=200)))
    assert d.run(Put("a", b"x" * 50)) == Written(1, revision=2)
    assert d.run(Put("b", b"x" * 50)) == Full("kv")
    assert d.run(Get("b")) == NotFound(revision=2)  # a refused write takes no revision
    # Overwriting with a smaller value still fits.
    assert d.run(Put("a", b"y")) == Written(2, revision=3)
    assert d.run(Put("b", b"x" * 50)) == Written(1, revision=4)


def test_block_relation_is_bounded():
    d = Driver(StateMachine(Limits(blocks_max=1)))
    assert d.run(Block("A", "B")) == Changed(True)
    assert d.run(Block("A", "C")) == Full("blocks")
    assert d.run(Blocks(None)) == BlockList((BlockPair("A", "B"),))


def _busy_machine() -> Driver:
    d = Driver()
    d.run(Put("k", b"1"), site="A")
    d.run(Put("j", b"2"), client="c2", site="B")
    d.run(Block("B", "A"))
    d.run(Delete("j"))
    d.run(Cas("k", b"3", expect_version=1))
    return d


def test_snapshot_restore_gives_equal_digest_and_equal_future_results():
    d = _busy_machine()
    restored = Driver(StateMachine.restore(d.sm.snapshot()))
    restored.seqs = dict(d.seqs)
    assert restored.sm.digest() == d.sm.digest()
    assert restored.sm.applied_through == d.sm.applied_through
    assert restored.sm.snapshot() == d.sm.snapshot()
    future: list[Op] = [
        Get("k"),
        Scan("", 10),
        View("A", 10),
        View("C", 10),
        Blocks(None),
        Put("j", b"4"),
        Cas("k", b"5", expect_value=b"3"),
    ]
    for op in future:
        assert restored.run(op) == d.run(op)
    # Sessions survived: a retry of c2's first command returns the cached answer.
    assert restored.raw("c2", 1, Put("j", b"2")) == d.raw("c2", 1, Put("j", b"2")) == Written(1, 3)
    assert restored.sm.digest() == d.sm.digest()


def test_restore_keeps_the_snapshots_limits():
    sm = StateMachine(Limits(sessions_max=7))
    assert StateMachine.restore(sm.snapshot()).limits == Limits(sessions_max=7)


def test_restore_rejects_bad_bytes_with_bad_snapshot():
    good = _busy_machine().sm.snapshot()
    for bad in [b"", b"\x00", good[:-1], good + b"\x00", good.replace(b"k", b"\xff", 1)]:
        with pytest.raises(BadSnapshot):
            StateMachine.restore(bad)


def _sealed(**changes: object) -> bytes:
    base = _SnapshotState(
        format=1,
        applied_through=5,
        chain=bytes(32),
        limits=Limits(),
        kv=(_KvEntry("a", b"1", 1), _KvEntry("b", b"2", 3)),
        blocks=(BlockPair("A", "B"),),
        timeline=(Post(1, "A", "a", b"1"),),
        sessions=(_SessionEntry("c", 1, None),),
    )
    fields = {f: getattr(base, f) for f in base.__struct_fields__} | changes
    return _seal(_snapshot_encoder.encode(_SnapshotState(**fields)))


def test_restore_validates_a_well_sealed_snapshot_field_by_field():
    StateMachine.restore(_sealed())  # the baseline is valid
    bad_changes: list[dict[str, object]] = [
        {"format": 2},  # format 2 keeps no keys in kv
        {"format": 3},
        {"applied_through": -1},
        {"chain": b"short"},
        {"limits": Limits(sessions_max=0)},
        {"kv": (_KvEntry("b", b"1", 1), _KvEntry("a", b"2", 1))},
        {"kv": (_KvEntry("a", b"1", 1), _KvEntry("a", b"2", 1))},
        {"kv": (_KvEntry("a", b"1", 0),)},
        {"kv": (_KvEntry("", b"1", 1),)},
        {"kv": (_KvEntry("a", b"x" * (600 << 10), 1),)},
        {"blocks": (BlockPair("A", "A"),)},
        {"blocks": (BlockPair("B", "A"), BlockPair("A", "B"))},
        {"timeline": (Post(6, "A", "a", b"1"),)},
        {"timeline": (Post(2, "A", "a", b"1"), Post(1, "A", "a", b"1"))},
        {"sessions": (_SessionEntry("c", 1, None), _SessionEntry("c", 2, None))},
        {"sessions": (_SessionEntry("c", 1, b"not a result"),)},
        {"sessions": (_SessionEntry("c", -1, None),)},
    ]
    for change in bad_changes:
        with pytest.raises(BadSnapshot):
            StateMachine.restore(_sealed(**change))


def test_digest_differs_for_different_prefixes_and_matches_for_equal_ones():
    a, b = StateMachine(), StateMachine()
    assert a.digest() == b.digest()
    cmd = encode_command(Command("c", 1, "A", Put("k", b"v")))
    a.apply(1, (cmd,))
    assert a.digest() != b.digest()
    b.apply(1, ())
    assert a.digest() != b.digest()
    c = StateMachine()
    c.apply(1, (cmd,))
    assert c.digest() == a.digest()
    # Same commands, different slot boundaries: different digests.
    cmd2 = encode_command(Command("c", 2, "A", Get("k")))
    x, y = StateMachine(), StateMachine()
    x.apply(1, (cmd, cmd2))
    y.apply(1, (cmd,))
    y.apply(2, (cmd2,))
    assert x.digest() != y.digest()


# ------------------------------------------------------------------------------- property

_keys = st.sampled_from(["a", "ab", "b", "c"])
_sites = st.sampled_from(["A", "B", "C"])
_values = st.binary(max_size=4)
_ops = st.one_of(
    st.builds(Put, _keys, _values, st.booleans()),
    st.builds(Get, _keys, st.integers(0, 8)),
    st.builds(Delete, _keys, st.booleans(), st.booleans()),
    st.builds(Compact, st.integers(0, 8)),
    st.builds(
        Txn,
        st.lists(
            st.builds(Compare, _keys, st.just("version"), st.just("="), st.integers(0, 2))
        ).map(tuple),
        st.lists(st.builds(Put, _keys, _values) | st.builds(Get, _keys)).map(tuple),
        st.lists(st.builds(Delete, _keys, st.booleans()) | st.builds(Scan, _keys, st.just(2))).map(
            tuple
        ),
    ),
    st.builds(Cas, _keys, _values, expect_value=_values),
    st.builds(Cas, _keys, _values, expect_version=st.integers(0, 3)),
    st.builds(Scan, st.sampled_from(["", "a", "b"]), st.integers(1, 3), st.integers(0, 8)),
    st.tuples(_sites, _sites).filter(lambda p: p[0] != p[1]).map(lambda p: Block(*p)),
    st.tuples(_sites, _sites).filter(lambda p: p[0] != p[1]).map(lambda p: Unblock(*p)),
    st.builds(Blocks, st.none() | _sites),
    st.builds(View, _sites, st.integers(1, 5)),
)
_commands = st.builds(
    lambda client, seq, site, op: encode_command(Command(client, seq, site, op)),
    st.sampled_from(["c1", "c2", "c3", "c4"]),
    st.integers(0, 4),
    _sites,
    _ops,
)
_stream = st.lists(st.lists(_commands | st.binary(max_size=8), max_size=4), max_size=25)


@settings(max_examples=150, deadline=None)
@given(stream=_stream, cut=st.integers(0, 25))
def test_replicas_fed_the_same_stream_agree_even_across_snapshot_restore(stream, cut):
    limits = Limits(sessions_max=3, timeline_max=4, history_bytes_max=400)
    a = StateMachine(limits)
    b = StateMachine(limits)
    for slot, batch in enumerate(stream, start=1):
        if slot == cut + 1:
            b = StateMachine.restore(b.snapshot())
        assert a.apply(slot, tuple(batch)) == b.apply(slot, tuple(batch))
    assert a.digest() == b.digest()
    assert a.snapshot() == b.snapshot()


def test_range_reads_a_key_range_in_pages_now_and_in_the_past() -> None:
    """Range: the keys in [start, end) (end empty: no upper bound), a page at most, also as
    of a past revision; an etcd reader pages on from its last key at the first revision."""
    from paxosd.statemachine.commands import Range, RevisionCompacted

    d = Driver()
    sm = d.sm
    for k in ["a", "b", "b1", "c", "d"]:
        d.run(Put(k, b"old"))
    then = sm.revision
    d.run(Put("b", b"new"))
    d.run(Put("bb", b"new"))
    rows = sm.query(Range(start="b", end="c", limit=10))
    assert isinstance(rows, Rows)
    assert [(r.key, r.value) for r in rows.rows] == [("b", b"new"), ("b1", b"old"), ("bb", b"new")]
    past = sm.query(Range(start="b", end="c", limit=10, revision=then))
    assert isinstance(past, Rows)
    assert [(r.key, r.value) for r in past.rows] == [("b", b"old"), ("b1", b"old")]
    page = sm.query(Range(start="a", end="", limit=2))
    assert isinstance(page, Rows) and page.more and [r.key for r in page.rows] == ["a", "b"]
    rest = sm.query(Range(start="b\0", end="", limit=10, revision=page.revision))
    assert isinstance(rest, Rows) and not rest.more
    assert [r.key for r in rest.rows] == ["b1", "bb", "c", "d"]
    empty = sm.query(Range(start="c", end="b", limit=10))
    assert isinstance(empty, Rows) and empty.rows == ()
    # Through the log too (a read applied in a slot), and refused past the compaction.
    assert d.run(Range(start="c", end="", limit=1)) == sm.query(Range(start="c", end="", limit=1))
    d.run(Compact(sm.revision))
    assert isinstance(d.run(Range(start="a", end="", limit=1, revision=then)), RevisionCompacted)


# ------------------------------------------------------------------ streamed snapshots


def test_a_streamed_snapshot_is_the_one_piece_snapshot_and_restores_to_the_same_digest() -> None:
    # More events than one streamed slice (4096), so the sliced path and its headers run.
    sm = StateMachine()
    for slot in range(1, 41):
        sm.apply(
            slot,
            tuple(
                encode_command(Command("c", slot * 1000 + i, "A", Put(f"k{i % 3000}", b"v%d" % i)))
                for i in range(250)
            ),
        )
    pieces: list[bytes] = []
    sm.write_snapshot(lambda data: pieces.append(bytes(data)))
    assert len(pieces) > 3
    streamed = b"".join(pieces)
    assert streamed == sm.snapshot()
    restored = StateMachine.restore(memoryview(streamed))
    assert restored.digest() == sm.digest()
    with pytest.raises(BadSnapshot, match="checksum"):
        StateMachine.restore(streamed[:-1] + bytes([streamed[-1] ^ 1]))


def test_the_limits_let_a_store_reach_the_default_quota_and_agree_with_the_core() -> None:
    from dataclasses import fields

    from paxosd.core.config import CoreConfig
    from paxosd.server.config import LimitSettings
    from paxosd.statemachine.machine import SNAPSHOT_BYTES_MAX

    limits = Limits()
    limits.check()
    assert limits.kv_bytes_max >= LimitSettings().quota_bytes
    core_max = next(f.default for f in fields(CoreConfig) if f.name == "snapshot_bytes_max")
    assert core_max == SNAPSHOT_BYTES_MAX
