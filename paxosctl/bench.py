"""``paxosctl bench``: key-value load (like etcd's benchmark), storage and transport benches.

Each command parses, makes one ``paxosd.lab.bench*`` call and renders; progress goes to stderr and
only on a TTY, so ``--json`` output and logs stay clean.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from paxosctl import render
from paxosctl.connect import ConnectError, EndpointsOpt, JsonOpt, KeyFileOpt, resolve
from paxosd.client.client import ClientError
from paxosd.lab.bench import (
    OP_KINDS,
    BenchError,
    LoadSpec,
    relate_to_baseline,
    run_baseline,
    run_load,
    run_local,
)
from paxosd.lab.bench import Progress as LoadProgress

HELP = """Measure: key-value load on a cluster, the storage engine, the encrypted transport.

Without a subcommand: a closed-loop load of --clients clients (one request in flight each)
for --duration seconds after a --warmup that is not counted; reports ops/s, latency
p50/p90/p99/p99.9/max, errors by kind, the servers' CPU seconds per 1,000 ops and each
daemon's RSS (when the servers run on this machine), and what the load generator itself
used. --local starts a fresh durable 3-node cluster in a temporary folder and removes it.
--baseline also measures this machine's SQLite WAL FULL commit rate and transport round
trip, so the report can say "ops per fsync".
--compare-etcd runs the same load on a 3-member etcd 3.4 driven by its own gRPC client
(etcd-go-load; built with etcd-go's build.sh if missing, or $ETCD_GO_LOAD), alternating
--rounds times with a fresh local paxosd cluster, and prints both and the ratio. Without
etcd or the generator it does nothing and exits 3.

--leases N (with --op put): the put load alone, then beside N leases (a key attached to
each, like service registrations) kept alive every TTL/3 from --keepers connections per
member, turns spread evenly; reports put p50/p99/p99.9 and throughput of both runs and the
p99 ratio (the aim: at most 1.2), keep-alives acknowledged per second against those asked,
late (more than TTL/2 after the lease's previous one) and failed, leases lost (must be 0),
and server CPU. With --compare-etcd, etcd does the same through clientv3's KeepAlive
(etcd-lease-bench, built from paxosd/lab/etcd_leases or $ETCD_LEASES), alternating.

--op lock: --clients contenders (16 is the figure to quote) each acquire and release one
lock in a closed loop, each on a lease of its own kept alive (etcd's concurrency.Session);
reports lock round trips per second and acquire latency, and checks that the fencing
tokens of successive holders only grow.

Examples:

  paxosctl bench --local --op put --clients 64 --duration 10

  paxosctl bench --local --op get --clients 16 --baseline --json

  paxosctl bench --local --op lock --clients 16 --duration 10

  paxosctl bench --compare-etcd --op put --clients 64 --duration 8 --rounds 2

  paxosctl bench --local --op txn --clients 64 --duration 10

  paxosctl bench --local --op put --clients 64 --leases 10000 --lease-ttl 10

  paxosctl bench --compare-etcd --op put --clients 64 --leases 10000 --rounds 2

  paxosctl bench --endpoints 10.0.0.1:7101,10.0.0.2:7102 --key-file client.key --op mixed

  paxosctl bench storage --restart-entries 1000000

  paxosctl bench transport --seconds 8

  paxosctl bench cli --runs 15
"""

app = typer.Typer(
    rich_markup_mode=None, help=HELP, invoke_without_command=True, no_args_is_help=False
)

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Folder on the disk to measure (default: the system's temporary folder).",
        show_default=False,
    ),
]


def _show_progress() -> bool:
    return render.stderr_is_terminal()


def _host() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def _quiet_logs() -> None:
    # Storage and transport log at info on stdout by default; a bench's stdout is its report.
    from paxosd.server.logs import configure_logging

    configure_logging(level="error")


@contextmanager
def _status() -> Iterator[Callable[[str], None]]:
    """A one-line spinner on stderr (TTY only) that the bench's progress messages update."""
    if not _show_progress():
        yield lambda _msg: None
        return
    with render.stderr.status("starting") as status:
        yield lambda msg: status.update(msg.strip())


@contextmanager
def _load_progress() -> Iterator[Callable[[LoadProgress], None]]:
    """A bar over warm-up + measured seconds with the current rate; TTY only."""
    if not _show_progress():
        yield lambda _p: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        console=render.stderr,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=1.0)
        last: list[float] = [time.monotonic(), 0.0]

        def update(p: LoadProgress) -> None:
            if p.phase in ("warmup", "measure", "drain"):
                now = time.monotonic()
                if now - last[0] >= 0.5:
                    rate = (p.done - last[1]) / (now - last[0])
                    last[:] = [now, float(p.done)]
                    bar.update(task, description=f"{p.phase}: {rate:,.0f} ops/s")
                bar.update(task, completed=p.elapsed_s, total=max(p.total_s, 1e-9))
            else:
                bar.update(task, description=f"{p.phase}: {p.message}" if p.message else p.phase)

        yield update


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _print_kv(r: dict[str, Any]) -> None:
    w = r["workload"]
    target = r.get("target", {})
    where = (
        f"local, {target['nodes']} nodes, durable (fsync)"
        if target.get("kind") == "local"
        else ", ".join(r["endpoints"])
    )
    mix = f", read ratio {w['read_ratio']}" if w["op"] == "mixed" else ""
    render.rich_line(
        f"paxosd bench: {w['op']}{mix}, {w['clients']} clients, {w['duration_s']:g} s "
        f"(+{w['warmup_s']:g} s warm-up), {w['value_bytes']}-byte values, {w['keys']:,} keys; "
        f"{where}",
        markup=False,
    )
    lat = r["latency_ms"]
    errors = ", ".join(f"{k}={n}" for k, n in r["errors"].items()) or "none"
    rows: list[list[object]] = [
        ["throughput", f"{r['ops_per_s']:,.0f} ops/s ({r['ops']:,} ops)"],
        [
            "latency ms",
            f"p50 {_fmt(lat['p50'])}  p90 {_fmt(lat['p90'])}  p99 {_fmt(lat['p99'])}  "
            f"p99.9 {_fmt(lat['p99_9'])}  max {_fmt(lat['max'])}",
        ],
        ["errors", errors],
    ]
    if w["op"] in ("get", "mixed"):
        rows.append(["get misses", f"{r['get_misses']:,}"])
    srv = r["server"]
    if srv["nodes"]:
        cores = ", ".join(f"{n['name']} {_fmt(n['cores'])}" for n in srv["nodes"])
        rows.append(
            [
                "server CPU",
                f"{_fmt(srv['cpu_s_per_1000_ops'], 3)} s per 1,000 ops "
                f"(summed over {len(srv['nodes'])} servers; cores: {cores})",
            ]
        )
        rss = ", ".join(
            f"{n['name']} {_fmt(n['rss_mb'], 1)} (peak {_fmt(n['rss_peak_mb'], 1)})"
            for n in srv["nodes"]
        )
        verdict = "within" if srv["rss_within_limit"] else "OVER"
        rows.append(["RSS MB", f"{rss}; {verdict} {srv['rss_mb_limit']:g} MB"])
    else:
        rows.append(["server CPU", "not measured (servers not on this machine; --server-pid)"])
    g = r["generator"]
    note = "  (MAY BE THE BOTTLENECK)" if g["may_be_bottleneck"] else ""
    rows.append(
        [
            "generator",
            f"{g['processes']} process(es) of {g['clients_per_process']} clients, "
            f"{_fmt(g['cpu_s_per_1000_ops'], 3)} CPU s per 1,000 ops, busiest process "
            f"{_fmt(g['busiest_process_cores'])} of a core; can sustain about "
            f"{_fmt(g['ceiling_ops_per_s'], 0)} ops/s with a core per process{note}",
        ]
    )
    m = r["machine"]
    rows.append(
        [
            "machine",
            f"{_fmt(m['busy_pct'], 1)} % busy of {r['host']['cpus']} cores, steal "
            f"{_fmt(m['steal_pct'], 1)} %, other processes {_fmt(m['other_cores'])} cores",
        ]
    )
    b = r.get("baseline")
    if b:
        rows.append(
            [
                "baseline",
                f"SQLite WAL FULL {b['sqlite_commits_per_s']:,} commits/s on {b['data_dir']} "
                f"-> {_fmt(b['ops_per_fsync'])} ops per fsync; transport round trip p50 "
                f"{_fmt(b['transport_round_trip_p50_ms'], 3)} ms -> p50 = "
                f"{_fmt(b['p50_in_round_trips'], 1)} round trips",
            ]
        )
    render.table(None, ["figure", "value"], rows)


def _parse_pids(values: list[int]) -> dict[str, int]:
    return {f"pid-{p}": p for p in values}


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    clients: Annotated[int, typer.Option(min=1, max=1024, help="Concurrent clients.")] = 1,
    duration: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Measured seconds (after the warm-up).")
    ] = 10.0,
    warmup: Annotated[
        float, typer.Option(min=0, max=3600, help="Seconds of load before measuring.")
    ] = 1.0,
    value_size: Annotated[int, typer.Option(min=1, max=512 << 10, help="Value bytes.")] = 100,
    keys: Annotated[int, typer.Option(min=1, max=10_000_000, help="Keys, uniform.")] = 10_000,
    op: Annotated[
        str,
        typer.Option(
            help="put | get (linearizable) | mixed | txn (a compare on one key, then a put of "
            "it and of a second key: one command) | lock (acquire+release of one lock)."
        ),
    ] = "put",
    read_ratio: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="With --op mixed: share of gets.")
    ] = 0.5,
    prefill: Annotated[
        bool | None,
        typer.Option(
            "--prefill/--no-prefill",
            help="Put every key once first (default: on for get and mixed).",
            show_default=False,
        ),
    ] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=0, max=64, help="Load-generator processes (0: one per 16 clients, <= cores)."
        ),
    ] = 0,
    local: Annotated[
        bool, typer.Option("--local", help="Bench a fresh durable local cluster, then remove it.")
    ] = False,
    nodes: Annotated[int, typer.Option(min=1, max=9, help="With --local: members.")] = 3,
    baseline: Annotated[
        bool,
        typer.Option("--baseline", help="Also measure SQLite commit rate and transport RTT."),
    ] = False,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    server_pid: Annotated[
        list[int] | None,
        typer.Option(
            "--server-pid", help="A server's pid on this machine, for CPU/RSS (repeatable)."
        ),
    ] = None,
    d: DirOpt = None,
    timeout_ms: Annotated[
        int, typer.Option("--timeout-ms", min=100, help="A request's time limit.")
    ] = 5000,
    keep: Annotated[
        bool, typer.Option("--keep", help="With --local: keep the cluster's folder.")
    ] = False,
    compare_etcd: Annotated[
        bool,
        typer.Option(
            "--compare-etcd",
            help="Run the same load on a local etcd 3.4 (gRPC client) and paxosd, alternately.",
        ),
    ] = False,
    rounds: Annotated[
        int, typer.Option(min=1, max=100, help="With --compare-etcd: interleaved rounds.")
    ] = 2,
    etcd_conns: Annotated[
        int | None,
        typer.Option(
            "--etcd-conns",
            min=1,
            help="With --compare-etcd: etcd's gRPC connections (default: one per client).",
            show_default=False,
        ),
    ] = None,
    leases: Annotated[
        int,
        typer.Option(
            min=0,
            max=100_000,
            help="With --op put: also run the load beside this many leases kept alive "
            "(a key each) and compare the two runs.",
        ),
    ] = 0,
    lease_ttl: Annotated[
        int, typer.Option("--lease-ttl", min=2, max=3600, help="With --leases: TTL, seconds.")
    ] = 10,
    keepers: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="With --leases: keep-alive connections per member (or clients)."
        ),
    ] = 4,
    json_out: JsonOpt = False,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if leases:
        if op != "put":
            render.error("--leases goes with --op put")
            raise typer.Exit(render.EXIT_USAGE)
        _bench_leases(
            clients, duration, warmup, value_size, keys, processes, timeout_ms, local, nodes,
            d, keep, endpoints, key_file, compare_etcd, rounds, etcd_conns,
            (leases, lease_ttl, keepers), json_out,
        )  # fmt: skip
        return
    if op == "lock":
        _quiet_logs()
        _bench_lock(
            clients, duration, warmup, local, nodes, d, keep, endpoints, key_file, timeout_ms,
            json_out,
        )  # fmt: skip
        return
    if op not in OP_KINDS:
        render.error(f"--op must be one of {', '.join(OP_KINDS)}")
        raise typer.Exit(render.EXIT_USAGE)
    try:
        spec = LoadSpec(
            op=op,  # type: ignore[arg-type]  # checked against OP_KINDS above
            clients=clients,
            duration_s=duration,
            warmup_s=warmup,
            value_bytes=value_size,
            keys=keys,
            read_ratio=read_ratio,
            prefill=prefill if prefill is not None else op in ("get", "mixed"),
            processes=processes,
            timeout_ms=timeout_ms,
        )
    except ValueError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    _quiet_logs()
    if compare_etcd:
        if endpoints is not None:
            render.error("--compare-etcd starts its own clusters; drop --endpoints")
            raise typer.Exit(render.EXIT_USAGE)
        if spec.op == "txn":
            _compare_txn(spec, rounds, etcd_conns, json_out)
            return
        from paxosctl import bench_etcd

        bench_etcd.run(
            spec, rounds=rounds, conns=etcd_conns, nodes=nodes, parent_dir=d, json_out=json_out
        )
        return
    try:
        with _load_progress() as progress:
            if local:
                report = run_local(
                    spec,
                    nodes=nodes,
                    parent_dir=d,
                    baseline=baseline,
                    progress=progress,
                    keep=keep,
                )
            else:
                report = _run_remote(spec, endpoints, key_file, server_pid or [], d, baseline)
    except ConnectError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    except BenchError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    if json_out:
        render.emit_json(report)
    else:
        _print_kv(report)


