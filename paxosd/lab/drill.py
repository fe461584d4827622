"""Recovery drills on real processes: a concurrent workload under faults, then the checks.

The simulator proves the core over thousands of seeds; this proves the assembled daemon —
SQLite, fsync, sockets, signals, the client library — against the same linearizability
checker, with faults an operator can cause: SIGKILL (also of the leader, also right after a
snapshot), SIGSTOP/SIGCONT, partitions through the transport's authenticated drill hook, a
graceful restart, and killing every node at once.

A drill is four threads of work over one monotonic clock:
- workers (one ``Client`` each) issue put/get/cas/delete/block/unblock on a small key set that
  rotates every few seconds (an *epoch*), so every key's history stays short enough for the
  checker's search; every written value is unique, so any value seen twice is a bug;
- the fault injector runs one fault at a time from a seeded schedule;
- a log collector copies the decided log while it is still there (snapshots compact it);
- one watcher per restart measures when the node answers and when it has caught up.

Then everything is healed and the drill checks, in order: the replicas converge (same
applied index and digest), a final linearizable read of every key and block pair succeeds
(it joins the history), every acknowledged write sits in the decided log, no write value was
submitted under two (client, seq) pairs, the decided log applied exactly once per
(client, seq) gives the state every replica holds, and the whole history is linearizable.

The seed fixes the schedule (when, which kind, how long, how many victims, whether the leader
is among them) and the workload's choices; which node is the leader at a given moment, and
so the exact interleaving, is the machine's. A drill is therefore not replayable like a
simulator seed: its history file is the bug report.
"""

from __future__ import annotations

import bisect
import json
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from paxosd.client.client import (
    Address,
    BadRequestError,
    Client,
    ClientError,
    RefusedError,
    UnavailableError,
)
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import ChangeMember, Transfer, to_json
from paxosd.sim import linearizability
from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    BadCommand,
    Block,
    BlockList,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Command,
    Delete,
    Deleted,
    Found,
    Get,
    NotFound,
    Op,
    Put,
    Result,
    Rows,
    Scan,
    Unblock,
    Written,
    decode_command,
    is_read,
)
from paxosd.tools.initcluster import client_address

FAULT_KINDS: Final = ("kill", "pause", "partition", "restart", "killall", "reconfig")
DEFAULT_FAULTS: Final = ("kill", "pause", "partition")
# Faults a drill can cause on a cluster it did not start: it owns no processes there.
ENDPOINT_FAULTS: Final = frozenset({"partition"})
NODES_MIN: Final = 3  # a fault needs a minority to hit and a majority to carry on
NODES_MAX: Final = 9
CLIENTS_MAX: Final = 64
DURATION_S_MAX: Final = 24 * 3600.0

KEYS_PER_EPOCH: Final = 4
# The final state comparison reads each replica's drill keys with one scan page.
KEYS_TOTAL_MAX: Final = 800
EPOCH_S_MIN: Final = 5.0
OLD_KEY_READ_FRACTION: Final = 0.06  # gets of earlier epochs' keys: durability across faults
HISTORY_OPS_MAX: Final = 3_000_000  # workers stop issuing past this (memory bound)
# After an operation that failed at once (every node refused), a worker pauses this long.
WORKER_PAUSE_S: Final = 0.05

OP_TIMEOUT_MS: Final = 4000  # longer than an election, so most faults end in "ok", not "unknown"
STATUS_TIMEOUT_MS: Final = 800
CONVERGE_TIMEOUT_S: Final = 60.0
CATCH_UP_TIMEOUT_S: Final = 60.0
READY_TIMEOUT_S: Final = 30.0
LOG_POLL_S: Final = 0.3
LOG_PAGE_ROWS: Final = 1000  # the daemon's VIEW_LOG_ROWS_MAX
POLL_S: Final = 0.05
PROGRESS_S: Final = 0.5
# Fault timings (seconds): ranges the seeded schedule draws from.
FAULT_GAP_S: Final = (1.0, 3.0)
KILL_DOWN_S: Final = (0.3, 4.0)
KILLALL_DOWN_S: Final = (0.2, 2.0)
PAUSE_S: Final = (0.3, 3.0)  # under OP_TIMEOUT_MS: a pause should mostly delay, not fail, ops
PARTITION_S: Final = (0.5, 4.0)
SNAPSHOT_BEFORE_KILL_FRACTION: Final = 0.3
LEADER_VICTIM_FRACTION: Final = 0.5
LEADER_POLL_S: Final = 0.1  # how often the leader watch asks every node's status
LEADER_POLL_TIMEOUT_MS: Final = 300  # a paused node must not stall the watch for long
# Local clusters snapshot often, so kills land near snapshots and catch-up uses them. The
# retained tail is what the log collector has to copy slots before compaction drops them on
# every node: ~4 s at the ~1,300 slots/s a 3-node drill decides (2,000 left ~1.5 s, and a
# loaded machine made the collector miss slots).
SNAPSHOT_EVERY_ENTRIES: Final = 1000
LOG_RETAIN_ENTRIES: Final = 5000
DRILL_NODE_CONFIG: Final = (
    "[snapshot]\n"
    f"snapshot_every_entries = {SNAPSHOT_EVERY_ENTRIES}\n"
    f"log_retain_entries = {LOG_RETAIN_ENTRIES}\n"
)
# The reconfig fault: one membership step per fault, in shuffled rounds like the kinds.
RECONFIG_OPS: Final = ("add", "remove", "replace", "transfer", "crash")
RECONFIG_GROW_MAX: Final = 2  # voters beyond --nodes it grows to (it never shrinks below)
ADMIN_TIMEOUT_MS: Final = 10_000  # a membership change is answered once decided
ADMIN_WAIT_S: Final = 15.0  # per request: a leader to ask (after a leader's crash), an answer
PROMOTE_LAG_SLOTS: Final = 64  # as paxosctl: promote a learner this close to the leader
PROMOTE_WAIT_S: Final = 30.0
# Before a removal: how long to wait for every voter to answer the leader (a node a crash
# just restarted), so the step tests a removal rather than the leader's refusal.
SETTLE_WAIT_S: Final = 5.0
EMPTY_START_TIMEOUT_S: Final = 15.0
REFUSALS_KEPT_MAX: Final = 20

Outcome = Literal["ok", "fail", "unknown"]


class DrillError(Exception):
    """The drill could not run (bad arguments, a cluster that would not start). Violations
    are not errors: they are the drill's findings, in the report."""


class DrillUsageError(DrillError):
    """The arguments cannot make a drill (a usage error, exit 2 in paxosctl)."""


# ------------------------------------------------------------------------------ spec


@dataclass(frozen=True, slots=True)
class DrillSpec:
    nodes: int = 3
    duration_s: float = 60.0
    clients: int = 4
    faults: tuple[str, ...] = DEFAULT_FAULTS
    seed: int = 0
    op_timeout_ms: int = OP_TIMEOUT_MS
    fault_gap_s: tuple[float, float] = FAULT_GAP_S
    # Extra environment for the daemons: how a test plants a bug (PAXOSD_TEST_PLANT_BUG).
    node_env: tuple[tuple[str, str], ...] = ()
    converge_timeout_s: float = CONVERGE_TIMEOUT_S

    def validate(self, *, endpoints: bool = False) -> None:
        if not NODES_MIN <= self.nodes <= NODES_MAX:
            raise DrillUsageError(f"--nodes must be in {NODES_MIN}..{NODES_MAX} (got {self.nodes})")
        if not 0 < self.duration_s <= DURATION_S_MAX:
            raise DrillUsageError(f"--duration must be in (0, {DURATION_S_MAX:.0f}] s")
        if not 1 <= self.clients <= CLIENTS_MAX:
            raise DrillUsageError(f"--clients must be in 1..{CLIENTS_MAX} (got {self.clients})")
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            raise DrillUsageError(
                f"unknown fault kind(s) {', '.join(unknown)}; choose from {','.join(FAULT_KINDS)}"
            )
        if endpoints:
            impossible = sorted(set(self.faults) - ENDPOINT_FAULTS)
            if impossible:
                raise DrillUsageError(
                    f"on a running cluster (--endpoints) the drill owns no processes, so it can "
                    f"only cause {','.join(sorted(ENDPOINT_FAULTS))}; drop {','.join(impossible)}"
                )
        lo, hi = self.fault_gap_s
        if not 0 < lo <= hi:
            raise DrillUsageError("fault gap must be 0 < min <= max")

    @property
    def epoch_s(self) -> float:
        """Long enough that the key set stays under KEYS_TOTAL_MAX for the whole drill."""
        return max(EPOCH_S_MIN, self.duration_s * KEYS_PER_EPOCH / KEYS_TOTAL_MAX * 1.25)


