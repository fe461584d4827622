"""What a drill is asked to do: the arguments, their limits and defaults, the fault timings
the seeded schedule draws from, the node configuration of a drill's own cluster, the errors
that stop a drill before it runs, and the progress reports it sends while it runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from paxosd.lab.drill.workload import EPOCH_S_MIN, KEYS_PER_EPOCH, KEYS_TOTAL_MAX

FAULT_KINDS: Final = ("kill", "pause", "partition", "restart", "killall", "reconfig")
DEFAULT_FAULTS: Final = ("kill", "pause", "partition")
# Faults a drill can cause on a cluster it did not start: it owns no processes there.
ENDPOINT_FAULTS: Final = frozenset({"partition"})
NODES_MIN: Final = 3  # a fault needs a minority to hit and a majority to carry on
NODES_MAX: Final = 9
CLIENTS_MAX: Final = 64
DURATION_S_MAX: Final = 24 * 3600.0
OP_TIMEOUT_MS: Final = 4000  # longer than an election, so most faults end in "ok", not "unknown"
CONVERGE_TIMEOUT_S: Final = 60.0
# Fault timings (seconds): ranges the seeded schedule draws from.
FAULT_GAP_S: Final = (1.0, 3.0)
KILL_DOWN_S: Final = (0.3, 4.0)
KILLALL_DOWN_S: Final = (0.2, 2.0)
PAUSE_S: Final = (0.3, 3.0)  # under OP_TIMEOUT_MS: a pause should mostly delay, not fail, ops
PARTITION_S: Final = (0.5, 4.0)
# Local clusters snapshot often, so kills land near snapshots and catch-up uses them. The
# retained tail is what the log collector has to copy slots before compaction drops them on
# every node: ~4 s at the ~1,300 slots/s a 3-node drill decides (2,000 left ~1.5 s, and a
# loaded machine made the collector miss slots).
SNAPSHOT_EVERY_ENTRIES: Final = 1000
LOG_RETAIN_ENTRIES: Final = 5000
# No automatic compaction: the watch checks read the whole history from the drill's first
# revision at the end (the history's byte budget still bounds it).
DRILL_NODE_CONFIG: Final = (
    "[snapshot]\n"
    f"snapshot_every_entries = {SNAPSHOT_EVERY_ENTRIES}\n"
    f"log_retain_entries = {LOG_RETAIN_ENTRIES}\n"
    # On the count alone: the log-to-state gate would space a drill's snapshots out.
    "snapshot_log_percent = 0\n"
    "[compaction]\n"
    'mode = "off"\n'
)


class DrillError(Exception):
    """The drill could not run (bad arguments, a cluster that would not start). Violations
    are not errors: they are the drill's findings, in the report."""


class DrillUsageError(DrillError):
    """The arguments cannot make a drill (a usage error, exit 2 in paxosctl)."""


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
    # Transactions in the op mix, and the three watchers whose streams are checked.
    txns: bool = True
    watchers: bool = True
    # Lease workers (grant, keep alive, let go; the expiry checks) and lock workers (fenced
    # writes under client.lock; the fencing check).
    leases: bool = True
    # Test only: client-side planted bugs proving the lease and lock checks can fail
    # ("fake_acks" or "hidden_keepalive"; "unfenced_write"). Not reachable from paxosctl.
    plant_lease: str = ""
    plant_lock: str = ""
    # Test only: the leader's watcher drops its Nth event (1-based; 0: none) before it
    # records it, to prove that the watch check can fail. Not reachable from paxosctl.
    plant_watch_drop: int = 0
    # Every node also serves the etcd API (loopback, no TLS) and etcd_workers of the
    # workers go through it (see etcdload.py).
    etcd: bool = False
    # Test only: the first etcd worker records its Nth put (1-based; 0: none) as
    # acknowledged without sending it, to prove that the etcd path feeds the checks.
    plant_etcd_phantom_put: int = 0

    @property
    def etcd_workers(self) -> int:
        """Half the workers (at least one) go through the etcd API with --etcd."""
        return max(1, self.clients // 2) if self.etcd else 0

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
        if self.etcd and endpoints:
            raise DrillUsageError(
                "--etcd needs the drill's own cluster (its nodes get an etcd listener each); "
                "drop --endpoints"
            )
        if self.etcd and importlib.util.find_spec("grpc") is None:
            raise DrillUsageError("--etcd needs grpcio: pip install 'paxosd[etcd]'")
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
