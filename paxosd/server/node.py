"""One paxosd member's state: recovery from its data dir, then the replica, the state machine
and the runner (paxosd/server/runner.py) that carries each Ready to SQLite, the peers and the
state machine.

The event loop itself (poll, drain frames, tick, answer clients) is in paxosd/server/daemon.py;
a Node does no I/O of its own beyond its storage, so tools and tests can drive it by hand.
Everything runs on the daemon's main thread, so the core needs no locks.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import msgspec
import structlog

from paxosd.core.io import AdminResult, ClientCommand, PersistRecord
from paxosd.core.messages import Message
from paxosd.core.replica import Replica
from paxosd.core.types import NodeId, Value
from paxosd.net.admin import AlarmInfo
from paxosd.server.config import Config
from paxosd.server.diskspace import (
    TEST_DISK_BYTES_ENV,
    TEST_DISK_FAULT_ENV,
    emulated_disk_bytes,
    injected_fault,
)
from paxosd.server.logs import Condition
from paxosd.server.metrics import Metrics
from paxosd.server.replies import Reply
from paxosd.server.runner import (
    Hooks,
    Network,
    Runner,
    SnapshotPolicy,
    Waiter,
)
from paxosd.server.snapshots import ForkSnapshots
from paxosd.statemachine.commands import (
    BadCommand,
    Command,
    Found,
    Get,
    Put,
    Result,
    Written,
    adds_data,
    decode_command,
    encode_result,
    is_read,
)
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.store import DB_FILENAME, Storage, StorageError

log = structlog.get_logger("paxosd.server.node")

# A tick every 10 ms is finer than any core timer (heartbeats are tens of ms).
TICK_MS = 10
# A synced write slower than this holds back every reply and vote behind it: a disk problem
# an operator should see. Warned once; cleared after this long without a slow one.
SLOW_WRITE_S = 0.1
SLOW_WRITE_CLEAR_MS = 60_000
# view_log shows each command's result for recent slots (results are not logged: every
# replica computes the same ones when it applies, so each keeps its own recent few). Bounded
# by slots, by commands (a slot holds up to batch_commands_max of them) and by result bytes
# (a scan or view result can be a 4 MiB page), whichever binds first.
RECENT_RESULTS_SLOTS_MAX = 10_000
RECENT_RESULTS_COMMANDS_MAX = 100_000
RECENT_RESULTS_BYTES_MAX = 8 << 20
# Snapshot digests kept (see Node.snapshot_digests): the newest snapshot's is always among
# them, since only one is made at a time.
SNAPSHOT_DIGESTS_KEPT = 8
# TEST-ONLY fault injection: ``PAXOSD_TEST_PLANT_BUG=ack_before_durable`` makes a leader answer
# a put "ok" as soon as the put is queued, before its slot is decided (so before it is
# durable on a majority), with a guessed version. It exists so that tests can show that
# `paxosctl drill` catches a broken acknowledgement; no production path reads it, and a node
# that has it set says so loudly at start-up.
PLANT_BUG_ENV = "PAXOSD_TEST_PLANT_BUG"
PLANTABLE_BUGS = frozenset({"ack_before_durable"})


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


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


class SystemClock:
    """The runner's clock in the daemon: monotonic milliseconds."""

    def now_ms(self) -> int:
        return now_ms()


class Outbox:
    """A Network that keeps what is sent, for a Node without peers (offline tools, tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[NodeId, Message]] = []

    def send_many(self, messages: list[tuple[NodeId, Message]]) -> int:
        self.sent.extend(messages)
        return len(messages)


class _StorageDisk:
    """SQLite storage as the runner's Disk; synced writes are timed for the metrics and for
    the slow-write warning (node.slow_write)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def write(self, record: PersistRecord, *, sync: bool) -> None:
        storage = self._node.storage
        if self._node.disk_fault_injection:
            fault = injected_fault(storage.path)
            if fault is not None:
                raise fault
        if not sync:
            storage.write(record, sync=False)
            return
        t0 = time.perf_counter()
        storage.write(record, sync=True)
        seconds = time.perf_counter() - t0
        m = self._node.metrics
        if m is not None:
            m.fsync.observe(seconds)
        slow = seconds > SLOW_WRITE_S
        if slow or self._node.slow_write.active:
            self._node.slow_write.update(
                slow, now_ms(), seconds=round(seconds, 3), threshold_s=SLOW_WRITE_S
            )