def parse_faults(text: str) -> tuple[str, ...]:
    """``kill,pause`` -> ("kill", "pause"); ``none`` or empty -> (); order kept, no repeats."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["none"]:
        return ()
    return tuple(dict.fromkeys(parts))


@dataclass(frozen=True, slots=True)
class DrillProgress:
    phase: str  # "starting", "running", "healing", "converging", "checking", "done"
    elapsed_s: float
    duration_s: float
    ops: Mapping[str, int]
    faults: int
    message: str = ""


ProgressFn = Callable[[DrillProgress], None]


# ------------------------------------------------------------------------------ nodes


class Nodes:
    """The members a drill talks to: node id -> client address, the key, and the processes
    when the drill started them itself (``cluster``)."""

    def __init__(
        self,
        endpoints: Mapping[int, Address],
        key: bytes,
        cluster: LocalCluster | None = None,
        node_env: Mapping[str, str] | None = None,
    ) -> None:
        assert endpoints, "a drill needs at least one node"
        # Replaced whole (never mutated) when the membership changes, so a reader holding
        # the old dict sees one consistent set.
        self.endpoints = dict(sorted(endpoints.items()))
        self.voter_ids: list[int] = list(self.endpoints)
        self.key = key
        self.cluster = cluster
        self.node_env = dict(node_env or {})
        # Bumped on every membership change: workers then reconnect to the new members.
        self.generation = 0
        # Ids after the cluster's highest that clients also know (the reconfig fault adds
        # nodes: see client()).
        self.spare_ids = 0
        self._lock = threading.Lock()

    @classmethod
    def of_cluster(cls, cluster: LocalCluster, node_env: Mapping[str, str]) -> Nodes:
        eps = dict(zip(cluster.node_ids(), cluster.endpoints(), strict=True))
        return cls(eps, cluster.client_key(), cluster, node_env)

    @classmethod
    def discover(cls, endpoints: Sequence[Address], key: bytes) -> Nodes:
        """Ask each endpoint its node id: the partition hook names peers by id."""
        found: dict[int, Address] = {}
        for addr in endpoints:
            with Client([addr], key, timeout_ms=3000) as c:
                try:
                    node_id = c.status().node_id
                except ClientError as e:
                    raise DrillError(f"{addr[0]}:{addr[1]} did not answer: {e}") from None
            found[node_id] = addr
        return cls(found, key)

    @property
    def ids(self) -> list[int]:
        return list(self.endpoints)

    def set_members(self, members: Iterable[int], voters: Iterable[int]) -> None:
        """The membership the log decided (the reconfig fault changes it): the local
        cluster's processes are the members from now on."""
        cluster = self.cluster
        assert cluster is not None, "only a drill's own cluster changes membership"
        ids = sorted(set(members))
        assert ids, "a cluster keeps at least one member"
        with self._lock:
            self.endpoints = {k: _client_endpoint(cluster, k) for k in ids}
            self.voter_ids = sorted(set(voters) & set(ids))
            self.generation += 1

    def client(
        self,
        *,
        timeout_ms: int,
        client_id: str | None = None,
        first: int | None = None,
        site: str = "drill",
    ) -> Client:
        """A client of every node; ``first``: the node its first attempt goes to.

        In a local cluster it also knows the next ids' addresses: a member redirects only to
        leaders its config names, so a client must find a node added meanwhile itself."""
        endpoints = self.endpoints
        order = list(endpoints)
        if first is not None:
            order = [first] + [k for k in order if k != first]
        spare: list[Address] = []
        if self.cluster is not None:
            top = self.cluster.nodes
            spare = [
                _client_endpoint(self.cluster, k) for k in range(top + 1, top + 1 + self.spare_ids)
            ]
        return Client(
            [endpoints[k] for k in order] + spare,
            self.key,
            timeout_ms=timeout_ms,
            client_id=client_id,
            site=site,
        )

    def node_clients(self, timeout_ms: int = STATUS_TIMEOUT_MS) -> dict[int, Client]:
        """One client per node, each talking only to that node. Not thread-safe: per thread."""
        endpoints = self.endpoints
        return {k: Client([a], self.key, timeout_ms=timeout_ms) for k, a in endpoints.items()}


def _client_endpoint(cluster: LocalCluster, k: int) -> Address:
    a = client_address(cluster.host, cluster.base_port, k)
    return (a.host, a.port)


def _status(c: Client) -> dict[str, Any] | None:
    try:
        return dict(to_json(c.status()))
    except ClientError:
        return None


def _leader(clients: Mapping[int, Client]) -> int | None:
    for k, c in clients.items():
        s = _status(c)
        if s is not None and s.get("role") == "leader":
            return k
    return None


def _cluster_view(clients: Mapping[int, Client], voters: Iterable[int]) -> tuple[int | None, bool]:
    """Who leads, and whether every voter answers and follows that leader (healthy)."""
    statuses = {k: _status(c) for k, c in clients.items()}
    leader = next(
        (k for k, s in statuses.items() if s is not None and s.get("role") == "leader"), None
    )
    healthy = leader is not None and all(
        (s := statuses.get(k)) is not None and s.get("leader") == leader for k in voters
    )
    return leader, healthy


@contextmanager
def _closing_all(clients: Mapping[int, Client]) -> Iterator[Mapping[int, Client]]:
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()


# ------------------------------------------------------------------------------ history


@dataclass(frozen=True, slots=True)
class Entry:
    """One operation as a worker saw it, plus what the checks need beyond the checker's
    Operation: the (client_id, seq) it was submitted as, and the error text."""

    operation: Operation
    seq: int
    error: str = ""


class History:
    """Thread-safe, append-only. Times are ms since the drill's start (one monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self._outcomes: Counter[str] = Counter()
        self._t0_ns = time.monotonic_ns()

    def now_ms(self) -> int:
        return (time.monotonic_ns() - self._t0_ns) // 1_000_000

    def add(self, entry: Entry) -> None:
        with self._lock:
            self._entries.append(entry)
            self._outcomes[entry.operation.outcome] += 1

    def outcomes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._outcomes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)


def entry_to_json(e: Entry) -> dict[str, Any]:
    """One JSON line: exact (``op``/``result`` decode back with msgspec) and readable
    (``text``)."""
    o = e.operation
    return {
        "client": o.client_id,
        "seq": e.seq,
        "op": msgspec.to_builtins(o.op),
        "invoke_ms": o.invoke_ms,
        "complete_ms": o.complete_ms,
        "outcome": o.outcome,
        "result": None if o.result is None else msgspec.to_builtins(o.result),
        "text": f"{o.op!r} -> {o.result!r}" if o.outcome == "ok" else f"{o.op!r} -> {o.outcome}",
        "error": e.error,
    }


def entry_from_json(obj: Mapping[str, Any]) -> Entry:
    result = obj.get("result")
    op = Operation(
        client_id=str(obj["client"]),
        op=msgspec.convert(obj["op"], type=Op),
        invoke_ms=int(obj["invoke_ms"]),
        complete_ms=None if obj["complete_ms"] is None else int(obj["complete_ms"]),
        outcome=obj["outcome"],
        result=None if result is None else msgspec.convert(result, type=Result),
    )
    return Entry(op, int(obj.get("seq", 0)), str(obj.get("error", "")))


def write_history(path: Path, entries: Iterable[Entry]) -> int:
    n = 0
    with path.open("w") as f:
        for e in entries:
            f.write(json.dumps(entry_to_json(e), separators=(",", ":")) + "\n")
            n += 1
    return n


def load_history(path: Path) -> list[Entry]:
    """Read a drill's history.jsonl back, e.g. to check it again offline."""
    with path.open() as f:
        return [entry_from_json(json.loads(line)) for line in f if line.strip()]


# ------------------------------------------------------------------------------ workload


class Workload:
    """The drill's objects and the op mix. Keys and site pairs rotate per epoch: a key's
    history stays short (the checker's search is exponential in the worst case) while
    old keys keep being read now and then, so a write lost to a later fault still shows."""

    def __init__(self, run_id: str, epoch_s: float) -> None:
        self.run_id = run_id
        self.prefix = f"drill/{run_id}/"
        self.site_prefix = f"d{run_id}"
        self.epoch_s = epoch_s
        self._top_epoch = 0
        self._lock = threading.Lock()

    def key(self, epoch: int, j: int) -> str:
        return f"{self.prefix}e{epoch}/k{j}"

    def pairs(self, epoch: int) -> tuple[tuple[str, str], tuple[str, str]]:
        a, b = f"{self.site_prefix}e{epoch}a", f"{self.site_prefix}e{epoch}b"
        return (a, b), (b, a)

    def epoch_at(self, ms: int) -> int:
        e = int(ms / 1000 / self.epoch_s)
        with self._lock:
            self._top_epoch = max(self._top_epoch, e)
        return e

    def all_keys(self) -> list[str]:
        with self._lock:
            top = self._top_epoch
        return [self.key(e, j) for e in range(top + 1) for j in range(KEYS_PER_EPOCH)]

    def all_pairs(self) -> list[tuple[str, str]]:
        with self._lock:
            top = self._top_epoch
        return [p for e in range(top + 1) for p in self.pairs(e)]

    def is_drill_site(self, site: str) -> bool:
        return site.startswith(self.site_prefix)

    def next_op(
        self,
        rng: random.Random,
        epoch: int,
        value: bytes,
        seen: Mapping[str, tuple[bytes | None, int]],
    ) -> Op:
        if epoch > 0 and rng.random() < OLD_KEY_READ_FRACTION:
            return Get(key=self.key(rng.randrange(epoch), rng.randrange(KEYS_PER_EPOCH)))
        key = self.key(epoch, rng.randrange(KEYS_PER_EPOCH))
        r = rng.random()
        if r < 0.28:
            return Put(key=key, value=value)
        if r < 0.52:
            return Get(key=key)
        if r < 0.74:
            # Expect what this worker last saw, so a fair share of CASes succeed.
            last_value, last_version = seen.get(key, (None, 0))
            if last_value is not None and rng.random() < 0.5:
                return Cas(key=key, new=value, expect_value=last_value)
            return Cas(key=key, new=value, expect_version=last_version)
        if r < 0.80:
            return Delete(key=key)
        site, other = rng.choice(self.pairs(epoch))
        return Block(site=site, other=other) if r < 0.90 else Unblock(site=site, other=other)


def _remember(seen: dict[str, tuple[bytes | None, int]], op: Op, result: Result) -> None:
    """A worker's last observation per key, to aim its CASes."""
    match op, result:
        case ((Put(key=k, value=v) | Cas(key=k, new=v)), Written(version=ver)):
            seen[k] = (v, ver)
        case Cas(key=k), CasMismatch(value=v, version=ver):
            seen[k] = (v, ver)
        case Get(key=k), Found(value=v, version=ver):
            seen[k] = (v, ver)
        case ((Get(key=k) | Delete(key=k)), (NotFound() | Deleted())):
            seen[k] = (None, 0)


def run_op(client: Client, op: Op, history: History) -> Entry:
    """Submit ``op`` once (the client retries internally with the same seq) and classify.

    "fail" only when the command was certainly not applied: rejected before it was sent, or
    refused as a bad request by the server. A BadRequestError raised *after* a reply
    (an unexpected or undecodable answer) says nothing about whether it was applied, so it is
    "unknown", like every other error.
    """
    invoke = history.now_ms()
    try:
        command = client.next_command(op)
    except BadRequestError as e:
        never_sent = Operation(client.client_id, op, invoke, history.now_ms(), "fail", None)
        return Entry(never_sent, 0, str(e))
    seq = decode_command(command).seq
    outcome: Outcome
    result: Result | None = None
    error = ""
    try:
        result = client.submit(command)
        outcome = "ok"
    except BadRequestError as e:
        error = str(e)
        after_reply = error.startswith(("undecodable result", "the server answered"))
        outcome = "unknown" if after_reply else "fail"
    except UnavailableError as e:
        # Certainly not applied when it never left the client (every endpoint refused) or
        # was a read (no effect); otherwise it may still be applied.
        outcome, error = ("unknown" if e.outcome_unknown else "fail"), str(e)
    except ClientError as e:
        outcome, error = "unknown", f"{type(e).__name__}: {e}"
    except OSError as e:
        outcome, error = "unknown", f"OSError: {e}"
    complete = None if outcome == "unknown" else history.now_ms()
    return Entry(Operation(client.client_id, op, invoke, complete, outcome, result), seq, error)


