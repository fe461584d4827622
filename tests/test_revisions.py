"""The store's revisions, history and compaction (etcd's data model on the state machine).

The rules checked here are the shared design's: one store revision, 1 when empty, +1 per
applied command that changes at least one key (every key a command changes shares it);
per key create_revision / mod_revision / version as etcd documents them; reads at a revision
back to the compaction point; compaction with etcd's edges; a history byte budget enforced
by deterministic compaction; snapshots (format 2) that carry all of it.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxosd.statemachine.commands import (
    SEQ_MAX,
    VERSION_MAX,
    Block,
    BlockPair,
    Cas,
    Command,
    Compact,
    Compacted,
    Compare,
    Delete,
    Deleted,
    Event,
    Found,
    Full,
    FutureRevision,
    Get,
    KeyValue,
    NotFound,
    Op,
    Post,
    Put,
    RevisionCompacted,
    Row,
    Rows,
    Scan,
    Stale,
    Txn,
    TxnOp,
    TxnResult,
    Unblock,
    View,
    Written,
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
from tests.test_statemachine import Driver


def kv(key: str, value: bytes, create: int, mod: int, version: int) -> KeyValue:
    return KeyValue(key, value, create, mod, version)


def gone(key: str, revision: int) -> KeyValue:
    """A DELETE event's kv: only the key and the deletion's revision."""
    return KeyValue(key, b"", 0, revision, 0)


# ------------------------------------------------------------------------ revision rules


def test_a_fresh_store_is_at_revision_1_and_the_first_put_makes_it_2():
    d = Driver()
    assert d.sm.revision == 1 and d.sm.compact_revision == 0
    assert d.run(Get("k")) == NotFound(revision=1)
    assert d.run(Put("k", b"v")) == Written(1, revision=2)
    assert d.sm.revision == 2


def test_commands_that_change_no_key_do_not_move_the_revision():
    d = Driver(StateMachine(Limits(kv_bytes_max=200)))
    d.run(Put("k", b"v"))  # 2
    no_change: list[Op] = [
        Get("k"),
        Scan("", 10),
        View("A", 10),
        Delete("absent"),
        Delete("absent/", prefix=True),
        Cas("k", b"x", expect_version=7),
        Block("A", "B"),
        Unblock("A", "B"),
        Txn((Compare("k", "version", "=", number=9),), (Put("k", b"x"),), (Get("k"),)),
        Txn((), (Put("a", b"1"), Put("a", b"2"))),  # refused
        Put("big", b"x" * 500),  # Full
        Compact(2),
    ]
    for op in no_change:
        d.run(op)
        assert d.sm.revision == 2, op
    assert d.raw("c1", 1, Put("k", b"stale")) == Stale(last_seq=d.seqs["c1"])
    d.sm.apply(d.sm.applied_through + 1, (b"\xc1 not a command",))
    d.sm.apply(d.sm.applied_through + 1, ())
    assert d.sm.revision == 2


def test_every_changing_command_moves_the_revision_by_exactly_one():
    d = Driver()
    changes: list[Op] = [
        Put("a", b"1"),
        Put("a", b"1"),  # the same value again is still a change (etcd)
        Cas("a", b"2", expect_value=b"1"),
        Delete("a"),
        Put("p/1", b"x"),
        Put("p/2", b"x"),
        Delete("p/", prefix=True),
        Txn((), (Put("t1", b"1"), Put("t2", b"2"), Delete("t3"))),
    ]
    for i, op in enumerate(changes):
        d.run(op)
        assert d.sm.revision == 2 + i, op


def test_keys_changed_by_one_command_share_its_revision():
    d = Driver()
    for k in ["p/a", "p/b", "p/c", "q"]:
        d.run(Put(k, b"v"))  # 2..5
    assert d.run(Delete("p/", prefix=True)) == Deleted(1, revision=6, deleted=3)
    result = d.run(Txn((), (Put("x", b"1"), Put("y", b"2"), Delete("q"))))
    assert isinstance(result, TxnResult) and result.revision == 7
    events = d.sm.events_since(6, 100)
    assert [(e.type, e.kv.key, e.revision) for e in events] == [
        ("DELETE", "p/a", 6),
        ("DELETE", "p/b", 6),
        ("DELETE", "p/c", 6),
        ("PUT", "x", 7),
        ("PUT", "y", 7),
        ("DELETE", "q", 7),
    ]


# ----------------------------------------------------------------------- per-key fields


def test_per_key_fields_follow_etcd():
    d = Driver()
    d.run(Put("other", b"o"))  # 2: so that create and mod differ from the key's version
    d.run(Put("k", b"1"))  # 3: created
    assert d.run(Get("k")) == Found(b"1", 1, create_revision=3, mod_revision=3, revision=3)
    d.run(Put("other", b"o2"))  # 4
    d.run(Put("k", b"2"))  # 5: create kept, version + 1, mod = the new revision
    assert d.run(Get("k")) == Found(b"2", 2, create_revision=3, mod_revision=5, revision=5)
    d.run(Delete("k"))  # 6
    d.run(Put("k", b"3"))  # 7: a new generation: version 1, create = mod = 7
    assert d.run(Get("k")) == Found(b"3", 1, create_revision=7, mod_revision=7, revision=7)
    assert d.run(Scan("k", 10)) == Rows((Row("k", b"3", 1, 7, 7),), more=False, revision=7)


def test_prev_kv_on_put_and_delete():
    d = Driver()
    assert d.run(Put("k", b"1", prev_kv=True)) == Written(1, revision=2, prev=None)
    assert d.run(Put("k", b"2", prev_kv=True)) == Written(
        2, revision=3, prev=kv("k", b"1", 2, 2, 1)
    )
    assert d.run(Put("k", b"3")) == Written(3, revision=4)  # not asked: not sent
    d.run(Put("k2", b"x"))  # 5
    assert d.run(Delete("k", prefix=True, prev_kv=True)) == Deleted(
        3, revision=6, deleted=2, prev=(kv("k", b"3", 2, 4, 3), kv("k2", b"x", 5, 5, 1))
    )
    assert d.run(Delete("k", prev_kv=True)) == Deleted(0, revision=6)


def test_prefix_delete_of_the_empty_prefix_removes_every_key():
    d = Driver()
    for k in ["a", "b", "c"]:
        d.run(Put(k, b"v"))
    assert d.run(Delete("", prefix=True)) == Deleted(1, revision=5, deleted=3)
    assert d.run(Scan("", 10)) == Rows((), more=False, revision=5)


def test_a_prefix_delete_whose_prev_kv_would_not_fit_an_answer_is_refused_whole():
    d = Driver()
    big = b"x" * (500 << 10)
    for i in range(10):  # 5 MB of values, over the 4 MiB answer budget
        d.run(Put(f"big/{i}", big))
    assert d.run(Delete("big/", prefix=True, prev_kv=True)) == Full("result")
    assert d.sm.revision == 11
    assert d.run(Delete("big/", prefix=True)) == Deleted(1, revision=12, deleted=10)


# ------------------------------------------------------------------ reads at a revision


def _history() -> Driver:
    d = Driver()
    d.run(Put("a", b"1"))  # 2
    d.run(Put("b", b"1"))  # 3
    d.run(Put("a", b"2"))  # 4
    d.run(Delete("b"))  # 5
    d.run(Put("c", b"1"))  # 6
    d.run(Put("b", b"2"))  # 7
    return d


def test_get_and_scan_at_a_revision_read_the_store_as_it_was():
    d = _history()
    assert d.run(Get("a", revision=1)) == NotFound(revision=7)
    assert d.run(Get("a", revision=2)) == Found(b"1", 1, 2, 2, revision=7)
    assert d.run(Get("a", revision=3)) == Found(b"1", 1, 2, 2, revision=7)
    assert d.run(Get("a", revision=4)) == Found(b"2", 2, 2, 4, revision=7)
    assert d.run(Get("b", revision=4)) == Found(b"1", 1, 3, 3, revision=7)
    assert d.run(Get("b", revision=5)) == NotFound(revision=7)
    assert d.run(Get("b", revision=7)) == Found(b"2", 1, 7, 7, revision=7)
    assert d.run(Scan("", 10, revision=5)) == Rows(
        (Row("a", b"2", 2, 2, 4),), more=False, revision=7
    )
    assert d.run(Scan("", 10, revision=6)) == Rows(
        (Row("a", b"2", 2, 2, 4), Row("c", b"1", 1, 6, 6)), more=False, revision=7
    )
    assert d.run(Scan("", 1, revision=6)) == Rows((Row("a", b"2", 2, 2, 4),), more=True, revision=7)
    assert d.run(Scan("", 10, revision=7)) == d.run(Scan("", 10))


def test_a_read_above_the_current_revision_is_refused():
    d = _history()
    assert d.run(Get("a", revision=8)) == FutureRevision(revision=7)
    assert d.run(Scan("", 10, revision=8)) == FutureRevision(revision=7)
    assert d.sm.query(Get("a", revision=99)) == FutureRevision(revision=7)


# -------------------------------------------------------------------------- compaction


def test_compaction_keeps_its_own_revision_readable_and_refuses_below_it():
    d = _history()
    assert d.run(Compact(5)) == Compacted(compact_revision=5, revision=7)
    assert d.sm.compact_revision == 5 and d.sm.revision == 7
    assert d.run(Get("a", revision=5)) == Found(b"2", 2, 2, 4, revision=7)  # C itself
    assert d.run(Get("b", revision=5)) == NotFound(revision=7)
    assert d.run(Scan("", 10, revision=5)) == Rows(
        (Row("a", b"2", 2, 2, 4),), more=False, revision=7
    )
    assert d.run(Get("a", revision=4)) == RevisionCompacted(compact_revision=5, revision=4)
    assert d.run(Scan("", 10, revision=1)) == RevisionCompacted(compact_revision=5, revision=1)
    assert d.run(Get("a")) == Found(b"2", 2, 2, 4, revision=7)  # current reads unaffected
    # Events at C and after stay deliverable; the deletion at 5 still carries its prev_kv.
    assert d.sm.events_since(5, 100) == [
        Event("DELETE", gone("b", 5), kv("b", b"1", 3, 3, 1)),
        Event("PUT", kv("c", b"1", 6, 6, 1)),
        Event("PUT", kv("b", b"2", 7, 7, 1)),
    ]
    with pytest.raises(AssertionError):
        d.sm.events_since(4, 100)


def test_compaction_edges_twice_below_and_in_the_future():
    d = _history()
    assert d.run(Compact(0)) == RevisionCompacted(compact_revision=0, revision=0)
    assert d.run(Compact(8)) == FutureRevision(revision=7)
    assert d.run(Compact(3)) == Compacted(compact_revision=3, revision=7)
    assert d.run(Compact(3)) == RevisionCompacted(compact_revision=3, revision=3)
    assert d.run(Compact(2)) == RevisionCompacted(compact_revision=3, revision=2)
    assert d.run(Compact(7)) == Compacted(compact_revision=7, revision=7)  # up to the head
    assert d.run(Get("a", revision=7)) == Found(b"2", 2, 2, 4, revision=7)
    assert d.sm.events_since(7, 10) == [Event("PUT", kv("b", b"2", 7, 7, 1))]
    d.run(Put("a", b"3"))  # 8: history goes on from the compacted point
    assert d.sm.events_since(7, 10)[-1] == Event(
        "PUT", kv("a", b"3", 2, 8, 3), kv("a", b"2", 2, 4, 2)
    )
    assert d.sm.history_bytes > 0


def test_compacting_to_the_head_leaves_only_the_current_state_and_the_head_events():
    d = Driver()
    for i in range(50):
        d.run(Put(f"k{i % 5}", b"v%d" % i))
    d.run(Delete("k0"))
    before = d.sm.history_bytes
    d.run(Compact(d.sm.revision))
    # What remains charged: the tombstone of k0 at the head revision.
    assert 0 < d.sm.history_bytes < before
    assert [e.type for e in d.sm.events_since(d.sm.revision, 10)] == ["DELETE"]
    assert d.run(Get("k1", revision=d.sm.revision)) == d.run(Get("k1"))


def test_history_over_its_budget_is_compacted_oldest_first_and_alike_on_every_replica():
    limits = Limits(history_bytes_max=2000)
    a, b = Driver(StateMachine(limits)), Driver(StateMachine(limits))
    for i in range(200):
        for d in (a, b):
            d.run(Put(f"k{i % 7}", b"x" * (i % 40)))
            # Between slots the history is within its budget (only the slot being applied
            # may leave it over: its own events are never compacted away).
            assert d.sm.history_bytes <= 2000
    assert a.sm.compact_revision > 100
    assert a.sm.digest() == b.sm.digest() and a.sm.snapshot() == b.sm.snapshot()
    # The events of the compacted range are gone, the rest are complete and in order.
    events = a.sm.events_since(a.sm.compact_revision, 10_000)
    assert [e.revision for e in events] == list(range(a.sm.compact_revision, a.sm.revision + 1))
    assert a.run(Get("k3", revision=a.sm.compact_revision)) != RevisionCompacted(
        a.sm.compact_revision, a.sm.compact_revision
    )


def test_the_slot_being_applied_is_never_compacted_even_over_budget():
    sm = StateMachine(Limits(history_bytes_max=1))
    d = Driver(sm)
    d.run(Put("k", b"1"))  # 2
    d.run(Put("k", b"2"))  # 3: the version at 2 is history, over the 1-byte budget
    assert sm.compact_revision == 3  # compacted up to the slot's own revision, not past
    assert sm.events_since(3, 10) == [Event("PUT", kv("k", b"2", 2, 3, 2), kv("k", b"1", 2, 2, 1))]
    # A slot of several commands keeps every one of its events.
    cmds = tuple(encode_command(Command("w", i, "A", Put("k", b"%d" % i))) for i in range(1, 4))
    sm.apply(sm.applied_through + 1, cmds)
    assert sm.revision == 6 and sm.compact_revision == 4
    assert [e.revision for e in sm.events_since(4, 10)] == [4, 5, 6]


# ----------------------------------------------------------------------- events_since


def test_events_since_never_splits_a_revision_and_fills_prev_kv():
    d = Driver()
    d.run(Put("p/a", b"1"))  # 2
    d.run(Put("p/b", b"1"))  # 3
    d.run(Put("p/a", b"2"))  # 4
    d.run(Delete("p/", prefix=True))  # 5: two events
    d.run(Put("p/a", b"3"))  # 6
    assert [e.revision for e in d.sm.events_since(2, 1)] == [2]
    assert [e.revision for e in d.sm.events_since(5, 1)] == [5, 5]  # more than the limit
    assert [e.revision for e in d.sm.events_since(4, 2)] == [4, 5, 5]
    assert d.sm.events_since(0, 100) == d.sm.events_since(1, 100) == d.sm.events_since(2, 100)
    assert d.sm.events_since(2, 100) == [
        Event("PUT", kv("p/a", b"1", 2, 2, 1), None),
        Event("PUT", kv("p/b", b"1", 3, 3, 1), None),
        Event("PUT", kv("p/a", b"2", 2, 4, 2), kv("p/a", b"1", 2, 2, 1)),
        Event("DELETE", gone("p/a", 5), kv("p/a", b"2", 2, 4, 2)),
        Event("DELETE", gone("p/b", 5), kv("p/b", b"1", 3, 3, 1)),
        Event("PUT", kv("p/a", b"3", 6, 6, 1), None),
    ]
    assert d.sm.events_since(7, 100) == []
    assert d.sm.events_since(99, 100) == []


# ------------------------------------------------------------------ snapshot and digest


def test_digest_covers_the_revisions():
    a = _history()
    b = _history()
    assert a.sm.digest() == b.sm.digest()
    b.sm.compact_revision = 3  # same applied chain, different compaction: must differ
    assert a.sm.digest() != b.sm.digest()
    b.sm.compact_revision = 0
    b.sm.revision += 1
    assert a.sm.digest() != b.sm.digest()


def test_snapshot_round_trip_carries_history_and_compaction():
    d = _history()
    d.run(Compact(4))
    d.run(Put("a", b"3"))
    restored = Driver(StateMachine.restore(d.sm.snapshot()))
    restored.seqs = dict(d.seqs)
    assert restored.sm.digest() == d.sm.digest()
    assert restored.sm.snapshot() == d.sm.snapshot()
    assert (restored.sm.revision, restored.sm.compact_revision) == (8, 4)
    assert restored.sm.history_bytes == d.sm.history_bytes
    assert restored.sm.events_since(4, 100) == d.sm.events_since(4, 100)
    for r in range(4, 9):
        assert restored.run(Scan("", 10, revision=r)) == d.run(Scan("", 10, revision=r))
    future: list[Op] = [Put("b", b"9"), Compact(6), Get("b", revision=5), Delete("", prefix=True)]
    for op in future:
        assert restored.run(op) == d.run(op)
    assert restored.sm.digest() == d.sm.digest()


def _format_1(**changes: object) -> bytes:
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
    # Encoded as format 1 was: only its eight fields, no revisions or history.
    state = _SnapshotState(**fields)
    return _seal(_snapshot_encoder.encode(tuple(getattr(state, f) for f in _FORMAT_1_FIELDS)))


_FORMAT_1_FIELDS = (
    "format",
    "applied_through",
    "chain",
    "limits",
    "kv",
    "blocks",
    "timeline",
    "sessions",
)


def test_a_format_1_snapshot_restores_every_key_at_revision_1():
    # Format 1's limits had six fields: the history budget gets its default.
    old_limits = _snapshot_encoder.encode(Limits(sessions_max=7))
    assert old_limits[0] == 0x97  # a 7-element array; format 1 wrote 6
    sm = StateMachine.restore(_format_1())
    assert sm.limits.history_bytes_max == Limits().history_bytes_max
    assert (sm.revision, sm.compact_revision, sm.applied_through) == (1, 1, 5)
    d = Driver(sm)
    assert d.run(Get("b")) == Found(b"2", 3, create_revision=1, mod_revision=1, revision=1)
    assert d.run(Get("b", revision=1)) == Found(b"2", 3, 1, 1, revision=1)
    assert sm.events_since(1, 10) == []
    assert d.run(Put("b", b"3")) == Written(4, revision=2)
    assert d.run(Get("b")) == Found(b"3", 4, create_revision=1, mod_revision=2, revision=2)
    assert sm.events_since(1, 10) == [Event("PUT", kv("b", b"3", 1, 2, 4), kv("b", b"2", 1, 1, 3))]
    # Re-snapshotted as format 2, it restores to the same state.
    again = StateMachine.restore(sm.snapshot())
    assert again.digest() == sm.digest() and again.snapshot() == sm.snapshot()
    empty = StateMachine.restore(_format_1(kv=()))
    assert (empty.revision, empty.compact_revision) == (1, 0)


def test_a_format_1_state_keeps_its_old_digest_until_the_first_change():
    old = _load_machine_before_revisions()
    if old is None:
        pytest.skip("git history of machine.py not available")
    sm_old = old.StateMachine()
    cmds = tuple(encode_command(Command("c", i, "A", Put(f"k{i}", b"v"))) for i in range(1, 4))
    sm_old.apply(1, cmds)
    restored = StateMachine.restore(sm_old.snapshot())
    assert restored.digest() == sm_old.digest()  # a backup's recorded digest still verifies
    d = Driver(restored)
    d.run(Put("k1", b"w"))
    assert restored.digest() != sm_old.digest()


def _load_machine_before_revisions() -> Any:
    """machine.py as it was before revisions (commit a68f30a), from git, or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(
            ["git", "show", "a68f30a:paxosd/statemachine/machine.py"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("paxosd_machine_before_revisions")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, "machine_a68f30a.py", "exec"), module.__dict__)  # noqa: S102
    return module


