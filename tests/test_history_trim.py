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
from collections.abc import Generator, Iterator
from typing import Any

import pytest

import paxosd.statemachine.machine as machine
from paxosd.statemachine.commands import (
    Command,
    Compact,
    Delete,
    Get,
    KeyValue,
    Op,
    Put,
    Scan,
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
        if a is not sm._events:  # the one search of the event list finds what is compacted
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


# ------------------------------------------------------------------ bulk loads, then trims
#
# A bulk load leaves one creation event per key in history; compacting them frees nothing.
# The trim and the compaction walk only the updates and deletions, and the event list's
# references to compacted events are released a bounded number per slot, so the first trim
# after loading a million keys is not one long apply. Work is counted, never timed.


class _WalksEveryEvent(StateMachine):
    """The reference: the trim and the compaction as they were before ``_updates``, walking
    every event (creations too) and releasing each compacted event as it passes it. What it
    compacts, keeps and answers is the specification the faster walk must match."""

    def _trim_target(self, first_revision: int) -> int:
        excess = self._history_bytes - self.limits.history_bytes_max
        events, index = self._events, self._index
        i, end = self._events_start, len(events)
        target = first_revision
        while excess > 0 and i < end and (revision := events[i].mod_revision) < first_revision:
            while i < end and (kv := events[i]).mod_revision == revision:
                if kv.version != 1:
                    versions = index[kv.key]
                    n = bisect.bisect_left(versions, revision, key=machine._mod_revision)
                    if n > 0 and (prev := versions[n - 1]).version > 0:
                        excess -= machine._entry_cost(prev)
                    if kv.version == 0:
                        excess -= machine._entry_cost(kv)
                i += 1
            target = revision + 1
        return target if excess <= 0 else first_revision

    def _compact(self, revision: int) -> None:
        events = self._events
        i = self._events_start
        touched: set[str] = set()
        while i < len(events) and (kv := events[i]).mod_revision < revision:
            if kv.version != 1:
                touched.add(kv.key)
            events[i] = machine._COMPACTED
            i += 1
        self._events_start = i
        if i > 1024 and i * 2 > len(events):
            del events[:i]
            self._events_start = 0
        self.compact_revision = revision
        for key in sorted(touched):
            versions = self._index[key]
            n = bisect.bisect_left(versions, revision, key=machine._mod_revision)
            if n > 0 and versions[n - 1].version > 0:
                n -= 1
            for kv in versions[:n]:
                self._history_bytes -= machine._entry_cost(kv)
            if n == len(versions):
                del self._index[key]
                self._hkeys.remove(key)
            else:
                del versions[:n]

    def _release_compacted(self, added: int) -> None:
        pass  # the compaction above released every event it passed


class _ForgetsUpdatesOnRestore(StateMachine):
    """Planted bug: a restored replica does not rebuild its list of updates and deletions,
    so its trims free nothing it restored and compact further than the others'."""

    @classmethod
    def _from_state(
        cls, state: machine._SnapshotState, batch: int
    ) -> Generator[None, None, _ForgetsUpdatesOnRestore]:
        sm = yield from super()._from_state(state, batch)
        sm._updates = []
        return sm


def _bulk_slots(seed: int, count: int) -> Iterator[list[Op]]:
    """Bulk loads of new keys (creations only, a revision each) between runs of updates,
    deletions, prefix deletions, transactions and explicit compactions over the loaded keys."""
    rng = random.Random(seed)
    loaded = 0
    revision = 1
    for _ in range(count):
        ops: list[Op] = []
        if rng.random() < 0.08:
            ops = [
                Put(f"k/{j:05d}", b"v" * rng.choice([1, 30])) for j in range(loaded, loaded + 60)
            ]
            loaded += 60
        else:
            for _ in range(rng.randint(1, 6)):
                key = f"k/{rng.randrange(max(loaded, 1)):05d}"
                roll = rng.random()
                if roll < 0.7:
                    ops.append(Put(key, b"u" * rng.choice([1, 40, 300])))
                elif roll < 0.85:
                    ops.append(Delete(key))
                elif roll < 0.88:
                    ops.append(Delete(key[:5], prefix=True))
                elif roll < 0.97:
                    keys = sorted({f"k/{rng.randrange(max(loaded, 1)):05d}" for _ in range(5)})
                    ops.append(Txn((), tuple(Put(k, b"t" * 20) for k in keys)))
                else:
                    ops.append(Compact(rng.randint(1, revision)))
        revision += len(ops)
        yield ops


def _reads_at_old_revisions(sm: StateMachine, rng: random.Random) -> list[object]:
    """What a client can read of history: gets and scans at revisions from the compaction
    revision on (and just below it: refused), and a watch's events from there."""
    out: list[object] = [sm.revision, sm.compact_revision]
    low = max(sm.compact_revision - 1, 1)
    for _ in range(8):
        rev = rng.randint(low, sm.revision)
        key = f"k/{rng.randrange(600):05d}"
        out.append(sm.query(Get(key, revision=rev)))
        out.append(sm.query(Scan(key[:5], limit=20, revision=rev)))
    since = max(sm.compact_revision, 1)
    out.append(sm.events_since(since, 50))
    return out


def _run_beside_the_reference(seed: int, machine_class: type[StateMachine]) -> None:
    """Feed ``machine_class``, the reference and (from slot 150 on) a replica of the first
    restored from its snapshot, the same slots, comparing them after every slot."""
    limits = Limits(history_bytes_max=6000)
    new, reference = _Feeder(machine_class(limits)), _Feeder(_WalksEveryEvent(limits))
    restored: _Feeder | None = None
    compactions = set()
    for n, ops in enumerate(_bulk_slots(seed, 500)):
        first_revision = new.sm.revision + 1
        for feed in (new, reference, restored):
            if feed is not None:
                feed.slot(ops)
        for feed in (new, restored):
            if feed is None:
                continue
            assert feed.sm.snapshot() == reference.sm.snapshot()
            assert feed.sm.digest() == reference.sm.digest()
            reads = _reads_at_old_revisions(feed.sm, random.Random(n))
            assert reads == _reads_at_old_revisions(reference.sm, random.Random(n))
        # A slot that changed something and was not compacted up to its own first revision
        # left history within its budget.
        if new.sm.revision >= first_revision > new.sm.compact_revision:
            assert new.sm.history_bytes <= limits.history_bytes_max
        if n == 150:
            restored = _Feeder(machine_class.restore(new.sm.snapshot()))
            restored.seq = new.seq
        compactions.add(new.sm.compact_revision)
    assert len(compactions) > 50  # the budget was crossed over and over


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_trims_after_bulk_loads_match_the_walk_over_every_event(seed: int) -> None:
    # Byte-equal snapshots, equal digests and equal answers at old revisions (gets, scans,
    # a watch's events) after every slot, against the walk over every event; history
    # within its budget whenever the slot being applied (never compacted) leaves room; and
    # a replica restored from a snapshot midway goes on exactly like the others.
    _run_beside_the_reference(seed, StateMachine)


def test_the_comparison_catches_a_replica_that_forgets_its_updates_on_restore() -> None:
    with pytest.raises(AssertionError):
        _run_beside_the_reference(1, _ForgetsUpdatesOnRestore)


class _CountingList(list[KeyValue]):
    """A list that counts its reads by index: what a walk over it costs."""

    reads = 0

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, int):
            self.reads += 1
        return super().__getitem__(i)


