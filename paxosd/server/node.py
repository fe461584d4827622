"""The daemon's one event loop: it owns the core replica, the storage and the state machine.

Everything here runs on the main thread, so the core needs no locks. Threads exist only in
the transport, for blocking accepts and handshakes; they hand finished connections over.
Per loop turn: wait for frames or the next tick, step every frame and one Tick into the core,
then for each Ready: write it (one SQLite transaction, fsync) -> send -> apply -> reply.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import structlog

from paxosd.core.io import (
    AdminResult,
    ClientCommand,
    PersistRecord,
    ReadIndex,
    Ready,
    Received,
    SnapshotTaken,
    Tick,
)
from paxosd.core.replica import Replica
from paxosd.core.types import DecidedEntry, NodeId, Snapshot
from paxosd.server.config import Config
from paxosd.server.metrics import Metrics
from paxosd.statemachine.commands import (
    BadCommand,
    Command,
    Found,
    Get,
    Op,
    Put,
    Written,
    decode_command,
    encode_result,
    is_read,
)
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.store import DB_FILENAME, Storage, StorageError

log = structlog.get_logger("paxosd.server.node")

# Decided entries held back from storage at most this many (flushed every tick anyway).
DEFERRED_DECIDED_MAX = 4096
# Snapshot at least this often in commands, whatever snapshot_every_entries says in slots: with
# big batches, 10,000 slots of log could hold millions of commands (measured: ~195 bytes each).
SNAPSHOT_EVERY_COMMANDS = 100_000
# Members take snapshots this many phases apart (see Node.__init__).
SNAPSHOT_PHASES = 4
# A tick every 10 ms is finer than any core timer (heartbeats are tens of ms).
TICK_MS = 10
# Requests waiting for their slot to apply; a client that vanished leaves one behind, so bound it.
PENDING_REQUESTS_MAX = 100_000
PENDING_REQUEST_AGE_MS_MAX = 60_000
# view_log shows each command's result for recent slots (results are not logged: every
# replica computes the same ones when it applies, so each keeps its own recent few). Bounded
# by slots, by commands (a slot holds up to batch_commands_max of them) and by result bytes
# (a result read through the log can be a 4 MiB page), whichever binds first.
RECENT_RESULTS_SLOTS_MAX = 10_000
RECENT_RESULTS_COMMANDS_MAX = 100_000
RECENT_RESULTS_BYTES_MAX = 8 << 20
# TEST-ONLY fault injection: ``PAXOSD_TEST_PLANT_BUG=ack_before_durable`` makes a leader answer
# a put "ok" as soon as the put is queued, before its slot is decided (so before it is
# durable on a majority), with a guessed version. It exists so that tests can show that
# `paxosctl drill` catches a broken acknowledgement; no production path reads it, and a node
# that has it set says so loudly at start-up.
PLANT_BUG_ENV = "PAXOSD_TEST_PLANT_BUG"
PLANTABLE_BUGS = frozenset({"ack_before_durable"})


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(slots=True)
class PendingRequest:
    conn_id: int
    request_id: int
    since_ms: int


_results_encoder = msgspec.msgpack.Encoder()
_results_decoder = msgspec.msgpack.Decoder(list[bytes])


class RecentResults:
    """The encoded results of the last applied slots, for view_log: ``slot -> [result, ...]``.

    Slots are applied in order, so they are kept as one run (its first slot and a deque),
    and each slot's results as one msgpack blob: a put's result is ~10 bytes, and a bytes
    object, a list entry and a dict entry per command cost several times that (10,000
    slots of 16 puts took 10 MB).
    """

    def __init__(
        self,
        slots_max: int = RECENT_RESULTS_SLOTS_MAX,
        commands_max: int = RECENT_RESULTS_COMMANDS_MAX,
        bytes_max: int = RECENT_RESULTS_BYTES_MAX,
    ) -> None:
        assert slots_max >= 1 and commands_max >= 1 and bytes_max >= 1
        self.slots_max = slots_max
        self.commands_max = commands_max
        self.bytes_max = bytes_max
        self._first = 0  # the slot of _blobs[0]
        self._blobs: deque[bytes] = deque()
        self._counts: deque[int] = deque()
        self.commands = 0
        self.bytes = 0

    def add(self, slot: int, results: list[bytes]) -> None:
        """Keep ``slot``'s results, evicting the oldest slots (this one too, if it alone is
        over a bound) until every bound holds. A slot out of sequence starts a new run."""
        if slot != self._first + len(self._blobs):
            self.clear()
            self._first = slot
        blob = _results_encoder.encode(results)
        self._blobs.append(blob)
        self._counts.append(len(results))
        self.commands += len(results)
        self.bytes += len(blob)
        while self._blobs and (
            len(self._blobs) > self.slots_max
            or self.commands > self.commands_max
            or self.bytes > self.bytes_max
        ):
            self.commands -= self._counts.popleft()
            self.bytes -= len(self._blobs.popleft())
            self._first += 1

    def clear(self) -> None:
        self._blobs.clear()
        self._counts.clear()
        self.commands = self.bytes = 0

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, slot: object) -> bool:
        return isinstance(slot, int) and 0 <= slot - self._first < len(self._blobs)

    def __getitem__(self, slot: int) -> list[bytes]:
        if slot not in self:
            raise KeyError(slot)
        return _results_decoder.decode(self._blobs[slot - self._first])


class Node:
    """One paxosd member: recovery, then the loop. Transport is injected (see run())."""

    def __init__(self, config: Config, *, bootstrap: bool = False) -> None:
        self.config = config
        self.log = log.bind(node=config.node_id)
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock_data_dir(config.data_dir)
        self.metrics: Metrics | None = None
        self.storage = Storage.open(
            config.data_dir / DB_FILENAME,
            cluster_id=config.cluster_id,
            node_id=config.node_id,
            durability=config.durability,
            create=bootstrap,
        )
        t0 = time.perf_counter()
        durable = self.storage.load()
        self.replica = Replica(config.core_config(), random.Random(), durable, now_ms())
        self.sm = StateMachine()
        self.pending: OrderedDict[tuple[str, int], PendingRequest] = OrderedDict()
        # Whether the last drain ended with us leading (see _redirect_pending).
        self._leading = False
        # Read-index reads: token -> (conn, request id, op, read index + 1 once confirmed).
        self.reads: dict[int, tuple[int, int, Op, int]] = {}
        self.recent_results = RecentResults()
        self._read_tokens = 0
        self.read_index = True
        # The daemon replaces this with the transport's send_many; until then (recovery) and
        # in tests, messages are kept here.
        self.sent: list[tuple[NodeId, Any]] = []
        self.send: Callable[[list[tuple[NodeId, Any]]], object] = self.sent.extend
        self.replayed = 0
        # Outcomes of membership changes and leader transfers, for the daemon to answer.
        self.admin_results: list[AdminResult] = []
        # Members apply the same commands, so with one threshold they would all stop for a
        # snapshot at the same moment (~0.2 s with 100,000 keys: encode, write, fsync) and
        # stall the cluster together. Node k starts its counts k-1 quarter periods along.
        phase = ((config.node_id - 1) % SNAPSHOT_PHASES) / SNAPSHOT_PHASES
        last_snapshot = durable.snapshot.slot if durable.snapshot else 0
        self.snapshot_due = last_snapshot - int(config.snapshot.snapshot_every_entries * phase)
        # Commands applied since the last snapshot: the log kept in memory and on disk grows
        # with commands, not slots (a slot holds up to batch_commands_max of them).
        self.commands_since_snapshot = int(SNAPSHOT_EVERY_COMMANDS * phase)
        # Decided-only records not yet written (see _handle); bounded by DEFERRED_DECIDED_MAX.
        self._deferred_decided: list[DecidedEntry] = []
        # Recovery is the first Ready: it restores the snapshot and re-applies the log.
        self.drain()
        self.recovery = {
            "entries_replayed": self.replayed,
            "seconds": round(time.perf_counter() - t0, 3),
            "applied_index": self.sm.applied_through,
            "snapshot_index": durable.snapshot.slot if durable.snapshot else 0,
            "digest": self.sm.digest(),
        }
        self.log.info("recovered", **self.recovery)
        self.replies: list[tuple[int, int, str, bytes, int | None]] = []
        self.planted_bug = os.environ.get(PLANT_BUG_ENV, "")
        if self.planted_bug:
            if self.planted_bug not in PLANTABLE_BUGS:
                self.log.error("unknown planted bug ignored", **{PLANT_BUG_ENV: self.planted_bug})
                self.planted_bug = ""
            else:
                self.log.warning(
                    "TEST-ONLY PLANTED BUG ENABLED: this node acknowledges writes that are not "
                    "durable; never run it with real data",
                    **{PLANT_BUG_ENV: self.planted_bug},
                )

    # ------------------------------------------------------------------ inputs

    def on_peer_message(self, src: NodeId, msg: Any) -> None:
        self.replica.step(Received(src, msg))

    def on_tick(self) -> None:
        self.flush_decided()
        self.replica.step(Tick(now_ms()))
        self._expire_pending()

    def on_client_command(self, conn_id: int, request_id: int, command: bytes) -> None:
        """A client's command for the log. Replies come when its slot is applied."""
        try:
            cmd = decode_command(command)
        except BadCommand as e:
            self.replies.append((conn_id, request_id, "bad_request", str(e).encode(), None))
            return
        if is_read(cmd.op) and self.read_index:
            # Linearizable without a log write: the core confirms leadership first.
            if len(self.reads) >= PENDING_REQUESTS_MAX:
                self.replies.append((conn_id, request_id, "busy", b"", self.replica.leader_hint))
                return
            self._read_tokens += 1
            self.reads[self._read_tokens] = (conn_id, request_id, cmd.op, 0)
            self.replica.step(ReadIndex(self._read_tokens))
            return
        key = (cmd.client_id, cmd.seq)
        if len(self.pending) >= PENDING_REQUESTS_MAX:
            self.replies.append((conn_id, request_id, "busy", b"", self.replica.leader_hint))
            return
        if self.planted_bug == "ack_before_durable" and self._ack_early(conn_id, request_id, cmd):
            self.replica.step(ClientCommand(command))
            return
        self.pending[key] = PendingRequest(conn_id, request_id, now_ms())
        self.replica.step(ClientCommand(command))

    def _ack_early(self, conn_id: int, request_id: int, cmd: Command) -> bool:
        """The planted bug (tests only, see PLANT_BUG_ENV): answer a put at once, guessing
        its version from the applied state. Returns whether it answered."""
        if not (self.replica.is_leader and isinstance(cmd.op, Put)):
            return False
        current = self.sm.query(Get(key=cmd.op.key))
        version = current.version + 1 if isinstance(current, Found) else 1
        self.replies.append((conn_id, request_id, "ok", encode_result(Written(version)), None))
        return True

    def stale_read(self, command: bytes) -> tuple[str, bytes]:
        """A read of this replica's applied state, without the log: fast, maybe stale."""
        try:
            cmd: Command = decode_command(command)
        except BadCommand as e:
            return "bad_request", str(e).encode()
        if not is_read(cmd.op):
            return "bad_request", b"only reads may be stale"
        return "ok", encode_result(self.sm.query(cmd.op))

    # ------------------------------------------------------------------ the Ready loop

    def drain(self) -> None:
        """Handle every Ready the core has, in the durability order."""
        r = self.replica
        while r.has_ready():
            rd = r.ready()
            self._handle(rd)
            r.advance(rd)
            applied = r.applied_through
            if (
                applied - self.snapshot_due >= self.config.snapshot.snapshot_every_entries
                or self.commands_since_snapshot >= SNAPSHOT_EVERY_COMMANDS
            ):
                self.take_snapshot()
        if self._leading and not r.is_leader:
            self._redirect_pending()
        self._leading = r.is_leader

    def _redirect_pending(self) -> None:
        """We stopped leading: send every waiting client to the new leader now, rather than
        leave it to time out (1.5 s per attempt). Their commands may still be decided (the
        next leader recovers what a majority accepted): a retry carries the same (client_id,
        seq), so the session table answers it with the first result instead of applying it
        twice, and a client that gives up reports the outcome unknown, not failed."""
        leader = self.replica.leader_hint
        where = self._client_address_of(leader)
        for p in self.pending.values():
            self.replies.append((p.conn_id, p.request_id, "not_leader", where, leader))
        self.pending.clear()

    def _handle(self, rd: Ready) -> None:
        # 0. Accepts and heartbeats go first: the followers' fsyncs overlap with ours.
        if rd.early_messages:
            self.send([(out.dst, out.msg) for out in rd.early_messages])
        # 1. Durable next: no promise or vote may leave before it is on disk. Decided-only
        #    records need no fsync (see PersistRecord.only_decided), nor even a transaction of
        #    their own: they wait for the next synced write or tick (flush_decided), which
        #    takes a SQLite commit off the path between a leader's last vote and its reply.
        m = self.metrics
        persist = rd.persist
        if persist.only_decided():
            if persist.decided:
                self._deferred_decided.extend(persist.decided)
                if len(self._deferred_decided) >= DEFERRED_DECIDED_MAX:
                    self.flush_decided()
        else:
            if self._deferred_decided:
                persist = replace(persist, decided=(*self._deferred_decided, *persist.decided))
                self._deferred_decided = []
            if m is not None:
                t0 = time.perf_counter()
                self.storage.write(persist)
                m.fsync.observe(time.perf_counter() - t0)
            else:
                self.storage.write(persist)
        # 2. Then send what speaks for our durable state.
        if rd.messages:
            self.send([(out.dst, out.msg) for out in rd.messages])
        # 3. Then apply, in slot order, after restoring a snapshot if the core says so.
        if rd.restore is not None:
            self.sm = StateMachine.restore(rd.restore.state)
            self.recent_results.clear()
            self.log.info("snapshot restored", slot=rd.restore.slot)
        for entry in rd.to_apply:
            self.commands_since_snapshot += len(entry.value)
            results = self.sm.apply(entry.slot, entry.value)
            self.replayed += 1
            self.recent_results.add(entry.slot, [r for _, _, r in results])
            if m is not None and entry.value:
                m.batch_commands.observe(len(entry.value))
            for client_id, seq, result in results:
                p = self.pending.pop((client_id, seq), None)
                if p is not None:
                    self.replies.append((p.conn_id, p.request_id, "ok", result, None))
                    if m is not None:
                        m.commit_latency.observe((now_ms() - p.since_ms) / 1000)
        # 4. Confirmed reads are answered once the state machine reached their index.
        for rr in rd.reads:
            waiting = self.reads.get(rr.token)
            if waiting is None:
                continue
            conn_id, request_id, op, _ = waiting
            if rr.index is None:
                del self.reads[rr.token]
                where = self._client_address_of(rr.leader)
                self.replies.append((conn_id, request_id, "not_leader", where, rr.leader))
            else:
                self.reads[rr.token] = (conn_id, request_id, op, rr.index + 1)
        if self.reads:
            self._serve_reads()
        self.admin_results.extend(rd.admin)
        # 5. Commands this replica cannot order go back with a hint.
        for red in rd.redirects:
            try:
                cmd = decode_command(red.command)
            except BadCommand:
                continue
            p = self.pending.pop((cmd.client_id, cmd.seq), None)
            if p is not None:
                where = self._client_address_of(red.leader)
                self.replies.append((p.conn_id, p.request_id, red.reason, where, red.leader))

    def flush_decided(self) -> None:
        """Write the decided entries held back by _handle (one unsynced transaction)."""
        if self._deferred_decided:
            self.storage.write(PersistRecord(decided=tuple(self._deferred_decided)), sync=False)
            self._deferred_decided = []

    def _client_address_of(self, node: NodeId | None) -> bytes:
        """The leader's client address for a redirect, when the config names it."""
        address = None if node is None else self.config.clients.get(node)
        return b"" if address is None else str(address).encode()

    def _serve_reads(self) -> None:
        applied = self.sm.applied_through
        for token, (conn_id, request_id, op, confirmed) in list(self.reads.items()):
            if confirmed and confirmed - 1 <= applied:
                del self.reads[token]
                result = encode_result(self.sm.query(op))
                self.replies.append((conn_id, request_id, "ok", result, None))

    def take_snapshot(self) -> int:
        """Snapshot the state machine now; the core compacts the log behind it."""
        slot = self.sm.applied_through
        if slot == 0:
            return 0
        self.snapshot_due = slot
        self.commands_since_snapshot = 0
        self.replica.step(SnapshotTaken(Snapshot(slot=slot, state=self.sm.snapshot())))
        self.log.info("snapshot taken", slot=slot)
        return slot

    def _expire_pending(self) -> None:
        cutoff = now_ms() - PENDING_REQUEST_AGE_MS_MAX
        while self.pending:
            key, p = next(iter(self.pending.items()))
            if p.since_ms >= cutoff:
                break
            del self.pending[key]

    # ------------------------------------------------------------------ introspection

    def status(self) -> dict[str, Any]:
        r = self.replica
        return {
            "node_id": self.config.node_id,
            "cluster_id": self.config.cluster_id,
            "role": r.role.value,
            "leader": r.leader_hint,
            "ballot": str(r.ballot if r.is_leader else r.promised),
            "promised": str(r.promised),
            "decided_index": r.decided_through,
            "applied_index": self.sm.applied_through,
            "snapshot_index": r.snapshot.slot if r.snapshot else 0,
            "log_start": r.log_start,
            "accepted_not_decided": sorted(s for s in r.accepted if s > r.decided_through)[:100],
            "digest": self.sm.digest(),
            "pending_requests": len(self.pending),
            "voters": sorted(r.voters),
            "learners": sorted(r.membership.learners),
            "membership_epoch": r.membership.epoch,
            "peer_lag": {str(p): lag for p, lag in r.peer_lag().items()} if r.is_leader else {},
        }


def install_signal_handlers(stop: list[bool]) -> None:
    """SIGTERM/SIGINT ask the loop to finish the turn in flight and exit cleanly."""

    def handler(signum: int, frame: object) -> None:
        stop.append(True)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for the process's life: two daemons writing
    one database would each believe their promises are the only ones."""
    path = data_dir / "paxosd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(data_dir, "another paxosd process is using this data dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
