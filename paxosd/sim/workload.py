"""Simulated clients: random operations, timeouts, retries with the same (client_id, seq).

Each client has one operation in flight, as a real client library does. It records what it
saw (invoke, then ok / fail / unknown) for the linearizability checker; "fail" is used only
when no attempt can have entered a log (every attempt was redirected), otherwise a client
that gives up records "unknown", which the checker lets take effect or not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    Block,
    Cas,
    Command,
    Delete,
    Get,
    Op,
    Put,
    Scan,
    Unblock,
    encode_command,
)

KEYS = ("a", "b", "c", "d")
SITES = ("s1", "s2", "s3")


def random_op(rng: random.Random, unique: int) -> Op:
    """A random operation over a small key space, so operations collide often; every write
    carries a unique value so a read identifies exactly which write it saw."""
    key = rng.choice(KEYS)
    value = f"v{unique}".encode()
    r = rng.random()
    if r < 0.30:
        return Put(key=key, value=value)
    if r < 0.55:
        return Get(key=key)
    if r < 0.62:
        return Delete(key=key)
    if r < 0.72:
        if rng.random() < 0.5:
            return Cas(key=key, new=value, expect_version=rng.randint(0, 3))
        return Cas(key=key, new=value, expect_value=f"v{rng.randint(0, unique)}".encode())
    if r < 0.80:
        return Scan(prefix="", limit=10)
    a, b = rng.sample(SITES, 2)
    if r < 0.90:
        return Block(site=a, other=b)
    return Unblock(site=a, other=b)


@dataclass(slots=True)
class SimClient:
    index: int
    client_id: str
    site: str
    seq: int = 0
    op: Op | None = None
    command: bytes = b""
    invoke_ms: int = 0
    give_up_ms: int = 0
    attempt: int = 0
    maybe_applied: bool = False
    target: int = 0
    history: list[Operation] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.op is not None

    def begin(self, op: Op, now_ms: int, op_timeout_ms: int) -> bytes:
        assert self.op is None
        self.seq += 1
        self.op = op
        self.command = encode_command(
            Command(client_id=self.client_id, seq=self.seq, site=self.site, op=op)
        )
        self.invoke_ms = now_ms
        self.give_up_ms = now_ms + op_timeout_ms
        self.attempt = 0
        self.maybe_applied = False
        return self.command

    def finish(self, now_ms: int, outcome: str, result: object) -> None:
        assert self.op is not None
        self.history.append(
            Operation(
                client_id=self.client_id,
                op=self.op,
                invoke_ms=self.invoke_ms,
                complete_ms=now_ms if outcome == "ok" else None,
                outcome=outcome,  # type: ignore[arg-type]
                result=result,  # type: ignore[arg-type]
            )
        )
        self.op = None
