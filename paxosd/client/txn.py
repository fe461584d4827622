"""Building transactions the way python-etcd3 users write them, and ``cas`` as one.

A compare reads like the condition it states::

    from paxosd.client import txn

    client.txn(
        compare=[txn.value("config") == b"v1", txn.version("lock") == 0],
        success=[txn.put("config", b"v2"), txn.put("lock", b"me")],
        failure=[txn.get("config")],
    )

``value``/``version``/``create``/``mod``/``lease`` name what is compared (etcd's compare
targets) and the operators ``==``, ``!=``, ``<``, ``>`` make the ``Compare``; ``put``,
``get``, ``delete`` and ``scan`` make the operations of a branch. They only build the wire
structs of ``paxosd.statemachine.commands``, which validate every bound when the command is
encoded, before anything is sent.

``cas_txn``/``cas_result`` are compare-and-swap as a transaction: the client's ``cas`` sends
``Txn(compare value|version, success [Put], failure [Get])`` and maps the answer back to the
``Written``/``CasMismatch`` a cas has always returned, so one command (Txn) carries every
conditional write.
"""

from __future__ import annotations

from typing import Final

from paxosd.statemachine.commands import (
    SCAN_LIMIT_MAX,
    CasMismatch,
    Compare,
    Delete,
    Found,
    Get,
    NotFound,
    Put,
    Result,
    Scan,
    Txn,
    TxnResult,
    Written,
)


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class Target:
    """What a compare looks at: ``target`` (value, version, create, mod or lease) of ``key``.

    Comparing it with ``==``, ``!=``, ``<`` or ``>`` gives the ``Compare`` (so it is not a
    value to use as a dict key or in ``if``)."""

    __slots__ = ("key", "target")
    __hash__ = None  # type: ignore[assignment]  # == builds a Compare, not a bool

    def __init__(self, key: str, target: str) -> None:
        self.key = key
        self.target = target

    def _compare(self, op: str, operand: bytes | str | int) -> Compare:
        if self.target == "value":
            if isinstance(operand, int):
                raise TypeError(f"value({self.key!r}) compares with bytes, not a number")
            return Compare(key=self.key, target="value", op=op, value=_bytes(operand))
        if not isinstance(operand, int) or isinstance(operand, bool):
            raise TypeError(f"{self.target}({self.key!r}) compares with a number")
        return Compare(key=self.key, target=self.target, op=op, number=operand)

    def __eq__(self, operand: bytes | str | int) -> Compare:  # type: ignore[override]
        return self._compare("=", operand)

    def __ne__(self, operand: bytes | str | int) -> Compare:  # type: ignore[override]
        return self._compare("!=", operand)

    def __lt__(self, operand: bytes | str | int) -> Compare:
        return self._compare("<", operand)

    def __gt__(self, operand: bytes | str | int) -> Compare:
        return self._compare(">", operand)

    def __repr__(self) -> str:
        return f"{self.target}({self.key!r})"


def value(key: str) -> Target:
    """The key's value (bytes; an absent key has none, so every value compare on it fails)."""
    return Target(key, "value")


def version(key: str) -> Target:
    """The key's version: puts since it was created; 0 when it is absent."""
    return Target(key, "version")


def create(key: str) -> Target:
    """The revision that created the key; 0 when it is absent."""
    return Target(key, "create")


def mod(key: str) -> Target:
    """The revision of the key's last change; 0 when it is absent."""
    return Target(key, "mod")


def lease(key: str) -> Target:
    """The lease the key is attached to (0: none)."""
    return Target(key, "lease")


def put(key: str, value: bytes | str, *, prev_kv: bool = False) -> Put:
    """Set ``key``; ``prev_kv``: the response carries the key as it was."""
    return Put(key=key, value=_bytes(value), prev_kv=prev_kv)


def get(key: str, *, revision: int = 0) -> Get:
    """Read ``key`` (as of ``revision`` when > 0)."""
    return Get(key=key, revision=revision)


def delete(key: str, *, prefix: bool = False, prev_kv: bool = False) -> Delete:
    """Remove ``key`` (every key starting with it when ``prefix``)."""
    return Delete(key=key, prefix=prefix, prev_kv=prev_kv)


def scan(prefix: str, limit: int = SCAN_LIMIT_MAX, *, revision: int = 0) -> Scan:
    """Keys starting with ``prefix``, in key order, at most ``limit``."""
    return Scan(prefix=prefix, limit=limit, revision=revision)


# ------------------------------------------------------------------------------ cas

CAS_OPS: Final = 1  # a cas transaction's branches hold exactly one op each


def cas_txn(
    key: str, new: bytes, *, expect_value: bytes | None = None, expect_version: int | None = None
) -> Txn:
    """Compare-and-swap as a transaction: put ``new`` if the key holds ``expect_value`` (or is
    at ``expect_version``; 0: absent), else read the key so the caller learns what it holds.
    Exactly one expectation must be given (ValueError otherwise)."""
    if (expect_value is None) == (expect_version is None):
        raise ValueError("give exactly one of expect_value / expect_version")
    if expect_value is not None:
        compare = Compare(key=key, target="value", op="=", value=expect_value)
    else:
        assert expect_version is not None
        compare = Compare(key=key, target="version", op="=", number=expect_version)
    return Txn(compares=(compare,), success=(Put(key=key, value=new),), failure=(Get(key=key),))


def cas_result(result: Result) -> Result:
    """A cas transaction's answer as a cas answers: ``Written`` when the swap happened,
    ``CasMismatch`` (the current value, None when absent, and version) when it did not.
    Any other result (a refusal such as ``Stale``) is returned as it is."""
    if not isinstance(result, TxnResult) or len(result.responses) != CAS_OPS:
        return result
    (response,) = result.responses
    match result.succeeded, response:
        case True, Written() as written:
            return written
        case False, Found(value=v, version=ver):
            return CasMismatch(value=v, version=ver, revision=result.revision)
        case False, NotFound():
            return CasMismatch(value=None, version=0, revision=result.revision)
    return result


__all__ = [
    "Target",
    "cas_result",
    "cas_txn",
    "create",
    "delete",
    "get",
    "lease",
    "mod",
    "put",
    "scan",
    "value",
    "version",
]
