"""``paxosctl bench --compare-etcd``: one closed-loop load on paxosd and on etcd, in one sitting.

A speed claim against etcd holds only if etcd is driven the way its users drive it: through its
gRPC API with its own Go client (``clientv3``), not through the JSON gateway, which costs etcd's
leader 70-100 us of CPU per request and so flatters whoever is compared with it. The etcd side
here is therefore ``etcd-go-load`` (``../shared/anchors/etcd-go``: N closed-loop goroutines over
M gRPC connections calling ``clientv3.Client.Do``, modelled on etcd's ``tools/benchmark``), run
against a 3-member etcd 3.4 (Debian's ``etcd-server``) that this module starts on loopback and
stops again. The paxosd side is ``run_local``: a fresh durable 3-node cluster per run, as
``paxosctl bench --local``.

The two systems run **alternately** (paxosd then etcd in odd rounds, etcd then paxosd in even
ones), so that both see the same moments of a shared, noisy machine; the report quotes each
run, the load average before it, and ratios of medians and of each interleaved pair.

Where etcd or the generator cannot be had (no ``etcd`` binary, no Go toolchain, no apt), nothing
is started: ``EtcdUnavailable`` says what is missing and the CLI exits with "unavailable".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from paxosd.lab.bench import BenchError, LoadSpec, run_local

SayFn = Callable[[str], None]

# Where the generator is looked for and built (the anchors' etcd-go/README.md: build.sh writes
# $BIN_DIR/etcd-go-load, /tmp by default).
ETCD_GO_ENV: Final = "ETCD_GO_LOAD"
ETCD_GO_DEFAULT: Final = Path("/tmp/etcd-go-load")
ETCD_GO_SRC_ENV: Final = "ETCD_GO_SRC"
ETCD_GO_SRC_DEFAULT: Final = Path("/work/shared/anchors/etcd-go")
ETCD_BIN_ENV: Final = "ETCD_BIN"
# The build may run apt-get (golang-go, golang-etcd-server-dev: ~250 MB) before compiling.
BUILD_TIMEOUT_S: Final = 1200.0
ETCD_START_TIMEOUT_S: Final = 30.0
ETCD_STOP_TIMEOUT_S: Final = 15.0
MEMBERS: Final = 3
# The RESULT record's fields this module reads; a line without them is not etcd-go's.
RESULT_FIELDS: Final = ("ops_s", "n", "errors", "cpu")


class EtcdUnavailable(Exception):
    """etcd or its load generator cannot be had on this machine: the comparison is skipped."""


# ------------------------------------------------------------------------------ RESULT line


def parse_results(output: str) -> list[dict[str, Any]]:
    """The ``RESULT {json}`` records in etcd-go-load's stdout (one per run), in order.

    Raises ValueError on a RESULT line that is not a JSON object with the fields read here:
    a silently skipped run would make a sitting look complete when it is not.
    """
    records = []
    for line in output.splitlines():
        if not line.startswith("RESULT "):
            continue
        try:
            rec = json.loads(line[len("RESULT ") :])
        except json.JSONDecodeError as e:
            raise ValueError(f"etcd-go RESULT line is not JSON: {e}") from None
        if not isinstance(rec, dict):
            raise ValueError("etcd-go RESULT line is not a JSON object")
        missing = [f for f in RESULT_FIELDS if f not in rec]
        if missing:
            raise ValueError(f"etcd-go RESULT line lacks {', '.join(missing)}")
        records.append(rec)
    return records


def _ms(us: object) -> float | None:
    return round(float(us) / 1000, 3) if isinstance(us, int | float) else None


def etcd_summary(rec: dict[str, Any], leader: str | None = None) -> dict[str, Any]:
    """One etcd-go run in the units of paxosd's report (ms, us of server CPU per op, cores).

    Server CPU is what etcd-go read from /proc for the members (``etcd-<name>`` in its
    ``cpu.procs_cpu_s``) over its measured window, divided by the replies it counted.
    """
    cpu = rec.get("cpu") or {}
    procs = cpu.get("procs_cpu_s") or {}
    wall = float(cpu.get("wall_s") or rec.get("duration") or 0) or None
    n = int(rec["n"])
    member_cpu = [v for k, v in procs.items() if k.startswith("etcd-")]
    known = [float(v) for v in member_cpu if isinstance(v, int | float)]
    server_cpu_s = sum(known) if member_cpu and len(known) == len(member_cpu) else None
    gen = procs.get("loadgen(self)")
    busy = cpu.get("machine_busy_pct")
    ncpu = int(cpu.get("ncpu") or os.cpu_count() or 1)
    ours = sum(float(v) for v in procs.values() if isinstance(v, int | float))
    return {
        "ops_per_s": float(rec["ops_s"]),
        "ops": n,
        "latency_ms": {
            "p50": _ms(rec.get("p50_us")),
            "p90": _ms(rec.get("p90_us")),
            "p99": _ms(rec.get("p99_us")),
            "max": _ms(rec.get("max_us")),
        },
        "errors_total": int(rec["errors"]),
        "get_misses": int(rec.get("misses") or 0),
        "server_cpu_us_per_op": (
            round(server_cpu_s / n * 1e6, 1) if server_cpu_s is not None and n else None
        ),
        "leader_cpu_us_per_op": (
            round(float(procs[f"etcd-{leader}"]) / n * 1e6, 1)
            if leader and isinstance(procs.get(f"etcd-{leader}"), int | float) and n
            else None
        ),
        "generator_cores": (
            round(float(gen) / wall, 2) if isinstance(gen, int | float) and wall else None
        ),
        "other_cores": (
            round(ncpu * float(busy) / 100 - ours / wall, 2)
            if isinstance(busy, int | float) and wall
            else None
        ),
        "variant": rec.get("variant"),
    }


def paxosd_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of one ``run_local`` report that the comparison puts beside etcd's."""
    per_1000 = report["server"]["cpu_s_per_1000_ops"]  # s per 1,000 ops = ms per op
    return {
        "ops_per_s": report["ops_per_s"],
        "ops": report["ops"],
        "latency_ms": {k: report["latency_ms"][k] for k in ("p50", "p90", "p99", "max")},
        "errors_total": report["errors_total"],
        "get_misses": report["get_misses"],
        "server_cpu_us_per_op": None if per_1000 is None else round(per_1000 * 1000, 1),
        "leader_cpu_us_per_op": _paxosd_leader_cpu(report),
        "generator_cores": (
            round(report["generator"]["cpu_s"] / report["workload"]["duration_s"], 2)
            if report["generator"]["cpu_s"] is not None
            else None
        ),
        "other_cores": report["machine"]["other_cores"],
    }


