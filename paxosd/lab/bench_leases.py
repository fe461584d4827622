"""Keep-alive throughput: N leases kept alive beside the put load, against the same load alone.

What a service registry asks of leases: thousands of registrations (a lease each, one key
attached), each kept alive every TTL/3, while the store serves its ordinary writes. The bench
runs the put load once without leases, then grants ``leases`` leases (a key each, pipelined),
keeps them alive with ``paxosd.client.keepalives.KeepAlives`` (one thread, ``keeper_lanes``
connections per member, turns spread evenly over TTL/3) and runs the same put load again.
The figure is the ratio of the two runs' put p99 (the aim: at most 1.2), with the
keep-alives acknowledged per second against the rate asked for, the late and failed ones, and
the leases lost (must be 0; checked against the leader's lease list at the end).

Both runs are on the same cluster, the one without leases first (its log and database are
the smaller then: if anything that favours the run without leases).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from paxosd.client.client import Client
from paxosd.client.errors import ClientError
from paxosd.client.keepalives import KeepAlives
from paxosd.client.pipeline import Pipeline, Session
from paxosd.client.routing import Address
from paxosd.lab.bench import BenchError, LoadSpec, run_load
from paxosd.statemachine.commands import LeaseGrant, LeaseGranted, Put, Written

LEASES_MAX: Final = 100_000
GRANTS_IN_FLIGHT: Final = 256
GRANT_TIMEOUT_MS: Final = 10_000
P99_AIM: Final = 1.2
SayFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LeaseBenchSpec:
    """``leases`` registrations of ``ttl_s`` each, kept alive over ``keeper_lanes``
    connections per member; keys are ``prefix`` + a number."""

    leases: int = 10_000
    ttl_s: int = 10
    keeper_lanes: int = 4
    prefix: str = "bench/registry/"

    def __post_init__(self) -> None:
        if not 1 <= self.leases <= LEASES_MAX:
            raise ValueError(f"leases must be 1..{LEASES_MAX}")
        if not 2 <= self.ttl_s <= 3600:
            raise ValueError("lease TTL must be 2..3600 s")
        if not 1 <= self.keeper_lanes <= 64:
            raise ValueError("keeper connections must be 1..64")


def grant_registrations(
    endpoints: Sequence[Address],
    key: bytes,
    spec: LeaseBenchSpec,
    on_registered: Callable[[int, float], None] | None = None,
) -> tuple[list[tuple[int, float]], dict[str, int]]:
    """Grant ``spec.leases`` leases and put one key on each, GRANTS_IN_FLIGHT at a time;
    ``on_registered(lease id, when its grant was asked)`` as each is made (a service keeps
    its lease alive from its registration on). Returns those pairs, and the errors by kind
    (a registration that failed is left out)."""
    pipe: Pipeline[int] = Pipeline(endpoints, key, lanes=4, timeout_ms=GRANT_TIMEOUT_MS)
    sessions: dict[int, Session] = {}
    asked: dict[int, float] = {}
    granted: dict[int, int] = {}
    done: list[tuple[int, float]] = []
    errors: dict[str, int] = {}
    value = b"10.0.0.1:8080"
    next_i = 0
    try:
        while next_i < spec.leases or pipe.in_flight():
            while next_i < spec.leases and pipe.in_flight() < GRANTS_IN_FLIGHT:
                s = sessions[next_i] = Session(site="registry")
                asked[next_i] = time.monotonic()
                pipe.submit(s.next_command(LeaseGrant(ttl=spec.ttl_s)), next_i, lane=next_i)
                next_i += 1
            for i, result in pipe.poll(100):
                if isinstance(result, LeaseGranted) and i not in granted:
                    granted[i] = result.id
                    put = Put(key=f"{spec.prefix}{i:06d}", value=value, lease=result.id)
                    pipe.submit(sessions[i].next_command(put), i, lane=i)
                    continue
                if isinstance(result, Written) and i in granted:
                    done.append((granted[i], asked[i]))
                    if on_registered is not None:
                        on_registered(granted[i], asked[i])
                else:
                    kind = str(result) if isinstance(result, ClientError) else "unexpected answer"
                    errors[kind] = errors.get(kind, 0) + 1
                sessions.pop(i, None)
    finally:
        pipe.close()
    return done, errors


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _run_summary(rep: dict[str, Any]) -> dict[str, Any]:
    srv = rep["server"]
    return {
        "ops_s": rep["ops_per_s"],
        "ops": rep["ops"],
        "latency_ms": rep["latency_ms"],
        "errors": rep["errors_total"],
        "server_cpu_s": srv["cpu_s"],
        "server_cpu_s_per_1000_ops": srv["cpu_s_per_1000_ops"],
        "server_cores": {n["name"]: n["cores"] for n in srv["nodes"]},
        "machine_busy_pct": rep["machine"]["busy_pct"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run_lease_bench(
    load: LoadSpec,
    spec: LeaseBenchSpec,
    endpoints: Sequence[Address],
    key: bytes,
    *,
    server_pids: dict[str, int] | None = None,
    say: SayFn | None = None,
) -> dict[str, Any]:
    """The put load alone, then the registrations kept alive beside the same load; the
    report (JSON-ready). Raises ``BenchError`` when the registrations cannot be made."""
    tell = say or (lambda _m: None)
    load_before = _loadavg()
    tell(f"put load without leases: {load.clients} clients, {load.duration_s:g} s")
    alone = run_load(load, endpoints, key, server_pids=server_pids)
    tell(f"granting {spec.leases:,} leases with a key each, keeping each alive once made")
    keeper = KeepAlives(endpoints, key, spec.ttl_s, lanes=spec.keeper_lanes)
    kept_from = time.monotonic()
    keeper.start()
    try:
        regs, grant_errors = grant_registrations(
            endpoints, key, spec, lambda lease_id, asked: keeper.add(lease_id, asked)
        )
        grant_s = time.monotonic() - kept_from
        if len(regs) < spec.leases:
            raise BenchError(
                f"only {len(regs):,} of {spec.leases:,} registrations made: "
                + "; ".join(f"{k} ({n} times)" for k, n in sorted(grant_errors.items()))
            )
        # One whole period first: every lease has had its first keep-alive before measuring.
        first_round_end = time.monotonic() + keeper.period_s
        tell(f"keeping {spec.leases:,} leases alive every {keeper.period_s:.2f} s")
        while time.monotonic() < first_round_end and not keeper.lost:
            time.sleep(0.1)
        sent0, acked0 = keeper.stats.sent, keeper.stats.acked
        late0, failed0 = keeper.stats.late, keeper.stats.failed
        m0 = time.monotonic()
        tell(f"put load with leases: {load.clients} clients, {load.duration_s:g} s")
        beside = run_load(load, endpoints, key, server_pids=server_pids)
        m1 = time.monotonic()
        acked1, sent1 = keeper.stats.acked, keeper.stats.sent
        late1, failed1 = keeper.stats.late, keeper.stats.failed
    finally:
        keeper.stop()
    kept_s = time.monotonic() - kept_from
    with Client(endpoints, key, timeout_ms=GRANT_TIMEOUT_MS) as c:
        try:
            alive = set(c.leases())
        except ClientError as e:
            raise BenchError(f"could not list the leases at the end: {e}") from None
        # Not revoked here: they expire a TTL after the last keep-alive, keys and all.
        lost_ids = [lease_id for lease_id, _ in regs if lease_id not in alive]
    st = keeper.stats
    asked_rate = spec.leases / keeper.period_s
    window = m1 - m0
    p99_alone = alone["latency_ms"]["p99"]
    p99_beside = beside["latency_ms"]["p99"]
    return {
        "bench": "leases",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "workload": {
            "op": load.op,
            "clients": load.clients,
            "duration_s": load.duration_s,
            "warmup_s": load.warmup_s,
            "value_bytes": load.value_bytes,
            "keys": load.keys,
            "leases": spec.leases,
            "lease_ttl_s": spec.ttl_s,
            "keeper_connections_per_member": spec.keeper_lanes,
        },
        "without_leases": _run_summary(alone),
        "with_leases": _run_summary(beside),
        "p99_ratio": _ratio(p99_beside, p99_alone),
        "p99_aim": P99_AIM,
        "p99_within_aim": (
            None if p99_alone is None or p99_beside is None else p99_beside <= P99_AIM * p99_alone
        ),
        "ops_s_ratio": _ratio(beside["ops_per_s"], alone["ops_per_s"]),
        "registrations": {"made": len(regs), "seconds": round(grant_s, 2)},
        "keepalives": {
            "asked_per_s": round(asked_rate, 1),
            "acked_per_s_during_load": round((acked1 - acked0) / window, 1) if window else None,
            "sent_during_load": sent1 - sent0,
            "late_during_load": late1 - late0,
            "failed_during_load": failed1 - failed0,
            "sent": st.sent,
            "acked": st.acked,
            "late": st.late,
            "failed": st.failed,
            "max_gap_s": round(st.max_gap_s, 3),
            "answer_ms": {"p50": st.latency_ms(0.5), "p99": st.latency_ms(0.99)},
            "keeper_cpu_s": round(keeper.cpu_s, 2),
            "kept_s": round(kept_s, 1),
        },
        "leases_lost": len(lost_ids),
        "leases_lost_by_keeper": dict(list(keeper.lost.items())[:5]),
    }


def run_local_lease_bench(
    load: LoadSpec,
    spec: LeaseBenchSpec,
    *,
    nodes: int = 3,
    parent_dir: Path | None = None,
    keep: bool = False,
    say: SayFn | None = None,
) -> dict[str, Any]:
    """``run_lease_bench`` on a fresh durable local cluster (removed afterwards unless
    ``keep``)."""
    from paxosd.lab.localcluster import LocalCluster

    parent = parent_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="paxosd-bench-leases-", dir=parent))
    try:
        cluster = LocalCluster.create(root / "cluster", nodes, durability="fsync")
        try:
            try:
                leader = cluster.up()
            except Exception as e:
                raise BenchError(f"local cluster did not start: {e}") from None
            pids: dict[str, int] = {}
            for k in cluster.node_ids():
                pid = cluster.pid(k)
                if pid is None:
                    raise BenchError(f"node {k} is not running after the start")
                role = "leader" if k == leader.get("node_id") else "follower"
                pids[f"n{k}-{role}"] = pid
            report = run_lease_bench(
                load, spec, cluster.endpoints(), cluster.client_key(), server_pids=pids, say=say
            )
        finally:
            cluster.down()
        report["target"] = {"kind": "local", "nodes": nodes, "durability": "fsync"}
        return report
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------ etcd's side

ETCD_LEASES_ENV: Final = "ETCD_LEASES"
ETCD_LEASES_DEFAULT: Final = Path("/tmp/etcd-lease-bench")


def parse_etcd_result(output: str) -> dict[str, Any]:
    """The one ``RESULT {json}`` line of etcd-lease-bench's output, in this bench's report
    shape (``without_leases``, ``with_leases``, ``keepalives``, ``leases_lost``, ratios).
    Raises ``ValueError`` when there is not exactly one, or it lacks a field."""
    lines = [ln for ln in output.splitlines() if ln.startswith("RESULT ")]
    if len(lines) != 1:
        raise ValueError(f"etcd-lease-bench printed {len(lines)} RESULT lines, expected 1")
    try:
        rec = json.loads(lines[0][len("RESULT ") :])
    except json.JSONDecodeError as e:
        raise ValueError(f"etcd-lease-bench's RESULT is not JSON: {e}") from None
    if not isinstance(rec, dict):
        raise ValueError("etcd-lease-bench's RESULT is not a JSON object")
    try:
        alone, beside, ka = rec["without_leases"], rec["with_leases"], rec["keepalives"]

        def run(r: dict[str, Any]) -> dict[str, Any]:
            return {
                "ops_s": float(r["ops_s"]),
                "ops": int(r["ops"]),
                "latency_ms": {
                    "p50": _us_ms(r["p50_us"]),
                    "p99": _us_ms(r["p99_us"]),
                    "p99_9": _us_ms(r["p999_us"]),
                },
                "errors": int(r["errors"]),
                "server_cpu_s": r.get("server_cpu_s"),
            }

        a, b = run(alone), run(beside)
        return {
            "leases": int(rec["leases"]),
            "lease_ttl_s": int(rec["ttl_s"]),
            "without_leases": a,
            "with_leases": b,
            "p99_ratio": _ratio(b["latency_ms"]["p99"], a["latency_ms"]["p99"]),
            "ops_s_ratio": _ratio(b["ops_s"], a["ops_s"]),
            "keepalives": {
                "asked_per_s": float(ka["asked_per_s"]),
                "acked_per_s_during_load": float(ka["acked_per_s"]),
                "late_during_load": int(ka["late"]),
                "failed_during_load": int(ka["failed"]),
                "max_gap_s": float(ka["max_gap_s"]),
            },
            "leases_lost": int(rec["leases_lost"]),
            "registrations": {"seconds": rec.get("registrations_s")},
            "errors": [str(e) for e in rec.get("errors") or []][:10],
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"etcd-lease-bench's RESULT lacks or mangles a field: {e}") from None


def _us_ms(us: object) -> float | None:
    if not isinstance(us, int | float) or us < 0:
        raise ValueError("a latency is not a number of microseconds")
    return round(float(us) / 1000, 3)


__all__ = [
    "LeaseBenchSpec",
    "compare_leases",
    "find_etcd_lease_bench",
    "grant_registrations",
    "parse_etcd_result",
    "run_etcd_lease_bench",
    "run_lease_bench",
    "run_local_lease_bench",
]


def find_etcd_lease_bench(say: SayFn) -> Path:
    """``$ETCD_LEASES``, else /tmp/etcd-lease-bench, built with paxosd/lab/etcd_leases/build.sh."""
    import subprocess

    from paxosd.lab.bench_etcd import EtcdUnavailable

    named = os.environ.get(ETCD_LEASES_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise EtcdUnavailable(f"${ETCD_LEASES_ENV}={named} is not an executable file")
        return Path(named)
    if os.access(ETCD_LEASES_DEFAULT, os.X_OK):
        return ETCD_LEASES_DEFAULT
    script = Path(__file__).resolve().parent / "etcd_leases" / "build.sh"
    say(f"building {ETCD_LEASES_DEFAULT} with {script}")
    try:
        done = subprocess.run(
            ["bash", str(script)],
            env=os.environ | {"BIN_DIR": str(ETCD_LEASES_DEFAULT.parent)},
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EtcdUnavailable(f"{script} did not finish in 1200 s") from None
    if done.returncode != 0 or not os.access(ETCD_LEASES_DEFAULT, os.X_OK):
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise EtcdUnavailable(f"building etcd-lease-bench failed: {tail[0]}")
    return ETCD_LEASES_DEFAULT


def run_etcd_lease_bench(
    tool: Path, etcd: str, load: LoadSpec, spec: LeaseBenchSpec, *, conns: int | None = None
) -> dict[str, Any]:
    """The same two runs on a fresh 3-member etcd, through its Go client, against its leader."""
    import subprocess

    from paxosd.lab.bench_etcd import EtcdCluster

    with tempfile.TemporaryDirectory(prefix="paxosd-etcd-leases-") as tmp:
        cluster = EtcdCluster(etcd, Path(tmp))
        try:
            leader = cluster.start()
            pids = ",".join(str(p) for p in cluster.pids().values())
            cmd = [
                str(tool),
                *("--endpoints", leader.client_url, "--pids", pids),
                *("--clients", str(load.clients), "--conns", str(conns or load.clients)),
                *("--duration", f"{load.duration_s:g}", "--warmup", f"{load.warmup_s:g}"),
                *("--keys", str(load.keys), "--value-size", str(load.value_bytes)),
                *("--leases", str(spec.leases), "--ttl", str(spec.ttl_s)),
                *("--keepers", str(spec.keeper_lanes)),
            ]
            limit = 2 * (load.warmup_s + load.duration_s) + spec.ttl_s + 360
            load_before = _loadavg()
            try:
                done = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=limit, check=False
                )
            except subprocess.TimeoutExpired:
                raise BenchError(f"etcd-lease-bench did not finish in {limit:.0f} s") from None
        finally:
            cluster.stop()
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"etcd-lease-bench exited with code {done.returncode}: {tail[0]}")
    try:
        rec = parse_etcd_result(done.stdout)
    except ValueError as e:
        raise BenchError(str(e)) from None
    rec["load_average_before"] = load_before
    rec["load_average_after"] = _loadavg()
    return rec


def _median(xs: Sequence[float | None]) -> float | None:
    import statistics

    got = [x for x in xs if x is not None]
    return round(statistics.median(got), 3) if got else None


def compare_leases(
    load: LoadSpec,
    spec: LeaseBenchSpec,
    *,
    rounds: int,
    nodes: int = 3,
    conns: int | None = None,
    say: SayFn | None = None,
) -> dict[str, Any]:
    """paxosd (``run_local_lease_bench``) and etcd, alternately, ``rounds`` times each (the
    order flips every round so neither always runs first); medians and ratios."""
    from paxosd.lab.bench_etcd import find_etcd

    tell = say or (lambda _m: None)
    etcd = find_etcd()
    tool = find_etcd_lease_bench(tell)
    rows: dict[str, list[dict[str, Any]]] = {"paxosd": [], "etcd": []}
    for r in range(1, rounds + 1):
        order = ("etcd", "paxosd") if r % 2 else ("paxosd", "etcd")
        for system in order:
            tell(f"round {r}/{rounds}: {system}")
            if system == "paxosd":
                rows["paxosd"].append(run_local_lease_bench(load, spec, nodes=nodes, say=tell))
            else:
                rows["etcd"].append(run_etcd_lease_bench(tool, etcd, load, spec, conns=conns))

    def med(system: str, get: Callable[[dict[str, Any]], float | None]) -> float | None:
        return _median([get(x) for x in rows[system]])

    summary = {
        system: {
            "p99_ms_without_leases": med(
                system, lambda x: x["without_leases"]["latency_ms"]["p99"]
            ),
            "p99_ms_with_leases": med(system, lambda x: x["with_leases"]["latency_ms"]["p99"]),
            "p99_ratio": med(system, lambda x: x["p99_ratio"]),
            "ops_s_without_leases": med(system, lambda x: x["without_leases"]["ops_s"]),
            "ops_s_with_leases": med(system, lambda x: x["with_leases"]["ops_s"]),
            "keepalives_acked_per_s": med(
                system, lambda x: x["keepalives"]["acked_per_s_during_load"]
            ),
            "leases_lost": sum(int(x["leases_lost"]) for x in rows[system]),
        }
        for system in rows
    }
    return {
        "bench": "compare-etcd-leases",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "leases": spec.leases,
        "lease_ttl_s": spec.ttl_s,
        "clients": load.clients,
        "rounds": rows,
        "medians": summary,
        "p99_aim": P99_AIM,
    }
