"""One multi-Paxos participant: acceptor and learner always, proposer while it leads.

The shape is etcd-io/raft's RawNode: ``step(input)`` feeds an event in, ``ready()`` hands out
one batch of effects, ``advance(ready)`` says the caller did them. See ``paxosd.core.io`` for
the caller's contract (persist, then send, then apply).

Protocol summary (Paxos Made Simple, section 3, "Implementing a State Machine"):
- A candidate picks a ballot above every ballot it has seen and runs phase 1 once for every
  slot from its first undecided one. Acceptors answer with every vote (and decision) they hold
  there. With a majority of promises it becomes leader, and re-proposes, for each slot, the
  highest-ballot value reported (a decided value wins outright) and a no-op in every gap.
- The leader then runs phase 2 per slot, several slots in flight, many commands per slot.
- A slot is decided when a majority accepted it at one ballot. The leader says so with
  ``commit_through`` on accepts and heartbeats; a follower that accepted the slot at exactly
  that ballot knows the chosen value, and asks for any other decided slot (catch-up).
- Heartbeats keep followers from campaigning; randomized election timeouts with exponential
  back-off keep two candidates from pre-empting each other forever.

Leader stability (etcd's pre-vote + check-quorum; see ``_on_prevote``):
- A follower whose timer fires first asks a PreVote: "would you promise this ballot?". It
  raises its ballot and campaigns only if a majority says yes. Saying yes binds nothing, so
  the Paxos rules above are untouched; it only decides *whether* to run phase 1.
- An acceptor says no, and ignores a real Prepare too, while it still hears a live leader
  (heard within election_timeout_ms_min). So a follower that restarts, stalls or is cut off
  alone comes back as a follower, not as a usurper. A Prepare marked ``transfer`` (the
  leader itself asked for the election) is answered regardless.
- A leader that has not heard from a majority for election_timeout_ms_max steps down
  (check-quorum), so stickiness cannot keep a cut-off leader in place; its pending
  read-index reads turn into redirects, never answers.

Where things are: the rules (promise, accept, decide, phase 1's value choice) are all in this
module; ``_admit_ballot`` is the acceptor's one gate for every ballot-carrying message, and
``_vote``/``_promise``/``_decide`` the only places that change what an acceptor or learner
holds. The state that exists only in one role is an object made when the role starts and
dropped when it ends: ``LeaderState`` (``core/leader.py``), ``CandidateState`` and
``PreVoteRound`` (``core/election.py``); ``role`` is derived from which one exists. Effects
wait in an ``Outbox`` (``core/outbox.py``) until ``ready()``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import msgspec

from paxosd.core.config import CoreConfig, Rng, value_bytes
from paxosd.core.election import CandidateState, PreVoteRound
from paxosd.core.io import (
    AdminResult,
    Campaign,
    ChangeMembership,
    ClientCommand,
    DurableState,
    Input,
    Outbound,
    PersistRecord,
    ReadIndex,
    ReadReady,
    Ready,
    Received,
    Redirect,
    SnapshotReceived,
    SnapshotRefused,
    SnapshotTaken,
    Tick,
    TransferLeadership,
)
from paxosd.core.leader import LeaderState
from paxosd.core.membership import (
    ChangeKind,
    ChangeRefused,
    MembershipChange,
    apply_change,
    encode_membership,
    is_membership_command,
    membership_of,
)
from paxosd.core.messages import (
    Accept,
    Accepted,
    CatchUpReply,
    CatchUpRequest,
    Heartbeat,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    PromiseEntry,
    SnapshotChunk,
    TimeoutNow,
)
from paxosd.core.outbox import Outbox
from paxosd.core.quorum import has_majority, majority
from paxosd.core.types import (
    NOOP,
    ZERO_BALLOT,
    AcceptedEntry,
    Ballot,
    DecidedEntry,
    Membership,
    NodeId,
    Snapshot,
    Value,
)

# Messages that state this replica's promise or votes: sent only after persist is durable.
_AFTER_PERSIST = (Promise, Accepted, Nack, Prepare)
# Compacted log entries freed per ready() (see Replica._released): ~1 ms of deallocation.
RELEASE_PER_READY = 256


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class Replica:
    """One multi-Paxos participant. Does no I/O; see the module docstring for the protocol."""

    def __init__(
        self, config: CoreConfig, rng: Rng, durable: DurableState | None = None, now_ms: int = 0
    ) -> None:
        self.config = config
        self.id = config.node_id
        # Who takes part, as of decided_through (the log changes it: see core.membership).
        # The history maps each membership to the slot after which it governs, so a snapshot
        # can say which one was in effect at its slot.
        self._bootstrap = Membership.bootstrap(config.members)
        self.membership = self._bootstrap
        self.voters: frozenset[NodeId] = self.membership.voters
        self.peers: tuple[NodeId, ...] = ()
        self._membership_history: list[tuple[int, Membership]] = []
        self._set_membership(self._bootstrap, 0)
        self._rng = rng
        self.now_ms = now_ms

        # Acceptor. Invariant: every accepted ballot <= promised.
        self.promised: Ballot = ZERO_BALLOT
        self.accepted: dict[int, AcceptedEntry] = {}
        # Learner. Invariant: applied_through <= decided_through, and every slot in
        # (log_start - 1, decided_through] is in `decided` (slots below log_start are compacted).
        self.decided: dict[int, Value] = {}
        self.decided_through = 0
        self.applied_through = 0
        self.log_start = 1
        self.snapshot: Snapshot | None = None
        # Compacted log entries not yet freed: freeing a snapshot interval's worth at once
        # (~5,000 slots of batched values, hundreds of thousands of objects) stopped the
        # host's loop for 60-80 ms; ready() frees RELEASE_PER_READY of them at a time.
        self._released: list[object] = []

        self.leader_hint: NodeId | None = None
        self.ballot_seen: Ballot = ZERO_BALLOT
        self.elections_lost = 0
        self.election_deadline_ms = 0
        # The last reset's (deadline, timeout), re-counted at the next tick (see
        # _rearm_election_timer).
        self._rearm: tuple[int, int] | None = None

        # When (our clock) we last heard the leader we follow (a heartbeat or an accept at a
        # ballot we had not refused); None since a restart or since we promised someone else.
        # While it is recent we refuse to help anyone else campaign (see _hears_leader).
        self._leader_heard_ms: int | None = None
        # Pre-vote in progress (still a follower).
        self._prevote: PreVoteRound | None = None

        # Our own ballot while candidate or leader (the last one we ran with, otherwise).
        self.ballot: Ballot = ZERO_BALLOT
        # The role is which of these exists: a candidate has a campaign, a leader its
        # pipeline; a follower neither. Stepping down is dropping them.
        self.candidate: CandidateState | None = None
        self.leader: LeaderState | None = None

        self._catchup_sent_ms = -(10**9)
        # A snapshot being received in chunks: (slot, total bytes, bytes arrived so far). The
        # chunks themselves go to the caller in Ready.snapshot_chunks: the core never holds a
        # peer's state, which can be a GiB. Once every byte arrived it stays here until the
        # caller has decoded it (SnapshotReceived) or given up on it (SnapshotRefused).
        # Invariant: arrived <= total.
        self._snap_rx: tuple[int, int, int] | None = None

        # Output buffers, drained by ready().
        self._out = Outbox()
        self._outstanding: Ready | None = None

        if durable is not None:
            self._recover(durable)
        self._reset_election_timer()

    # ------------------------------------------------------------------ recovery

    def _recover(self, durable: DurableState) -> None:
        """Rebuild from what was durable. The state machine is rebuilt by re-applying: the
        first Ready restores the snapshot and hands out every decided slot after it."""
        self.promised = durable.promised
        self.accepted = dict(durable.accepted)
        self.ballot_seen = self.promised
        self.snapshot = durable.snapshot
        if durable.snapshot is not None:
            self._out.restore = durable.snapshot
            self.applied_through = durable.snapshot.slot
            self.decided_through = durable.snapshot.slot
            self._membership_history = []
            self._set_membership(
                durable.snapshot.membership or self._bootstrap, durable.snapshot.slot
            )
        self.decided = {d.slot: d.value for d in durable.decided.values()}
        if self.decided or durable.snapshot is not None:
            low = min(self.decided, default=self.decided_through + 1)
            self.log_start = min(low, self.decided_through + 1)
        self._advance_decided_through()
        for a in self.accepted.values():
            assert a.ballot <= self.promised, "accepted above promised on disk"

    # ------------------------------------------------------------------ public API

    def step(self, event: Input) -> None:
        """Feed one event in. Never blocks, never does I/O."""
        match event:
            case Tick(now_ms=now):
                assert now >= self.now_ms, "time went backwards"
                self.now_ms = now
                self._rearm_election_timer()
                self._on_tick()
            case Received(src=src, msg=msg):
                self._on_message(src, msg)
            case ClientCommand(command=cmd):
                self._on_client_command(cmd)
            case SnapshotTaken(snapshot=snap):
                self._on_snapshot_taken(snap)
            case SnapshotReceived(snapshot=snap):
                self._on_snapshot_received(snap)
            case SnapshotRefused(slot=slot):
                self._on_snapshot_refused(slot)
            case ReadIndex(token=token):
                self._on_read_index(token)
            case ChangeMembership(token=token, change=change):
                self._on_change_membership(token, change)
            case TransferLeadership(token=token, target=target):
                self._on_transfer(token, target)
            case Campaign(prevote=prevote):
                self._on_campaign(prevote)
        self._check_invariants()

    def _on_campaign(self, prevote: bool) -> None:
        """See ``io.Campaign``. Learners and non-members never campaign; a leader already
        leads."""
        if self.id not in self.voters or self.leader is not None:
            return
        if prevote:
            self._on_election_timeout()
        else:
            self._step_down(None)
            self._start_election(transfer=True)

    def _check_invariants(self) -> None:
        """The learner's and the leader's invariants, after every step (cheap: no scan of
        the log; the acceptor's are asserted where it promises and accepts)."""
        assert self.applied_through <= self.decided_through, "applied beyond decided"
        assert self.log_start <= self.decided_through + 1, "compacted beyond decided"
        assert self.ballot_seen >= self.promised, "promised a ballot never seen"
        assert self.leader is None or self.candidate is None, "leader and candidate at once"
        if self.leader is not None:
            assert self.promised == self.ballot, "a leader promised someone else"
            self.leader.check()

    def has_ready(self) -> bool:
        """Whether ``ready()`` has anything to hand out. A pure query: it changes nothing
        (proposals and read rounds that are due are made by ``ready()`` itself)."""
        if not self._out.empty():
            return True
        ld = self.leader
        return ld is not None and (
            bool(ld.accept_out) or ld.reads.round_needed or self._proposal_due()
        )

    def ready(self) -> Ready:
        """Hand out everything produced since the last Ready. Call advance() before the next.

        Commands queued since the last Ready are proposed here, so that those that arrived in
        one event-loop turn share a slot, and one heartbeat round confirms every read-index
        read registered since the previous round."""
        assert self._outstanding is None, "ready() called twice without advance()"
        if self._released:
            del self._released[-RELEASE_PER_READY:]
        self._flush_proposals()
        self._flush_read_round()
        # Promises, votes and refusals speak for our durable state: they wait for persist.
        messages: list[Outbound] = []
        early: list[Outbound] = []
        for out in self._out.messages:
            (messages if isinstance(out.msg, _AFTER_PERSIST) else early).append(out)
        if self.leader is not None:
            early = self._cap_heartbeats(
                self.leader, early
            )  # before the commit point moves on, below
            early = self._leader_accepts(self.leader) + early
        for dst, (ballot, slots, read_seq) in self._out.accepted_out.items():
            messages.append(
                Outbound(
                    dst,
                    Accepted(
                        ballot=ballot,
                        slots=tuple(slots),
                        read_seq=read_seq,
                        decided_through=self.decided_through,
                    ),
                )
            )
        rd = Ready(
            persist=PersistRecord(
                promised=self._out.promised,
                accepted=tuple(self._out.accepted.values()),
                decided=tuple(self._out.decided),
                snapshot=self._out.snapshot,
                compact_through=self._out.compact_through,
            ),
            early_messages=tuple(early),
            messages=tuple(messages),
            restore=self._out.restore,
            to_apply=tuple(self._out.to_apply),
            redirects=tuple(self._out.redirects),
            reads=tuple(self._out.reads),
            admin=tuple(self._out.admin),
            snapshot_chunks=tuple(self._out.snapshot_chunks),
        )
        self._out = Outbox()
        self._outstanding = rd
        self._check_invariants()  # ready() proposes too
        return rd

    @staticmethod
    def _cap_heartbeats(ld: LeaderState, early: list[Outbound]) -> list[Outbound]:
        """Heartbeats leave before this Ready's persist: they may say no more than the
        commit point whose votes are already durable."""
        safe = min(ld.commit_through, ld.commit_durable)
        return [
            Outbound(o.dst, msgspec.structs.replace(o.msg, commit_through=safe))
            if isinstance(o.msg, Heartbeat) and o.msg.commit_through > safe
            else o
            for o in early
        ]

    def _leader_accepts(self, ld: LeaderState) -> list[Outbound]:
        """This Ready's accepts (they lead: a heartbeat's commit point may cover the values
        they carry). Thrifty ones for followers not asked to vote are held until a tick."""
        safe = min(ld.commit_through, ld.commit_durable)
        voting = self._vote_targets() if ld.accept_out else frozenset()
        flush_quiet, ld.flush_quiet = ld.flush_quiet, False
        cap = self.config.accept_entries_per_message_max
        accepts: list[Outbound] = []
        budget = self.config.message_bytes_max
        for dst, entries in ld.accept_out.items():
            quiet = self.config.thrifty_accepts and dst not in voting and dst not in ld.accept_loud
            if quiet and not flush_quiet:
                held = ld.quiet_held.setdefault(dst, [])
                held.extend(entries)
                size = ld.quiet_held_bytes.get(dst, 0) + sum(value_bytes(e.value) for e in entries)
                if len(held) < cap and size < budget:
                    ld.quiet_held_bytes[dst] = size
                    continue
                entries = held
                del ld.quiet_held[dst]
                ld.quiet_held_bytes.pop(dst, None)
            for chunk in self._message_chunks(entries, cap):
                accepts.append(
                    Outbound(
                        dst,
                        Accept(ballot=self.ballot, entries=chunk, commit_through=safe, quiet=quiet),
                    )
                )
        ld.accept_out = {}
        ld.accept_loud = set()
        ld.commit_durable = ld.commit_through
        return accepts

    def _message_chunks(
        self, entries: list[DecidedEntry], cap: int
    ) -> list[tuple[DecidedEntry, ...]]:
        """Split entries into messages of at most ``cap`` entries and message_bytes_max bytes
        (one entry always fits: CoreConfig checks batch_bytes_max against it)."""
        budget = self.config.message_bytes_max
        chunks: list[tuple[DecidedEntry, ...]] = []
        chunk: list[DecidedEntry] = []
        size = 0
        for e in entries:
            n = value_bytes(e.value)
            if chunk and (len(chunk) >= cap or size + n > budget):
                chunks.append(tuple(chunk))
                chunk, size = [], 0
            chunk.append(e)
            size += n
        if chunk:
            chunks.append(tuple(chunk))
        return chunks

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied ``rd``."""
        assert rd is self._outstanding, "advance() with a Ready that is not the outstanding one"
        self._outstanding = None

    def durable_state(self) -> DurableState:
        """What this replica believes is on disk (for tests and the simulator's checks)."""
        return DurableState(
            promised=self.promised,
            accepted=dict(self.accepted),
            decided={s: DecidedEntry(s, v) for s, v in self.decided.items()},
            snapshot=self.snapshot,
        )

    @property
    def role(self) -> Role:
        if self.leader is not None:
            return Role.LEADER
        return Role.FOLLOWER if self.candidate is None else Role.CANDIDATE

    @property
    def is_leader(self) -> bool:
        return self.leader is not None

    @property
    def _ld(self) -> LeaderState:
        """The leader's state, where only a leader gets (a follower there is a bug)."""
        assert self.leader is not None, "leader-only code ran while not leading"
        return self.leader

    @property
    def _cand(self) -> CandidateState:
        assert self.candidate is not None, "candidate-only code ran while not campaigning"
        return self.candidate

    @property
    def peer_last_ack_ms(self) -> dict[NodeId, int]:
        """When (our clock) each peer last answered this leader: the basis of check-quorum."""
        return {} if self.leader is None else dict(self.leader.last_ack_ms)

    def peer_lag(self) -> dict[NodeId, int]:
        """How many slots each peer's decided log trails ours, as it last told us (leader
        only; peers that have not answered this leader are left out)."""
        if self.leader is None:
            return {}
        return {p: max(0, self.decided_through - d) for p, d in self.leader.peer_decided.items()}

    def peer_decided(self, node: NodeId) -> int | None:
        """How far ``node`` last said it has decided (leader only; None: it has not answered
        this leader yet)."""
        return None if self.leader is None else self.leader.peer_decided.get(node)

    @property
    def pending_commands(self) -> int:
        return 0 if self.leader is None else len(self.leader.queue)

    # ------------------------------------------------------------------ helpers

    def _send(self, dst: NodeId, msg: Message) -> None:
        self._out.messages.append(Outbound(dst, msg))

    def _broadcast(self, msg: Message) -> None:
        for p in self.peers:
            self._out.messages.append(Outbound(p, msg))

    def _set_membership(self, m: Membership, after_slot: int) -> None:
        """``m`` governs every slot after ``after_slot``."""
        m.check()
        self.membership = m
        self.voters = m.voters
        self.peers = tuple(n for n in m.ids if n != self.id)
        self._membership_history.append((after_slot, m))

    def membership_at(self, slot: int) -> Membership:
        """The membership in effect after ``slot`` was applied (for snapshots)."""
        found = self._membership_history[0][1]
        for after, m in self._membership_history:
            if after <= slot:
                found = m
        return found

    def _admin(
        self, token: int, ok: bool, detail: str, slot: int = 0, unknown: bool = False
    ) -> None:
        self._out.admin.append(AdminResult(token, ok, detail, slot, unknown))

    def _promise(self, ballot: Ballot) -> None:
        assert ballot >= self.promised, "promise must never go backwards"
        if ballot != self.promised:
            self.promised = ballot
            self._out.promised = ballot
        self._observe(ballot)

    def _observe(self, ballot: Ballot) -> None:
        if ballot > self.ballot_seen:
            self.ballot_seen = ballot

    def _election_timeout_ms(self) -> int:
        k = min(self.elections_lost, self.config.election_backoff_exponent_max)
        lo = self.config.election_timeout_ms_min
        hi = lo + (self.config.election_timeout_ms_max - lo) * (1 << k)
        return self._rng.randint(lo, hi)

    def _reset_election_timer(self) -> None:
        timeout = self._election_timeout_ms()
        self.election_deadline_ms = self.now_ms + timeout
        self._rearm = (self.election_deadline_ms, timeout)

    def _rearm_election_timer(self) -> None:
        """Count the last reset's timeout from this tick's clock as well.

        Messages carry no time: those handled after this process stalled (a big snapshot
        write, a swap-in, SIGSTOP) reset the timer from the tick before the stall, so the
        tick after it would find the deadline long past and start an election against a
        leader that was heard a moment ago (seen: a follower's 0.4 s snapshot write deposed
        a healthy leader). A deadline set again since, later in the same step, is left alone."""
        if self._rearm is None:
            return
        deadline, timeout = self._rearm
        self._rearm = None
        if self.election_deadline_ms == deadline:
            self.election_deadline_ms = max(deadline, self.now_ms + timeout)

    def _step_down(self, higher: Ballot | None) -> None:
        """Stop leading or campaigning. Queued (never proposed) commands go back to their
        callers as redirects; proposed ones may still be decided by the next leader."""
        if higher is not None:
            self._observe(higher)
            self.leader_hint = NodeId(higher.node) if higher.node != self.id else None
        elif self.leader_hint == self.id:
            # We no longer lead: naming ourselves would send redirected clients straight back.
            self.leader_hint = None
        if self.candidate is not None:
            self.elections_lost += 1
            self.candidate = None
        ld, self.leader = self.leader, None
        if ld is not None:
            self._answer_leader_callers(ld, higher)
        self._reset_election_timer()

    def _answer_leader_callers(self, ld: LeaderState, higher: Ballot | None) -> None:
        """A leadership ended: everyone waiting on it gets an answer now, not a timeout.
        Heartbeats not yet handed out are capped as ready() would have capped them."""
        self._out.messages = self._cap_heartbeats(ld, self._out.messages)
        if ld.config_request is not None:
            self._admin(ld.config_request[0], False, "leadership lost before proposing")
        for slot, token in ld.config_tokens.items():
            self._admin(
                token,
                False,
                f"leadership lost before slot {slot} was decided; the change may still "
                "take effect: check the members",
                slot=slot,
                unknown=True,
            )
        if ld.transfer is not None:
            token, target, _ = ld.transfer
            if higher is not None and higher.node == target:
                self._admin(token, True, f"node {target} took over at ballot {higher}")
            else:
                self._admin(token, False, "leadership lost to another node during transfer")
        for cmd in ld.queue:
            self._out.redirects.append(Redirect(cmd, self.leader_hint))
        for token, _, _ in ld.reads.pending:
            self._out.reads.append(ReadReady(token, None, self.leader_hint))

    # ------------------------------------------------------------------ learner

    def _decide(self, slot: int, value: Value) -> None:
        if slot < self.log_start:
            return  # compacted: decided long ago
        prior = self.decided.get(slot)
        if prior is not None:
            assert prior == value, f"agreement: slot {slot} decided with two values"
            return
        self.decided[slot] = value
        self._out.decided.append(DecidedEntry(slot, value))
        self._advance_decided_through()

    def _advance_decided_through(self) -> None:
        while self.decided_through + 1 in self.decided:
            self.decided_through += 1
            m = membership_of(self.decided[self.decided_through])
            if m is not None:
                self._on_membership_decided(self.decided_through, m)
        self._hand_out_decided()

    def _hand_out_decided(self) -> None:
        """Hand out for apply everything decided and contiguous, and nothing else
        (applied_through <= decided_through, asserted after every step)."""
        while self.applied_through < self.decided_through:
            self.applied_through += 1
            s = self.applied_through
            self._out.to_apply.append(DecidedEntry(s, self.decided[s]))

    def _on_membership_decided(self, slot: int, m: Membership) -> None:
        """``m`` governs from ``slot + 1`` on, at every replica, once it learns ``slot``."""
        self._set_membership(m, slot)
        if self.role is Role.CANDIDATE and self.id not in self.voters:
            self._step_down(None)
        if self.role is not Role.LEADER:
            return
        if slot == self._ld.config_slot:
            self._ld.config_slot = None
        token = self._ld.config_tokens.pop(slot, None)
        if token is not None:
            self._admin(token, True, f"membership epoch {m.epoch} decided at slot {slot}", slot)
        for p in [p for p in self._ld.last_ack_ms if p not in m.ids]:
            self._ld.forget_peer(p)
        # A new voter gets an election timeout's grace before check-quorum counts it as
        # silent. Learners get none: their acks must be real, or a learner that never
        # answered would look live to the promotion check.
        for p in self.peers:
            if p in self.voters:
                self._ld.last_ack_ms.setdefault(p, self.now_ms)
        if self.id not in self.voters:
            # Removed (or demoted): hand over to the most caught-up voter, then stop leading.
            target = self._best_voter()
            if target is not None:
                self._send(target, TimeoutNow(ballot=self.ballot))
            # Queued commands are redirected to the voter we hand over to.
            self.leader_hint = target
            self._step_down(None)

    def _vote_targets(self) -> frozenset[NodeId]:
        """The followers asked to vote: as many as a majority needs besides us, the ones that
        answered last first (a dead one stops answering heartbeats and drops out within one
        interval), plus a leader-transfer target, which must hold every value."""
        others = sorted(
            (p for p in self.voters if p != self.id),
            key=lambda p: (-self._ld.last_ack_ms.get(p, -(10**12)), p),
        )
        wanted = set(others[: max(0, self.membership.quorum - 1)])
        if self._ld.transfer is not None:
            wanted.add(self._ld.transfer[1])
        return frozenset(wanted)

    def _best_voter(self) -> NodeId | None:
        """The other voter most likely to win at once: fresh, and furthest along."""
        window = self.config.election_timeout_ms_max
        fresh = [
            p
            for p in self.voters
            if p != self.id and self.now_ms - self._ld.last_ack_ms.get(p, -(10**12)) < window
        ]
        if not fresh:
            return None
        return max(fresh, key=lambda p: (self._ld.peer_voted_slot.get(p, 0), -p))

    def _commit_from_leader(self, ballot: Ballot, commit_through: int) -> None:
        """Learn every slot up to ``commit_through`` that we accepted at exactly ``ballot``:
        the leader saw a majority accept its one proposal for that slot at that ballot."""
        top = min(commit_through, self.decided_through + self.config.catchup_entries_max)
        for s in range(self.decided_through + 1, top + 1):
            a = self.accepted.get(s)
            if a is not None and a.ballot == ballot and s not in self.decided:
                self._decide(s, a.value)

    def _snapshot_assembled(self) -> bool:
        """Every chunk of a peer's snapshot was handed out and the caller is decoding it."""
        rx = self._snap_rx
        return rx is not None and rx[2] == rx[1]

    def _maybe_catch_up(self, src: NodeId, their_decided_through: int) -> None:
        if their_decided_through <= self.decided_through:
            return
        if self._snapshot_assembled():
            # The snapshot the caller is decoding covers what we would ask for; asking now
            # would only start its transfer over. SnapshotReceived/Refused ends the wait.
            return
        # One request in flight per heartbeat interval bounds the traffic a laggard causes.
        if self.now_ms - self._catchup_sent_ms < 2 * self.config.heartbeat_interval_ms:
            return
        self._catchup_sent_ms = self.now_ms
        lo = self.decided_through + 1
        hi = min(their_decided_through, lo + self.config.catchup_entries_max - 1)
        rx = self._snap_rx
        self._send(
            src,
            CatchUpRequest(
                from_slot=lo,
                to_slot=hi,
                snapshot_slot=0 if rx is None else rx[0],
                snapshot_offset=0 if rx is None else rx[2],
            ),
        )

    # ------------------------------------------------------------------ events

    def _on_tick(self) -> None:
        ld = self.leader
        if ld is not None:
            self._leader_tick(ld)
        elif self.now_ms >= self.election_deadline_ms:
            self._on_election_timeout()
        elif (
            self.candidate is not None
            and self.now_ms - self.candidate.prepare_sent_ms >= self.config.heartbeat_interval_ms
        ):
            self._send_prepares()

    def _leader_tick(self, ld: LeaderState) -> None:
        if ld.quiet_held:
            for dst, held in ld.quiet_held.items():
                ld.accept_out[dst] = held + ld.accept_out.get(dst, [])
            ld.quiet_held = {}
            ld.quiet_held_bytes = {}
            ld.flush_quiet = True
        if self.now_ms - ld.last_heartbeat_ms >= self.config.heartbeat_interval_ms:
            self._heartbeat()
            self._maybe_hand_over()
        if ld.transfer is not None and self.now_ms >= ld.transfer[2]:
            token, target, _ = ld.transfer
            ld.transfer = None
            self._admin(token, False, f"node {target} did not take over in time; still leading")
        self._check_quorum()

    def _on_election_timeout(self) -> None:
        """The election timer fired (or a ``Campaign(prevote=True)`` says it did): a
        candidate runs again at a higher ballot, a follower asks for a pre-vote."""
        if self.candidate is not None:
            self._step_down(None)
            self._start_election()
        elif self.id in self.voters:
            self._start_prevote()
        else:
            self._reset_election_timer()  # learners and non-members never campaign

    def _check_quorum(self) -> None:
        """A leader that has not heard from a majority for an election timeout steps down, so
        clients stuck with a partitioned leader are redirected instead of waiting forever."""
        window = self.config.election_timeout_ms_max
        fresh = {self.id} | {
            p
            for p in self.voters
            if p != self.id and self.now_ms - self._ld.last_ack_ms.get(p, 0) < window
        }
        if not has_majority(self.voters, fresh):
            self._step_down(None)

    def _hears_leader(self) -> bool:
        """Whether a live leader still leads, as far as we can tell: we are it (check-quorum
        bounds how long a cut-off leader believes that), or we heard ours within the shortest
        election timeout. While it holds we refuse pre-votes and plain prepares: a healthy
        leader is never deposed by a node that merely lost touch with it."""
        if self.role is Role.LEADER:
            return True
        heard = self._leader_heard_ms
        return heard is not None and self.now_ms - heard < self.config.election_timeout_ms_min

    def _next_ballot(self) -> Ballot:
        return Ballot(max(self.promised.round, self.ballot_seen.round) + 1, self.id)

    def _start_prevote(self) -> None:
        """Ask the voters whether they would promise our next ballot, without raising any
        ballot (ours included). A majority of yes starts the real election."""
        assert self.role is Role.FOLLOWER, "only a follower asks for a pre-vote"
        ballot = self._next_ballot()
        self._prevote = PreVoteRound(ballot, {self.id})
        self.leader_hint = None
        self._reset_election_timer()
        for p in sorted(self.voters):
            if p != self.id:
                self._send(p, PreVote(ballot=ballot))
        self._maybe_end_prevote()

    def _maybe_end_prevote(self) -> None:
        if self._prevote is not None and has_majority(self.voters, self._prevote.granted):
            assert self.role is Role.FOLLOWER, "a pre-vote outlived its follower"
            self._prevote = None
            self._start_election()

    def _on_prevote(self, src: NodeId, msg: PreVote) -> None:
        """Say whether we would promise ``msg.ballot``: only above our promise, and only if no
        leader we hear still leads. Changes nothing here, and nothing is persisted."""
        if src not in self.voters:
            return
        granted = msg.ballot > self.promised and not self._hears_leader()
        self._send(src, PreVoteReply(ballot=msg.ballot, granted=granted, promised=self.promised))

    def _on_prevote_reply(self, src: NodeId, msg: PreVoteReply) -> None:
        self._observe(msg.promised)  # a refused candidate aims higher next time
        if self._prevote is None or msg.ballot != self._prevote.ballot or not msg.granted:
            return
        self._prevote.granted.add(src)
        self._maybe_end_prevote()

    def _heard_leader(self, src: NodeId) -> None:
        """A leader we do not refuse spoke to us: we follow it, and stop asking to lead."""
        self.leader_hint = src
        self._leader_heard_ms = self.now_ms
        self._prevote = None
        self._reset_election_timer()

    def _start_election(self, transfer: bool = False) -> None:
        assert self.role is Role.FOLLOWER, "a campaign starts from a follower"
        self.ballot = self._next_ballot()
        self.leader_hint = None
        self._leader_heard_ms = None
        self._prevote = None
        self._promise(self.ballot)
        frm = self.decided_through + 1
        self.candidate = CandidateState(
            transfer=transfer,
            prepare_from=frm,
            promises={self.id: self._make_promise(self.ballot, frm, False)},
            prepare_targets=set(self.voters),
        )
        self._reset_election_timer()
        self._send_prepares()
        self._maybe_win()

    def _send_prepares(self) -> None:
        self._cand.prepare_sent_ms = self.now_ms
        for p in sorted(self._cand.prepare_targets):
            if p not in self._cand.promises and p != self.id:
                self._send(p, self._prepare_message())

    def _prepare_message(self) -> Prepare:
        return Prepare(
            ballot=self.ballot, from_slot=self._cand.prepare_from, transfer=self._cand.transfer
        )

    def _make_promise(self, ballot: Ballot, from_slot: int, capped: bool = True) -> Promise:
        """Our votes and decisions from ``from_slot`` on. The promise to ourselves is never
        capped: a leader that could not see its own votes might overwrite a chosen value."""
        entries: list[PromiseEntry] = []
        complete = from_slot >= self.log_start
        top = max(
            max(self.accepted, default=0),
            max(self.decided, default=0),
        )
        start = max(from_slot, self.log_start)
        size = 0
        for s in range(start, top + 1):
            if capped and len(entries) >= self.config.promise_entries_max:
                complete = False
                break
            d = self.decided.get(s)
            a = self.accepted.get(s)
            if d is not None:
                entry = PromiseEntry(s, ZERO_BALLOT, d, True)
            elif a is not None:
                entry = PromiseEntry(s, a.ballot, a.value, False)
            else:
                continue
            size += value_bytes(entry.value)
            if capped and size > self.config.message_bytes_max and entries:
                complete = False  # the rest in a later round, after catching up
                break
            entries.append(entry)
        return Promise(
            ballot=ballot,
            from_slot=from_slot,
            entries=tuple(entries),
            decided_through=self.decided_through,
            complete=complete,
        )

    def _on_message(self, src: NodeId, msg: Message) -> None:
        assert src != self.id, "a message from ourselves"
        match msg:
            case Prepare():
                self._on_prepare(src, msg)
            case PreVote():
                self._on_prevote(src, msg)
            case PreVoteReply():
                self._on_prevote_reply(src, msg)
            case Promise():
                self._on_promise(src, msg)
            case Nack():
                self._on_nack(msg)
            case Accept():
                self._on_accept(src, msg)
            case Accepted():
                self._on_accepted(src, msg)
            case Heartbeat():
                self._on_heartbeat(src, msg)
            case CatchUpRequest():
                self._on_catchup_request(src, msg)
            case CatchUpReply():
                self._on_catchup_reply(src, msg)
            case TimeoutNow():
                self._on_timeout_now(src, msg)

    def _admit_ballot(self, src: NodeId, ballot: Ballot, *, sticky: bool = False) -> bool:
        """The acceptor's gate, one for every message that speaks for a ballot (Prepare,
        Accept, Heartbeat): whether to act on ``ballot`` at all.

        Below our promise: refused with a Nack naming the promise, so the sender aims higher.
        With ``sticky`` (a plain Prepare), a higher ballot is ignored while the leader we
        hear still leads: refusing to promise is always safe (Paxos only constrains what an
        acceptor does once it promised), and silence rather than a Nack, which would name no
        higher ballot; a candidate that a majority stopped hearing gets its promises from
        that majority. An admitted ballot above our own ends our candidacy or leadership."""
        if ballot < self.promised:
            self._send(src, Nack(ballot=ballot, promised=self.promised))
            return False
        if sticky and ballot > self.promised and self._hears_leader():
            return False
        if ballot > self.ballot and self.role is not Role.FOLLOWER:
            self._step_down(ballot)
        return True

    def _on_prepare(self, src: NodeId, msg: Prepare) -> None:
        if src not in self.voters:
            # A removed member (or one whose promotion we have not learned) must not unseat a
            # leader with ever higher ballots. It will learn or be stopped; we lose nothing.
            return
        if not self._admit_ballot(src, msg.ballot, sticky=not msg.transfer):
            return
        if msg.ballot > self.promised:
            self._leader_heard_ms = None  # we follow the candidate now, not the old leader
        self._promise(msg.ballot)
        self.leader_hint = None
        self._prevote = None
        self._reset_election_timer()
        self._send(src, self._make_promise(msg.ballot, msg.from_slot))

    def _on_promise(self, src: NodeId, msg: Promise) -> None:
        if self.role is not Role.CANDIDATE or msg.ballot != self.ballot:
            return  # late answer to an election we are no longer running
        if not msg.complete:
            # The acceptor knows slots we cannot see in one promise (or has compacted them):
            # we are too far behind to lead. Catch up, and let someone else lead meanwhile.
            self._step_down(None)
            self._catchup_sent_ms = -(10**9)
            self._maybe_catch_up(src, msg.decided_through)
            return
        self._cand.promises[src] = msg
        self._maybe_win()

    def _maybe_win(self) -> None:
        """Lead once a majority of every membership that may govern an open slot promised.

        That is the membership we know (as of our decided prefix) and every membership a
        promise reports for a later slot: if one was chosen there, a majority of the earlier
        membership accepted it, so some promise in that majority reports it (or a later one),
        and values chosen under it were accepted by a majority of it, which we then also ask.
        """
        if not has_majority(self.voters, self._cand.promises):
            return
        if self._cand.prepare_from < self.log_start:
            # A snapshot (installed from a peer, or taken after catching up) compacted slots
            # we campaigned for while we were campaigning. They are decided, but our own
            # promise can no longer report them, so leading from there could propose a new
            # value into a chosen slot that only we knew about: lead from log_start instead.
            self._cand.prepare_from = self.log_start
        # Our own state may have grown while campaigning (catch-up): re-read it.
        self._cand.promises[self.id] = self._make_promise(
            self.ballot, self._cand.prepare_from, False
        )
        top = max(
            [self._cand.prepare_from - 1]
            + [e.slot for p in self._cand.promises.values() for e in p.entries]
        )
        chosen = self._phase1_values(self._cand.promises.values())
        required = [self.membership, *self._reported_memberships(chosen)]
        missing = False
        for m in required:
            if not has_majority(m.voters, self._cand.promises):
                missing = True
                fresh = m.voters - self._cand.prepare_targets
                if fresh:
                    self._cand.prepare_targets |= fresh
                    for n in sorted(fresh - {self.id}):
                        self._send(n, self._prepare_message())
        if missing:
            return
        cand, self.candidate = self._cand, None
        self.leader_hint = self.id
        self.elections_lost = 0
        ld = self.leader = LeaderState(
            commit_through=cand.prepare_from - 1,
            next_slot=cand.prepare_from,
            # Nothing at our ballot is durable yet, and nothing below prepare_from will be
            # proposed at it: followers learn no slot from this commit point.
            commit_durable=cand.prepare_from - 1,
            last_ack_ms={p: self.now_ms for p in self.peers if p in self.voters},
        )
        # Re-propose what phase 1 found, no-ops in the gaps; _flush_proposals sends them
        # through the window and stops after a membership slot until it is decided.
        for s in range(cand.prepare_from, top + 1):
            entry = chosen.get(s)
            if s in self.decided:
                ld.backlog[s] = self.decided[s]
            elif entry is not None:
                ld.backlog[s] = entry[1]
        ld.backlog_top = top
        self._flush_proposals()
        self._heartbeat(resend=False)

    def _phase1_values(self, promises: Iterable[Promise]) -> dict[int, tuple[Ballot, Value, bool]]:
        """Phase 1's rule: per slot, a decided value if any promise reports one, otherwise
        the value accepted at the highest ballot. (ballot, value, decided) per slot."""
        chosen: dict[int, tuple[Ballot, Value, bool]] = {}
        for p in promises:
            for e in p.entries:
                cur = chosen.get(e.slot)
                if cur is not None and cur[2]:
                    continue  # a decided value already fixes this slot
                if e.decided or cur is None or e.ballot > cur[0]:
                    chosen[e.slot] = (e.ballot, e.value, e.decided)
        return chosen

    def _reported_memberships(
        self, chosen: dict[int, tuple[Ballot, Value, bool]]
    ) -> list[Membership]:
        """The memberships phase 1 found in open slots, in slot order: a majority of each
        must promise too (slots below prepare_from are decided: ours includes them)."""
        found: list[Membership] = []
        for slot in sorted(s for s in chosen if s >= self._cand.prepare_from):
            m = membership_of(chosen[slot][1])
            if m is not None:
                found.append(m)
        return found

    def _on_nack(self, msg: Nack) -> None:
        self._observe(msg.promised)
        if self.role is not Role.FOLLOWER and msg.ballot == self.ballot:
            self._step_down(msg.promised)

    def _propose(self, slot: int, value: Value) -> None:
        assert self.role is Role.LEADER
        assert slot not in self._ld.proposals, f"slot {slot} proposed twice at one ballot"
        assert self._ld.config_slot is None, "proposal above an undecided membership slot"
        self._ld.proposals[slot] = value
        n = value_bytes(value)
        self._ld.undecided_bytes[slot] = n
        self._ld.undecided_total += n
        self._ld.votes[slot] = set()
        self._ld.slot_voters[slot] = self.voters
        self._ld.proposed_ms[slot] = self.now_ms
        if slot > self.decided_through and membership_of(value) is not None:
            self._ld.config_slot = slot
        entry = DecidedEntry(slot, value)
        for p in self.peers:
            self._ld.accept_out.setdefault(p, []).append(entry)
        self._accept_locally(slot, value)

    def _accept_locally(self, slot: int, value: Value) -> None:
        assert self.promised == self.ballot, "leader accepts only at its own ballot"
        if slot >= self.log_start and slot not in self.decided:
            self._vote(AcceptedEntry(slot, self.ballot, value), durable=True)
        self._count_vote(slot, self.id)

    def _vote(self, a: AcceptedEntry, durable: bool) -> None:
        """Phase 2b: accept ``a``. Only at the ballot promised (the promise is raised first),
        so every accepted ballot stays <= promised; ``durable`` votes are persisted before
        the Accepted that reports them leaves."""
        assert a.ballot == self.promised, "accept at a ballot other than the one promised"
        self.accepted[a.slot] = a
        if durable:
            self._out.accepted[a.slot] = a

    def _count_vote(self, slot: int, voter: NodeId) -> None:
        ld = self._ld
        votes = ld.votes.get(slot)
        if votes is None:
            return
        voters = ld.slot_voters[slot]
        if voter not in voters:
            return  # a learner's vote: it holds the value, but does not count
        votes.add(voter)
        if len(votes) >= self._votes_needed(voters):
            value = ld.proposals[slot]
            ld.undecided_total -= ld.undecided_bytes.pop(slot)
            del ld.votes[slot]
            del ld.slot_voters[slot]
            del ld.proposed_ms[slot]
            self._decide(slot, value)  # may end our leadership (a membership removing us)
            while ld.commit_through + 1 < ld.next_slot and ld.commit_through + 1 not in ld.votes:
                ld.commit_through += 1
                ld.proposals.pop(ld.commit_through, None)

    def _votes_needed(self, voters: frozenset[NodeId]) -> int:
        """A value is chosen once a majority of the voters of its slot accepted it."""
        return majority(len(voters))

    def _proposal_due(self) -> bool:
        """Whether ``_flush_proposals`` would propose now (the same tests, in its order)."""
        ld = self.leader
        if ld is None or ld.config_slot is not None:
            return False
        if ld.next_slot - 1 - ld.commit_through >= self.config.slots_in_flight_max:
            return False
        if ld.next_slot <= ld.backlog_top:
            return True
        if ld.transfer is not None:
            return False
        if ld.config_request is not None:
            return True
        return bool(ld.queue) and ld.undecided_total < self.config.message_bytes_max // 3

    def _flush_proposals(self) -> None:
        """Turn queued commands into proposals while the pipeline has room; commands that
        arrived in one event-loop turn share a slot (batching)."""
        if self.role is not Role.LEADER:
            return
        cfg = self.config
        while (
            self.leader is not None
            and self._ld.config_slot is None
            and self._ld.next_slot - 1 - self._ld.commit_through < cfg.slots_in_flight_max
        ):
            slot = self._ld.next_slot
            if slot <= self._ld.backlog_top:
                self._ld.next_slot += 1
                self._propose(slot, self._ld.backlog.pop(slot, NOOP))
                continue
            if self._ld.transfer is not None:
                return  # handing over: new commands wait, and go to the next leader
            if self._ld.config_request is not None:
                token, m = self._ld.config_request
                self._ld.config_request = None
                self._ld.config_tokens[slot] = token
                self._ld.next_slot += 1
                self._propose(slot, encode_membership(m))
                continue
            if not self._ld.queue:
                return
            if self._ld.undecided_total >= cfg.message_bytes_max // 3:
                # Bounded in bytes too: with a batch on top (at most batch_bytes_max, 2 MiB)
                # what a follower holds undecided still fits one promise.
                return
            batch: list[bytes] = []
            size = 0
            while self._ld.queue and len(batch) < cfg.batch_commands_max:
                nxt = len(self._ld.queue[0])
                if batch and size + nxt > cfg.batch_bytes_max:
                    break
                batch.append(self._ld.queue.popleft())
                size += nxt
            self._ld.next_slot += 1
            self._propose(slot, tuple(batch))

    def _on_accept(self, src: NodeId, msg: Accept) -> None:
        if not self._admit_ballot(src, msg.ballot):
            return
        self._promise(msg.ballot)
        self._heard_leader(src)
        slots: list[int] = []
        for e in msg.entries:
            slots.append(e.slot)
            if e.slot < self.log_start or e.slot in self.decided:
                continue  # decided already; the leader's value is necessarily the same
            # Quiet: held in memory only, to learn the value at the commit point. Not a vote,
            # so nothing is sent and nothing need survive a crash (a Promise may report it:
            # any value proposed at a ballot is safe to re-propose at a higher one).
            self._vote(AcceptedEntry(e.slot, msg.ballot, e.value), durable=not msg.quiet)
        if slots and not msg.quiet:
            prev = self._out.accepted_out.get(src)
            if prev is not None and prev[0] == msg.ballot:
                prev[1].extend(slots)
            else:
                self._out.accepted_out[src] = (msg.ballot, slots, 0)
        self._commit_from_leader(msg.ballot, msg.commit_through)

    def _on_accepted(self, src: NodeId, msg: Accepted) -> None:
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        self._ld.last_ack_ms[src] = self.now_ms
        # Present once the peer answered this leader at all (promotion needs that). The
        # latest answer, not the highest: a learner that restarted with an empty disk must
        # not look caught up; a reordered older answer only makes it look further behind.
        self._ld.peer_decided[src] = msg.decided_through
        for s in msg.slots:
            self._count_vote(s, src)
            if self.leader is None:
                return  # a decided membership removed us; the rest is for the next leader
        if self._ld.reads.ack(src, msg.read_seq):
            self._release_reads()
        if msg.slots:
            top = max(msg.slots)
            if top > self._ld.peer_voted_slot.get(src, 0):
                self._ld.peer_voted_slot[src] = top
        if self._ld.transfer is not None and self._ld.transfer[1] == src:
            self._maybe_hand_over()

    def _heartbeat(self, resend: bool = True) -> None:
        """Tell followers we lead, how far they may commit, and re-send what they miss."""
        self._ld.last_heartbeat_ms = self.now_ms
        self._broadcast(
            Heartbeat(
                ballot=self.ballot,
                commit_through=self._ld.commit_through,
                decided_through=self.decided_through,
                read_seq=self._ld.reads.seq,
            )
        )
        if not resend:
            return
        # Re-send accepts that lack votes a heartbeat after sending: the network may have
        # dropped them. Bounded per peer per heartbeat.
        stale_ms = self.now_ms - self.config.heartbeat_interval_ms
        for s, votes in self._ld.votes.items():
            if self._ld.proposed_ms[s] > stale_ms:
                continue
            self._ld.proposed_ms[s] = self.now_ms
            entry = DecidedEntry(s, self._ld.proposals[s])
            for p in self._ld.slot_voters[s]:
                if p not in votes and p != self.id:
                    out = self._ld.accept_out.setdefault(p, [])
                    self._ld.accept_loud.add(p)
                    if len(out) < self.config.accept_entries_per_message_max:
                        out.append(entry)

    def _on_heartbeat(self, src: NodeId, msg: Heartbeat) -> None:
        if not self._admit_ballot(src, msg.ballot):
            return
        if self.role is Role.LEADER:
            return  # our own ballot echoed cannot happen; equal ballots mean the same node
        self._observe(msg.ballot)
        self.elections_lost = 0
        self._heard_leader(src)
        self._commit_from_leader(msg.ballot, msg.commit_through)
        # An empty Accepted is the heartbeat's ack: it tells the leader a majority still
        # follows it (check-quorum), without voting for anything.
        prev = self._out.accepted_out.get(src)
        if prev is not None and prev[0] == msg.ballot:
            self._out.accepted_out[src] = (prev[0], prev[1], max(prev[2], msg.read_seq))
        else:
            self._out.accepted_out[src] = (msg.ballot, [], msg.read_seq)
        self._maybe_catch_up(src, msg.decided_through)

    def _on_catchup_request(self, src: NodeId, msg: CatchUpRequest) -> None:
        lo, hi = msg.from_slot, min(msg.to_slot, self.decided_through)
        if hi < lo:
            return
        if lo < self.log_start:
            snap = self.snapshot
            assert snap is not None, "compacted log without a snapshot"
            offset = msg.snapshot_offset if msg.snapshot_slot == snap.slot else 0
            offset = min(max(offset, 0), len(snap.state))
            data = snap.state[offset : offset + self.config.snapshot_chunk_bytes]
            chunk = SnapshotChunk(snap.slot, offset, len(snap.state), data, snap.membership)
            self._send(
                src, CatchUpReply(chunk=chunk, entries=(), decided_through=self.decided_through)
            )
            return
        hi = min(hi, lo + self.config.catchup_entries_max - 1)
        entries = self._message_chunks(
            [DecidedEntry(s, self.decided[s]) for s in range(lo, hi + 1)], hi - lo + 1
        )[0]
        self._send(
            src, CatchUpReply(chunk=None, entries=entries, decided_through=self.decided_through)
        )

    def _on_snapshot_chunk(self, src: NodeId, chunk: SnapshotChunk, their_through: int) -> None:
        """Hand a snapshot's chunks to the caller in order (it assembles them, in a file in
        the daemon), and ask for the next chunk at once, so a transfer runs at the speed of
        round trips. The caller steps SnapshotReceived with the whole; the core installs it."""
        rx = self._snap_rx
        if rx is not None and rx[2] == rx[1] and chunk.slot <= rx[0]:
            return  # a late or repeated chunk while the caller decodes this or a newer one
        if chunk.slot <= self.decided_through or chunk.total > self.config.snapshot_bytes_max:
            self._snap_rx = None
            return
        if rx is None or rx[0] != chunk.slot or rx[1] != chunk.total:
            if chunk.offset != 0:
                if rx is None or rx[2] != rx[1]:
                    self._snap_rx = None  # another snapshot: start it over from the beginning
                    self._catchup_sent_ms = -(10**9)
                return
            rx = self._snap_rx = (chunk.slot, chunk.total, 0)
        if chunk.offset != rx[2] or not chunk.data and chunk.total:
            return  # a duplicate or a reordered chunk; the next request names our offset
        data = chunk.data[: chunk.total - rx[2]]
        self._out.snapshot_chunks.append(
            SnapshotChunk(chunk.slot, chunk.offset, chunk.total, data, chunk.membership)
        )
        received = rx[2] + len(data)
        assert received <= chunk.total, "snapshot chunk past its total"
        if received == chunk.total:
            # Whole: the caller writes the last chunk, decodes the state (over many turns if
            # it is big), then steps SnapshotReceived; until then nothing more is asked.
            self._snap_rx = (rx[0], rx[1], received)
            return
        self._snap_rx = (rx[0], rx[1], received)
        self._catchup_sent_ms = -(10**9)
        self._maybe_catch_up(src, their_through)

    def _on_snapshot_received(self, snap: Snapshot) -> None:
        """The caller assembled the chunks it was given: install unless the log overtook it
        meanwhile (then the slots it covers are decided already, and it is not needed)."""
        rx = self._snap_rx
        if rx is not None and rx[0] <= snap.slot:
            self._snap_rx = None
        if snap.slot <= self.decided_through:
            self._catchup_sent_ms = -(10**9)
            return
        self._install_snapshot(snap)
        self._catchup_sent_ms = -(10**9)

    def _on_snapshot_refused(self, slot: int) -> None:
        """The caller could not use the snapshot it assembled: ask again, from offset 0."""
        rx = self._snap_rx
        if rx is not None and rx[0] == slot:
            self._snap_rx = None
            self._catchup_sent_ms = -(10**9)

    def _on_catchup_reply(self, src: NodeId, msg: CatchUpReply) -> None:
        if msg.chunk is not None:
            self._on_snapshot_chunk(src, msg.chunk, msg.decided_through)
            return
        for e in msg.entries:
            self._decide(e.slot, e.value)
        if msg.decided_through > self.decided_through:
            self._catchup_sent_ms = -(10**9)  # more to fetch: ask again at the next heartbeat

    def _install_snapshot(self, snap: Snapshot) -> None:
        """Jump the learner forward to a peer's snapshot: the slots it covers were compacted
        away everywhere we could ask, so applying the snapshot replaces applying them."""
        assert snap.slot > self.decided_through
        self._out.to_apply = [e for e in self._out.to_apply if e.slot > snap.slot]
        self._out.restore = snap
        self.snapshot = snap
        self._out.snapshot = snap
        self._out.compact_through = snap.slot
        self._release_through(snap.slot)
        self._out.decided = [d for d in self._out.decided if d.slot > snap.slot]
        self._out.accepted = {s: a for s, a in self._out.accepted.items() if s > snap.slot}
        self.log_start = snap.slot + 1
        self.decided_through = snap.slot
        self.applied_through = snap.slot
        self._membership_history = []
        self._set_membership(snap.membership or self._bootstrap, snap.slot)
        if self.role is Role.CANDIDATE and self.id not in self.voters:
            self._step_down(None)
        self._advance_decided_through()

    def _on_snapshot_taken(self, snap: Snapshot) -> None:
        assert snap.slot <= self.applied_through, "snapshot of slots not yet applied"
        if self.snapshot is not None and snap.slot <= self.snapshot.slot:
            return
        membership = self.membership_at(snap.slot)
        snap = Snapshot(
            slot=snap.slot,
            state=snap.state,
            membership=membership,
        )
        # Older memberships can no longer be asked about: keep the one in effect at the snapshot.
        hist = self._membership_history
        first = max(i for i, (after, _) in enumerate(hist) if after <= snap.slot or i == 0)
        self._membership_history = hist[first:]
        self.snapshot = snap
        self._out.snapshot = snap
        cut = snap.slot - self.config.log_retain_entries
        if cut >= self.log_start:
            self._out.compact_through = cut
            self._release_through(cut)
            self.log_start = cut + 1

    def _release_through(self, cut: int) -> None:
        """Drop the log entries at or below ``cut``; their values are freed a few at a
        time by ready() (see ``_released``)."""
        released = self._released
        for s in [s for s in self.decided if s <= cut]:
            released.append(self.decided.pop(s))
        for s in [s for s in self.accepted if s <= cut]:
            released.append(self.accepted.pop(s))

    def _on_read_index(self, token: int) -> None:
        """Register a read at the highest slot this leader has proposed: every write that
        completed before the read arrived is at or below it (a previous leader's chosen
        values were re-proposed after phase 1). The read is released once a majority has
        echoed a heartbeat sent after now, proving no higher ballot had taken over."""
        if self.role is not Role.LEADER:
            self._out.reads.append(ReadReady(token, None, self.leader_hint))
            return
        index = max(self._ld.next_slot - 1, self._ld.backlog_top)
        if self.membership.quorum == 1 and self.voters == {self.id}:
            self._out.reads.append(ReadReady(token, index))
            return
        self._ld.reads.register(token, index)

    def _flush_read_round(self) -> None:
        """One heartbeat round confirms every read registered since the previous round."""
        if self.leader is not None and self.leader.reads.start_round():
            self._heartbeat(resend=False)

    def _release_reads(self) -> None:
        for token, index in self._ld.reads.release(self.voters, self.id):
            self._out.reads.append(ReadReady(token, index))

    def _on_client_command(self, cmd: bytes) -> None:
        if is_membership_command(cmd):
            # Membership changes come only as ChangeMembership, checked and one at a time.
            self._out.redirects.append(Redirect(cmd, self.leader_hint, reason="refused"))
            return
        if self.role is not Role.LEADER:
            self._out.redirects.append(Redirect(cmd, self.leader_hint))
            return
        if len(self._ld.queue) >= self.config.pending_commands_max:
            self._out.redirects.append(Redirect(cmd, self.id, reason="busy"))
            return
        self._ld.queue.append(cmd)

    # ------------------------------------------------------------------ operations

    def _on_change_membership(self, token: int, change: MembershipChange) -> None:
        if self.role is not Role.LEADER:
            hint = "no leader known" if self.leader_hint is None else f"node {self.leader_hint}"
            self._admin(token, False, f"not the leader ({hint} is)")
            return
        if self._ld.config_slot is not None or self._ld.config_request is not None:
            self._admin(token, False, "another membership change is in progress; retry after it")
            return
        if self._ld.transfer is not None:
            self._admin(token, False, "a leader transfer is in progress; retry after it")
            return
        try:
            new = apply_change(self.membership, change)
        except ChangeRefused as e:
            self._admin(token, False, str(e))
            return
        if new is None:
            self._admin(token, True, "already in effect", self.decided_through)
            return
        node = change.node
        if change.kind is ChangeKind.PROMOTE:
            heard = self._ld.last_ack_ms.get(node)
            if (
                node not in self._ld.peer_decided
                or heard is None
                or self.now_ms - heard >= self.config.election_timeout_ms_max
            ):
                self._admin(
                    token,
                    False,
                    f"node {node} has not answered this leader lately (is it running and "
                    "reachable?); promote it once it has caught up",
                )
                return
            behind = self.decided_through - self._ld.peer_decided[node]
            if behind > self.config.promote_lag_slots_max:
                self._admin(
                    token,
                    False,
                    f"node {node} is {behind} slots behind (promote when it is within "
                    f"{self.config.promote_lag_slots_max}); it is catching up",
                )
                return
        # Refuse a membership whose voters could not form a majority right now: it would stop
        # the cluster (and the change itself could never be undone without a quorum).
        window = self.config.election_timeout_ms_max
        live = {
            p
            for p in new.voters
            if p == self.id or self.now_ms - self._ld.last_ack_ms.get(p, -(10**12)) < window
        }
        if len(live) < new.quorum:
            down = sorted(new.voters - live)
            self._admin(
                token,
                False,
                f"the new membership would have {len(live)} live voters of "
                f"{len(new.voters)} (quorum {new.quorum}); not answering: {down}",
            )
            return
        self._ld.config_request = (token, new)

    def _on_transfer(self, token: int, target: NodeId | None) -> None:
        if self.role is not Role.LEADER:
            hint = "no leader known" if self.leader_hint is None else f"node {self.leader_hint}"
            self._admin(token, False, f"not the leader ({hint} is)")
            return
        if target == self.id:
            self._admin(token, True, f"node {self.id} already leads")
            return
        if self._ld.transfer is not None:
            self._admin(token, False, "a leader transfer is already in progress")
            return
        if target is None:
            target = self._best_voter()
            if target is None:
                self._admin(token, False, "no other voter is answering")
                return
        elif target not in self.voters:
            self._admin(token, False, f"node {target} is not a voter")
            return
        self._ld.transfer = (token, target, self.now_ms + self.config.election_timeout_ms_max)
        self._maybe_hand_over()

    def _maybe_hand_over(self) -> None:
        """Tell the transfer target to campaign once it holds every value we proposed, so
        its phase 1 finds them all and no acknowledged write waits on a timeout."""
        ld = self.leader
        if ld is None or ld.transfer is None:
            return
        _, target, _ = ld.transfer
        if ld.backlog_top >= ld.next_slot or ld.config_slot is not None:
            return
        if any(target not in votes for votes in ld.votes.values()):
            return
        self._send(target, TimeoutNow(ballot=self.ballot))

    def _on_timeout_now(self, src: NodeId, msg: TimeoutNow) -> None:
        if (
            self.role is Role.FOLLOWER
            and msg.ballot == self.promised
            and msg.ballot.node == src
            and self.id in self.voters
        ):
            self._start_election(transfer=True)
