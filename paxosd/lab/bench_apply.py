"""Apply-stall benchmark: the slowest single applies of a big state machine, offline.

The daemon's loop applies one decided slot per step; one slow apply stalls the loop, and a
stall near the election timeout (300 ms) costs an election. This drives a ``StateMachine``
the way ``paxosctl bench bigstate`` drives the cluster's, through the same ``apply`` the
runner calls, without a cluster:

1. load: ``--keys`` keys of ``--value-bytes`` each, once, 64 puts a slot (the bench's 64
   clients, one request in flight each, batched by the leader);
2. run: puts of random existing keys, 20-60 a slot, until history has first reached its
   budget (the first automatic compaction) and then ``--after`` slots more.

Every apply is timed, on the wall clock and in this thread's CPU time; the collector's runs
inside it are timed apart (``gc.callbacks``, as the daemon's slow-turn log does) and left out
of both figures (the collector is the daemon's, reported apart). The slowest applies by CPU time are
reported with their slot: on a shared machine the wall clock also counts the time other
processes ran, while a deterministic stall costs CPU. So is the slot of the first automatic
compaction. The slowest is then replayed (the workload is seeded, so a second pass reaches
the same state) and profiled with cProfile, so the report says where its time went.
Nothing here is a test: it measures and asserts nothing about speed.

    python -m paxosd.lab.bench_apply --keys 300000 --value-bytes 1024
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import heapq
import io
import json
import os
import pstats
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from paxosd.statemachine.commands import Command, Put, encode_command
from paxosd.statemachine.machine import Limits, StateMachine

CLIENTS: Final = 64
LOAD_SLOT_PUTS: Final = 64
RUN_SLOT_PUTS: Final = (20, 60)
# The slowest applies kept for the report.
SLOWEST_KEPT: Final = 10
# Lines of the profile's table kept in the report.
PROFILE_LINES: Final = 25


@dataclass
class _Clock:
    """The collector's time inside the current apply (the daemon reports it apart)."""

    gc_s: float = 0.0
    _started: float = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
        elif self._started:
            self.gc_s += now - self._started
            self._started = 0.0


