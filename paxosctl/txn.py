"""``paxosctl txn``: etcdctl's transaction format on stdin, one transaction in one slot.

The input is what ``etcdctl txn`` reads, so a script written for etcd runs here unchanged::

    mod("key1") > "0"          compares, one per line (all must hold) ...
    value("key2") = "v"
                               ... a blank line, then the success requests ...
    put key1 "overwrote-key1"
    get key2
                               ... a blank line, then the failure requests.
    put key1 "created-key1"

A compare is ``TARGET("KEY") OP "OPERAND"``: TARGET one of value/val, version/ver,
create/c, mod/m, lease; OP one of = != < >; KEY and OPERAND quoted as Go quotes them
(etcdctl reads them with %q): "double quotes" with Go's escapes (\\n, \\t, \\", \\\\, \\xNN,
\\NNN octal, \\uNNNN, \\UNNNNNNNN) or `back quotes` taken literally. The operand of a number
target is a quoted whole number ("0"). A request is a put/get/del command line, its words
split as etcdctl splits them: "double quoted" (Go escapes), 'single quoted' (literal), or
bare. Supported: ``put KEY VALUE [--prev-kv]``, ``get KEY [--prefix] [--rev N] [--limit N]``,
``del KEY [--prefix] [--prev-kv]``. Lines starting with # are comments (etcdctl's
interactive prompts pasted along). The end of the input ends the section it is in.

The parser (``parse_txn``) is pure and bounded: the input is refused over
``TXN_INPUT_BYTES_MAX``, a section over ``TXN_OPS_MAX`` lines is refused at the line that
crosses it, and every defect is a ``TxnParseError`` naming its line. The command's byte bound
(COMMAND_BYTES_MAX) is checked when the command is encoded, before anything is sent.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Final

import typer

from paxosctl import render
from paxosctl.connect import (
    ConfigOpt,
    EndpointsOpt,
    JsonOpt,
    KeyFileOpt,
    SiteOpt,
    TimeoutOpt,
)
from paxosctl.kv import (
    TIMEOUT_MS_DEFAULT,
    command_errors,
    connect,
    kv_json,
    kv_lines,
    result_line,
    unexpected,
)
from paxosd.client.client import BadRequestError
from paxosd.statemachine.commands import (
    COMMAND_BYTES_MAX,
    SCAN_LIMIT_MAX,
    TXN_OPS_MAX,
    Compare,
    Delete,
    Deleted,
    Found,
    Get,
    KeyValue,
    NotFound,
    Put,
    Rows,
    Scan,
    TxnOp,
    TxnResponse,
    Written,
)

# Escapes can make the text several times the bytes it stands for; past this the command
# could never fit COMMAND_BYTES_MAX anyway.
TXN_INPUT_BYTES_MAX: Final = 4 * COMMAND_BYTES_MAX
TARGETS: Final = {
    "value": "value",
    "val": "value",
    "version": "version",
    "ver": "version",
    "create": "create",
    "c": "create",
    "mod": "mod",
    "m": "mod",
    "lease": "lease",
}
OPERATORS: Final = ("=", "!=", "<", ">")
SECTIONS: Final = ("compares", "success requests", "failure requests")


class TxnParseError(ValueError):
    """Input that is not a transaction: ``line`` is where (1-based), the message says what."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class ParsedTxn:
    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...]


# ------------------------------------------------------------------------------ quoting

_SIMPLE_ESCAPES: Final = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    '"': b'"',
}
_HEX = frozenset("0123456789abcdefABCDEF")


