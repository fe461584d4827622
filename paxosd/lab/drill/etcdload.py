"""Drill workers that go through the etcd v3 front end: the nodes' gRPC listeners, called
with the generated stubs, failing over as an etcd client does, their results mapped onto the
checker's register model so that the same checks judge them.

Why this exists: the etcd gateway is a second front end with its own mapping of requests,
errors and retries onto the client protocol; a wrong mapping (an UNAVAILABLE for a write
that was applied, a header revision from the wrong moment, a compare that means something
else) is invisible to the paxosd workers. Here the gateway's answers join the history.

The mapping, request -> model op -> model result:
- Put (prev_kv) -> ``Put`` -> ``Written(version = prev version + 1, revision = header)``;
- linearizable Range of one key -> ``Get`` -> ``Found`` / ``NotFound``;
- DeleteRange of one key (prev_kv) -> ``Delete`` -> ``Deleted(prior_version, revision)``;
- Txn "value = v ? put : range" -> ``Cas(expect_value=v)`` -> ``Written`` / ``CasMismatch``;
- Txn "mod_revision = R ? put : range" -> the same Cas on what the worker saw at R: revision R
  wrote one value (values are unique), so "mod = R" holds exactly when the key still holds
  that value; R = 0 (the key was absent) is ``Cas(expect_version=0)``.

Fail-over, as clientv3 does it: a worker holds one endpoint; an endpoint that is not
connected is skipped before anything is sent (so that op certainly did not run); an
UNAVAILABLE or a deadline moves the worker to the next endpoint. A read is retried there
(it has no effect); a write that was sent and not answered is recorded as unknown, never
sent again (a second send would apply it twice: etcd has no exactly-once).

grpcio is imported by ``EtcdEndpoints`` only: the drill runs without the etcd extra unless
``--etcd`` is asked for.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from paxosd.lab.drill.workload import (
    KEYS_PER_EPOCH,
    OLD_KEY_READ_FRACTION,
    Entry,
    History,
    Outcome,
    Workload,
)
from paxosd.sim.linearizability import Operation
from paxosd.statemachine.commands import (
    Cas,
    CasMismatch,
    Delete,
    Deleted,
    Found,
    Get,
    NotFound,
    Op,
    Put,
    Result,
    Written,
)

# How long a worker waits for an endpoint's connection before it skips to the next one.
CONNECT_S: Final = 1.0
# gRPC's reconnect back-off grows to 120 s by default; a drill restarts listeners every few
# seconds, and a worker coming back to one must find it soon after it is up.
RECONNECT_BACKOFF_MS: Final = (100, 1000)
MESSAGE_BYTES_MAX: Final = 4 << 20
# Longer than gRPC's connectivity poll (0.2 s), see ``EtcdEndpoints.close``.
CHANNEL_POLL_S: Final = 0.3

# What a worker last saw of a key: (value or None when absent, version, mod revision).
Seen = dict[str, tuple[bytes | None, int, int]]


@dataclass(frozen=True, slots=True)
class EtcdOp:
    """One etcd request a worker makes: the model op the checker sees, and for a txn
    compare-and-swap which compare it sends (``mod`` set: on the mod revision)."""

    op: Op
    kind: str  # put, range, delete, txn-value, txn-mod (the report's counts)
    mod: int | None = None


def next_etcd_op(
    rng: random.Random, workload: Workload, epoch: int, value: bytes, seen: Seen
) -> EtcdOp:
    """The etcd workers' mix on the register keys the paxosd workers use too (so the two
    front ends' writes interleave on the same keys): put, linearizable range, a compare-and-
    swap transaction on the mod revision or the value the worker last saw, delete."""
    if epoch > 0 and rng.random() < OLD_KEY_READ_FRACTION:
        key = workload.key(rng.randrange(epoch), rng.randrange(KEYS_PER_EPOCH))
        return EtcdOp(Get(key=key), "range")
    key = workload.key(epoch, rng.randrange(KEYS_PER_EPOCH))
    r = rng.random()
    if r < 0.3:
        return EtcdOp(Put(key=key, value=value), "put")
    if r < 0.6:
        return EtcdOp(Get(key=key), "range")
    if r < 0.9:
        last_value, _version, last_mod = seen.get(key, (None, 0, 0))
        if last_value is not None and rng.random() < 0.5:
            return EtcdOp(Cas(key=key, new=value, expect_value=last_value), "txn-value")
        if last_value is None:
            return EtcdOp(Cas(key=key, new=value, expect_version=0), "txn-mod", mod=0)
        return EtcdOp(Cas(key=key, new=value, expect_value=last_value), "txn-mod", mod=last_mod)
    return EtcdOp(Delete(key=key), "delete")


def remember_etcd(seen: Seen, op: Op, result: Result, mod: int) -> None:
    """The worker's last observation per key, with ``mod``, the key's mod revision in the
    answer (its mod CASes compare it)."""
    match op, result:
        case ((Put(key=k, value=v) | Cas(key=k, new=v)), Written(version=ver)):
            seen[k] = (v, ver, mod)
        case Get(key=k), Found(value=v, version=ver):
            seen[k] = (v, ver, mod)
        case Cas(key=k), CasMismatch(value=v, version=ver):
            seen[k] = (v, ver, mod)
        case ((Get(key=k) | Delete(key=k)), (NotFound() | Deleted())):
            seen[k] = (None, 0, 0)


class EtcdEndpoints:
    """Every node's etcd listener, one gRPC channel each, and the one a worker uses now."""

    def __init__(self, addresses: Sequence[str], *, first: int = 0) -> None:
        import grpc

        from paxosd.etcd.proto import rpc_pb2, rpc_pb2_grpc

        assert addresses, "an etcd worker needs at least one endpoint"
        self.grpc: Any = grpc
        self.pb: Any = rpc_pb2
        self.addresses = list(addresses)
        self.current = first % len(self.addresses)
        lo, hi = RECONNECT_BACKOFF_MS
        options = [
            ("grpc.initial_reconnect_backoff_ms", lo),
            ("grpc.min_reconnect_backoff_ms", lo),
            ("grpc.max_reconnect_backoff_ms", hi),
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
        ]
        self.channels: list[Any] = [grpc.insecure_channel(a, options=options) for a in addresses]
        self.stubs: list[Any] = [rpc_pb2_grpc.KVStub(ch) for ch in self.channels]  # type: ignore[no-untyped-call]
        self.failovers = 0

    def close(self) -> None:
        # gRPC polls a watched channel's state from a thread every 0.2 s, and that thread
        # raises if the channel was closed under it: let it see that nobody watches first.
        time.sleep(CHANNEL_POLL_S)
        for ch in self.channels:
            ch.close()

    def ready(self, i: int, timeout_s: float) -> bool:
        """Whether endpoint ``i``'s connection is up (it connects if it is not) within
        ``timeout_s``."""
        future = self.grpc.channel_ready_future(self.channels[i])
        try:
            future.result(timeout=timeout_s)
            return True
        except self.grpc.FutureTimeoutError:
            return False
        finally:
            future.cancel()  # a future that timed out still watches the channel

    def failover(self) -> None:
        self.current = (self.current + 1) % len(self.addresses)
        self.failovers += 1

    def connected(self) -> Any | None:
        """The stub of the first endpoint from ``current`` on whose connection is up (that
        one becomes current); None when none is: nothing can have been sent."""
        for _ in range(len(self.addresses)):
            try:
                self.grpc.channel_ready_future(self.channels[self.current]).result(
                    timeout=CONNECT_S
                )
                return self.stubs[self.current]
            except self.grpc.FutureTimeoutError:
                self.failover()
        return None


