"""The simulator's watch checker (paxosd/sim/watches.py) on streams with a known answer: each bad
stream is one way a watch can break its guarantees (a gap, a repeat, a revision going back, a
progress notification before the events it vouches for, a compacted cancel of kept history,
a watcher left behind after healing)."""

from __future__ import annotations

import pytest

from paxosd.sim.checker import Violation
from paxosd.sim.revisions import Replay, replay
from paxosd.sim.watches import Segment, SimWatcher, check
from paxosd.statemachine.commands import Command, Compact, Delete, Event, Op, Put, encode_command


def _replay(*ops: Op) -> Replay:
    return replay(
        {
            slot: (encode_command(Command(client_id="c", seq=slot, site="s1", op=op)),)
            for slot, op in enumerate(ops, start=1)
        }
    )


# Revisions: t/a=1 at 2, u/a=1 at 3, t/b=1 at 4, t/ deleted (t/a, t/b) at 5, compacted to 4.
RP = _replay(
    Put("t/a", b"1"),
    Put("u/a", b"1"),
    Put("t/b", b"1"),
    Delete("t/", prefix=True),
    Compact(4),
)
T_EVENTS = [e for e in RP.store.events if e.kv.key.startswith("t/")]


def _bare(events: list[Event]) -> list[Event]:
    return [Event(type=e.type, kv=e.kv) for e in events]


def _watcher(*segments: Segment, prev_kv: bool = False) -> SimWatcher:
    w = SimWatcher(
        index=0,
        key="t/",
        prefix=True,
        prev_kv=prev_kv,
        progress_notify=True,
        start_revision=1,
        create_at_ms=0,
    )
    w.segments.extend(segments)
    return w


def _segment(
    start: int, events: list[Event], cuts: list[int] | None = None, **kw: object
) -> Segment:
    """``cuts``: the index each response after the first starts at."""
    bounds = [0, *(cuts or []), len(events)]
    responses = [
        (events[a].revision, events[b - 1].revision)
        for a, b in zip(bounds, bounds[1:], strict=False)
        if b > a
    ]
    seg = Segment(start=start, events=list(events), responses=responses)
    for name, value in kw.items():
        setattr(seg, name, value)
    return seg


def test_the_whole_projection_in_order_passes() -> None:
    seg = _segment(1, _bare(T_EVENTS), cuts=[1, 2], progress=[(3, 1), (5, 4)])
    assert check([_watcher(seg)], RP, final_revision=5) == 4
    with_prev = _segment(1, list(T_EVENTS))
    assert check([_watcher(with_prev, prev_kv=True)], RP, final_revision=5) == 4


def test_a_skipped_event_is_a_violation() -> None:
    events = _bare(T_EVENTS)
    with pytest.raises(Violation, match="watch: .* event 1 is"):
        check([_watcher(_segment(1, [events[0], *events[2:]]))], RP, None)


def test_a_repeated_or_backward_revision_is_a_violation() -> None:
    events = _bare(T_EVENTS)
    again = _segment(1, [events[0], events[0], *events[1:]], cuts=[1])
    with pytest.raises(Violation, match="starts at revision 2 after 2"):
        check([_watcher(again)], RP, None)
    # One revision's events split over two responses: the second starts at the same revision.
    split = _segment(1, events, cuts=[3])
    with pytest.raises(Violation, match="starts at revision 5 after 5"):
        check([_watcher(split)], RP, None)


def test_prev_kv_only_when_asked() -> None:
    with pytest.raises(Violation, match="event 2 is"):
        check([_watcher(_segment(1, list(T_EVENTS)))], RP, None)


def test_progress_before_the_events_it_covers_is_a_violation() -> None:
    seg = _segment(1, _bare(T_EVENTS), progress=[(4, 1)])  # t/b at 4 not delivered yet
    with pytest.raises(Violation, match="progress at revision 4 after 1 events, but 2"):
        check([_watcher(seg)], RP, None)


def test_a_compacted_cancel_is_valid_only_below_the_compaction_point() -> None:
    events = _bare(T_EVENTS)
    # Canceled at compaction 4 while it needed revision 3: valid; it resumes from 4.
    ok = [_segment(1, events[:1], compacted=4, needed=3), _segment(4, events[1:], cuts=[1])]
    check([_watcher(*ok)], RP, final_revision=5)
    kept = [_segment(1, events[:2], compacted=4, needed=5), _segment(4, [])]
    with pytest.raises(Violation, match="needed revision 5, which is kept"):
        check([_watcher(*kept)], RP, None)
    never = [_segment(1, events[:1], compacted=3, needed=3), _segment(3, [])]
    with pytest.raises(Violation, match="never compacted to"):
        check([_watcher(*never)], RP, None)


def test_a_watcher_behind_after_healing_is_a_violation() -> None:
    seg = _segment(1, _bare(T_EVENTS)[:2])
    check([_watcher(seg)], RP, final_revision=None)
    with pytest.raises(Violation, match="got 2 of the 4 events"):
        check([_watcher(seg)], RP, final_revision=5)
