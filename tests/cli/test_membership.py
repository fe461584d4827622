"""Membership change on real processes: grow and shrink under load, replace a lost disk,
transfer leadership, hand over on SIGTERM, and the changes the leader must refuse.

One cluster for the module (tests/cli/conftest.py): each test leaves three live voters
behind, whichever ids they are by then. The workloads are checked with the simulator's
linearizability checker, after a final read of every key, so an acknowledged write that a
change lost shows up as a read the checker cannot explain.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from paxosd.client.client import Address, Client
from paxosd.lab.drill import History, Nodes, run_op, wait_converged
from paxosd.net.admin import StatusReply
from paxosd.sim import linearizability
from paxosd.statemachine.commands import Get, Put
from paxosd.tools.initcluster import client_address
from tests.cli.conftest import CONVERGE_TIMEOUT_S, Cli
from tests.waiting import wait_for

# Node ids a test may ever use: the workload's clients know all their client addresses from
# the start, because an original member's config names only the original members' client
# addresses, so its redirect to a leader added later carries no address to follow.
NODE_IDS_MAX = 12
WORKERS = 3
# Operations the workload completes around each membership change or transfer.
OPS_AROUND_CHANGES = 20
# The default election_timeout_ms_max: a voter quiet longer than this is not live.
ELECTION_TIMEOUT_MS_MAX = 600
KEYS_PER_ROUND = 3
ROUND_S = 3.0  # keys rotate: each key's history stays short for the checker
OP_TIMEOUT_MS = 10_000  # longer than any election or hand-over: ops should end "ok"
OPS_MAX = 20_000  # per workload (memory bound)


def _endpoints(cli: Cli) -> list[Address]:
    c = cli.cluster
    out = []
    for k in range(1, NODE_IDS_MAX + 1):
        a = client_address(c.host, c.base_port, k)
        out.append((a.host, a.port))
    return out


def _members(cli: Cli) -> dict[str, Any]:
    data: dict[str, Any] = cli.json("members")
    return data


def _voters(cli: Cli) -> list[int]:
    return sorted(m["node_id"] for m in _members(cli)["members"] if m["role"] == "voter")


def _leader(cli: Cli) -> int:
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while time.monotonic() < deadline:
        result = cli.run("leader", "--json")
        if result.exit_code == 0:
            return int(json.loads(result.stdout)["leader"])
        time.sleep(0.1)
    raise AssertionError("no leader")


def _ok_when_led(cli: Cli, *args: str) -> None:
    """``cli.ok(*args)`` once there is a leader: a node restarted by the test before may
    still start an election (more often on a busy machine), and "no leader right now" is
    answered before anything is proposed, so asking again is safe."""

    def done() -> bool:
        result = cli.run(*args)
        if result.exit_code == 0:
            return True
        assert result.exit_code == 3 and "no leader" in result.output, (args, result.output)
        return False

    wait_for(f"{' '.join(args)} with a leader", done, CONVERGE_TIMEOUT_S)


def _add_and_promote(cli: Cli) -> int:
    k = cli.cluster.add_node()
    cli.cluster.start(k)
    _ok_when_led(
        cli, "member", "add", str(k), cli.cluster.peer_address(k), "--promote", "--wait-s", "30"
    )
    return k


def _remove(cli: Cli, k: int) -> None:
    _ok_when_led(cli, "member", "remove", str(k))
    cli.cluster.remove_node(k)


class _Load:
    """Workers putting unique values and reading them back, one Client (one session) each."""

    def __init__(self, cli: Cli) -> None:
        self.endpoints = _endpoints(cli)
        self.key = cli.cluster.client_key()
        self.run_id = secrets.token_hex(3)
        self.history = History()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.rounds = 0
        self.threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(WORKERS)
        ]

    def key_of(self, rnd: int, j: int) -> str:
        return f"member/{self.run_id}/r{rnd}/k{j}"

    def _work(self, i: int) -> None:
        cid = f"{self.run_id}-w{i}"
        try:
            with Client(self.endpoints, self.key, timeout_ms=OP_TIMEOUT_MS, client_id=cid) as c:
                for n in range(OPS_MAX):
                    if self.stop.is_set():
                        return
                    rnd = int(self.history.now_ms() / 1000 / ROUND_S)
                    self.rounds = max(self.rounds, rnd)
                    key = self.key_of(rnd, n % KEYS_PER_ROUND)
                    op = Put(key=key, value=f"{cid}/{n}".encode()) if n % 3 else Get(key=key)
                    self.history.add(run_op(c, op, self.history))
        except Exception as e:  # a worker bug must fail the test, not shrink the history
            self.errors.append(f"worker {i}: {type(e).__name__}: {e}")

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(OP_TIMEOUT_MS / 1000 + 5)

    def wait_ops(self, n: int) -> None:
        """Until the workers have completed ``n`` more operations (a condition, not a pause:
        on a loaded machine half a second may hold no write at all)."""
        target = len(self.history) + n

        def reached() -> bool:
            assert not self.errors, self.errors
            return len(self.history) >= target

        wait_for(f"{n} more workload ops", reached, CONVERGE_TIMEOUT_S)

    def check(self) -> None:
        """Read every key once more (into the history), then judge the whole history."""
        assert not self.errors, self.errors
        with Client(self.endpoints, self.key, timeout_ms=OP_TIMEOUT_MS) as c:
            for rnd in range(self.rounds + 1):
                for j in range(KEYS_PER_ROUND):
                    self.history.add(run_op(c, Get(key=self.key_of(rnd, j)), self.history))
        entries = self.history.entries()
        bad = [e for e in entries if e.operation.outcome != "ok"]
        assert not bad, [(e.operation.op, e.operation.outcome, e.error) for e in bad[:5]]
        writes = [e for e in entries if isinstance(e.operation.op, Put)]
        assert len(writes) > 20, "the workload hardly ran: the test proves nothing"
        verdict = linearizability.check([e.operation for e in entries])
        assert verdict.verdict == "ok", verdict.explanation


@contextmanager
def _load(cli: Cli) -> Iterator[_Load]:
    with _Load(cli) as load:
        load.wait_ops(OPS_AROUND_CHANGES)  # writes in flight before the first change
        yield load
        load.wait_ops(OPS_AROUND_CHANGES)  # and after the last


def _assert_converged(cli: Cli) -> None:
    """Every member answers, one leads, and all hold the same digest at the same index."""
    voters = _voters(cli)
    assert sorted(cli.cluster.node_ids()) == voters
    endpoints = dict(zip(cli.cluster.node_ids(), cli.cluster.endpoints(), strict=True))
    conv = wait_converged(Nodes(endpoints, cli.cluster.client_key()), CONVERGE_TIMEOUT_S)
    assert conv.ok, conv.problem
    status = cli.json("status")
    rows = list(status["nodes"])
    assert sorted(n["node_id"] for n in rows) == voters
    assert len({(n["applied_index"], n["digest"]) for n in rows}) == 1, rows


def test_cluster_grows_to_five_and_shrinks_to_three_under_load_losing_no_write(cli: Cli) -> None:
    original = _voters(cli)
    assert len(original) == 3
    with _load(cli) as load:
        added = [_add_and_promote(cli), _add_and_promote(cli)]
        assert len(_voters(cli)) == 5
        leader = _leader(cli)
        # The leader removes itself: it hands over before it stops leading.
        _remove(cli, leader)
        assert _leader(cli) != leader
        other = next(k for k in original if k != leader)
        _remove(cli, other)
    # Every op "ok": the removed leader's clients were redirected, not failed.
    load.check()
    assert _voters(cli) == sorted({*original, *added} - {leader, other})
    _assert_converged(cli)


def test_a_node_whose_disk_is_gone_is_replaced_by_a_new_id_and_cannot_rejoin(cli: Cli) -> None:
    leader = _leader(cli)
    lost = next(k for k in _voters(cli) if k != leader)
    cli.ok("put", "replace/before", "v1")
    cli.cluster.kill(lost)
    shutil.rmtree(cli.cluster.root / "data" / f"n{lost}")
    # The lost node cannot come back with an empty memory: it would forget its promises.
    refused = subprocess.run(
        [sys.executable, "-m", "paxosd", "run", "--config", str(cli.cluster.config_path(lost))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "no database" in refused.stdout + refused.stderr
    # Two live voters of the two that remain: allowed although the node is down.
    _remove(cli, lost)
    new = _add_and_promote(cli)
    members = _members(cli)
    assert lost not in {m["node_id"] for m in members["members"]}
    assert {m["node_id"]: m["role"] for m in members["members"]}[new] == "voter"
    cli.ok("put", "replace/after", "v2")
    assert cli.ok("get", "replace/before").stdout.strip() == "v1"
    _assert_converged(cli)


def test_leader_transfer_under_load_fails_no_write(cli: Cli) -> None:
    leaders = [_leader(cli)]
    with _load(cli) as load:
        for _ in range(3):
            out = cli.json("leader", "transfer")
            assert out["leader"] is not None and out["leader"] != leaders[-1], out
            leaders.append(int(out["leader"]))
            load.wait_ops(OPS_AROUND_CHANGES)
    load.check()
    _assert_converged(cli)


def test_leader_transfer_to_a_named_voter_and_to_a_non_voter(cli: Cli) -> None:
    leader = _leader(cli)
    target = next(k for k in _voters(cli) if k != leader)
    assert cli.json("leader", "transfer", str(target))["leader"] == target
    refused = cli.run("leader", "transfer", "99")
    assert refused.exit_code == 1, refused.output
    assert "not a voter" in refused.output
    assert _leader(cli) == target


def test_sigterm_to_the_leader_hands_leadership_over(cli: Cli) -> None:
    leader = _leader(cli)
    log = cli.cluster.log_path(leader)
    before = log.read_text(errors="replace").count("leadership handed over")
    cli.cluster.stop(leader)
    try:
        assert _leader(cli) != leader
        after = log.read_text(errors="replace").count("leadership handed over")
        assert after == before + 1
    finally:
        cli.restart(leader)
    cli.ok("put", "sigterm/after", "v")


def test_removing_a_voter_is_refused_when_the_live_voters_left_are_no_majority(
    cli: Cli,
) -> None:
    leader = _leader(cli)
    down, victim = [k for k in _voters(cli) if k != leader][:2]
    cli.cluster.kill(down)
    try:
        _wait_disconnected(cli, down)
        for k in (victim, leader):
            refused = cli.run("member", "remove", str(k))
            assert refused.exit_code == 1, refused.output
            assert "live voters" in refused.output
        assert len(_voters(cli)) == 3
    finally:
        cli.restart(down)
    _assert_converged(cli)


def _wait_disconnected(cli: Cli, k: int) -> None:
    """Until the leader has missed ``k`` for longer than an election timeout (its notion of
    a live voter), so the refusal below is not a race with its failure detector."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    quiet_ms = 0
    while time.monotonic() < deadline:
        with cli.cluster.client(timeout_ms=1000) as c:
            rows = c.status_each()
        for _, row in rows:
            if isinstance(row, StatusReply) and row.role == "leader":
                quiet_ms = row.peer_last_ack_ms_ago.get(str(k), 0)
        if quiet_ms > ELECTION_TIMEOUT_MS_MAX:
            return
        time.sleep(0.1)
    raise AssertionError(f"the leader still heard node {k} {quiet_ms} ms ago")


def test_promoting_a_learner_that_is_not_running_is_refused(cli: Cli) -> None:
    k = cli.cluster.add_node()  # configured, never started
    _ok_when_led(cli, "member", "add", str(k), cli.cluster.peer_address(k))
    try:
        refused = cli.run("member", "promote", str(k))
        assert refused.exit_code == 1, refused.output
        assert "is it running" in refused.output
        roles = {m["node_id"]: m["role"] for m in _members(cli)["members"]}
        assert roles[k] == "learner"
    finally:
        _remove(cli, k)
    _assert_converged(cli)
