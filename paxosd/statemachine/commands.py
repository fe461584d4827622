"""Client commands and their results: the bytes the log orders and the state machine answers.

A command travels client -> leader -> log -> every replica's state machine, so its decoder
faces bytes from the network and from disk. Decoding is therefore typed (msgspec, never
pickle), size-capped before any parsing, validated after it, and fails with exactly one
exception type, ``BadCommand``: a replica that applies a decided slot must be able to turn
any garbage into a deterministic error result instead of crashing or diverging.

Results are encoded the same way so that the CLI, the client library and the
linearizability checker read one typed vocabulary.
"""

from typing import Annotated, Final

import msgspec

# Bounds. They are part of the replicated contract: a command valid on one replica must be
# valid on all, so these are constants, not configuration.
COMMAND_BYTES_MAX: Final = 1 << 20  # 1 MiB: checked before decoding anything
RESULT_BYTES_MAX: Final = 8 << 20  # the biggest result (a full scan page) fits with room
KEY_BYTES_MAX: Final = 1024  # UTF-8 bytes
VALUE_BYTES_MAX: Final = 512 << 10
SITE_BYTES_MAX: Final = 64
CLIENT_ID_BYTES_MAX: Final = 128
SEQ_MAX: Final = (1 << 63) - 1  # msgpack int64; a client never gets near it
VERSION_MAX: Final = (1 << 63) - 1
SCAN_LIMIT_MAX: Final = 1000
VIEW_LIMIT_MAX: Final = 1000
REASON_CHARS_MAX: Final = 200

_Version = Annotated[int, msgspec.Meta(ge=0, le=VERSION_MAX)]
_Slot = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]


class BadCommand(ValueError):
    """Bytes (or a Command) that are not a valid command or result. The only exception the
    decoders raise on bad input; anything else escaping them is a bug."""


# ------------------------------------------------------------------------------ operations


