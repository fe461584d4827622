"""The host's side of the core's Ready contract, written once.

The core (paxosd.core) decides; something must carry each ``Ready`` to the disk, the network and
the state machine, in the order of paxosd/core/io.py. That something is this runner, and the
daemon, the simulator and the core test harness all run it, so the host policies the daemon
relies on are the ones the simulator checks:

- which writes wait for a sync: promises, votes, snapshots and compactions are written synced
  before any message that depends on them leaves; decided-only records are held back and
  written unsynced (with the next synced write, at the next tick, or when too many wait),
  because a node relearns decided slots from its peers and its own durable votes;
- when to snapshot: every ``every_entries`` slots or ``every_commands`` commands, but not
  before the log since the last snapshot reaches ``log_percent`` of the state's size, members
  staggered so they do not all stop at once; how is a ``SnapshotMaker``'s business (in
  process here and in the simulator, in a forked child in the daemon:
  paxosd/server/snapshots.py);
- which waiting client is answered, with what, once its slot is applied or its read is
  confirmed, and who is redirected when this node cannot order a command.

It touches the outside world only through the small interfaces below (``Disk``, ``Network``,
``Clock``, ``Machine``), so the simulator can run it over a simulated disk and network. For the
same reason it never imports sqlite3, socket or time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Generic, Protocol, Self, TypeVar

from paxosd.core.io import (
    AdminResult,
    ClientCommand,
    Input,
    Outbound,
    PersistRecord,
    ReadIndex,
    Ready,
    Received,
    SnapshotReceived,
    SnapshotRefused,
    SnapshotTaken,
    Tick,
)
from paxosd.core.messages import Message, SnapshotChunk
from paxosd.core.replica import Replica
from paxosd.core.types import DecidedEntry, NodeId, Snapshot, SnapshotState, Value
from paxosd.server.leases import LeaseKeeper, LeaseSettings
from paxosd.server.replies import Reply
from paxosd.statemachine.commands import (
    LEASE_LEADER_OPS,
    BadCommand,
    Command,
    LeaseGrant,
    Op,
    Result,
    decode_command,
    encode_command,
    encode_result,
    is_read,
)

# Decided entries held back from storage at most this many (flushed every tick anyway).
DEFERRED_DECIDED_MAX = 4096
# Snapshot at least this often in commands, whatever every_entries says in slots: with big
# batches, 10,000 slots of log could hold millions of commands (measured: ~195 bytes each).
SNAPSHOT_EVERY_COMMANDS = 100_000
# Members take snapshots this many phases apart (see SnapshotPolicy).
SNAPSHOT_PHASES = 4
# Requests waiting for their slot to apply; a client that vanished leaves one behind, so bound it.
PENDING_REQUESTS_MAX = 100_000
PENDING_REQUEST_AGE_MS_MAX = 60_000

# ------------------------------------------------------------------------------ interfaces


def _no_mark(phase: str) -> None:
    """The default turn clock: the simulator and the offline tools time nothing."""


class Disk(Protocol):
    """Where records become durable: SQLite in the daemon, SimDisk in the simulator.

    ``sync=True`` returns only once the record, and every unsynced record written before it,
    is durable. ``sync=False`` may return before: a power cut can lose it (never part of it),
    until a later synced write."""

    def write(self, record: PersistRecord, *, sync: bool) -> None: ...


class Network(Protocol):
    """Peer messages out. Best effort, as Paxos allows: a message may be lost."""

    def send_many(self, messages: list[tuple[NodeId, Message]]) -> object: ...


class Clock(Protocol):
    """Monotonic milliseconds: the real clock in the daemon, the simulated one elsewhere."""

    def now_ms(self) -> int: ...


class Machine(Protocol):
    """The replicated state machine the decided log drives (paxosd.statemachine's, or a
    recorder in the core tests)."""

    applied_through: int

    @property
    def store_bytes(self) -> int:
        """The state's size in bytes, as its quota counts it (when to snapshot scales with it)."""
        ...

    def apply(self, slot: int, value: Value) -> list[tuple[str, int, bytes]]: ...

    def query(self, op: Op) -> Result: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes | bytearray | memoryview) -> Self: ...

    def restoring(
        self, data: bytes | bytearray | memoryview | SnapshotState, *, batch: int = ...
    ) -> Generator[None, None, Self]:
        """``restore`` as a generator that yields between pieces of about ``batch`` entries
        of work and returns the new machine; ValueError on a bad snapshot."""
        ...


