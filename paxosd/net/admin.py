"""The admin protocol of the client port: one tagged struct per question, one per answer.

A client asks a member about itself (status, members, its log, a stale read) or asks the
leader to act (change the membership, hand over leadership, take a snapshot). Each question
is its own struct, so the daemon dispatches with ``match`` on the type and msgspec has
validated every field before the daemon sees it: a wrong type is a ``BadFrame``, never a
``KeyError`` deep in a handler. Each answer is typed too, and a refusal is a ``Refused``
with its reason, not a string prefix to parse.

The structs are ``array_like`` (compact) and tagged with a short stable name: renaming a
class does not change the wire, changing a tag does.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import msgspec


class _Query(msgspec.Struct, frozen=True, array_like=True, tag_field="q"):
    pass


class Status(_Query, tag="status", frozen=True):
    """This member's view: role, leader, ballot, indexes, digest, peers."""


class Members(_Query, tag="members", frozen=True):
    """The membership as this member knows it."""


class ChangeMember(_Query, tag="member_change", frozen=True):
    """Add a learner, promote it, or remove a member (the leader decides it in the log)."""

    kind: Literal["add", "promote", "remove"]
    node: int
    address: str = ""


class Transfer(_Query, tag="leader_transfer", frozen=True):
    """Hand leadership to ``target`` (None: the most caught-up voter)."""

    target: int | None = None


class Snapshot(_Query, tag="snapshot", frozen=True):
    """Take a snapshot now, at the applied index."""


class SnapshotRead(_Query, tag="snapshot_read", frozen=True):
    """One chunk of this member's snapshot, for a backup. Offset 0 asks for a recent one
    (with ``slot``: at that slot or newer); a member that has none begins one and answers
    ``pending`` (see paxosd.storage.backup.serve_snapshot_read)."""

    offset: int = 0
    slot: int | None = None
    chunk_bytes: int | None = None


class ViewLog(_Query, tag="view_log", frozen=True):
    """Stored log rows from slot ``first`` to ``last`` (default: the decided index)."""

    first: int = 1
    last: int | None = None
    limit: int = 100


class ReadStale(_Query, tag="read_stale", frozen=True):
    """Run a read ``command`` against this member's applied state, without the log."""

    command: bytes


class Partition(_Query, tag="partition", frozen=True):
    """A drill's fault: drop (``on``) or restore traffic to ``peer``."""

    peer: int
    on: bool


AdminQuery = (
    Status
    | Members
    | ChangeMember
    | Transfer
    | Snapshot
    | SnapshotRead
    | ViewLog
    | ReadStale
    | Partition
)

# ------------------------------------------------------------------------------- answers


class _Answer(msgspec.Struct, frozen=True, array_like=True, tag_field="a"):
    pass


class PeerLink(msgspec.Struct, frozen=True, array_like=True):
    connected: bool
    frames_sent: int
    frames_received: int


class Recovery(msgspec.Struct, frozen=True, array_like=True):
    """What the member did when it started: how much it replayed, and to what state."""

    entries_replayed: int
    seconds: float
    applied_index: int
    snapshot_index: int
    digest: str


class AlarmInfo(msgspec.Struct, frozen=True, array_like=True):
    """A raised alarm (replicated: every member shows the same) and who raised it."""

    member: int
    alarm: str


class StatusReply(_Answer, tag="status", frozen=True):
    node_id: int
    cluster_id: str
    role: str
    leader: int | None
    ballot: str
    promised: str
    decided_index: int
    applied_index: int
    snapshot_index: int
    log_start: int
    accepted_not_decided: list[int]
    digest: str
    pending_requests: int
    voters: list[int]
    learners: list[int]
    membership_epoch: int
    peer_lag: dict[str, int]
    peers: dict[str, PeerLink]
    uptime_s: float
    recovery: Recovery
    # How long ago the leader last heard each peer (empty on a follower).
    peer_last_ack_ms_ago: dict[str, int]
    # The store revision this member has applied, the oldest revision its history still
    # holds (0: never compacted), and the bytes that history takes.
    revision: int = 0
    compact_revision: int = 0
    history_bytes: int = 0
    # Watches served by this node: all, those catching up from history (their connection
    # was slow), and how many were canceled because compaction overtook them (since start).
    watchers: int = 0
    watchers_catching_up: int = 0
    watchers_canceled_compacted: int = 0
    # The data dir's disk: bytes of the database and its WAL, bytes free on its file
    # system, and whether a write found it full (the node then neither votes nor answers
    # commands until space is back; see paxosd/server/diskspace.py).
    db_bytes: int = 0
    disk_free_bytes: int = 0
    disk_full: bool = False
    # The store's accounted bytes (keys, values, history; the same on every replica at one
    # applied index), this member's quota for them, and the raised alarms (NOSPACE).
    store_bytes: int = 0
    quota_bytes: int = 0
    alarms: list[AlarmInfo] = []