# ------------------------------------------------------------------------------ faults


@dataclass(slots=True)
class FaultEvent:
    kind: str
    nodes: list[int]
    start_ms: int
    end_ms: int | None = None
    detail: str = ""
    # Whether the fault hit the node that led when it began (None: nobody was known to lead,
    # or the fault is not one node's, e.g. reconfig).
    touches_leader: bool | None = None
    # Whether, when it began, every voter answered and followed that leader: only then is a
    # follower fault alone to blame for an election (not a node still recovering from the
    # previous fault, with which the leader had no live majority left).
    healthy: bool = True
    elections: int = 0  # leader changes first seen between this fault and the next

    @property
    def fault_class(self) -> str:
        """The kind and whom it hit: "kill/leader", "pause/follower", "killall", ...;
        "pause/follower-degraded": a follower fault while another node was not yet back."""
        if self.touches_leader is None:
            return self.kind
        if self.touches_leader:
            return f"{self.kind}/leader"
        return f"{self.kind}/follower" + ("" if self.healthy else "-degraded")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nodes": self.nodes,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "detail": self.detail,
            "class": self.fault_class,
            "elections": self.elections,
        }


def _parse_ballot(text: object) -> tuple[int, int] | None:
    """A status ballot ("round.node") as a comparable pair; None if absent or malformed."""
    if not isinstance(text, str):
        return None
    round_, _, node = text.partition(".")
    try:
        return int(round_), int(node)
    except ValueError:
        return None


class LeaderWatch:
    """Polls every node's status and records each leader ballot the first time any node
    shows it (the leader itself, or a follower naming it at that ballot): the elections.

    Polling can miss a leader that lasted less than a poll round and that no follower
    reported; the count is then a lower bound. The daemons' ``leader`` log lines say the
    same, per node, for a closer look."""

    def __init__(self, nodes: Nodes, clock: Callable[[], int]) -> None:
        self.nodes = nodes
        self.clock = clock
        self.changes: list[tuple[int, tuple[int, int], int]] = []  # (ms, ballot, leader)
        self.polls = 0
        self._top: tuple[int, int] = (0, 0)
        self._stop = threading.Event()

    def observe(self, t_ms: int, status: Mapping[str, Any]) -> None:
        leader = status.get("leader")
        if status.get("role") == "leader":
            ballot = _parse_ballot(status.get("ballot"))
        elif isinstance(leader, int):
            ballot = _parse_ballot(status.get("promised"))
            if ballot is not None and ballot[1] != leader:
                return  # promised a candidate, not (yet) following a leader at it
        else:
            return
        if ballot is None or ballot <= self._top:
            return
        self._top = ballot
        self.changes.append((t_ms, ballot, ballot[1]))

    def run(self) -> None:
        generation = -1
        clients: dict[int, Client] = {}
        try:
            while not self._stop.is_set():
                if self.nodes.generation != generation:
                    for c in clients.values():
                        c.close()
                    generation = self.nodes.generation
                    clients = self.nodes.node_clients(timeout_ms=LEADER_POLL_TIMEOUT_MS)
                for c in clients.values():
                    st = _status(c)
                    if st is not None:
                        self.observe(self.clock(), st)
                self.polls += 1
                self._stop.wait(LEADER_POLL_S)
        finally:
            for c in clients.values():
                c.close()

    def stop(self) -> None:
        self._stop.set()


def attribute_elections(
    events: Sequence[FaultEvent], changes: Sequence[tuple[int, tuple[int, int], int]]
) -> dict[str, dict[str, Any]]:
    """Charge each leader change to the fault in progress or last begun when it was first
    seen (faults run one at a time), and sum per fault class. Changes before the first
    fault (the initial election) are no fault's."""
    ordered = sorted(events, key=lambda ev: ev.start_ms)
    starts = [ev.start_ms for ev in ordered]
    for ev in ordered:
        ev.elections = 0
    for t_ms, _, _ in changes:
        i = bisect.bisect_right(starts, t_ms) - 1
        if i >= 0:
            ordered[i].elections += 1
    figures: dict[str, dict[str, Any]] = {}
    for ev in ordered:
        f = figures.setdefault(
            ev.fault_class, {"faults": 0, "elections": 0, "faults_with_an_election": 0}
        )
        f["faults"] += 1
        f["elections"] += ev.elections
        f["faults_with_an_election"] += ev.elections > 0
    for f in figures.values():
        f["elections_per_fault"] = round(f["elections"] / f["faults"], 3)
    return dict(sorted(figures.items()))


def follower_faults_with_elections(events: Sequence[FaultEvent]) -> list[FaultEvent]:
    """Faults that hit only followers of a healthy cluster and yet were followed by a
    leader change."""
    return [ev for ev in events if ev.touches_leader is False and ev.healthy and ev.elections > 0]


@dataclass(slots=True)
class RestartEvent:
    """One node process started again after a fault. Times in drill ms."""

    node: int
    kind: str  # the fault that stopped it
    down_ms: int  # when it was killed or stopped
    restart_ms: int  # when the new process was started
    ready_ms: int | None = None  # first answered status
    behind_slots: int | None = None  # leader's applied index minus its own, when ready
    caught_up_ms: int | None = None  # its applied index reached the leader's (at ready)
    first_write_ms: int | None = None  # first ok write invoked after restart_ms (computed)

    def as_dict(self) -> dict[str, Any]:
        def since(t: int | None) -> int | None:
            return None if t is None else t - self.restart_ms

        return {
            "node": self.node,
            "kind": self.kind,
            "down_ms": self.restart_ms - self.down_ms,
            "ready_after_ms": since(self.ready_ms),
            "behind_slots": self.behind_slots,
            "catch_up_ms": since(self.caught_up_ms),
            "first_write_after_ms": since(self.first_write_ms),
        }