M = TypeVar("M", bound=Machine)
MM = TypeVar("MM", bound=Machine)
# InlineSnapshots decodes a peer's snapshot this many entries per piece, one piece per tick:
# the simulator's states are a few KiB, and pieces this small make their install span
# several ticks, so the simulator runs the interleavings the daemon's big installs meet.
INLINE_PREPARE_BATCH = 16


class Preparation(Generic[MM]):
    """A peer's snapshot being decoded into a NEW state machine, a few pieces per loop turn
    (the running one is untouched; the swap, once the core installs it, is one assignment).
    ``step`` runs ``pieces`` pieces; a host with a clock overrides ``_more`` to run pieces for
    a time budget instead (paxosd/server/snapshots.py)."""

    def __init__(self, steps: Generator[None, None, MM], pieces: int = 1) -> None:
        assert pieces >= 1
        self._steps = steps
        self.pieces = pieces
        self.steps_taken = 0

    def step(self) -> MM | None:
        """One turn's share: the finished state machine, or None (more turns needed).
        Raises ValueError when the snapshot is bad (then the preparation is over)."""
        self._begin_turn()
        n = 0
        try:
            while True:
                try:
                    next(self._steps)
                except StopIteration as done:
                    sm: MM = done.value
                    return sm
                n += 1
                if not self._more(n):
                    return None
        finally:
            self.steps_taken += 1
            self._end_turn()

    def close(self) -> None:
        """Give up (a newer snapshot arrived): the half-built state machine is dropped."""
        self._steps.close()

    def _begin_turn(self) -> None:
        pass

    def _more(self, pieces_done: int) -> bool:
        return pieces_done < self.pieces

    def _end_turn(self) -> None:
        pass


class SnapshotMaker(Protocol):
    """How snapshots are made, assembled and read back: the runner decides when.

    ``InlineSnapshots`` (below) does it all in this process, synchronously: the simulator and
    the unit tests use it, so their schedules stay deterministic. The daemon uses
    ``paxosd.server.snapshots.ForkSnapshots``: a forked child encodes the copy-on-write state
    to a file while the loop keeps applying (Redis BGSAVE)."""

    def start(self, slot: int, sm: Machine) -> bool:
        """Begin a snapshot of ``sm``, which has applied through ``slot``. False: one is
        still being made (try again at the next due point)."""
        ...

    def poll(self) -> tuple[int, SnapshotState] | None:
        """A snapshot that has been made since the last call, as (slot, state); never
        blocks. A failed attempt is reported by the maker and yields nothing."""
        ...

    def take_now(self, slot: int, sm: Machine) -> SnapshotState:
        """A snapshot through ``slot``, made before returning (an operator asked for it)."""
        ...

    @property
    def running(self) -> int | None:
        """The slot of the snapshot being made now (None: none is), as of the last poll."""
        ...

    def receive(self, chunk: SnapshotChunk) -> SnapshotState | None:
        """Write one chunk of a peer's snapshot (offset 0 starts a new one); the whole state
        once the last chunk is in, else None."""
        ...

    def restore(self, sm: MM, state: SnapshotState) -> MM:
        """The state machine ``state`` encodes (``sm`` only names its type)."""
        ...

    def prepare(self, sm: MM, state: SnapshotState) -> Preparation[MM]:
        """``restore`` in pieces, for a peer's snapshot installed while the loop runs."""
        ...

    def discard(self, state: SnapshotState) -> None:
        """A peer's snapshot that was refused (it does not decode): whatever ``receive``
        kept of it (a file) is not needed by anything, and goes."""
        ...


