"""``paxosd run``: the process around Node — transport, signals, systemd, metrics.

The loop below is the only endless loop in paxosd. It blocks in exactly one place (one
``poll`` over both ports' epolls) for at most one tick, so timers fire on time and a
wedged loop is visible to systemd's watchdog.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import itertools
import os
import queue
import select
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer

from paxosd.core.io import ChangeMembership, TransferLeadership
from paxosd.core.membership import ChangeKind, MembershipChange
from paxosd.core.types import Membership, NodeId
from paxosd.net.admin import (
    AdminAnswer,
    AdminQuery,
    BadQuery,
    Busy,
    ChangeMember,
    Decided,
    LogPage,
    LogRow,
    MemberInfo,
    Members,
    MembersReply,
    OutcomeUnknown,
    Partition,
    Partitioned,
    PeerLink,
    ReadStale,
    Recovery,
    Refused,
    Snapshot,
    SnapshotChunk,
    SnapshotRead,
    SnapshotTaken,
    StaleRead,
    Status,
    StatusReply,
    Transfer,
    ViewLog,
)
from paxosd.net.framing import (
    ClientReply,
    ClientRequest,
    QueryReply,
    QueryRequest,
    WatchCancel,
    WatchCreate,
    WatchResponse,
)
from paxosd.net.transport import ClientServer, PeerTransport
from paxosd.server.compaction import AutoCompactor
from paxosd.server.config import Config, ConfigError, load_config, parse_address
from paxosd.server.digestcheck import DigestHistory, DigestProbe
from paxosd.server.diskspace import DISK_CHECK_MS, EXIT_STORAGE_FAILED, Space, measure, reexec
from paxosd.server.logs import Condition, bind_node, configure_logging, fatal
from paxosd.server.metrics import Metrics
from paxosd.server.node import TICK_MS, Node, install_signal_handlers, lock_data_dir, now_ms
from paxosd.server.replies import Reply
from paxosd.server.sdnotify import Notifier, watchdog_interval_ms
from paxosd.server.turns import TurnClock
from paxosd.server.watch import FrameEncoder, WatchHub, WatchLimits
from paxosd.statemachine.commands import (
    Alarm,
    AlarmMember,
    BadCommand,
    Command,
    Compact,
    Compacted,
    decode_result,
    encode_command,
)
from paxosd.storage.store import DiskFull, StorageError

log = structlog.get_logger("paxosd.server.daemon")

VIEW_LOG_ROWS_MAX = 1000
# Membership changes and leader transfers waiting for the core's answer (each is one query).
ADMIN_WAITING_MAX = 64
# How often the loop looks for lasting problems to report (see Daemon._check_health).
HEALTH_CHECK_MS = 100
# The etcd listener's child process: restarted at most this often; waited for this long at stop.
GATEWAY_RESTART_MS = 2000
GATEWAY_STOP_S = 5
# No leader for this many election timeouts is a lost quorum: one timeout passes before any
# election starts, so a single timeout would warn on every ordinary start and leader change.
NO_LEADER_ELECTION_TIMEOUTS = 2
# After start, members come up one by one (a rolling restart, `paxosctl cluster up` on a busy
# machine): a peer not reached yet, or no leader yet, is not a problem until this long.
START_GRACE_MS = 5000
# How often a leader compares its members' digests with its own (see digestcheck).
DIGEST_CHECK_MS = 5000
# Auto-compaction's proposals are client commands of the daemon itself: this connection id
# (no real connection has it) marks their replies, and this session makes them exactly-once.
# The seq of each is the revision it compacts at: compactions only move forward, so any
# leader's next proposal orders after every earlier one, across restarts and leader changes.
AUTO_COMPACT_CONN = -1
AUTO_COMPACT_CLIENT_ID = "paxosd-auto-compaction"
AUTO_COMPACT_SITE = "paxosd"
# The NOSPACE alarm the leader raises through the log (see _check_quota).
ALARM_CONN = -2
ALARM_CLIENT_ID = "paxosd-alarm"
# How often a leader over its quota may propose the alarm again while it is not yet applied.
ALARM_PROPOSE_MS = 1000
# How often the watch hub is checked for connections that closed unnoticed (a backstop:
# ClientServer.closed_connections reports them at once, within its own bound).
WATCH_SWEEP_MS = 1000


class ClientSink:
    """The watch hub's way out: WatchResponses on client connections.

    The transport's send queue drops its oldest frame when full, which a watch must never
    suffer. The hub stops sending at its backlog bound, far below the queue's; should a
    connection still reach the queue's bound (a client that sends requests and never reads
    the answers), it is closed with a logged reason: the client sees the end and resumes
    its watches, where a dropped frame would have been a silent gap. That holds for the
    connection's ordinary replies too: the first watch response marks the connection
    "keep every frame" in the transport, which then closes it rather than drop any frame.

    The encoding cache lives for one pump (``end_pump``): the hub shares events tuples
    only within a pump, and kept longer they would be revisions long sent."""

    def __init__(self, clients: ClientServer) -> None:
        self.clients = clients
        self.frames_max = clients.limits.send_queue_frames_max
        self.encoder = FrameEncoder(clients.node)

    def send(self, conn_id: int, responses: list[WatchResponse]) -> bool:
        clients = self.clients
        if not clients.is_open(conn_id):
            return False
        clients.keep_every_frame(conn_id)
        if clients.backlog(conn_id) + len(responses) > self.frames_max:
            clients.close_connection(conn_id, "the client does not read its watch responses")
            return False
        frames = [(conn_id, self.encoder.frame(r)) for r in responses]
        if clients.send_frames(frames) != len(responses):
            clients.close_connection(conn_id, "a watch response does not fit a frame")
            return False
        return True

    def backlog(self, conn_id: int) -> int:
        return self.clients.backlog(conn_id)

    def end_pump(self) -> None:
        self.encoder.clear()


class Daemon:
    def __init__(self, config: Config, node: Node, peers: PeerTransport) -> None:
        """``node`` sends through ``peers`` (given to it at construction); both are started
        by serve()."""
        self.config = config
        self.node = node
        self.peers = peers
        self.clients = ClientServer(
            node=config.node_id,
            listen=(config.client_address.host, config.client_address.port),
            client_key=config.client_key.reveal(),
        )
        self.notifier = Notifier()
        watch_limits = WatchLimits()
        # The hub's worst case must fit the transport's queue with room for ordinary replies.
        assert 2 * watch_limits.queue_frames_max <= self.clients.limits.send_queue_frames_max
        self.watches = WatchHub(ClientSink(self.clients), node=config.node_id, limits=watch_limits)
        self._next_watch_sweep_ms = 0
        self.metrics: Metrics | None = None
        if config.metrics_address is not None:
            self.metrics = Metrics()
            self.metrics.serve(config.metrics_address.host, config.metrics_address.port)
            node.metrics = self.metrics
        self._next_metrics_ms = 0
        self.stop: list[bool] = []
        self.started_ms = now_ms()
        self.turns = TurnClock(log)
        node.runner.mark = self.turns.phase
        # Membership changes and leader transfers answer when the core decides: token -> the
        # query waiting for it (connection id, request id).
        self._admin_waiting: dict[int, tuple[int, int]] = {}
        self._admin_tokens = itertools.count(1)
        # `paxosctl snapshot` answers when the snapshot it began is in the core (the loop goes
        # on meanwhile): (connection id, request id, the slot it waits for).
        self._snapshot_waiting: list[tuple[int, int, int]] = []
        self._membership: Membership | None = None
        self._synced_leader: NodeId | None = None
        # The last leader this node knew (None only before the first): a leader change is a
        # warning, the first leader after start is not.
        self._known_leader: NodeId | None = None
        # Lasting problems, each logged once as a warning and once when it clears.
        timeout_ms = config.timeouts.election_timeout_ms_max
        self._peer_unreachable: dict[NodeId, Condition] = {}
        self._quorum = Condition(
            "quorum_lost", "quorum_restored", after_ms=NO_LEADER_ELECTION_TIMEOUTS * timeout_ms
        )
        self._next_health_ms = 0
        self._digests = DigestHistory()
        self._digest_mismatch: dict[NodeId, Condition] = {}
        self._probe: DigestProbe | None = None
        self._next_digest_check_ms = 0
        self.compactor = AutoCompactor(config.compaction, now_ms())
        # The data dir's disk as last measured (status, metrics), and the write that found
        # it full, once one has (see _wait_for_space).
        self._space: Space | None = None
        self._disk_full: DiskFull | None = None
        # The alarms last seen applied (logged when they change), and when the leader last
        # proposed NOSPACE.
        self._alarms_seen: tuple[AlarmMember, ...] = ()
        self._alarm_proposed_ms = -ALARM_PROPOSE_MS
        self.gateway = EtcdGateway(config) if config.etcd.listen is not None else None

    def serve(self) -> int:
        cfg = self.config
        self.peers.start(
            {
                p.node_id: (p.address.host, p.address.port)
                for p in cfg.peers
                if p.node_id != cfg.node_id
            }
        )
        self.clients.start()
        if self.gateway is not None:
            self.gateway.start(now_ms())
        self._probe = DigestProbe(self.config.client_key.reveal())
        self._sync_peers()
        install_signal_handlers(self.stop)
        self.notifier.notify("READY=1", f"STATUS={self._status_line()}", f"MAINPID={os.getpid()}")
        log.info(
            "serving",
            peer_address=f"{self.peers.address[0]}:{self.peers.address[1]}",
            client_address=f"{self.clients.address[0]}:{self.clients.address[1]}",
        )
        self.node.snapshot_maker.fold_memory()
        try:
            self._loop()
        except DiskFull as e:
            return self._wait_for_space(e)
        except StorageError as e:
            return self._storage_failed(e)
        self.notifier.notify("STOPPING=1")
        log.info("stopping", reason="signal")
        self._stop_gateway(wait=False)
        try:
            self._hand_over_leadership()
            self._turn()  # finish what is in flight: persist, send, reply
            self.node.flush_decided()
        except DiskFull as e:
            # Stopping anyway: nothing after the failed write leaves, the next start
            # recovers from disk (or waits for space).
            self._stop_acknowledging()
            log.error("disk_full", data_dir=str(self.config.data_dir), error=e.problem)
        except StorageError as e:
            return self._storage_failed(e)
        if self._probe is not None:
            self._probe.close()
        self._stop_gateway()
        self.peers.close()
        self.clients.close()
        self.node.snapshot_maker.close()  # a snapshot child still writing is stopped
        with suppress(StorageError):  # after a full disk: its checkpoint may fail too
            self.node.storage.close()
        return 0

    def _stop_gateway(self, *, wait: bool = True) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            if wait:
                self.gateway.join()

    def _loop(self) -> None:
        """The one endless loop: ends on SIGTERM/SIGINT, or with the StorageError of a
        write that failed (then nothing that depended on that write has left: see serve)."""
        watchdog_ms = watchdog_interval_ms()
        next_watchdog = 0
        next_tick = now_ms()
        # Built once: each port's epoll is one descriptor, readable while it has work.
        poller = select.poll()
        for fd in self.peers.waitables() + self.clients.waitables():
            poller.register(fd, select.POLLIN)
        node = self.node
        turns = self.turns
        full_collections = turns.full_collections
        node.turns_measured = True
        while not self.stop:
            poller.poll(max(0, next_tick - now_ms()))
            turns.start()
            for src, msg in self.peers.drain():
                node.on_peer_message(src, msg)
            turns.phase("peers")
            for conn_id, body in self.clients.drain():
                self._on_client(conn_id, body)
            turns.phase("clients")
            t = now_ms()
            if t >= next_tick:
                node.on_tick()
                next_tick = t + TICK_MS
                if self.metrics is not None and t >= self._next_metrics_ms:
                    self._refresh_metrics()
                    self._next_metrics_ms = t + 1000
                if t >= self._next_health_ms:
                    self._check_health(t)
                    self._next_health_ms = t + HEALTH_CHECK_MS
                    if self.gateway is not None:
                        self.gateway.check(t)
                if watchdog_ms is not None and t >= next_watchdog:
                    self.notifier.notify("WATCHDOG=1", f"STATUS={self._status_line()}")
                    next_watchdog = t + watchdog_ms
                self._auto_compact(t)
                self._check_quota(t)
                turns.phase("tick")
            self._turn()
            took = turns.end(
                slot=node.sm.applied_through,
                snapshot_running=node.snapshot_running,
                snapshot_decoding=node.runner.preparing,
            )
            node.note_turn(took, turns.phases)
            if turns.full_collections != full_collections:
                # What survived a full collection is the state, which lives on: freeze it,
                # so the next full collection walks only what came since (a full walk of
                # the state is ~0.3 s at 300,000 keys before the first snapshot's freeze;
                # see paxosd/server/snapshots.py _settle_gc for why freezing is safe here).
                full_collections = turns.full_collections
                gc.freeze()

    # ------------------------------------------------------------------ a failing disk

    def _stop_acknowledging(self) -> None:
        """A write failed: the core's memory ran ahead of the disk (it made the promise or
        vote whose write failed), so from now on nothing it says may leave. Replies not yet
        delivered are dropped (their clients retry; a retry is answered from the session
        table, exactly once) and the peer port closes, so this node neither votes nor
        leads. The core is never stepped again in this process."""
        self.node.replies.clear()
        self.node.admin_results.clear()
        self.peers.close()
        self._stop_gateway()

    def _storage_failed(self, error: StorageError) -> int:
        """Any storage failure but a full disk (EIO from a write or an fsync): stop for good,
        in one line. The write is not retried, because after a failed fsync the kernel may
        have dropped the dirty pages and cleared the error (PostgreSQL's fsync lesson), so a
        retry that succeeds proves nothing; a restart re-reads and checks what is really on
        disk. Under systemd, Restart=on-failure does that, and StartLimitBurst stops a disk
        that keeps failing from flapping."""
        self._stop_acknowledging()
        self.notifier.notify("STOPPING=1", f"STATUS=storage failed: {error.problem}")
        if self._probe is not None:
            self._probe.close()
        self.clients.close()
        with suppress(StorageError):
            self.node.storage.close()
        fatal(
            f"paxosd: storage failed, stopped without acknowledging anything after it "
            f"(exit {EXIT_STORAGE_FAILED}): {error}; not retried (after a failed fsync the "
            "data's state is unknown): check the disk, then restart to recover from it"
        )
        return EXIT_STORAGE_FAILED

    def _wait_for_space(self, error: DiskFull) -> int:
        """A write found the disk full: stop voting and acknowledging at once, say so, answer
        clients "unavailable" (and status queries truthfully), look at the free space every
        DISK_CHECK_MS, and once enough is back recover from disk by re-executing this
        command line (see paxosd/server/diskspace.py for why). Returns only on SIGTERM."""
        self._stop_acknowledging()
        self._disk_full = error
        # Watchers get no more events here: their connections close, and the clients resume
        # their watches on another member (a watch is resumable from any replica).
        for conn_id in self.watches.connections():
            self.watches.drop_connection(conn_id)
            self.clients.close_connection(conn_id, "disk full: resume the watch elsewhere")
        data_dir = self.config.data_dir
        space = self._measure()
        log.error(
            "disk_full",
            data_dir=str(data_dir),
            free_bytes=space.free_bytes,
            db_bytes=space.db_bytes,
            resume_free_bytes=space.resume_bytes,
            error=error.problem,
            action="free space on the file system of data_dir (or grow it); this node "
            "stopped voting and answering, and rejoins by itself once resume_free_bytes "
            "are free",
        )
        status = f"STATUS=disk full: {data_dir} has {space.free_bytes} bytes free; waiting"
        self.notifier.notify(status)
        watchdog_ms = watchdog_interval_ms()
        next_watchdog = 0
        next_check = now_ms() + DISK_CHECK_MS
        poller = select.poll()
        for fd in self.clients.waitables():
            poller.register(fd, select.POLLIN)
        while not self.stop:
            t = now_ms()
            wake = next_check if watchdog_ms is None else min(next_check, next_watchdog)
            poller.poll(max(0, wake - t))
            for conn_id, body in self.clients.drain():
                self._on_client_disk_full(conn_id, body)
            t = now_ms()
            if watchdog_ms is not None and t >= next_watchdog:
                self.notifier.notify("WATCHDOG=1", status)
                next_watchdog = t + watchdog_ms
            if t >= next_check:
                space = self._measure()
                if space.free_bytes >= space.resume_bytes:
                    break
                next_check = t + DISK_CHECK_MS
        else:
            log.info("stopping", reason="signal", disk_full=True)
            self.clients.close()
            if self._probe is not None:
                self._probe.close()
            with suppress(StorageError):
                self.node.storage.close()
            return 0
        log.warning(
            "disk_space_back",
            data_dir=str(data_dir),
            free_bytes=space.free_bytes,
            action="restarting this process to recover from disk",
        )
        self.notifier.notify("STATUS=disk space back: restarting from disk")
        self.clients.close()
        if self._probe is not None:
            self._probe.close()
        with suppress(StorageError):
            self.node.storage.close()
        reexec()

    def _on_client_disk_full(self, conn_id: int, body: object) -> None:
        """The client port while the disk is full: commands are "unavailable" (clients go to
        another member at once), status and members are answered from memory, the rest is
        Busy. Nothing here writes to the disk."""
        reason = (
            f"node {self.config.node_id}: disk full ({self.config.data_dir}); "
            "not serving until space is freed"
        )
        match body:
            case ClientRequest(request_id=rid):
                self.clients.reply(conn_id, ClientReply(rid, "unavailable", reason.encode(), None))
            case QueryRequest(request_id=rid, query=Status()):
                self.clients.reply(conn_id, QueryReply(rid, self._status()))
            case QueryRequest(request_id=rid, query=Members()):
                self.clients.reply(conn_id, QueryReply(rid, self._members()))
            case QueryRequest(request_id=rid):
                self.clients.reply(conn_id, QueryReply(rid, Busy(reason)))
            case WatchCreate():
                self.clients.close_connection(conn_id, "disk full: watch another member")
            case WatchCancel():
                pass  # its watch was dropped with its connection
            case _:
                log.warning("unexpected client frame", conn=conn_id, kind=type(body).__name__)

    def _measure(self) -> Space:
        """Measure the data dir's disk now, and show it in the metrics."""
        space = self._space = measure(self.config.data_dir)
        m = self.metrics
        if m is not None:
            m.db_bytes.set(space.db_bytes)
            m.disk_free_bytes.set(space.free_bytes)
            m.disk_full.set(1 if self._disk_full is not None else 0)
        return space

    def _hand_over_leadership(self) -> None:
        """On SIGTERM a leader hands over first, so a planned restart costs clients a
        redirect rather than an election timeout. Bounded by one election timeout, and
        given up once no peer is connected: when the whole cluster stops at once (`paxosctl
        cluster down`) there is nobody to hand over to, and waiting only delays the stop."""
        node = self.node
        if not node.replica.is_leader or len(node.replica.voters) < 2:
            return
        if not self._any_peer_connected():
            log.info("leadership not handed over", reason="no peer connected")
            return
        node.replica.step(TransferLeadership(next(self._admin_tokens)))
        deadline = now_ms() + self.config.timeouts.election_timeout_ms_max
        poller = select.poll()
        for fd in self.peers.waitables():
            poller.register(fd, select.POLLIN)
        while node.replica.is_leader and now_ms() < deadline and self._any_peer_connected():
            self._turn()
            poller.poll(TICK_MS)
            for src, msg in self.peers.drain():
                node.on_peer_message(src, msg)
            node.on_tick()
        log.info(
            "leadership handed over" if not node.replica.is_leader else "leadership kept",
            leader=node.replica.leader_hint,
        )

    def _any_peer_connected(self) -> bool:
        return any(s.connected for s in self.peers.stats().values())

    def _sync_peers(self) -> None:
        """Connect to every member the log names and drop the ones it removed; and keep the
        leader we follow, even when the membership we know does not name it yet.

        A new member catches up by replaying the log from its start, so the memberships it
        learns are the cluster's past ones: a leader that joined later is not in them. Were
        it dropped, its catch-up replies would be dropped with it, and the learner would
        never reach the membership that names its leader (a deadlock seen on a cluster
        whose original members had all been replaced)."""
        m = self.node.replica.membership
        leader = self.node.replica.leader_hint
        if m is self._membership and leader == self._synced_leader:
            return
        changed = m is not self._membership
        if leader != self._synced_leader:
            # The one Paxos event an operator looks for first: who leads now, from when. A
            # new leader after another is a warning (once per change: clients were redirected
            # or waited); the first leader after start, or losing one, is info (a leader that
            # does not come back is the lost quorum warning).
            r = self.node.replica
            new_leader = leader is not None and self._known_leader not in (None, leader)
            (log.warning if new_leader else log.info)(
                "leader",
                leader=leader,
                previous=self._known_leader,
                role=r.role.value,
                ballot=f"{r.promised.round}.{r.promised.node}",
                decided=r.decided_through,
            )
            if leader is not None:
                self._known_leader = leader
        self._membership = m
        self._synced_leader = leader
        cfg = self.config
        configured = {p.node_id: p.address for p in cfg.peers}
        want: dict[NodeId, tuple[str, int] | None] = {}
        for member in m.members:
            node = NodeId(member.node)
            if node == cfg.node_id:
                continue
            parsed = parse_address(member.address) if member.address else None
            if parsed is not None and not isinstance(parsed, str):
                want[node] = (parsed.host, parsed.port)
            elif node in configured:
                want[node] = (configured[node].host, configured[node].port)
            else:
                want[node] = None
        if leader is not None and leader != cfg.node_id and leader not in want:
            dialled = self.peers.peers().get(leader)
            if dialled is not None:
                want[leader] = dialled
            elif leader in configured:
                want[leader] = (configured[leader].host, configured[leader].port)
            else:
                want[leader] = None
        for node in self.peers.peers():
            if node not in want:
                self.peers.remove_peer(node)
        for node, address in want.items():
            self.peers.add_peer(node, address)
        if changed:
            log.info(
                "membership", epoch=m.epoch, voters=sorted(m.voters), learners=sorted(m.learners)
            )

    def _answer_admin(self) -> None:
        """Answer membership changes and transfers the core has decided or refused."""
        node = self.node
        if (
            node.replica.membership is not self._membership
            or node.replica.leader_hint != self._synced_leader
        ):
            self._sync_peers()
        for res in node.admin_results:
            waiting = self._admin_waiting.pop(res.token, None)
            if waiting is None:
                continue
            answer: AdminAnswer
            if res.ok:
                answer = Decided(node_id=self.config.node_id, slot=res.slot, detail=res.detail)
            elif res.unknown:
                answer = OutcomeUnknown(res.detail)
            else:
                leads = node.replica.is_leader
                answer = Refused(res.detail, not_leader=not leads, leader=node.replica.leader_hint)
            self.clients.reply(waiting[0], QueryReply(waiting[1], answer))
        node.admin_results.clear()

    def _turn(self) -> None:
        node = self.node
        turns = self.turns
        node.drain()
        turns.phase("drain")
        self._digests.record(node.sm.applied_through, node.sm.digest())
        self._answer_admin()
        if self._snapshot_waiting:
            self._answer_snapshots()
        if any(reply.conn_id == AUTO_COMPACT_CONN for reply in node.replies):
            self._compaction_answered()
        if any(reply.conn_id == ALARM_CONN for reply in node.replies):
            node.replies[:] = [r for r in node.replies if r.conn_id != ALARM_CONN]
        if node.replies:
            # One write per client connection per turn, whatever it was answered. Every
            # reply carries the header: this node, its promised ballot, the leader it knows.
            r = node.replica
            header = (self.config.node_id, r.promised.round, r.promised.node, r.leader_hint)
            self.clients.reply_many(
                (reply.conn_id, _client_reply(reply, header)) for reply in node.replies
            )
            if self.metrics is not None:
                for reply in node.replies:
                    self.metrics.requests.labels(status=reply.status).inc()
            node.replies.clear()
        turns.phase("reply")
        self._pump_watches()
        turns.phase("watches")

    def _pump_watches(self) -> None:
        """Deliver what this turn applied to the watchers (the hub reads the history of the
        state machine as it is now: a snapshot install replaces it)."""
        hub = self.watches
        for conn_id in self.clients.closed_connections():
            hub.drop_connection(conn_id)
        t = now_ms()
        if t >= self._next_watch_sweep_ms:
            self._next_watch_sweep_ms = t + WATCH_SWEEP_MS
            for conn_id in hub.connections():
                if not self.clients.is_open(conn_id):
                    hub.drop_connection(conn_id)
        hub.pump(self.node.sm, t, self._ballot_header())

    def _ballot_header(self) -> tuple[int, int]:
        promised = self.node.replica.promised
        return (promised.round, promised.node)

    def _check_quota(self, now: int) -> None:
        """The leader raises NOSPACE through the log once the store reaches its quota (as
        an etcd member does with an AlarmRequest), so every replica refuses the same writes
        from the same slot on; then logs alarm changes (every member, as applied)."""
        node = self.node
        sm = node.sm
        quota = self.config.limits.quota_bytes
        me = self.config.node_id
        if (
            node.replica.is_leader
            and sm.store_bytes >= quota
            and not any(a.member == me and a.alarm == "NOSPACE" for a in sm.alarms)
            and now - self._alarm_proposed_ms >= ALARM_PROPOSE_MS
        ):
            self._alarm_proposed_ms = now
            command = encode_command(
                Command(
                    client_id=ALARM_CLIENT_ID,
                    seq=sm.applied_through + 1,  # grows across leaders and restarts
                    site=AUTO_COMPACT_SITE,
                    op=Alarm(action="activate", alarm="NOSPACE", member=me, quota_bytes=quota),
                )
            )
            node.on_client_command(ALARM_CONN, next(self._admin_tokens), command)
        alarms = sm.alarms
        if alarms == self._alarms_seen:
            return
        for a in alarms:
            if a not in self._alarms_seen:
                log.warning(
                    "alarm_raised",
                    alarm=a.alarm,
                    member=a.member,
                    store_bytes=sm.store_bytes,
                    quota_bytes=a.quota_bytes,
                    action="writes that add data are refused (NOSPACE): delete keys or "
                    "compact, then paxosctl alarm disarm",
                )
        for a in self._alarms_seen:
            if a not in alarms:
                log.info("alarm_cleared", alarm=a.alarm, member=a.member)
        self._alarms_seen = alarms
        if self.metrics is not None:
            self.metrics.alarm.labels(alarm="NOSPACE").set(1 if alarms else 0)

    def _auto_compact(self, now: int) -> None:
        """Propose a compaction when the [compaction] policy says one is due (leader only):
        an ordinary command through the node, so every replica compacts at one revision."""
        node = self.node
        sm = node.sm
        target = self.compactor.due(
            now, sm.revision, sm.compact_revision, leader=node.replica.is_leader
        )
        if target is None:
            return
        command = encode_command(
            Command(
                client_id=AUTO_COMPACT_CLIENT_ID,
                seq=target,
                site=AUTO_COMPACT_SITE,
                op=Compact(revision=target),
            )
        )
        log.debug("auto-compaction proposed", revision=target, mode=self.compactor.settings.mode)
        node.on_client_command(AUTO_COMPACT_CONN, next(self._admin_tokens), command)

    def _compaction_answered(self) -> None:
        """Take the auto-compaction's replies out of the client replies, and log them."""
        node = self.node
        mine = [r for r in node.replies if r.conn_id == AUTO_COMPACT_CONN]
        node.replies[:] = [r for r in node.replies if r.conn_id != AUTO_COMPACT_CONN]
        self.compactor.answered()
        for reply in mine:
            if reply.status != "ok":
                log.info("auto-compaction not applied", status=reply.status)
                continue
            try:
                result = decode_result(reply.result)
            except BadCommand:
                continue
            if isinstance(result, Compacted):
                log.info(
                    "auto-compaction",
                    compact_revision=result.compact_revision,
                    revision=result.revision,
                )
            else:
                log.info("auto-compaction not applied", result=type(result).__name__)

    def _refresh_metrics(self) -> None:
        m = self.metrics
        assert m is not None
        r = self.node.replica
        m.set_role(r.role.value)
        m.ballot_round.set(r.promised.round)
        m.decided.set(r.decided_through)
        sm = self.node.sm
        m.applied.set(sm.applied_through)
        m.revision.set(sm.revision)
        m.compact_revision.set(sm.compact_revision)
        m.history_bytes.set(sm.history_bytes)
        for peer, s in self.peers.stats().items():
            m.peer_connected.labels(peer=str(peer)).set(1 if s.connected else 0)
        self._measure()
        m.store_bytes.set(self.node.sm.store_bytes)
        m.quota_bytes.set(self.config.limits.quota_bytes)
        m.alarm.labels(alarm="NOSPACE").set(1 if self.node.sm.alarms else 0)
        if r.is_leader:
            for peer, lag in r.peer_lag().items():
                m.peer_lag.labels(peer=str(peer)).set(lag)
        m.set_watches(self.watches.stats())

    def _check_health(self, now: int) -> None:
        """Warn (once each, see Condition) about a peer unreachable for longer than an
        election timeout and a lost quorum: a leader that has not heard a majority of voters
        within an election timeout, or no leader for NO_LEADER_ELECTION_TIMEOUTS of them.
        Neither is a problem in the START_GRACE_MS after start while members come up."""
        timeout_ms = self.config.timeouts.election_timeout_ms_max
        starting = now - self.started_ms < START_GRACE_MS
        stats = self.peers.stats()
        for peer, s in stats.items():
            if starting and s.connects == 0:
                continue  # not reached since start: maybe not started yet
            cond = self._peer_unreachable.get(peer)
            if cond is None:
                cond = Condition("peer_unreachable", "peer_reachable", after_ms=timeout_ms)
                self._peer_unreachable[peer] = cond
            cond.update(not s.connected, now, peer=peer)
        for peer in [p for p in self._peer_unreachable if p not in stats]:
            del self._peer_unreachable[peer]  # no longer a member
        r = self.node.replica
        voters = r.voters
        if r.is_leader:
            acks = r.peer_last_ack_ms
            me = self.config.node_id
            live = 1 + sum(
                1 for p in voters if p != me and p in acks and r.now_ms - acks[p] <= timeout_ms
            )
            bad = 2 * live <= len(voters)
            state = f"leader hears {live} of {len(voters)} voters"
        else:
            bad = r.leader_hint is None
            state = "no leader" if bad else f"node {r.leader_hint} leads"
        self._quorum.update(
            bad and not (starting and self._known_leader is None),
            now,
            state=state,
            ballot=f"{r.promised.round}.{r.promised.node}",
            decided=r.decided_through,
        )
        self._check_digests(now)

    def _check_digests(self, now: int) -> None:
        """A leader asks its members for their digests now and then (off the loop, see
        digestcheck) and warns, once per member, when one differs from its own at the
        same applied index: the replicas have diverged."""
        r = self.node.replica
        probe = self._probe
        if probe is None:
            return
        if r.is_leader and now >= self._next_digest_check_ms:
            self._next_digest_check_ms = now + DIGEST_CHECK_MS
            me = self.config.node_id
            targets = {
                NodeId(m.node): (a.host, a.port)
                for m in r.membership.members
                if m.node != me and (a := self.config.clients.get(NodeId(m.node))) is not None
            }
            probe.ask(targets)
        while True:
            try:
                peer, applied, digest = probe.results.get_nowait()
            except queue.Empty:
                return
            mine = self._digests.at(applied)
            if mine is None:
                continue  # not an index we stopped at, or too long ago: next time
            cond = self._digest_mismatch.get(peer)
            if cond is None:
                cond = Condition("digest_mismatch", "digest_match")
                self._digest_mismatch[peer] = cond
            cond.update(
                digest != mine,
                now,
                peer=peer,
                applied_index=applied,
                digest=mine[:16],
                peer_digest=digest[:16],
            )

    def _status_line(self) -> str:
        r = self.node.replica
        if r.leader_hint is not None:
            leader = f"leader {r.leader_hint}"
        else:
            leader = "no leader" if self._known_leader is not None else "no leader yet"
        return (
            f"{r.role.value}, {leader}, decided {r.decided_through}, "
            f"applied {self.node.sm.applied_through}"
        )

    # ------------------------------------------------------------------ client port

    def _on_client(self, conn_id: int, body: object) -> None:
        match body:
            case ClientRequest(request_id=rid, command=command):
                self.node.on_client_command(conn_id, rid, command)
            case WatchCreate() as create:
                self.watches.create(conn_id, create, self.node.sm, self._ballot_header())
            case WatchCancel(watch_id=watch_id):
                self.watches.cancel(conn_id, watch_id)
            case QueryRequest(request_id=rid, query=ChangeMember() | Transfer() as query):
                self._admin(conn_id, rid, query)
            case QueryRequest(request_id=rid, query=Snapshot()):
                self._snapshot_asked(conn_id, rid)
            case QueryRequest(request_id=rid, query=query):
                try:
                    answer = self._query(query)
                except (BadCommand, ValueError) as e:
                    answer = BadQuery(str(e))
                self.clients.reply(conn_id, QueryReply(rid, answer))
            case _:
                log.warning("unexpected client frame", conn=conn_id, kind=type(body).__name__)

    def _admin(self, conn_id: int, rid: int, query: ChangeMember | Transfer) -> None:
        """Hand a membership change or leader transfer to the core; the answer comes from
        _turn when the core has decided (or refused) it."""
        if len(self._admin_waiting) >= ADMIN_WAITING_MAX:
            self.clients.reply(conn_id, QueryReply(rid, Busy("too many requests waiting")))
            return
        token = next(self._admin_tokens)
        match query:
            case ChangeMember(kind=kind, node=member, address=address):
                problem = parse_address(address) if address else None
                if isinstance(problem, str):
                    answer = BadQuery(f"bad address {address!r}: {problem}")
                    self.clients.reply(conn_id, QueryReply(rid, answer))
                    return
                change = MembershipChange(ChangeKind(kind), NodeId(member), address)
                self._admin_waiting[token] = (conn_id, rid)
                self.node.replica.step(ChangeMembership(token, change))
            case Transfer(target=target):
                self._admin_waiting[token] = (conn_id, rid)
                to = None if target is None else NodeId(target)
                self.node.replica.step(TransferLeadership(token, to))

    def _snapshot_asked(self, conn_id: int, rid: int) -> None:
        """Begin a snapshot (or join the one in flight) without waiting for it: the answer
        comes from _answer_snapshots, at the turn that hands it to the core. A forked child
        writes it; the loop only stopped for the fork."""
        if len(self._snapshot_waiting) >= ADMIN_WAITING_MAX:
            self.clients.reply(conn_id, QueryReply(rid, Busy("too many snapshots waiting")))
            return
        slot = self.node.begin_snapshot()
        if slot == 0:  # nothing applied: nothing to snapshot
            self.clients.reply(conn_id, QueryReply(rid, SnapshotTaken(self.config.node_id, 0)))
            return
        self._snapshot_waiting.append((conn_id, rid, slot))
        self._answer_snapshots()

    def _answer_snapshots(self) -> None:
        """Answer each `paxosctl snapshot` whose snapshot (or a newer one) is in the core; if
        none is in flight and the core's is older, the child failed (its reason is in the
        log): say so rather than wait for ever."""
        node = self.node
        snap = node.replica.snapshot
        have = 0 if snap is None else snap.slot
        running = node.snapshot_running
        still: list[tuple[int, int, int]] = []
        for conn_id, rid, slot in self._snapshot_waiting:
            answer: AdminAnswer
            if have >= slot:
                answer = SnapshotTaken(self.config.node_id, have)
            elif running is not None:
                still.append((conn_id, rid, slot))
                continue
            else:
                answer = Busy(
                    f"the snapshot at slot {slot} failed (see node {self.config.node_id}'s log)"
                )
            self.clients.reply(conn_id, QueryReply(rid, answer))
        self._snapshot_waiting = still

    def _query(self, query: AdminQuery) -> AdminAnswer:
        """Answer a question about this member. Raises ValueError for arguments that make no
        sense here (the caller answers BadQuery)."""
        node = self.node
        cfg = self.config
        match query:
            case Status():
                return self._status()
            case ReadStale(command=command):
                status, result = node.stale_read(command)
                if status != "ok":
                    return BadQuery(result.decode(errors="replace"))
                r = node.replica
                return StaleRead(
                    cfg.node_id,
                    node.sm.applied_through,
                    result,
                    leader=r.leader_hint,
                    ballot_round=r.promised.round,
                    ballot_node=r.promised.node,
                )
            case Members():
                return self._members()
            case ViewLog(first=first, last=last, limit=limit):
                node.flush_decided()  # the log as decided so far, not as last written
                hi = node.replica.decided_through if last is None else last
                # Clamped both ways: read_log asserts 1 <= limit, and a client must not crash us.
                rows = node.storage.read_log(first, hi, max(1, min(limit, VIEW_LOG_ROWS_MAX)))
                kept = node.recent_results
                return LogPage(
                    node_id=cfg.node_id,
                    rows=[
                        LogRow(
                            row.slot,
                            "decided" if row.kind == "decided" else "accepted",
                            None if row.ballot is None else str(row.ballot),
                            list(row.value),
                        )
                        for row in rows
                    ],
                    results={
                        row.slot: list(kept[row.slot])
                        for row in rows
                        if row.kind == "decided" and row.slot in kept
                    },
                    log_start=node.replica.log_start,
                    decided_index=node.replica.decided_through,
                )
            case SnapshotRead(offset=offset, slot=slot, chunk_bytes=chunk_bytes):
                # paxosctl snapshot save: one chunk of this node's snapshot, for a backup.
                from paxosd.storage.backup import serve_snapshot_read

                args: dict[str, Any] = {"offset": offset, "slot": slot}
                if chunk_bytes is not None:
                    args["chunk_bytes"] = chunk_bytes
                chunk = serve_snapshot_read(
                    node,
                    args,
                    node_id=cfg.node_id,
                    cluster_id=cfg.cluster_id,
                    fresh_entries=cfg.snapshot.snapshot_every_entries,
                )
                return SnapshotChunk(**chunk)
            case Partition(peer=peer, on=on):
                # Drill hook: authenticated by the client key like every request.
                self.peers.set_partitioned(NodeId(peer), on)
                return Partitioned(peer, on)
            case ChangeMember() | Transfer():
                raise AssertionError("admin changes are answered by _admin")
            case Snapshot():
                raise AssertionError("snapshots are answered by _snapshot_asked")

    def _status(self) -> StatusReply:
        node = self.node
        r = node.replica
        acks = r.peer_last_ack_ms if r.is_leader else {}
        recovery: dict[str, Any] = dict(node.recovery)
        data: dict[str, Any] = node.status() | {
            "peers": {
                str(k): PeerLink(s.connected, s.frames_sent, s.frames_received)
                for k, s in self.peers.stats().items()
            },
            "uptime_s": round((now_ms() - self.started_ms) / 1000, 1),
            "recovery": Recovery(**recovery),
            # paxosctl status's "last contact": how long ago the leader last heard each peer.
            "peer_last_ack_ms_ago": {str(p): r.now_ms - t for p, t in acks.items()},
        }
        watch = self.watches.stats()
        data |= {
            "watchers": watch.watchers,
            "watchers_catching_up": watch.catching_up,
            "watchers_canceled_compacted": watch.canceled_compacted,
        }
        space = self._measure()
        data["db_bytes"] = space.db_bytes
        data["disk_free_bytes"] = space.free_bytes
        if self._disk_full is not None:
            # The core is frozen: its role and leader are from before the disk filled.
            data |= {"disk_full": True, "role": "disk-full", "leader": None}
        return StatusReply(**data)

    def _members(self) -> MembersReply:
        stats = self.peers.stats()
        cfg = self.config
        r = self.node.replica
        peer_addresses = self.peers.peers()
        members: list[MemberInfo] = []
        for member in r.membership.members:
            n = NodeId(member.node)
            me = n == cfg.node_id
            dialled = peer_addresses.get(n)
            dialled_text = f"{dialled[0]}:{dialled[1]}" if dialled else None
            told = None if not r.is_leader or me else r.peer_decided(n)
            members.append(
                MemberInfo(
                    node_id=n,
                    role="voter" if member.voter else "learner",
                    peer_address=str(cfg.peer_address) if me else (member.address or dialled_text),
                    client_address=str(cfg.client_address) if me else None,
                    connected=True if me else (n in stats and stats[n].connected),
                    decided_lag=None if told is None else max(0, r.decided_through - told),
                )
            )
        return MembersReply(
            node_id=cfg.node_id,
            leader=r.leader_hint,
            epoch=r.membership.epoch,
            decided_index=r.decided_through,
            members=members,
        )


def _client_reply(reply: Reply, header: tuple[int, int, int, int | None]) -> ClientReply:
    """The node's reply as a frame, with the header (node, ballot round, ballot node,
    leader). A redirect's address travels in its own field, and its leader is the hint the
    core gave with it; an answer names the leader this node knows now."""
    node, ballot_round, ballot_node, leader = header
    if reply.status in ("not_leader", "busy"):
        address = reply.result.decode("utf-8", errors="replace") or None
        return ClientReply(
            reply.request_id,
            reply.status,
            b"",
            reply.leader,
            address,
            node=node,
            ballot_round=ballot_round,
            ballot_node=ballot_node,
        )
    return ClientReply(
        reply.request_id,
        reply.status,
        reply.result,
        reply.leader if reply.leader is not None else leader,
        node=node,
        ballot_round=ballot_round,
        ballot_node=ballot_node,
    )


def run_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="The node's TOML file.")],
    bootstrap: Annotated[
        bool,
        typer.Option(
            help="Create an empty database if the data dir has none. Only for a new member: "
            "a member that lost its data must not vote as if it had promised nothing.",
        ),
    ] = False,
) -> None:
    """Run one paxosd member in the foreground (systemd runs this).

    Exit codes: 0 stopped by a signal, 1 cannot start (data dir, database, ports),
    2 bad config, 74 a write failed with an I/O error (restart on a healthy disk).

    A full disk is not an exit: the member stops voting and answering, waits for
    space, then restarts itself.

    Example: paxosd run --config /etc/paxosd/n1.toml
    """
    try:
        cfg = load_config(config)
    except ConfigError as e:
        fatal(f"paxosd: {e}")
        raise typer.Exit(2) from None
    configure_logging(level=cfg.log.level, fmt=cfg.log.format)
    bind_node(cfg.node_id, cfg.cluster_id)
    if not __debug__:
        fatal("paxosd: refusing python -O: the core's asserts are its safety net")
        raise typer.Exit(2)
    _return_freed_memory_to_the_os()
    try:
        # The data dir first: a second daemon on it must say so, not that its ports are taken.
        lock_fd = lock_data_dir(cfg.data_dir)
    except StorageError as e:
        fatal(f"paxosd: {e}")
        raise typer.Exit(1) from None
    try:
        # Then the peer port, so that the node sends through it from its first Ready (it
        # dials no one until serve() starts it).
        peers = PeerTransport(
            node=cfg.node_id,
            listen=(cfg.peer_address.host, cfg.peer_address.port),
            cluster_key=cfg.peer_key.reveal(),
        )
    except OSError as e:
        fatal(f"paxosd: cannot listen: {e}")
        raise typer.Exit(1) from None
    try:
        node = Node(cfg, bootstrap=bootstrap, network=peers, lock_fd=lock_fd)
    except DiskFull as e:
        peers.close()
        _wait_for_space_at_start(cfg, e)  # re-executes once there is space
        raise typer.Exit(0) from None
    except StorageError as e:
        fatal(f"paxosd: {e}")
        raise typer.Exit(1) from None
    try:
        daemon = Daemon(cfg, node, peers)
    except OSError as e:
        fatal(f"paxosd: cannot listen: {e}")
        raise typer.Exit(1) from None
    if cfg.etcd.listen is not None and importlib.util.find_spec("grpc") is None:
        fatal(
            f"paxosd: {cfg.source}: [etcd] listen is set but grpcio is not installed: "
            "pip install 'paxosd[etcd]'"
        )
        raise typer.Exit(2)
    started = time.perf_counter()
    code = daemon.serve()
    log.info("stopped", seconds=round(time.perf_counter() - started, 1))
    raise typer.Exit(code)