def test_a_format_1_snapshot_with_history_fields_is_refused():
    state = _SnapshotState(
        format=1,
        applied_through=5,
        chain=bytes(32),
        limits=Limits(),
        kv=(),
        blocks=(),
        timeline=(),
        sessions=(),
        revision=3,
    )
    with pytest.raises(BadSnapshot, match="format-1"):
        StateMachine.restore(_seal(_snapshot_encoder.encode(state)))


def _format_2(**changes: object) -> bytes:
    base = _SnapshotState(
        format=2,
        applied_through=9,
        chain=bytes(32),
        limits=Limits(),
        kv=(),
        blocks=(),
        timeline=(),
        sessions=(),
        revision=6,
        compact_revision=4,
        base=(kv("a", b"1", 2, 2, 1), kv("b", b"1", 3, 3, 1)),
        events=(
            kv("a", b"2", 2, 4, 2),
            gone("b", 5),
            kv("b", b"2", 6, 6, 1),
            kv("c", b"1", 6, 6, 1),
        ),
    )
    fields = {f: getattr(base, f) for f in base.__struct_fields__} | changes
    return _seal(_snapshot_encoder.encode(_SnapshotState(**fields)))


def test_format_2_restore_validates_every_field():
    sm = StateMachine.restore(_format_2())  # the baseline is valid
    assert sm.events_since(4, 10)[1] == Event("DELETE", gone("b", 5), kv("b", b"1", 3, 3, 1))
    events = (kv("a", b"2", 2, 4, 2), gone("b", 5), kv("b", b"2", 6, 6, 1))
    bad_changes: list[dict[str, object]] = [
        {"format": 4},
        {"kv": (_KvEntry("a", b"1", 1),)},
        {"revision": 0},
        {"revision": 7},  # history ends at 6
        {"revision": 5},
        {"compact_revision": 7},  # above the revision
        {"compact_revision": 0},  # base needs a compaction
        {"compact_revision": 5},  # the event at 4 is below it
        {"base": (kv("b", b"1", 3, 3, 1), kv("a", b"1", 2, 2, 1))},  # unsorted
        {"base": (kv("a", b"1", 2, 2, 1), kv("a", b"0", 1, 1, 1))},  # duplicate
        {"base": (kv("a", b"1", 2, 4, 1), kv("b", b"1", 3, 3, 1))},  # at the floor
        {"base": (kv("a", b"1", 3, 2, 1), kv("b", b"1", 3, 3, 1))},  # create > mod
        {"base": (kv("a", b"1", 2, 2, 0), kv("b", b"1", 3, 3, 1))},  # a deletion
        {"base": (kv("a", b"1", 0, 2, 1), kv("b", b"1", 3, 3, 1))},  # create 0
        {"base": (KeyValue("a", b"1", 2, 2, 1, lease=5), kv("b", b"1", 3, 3, 1))},
        {"base": (kv("", b"1", 2, 2, 1), kv("b", b"1", 3, 3, 1))},
        {"events": events},  # revision 6 is then missing the key c: ok, but ...
        {"events": (gone("b", 5), *events[2:])},  # revision 4 missing
        {"events": (events[1], events[0], *events[2:])},  # out of order
        {"events": (kv("a", b"2", 2, 4, 3), *events[1:])},  # version skips
        {"events": (kv("a", b"2", 4, 4, 2), *events[1:])},  # create changed
        {"events": (*events[:2], kv("b", b"2", 5, 6, 1))},  # new generation create
        {"events": (*events[:2], kv("b", b"2", 6, 6, 2))},  # new generation version
        {"events": (events[0], gone("z", 5), events[2])},  # deleting an absent key
        {"events": (events[0], KeyValue("b", b"x", 0, 5, 0), events[2])},  # valued deletion
        {"events": (*events, kv("b", b"3", 6, 6, 2))},  # one key twice in a revision
        {"events": (*events, kv("d", b"x" * (600 << 10), 6, 6, 1))},
        {"limits": Limits(kv_bytes_max=100, history_bytes_max=1)},
    ]
    for change in bad_changes:
        if change == {"events": events}:
            StateMachine.restore(_format_2(**change))  # a revision with one event is fine
            continue
        with pytest.raises(BadSnapshot):
            StateMachine.restore(_format_2(**change))