class InlineSnapshots:
    """Snapshots as bytes in memory, made on the spot: deterministic, for the simulator and
    the tests (a state of a few MB). The daemon forks instead (see SnapshotMaker)."""

    def __init__(self) -> None:
        self._done: tuple[int, SnapshotState] | None = None
        self._rx = bytearray()

    def start(self, slot: int, sm: Machine) -> bool:
        self._done = (slot, sm.snapshot())
        return True

    def poll(self) -> tuple[int, SnapshotState] | None:
        done, self._done = self._done, None
        return done

    def take_now(self, slot: int, sm: Machine) -> SnapshotState:
        return sm.snapshot()

    @property
    def running(self) -> int | None:
        return None  # made on the spot: never in flight

    def receive(self, chunk: SnapshotChunk) -> SnapshotState | None:
        if chunk.offset == 0:
            self._rx = bytearray()
        assert chunk.offset == len(self._rx), "snapshot chunks out of order"
        self._rx += chunk.data
        if len(self._rx) < chunk.total:
            return None
        whole, self._rx = bytes(self._rx), bytearray()
        return whole

    def restore(self, sm: MM, state: SnapshotState) -> MM:
        data = state if isinstance(state, bytes) else state[0 : len(state)]
        return sm.restore(data)

    def prepare(self, sm: MM, state: SnapshotState) -> Preparation[MM]:
        data = state if isinstance(state, bytes) else state[0 : len(state)]
        return Preparation(sm.restoring(data, batch=INLINE_PREPARE_BATCH))

    def discard(self, state: SnapshotState) -> None:
        pass  # bytes in memory: dropped with the last reference


# ------------------------------------------------------------------------------ records


@dataclass(slots=True)
class Waiter:
    """A client request waiting for its slot: who asked (connection and request id) and when."""

    conn_id: int
    request_id: int
    since_ms: int