@dataclass
class _Workload:
    """The seeded slots: a function of the arguments only, so a replay reaches the same
    state at the same slot."""

    keys: int
    value_bytes: int
    seed: int
    seqs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seqs = [0] * CLIENTS
        self._next_client = 0
        self._rng = random.Random(self.seed)

    def _put(self, key: int) -> bytes:
        c = self._next_client
        self._next_client = (c + 1) % CLIENTS
        self.seqs[c] += 1
        # A fresh value per put, as the network's decoder makes one per put in the daemon.
        value = key.to_bytes(8, "big") * (self.value_bytes // 8) + b"v" * (self.value_bytes % 8)
        op = Put(f"k{key:08d}", value)
        return encode_command(Command(f"bench-{c:02d}", self.seqs[c], "bench", op))

    def load(self) -> Iterator[tuple[bytes, ...]]:
        for start in range(0, self.keys, LOAD_SLOT_PUTS):
            yield tuple(self._put(k) for k in range(start, min(start + LOAD_SLOT_PUTS, self.keys)))

    def run(self) -> Iterator[tuple[bytes, ...]]:
        rng = self._rng
        while True:
            count = rng.randint(*RUN_SLOT_PUTS)
            yield tuple(self._put(rng.randrange(self.keys)) for _ in range(count))


def _slots(args: argparse.Namespace) -> Iterator[tuple[str, tuple[bytes, ...]]]:
    work = _Workload(args.keys, args.value_bytes, args.seed)
    for value in work.load():
        yield "load", value
    for value in work.run():
        yield "run", value


def measure(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """Apply the workload, timing each apply; return the slowest and the state's figures."""
    sm = StateMachine(Limits(history_bytes_max=args.history_mib << 20))
    clock = _Clock()
    gc.callbacks.append(clock.on_gc)
    slowest: list[tuple[float, float, int, str, float, int, int]] = []  # a min-heap
    first_trim: dict[str, Any] = {}
    total_s = {"load": 0.0, "run": 0.0}
    counts = {"load": 0, "run": 0}
    started = time.perf_counter()
    try:
        for phase, value in _slots(args):
            slot = sm.applied_through + 1
            compact_before = sm.compact_revision
            clock.gc_s = 0.0
            c0 = time.thread_time()
            t0 = time.perf_counter()
            sm.apply(slot, value)
            took = time.perf_counter() - t0 - clock.gc_s
            cpu = time.thread_time() - c0 - clock.gc_s
            total_s[phase] += took
            counts[phase] += 1
            entry = (cpu, took, slot, phase, clock.gc_s, compact_before, sm.compact_revision)
            if len(slowest) < SLOWEST_KEPT:
                heapq.heappush(slowest, entry)
            elif cpu > slowest[0][0]:
                heapq.heapreplace(slowest, entry)
            if not first_trim and sm.compact_revision:
                first_trim = _row(entry)
                say(f"first automatic compaction: {first_trim}")
            if first_trim and slot - first_trim["slot"] >= args.after:
                break
            if slot % 2000 == 0:
                say(f"slot {slot:,} ({phase}): history {sm.history_bytes >> 20} MiB")
    finally:
        gc.callbacks.remove(clock.on_gc)
    return {
        "slots": sm.applied_through,
        "wall_s": round(time.perf_counter() - started, 1),
        "first_trim": first_trim,
        "store_bytes": sm.store_bytes,
        "history_bytes": sm.history_bytes,
        "revision": sm.revision,
        "compact_revision": sm.compact_revision,
        "mean_apply_ms": {
            p: round(total_s[p] * 1000 / counts[p], 3) if counts[p] else None for p in total_s
        },
        "slowest": [_row(e) for e in sorted(slowest, reverse=True)],
    }


def _row(entry: tuple[float, float, int, str, float, int, int]) -> dict[str, Any]:
    cpu, took, slot, phase, gc_s, before, after = entry
    return {
        "slot": slot,
        "phase": phase,
        "cpu_ms": round(cpu * 1000, 2),
        "apply_ms": round(took * 1000, 2),
        "gc_ms": round(gc_s * 1000, 2),
        "compacted": [before, after] if after != before else None,
    }


def profile(args: argparse.Namespace, target: int) -> str:
    """Replay the workload to slot ``target`` and profile that one apply."""
    sm = StateMachine(Limits(history_bytes_max=args.history_mib << 20))
    for _, value in _slots(args):
        slot = sm.applied_through + 1
        if slot < target:
            sm.apply(slot, value)
            continue
        gc.collect()
        prof = cProfile.Profile()
        prof.enable()
        sm.apply(slot, value)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(PROFILE_LINES)
        return out.getvalue()
    raise AssertionError(f"the workload ended before slot {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument(
        "--history-mib", type=int, default=256, help="history budget (the default limit)"
    )
    parser.add_argument(
        "--after", type=int, default=3000, help="slots to run after the first compaction"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-profile", action="store_true", help="skip the replay")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if args.keys < 1 or args.value_bytes < 0 or args.history_mib < 1 or args.after < 0:
        parser.error("--keys, --history-mib must be positive; --value-bytes, --after not negative")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "history_mib": args.history_mib,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    report.update(measure(args, say))
    if not args.no_profile and report["slowest"]:
        target = report["slowest"][0]["slot"]
        say(f"replaying to slot {target} to profile it")
        report["profile"] = profile(args, target)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for k, v in report.items():
        if k not in ("slowest", "profile"):
            print(f"{k}: {v}")
    print("slowest applies by CPU time (ms, both without the collector's runs):")
    for s in report["slowest"]:
        print(
            f"  slot {s['slot']:>8} {s['phase']:<4} cpu {s['cpu_ms']:>8.2f}"
            f"  wall {s['apply_ms']:>8.2f}  gc {s['gc_ms']:.2f}  compacted {s['compacted']}"
        )
    if "profile" in report:
        print(report["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