# ------------------------------------------------------------- a reference model, checked


class Model:
    """The store as of every revision, kept naively (a full copy per revision), written
    from the design's rules independently of the machine's index and event list."""

    def __init__(self) -> None:
        self.states: list[dict[str, KeyValue]] = [{}, {}]  # revisions 0 and 1: empty
        self.changed: list[list[str]] = [[], []]

    @property
    def revision(self) -> int:
        return len(self.states) - 1

    def apply(self, op: Op, compact_revision: int) -> None:
        """Apply ``op``; the compaction point is the machine's (its rules are tested on
        their own above), so that the model refuses the same historical reads."""
        cur = self.states[-1]
        match op:
            case Put():
                self._commit([op])
            case Delete():
                self._commit([op])
            case Cas(key=k, new=new, expect_value=ev, expect_version=evv):
                now = cur.get(k)
                ok = (
                    evv == (now.version if now else 0)
                    if evv is not None
                    else (now is not None and now.value == ev)
                )
                if ok:
                    self._commit([Put(k, new)])
            case Txn(compares=compares, success=success, failure=failure):
                for branch in (success, failure):
                    puts = [o.key for o in branch if isinstance(o, Put)]
                    if len(set(puts)) < len(puts) or any(
                        p == o.key or (o.prefix and p.startswith(o.key))
                        for o in branch
                        if isinstance(o, Delete)
                        for p in puts
                    ):
                        return
                taken = success if all(_holds(c, cur.get(c.key)) for c in compares) else failure
                for o in taken:
                    if (
                        isinstance(o, Get | Scan)
                        and o.revision
                        and not (compact_revision <= o.revision <= self.revision)
                    ):
                        return
                self._commit(list(taken))

    def _commit(self, ops: list[TxnOp]) -> None:
        rev = self.revision + 1
        new = dict(self.states[-1])
        changed: list[str] = []
        for o in ops:
            match o:
                case Put(key=k, value=v):
                    old = new.get(k)
                    new[k] = (
                        KeyValue(k, v, old.create_revision, rev, old.version + 1)
                        if old
                        else KeyValue(k, v, rev, rev, 1)
                    )
                    changed.append(k)
                case Delete(key=k, prefix=prefix):
                    for key in sorted(new):
                        if key == k or (prefix and key.startswith(k)):
                            del new[key]
                            changed.append(key)
        if changed:
            self.states.append(new)
            self.changed.append(changed)


