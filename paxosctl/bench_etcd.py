"""``paxosctl bench --compare-etcd``: run the sitting (``paxosd.lab.bench_etcd``) and render it.

Kept apart from ``paxosctl/bench.py`` so that the load bench's own options and output stay as
they are; ``bench`` hands over here when --compare-etcd is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from paxosctl import render
from paxosd.lab.bench import BenchError, LoadSpec
from paxosd.lab.bench_etcd import EtcdUnavailable, compare

SKIPPED = "etcd comparison skipped"


def run(
    spec: LoadSpec,
    *,
    rounds: int,
    conns: int | None,
    nodes: int,
    parent_dir: Path | None,
    json_out: bool,
) -> None:
    """The CLI's side: errors to one stderr line and an exit code, the report to stdout."""
    if spec.op not in ("put", "get"):
        render.error("--compare-etcd measures --op put or --op get (etcd-go has no mixed load)")
        raise typer.Exit(render.EXIT_USAGE)
    say = _say if render.stderr_is_terminal() else None
    try:
        report = compare(
            spec, rounds=rounds, conns=conns, nodes=nodes, parent_dir=parent_dir, say=say
        )
    except EtcdUnavailable as e:
        render.error(f"{SKIPPED}: {e}")
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    except BenchError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    if json_out:
        render.emit_json(report)
    else:
        print_report(report)


def _say(message: str) -> None:
    render.rich_note(message, markup=False)


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_report(r: dict[str, Any]) -> None:
    w, e = r["workload"], r["etcd"]
    render.rich_line(
        f"paxosd vs etcd {e['version']} ({e['generator'].split(',')[0]}, "
        f"{e['grpc_connections']} gRPC connections): {w['op']}"
        f"{' (linearizable)' if w['linearizable'] else ''}, {w['clients']} clients, "
        f"{w['duration_s']:g} s (+{w['warmup_s']:g} s warm-up), {w['value_bytes']}-byte values, "
        f"{w['keys']:,} keys; {w['rounds']} interleaved rounds; load average "
        f"{r['load_average']['start']} at the start, {r['load_average']['end']} at the end",
        markup=False,
    )
    render.table(
        None,
        [
            "round",
            "system",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU us/op",
            "other cores",
            "load avg before",
        ],
        [
            [
                run["round"],
                run["system"],
                f"{run['ops_per_s']:,.0f}",
                _f(run["latency_ms"]["p50"]),
                _f(run["latency_ms"]["p99"]),
                run["errors_total"],
                _f(run["server_cpu_us_per_op"], 0),
                _f(run["other_cores"]),
                run["loadavg_before"].split()[0],
            ]
            for run in r["runs"]
        ],
    )
    s, q = r["summary"], r["ratio"]
    rows = [
        [
            "ops/s (median)",
            f"{s['paxosd']['ops_per_s_median']:,.0f}",
            f"{s['etcd']['ops_per_s_median']:,.0f}",
            f"{_f(q['ops_per_s'])}x (pairs: {', '.join(_f(p) for p in q['ops_per_s_pairs'])})",
        ],
        ["p50 ms", _f(s["paxosd"]["p50_ms_median"]), _f(s["etcd"]["p50_ms_median"]), _f(q["p50"])],
        ["p99 ms", _f(s["paxosd"]["p99_ms_median"]), _f(s["etcd"]["p99_ms_median"]), _f(q["p99"])],
        [
            "server CPU us/op",
            _f(s["paxosd"]["server_cpu_us_per_op_median"], 0),
            _f(s["etcd"]["server_cpu_us_per_op_median"], 0),
            _f(q["server_cpu_per_op"]),
        ],
    ]
    render.table("medians", ["figure", "paxosd", "etcd", "paxosd / etcd"], rows)
