"""The replicated state machine: a versioned key-value map, the sites' block relation and
timeline, and the exactly-once session table.

Every replica applies the same decided slots in the same order, so ``apply`` must be a pure
function of (state, slot, value): no clock, no randomness, no dependence on set or dict
iteration order in anything it returns or keeps. Every bound below evicts or refuses in a way
that depends only on the applied log, so all replicas evict and refuse identically.

Reads are linearizable by read-index: the leader confirms it still leads with one heartbeat
round, then answers from this state once it has applied that far (``query``); reads are not
written to the log. A read that does reach the log (the simulator sends some that way, to
check both paths) is applied like a write and changes nothing but session bookkeeping.
"""

import bisect
import hashlib
import sys
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final, Self

import msgspec

from paxosd.core.membership import is_membership_command
from paxosd.statemachine.commands import (
    CLIENT_ID_BYTES_MAX,
    KEY_BYTES_MAX,
    SEQ_MAX,
    SITE_BYTES_MAX,
    VALUE_BYTES_MAX,
    VERSION_MAX,
    BadCommand,
    Block,
    BlockList,
    BlockPair,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Command,
    Delete,
    Deleted,
    Found,
    Full,
    Get,
    Malformed,
    NotFound,
    Op,
    Post,
    Put,
    Result,
    Row,
    Rows,
    Scan,
    Stale,
    Timeline,
    Unblock,
    View,
    Written,
    decode_command,
    decode_result,
    encode_result,
    is_read,
)

SNAPSHOT_FORMAT: Final = 1
SNAPSHOT_BYTES_MAX: Final = 1 << 30  # checked before decoding a snapshot from disk or a peer
# Bytes charged per stored entry on top of its payload, so that many tiny entries cannot
# slip past the byte budgets (and so the budgets also bound the snapshot's encoded size).
ENTRY_OVERHEAD_BYTES: Final = 64
# Result shaping: a scan or view page stops at this many payload bytes, well under
# commands.RESULT_BYTES_MAX even with per-row overhead.
PAGE_BYTES_MAX: Final = 4 << 20
# A hard ceiling on the sum of the byte budgets, so a valid state always snapshots under
# SNAPSHOT_BYTES_MAX.
_BUDGET_BYTES_MAX: Final = SNAPSHOT_BYTES_MAX - (64 << 20)
_ONE_ENTRY_BYTES_MAX: Final = 1 << 20
_BLOCKS_MAX_MAX: Final = 20_000  # keeps a full BlockList under RESULT_BYTES_MAX
_CHECKSUM_BYTES: Final = 32
_CHAIN_SEED: Final = hashlib.sha256(b"paxosd.statemachine.machine/v1").digest()


class BadSnapshot(ValueError):
    """Snapshot bytes that are not a valid state. The only exception ``restore`` raises on
    bad input."""


class Limits(msgspec.Struct, frozen=True, array_like=True):
    """The state machine's bounds. They shape results and evictions, so replicas must agree:
    they travel inside every snapshot and a restored replica keeps the snapshot's limits."""

    sessions_max: int = 10_000
    sessions_bytes_max: int = 64 << 20
    timeline_max: int = 100_000
    timeline_bytes_max: int = 64 << 20
    kv_bytes_max: int = 512 << 20
    blocks_max: int = 10_000

    def check(self) -> None:
        """Raise ValueError unless every limit is positive and their sum fits a snapshot."""
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name}={value!r} must be a positive integer")
        budget = self.sessions_bytes_max + self.timeline_bytes_max + self.kv_bytes_max
        if budget > _BUDGET_BYTES_MAX:
            raise ValueError(f"byte budgets sum to {budget}, over {_BUDGET_BYTES_MAX}")
        if self.blocks_max > _BLOCKS_MAX_MAX:
            raise ValueError(f"blocks_max {self.blocks_max} is over {_BLOCKS_MAX_MAX}")
        # One session (a cached cas mismatch carries a whole value) and one post must always
        # fit, or eviction would throw away the entry it just made room for.
        for name in ("sessions_bytes_max", "timeline_bytes_max"):
            if getattr(self, name) < _ONE_ENTRY_BYTES_MAX:
                raise ValueError(f"limit {name} must be at least {_ONE_ENTRY_BYTES_MAX}")


