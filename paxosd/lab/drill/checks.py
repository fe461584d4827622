"""The checks after the heal: convergence (same applied index and digest), the final reads,
and the decided log against the history and the replicas (durability, no duplicate,
exactly-once). Linearizability is the simulator's checker (``paxosd.sim.linearizability``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from paxosd.client.client import ClientError
from paxosd.lab.drill.collect import LogCopy
from paxosd.lab.drill.nodes import Nodes, closing_all, node_status
from paxosd.lab.drill.workload import Entry, History, Workload, run_op
from paxosd.statemachine.commands import (
    BadCommand,
    Block,
    BlockList,
    Blocks,
    Cas,
    CasMismatch,
    Changed,
    Command,
    Delete,
    Deleted,
    Get,
    Op,
    Put,
    Rows,
    Scan,
    Txn,
    Unblock,
    Written,
    decode_command,
    is_read,
)


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # linearizability, lost-write, duplicate, exactly-once, digest, state, ...
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


KV = dict[str, tuple[bytes, int]]
BlockSet = set[tuple[str, str]]


def replay_exactly_once(
    commands: Iterable[Command], in_scope: Callable[[Command], bool]
) -> tuple[KV, BlockSet, Counter[tuple[str, int]]]:
    """Apply commands in log order, each (client_id, seq) at most once — the state a replica
    must hold. Written independently of paxosd.statemachine.machine on purpose: a bug in its session
    table would otherwise be replayed as the expected answer. Returns the state and how many
    decided copies each (client_id, seq) had (retries legitimately decide a command twice).
    """
    kv: KV = {}
    blocks: BlockSet = set()
    last_seq: dict[str, int] = {}
    copies: Counter[tuple[str, int]] = Counter()
    for cmd in commands:
        if not in_scope(cmd):
            continue
        copies[(cmd.client_id, cmd.seq)] += 1
        if cmd.seq <= last_seq.get(cmd.client_id, -1):
            continue  # a retry's second decided copy, or older than the session: no effect
        last_seq[cmd.client_id] = cmd.seq
        match cmd.op:
            case Put(key=k, value=v):
                kv[k] = (v, kv[k][1] + 1 if k in kv else 1)
            case Cas(key=k, new=new, expect_value=ev, expect_version=evv):
                cur = kv.get(k)
                if evv is not None:
                    ok = evv == (cur[1] if cur is not None else 0)
                else:
                    ok = cur is not None and cur[0] == ev
                if ok:
                    kv[k] = (new, cur[1] + 1 if cur is not None else 1)
            case Delete(key=k):
                kv.pop(k, None)
            case Block(site=s, other=o):
                blocks.add((s, o))
            case Unblock(site=s, other=o):
                blocks.discard((s, o))
            case _:
                pass  # reads change nothing
    return kv, blocks, copies


def check_log(
    log: LogCopy,
    entries: Sequence[Entry],
    workload: Workload,
    replicas: Mapping[int, tuple[KV, BlockSet]],
) -> tuple[list[Violation], dict[str, Any]]:
    """Durability and exactly-once, from the decided log and the replicas' final state."""
    violations: list[Violation] = []
    decoded: list[Command] = []
    undecodable = 0
    for slot in sorted(log.slots):
        for raw in log.slots[slot]:
            try:
                decoded.append(decode_command(raw))
            except BadCommand:
                undecodable += 1

    def in_scope(cmd: Command) -> bool:
        match cmd.op:
            case Put(key=k) | Cas(key=k) | Delete(key=k) | Get(key=k):
                return k.startswith(workload.prefix)
            case Block(site=s) | Unblock(site=s):
                return workload.is_drill_site(s)
            case Txn():
                return any(k.startswith(workload.prefix) for k in _txn_keys(cmd.op))
        return False

    # The etcd workers' compare-and-swap transactions on the register keys, as the Cas each
    # was recorded as (found by the unique value it puts): what the replay below applies.
    decoded, untranslated = _etcd_txns_as_cas(decoded, entries, in_scope)
    for cmd in untranslated[:5]:
        violations.append(
            Violation(
                "exactly-once",
                f"{cmd.client_id} seq {cmd.seq}: a transaction on the drill's register keys "
                f"that no etcd worker sent: {cmd.op!r}",
            )
        )

    # 1. One value, one command: a value under two (client, seq) pairs was submitted twice
    #    as different commands, which the session table cannot deduplicate.
    by_value: dict[bytes, set[tuple[str, int]]] = {}
    bytes_of: dict[tuple[str, int], set[bytes]] = {}
    for cmd in decoded:
        if not in_scope(cmd):
            continue
        bytes_of.setdefault((cmd.client_id, cmd.seq), set()).add(msgspec.msgpack.encode(cmd.op))
        if isinstance(cmd.op, Put | Cas):
            v = cmd.op.value if isinstance(cmd.op, Put) else cmd.op.new
            by_value.setdefault(v, set()).add((cmd.client_id, cmd.seq))
    for v, owners in by_value.items():
        if len(owners) > 1:
            violations.append(
                Violation("duplicate", f"value {v!r} was decided as {len(owners)} commands")
            )
    for pair, ops in bytes_of.items():
        if len(ops) > 1:
            violations.append(
                Violation("duplicate", f"{pair} was decided with {len(ops)} different operations")
            )

    # 2. Every acknowledged write is in the decided log (only checkable when every slot
    #    since the drill began was copied). A paxosd worker's by its (client, seq); an etcd
    #    worker's put or swap by its unique value (the gateway's client and seq are its own).
    complete = not log.gaps
    in_log = set(bytes_of)
    lost = 0
    if complete:
        for e in entries:
            o = e.operation
            if o.outcome != "ok" or is_read(o.op):
                continue
            if e.via == "etcd":
                match o.op, o.result:
                    case ((Put(value=v) | Cas(new=v)), Written()):
                        missing = v not in by_value
                    case _:
                        continue  # a delete or a failed swap: no unique value to find
            elif e.seq == 0 or not isinstance(o.result, Written | Deleted | Changed | CasMismatch):
                continue
            else:
                missing = (o.client_id, e.seq) not in in_log
            if missing:
                lost += 1
                if lost <= 5:
                    where = "through etcd " if e.via == "etcd" else f"seq {e.seq}: "
                    violations.append(
                        Violation(
                            "lost-write",
                            f"{o.client_id} {where}{o.op!r} was acknowledged "
                            f"({o.result!r}) at {o.complete_ms} ms but is in no decided slot",
                        )
                    )
        if lost > 5:
            violations.append(Violation("lost-write", f"... {lost} acknowledged writes in all"))

    # 3. The log applied exactly once per (client, seq) is what every replica holds.
    kv, blocks, copies = replay_exactly_once(decoded, in_scope)
    if complete:
        for node, (r_kv, r_blocks) in sorted(replicas.items()):
            diff = _diff_state(kv, blocks, r_kv, r_blocks)
            if diff:
                violations.append(
                    Violation(
                        "exactly-once",
                        f"node {node}'s state is not the decided log applied once per "
                        f"(client, seq): {diff}",
                    )
                )
    info = {
        "slots_copied": len(log.slots),
        "first_slot": log.start,
        "last_slot": log.next_slot - 1,
        "commands": len(decoded),
        "drill_commands": sum(copies.values()),
        "decided_more_than_once": sum(1 for n in copies.values() if n > 1),
        "undecodable": undecodable,
        "gaps": [list(g) for g in log.gaps],
        "complete": complete,
    }
    return violations, info


