"""A simulated network: every fault a real one has, decided by one seeded generator.

Messages are delivered after a random delay (so they reorder), may be dropped or
duplicated, and never cross a partition. Partitions are directed: ``block(a, b)`` stops
a -> b only, so one-way partitions are as easy to make as symmetric ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class NetworkFaults:
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay_ms_min: int = 1
    delay_ms_max: int = 1

    def __post_init__(self) -> None:
        assert 0.0 <= self.drop_probability < 1.0
        assert 0.0 <= self.duplicate_probability < 1.0
        assert 0 < self.delay_ms_min <= self.delay_ms_max


@dataclass(slots=True)
class NetworkCounters:
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    blocked: int = 0


@dataclass(slots=True)
class SimNetwork:
    rng: random.Random
    faults: NetworkFaults
    blocked: set[tuple[int, int]] = field(default_factory=set)
    counters: NetworkCounters = field(default_factory=NetworkCounters)

    def delays_ms(self, src: int, dst: int) -> list[int]:
        """Delivery delays for one message: [] when lost, two entries when duplicated."""
        c = self.counters
        c.sent += 1
        if (src, dst) in self.blocked:
            c.blocked += 1
            return []
        f = self.faults
        if f.drop_probability and self.rng.random() < f.drop_probability:
            c.dropped += 1
            return []
        out = [self.rng.randint(f.delay_ms_min, f.delay_ms_max)]
        if f.duplicate_probability and self.rng.random() < f.duplicate_probability:
            c.duplicated += 1
            out.append(self.rng.randint(f.delay_ms_min, f.delay_ms_max * 3))
        return out

    def partition(self, side_a: set[int], side_b: set[int], one_way: bool) -> None:
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()

    def calm(self) -> None:
        """Stop dropping and duplicating: the liveness phase needs a network that delivers."""
        self.faults = NetworkFaults(
            delay_ms_min=self.faults.delay_ms_min, delay_ms_max=self.faults.delay_ms_min + 4
        )
