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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

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
    NotFoundError,
    UnavailableError,
)
from paxosd.statemachine.commands import (
    SCAN_LIMIT_MAX,
    BlockList,
    Cas,
    CasMismatch,
    Changed,
    Delete,
    Deleted,
    Found,
    Full,
    Get,
    Malformed,
    NotFound,
    Op,
    Put,
    Result,
    Rows,
    Scan,
    Stale,
    Timeline,
    Written,
)

if TYPE_CHECKING:
    pass

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
    if isinstance(e, NotFoundError | CasMismatchError | Failed):
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
    return str(unexpected(result))


def unexpected(result: Result) -> ClientError:
    """A result that does not answer the command sent. Stale/Malformed/Full are the state
    machine refusing it; anything else is a server bug worth reporting verbatim."""
    match result:
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
    writes: Callable[[dict[str, Any]], str] | None = None


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
    return spec.answer(params, result)


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


def _written(params: dict[str, Any], result: Result) -> Answer:
    if not isinstance(result, Written):
        raise unexpected(result)
    return Answer({"key": params["key"], "version": result.version}, (result_line(result),))


PUT = Spec(
    build=lambda p: Put(key=p["key"], value=arg_bytes(p["value"])),
    answer=_written,
    writes=lambda p: "key " + p["key"],
)


@command_errors
def put(
    key: KeyArg,
    value: ValueArg,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Set KEY to VALUE through the log; prints the key's new version.

    A put is also a post on the replicated timeline (see `paxosctl view`), authored by --site.

    JSON: {"key", "version"}.

    Example: paxosctl put greeting hello --site paris
    """
    params = {"key": key, "value": value}
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
    where = params.get("where") or {"node_id": None, "applied_index": None}
    stale = bool(params.get("stale"))
    if isinstance(result, NotFound):
        raise NotFoundError(f"key {key!r} not found")
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
            "stale": stale,
            "node_id": where["node_id"],
            "applied_index": where["applied_index"],
        },
        (result_line(result),),
        notes=notes,
    )


GET = Spec(build=lambda p: Get(key=p["key"]), answer=_found)


@command_errors
def get(
    key: KeyArg,
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

    Values that are not UTF-8 print as \\xNN escapes; --raw writes the bytes, --json base64.

    JSON: {"key", "value", "value_encoding": "utf-8"|"base64", "version", "stale",
    "node_id", "applied_index"} (the last two are null unless --stale).

    Example: paxosctl get greeting --stale
    """
    params: dict[str, Any] = {"key": key, "stale": stale}
    with connect(endpoints, key_file, config, timeout_ms) as c:
        if stale:
            result, params["where"] = c.stale_read_at(GET.build(params))
        else:
            result = c.execute(GET.build(params))
    answer = _found(params, result)
    if raw and not json_out:
        assert isinstance(result, Found)
        for line in answer.notes:
            render.note(line)
        render.raw(result.value)
        return
    render_answer(answer, json_out)


def _deleted(params: dict[str, Any], result: Result) -> Answer:
    key = params["key"]
    if not isinstance(result, Deleted):
        raise unexpected(result)
    if result.prior_version == 0:
        raise NotFoundError(f"key {key!r}: {result_line(result)}")
    return Answer(
        {"key": key, "prior_version": result.prior_version},
        (result_line(result),),
    )


DELETE = Spec(
    build=lambda p: Delete(key=p["key"]), answer=_deleted, writes=lambda p: "key " + p["key"]
)


@command_errors
def delete(
    key: KeyArg,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Remove KEY through the log. Exit 1 if it was already absent (nothing changed).

    JSON: {"key", "prior_version"}.

    Example: paxosctl delete greeting
    """
    answer = execute(
        DELETE,
        {"key": key},
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
        site=site,
    )
    render_answer(answer, json_out)


def _cas_op(p: dict[str, Any]) -> Op:
    expect_value, expect_version = p.get("expect_value"), p.get("expect_version")
    if (expect_value is None) == (expect_version is None):
        raise BadRequestError("give exactly one of --expect-value and --expect-version")
    return Cas(
        key=p["key"],
        new=arg_bytes(p["new"]),
        expect_value=None if expect_value is None else arg_bytes(expect_value),
        expect_version=expect_version,
    )


def _swapped(params: dict[str, Any], result: Result) -> Answer:
    if isinstance(result, CasMismatch):
        raise CasMismatchError(f"cas on key {params['key']!r}: {result_line(result)}", result)
    return _written(params, result)


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

    Give exactly one of --expect-value and --expect-version.

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
                {"key": r.key, "version": r.version, **value_json(r.value)} for r in result.rows
            ],
            "more": result.more,
        },
        table=(
            None,
            ("key", "version", "value"),
            [[show_text(r.key), r.version, show(r.value)] for r in result.rows],
        ),
        notes=tuple(notes),
    )


SCAN = Spec(build=lambda p: Scan(prefix=p["prefix"], limit=p["limit"]), answer=_rows)


@command_errors
def scan(
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys starting with this.")] = "",
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=SCAN_LIMIT_MAX, help="At most this many rows.")
    ] = 100,
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

    "more" (JSON) or a closing note (table) says that matching keys were left out.

    JSON: {"rows": [{"key", "version", "value", "value_encoding"}], "more"}.

    Example: paxosctl scan --prefix user/ --limit 10
    """
    params: dict[str, Any] = {"prefix": prefix, "limit": limit, "stale": stale}
    with connect(endpoints, key_file, config, timeout_ms) as c:
        op = SCAN.build(params)
        result = c.stale_read(op) if stale else c.execute(op)
    render_answer(_rows(params, result), json_out)


def quote(text: str) -> str:
    """Shell-style quoting of text already made safe by show()/show_text()."""
    return shlex.quote(text) if text else "''"


# The data commands ``paxosctl batch`` runs, by name (social.py adds its own).
SPECS: dict[str, Spec] = {"put": PUT, "get": GET, "delete": DELETE, "cas": CAS, "scan": SCAN}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the paxosctl root (one line in app.py)."""
    for fn in (put, get, delete, cas, scan):
        app.command(fn.__name__, rich_help_panel="Keys")(fn)