def _txn_keys(txn: Txn) -> list[str]:
    return [c.key for c in txn.compares] + [
        op.key if not isinstance(op, Scan) else op.prefix for op in (*txn.success, *txn.failure)
    ]


def _etcd_txns_as_cas(
    decoded: list[Command], entries: Sequence[Entry], in_scope: Callable[[Command], bool]
) -> tuple[list[Command], list[Command]]:
    """Replace each decided transaction on the register keys by the Cas its etcd worker
    recorded (the one that puts the same unique value); returns the commands and the
    in-scope transactions no worker's entry accounts for."""
    cas_of: dict[bytes, Cas] = {}
    for e in entries:
        if e.via == "etcd" and isinstance(e.operation.op, Cas):
            cas_of[e.operation.op.new] = e.operation.op
    out: list[Command] = []
    untranslated: list[Command] = []
    for cmd in decoded:
        if isinstance(cmd.op, Txn) and in_scope(cmd):
            puts = [op.value for op in cmd.op.success if isinstance(op, Put)]
            cas = cas_of.get(puts[0]) if len(puts) == 1 else None
            if cas is None:
                untranslated.append(cmd)
                continue
            cmd = msgspec.structs.replace(cmd, op=cas)
        out.append(cmd)
    return out, untranslated


def _diff_state(kv: KV, blocks: BlockSet, r_kv: KV, r_blocks: BlockSet) -> str:
    for k in sorted(set(kv) | set(r_kv)):
        if kv.get(k) != r_kv.get(k):
            return f"key {k!r}: expected {kv.get(k)!r}, holds {r_kv.get(k)!r}"
    if blocks != r_blocks:
        return f"blocks: expected {sorted(blocks)}, holds {sorted(r_blocks)}"
    return ""


@dataclass(slots=True)
class Convergence:
    ok: bool
    rows: dict[int, dict[str, Any]]
    problem: str = ""


