"""``paxosctl bench``: a closed-loop key-value load generator, and the figures it is read against.

The model is etcd's ``benchmark`` and the anchors' ``kvload.py``: C clients, each with one
request in flight, keys uniform over K, values of B bytes; a warm-up that is not counted,
then D measured seconds. Throughput counts the requests that completed inside the window;
latency runs from sending a request to having its result (client-side queueing included).

Why worker processes: one Python process drives at most one core (the GIL), and an encrypted
client costs tens of microseconds of CPU per request, so 64 clients in one process would
measure the generator, not the cluster. Clients are spread over P processes
(``python -m paxosd.lab.bench _worker``); each drives its share from one thread through a
``paxosd.client.client.Pipeline``: one connection and one session per client, one request in flight
per client (the shape etcd's generator has), without a thread hand-off per request
(``LoadSpec(pipelined=False)``: a thread and a ``Client`` per client, as before). Parent
and workers speak JSON lines over pipes (never pickle); latencies travel as fixed-size
log-linear histograms, so memory is bounded whatever the run length and merging is exact.
The report says how much CPU the generator itself used and how busy its busiest process
was, so a reader can tell when the generator was the limit.

Server CPU comes from /proc/<pid>/stat (utime + stime of every thread) read at the start and
the end of the measured window; RSS from /proc/<pid>/status. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

from paxosd.statemachine.commands import (
    SEQ_MAX,
    Compare,
    Get,
    NotFound,
    Op,
    Put,
    Txn,
    TxnResult,
    Written,
)

Address = tuple[str, int]
OpKind = Literal["put", "get", "mixed", "txn"]
OP_KINDS: Final = ("put", "get", "mixed", "txn")

CLIENTS_MAX: Final = 1024
PROCESSES_MAX: Final = 64
DURATION_S_MAX: Final = 3600.0
VALUE_BYTES_MAX: Final = 512 << 10  # commands.VALUE_BYTES_MAX
KEYS_MAX: Final = 10_000_000
# The memory bound for one daemon (after 1,000,000 puts over 100,000 keys).
RSS_MB_LIMIT: Final = 250.0
# A generator process busier than this share of one core is probably what limits the run.
GENERATOR_BUSY_CORES_WARN: Final = 0.85

# Worker protocol bounds: one JSON line never exceeds this (a histogram is ~50 KB at most).
_LINE_BYTES_MAX: Final = 1 << 20
_PROGRESS_INTERVAL_S: Final = 0.25
_WORKER_START_TIMEOUT_S: Final = 60.0
_START_DELAY_S: Final = 0.2
_MSG_QUEUE_MAX: Final = 10_000
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_PAGE_KB: Final = os.sysconf("SC_PAGE_SIZE") // 1024

ProgressFn = Callable[["Progress"], None]


# ---------------------------------------------------------------------------------- histogram

# Log-linear buckets in microseconds: exact below 256 us, then 128 sub-buckets per power of two
# (relative error under 0.8 %). Fixed size, so a histogram's memory does not grow with the run.
_SUB_BITS: Final = 7
_SUB: Final = 1 << _SUB_BITS
LATENCY_US_MAX: Final = (1 << 40) - 1  # 12.7 days: anything longer is clamped
HIST_BUCKETS: Final = (40 - _SUB_BITS) * _SUB + _SUB  # index of LATENCY_US_MAX, plus one


def bucket_of(us: int) -> int:
    """The histogram bucket holding a latency of ``us`` microseconds."""
    us = min(max(us, 0), LATENCY_US_MAX)
    if us < 2 * _SUB:
        return us
    shift = us.bit_length() - (_SUB_BITS + 1)
    return (shift + 1) * _SUB + (us >> shift) - _SUB


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) in microseconds of bucket ``index``."""
    assert 0 <= index < HIST_BUCKETS
    if index < 2 * _SUB:
        return index, index + 1
    shift = index // _SUB - 1
    low = (index % _SUB + _SUB) << shift
    return low, low + (1 << shift)


@dataclass(slots=True)
class Histogram:
    """Latency counts per bucket, plus the exact extremes (which buckets would blur)."""

    counts: list[int] = field(default_factory=lambda: [0] * HIST_BUCKETS)
    total: int = 0
    sum_us: int = 0
    max_us: int = 0

    def record(self, us: int) -> None:
        self.counts[bucket_of(us)] += 1
        self.total += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.total += other.total
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile_us(self, p: float) -> float:
        """Nearest-rank percentile (as the anchors' ``pct``), at the bucket's midpoint."""
        assert 0 < p <= 100
        if self.total == 0:
            return math.nan
        rank = max(1, math.ceil(p / 100 * self.total))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, high = bucket_bounds(i)
                return min((low + high - 1) / 2, float(self.max_us))
        return float(self.max_us)  # unreachable while total == sum(counts)

    def to_wire(self) -> dict[str, Any]:
        return {
            "buckets": [[i, n] for i, n in enumerate(self.counts) if n],
            "total": self.total,
            "sum_us": self.sum_us,
            "max_us": self.max_us,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        for i, n in data["buckets"]:
            if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < HIST_BUCKETS):
                raise ValueError(f"bad histogram bucket {i!r}")
            h.counts[i] += n
        h.total = int(data["total"])
        h.sum_us = int(data["sum_us"])
        h.max_us = int(data["max_us"])
        if h.total != sum(h.counts):
            raise ValueError("histogram total does not match its buckets")
        return h


