"""``paxosctl bench bigstate``: what big state costs a 3-node cluster.

One sitting on a fresh durable local cluster with the default snapshot settings, in order:

1. load: every key once (the kv bench's pipelined prefill: one request in flight on each of
   the clients' connections, which the leader batches into slots); the load rate;
2. run: the kv bench's closed-loop put workload over the same keys for the duration, through
   several snapshot cycles; throughput and the whole latency tail;
3. ``paxosctl snapshot save`` of the live cluster, in MB/s of state bytes;
4. restart of a follower (SIGKILL or SIGTERM, then start): seconds until it answers a
   linearizable read, and until it has applied what the leader had applied;
5. a fourth node added as a learner catches up by snapshot transfer (the log it would need
   was compacted long ago): MB/s of snapshot bytes.

Throughout, a sampler thread asks each node's status and reads each daemon's RSS from /proc
every ``SAMPLE_INTERVAL_S``: ballots seen (a change is an election), the peak RSS. Snapshots
taken are the nodes' "snapshot taken" log lines. State size is the store's accounted bytes
(``store_bytes`` of status) and the database's (``db_bytes``); RSS and disk use are reported
as multiples of it, so that one table reads across sizes. Every wait is bounded and a bound
that passes is a BenchError naming what did not happen. Nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from paxosd.client.client import Client, ClientError
from paxosd.lab.bench import BenchError, LoadSpec, Progress, key_name, proc_rss_mb, run_load
from paxosd.lab.localcluster import LocalCluster
from paxosd.storage.store import DB_FILENAME, Storage, StorageError

SAMPLE_INTERVAL_S: Final = 0.5
PROGRESS_EVERY_S: Final = 10.0
# Bounds on the waits. Generous: a 1 GiB state on a loaded 2-core machine is slow, but a
# node that has not caught up in this long is not going to.
START_TIMEOUT_S: Final = 120.0
CATCH_UP_TIMEOUT_S: Final = 1800.0
SNAPSHOT_SAVE_TIMEOUT_S: Final = 1800.0
# paxosctl's --timeout-ms for the save, which bounds the whole save (the node's snapshot
# child, then the transfer): its default, ten minutes.
SNAPSHOT_SAVE_REQUEST_TIMEOUT_MS: Final = 600_000
READ_KEY: Final = "k00000000"  # paxosd.lab.bench.key_name(0): there after the load

Say = Callable[[str], None]
RestartSignal = Literal["kill", "term"]


@dataclass(frozen=True, slots=True)
class BigStateSpec:
    """The sitting: ``keys`` keys of ``value_bytes`` each, then ``duration_s`` of puts."""

    keys: int = 10_000
    value_bytes: int = 1024
    duration_s: float = 60.0
    clients: int = 64
    restart_signal: RestartSignal = "kill"
    timeout_ms: int = 5000
    # None: the daemon's defaults ([snapshot] in the config), which is what the figures are
    # about; set only to see the cycles (and a transfer) in a short sitting.
    snapshot_every_entries: int | None = None
    log_retain_entries: int | None = None
    snapshot_log_percent: int | None = None

    def __post_init__(self) -> None:
        # The same bounds as the kv bench's; LoadSpec says which was wrong.
        self.load_spec()
        if self.restart_signal not in ("kill", "term"):
            raise ValueError("restart signal must be kill or term")
        for name, n in (
            ("snapshot every", self.snapshot_every_entries),
            ("log retain", self.log_retain_entries),
        ):
            if n is not None and not 0 <= n <= 100_000_000:
                raise ValueError(f"{name} entries must be 0..100000000")
        if self.snapshot_log_percent is not None and not 0 <= self.snapshot_log_percent <= 10_000:
            raise ValueError("snapshot log percent must be 0..10000")

    def extra_config(self) -> str:
        lines = []
        if self.snapshot_every_entries is not None:
            lines.append(f"snapshot_every_entries = {self.snapshot_every_entries}")
        if self.log_retain_entries is not None:
            lines.append(f"log_retain_entries = {self.log_retain_entries}")
        if self.snapshot_log_percent is not None:
            lines.append(f"snapshot_log_percent = {self.snapshot_log_percent}")
        return "[snapshot]\n" + "\n".join(lines) + "\n" if lines else ""

    def load_spec(self, duration_s: float | None = None) -> LoadSpec:
        return LoadSpec(
            op="put",
            clients=self.clients,
            duration_s=duration_s if duration_s is not None else self.duration_s,
            warmup_s=0.0,
            value_bytes=self.value_bytes,
            keys=self.keys,
            prefill=True,
            timeout_ms=self.timeout_ms,
        )


@dataclass(slots=True)
class _NodeSeen:
    ballots: list[str] = field(default_factory=list)
    rss_peak_mb: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)


class _Sampler:
    """Every node's status and RSS, every SAMPLE_INTERVAL_S, on a thread of its own."""

    def __init__(self, cluster: LocalCluster, say: Say) -> None:
        self.cluster = cluster
        self.say = say
        self.phase = "start"
        self.seen: dict[int, _NodeSeen] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bigstate-sampler", daemon=True)
        self._clients: dict[int, Client] = {}

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for c in self._clients.values():
            c.close()

    def _client(self, k: int) -> Client:
        c = self._clients.get(k)
        if c is None:
            host, port = self.cluster.endpoints()[self.cluster.node_ids().index(k)]
            c = Client([(host, port)], self.cluster.client_key(), timeout_ms=1000)
            self._clients[k] = c
        return c

    def sample(self) -> None:
        for k in list(self.cluster.node_ids()):
            pid = self.cluster.pid(k)
            with self._lock:
                seen = self.seen.setdefault(k, _NodeSeen())
            if pid is not None:
                rss, hwm = proc_rss_mb(pid)
                for mb in (rss, hwm):
                    if mb is not None and mb > seen.rss_peak_mb:
                        seen.rss_peak_mb = mb
            try:
                st = self._client(k).status(node=k)
            except ClientError:
                continue
            with self._lock:
                if not seen.ballots or seen.ballots[-1] != st.ballot:
                    seen.ballots.append(st.ballot)
                seen.last = {
                    "role": st.role,
                    "ballot": st.ballot,
                    "applied_index": st.applied_index,
                    "snapshot_index": st.snapshot_index,
                    "store_bytes": st.store_bytes,
                    "history_bytes": st.history_bytes,
                    "db_bytes": st.db_bytes,
                }

    def last(self, k: int) -> dict[str, Any]:
        with self._lock:
            seen = self.seen.get(k)
            return dict(seen.last) if seen else {}

    def _run(self) -> None:
        next_say = time.monotonic() + PROGRESS_EVERY_S
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            try:
                self.sample()
            except Exception as e:  # a sampling hiccup must not end the sitting
                self.say(f"sampler: {e}")
            if time.monotonic() >= next_say:
                next_say = time.monotonic() + PROGRESS_EVERY_S
                self.say(self._line())

    def _line(self) -> str:
        with self._lock:
            parts = []
            for k, s in sorted(self.seen.items()):
                if s.last:
                    parts.append(
                        f"n{k} {s.last['role'][:1]} applied {s.last['applied_index']} "
                        f"store {s.last['store_bytes'] / 1e6:.0f} MB "
                        f"rss {s.rss_peak_mb:.0f} MB"
                    )
        return f"{self.phase}: " + "; ".join(parts)


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (allocated size is not what a user's ``ls`` shows)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            # A WAL or temporary file may go away while we walk.
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def _snapshots_taken(cluster: LocalCluster, k: int) -> tuple[int, int]:
    """("snapshot taken", "snapshot restored") lines in node ``k``'s log so far."""
    try:
        text = cluster.log_path(k).read_text(errors="replace")
    except OSError:
        return 0, 0
    return text.count("snapshot taken"), text.count("snapshot restored")


def _install_figures(cluster: LocalCluster, k: int) -> dict[str, Any]:
    """Node ``k``'s last install of a peer's snapshot, from its "snapshot restored" log line:
    the loop turns from the last chunk to the swap, their seconds and the longest one (the
    decode runs in pieces between them, so that a turn stays far under an election timeout).
    Empty when there was none."""
    found: dict[str, Any] = {}
    try:
        text = cluster.log_path(k).read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        if line.startswith("{") and '"snapshot restored"' in line:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("from_peer"):
                    found = {
                        "install_turns": record.get("turns"),
                        "install_seconds": record.get("seconds"),
                        "longest_turn_ms": record.get("longest_turn_ms"),
                        "longest_turn_at": record.get("longest_turn_at"),
                        "longest_turn_phases_ms": record.get("longest_turn_phases_ms"),
                    }
    return found


def _wait(what: str, probe: Callable[[], bool], bound_s: float, poll_s: float = 0.05) -> float:
    """Seconds until ``probe()`` is true; BenchError naming ``what`` after ``bound_s``."""
    t0 = time.monotonic()
    while not probe():
        if time.monotonic() - t0 > bound_s:
            raise BenchError(f"{what}: not within {bound_s:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - t0


def _rounds(ballots: dict[int, list[str]]) -> int:
    """How far the ballot round advanced across ``ballots`` ("round.node" strings)."""
    rounds = [int(b.split(".")[0]) for seen in ballots.values() for b in seen]
    return max(rounds) - min(rounds) if rounds else 0


def _leader(cluster: LocalCluster) -> tuple[int, int]:
    """(leader's node id, its applied index), asking until one answers (bounded)."""
    found: list[tuple[int, int]] = []

    def probe() -> bool:
        with cluster.client(timeout_ms=2000) as c:
            for _ep, st in c.status_each():
                if not isinstance(st, str) and st.role == "leader":
                    found.append((st.node_id, st.applied_index))
                    return True
        return False

    _wait("a leader", probe, START_TIMEOUT_S, 0.2)
    return found[-1]


def _applied(cluster: LocalCluster, k: int) -> int:
    host, port = cluster.endpoints()[cluster.node_ids().index(k)]
    try:
        with Client([(host, port)], cluster.client_key(), timeout_ms=1000) as c:
            return c.status(node=k).applied_index
    except ClientError:
        return -1


def _snapshot_save(cluster: LocalCluster, out: Path) -> dict[str, Any]:
    """``paxosctl snapshot save`` as a user runs it, timed (process start included)."""
    argv = [
        sys.executable,
        "-m",
        "paxosctl",
        "snapshot",
        "save",
        str(out),
        "--endpoints",
        ",".join(cluster.endpoint_strings()),
        "--key-file",
        str(cluster.root / "keys" / "client.key"),
        "--timeout-ms",
        str(SNAPSHOT_SAVE_REQUEST_TIMEOUT_MS),
        "--json",
    ]
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=SNAPSHOT_SAVE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"snapshot save: not within {SNAPSHOT_SAVE_TIMEOUT_S:.0f} s") from None
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        # A figure in itself (the save does not work at this size): reported, not fatal.
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return {
            "seconds": round(seconds, 2),
            "error": f"exit {done.returncode}: {' '.join(tail)}",
            "mb_per_s": None,
        }
    saved = json.loads(done.stdout)
    state = int(saved["state_bytes"])
    return {
        "seconds": round(seconds, 2),
        "state_bytes": state,
        "file_bytes": int(saved["file_bytes"]),
        "mb_per_s": round(state / 1e6 / seconds, 1) if seconds > 0 else None,
    }


def _wait_unlocked(cluster: LocalCluster, k: int) -> None:
    """Until node ``k``'s data dir lock is free. A process of a few GB that was SIGKILLed
    no longer looks like the node (its command line is gone with its memory) while the
    kernel is still freeing that memory, and its files, the lock among them, close last: a
    start in that window fails with "another paxosd process is using this data dir"."""
    path = cluster.root / "data" / f"n{k}" / "paxosd.lock"

    def free() -> bool:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing releases the lock if it was taken
        return True

    _wait(f"node {k}'s data dir lock to be released after it stopped", free, START_TIMEOUT_S)


def _restart(cluster: LocalCluster, how: RestartSignal, say: Say) -> dict[str, Any]:
    """Stop a follower (SIGKILL or SIGTERM), start it; time to serve and to catch up."""
    leader, target = _leader(cluster)
    k = next(n for n in cluster.node_ids() if n != leader)  # chosen now: leaders move
    if how == "kill":
        cluster.kill(k)
    else:
        cluster.signal(k, signal.SIGTERM)
        _wait(f"node {k} to exit on SIGTERM", lambda: cluster.pid(k) is None, START_TIMEOUT_S)
    _wait_unlocked(cluster, k)
    say(f"restart: node {k} stopped ({how}), starting it; leader applied {target}")
    t0 = time.monotonic()
    cluster.start(k)
    host, port = cluster.endpoints()[cluster.node_ids().index(k)]

    def serves() -> bool:
        if cluster.pid(k) is None:
            raise BenchError(f"node {k} exited after the restart: {cluster.logs_tail(k, 3)}")
        try:
            with Client([(host, port)], cluster.client_key(), timeout_ms=1000) as c:
                c.get(READ_KEY)
            return True
        except ClientError:
            return False

    serve_s = _wait(f"node {k} to answer a read after its restart", serves, CATCH_UP_TIMEOUT_S)
    _wait(
        f"node {k} to catch up after its restart",
        lambda: _applied(cluster, k) >= target,
        CATCH_UP_TIMEOUT_S,
    )
    return {
        "node": k,
        "signal": how,
        "serve_s": round(serve_s, 2),
        "caught_up_s": round(time.monotonic() - t0, 2),
        "leader_applied": target,
    }


def _add_member(cluster: LocalCluster, extra_config: str, say: Say) -> dict[str, Any]:
    """A new learner: started empty, added, caught up by snapshot transfer."""
    k = cluster.add_node(extra_config=extra_config)
    cluster.start(k)
    leader, target = _leader(cluster)
    say(f"new member: node {k} added as a learner; leader {leader} applied {target}")
    t0 = time.monotonic()

    def added() -> bool:
        try:
            with cluster.client(timeout_ms=5000) as c:
                c.change_member("add", k, cluster.peer_address(k), node=leader)
            return True
        except ClientError:
            return False

    _wait(f"membership change adding node {k}", added, START_TIMEOUT_S, 0.5)
    _wait(
        f"node {k} to catch up as a new member",
        lambda: _applied(cluster, k) >= target,
        CATCH_UP_TIMEOUT_S,
        0.1,
    )
    seconds = time.monotonic() - t0  # from the membership change on
    _taken, restored = _snapshots_taken(cluster, k)
    # The bytes it received: the snapshot it now holds (it takes none of its own without
    # new writes). Read-only beside the running node, as `paxosd inspect` does.
    try:
        with Storage.open_readonly(cluster.root / "data" / f"n{k}" / DB_FILENAME) as st:
            state_bytes = st.meta().snapshot_bytes or 0
    except StorageError as e:
        raise BenchError(f"cannot read node {k}'s snapshot size: {e}") from None
    install = _install_figures(cluster, k)
    if install:
        say(
            f"new member: node {k} installed the snapshot over {install['install_turns']} loop "
            f"turns in {install['install_seconds']} s, the longest {install['longest_turn_ms']} ms"
        )
    return {
        "node": k,
        "seconds": round(seconds, 2),
        "by_snapshot": restored > 0,
        "snapshot_bytes": state_bytes,
        # Only a transfer is a transfer rate (a small state catches up from the log).
        "mb_per_s": round(state_bytes / 1e6 / seconds, 1) if seconds > 0 and restored else None,
        "leader_applied": target,
        # The new member's loop while it installed the snapshot (see _install_figures).
        **install,
    }


def run_bigstate(
    spec: BigStateSpec,
    *,
    parent_dir: Path | None = None,
    say: Say | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """The sitting described in the module docstring; returns the report (JSON-encodable)."""
    tell = say or (lambda _m: None)
    parent = parent_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="paxosd-bigstate-", dir=parent))
    report: dict[str, Any] = {
        "bench": "bigstate",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average": list(os.getloadavg()),
        "keys": spec.keys,
        "value_bytes": spec.value_bytes,
        "duration_s": spec.duration_s,
        "clients": spec.clients,
        "snapshot_every_entries": spec.snapshot_every_entries,
        "log_retain_entries": spec.log_retain_entries,
        "snapshot_log_percent": spec.snapshot_log_percent,
        "dir": str(root),
    }
    try:
        tell(f"cluster: starting 3 durable nodes in {root}")
        cluster = LocalCluster.create(
            root / "cluster", 3, durability="fsync", extra_config=spec.extra_config()
        )
        try:
            try:
                cluster.up()
            except ClientError as e:
                raise BenchError(f"local cluster did not start: {e}") from None
            with _Sampler(cluster, tell) as sampler:
                report |= _sitting(spec, cluster, sampler, root, tell)
        finally:
            cluster.down()
        tell("done")
        return report
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _sitting(
    spec: BigStateSpec, cluster: LocalCluster, sampler: _Sampler, root: Path, say: Say
) -> dict[str, Any]:
    pids = {}
    for k in cluster.node_ids():
        pid = cluster.pid(k)
        if pid is None:
            raise BenchError(f"node {k} is not running after the start: {cluster.logs_tail(k, 3)}")
        pids[f"n{k}"] = pid
    sampler.phase = "load"
    say(f"load: putting {spec.keys:,} keys of {spec.value_bytes} bytes")

    def progress(p: Progress) -> None:
        if sampler.phase == "load" and p.phase in ("warmup", "measure"):
            sampler.phase = "run"
            say(f"run: {spec.duration_s:.0f} s of puts by {spec.clients} clients")

    kv = run_load(
        spec.load_spec(),
        cluster.endpoints(),
        cluster.client_key(),
        server_pids=pids,
        progress=progress,
    )
    sampler.sample()
    gone = [k for k in cluster.node_ids() if cluster.pid(k) is None]
    if gone:
        raise BenchError(f"node(s) {gone} stopped during the run: {cluster.logs_tail(gone[0], 3)}")
    ballots = {k: list(sampler.seen[k].ballots) for k in cluster.node_ids() if k in sampler.seen}
    snapshots = {f"n{k}": _snapshots_taken(cluster, k)[0] for k in cluster.node_ids()}
    leader, _applied_now = _leader(cluster)
    st = sampler.last(leader)
    store_bytes = int(st.get("store_bytes", 0))
    db_bytes = int(st.get("db_bytes", 0))
    nodes: dict[str, Any] = {}
    for k in cluster.node_ids():
        pid = cluster.pid(k)
        rss_end = proc_rss_mb(pid)[0] if pid is not None else None
        disk = dir_bytes(cluster.root / "data" / f"n{k}")
        peak = sampler.seen[k].rss_peak_mb if k in sampler.seen else None
        mb = store_bytes / 1e6
        nodes[f"n{k}"] = {
            "role": "leader" if k == leader else "follower",
            "rss_peak_mb": None if peak is None else round(peak, 1),
            "rss_end_mb": None if rss_end is None else round(rss_end, 1),
            "rss_peak_x": round(peak / mb, 2) if peak and mb else None,
            "rss_end_x": round(rss_end / mb, 2) if rss_end and mb else None,
            "disk_bytes": disk,
            "disk_x": round(disk / store_bytes, 2) if store_bytes else None,
            "db_bytes": int(sampler.last(k).get("db_bytes", 0)),
            "snapshots_taken": snapshots[f"n{k}"],
            "elections_seen": max(0, len(ballots.get(k, [])) - 1),
        }
    prefill = kv.get("prefill", {})
    out: dict[str, Any] = {
        "load": prefill,
        "run": {
            "ops": kv["ops"],
            "ops_per_s": kv["ops_per_s"],
            "latency_ms": kv["latency_ms"],
            "errors": kv["errors"],
            "errors_total": kv["errors_total"],
            "machine": kv["machine"],
            "generator_may_be_bottleneck": kv["generator"]["may_be_bottleneck"],
        },
        "elections": max(0, max((len(b) for b in ballots.values()), default=1) - 1),
        # Sampling every SAMPLE_INTERVAL_S can miss a leader that lasted less; the ballot
        # rounds cannot: every campaign, won or not, takes a higher round.
        "ballot_rounds": _rounds(ballots),
        "ballots_seen": {f"n{k}": b for k, b in ballots.items()},
        "state": {
            # What was loaded (keys and values), what the store accounts (with the history
            # of every put), and the leader's database file with its WAL.
            "data_bytes": spec.keys * (len(key_name(0)) + spec.value_bytes),
            "store_bytes": store_bytes,
            "history_bytes": int(st.get("history_bytes", 0)),
            "db_bytes": db_bytes,
        },
        "nodes": nodes,
    }
    sampler.phase = "snapshot-save"
    say("snapshot save: paxosctl snapshot save of the live cluster")
    out["snapshot_save"] = _snapshot_save(cluster, root / "backup.pxb")
    (root / "backup.pxb").unlink(missing_ok=True)
    # A phase that fails is reported as that phase's figure (what stopped it), and the
    # sitting goes on: the figures before it were dear to get.
    sampler.phase = "restart"
    try:
        out["restart"] = _restart(cluster, spec.restart_signal, say)
    except BenchError as e:
        say(f"restart: FAILED: {e}")
        out["restart"] = {"error": str(e)}
    sampler.phase = "new-member"
    try:
        out["new_member"] = _add_member(cluster, spec.extra_config(), say)
    except BenchError as e:
        say(f"new member: FAILED: {e}")
        out["new_member"] = {"error": str(e)}
    sampler.sample()
    # Elections in the whole sitting: the save, the restart and the transfer load the
    # nodes too (a leader busy serving a snapshot may miss its heartbeats).
    out["elections_whole_sitting"] = max(
        0, max((len(s.ballots) for s in sampler.seen.values()), default=1) - 1
    )
    return out
