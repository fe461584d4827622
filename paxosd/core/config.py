"""Tunables of one replica. Every bound has a unit in its name, last."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from paxosd.core.types import NodeId


class Rng(Protocol):
    """The slice of random.Random the core uses. Injected, so a seed replays a run exactly."""

    def randint(self, a: int, b: int) -> int: ...


# What a value costs in a message besides its commands' bytes: a slot number, a ballot and
# a length per command (msgspec arrays: a few bytes each; these bounds are generous).
ENTRY_OVERHEAD_BYTES = 64
COMMAND_OVERHEAD_BYTES = 8


def value_bytes(value: tuple[bytes, ...]) -> int:
    """An upper bound on what one slot's value takes in an encoded message."""
    return ENTRY_OVERHEAD_BYTES + sum(len(c) for c in value) + COMMAND_OVERHEAD_BYTES * len(value)


def value_bytes_bound(commands: int, command_bytes: int) -> int:
    return ENTRY_OVERHEAD_BYTES + command_bytes + COMMAND_OVERHEAD_BYTES * commands


@dataclass(frozen=True, slots=True)
class CoreConfig:
    node_id: NodeId
    members: tuple[NodeId, ...]
    heartbeat_interval_ms: int = 50
    election_timeout_ms_min: int = 300
    election_timeout_ms_max: int = 600
    # Back-off after a lost election: the timeout range is scaled by 2**k, k <= this.
    election_backoff_exponent_max: int = 3
    slots_in_flight_max: int = 64
    batch_commands_max: int = 512
    batch_bytes_max: int = 1 << 20
    pending_commands_max: int = 10_000
    accept_entries_per_message_max: int = 256
    promise_entries_max: int = 4096
    catchup_entries_max: int = 1024
    log_retain_entries: int = 1000
    # Ask only as many followers to vote on each accept as a majority needs; the others get
    # the values quietly, once per tick, keep them in memory without an fsync, and learn them
    # at the commit point. On a 3-node cluster: one fsync, one send and one wakeup fewer per
    # write. The simulator runs half of its seeds with it off.
    thrifty_accepts: bool = True
    # A learner is promoted only when its decided prefix is at most this far behind ours.
    promote_lag_slots_max: int = 256
    # Accepts, promises and catch-up replies carry at most this many bytes of values, well
    # under the transport's 4 MiB frame cap: a bigger message would be dropped by the
    # transport every time it is re-sent, and the slots in it would never be decided.
    message_bytes_max: int = 3 << 20
    # Snapshots travel in chunks of at most this many bytes (well under the frame cap).
    snapshot_chunk_bytes: int = 1 << 20
    # A peer announcing a bigger snapshot is not believed (bounds the file a transfer
    # writes). The state machine's SNAPSHOT_BYTES_MAX (tests/test_statemachine.py checks).
    snapshot_bytes_max: int = 4 << 30

    def __post_init__(self) -> None:
        # node_id may be missing from members: a node added later joins as a learner.
        assert self.members, "a cluster needs at least one bootstrap voter"
        assert len(set(self.members)) == len(self.members), "member ids must be unique"
        assert 0 < self.heartbeat_interval_ms < self.election_timeout_ms_min
        assert self.election_timeout_ms_min < self.election_timeout_ms_max
        assert self.slots_in_flight_max >= 1 and self.batch_commands_max >= 1
        # One slot's value must fit a message on its own.
        assert value_bytes_bound(self.batch_commands_max, self.batch_bytes_max) <= (
            self.message_bytes_max
        ), "batch_bytes_max too big for message_bytes_max"