def _holds(c: Compare, now: KeyValue | None) -> bool:
    if c.target == "value":
        if now is None:
            return False
        a: object = now.value
        b: object = c.value
    else:
        field = {"version": "version", "create": "create_revision", "mod": "mod_revision"}
        a = getattr(now, field[c.target]) if now and c.target != "lease" else 0
        b = c.number
    return {"=": a == b, "!=": a != b, "<": a < b, ">": a > b}[c.op]  # type: ignore[operator]


_mkeys = st.sampled_from(["a", "ab", "b", "ba", "c"])
_mvals = st.binary(max_size=3)
_mtxn_ops = st.one_of(
    st.builds(Put, _mkeys, _mvals, st.booleans()),
    st.builds(Delete, _mkeys, st.booleans(), st.booleans()),
    st.builds(Get, _mkeys, st.integers(0, 6)),
    st.builds(Scan, st.sampled_from(["", "a", "b"]), st.integers(1, 3), st.integers(0, 6)),
)
_mcompares = st.one_of(
    st.builds(
        Compare,
        _mkeys,
        st.sampled_from(["version", "create", "mod", "lease"]),
        st.sampled_from(["=", "!=", "<", ">"]),
        number=st.integers(0, 6),
    ),
    st.builds(
        Compare, _mkeys, st.just("value"), st.sampled_from(["=", "!=", "<", ">"]), value=_mvals
    ),
)
_model_ops = st.one_of(
    st.builds(Put, _mkeys, _mvals),
    st.builds(Delete, _mkeys, st.booleans()),
    st.builds(Cas, _mkeys, _mvals, expect_version=st.integers(0, 2)),
    st.builds(
        Txn,
        st.lists(_mcompares, max_size=2).map(tuple),
        st.lists(_mtxn_ops, max_size=3).map(tuple),
        st.lists(_mtxn_ops, max_size=3).map(tuple),
    ),
    st.builds(Compact, st.integers(0, 12)),
    st.builds(Get, _mkeys, st.integers(0, 12)),
    st.builds(Scan, st.sampled_from(["", "a", "b"]), st.integers(1, 3), st.integers(0, 12)),
)


