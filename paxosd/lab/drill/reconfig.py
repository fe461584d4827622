"""The reconfig fault: membership changes (add, remove, replace a lost disk, leader transfer)
mixed with crashes, asked of the leader the way an operator would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from paxosd.client.client import (
    BadRequestError,
    Client,
    ClientError,
    RefusedError,
    UnavailableError,
)
from paxosd.lab.drill.nodes import closing_all, find_leader
from paxosd.lab.drill.spec import DRILL_NODE_CONFIG, KILL_DOWN_S
from paxosd.lab.localcluster import LocalCluster
from paxosd.net.admin import ChangeMember, Transfer, to_json

if TYPE_CHECKING:
    from paxosd.lab.drill.faults import FaultInjector


# One membership step per fault, in shuffled rounds like the kinds.
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
        with closing_all(self.nodes.node_clients()) as clients:
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
        leader = find_leader(clients)
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
            with closing_all(self.nodes.node_clients()) as clients:
                leader = find_leader(clients)
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
        with closing_all(self.nodes.node_clients(timeout_ms=2000)) as clients:
            leader = find_leader(clients)
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
