"""``paxosctl lock`` and ``paxosctl elect`` as real processes against a real 3-node cluster:
CMD under the lock with its fencing token, a SIGKILLed holder whose lock comes free when its
lease expires, several processes serialized by the lock (checked with the fencing token),
and lock and election sessions that carry on across the kill of the cluster's leader.

Every wait is a condition wait (tests/waiting.py). The one bound that is also a claim is the
SIGKILL test's: the next waiter holds the lock within TTL + the lease bound, as README "Locks
and elections" says; the bound's slack is for a loaded machine, not a speed figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import pytest

from tests.cli.conftest import Cli
from tests.test_recipes import Turn, serialization_violations
from tests.waiting import wait_for

# A short lease, so a dead holder's lock comes free soon.
TTL_S = 2
# The lease's extension bound on this cluster: a lease with no keep-alives is gone within
# TTL + k election timeouts, k = 5 (README "Leases"), 600 ms each here; and the slack of a
# loaded 2-core machine for the processes to notice.
LEASE_BOUND_S = 5 * 0.6
SLACK_S = 15.0


class Proc:
    """A paxosctl process whose stdout lines are collected as they come."""

    def __init__(self, cli: Cli, *args: str, new_session: bool = True) -> None:
        env = {**os.environ, "PAXOSD_LOCAL_DIR": str(cli.cluster.root)}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "paxosctl", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=new_session,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            into.append(line.rstrip("\n"))

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in list(self.lines) if x.startswith("{")]

    def wait(self) -> int:
        wait_for("the process ends", lambda: self.popen.poll() is not None)
        self._finish()
        return int(self.popen.returncode)

    def _finish(self) -> None:
        for r in self._readers:
            r.join()
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def kill_group(self) -> None:
        """SIGKILL the process and its CMD (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._finish()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test started; whatever is left is killed at its end."""
    started: list[Proc] = []
    yield started
    for p in started:
        if p.popen.poll() is None or not p.popen.stdout or not p.popen.stdout.closed:
            p.kill_group()


def queue_length(cli: Cli, name: str) -> int:
    return len(cli.json("scan", "--prefix", name + "/")["rows"])


def test_lock_runs_cmd_with_the_fencing_token_and_exits_with_its_code(cli: Cli) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "paxosctl", "lock", "cmd-lock", "--ttl", "5", "--",
         "sh", "-c", 'echo "$PAXOS_LOCK_KEY $PAXOS_LOCK_REVISION"; exit 7'],
        env={**os.environ, "PAXOSD_LOCAL_DIR": str(cli.cluster.root)},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 7, done.stderr
    key, revision, echoed = done.stdout.splitlines()
    assert key.startswith("cmd-lock/") and echoed == f"{key} {revision}"
    assert cli.json("scan", "--prefix", "cmd-lock/")["rows"] == []  # released when CMD ended
    bad = cli.run("lock", "cmd-lock", "--", "/nonexistent/cmd")
    assert bad.exit_code == 2 and "cannot run /nonexistent/cmd" in bad.output


def test_a_sigkilled_holder_frees_the_lock_within_the_ttl_and_the_bound(
    cli: Cli, procs: list[Proc]
) -> None:
    holder = Proc(cli, "lock", "kill-lock", "--ttl", str(TTL_S), "--json", "--", "sleep", "1000")
    procs.append(holder)
    first = wait_for("the first holder holds", lambda: holder.json_lines())[0]
    waiter = Proc(
        cli, "lock", "kill-lock", "--ttl", str(TTL_S), "--json", "--",
        "sh", "-c", 'echo "{\\"token\\": $PAXOS_LOCK_REVISION}"',
    )  # fmt: skip
    procs.append(waiter)
    wait_for("the waiter queued", lambda: queue_length(cli, "kill-lock") == 2)
    assert len(waiter.json_lines()) == 0
    holder.kill_group()  # SIGKILL: no release, no revoke; only the lease's expiry frees it
    got = wait_for(
        "the waiter holds the lock",
        lambda: len(waiter.json_lines()) >= 2 or None,
        bound_s=TTL_S + LEASE_BOUND_S + SLACK_S,
    )
    assert got
    second, ran = waiter.json_lines()[:2]
    assert waiter.wait() == 0, waiter.err
    assert ran["token"] == second["revision"] > first["revision"]


def test_a_holder_whose_lease_is_lost_stops_cmd_and_exits_1(cli: Cli, procs: list[Proc]) -> None:
    holder = Proc(cli, "lock", "lost-lock", "--ttl", "3", "--json", "--", "sleep", "1000")
    procs.append(holder)
    held = wait_for("the holder holds", lambda: holder.json_lines())[0]
    with cli.cluster.client() as c:
        leases: Any = c  # the lease calls, whatever their result types
        leases.lease_revoke(held["lease"])  # as an expiry would
    assert holder.wait() == 1
    assert any("lock was lost" in line for line in holder.err), holder.err


INCREMENT = """
import os, sys
from paxosd import Client, Found
from paxosd.client import txn
counter = sys.argv[1]
key, token = os.environ["PAXOS_LOCK_KEY"], int(os.environ["PAXOS_LOCK_REVISION"])
with Client.from_config(timeout_ms=10_000) as c:
    found = c.get(counter)
    assert isinstance(found, Found)
    done = c.txn(
        compare=[txn.create(key) == token, txn.mod(counter) == found.mod_revision],
        success=[txn.put(counter, str(int(found.value) + 1))],
    )
    print(f"TURN {token} {int(found.value)} {int(done.succeeded)}")
"""


def test_processes_contending_for_a_lock_are_serialized_by_fencing_token(
    cli: Cli, procs: list[Proc]
) -> None:
    n = 6
    cli.ok("put", "contended-counter", "0")
    contenders = [
        Proc(cli, "lock", "contended", "--ttl", "10", "--",
             sys.executable, "-c", INCREMENT, "contended-counter")
        for _ in range(n)
    ]  # fmt: skip
    procs.extend(contenders)
    turns = []
    for p in contenders:
        assert p.wait() == 0, p.err
        (line,) = [x for x in p.lines if x.startswith("TURN ")]
        _, token, read, written = line.split()
        turns.append(Turn(int(token), int(read), bool(int(written))))
    assert serialization_violations(turns) == []
    assert cli.json("get", "contended-counter")["value"] == str(n)


def leader_of(cli: Cli) -> int:
    return int(cli.json("leader")["leader"])


def test_lock_and_elect_sessions_carry_on_across_a_leader_kill(cli: Cli, procs: list[Proc]) -> None:
    holder = Proc(cli, "lock", "ha-lock", "--ttl", "10", "--json")
    candidate_a = Proc(cli, "elect", "ha-elect", "node-a", "--ttl", "10", "--json")
    procs.extend([holder, candidate_a])
    first = wait_for("the lock holder holds", lambda: holder.json_lines())[0]
    wait_for("node-a leads", lambda: any(x["me"] for x in candidate_a.json_lines()))
    waiter = Proc(cli, "lock", "ha-lock", "--ttl", "10", "--json")
    candidate_b = Proc(cli, "elect", "ha-elect", "node-b", "--ttl", "10", "--json")
    observer = Proc(cli, "elect", "ha-elect", "--listen", "--json")
    procs.extend([waiter, candidate_b, observer])
    wait_for("the waiter queued", lambda: queue_length(cli, "ha-lock") == 2)
    wait_for("node-b queued", lambda: queue_length(cli, "ha-elect") == 2)
    wait_for("the observer sees node-a", lambda: observer.json_lines())

    killed = leader_of(cli)
    cli.cluster.kill(killed)
    try:
        # Through the election that follows: leases are extended, keep-alives go to the new
        # leader, waits resume their watches on another member.
        wait_for("a new leader", lambda: _new_leader(cli, killed))
        holder.popen.send_signal(signal.SIGTERM)  # release, as Ctrl-C does
        candidate_a.popen.send_signal(signal.SIGTERM)  # resign
        assert holder.wait() == 0, holder.err
        assert candidate_a.wait() == 0, candidate_a.err
        second = wait_for("the waiter holds the lock", lambda: waiter.json_lines())[0]
        assert second["revision"] > first["revision"]
        wait_for("node-b leads", lambda: any(x["me"] for x in candidate_b.json_lines()))
        seen = wait_for(
            "the observer sees node-b",
            lambda: [x["value"] for x in observer.json_lines()] == ["node-a", "node-b"],
        )
        assert seen
    finally:
        cli.restart(killed)
    for p in (waiter, candidate_b, observer):
        p.popen.send_signal(signal.SIGTERM)
        assert p.wait() == 0, p.err
    assert queue_length(cli, "ha-lock") == 0 and queue_length(cli, "ha-elect") == 0


def _new_leader(cli: Cli, old: int) -> bool:
    try:
        return leader_of(cli) not in (old, None)
    except (AssertionError, TypeError, ValueError):
        return False


def test_elect_usage(cli: Cli) -> None:
    both = cli.run("elect", "x", "value", "--listen")
    assert both.exit_code == 2 and "PROPOSAL" in both.output
    neither = cli.run("elect", "x")
    assert neither.exit_code == 2
