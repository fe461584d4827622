"""``paxosctl put/get/delete/cas/scan``, and the plumbing every data and admin command shares.

A command parses, makes one ``paxosd.client.client`` call and renders. The shared parts live here
(social.py and admin.py import them) so that there is exactly one mapping from failures to
exit codes, one way to show bytes that may not be text, and one JSON shape for a value.
"""

from __future__ import annotations

import base64
import functools
import os
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from paxosctl import render
from paxosctl.connect import (
    ConfigOpt,
    ConnectError,
    EndpointsOpt,
    JsonOpt,
    KeyFileOpt,
    SiteOpt,
    TimeoutOpt,
    open_client,
)
from paxosd.client.client import (
    AuthError,
    BadRequestError,
    CasMismatchError,
    Client,
    ClientError,
    CompactedError,
    FutureRevisionError,
    Header,
    NotFoundError,
    UnavailableError,
    check_revision,
)
from paxosd.client.errors import NoSpaceError
from paxosd.client.txn import cas_result, cas_txn
from paxosd.statemachine.commands import (
    SCAN_LIMIT_MAX,
    Alarms,
    BlockList,
    CasMismatch,
    Changed,
    Compact,
    Compacted,
    Delete,
    Deleted,
    Found,
    Full,
    FutureRevision,
    Get,
    KeyValue,
    LeaseGranted,
    LeaseInfo,
    LeaseKept,
    LeaseList,
    LeaseNotFound,
    LeaseRefused,
    LeaseRevoked,
    LeaseTakenOver,
    Malformed,
    NoSpace,
    NotFound,
    Op,
    Put,
    Result,
    RevisionCompacted,
    Rows,
    Scan,
    Stale,
    Timeline,
    TxnRefused,
    TxnResult,
    Written,
)

P = ParamSpec("P")
R = TypeVar("R")

TIMEOUT_MS_DEFAULT = 5000
# Error lines are one line; a server message longer than this is cut, not wrapped.
ERROR_CHARS_MAX = 500

# ------------------------------------------------------------------------------ failures


class Failed(Exception):
    """A command's own "no": not found, CAS mismatch, digest mismatch (exit 1)."""


def _one_line(message: str) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= ERROR_CHARS_MAX else text[: ERROR_CHARS_MAX - 3] + "..."


def failure(e: BaseException) -> tuple[str, int] | None:
    """A user or cluster problem as (one-line message, documented exit code); None for
    anything else (a programming error, which must keep its traceback)."""
    code: int
    # A command's own "no": absent, mismatch, a revision compacted or not reached yet.
    refused = CompactedError | FutureRevisionError
    if isinstance(e, NotFoundError | CasMismatchError | Failed | refused):
        message, code = str(e), render.EXIT_FAILED_CHECK
    elif isinstance(e, BadRequestError | ConnectError):
        message, code = str(e), render.EXIT_USAGE
    elif isinstance(e, AuthError):
        message, code = f"authentication failed: {e}", render.EXIT_AUTH
    elif isinstance(e, UnavailableError):
        message, code = f"unavailable: {e}", render.EXIT_UNAVAILABLE
    elif isinstance(e, ClientError):
        message, code = str(e), render.EXIT_UNAVAILABLE
    elif isinstance(e, OSError):
        message, code = f"{e.strerror or e}", render.EXIT_UNAVAILABLE
    elif isinstance(e, KeyboardInterrupt):
        message, code = "interrupted", 130
    else:
        return None
    return show_text(_one_line(message)), code


def command_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The one boundary between paxosctl and its users: every user or cluster problem
    becomes one line on stderr and a documented exit code, never a traceback. Programming
    errors are not caught here, so they still show their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (ClientError, ConnectError, Failed, OSError, KeyboardInterrupt) as e:
            found = failure(e)
            assert found is not None
            message, code = found
        render.error_text(message)
        raise typer.Exit(code)

    return wrapper


@contextmanager
def connect(
    endpoints: str | None,
    key_file: Path | None,
    config: Path | None,
    timeout_ms: int,
    site: str | None = None,
) -> Iterator[Client]:
    client = open_client(endpoints, key_file, config, timeout_ms=timeout_ms, site=site)
    try:
        yield client
    finally:
        client.close()


