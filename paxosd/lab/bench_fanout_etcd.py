"""The etcd side of ``paxosctl bench --compare-etcd --op txn`` and ``paxosctl bench fanout
--compare-etcd``: the same shapes on a 3-member etcd 3.4 through its own Go client.

The generator is ``etcd-fanout`` (``paxosd/lab/etcd_fanout/main.go`` in this repository, built by
its ``build.sh`` from Debian's packages into /tmp, or ``$ETCD_FANOUT``): a closed-loop 2-key
txn load with a compare, and a watch fan-out (W watchers on one member over M gRPC
connections, an open-loop put rate through the leader, latency from each put's
acknowledgement to each event). The etcd cluster is ``bench_etcd.EtcdCluster`` (fresh,
durable, on loopback, stopped at the end). paxosd and etcd run alternately, round by round,
so that both see the same moments of a shared machine; ratios are of medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from paxosd.lab.bench import BenchError, LoadSpec, run_local
from paxosd.lab.bench_etcd import EtcdCluster, EtcdUnavailable, find_etcd
from paxosd.lab.bench_fanout import WatchBenchSpec, run_local_watch_bench

FANOUT_ENV: Final = "ETCD_FANOUT"
FANOUT_DEFAULT: Final = Path("/tmp/etcd-fanout")
BUILD_TIMEOUT_S: Final = 1200.0
SayFn = Callable[[str], None]


def find_fanout(say: SayFn) -> Path:
    """``$ETCD_FANOUT``, else /tmp/etcd-fanout, built with paxosd/lab/etcd_fanout/build.sh."""
    named = os.environ.get(FANOUT_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise EtcdUnavailable(f"${FANOUT_ENV}={named} is not an executable file")
        return Path(named)
    if os.access(FANOUT_DEFAULT, os.X_OK):
        return FANOUT_DEFAULT
    script = Path(__file__).resolve().parent / "etcd_fanout" / "build.sh"
    if not script.is_file():
        raise EtcdUnavailable(f"no {FANOUT_DEFAULT} and no {script} to build it")
    say(f"building {FANOUT_DEFAULT} with {script}")
    try:
        done = subprocess.run(
            ["bash", str(script)],
            env=os.environ | {"BIN_DIR": str(FANOUT_DEFAULT.parent)},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EtcdUnavailable(f"{script} did not finish in {BUILD_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0 or not os.access(FANOUT_DEFAULT, os.X_OK):
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise EtcdUnavailable(f"building etcd-fanout failed: {tail[0]}")
    return FANOUT_DEFAULT


def _run(cmd: Sequence[str], limit_s: float) -> dict[str, Any]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"etcd-fanout did not finish in {limit_s:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"etcd-fanout exited with code {done.returncode}: {tail[0]}")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            rec: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return rec
    raise BenchError("etcd-fanout printed no RESULT line")


def _ms(us: object) -> float | None:
    return round(float(us) / 1000, 3) if isinstance(us, int | float) and us >= 0 else None


def _median(xs: Sequence[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return round(statistics.median(got), 3) if got else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def compare_txn(spec: LoadSpec, *, rounds: int, conns: int | None, say: SayFn) -> dict[str, Any]:
    """``--op txn`` on paxosd (``run_local``) and on etcd, alternately."""
    etcd = find_etcd()
    tool = find_fanout(say)
    rows: dict[str, list[dict[str, Any]]] = {"paxosd": [], "etcd": []}
    for r in range(1, rounds + 1):
        order = ("paxosd", "etcd") if r % 2 else ("etcd", "paxosd")
        for system in order:
            say(f"round {r}/{rounds}: {system}, txn with {spec.clients} clients")
            if system == "paxosd":
                rep = run_local(spec)
                rows["paxosd"].append(
                    {
                        "ops_s": rep["ops_per_s"],
                        "p50_ms": rep["latency_ms"]["p50"],
                        "p99_ms": rep["latency_ms"]["p99"],
                        "errors": rep["errors_total"],
                        "server_cpu_ms_per_op": rep["server"]["cpu_s_per_1000_ops"],
                    }
                )
                continue
            with tempfile.TemporaryDirectory(prefix="paxosd-etcd-txn-") as tmp:
                cluster = EtcdCluster(etcd, Path(tmp))
                try:
                    leader = cluster.start()
                    rec = _run(
                        [
                            str(tool),
                            *("--op", "txn", "--endpoints", leader.client_url),
                            *("--clients", str(spec.clients)),
                            *("--conns", str(conns or spec.clients)),
                            *("--duration", f"{spec.duration_s:g}"),
                            *("--warmup", f"{spec.warmup_s:g}"),
                            *("--keys", str(spec.keys), "--value-size", str(spec.value_bytes)),
                        ],
                        spec.duration_s + spec.warmup_s + 120,
                    )
                finally:
                    cluster.stop()
            rows["etcd"].append(
                {
                    "ops_s": rec["ops_s"],
                    "p50_ms": _ms(rec.get("p50_us")),
                    "p99_ms": _ms(rec.get("p99_us")),
                    "errors": rec.get("errors"),
                }
            )
    p = _median([x["ops_s"] for x in rows["paxosd"]])
    e = _median([x["ops_s"] for x in rows["etcd"]])
    return {
        "bench": "compare-etcd-txn",
        "clients": spec.clients,
        "etcd_conns": conns or spec.clients,
        "rounds": rows,
        "median_ops_s": {"paxosd": p, "etcd": e},
        "paxosd_over_etcd": _ratio(p, e),
    }


def etcd_watch(tool: Path, etcd: str, spec: WatchBenchSpec, on: str) -> dict[str, Any]:
    """The fan-out on a fresh etcd: watchers on the leader or a follower, puts to the leader."""
    with tempfile.TemporaryDirectory(prefix="paxosd-etcd-watch-") as tmp:
        cluster = EtcdCluster(etcd, Path(tmp))
        try:
            leader = cluster.start()
            target = leader if on == "leader" else next(m for m in cluster.members if m != leader)
            return _run(
                [
                    str(tool),
                    *("--op", "watch", "--endpoint", target.client_url),
                    *("--put-endpoint", leader.client_url, "--pid", str(target.proc.pid)),
                    *("--watchers", str(spec.watchers), "--conns", str(spec.connections)),
                    *("--rate", f"{spec.rate:g}", "--duration", f"{spec.duration_s:g}"),
                    *("--warmup", f"{spec.warmup_s:g}", "--keys", str(spec.keys)),
                    *("--value-size", str(spec.value_bytes)),
                ],
                spec.duration_s + spec.warmup_s + 300,
            )
        finally:
            cluster.stop()


def compare_watch(spec: WatchBenchSpec, *, rounds: int, on: str, say: SayFn) -> dict[str, Any]:
    """``bench fanout`` on paxosd and on etcd, alternately."""
    etcd = find_etcd()
    tool = find_fanout(say)
    rows: dict[str, list[dict[str, Any]]] = {"paxosd": [], "etcd": []}
    for r in range(1, rounds + 1):
        order = ("paxosd", "etcd") if r % 2 else ("etcd", "paxosd")
        for system in order:
            say(f"round {r}/{rounds}: {system}, {spec.watchers} watchers, {spec.rate:g} puts/s")
            if system == "paxosd":
                rep = run_local_watch_bench(spec, on=on, say=say)
                ev, lat, node = rep["events"], rep["latency_ms"], rep["node"]
                rows["paxosd"].append(
                    {
                        "delivered_per_s": ev["delivered_per_s"],
                        "delivered_share": _ratio(
                            ev["delivered_in_window"], ev["expected_in_window"]
                        ),
                        "p50_ms": lat["p50"],
                        "p99_ms": lat["p99"],
                        "rss_mb_after": node["rss_mb_after"],
                        "rss_peak_mb": node["rss_peak_mb"],
                        "node_cores": node["cores"],
                        "puts_per_s_achieved": rep["puts"]["per_s_achieved"],
                        "receiver_busiest_cores": rep["receivers"]["busiest_cores"],
                        "watchers_behind_at_end": ev["watchers_behind_at_end"],
                    }
                )
                continue
            rec = etcd_watch(tool, etcd, spec, on)
            cpu = rec.get("cpu_s")
            total_s = spec.warmup_s + spec.duration_s
            rows["etcd"].append(
                {
                    "delivered_per_s": round(rec["delivered_in_window"] / spec.duration_s),
                    "delivered_share": _ratio(
                        rec["delivered_in_window"], rec["expected_in_window"]
                    ),
                    "p50_ms": _ms(rec.get("p50_us")),
                    "p99_ms": _ms(rec.get("p99_us")),
                    "rss_mb_after": rec.get("rss_mb_after"),
                    "rss_peak_mb": rec.get("rss_peak_mb"),
                    "node_cores": None if cpu is None else round(cpu / total_s, 2),
                    "puts_per_s_achieved": rec.get("puts_per_s_achieved"),
                }
            )
    med = {
        s: {
            k: _median([x[k] for x in rows[s]])
            for k in ("delivered_per_s", "p50_ms", "p99_ms", "rss_mb_after")
        }
        for s in rows
    }
    return {
        "bench": "compare-etcd-watch",
        "shape": {
            "watchers": spec.watchers,
            "connections": spec.connections,
            "puts_per_s": spec.rate,
            "duration_s": spec.duration_s,
            "watch_node": on,
        },
        "rounds": rows,
        "medians": med,
        "paxosd_over_etcd": {
            k: _ratio(med["paxosd"][k], med["etcd"][k])
            for k in ("delivered_per_s", "p50_ms", "p99_ms", "rss_mb_after")
        },
    }