_LOADED = 20_000


def _loaded(machine_class: type[StateMachine]) -> _Feeder:
    """_LOADED keys created one per revision (a bulk load), under a budget of ~93 updates
    of one hot key."""
    feed = _Feeder(machine_class(Limits(history_bytes_max=100_000)))
    for i in range(0, _LOADED, 500):
        feed.slot([Put(f"k/{j:05d}", b"v" * 10) for j in range(i, i + 500)])
    return feed


def _hot_until_the_first_trim(feed: _Feeder) -> None:
    while feed.sm.compact_revision == 0:
        feed.slot([Put("hot", b"u" * 1000)])


def _first_trim_reads(machine_class: type[StateMachine]) -> int:
    """Reads of the event list and the updates list by the slot that first trims."""
    feed = _loaded(machine_class)
    sm = feed.sm
    while True:
        events, updates = _CountingList(sm._events), _CountingList(sm._updates)
        sm._events, sm._updates = events, updates
        feed.slot([Put("hot", b"u" * 1000)])
        if sm.compact_revision:
            return events.reads + updates.reads


def test_the_first_trim_after_a_bulk_load_does_not_pass_the_creations_one_by_one() -> None:
    # It compacts past all 20,000 creations (they come first) and the oldest hot updates.
    assert _first_trim_reads(StateMachine) < 100


