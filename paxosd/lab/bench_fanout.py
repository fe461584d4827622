"""``paxosctl bench fanout``: watch fan-out — W watchers on one node, an open-loop put rate on
their prefix, the delay from each put's acknowledgement to each watcher's event.

Shape (etcd's ``benchmark watch-latency`` measures the same delay, put acknowledged to event
received): W prefix watchers on one member, spread over C connections (many watches per
connection, as etcd's clients multiplex watches on one gRPC stream), in P receiver processes
(``python -m paxosd.lab.bench_fanout _receiver``); one putter process-thread-pool issues R
puts/s on the prefix, on its own schedule (open loop: a put that is late goes at once, none
is skipped), through the leader.

Latency: the putter writes each put's acknowledgement time (CLOCK_MONOTONIC, one clock for
every process on the host) into a shared file-backed array indexed by revision; a receiver
reads it when the event arrives (an event that arrives before its acknowledgement is held
and resolved at the end, as 0). Only puts acknowledged inside the measured window count.
The node's RSS (now and peak) and CPU come from /proc. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from paxosd.lab.bench import (
    BenchError,
    Histogram,
    latency_summary_ms,
    proc_cpu_s,
    proc_rss_mb,
)

Address = tuple[str, int]
WATCHERS_MAX: Final = 10_000
CONNECTIONS_MAX: Final = 1_000
RATE_MAX: Final = 100_000.0
DURATION_S_MAX: Final = 3600.0
# The shared acknowledgement array: one int64 per revision of the run, bounded.
ACK_SLOTS_MAX: Final = 20_000_000
PUTTERS: Final = 16  # threads issuing the puts (each one request in flight)
DRAIN_S: Final = 15.0  # after the window, how long receivers wait for the last events
_LINE_BYTES_MAX: Final = 1 << 20
_READY_TIMEOUT_S: Final = 120.0
_I64 = struct.Struct("<q")


@dataclass(frozen=True, slots=True)
class WatchBenchSpec:
    watchers: int = 1000
    connections: int = 10
    processes: int = 2
    rate: float = 1000.0  # puts per second on the watched prefix
    duration_s: float = 10.0
    warmup_s: float = 2.0
    value_bytes: int = 100
    keys: int = 1000
    timeout_ms: int = 5000

    def __post_init__(self) -> None:
        if not 1 <= self.watchers <= WATCHERS_MAX:
            raise ValueError(f"watchers must be 1..{WATCHERS_MAX}")
        if not 1 <= self.connections <= min(self.watchers, CONNECTIONS_MAX):
            raise ValueError(f"connections must be 1..min(watchers, {CONNECTIONS_MAX})")
        if not 1 <= self.processes <= self.connections:
            raise ValueError("processes must be 1..connections")
        if not 0 < self.rate <= RATE_MAX:
            raise ValueError(f"rate must be in (0, {RATE_MAX:g}] puts/s")
        if not 0 < self.duration_s <= DURATION_S_MAX or not 0 <= self.warmup_s <= 600:
            raise ValueError("duration must be in (0, 3600] s, warm-up in [0, 600]")
        if self.slots > ACK_SLOTS_MAX:
            raise ValueError(f"rate x time is over {ACK_SLOTS_MAX:,} puts")

    @property
    def slots(self) -> int:
        """Revisions the acknowledgement array covers: every put of the run, with room."""
        return int(self.rate * (self.warmup_s + self.duration_s) * 1.2) + 1000


# ---------------------------------------------------------------------------------- receiver


@dataclass(slots=True)
class _Receiver:
    hist: Histogram = field(default_factory=Histogram)
    events: int = 0  # every event received
    counted: int = 0  # events of puts acknowledged in the window
    early: list[tuple[int, int]] = field(default_factory=list)  # (revision, receipt ns)
    last: dict[int, int] = field(default_factory=dict)  # watch id -> last revision
    errors: list[str] = field(default_factory=list)


def _receiver_main() -> None:
    """``python -m paxosd.lab.bench_fanout _receiver``: stdin a JSON job line (the key is on
    stdin, never in argv), stdout ``ready`` once every watch is created, then one
    ``result`` line after the parent's ``stop`` line (or the drain deadline)."""
    from paxosd.net.framing import WatchCreate, WatchResponse
    from paxosd.net.transport import ClientConnection

    job = json.loads(sys.stdin.readline(_LINE_BYTES_MAX))
    address = (str(job["address"][0]), int(job["address"][1]))
    key = bytes.fromhex(job["key_hex"])
    watch_ids: list[list[int]] = job["watch_ids"]  # per connection
    rev0, slots = int(job["rev0"]), int(job["slots"])
    acks = mmap.mmap(os.open(job["acks"], os.O_RDONLY), slots * 8, access=mmap.ACCESS_READ)
    stats = _Receiver()
    lock = threading.Lock()
    stop = threading.Event()
    window: list[int] = [0, 0]  # measured window [t0, t1] of acknowledgement times, ns
    conns = []
    for ids in watch_ids:
        conn = ClientConnection.connect(
            address, client_key=key, client_id=secrets.randbelow(1 << 31), timeout_ms=10_000
        )
        for wid in ids:
            conn.send(WatchCreate(wid, job["prefix"], prefix=True, start_revision=rev0 + 1))
        conns.append((conn, set(ids)))

    def ack_of(revision: int) -> int:
        i = revision - rev0
        if not 0 <= i < slots:
            return -1
        return int(_I64.unpack_from(acks, i * 8)[0])

    def record(revision: int, now: int) -> None:
        t_ack = ack_of(revision)
        if t_ack == 0:
            stats.early.append((revision, now))
        elif window[0] <= t_ack <= window[1]:
            stats.counted += 1
            stats.hist.record(max(0, now - t_ack) // 1000)

    created = threading.Semaphore(0)

    def pump(conn: Any, ids: set[int]) -> None:
        waiting = set(ids)
        while not stop.is_set():
            try:
                bodies = conn.recv(200)
            except Exception as e:  # reported; the run goes on without this connection
                with lock:
                    stats.errors.append(f"{type(e).__name__}: {e}")
                return
            now = time.monotonic_ns()
            with lock:
                for b in bodies:
                    if not isinstance(b, WatchResponse):
                        continue
                    if b.created and b.watch_id in waiting:
                        waiting.discard(b.watch_id)
                        if not waiting:
                            created.release()
                    if b.canceled:
                        stats.errors.append(f"watch {b.watch_id} canceled: {b.reason}")
                    for ev in b.events:
                        stats.events += 1
                        stats.last[b.watch_id] = ev.kv.mod_revision
                        record(ev.kv.mod_revision, now)

    threads = [
        threading.Thread(target=pump, args=(c, ids), daemon=True, name=f"recv-{i}")
        for i, (c, ids) in enumerate(conns)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + _READY_TIMEOUT_S
    for _ in conns:
        if not created.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    print(json.dumps({"type": "ready"}), flush=True)
    start = json.loads(sys.stdin.readline(_LINE_BYTES_MAX))
    window[0], window[1] = int(start["t0_ns"]), int(start["t1_ns"])
    cpu0, wall0 = time.process_time(), time.monotonic()
    last_line = sys.stdin.readline(_LINE_BYTES_MAX)  # "stop" with the final revision
    final = int(json.loads(last_line)["final_revision"]) if last_line else 0
    drain_end = time.monotonic() + float(job["drain_s"])
    all_ids = [w for ids in watch_ids for w in ids]
    while time.monotonic() < drain_end:
        with lock:
            if all(stats.last.get(w, 0) >= final for w in all_ids):
                break
        time.sleep(0.05)
    stop.set()
    cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    for t in threads:
        t.join(2)
    with lock:
        for revision, _now in stats.early:
            t_ack = ack_of(revision)
            if window[0] <= t_ack <= window[1]:
                stats.counted += 1
                stats.hist.record(0)  # it came before its acknowledgement
        behind = sum(1 for w in all_ids if stats.last.get(w, 0) < final)
        result = {
            "type": "result",
            "events": stats.events,
            "counted": stats.counted,
            "early": len(stats.early),
            "watchers_behind_at_end": behind,
            "errors": stats.errors[:5],
            "cpu_s": round(cpu_s, 2),
            "cores": round(cpu_s / max(wall_s, 1e-9), 2),
            "hist": stats.hist.to_wire(),
        }
    print(json.dumps(result, separators=(",", ":")), flush=True)
    for c, _ in conns:
        c.close()


# ---------------------------------------------------------------------------------- parent


def _putters(
    endpoints: Sequence[Address],
    key: bytes,
    spec: WatchBenchSpec,
    prefix: str,
    acks: mmap.mmap,
    rev0: int,
    t_start: float,
    t_stop: float,
) -> tuple[list[int], Histogram, list[str]]:
    """Open loop: put k goes at t_start + k / rate (or at once when late). Returns the
    acknowledged revisions, the put latencies (from the scheduled time: late starts count)
    and errors."""
    from paxosd.client.client import Client
    from paxosd.statemachine.commands import Put, Written

    value = b"v" * spec.value_bytes
    lock = threading.Lock()
    revisions: list[int] = []
    hist = Histogram()
    errors: list[str] = []
    total = int((t_stop - t_start) * spec.rate)

    def run(i: int) -> None:
        with Client(endpoints, key, timeout_ms=spec.timeout_ms, site="bench") as c:
            for k in range(i, total, PUTTERS):
                due = t_start + k / spec.rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    r = c.execute(Put(key=f"{prefix}{k % spec.keys:06d}", value=value))
                except Exception as e:  # counted; the run goes on
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                now_ns = time.monotonic_ns()
                if isinstance(r, Written) and 0 <= r.revision - rev0 < spec.slots:
                    _I64.pack_into(acks, (r.revision - rev0) * 8, now_ns)
                    with lock:
                        revisions.append(r.revision)
                        hist.record(max(0, now_ns - int(due * 1e9)) // 1000)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(PUTTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(t_stop - time.monotonic() + spec.timeout_ms / 1000 + 10)
    return revisions, hist, errors


def run_watch_bench(
    spec: WatchBenchSpec,
    endpoints: Sequence[Address],
    key: bytes,
    watch_node: Address,
    *,
    node_pid: int | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Run the fan-out against a running cluster: ``endpoints`` for the puts, the watchers
    all on ``watch_node``; ``node_pid`` (that node's process on this machine) for RSS/CPU."""
    from paxosd.client.client import Client
    from paxosd.statemachine.commands import Put, Written

    prefix = f"bench-watch/{secrets.token_hex(3)}/"
    with Client(endpoints, key, timeout_ms=spec.timeout_ms) as c:
        r = c.execute(Put(key=f"{prefix}start", value=b"0"))
    if not isinstance(r, Written) or not r.revision:
        raise BenchError(f"the cluster reports no revision for a put ({r!r}): no watches here")
    rev0 = r.revision
    scratch = Path(tempfile.mkdtemp(prefix="paxosd-bench-watch-"))
    acks_path = scratch / "acks"
    with open(acks_path, "wb") as f:
        f.truncate(spec.slots * 8)
    fd = os.open(acks_path, os.O_RDWR)
    acks = mmap.mmap(fd, spec.slots * 8)
    os.close(fd)
    ids = list(range(1, spec.watchers + 1))
    per_conn = [ids[i :: spec.connections] for i in range(spec.connections)]
    per_proc = [per_conn[i :: spec.processes] for i in range(spec.processes)]
    procs: list[subprocess.Popen[bytes]] = []
    rss_before = proc_rss_mb(node_pid) if node_pid else (None, None)
    try:
        say(f"{spec.watchers} watchers over {spec.connections} connections")
        for i, conn_ids in enumerate(per_proc):
            err = open(scratch / f"receiver-{i}.stderr", "wb")  # noqa: SIM115 (closed below)
            p = subprocess.Popen(
                [sys.executable, "-m", "paxosd.lab.bench_fanout", "_receiver"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=_env(),
            )
            err.close()
            procs.append(p)
            job = {
                "address": list(watch_node),
                "key_hex": key.hex(),
                "watch_ids": conn_ids,
                "prefix": prefix,
                "rev0": rev0,
                "slots": spec.slots,
                "acks": str(acks_path),
                "drain_s": DRAIN_S,
            }
            _send(p, job)
        for i, p in enumerate(procs):
            line = _readline(p, _READY_TIMEOUT_S + 10)
            if json.loads(line or "{}").get("type") != "ready":
                raise BenchError(f"receiver {i} did not get ready: {_tail(scratch, i)}")
        say(f"putting {spec.rate:g}/s for {spec.warmup_s:g} + {spec.duration_s:g} s")
        t_start = time.monotonic() + 0.2
        t0 = t_start + spec.warmup_s
        t1 = t0 + spec.duration_s
        for p in procs:
            _send(p, {"t0_ns": int(t0 * 1e9), "t1_ns": int(t1 * 1e9)})
        cpu0 = proc_cpu_s(node_pid) if node_pid else None
        revisions, put_hist, put_errors = _putters(
            endpoints, key, spec, prefix, acks, rev0, t_start, t1
        )
        cpu1 = proc_cpu_s(node_pid) if node_pid else None
        put_s = time.monotonic() - t_start  # the first put was due at t_start
        final = max(revisions, default=rev0)
        say("draining")
        for p in procs:
            _send(p, {"final_revision": final})
        results = []
        for i, p in enumerate(procs):
            line = _readline(p, DRAIN_S + 30)
            if not line:
                raise BenchError(f"receiver {i} gave no result: {_tail(scratch, i)}")
            results.append(json.loads(line))
        rss_after = proc_rss_mb(node_pid) if node_pid else (None, None)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        acks.close()
    hist = Histogram()
    for res in results:
        hist.merge(Histogram.from_wire(res["hist"]))
    counted = sum(int(res["counted"]) for res in results)
    measured_puts = round(spec.rate * spec.duration_s)
    cpu = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2)
    return {
        "bench": "fanout",
        "shape": {
            "watchers": spec.watchers,
            "connections": spec.connections,
            "receiver_processes": spec.processes,
            "puts_per_s": spec.rate,
            "duration_s": spec.duration_s,
            "warmup_s": spec.warmup_s,
            "value_bytes": spec.value_bytes,
            "keys": spec.keys,
        },
        "puts": {
            "acknowledged": len(revisions),  # warm-up included
            # What the putters achieved: below --rate, the cluster (or the machine) could not
            # take the puts as scheduled, and the delays include that.
            "per_s_achieved": round(len(revisions) / max(put_s, 1e-9)),
            "errors": len(put_errors),
            "error_sample": put_errors[:3],
            "latency_from_schedule_ms": latency_summary_ms(put_hist),
        },
        "events": {
            "expected_in_window": measured_puts * spec.watchers,
            "delivered_in_window": counted,
            "delivered_per_s": round(counted / spec.duration_s),
            "received_total": sum(int(res["events"]) for res in results),
            "before_ack": sum(int(res["early"]) for res in results),
            "watchers_behind_at_end": sum(int(res["watchers_behind_at_end"]) for res in results),
            "receiver_errors": [e for res in results for e in res["errors"]][:5],
        },
        "latency_ms": latency_summary_ms(hist),
        # The receivers' own CPU (Python decoding every event): near a core each means they,
        # not the node, may be what limits the delivered rate.
        "receivers": {
            "processes": len(results),
            "cpu_s": round(sum(float(res["cpu_s"]) for res in results), 2),
            "busiest_cores": max(float(res["cores"]) for res in results),
        },
        "node": {
            "pid": node_pid,
            "rss_mb_before": rss_before[0],
            "rss_mb_after": rss_after[0],
            "rss_peak_mb": rss_after[1],
            "cpu_s": cpu,
            "cores": None if cpu is None else round(cpu / (spec.warmup_s + spec.duration_s), 2),
        },
        "spec": asdict(spec),
    }


def _env() -> dict[str, str]:
    here = str(Path(__file__).resolve().parent.parent.parent)
    pythonpath = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + pythonpath if pythonpath else "")}


def _send(p: subprocess.Popen[bytes], msg: dict[str, Any]) -> None:
    assert p.stdin is not None
    p.stdin.write((json.dumps(msg) + "\n").encode())
    p.stdin.flush()


def _readline(p: subprocess.Popen[bytes], timeout_s: float) -> str:
    """One line of the receiver's stdout within ``timeout_s`` ("" if none)."""
    assert p.stdout is not None
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(p.stdout.readline(_LINE_BYTES_MAX)))  # type: ignore[union-attr]
    t.daemon = True
    t.start()
    t.join(timeout_s)
    return out[0].decode() if out else ""


def _tail(scratch: Path, i: int) -> str:
    try:
        text = (scratch / f"receiver-{i}.stderr").read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-5:])


