"""``run_drill``: the top level. Starts the cluster (or uses one), runs the workers, the fault
injector, the log collector and the leader watch for the duration, heals, checks, reports.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from paxosd.client.client import ClientError
from paxosd.lab.drill.checks import (
    KV,
    BlockSet,
    Violation,
    check_log,
    diagnose_convergence,
    final_reads,
    replica_state,
    wait_converged,
)
from paxosd.lab.drill.collect import LogCollector
from paxosd.lab.drill.elections import LeaderWatch
from paxosd.lab.drill.faults import FaultInjector, set_partition
from paxosd.lab.drill.nodes import Nodes, closing_all, find_leader, node_status
from paxosd.lab.drill.reconfig import ADMIN_WAIT_S
from paxosd.lab.drill.report import build_report, restart_figures
from paxosd.lab.drill.sessions import Sessions
from paxosd.lab.drill.spec import (
    DRILL_NODE_CONFIG,
    KILL_DOWN_S,
    PARTITION_S,
    DrillError,
    DrillProgress,
    DrillSpec,
    ProgressFn,
)
from paxosd.lab.drill.streams import check_all
from paxosd.lab.drill.watchers import DrillWatcher, read_history
from paxosd.lab.drill.workload import (
    HISTORY_OPS_MAX,
    WORKER_PAUSE_S,
    History,
    Workload,
    remember,
    run_op,
    write_history,
)
from paxosd.lab.localcluster import LocalCluster
from paxosd.sim import linearizability
from paxosd.statemachine.commands import Put, Written

PROGRESS_S: Final = 0.5
# How long the etcd listeners have to accept connections once their nodes are ready.
ETCD_READY_S: Final = 60.0
# After the end mark, how long the watchers have to deliver it.
WATCH_FINISH_S: Final = 60.0


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
                etcd=spec.etcd,
                etcd_tls=False,  # the listeners bind loopback only
            )
            env = dict(spec.node_env)
            for k in cluster.node_ids():
                cluster.start(k, env=env)
            try:
                cluster.wait_ready()
            except ClientError as e:
                raise DrillError(f"local cluster did not start: {e}; logs in {root}") from None
            nodes = Nodes.of_cluster(cluster, env)
        etcd_addresses: list[str] = []
        if spec.etcd and cluster is not None:
            from paxosd.lab.drill.etcdload import wait_listeners

            etcd_addresses = cluster.etcd_endpoints()
            late = wait_listeners(etcd_addresses, ETCD_READY_S)
            if late:
                raise DrillError(
                    f"the etcd listener(s) at {', '.join(late)} did not accept connections; "
                    f"logs in {root}"
                )
        report = _Drill(spec, nodes, run_id, root, say, etcd_addresses).run()
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
        self,
        spec: DrillSpec,
        nodes: Nodes,
        run_id: str,
        root: Path,
        say: ProgressFn,
        etcd_addresses: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.nodes = nodes
        self.run_id = run_id
        self.root = root
        self.say = say
        self.history = History()
        self.workload = Workload(run_id, spec.epoch_s, txns=spec.txns)
        self.watchers: list[DrillWatcher] = []
        self.watch_start = 0  # the start mark's revision (0: no watch checks)
        self.watch_notes: list[str] = []
        self.stop_workers = threading.Event()
        self.worker_errors: list[str] = []
        rng = random.Random(spec.seed)
        self.injector = FaultInjector(nodes, spec.faults, random.Random(rng.getrandbits(64)), spec)
        if "reconfig" in spec.faults:
            nodes.spare_ids = 2  # an add and a replace's add before the workers reconnect
        self.worker_seeds = [rng.getrandbits(64) for _ in range(spec.clients)]
        self.sessions: Sessions | None = None
        if spec.leases:
            # Drawn after the workload's seeds, so --no-leases leaves the rest as it was.
            self.sessions = Sessions(
                nodes,
                run_id,
                self.history.now_ms,
                [rng.getrandbits(64) for _ in range(Sessions.seeds_needed())],
                self.stop_workers,
                op_timeout_ms=spec.op_timeout_ms,
                plant_lease=spec.plant_lease,
                plant_lock=spec.plant_lock,
                folder=root,
            )
        self.leader_watch = LeaderWatch(nodes, self.history.now_ms)
        self.etcd_addresses = list(etcd_addresses)
        # Worker client id -> the front end it goes through; the etcd workers' request kinds
        # by outcome, and their fail-overs (for the report).
        first_etcd = spec.clients - spec.etcd_workers
        self.worker_via = {
            self._worker_id(i): "etcd" if i >= first_etcd else "paxosd" for i in range(spec.clients)
        }
        self.etcd_kinds: Counter[tuple[str, str]] = Counter()
        self.etcd_failovers = 0
        self._etcd_lock = threading.Lock()

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

    def _worker_id(self, i: int) -> str:
        return f"{self.run_id}-w{i}"

    def _worker(self, i: int) -> None:
        if self.worker_via[self._worker_id(i)] == "etcd":
            self._etcd_worker(i)
            return
        rng = random.Random(self.worker_seeds[i])
        seen: dict[str, tuple[bytes | None, int]] = {}
        cid = self._worker_id(i)
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
                    remember(seen, op, e.operation.result)
                elif e.operation.outcome == "fail" and e.error:
                    # With every node down a client fails at once: pause rather than fill
                    # the history with failures while the faults heal.
                    self.stop_workers.wait(WORKER_PAUSE_S)
        except Exception as e:  # a worker bug must end the drill's claims, not hide
            self.worker_errors.append(f"worker {i}: {type(e).__name__}: {e}")
        finally:
            c.close()

    def _etcd_worker(self, i: int) -> None:
        """A worker that goes through the etcd API (see etcdload.py). It keeps the initial
        members' listeners: under the reconfig fault, nodes added later are not among them."""
        from paxosd.lab.drill.etcdload import (
            EtcdEndpoints,
            next_etcd_op,
            remember_etcd,
            run_etcd_op,
        )

        rng = random.Random(self.worker_seeds[i])
        seen: dict[str, tuple[bytes | None, int, int]] = {}
        cid = self._worker_id(i)
        planted = (
            self.spec.plant_etcd_phantom_put
            if i == self.spec.clients - self.spec.etcd_workers
            else 0
        )
        eps = EtcdEndpoints(self.etcd_addresses, first=i)
        timeout_s = self.spec.op_timeout_ms / 1000
        try:
            n = puts = 0
            while not self.stop_workers.is_set() and len(self.history) < HISTORY_OPS_MAX:
                n += 1
                epoch = self.workload.epoch_at(self.history.now_ms())
                planned = next_etcd_op(rng, self.workload, epoch, f"{cid}/{n}".encode(), seen)
                phantom = False
                if planned.kind == "put":
                    puts += 1
                    phantom = puts == planted
                e, mod = run_etcd_op(eps, planned, self.history, cid, timeout_s, phantom=phantom)
                self.history.add(e)
                with self._etcd_lock:
                    self.etcd_kinds[(planned.kind, e.operation.outcome)] += 1
                if e.operation.result is not None:
                    remember_etcd(seen, planned.op, e.operation.result, mod)
                elif e.operation.outcome == "fail":
                    self.stop_workers.wait(WORKER_PAUSE_S)
        except Exception as e:  # a worker bug must end the drill's claims, not hide
            self.worker_errors.append(f"etcd worker {i}: {type(e).__name__}: {e}")
        finally:
            with self._etcd_lock:
                self.etcd_failovers += eps.failovers
            eps.close()

    def run(self) -> dict[str, Any]:
        spec, nodes = self.spec, self.nodes
        with closing_all(nodes.node_clients()) as clients:
            start = max(
                (int(s["decided_index"]) for c in clients.values() if (s := node_status(c))),
                default=0,
            )
        collector = LogCollector(nodes, start + 1)
        if spec.watchers:
            self._start_watchers()
        if self.sessions is not None:
            try:
                self.sessions.start()
            except ClientError as e:
                self.worker_errors.append(f"leases and locks did not start: {e}")
                self.sessions = None
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
                for watcher in self.watchers:
                    watcher.tick()
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
            if self.sessions is not None:
                self.sessions.join()
            self.leader_watch.stop()
            watch_thread.join(10)
        run_ms = self.history.now_ms() - started_ms
        return self._check(collector, run_ms)

    def _mark(self, value: bytes) -> int:
        """Put the drill's mark; its revision (0: the cluster reports no revisions)."""
        with self.nodes.client(
            timeout_ms=3 * self.spec.op_timeout_ms,
            # A client id per mark: a second client under one id would start at seq 1 again
            # and get the first mark's answer back from the session table.
            client_id=f"{self.run_id}-mark-{value.decode()}",
        ) as c:
            result = c.execute(Put(key=self.workload.mark_key, value=value))
        if not isinstance(result, Written):
            raise ClientError(f"the drill's mark was answered {type(result).__name__}")
        return result.revision

    def _start_watchers(self) -> None:
        """The start mark, then the three watchers from its revision (see watchers.py)."""
        try:
            self.watch_start = self._mark(b"start")
        except ClientError as e:
            self.watch_notes.append(f"no watch checks: the start mark failed: {e}")
            return
        if not self.watch_start:
            self.watch_notes.append("no watch checks: the cluster reports no revisions")
            return
        with closing_all(self.nodes.node_clients()) as clients:
            leader = find_leader(clients)
        ids = self.nodes.ids
        leader = ids[0] if leader is None else leader
        follower = next(k for k in ids if k != leader)
        spec, root, start = self.spec, self.workload.root, self.watch_start

        def rotate(n: int) -> int:
            now = self.nodes.ids  # the members change under the reconfig fault
            return now[n % len(now)]

        self.watchers = [
            DrillWatcher(
                f"leader n{leader}",
                self.nodes,
                root,
                start,
                lambda _n: leader,
                pinned=True,
                drop_nth=spec.plant_watch_drop,
            ),
            DrillWatcher(
                f"follower n{follower}", self.nodes, root, start, lambda _n: follower, pinned=True
            ),
            DrillWatcher(
                "roaming",
                self.nodes,
                root,
                start,
                rotate,
                pinned=False,
                faults_seen=lambda: len(self.injector.events),
            ),
        ]
        for w in self.watchers:
            w.start()

    def _check_watches(self, leader: int | None) -> tuple[list[Violation], dict[str, Any]]:
        """The end mark, the watchers' last events, the reference history read with a
        fresh watch on a node other than the leader, then the checks of streams.py."""
        info: dict[str, Any] = {"checked": False, "notes": self.watch_notes}
        if not self.watchers:
            for w in self.watchers:
                w.stop()
            return [], info
        try:
            end = self._mark(b"end")
        except ClientError as e:
            for w in self.watchers:
                w.stop()
            return [Violation("watch", f"the end mark failed: {e}")], info
        for w in self.watchers:
            w.finish(end)
        deadline = time.monotonic() + WATCH_FINISH_S
        for w in self.watchers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
        for w in self.watchers:
            w.stop()
            w.thread.join(5)
        ids = self.nodes.ids
        node = next((k for k in reversed(ids) if k != leader), ids[0])
        try:
            with closing_all(self.nodes.node_clients(timeout_ms=5000)) as clients:
                reference = read_history(clients[node], self.workload.root, self.watch_start, end)
        except (ClientError, OSError, TimeoutError) as e:
            return [Violation("watch-history", f"could not read the history on n{node}: {e}")], info
        violations, figures = check_all(
            reference,
            self.watch_start,
            end,
            [w.stream for w in self.watchers],
            self.history.entries(),
            self.workload,
        )
        info.update(figures)
        info["checked"] = True
        info["history_node"] = node
        return violations, info

    def _heal_all(self) -> None:
        cluster = self.nodes.cluster
        if cluster is not None:
            for k in cluster.node_ids():
                cluster.signal(k, signal.SIGCONT)
                if cluster.pid(k) is None:
                    cluster.start(k, env=self.nodes.node_env)
        with closing_all(self.nodes.node_clients(timeout_ms=2000)) as clients:
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
        for p in final_reads(nodes, self.workload, self.history, 3 * spec.op_timeout_ms):
            violations.append(Violation("final-read", p))
        conv = wait_converged(nodes, spec.converge_timeout_s if first.ok else 10.0)
        if not conv.ok:
            violations += diagnose_convergence(conv)
        collector.stop()
        self.injector.join_watchers(5.0)
        top = max((int(s["decided_index"]) for s in conv.rows.values()), default=0)
        with closing_all(nodes.node_clients(timeout_ms=5000)) as clients:
            collector.pull(clients, top=top)
        if collector.copy.next_slot <= top:
            collector.copy.gaps.append((collector.copy.next_slot, top))
        entries = self.history.entries()
        # A replica that is behind (the convergence violation above says so) holds an older
        # state: comparing it would blame exactly-once for what is a catch-up failure.
        top_applied = max((int(s["applied_index"]) for s in conv.rows.values()), default=0)
        current = sorted(k for k, s in conv.rows.items() if int(s["applied_index"]) == top_applied)
        replicas: dict[int, tuple[KV, BlockSet]] = {}
        try:
            replicas = replica_state(nodes, self.workload, current)
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
        leader = next((k for k, s in conv.rows.items() if s.get("role") == "leader"), None)
        self._progress("checking", "watch streams and transactions against the history")
        watch_violations, watch_info = self._check_watches(leader)
        violations += watch_violations
        sessions_info: dict[str, Any] | None = None
        if self.sessions is not None:
            self._progress("checking", "lease expiry and fenced writes")
            session_violations, sessions_info = self.sessions.check(
                self.injector.events,
                self.injector.restarts,
                len(nodes.voter_ids),
                self.leader_watch.changes,
            )
            violations += session_violations
            self.worker_errors += self.sessions.errors()
        for err in self.worker_errors:
            violations.append(Violation("harness", err))
        if self.injector.crashed:
            violations.append(Violation("harness", self.injector.crashed))
        restart_figures(self.injector.restarts, entries)
        history_path = self.root / "history.jsonl"
        write_history(history_path, entries)
        self._progress("done")
        report = build_report(
            spec=spec,
            nodes=nodes,
            workload=self.workload,
            injector=self.injector,
            watch=self.leader_watch,
            entries=entries,
            run_ms=run_ms,
            conv=conv,
            lin=lin,
            lin_s=lin_s,
            log_info=log_info,
            violations=violations,
            history_path=history_path,
        )
        report["watch"] = watch_info
        report["etcd"] = None
        if spec.etcd:
            from paxosd.lab.drill.etcdload import etcd_report

            report["etcd"] = etcd_report(
                entries, self.worker_via, self.etcd_kinds, self.etcd_failovers, self.etcd_addresses
            )
        report["leases"] = None if sessions_info is None else sessions_info["leases"]
        report["locks"] = None if sessions_info is None else sessions_info["locks"]
        return report