def _paxosd_leader_cpu(report: dict[str, Any]) -> float | None:
    ops = int(report["ops"])
    for node in report["server"]["nodes"]:
        if node["name"].endswith("-leader") and node["cpu_s"] is not None and ops:
            return round(float(node["cpu_s"]) / ops * 1e6, 1)
    return None


# ------------------------------------------------------------------------------ prerequisites


def find_etcd() -> str:
    """The etcd server binary: ``$ETCD_BIN`` or ``etcd`` on PATH."""
    named = os.environ.get(ETCD_BIN_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise EtcdUnavailable(f"${ETCD_BIN_ENV}={named} is not an executable file")
        return named
    found = shutil.which("etcd")
    if found is None:
        raise EtcdUnavailable(
            "no etcd server on PATH (Debian: apt-get install etcd-server; or set $ETCD_BIN)"
        )
    return found


def etcd_version(etcd: str) -> str:
    try:
        out = subprocess.run(
            [etcd, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EtcdUnavailable(f"{etcd} --version failed: {e}") from None
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("etcd Version:").strip() or "unknown"


def find_etcd_go(*, build: bool = True, say: SayFn | None = None) -> Path:
    """The etcd-go load generator: ``$ETCD_GO_LOAD`` if set (never built: it was named),
    else /tmp/etcd-go-load, built first with etcd-go's ``build.sh`` (from ``$ETCD_GO_SRC``,
    default the anchors' directory) if it is missing and ``build`` is on."""
    named = os.environ.get(ETCD_GO_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise EtcdUnavailable(f"${ETCD_GO_ENV}={named} is not an executable file")
        return Path(named)
    if os.access(ETCD_GO_DEFAULT, os.X_OK):
        return ETCD_GO_DEFAULT
    src = Path(os.environ.get(ETCD_GO_SRC_ENV) or ETCD_GO_SRC_DEFAULT)
    if not build:
        raise EtcdUnavailable(f"no {ETCD_GO_DEFAULT} (build it with {src}/build.sh)")
    script = src / "build.sh"
    if not script.is_file():
        raise EtcdUnavailable(
            f"no {ETCD_GO_DEFAULT} and no {script} to build it from "
            f"(set ${ETCD_GO_SRC_ENV} to etcd-go's directory, or ${ETCD_GO_ENV} to a binary)"
        )
    if say:
        say(f"building {ETCD_GO_DEFAULT} with {script} (may apt-get install golang-go ...)")
    env = os.environ | {"BIN_DIR": str(ETCD_GO_DEFAULT.parent)}
    try:
        done = subprocess.run(
            ["bash", str(script)],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EtcdUnavailable(f"{script} did not finish in {BUILD_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0 or not os.access(ETCD_GO_DEFAULT, os.X_OK):
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise EtcdUnavailable(f"building etcd-go failed ({script}): {tail[0]}")
    return ETCD_GO_DEFAULT


# ------------------------------------------------------------------------------ etcd cluster


def _ports_free(ports: Sequence[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _http_json(url: str, path: str, body: dict[str, Any] | None, timeout: float = 2.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback URLs only)
        return json.loads(r.read() or b"{}")


@dataclass(slots=True)
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    proc: subprocess.Popen[bytes]


class EtcdCluster:
    """A 3-member etcd on 127.0.0.1 in ``root`` (default settings: etcd fsyncs its WAL), like
    the anchors' ``etcd_cluster.py``. It writes ``root/cluster.json`` in that script's format,
    which etcd-go reads for the member PIDs it measures. Stops only the processes it started."""

    def __init__(self, etcd: str, root: Path) -> None:
        self.etcd = etcd
        self.root = root
        self.members: list[EtcdMember] = []
        self.leader: EtcdMember | None = None

    @property
    def cluster_json(self) -> Path:
        return self.root / "cluster.json"

    def start(self) -> EtcdMember:
        base = self._pick_base()
        names = [f"e{i + 1}" for i in range(MEMBERS)]
        ports = [(base + 100 * i, base + 100 * i + 1) for i in range(MEMBERS)]
        initial = ",".join(
            f"{n}=http://127.0.0.1:{pp}" for n, (_, pp) in zip(names, ports, strict=True)
        )
        for name, (cp, pp) in zip(names, ports, strict=True):
            cmd = [
                self.etcd,
                *("--name", name, "--data-dir", str(self.root / name)),
                *("--listen-client-urls", f"http://127.0.0.1:{cp}"),
                *("--advertise-client-urls", f"http://127.0.0.1:{cp}"),
                *("--listen-peer-urls", f"http://127.0.0.1:{pp}"),
                *("--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}"),
                *("--initial-cluster", initial, "--initial-cluster-token", "paxosd-bench"),
                *("--initial-cluster-state", "new", "--logger", "zap"),
            ]
            with open(self.root / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.members.append(
                EtcdMember(name, f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}", proc)
            )
        info = {
            "members": [
                {"name": m.name, "pid": m.proc.pid, "client_url": m.client_url}
                for m in self.members
            ]
        }
        self.cluster_json.write_text(json.dumps(info, indent=1))
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            dead = [m for m in self.members if m.proc.poll() is not None]
            if dead:
                raise EtcdUnavailable(f"etcd member {dead[0].name} exited: {self._tail(dead[0])}")
            leader = self.find_leader()
            if leader is not None:
                self.leader = leader
                return leader
            time.sleep(0.2)
        raise EtcdUnavailable(
            f"etcd elected no leader in {ETCD_START_TIMEOUT_S:.0f} s: {self._tail(self.members[0])}"
        )

    def find_leader(self) -> EtcdMember | None:
        for m in self.members:
            try:
                st = _http_json(m.client_url, "/v3/maintenance/status", {})
            except (OSError, urllib.error.URLError, ValueError):
                continue
            if st.get("leader") and st["leader"] == st.get("header", {}).get("member_id"):
                return m
        return None

    def pids(self) -> dict[str, int]:
        return {f"etcd-{m.name}": m.proc.pid for m in self.members}

    def stop(self) -> None:
        for m in self.members:
            if m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            try:
                m.proc.wait(ETCD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(5)

    def _tail(self, m: EtcdMember) -> str:
        try:
            lines = (self.root / f"{m.name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "empty log"

    @staticmethod
    def _pick_base() -> int:
        # Random ranges, so that sittings started at once by different people rarely collide.
        rng = random.Random()
        for _ in range(200):
            base = 30000 + 300 * rng.randrange(100)
            if _ports_free([base + 100 * i + d for i in range(MEMBERS) for d in (0, 1)]):
                return base
        raise EtcdUnavailable("no free range of ports on loopback for etcd")


# ------------------------------------------------------------------------------ the sitting


def run_etcd_go(
    binary: Path,
    cluster: EtcdCluster,
    spec: LoadSpec,
    conns: int,
    *,
    seed: int = 1,
    prefill_only: bool = False,
) -> dict[str, Any] | None:
    """One etcd-go run against the leader (or, ``prefill_only``, one put of every key)."""
    assert cluster.leader is not None
    cmd = [
        str(binary),
        *("--cluster", str(cluster.cluster_json), "--endpoints", cluster.leader.client_url),
        *("--op", "put" if prefill_only else spec.op, "--proto", "grpc"),
        *("--clients", str(spec.clients), "--conns", str(min(conns, spec.clients))),
        *("--duration", f"{spec.duration_s:g}", "--warmup", f"{spec.warmup_s:g}"),
        *("--runs", "0" if prefill_only else "1", "--seed", str(seed)),
        *("--keys", str(spec.keys), "--value-size", str(spec.value_bytes)),
        *("--consistency", "l"),
        *(("--prefill",) if prefill_only else ()),
    ]
    limit = spec.warmup_s + spec.duration_s + 120 + (spec.keys / 100 if prefill_only else 0)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"etcd-go did not finish in {limit:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"etcd-go exited with code {done.returncode}: {tail[0]}")
    if prefill_only:
        return None
    try:
        records = parse_results(done.stdout)
    except ValueError as e:
        raise BenchError(str(e)) from None
    if len(records) != 1:
        raise BenchError(f"etcd-go printed {len(records)} RESULT lines, expected 1")
    return records[0]


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _median(xs: Sequence[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


def _ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def compare(
    spec: LoadSpec,
    *,
    rounds: int = 2,
    conns: int | None = None,
    nodes: int = 3,
    parent_dir: Path | None = None,
    say: SayFn | None = None,
) -> dict[str, Any]:
    """Run ``rounds`` interleaved pairs of (paxosd, etcd) runs of one shape; the report.

    Raises EtcdUnavailable before anything runs when etcd or etcd-go cannot be had, and
    BenchError when a run fails part-way (no half-sitting is reported as a whole one).
    """
    if spec.op not in ("put", "get"):
        raise ValueError("--compare-etcd measures --op put or get (etcd-go has no mixed load)")
    assert rounds >= 1
    tell = say or (lambda _m: None)
    etcd = find_etcd()
    version = etcd_version(etcd)
    generator = find_etcd_go(say=tell)
    etcd_conns = conns or spec.clients  # like paxosd's generator: one connection per client
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = _loadavg()
    parent = parent_dir or Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="paxosd-bench-etcd-", dir=parent))
    cluster = EtcdCluster(etcd, root)
    runs: list[dict[str, Any]] = []
    try:
        tell(f"starting a {MEMBERS}-member etcd {version} in {root}")
        leader = cluster.start()
        if spec.prefill:
            tell(f"etcd: putting {spec.keys:,} keys once")
            run_etcd_go(generator, cluster, spec, etcd_conns, prefill_only=True)
        for r in range(1, rounds + 1):
            order = ("paxosd", "etcd") if r % 2 else ("etcd", "paxosd")
            for system in order:
                tell(f"round {r}/{rounds}: {system}, {spec.op} with {spec.clients} clients")
                la = _loadavg()
                if system == "paxosd":
                    report = run_local(spec, nodes=nodes, parent_dir=parent)
                    summary = paxosd_summary(report)
                else:
                    now = cluster.find_leader() or leader
                    cluster.leader = now
                    rec = run_etcd_go(generator, cluster, spec, etcd_conns, seed=r)
                    assert rec is not None
                    summary = etcd_summary(rec, now.name)
                    summary["leader"] = now.name
                runs.append({"round": r, "system": system, "loadavg_before": la} | summary)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return _compare_report(spec, runs, rounds, etcd_conns, version, generator, started, load_start)


def _compare_report(
    spec: LoadSpec,
    runs: list[dict[str, Any]],
    rounds: int,
    etcd_conns: int,
    version: str,
    generator: Path,
    started: str,
    load_start: str,
) -> dict[str, Any]:
    def side(system: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["system"] == system]

    def med(system: str, get: Callable[[dict[str, Any]], float | None]) -> float | None:
        return _median([get(r) for r in side(system)])

    def ops(r: dict[str, Any]) -> float | None:
        return float(r["ops_per_s"])

    def p50(r: dict[str, Any]) -> float | None:
        return r["latency_ms"]["p50"]  # type: ignore[no-any-return]

    def p99(r: dict[str, Any]) -> float | None:
        return r["latency_ms"]["p99"]  # type: ignore[no-any-return]

    def cpu(r: dict[str, Any]) -> float | None:
        return r["server_cpu_us_per_op"]  # type: ignore[no-any-return]

    pairs = [
        _ratio(p["ops_per_s"], e["ops_per_s"])
        for p, e in zip(side("paxosd"), side("etcd"), strict=True)
    ]
    summary: dict[str, Any] = {}
    for system in ("paxosd", "etcd"):
        summary[system] = {
            "ops_per_s_median": med(system, ops),
            "p50_ms_median": med(system, p50),
            "p99_ms_median": med(system, p99),
            "server_cpu_us_per_op_median": med(system, cpu),
            "errors_total": sum(r["errors_total"] for r in side(system)),
        }
    pm, em = summary["paxosd"], summary["etcd"]
    return {
        "bench": "kv-vs-etcd",
        "date": started,
        "host": {"cpus": os.cpu_count()},
        "load_average": {"start": load_start, "end": _loadavg()},
        "workload": {
            "op": spec.op,
            "clients": spec.clients,
            "duration_s": spec.duration_s,
            "warmup_s": spec.warmup_s,
            "value_bytes": spec.value_bytes,
            "keys": spec.keys,
            "prefill": spec.prefill,
            "linearizable": spec.op == "get",
            "rounds": rounds,
        },
        "paxosd": {"cluster": "fresh local 3-node durable cluster per run"},
        "etcd": {
            "version": version,
            "members": MEMBERS,
            "generator": f"etcd-go-load (clientv3 gRPC), {generator}",
            "grpc_connections": min(etcd_conns, spec.clients),
            "cluster": "one cluster for the whole sitting, requests to its leader",
        },
        "runs": runs,
        "summary": summary,
        "ratio": {
            "ops_per_s": _ratio(pm["ops_per_s_median"], em["ops_per_s_median"]),
            "ops_per_s_pairs": pairs,
            "p50": _ratio(pm["p50_ms_median"], em["p50_ms_median"]),
            "p99": _ratio(pm["p99_ms_median"], em["p99_ms_median"]),
            "server_cpu_per_op": _ratio(
                pm["server_cpu_us_per_op_median"], em["server_cpu_us_per_op_median"]
            ),
            "note": "paxosd / etcd: above 1 for ops/s means paxosd is faster; "
            "below 1 for latency and CPU means paxosd uses less",
        },
    }
