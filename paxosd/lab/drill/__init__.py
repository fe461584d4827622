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

- ``spec``: the arguments, their limits, the errors, the progress reports;
- ``nodes``: the members a drill talks to and the status questions it asks them;
- ``workload``: the op mix, one operation's submission and outcome, the history;
- ``faults``: the seeded fault schedule and its injection, restart watchers;
- ``reconfig``: the membership-change fault;
- ``elections``: the leader watch and the elections charged to each fault;
- ``collect``: copying the decided log before compaction drops it;
- ``checks``: convergence, the final reads, the decided log against history and replicas;
- ``report``: the recovery figures and the report document;
- ``run``: ``run_drill``, which ties them together;
- ``race``: the two-proposer race.

The names below are re-exported so that callers import from ``paxosd.lab.drill``; the tuning
constants of each part stay in its module.
"""

from __future__ import annotations

from paxosd.lab.drill.checks import (
    Convergence,
    Violation,
    check_log,
    diagnose_convergence,
    replay_exactly_once,
    wait_converged,
)
from paxosd.lab.drill.collect import LogCollector, LogCopy
from paxosd.lab.drill.elections import (
    LeaderWatch,
    attribute_elections,
    follower_faults_with_elections,
)
from paxosd.lab.drill.faults import FaultEvent, FaultInjector, RestartEvent, set_partition
from paxosd.lab.drill.nodes import Nodes
from paxosd.lab.drill.race import RaceRound, run_race, run_race_local
from paxosd.lab.drill.reconfig import RECONFIG_OPS, Reconfig
from paxosd.lab.drill.report import build_report, restart_figures
from paxosd.lab.drill.run import run_drill
from paxosd.lab.drill.spec import (
    CLIENTS_MAX,
    CONVERGE_TIMEOUT_S,
    DEFAULT_FAULTS,
    DRILL_NODE_CONFIG,
    DURATION_S_MAX,
    ENDPOINT_FAULTS,
    FAULT_GAP_S,
    FAULT_KINDS,
    NODES_MAX,
    NODES_MIN,
    OP_TIMEOUT_MS,
    DrillError,
    DrillProgress,
    DrillSpec,
    DrillUsageError,
    ProgressFn,
    parse_faults,
)
from paxosd.lab.drill.workload import (
    Entry,
    History,
    Outcome,
    Workload,
    entry_from_json,
    entry_to_json,
    load_history,
    run_op,
    write_history,
)

__all__ = [
    "CLIENTS_MAX",
    "CONVERGE_TIMEOUT_S",
    "Convergence",
    "DEFAULT_FAULTS",
    "DRILL_NODE_CONFIG",
    "DURATION_S_MAX",
    "DrillError",
    "DrillProgress",
    "DrillSpec",
    "DrillUsageError",
    "ENDPOINT_FAULTS",
    "Entry",
    "FAULT_GAP_S",
    "FAULT_KINDS",
    "FaultEvent",
    "FaultInjector",
    "History",
    "LeaderWatch",
    "LogCollector",
    "LogCopy",
    "NODES_MAX",
    "NODES_MIN",
    "Nodes",
    "OP_TIMEOUT_MS",
    "Outcome",
    "ProgressFn",
    "RECONFIG_OPS",
    "RaceRound",
    "Reconfig",
    "RestartEvent",
    "Violation",
    "Workload",
    "attribute_elections",
    "build_report",
    "check_log",
    "diagnose_convergence",
    "entry_from_json",
    "entry_to_json",
    "follower_faults_with_elections",
    "load_history",
    "parse_faults",
    "replay_exactly_once",
    "restart_figures",
    "run_drill",
    "run_op",
    "run_race",
    "run_race_local",
    "set_partition",
    "wait_converged",
    "write_history",
]
