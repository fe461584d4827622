"""Automatic compaction (the history byte budget) does bounded work per slot.

Trimming used to compact one revision per pass and rebuild the sorted key list on every pass
that dropped more than a handful of keys, so a slot that pushed history over its budget after
many small revisions cost (revisions compacted) x (keys): seconds of apply. The trim now finds
its target first and compacts once. What it compacts to must not change: it is replicated
state, so it is checked here against the one-revision-at-a-time rule it replaces.

Work is counted (compaction passes, key-list rebuilds), never timed.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator

import pytest

import paxosd.statemachine.machine as machine
from paxosd.statemachine.commands import (
    Command,
    Compact,
    Delete,
    Op,
    Put,
    Txn,
    encode_command,
)
from paxosd.statemachine.machine import Limits, StateMachine


class _TrimsOneRevisionAtATime(StateMachine):
    """The reference: the trim rule as first written, one revision per compaction, until
    history is within its budget or the slot's first revision is reached."""

    def _trim_history(self, first_revision: int) -> None:
        budget = self.limits.history_bytes_max
        while self._history_bytes > budget and self.compact_revision < first_revision:
            start = self._events_start
            oldest = self._events[start].mod_revision if start < len(self._events) else None
            target = first_revision if oldest is None else min(oldest + 1, first_revision)
            self._compact(max(target, self.compact_revision + 1))


class _TrimsOneRevisionTooFar(StateMachine):
    """Planted bug: the trim compacts one revision past the one that suffices."""

    def _trim_target(self, first_revision: int) -> int:
        return min(super()._trim_target(first_revision) + 1, first_revision)


class _Feeder:
    """Feeds whole slots of commands to a machine, numbering the commands itself."""

    def __init__(self, sm: StateMachine) -> None:
        self.sm = sm
        self.seq = 0

    def slot(self, ops: list[Op]) -> None:
        cmds = []
        for op in ops:
            self.seq += 1
            cmds.append(encode_command(Command("c", self.seq, "A", op)))
        self.sm.apply(self.sm.applied_through + 1, tuple(cmds))


def _random_slots(seed: int, count: int) -> Iterator[list[Op]]:
    """Slots of puts (new keys and updates, small and large values), deletes, prefix
    deletes, transactions and explicit compactions over a few prefixes."""
    rng = random.Random(seed)
    revision = 1  # an upper bound on the store's revision, for explicit compactions
    for _ in range(count):
        ops: list[Op] = []
        for _ in range(rng.randint(1, 4)):
            key = f"{rng.choice('abc')}/{rng.randint(0, 30)}"
            value = b"v" * rng.choice([1, 10, 200])
            roll = rng.random()
            if roll < 0.55:
                ops.append(Put(key, value))
            elif roll < 0.7:
                ops.append(Delete(key))
            elif roll < 0.75:
                ops.append(Delete(key[:2], prefix=True))
            elif roll < 0.9:
                keys = sorted({f"t/{rng.randint(0, 40)}" for _ in range(rng.randint(1, 20))})
                ops.append(Txn((), tuple(Put(k, value) for k in keys)))
            else:
                ops.append(Compact(rng.randint(1, revision)))
            revision += 1
        yield ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_trim_compacts_to_what_one_revision_at_a_time_did(seed: int) -> None:
    # Snapshots equal byte for byte after every slot: the same compaction revision, the same
    # versions and events kept, the same history charge.
    limits = Limits(history_bytes_max=3000)
    new, reference = _Feeder(StateMachine(limits)), _Feeder(_TrimsOneRevisionAtATime(limits))
    compactions = set()
    for ops in _random_slots(seed, 600):
        new.slot(ops)
        reference.slot(ops)
        assert new.sm.snapshot() == reference.sm.snapshot()
        compactions.add(new.sm.compact_revision)
    assert len(compactions) > 100  # the budget was crossed over and over


def test_the_comparison_catches_a_trim_that_compacts_too_far() -> None:
    limits = Limits(history_bytes_max=3000)
    planted = _Feeder(_TrimsOneRevisionTooFar(limits))
    reference = _Feeder(_TrimsOneRevisionAtATime(limits))
    with pytest.raises(AssertionError):
        for ops in _random_slots(1, 600):
            planted.slot(ops)
            reference.slot(ops)
            assert planted.sm.snapshot() == reference.sm.snapshot()


def _counting(monkeypatch: pytest.MonkeyPatch, sm: StateMachine) -> dict[str, int]:
    """Count compaction passes and rebuilds of the sorted key lists (a removal of more keys
    than one at a time handles copies the whole list)."""
    counts = {"compactions": 0, "rebuilds": 0, "keys_rebuilt": 0}
    compact = StateMachine._compact
    remove_sorted = machine._remove_sorted

    def counted_compact(self: StateMachine, revision: int) -> None:
        counts["compactions"] += 1
        compact(self, revision)

    def counted_remove_sorted(keys: list[str], remove: list[str]) -> None:
        if len(remove) > 16:
            counts["rebuilds"] += 1
            counts["keys_rebuilt"] += len(keys)
        remove_sorted(keys, remove)

    monkeypatch.setattr(StateMachine, "_compact", counted_compact)
    monkeypatch.setattr(machine, "_remove_sorted", counted_remove_sorted)
    return counts