def result_line(result: Result) -> str:
    """A command's result as paxosctl prints it: one renderer for the commands (put, get,
    cas, delete) and for the results view_log shows, so both read the same."""
    match result:
        case Written(version=v):
            return f"OK (version {v})"
        case Found(value=value):
            return show(value)
        case NotFound():
            return "not found"
        case Deleted(prior_version=0):
            return "not found (nothing deleted)"
        case Deleted(deleted=n) if n > 1:
            return f"OK (deleted {n} keys)"
        case Deleted(prior_version=v):
            return f"OK (deleted version {v})"
        case CasMismatch(value=value, version=v):
            if value is None:
                return "mismatch: the key is absent"
            return f"mismatch: current version {v}, value {shlex.quote(show(value))}"
        case Rows(rows=rows, more=more):
            return f"{len(rows)} rows" + (" (more)" if more else "")
        case Changed(changed=changed):
            return "OK" if changed else "OK (no change)"
        case BlockList(pairs=pairs):
            return f"{len(pairs)} blocks"
        case Timeline(posts=posts, more=more):
            return f"{len(posts)} posts" + (" (more)" if more else "")
        case TxnResult(succeeded=ok, responses=responses):
            outcome = "SUCCESS" if ok else "FAILURE"
            return f"{outcome} ({len(responses)} responses)"
        case Compacted(compact_revision=c):
            return f"compacted revision {c}"
        case Alarms(alarms=alarms):
            raised = ", ".join(f"memberID:{a.member} alarm:{a.alarm}" for a in alarms)
            return f"alarms: {raised}" if alarms else "alarms: none"
        case RevisionCompacted(compact_revision=c, revision=r):
            return f"refused: revision {r} was compacted (oldest readable {c})"
        case FutureRevision(revision=r):
            return f"refused: a future revision (the store is at {r})"
        case TxnRefused(reason=reason):
            return f"refused: {show_text(reason)}"
        case LeaseGranted(id=lease_id, ttl=ttl):
            return f"lease {lease_id} granted with TTL({ttl}s)"
        case LeaseRevoked(id=lease_id, deleted=n):
            return f"lease {lease_id} revoked ({n} keys deleted)"
        case LeaseNotFound(id=lease_id):
            return f"lease {lease_id} not found"
        case LeaseRefused(reason=reason):
            return f"refused: {show_text(reason)}"
        case LeaseKept(id=lease_id, ttl=ttl):
            return f"lease {lease_id} keepalived with TTL({ttl})"
        case LeaseInfo(id=lease_id, ttl=ttl, granted_ttl=granted):
            return f"lease {lease_id} granted with TTL({granted}s), remaining({ttl}s)"
        case LeaseList(ids=ids):
            return f"found {len(ids)} leases"
        case LeaseTakenOver(leases=n):
            return f"OK ({n} leases)"
    return str(unexpected(result))


def unexpected(result: Result) -> ClientError:
    """A result that does not answer the command sent. Stale/Malformed/Full are the state
    machine refusing it; anything else is a server bug worth reporting verbatim."""
    match result:
        case NoSpace(size_bytes=size, quota_bytes=quota):
            return NoSpaceError(size, quota)
        case Full(what=what):
            return UnavailableError(f"the cluster's {what} bound is reached; nothing changed")
        case Malformed(reason=reason):
            return BadRequestError(f"the cluster refused the command: {reason}")
        case Stale(last_seq=seq):
            return BadRequestError(f"the session already moved past this request (seq {seq})")
    return BadRequestError("the server answered with a result this command does not expect")


# ------------------------------------------------------------------------------ bytes and text