def _check_against_model(sm: StateMachine, model: Model) -> None:
    assert sm.revision == model.revision
    low = max(sm.compact_revision, 1)
    for r in range(low, sm.revision + 1):
        state = model.states[r]
        rows = sm.query(Scan("", 1000, revision=r))
        assert isinstance(rows, Rows)
        assert {row.key: row for row in rows.rows} == {
            k: Row(k, v.value, v.version, v.create_revision, v.mod_revision)
            for k, v in state.items()
        }, r
    # Events: exactly each revision's changes, prev_kv the key as of the revision before.
    events = sm.events_since(sm.compact_revision, 1 << 20)
    expected = [
        Event(
            "PUT" if k in model.states[r] else "DELETE",
            model.states[r].get(k) or KeyValue(k, b"", 0, r, 0),
            model.states[r - 1].get(k),
        )
        for r in range(max(sm.compact_revision, 2), sm.revision + 1)
        for k in model.changed[r]
    ]
    assert events == expected


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(_model_ops, max_size=30),
    cut=st.integers(0, 30),
    budget=st.sampled_from([1, 300, 1 << 20]),
)
def test_the_machine_agrees_with_a_naive_model_of_every_revision(ops, cut, budget):
    limits = Limits(history_bytes_max=budget)
    sm = StateMachine(limits)
    model = Model()
    for i, op in enumerate(ops):
        if i == cut:
            restored = StateMachine.restore(sm.snapshot())
            assert restored.digest() == sm.digest()
            sm = restored
        compact_revision = sm.compact_revision
        sm.apply(sm.applied_through + 1, (encode_command(Command("c", i + 1, "A", op)),))
        model.apply(op, compact_revision)
        _check_against_model(sm, model)