def _bench_lock(
    clients: int,
    duration: float,
    warmup: float,
    local: bool,
    nodes: int,
    d: Path | None,
    keep: bool,
    endpoints: str | None,
    key_file: Path | None,
    timeout_ms: int,
    json_out: bool,
) -> None:
    """``--op lock``: lock round trips (paxosd.lab.bench_lock) on a fresh local cluster or
    the cluster the connection options name."""
    import shutil

    from paxosd.lab.bench_lock import FencingViolation, LockSpec, run_lock_bench

    try:
        spec = LockSpec(
            contenders=clients, duration_s=duration, warmup_s=warmup, timeout_ms=timeout_ms
        )
    except ValueError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    try:
        if local:
            from paxosd.lab.localcluster import LocalCluster

            parent = d or Path(tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix="paxosd-bench-lock-", dir=parent))
            cluster = LocalCluster.create(root, nodes, durability="fsync")
            try:
                cluster.up()
                report = run_lock_bench(spec, cluster.endpoints(), cluster.client_key())
            finally:
                cluster.down()
                if not keep:
                    shutil.rmtree(root, ignore_errors=True)
            report["target"] = {"kind": "local", "nodes": nodes, "durability": "fsync"}
        else:
            target = resolve(endpoints, key_file)
            report = run_lock_bench(spec, target.endpoints, target.key)
            report["target"] = {"kind": "endpoints", "source": target.source}
    except ConnectError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    except FencingViolation as e:
        render.error(f"violation: {e}")
        raise typer.Exit(render.EXIT_FAILED_CHECK) from None
    except (ClientError, OSError) as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    report["host"] = _host()
    if json_out:
        render.emit_json(report)
        return
    lat = report["acquire_ms"]
    render.rich_line(
        f"paxosd bench: lock, {clients} contenders, {duration:g} s: "
        f"{report['round_trips_s']:.1f} acquire+release round trips/s; acquire p50 "
        f"{_fmt(lat['p50'])} ms, p90 {_fmt(lat['p90'])} ms, p99 {_fmt(lat['p99'])} ms",
        markup=False,
    )
    for problem in report["errors"]:
        render.rich_note(f"error: {problem}", markup=False)