class FaultInjector:
    """One fault at a time, on a seeded schedule; every fault is undone before the next.

    One at a time keeps each fault's effect readable in the history and the restart figures
    meaningful; "killall" covers the everything-at-once case.
    """

    def __init__(
        self, nodes: Nodes, kinds: Sequence[str], rng: random.Random, spec: DrillSpec
    ) -> None:
        self.nodes = nodes
        self.kinds = list(kinds)
        self.rng = rng
        self.spec = spec
        self.events: list[FaultEvent] = []
        self.restarts: list[RestartEvent] = []
        self.current = ""
        self.errors: list[str] = []
        self.crashed = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._clock: Callable[[], int] = lambda: 0
        self._healthy = True  # as of the last _victims
        self.reconfig = Reconfig(self)

    def run(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        bag: list[str] = []
        try:
            while not self._stop.is_set() and self.kinds:
                if self._stop.wait(self.rng.uniform(*self.spec.fault_gap_s)):
                    break
                if not bag:
                    # Shuffled rounds, not independent draws: every kind asked for
                    # happens within the first len(kinds) faults, even in a short drill.
                    bag = self.rng.sample(self.kinds, len(self.kinds))
                kind = bag.pop()
                # Victims are voters: with the reconfig fault the members change, and a
                # learner's crash does not count against the majority.
                voters = self.nodes.voter_ids
                minority_max = (len(voters) - 1) // 2
                with _closing_all(self.nodes.node_clients()) as clients:
                    try:
                        self._one(kind, clients, voters, minority_max)
                    except (ClientError, OSError, RuntimeError) as e:
                        # A fault whose set-up failed is reported; the schedule goes on.
                        self.errors.append(f"{kind}: {e}")
                    finally:
                        self.current = ""
        except Exception as e:  # a harness bug: the drill must not claim "0 violations"
            self.crashed = f"fault injector stopped: {type(e).__name__}: {e}"

    def stop(self) -> None:
        self._stop.set()

    def join_watchers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in list(self._watchers):
            t.join(max(0.0, deadline - time.monotonic()))

    def _sleep(self, bounds: tuple[float, float]) -> None:
        """A fault's duration; cut short when the drill ends (the fault is then undone)."""
        self._stop.wait(self.rng.uniform(*bounds))

    def _victims(
        self, clients: Mapping[int, Client], ids: list[int], count: int
    ) -> tuple[list[int], int | None]:
        leader, self._healthy = _cluster_view(clients, self.nodes.voter_ids)
        # Draw the same numbers whoever leads, so the seed fixes the schedule's shape.
        with_leader = self.rng.random() < LEADER_VICTIM_FRACTION and leader is not None
        others = [k for k in ids if k != leader]
        if with_leader and leader is not None:
            return [leader, *self.rng.sample(others, count - 1)], leader
        return self.rng.sample(others, min(count, len(others))), leader

    def _event(
        self, kind: str, nodes: list[int], detail: str, leader: int | None = None
    ) -> FaultEvent:
        touches = None if leader is None else leader in nodes
        ev = FaultEvent(
            kind,
            sorted(nodes),
            self._clock(),
            detail=detail,
            touches_leader=touches,
            healthy=self._healthy,
        )
        with self._lock:
            self.events.append(ev)
        self.current = f"{kind} {','.join(f'n{k}' for k in ev.nodes)} {detail}".strip()
        return ev

    def _one(
        self, kind: str, clients: Mapping[int, Client], ids: list[int], minority_max: int
    ) -> None:
        cluster = self.nodes.cluster
        if kind == "partition":
            count = self.rng.randint(1, minority_max)
            side, leader = self._victims(clients, ids, count)
            rest = [k for k in self.nodes.ids if k not in side]
            note = f"from {','.join(f'n{k}' for k in rest)}" + (
                " (leader isolated)" if leader in side else ""
            )
            ev = self._event("partition", side, note, leader)
            try:
                for a in side:
                    for b in rest:
                        set_partition(clients, a, b, True)
                self._sleep(PARTITION_S)
            finally:
                for a in side:
                    for b in rest:
                        set_partition(clients, a, b, False)
                ev.end_ms = self._clock()
            return
        assert cluster is not None, f"fault {kind} needs processes this drill started"
        if kind == "pause":
            victims, leader = self._victims(clients, ids, 1)
            ev = self._event("pause", victims, "(leader)" if leader in victims else "", leader)
            try:
                cluster.signal(victims[0], signal.SIGSTOP)
                self._sleep(PAUSE_S)
            finally:
                cluster.signal(victims[0], signal.SIGCONT)
                ev.end_ms = self._clock()
            return
        if kind == "kill":
            victims, leader = self._victims(clients, ids, self.rng.randint(1, minority_max))
            notes = ["(leader)"] if leader in victims else []
            snapshot_first = self.rng.random() < SNAPSHOT_BEFORE_KILL_FRACTION
            if snapshot_first:
                # The snapshot is persisted on the daemon's next loop turn after it answers:
                # killing now lands inside or just before that write.
                with suppress(ClientError):
                    clients[victims[0]].snapshot()
                    notes.append(f"right after a snapshot on n{victims[0]}")
            self._crash("kill", victims, " ".join(notes), KILL_DOWN_S, leader)
            return
        if kind == "killall":
            self._crash("killall", self.nodes.ids, "every node at once", KILLALL_DOWN_S, None)
            return
        if kind == "reconfig":
            self.reconfig.step()
            return
        if kind == "restart":
            victims, leader = self._victims(clients, ids, 1)
            ev = self._event(
                "restart", victims, "SIGTERM (leader)" if leader in victims else "", leader
            )
            down = self._clock()
            cluster.stop(victims[0])
            self._start(victims[0], "restart", down)
            ev.end_ms = self._clock()
            return
        raise AssertionError(f"unhandled fault kind {kind!r}")

    def _crash(
        self,
        kind: str,
        victims: list[int],
        note: str,
        down_s: tuple[float, float],
        leader: int | None,
    ) -> None:
        cluster = self.nodes.cluster
        assert cluster is not None
        ev = self._event(kind, victims, note, leader)
        down = self._clock()
        try:
            # Signal all first, then wait: "at once" means no victim outlives another by a
            # whole process exit.
            for k in victims:
                cluster.signal(k, signal.SIGKILL)
            for k in victims:
                cluster.kill(k)
            self._sleep(down_s)
        finally:
            for k in victims:
                self._start(k, kind, down)
            ev.end_ms = self._clock()

    def _start(self, k: int, kind: str, down_ms: int) -> None:
        cluster = self.nodes.cluster
        assert cluster is not None
        cluster.start(k, env=self.nodes.node_env)
        ev = RestartEvent(node=k, kind=kind, down_ms=down_ms, restart_ms=self._clock())
        with self._lock:
            self.restarts.append(ev)
        t = threading.Thread(target=self._watch, args=(ev,), name=f"drill-restart-n{k}")
        t.daemon = True
        self._watchers.append(t)
        t.start()

    def _watch(self, ev: RestartEvent) -> None:
        """Ready: the node answers. Caught up: its applied index reached the leader's applied
        index at that moment (under load the leader keeps moving, so "equal to the leader
        now" might never hold; "where the leader was when it came back" always can)."""
        deadline = time.monotonic() + READY_TIMEOUT_S + CATCH_UP_TIMEOUT_S
        with _closing_all(self.nodes.node_clients(timeout_ms=500)) as clients:
            me = clients.get(ev.node)
            if me is None:
                return  # removed from the cluster meanwhile
            mine: dict[str, Any] | None = None
            while mine is None and time.monotonic() < deadline:
                mine = _status(me)
                if mine is None:
                    time.sleep(POLL_S)
            if mine is None:
                return
            ev.ready_ms = self._clock()
            target: int | None = None
            while target is None and time.monotonic() < deadline:
                for k, c in clients.items():
                    s = mine if k == ev.node else _status(c)
                    if s is not None and s.get("role") == "leader":
                        target = int(s["applied_index"])
                        break
                else:
                    time.sleep(POLL_S)
                    mine = _status(me) or mine
            if target is None:
                return
            ev.behind_slots = max(0, target - int(mine["applied_index"]))
            while time.monotonic() < deadline:
                s = _status(me)
                if s is not None and int(s["applied_index"]) >= target:
                    ev.caught_up_ms = self._clock()
                    return
                time.sleep(POLL_S)


class Reconfig:
    """The reconfig fault: one membership step per turn, mixed with crashes, on the drill's
    own cluster. Steps come in shuffled rounds of RECONFIG_OPS, skipping those the size
    forbids: the voters stay between --nodes and --nodes + RECONFIG_GROW_MAX.

    - add: a fresh node id with an empty data dir, ``member add``, catch-up, ``promote``;
    - remove: ``member remove`` a voter (the leader half of the time), then stop it;
    - replace: a host whose disk is lost: SIGKILL, ``member remove``, delete the data dir,
      check that the daemon refuses to start without it, then add a fresh node;
    - transfer: ``leader transfer`` to a random voter, or to the most caught-up one;
    - crash: SIGKILL one voter, restart it after a while.

    The leader may refuse a step (another change in flight, a learner still behind, a
    membership without a live majority): a refusal is its right and is counted, not a
    violation. A step whose outcome is unknown is settled by asking the leader for the
    membership, which is the truth the final checks use: removed nodes leave the digest
    comparison, and their processes are stopped.
    """

    def __init__(self, injector: FaultInjector) -> None:
        self.injector = injector
        self.nodes = injector.nodes
        self.ops: Counter[str] = Counter()  # steps attempted, by op
        self.changes: dict[str, Counter[str]] = {}  # admin request -> outcome -> count
        self.refusals: list[str] = []  # the leader's words, the first few
        self.empty_start_refused = 0
        self.findings: list[str] = []  # violations: a wiped node that started
        self.added: list[int] = []
        self.removed: list[int] = []
        self._bag: list[str] = []
        self._epoch = -1
        # Local nodes the drill is adding or removing: the only processes a membership
        # answer may stop (an answer from a deposed leader must not stop a new member).
        self._in_play: set[int] = set()
        self._learners: list[int] = []

    def step(self) -> None:
        self.sync()
        self._settle()
        # Clients of the members as they are now (the previous step may have changed them).
        with _closing_all(self.nodes.node_clients()) as clients:
            self._step(clients)

    def _step(self, clients: Mapping[int, Client]) -> None:
        voters = len(self.nodes.voter_ids)
        allowed = {"transfer", "crash", "replace"}
        if voters < self.injector.spec.nodes + RECONFIG_GROW_MAX or self._learners:
            allowed.add("add")
        if voters > self.injector.spec.nodes:
            allowed.add("remove")
        op = next((o for o in self._bag if o in allowed), None)
        if op is None:
            self._bag = self.injector.rng.sample(RECONFIG_OPS, len(RECONFIG_OPS))
            op = next(o for o in self._bag if o in allowed)
        self._bag.remove(op)
        self.ops[op] += 1
        try:
            match op:
                case "add":
                    self._add()
                case "remove":
                    self._remove(clients)
                case "replace":
                    self._replace(clients)
                case "transfer":
                    self._transfer(clients)
                case "crash":
                    victims, leader = self.injector._victims(clients, self.nodes.voter_ids, 1)
                    note = "crash" + (" (leader)" if leader in victims else "")
                    self.injector._crash("reconfig", victims, note, KILL_DOWN_S, None)
        finally:
            if self.sync():
                self._in_play.clear()  # settled: removed (and stopped) or still members

    # ------------------------------------------------------------------ the steps

    def _add(self) -> None:
        inj, cluster = self.injector, self.nodes.cluster
        assert cluster is not None
        if self._learners:
            k = self._learners[0]  # a learner an earlier step left behind: promote it
            ev = inj._event("reconfig", [k], "promote a learner left behind")
        else:
            k = cluster.add_node(extra_config=DRILL_NODE_CONFIG)
            self._in_play.add(k)
            cluster.start(k, env=self.nodes.node_env)
            ev = inj._event("reconfig", [k], "add")
            outcome = self._change("add", ChangeMember("add", k, _peer(cluster, k)))
            if outcome != "ok":
                ev.detail += f": {outcome}"
                ev.end_ms = inj._clock()
                if outcome == "refused":
                    cluster.remove_node(k)  # never a member
                return
            self.added.append(k)
            self.sync()  # a member now: the workers may use it
        caught_up = self._wait_caught_up(k)
        if caught_up:
            outcome = self._change("promote", ChangeMember("promote", k))
            ev.detail += f", promote: {outcome}"
        else:
            ev.detail += ", left a learner (did not catch up in time)"
        ev.end_ms = inj._clock()

    def _remove(self, clients: Mapping[int, Client]) -> None:
        inj, cluster = self.injector, self.nodes.cluster
        assert cluster is not None
        victims, leader = inj._victims(clients, self.nodes.voter_ids, 1)
        k = victims[0]
        ev = inj._event("reconfig", [k], "remove" + (" (leader)" if k == leader else ""))
        self._in_play.add(k)
        outcome = self._change("remove", ChangeMember("remove", k))
        ev.detail += f": {outcome}"
        if outcome == "ok":
            cluster.remove_node(k)
            self.removed.append(k)
        ev.end_ms = inj._clock()

    def _replace(self, clients: Mapping[int, Client]) -> None:
        """The host of a voter is lost with its disk. It must be removed, never restarted
        empty (it would forget its promises), and a new node id takes its place."""
        inj, cluster = self.injector, self.nodes.cluster
        assert cluster is not None
        victims, leader = inj._victims(clients, self.nodes.voter_ids, 1)
        k = victims[0]
        ev = inj._event("reconfig", [k], "replace" + (" (leader)" if k == leader else ""))
        down = inj._clock()
        cluster.kill(k)
        self._in_play.add(k)
        outcome = self._change("remove", ChangeMember("remove", k))
        if outcome != "ok":
            # Still (or maybe) a member: its disk stays and it comes back. A lost disk of
            # a member nobody could remove would stop the drill's majority arithmetic.
            ev.detail += f": remove {outcome}, restarted with its disk"
            inj._start(k, "reconfig", down)
            ev.end_ms = inj._clock()
            return
        cluster.remove_node(k)
        self.removed.append(k)
        shutil.rmtree(cluster.root / "data" / f"n{k}", ignore_errors=True)
        refused = self._check_empty_start_refused(k)
        ev.detail += f": removed, data dir deleted, empty start {refused}"
        ev.end_ms = inj._clock()
        self._add()

    def _transfer(self, clients: Mapping[int, Client]) -> None:
        inj = self.injector
        leader = _leader(clients)
        others = [k for k in self.nodes.voter_ids if k != leader]
        # Draw the same numbers whatever the outcome, so the seed fixes the shape.
        named = inj.rng.random() < 0.5
        target = inj.rng.choice(others) if others else None
        if not named:
            target = None
        ev = inj._event(
            "reconfig",
            [] if target is None else [target],
            "transfer"
            + ("" if leader is None else f" from n{leader}")
            + ("" if target is None else f" to n{target}"),
        )
        outcome = self._change("transfer", Transfer(target))
        ev.detail += f": {outcome}"
        ev.end_ms = inj._clock()

    def _check_empty_start_refused(self, k: int) -> str:
        cluster = self.nodes.cluster
        assert cluster is not None
        cmd = [sys.executable, "-m", "paxosd", "run", "--config", str(cluster.config_path(k))]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=EMPTY_START_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            self.findings.append(
                f"node {k}, removed after its disk was lost, started with no data dir "
                f"(still running after {EMPTY_START_TIMEOUT_S:.0f} s; killed)"
            )
            return "NOT refused"
        if done.returncode == 0:
            self.findings.append(f"node {k} started with no data dir and exited 0")
            return "NOT refused"
        self.empty_start_refused += 1
        return "refused"

    # ------------------------------------------------------------------ the leader

    def _change(self, name: str, query: ChangeMember | Transfer) -> str:
        """Ask the leader; "ok", "refused" or "unknown". A refusal is the leader's own no;
        anything else it rejects is a harness bug and ends up in the errors."""
        counts = self.changes.setdefault(name, Counter())
        outcome = "unknown"
        deadline = time.monotonic() + ADMIN_WAIT_S
        while time.monotonic() < deadline:
            if self.injector._stop.is_set() and name == "promote":
                break  # the drill is ending: leave a learner, do not stall the heal
            with _closing_all(self.nodes.node_clients()) as clients:
                leader = _leader(clients)
            endpoint = None if leader is None else self.nodes.endpoints.get(leader)
            if endpoint is None:
                time.sleep(0.3)
                continue
            with Client([endpoint], self.nodes.key, timeout_ms=ADMIN_TIMEOUT_MS) as c:
                try:
                    c.ask(query)
                    outcome = "ok"
                    break
                except RefusedError as e:
                    if e.not_leader:
                        time.sleep(0.3)  # the leader moved between the two questions
                        continue
                    outcome = "refused"
                    if len(self.refusals) < REFUSALS_KEPT_MAX:
                        self.refusals.append(f"{name} {query}: {e.reason}")
                    break
                except BadRequestError as e:
                    self.injector.errors.append(f"{name} {query}: {e}")
                    break
                except UnavailableError as e:
                    if not e.outcome_unknown:
                        outcome = "refused"  # busy, or never sent: nothing changed
                    break  # else no answer in time: the change may or may not be decided
                except ClientError:
                    break
        counts[outcome] += 1
        return outcome

    def _wait_caught_up(self, k: int) -> bool:
        deadline = time.monotonic() + PROMOTE_WAIT_S
        while time.monotonic() < deadline and not self.injector._stop.is_set():
            data = self._members()
            row = None if data is None else _row(data, k)
            lag = None if row is None or not row["connected"] else row["decided_lag"]
            if lag is not None and int(lag) <= PROMOTE_LAG_SLOTS:
                return True
            time.sleep(0.2)
        return False

    def _settle(self) -> None:
        deadline = time.monotonic() + SETTLE_WAIT_S
        while time.monotonic() < deadline and not self.injector._stop.is_set():
            data = self._members()
            if data is not None and all(m["connected"] for m in data["members"]):
                return
            time.sleep(0.2)

    def _members(self) -> dict[str, Any] | None:
        with _closing_all(self.nodes.node_clients(timeout_ms=2000)) as clients:
            leader = _leader(clients)
            if leader is None:
                return None
            try:
                return dict(to_json(clients[leader].members()))
            except ClientError:
                return None

    def sync(self) -> bool:
        """Take the membership from the leader: the drill's members from now on. A local
        node it no longer names is stopped, if the drill was adding or removing it.
        False when no leader answered (nothing changed)."""
        cluster = self.nodes.cluster
        if cluster is None:
            return False
        data = self._members()
        if data is None or int(data["epoch"]) < self._epoch:
            return False  # no leader, or a deposed one that has not learned the latest change
        self._epoch = int(data["epoch"])
        members = {int(m["node_id"]) for m in data["members"]}
        voters = {int(m["node_id"]) for m in data["members"] if m["role"] == "voter"}
        for k in cluster.node_ids():
            if k not in members and k in self._in_play:
                cluster.remove_node(k)
        self._in_play &= members
        local = set(cluster.node_ids())
        self._learners = sorted((members - voters) & local)
        if set(self.nodes.ids) != members & local or set(self.nodes.voter_ids) != voters:
            self.nodes.set_members(members & local, voters)
        return True

    def report(self) -> dict[str, Any]:
        return {
            "ops": dict(self.ops),
            "changes": {k: dict(v) for k, v in sorted(self.changes.items())},
            "refusals": list(self.refusals),
            "empty_start_refused": self.empty_start_refused,
            "added": list(self.added),
            "removed": list(self.removed),
            "members": self.nodes.ids,
            "voters": list(self.nodes.voter_ids),
        }


def _peer(cluster: LocalCluster, k: int) -> str:
    return cluster.peer_address(k)


def _row(data: Mapping[str, Any], k: int) -> dict[str, Any] | None:
    return next((m for m in data["members"] if int(m["node_id"]) == k), None)


def set_partition(clients: Mapping[int, Client], a: int, b: int, on: bool) -> None:
    """Cut (or restore) the link between ``a`` and ``b``: the hook drops traffic at the node
    it is set on, so both ends are told. A node that is down has nothing to heal."""
    for x, y in ((a, b), (b, a)):
        with suppress(UnavailableError):
            clients[x].partition(y, on)


# ------------------------------------------------------------------------------ the log


@dataclass(slots=True)
class LogCopy:
    """Decided slots copied from the replicas while they still held them."""

    start: int  # the first slot the drill needs (decided index + 1 when it began)
    next_slot: int
    slots: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # compacted before copied

    def complete_through(self, top: int) -> bool:
        return not self.gaps and self.next_slot > top


class LogCollector:
    def __init__(self, nodes: Nodes, start: int) -> None:
        self.nodes = nodes
        self.copy = LogCopy(start=start, next_slot=start)
        self._stop = threading.Event()
        self._preferred: int | None = None

    def run(self) -> None:
        generation = -1
        clients: dict[int, Client] = {}
        try:
            while not self._stop.is_set():
                if self.nodes.generation != generation:
                    # Follow the membership: a removed node is gone, a new one may hold
                    # the slots (its log starts at the snapshot it caught up from).
                    for c in clients.values():
                        c.close()
                    generation = self.nodes.generation
                    clients = self.nodes.node_clients()
                self.pull(clients, top=None)
                self._stop.wait(LOG_POLL_S)
        finally:
            for c in clients.values():
                c.close()

    def stop(self) -> None:
        self._stop.set()

    def pull(self, clients: Mapping[int, Client], top: int | None) -> None:
        """Copy decided slots from next_slot on, from whichever node still has them;
        ``top``: keep going until this slot is copied (or nobody has it)."""
        c = self.copy
        for _ in range(100_000):  # bounded: each round copies a page or gives up
            if top is not None and c.next_slot > top:
                return
            order = sorted(clients, key=lambda k: k != self._preferred)
            progressed = False
            log_starts: list[int] = []
            for k in order:
                try:
                    d = clients[k].view_log(c.next_slot, limit=LOG_PAGE_ROWS)
                except ClientError:
                    continue
                log_starts.append(d.log_start)
                got = 0
                for row in d.rows:
                    if row.kind != "decided" or row.slot != c.next_slot:
                        continue
                    c.slots[c.next_slot] = tuple(row.value)
                    c.next_slot += 1
                    got += 1
                if got:
                    self._preferred = k
                    progressed = True
                    break
            if progressed:
                continue
            if len(log_starts) == len(clients) and min(log_starts) > c.next_slot:
                # Every node compacted past what we have: report, skip on. A node that did
                # not answer (paused, killed) may still hold the slots: wait for it.
                jump = min(log_starts)
                c.gaps.append((c.next_slot, jump - 1))
                c.next_slot = jump
                continue
            return


# ------------------------------------------------------------------------------ checks


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # linearizability, lost-write, duplicate, exactly-once, digest, state, ...
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


_KV = dict[str, tuple[bytes, int]]
_Blocks = set[tuple[str, str]]


def replay_exactly_once(
    commands: Iterable[Command], in_scope: Callable[[Command], bool]
) -> tuple[_KV, _Blocks, Counter[tuple[str, int]]]:
    """Apply commands in log order, each (client_id, seq) at most once — the state a replica
    must hold. Written independently of paxosd.statemachine.machine on purpose: a bug in its session
    table would otherwise be replayed as the expected answer. Returns the state and how many
    decided copies each (client_id, seq) had (retries legitimately decide a command twice).
    """
    kv: _KV = {}
    blocks: _Blocks = set()
    last_seq: dict[str, int] = {}
    copies: Counter[tuple[str, int]] = Counter()
    for cmd in commands:
        if not in_scope(cmd):
            continue
        copies[(cmd.client_id, cmd.seq)] += 1
        if cmd.seq <= last_seq.get(cmd.client_id, -1):
            continue  # a retry's second decided copy, or older than the session: no effect
        last_seq[cmd.client_id] = cmd.seq
        match cmd.op:
            case Put(key=k, value=v):
                kv[k] = (v, kv[k][1] + 1 if k in kv else 1)
            case Cas(key=k, new=new, expect_value=ev, expect_version=evv):
                cur = kv.get(k)
                if evv is not None:
                    ok = evv == (cur[1] if cur is not None else 0)
                else:
                    ok = cur is not None and cur[0] == ev
                if ok:
                    kv[k] = (new, cur[1] + 1 if cur is not None else 1)
            case Delete(key=k):
                kv.pop(k, None)
            case Block(site=s, other=o):
                blocks.add((s, o))
            case Unblock(site=s, other=o):
                blocks.discard((s, o))
            case _:
                pass  # reads change nothing
    return kv, blocks, copies


def check_log(
    log: LogCopy,
    entries: Sequence[Entry],
    workload: Workload,
    replicas: Mapping[int, tuple[_KV, _Blocks]],
) -> tuple[list[Violation], dict[str, Any]]:
    """Durability and exactly-once, from the decided log and the replicas' final state."""
    violations: list[Violation] = []
    decoded: list[Command] = []
    undecodable = 0
    for slot in sorted(log.slots):
        for raw in log.slots[slot]:
            try:
                decoded.append(decode_command(raw))
            except BadCommand:
                undecodable += 1

    def in_scope(cmd: Command) -> bool:
        match cmd.op:
            case Put(key=k) | Cas(key=k) | Delete(key=k) | Get(key=k):
                return k.startswith(workload.prefix)
            case Block(site=s) | Unblock(site=s):
                return workload.is_drill_site(s)
        return False

    # 1. One value, one command: a value under two (client, seq) pairs was submitted twice
    #    as different commands, which the session table cannot deduplicate.
    by_value: dict[bytes, set[tuple[str, int]]] = {}
    bytes_of: dict[tuple[str, int], set[bytes]] = {}
    for cmd in decoded:
        if not in_scope(cmd):
            continue
        bytes_of.setdefault((cmd.client_id, cmd.seq), set()).add(msgspec.msgpack.encode(cmd.op))
        if isinstance(cmd.op, Put | Cas):
            v = cmd.op.value if isinstance(cmd.op, Put) else cmd.op.new
            by_value.setdefault(v, set()).add((cmd.client_id, cmd.seq))
    for v, owners in by_value.items():
        if len(owners) > 1:
            violations.append(
                Violation("duplicate", f"value {v!r} was decided as {len(owners)} commands")
            )
    for pair, ops in bytes_of.items():
        if len(ops) > 1:
            violations.append(
                Violation("duplicate", f"{pair} was decided with {len(ops)} different operations")
            )

    # 2. Every acknowledged write is in the decided log (only checkable when every slot
    #    since the drill began was copied).
    complete = not log.gaps
    in_log = set(bytes_of)
    lost = 0
    if complete:
        for e in entries:
            o = e.operation
            if o.outcome != "ok" or is_read(o.op) or e.seq == 0:
                continue
            if not isinstance(o.result, Written | Deleted | Changed | CasMismatch):
                continue
            if (o.client_id, e.seq) not in in_log:
                lost += 1
                if lost <= 5:
                    violations.append(
                        Violation(
                            "lost-write",
                            f"{o.client_id} seq {e.seq}: {o.op!r} was acknowledged "
                            f"({o.result!r}) at {o.complete_ms} ms but is in no decided slot",
                        )
                    )
        if lost > 5:
            violations.append(Violation("lost-write", f"... {lost} acknowledged writes in all"))

    # 3. The log applied exactly once per (client, seq) is what every replica holds.
    kv, blocks, copies = replay_exactly_once(decoded, in_scope)
    if complete:
        for node, (r_kv, r_blocks) in sorted(replicas.items()):
            diff = _diff_state(kv, blocks, r_kv, r_blocks)
            if diff:
                violations.append(
                    Violation(
                        "exactly-once",
                        f"node {node}'s state is not the decided log applied once per "
                        f"(client, seq): {diff}",
                    )
                )
    info = {
        "slots_copied": len(log.slots),
        "first_slot": log.start,
        "last_slot": log.next_slot - 1,
        "commands": len(decoded),
        "drill_commands": sum(copies.values()),
        "decided_more_than_once": sum(1 for n in copies.values() if n > 1),
        "undecodable": undecodable,
        "gaps": [list(g) for g in log.gaps],
        "complete": complete,
    }
    return violations, info


def _diff_state(kv: _KV, blocks: _Blocks, r_kv: _KV, r_blocks: _Blocks) -> str:
    for k in sorted(set(kv) | set(r_kv)):
        if kv.get(k) != r_kv.get(k):
            return f"key {k!r}: expected {kv.get(k)!r}, holds {r_kv.get(k)!r}"
    if blocks != r_blocks:
        return f"blocks: expected {sorted(blocks)}, holds {sorted(r_blocks)}"
    return ""


def restart_figures(restarts: Sequence[RestartEvent], entries: Sequence[Entry]) -> None:
    """Fill each restart's first successful write: the earliest acknowledgement of a write
    that was invoked at or after the restart and took effect."""
    writes = sorted(
        (e.operation.invoke_ms, e.operation.complete_ms)
        for e in entries
        if e.operation.outcome == "ok"
        and e.operation.complete_ms is not None
        and isinstance(e.operation.result, Written | Deleted | Changed)
    )
    invokes = [w[0] for w in writes]
    for ev in restarts:
        best: int | None = None
        for invoke, complete in writes[bisect.bisect_left(invokes, ev.restart_ms) :]:
            if best is not None and invoke > best:
                break  # completes after it was invoked, so nothing later can beat best
            if complete is not None and (best is None or complete < best):
                best = complete
        ev.first_write_ms = best


def _summary(values: Sequence[int | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "missing": len(values)}
    return {
        "n": len(got),
        "missing": len(values) - len(got),
        "median_ms": int(statistics.median(got)),
        "max_ms": max(got),
    }


# ------------------------------------------------------------------------------ the drill


@dataclass(slots=True)
class Convergence:
    ok: bool
    rows: dict[int, dict[str, Any]]
    problem: str = ""


def wait_converged(nodes: Nodes, timeout_s: float) -> Convergence:
    """Every node answers, one leads, applied == decided, and all agree on index and digest,
    twice in a row (so a slot being applied between two reads cannot fake agreement)."""
    deadline = time.monotonic() + timeout_s
    problem = "no answer"
    rows: dict[int, dict[str, Any]] = {}
    previous: tuple[int, str] | None = None
    with _closing_all(nodes.node_clients()) as clients:
        while time.monotonic() < deadline:
            rows = {}
            for k, c in clients.items():
                s = _status(c)
                if s is not None:
                    rows[k] = s
            missing = [k for k in clients if k not in rows]
            leaders = [k for k, s in rows.items() if s.get("role") == "leader"]
            applied = {int(s["applied_index"]) for s in rows.values()}
            decided = {int(s["decided_index"]) for s in rows.values()}
            digests = {str(s["digest"]) for s in rows.values()}
            if missing:
                problem = f"node(s) {missing} do not answer"
            elif len(leaders) != 1:
                problem = f"{len(leaders)} leaders"
            elif len(applied) != 1 or applied != decided or len(digests) != 1:
                problem = "applied/decided/digest differ: " + ", ".join(
                    f"n{k} applied {s['applied_index']} decided {s['decided_index']} "
                    f"digest {str(s['digest'])[:12]}"
                    for k, s in sorted(rows.items())
                )
            else:
                now = (applied.pop(), digests.pop())
                if now == previous:
                    return Convergence(True, rows)
                previous = now
                time.sleep(0.2)
                continue
            previous = None
            time.sleep(0.2)
    return Convergence(False, rows, problem)


def diagnose_convergence(conv: Convergence) -> list[Violation]:
    """Why the replicas did not converge, split by meaning: equal applied indexes with
    different digests is divergence (a safety violation); a replica behind is a catch-up
    (liveness) failure; anything else (no leader, no answer) is reported as it is."""
    out: list[Violation] = []
    by_index: dict[int, dict[str, list[int]]] = {}
    for k, s in conv.rows.items():
        by_index.setdefault(int(s["applied_index"]), {}).setdefault(str(s["digest"]), []).append(k)
    for index, digests in sorted(by_index.items()):
        if len(digests) > 1:
            sides = "; ".join(f"n{','.join(map(str, ks))}: {d[:16]}" for d, ks in digests.items())
            out.append(Violation("digest", f"different digests at applied index {index}: {sides}"))
    if len(by_index) > 1:
        top = max(by_index)
        behind = sorted(
            (k, i) for i, ds in by_index.items() if i < top for ks in ds.values() for k in ks
        )
        out.append(
            Violation(
                "convergence",
                "still behind after healing: "
                + ", ".join(f"n{k} at applied index {i} (others at {top})" for k, i in behind)
                + "; the state checks cover the replicas at the top index only; see the node logs",
            )
        )
    if not out:
        out.append(Violation("convergence", f"after the final reads: {conv.problem}"))
    return out


def _replica_state(
    nodes: Nodes, workload: Workload, which: Iterable[int]
) -> dict[int, tuple[_KV, _Blocks]]:
    """Each replica's drill keys and pairs, read from its own applied state."""
    out: dict[int, tuple[_KV, _Blocks]] = {}
    wanted = set(which)
    with _closing_all(nodes.node_clients(timeout_ms=5000)) as clients:
        for k, c in clients.items():
            if k not in wanted:
                continue
            rows = c.stale_read(Scan(prefix=workload.prefix, limit=1000))
            listed = c.stale_read(Blocks(site=None))
            if not isinstance(rows, Rows) or rows.more:
                raise ClientError(f"node {k}: the scan of the drill keys gave {rows!r}")
            if not isinstance(listed, BlockList):
                raise ClientError(f"node {k}: the block listing gave {listed!r}")
            kv = {r.key: (r.value, r.version) for r in rows.rows}
            blocks = {(p.site, p.other) for p in listed.pairs if workload.is_drill_site(p.site)}
            out[k] = (kv, blocks)
    return out


def _final_reads(nodes: Nodes, workload: Workload, history: History, timeout_ms: int) -> list[str]:
    """A linearizable read of every key and one listing of every pair, into the history: an
    acknowledged write that a crash lost surfaces here as a read the checker cannot explain."""
    problems: list[str] = []
    ops: list[Op] = [Get(key=k) for k in workload.all_keys()]
    ops.append(Blocks(site=None))
    with nodes.client(timeout_ms=timeout_ms, client_id=f"{workload.run_id}-final") as c:
        for op in ops:
            e = run_op(c, op, history)
            history.add(e)
            if e.operation.outcome != "ok":
                problems.append(f"{op!r}: {e.operation.outcome} ({e.error})")
    return problems


def run_drill(
    spec: DrillSpec,
    *,
    nodes: Nodes | None = None,
    parent_dir: Path | None = None,
    keep: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run one drill; returns the report. With ``nodes`` None it starts a fresh local cluster
    of ``spec.nodes`` in a new folder under ``parent_dir`` and stops it at the end. The folder
    (history.jsonl, report.json, node logs) is kept when a violation is found or ``keep``.

    :raises DrillError: bad spec, or the cluster did not start.
    """
    spec.validate(endpoints=nodes is not None)
    say: ProgressFn = progress or (lambda _p: None)
    run_id = secrets.token_hex(3)
    parent = parent_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"paxosd-drill-{run_id}-", dir=parent))
    cluster: LocalCluster | None = None
    report: dict[str, Any] = {}
    try:
        if nodes is None:
            say(DrillProgress("starting", 0, spec.duration_s, {}, 0, f"{spec.nodes} nodes"))
            cluster = LocalCluster.create(
                root / "cluster",
                spec.nodes,
                extra_config=DRILL_NODE_CONFIG,
            )
            env = dict(spec.node_env)
            for k in cluster.node_ids():
                cluster.start(k, env=env)
            try:
                cluster.wait_ready()
            except ClientError as e:
                raise DrillError(f"local cluster did not start: {e}; logs in {root}") from None
            nodes = Nodes.of_cluster(cluster, env)
        report = _Drill(spec, nodes, run_id, root, say).run()
        report["folder"] = str(root)
        report["kept"] = bool(report["violations"]) or keep
        (root / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        return report
    finally:
        if cluster is not None:
            cluster.down()
        if not report.get("kept"):
            shutil.rmtree(root, ignore_errors=True)


class _Drill:
    def __init__(
        self, spec: DrillSpec, nodes: Nodes, run_id: str, root: Path, say: ProgressFn
    ) -> None:
        self.spec = spec
        self.nodes = nodes
        self.run_id = run_id
        self.root = root
        self.say = say
        self.history = History()
        self.workload = Workload(run_id, spec.epoch_s)
        self.stop_workers = threading.Event()
        self.worker_errors: list[str] = []
        rng = random.Random(spec.seed)
        self.injector = FaultInjector(nodes, spec.faults, random.Random(rng.getrandbits(64)), spec)
        if "reconfig" in spec.faults:
            nodes.spare_ids = 2  # an add and a replace's add before the workers reconnect
        self.worker_seeds = [rng.getrandbits(64) for _ in range(spec.clients)]
        self.leader_watch = LeaderWatch(nodes, self.history.now_ms)

    def _progress(self, phase: str, message: str = "") -> None:
        self.say(
            DrillProgress(
                phase,
                self.history.now_ms() / 1000,
                self.spec.duration_s,
                self.history.outcomes(),
                len(self.injector.events),
                message or self.injector.current,
            )
        )

    def _worker(self, i: int) -> None:
        rng = random.Random(self.worker_seeds[i])
        seen: dict[str, tuple[bytes | None, int]] = {}
        cid = f"{self.run_id}-w{i}"
        generation = self.nodes.generation
        c = self.nodes.client(timeout_ms=self.spec.op_timeout_ms, client_id=cid)
        try:
            n = 0
            while not self.stop_workers.is_set() and len(self.history) < HISTORY_OPS_MAX:
                if self.nodes.generation != generation:
                    # The members changed: a new client (so a new session, between two
                    # ops) that knows them. Values stay unique: they carry the worker's id.
                    c.close()
                    generation = self.nodes.generation
                    c = self.nodes.client(
                        timeout_ms=self.spec.op_timeout_ms, client_id=f"{cid}.g{generation}"
                    )
                n += 1
                epoch = self.workload.epoch_at(self.history.now_ms())
                op = self.workload.next_op(rng, epoch, f"{cid}/{n}".encode(), seen)
                e = run_op(c, op, self.history)
                self.history.add(e)
                if e.operation.result is not None:
                    _remember(seen, op, e.operation.result)
                elif e.operation.outcome == "fail" and e.error:
                    # With every node down a client fails at once: pause rather than fill
                    # the history with failures while the faults heal.
                    self.stop_workers.wait(WORKER_PAUSE_S)
        except Exception as e:  # a worker bug must end the drill's claims, not hide
            self.worker_errors.append(f"worker {i}: {type(e).__name__}: {e}")
        finally:
            c.close()

    def run(self) -> dict[str, Any]:
        spec, nodes = self.spec, self.nodes
        with _closing_all(nodes.node_clients()) as clients:
            start = max(
                (int(s["decided_index"]) for c in clients.values() if (s := _status(c))),
                default=0,
            )
        collector = LogCollector(nodes, start + 1)
        threads = [
            threading.Thread(target=collector.run, name="drill-log", daemon=True),
            threading.Thread(target=self.leader_watch.run, name="drill-leaders", daemon=True),
            threading.Thread(
                target=self.injector.run,
                args=(self.history.now_ms,),
                name="drill-faults",
                daemon=True,
            ),
        ] + [
            threading.Thread(target=self._worker, args=(i,), name=f"drill-w{i}", daemon=True)
            for i in range(spec.clients)
        ]
        started_ms = self.history.now_ms()
        for t in threads:
            t.start()
        faults_thread, watch_thread, workers = threads[2], threads[1], threads[3:]
        try:
            end = started_ms + spec.duration_s * 1000
            while self.history.now_ms() < end and any(w.is_alive() for w in workers):
                self._progress("running")
                time.sleep(min(PROGRESS_S, max(0.0, (end - self.history.now_ms()) / 1000)))
        finally:
            # Heal first, then stop the workers: their last ops see a healed cluster.
            self._progress("healing", "ending the fault in progress, restarting, unpartitioning")
            self.injector.stop()
            faults_thread.join(max(KILL_DOWN_S[1], PARTITION_S[1]) + 30 + 3 * ADMIN_WAIT_S)
            self._heal_all()
            self.stop_workers.set()
            for w in workers:
                w.join(spec.op_timeout_ms / 1000 + 10)
            self.leader_watch.stop()
            watch_thread.join(10)
        run_ms = self.history.now_ms() - started_ms
        return self._check(collector, run_ms)

    def _heal_all(self) -> None:
        cluster = self.nodes.cluster
        if cluster is not None:
            for k in cluster.node_ids():
                cluster.signal(k, signal.SIGCONT)
                if cluster.pid(k) is None:
                    cluster.start(k, env=self.nodes.node_env)
        with _closing_all(self.nodes.node_clients(timeout_ms=2000)) as clients:
            for a in clients:
                for b in clients:
                    if a < b:
                        set_partition(clients, a, b, False)

    def _check(self, collector: LogCollector, run_ms: int) -> dict[str, Any]:
        spec, nodes = self.spec, self.nodes
        violations: list[Violation] = []
        reconfig = self.injector.reconfig
        if "reconfig" in spec.faults:
            # The final membership is the leader's: removed nodes are out of the comparison.
            deadline = time.monotonic() + spec.converge_timeout_s
            while not reconfig.sync() and time.monotonic() < deadline:
                time.sleep(0.2)
            for finding in reconfig.findings:
                violations.append(Violation("membership", finding))
        self._progress("converging", "waiting for every replica to agree")
        # Judged after the final reads (below); a cluster that cannot converge now gets a
        # shorter second wait.
        first = wait_converged(nodes, spec.converge_timeout_s)
        self._progress("checking", "final reads")
        for p in _final_reads(nodes, self.workload, self.history, 3 * spec.op_timeout_ms):
            violations.append(Violation("final-read", p))
        conv = wait_converged(nodes, spec.converge_timeout_s if first.ok else 10.0)
        if not conv.ok:
            violations += diagnose_convergence(conv)
        collector.stop()
        self.injector.join_watchers(5.0)
        top = max((int(s["decided_index"]) for s in conv.rows.values()), default=0)
        with _closing_all(nodes.node_clients(timeout_ms=5000)) as clients:
            collector.pull(clients, top=top)
        if collector.copy.next_slot <= top:
            collector.copy.gaps.append((collector.copy.next_slot, top))
        entries = self.history.entries()
        # A replica that is behind (the convergence violation above says so) holds an older
        # state: comparing it would blame exactly-once for what is a catch-up failure.
        top_applied = max((int(s["applied_index"]) for s in conv.rows.values()), default=0)
        current = sorted(k for k, s in conv.rows.items() if int(s["applied_index"]) == top_applied)
        replicas: dict[int, tuple[_KV, _Blocks]] = {}
        try:
            replicas = _replica_state(nodes, self.workload, current)
        except ClientError as e:
            violations.append(Violation("state", f"could not read every replica's state: {e}"))
        states = {repr(sorted(kv.items())) + repr(sorted(b)) for kv, b in replicas.values()}
        if len(states) > 1:
            violations.append(Violation("state", "replicas hold different drill keys or blocks"))
        self._progress("checking", "decided log: durability and exactly-once")
        log_violations, log_info = check_log(collector.copy, entries, self.workload, replicas)
        violations += log_violations
        self._progress("checking", f"linearizability of {len(entries)} operations")
        t0 = time.perf_counter()
        lin = linearizability.check([e.operation for e in entries])
        lin_s = time.perf_counter() - t0
        if lin.verdict == "violation":
            violations.append(Violation("linearizability", lin.explanation))
        for err in self.worker_errors:
            violations.append(Violation("harness", err))
        if self.injector.crashed:
            violations.append(Violation("harness", self.injector.crashed))
        restart_figures(self.injector.restarts, entries)
        history_path = self.root / "history.jsonl"
        write_history(history_path, entries)
        self._progress("done")
        return self._report(entries, run_ms, conv, lin, lin_s, log_info, violations, history_path)

    def _report(
        self,
        entries: Sequence[Entry],
        run_ms: int,
        conv: Convergence,
        lin: linearizability.CheckResult,
        lin_s: float,
        log_info: dict[str, Any],
        violations: list[Violation],
        history_path: Path,
    ) -> dict[str, Any]:
        spec = self.spec
        by_kind: dict[str, Counter[str]] = {}
        for e in entries:
            name = type(e.operation.op).__name__.lower()
            by_kind.setdefault(name, Counter())[e.operation.outcome] += 1
        outcomes = Counter(e.operation.outcome for e in entries)
        restarts = self.injector.restarts
        watch = self.leader_watch
        per_class = attribute_elections(self.injector.events, watch.changes)
        leader = [k for k, s in conv.rows.items() if s.get("role") == "leader"]
        some = next(iter(conv.rows.values()), {})
        return {
            "seed": spec.seed,
            "nodes": len(self.nodes.ids),
            "target": "local" if self.nodes.cluster is not None else "endpoints",
            "duration_s": round(run_ms / 1000, 1),
            "clients": spec.clients,
            "faults_requested": list(spec.faults),
            "planted": dict(spec.node_env),
            "ops": {
                "total": len(entries),
                "ok": outcomes["ok"],
                "fail": outcomes["fail"],
                "unknown": outcomes["unknown"],
                "per_second": round(len(entries) / max(run_ms / 1000, 0.001), 1),
                "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            },
            "faults": {
                "total": len(self.injector.events),
                "by_kind": dict(Counter(ev.kind for ev in self.injector.events)),
                "errors": self.injector.errors,
                "events": [ev.as_dict() for ev in self.injector.events],
            },
            "elections": {
                "leader_changes": len(watch.changes),
                "by_fault": per_class,
                "follower_faults_with_an_election": [
                    ev.as_dict() for ev in follower_faults_with_elections(self.injector.events)
                ],
                "timeline": [
                    {"ms": t, "ballot": f"{b[0]}.{b[1]}", "leader": k} for t, b, k in watch.changes
                ],
                "status_polls": watch.polls,
            },
            "reconfig": self.injector.reconfig.report() if "reconfig" in spec.faults else None,
            "restarts": [ev.as_dict() for ev in restarts],
            "recovery": {
                "catch_up": _summary(
                    [
                        None if r.caught_up_ms is None else r.caught_up_ms - r.restart_ms
                        for r in restarts
                    ]
                ),
                "first_write": _summary(
                    [
                        None if r.first_write_ms is None else r.first_write_ms - r.restart_ms
                        for r in restarts
                    ]
                ),
                "ready": _summary(
                    [None if r.ready_ms is None else r.ready_ms - r.restart_ms for r in restarts]
                ),
            },
            "final": {
                "converged": conv.ok,
                "leader": leader[0] if leader else None,
                "applied_index": some.get("applied_index"),
                "digest": some.get("digest"),
                "keys": len(self.workload.all_keys()),
            },
            "linearizability": {
                "verdict": lin.verdict,
                "states_explored": lin.states_explored,
                "seconds": round(lin_s, 2),
                "partition": lin.partition,
            },
            "log": log_info,
            "violations": [v.as_dict() for v in violations],
            "history": str(history_path),
        }


# ------------------------------------------------------------------------------ race


@dataclass(slots=True)
class RaceRound:
    round: int
    key: str
    a_node: int  # the node A's first attempt went to
    b_node: int
    leader: int | None  # the leader just before the round
    a: str = "unknown"  # "won" / "lost" / "unknown"
    b: str = "unknown"
    winner: str | None = None  # "A" / "B" from the linearizable read after both finished
    a_ms: float = 0.0
    b_ms: float = 0.0
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "key": self.key,
            "a_node": self.a_node,
            "b_node": self.b_node,
            "leader": self.leader,
            "a": self.a,
            "b": self.b,
            "winner": self.winner,
            "a_ms": round(self.a_ms, 2),
            "b_ms": round(self.b_ms, 2),
            "problem": self.problem,
        }


def run_race(
    nodes: Nodes,
    rounds: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    timeout_ms: int = OP_TIMEOUT_MS,
) -> dict[str, Any]:
    """The competing-proposers lab of the Paxos labs on live daemons.

    Each round, A and B cross a Barrier and at once submit ``cas(key, expect_version=0)``
    with different values for a fresh key, A through one node and B through another. CAS on
    "absent" lets exactly one of them take effect: the loser's CasMismatch names the winner,
    so who won is the question "whose command was ordered first", with both outcomes
    definite. (With two plain puts both would apply and the "winner" would just be whoever
    was ordered last.) Multi-Paxos routes both to the one leader — a follower answers
    not_leader with a hint and the client follows it — so the duel the Basic-Paxos races fought
    with two ballots happens here as a race to the leader's queue; the report shows how much
    entering through the leader itself is worth. Then a linearizable read names the winner,
    and after convergence a stale read on every node must agree.
    """
    if rounds < 1:
        raise DrillUsageError("--rounds must be at least 1")
    run_id = secrets.token_hex(3)
    ids = nodes.ids
    results: list[RaceRound] = []
    with (
        _closing_all(nodes.node_clients()) as status_clients,
        nodes.client(timeout_ms=timeout_ms, client_id=f"race-{run_id}-reader") as reader,
    ):
        for r in range(rounds):
            a_node, b_node = ids[r % len(ids)], ids[(r + 1) % len(ids)]
            rr = RaceRound(r + 1, f"race/{run_id}/{r + 1}", a_node, b_node, _leader(status_clients))
            _race_round(nodes, rr, run_id, timeout_ms)
            try:
                got = reader.execute(Get(key=rr.key))
            except ClientError as e:
                rr.problem = f"read after the round failed: {e}"
                got = None
            if isinstance(got, Found):
                rr.winner = {
                    _race_value(run_id, rr, "A"): "A",
                    _race_value(run_id, rr, "B"): "B",
                }.get(got.value)
            _judge(rr)
            results.append(rr)
            if progress is not None:
                progress(r + 1, rounds)
    conv = wait_converged(nodes, CONVERGE_TIMEOUT_S)
    disagreements: list[str] = []
    with _closing_all(nodes.node_clients(timeout_ms=5000)) as clients:
        for rr in results:
            want = None if rr.winner is None else _race_value(run_id, rr, rr.winner)
            for k, c in clients.items():
                try:
                    res = c.stale_read(Get(key=rr.key))
                except ClientError as e:
                    disagreements.append(f"round {rr.round}: node {k} did not answer ({e})")
                    continue
                have = res.value if isinstance(res, Found) else None
                if have != want:
                    disagreements.append(
                        f"round {rr.round}: node {k} holds {have!r}, the winner wrote {want!r}"
                    )
    a_wins = sum(1 for rr in results if rr.winner == "A")
    b_wins = sum(1 for rr in results if rr.winner == "B")
    via_leader = [rr for rr in results if rr.leader in (rr.a_node, rr.b_node)]
    leader_side_won = sum(
        1
        for rr in via_leader
        if (rr.winner == "A" and rr.leader == rr.a_node)
        or (rr.winner == "B" and rr.leader == rr.b_node)
    )
    violations = [p for rr in results if (p := rr.problem)] + disagreements
    if not conv.ok:
        violations.append(f"replicas did not converge: {conv.problem}")
    return {
        "rounds": rounds,
        "a_wins": a_wins,
        "b_wins": b_wins,
        "no_winner": rounds - a_wins - b_wins,
        "rounds_with_leader_as_entry": len(via_leader),
        "entry_through_leader_won": leader_side_won,
        "nodes_agree": not disagreements,
        "method": "cas expect_version=0 (exactly one can win)",
        "per_round": [rr.as_dict() for rr in results],
        "violations": violations,
    }


def _race_value(run_id: str, rr: RaceRound, who: str) -> bytes:
    return f"{who}:{run_id}:{rr.round}".encode()


def _race_round(nodes: Nodes, rr: RaceRound, run_id: str, timeout_ms: int) -> None:
    barrier = threading.Barrier(2, timeout=30)
    outcome: dict[str, tuple[str, float]] = {}

    def contender(who: str, entry: int) -> None:
        with nodes.client(
            timeout_ms=timeout_ms, client_id=f"race-{run_id}-{who}-{rr.round}", first=entry
        ) as c:
            c.status_each()  # connect to every node now, not inside the race
            op = Cas(key=rr.key, new=_race_value(run_id, rr, who), expect_version=0)
            command = c.next_command(op)
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                outcome[who] = ("unknown", 0.0)
                return
            t0 = time.perf_counter()
            try:
                res = c.submit(command)
            except ClientError:
                outcome[who] = ("unknown", (time.perf_counter() - t0) * 1000)
                return
            took = (time.perf_counter() - t0) * 1000
            outcome[who] = ("won" if isinstance(res, Written) else "lost", took)

    threads = [
        threading.Thread(target=contender, args=("A", rr.a_node), daemon=True),
        threading.Thread(target=contender, args=("B", rr.b_node), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_ms / 1000 + 35)
    rr.a, rr.a_ms = outcome.get("A", ("unknown", 0.0))
    rr.b, rr.b_ms = outcome.get("B", ("unknown", 0.0))


def _judge(rr: RaceRound) -> None:
    """Exactly one contender may win, and it must be the one the read returns."""
    if rr.problem:
        return
    won = [w for w, s in (("A", rr.a), ("B", rr.b)) if s == "won"]
    if len(won) > 1:
        rr.problem = "both CASes on an absent key succeeded"
    elif won and rr.winner != won[0]:
        rr.problem = f"{won[0]} was told it won but the read returned {rr.winner}'s value"
    elif rr.winner is None and "unknown" not in (rr.a, rr.b):
        rr.problem = "neither value is in the key although one CAS succeeded"


# ------------------------------------------------------------------------------ local race


def run_race_local(
    rounds: int,
    nodes: int = 3,
    *,
    parent_dir: Path | None = None,
    keep: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``run_race`` on a fresh local cluster in a temporary folder."""
    if not NODES_MIN <= nodes <= NODES_MAX:
        raise DrillUsageError(f"--nodes must be in {NODES_MIN}..{NODES_MAX}")
    parent = parent_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="paxosd-race-", dir=parent))
    cluster = LocalCluster.create(root / "cluster", nodes)
    report: dict[str, Any] = {}
    try:
        try:
            cluster.up()
        except ClientError as e:
            raise DrillError(f"local cluster did not start: {e}; logs in {root}") from None
        report = run_race(Nodes.of_cluster(cluster, {}), rounds, progress=progress)
        report["folder"] = str(root)
        report["kept"] = keep or bool(report["violations"])
        return report
    finally:
        cluster.down()
        if not report.get("kept"):
            shutil.rmtree(root, ignore_errors=True)


__all__ = [
    "DEFAULT_FAULTS",
    "FAULT_KINDS",
    "DrillError",
    "DrillProgress",
    "DrillSpec",
    "Convergence",
    "DrillUsageError",
    "Entry",
    "History",
    "LogCopy",
    "Nodes",
    "RECONFIG_OPS",
    "Reconfig",
    "Violation",
    "check_log",
    "diagnose_convergence",
    "entry_from_json",
    "entry_to_json",
    "load_history",
    "parse_faults",
    "replay_exactly_once",
    "run_drill",
    "run_race",
    "run_race_local",
    "write_history",
]