@dataclass(slots=True)
class _Session:
    last_seq: int
    # The encoded answer to last_seq, or None when last_seq was a read: a read's answer can
    # be large, and running a retried read again is still linearizable (it runs inside the
    # retried operation's interval), so only write answers are kept.
    result: bytes | None


class _KvEntry(msgspec.Struct, frozen=True, array_like=True):
    key: str
    value: bytes
    version: int


class _SessionEntry(msgspec.Struct, frozen=True, array_like=True):
    client_id: str
    last_seq: int
    result: bytes | None


class _SnapshotState(msgspec.Struct, frozen=True, array_like=True):
    """The encoded state. ``sessions`` is in least-recently-used-first order, which is what
    lets a restored replica evict exactly like the others."""

    format: int
    applied_through: int
    chain: bytes
    limits: Limits
    kv: tuple[_KvEntry, ...]  # sorted by key
    blocks: tuple[BlockPair, ...]  # sorted
    timeline: tuple[Post, ...]  # log order
    sessions: tuple[_SessionEntry, ...]


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_SnapshotState)


def _kv_cost(key: str, value: bytes) -> int:
    return ENTRY_OVERHEAD_BYTES + len(key.encode("utf-8")) + len(value)


def _post_cost(post: Post) -> int:
    return (
        ENTRY_OVERHEAD_BYTES
        + len(post.site.encode("utf-8"))
        + len(post.key.encode("utf-8"))
        + len(post.value)
    )


def _session_cost(client_id: str, result: bytes | None) -> int:
    return ENTRY_OVERHEAD_BYTES + len(client_id.encode("utf-8")) + len(result or b"")


def _chain(prior: bytes, slot: int, value: tuple[bytes, ...]) -> bytes:
    """One link of the running digest: length-prefixed so that no two different
    (slot, batch) sequences hash the same input bytes."""
    h = hashlib.sha256(prior)
    h.update(slot.to_bytes(8, "big"))
    h.update(len(value).to_bytes(8, "big"))
    for command in value:
        h.update(len(command).to_bytes(8, "big"))
        h.update(command)
    return h.digest()


