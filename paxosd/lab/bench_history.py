"""History benchmark: what revisions and history cost the state machine alone.

Measured on one workload of plain puts (``--puts`` of ``--value-bytes`` each over ``--keys``
keys, 16 commands a slot, 100 clients), for this machine and, when given, a reference
machine loaded from a file (an older ``paxosd/statemachine/machine.py``, e.g. the one before
revisions: ``git show a68f30a:paxosd/statemachine/machine.py > /tmp/machine_before.py``):

- memory: bytes still allocated (tracemalloc) after applying every put, per put. This
  machine is measured twice: with every version retained (history on, under its budget) and
  after a ``Compact`` to the head revision (only the current state is left);
- snapshot bytes in the same three states;
- apply throughput of the first 20,000 puts (at most), best of ``--rounds`` rounds, the
  machines alternating within each round so that both see the same machine load: short
  rounds and many of them, because a shared machine's load comes in bursts.

Nothing here is a test: it measures and asserts nothing about speed.

    python -m paxosd.lab.bench_history --reference /tmp/machine_before.py --value-bytes 100
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paxosd.statemachine.commands import Command, Compact, Put, encode_command
from paxosd.statemachine.machine import RELEASE_EVENTS_MAX, Limits, StateMachine

_CLIENTS = 100
_SLOT_COMMANDS = 16
_THROUGHPUT_PUTS_MAX = 20_000

MachineFactory = Callable[[], Any]


def load_reference(path: Path, timeline_max: int | None = None) -> MachineFactory:
    """The ``StateMachine`` class of another version of machine.py, loaded under its own
    module name so that it sits beside this one."""
    name = "paxosd_bench_reference_machine"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        machine, limits = module.StateMachine, module.Limits
    except Exception as e:  # running a foreign file: any failure means "not a machine.py"
        raise ValueError(f"{path} does not load as a machine.py: {type(e).__name__}: {e}") from None
    return _factory(machine, limits, timeline_max)


def _factory(machine: Any, limits: Any, timeline_max: int | None) -> MachineFactory:
    if timeline_max is None:
        return lambda: machine()
    return lambda: machine(limits(timeline_max=timeline_max))


def workload(puts: int, keys: int, value_bytes: int) -> list[tuple[bytes, ...]]:
    """The encoded slots: ``puts`` puts, 16 a slot, each a new seq of one of 100 clients."""
    value = b"v" * value_bytes
    commands = [
        encode_command(
            Command(
                f"client-{i % _CLIENTS}",
                i // _CLIENTS + 1,
                "bench",
                Put(f"key/{i % keys:06d}", value),
            )
        )
        for i in range(puts)
    ]
    return [
        tuple(commands[i : i + _SLOT_COMMANDS]) for i in range(0, len(commands), _SLOT_COMMANDS)
    ]


def _apply_all(sm: Any, slots: list[tuple[bytes, ...]]) -> None:
    for slot, value in enumerate(slots, start=sm.applied_through + 1):
        sm.apply(slot, value)


def _compact_to_head(sm: Any) -> None:
    command = encode_command(Command("bench-compact", 1, "bench", Compact(sm.revision)))
    sm.apply(sm.applied_through + 1, (command,))
    # This machine releases what a compaction dropped a bounded number of events per apply
    # or idle step; take the steps, so the figure is the compacted state's (a reference
    # machine from before that released everything in the compaction).
    release = getattr(sm, "release_compacted", None)
    if release is not None:
        for _ in range(sm.revision // RELEASE_EVENTS_MAX + 1):  # puts: one event a revision
            release()


def memory(
    factory: MachineFactory, slots: list[tuple[bytes, ...]], compact: bool = False
) -> dict[str, int]:
    """Bytes allocated by the machine after applying ``slots`` (and snapshot bytes)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sm = factory()
        _apply_all(sm, slots)
        if compact:
            _compact_to_head(sm)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    snapshot_bytes = len(sm.snapshot())
    return {"bytes": held, "snapshot_bytes": snapshot_bytes}


def throughput(factory: MachineFactory, slots: list[tuple[bytes, ...]]) -> float:
    """Puts applied per second (the machine alone, commands already encoded)."""
    sm = factory()
    gc.collect()
    start = time.perf_counter()
    _apply_all(sm, slots)
    return sum(len(s) for s in slots) / (time.perf_counter() - start)


def run(
    *,
    puts: int = 100_000,
    keys: int = 1000,
    value_bytes: int = 100,
    rounds: int = 10,
    reference: Path | None = None,
    timeline_max: int | None = None,
) -> dict[str, Any]:
    """Measure; returns a JSON-ready report (per-put figures and ratios to the reference).

    ``timeline_max``: the machines' timeline bound (default: theirs). Every put is also a
    timeline post that shares the value's bytes with the key, so a small timeline shows
    what history holds on its own."""
    slots = workload(puts, keys, value_bytes)
    this = _factory(StateMachine, Limits, timeline_max)
    machines: dict[str, MachineFactory] = {"this": this}
    if reference is not None:
        machines["reference"] = load_reference(reference, timeline_max)
    report: dict[str, Any] = {
        "puts": puts,
        "keys": keys,
        "value_bytes": value_bytes,
        "timeline_max": timeline_max if timeline_max is not None else Limits().timeline_max,
        "python": sys.version.split()[0],
    }
    mem = {name: memory(factory, slots) for name, factory in machines.items()}
    mem["this_compacted"] = memory(this, slots, compact=True)
    for name, m in mem.items():
        report[f"{name}_bytes_per_put"] = round(m["bytes"] / puts, 1)
        report[f"{name}_snapshot_bytes"] = m["snapshot_bytes"]
    rates: dict[str, float] = dict.fromkeys(machines, 0.0)
    timed = slots[: _THROUGHPUT_PUTS_MAX // _SLOT_COMMANDS]
    for _ in range(rounds):
        for name, factory in machines.items():
            rates[name] = max(rates[name], throughput(factory, timed))
    for name, rate in rates.items():
        report[f"{name}_puts_per_s"] = round(rate)
    if reference is not None:
        ref = mem["reference"]["bytes"]
        report["history_bytes_per_put_over_reference"] = round(
            (mem["this"]["bytes"] - ref) / puts, 1
        )
        report["compacted_bytes_per_put_over_reference"] = round(
            (mem["this_compacted"]["bytes"] - ref) / puts, 1
        )
        report["throughput_ratio"] = round(rates["this"] / rates["reference"], 3)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--timeline-max", type=int, default=None)
    args = parser.parse_args(argv)
    report = run(
        puts=args.puts,
        keys=args.keys,
        value_bytes=args.value_bytes,
        rounds=args.rounds,
        reference=args.reference,
        timeline_max=args.timeline_max,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