class _Install:
    """The loop turns of one install of a peer's snapshot, from its last chunk to the swap:
    how many, how long in all, the longest (what the decode in pieces is for)."""

    __slots__ = ("longest_at", "longest_phases", "longest_s", "seconds", "slot", "turns")

    def __init__(self) -> None:
        self.turns = 0
        self.seconds = 0.0
        self.longest_s = 0.0
        self.longest_at = 0  # which turn (1: the first; == turns: the swap's)
        self.longest_phases: dict[str, float] = {}  # where it went (the daemon's turn clock)
        self.slot: int | None = None  # set once installed


class _NodeHooks(Hooks):
    """The daemon's view of the runner: view_log's recent results, metrics, log lines."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def restored(self, slot: int) -> None:
        node = self._node
        node.recent_results.clear()
        node.note_snapshot_digest(slot)
        install = node.install
        if install is None or not node.turns_measured:
            node.install = None
            node.log.info("snapshot restored", slot=slot)
        else:
            install.slot = slot  # logged at the end of this turn, with its time (note_turn)

    def snapshot_started(self, slot: int) -> None:
        self._node.note_snapshot_digest(slot)

    def preparing(self, slot: int) -> None:
        self._node.install = _Install()
        self._node.log.info("snapshot from a peer received, decoding it", slot=slot)

    def refused(self, slot: int, why: str) -> None:
        self._node.install = None
        self._node.log.warning(
            "snapshot from a peer refused; asking for it again", slot=slot, why=why
        )

    def applied(self, slot: int, value: Value, results: list[tuple[str, int, bytes]]) -> None:
        node = self._node
        node.recent_results.add(slot, [r for _, _, r in results])
        if node.metrics is not None and value:
            node.metrics.batch_commands.observe(len(value))

    def committed(self, waiter: Waiter) -> None:
        m = self._node.metrics
        if m is not None:
            m.commit_latency.observe((now_ms() - waiter.since_ms) / 1000)

    def snapshotted(self, slot: int) -> None:
        made = self._node.snapshot_maker.made
        if made is not None and made[0] == slot:
            _, fork_ms, seconds, size = made
            self._node.log.info(
                "snapshot taken",
                slot=slot,
                fork_ms=round(fork_ms, 1),
                seconds=round(seconds, 2),
                bytes=size,
            )
        else:  # made in the loop (take_now) or installed from a peer meanwhile
            self._node.log.info("snapshot taken", slot=slot)


class Node:
    """One paxosd member: recovery, then a runner the daemon's loop drives.

    ``network`` is where peer messages go (the daemon's PeerTransport); without one they are
    kept in an Outbox (offline tools and tests). ``lock_fd``: the data dir's lock, when the
    caller took it first (lock_data_dir); otherwise the node takes it."""

    def __init__(
        self,
        config: Config,
        *,
        bootstrap: bool = False,
        network: Network | None = None,
        lock_fd: int | None = None,
    ) -> None:
        self.config = config
        self.log = log.bind(node=config.node_id)
        self._lock_fd = lock_fd if lock_fd is not None else lock_data_dir(config.data_dir)
        self.metrics: Metrics | None = None
        self.storage = Storage.open(
            config.data_dir / DB_FILENAME,
            cluster_id=config.cluster_id,
            node_id=config.node_id,
            durability=config.durability,
            create=bootstrap,
        )
        # The test-only disk knobs (see paxosd/server/diskspace.py), loud when set.
        self.disk_fault_injection = bool(os.environ.get(TEST_DISK_FAULT_ENV))
        if self.disk_fault_injection:
            self.log.warning(
                "TEST-ONLY DISK FAULT INJECTION ENABLED: storage writes fail while the named "
                "file exists; never run it with real data",
                **{TEST_DISK_FAULT_ENV: os.environ[TEST_DISK_FAULT_ENV]},
            )
        emulated = emulated_disk_bytes()
        if emulated is not None:
            self.log.warning(
                "TEST-ONLY SMALL DISK EMULATED: the database may not grow past the size the "
                "named file gives; never run it with real data",
                bytes_max=self.storage.limit_bytes(emulated),
                **{TEST_DISK_BYTES_ENV: os.environ[TEST_DISK_BYTES_ENV]},
            )
        t0 = time.perf_counter()
        durable = self.storage.load()
        self.recent_results = RecentResults()
        self.slow_write = Condition(
            "fsync_slow", "fsync_fast_again", clear_after_ms=SLOW_WRITE_CLEAR_MS
        )
        self.network: Network = network if network is not None else Outbox()
        # A peer's snapshot being installed, with its loop turns' times (note_turn); the
        # daemon's loop sets turns_measured, else "snapshot restored" is logged at once.
        self.install: _Install | None = None
        self.turns_measured = False
        # The digest of each recent snapshot, by slot: recorded when it is begun (the live
        # state machine is at its slot then, and its digest costs nothing) or restored, so
        # that a backup never restores a snapshot just to learn its digest. After a restart
        # the recovered snapshot's is recorded by its restore.
        self.snapshot_digests: dict[int, str] = {}
        self.snapshot_maker = ForkSnapshots(self.storage.snapshot_dir, self.log)
        self.runner: Runner[StateMachine] = Runner(
            Replica(config.core_config(), random.Random(), durable, now_ms()),
            StateMachine(),
            disk=_StorageDisk(self),
            network=self.network,
            clock=SystemClock(),
            snapshots=SnapshotPolicy(
                config.snapshot.snapshot_every_entries,
                log_percent=config.snapshot.snapshot_log_percent,
            ),
            hooks=_NodeHooks(self),
            address_of=self._client_address_of,
            # Snapshots are written by a forked child, to files beside the database.
            maker=self.snapshot_maker,
        )
        self.runner.admit = self._admit
        # Recovery is the first Ready: it restores the snapshot and re-applies the log.
        self.drain()
        self.replayed = self.runner.applied_slots
        self.recovery = {
            "entries_replayed": self.replayed,
            "seconds": round(time.perf_counter() - t0, 3),
            "applied_index": self.sm.applied_through,
            "snapshot_index": durable.snapshot.slot if durable.snapshot else 0,
            "digest": self.sm.digest(),
        }
        self.log.info("recovered", **self.recovery)
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

    # The runner's state, under the names the daemon and the tools use.

    @property
    def replica(self) -> Replica:
        return self.runner.replica

    @property
    def sm(self) -> StateMachine:
        return self.runner.sm

    @property
    def replies(self) -> list[Reply]:
        return self.runner.replies

    @property
    def admin_results(self) -> list[AdminResult]:
        return self.runner.admin_results

    @property
    def pending(self) -> OrderedDict[tuple[str, int], Waiter]:
        return self.runner.pending

    # ------------------------------------------------------------------ inputs

    def on_peer_message(self, src: NodeId, msg: Any) -> None:
        self.runner.on_peer_message(src, msg)

    def on_tick(self) -> None:
        self.runner.tick()
        # A bounded step, so the references a big compaction dropped are released on an
        # idle node too (each apply also takes a step).
        self.sm.release_compacted()

    def on_client_command(self, conn_id: int, request_id: int, command: bytes) -> None:
        """A client's command for the log. Replies come when its slot is applied."""
        request_max = self.config.limits.max_request_bytes
        if len(command) > request_max:
            reason = (
                f"request is {len(command)} bytes, over max_request_bytes {request_max} "
                "(config [limits]); nothing was proposed"
            )
            self.replies.append(Reply(conn_id, request_id, "bad_request", reason.encode()))
            return
        if self.planted_bug == "ack_before_durable" and self._ack_early(
            conn_id, request_id, command
        ):
            return
        self.runner.on_client_command(conn_id, request_id, command)

    def _ack_early(self, conn_id: int, request_id: int, command: bytes) -> bool:
        """The planted bug (tests only, see PLANT_BUG_ENV): answer a put at once, guessing
        its version from the applied state, and only then hand it to the core. Returns
        whether it answered."""
        try:
            cmd: Command = decode_command(command)
        except BadCommand:
            return False
        if not (self.replica.is_leader and isinstance(cmd.op, Put)):
            return False
        current = self.sm.query(Get(key=cmd.op.key))
        version = current.version + 1 if isinstance(current, Found) else 1
        guess = Written(version=version, revision=self.sm.revision + 1)
        self.replies.append(Reply(conn_id, request_id, "ok", encode_result(guess)))
        self.replica.step(ClientCommand(command))
        return True

    def _admit(self, cmd: Command) -> Result | None:
        """While the NOSPACE alarm is raised (applied here), a command that may add data is
        refused at once with the NoSpace that apply would give it, rather than spend a slot
        on it (etcd's quota check before proposing). Only once the alarm is applied: then
        any earlier slot is applied too, so a retry of a command already in the log finds
        its answer in the session table (let through, below), and a command ordered after
        the alarm is refused by apply alike. Refusing as soon as the store reaches the quota,
        before the alarm is in the log, could tell a retry "nothing changed" about a command
        that an earlier slot still applies."""
        if not adds_data(cmd.op):
            return None
        sm = self.sm
        refusal = sm.nospace()
        if refusal is None:
            return None
        last = sm.last_seq(cmd.client_id)
        if last is not None and cmd.seq <= last:
            return None
        return refusal

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
        """Carry out every Ready the core has (see paxosd/server/runner.py)."""
        self.runner.drain()

    def flush_decided(self) -> None:
        """Write the decided entries the runner holds back (one unsynced transaction)."""
        self.runner.flush_decided()

    def take_snapshot(self) -> int:
        """Snapshot the state machine now, waiting for it (the loop stops meanwhile: offline
        tools only; the daemon uses begin_snapshot). The core compacts the log behind it."""
        return self.runner.take_snapshot()

    def begin_snapshot(self) -> int:
        """Have a snapshot made without waiting for it: the slot of the one in flight, or of
        one begun now (0: nothing applied). See Runner.begin_snapshot."""
        return self.runner.begin_snapshot()

    @property
    def snapshot_running(self) -> int | None:
        """The slot of the snapshot a child is making now, if any."""
        return self.snapshot_maker.running

    def snapshot_digest(self, slot: int) -> str | None:
        """StateMachine.digest() at ``slot``, if a snapshot at ``slot`` was begun or restored
        lately (None: not known here)."""
        return self.snapshot_digests.get(slot)

    def note_snapshot_digest(self, slot: int) -> None:
        """Record the live state machine's digest as the snapshot's at ``slot`` (only if it
        is at that slot: else nothing is known, and a backup has a new snapshot made)."""
        if self.sm.applied_through != slot:
            return
        digests = self.snapshot_digests
        digests[slot] = self.sm.digest()
        while len(digests) > SNAPSHOT_DIGESTS_KEPT:
            del digests[min(digests)]

    def note_turn(self, seconds: float, phases: dict[str, float] | None = None) -> None:
        """The daemon's loop finished a turn of ``seconds`` (from poll's return to the replies
        sent). While a peer's snapshot is installed, the turns are counted; the one that
        swapped it in ends the install with one log line of their figures."""
        install = self.install
        if install is None:
            return
        install.turns += 1
        install.seconds += seconds
        if seconds > install.longest_s:
            install.longest_s = seconds
            install.longest_at = install.turns
            install.longest_phases = dict(phases or {})
        if install.slot is not None:
            self.install = None
            self.log.info(
                "snapshot restored",
                slot=install.slot,
                from_peer=True,
                turns=install.turns,
                seconds=round(install.seconds, 3),
                longest_turn_ms=round(install.longest_s * 1000, 1),
                longest_turn_at=install.longest_at,
                longest_turn_phases_ms={
                    k: round(v * 1000, 1) for k, v in install.longest_phases.items() if v >= 0.001
                },
            )

    def _client_address_of(self, node: NodeId | None) -> bytes:
        """The leader's client address for a redirect, when the config names it."""
        address = None if node is None else self.config.clients.get(node)
        return b"" if address is None else str(address).encode()

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
            "revision": self.sm.revision,
            "compact_revision": self.sm.compact_revision,
            "history_bytes": self.sm.history_bytes,
            "store_bytes": self.sm.store_bytes,
            "quota_bytes": self.config.limits.quota_bytes,
            "alarms": [AlarmInfo(a.member, a.alarm) for a in self.sm.alarms],
        }


def install_signal_handlers(stop: list[bool]) -> None:
    """SIGTERM/SIGINT ask the loop to finish the turn in flight and exit cleanly."""

    def handler(signum: int, frame: object) -> None:
        stop.append(True)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for the process's life: two daemons writing
    one database would each believe their promises are the only ones. Creates the dir."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / "paxosd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(data_dir, "another paxosd process is using this data dir") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is for people only; a full disk must not stop the start (it waits)
    return fd