def _wait_for_space_at_start(cfg: Config, error: DiskFull) -> None:
    """Recovery itself found the disk full (a restart onto a disk that is still full): wait
    for space as a running node does (Daemon._wait_for_space), without a client port, then
    re-execute. Returns only on SIGTERM/SIGINT. Not a crash loop under systemd."""
    stop: list[bool] = []
    install_signal_handlers(stop)
    notifier = Notifier()
    space = measure(cfg.data_dir)
    log.error(
        "disk_full",
        data_dir=str(cfg.data_dir),
        free_bytes=space.free_bytes,
        db_bytes=space.db_bytes,
        resume_free_bytes=space.resume_bytes,
        error=error.problem,
        action="free space on the file system of data_dir (or grow it); this node starts "
        "by itself once resume_free_bytes are free",
    )
    status = f"STATUS=disk full at start: {cfg.data_dir}; waiting for space"
    # READY: waiting is this unit's intended state, not a start that hangs; without it
    # systemd would kill the unit after TimeoutStartSec and restart it, a slow crash loop.
    notifier.notify("READY=1", status, f"MAINPID={os.getpid()}")
    while not stop:
        notifier.notify("WATCHDOG=1", status)
        time.sleep(DISK_CHECK_MS / 1000)
        space = measure(cfg.data_dir)
        if space.free_bytes >= space.resume_bytes:
            log.warning("disk_space_back", data_dir=str(cfg.data_dir), free_bytes=space.free_bytes)
            reexec()