def wait_converged(nodes: Nodes, timeout_s: float) -> Convergence:
    """Every node answers, one leads, applied == decided, and all agree on index and digest,
    twice in a row (so a slot being applied between two reads cannot fake agreement)."""
    deadline = time.monotonic() + timeout_s
    problem = "no answer"
    rows: dict[int, dict[str, Any]] = {}
    previous: tuple[int, str] | None = None
    with closing_all(nodes.node_clients()) as clients:
        while time.monotonic() < deadline:
            rows = {}
            for k, c in clients.items():
                s = node_status(c)
                if s is not None:
                    rows[k] = s
            missing = [k for k in clients if k not in rows]
            leaders = [k for k, s in rows.items() if s.get("role") == "leader"]
            applied = {int(s["applied_index"]) for s in rows.values()}
            decided = {int(s["decided_index"]) for s in rows.values()}
            digests = {str(s["digest"]) for s in rows.values()}
            if missing:
                problem = f"node(s) {missing} do not answer"
            elif len(leaders) != 1:
                problem = f"{len(leaders)} leaders"
            elif len(applied) != 1 or applied != decided or len(digests) != 1:
                problem = "applied/decided/digest differ: " + ", ".join(
                    f"n{k} applied {s['applied_index']} decided {s['decided_index']} "
                    f"digest {str(s['digest'])[:12]}"
                    for k, s in sorted(rows.items())
                )
            else:
                now = (applied.pop(), digests.pop())
                if now == previous:
                    return Convergence(True, rows)
                previous = now
                time.sleep(0.2)
                continue
            previous = None
            time.sleep(0.2)
    return Convergence(False, rows, problem)


def diagnose_convergence(conv: Convergence) -> list[Violation]:
    """Why the replicas did not converge, split by meaning: equal applied indexes with
    different digests is divergence (a safety violation); a replica behind is a catch-up
    (liveness) failure; anything else (no leader, no answer) is reported as it is."""
    out: list[Violation] = []
    by_index: dict[int, dict[str, list[int]]] = {}
    for k, s in conv.rows.items():
        by_index.setdefault(int(s["applied_index"]), {}).setdefault(str(s["digest"]), []).append(k)
    for index, digests in sorted(by_index.items()):
        if len(digests) > 1:
            sides = "; ".join(f"n{','.join(map(str, ks))}: {d[:16]}" for d, ks in digests.items())
            out.append(Violation("digest", f"different digests at applied index {index}: {sides}"))
    if len(by_index) > 1:
        top = max(by_index)
        behind = sorted(
            (k, i) for i, ds in by_index.items() if i < top for ks in ds.values() for k in ks
        )
        out.append(
            Violation(
                "convergence",
                "still behind after healing: "
                + ", ".join(f"n{k} at applied index {i} (others at {top})" for k, i in behind)
                + "; the state checks cover the replicas at the top index only; see the node logs",
            )
        )
    if not out:
        out.append(Violation("convergence", f"after the final reads: {conv.problem}"))
    return out


def replica_state(
    nodes: Nodes, workload: Workload, which: Iterable[int]
) -> dict[int, tuple[KV, BlockSet]]:
    """Each replica's drill keys and pairs, read from its own applied state."""
    out: dict[int, tuple[KV, BlockSet]] = {}
    wanted = set(which)
    with closing_all(nodes.node_clients(timeout_ms=5000)) as clients:
        for k, c in clients.items():
            if k not in wanted:
                continue
            rows = c.stale_read(Scan(prefix=workload.prefix, limit=1000))
            listed = c.stale_read(Blocks(site=None))
            if not isinstance(rows, Rows) or rows.more:
                raise ClientError(f"node {k}: the scan of the drill keys gave {rows!r}")
            if not isinstance(listed, BlockList):
                raise ClientError(f"node {k}: the block listing gave {listed!r}")
            kv = {r.key: (r.value, r.version) for r in rows.rows}
            blocks = {(p.site, p.other) for p in listed.pairs if workload.is_drill_site(p.site)}
            out[k] = (kv, blocks)
    return out


def final_reads(nodes: Nodes, workload: Workload, history: History, timeout_ms: int) -> list[str]:
    """A linearizable read of every key and one listing of every pair, into the history: an
    acknowledged write that a crash lost surfaces here as a read the checker cannot explain."""
    problems: list[str] = []
    ops: list[Op] = [Get(key=k) for k in workload.all_keys()]
    ops.append(Blocks(site=None))
    with nodes.client(timeout_ms=timeout_ms, client_id=f"{workload.run_id}-final") as c:
        for op in ops:
            e = run_op(c, op, history)
            history.add(e)
            if e.operation.outcome != "ok":
                problems.append(f"{op!r}: {e.operation.outcome} ({e.error})")
    return problems