def _bench_leases(
    clients: int,
    duration: float,
    warmup: float,
    value_size: int,
    keys: int,
    processes: int,
    timeout_ms: int,
    local: bool,
    nodes: int,
    d: Path | None,
    keep: bool,
    endpoints: str | None,
    key_file: Path | None,
    compare_etcd: bool,
    rounds: int,
    etcd_conns: int | None,
    lease_args: tuple[int, int, int],
    json_out: bool,
) -> None:
    """``--leases N``: the put load alone and beside N leases kept alive
    (paxosd.lab.bench_leases), on a fresh local cluster, the named one, or (--compare-etcd)
    alternately with etcd."""
    from paxosd.lab.bench_etcd import EtcdUnavailable
    from paxosd.lab.bench_leases import (
        LeaseBenchSpec,
        compare_leases,
        run_lease_bench,
        run_local_lease_bench,
    )

    n, ttl, keepers = lease_args
    try:
        load = LoadSpec(
            op="put",
            clients=clients,
            duration_s=duration,
            warmup_s=warmup,
            value_bytes=value_size,
            keys=keys,
            processes=processes,
            timeout_ms=timeout_ms,
        )
        spec = LeaseBenchSpec(leases=n, ttl_s=ttl, keeper_lanes=keepers)
    except ValueError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    _quiet_logs()
    try:
        with _status() as say:
            if compare_etcd:
                if endpoints is not None:
                    render.error("--compare-etcd starts its own clusters; drop --endpoints")
                    raise typer.Exit(render.EXIT_USAGE)
                report = compare_leases(
                    load, spec, rounds=rounds, nodes=nodes, conns=etcd_conns, say=say
                )
            elif local:
                report = run_local_lease_bench(load, spec, nodes=nodes, parent_dir=d, keep=keep)
            else:
                target = resolve(endpoints, key_file)
                report = run_lease_bench(load, spec, target.endpoints, target.key, say=say)
                report["target"] = {"kind": "endpoints", "source": target.source}
    except ConnectError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    except EtcdUnavailable as e:
        render.error(f"etcd comparison skipped: {e}")
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    except (BenchError, ClientError, OSError) as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    report["host"] = _host()
    if json_out:
        render.emit_json(report)
        return
    if compare_etcd:
        _print_lease_compare(report)
    else:
        _print_leases(report)