class MemberInfo(msgspec.Struct, frozen=True, array_like=True):
    node_id: int
    role: Literal["voter", "learner"]
    peer_address: str | None
    client_address: str | None
    connected: bool
    decided_lag: int | None


class MembersReply(_Answer, tag="members", frozen=True):
    node_id: int
    leader: int | None
    epoch: int
    decided_index: int
    members: list[MemberInfo]


class Decided(_Answer, tag="decided", frozen=True):
    """A membership change or leader transfer the leader carried out (``slot``: where the
    change was decided; 0 for a transfer)."""

    node_id: int
    slot: int
    detail: str


class SnapshotTaken(_Answer, tag="snapshot", frozen=True):
    node_id: int
    snapshot_index: int


class SnapshotChunk(_Answer, tag="snapshot_chunk", frozen=True):
    """``moved``: the snapshot named by the request was replaced; start over at ``slot``.
    ``pending``: a snapshot at ``slot`` is being made; ask again for it (no data yet)."""

    node_id: int
    cluster_id: str
    slot: int
    moved: bool
    pending: bool = False
    offset: int | None = None
    total: int | None = None
    data: bytes | None = None
    digest: str | None = None


class LogRow(msgspec.Struct, frozen=True, array_like=True):
    slot: int
    kind: Literal["accepted", "decided"]
    ballot: str | None
    value: list[bytes]


class LogPage(_Answer, tag="log", frozen=True):
    """Stored rows, and the results this member still keeps for decided slots (by slot)."""

    node_id: int
    rows: list[LogRow]
    results: dict[int, list[bytes]]
    log_start: int
    decided_index: int


class StaleRead(_Answer, tag="stale_read", frozen=True):
    """A read of ``node_id``'s applied state. ``leader`` and the ballot are the answering
    node's header, as on ClientReply (the store revision is in ``result``)."""

    node_id: int
    applied_index: int
    result: bytes
    leader: int | None = None
    ballot_round: int = 0
    ballot_node: int = 0


class Partitioned(_Answer, tag="partitioned", frozen=True):
    peer: int
    partitioned: bool


class Refused(_Answer, tag="refused", frozen=True):
    """The member understood the request and declined it; nothing changed. ``not_leader``:
    ask the leader (``leader``, when known) instead."""

    reason: str
    not_leader: bool = False
    leader: int | None = None


class OutcomeUnknown(_Answer, tag="unknown", frozen=True):
    """Leadership was lost before the change was decided: it may still take effect."""

    reason: str


class Busy(_Answer, tag="busy", frozen=True):
    """Too many requests waiting; try again shortly."""

    reason: str


class BadQuery(_Answer, tag="bad_query", frozen=True):
    """The arguments make no sense here (e.g. an offset past the end)."""

    reason: str


AdminAnswer = (
    StatusReply
    | MembersReply
    | Decided
    | SnapshotTaken
    | SnapshotChunk
    | LogPage
    | StaleRead
    | Partitioned
    | Refused
    | OutcomeUnknown
    | Busy
    | BadQuery
)


def to_json(value: Any) -> Any:
    """An answer as JSON-ready builtins: structs as objects with their field names (the wire
    form is positional), dict keys as text, bytes as base64; for ``--json`` output."""
    if isinstance(value, msgspec.Struct):
        return {f: to_json(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


__all__ = [
    "AdminAnswer",
    "AlarmInfo",
    "AdminQuery",
    "BadQuery",
    "Busy",
    "ChangeMember",
    "Decided",
    "LogPage",
    "LogRow",
    "MemberInfo",
    "Members",
    "MembersReply",
    "OutcomeUnknown",
    "Partition",
    "Partitioned",
    "PeerLink",
    "ReadStale",
    "Recovery",
    "Refused",
    "Snapshot",
    "SnapshotChunk",
    "SnapshotRead",
    "SnapshotTaken",
    "StaleRead",
    "Status",
    "StatusReply",
    "Transfer",
    "ViewLog",
    "to_json",
]
