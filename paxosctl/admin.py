"""``paxosctl view_log/data/status/leader/members/snapshot``: the log and each node's internals,
and ``snapshot save``: a backup.

These ask nodes about themselves (client-port queries), not the replicated state, so they
answer without a quorum: an operator debugging a broken cluster needs them most then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from paxosctl import render
from paxosctl.connect import ConfigOpt, EndpointsOpt, JsonOpt, KeyFileOpt, TimeoutOpt
from paxosctl.kv import (
    TIMEOUT_MS_DEFAULT,
    Failed,
    command_errors,
    connect,
    quote,
    result_line,
    show,
    show_text,
)
from paxosd.client.client import BadRequestError, Client, UnavailableError, statuses_json
from paxosd.net.admin import to_json
from paxosd.statemachine.commands import (
    BadCommand,
    Block,
    Blocks,
    Cas,
    Compact,
    Compare,
    Delete,
    Get,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseLeases,
    LeaseRevoke,
    LeaseTakeover,
    LeaseTimeToLive,
    Op,
    Put,
    Range,
    Scan,
    Txn,
    Unblock,
    View,
    decode_command,
    decode_result,
)

# The daemon answers at most 1000 stored rows per query (VIEW_LOG_ROWS_MAX); a slot can
# have two (its accepted and its decided row), so one query covers at most 500 slots.
VIEW_LOG_SLOTS_MAX = 500
FOLLOW_POLL_MS = 200
DIGEST_SHOWN_CHARS = 12

NodeOpt = Annotated[
    int | None,
    typer.Option("--node", min=1, help="Ask this node (its id); default: the first to answer."),
]

# ------------------------------------------------------------------------------ the log


def _flag(on: bool, text: str) -> str:
    return f" {text}" if on else ""


def _compare_text(c: Compare) -> str:
    operand = quote(show(c.value)) if c.target == "value" else str(c.number)
    return f"{c.target}({quote(show_text(c.key))}) {c.op} {operand}"


def describe(op: Op) -> tuple[str, str]:
    """An operation as its paxosctl command line (op name, safe text); a transaction as
    ``txn if COMPARES then OPS else OPS`` (its ops separated by ;)."""
    match op:
        case Put(key=k, value=v, prev_kv=prev_kv, lease=lease):
            text = f"put {quote(show_text(k))} {quote(show(v))}"
            text += _flag(lease > 0, f"--lease {lease}")
            return "put", text + _flag(prev_kv, "--prev-kv")
        case Get(key=k, revision=rev):
            return "get", f"get {quote(show_text(k))}" + _flag(rev > 0, f"--rev {rev}")
        case Delete(key=k, prefix=prefix, prev_kv=prev_kv):
            text = f"delete {quote(show_text(k))}" + _flag(prefix, "--prefix")
            return "delete", text + _flag(prev_kv, "--prev-kv")
        case Txn(compares=compares, success=success, failure=failure):
            parts = ["txn"]
            if compares:
                parts.append("if " + " and ".join(_compare_text(c) for c in compares))
            parts.append("then " + ("; ".join(describe(o)[1] for o in success) or "nothing"))
            if failure:
                parts.append("else " + "; ".join(describe(o)[1] for o in failure))
            return "txn", " ".join(parts)
        case Compact(revision=rev):
            return "compact", f"compact {rev}"
        case Cas(key=k, new=new, expect_value=ev, expect_version=evv):
            expect = (
                f"--expect-value {quote(show(ev))}" if ev is not None else f"--expect-version {evv}"
            )
            return "cas", f"cas {quote(show_text(k))} {quote(show(new))} {expect}"
        case Scan(prefix=prefix, limit=limit, revision=rev):
            text = f"scan --prefix {quote(show_text(prefix))} --limit {limit}"
            return "scan", text + _flag(rev > 0, f"--rev {rev}")
        case Range(start=start, end=end, limit=limit, revision=rev):
            text = f"range {quote(show_text(start))} {quote(show_text(end))} --limit {limit}"
            return "range", text + _flag(rev > 0, f"--rev {rev}")
        case Block(site=s, other=o):
            return "block", f"block {quote(show_text(s))} {quote(show_text(o))}"
        case Unblock(site=s, other=o):
            return "unblock", f"unblock {quote(show_text(s))} {quote(show_text(o))}"
        case Blocks(site=s):
            return "blocks", "blocks" if s is None else f"blocks --site {quote(show_text(s))}"
        case View(as_site=s, limit=limit):
            return "view", f"view --as {quote(show_text(s))} --limit {limit}"
        case LeaseGrant(ttl=ttl, lease_id=lease_id):
            return "lease grant", f"lease grant {ttl}" + _flag(lease_id > 0, f"--id {lease_id}")
        case LeaseRevoke(lease_id=lease_id):
            return "lease revoke", f"lease revoke {lease_id}"
        case LeaseKeepAlive(lease_id=lease_id):
            return "lease keep-alive", f"lease keep-alive {lease_id} --once"
        case LeaseTimeToLive(lease_id=lease_id, keys=keys):
            return "lease ttl", f"lease ttl {lease_id}" + _flag(keys, "--keys")
        case LeaseLeases():
            return "lease list", "lease list"
        # The leader's own lease commands (no paxosctl line: the daemon proposes them).
        case LeaseExpire(lease_id=lease_id, ballot_round=r, ballot_node=n):
            return "lease expire", f"(leader {r}.{n}) expire lease {lease_id}"
        case LeaseTakeover(ballot_round=r, ballot_node=n):
            return "lease takeover", f"(leader {r}.{n}) take the leases over"
        case LeaseCheckpoint(ballot_round=r, ballot_node=n, leases=items):
            shown = ", ".join(f"{i}: {ms} ms" for i, ms in items[:5])
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            return "lease checkpoint", f"(leader {r}.{n}) checkpoint {shown}{more}"
    raise AssertionError(f"unknown operation {op!r}")


def result_text(raw: bytes | None) -> str | None:
    """A result as one short line; None when this node no longer keeps it."""
    if raw is None:
        return None
    try:
        result = decode_result(raw)
    except BadCommand:
        return "undecodable result"
    text = result_line(result)
    return text if len(text) <= RESULT_CHARS_MAX else text[: RESULT_CHARS_MAX - 1] + "…"


def command_json(raw: bytes, result: bytes | None = None) -> dict[str, Any]:
    """One command of a slot's batch: who sent it, what it does, what it returned (when the
    node still keeps it). A command that does not decode is shown as such: replicas applied
    it as a deterministic "malformed" no-op."""
    try:
        cmd = decode_command(raw)
    except BadCommand as e:
        return {
            "client_id": None,
            "seq": None,
            "site": None,
            "op": "malformed",
            "command": str(e),
            "result": result_text(result),
        }
    name, text = describe(cmd.op)
    return {
        "client_id": cmd.client_id,
        "seq": cmd.seq,
        "site": cmd.site,
        "op": name,
        "command": text,
        "result": result_text(result),
    }


@dataclass(slots=True)
class Entry:
    slot: int
    state: str  # "decided" or "accepted" (accepted here, not known to be decided here)
    ballot: str | None
    value: list[bytes]
    results: list[bytes] | None = None

    def commands(self) -> list[dict[str, Any]]:
        results: list[bytes | None] = list(self.results or [])
        results += [None] * (len(self.value) - len(results))
        return [command_json(c, r) for c, r in zip(self.value, results, strict=False)]

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "state": self.state,
            "ballot": self.ballot,
            "commands": self.commands(),
        }


def merge_rows(rows: list[dict[str, Any]]) -> list[Entry]:
    """Stored rows -> one entry per slot. A decided slot shows the ballot this node accepted
    it at when the accepted value is the decided one; a node that learned the decision by
    catch-up (or voted for another value at an older ballot) has no such ballot: null."""
    by_slot: dict[int, Entry] = {}
    accepted: dict[int, tuple[str | None, list[bytes]]] = {}
    for r in rows:
        slot, value = int(r["slot"]), [bytes(v) for v in r["value"]]
        if r["kind"] == "decided":
            by_slot[slot] = Entry(slot, "decided", None, value)
        else:
            accepted[slot] = (r["ballot"], value)
    for slot, (ballot, value) in accepted.items():
        entry = by_slot.get(slot)
        if entry is None:
            by_slot[slot] = Entry(slot, "accepted", ballot, value)
        elif entry.value == value:
            entry.ballot = ballot
    return [by_slot[s] for s in sorted(by_slot)]


def _read_log(
    c: Client, lo: int, hi: int | None, slots: int, node: int | None
) -> tuple[list[Entry], dict[str, Any]]:
    page = c.view_log(lo, hi, 2 * slots, node=node)
    rows = [
        {"slot": r.slot, "kind": r.kind, "ballot": r.ballot, "value": r.value} for r in page.rows
    ]
    entries = merge_rows(rows)[:slots]
    for e in entries:
        kept = page.results.get(e.slot)
        if kept is not None:
            e.results = list(kept)
    data = {
        "node_id": page.node_id,
        "log_start": page.log_start,
        "decided_index": page.decided_index,
    }
    return entries, data


def _entry_lines(entries: list[Entry]) -> list[list[object]]:
    out: list[list[object]] = []
    for e in entries:
        commands = e.commands()
        if not commands:
            out.append([e.slot, e.state, e.ballot or "-", "-", "-", "no-op", "-"])
        for cmd in commands:
            client = "-" if cmd["client_id"] is None else f"{cmd['client_id']}#{cmd['seq']}"
            site = "-" if cmd["site"] is None else show_text(cmd["site"])
            result = cmd["result"] or "-"
            row = [
                e.slot,
                e.state,
                e.ballot or "-",
                site,
                show_text(client),
                cmd["command"],
                result,
            ]
            out.append(row)
    return out


LOG_COLUMNS = ["slot", "state", "ballot", "site", "client", "command", "result"]
RESULT_CHARS_MAX = 60


@command_errors
def view_log(
    from_slot: Annotated[
        int | None, typer.Option("--from", min=1, help="First slot (default: the newest ones).")
    ] = None,
    to_slot: Annotated[
        int | None, typer.Option("--to", min=1, help="Last slot; with --follow, stop after it.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=VIEW_LOG_SLOTS_MAX, help="At most N slots.")
    ] = 50,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing slots as they are decided (Ctrl-C)."),
    ] = False,
    node: NodeOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Print one node's log: slot, state, ballot, origin site, client, command, result.

    One row per command of each slot's batch: the slot, its state, the ballot this node
    accepted it at (- when it learned the decision without voting for it), the origin
    site, the client (id#seq) and the command. An empty batch is a no-op (a gap a new
    leader filled).

    Results are not stored in the log (every replica computes the same ones by applying
    it): each node keeps those of its recent applied slots in memory (at most 10,000 slots,
    100,000 commands and 8 MiB of results; a restart's replay recomputes them) and shows "-"
    for older ones. Slots compacted into a snapshot
    are gone from the log (see "log start" in paxosctl data).

    Without --from: the newest --limit slots. Also reachable as view-log.

    JSON: {"node_id", "log_start", "decided_index", "entries": [{"slot", "state",
    "ballot", "commands": [{"client_id", "seq", "site", "op", "command", "result"}]}]}. With
    --follow: one entry object per line (JSON Lines).

    Example: paxosctl view_log --from 1 --to 20 --node 2

    Example: paxosctl view-log --follow
    """
    if from_slot is not None and to_slot is not None and to_slot < from_slot:
        raise BadRequestError(f"--to {to_slot} is before --from {from_slot}")
    with connect(endpoints, key_file, config, timeout_ms) as c:
        lo, asked = from_slot, node
        if lo is None:
            if to_slot is not None:
                lo = max(1, to_slot - limit + 1)
            else:
                st = c.status(node=node)
                asked = st.node_id  # the same node for the read that follows
                lo = max(st.log_start, st.decided_index - limit + 1, 1)
        entries, data = _read_log(c, lo, to_slot, limit, asked)
        if follow:
            # Decided slots are equal on every node, so following may fail over (no --node).
            _follow(c, (entries, data), node, lo, to_slot, json_out)
            return
    if json_out:
        render.emit_json(
            {
                "node_id": data["node_id"],
                "log_start": data["log_start"],
                "decided_index": data["decided_index"],
                "entries": [e.to_json() for e in entries],
            }
        )
        return
    title = (
        f"log of node {data['node_id']} (log start {data['log_start']}, "
        f"decided through {data['decided_index']})"
    )
    render.text_table(title, LOG_COLUMNS, _entry_lines(entries))
    if entries and lo < int(data["log_start"]) <= entries[0].slot:
        render.note(f"slots before {data['log_start']} were compacted into a snapshot")