def _print_leases(r: dict[str, Any]) -> None:
    w, ka = r["workload"], r["keepalives"]
    a, b = r["without_leases"], r["with_leases"]

    def lat(x: dict[str, Any]) -> str:
        m = x["latency_ms"]
        return f"p50 {_fmt(m['p50'])}  p99 {_fmt(m['p99'])}  p99.9 {_fmt(m['p99_9'])}"

    def cores(x: dict[str, Any]) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in x["server_cores"].items()) or "-"

    render.rich_line(
        f"paxosd bench: put, {w['clients']} clients, {w['duration_s']:g} s, alone and beside "
        f"{w['leases']:,} leases of {w['lease_ttl_s']} s kept alive every "
        f"{w['lease_ttl_s'] / 3:.2f} s",
        markup=False,
    )
    verdict = "within" if r["p99_within_aim"] else "NOT within"
    render.table(
        None,
        ["figure", "without leases", "with leases"],
        [
            ["puts/s", f"{a['ops_s']:,.0f}", f"{b['ops_s']:,.0f}"],
            ["put latency ms", lat(a), lat(b)],
            ["put errors", a["errors"], b["errors"]],
            [
                "server CPU s per 1,000 puts",
                _fmt(a["server_cpu_s_per_1000_ops"], 3),
                _fmt(b["server_cpu_s_per_1000_ops"], 3),
            ],
            ["server cores", cores(a), cores(b)],
        ],
    )
    render.rich_line(
        f"put p99 with/without leases: {_fmt(r['p99_ratio'])} ({verdict} the aim of "
        f"{r['p99_aim']:g})",
        markup=False,
    )
    render.rich_line(
        f"keep-alives: {_fmt(ka['acked_per_s_during_load'], 0)}/s acknowledged during the "
        f"load of {_fmt(ka['asked_per_s'], 0)}/s asked; late {ka['late_during_load']}, failed "
        f"{ka['failed_during_load']}; answer p50 {_fmt(ka['answer_ms']['p50'])} ms, p99 "
        f"{_fmt(ka['answer_ms']['p99'])} ms; keeper CPU {_fmt(ka['keeper_cpu_s'])} s over "
        f"{ka['kept_s']:g} s",
        markup=False,
    )
    render.rich_line(f"leases lost: {r['leases_lost']}", markup=False)


def _print_lease_compare(r: dict[str, Any]) -> None:
    m = r["medians"]
    render.table(
        f"put p99 beside {r['leases']:,} leases of {r['lease_ttl_s']} s, {r['clients']} "
        "clients (medians over rounds, alternating)",
        ["system", "p99 ms alone", "p99 ms with leases", "ratio", "puts/s alone",
         "puts/s with", "keep-alives/s", "leases lost"],
        [
            [
                name,
                _fmt(x["p99_ms_without_leases"]),
                _fmt(x["p99_ms_with_leases"]),
                _fmt(x["p99_ratio"]),
                _fmt(x["ops_s_without_leases"], 0),
                _fmt(x["ops_s_with_leases"], 0),
                _fmt(x["keepalives_acked_per_s"], 0),
                x["leases_lost"],
            ]
            for name, x in m.items()
        ],
    )  # fmt: skip


def _run_remote(
    spec: LoadSpec,
    endpoints: str | None,
    key_file: Path | None,
    server_pids: list[int],
    d: Path | None,
    baseline: bool,
) -> dict[str, Any]:
    target = resolve(endpoints, key_file)
    pids = _parse_pids(server_pids)
    if not pids and target.source not in ("--endpoints",):
        # The README's local cluster: its pids are known, so measure its CPU and RSS too.
        from paxosd.client.localdir import MANIFEST
        from paxosd.lab.localcluster import LocalCluster

        root = Path(target.source)
        if (root / MANIFEST).exists():
            cluster = LocalCluster.load(root)
            for k in cluster.node_ids():
                pid = cluster.pid(k)
                if pid is not None:
                    pids[f"n{k}"] = pid
    base = None
    if baseline:
        with tempfile.TemporaryDirectory(prefix="paxosd-baseline-", dir=d) as tmp:
            base = run_baseline(Path(tmp))
    report = run_load(spec, target.endpoints, target.key, server_pids=pids)
    report["target"] = {"kind": "endpoints", "source": target.source}
    if base is not None:
        report["baseline"] = base | relate_to_baseline(report, base)
    return report


# ---------------------------------------------------------------------------------- storage


