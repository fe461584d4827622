"""The daemon's turn clock: a slow turn is logged with its phases and collector runs."""

from __future__ import annotations

import gc
from typing import Any

from paxosd.server.turns import SLOW_TURNS_LOGGED_PER_MINUTE, TurnClock


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


def test_a_turn_over_the_bound_is_logged_with_its_phases() -> None:
    log = _Log()
    clock = TurnClock(log, slow_ms=0)  # every turn counts as slow
    try:
        clock.start()
        sum(range(10_000))
        clock.phase("apply")
        gc.collect()
        clock.phase("snapshot")
        clock.end(slot=7)
    finally:
        clock.close()
    assert clock.slow_turns == 1
    [(event, kw)] = log.events
    assert event == "slow loop turn"
    assert set(kw["phases_ms"]) <= {"apply", "snapshot"} and "snapshot" in kw["phases_ms"]
    assert kw["slow_turns"] == 1
    assert kw["slot"] == 7
    assert kw["gc_ms"] >= 0
    assert kw["ms"] >= sum(kw["phases_ms"].values()) - 0.2


def test_a_quick_turn_is_not_logged_and_logging_is_bounded() -> None:
    log = _Log()
    quiet = TurnClock(log, slow_ms=60_000)
    quiet.start()
    quiet.phase("peers")
    quiet.end()
    quiet.close()
    assert log.events == [] and quiet.slow_turns == 0

    loud = TurnClock(log, slow_ms=0)
    try:
        for _ in range(SLOW_TURNS_LOGGED_PER_MINUTE + 5):
            loud.start()
            loud.end()
    finally:
        loud.close()
    assert loud.slow_turns == SLOW_TURNS_LOGGED_PER_MINUTE + 5
    assert len(log.events) == SLOW_TURNS_LOGGED_PER_MINUTE
    assert log.events[-1][1]["slow_turns"] == SLOW_TURNS_LOGGED_PER_MINUTE
    assert loud._on_gc not in gc.callbacks


def test_full_collections_are_counted_for_the_daemons_freeze() -> None:
    clock = TurnClock(_Log())
    try:
        before = clock.full_collections
        gc.collect(1)
        assert clock.full_collections == before
        gc.collect()
        assert clock.full_collections == before + 1
    finally:
        clock.close()
