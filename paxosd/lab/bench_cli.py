"""How long ``paxosctl`` takes to start: whole processes, timed from outside.

A CLI that scripts call in loops is as fast as its start-up. This times complete processes
(``subprocess.run`` between two ``time.perf_counter`` readings): ``python -c pass`` (the floor
any Python command pays), ``paxosctl --help`` and ``paxosctl get k`` against a cluster. The
cases are interleaved, one run of each in turn, so a burst of load on a shared machine hits
all of them alike, and every figure is also given as a ratio to ``python -c pass`` from the
same run. The load average before and after says how quiet the machine was.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paxosd.client.client import Client, ClientError, parse_endpoint
from paxosd.lab.localcluster import LocalCluster

RUNS_DEFAULT = 15
BENCH_KEY = "k"
RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    argv: list[str]


def paxosctl_script() -> str:
    """The ``paxosctl`` next to this interpreter (a venv's script), not a shim on $PATH that
    would add its own start-up to every figure."""
    beside = Path(sys.executable).parent / "paxosctl"
    if beside.exists():
        return str(beside)
    found = shutil.which("paxosctl")
    if found is None:
        raise FileNotFoundError("no paxosctl script beside this python or on $PATH")
    return found


def _time(argv: Sequence[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=RUN_TIMEOUT_S
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise ClientError(
            f"{' '.join(argv)} exited {done.returncode}: {message[-1] if message else ''}"
        )
    return elapsed


def measure(
    cases: Sequence[Case],
    runs: int,
    env: dict[str, str],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Run every case ``runs`` times, interleaved; seconds per run, per case."""
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for i in range(runs):
        for c in cases:
            times[c.name].append(_time(c.argv, env))
        if progress is not None:
            progress(i + 1, runs)
    return times


def summarize(cases: Sequence[Case], times: dict[str, list[float]]) -> list[dict[str, Any]]:
    floor = statistics.median(times[cases[0].name])
    rows = []
    for c in cases:
        t = times[c.name]
        median = statistics.median(t)
        rows.append(
            {
                "name": c.name,
                "command": " ".join(c.argv),
                "runs": len(t),
                "min_ms": round(min(t) * 1000, 1),
                "median_ms": round(median * 1000, 1),
                "max_ms": round(max(t) * 1000, 1),
                "ratio_to_python": round(median / floor, 2),
            }
        )
    return rows


def run_cli_bench(
    runs: int = RUNS_DEFAULT,
    *,
    endpoints: str | None = None,
    key_file: Path | None = None,
    key: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Time the cases against ``endpoints`` (with ``key_file``), else against a fresh
    local cluster in a temporary folder, removed afterwards."""
    script = paxosctl_script()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAXOSCTL_")}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="paxosd-bench-cli-") as tmp:
        cluster: LocalCluster | None = None
        try:
            if endpoints is None:
                cluster = LocalCluster.create(Path(tmp) / "cluster", 3)
                cluster.up()
                env["PAXOSD_LOCAL_DIR"] = str(cluster.root)
                with cluster.client() as c:
                    c.put(BENCH_KEY, b"v")
                target = "local cluster (found through $PAXOSD_LOCAL_DIR)"
                get_extra: list[str] = []
            else:
                assert key_file is not None and key is not None
                eps = [parse_endpoint(e) for e in endpoints.split(",") if e.strip()]
                with Client(eps, key) as c:
                    c.put(BENCH_KEY, b"v")
                target = endpoints
                get_extra = ["--endpoints", endpoints, "--key-file", str(key_file)]
            cases = [
                Case("python -c pass", [sys.executable, "-c", "pass"]),
                Case("paxosctl --help", [script, "--help"]),
                Case(f"paxosctl get {BENCH_KEY}", [script, "get", BENCH_KEY, *get_extra]),
            ]
            times = measure(cases, runs, env, progress)
        finally:
            if cluster is not None:
                cluster.down()
    return {
        "bench": "cli",
        "runs": runs,
        "target": target,
        "python": sys.executable,
        "paxosctl": script,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cases": summarize(cases, times),
    }