class EtcdGateway:
    """With ``[etcd] listen``, etcd's v3 listener runs as ``[etcd] processes`` child
    processes (``paxosd etcd-gateway``) on one port (SO_REUSEPORT): their gRPC threads never
    share this loop's interpreter lock, and they reach the node through the client port like
    any client. They exit when we do (each watches our pid); one that exits first (a crash,
    its port taken) is started again at most once every GATEWAY_RESTART_MS, with a warning.
    A node that stops serving (disk full, storage failed) stops them too, so that etcd
    clients fail over at once."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * cfg.etcd.processes
        self.next_start_ms = [0] * cfg.etcd.processes
        self.restarts = 0

    def _spawn(self, i: int, now: int) -> None:
        env = dict(os.environ, PAXOSD_ETCD_PARENT=str(os.getpid()))
        args = [sys.executable, "-m", "paxosd", "etcd-gateway", "--config", str(self.cfg.source)]
        proc = subprocess.Popen(args, env=env)
        self.procs[i] = proc
        self.next_start_ms[i] = now + GATEWAY_RESTART_MS
        log.info("etcd listener started", address=str(self.cfg.etcd.listen), pid=proc.pid)

    def start(self, now: int) -> None:
        for i in range(len(self.procs)):
            self._spawn(i, now)

    def check(self, now: int) -> None:
        """Start again any that exited (each not more often than GATEWAY_RESTART_MS)."""
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is None or now < self.next_start_ms[i]:
                continue
            log.warning("etcd listener exited; starting it again", code=proc.returncode)
            self.restarts += 1
            self._spawn(i, now)

    def stop(self) -> None:
        """Ask them to stop (they finish in-flight calls meanwhile); ``join`` waits."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()

    def join(self) -> None:
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=GATEWAY_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _return_freed_memory_to_the_os() -> None:
    """Pin glibc's mmap threshold (and cap its arenas). By default freeing one ~20 MB
    snapshot buffer raises the threshold, after which every snapshot's copies stay in the
    heap: measured RSS 300 MB for 150 MB of live objects; 230 MB with this. No-op elsewhere."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 256 << 10)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