def _follow(
    c: Client,
    first: tuple[list[Entry], dict[str, Any]],
    node: int | None,
    lo: int,
    to_slot: int | None,
    json_out: bool,
) -> None:
    """Print decided slots in slot order as they are decided, up to the node's decided
    index (its contiguous decided prefix). An accepted-only slot holds the output back:
    another value may still be chosen for it. Ends after --to, or on Ctrl-C (exit 0)."""
    next_slot = lo
    pending, data = first
    try:
        # Endless by request (--follow without --to); each poll is bounded by --timeout-ms.
        while True:
            for e in pending:
                if e.slot < next_slot:
                    continue
                if e.state != "decided" or e.slot > int(data["decided_index"]):
                    break
                if e.slot > next_slot:
                    # Below the decided index only compaction leaves a hole.
                    render.note(f"slots {next_slot}..{e.slot - 1} were compacted into a snapshot")
                if json_out:
                    render.json_line(e.to_json(), compact=False, flush=True)
                else:
                    for line in _entry_lines([e]):
                        render.line("  ".join(str(x) for x in line))
                next_slot = e.slot + 1
            if to_slot is not None and next_slot > to_slot:
                return
            time.sleep(FOLLOW_POLL_MS / 1000)
            pending, data = _read_log(c, next_slot, to_slot, VIEW_LOG_SLOTS_MAX, node)
    except KeyboardInterrupt:
        return