@dataclass(slots=True)
class PendingRead:
    """A read-index read: served from the state machine once ``index`` (+1) is applied."""

    conn_id: int
    request_id: int
    op: Op
    # The confirmed read index + 1; 0 until the core has confirmed leadership.
    confirmed: int = 0
    # When it arrived (the runner's clock): a keep-alive's lease runs from here.
    receipt_ms: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When to snapshot: every ``every_entries`` slots or ``every_commands`` commands applied,
    whichever comes first (0: never; the core tests take snapshots by hand), once the commands
    applied since the last snapshot add up to ``log_percent`` of the state's size (0: at once).

    A snapshot encodes and writes the whole state, while the log since the last one costs
    memory, disk and replay time in proportion to its own size. With fixed counts alone a
    1 GiB state was rewritten every 100,000 commands of 1 KiB, ~100 MB of log: each member
    spent ~10 s of a core in every ~30 s on snapshots and wrote ~35 MB/s of them, starving the
    loop. Tying the interval to the state's size bounds that work to a fixed fraction of the
    work of applying (Redis's auto-aof-rewrite-percentage, the Raft thesis's "expansion
    factor"); the price is a log of up to that fraction of the state, in memory and on disk.

    Members apply the same commands, so with one threshold they would all stop for a snapshot
    at the same moment (~0.2 s with 100,000 keys: encode, write, fsync) and stall the cluster
    together. Node k therefore starts its counts (k-1)/phases of a period along."""

    every_entries: int
    every_commands: int = SNAPSHOT_EVERY_COMMANDS
    phases: int = SNAPSHOT_PHASES
    log_percent: int = 0


class Hooks:
    """What the host wants to see as the runner goes; each does nothing by default. The daemon
    counts (metrics, view_log's recent results), the simulator checks (safety properties)."""

    def decided(self, entries: tuple[DecidedEntry, ...]) -> None:
        """The core decided these slots (before they are applied; maybe not yet on disk)."""

    def restored(self, slot: int) -> None:
        """The state machine was replaced by a snapshot through ``slot``."""

    def preparing(self, slot: int) -> None:
        """A peer's snapshot through ``slot`` is whole on this node and is being decoded,
        a few pieces per tick, before the core installs it."""

    def refused(self, slot: int, why: str) -> None:
        """A peer's snapshot through ``slot`` could not be used (``why``: one line); nothing
        of it was installed, and the core asks for one again."""

    def applied(self, slot: int, value: Value, results: list[tuple[str, int, bytes]]) -> None:
        """``slot`` was applied, with one result per client command."""

    def committed(self, waiter: Waiter) -> None:
        """``waiter``'s command was applied and its answer queued."""

    def snapshot_started(self, slot: int) -> None:
        """A snapshot through ``slot`` is being made of the state machine as it is now (the
        daemon records the state machine's digest here: it is the snapshot's)."""

    def snapshotted(self, slot: int) -> None:
        """A snapshot through ``slot`` was handed to the core (it writes it with the next
        Ready and compacts the log behind it)."""

    def handled(self, ready: Ready) -> None:
        """One Ready was carried out completely (before ``advance``)."""

    def proposed(self, command: bytes) -> None:
        """The host itself proposed ``command`` (the lease keeper's takeovers, expiries and
        checkpoints, a grant re-encoded with the minimum TTL)."""


def _no_address(node: NodeId | None) -> bytes:
    return b""


# ------------------------------------------------------------------------------ the runner


class Runner(Generic[M]):
    """One replica's host loop: feed it inputs, call ``drain`` (see paxosd/core/io.py for the
    order it keeps), then deliver ``replies`` and ``admin_results`` and clear them.

    ``address_of`` turns a leader hint into what a redirected client is told (the daemon: the
    leader's client address)."""

    def __init__(
        self,
        replica: Replica,
        sm: M,
        *,
        disk: Disk,
        network: Network,
        clock: Clock,
        snapshots: SnapshotPolicy,
        hooks: Hooks | None = None,
        address_of: Callable[[NodeId | None], bytes] = _no_address,
        maker: SnapshotMaker | None = None,
    ) -> None:
        self.replica = replica
        self.sm = sm
        self.disk = disk
        self.network = network
        self.clock = clock
        self.snapshots = snapshots
        self.maker: SnapshotMaker = maker if maker is not None else InlineSnapshots()
        # A peer's snapshot the maker assembled, being decoded a few pieces per tick into a
        # new state machine (see tick); then, decoded, waiting for the core to install it
        # (the next drain), when it replaces ``sm`` at once. The core meanwhile asks for
        # nothing the snapshot covers and installs nothing (SnapshotReceived comes last).
        self._preparing: tuple[Snapshot, Preparation[M]] | None = None
        self._prepared: tuple[Snapshot, M] | None = None
        # The slot of a peer's snapshot whose last chunk the maker could not write.
        self._unassembled: int | None = None
        # State machines replaced by a peer's snapshot, freed a piece per tick (see tick).
        self._retired: list[Generator[None, None, None]] = []
        self.hooks = hooks if hooks is not None else Hooks()
        self.address_of = address_of
        self.pending: OrderedDict[tuple[str, int], Waiter] = OrderedDict()
        self.reads: dict[int, PendingRead] = {}
        self._read_tokens = 0
        # Reads through read-index (no log write) unless the host turns it off.
        self.read_index = True
        # The host's admission check for commands bound for the log (the daemon's quota):
        # a result refuses the command before it is proposed, None lets it through.
        self.admit: Callable[[Command], Result | None] | None = None
        self.replies: list[Reply] = []
        # The host's turn clock: called with a phase's name when it ends (the daemon logs
        # where a slow turn went; see paxosd/server/turns.py). No-op by default.
        self.mark: Callable[[str], None] = _no_mark
        # Outcomes of membership changes and leader transfers, for the host to answer.
        self.admin_results: list[AdminResult] = []
        # Decided-only records not yet written (see _persist); bounded by DEFERRED_DECIDED_MAX.
        self._deferred_decided: list[DecidedEntry] = []
        # Whether the last drain ended with us leading (see _redirect_pending).
        self._leading = False
        self.applied_slots = 0
        phase = ((int(replica.config.node_id) - 1) % snapshots.phases) / snapshots.phases
        last_snapshot = replica.snapshot.slot if replica.snapshot is not None else 0
        self.snapshot_due = last_snapshot - int(snapshots.every_entries * phase)
        # Commands applied since the last snapshot: the log kept in memory and on disk grows
        # with commands, not slots (a slot holds up to batch_commands_max of them).
        self.commands_since_snapshot = int(snapshots.every_commands * phase)
        # Bytes of commands applied since the last snapshot (see SnapshotPolicy). Not staggered:
        # it counts from each member's own last snapshot, which the counts above staggered.
        self.log_bytes_since_snapshot = 0
        # Lease time on this node (paxosd/server/leases.py); a host may swap in another.
        # (None for a machine without leases: the core tests' recorder.)
        self.leases: LeaseKeeper | None = None
        if hasattr(sm, "take_lease_changes"):
            self.leases = LeaseKeeper(
                LeaseSettings(replica.config.election_timeout_ms_max), int(replica.config.node_id)
            )

    # ------------------------------------------------------------------ inputs

    def step(self, event: Input) -> None:
        """One input into the core; its effects wait for ``drain``."""
        self.replica.step(event)

    def on_peer_message(self, src: NodeId, msg: Message) -> None:
        self.replica.step(Received(src, msg))

    def tick(self) -> None:
        """The clock moved: flush held-back decided records, tick the core, forget requests
        whose client has surely gone."""
        self.flush_decided()
        now = self.clock.now_ms()
        self.replica.step(Tick(now))
        self._expire_pending(now)
        if self.leases is not None:
            self.leases.tick(self)
        if self._preparing is not None:
            self.mark("tick")
            self._prepare_step()
            self.mark("snapshot")
        if self._retired:
            self.mark("tick")
            try:
                next(self._retired[0])
            except StopIteration:
                del self._retired[0]
            self.mark("snapshot")

    def _prepare_step(self) -> None:
        """Decode the next pieces of a peer's snapshot; once it is whole and valid, hand it to
        the core (which installs it with the next Ready, see handle), or, if it is bad, tell
        the core to fetch one again. Between pieces this node votes and answers heartbeats."""
        assert self._preparing is not None
        snap, prep = self._preparing
        try:
            sm = prep.step()
        except ValueError as e:
            self._preparing = None
            self.hooks.refused(snap.slot, str(e).splitlines()[0][:200] if str(e) else "bad")
            self.maker.discard(snap.state)
            self.replica.step(SnapshotRefused(snap.slot))
            return
        if sm is None:
            return
        self._preparing = None
        self._prepared = (snap, sm)
        self.replica.step(SnapshotReceived(snap))

    @property
    def preparing(self) -> int | None:
        """The slot of the peer's snapshot being decoded now, if any."""
        return None if self._preparing is None else self._preparing[0].slot

    def on_client_command(
        self, conn_id: int, request_id: int, command: bytes, *, via_log: bool = False
    ) -> Command | None:
        """A client's command; the answer comes in ``replies`` when its slot is applied (or
        its read confirmed). Reads skip the log (read-index) unless ``via_log``. Returns the
        decoded command, or None when it was answered at once (malformed, or too busy)."""
        try:
            cmd = decode_command(command)
        except BadCommand as e:
            self.replies.append(Reply(conn_id, request_id, "bad_request", str(e).encode()))
            return None
        lease_leader_op = isinstance(cmd.op, LEASE_LEADER_OPS)
        if self.leases is not None and (lease_leader_op or isinstance(cmd.op, LeaseGrant)):
            answer = self.leases.request(self, conn_id, cmd.op)
            if answer == "busy":
                self._busy(conn_id, request_id)
                return None
            if answer is not None:
                assert not isinstance(answer, str)
                self.replies.append(Reply(conn_id, request_id, "ok", encode_result(answer)))
                return None
            if isinstance(cmd.op, LeaseGrant):
                cmd = self.leases.grant_command(cmd)
                command = encode_command(cmd)
                self.hooks.proposed(command)
        if lease_leader_op or (self.read_index and not via_log and is_read(cmd.op)):
            # Keep-alives and time-to-live are the leader's, on its clock: never the log.
            # Linearizable without a log write: the core confirms leadership first.
            if len(self.reads) >= PENDING_REQUESTS_MAX:
                self._busy(conn_id, request_id)
                return None
            self._read_tokens += 1
            self.reads[self._read_tokens] = PendingRead(
                conn_id, request_id, cmd.op, receipt_ms=self.clock.now_ms()
            )
            self.replica.step(ReadIndex(self._read_tokens))
            return cmd
        if self.admit is not None:
            refusal = self.admit(cmd)
            if refusal is not None:
                self.replies.append(Reply(conn_id, request_id, "ok", encode_result(refusal)))
                return None
        if len(self.pending) >= PENDING_REQUESTS_MAX:
            self._busy(conn_id, request_id)
            return None
        self.pending[(cmd.client_id, cmd.seq)] = Waiter(conn_id, request_id, self.clock.now_ms())
        self.replica.step(ClientCommand(command))
        return cmd

    def _busy(self, conn_id: int, request_id: int) -> None:
        self.replies.append(Reply(conn_id, request_id, "busy", b"", self.replica.leader_hint))

    # ------------------------------------------------------------------ the Ready loop

    def drain(self) -> None:
        """Carry out every Ready the core has, in the durability order."""
        r = self.replica
        self._collect_snapshot()
        self.mark("snapshot")
        while r.has_ready():
            rd = r.ready()
            self.handle(rd)
            r.advance(rd)
            if self._unassembled is not None:
                slot, self._unassembled = self._unassembled, None
                r.step(SnapshotRefused(slot))
            if self.snapshot_due_now():
                self.start_snapshot()
                self.mark("snapshot")
        # A decoded snapshot the core did not install (the log overtook it) is not needed.
        self._prepared = None
        if self._leading and not r.is_leader:
            self._redirect_pending()
        self._leading = r.is_leader
        if self.leases is not None:
            self.leases.after_drain(self)

    def handle(self, rd: Ready) -> None:
        """One Ready: early messages, persist, messages, apply, reads, admin, redirects."""
        # 0. Accepts and heartbeats go first: the followers' fsyncs overlap with ours.
        mark = self.mark
        if rd.early_messages:
            self.send(rd.early_messages)
            mark("send")
        # 1. Durable next: no promise or vote may leave before it is on disk.
        self.persist(rd.persist)
        if rd.persist.decided:
            self.hooks.decided(rd.persist.decided)
        mark("persist")
        # 2. Then send what speaks for our durable state.
        if rd.messages:
            self.send(rd.messages)
            mark("send")
        # 3. Then apply, in slot order, after restoring a snapshot if the core says so.
        for chunk in rd.snapshot_chunks:
            if chunk.offset == 0 and self._preparing is not None:
                # A newer snapshot is coming (the core starts one only when newer): the one
                # being decoded would be superseded by it, so drop it now.
                self._preparing[1].close()
                self._preparing = None
            state = self.maker.receive(chunk)
            if state is not None:
                snap = Snapshot(chunk.slot, state, chunk.membership)
                self._preparing = (snap, self.maker.prepare(self.sm, state))
                self.hooks.preparing(snap.slot)
            elif chunk.offset + len(chunk.data) >= chunk.total:
                # The last chunk, but the maker could not finish the file (it logged why):
                # the core is told after this Ready, and asks for the snapshot again.
                self._unassembled = chunk.slot
        if rd.restore is not None:
            prepared, self._prepared = self._prepared, None
            if prepared is not None and prepared[0] is rd.restore:
                # Decoded over the last turns: the swap is O(1), and the old state is freed
                # a piece per tick rather than all at once here.
                old, self.sm = self.sm, prepared[1]
                dismantling = getattr(old, "dismantling", None)
                if dismantling is not None:
                    self._retired.append(dismantling())
                del old
            else:  # start-up: the durable snapshot, decoded before this node serves
                self.sm = self.maker.restore(self.sm, rd.restore.state)
            self.hooks.restored(rd.restore.slot)
        if rd.snapshot_chunks or rd.restore is not None:
            mark("snapshot")
        for entry in rd.to_apply:
            self._apply(entry)
        mark("apply")
        # 4. Confirmed reads are answered once the state machine reached their index.
        for rr in rd.reads:
            waiting = self.reads.get(rr.token)
            if waiting is None:
                continue
            if rr.index is None:
                del self.reads[rr.token]
                where = self.address_of(rr.leader)
                self.replies.append(
                    Reply(waiting.conn_id, waiting.request_id, "not_leader", where, rr.leader)
                )
            else:
                waiting.confirmed = rr.index + 1
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
                where = self.address_of(red.leader)
                self.replies.append(Reply(p.conn_id, p.request_id, red.reason, where, red.leader))
        self.hooks.handled(rd)

    def send(self, messages: tuple[Outbound, ...]) -> None:
        self.network.send_many([(out.dst, out.msg) for out in messages])

    def persist(self, record: PersistRecord) -> None:
        """Make ``record`` durable before anything that depends on it leaves.

        Decided-only records need no sync (see PersistRecord.only_decided), nor even a write
        of their own: they wait for the next synced write or tick (flush_decided), which takes
        a disk commit off the path between a leader's last vote and its reply."""
        if record.only_decided():
            if record.decided:
                self._deferred_decided.extend(record.decided)
                if len(self._deferred_decided) >= DEFERRED_DECIDED_MAX:
                    self.flush_decided()
            return
        if self._deferred_decided:
            record = replace(record, decided=(*self._deferred_decided, *record.decided))
            self._deferred_decided = []
        self.write_synced(record)

    def write_synced(self, record: PersistRecord) -> None:
        """A record whose loss could make this acceptor break a promise or a vote."""
        self.disk.write(record, sync=True)

    def flush_decided(self) -> None:
        """Write the decided entries held back by persist (one unsynced write)."""
        if self._deferred_decided:
            record = PersistRecord(decided=tuple(self._deferred_decided))
            self._deferred_decided = []
            self.disk.write(record, sync=False)

    def _apply(self, entry: DecidedEntry) -> None:
        self.commands_since_snapshot += len(entry.value)
        self.log_bytes_since_snapshot += sum(map(len, entry.value))
        results = self.sm.apply(entry.slot, entry.value)
        self.applied_slots += 1
        self.hooks.applied(entry.slot, entry.value, results)
        pending = self.pending
        if not pending:
            return
        for client_id, seq, result in results:
            p = pending.pop((client_id, seq), None)
            if p is not None:
                self.replies.append(Reply(p.conn_id, p.request_id, "ok", result))
                self.hooks.committed(p)

    def _serve_reads(self) -> None:
        applied = self.sm.applied_through
        for token, rd in list(self.reads.items()):
            if rd.confirmed and rd.confirmed - 1 <= applied:
                del self.reads[token]
                op = rd.op
                if isinstance(op, LEASE_LEADER_OPS) and self.leases is not None:
                    answer = self.leases.serve(self, rd.conn_id, rd.request_id, op, rd.receipt_ms)
                    if answer is None:
                        continue  # parked until its lease's checkpoint is cleared
                    if isinstance(answer, str):
                        self._busy(rd.conn_id, rd.request_id)
                        continue
                    result = encode_result(answer)
                else:
                    result = encode_result(self.sm.query(op))
                self.replies.append(Reply(rd.conn_id, rd.request_id, "ok", result))

    def _redirect_pending(self) -> None:
        """We stopped leading: send every waiting client to the new leader now, rather than
        leave it to time out. Their commands may still be decided (the next leader recovers
        what a majority accepted): a retry carries the same (client_id, seq), so the session
        table answers it with the first result instead of applying it twice, and a client
        that gives up reports the outcome unknown, not failed."""
        leader = self.replica.leader_hint
        where = self.address_of(leader)
        for p in self.pending.values():
            self.replies.append(Reply(p.conn_id, p.request_id, "not_leader", where, leader))
        self.pending.clear()

    def _expire_pending(self, now_ms: int) -> None:
        cutoff = now_ms - PENDING_REQUEST_AGE_MS_MAX
        while self.pending:
            key, p = next(iter(self.pending.items()))
            if p.since_ms >= cutoff:
                break
            del self.pending[key]

    # ------------------------------------------------------------------ snapshots

    def snapshot_due_now(self) -> bool:
        s = self.snapshots
        if s.every_entries <= 0:
            return False
        counted = (
            self.replica.applied_through - self.snapshot_due >= s.every_entries
            or self.commands_since_snapshot >= s.every_commands
        )
        return (
            counted and self.log_bytes_since_snapshot * 100 >= s.log_percent * self.sm.store_bytes
        )

    def _counts_restart(self, slot: int) -> None:
        """A snapshot through ``slot`` is begun: the next is counted from here."""
        self.snapshot_due = slot
        self.commands_since_snapshot = 0
        self.log_bytes_since_snapshot = 0

    def start_snapshot(self) -> None:
        """A snapshot is due: have the maker begin one (the next due point retries if it is
        still busy with the last, or the attempt fails) and hand over any that is done."""
        slot = self.sm.applied_through
        if slot == 0:
            return
        self._counts_restart(slot)
        if self.maker.start(slot, self.sm):
            self.hooks.snapshot_started(slot)
        self._collect_snapshot()

    def _collect_snapshot(self) -> None:
        """Give the core a snapshot the maker finished (the core ignores one that is no newer
        than its own, e.g. after a peer's snapshot was installed meanwhile)."""
        done = self.maker.poll()
        if done is not None:
            self.mark("snapshot")
            slot, state = done
            self.replica.step(SnapshotTaken(Snapshot(slot=slot, state=state)))
            self.hooks.snapshotted(slot)
            self.mark("compact")

    def take_snapshot(self) -> int:
        """Snapshot the state machine now, before returning (an operator asked, or a backup
        starts); the core compacts the log behind it. Returns the snapshot's slot (0:
        nothing applied yet, nothing taken)."""
        self._collect_snapshot()
        slot = self.sm.applied_through
        if slot == 0:
            return 0
        self._counts_restart(slot)
        self.hooks.snapshot_started(slot)
        self.replica.step(
            SnapshotTaken(Snapshot(slot=slot, state=self.maker.take_now(slot, self.sm)))
        )
        self.hooks.snapshotted(slot)
        return slot

    def begin_snapshot(self) -> int:
        """Have a snapshot made without waiting for it (an operator asked, or a backup
        starts): the slot of the one in flight if there is one, else of a new one begun at
        the applied index (0: nothing applied yet). Its end reaches the core at a later
        drain, as for the periodic ones; a failed attempt is logged by the maker, and the
        caller, which sees no snapshot at that slot and none in flight, may ask again."""
        self._collect_snapshot()
        running = self.maker.running
        if running is not None:
            return running
        slot = self.sm.applied_through
        if slot == 0:
            return 0
        self._counts_restart(slot)
        if self.maker.start(slot, self.sm):
            self.hooks.snapshot_started(slot)
        self._collect_snapshot()
        return slot