def test_a_slot_that_trims_many_revisions_compacts_once_and_rebuilds_the_key_list_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Many keys, then many small revisions whose history is each 17 keys created and
    # deleted at once, then one slot whose superseded values push history over the budget:
    # the trim must compact all the small revisions away (each frees a little).
    groups = 200
    sm = StateMachine(Limits(history_bytes_max=groups * 2600))
    feed = _Feeder(sm)
    for b in range(4):
        feed.slot([Put(f"big/{b}", b"x" * 200_000)])
    for i in range(0, 5000, 500):
        feed.slot([Put(f"k/{j:05d}", b"v") for j in range(i, i + 500)])
    for g in range(groups):
        keys = tuple(Put(f"d/{g:05d}/{j:02d}", b"v") for j in range(17))
        feed.slot([Txn((), keys), Delete(f"d/{g:05d}/", prefix=True)])
    assert sm.compact_revision == 0
    keys_in_index = len(sm._hkeys)
    reference = _Feeder(_TrimsOneRevisionAtATime.restore(sm.snapshot()))
    reference.seq = feed.seq
    counts = _counting(monkeypatch, sm)
    feed.slot([Put(f"big/{b}", b"y" * 200_000) for b in range(4)])
    # Every group's revisions were compacted ...
    assert sm.compact_revision > 2 * groups
    assert len(sm._hkeys) == keys_in_index - 17 * groups
    # ... in one pass, with one rebuild of the key list (compacting a revision at a time made
    # one pass and one rebuild per group).
    assert counts == {"compactions": 1, "rebuilds": 1, "keys_rebuilt": keys_in_index}
    # And to the same state as a revision at a time.
    reference.slot([Put(f"big/{b}", b"y" * 200_000) for b in range(4)])
    assert sm.snapshot() == reference.sm.snapshot()


def test_an_explicit_compaction_of_a_big_range_is_one_pass_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sm = StateMachine()
    feed = _Feeder(sm)
    for g in range(100):
        keys = tuple(Put(f"d/{g:05d}/{j:02d}", b"v") for j in range(17))
        feed.slot([Txn((), keys), Delete(f"d/{g:05d}/", prefix=True)])
    feed.slot([Put("stays", b"v")])
    keys_in_index = len(sm._hkeys)
    counts = _counting(monkeypatch, sm)
    feed.slot([Compact(sm.revision)])
    assert sm.compact_revision == sm.revision and sm._hkeys == ["stays"]
    assert counts == {"compactions": 1, "rebuilds": 1, "keys_rebuilt": keys_in_index}


def test_the_work_count_catches_a_trim_one_revision_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Planted: the reference trim, on the same shape at a smaller size, shows up in the count.
    sm = _TrimsOneRevisionAtATime(Limits(history_bytes_max=20 * 2600))
    feed = _Feeder(sm)
    feed.slot([Put("big", b"x" * 60_000)])
    for g in range(20):
        keys = tuple(Put(f"d/{g:05d}/{j:02d}", b"v") for j in range(17))
        feed.slot([Txn((), keys), Delete(f"d/{g:05d}/", prefix=True)])
    counts = _counting(monkeypatch, sm)
    feed.slot([Put("big", b"y" * 60_000)])
    assert counts["compactions"] > 1 and counts["rebuilds"] > 1


def test_a_first_trim_after_a_bulk_load_drops_nothing_and_prunes_no_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Keys created one per revision free nothing when compacted: the trim passes them
    # without pruning any key's versions (a creation supersedes nothing).
    sm = StateMachine(Limits(history_bytes_max=100_000))
    feed = _Feeder(sm)
    for i in range(0, 3000, 500):
        feed.slot([Put(f"k/{j:05d}", b"v") for j in range(i, i + 500)])
    feed.slot([Put("big", b"x" * 150_000)])
    lookups: list[object] = []
    real_bisect_left = bisect.bisect_left

    def counted_bisect_left(a: list[object], x: object, *args: object, **kwargs: object) -> int:
        lookups.append(x)
        return real_bisect_left(a, x, *args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(machine.bisect, "bisect_left", counted_bisect_left)
    feed.slot([Put("big", b"y" * 150_000)])
    assert sm.compact_revision == sm.revision
    # No version list was searched: neither the 3000 creations nor the first value of "big"
    # (superseded in this very slot, whose events stay) had anything to free.
    assert lookups == []


def test_removing_keys_from_a_sorted_list_keeps_exactly_the_others() -> None:
    rng = random.Random(7)
    for size in (0, 1, 17, 100, 2000):
        keys = sorted({f"k{rng.randint(0, 10**6)}" for _ in range(size)})
        for count in {0, 1, 16, 17, len(keys) // 2, len(keys)}:
            remove = rng.sample(keys, min(count, len(keys)))
            got = list(keys)
            machine._remove_sorted(got, remove)
            assert got == [k for k in keys if k not in set(remove)]
