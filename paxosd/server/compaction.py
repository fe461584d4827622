"""Auto-compaction: when the leader's daemon proposes ``Compact(revision)``, as etcd's
``--auto-compaction-mode``/``--auto-compaction-retention`` do.

History is replicated state (every change since the compaction revision, in memory and in
every snapshot), so without compaction it grows until the state machine's byte budget
compacts it, and each snapshot carries all of it. Compaction itself is an ordinary command in
the log, so every replica compacts at the same revision; only *when* to propose one is host
policy, and it lives here, on the daemon's monotonic clock, never in the core or the state
machine (whose apply must not depend on time).

- ``periodic``: keep at least ``retention`` of history. Every interval (retention/10, as etcd
  samples) the compactor records (now, revision); when a sample is ``retention`` old, it
  proposes compacting at that sample's revision.
- ``revision``: keep the last ``retention`` revisions. Every interval (5 minutes, as etcd)
  it proposes compacting at ``revision - retention``.

Every node records samples, so a new leader can compact at once from what it has applied;
only the leader proposes (``due(..., leader=True)``), and at most one proposal is in flight.
``AutoCompactor`` is pure (time and revisions come in as arguments) so it is tested without a
daemon.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

CompactionMode = Literal["off", "periodic", "revision"]
COMPACTION_MODES: Final[tuple[CompactionMode, ...]] = ("off", "periodic", "revision")

MS_PER_HOUR: Final = 3_600_000
# etcd: periodic retention is sampled every tenth of it, and at least once an hour.
PERIODIC_SAMPLES: Final = 10
# etcd's revision compactor looks every 5 minutes.
REVISION_INTERVAL_MS: Final = 300_000
INTERVAL_MS_MIN: Final = 100
RETENTION_MS_MAX: Final = 10_000 * MS_PER_HOUR
RETENTION_REVISIONS_MAX: Final = (1 << 63) - 1
# A proposal not answered within this long is given up (its slot may still be decided: a
# retry carries a higher revision as its seq, which the session table orders after it).
PROPOSAL_TIMEOUT_MS: Final = 30_000

_UNITS_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": MS_PER_HOUR}


@dataclass(frozen=True, slots=True)
class CompactionSettings:
    """The ``[compaction]`` section. ``retention`` is as written (for check-config);
    ``keep`` is its value: milliseconds for ``periodic``, revisions for ``revision``.
    ``interval_ms``: how often to look (0: the mode's default, as etcd)."""

    mode: CompactionMode = "periodic"
    retention: str = "1h"
    keep: int = MS_PER_HOUR
    interval_ms: int = 0

    @property
    def check_interval_ms(self) -> int:
        if self.interval_ms:
            return self.interval_ms
        if self.mode == "periodic":
            return max(INTERVAL_MS_MIN, min(MS_PER_HOUR, self.keep // PERIODIC_SAMPLES))
        return REVISION_INTERVAL_MS


def parse_duration_ms(text: str) -> int | str:
    """A Go-style duration ("1h", "30m", "1h30m", "10s", "500ms") in milliseconds, or a bare
    whole number of hours (etcd's periodic retention "1"); a description of the problem if
    it is neither."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text) * MS_PER_HOUR
    total = 0
    i = 0
    if not text:
        return "is empty"
    while i < len(text):
        j = i
        while j < len(text) and text[j].isascii() and text[j].isdigit():
            j += 1
        if j == i:
            return f'expected a duration such as "1h", "30m" or "10s" (got {text!r})'
        k = j
        while k < len(text) and text[k].isalpha():
            k += 1
        unit = text[j:k]
        if unit not in _UNITS_MS:
            return f"unknown unit {unit!r} in {text!r} (units: h, m, s, ms)"
        total += int(text[i:j]) * _UNITS_MS[unit]
        i = k
    return total


class AutoCompactor:
    """When to propose a compaction, and at which revision (see the module docstring)."""

    def __init__(self, settings: CompactionSettings, now_ms: int) -> None:
        self.settings = settings
        self.interval_ms = settings.check_interval_ms
        self._next_ms = now_ms
        # (time, revision) samples, oldest first; only periodic mode keeps them.
        self._samples: deque[tuple[int, int]] = deque()
        self._inflight_until: int | None = None
        self.proposed = 0  # proposals made (for status and tests)

    def due(self, now_ms: int, revision: int, compact_revision: int, *, leader: bool) -> int | None:
        """Called every loop turn: the revision to propose compacting at now, or None."""
        mode = self.settings.mode
        if mode == "off" or now_ms < self._next_ms:
            return None
        self._next_ms = now_ms + self.interval_ms
        if mode == "periodic":
            target = self._periodic(now_ms, revision)
        else:
            target = revision - self.settings.keep
        if self._inflight_until is not None and now_ms < self._inflight_until:
            return None
        self._inflight_until = None
        if not leader or target is None or target <= max(compact_revision, 0) or target < 1:
            return None
        self._inflight_until = now_ms + PROPOSAL_TIMEOUT_MS
        self.proposed += 1
        return target

    def answered(self) -> None:
        """The proposal in flight was answered (applied or refused): the next may go."""
        self._inflight_until = None

    def _periodic(self, now_ms: int, revision: int) -> int | None:
        samples = self._samples
        samples.append((now_ms, revision))
        cutoff = now_ms - self.settings.keep
        # Keep the newest sample at least ``keep`` old (the target) and everything after it.
        while len(samples) >= 2 and samples[1][0] <= cutoff:
            samples.popleft()
        first_ms, first_revision = samples[0]
        return first_revision if first_ms <= cutoff else None


__all__ = [
    "COMPACTION_MODES",
    "AutoCompactor",
    "CompactionMode",
    "CompactionSettings",
    "parse_duration_ms",
]
