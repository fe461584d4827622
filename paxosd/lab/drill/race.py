"""The competing-proposers race on live daemons: two clients CAS the same fresh key at the
same instant through two different nodes; exactly one may win and every node must agree.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paxosd.client.client import ClientError
from paxosd.lab.drill.checks import wait_converged
from paxosd.lab.drill.nodes import Nodes, closing_all, find_leader
from paxosd.lab.drill.spec import (
    CONVERGE_TIMEOUT_S,
    NODES_MAX,
    NODES_MIN,
    OP_TIMEOUT_MS,
    DrillError,
    DrillUsageError,
)
from paxosd.lab.localcluster import LocalCluster
from paxosd.statemachine.commands import Cas, Found, Get, Written


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
        closing_all(nodes.node_clients()) as status_clients,
        nodes.client(timeout_ms=timeout_ms, client_id=f"race-{run_id}-reader") as reader,
    ):
        for r in range(rounds):
            a_node, b_node = ids[r % len(ids)], ids[(r + 1) % len(ids)]
            rr = RaceRound(
                r + 1, f"race/{run_id}/{r + 1}", a_node, b_node, find_leader(status_clients)
            )
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
    with closing_all(nodes.node_clients(timeout_ms=5000)) as clients:
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