class Put(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Set ``key`` to ``value``; a new key starts at version 1. Also a post on the timeline."""

    key: str
    value: bytes


class Get(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Read ``key``: ``Found`` or ``NotFound``."""

    key: str


class Delete(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Remove ``key``; a later put starts its version at 1 again (as etcd does)."""

    key: str


class Cas(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Set ``key`` to ``new`` if exactly one expectation holds.

    ``expect_value``: the current value equals it (an absent key never matches).
    ``expect_version``: the current version equals it; 0 means "the key must be absent".
    """

    key: str
    new: bytes
    expect_value: bytes | None = None
    expect_version: int | None = None


class Scan(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Keys starting with ``prefix`` in key order, at most ``limit`` rows (and a byte budget)."""

    prefix: str
    limit: int


class Block(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """``site`` blocks ``other``: ``other``'s view leaves out ``site``'s posts."""

    site: str
    other: str


class Unblock(msgspec.Struct, frozen=True, tag=True, array_like=True):
    site: str
    other: str


class Blocks(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """List the block relation, only the pairs where ``site`` is the blocker when given."""

    site: str | None = None


class View(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The newest ``limit`` posts ``as_site`` may see, in log order."""

    as_site: str
    limit: int


Op = Put | Get | Delete | Cas | Scan | Block | Unblock | Blocks | View
READ_OPS: Final = (Get, Scan, Blocks, View)


class Command(msgspec.Struct, frozen=True, array_like=True):
    """One client request. ``(client_id, seq)`` makes retries exactly-once; ``site`` is the
    site the command came from (the author of a post)."""

    client_id: str
    seq: int
    site: str
    op: Op


def is_read(op: Op) -> bool:
    """Reads change no state (only session bookkeeping), so a retry may run them again."""
    return isinstance(op, READ_OPS)


# --------------------------------------------------------------------------------- results


class Written(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A put or a successful cas; ``version`` is the key's new version."""

    version: _Version


class Found(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A get's answer: the key's value and its version (1 after the first put)."""

    value: bytes
    version: _Version


class NotFound(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A get of a key that is absent (``Client.get`` raises ``NotFoundError`` instead)."""


class Deleted(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """``prior_version`` is the version the key had, 0 if it was already absent."""

    prior_version: _Version


class CasMismatch(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The expectation failed; the key's current value (None when absent, version 0)."""

    value: bytes | None
    version: _Version


class Row(msgspec.Struct, frozen=True, array_like=True):
    """One key of a scan, with its value and version."""

    key: str
    value: bytes
    version: _Version


class Rows(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Scan result in key order. ``more``: matching keys after the last row were left out."""

    rows: tuple[Row, ...]
    more: bool


class Changed(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Block/unblock result: whether the relation changed. It reveals the prior state, which
    is what makes block/unblock checkable for linearizability."""

    changed: bool


class BlockPair(msgspec.Struct, frozen=True, array_like=True):
    """``site`` blocks ``other``."""

    site: str
    other: str


class BlockList(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Every matching pair, sorted (the relation is bounded, so there is no ``more``)."""

    pairs: tuple[BlockPair, ...]


class Post(msgspec.Struct, frozen=True, array_like=True):
    """One put as the timeline records it: log position, author site, key and value."""

    slot: _Slot
    site: str
    key: str
    value: bytes


class Timeline(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """View result in log order. ``more``: older visible posts were left out."""

    posts: tuple[Post, ...]
    more: bool


class Stale(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the session already moved past this seq (``last_seq``)."""

    last_seq: int


class Malformed(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the decided bytes were not a valid command."""

    reason: str


class Full(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Not applied: the state machine's bound on ``what`` ("kv", "blocks") was reached."""

    what: str


Result = (
    Written
    | Found
    | NotFound
    | Deleted
    | CasMismatch
    | Rows
    | Changed
    | BlockList
    | Timeline
    | Stale
    | Malformed
    | Full
)
# Results that mean "this command had no effect": a history checker treats them as "fail".
NOT_APPLIED: Final = (Stale, Malformed, Full)

# ---------------------------------------------------------------------------------- codec

_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_result_decoder: msgspec.msgpack.Decoder[Result] = msgspec.msgpack.Decoder(Result)
# Every way msgspec (or UTF-8) can reject bytes; caught only around decoding.
_DECODE_ERRORS = (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError)


def _check_text(name: str, text: str, bytes_max: int, *, empty_ok: bool = False) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadCommand(f"{name} is not valid UTF-8 text") from None
    if size > bytes_max:
        raise BadCommand(f"{name} is {size} bytes, over {bytes_max}")
    if size == 0 and not empty_ok:
        raise BadCommand(f"{name} is empty")


def _check_value(name: str, value: bytes) -> None:
    if len(value) > VALUE_BYTES_MAX:
        raise BadCommand(f"{name} is {len(value)} bytes, over {VALUE_BYTES_MAX}")


def _check_limit(limit: int, limit_max: int) -> None:
    if not 1 <= limit <= limit_max:
        raise BadCommand(f"limit {limit} is outside 1..{limit_max}")


def validate_command(cmd: Command) -> None:
    """Raise BadCommand unless ``cmd`` is within every bound. Run on both encode and decode,
    so a client learns about a bad command before it is ordered."""
    _check_text("client_id", cmd.client_id, CLIENT_ID_BYTES_MAX)
    _check_text("site", cmd.site, SITE_BYTES_MAX)
    if not 0 <= cmd.seq <= SEQ_MAX:
        raise BadCommand(f"seq {cmd.seq} is outside 0..{SEQ_MAX}")
    op = cmd.op
    match op:
        case Put(key=key, value=value):
            _check_text("key", key, KEY_BYTES_MAX)
            _check_value("value", value)
        case Get(key=key) | Delete(key=key):
            _check_text("key", key, KEY_BYTES_MAX)
        case Cas(key=key, new=new, expect_value=ev, expect_version=evv):
            _check_text("key", key, KEY_BYTES_MAX)
            _check_value("new", new)
            if (ev is None) == (evv is None):
                raise BadCommand("cas needs exactly one of expect_value and expect_version")
            if ev is not None:
                _check_value("expect_value", ev)
            if evv is not None and not 0 <= evv <= VERSION_MAX:
                raise BadCommand(f"expect_version {evv} is outside 0..{VERSION_MAX}")
        case Scan(prefix=prefix, limit=limit):
            _check_text("prefix", prefix, KEY_BYTES_MAX, empty_ok=True)
            _check_limit(limit, SCAN_LIMIT_MAX)
        case Block(site=site, other=other) | Unblock(site=site, other=other):
            _check_text("site", site, SITE_BYTES_MAX)
            _check_text("other", other, SITE_BYTES_MAX)
            if site == other:
                raise BadCommand(f"site {site!r} cannot block or unblock itself")
        case Blocks(site=site):
            if site is not None:
                _check_text("site", site, SITE_BYTES_MAX)
        case View(as_site=as_site, limit=limit):
            _check_text("as_site", as_site, SITE_BYTES_MAX)
            _check_limit(limit, VIEW_LIMIT_MAX)
        case _:
            raise BadCommand(f"unknown operation {type(op).__name__}")


def encode_command(cmd: Command) -> bytes:
    """Validate and encode; BadCommand if ``cmd`` breaks a bound."""
    validate_command(cmd)
    try:
        data = _encoder.encode(cmd)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadCommand(f"cannot encode command: {e}") from None
    if len(data) > COMMAND_BYTES_MAX:
        raise BadCommand(f"command is {len(data)} bytes, over {COMMAND_BYTES_MAX}")
    return data


def decode_command(data: bytes) -> Command:
    """Decode and validate bytes from the network or the log; BadCommand on any defect."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadCommand(f"expected bytes, got {type(data).__name__}")
    if len(data) > COMMAND_BYTES_MAX:
        raise BadCommand(f"command is {len(data)} bytes, over {COMMAND_BYTES_MAX}")
    try:
        cmd = _command_decoder.decode(data)
    except _DECODE_ERRORS as e:
        raise BadCommand(f"undecodable command: {e}"[:REASON_CHARS_MAX]) from None
    validate_command(cmd)
    return cmd


def encode_result(result: Result) -> bytes:
    data = _encoder.encode(result)
    # Results are built by the state machine within its own bounds: exceeding this is a bug.
    assert len(data) <= RESULT_BYTES_MAX, f"result of {len(data)} bytes over {RESULT_BYTES_MAX}"
    return data


def decode_result(data: bytes) -> Result:
    """Decode a result from a replica; BadCommand on any defect."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadCommand(f"expected bytes, got {type(data).__name__}")
    if len(data) > RESULT_BYTES_MAX:
        raise BadCommand(f"result is {len(data)} bytes, over {RESULT_BYTES_MAX}")
    try:
        return _result_decoder.decode(data)
    except _DECODE_ERRORS as e:
        raise BadCommand(f"undecodable result: {e}"[:REASON_CHARS_MAX]) from None


__all__ = [
    "COMMAND_BYTES_MAX",
    "NOT_APPLIED",
    "RESULT_BYTES_MAX",
    "BadCommand",
    "Block",
    "BlockList",
    "BlockPair",
    "Blocks",
    "Cas",
    "CasMismatch",
    "Changed",
    "Command",
    "Delete",
    "Deleted",
    "Found",
    "Full",
    "Get",
    "Malformed",
    "NotFound",
    "Op",
    "Post",
    "Put",
    "Result",
    "Row",
    "Rows",
    "Scan",
    "Stale",
    "Timeline",
    "Unblock",
    "View",
    "Written",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
    "is_read",
    "validate_command",
]