class _PrevKvLost(StateMachine):
    """Planted bug: events lose their prev_kv."""

    def events_since(self, revision: int, limit: int) -> list[Event]:
        return [Event(e.type, e.kv, None) for e in super().events_since(revision, limit)]


class _ReadsOneRevisionEarly(StateMachine):
    """Planted bug: a read at R answers as of R - 1."""

    def _at(self, key: str, revision: int) -> KeyValue | None:
        return super()._at(key, max(revision - 1, 1))


class _CompactsOneTooMany(StateMachine):
    """Planted bug: compaction also drops the version the store had at C."""

    def _compact(self, revision: int) -> None:
        super()._compact(revision)
        for versions in self._index.values():
            if len(versions) > 1 and versions[0].mod_revision < revision:
                del versions[0]


@pytest.mark.parametrize("planted", [_PrevKvLost, _ReadsOneRevisionEarly, _CompactsOneTooMany])
def test_the_model_check_catches_planted_bugs(planted: type[StateMachine]) -> None:
    ops: list[Op] = [Put("a", b"1"), Put("b", b"1"), Put("a", b"2"), Delete("b"), Compact(3)]
    sm = planted()
    model = Model()
    with pytest.raises(AssertionError):
        for i, op in enumerate(ops):
            compact_revision = sm.compact_revision
            sm.apply(sm.applied_through + 1, (encode_command(Command("c", i + 1, "A", op)),))
            model.apply(op, compact_revision)
            _check_against_model(sm, model)


