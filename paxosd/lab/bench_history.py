"""History benchmark: what revisions and history cost the state machine alone.

Measured on one workload of plain puts (``--puts`` of ``--value-bytes`` each over ``--keys``
keys, 16 commands a slot, 100 clients), for this machine and, when given, a reference
machine loaded from a file (an older ``paxosd/statemachine/machine.py``, e.g. the one before
revisions: ``git show a68f30a:paxosd/statemachine/machine.py > /tmp/machine_before.py``):

- memory: bytes still allocated (tracemalloc) after applying every put, per put. This
  machine is measured twice: with every version retained (history on, under its budget) and
  after a ``Compact`` to the head revision (only the current state is left);
- snapshot bytes in the same three states;
- apply throughput of the puts, best of ``--rounds`` rounds, the machines alternating within
  each round so that both see the same machine load.

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
from paxosd.statemachine.machine import StateMachine

_CLIENTS = 100
_SLOT_COMMANDS = 16

MachineFactory = Callable[[], Any]


def load_reference(path: Path) -> MachineFactory:
    """The ``StateMachine`` class of another version of machine.py, loaded under its own
    module name so that it sits beside this one."""
    spec = importlib.util.spec_from_file_location("paxosd_bench_reference_machine", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory: MachineFactory = module.StateMachine
    return factory


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


def _compact_to_head(sm: StateMachine) -> None:
    command = encode_command(Command("bench-compact", 1, "bench", Compact(sm.revision)))
    sm.apply(sm.applied_through + 1, (command,))


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
    rounds: int = 3,
    reference: Path | None = None,
) -> dict[str, Any]:
    """Measure; returns a JSON-ready report (per-put figures and ratios to the reference)."""
    slots = workload(puts, keys, value_bytes)
    machines: dict[str, MachineFactory] = {"this": StateMachine}
    if reference is not None:
        machines["reference"] = load_reference(reference)
    report: dict[str, Any] = {
        "puts": puts,
        "keys": keys,
        "value_bytes": value_bytes,
        "python": sys.version.split()[0],
    }
    mem = {name: memory(factory, slots) for name, factory in machines.items()}
    mem["this_compacted"] = memory(StateMachine, slots, compact=True)
    for name, m in mem.items():
        report[f"{name}_bytes_per_put"] = round(m["bytes"] / puts, 1)
        report[f"{name}_snapshot_bytes"] = m["snapshot_bytes"]
    rates: dict[str, float] = dict.fromkeys(machines, 0.0)
    for _ in range(rounds):
        for name, factory in machines.items():
            rates[name] = max(rates[name], throughput(factory, slots))
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(
        puts=args.puts,
        keys=args.keys,
        value_bytes=args.value_bytes,
        rounds=args.rounds,
        reference=args.reference,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