def latency_summary_ms(h: Histogram) -> dict[str, float | None]:
    def ms(us: float) -> float | None:
        return None if math.isnan(us) else round(us / 1000, 3)

    return {
        "p50": ms(h.percentile_us(50)),
        "p90": ms(h.percentile_us(90)),
        "p99": ms(h.percentile_us(99)),
        "p99_9": ms(h.percentile_us(99.9)),
        "max": ms(float(h.max_us)) if h.total else None,
        "mean": ms(h.sum_us / h.total) if h.total else None,
    }


# ---------------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of all the threads of ``pid``, in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def proc_rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of ``pid`` in MB (10^6 bytes): now and the peak since it started."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024 / 1e6
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return rss, hwm


def machine_cpu() -> tuple[int, int, int]:
    """(total, idle + iowait, steal) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:9]]
    return sum(vals), vals[3] + vals[4], vals[7] if len(vals) > 7 else 0


# ---------------------------------------------------------------------------------- the spec


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What the generator does. ``read_ratio`` only matters for ``op="mixed"``."""

    op: OpKind = "put"
    clients: int = 1
    duration_s: float = 10.0
    warmup_s: float = 1.0
    value_bytes: int = 100
    keys: int = 10_000
    read_ratio: float = 0.5
    prefill: bool = False
    processes: int = 0  # 0: choose (see default_processes)
    timeout_ms: int = 5000
    seed: int = 1
    # One thread per process drives all of its clients (a paxosd.client.client.Pipeline, one
    # connection per client, one request in flight per client), instead of a thread and a
    # Client per client: the same load for the cluster at a fraction of the generator's CPU.
    pipelined: bool = True

    def __post_init__(self) -> None:
        if self.op not in OP_KINDS:
            raise ValueError(f"op must be one of {', '.join(OP_KINDS)}, not {self.op!r}")
        if not 1 <= self.clients <= CLIENTS_MAX:
            raise ValueError(f"clients must be 1..{CLIENTS_MAX}")
        if not 0 < self.duration_s <= DURATION_S_MAX or not 0 <= self.warmup_s <= DURATION_S_MAX:
            raise ValueError(f"duration must be in (0, {DURATION_S_MAX}] s, warm-up >= 0")
        if not 1 <= self.value_bytes <= VALUE_BYTES_MAX:
            raise ValueError(f"value size must be 1..{VALUE_BYTES_MAX} bytes")
        if not 1 <= self.keys <= KEYS_MAX:
            raise ValueError(f"keys must be 1..{KEYS_MAX}")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ValueError("read ratio must be in [0, 1]")
        if not 0 <= self.processes <= PROCESSES_MAX:
            raise ValueError(f"processes must be 0..{PROCESSES_MAX}")


def default_processes(clients: int) -> int:
    """One process per 16 clients, at most one per core (and at least one).

    Measured on the 2-core VM (BENCHMARKS.md): one process of 64 client threads saturates its
    core (the GIL) well before the cluster does; two processes do not. More processes than
    cores only add context switches on a machine that also runs the servers.
    """
    return max(1, min(math.ceil(clients / 16), os.cpu_count() or 1, clients))


def key_name(i: int) -> str:
    return f"k{i:08d}"


# ---------------------------------------------------------------------------------- worker


@dataclass(slots=True)
class _ClientStats:
    hist: Histogram = field(default_factory=Histogram)
    done: int = 0  # completed in any phase: for the progress display
    ok: int = 0  # completed inside the measured window
    misses: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    fatal: str | None = None


def _error_kind(e: BaseException) -> str:
    from paxosd.client.client import AuthError, BadRequestError, UnavailableError

    if isinstance(e, UnavailableError):
        return "unavailable"
    if isinstance(e, AuthError):
        return "auth"
    if isinstance(e, BadRequestError):
        return "bad_request"
    return type(e).__name__


def txn_op(k1: str, k2: str, value: bytes) -> Txn:
    """``--op txn``: etcd's usual guarded update of two keys — if k1's mod revision is below
    a bound (always true, so every txn writes and the figure is the write path's), put both
    keys; else read k1. One command, one slot, one revision for both keys."""
    return Txn(
        compares=(Compare(key=k1, target="mod", op="<", number=SEQ_MAX),),
        success=(Put(key=k1, value=value), Put(key=k2, value=value)),
        failure=(Get(key=k1),),
    )