def run_etcd_op(
    eps: EtcdEndpoints,
    planned: EtcdOp,
    history: History,
    client_id: str,
    timeout_s: float,
    *,
    phantom: bool = False,
) -> tuple[Entry, int]:
    """Send ``planned`` through the etcd API and classify it as ``run_op`` does: "fail" only
    when it certainly did not run (no endpoint connected, or a read that errored), "unknown"
    for a write that was sent and not answered. Also returns the key's mod revision as the
    answer showed it (0: none), for the worker's next mod compare.

    ``phantom`` (tests only): a put that is never sent and is recorded as acknowledged, the
    bug of a worker that takes a failed RPC for an answer; the checks must find it."""
    op = planned.op
    invoke = history.now_ms()
    if phantom:
        assert isinstance(op, Put)
        return _entry(client_id, op, invoke, invoke, "ok", Written(version=1), "not sent"), 0
    grpc = eps.grpc
    is_read = isinstance(op, Get)
    error = ""
    result: Result | None = None
    mod = 0
    outcome: Outcome = "fail"
    # A read goes to each endpoint at most once; a write is sent once.
    for _ in range(len(eps.addresses) if is_read else 1):
        stub = eps.connected()
        if stub is None:
            error = "no etcd endpoint is connected"
            break
        try:
            result, mod = _call(eps, stub, planned, timeout_s)
            outcome = "ok"
            break
        except grpc.RpcError as e:
            code = e.code()
            error = f"{eps.addresses[eps.current]}: {code.name}: {e.details()}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                eps.failover()
            # A write that reached a listener may have been applied, whatever the status:
            # the gateway answers INVALID_ARGUMENT for an undecodable reply, too.
            outcome = "fail" if is_read else "unknown"
            if not is_read:
                break
    complete = None if outcome == "unknown" else history.now_ms()
    return _entry(client_id, op, invoke, complete, outcome, result, error), mod