# ------------------------------------------------------------------------------ one node


@command_errors
def data(
    node: NodeOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """One node's Paxos internals: promised ballot, open slots, decided/applied/snapshot.

    Role, promised ballot, its own ballot, decided, applied and snapshot index, where its
    log starts, and the slots it accepted that it does not yet know to be decided (with
    their ballot and commands).

    JSON: {"node_id", "role", "leader", "promised", "ballot", "decided_index",
    "applied_index", "snapshot_index", "log_start", "digest", "accepted_not_decided":
    [{"slot", "state", "ballot", "commands"}]}.

    Example: paxosctl data --node 1
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        st = to_json(c.status(node=node))
        open_slots = [int(s) for s in st["accepted_not_decided"]]
        accepted: list[Entry] = []
        if open_slots:
            entries, _ = _read_log(
                c, open_slots[0], open_slots[-1], VIEW_LOG_SLOTS_MAX, int(st["node_id"])
            )
            accepted = [e for e in entries if e.state == "accepted"]
    info = {
        "node_id": st["node_id"],
        "role": st["role"],
        "leader": st["leader"],
        "promised": st["promised"],
        "ballot": st["ballot"],
        "decided_index": st["decided_index"],
        "applied_index": st["applied_index"],
        "snapshot_index": st["snapshot_index"],
        "log_start": st["log_start"],
        "digest": st["digest"],
        "accepted_not_decided": [e.to_json() for e in accepted],
    }
    if json_out:
        render.emit_json(info)
        return
    rows = [[k.replace("_", " "), "-" if v is None else v] for k, v in info.items()]
    rows[-1][1] = ", ".join(str(e.slot) for e in accepted) or "none"
    render.text_table(f"node {st['node_id']}", ["", ""], rows, header=False)
    if accepted:
        render.text_table("accepted, not known decided", LOG_COLUMNS, _entry_lines(accepted))


# ------------------------------------------------------------------------------ the cluster


def _size(n: object) -> str:
    """Bytes for people: 512 B, 3.4 KiB, 12.0 MiB, 1.5 GiB."""
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _ago(ms: object) -> str:
    if not isinstance(ms, int):
        return "-"
    return f"{ms} ms ago" if ms < 10_000 else f"{ms / 1000:.0f} s ago"


def digest_mismatches(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes that applied the same prefix must have the same digest; any difference means
    the replicas diverged (a safety bug or a corrupted disk), never mere lag."""
    by_index: dict[int, dict[str, str]] = {}
    for n in nodes:
        if "error" not in n:
            by_index.setdefault(int(n["applied_index"]), {})[str(n["node_id"])] = n["digest"]
    return [
        {"applied_index": index, "digests": digests}
        for index, digests in sorted(by_index.items())
        if len(set(digests.values())) > 1
    ]


def _ballot_key(answer: dict[str, Any]) -> tuple[int, int]:
    """Ballots print as "round.node"; compare them as numbers, not text ("10.1" > "9.3")."""
    round_, _, node = str(answer.get("ballot", "0.0")).partition(".")
    try:
        return int(round_), int(node or 0)
    except ValueError:
        return 0, 0


def status_rows(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of ``status``, from every endpoint's answer to the "status" query."""
    ok = [a for a in answers if "error" not in a]
    leaders = sorted((a for a in ok if a.get("role") == "leader"), key=_ballot_key)
    leader = leaders[-1] if leaders else None
    reference = (
        int(leader["decided_index"])
        if leader
        else max((int(a["decided_index"]) for a in ok), default=0)
    )
    acks: dict[str, int] = dict(leader.get("peer_last_ack_ms_ago", {})) if leader else {}
    missing = sorted(set(acks) - {str(a["node_id"]) for a in ok})
    down = [a for a in answers if "error" in a]
    nodes: list[dict[str, Any]] = []
    for a in answers:
        if "error" in a:
            # A node that does not answer cannot say its id; when one node is down and the
            # leader misses one peer, they are the same node.
            guess = int(missing[0]) if len(missing) == 1 and len(down) == 1 else None
            nodes.append(
                {
                    "node_id": guess,
                    "address": a["endpoint"],
                    "role": "unreachable",
                    "error": a["error"],
                    "last_contact_ms_ago": acks.get(str(guess)) if guess else None,
                }
            )
            continue
        nid = int(a["node_id"])
        is_leader = leader is not None and a is leader
        nodes.append(
            {
                "node_id": nid,
                "address": a["endpoint"],
                "role": a["role"],
                "ballot": a["ballot"],
                "decided_index": a["decided_index"],
                "applied_index": a["applied_index"],
                "lag": max(0, reference - int(a["applied_index"])),
                "revision": a.get("revision", 0),
                "compact_revision": a.get("compact_revision", 0),
                "digest": a["digest"],
                "last_contact_ms_ago": 0 if is_leader else acks.get(str(nid)),
                "watchers": a.get("watchers", 0),
                "watchers_catching_up": a.get("watchers_catching_up", 0),
                "watchers_canceled_compacted": a.get("watchers_canceled_compacted", 0),
                "db_bytes": a.get("db_bytes", 0),
                "disk_free_bytes": a.get("disk_free_bytes", 0),
                "disk_full": bool(a.get("disk_full", False)),
                "store_bytes": a.get("store_bytes", 0),
                "quota_bytes": a.get("quota_bytes", 0),
                "alarms": list(a.get("alarms", [])),
            }
        )
    mismatches = digest_mismatches(nodes)
    return {
        "leader": None if leader is None else leader["node_id"],
        "nodes": nodes,
        "digests_agree": not mismatches,
        "mismatches": mismatches,
    }


def _watchers(n: dict[str, Any]) -> str:
    """``3``, or ``3 (1 catching up, 2 compacted)`` when some are behind or were cut."""
    extra = []
    if n["watchers_catching_up"]:
        extra.append(f"{n['watchers_catching_up']} catching up")
    if n["watchers_canceled_compacted"]:
        extra.append(f"{n['watchers_canceled_compacted']} compacted")
    return f"{n['watchers']}" + (f" ({', '.join(extra)})" if extra else "")


@command_errors
def status(
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """One row per node: role, ballot, decided/applied index, lag, revision, compact
    revision, digest, last contact, database size and free disk.

    Lag: slots its applied index is behind the leader's decided one. Revision: the store
    revision the node has applied; compacted: the oldest revision its history still holds
    (0: never compacted; older ones cannot be read with --rev). Last contact: how long ago
    the leader last heard from it. Watchers: the watches the node serves, with how many are
    catching up from history (slow readers) and how many compaction canceled. A node whose
    disk filled has role "disk-full": it neither votes nor serves until space is freed,
    then rejoins by itself.

    Nodes at the same applied index must have the same digest: a mismatch is printed
    loudly and exits 1. Exit 3 if no node answers.

    JSON: {"leader", "nodes": [{"node_id", "address", "role", "ballot", "decided_index",
    "applied_index", "lag", "revision", "compact_revision", "digest",
    "last_contact_ms_ago", "watchers", "watchers_catching_up",
    "watchers_canceled_compacted", "db_bytes", "disk_free_bytes", "disk_full", "store_bytes",
    "quota_bytes", "alarms": [{"member", "alarm"}]}], "digests_agree",
    "mismatches": [{"applied_index", "digests": {"<node_id>": "<digest>"}}]}; a node that
    does not answer has "role": "unreachable" and "error" instead of the indexes.

    Example: paxosctl status --json
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        answers = statuses_json(c)
    if all("error" in a for a in answers):
        raise UnavailableError(
            "no node answered: " + "; ".join(f"{a['endpoint']}: {a['error']}" for a in answers)
        )
    out = status_rows(answers)
    if json_out:
        render.emit_json(out)
    else:
        bad = {n for m in out["mismatches"] for n in m["digests"]}
        rows = []
        for n in out["nodes"]:
            if n["role"] == "unreachable":
                rows.append(
                    [
                        n["node_id"] or "?",
                        n["address"],
                        "UNREACHABLE",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        _ago(n["last_contact_ms_ago"]),
                        "-",
                        "-",
                        "-",
                    ]
                )
                continue
            digest = n["digest"][:DIGEST_SHOWN_CHARS]
            if str(n["node_id"]) in bad:
                digest += " MISMATCH"
            rows.append(
                [
                    n["node_id"],
                    n["address"],
                    n["role"],
                    n["ballot"],
                    n["decided_index"],
                    n["applied_index"],
                    n["lag"],
                    n["revision"],
                    n["compact_revision"],
                    digest,
                    "-" if n["role"] == "leader" else _ago(n["last_contact_ms_ago"]),
                    _watchers(n),
                    _size(n["db_bytes"]),
                    _size(n["disk_free_bytes"]) + (" FULL" if n["disk_full"] else ""),
                ]
            )
        render.text_table(
            None,
            [
                "node",
                "address",
                "role",
                "ballot",
                "decided",
                "applied",
                "lag",
                "revision",
                "compacted",
                "digest",
                "last contact",
                "watchers",
                "db",
                "disk free",
            ],
            rows,
        )
        for n in out["nodes"]:
            if n["role"] == "unreachable":
                render.note(f"unreachable: {n['error']}")
            elif n["disk_full"]:
                render.note(
                    f"node {n['node_id']}: disk full: it neither votes nor serves until space "
                    "is freed on its data dir's file system, then rejoins by itself"
                )
        raised = {
            (a["member"], a["alarm"])
            for n in out["nodes"]
            if n["role"] != "unreachable"
            for a in n["alarms"]
        }
        for member, alarm in sorted(raised):
            render.note(
                f"alarm {alarm} raised by node {member}: writes that add data are refused "
                "(delete or compact, then paxosctl alarm disarm)"
            )
        if out["leader"] is None:
            render.note(
                "no leader: writes and linearizable reads fail until one is elected (exit 3)"
            )
    if out["mismatches"]:
        for m in out["mismatches"]:
            parts = ", ".join(f"node {k} {v[:DIGEST_SHOWN_CHARS]}" for k, v in m["digests"].items())
            render.rich_note(
                f"DIGEST MISMATCH at applied index {m['applied_index']}: {parts}",
                style="bold red",
                markup=False,
            )
        raise Failed("replicas diverged: equal applied index, different state digest")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the paxosctl root (one line in app.py)."""
    for fn in (status, data, view_log):
        app.command(fn.__name__, rich_help_panel="Log and cluster")(fn)
    # The labs spell it view_log; shells and etcdctl habits spell it view-log.
    app.command("view-log", hidden=True, rich_help_panel="Log and cluster")(view_log)