def test_a_scan_looks_at_a_bounded_number_of_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("paxosd.statemachine.machine.SCAN_VISITS_MAX", 5)
    d = Driver()
    for i in range(8):
        d.run(Put(f"k{i}", b"v"))  # 2..9
    d.run(Put("z", b"late"))  # 10
    # As of revision 2 only k0 existed: the scan passes absent keys and stops at the bound.
    assert d.run(Scan("", 10, revision=2)) == Rows((Row("k0", b"v", 1, 2, 2),), True, 10)
    assert d.run(Scan("", 10, revision=10)) == Rows(
        tuple(Row(f"k{i}", b"v", 1, 2 + i, 2 + i) for i in range(5)), True, 10
    )
    # In a transaction the bound is shared by its scans.
    result = d.run(Txn((), (Scan("", 3), Scan("", 10))))
    assert isinstance(result, TxnResult)
    first, second = result.responses
    assert isinstance(first, Rows) and isinstance(second, Rows)
    assert (len(first.rows), first.more) == (3, True)
    assert len(second.rows) <= 2 and second.more


def test_removing_many_keys_at_once_keeps_the_key_lists_sorted_and_exact():
    # More keys than the one-at-a-time removal handles: the one-pass path.
    d = Driver()
    for i in range(40):
        d.run(Put(f"p/{i:02d}", b"v"))
        d.run(Put(f"q/{i:02d}", b"v"))
    assert d.run(Delete("p/", prefix=True)) == Deleted(1, revision=82, deleted=40)
    rows = d.run(Scan("", 1000))
    assert isinstance(rows, Rows) and [r.key for r in rows.rows] == [
        f"q/{i:02d}" for i in range(40)
    ]
    d.run(Put("p/05", b"again"))  # 83
    d.run(Compact(83))  # the 39 other p/ keys are absent as of 83: they leave the index
    assert d.sm._hkeys == sorted(d.sm._hkeys) and len(d.sm._hkeys) == 41
    assert d.sm._keys == sorted(["p/05", *(f"q/{i:02d}" for i in range(40))])
    restored = StateMachine.restore(d.sm.snapshot())
    assert (restored._keys, restored._hkeys) == (d.sm._keys, d.sm._hkeys)