class StateMachine:
    """KV map + block relation + timeline + sessions, advanced one decided slot at a time.

    Invariant: ``applied_through`` is the last slot applied; slot ``applied_through + 1`` is
    the only one ``apply`` accepts (slots start at 1).
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self.limits.check()
        self.applied_through = 0
        self._chain = _CHAIN_SEED
        self._kv: dict[str, tuple[bytes, int]] = {}
        self._keys: list[str] = []  # sorted, for scans
        self._kv_bytes = 0
        self._blocks: set[tuple[str, str]] = set()
        self._timeline: deque[Post] = deque()
        self._timeline_bytes = 0
        # Least recently used first; every command from a client moves it to the end.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._sessions_bytes = 0

    # ---------------------------------------------------------------------------- apply

    def apply(self, slot: int, value: tuple[bytes, ...]) -> list[tuple[str, int, bytes]]:
        """Apply the decided batch of ``slot``; return (client_id, seq, encoded result) for
        each command in order. An undecodable command yields ``("", 0, Malformed)``."""
        assert slot == self.applied_through + 1, (
            f"apply out of order: slot {slot} after {self.applied_through}"
        )
        assert isinstance(value, tuple), f"slot {slot} value is {type(value).__name__}"
        self._chain = _chain(self._chain, slot, value)
        self.applied_through = slot
        # A membership command is the core's (it already acted on it): it enters the digest
        # chain like any value, and has no result.
        return [self._apply_command(slot, raw) for raw in value if not is_membership_command(raw)]

    def _apply_command(self, slot: int, raw: bytes) -> tuple[str, int, bytes]:
        try:
            cmd = decode_command(raw)
        except BadCommand as e:
            return ("", 0, encode_result(Malformed(reason=str(e))))
        cid, seq = cmd.client_id, cmd.seq
        session = self._sessions.get(cid)
        # An unknown client starts a session at whatever seq it sends. Known gap: a client
        # whose session was evicted (sessions_max other clients were active since its last
        # command) and which then retries that command gets it applied a second time.
        if session is not None:
            self._sessions.move_to_end(cid)
            if seq < session.last_seq:
                return (cid, seq, encode_result(Stale(last_seq=session.last_seq)))
            if seq == session.last_seq:
                if session.result is not None:
                    return (cid, seq, session.result)
                if is_read(cmd.op):
                    return (cid, seq, encode_result(self._read(cmd.op)))
                # The client reused a read's seq for a write: refuse rather than guess.
                return (cid, seq, encode_result(Stale(last_seq=session.last_seq)))
        if is_read(cmd.op):
            encoded = encode_result(self._read(cmd.op))
            self._remember(cid, seq, None)
        else:
            encoded = encode_result(self._write(slot, cmd))
            self._remember(cid, seq, encoded)
        return (cid, seq, encoded)

    def _remember(self, client_id: str, seq: int, result: bytes | None) -> None:
        old = self._sessions.pop(client_id, None)
        if old is not None:
            self._sessions_bytes -= _session_cost(client_id, old.result)
        self._sessions[client_id] = _Session(seq, result)
        self._sessions_bytes += _session_cost(client_id, result)
        limits = self.limits
        while (
            len(self._sessions) > limits.sessions_max
            or self._sessions_bytes > limits.sessions_bytes_max
        ) and len(self._sessions) > 1:
            evicted_id, evicted = self._sessions.popitem(last=False)
            self._sessions_bytes -= _session_cost(evicted_id, evicted.result)

    # ---------------------------------------------------------------------------- writes

    def _write(self, slot: int, cmd: Command) -> Result:
        match cmd.op:
            case Put(key=key, value=value):
                result = self._set(key, value)
                if isinstance(result, Written):
                    # Interned: a site's posts then share one string, not one each.
                    self._post(Post(slot=slot, site=sys.intern(cmd.site), key=key, value=value))
                return result
            case Cas(key=key, new=new, expect_value=ev, expect_version=evv):
                current = self._kv.get(key)
                if evv is not None:
                    matches = evv == (current[1] if current is not None else 0)
                else:
                    matches = current is not None and current[0] == ev
                if not matches:
                    if current is None:
                        return CasMismatch(value=None, version=0)
                    return CasMismatch(value=current[0], version=current[1])
                return self._set(key, new)
            case Delete(key=key):
                current = self._kv.pop(key, None)
                if current is None:
                    return Deleted(prior_version=0)
                del self._keys[bisect.bisect_left(self._keys, key)]
                self._kv_bytes -= _kv_cost(key, current[0])
                return Deleted(prior_version=current[1])
            case Block(site=site, other=other):
                if (site, other) in self._blocks:
                    return Changed(changed=False)
                if len(self._blocks) >= self.limits.blocks_max:
                    return Full(what="blocks")
                self._blocks.add((site, other))
                return Changed(changed=True)
            case Unblock(site=site, other=other):
                if (site, other) not in self._blocks:
                    return Changed(changed=False)
                self._blocks.remove((site, other))
                return Changed(changed=True)
        raise AssertionError(f"not a write: {cmd.op!r}")

    def _set(self, key: str, value: bytes) -> Result:
        current = self._kv.get(key)
        kv_bytes = self._kv_bytes + _kv_cost(key, value)
        if current is not None:
            kv_bytes -= _kv_cost(key, current[0])
        if kv_bytes > self.limits.kv_bytes_max:
            return Full(what="kv")
        version = 1 if current is None else current[1] + 1
        assert version <= VERSION_MAX, f"key {key!r} version overflow"
        if current is None:
            bisect.insort(self._keys, key)
        self._kv[key] = (value, version)
        self._kv_bytes = kv_bytes
        return Written(version=version)

    def _post(self, post: Post) -> None:
        self._timeline.append(post)
        self._timeline_bytes += _post_cost(post)
        limits = self.limits
        while (
            len(self._timeline) > limits.timeline_max
            or self._timeline_bytes > limits.timeline_bytes_max
        ) and self._timeline:
            self._timeline_bytes -= _post_cost(self._timeline.popleft())

    # ----------------------------------------------------------------------------- reads

    def query(self, op: Op) -> Result:
        """Answer a read from the applied state without going through the log: a stale read
        (``--stale``), or a read-index read once leadership is confirmed."""
        return self._read(op)

    def _read(self, op: Op) -> Result:
        match op:
            case Get(key=key):
                current = self._kv.get(key)
                if current is None:
                    return NotFound()
                return Found(value=current[0], version=current[1])
            case Scan(prefix=prefix, limit=limit):
                return self._scan(prefix, limit)
            case Blocks(site=site):
                pairs = sorted(p for p in self._blocks if site is None or p[0] == site)
                return BlockList(pairs=tuple(BlockPair(site=s, other=o) for s, o in pairs))
            case View(as_site=as_site, limit=limit):
                return self._view(as_site, limit)
        raise AssertionError(f"not a read: {op!r}")

    def _scan(self, prefix: str, limit: int) -> Rows:
        rows: list[Row] = []
        page_bytes = 0
        i = bisect.bisect_left(self._keys, prefix)
        keys = self._keys
        while i < len(keys) and keys[i].startswith(prefix):
            key = keys[i]
            value, version = self._kv[key]
            cost = _kv_cost(key, value)
            if len(rows) >= limit or page_bytes + cost > PAGE_BYTES_MAX:
                return Rows(rows=tuple(rows), more=True)
            rows.append(Row(key=key, value=value, version=version))
            page_bytes += cost
            i += 1
        return Rows(rows=tuple(rows), more=False)

    def _view(self, as_site: str, limit: int) -> Timeline:
        """A site sees every post except those of the sites that block it, judged
        by the block relation now (an unblock makes older posts visible again)."""
        blockers = {site for site, other in self._blocks if other == as_site}
        posts: list[Post] = []
        page_bytes = 0
        for post in reversed(self._timeline):
            if post.site in blockers:
                continue
            cost = _post_cost(post)
            if len(posts) >= limit or page_bytes + cost > PAGE_BYTES_MAX:
                posts.reverse()
                return Timeline(posts=tuple(posts), more=True)
            posts.append(post)
            page_bytes += cost
        posts.reverse()
        return Timeline(posts=tuple(posts), more=False)

    # ------------------------------------------------------------------ digest, snapshot

    def digest(self) -> str:
        """A hash chained over every applied (slot, value): equal exactly when two replicas
        applied the same prefix (up to SHA-256 collisions). It survives snapshot/restore."""
        return self._chain.hex()

    def snapshot(self) -> bytes:
        # The entry structs die as soon as they are encoded, before _seal copies the bytes:
        # a snapshot's transient peak is then two copies of its bytes (~22 MB each with
        # 100,000 keys and a full timeline), not two copies plus ~7 MB of structs.
        data = _seal(_snapshot_encoder.encode(self._snapshot_state()))
        assert len(data) <= SNAPSHOT_BYTES_MAX, f"snapshot of {len(data)} bytes"
        return data

    def _snapshot_state(self) -> _SnapshotState:
        return _SnapshotState(
            format=SNAPSHOT_FORMAT,
            applied_through=self.applied_through,
            chain=self._chain,
            limits=self.limits,
            kv=tuple(_KvEntry(k, *self._kv[k]) for k in self._keys),
            blocks=tuple(BlockPair(s, o) for s, o in sorted(self._blocks)),
            timeline=tuple(self._timeline),
            sessions=tuple(
                _SessionEntry(cid, s.last_seq, s.result) for cid, s in self._sessions.items()
            ),
        )

    @classmethod
    def restore(cls, data: bytes) -> Self:
        """Rebuild from ``snapshot()`` bytes (from disk or a peer); BadSnapshot on any defect."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadSnapshot(f"expected bytes, got {type(data).__name__}")
        if len(data) > SNAPSHOT_BYTES_MAX:
            raise BadSnapshot(f"snapshot is {len(data)} bytes, over {SNAPSHOT_BYTES_MAX}")
        body = _unseal(bytes(data))
        try:
            state = _snapshot_decoder.decode(body)
        except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
            raise BadSnapshot(f"undecodable snapshot: {e}"[:200]) from None
        try:
            return cls._from_state(state)
        except (ValueError, TypeError) as e:
            raise BadSnapshot(str(e)) from None

    @classmethod
    def _from_state(cls, state: _SnapshotState) -> Self:
        """Validate every field before trusting it: a snapshot is read from disk or a peer."""
        if state.format != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {state.format}, expected {SNAPSHOT_FORMAT}")
        if not 0 <= state.applied_through <= SEQ_MAX:
            raise ValueError(f"applied_through {state.applied_through} out of range")
        if len(state.chain) != len(_CHAIN_SEED):
            raise ValueError(f"digest chain is {len(state.chain)} bytes")
        state.limits.check()
        sm = cls(state.limits)
        limits = state.limits
        sm.applied_through = state.applied_through
        sm._chain = bytes(state.chain)

        prior: str | None = None
        for e in state.kv:
            _valid_text("key", e.key, KEY_BYTES_MAX)
            if prior is not None and e.key <= prior:
                raise ValueError(f"kv keys not strictly sorted at {e.key!r}")
            if len(e.value) > VALUE_BYTES_MAX or not 1 <= e.version <= VERSION_MAX:
                raise ValueError(f"kv entry {e.key!r} out of bounds")
            sm._kv[e.key] = (e.value, e.version)
            sm._keys.append(e.key)
            sm._kv_bytes += _kv_cost(e.key, e.value)
            prior = e.key
        if sm._kv_bytes > limits.kv_bytes_max:
            raise ValueError(f"kv holds {sm._kv_bytes} bytes, over {limits.kv_bytes_max}")

        prior_pair: tuple[str, str] | None = None
        for p in state.blocks:
            _valid_text("site", p.site, SITE_BYTES_MAX)
            _valid_text("site", p.other, SITE_BYTES_MAX)
            pair = (p.site, p.other)
            if p.site == p.other or (prior_pair is not None and pair <= prior_pair):
                raise ValueError(f"block pair {pair!r} invalid or not strictly sorted")
            sm._blocks.add(pair)
            prior_pair = pair
        if len(sm._blocks) > limits.blocks_max:
            raise ValueError(f"{len(sm._blocks)} block pairs, over {limits.blocks_max}")

        prior_slot = 0
        for post in state.timeline:
            _valid_text("site", post.site, SITE_BYTES_MAX)
            _valid_text("key", post.key, KEY_BYTES_MAX)
            if len(post.value) > VALUE_BYTES_MAX:
                raise ValueError("timeline post value too long")
            if not prior_slot <= post.slot <= state.applied_through:
                raise ValueError(f"timeline post slot {post.slot} out of order")
            # Interned as in _write, so that a restored replica's posts share site strings too.
            if post.site is not (site := sys.intern(post.site)):
                post = Post(slot=post.slot, site=site, key=post.key, value=post.value)
            sm._timeline.append(post)
            sm._timeline_bytes += _post_cost(post)
            prior_slot = post.slot
        if (
            len(sm._timeline) > limits.timeline_max
            or sm._timeline_bytes > limits.timeline_bytes_max
        ):
            raise ValueError("timeline over its bounds")

        for s in state.sessions:
            _valid_text("client_id", s.client_id, CLIENT_ID_BYTES_MAX)
            if s.client_id in sm._sessions or not 0 <= s.last_seq <= SEQ_MAX:
                raise ValueError(f"session {s.client_id!r} duplicated or out of range")
            if s.result is not None:
                try:
                    decode_result(s.result)
                except BadCommand as e:
                    raise ValueError(f"session {s.client_id!r}: {e}") from None
            sm._sessions[s.client_id] = _Session(s.last_seq, s.result)
            sm._sessions_bytes += _session_cost(s.client_id, s.result)
        if (
            len(sm._sessions) > limits.sessions_max
            or sm._sessions_bytes > limits.sessions_bytes_max
        ):
            raise ValueError("session table over its bounds")
        return sm


def _seal(body: bytes) -> bytes:
    """Append a checksum: validation catches malformed structure, but only a checksum
    catches a flipped bit inside a value or the digest chain."""
    return body + hashlib.sha256(body).digest()


def _unseal(data: bytes) -> bytes:
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if len(data) < _CHECKSUM_BYTES or hashlib.sha256(body).digest() != checksum:
        raise BadSnapshot("snapshot checksum mismatch (truncated or corrupted)")
    return body


def _valid_text(name: str, text: str, bytes_max: int) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8") from None
    if not 1 <= size <= bytes_max:
        raise ValueError(f"{name} is {size} bytes, outside 1..{bytes_max}")


__all__ = ["SNAPSHOT_BYTES_MAX", "BadSnapshot", "Limits", "StateMachine"]