def test_the_read_count_catches_a_trim_that_walks_every_event() -> None:
    assert _first_trim_reads(_WalksEveryEvent) > 2 * _LOADED


def _held(sm: StateMachine) -> int:
    """Compacted events whose versions the event list still holds."""
    return sum(kv is not machine._COMPACTED for kv in sm._events[: sm._events_start])


def _check_release(machine_class: type[StateMachine]) -> None:
    feed = _loaded(machine_class)
    _hot_until_the_first_trim(feed)
    sm = feed.sm
    per_slot = machine.RELEASE_EVENTS_MAX + 1  # the bound, with the slot's one event
    # The first trim compacted every creation but released at most its bound of them ...
    assert sm.compact_revision > _LOADED
    held = _held(sm)
    assert held >= _LOADED - per_slot
    # ... and each slot after it releases at most its bound, until none is held ...
    slots = 0
    while held:
        feed.slot([Put("hot", b"u" * 1000)])
        slots += 1
        assert held - _held(sm) <= per_slot
        held = _held(sm)
        assert slots <= _LOADED // machine.RELEASE_EVENTS_MAX + 1
    # ... and the released placeholders were cut from the list.
    assert len(sm._events) < 1000


def test_compacted_events_are_released_a_bounded_number_per_slot_until_none_is_held() -> None:
    _check_release(StateMachine)


class _ReleasesAllAtOnce(StateMachine):
    """Planted bug: the whole backlog released in the slot that compacted it."""

    def _release_compacted(self, added: int) -> None:
        super()._release_compacted(added + len(self._events))


class _NeverReleases(StateMachine):
    """Planted bug: compacted events are never released (a leak of superseded versions)."""

    def _release_compacted(self, added: int) -> None:
        pass


@pytest.mark.parametrize("planted", [_ReleasesAllAtOnce, _NeverReleases])
def test_the_release_check_catches_a_release_all_at_once_or_never(
    planted: type[StateMachine],
) -> None:
    with pytest.raises(AssertionError):
        _check_release(planted)


def test_an_idle_host_releases_compacted_events_in_bounded_steps_changing_nothing() -> None:
    # Without slots to apply (an idle node's ticks), release_compacted drains the backlog
    # a bounded step at a time, and nothing replicated moves.
    feed = _loaded(StateMachine)
    _hot_until_the_first_trim(feed)
    sm = feed.sm
    snapshot, digest = sm.snapshot(), sm.digest()
    held = first_held = _held(sm)
    assert held > machine.RELEASE_EVENTS_MAX
    steps = 0
    while held:
        sm.release_compacted()
        steps += 1
        assert held - _held(sm) <= machine.RELEASE_EVENTS_MAX
        held = _held(sm)
    assert steps == -(-first_held // machine.RELEASE_EVENTS_MAX)  # full steps, then the rest
    assert len(sm._events) < 1000
    assert (sm.snapshot(), sm.digest()) == (snapshot, digest)
    sm.release_compacted()  # nothing left: a no-op
    assert sm.snapshot() == snapshot