def test_every_version_of_a_key_shares_one_key_string_also_after_a_restore():
    d = Driver()
    for i in range(3):
        d.run(Put("k" + "ey" * 20, b"%d" % i))  # a fresh string object in every command
    d.run(Delete("k" + "ey" * 20))
    for sm in (d.sm, StateMachine.restore(d.sm.snapshot())):
        (versions,) = sm._index.values()
        assert len(versions) == 4 and all(v.key is versions[0].key for v in versions)


# ------------------------------------------------------- the last revision and version


_LAST = SEQ_MAX - 1  # the last revision (and VERSION_MAX - 1 the last version) apply makes


def test_restore_refuses_a_revision_or_version_that_apply_could_not_make():
    # Such a store would overflow on its next write: a revision of 2**63 encodes in no
    # answer and no snapshot, and a version past VERSION_MAX stopped apply with an assert.
    last_version = VERSION_MAX - 1
    for change in [
        {
            "revision": 1,
            "compact_revision": 1,
            "base": (kv("a", b"1", 1, 1, VERSION_MAX),),
            "events": (),
        },
        {
            "base": (kv("a", b"1", 2, 2, last_version), kv("b", b"1", 3, 3, 1)),
            "events": (kv("a", b"2", 2, 4, VERSION_MAX), gone("b", 5), kv("b", b"2", 6, 6, 1)),
        },
        {
            "revision": SEQ_MAX,
            "compact_revision": SEQ_MAX,
            "base": (kv("a", b"1", 2, 2, 1),),
            "events": (kv("a", b"2", 2, SEQ_MAX, 2),),
        },
    ]:
        with pytest.raises(BadSnapshot, match="past|outside"):
            StateMachine.restore(_format_2(**change))
    format_1 = _SnapshotState(
        format=1,
        applied_through=1,
        chain=bytes(32),
        limits=Limits(),
        kv=(_KvEntry("a", b"1", VERSION_MAX),),
        blocks=(),
        timeline=(),
        sessions=(),
    )
    with pytest.raises(BadSnapshot):
        StateMachine.restore(_seal(_snapshot_encoder.encode(format_1)))


def test_a_write_past_the_last_version_is_refused_and_changes_nothing():
    last_version = VERSION_MAX - 1
    sm = StateMachine.restore(
        _format_2(
            revision=4,
            compact_revision=4,
            base=(kv("a", b"1", 2, 2, last_version - 1), kv("b", b"1", 3, 3, 1)),
            events=(kv("a", b"2", 2, 4, last_version),),
        )
    )
    d = Driver(sm)
    snapshot = sm.snapshot()
    for op in [
        Put("a", b"3"),
        Cas("a", b"3", expect_version=last_version),
        Txn((), (Put("b", b"2"), Put("a", b"3"))),
    ]:
        assert d.run(op) == Full(what="version")
    assert d.run(Get("a")) == Found(b"2", last_version, 2, 4, revision=4)
    assert sm.revision == 4
    assert sm.events_since(4, 10) == StateMachine.restore(snapshot).events_since(4, 10)
    # Other keys still take writes, and a delete then a put starts the key again at 1.
    assert d.run(Put("b", b"2")) == Written(2, revision=5)
    assert d.run(Delete("a")) == Deleted(last_version, revision=6, deleted=1)
    assert d.run(Put("a", b"new")) == Written(1, revision=7)
    StateMachine.restore(sm.snapshot())


def test_a_write_past_the_last_revision_is_refused_and_the_store_still_snapshots():
    sm = StateMachine.restore(
        _format_2(
            revision=_LAST,
            compact_revision=_LAST,
            base=(kv("a", b"1", 2, 2, 1),),
            events=(kv("a", b"2", 2, _LAST, 2),),
        )
    )
    d = Driver(sm)
    for op in [
        Put("b", b"1"),
        Put("a", b"3"),
        Delete("a"),
        Delete("", prefix=True),
        Cas("a", b"3", expect_version=2),
        Txn((), (Get("a"), Put("b", b"1"))),
    ]:
        assert d.run(op) == Full(what="revision")
    # What changes no key still answers: reads, a delete of an absent key, a txn that only
    # reads, a compaction.
    assert d.run(Get("a")) == Found(b"2", 2, 2, _LAST, revision=_LAST)
    assert d.run(Delete("zz")) == Deleted(0, revision=_LAST, deleted=0)
    assert d.run(Txn((), (Get("b"),))) == TxnResult(True, (NotFound(revision=_LAST),), _LAST)
    assert sm.revision == _LAST
    restored = StateMachine.restore(sm.snapshot())
    assert restored.digest() == sm.digest()