def make_op(spec: LoadSpec, rnd: random.Random, value: bytes) -> tuple[Op, bool]:
    """The next request of a client: (op, whether it is a read)."""
    i = rnd.randrange(spec.keys)
    k = key_name(i)
    if spec.op == "txn":
        # Two different keys: a txn that writes one key twice is refused (etcd's rule).
        j = (i + 1 + rnd.randrange(max(1, spec.keys - 1))) % spec.keys
        return txn_op(k, key_name(j), value), False
    read = spec.op == "get" or (spec.op == "mixed" and rnd.random() < spec.read_ratio)
    return (Get(key=k) if read else Put(key=k, value=value)), read


def answered_as_asked(result: object, read: bool) -> bool:
    """A read may find nothing (counted as a miss); a put must be Written, a txn must have
    taken its success branch."""
    if read:
        return True
    if isinstance(result, TxnResult):
        return result.succeeded
    return isinstance(result, Written)


def _run_client(
    client: Any,
    spec: LoadSpec,
    rnd: random.Random,
    value: bytes,
    t_meas0_ns: int,
    t_end_ns: int,
    stats: _ClientStats,
) -> None:
    """One closed-loop client until ``t_end_ns`` (monotonic clock, shared by all processes)."""
    from paxosd.client.client import AuthError

    clock = time.monotonic_ns
    while True:
        op, read = make_op(spec, rnd, value)
        t0 = clock()
        if t0 >= t_end_ns:
            return
        problem: str | None = None
        result: object = None
        try:
            result = client.submit(client.next_command(op), read=read)
        except AuthError as e:
            stats.fatal = str(e)  # every later request would fail the same way
            return
        except Exception as e:  # counted by kind: a bench reports errors, it does not stop
            problem = _error_kind(e)
        t1 = clock()
        stats.done += 1
        if t1 < t_meas0_ns or t1 > t_end_ns:
            continue
        if problem is not None:
            stats.errors[problem] = stats.errors.get(problem, 0) + 1
            continue
        if read and isinstance(result, NotFound):
            stats.misses += 1
        elif not answered_as_asked(result, read):
            kind = f"unexpected_{type(result).__name__}"
            stats.errors[kind] = stats.errors.get(kind, 0) + 1
            continue
        stats.ok += 1
        stats.hist.record((t1 - t0) // 1000)


def _run_pipelined(
    endpoints: Sequence[Address],
    key: bytes,
    spec: LoadSpec,
    rnds: list[random.Random],
    value: bytes,
    t_meas0_ns: int,
    t_end_ns: int,
    stats: list[_ClientStats],
    progress: Callable[[], None],
) -> int:
    """The closed loop of ``_run_client`` for every client of this process at once, from
    one thread: client j is a Session on lane (connection) j with one request in flight.
    Returns how many clients were still waiting when the join deadline passed."""
    from paxosd.client.errors import AuthError, ClientError
    from paxosd.client.pipeline import Pipeline, Session

    clock = time.monotonic_ns
    n = len(stats)
    sessions = [Session(site="bench") for _ in range(n)]
    started = [0] * n
    reads = [False] * n
    pipe: Pipeline[int] = Pipeline(endpoints, key, lanes=n, timeout_ms=spec.timeout_ms)
    active = 0

    def start(j: int) -> bool:
        t0 = clock()
        if t0 >= t_end_ns:
            return False
        op, reads[j] = make_op(spec, rnds[j], value)
        started[j] = t0
        pipe.submit(sessions[j].next_command(op), j, lane=j, read=reads[j])
        return True

    try:
        for j in range(n):
            active += start(j)
        # A client still waiting at t_end gets at most its own timeout, plus slack.
        join_deadline_ns = t_end_ns + int((spec.timeout_ms / 1000 + 5.0) * 1e9)
        next_progress_ns = clock()
        while active and clock() < join_deadline_ns:
            for j, result in pipe.poll(int(_PROGRESS_INTERVAL_S * 1000)):
                t1 = clock()
                s = stats[j]
                s.done += 1
                if isinstance(result, AuthError):
                    s.fatal = str(result)  # every later request would fail the same way
                    active -= 1
                    continue
                if t_meas0_ns <= t1 <= t_end_ns:
                    if isinstance(result, ClientError):
                        kind = _error_kind(result)
                        s.errors[kind] = s.errors.get(kind, 0) + 1
                    elif reads[j] and isinstance(result, NotFound):
                        s.misses += 1
                        s.ok += 1
                        s.hist.record((t1 - started[j]) // 1000)
                    elif not answered_as_asked(result, reads[j]):
                        kind = f"unexpected_{type(result).__name__}"
                        s.errors[kind] = s.errors.get(kind, 0) + 1
                    else:
                        s.ok += 1
                        s.hist.record((t1 - started[j]) // 1000)
                if not start(j):
                    active -= 1
            if clock() >= next_progress_ns:
                progress()
                next_progress_ns = clock() + int(_PROGRESS_INTERVAL_S * 1e9)
        return active
    finally:
        pipe.close()


def _prefill_pipelined(
    endpoints: Sequence[Address],
    key: bytes,
    spec: LoadSpec,
    lanes: Sequence[Sequence[int]],
    value: bytes,
    errors: dict[str, int],
) -> None:
    """Put every key of each lane once, one request in flight per lane."""
    from paxosd.client.errors import ClientError
    from paxosd.client.pipeline import Pipeline, Session

    todo = [iter(keys) for keys in lanes]
    sessions = [Session(site="bench") for _ in lanes]
    pipe: Pipeline[int] = Pipeline(endpoints, key, lanes=len(lanes), timeout_ms=spec.timeout_ms)

    def start(j: int) -> bool:
        i = next(todo[j], None)
        if i is None:
            return False
        pipe.submit(sessions[j].next_command(Put(key=key_name(i), value=value)), j, lane=j)
        return True

    try:
        active = sum(start(j) for j in range(len(lanes)))
        while active:
            for j, result in pipe.poll(1000):
                if isinstance(result, ClientError):  # reported, the run goes on
                    kind = f"prefill_{_error_kind(result)}"
                    errors[kind] = errors.get(kind, 0) + 1
                elif not answered_as_asked(result, read=False):
                    # Refused by the state machine (e.g. Full at the kv bytes limit): the
                    # key is not loaded, and a load rate must not count it as loaded.
                    kind = f"prefill_unexpected_{type(result).__name__}"
                    errors[kind] = errors.get(kind, 0) + 1
                if not start(j):
                    active -= 1
    finally:
        pipe.close()


def _prefill(client: Any, keys: Sequence[int], value: bytes, errors: dict[str, int]) -> None:
    for i in keys:
        try:
            result = client.submit(client.next_command(Put(key=key_name(i), value=value)))
        except Exception as e:  # a prefill error is reported, the run goes on
            kind = f"prefill_{_error_kind(e)}"
            errors[kind] = errors.get(kind, 0) + 1
        else:
            if not answered_as_asked(result, read=False):  # refused: not loaded
                kind = f"prefill_unexpected_{type(result).__name__}"
                errors[kind] = errors.get(kind, 0) + 1


def _send_result(
    send: Callable[[dict[str, Any]], None],
    stats: list[_ClientStats],
    errors: dict[str, int],
    stuck: int,
) -> None:
    """A worker's one result line: every client's counts and latencies merged."""
    hist = Histogram()
    for s in stats:
        hist.merge(s.hist)
        for k, n in s.errors.items():
            errors[k] = errors.get(k, 0) + n
    if stuck:
        errors["client_stuck_at_end"] = stuck
    send(
        {
            "type": "result",
            "ok": sum(s.ok for s in stats),
            "misses": sum(s.misses for s in stats),
            "errors": errors,
            "fatal": next((s.fatal for s in stats if s.fatal), None),
            "clients": len(stats),
            "hist": hist.to_wire(),
        }
    )


def _worker_main() -> None:
    """``python -m paxosd.lab.bench _worker``: one generator process (see the module docstring).

    stdin: a JSON line with the job (endpoints, key, spec, which clients), then a JSON line
    with the start time. stdout: JSON lines ``ready``, ``progress`` (every 0.25 s) and a
    final ``result``. The key travels on stdin, never in argv (argv is world-readable).
    """
    from paxosd.client.client import Client
    from paxosd.server.logs import configure_logging

    configure_logging(level="warning", fmt="json", stream=sys.stderr)
    job = json.loads(sys.stdin.readline(_LINE_BYTES_MAX))
    spec = LoadSpec(**job["spec"])
    endpoints = [(str(h), int(p)) for h, p in job["endpoints"]]
    key = bytes.fromhex(job["key_hex"])
    first, count, total = int(job["first_client"]), int(job["clients"]), int(spec.clients)
    out_lock = threading.Lock()

    def send(msg: dict[str, Any]) -> None:
        line = json.dumps(msg, separators=(",", ":"))
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    value = random.Random(spec.seed).randbytes(spec.value_bytes)
    stats = [_ClientStats() for _ in range(count)]
    if spec.pipelined:
        _worker_pipelined(job, spec, endpoints, key, value, stats, send)
        return
    clients = [
        Client(endpoints, key, site="bench", timeout_ms=spec.timeout_ms) for _ in range(count)
    ]
    prefill_errors = [dict[str, int]() for _ in range(count)]  # one per thread: no races
    if spec.prefill:
        # Client c of all `total` puts keys c, c + total, ...: every key once, in parallel.
        fill = [
            threading.Thread(
                target=_prefill,
                args=(clients[j], range(first + j, spec.keys, total), value, prefill_errors[j]),
                daemon=True,
            )
            for j in range(count)
        ]
        for t in fill:
            t.start()
        for t in fill:
            t.join()
    send({"type": "ready", "pid": os.getpid()})
    start = json.loads(sys.stdin.readline(_LINE_BYTES_MAX))
    t_start_ns = int(start["t_start_ns"])
    t_meas0_ns = t_start_ns + int(spec.warmup_s * 1e9)
    t_end_ns = t_meas0_ns + int(spec.duration_s * 1e9)
    time.sleep(max(0.0, (t_start_ns - time.monotonic_ns()) / 1e9))
    threads = [
        threading.Thread(
            target=_run_client,
            args=(
                clients[j],
                spec,
                random.Random(spec.seed * 100_003 + first + j),
                value,
                t_meas0_ns,
                t_end_ns,
                stats[j],
            ),
            daemon=True,
        )
        for j in range(count)
    ]
    for t in threads:
        t.start()
    # A client still waiting at t_end gets at most its own timeout, plus slack, to finish.
    join_deadline = t_end_ns / 1e9 + spec.timeout_ms / 1000 + 5.0
    while any(t.is_alive() for t in threads) and time.monotonic() < join_deadline:
        threads[0].join(_PROGRESS_INTERVAL_S)
        send({"type": "progress", "done": sum(s.done for s in stats)})
    errors: dict[str, int] = {}
    for e in prefill_errors:
        for k, n in e.items():
            errors[k] = errors.get(k, 0) + n
    _send_result(send, stats, errors, sum(1 for t in threads if t.is_alive()))
    for c in clients:
        c.close()


def _worker_pipelined(
    job: dict[str, Any],
    spec: LoadSpec,
    endpoints: Sequence[Address],
    key: bytes,
    value: bytes,
    stats: list[_ClientStats],
    send: Callable[[dict[str, Any]], None],
) -> None:
    """``_worker_main`` with one thread and a Pipeline instead of a thread per client."""
    first, count, total = int(job["first_client"]), int(job["clients"]), int(spec.clients)
    errors: dict[str, int] = {}
    if spec.prefill:
        # Client c of all `total` puts keys c, c + total, ...: every key once, in parallel.
        lanes = [range(first + j, spec.keys, total) for j in range(count)]
        _prefill_pipelined(endpoints, key, spec, lanes, value, errors)
    send({"type": "ready", "pid": os.getpid()})
    start = json.loads(sys.stdin.readline(_LINE_BYTES_MAX))
    t_start_ns = int(start["t_start_ns"])
    t_meas0_ns = t_start_ns + int(spec.warmup_s * 1e9)
    t_end_ns = t_meas0_ns + int(spec.duration_s * 1e9)
    time.sleep(max(0.0, (t_start_ns - time.monotonic_ns()) / 1e9))
    rnds = [random.Random(spec.seed * 100_003 + first + j) for j in range(count)]
    stuck = _run_pipelined(
        endpoints,
        key,
        spec,
        rnds,
        value,
        t_meas0_ns,
        t_end_ns,
        stats,
        lambda: send({"type": "progress", "done": sum(s.done for s in stats)}),
    )
    _send_result(send, stats, errors, stuck)


# ---------------------------------------------------------------------------------- parent


@dataclass(frozen=True, slots=True)
class Progress:
    """What the display shows: the phase, and in ``run`` the completed requests so far."""

    phase: Literal["cluster", "baseline", "prefill", "warmup", "measure", "drain", "done"]
    done: int = 0
    elapsed_s: float = 0.0
    total_s: float = 0.0
    message: str = ""


class BenchError(Exception):
    """The bench could not run (a worker failed to start, the cluster did not come up)."""


@dataclass(slots=True)
class _Worker:
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    clients: int
    done: int = 0
    ready: bool = False
    result: dict[str, Any] | None = None


def _reader(index: int, stream: IO[bytes], out: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
    """Turn one worker's stdout into messages; a torn or oversize line ends the worker's say."""
    while True:  # ends at EOF: the worker exits at the end of every run
        line = stream.readline(_LINE_BYTES_MAX)
        if not line:
            out.put((index, {"type": "eof"}))
            return
        try:
            msg = json.loads(line)
        except ValueError:
            out.put((index, {"type": "eof", "error": "undecodable line"}))
            return
        out.put((index, msg))


def _worker_env() -> dict[str, str]:
    # The workers import this package from wherever this process found it.
    here = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + pythonpath if pythonpath else "")}


def _stderr_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def _workers(
    spec: LoadSpec, endpoints: Sequence[Address], key: bytes, scratch: Path
) -> Iterator[list[_Worker]]:
    procs = spec.processes or default_processes(spec.clients)
    procs = min(procs, spec.clients)
    shares = [spec.clients // procs + (1 if i < spec.clients % procs else 0) for i in range(procs)]
    workers: list[_Worker] = []
    try:
        first = 0
        for i, n in enumerate(shares):
            err_path = scratch / f"worker-{i}.stderr"
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "paxosd.lab.bench", "_worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=_worker_env(),
                )
            workers.append(_Worker(proc, err_path, n))
            job = {
                "spec": asdict(spec),
                "endpoints": [list(a) for a in endpoints],
                "key_hex": key.hex(),
                "first_client": first,
                "clients": n,
            }
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.flush()
            first += n
        yield workers
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in workers:
            try:
                w.proc.wait(5)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(5)
            for s in (w.proc.stdin, w.proc.stdout):
                if s is not None:
                    s.close()


def run_load(
    spec: LoadSpec,
    endpoints: Sequence[Address],
    key: bytes,
    *,
    server_pids: dict[str, int] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run the load once against ``endpoints``; returns the report (JSON-encodable).

    ``server_pids`` (name -> pid, on this machine) adds server CPU and RSS to the report.
    """
    say = progress or (lambda _p: None)
    servers = dict(server_pids or {})
    scratch = Path(tempfile.mkdtemp(prefix="paxosd-bench-workers-"))
    msgs: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue(_MSG_QUEUE_MAX)
    try:
        with _workers(spec, endpoints, key, scratch) as workers:
            for i, w in enumerate(workers):
                assert w.proc.stdout is not None
                threading.Thread(target=_reader, args=(i, w.proc.stdout, msgs), daemon=True).start()
            if spec.prefill:
                say(Progress("prefill", message=f"putting {spec.keys:,} keys once"))
            # Prefill of K keys by C clients: bounded by the slowest plausible put rate.
            ready_timeout_s = _WORKER_START_TIMEOUT_S + (
                spec.keys / spec.clients * spec.timeout_ms / 1000 if spec.prefill else 0.0
            )
            t_ready0 = time.monotonic()
            ready_deadline = t_ready0 + ready_timeout_s
            while not all(w.ready for w in workers):
                left = ready_deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"workers not ready after {ready_timeout_s:.0f} s")
                try:
                    i, m = msgs.get(timeout=min(left, 1.0))
                except queue.Empty:
                    continue
                _absorb(workers, i, m)
            # Worker start-up (well under a second) is in it: next to a prefill worth timing
            # it is noise.
            prefill_s = time.monotonic() - t_ready0
            t_start_ns = time.monotonic_ns() + int(_START_DELAY_S * 1e9)
            for w in workers:
                assert w.proc.stdin is not None
                w.proc.stdin.write((json.dumps({"t_start_ns": t_start_ns}) + "\n").encode())
                w.proc.stdin.flush()
            t_meas0 = t_start_ns / 1e9 + spec.warmup_s
            t_end = t_meas0 + spec.duration_s
            total_s = spec.warmup_s + spec.duration_s
            cpu0: dict[str, float | None] = {}
            cpu1: dict[str, float | None] = {}
            mach0 = mach1 = (0, 0, 0)
            all_pids = servers | {f"gen-{i}": w.proc.pid for i, w in enumerate(workers)}
            all_pids["parent"] = os.getpid()
            results_deadline = t_end + spec.timeout_ms / 1000 + 15.0
            while not all(w.result is not None for w in workers):
                now = time.monotonic()
                if not cpu0 and now >= t_meas0:
                    cpu0 = {n: proc_cpu_s(p) for n, p in all_pids.items()}
                    mach0 = machine_cpu()
                if cpu0 and not cpu1 and now >= t_end:
                    cpu1 = {n: proc_cpu_s(p) for n, p in all_pids.items()}
                    mach1 = machine_cpu()
                if now > results_deadline:
                    raise BenchError("workers gave no result in time")
                next_mark = t_meas0 if not cpu0 else t_end if not cpu1 else now + 0.25
                try:
                    i, m = msgs.get(timeout=max(0.001, min(0.25, next_mark - now)))
                except queue.Empty:
                    pass
                else:
                    _absorb(workers, i, m)
                now = time.monotonic()
                phase: Literal["warmup", "measure", "drain"] = (
                    "warmup" if now < t_meas0 else "measure" if now < t_end else "drain"
                )
                say(
                    Progress(
                        phase,
                        done=sum(w.done for w in workers),
                        elapsed_s=min(total_s, max(0.0, now - t_start_ns / 1e9)),
                        total_s=total_s,
                    )
                )
            if cpu0 and not cpu1:
                # The last result came in before this loop woke for the end of the window
                # (a short run on a busy machine): take the end sample now, a little late,
                # rather than report no CPU figures at all.
                cpu1 = {n: proc_cpu_s(p) for n, p in all_pids.items()}
                mach1 = machine_cpu()
            rss = {n: proc_rss_mb(p) for n, p in servers.items()}
            results = [w.result for w in workers if w.result is not None]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = _report(spec, list(endpoints), results, servers, cpu0, cpu1, mach0, mach1, rss)
    if spec.prefill:
        report["prefill"] = {
            "keys": spec.keys,
            "seconds": round(prefill_s, 2),
            # Every put answered, refused ones too (see "errors" and "loaded").
            "puts_per_s": round(spec.keys / prefill_s, 1) if prefill_s > 0 else None,
            "mb_per_s": round(spec.keys * spec.value_bytes / 1e6 / prefill_s, 2)
            if prefill_s > 0
            else None,
            "errors": {k: n for k, n in report["errors"].items() if k.startswith("prefill_")},
        }
        refused = sum(report["prefill"]["errors"].values())
        report["prefill"]["loaded"] = spec.keys - refused  # at least: a timeout may have landed
    return report


def _absorb(workers: list[_Worker], i: int, m: dict[str, Any]) -> None:
    w = workers[i]
    kind = m.get("type")
    if kind == "ready":
        w.ready = True
    elif kind == "progress":
        w.done = int(m["done"])
    elif kind == "result":
        w.result = m
        if m.get("fatal"):
            raise BenchError(f"worker {i}: {m['fatal']}")
    elif kind == "eof" and w.result is None:
        w.proc.wait(5)
        raise BenchError(
            f"load worker {i} exited (code {w.proc.returncode}): {_stderr_tail(w.stderr_path)}"
        )


def _report(
    spec: LoadSpec,
    endpoints: list[Address],
    results: list[dict[str, Any]],
    servers: dict[str, int],
    cpu0: dict[str, float | None],
    cpu1: dict[str, float | None],
    mach0: tuple[int, int, int],
    mach1: tuple[int, int, int],
    rss: dict[str, tuple[float | None, float | None]],
) -> dict[str, Any]:
    hist = Histogram()
    errors: dict[str, int] = {}
    ok = misses = 0
    for r in results:
        hist.merge(Histogram.from_wire(r["hist"]))
        ok += int(r["ok"])
        misses += int(r["misses"])
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + int(n)
    ops_s = ok / spec.duration_s

    def used(name: str) -> float | None:
        a, b = cpu0.get(name), cpu1.get(name)
        return None if a is None or b is None else round(b - a, 3)

    def per_1000(cpu_s: float | None) -> float | None:
        return None if cpu_s is None or ok == 0 else round(cpu_s / ok * 1000, 4)

    nodes: list[dict[str, Any]] = []
    server_cpu: list[float | None] = []
    peaks: list[float] = []
    for name, pid in servers.items():
        cpu = used(name)
        server_cpu.append(cpu)
        rss_mb, peak_mb = rss.get(name, (None, None))
        if peak_mb is not None:
            peaks.append(round(peak_mb, 1))
        nodes.append(
            {
                "name": name,
                "pid": pid,
                "cpu_s": cpu,
                "cores": None if cpu is None else round(cpu / spec.duration_s, 2),
                "rss_mb": None if rss_mb is None else round(rss_mb, 1),
                "rss_peak_mb": None if peak_mb is None else round(peak_mb, 1),
            }
        )
    known_cpu = [c for c in server_cpu if c is not None]
    server_cpu_s = round(sum(known_cpu), 3) if nodes and len(known_cpu) == len(server_cpu) else None
    gen_names = [n for n in cpu0 if n.startswith("gen-")]
    gen_cpu = [used(n) for n in gen_names]
    gen_known = [c for c in gen_cpu if c is not None]
    gen_cpu_s = round(sum(gen_known), 3) if gen_known else None
    busiest = round(max(gen_known) / spec.duration_s, 2) if gen_known else None
    ops_per_gen_cpu_s = round(ok / gen_cpu_s) if gen_cpu_s else None
    dt, didle, dsteal = (mach1[0] - mach0[0], mach1[1] - mach0[1], mach1[2] - mach0[2])
    ours_cpu_s = sum(c for c in (used(n) for n in cpu0) if c is not None)
    ncpu = os.cpu_count() or 1
    # Busy cores not explained by the servers, the generator or this process: other tenants of
    # a shared machine. Well above zero means the figures are not this cluster's alone.
    other_cores = (
        round(ncpu * (dt - didle) / dt - ours_cpu_s / spec.duration_s, 2) if dt > 0 else None
    )
    return {
        "bench": "kv",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        },
        "endpoints": [f"{h}:{p}" for h, p in endpoints],
        "workload": {
            "op": spec.op,
            "clients": spec.clients,
            "duration_s": spec.duration_s,
            "warmup_s": spec.warmup_s,
            "value_bytes": spec.value_bytes,
            "keys": spec.keys,
            "read_ratio": spec.read_ratio
            if spec.op == "mixed"
            else (1.0 if spec.op == "get" else 0.0),
            "prefill": spec.prefill,
        },
        "ops": ok,
        "ops_per_s": round(ops_s, 1),
        "latency_ms": latency_summary_ms(hist),
        "errors": dict(sorted(errors.items())),
        "errors_total": sum(errors.values()),
        "get_misses": misses,
        "server": {
            "cpu_s": server_cpu_s,
            # seconds per 1,000 ops = milliseconds per op
            "cpu_s_per_1000_ops": per_1000(server_cpu_s),
            "nodes": nodes,
            "rss_peak_mb_max": max(peaks) if peaks else None,
            "rss_mb_limit": RSS_MB_LIMIT,
            "rss_within_limit": (max(peaks) <= RSS_MB_LIMIT) if peaks else None,
        },
        "generator": {
            "processes": len(results),
            "clients_per_process": [int(r.get("clients", 0)) for r in results],
            "cpu_s": gen_cpu_s,
            "cpu_s_per_1000_ops": per_1000(gen_cpu_s),
            "busiest_process_cores": busiest,
            "ops_per_cpu_s": ops_per_gen_cpu_s,
            # What P processes could drive if each had a core of its own (the GIL caps each
            # process at one core): the ceiling of this generator on this machine.
            "ceiling_ops_per_s": (
                ops_per_gen_cpu_s * min(len(results), os.cpu_count() or 1)
                if ops_per_gen_cpu_s
                else None
            ),
            "may_be_bottleneck": busiest is not None and busiest >= GENERATOR_BUSY_CORES_WARN,
        },
        "machine": {
            "busy_pct": round(100 * (dt - didle) / dt, 1) if dt > 0 else None,
            "steal_pct": round(100 * dsteal / dt, 1) if dt > 0 else None,
            "other_cores": other_cores,
        },
    }


# ---------------------------------------------------------------------------------- baseline


def run_baseline(data_dir: Path, seconds: float = 8.0) -> dict[str, Any]:
    """The machine's own limits, measured now: SQLite WAL FULL single-commit rate on the disk of
    ``data_dir`` and the encrypted transport's loopback round trip. Every kv report carries them
    so that figures from different machines (and noisy sittings) can be compared."""
    from paxosd.lab.bench_storage import run_storage_bench
    from paxosd.lab.bench_transport import run_transport_bench

    assert seconds > 0
    storage = run_storage_bench(
        data_dir,
        seconds / 4,  # the case alternates storage and raw commits: 2x this in all
        batch_sizes=(1,),
        durabilities=("fsync",),
        replay_entries=1000,
        restart_entries=0,
    )
    case = storage["group_commit"][0]
    transport = run_transport_bench(seconds / 2)
    return {
        "data_dir": str(data_dir),
        "sqlite_commits_per_s": case["raw_records_per_s"],
        "storage_commits_per_s": case["storage_records_per_s"],
        "transport_round_trip_p50_ms": round(transport["transport_round_trip_p50_us"] / 1000, 3),
        "transport_round_trip_p99_ms": round(transport["transport_round_trip_p99_us"] / 1000, 3),
        "plain_round_trip_p50_ms": round(transport["plain_round_trip_p50_us"] / 1000, 3),
    }


def relate_to_baseline(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Figures relative to the machine: ops per single fsync'd commit, p50 in round trips."""
    commits = baseline["sqlite_commits_per_s"]
    rtt = baseline["transport_round_trip_p50_ms"]
    p50 = report["latency_ms"]["p50"]
    return {
        "ops_per_fsync": round(report["ops_per_s"] / commits, 3) if commits else None,
        "p50_in_round_trips": round(p50 / rtt, 2) if p50 is not None and rtt else None,
    }


# ---------------------------------------------------------------------------------- --local


def run_local(
    spec: LoadSpec,
    *,
    nodes: int = 3,
    parent_dir: Path | None = None,
    baseline: bool = False,
    progress: ProgressFn | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Start a fresh durable cluster of ``nodes`` in a temporary folder, run the load against
    it, stop it and remove the folder (``keep``: leave it, for a post-mortem)."""
    from paxosd.lab.localcluster import LocalCluster

    say = progress or (lambda _p: None)
    parent = parent_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="paxosd-bench-", dir=parent))
    try:
        base = None
        if baseline:
            say(Progress("baseline", message=f"SQLite and transport on {parent}"))
            base = run_baseline(root / "baseline")
        say(Progress("cluster", message=f"starting {nodes} durable nodes in {root}"))
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
                    # A figure from fewer members than asked for is not the figure asked for
                    # (a port taken by another program between pick and bind does this).
                    tail = cluster.logs_tail(k, 5).replace("\n", " | ")
                    raise BenchError(f"node {k} is not running after the start: {tail}")
                role = "leader" if k == leader.get("node_id") else "follower"
                pids[f"n{k}-{role}"] = pid
            report = run_load(
                spec, cluster.endpoints(), cluster.client_key(), server_pids=pids, progress=say
            )
            gone = [k for k in cluster.node_ids() if cluster.pid(k) is None]
            if gone:
                tail = cluster.logs_tail(gone[0], 5).replace("\n", " | ")
                raise BenchError(f"node(s) {gone} stopped during the run: {tail}")
        finally:
            cluster.down()
        report["target"] = {
            "kind": "local",
            "nodes": nodes,
            "durability": "fsync",
            "dir": str(root),
        }
        if base is not None:
            report["baseline"] = base | relate_to_baseline(report, base)
        say(Progress("done"))
        return report
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["_worker"]:
        _worker_main()
    else:
        sys.exit("usage: python -m paxosd.lab.bench _worker  (started by `paxosctl bench`)")