def value_json(value: bytes) -> dict[str, str]:
    """The stable JSON shape of a value: text when it is UTF-8, else base64 (marked)."""
    try:
        return {"value": value.decode("utf-8"), "value_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode("ascii"), "value_encoding": "base64"}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x20 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029":
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    return ch


def show_text(text: str) -> str:
    """Text that is safe on a terminal: control characters (escape sequences) are escaped."""
    if text.isprintable():
        return text
    return "".join(_escape_char(c) for c in text)


def show(value: bytes) -> str:
    """Bytes for people: UTF-8 as text, other bytes as \\xNN escapes, controls escaped."""
    return show_text(value.decode("utf-8", errors="backslashreplace"))


def arg_bytes(text: str) -> bytes:
    """A command-line value as the bytes the user typed: Python decoded argv with
    surrogateescape, so encoding back the same way round-trips values that are not UTF-8."""
    return os.fsencode(text)


# ------------------------------------------------------------------------------ output


# ------------------------------------------------------------------------------ answers


@dataclass(frozen=True, slots=True)
class Answer:
    """A command's result, ready for people and for scripts. Built once from the cluster's
    result by the command's ``answer`` function, so that the single command and ``batch``
    show the same thing."""

    json: dict[str, Any]
    # Lines for people on stdout (a table's commands leave this empty and set table).
    lines: tuple[str, ...] = ()
    # (title, columns, rows) for results that are lists.
    table: tuple[str | None, tuple[str, ...], list[list[object]]] | None = None
    # Remarks for stderr ("this read may be stale", "more keys match").
    notes: tuple[str, ...] = ()
    # Whether the single command's --json carries the answer's "header" (with_header).
    header: bool = False


def with_header(answer: Answer, header: Header | None) -> Answer:
    """``answer`` with the header of the reply it came from in its JSON, when it takes one:
    {"revision", "leader", "ballot", "node"}, etcd's ResponseHeader."""
    if not answer.header or header is None:
        return answer
    return replace(answer, json={**answer.json, "header": header.to_json()})


def render_answer(answer: Answer, json_out: bool) -> None:
    """The one way a single command prints its answer."""
    if json_out:
        render.emit_json(answer.json)
        return
    for line in answer.lines:
        render.line(line)
    if answer.table is not None:
        title, columns, rows = answer.table
        render.text_table(title, columns, rows)
    for line in answer.notes:
        render.note(line)


@dataclass(frozen=True, slots=True)
class Spec:
    """How a data command turns its parsed parameters into one operation, and the result
    back into an ``Answer``: shared by the command itself and by ``paxosctl batch``.

    ``build(params, site)`` makes the operation; ``answer(params, result)`` raises the
    command's failure (not found, mismatch, ...) or returns what to show; ``writes`` names
    the key or pair a write changes, so ``batch`` knows which consecutive writes are
    independent (None for a read, which ``batch`` never reorders)."""

    build: Callable[[dict[str, Any]], Op]
    answer: Callable[[dict[str, Any], Result], Answer]
    writes: Callable[[dict[str, Any]], str | None] | None = None


def execute(
    spec: Spec,
    params: dict[str, Any],
    *,
    endpoints: str | None,
    key_file: Path | None,
    config: Path | None,
    timeout_ms: int,
    site: str | None = None,
) -> Answer:
    """Run one data command over its own connection (the single-command path)."""
    with connect(endpoints, key_file, config, timeout_ms, site) as c:
        result = c.execute(spec.build(params))
        header = c.last_header
    return with_header(spec.answer(params, result), header)


# ------------------------------------------------------------------------------ key-value

KeyArg = Annotated[
    str, typer.Argument(metavar="KEY", help="The key (UTF-8 text).", show_default=False)
]
ValueArg = Annotated[
    str,
    typer.Argument(
        metavar="VALUE", help="The value; any bytes the shell passes.", show_default=False
    ),
]
RevOpt = Annotated[
    int,
    typer.Option(
        "--rev",
        min=0,
        help="Read the store as it was at this revision (0: now). Exit 1 if the revision "
        "was compacted or is in the future.",
    ),
]
PrevKvOpt = Annotated[
    bool,
    typer.Option("--prev-kv", help="Also show the key as it was before this change."),
]


def kv_json(kv: KeyValue) -> dict[str, Any]:
    """A key with its value and revisions (etcd's KeyValue), as --json shows it."""
    return {
        "key": kv.key,
        **value_json(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def kv_lines(kv: KeyValue) -> tuple[str, str]:
    """A key as etcdctl prints one: its key on one line, its value on the next."""
    return show_text(kv.key), show(kv.value)


def _written(params: dict[str, Any], result: Result) -> Answer:
    check_revision(result)  # a lease that does not exist: LeaseNotFoundError, exit 1
    if not isinstance(result, Written):
        raise unexpected(result)
    lines = [result_line(result)]
    out: dict[str, Any] = {"key": params["key"], "version": result.version}
    if params.get("prev_kv"):
        out["prev_kv"] = None if result.prev is None else kv_json(result.prev)
        if result.prev is not None:
            lines.extend(kv_lines(result.prev))
    out["revision"] = result.revision
    return Answer(out, tuple(lines), header=True)


PUT = Spec(
    build=lambda p: Put(
        key=p["key"],
        value=arg_bytes(p["value"]),
        prev_kv=bool(p.get("prev_kv")),
        lease=int(p.get("lease") or 0),
    ),
    answer=_written,
    writes=lambda p: "key " + p["key"],
)


@command_errors
def put(
    key: KeyArg,
    value: ValueArg,
    prev_kv: PrevKvOpt = False,
    lease: Annotated[
        int,
        typer.Option(
            "--lease",
            min=0,
            metavar="ID",
            help="Attach the key to this lease (see `paxosctl lease`): deleted when the "
            "lease is revoked or expires. Exit 1 if the lease does not exist.",
        ),
    ] = 0,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Set KEY to VALUE through the log; prints the key's new version.

    A put is also a post on the replicated timeline (see `paxosctl view`), authored by --site.
    --prev-kv also prints the key as it was (its key, then its value), as etcdctl does.

    JSON: {"key", "version", "revision", "header"}, and "prev_kv" (a key with "value",
    "create_revision", "mod_revision", "version", "lease"; null if it was absent) with
    --prev-kv. "revision" is the store revision of this write (the key's mod_revision).

    Example: paxosctl put greeting hello --site paris
    """
    params = {"key": key, "value": value, "prev_kv": prev_kv, "lease": lease}
    answer = execute(
        PUT,
        params,
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
        site=site,
    )
    render_answer(answer, json_out)


def _found(params: dict[str, Any], result: Result) -> Answer:
    key = params["key"]
    rev = int(params.get("rev") or 0)
    where = params.get("where") or {"node_id": None, "applied_index": None}
    stale = bool(params.get("stale"))
    check_revision(result, rev)
    if isinstance(result, NotFound):
        at = f" at revision {rev}" if rev else ""
        raise NotFoundError(f"key {key!r} not found{at}")
    if not isinstance(result, Found):
        raise unexpected(result)
    notes: tuple[str, ...] = ()
    if stale:
        notes = (
            f"stale read from node {where['node_id']} at applied index "
            f"{where['applied_index']}: it may lag the cluster",
        )
    return Answer(
        {
            "key": key,
            **value_json(result.value),
            "version": result.version,
            "create_revision": result.create_revision,
            "mod_revision": result.mod_revision,
            "lease": result.lease,
            "stale": stale,
            "node_id": where["node_id"],
            "applied_index": where["applied_index"],
        },
        (result_line(result),),
        notes=notes,
        header=True,
    )


GET = Spec(build=lambda p: Get(key=p["key"], revision=int(p.get("rev") or 0)), answer=_found)


@command_errors
def get(
    key: KeyArg,
    rev: RevOpt = 0,
    stale: Annotated[
        bool,
        typer.Option(
            "--stale",
            help="Read the contacted node's applied state without a log round: fast, works "
            "without a quorum, may be behind (it says so).",
        ),
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write the value's exact bytes, no newline.")
    ] = False,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Print KEY's value (linearizable, by read-index). Exit 1 if it is absent.

    Read-index: the leader confirms it still leads with one heartbeat round, then answers
    once it has applied the log that far; the read itself is not written to the log.

    --rev R reads KEY as it was at store revision R: exit 1 with the oldest readable
    revision if R was compacted, or if R is newer than the store.

    Values that are not UTF-8 print as \\xNN escapes; --raw writes the bytes, --json base64.

    JSON: {"key", "value", "value_encoding": "utf-8"|"base64", "version",
    "create_revision", "mod_revision", "lease", "stale", "node_id", "applied_index",
    "header": {"revision", "leader", "ballot", "node"}} (node_id and applied_index are null
    unless --stale).

    Example: paxosctl get greeting --rev 7
    """
    params: dict[str, Any] = {"key": key, "stale": stale, "rev": rev}
    with connect(endpoints, key_file, config, timeout_ms) as c:
        if stale:
            result, params["where"] = c.stale_read_at(GET.build(params))
        else:
            result = c.execute(GET.build(params))
        answer = with_header(_found(params, result), c.last_header)
    if raw and not json_out:
        assert isinstance(result, Found)
        for line in answer.notes:
            render.note(line)
        render.raw(result.value)
        return
    render_answer(answer, json_out)


def _deleted(params: dict[str, Any], result: Result) -> Answer:
    key = params["key"]
    prefix = bool(params.get("prefix"))
    if not isinstance(result, Deleted):
        raise unexpected(result)
    if result.prior_version == 0 and not prefix:
        raise NotFoundError(f"key {key!r}: {result_line(result)}")
    out: dict[str, Any] = {
        "key": key,
        "prior_version": result.prior_version,
        "deleted": result.deleted,
        "revision": result.revision,
    }
    lines = [f"OK (deleted {result.deleted} keys)" if prefix else result_line(result)]
    if params.get("prev_kv"):
        out["prev_kvs"] = [kv_json(kv) for kv in result.prev]
        for kv in result.prev:
            lines.extend(kv_lines(kv))
    return Answer(out, tuple(lines), header=True)


DELETE = Spec(
    build=lambda p: Delete(
        key=p["key"], prefix=bool(p.get("prefix")), prev_kv=bool(p.get("prev_kv"))
    ),
    answer=_deleted,
    # A prefix delete touches keys no one named: it runs alone, like a read.
    writes=lambda p: None if p.get("prefix") else "key " + p["key"],
)


@command_errors
def delete(
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY",
            help="The key (UTF-8 text); with --prefix, the prefix (may be empty: every key).",
            show_default=False,
        ),
    ],
    prefix: Annotated[
        bool,
        typer.Option(
            "--prefix", help="Remove every key that starts with KEY, all at one revision."
        ),
    ] = False,
    prev_kv: Annotated[
        bool, typer.Option("--prev-kv", help="Also show the removed keys and their values.")
    ] = False,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Remove KEY through the log. Exit 1 if it was already absent (nothing changed).

    --prefix removes every key starting with KEY at one revision and prints how many; none
    is not an error then (as etcdctl). --prev-kv also prints each removed key, then its
    value.

    JSON: {"key", "prior_version", "deleted", "revision", "header"}, and "prev_kvs" (the
    removed keys, as get --json shows one) with --prev-kv. "revision" is the store revision
    after the delete (unchanged when nothing was removed).

    Example: paxosctl delete --prefix user/ --prev-kv
    """
    answer = execute(
        DELETE,
        {"key": key, "prefix": prefix, "prev_kv": prev_kv},
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
        site=site,
    )
    render_answer(answer, json_out)


def _cas_op(p: dict[str, Any]) -> Op:
    """A cas is a transaction (compare, then put, else get): see paxosd.client.txn."""
    expect_value, expect_version = p.get("expect_value"), p.get("expect_version")
    if (expect_value is None) == (expect_version is None):
        raise BadRequestError("give exactly one of --expect-value and --expect-version")
    return cas_txn(
        p["key"],
        arg_bytes(p["new"]),
        expect_value=None if expect_value is None else arg_bytes(expect_value),
        expect_version=expect_version,
    )


def _swapped(params: dict[str, Any], result: Result) -> Answer:
    result = cas_result(result)
    if isinstance(result, CasMismatch):
        raise CasMismatchError(f"cas on key {params['key']!r}: {result_line(result)}", result)
    if not isinstance(result, Written):
        raise unexpected(result)
    return Answer({"key": params["key"], "version": result.version}, (result_line(result),))


CAS = Spec(build=_cas_op, answer=_swapped)


@command_errors
def cas(
    key: KeyArg,
    new: Annotated[
        str, typer.Argument(metavar="VALUE", help="The value to set.", show_default=False)
    ],
    expect_value: Annotated[
        str | None,
        typer.Option("--expect-value", help="Swap only if KEY holds exactly this value."),
    ] = None,
    expect_version: Annotated[
        int | None,
        typer.Option(
            "--expect-version",
            min=0,
            help="Swap only if KEY is at this version (0: only if KEY is absent).",
        ),
    ] = None,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Compare-and-swap: set KEY to NEW only if one expectation holds. Exit 1 on mismatch.

    Give exactly one of --expect-value and --expect-version. It runs as one transaction
    (see `paxosctl txn`): compare, then put, else read the key to show what it holds.

    JSON: {"key", "version"} (the new version).

    Example: paxosctl cas counter 2 --expect-value 1
    """
    params = {
        "key": key,
        "new": new,
        "expect_value": expect_value,
        "expect_version": expect_version,
    }
    _cas_op(params)  # a usage error is found before connecting
    answer = execute(
        CAS,
        params,
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
        site=site,
    )
    render_answer(answer, json_out)


def _rows(params: dict[str, Any], result: Result) -> Answer:
    check_revision(result, int(params.get("rev") or 0))
    if not isinstance(result, Rows):
        raise unexpected(result)
    notes: list[str] = []
    if result.more:
        notes.append(f"more keys match {params['prefix']!r}: narrow --prefix or raise --limit")
    if params.get("stale"):
        notes.append("stale read: the contacted node's state, which may lag the cluster")
    return Answer(
        {
            "rows": [
                {
                    "key": r.key,
                    "version": r.version,
                    **value_json(r.value),
                    "create_revision": r.create_revision,
                    "mod_revision": r.mod_revision,
                    "lease": r.lease,
                }
                for r in result.rows
            ],
            "more": result.more,
        },
        table=(
            None,
            ("key", "version", "value"),
            [[show_text(r.key), r.version, show(r.value)] for r in result.rows],
        ),
        notes=tuple(notes),
        header=True,
    )


SCAN = Spec(
    build=lambda p: Scan(prefix=p["prefix"], limit=p["limit"], revision=int(p.get("rev") or 0)),
    answer=_rows,
)


@command_errors
def scan(
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys starting with this.")] = "",
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=SCAN_LIMIT_MAX, help="At most this many rows.")
    ] = 100,
    rev: RevOpt = 0,
    stale: Annotated[
        bool, typer.Option("--stale", help="Read the contacted node's state, no log round.")
    ] = False,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """List keys in key order with their version and value.

    "more" (JSON) or a closing note (table) says that matching keys were left out. --rev R
    lists the keys as they were at store revision R (exit 1 if it was compacted or is in
    the future).

    JSON: {"rows": [{"key", "version", "value", "value_encoding", "create_revision",
    "mod_revision", "lease"}], "more", "header": {"revision", "leader", "ballot", "node"}}.

    Example: paxosctl scan --prefix user/ --limit 10 --rev 42
    """
    params: dict[str, Any] = {"prefix": prefix, "limit": limit, "stale": stale, "rev": rev}
    with connect(endpoints, key_file, config, timeout_ms) as c:
        op = SCAN.build(params)
        result = c.stale_read(op) if stale else c.execute(op)
        answer = with_header(_rows(params, result), c.last_header)
    render_answer(answer, json_out)


def _compacted(params: dict[str, Any], result: Result) -> Answer:
    check_revision(result, int(params["revision"]))
    if not isinstance(result, Compacted):
        raise unexpected(result)
    return Answer(
        {"compact_revision": result.compact_revision, "revision": result.revision},
        (f"compacted revision {result.compact_revision}",),
        header=True,
    )


COMPACT = Spec(build=lambda p: Compact(revision=int(p["revision"])), answer=_compacted)


@command_errors
def compact(
    revision: Annotated[
        int,
        typer.Argument(
            metavar="REVISION",
            min=1,
            help="Forget the history before this store revision.",
            show_default=False,
        ),
    ],
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Compact the history: revisions before REVISION can no longer be read or watched.

    The keys as they were at REVISION stay readable (get --rev REVISION), and so does every
    later change. It goes through the log, so every node compacts at the same point. Exit 1
    if the history is already compacted that far, or REVISION is newer than the store.
    Daemons can also compact on their own: see the [compaction] section of the config.

    JSON: {"compact_revision", "revision", "header"} ("revision": the store's, unchanged).

    Example: paxosctl compact 1200
    """
    answer = execute(
        COMPACT,
        {"revision": revision},
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
        site=site,
    )
    render_answer(answer, json_out)


def quote(text: str) -> str:
    """Shell-style quoting of text already made safe by show()/show_text()."""
    return shlex.quote(text) if text else "''"


# The data commands ``paxosctl batch`` runs, by name (social.py adds its own).
SPECS: dict[str, Spec] = {
    "put": PUT,
    "get": GET,
    "delete": DELETE,
    "cas": CAS,
    "scan": SCAN,
    "compact": COMPACT,
}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the paxosctl root (one line in app.py)."""
    for fn in (put, get, delete, cas, scan, compact):
        app.command(fn.__name__, rich_help_panel="Keys")(fn)