@app.command("storage")
def storage(
    d: DirOpt = None,
    seconds_per_case: Annotated[
        float, typer.Option(min=0.1, max=600, help="Seconds per group-commit case (x2: raw).")
    ] = 3.0,
    batches: Annotated[str, typer.Option(help="Records per commit, comma-separated.")] = "1,10,100",
    replay_entries: Annotated[
        int, typer.Option(min=1, max=10_000_000, help="Decided entries to load for replay.")
    ] = 200_000,
    restart_entries: Annotated[
        int,
        typer.Option(min=0, max=100_000_000, help="Log length for the restart cases (0: skip)."),
    ] = 1_000_000,
    snapshot_every: Annotated[
        int, typer.Option(min=1, help="Restart with snapshots: one per this many slots.")
    ] = 10_000,
    retain_entries: Annotated[
        int, typer.Option(min=0, help="Restart with snapshots: log entries kept behind one.")
    ] = 1_000,
    command_bytes: Annotated[
        int, typer.Option(min=1, max=512 << 10, help="Bytes per command.")
    ] = 100,
    json_out: JsonOpt = False,
) -> None:
    """Group-commit records/s at each batch size vs a raw SQLite loop (ratio), replay
    entries/s, and the restart time of a long log with snapshots off and on.

    Example: paxosctl bench storage --restart-entries 1000000 --json
    """
    from paxosd.lab.bench_storage import run_storage_bench

    try:
        sizes = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 or b > 100_000 for b in sizes):
        render.error("--batches takes comma-separated integers in 1..100000")
        raise typer.Exit(render.EXIT_USAGE)
    _quiet_logs()
    with (
        tempfile.TemporaryDirectory(prefix="paxosd-bench-storage-", dir=d) as tmp,
        _status() as say,
    ):
        result = run_storage_bench(
            Path(tmp),
            seconds_per_case,
            progress=say,
            batch_sizes=sizes,
            command_bytes=command_bytes,
            replay_entries=replay_entries,
            restart_entries=restart_entries,
            snapshot_every=snapshot_every,
            retain_entries=retain_entries,
        )
    report = {"bench": "storage", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": _host()}
    report |= result
    if json_out:
        render.emit_json(report)
        return
    render.rich_line(
        f"storage bench on {result['data_dir']} (SQLite {result['sqlite_version']}, "
        f"{command_bytes}-byte commands)",
        markup=False,
    )
    render.table(
        "group commit (records/s)",
        ["durability", "batch", "paxosd storage", "raw sqlite3", "ratio"],
        [
            [
                c["durability"],
                c["batch"],
                f"{c['storage_records_per_s']:,}",
                f"{c['raw_records_per_s']:,}",
                c["ratio"],
            ]
            for c in result["group_commit"]
        ],
    )
    rp = result["replay"]
    render.rich_line(
        f"replay (load decided entries): {rp['entries_per_s']:,} entries/s "
        f"({rp['entries']:,} in {rp['load_s']} s)",
        markup=False,
    )
    if result["restart"]:
        render.table(
            "restart (seconds)",
            ["snapshots", "log", "open", "load", "restore", "replay", "total", "replayed", "MB"],
            [
                [
                    "on" if r["snapshots"] else "off",
                    f"{r['log_entries']:,}",
                    r["open_s"],
                    r["load_s"],
                    r["restore_s"],
                    r["replay_s"],
                    r["total_s"],
                    f"{r['entries_replayed']:,}",
                    f"{r['db_bytes'] / 1e6:,.0f}",
                ]
                for r in result["restart"]
            ],
        )


# ---------------------------------------------------------------------------------- transport


@app.command("cli")
def cli(
    runs: Annotated[
        int, typer.Option("--runs", min=1, max=1000, help="Runs of each command.")
    ] = 15,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """paxosctl's start-up: whole processes of `python -c pass`, `paxosctl --help` and
    `paxosctl get k`, interleaved, timed from outside; min/median/max and the ratio to
    `python -c pass`.

    Without --endpoints it starts a local 3-node cluster in a temporary folder (removed
    afterwards). The load average before and after is reported: a busy machine slows every
    case, the ratios less so.

    Example: paxosctl bench cli --runs 15 --json
    """
    from paxosd.lab.bench_cli import run_cli_bench

    _quiet_logs()
    key: bytes | None = None
    if endpoints is not None:
        try:
            target = resolve(endpoints, key_file)
        except ConnectError as e:
            render.error(str(e))
            raise typer.Exit(render.EXIT_USAGE) from None
        key = target.key
        if key_file is None:
            render.error("--endpoints needs --key-file here (the timed get is given both)")
            raise typer.Exit(render.EXIT_USAGE)
    with _status() as say:
        say(f"cli: {runs} runs of each command")
        try:
            report = run_cli_bench(runs, endpoints=endpoints, key_file=key_file, key=key)
        except ClientError as e:
            render.error(str(e))
            raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": _host(), **report}
    if json_out:
        render.emit_json(report)
        return
    render.table(
        f"paxosctl start-up, {runs} runs each, interleaved ({report['target']})",
        ["command", "min ms", "median ms", "max ms", "x python -c pass"],
        [
            [c["name"], c["min_ms"], c["median_ms"], c["max_ms"], f"{c['ratio_to_python']:.1f}"]
            for c in report["cases"]
        ],
    )
    before, after = report["load_average_before"][0], report["load_average_after"][0]
    render.rich_note(f"load average (1 min): {before} before, {after} after", markup=False)


def _compare_txn(spec: LoadSpec, rounds: int, conns: int | None, json_out: bool) -> None:
    from paxosd.lab.bench_etcd import EtcdUnavailable
    from paxosd.lab.bench_fanout_etcd import compare_txn

    try:
        with _status() as say:
            report = compare_txn(spec, rounds=rounds, conns=conns, say=say)
    except EtcdUnavailable as e:
        render.error(f"etcd comparison skipped: {e}")
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    except BenchError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    if json_out:
        render.emit_json(report)
        return
    render.table(
        f"txn, {spec.clients} clients (2 puts under a compare), rounds alternating",
        ["system", "ops/s per round", "p50 ms", "p99 ms", "median ops/s"],
        [
            [
                name,
                " / ".join(f"{x['ops_s']:,.0f}" for x in rows),
                " / ".join(_fmt(x["p50_ms"]) for x in rows),
                " / ".join(_fmt(x["p99_ms"]) for x in rows),
                _fmt(report["median_ops_s"][name], 0),
            ]
            for name, rows in report["rounds"].items()
        ],
    )
    render.rich_line(f"paxosd / etcd (medians): {_fmt(report['paxosd_over_etcd'])}", markup=False)


@app.command("fanout")
def fanout(
    watchers: Annotated[int, typer.Option(min=1, max=10_000, help="Watchers on one node.")] = 1000,
    connections: Annotated[
        int, typer.Option(min=1, max=1000, help="Connections the watchers are spread over.")
    ] = 10,
    processes: Annotated[
        int, typer.Option(min=1, max=64, help="Receiver processes (<= connections).")
    ] = 2,
    rate: Annotated[
        float, typer.Option(min=0.1, max=100_000, help="Puts per second on the watched prefix.")
    ] = 1000.0,
    duration: Annotated[float, typer.Option(min=0.5, max=3600, help="Measured seconds.")] = 10.0,
    warmup: Annotated[float, typer.Option(min=0, max=600, help="Seconds before measuring.")] = 2.0,
    on: Annotated[str, typer.Option(help="The watched node: leader | follower.")] = "follower",
    nodes: Annotated[int, typer.Option(min=3, max=9, help="Members of the local cluster.")] = 3,
    compare_etcd: Annotated[
        bool,
        typer.Option(
            "--compare-etcd",
            help="Also run the same fan-out on a local etcd 3.4 (its Go client), alternately.",
        ),
    ] = False,
    rounds: Annotated[
        int, typer.Option(min=1, max=20, help="With --compare-etcd: interleaved rounds.")
    ] = 2,
    json_out: JsonOpt = False,
) -> None:
    """Watch fan-out on a fresh durable local cluster: --watchers prefix watchers on one
    node (--on), spread over --connections connections (many watches per connection), and
    --rate puts/s on their prefix through the leader (open loop). Reports events delivered
    per second against the number asked for (watchers x rate), the delay from each put's
    acknowledgement to each event (p50/p90/p99/max, one host clock), watchers still behind
    at the end, and the watched node's RSS and CPU.

    Example: paxosctl bench fanout --watchers 1000 --rate 1000 --duration 10 --compare-etcd
    """
    from paxosd.lab.bench_fanout import WatchBenchSpec, run_local_watch_bench

    if on not in ("leader", "follower"):
        render.error("--on is leader or follower")
        raise typer.Exit(render.EXIT_USAGE)
    try:
        spec = WatchBenchSpec(
            watchers=watchers,
            connections=connections,
            processes=min(processes, connections),
            rate=rate,
            duration_s=duration,
            warmup_s=warmup,
        )
    except ValueError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    _quiet_logs()
    from paxosd.lab.bench_etcd import EtcdUnavailable

    try:
        with _status() as say:
            if compare_etcd:
                from paxosd.lab.bench_fanout_etcd import compare_watch

                report = compare_watch(spec, rounds=rounds, on=on, say=say)
            else:
                report = run_local_watch_bench(spec, nodes=nodes, on=on, say=say)
    except EtcdUnavailable as e:
        render.error(f"etcd comparison skipped: {e}")
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    except BenchError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    report |= {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": _host()}
    if json_out:
        render.emit_json(report)
        return
    if compare_etcd:
        render.table(
            f"watch fan-out: {watchers} watchers on a {on} over {connections} connections, "
            f"{rate:g} puts/s (rounds alternating)",
            ["system", "events/s", "share delivered", "p50 ms", "p99 ms", "RSS MB", "cores"],
            [
                [
                    name,
                    " / ".join(f"{x['delivered_per_s']:,}" for x in rows),
                    " / ".join(_fmt(x["delivered_share"]) for x in rows),
                    " / ".join(_fmt(x["p50_ms"]) for x in rows),
                    " / ".join(_fmt(x["p99_ms"]) for x in rows),
                    " / ".join(_fmt(x["rss_mb_after"], 1) for x in rows),
                    " / ".join(_fmt(x["node_cores"]) for x in rows),
                ]
                for name, rows in report["rounds"].items()
            ],
        )
        ratios = report["paxosd_over_etcd"]
        render.rich_line(
            "paxosd / etcd (medians): " + ", ".join(f"{k} {_fmt(v)}" for k, v in ratios.items()),
            markup=False,
        )
        return
    ev, lat, node = report["events"], report["latency_ms"], report["node"]
    render.table(
        f"watch fan-out: {watchers} watchers on {report['target']['watch_node']} over "
        f"{connections} connections, {rate:g} puts/s, {duration:g} s",
        ["", ""],
        [
            [
                "events",
                f"{ev['delivered_in_window']:,} of {ev['expected_in_window']:,} asked "
                f"({ev['delivered_per_s']:,}/s); {ev['watchers_behind_at_end']} watchers "
                f"behind at the end",
            ],
            [
                "delay ms (put ack -> event)",
                f"p50 {_fmt(lat['p50'])}  p90 {_fmt(lat['p90'])}  p99 {_fmt(lat['p99'])}  "
                f"max {_fmt(lat['max'])}",
            ],
            [
                "puts",
                f"{report['puts']['acknowledged']:,} acknowledged, "
                f"{report['puts']['errors']} errors",
            ],
            [
                "receivers",
                f"{report['receivers']['processes']} processes, busiest "
                f"{_fmt(report['receivers']['busiest_cores'])} of a core (near 1: they limit)",
            ],
            [
                "watched node",
                f"RSS {_fmt(node['rss_mb_before'], 1)} -> {_fmt(node['rss_mb_after'], 1)} MB "
                f"(peak {_fmt(node['rss_peak_mb'], 1)}), {_fmt(node['cores'])} cores",
            ],
        ],
    )


@app.command("transport")
def transport(
    seconds: Annotated[float, typer.Option(min=0.5, max=600, help="Total seconds.")] = 8.0,
    frame_bytes: Annotated[int, typer.Option(min=1, max=1 << 20, help="Encoded frame size.")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """The encrypted peer transport vs plain send_bytes on loopback: frames/s and round trip,
    with ratios (>= 1 means the transport is at least as good).

    Example: paxosctl bench transport --seconds 8 --json
    """
    from paxosd.lab.bench_transport import run_transport_bench

    _quiet_logs()
    with _status() as say:
        say(f"transport: {seconds:g} s of throughput and round trips")
        result = run_transport_bench(seconds, frame_bytes)
    report: dict[str, Any] = {
        "bench": "transport",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": _host(),
        "seconds": seconds,
    }
    report |= {k: round(v, 3) for k, v in result.items()}
    if json_out:
        render.emit_json(report)
        return
    r = result
    render.table(
        f"transport bench ({r['frame_bytes']:.0f}-byte frames, loopback)",
        ["", "plain send_bytes", "encrypted transport", "ratio"],
        [
            [
                "frames/s (batched)",
                f"{r['plain_frames_per_s']:,.0f}",
                f"{r['transport_frames_per_s']:,.0f}",
                f"{r['throughput_ratio']:.2f}",
            ],
            [
                "frames/s (one per send)",
                f"{r['plain_frames_per_s']:,.0f}",
                f"{r['transport_unbatched_frames_per_s']:,.0f}",
                f"{r['unbatched_throughput_ratio']:.2f}",
            ],
            [
                "round trip p50 us",
                f"{r['plain_round_trip_p50_us']:,.0f}",
                f"{r['transport_round_trip_p50_us']:,.0f}",
                f"{r['round_trip_p50_ratio']:.2f}",
            ],
            [
                "round trip p99 us",
                f"{r['plain_round_trip_p99_us']:,.0f}",
                f"{r['transport_round_trip_p99_us']:,.0f}",
                f"{r['round_trip_p99_ratio']:.2f}",
            ],
        ],
    )


@app.command("watch")
def watch(
    watchers: Annotated[
        int, typer.Option(min=1, max=100_000, help="Watchers on one prefix.")
    ] = 1000,
    events: Annotated[int, typer.Option(min=1, max=100_000, help="Events in the pump.")] = 1000,
    value_bytes: Annotated[int, typer.Option(min=0, max=1 << 16, help="Bytes per value.")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """The watch hub's fan-out: one pump delivering N events to W watchers of one prefix,
    each shared tuple of events encoded once, vs every response encoded whole (ratio > 1:
    sharing is faster). In-process, no sockets.

    Example: paxosctl bench watch --watchers 1000 --events 1000 --json
    """
    from paxosd.lab.bench_watch import run_watch_bench

    _quiet_logs()
    with _status() as say:
        say(f"watch: {watchers} watchers x {events} events, best of 3")
        result = run_watch_bench(watchers, events, value_bytes)
    report: dict[str, Any] = {
        "bench": "watch",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": _host(),
    }
    report |= {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    if json_out:
        render.emit_json(report)
        return
    r = result
    render.table(
        f"watch fan-out ({watchers} watchers, {events} events of {value_bytes} bytes, one pump)",
        ["", "each response encoded", "shared events encoded once", "ratio"],
        [
            [
                "pump ms",
                f"{r['per_response_pump_ms']:,.1f}",
                f"{r['shared_pump_ms']:,.1f}",
                f"{r['speedup']:.2f}",
            ],
            [
                "deliveries/s",
                f"{r['per_response_deliveries_per_s']:,.0f}",
                f"{r['shared_deliveries_per_s']:,.0f}",
                f"{r['speedup']:.2f}",
            ],
        ],
    )


# ---------------------------------------------------------------------------------- history


@app.command("history")
def history(
    puts: Annotated[int, typer.Option(min=1, max=10_000_000, help="Puts applied.")] = 100_000,
    keys: Annotated[int, typer.Option(min=1, max=1_000_000, help="Distinct keys.")] = 1000,
    value_bytes: Annotated[int, typer.Option(min=0, max=512 << 10, help="Bytes per value.")] = 100,
    rounds: Annotated[
        int, typer.Option(min=1, max=100, help="Throughput rounds of 20,000 puts (best).")
    ] = 10,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Another machine.py to measure beside this one (e.g. from `git show`).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    timeline_max: Annotated[
        int | None,
        typer.Option(
            min=1, help="The machines' timeline bound (default: theirs).", show_default=False
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """What revisions and history cost the state machine alone: memory per put (history
    retained, and compacted to the head), snapshot bytes and apply rate of plain puts, beside
    a --reference machine measured in the same run.

    Example: git show a68f30a:paxosd/statemachine/machine.py > /tmp/before.py &&
    paxosctl bench history --reference /tmp/before.py --value-bytes 1024 --json
    """
    from paxosd.lab.bench_history import run

    with _status() as say:
        say(f"history: {puts:,} puts of {value_bytes} bytes over {keys:,} keys")
        try:
            result = run(
                puts=puts,
                keys=keys,
                value_bytes=value_bytes,
                rounds=rounds,
                reference=reference,
                timeline_max=timeline_max,
            )
        except ValueError as e:
            render.error(f"cannot use the reference machine: {e}")
            raise typer.Exit(render.EXIT_USAGE) from None
    report: dict[str, Any] = {
        "bench": "history",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": _host(),
    }
    report |= result
    if json_out:
        render.emit_json(report)
        return
    r = result
    rows = [
        ["this, history retained", r["this_bytes_per_put"], r["this_snapshot_bytes"]],
        [
            "this, compacted to head",
            r["this_compacted_bytes_per_put"],
            r["this_compacted_snapshot_bytes"],
        ],
    ]
    if "reference_bytes_per_put" in r:
        rows.append(["reference", r["reference_bytes_per_put"], r["reference_snapshot_bytes"]])
    render.table(
        f"history bench ({r['puts']:,} puts of {r['value_bytes']} bytes over {r['keys']:,} keys)",
        ["machine", "bytes per put", "snapshot bytes"],
        [[name, f"{b:,.1f}", f"{s:,}"] for name, b, s in rows],
    )
    line = f"apply: {r['this_puts_per_s']:,} puts/s"
    if "reference_puts_per_s" in r:
        line += f", reference {r['reference_puts_per_s']:,} puts/s, ratio {r['throughput_ratio']}"
    render.rich_line(line, markup=False)


# ---------------------------------------------------------------------------------- bigstate


@app.command("bigstate")
def bigstate(
    keys: Annotated[
        int, typer.Option(min=1, max=10_000_000, help="Keys loaded, then put over.")
    ] = 10_000,
    value_size: Annotated[int, typer.Option(min=1, max=512 << 10, help="Value bytes.")] = 1024,
    duration: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds of puts after the load.")
    ] = 60.0,
    clients: Annotated[int, typer.Option(min=1, max=1024, help="Concurrent clients.")] = 64,
    restart_signal: Annotated[
        str, typer.Option("--restart-signal", help="How the follower is stopped: kill | term.")
    ] = "kill",
    snapshot_every_entries: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=100_000_000,
            help="The nodes' [snapshot] snapshot_every_entries (default: the daemon's).",
            show_default=False,
        ),
    ] = None,
    log_retain_entries: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=100_000_000,
            help="The nodes' [snapshot] log_retain_entries (default: the daemon's).",
            show_default=False,
        ),
    ] = None,
    snapshot_log_percent: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=10_000,
            help="The nodes' [snapshot] snapshot_log_percent (default: the daemon's; "
            "0: snapshots on the entry counts alone).",
            show_default=False,
        ),
    ] = None,
    d: DirOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the cluster's folder.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """What big state costs: a fresh durable 3-node local cluster with the default snapshot
    settings is loaded with --keys keys of --value-size bytes (pipelined puts; the load
    rate), then --clients clients put over the same keys for --duration seconds through
    snapshot cycles. Reports elections (ballot changes seen in the nodes' status) and
    snapshots taken per node; put throughput and latency p50/p90/p99/p99.9/max; the store's
    size, each daemon's RSS (peak, end) and data dir bytes as multiples of it; a `paxosctl
    snapshot save` of the live cluster in MB/s; a follower stopped (--restart-signal) and
    started: seconds until it answers a linearizable read and until it has caught up; a
    fourth node added as a learner: its catch-up by snapshot transfer in MB/s, and its loop
    turns while it installed the snapshot (how many, the longest in ms).

    Progress lines go to stderr. Exit 3 if the cluster does not start or a node does not
    catch up within a generous bound.

    Example: paxosctl bench bigstate --keys 100000 --value-size 1024 --duration 60 --json
    """
    from paxosd.lab.bench_bigstate import BigStateSpec, run_bigstate

    try:
        spec = BigStateSpec(
            keys=keys,
            value_bytes=value_size,
            duration_s=duration,
            clients=clients,
            restart_signal="term" if restart_signal == "term" else "kill",
            snapshot_every_entries=snapshot_every_entries,
            log_retain_entries=log_retain_entries,
            snapshot_log_percent=snapshot_log_percent,
        )
    except ValueError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    if restart_signal not in ("kill", "term"):
        render.error("--restart-signal must be kill or term")
        raise typer.Exit(render.EXIT_USAGE)
    _quiet_logs()
    t0 = time.monotonic()

    def say(msg: str) -> None:
        render.note(f"[{time.monotonic() - t0:6.1f} s] {msg}")
        sys.stderr.flush()

    try:
        report = run_bigstate(spec, parent_dir=d, say=say, keep=keep)
    except BenchError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    report["host"] = _host()
    if json_out:
        render.emit_json(report)
        return
    _print_bigstate(report)


def _print_bigstate(r: dict[str, Any]) -> None:
    load, run, st = r["load"], r["run"], r["state"]
    lat = run["latency_ms"]
    out = [
        f"big state: {r['keys']:,} keys x {r['value_bytes']} bytes, {r['duration_s']:.0f} s of "
        f"puts by {r['clients']} clients (load average {r['load_average'][0]:.2f})",
        f"load:        {_fmt(load.get('puts_per_s'), 0)} puts/s ({_fmt(load.get('mb_per_s'))} "
        f"MB/s), {load.get('seconds')} s, errors {sum(load.get('errors', {}).values())}",
        f"puts:        {run['ops_per_s']:,.0f}/s  p50 {_fmt(lat['p50'])}  p90 {_fmt(lat['p90'])}"
        f"  p99 {_fmt(lat['p99'])}  p99.9 {_fmt(lat['p99_9'])}  max {_fmt(lat['max'])} ms, "
        f"errors {run['errors_total']}",
        f"elections:   {r['elections']} in the load and run (ballot round +{r['ballot_rounds']}), "
        f"{r['elections_whole_sitting']} in the whole sitting",
        f"state:       data {st['data_bytes'] / 1e6:,.1f} MB, store {st['store_bytes'] / 1e6:,.1f}"
        f" MB (history {st['history_bytes'] / 1e6:,.1f} MB), "
        f"database {st['db_bytes'] / 1e6:,.1f} MB",
    ]
    for name, n in r["nodes"].items():
        out.append(
            f"{name} {n['role']:<9} RSS peak {_fmt(n['rss_peak_mb'], 0)} MB "
            f"({_fmt(n['rss_peak_x'])}x), end {_fmt(n['rss_end_mb'], 0)} MB "
            f"({_fmt(n['rss_end_x'])}x); disk {n['disk_bytes'] / 1e6:,.0f} MB "
            f"({_fmt(n['disk_x'])}x); snapshots {n['snapshots_taken']}"
        )
    ss, rs, nm = r["snapshot_save"], r["restart"], r["new_member"]
    out += [
        f"snapshot save: FAILED after {ss['seconds']} s: {ss['error']}"
        if "error" in ss
        else f"snapshot save: {ss['state_bytes'] / 1e6:,.1f} MB in {ss['seconds']} s = "
        f"{_fmt(ss['mb_per_s'], 1)} MB/s",
        f"restart: FAILED: {rs['error']}"
        if "error" in rs
        else f"restart ({rs['signal']} of n{rs['node']}): serves a read after {rs['serve_s']} s,"
        f" caught up after {rs['caught_up_s']} s",
        f"new member: FAILED: {nm['error']}"
        if "error" in nm
        else f"new member n{nm['node']}: caught up in {nm['seconds']} s, "
        + (
            f"by snapshot ({nm['snapshot_bytes'] / 1e6:,.1f} MB), {_fmt(nm['mb_per_s'], 1)} MB/s"
            if nm["by_snapshot"]
            else "from the log (no snapshot transfer)"
        ),
    ]
    for text in out:
        render.line(text)