def _entry(
    client_id: str,
    op: Op,
    invoke: int,
    complete: int | None,
    outcome: Outcome,
    result: Result | None,
    error: str,
) -> Entry:
    return Entry(Operation(client_id, op, invoke, complete, outcome, result), 0, error, via="etcd")


def _call(eps: EtcdEndpoints, stub: Any, planned: EtcdOp, timeout_s: float) -> tuple[Result, int]:
    pb = eps.pb
    op = planned.op
    match op:
        case Put(key=k, value=v):
            r = stub.Put(pb.PutRequest(key=k.encode(), value=v, prev_kv=True), timeout=timeout_s)
            return _written(r), r.header.revision
        case Get(key=k):
            r = stub.Range(pb.RangeRequest(key=k.encode()), timeout=timeout_s)
            if not r.kvs:
                return NotFound(revision=r.header.revision), 0
            kv = r.kvs[0]
            found = Found(
                value=kv.value,
                version=kv.version,
                create_revision=kv.create_revision,
                mod_revision=kv.mod_revision,
                revision=r.header.revision,
            )
            return found, kv.mod_revision
        case Delete(key=k):
            r = stub.DeleteRange(
                pb.DeleteRangeRequest(key=k.encode(), prev_kv=True), timeout=timeout_s
            )
            prior = r.prev_kvs[0].version if r.deleted and r.prev_kvs else 0
            return Deleted(prior_version=prior, revision=r.header.revision, deleted=r.deleted), 0
        case Cas(key=k, new=v):
            return _txn(eps, stub, planned, k, v, timeout_s)
    raise AssertionError(f"the etcd workers do not send {type(op).__name__}")


def _written(r: Any) -> Written:
    """A put's answer: with prev_kv the new version is the previous one's + 1 (1 for a new
    key), and the header's revision is the write's (its mod revision)."""
    version = r.prev_kv.version + 1 if r.HasField("prev_kv") else 1
    return Written(version=version, revision=r.header.revision)


def _txn(
    eps: EtcdEndpoints, stub: Any, planned: EtcdOp, key: str, new: bytes, timeout_s: float
) -> tuple[Result, int]:
    """The compare-and-swap transaction: success puts, failure reads the key back (the
    mismatch's value, version and mod revision)."""
    pb = eps.pb
    op = planned.op
    assert isinstance(op, Cas)
    k = key.encode()
    if planned.mod is not None:
        compare = pb.Compare(
            key=k, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=planned.mod
        )
    else:
        assert op.expect_value is not None
        compare = pb.Compare(
            key=k, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=op.expect_value
        )
    r = stub.Txn(
        pb.TxnRequest(
            compare=[compare],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=new, prev_kv=True))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=k))],
        ),
        timeout=timeout_s,
    )
    if r.succeeded:
        put = r.responses[0].response_put
        return _written(put), put.header.revision
    kvs = r.responses[0].response_range.kvs
    if not kvs:
        return CasMismatch(value=None, version=0, revision=r.header.revision), 0
    kv = kvs[0]
    return CasMismatch(
        value=kv.value, version=kv.version, revision=r.header.revision
    ), kv.mod_revision


def etcd_report(
    entries: Sequence[Entry],
    worker_via: Mapping[str, str],
    kinds: Mapping[tuple[str, str], int],
    failovers: int,
    endpoints: Sequence[str],
) -> dict[str, Any]:
    """The report's ``etcd`` section: the ops that went through the etcd API by outcome and
    by request kind, the fail-overs, and each worker's front end with its outcomes
    (``worker_via``: worker client id -> "etcd" or "paxosd")."""
    outcomes: dict[str, int] = {"ok": 0, "fail": 0, "unknown": 0}
    per_worker: dict[str, dict[str, Any]] = {
        cid: {"via": via, "ok": 0, "fail": 0, "unknown": 0} for cid, via in worker_via.items()
    }
    for e in entries:
        o = e.operation
        w = per_worker.get(o.client_id.split(".")[0])  # ".gN": after a membership change
        if w is not None:
            w[o.outcome] += 1
        if e.via == "etcd":
            outcomes[o.outcome] += 1
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, outcome), n in sorted(kinds.items()):
        by_kind.setdefault(kind, {})[outcome] = n
    return {
        "endpoints": list(endpoints),
        "ops": sum(outcomes.values()),
        **outcomes,
        "by_kind": by_kind,
        "failovers": failovers,
        "workers": per_worker,
    }


def wait_listeners(addresses: Sequence[str], timeout_s: float) -> list[str]:
    """Wait until every listener accepts a connection (the gateways start a few seconds
    after their nodes); returns those that did not within ``timeout_s``."""
    eps = EtcdEndpoints(addresses)
    late: list[str] = []
    try:
        for i, address in enumerate(eps.addresses):
            if not eps.ready(i, timeout_s):
                late.append(address)
                timeout_s = CONNECT_S  # the rest get a short look only
    finally:
        eps.close()
    return late