def go_unquote(text: str, start: int, line: int) -> tuple[bytes, int]:
    """The Go-quoted string (as %q reads it) at ``text[start]``: its bytes and the index just
    past its closing quote. "..." takes Go's escapes; `...` is literal."""
    quote = text[start]
    if quote == "`":
        end = text.find("`", start + 1)
        if end < 0:
            raise TxnParseError(line, "a `back-quoted` string is not closed")
        return text[start + 1 : end].encode("utf-8", "surrogateescape"), end + 1
    if quote != '"':
        raise TxnParseError(line, f'expected a quoted string ("..."), found {text[start:]!r}')
    out = bytearray()
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return bytes(out), i + 1
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= len(text):
            break
        esc = text[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[esc]
            i += 2
        elif esc == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise TxnParseError(line, "\\x takes two hex digits")
            out.append(int(digits, 16))
            i += 4
        elif esc in "01234567":
            digits = text[i + 1 : i + 4]
            if len(digits) != 3 or not set(digits) <= set("01234567") or int(digits, 8) > 255:
                raise TxnParseError(line, "an octal escape takes three digits up to \\377")
            out.append(int(digits, 8))
            i += 4
        elif esc in "uU":
            n = 4 if esc == "u" else 8
            digits = text[i + 2 : i + 2 + n]
            if len(digits) != n or not set(digits) <= _HEX:
                raise TxnParseError(line, f"\\{esc} takes {n} hex digits")
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise TxnParseError(line, f"\\{esc}{digits} is not a valid character")
            out += chr(code).encode("utf-8")
            i += 2 + n
        else:
            raise TxnParseError(line, f"unknown escape \\{esc} in a quoted string")
    raise TxnParseError(line, 'a "double-quoted" string is not closed')


def split_words(text: str, line: int) -> list[bytes]:
    """A request line's words as etcdctl splits them: "Go-quoted", 'literal', or bare."""
    words: list[bytes] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        if text[i] == '"':
            word, i = go_unquote(text, i, line)
        elif text[i] == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise TxnParseError(line, "a 'single-quoted' word is not closed")
            word, i = text[i + 1 : end].encode("utf-8", "surrogateescape"), end + 1
        else:
            end = i
            while end < len(text) and not text[end].isspace():
                end += 1
            word, i = text[i:end].encode("utf-8", "surrogateescape"), end
        words.append(word)
    return words


def _key(raw: bytes, line: int, what: str = "key") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TxnParseError(line, f"the {what} is not valid UTF-8 text") from None


def _number(raw: bytes | str, line: int, what: str) -> int:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if not text.isascii() or not text.isdigit():
        raise TxnParseError(line, f"{what} must be a whole number >= 0, not {text!r}")
    return int(text)


# ------------------------------------------------------------------------------ lines


def parse_compare(text: str, line: int) -> Compare:
    """``TARGET("KEY") OP "OPERAND"`` as a Compare."""
    target_name, paren, rest = text.partition("(")
    if not paren:
        raise TxnParseError(line, f'a compare looks like mod("key") > "0", not {text!r}')
    target = TARGETS.get(target_name.strip())
    if target is None:
        raise TxnParseError(
            line,
            f"unknown compare target {target_name.strip()!r} "
            "(one of value, version, create, mod, lease)",
        )
    rest = rest.lstrip()
    if not rest or rest[0] not in '"`':
        raise TxnParseError(line, 'the key of a compare must be quoted: mod("key") > "0"')
    raw_key, i = go_unquote(rest, 0, line)
    rest = rest[i:].lstrip()
    if not rest.startswith(")"):
        raise TxnParseError(line, "expected ) after the compare's key")
    rest = rest[1:].lstrip()
    op = next((o for o in ("!=", "=", "<", ">") if rest.startswith(o)), None)
    if op is None:
        raise TxnParseError(line, f"expected one of {' '.join(OPERATORS)} after the key")
    rest = rest[len(op) :].lstrip()
    if not rest or rest[0] not in '"`':
        raise TxnParseError(line, f'the operand must be quoted, e.g. {target}("k") {op} "0"')
    operand, i = go_unquote(rest, 0, line)
    if rest[i:].strip():
        raise TxnParseError(line, f"unexpected text after the compare: {rest[i:].strip()!r}")
    key = _key(raw_key, line)
    if target == "value":
        return Compare(key=key, target=target, op=op, value=operand)
    return Compare(key=key, target=target, op=op, number=_number(operand, line, target))


def _flags(
    words: list[bytes], line: int, allowed: dict[str, bool]
) -> tuple[list[bytes], dict[str, str | bool]]:
    """Split a request's words into arguments and --flags (``allowed``: name -> takes a
    value); ``--flag=value`` and ``--flag value`` both work, as with cobra."""
    args: list[bytes] = []
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith(b"--") and len(word) > 2:
            name, eq, value = _key(word, line, "flag").partition("=")
            if name not in allowed:
                known = ", ".join(allowed) or "none"
                raise TxnParseError(line, f"{name} is not supported here (supported: {known})")
            if allowed[name]:
                if not eq:
                    if i + 1 >= len(words):
                        raise TxnParseError(line, f"{name} needs a value")
                    i += 1
                    value = _key(words[i], line, name)
                flags[name] = value
            else:
                if eq:
                    raise TxnParseError(line, f"{name} takes no value")
                flags[name] = True
        else:
            args.append(word)
        i += 1
    return args, flags


def parse_request(text: str, line: int) -> TxnOp:
    """A put/get/del command line as the operation it names."""
    words = split_words(text, line)
    verb = words[0].decode("utf-8", "replace") if words else ""
    rest = words[1:]
    if verb == "put":
        args, flags = _flags(rest, line, {"--prev-kv": False})
        if len(args) != 2:
            raise TxnParseError(line, "put takes a key and a value: put KEY VALUE")
        return Put(key=_key(args[0], line), value=args[1], prev_kv=bool(flags.get("--prev-kv")))
    if verb == "get":
        args, flags = _flags(rest, line, {"--prefix": False, "--rev": True, "--limit": True})
        if len(args) != 1:
            raise TxnParseError(line, "get takes one key: get KEY [--prefix] [--rev N] [--limit N]")
        revision = _number(str(flags.get("--rev", "0")), line, "--rev")
        if flags.get("--prefix"):
            limit = _number(str(flags.get("--limit", SCAN_LIMIT_MAX)), line, "--limit")
            if not 1 <= limit <= SCAN_LIMIT_MAX:
                raise TxnParseError(line, f"--limit must be 1..{SCAN_LIMIT_MAX}")
            return Scan(prefix=_key(args[0], line), limit=limit, revision=revision)
        if "--limit" in flags:
            raise TxnParseError(line, "--limit goes with --prefix")
        return Get(key=_key(args[0], line), revision=revision)
    if verb in ("del", "delete"):
        args, flags = _flags(rest, line, {"--prefix": False, "--prev-kv": False})
        if len(args) != 1:
            raise TxnParseError(line, "del takes one key: del KEY [--prefix] [--prev-kv]")
        return Delete(
            key=_key(args[0], line),
            prefix=bool(flags.get("--prefix")),
            prev_kv=bool(flags.get("--prev-kv")),
        )
    raise TxnParseError(line, f"unknown request {verb!r} (put, get or del)")


def parse_txn(text: str) -> ParsedTxn:
    """etcdctl's txn input: compares, a blank line, success requests, a blank line, failure
    requests (see the module docstring)."""
    if len(text.encode("utf-8", "surrogateescape")) > TXN_INPUT_BYTES_MAX:
        raise TxnParseError(1, f"the input is over {TXN_INPUT_BYTES_MAX} bytes")
    sections: tuple[list[Compare], list[TxnOp], list[TxnOp]] = ([], [], [])
    section = 0
    number = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue
        if not stripped:
            section += 1
            continue
        if section >= len(SECTIONS):
            raise TxnParseError(number, "unexpected text after the failure requests")
        items = sections[section]
        if len(items) >= TXN_OPS_MAX:
            raise TxnParseError(number, f"too many {SECTIONS[section]}: over {TXN_OPS_MAX}")
        if section == 0:
            sections[0].append(parse_compare(stripped, number))
        else:
            items.append(parse_request(stripped, number))  # type: ignore[arg-type]
    compares, success, failure = sections
    return ParsedTxn(tuple(compares), tuple(success), tuple(failure))


# ------------------------------------------------------------------------------ answers


def _found_kv(key: str, found: Found) -> KeyValue:
    return KeyValue(
        key=key,
        value=found.value,
        create_revision=found.create_revision,
        mod_revision=found.mod_revision,
        version=found.version,
        lease=found.lease,
    )


def response_json(op: TxnOp, response: TxnResponse) -> dict[str, Any]:
    """One response of the branch taken, with the key its op named."""
    match op, response:
        case Put(key=key, prev_kv=prev_kv), Written() as w:
            out: dict[str, Any] = {
                "op": "put",
                "key": key,
                "version": w.version,
                "revision": w.revision,
            }
            if prev_kv:
                out["prev_kv"] = None if w.prev is None else kv_json(w.prev)
            return out
        case Get(key=key), Found() as found:
            return {"op": "get", "key": key, "kvs": [kv_json(_found_kv(key, found))]}
        case Get(key=key), NotFound():
            return {"op": "get", "key": key, "kvs": []}
        case Scan(prefix=prefix), Rows(rows=rows, more=more):
            kvs = [
                kv_json(
                    KeyValue(r.key, r.value, r.create_revision, r.mod_revision, r.version, r.lease)
                )
                for r in rows
            ]
            return {"op": "get", "key": prefix, "prefix": True, "kvs": kvs, "more": more}
        case Delete(key=key, prefix=prefix, prev_kv=prev_kv), Deleted() as d:
            out = {"op": "delete", "key": key, "prefix": prefix, "deleted": d.deleted}
            if prev_kv:
                out["prev_kvs"] = [kv_json(kv) for kv in d.prev]
            return out
    raise unexpected(response)


def response_lines(op: TxnOp, response: TxnResponse) -> list[str]:
    """One response as etcdctl prints it: OK for a put, the count for a delete, key and value
    lines for a read (none when nothing matched)."""
    match response:
        case Written(prev=prev):
            lines = [result_line(response)]
            if prev is not None:
                lines.extend(kv_lines(prev))
            return lines
        case Found() as found:
            assert isinstance(op, Get)
            return list(kv_lines(_found_kv(op.key, found)))
        case NotFound():
            return []
        case Rows(rows=rows):
            return [t for r in rows for t in kv_lines(KeyValue(r.key, r.value, 0, 0, 0))]
        case Deleted(deleted=deleted, prev=prev):
            return [str(deleted), *(t for kv in prev for t in kv_lines(kv))]
    raise unexpected(response)


def read_stdin(bytes_max: int) -> str:
    """At most ``bytes_max`` bytes of stdin as text; bytes that are not UTF-8 stay as they
    are (surrogate-escaped, as argv), so a quoted value may carry any bytes."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        return sys.stdin.read(bytes_max)
    data: bytes = stream.read(bytes_max)
    return data.decode("utf-8", "surrogateescape")


@command_errors
def txn(
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Run a transaction read from stdin in etcdctl's format: compares, a blank line, success
    requests, a blank line, failure requests. One slot, one revision.

    \b
    Compares (all must hold):  value("k") = "v"   version("k") = "0"
                               mod("k") > "5"     create("k") < "9"   lease("k") = "0"
    Requests:  put KEY VALUE [--prev-kv]
               get KEY [--prefix] [--rev N] [--limit N]
               del KEY [--prefix] [--prev-kv]

    Keys and operands are quoted as Go quotes them ("..." with \\n, \\xNN escapes, or
    `...`); words of a request may be "quoted", 'quoted' or bare. A branch may not write
    one key twice; at most 128 lines per section. Bad input exits 2 naming the line,
    before anything is sent.

    Prints SUCCESS or FAILURE, then each response after a blank line, as etcdctl does.

    JSON: {"succeeded", "responses": [{"op": "put"|"get"|"delete", "key", ...}],
    "revision", "header"}.

    Example: printf 'version("k") = "0"\\n\\nput k v1\\n\\nget k\\n' | paxosctl txn
    """
    if sys.stdin.isatty():
        render.note(
            "type the compares, a blank line, the success requests, a blank line, the "
            "failure requests; end with Ctrl-D"
        )
    data = read_stdin(TXN_INPUT_BYTES_MAX + 1)
    try:
        parsed = parse_txn(data)
    except TxnParseError as e:
        raise BadRequestError(f"txn: {e}") from None
    with connect(endpoints, key_file, config, timeout_ms, site) as c:
        result = c.txn(parsed.compares, parsed.success, parsed.failure)
        header = c.last_header
    branch = parsed.success if result.succeeded else parsed.failure
    if json_out:
        render.emit_json(
            {
                "succeeded": result.succeeded,
                "responses": [
                    response_json(op, r) for op, r in zip(branch, result.responses, strict=False)
                ],
                "revision": result.revision,
                "header": None if header is None else header.to_json(),
            }
        )
        return
    render.line("SUCCESS" if result.succeeded else "FAILURE")
    for op, response in zip(branch, result.responses, strict=False):
        render.line("")
        for text in response_lines(op, response):
            render.line(text)


def register(app: typer.Typer) -> None:
    """Add ``txn`` to the paxosctl root (one line in app.py)."""
    app.command("txn", rich_help_panel="Keys")(txn)


__all__ = [
    "ParsedTxn",
    "TxnParseError",
    "go_unquote",
    "parse_txn",
    "register",
    "split_words",
    "txn",
]