def run_local_watch_bench(
    spec: WatchBenchSpec,
    *,
    nodes: int = 3,
    on: str = "follower",
    parent_dir: Path | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """A fresh durable local cluster, the fan-out on one node (``on``: leader | follower),
    then stop and remove it."""
    import shutil

    from paxosd.lab.localcluster import LocalCluster

    parent = parent_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="paxosd-bench-watch-", dir=parent))
    try:
        say(f"starting {nodes} durable nodes in {root}")
        cluster = LocalCluster.create(root / "cluster", nodes, durability="fsync")
        try:
            try:
                leader = int(cluster.up().get("node_id") or 0)
            except Exception as e:
                raise BenchError(f"local cluster did not start: {e}") from None
            ids = cluster.node_ids()
            target = leader if on == "leader" else next(k for k in ids if k != leader)
            eps = dict(zip(ids, cluster.endpoints(), strict=True))
            report = run_watch_bench(
                spec,
                [eps[leader]] + [a for k, a in eps.items() if k != leader],
                cluster.client_key(),
                eps[target],
                node_pid=cluster.pid(target),
                say=say,
            )
        finally:
            cluster.down()
        report["target"] = {"kind": "local", "nodes": nodes, "watch_node": f"n{target}-{on}"}
        return report
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["_receiver"]:
        _receiver_main()
    else:
        sys.exit("usage: python -m paxosd.lab.bench_fanout _receiver (started by paxosctl bench)")
