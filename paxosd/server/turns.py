"""Where a long loop turn went.

The daemon's loop must come round well inside the election timeout: a leader that stops for
300 ms is deposed, a follower that stops does not ack. When a turn runs longer than
``SLOW_TURN_MS`` the daemon logs it (a warning, like etcd's "apply request took too long")
with the time spent in each phase and in the cycle collector, so a stall in the field names
its cause instead of showing up only as an election. Costs about 1 µs per turn (the
thread's CPU clock and its context-switch counts: two system calls, measured 0.87 µs) and
0.06 µs per phase (``perf_counter``).
"""

from __future__ import annotations

import gc
import resource
import time
from typing import Any

# A turn longer than this is logged. A third of the default election timeout: long enough
# that a healthy loaded node never logs one, short enough to see a stall before it deposes.
SLOW_TURN_MS = 100
# At most this many slow turns are logged per minute (a sick node would flood its journal).
SLOW_TURNS_LOGGED_PER_MINUTE = 30


class TurnClock:
    """Times the named phases of one loop turn, and the collector's runs inside it."""

    def __init__(self, log: Any, slow_ms: int = SLOW_TURN_MS) -> None:
        self.log = log
        self.slow_s = slow_ms / 1000
        self.phases: dict[str, float] = {}
        self.slow_turns = 0
        # Full (generation 2) collections seen: the daemon freezes what survived one.
        self.full_collections = 0
        self._start = 0.0
        self._cpu_start = 0.0
        self._switches = (0, 0)
        self._mark = 0.0
        self._gc_started = 0.0
        self._gc_s = 0.0
        self._gc_runs: list[tuple[int, float]] = []
        self._window_start = 0.0
        self._logged_in_window = 0
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        elif self._gc_started:
            took = now - self._gc_started
            if info.get("generation") == 2:
                self.full_collections += 1
            self._gc_s += took
            if took >= 0.005:
                self._gc_runs.append((info.get("generation", -1), took))
            self._gc_started = 0.0

    def start(self) -> None:
        """The turn's work begins (after the wait for input)."""
        self._start = self._mark = time.perf_counter()
        self._cpu_start = time.thread_time()
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        self._switches = (usage.ru_nvcsw, usage.ru_nivcsw)
        self.phases.clear()
        self._gc_s = 0.0
        self._gc_runs.clear()

    def phase(self, name: str) -> None:
        """The phase ``name`` ended now (it began at the previous mark)."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + (now - self._mark)
        self._mark = now

    def end(self, **context: Any) -> float:
        """The turn ended: log it if it was slow. Returns its length in seconds."""
        took = time.perf_counter() - self._start
        if took < self.slow_s:
            return took
        self.slow_turns += 1
        if self._start - self._window_start >= 60:
            self._window_start = self._start
            self._logged_in_window = 0
        if self._logged_in_window >= SLOW_TURNS_LOGGED_PER_MINUTE:
            return took
        self._logged_in_window += 1
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        self.log.warning(
            "slow loop turn",
            ms=round(took * 1000, 1),
            # CPU this thread used; the rest it waited: for the disk (voluntary switches)
            # or for a core (involuntary: the machine is short of CPU).
            cpu_ms=round((time.thread_time() - self._cpu_start) * 1000, 1),
            waits=usage.ru_nvcsw - self._switches[0],
            preempted=usage.ru_nivcsw - self._switches[1],
            slow_turns=self.slow_turns,  # since start, logged or not (the log is rate-limited)
            phases_ms={k: round(v * 1000, 1) for k, v in self.phases.items() if v >= 0.001},
            gc_ms=round(self._gc_s * 1000, 1),
            gc_runs=[(g, round(t * 1000, 1)) for g, t in self._gc_runs],
            **context,
        )
        return took
