"""The errors the client raises, one class per thing a caller can do about it.

paxosctl maps them to exit codes (not found / mismatch 1, bad request 2, unavailable 3, auth
4), and a program catches them the same way: ``NotFoundError`` means the key is absent,
``UnavailableError`` that the cluster could not be reached (and says whether a write may
still have happened), ``AuthError`` that the client key is wrong.
"""

from __future__ import annotations

from paxosd.statemachine.commands import CasMismatch


class PaxosdError(Exception):
    """Base of every error the client raises (``except PaxosdError`` catches them all);
    ``str(e)`` is one line meant for people.

    The hierarchy, by what a caller can do about it::

        PaxosdError (= ClientError)
        |- NotFoundError            the key is absent
        |  `- LeaseNotFoundError    the lease expired or was revoked
        |- CompareFailedError       a condition did not hold; nothing changed
        |  `- CasMismatchError
        |- CompactedError           the revision's history is gone
        |- FutureRevisionError
        |- UnavailableError         no quorum in time (``outcome_unknown`` for a write)
        |- AuthError                wrong client key
        |- BadRequestError          the request itself is wrong (KeyFileError, TxnRefusedError)
        |- RefusedError             an admin change declined
        `- the recipes' LockLostError, LockTimeoutError, NotLeaderError (paxosd.client.recipes)
    """


# The older name of the base, kept so that existing ``except ClientError`` still works.
ClientError = PaxosdError


class NotFoundError(PaxosdError):
    """The key is absent (a read, or a delete that found nothing to delete)."""


class LeaseNotFoundError(NotFoundError):
    """The lease does not exist: never granted, revoked, or expired (etcd: "requested lease
    not found"). ``lease_id`` names it."""

    def __init__(self, message: str, lease_id: int) -> None:
        super().__init__(message)
        self.lease_id = lease_id


class CompareFailedError(PaxosdError):
    """A conditional write whose condition did not hold; nothing changed. Raised by the
    helpers that turn a failed transaction into an error (``cas``, a recipe's ``proclaim``);
    ``Client.txn`` itself returns ``succeeded=False`` instead, as etcd does."""


class CasMismatchError(CompareFailedError):
    """A compare-and-swap whose expectation did not hold; nothing changed. ``result`` holds
    the key's current value and version, so the caller can retry with the new expectation."""

    def __init__(self, message: str, result: CasMismatch) -> None:
        super().__init__(message)
        self.result = result


class UnavailableError(PaxosdError):
    """No node answered in time, or none could reach a quorum.

    ``outcome_unknown`` is True when a write was sent and no answer came back: it may still
    be applied (exactly once; retrying with the same client is safe). It is False for
    reads (a read changes nothing) and for writes that never left this process.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class NoSpaceError(PaxosdError):
    """The store is over its quota and the NOSPACE alarm is raised: a write that adds data
    was refused and nothing changed (etcd's "database space exceeded"). Delete keys or
    compact, then disarm (``Client.alarm_disarm``, ``paxosctl alarm disarm``)."""

    def __init__(self, size_bytes: int, quota_bytes: int) -> None:
        super().__init__(
            f"NOSPACE: the store is {size_bytes} bytes, over its quota of {quota_bytes} "
            "bytes; nothing changed (delete keys or compact, then paxosctl alarm disarm)"
        )
        self.size_bytes = size_bytes
        self.quota_bytes = quota_bytes


class AuthError(PaxosdError):
    """The client key was refused (or the endpoint is not a paxosd client port)."""


class BadRequestError(PaxosdError):
    """The request itself is wrong (bad endpoint, bad arguments, a refused command):
    retrying it unchanged cannot succeed."""


class KeyFileError(BadRequestError):
    """The client key file cannot be used: missing, not hex, too short, or readable by
    others (a key others can read is already compromised: refused, as ssh does)."""


class CompactedError(PaxosdError):
    """The revision asked for is older than the cluster's compaction point: its history is
    gone (etcd: "mvcc: required revision has been compacted"). ``compact_revision`` is the
    oldest revision still readable, where a reader or a watch can resume from; ``revision``
    the one asked for (0 when unknown)."""

    def __init__(self, message: str, compact_revision: int, revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
        self.revision = revision


class FutureRevisionError(PaxosdError):
    """The revision asked for is newer than the store's current revision (etcd: "mvcc:
    required revision is a future revision"): nothing was read or compacted. ``revision``
    is the one asked for, ``current`` the store's revision when known (0 otherwise)."""

    def __init__(self, message: str, revision: int, current: int = 0) -> None:
        super().__init__(message)
        self.revision = revision
        self.current = current


class LeaseRefusedError(BadRequestError):
    """A lease request the cluster refused as asked (a TTL below the cluster's minimum, an
    id already taken, too many leases or keys on one lease); nothing changed."""


class TxnRefusedError(BadRequestError):
    """A transaction the state machine refused as a whole, with its reason (e.g. a branch
    writing one key twice); nothing changed, and sending it again cannot succeed."""


class RefusedError(PaxosdError):
    """An administrative request the cluster understood and declined, with its reason
    (e.g. "node 4 is already a member"). Nothing changed. ``not_leader``: the member asked
    does not lead; ``leader`` is the one it believes does (None during an election)."""

    def __init__(self, reason: str, *, not_leader: bool = False, leader: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_leader = not_leader
        self.leader = leader


__all__ = [
    "AuthError",
    "BadRequestError",
    "CasMismatchError",
    "ClientError",
    "CompareFailedError",
    "CompactedError",
    "FutureRevisionError",
    "KeyFileError",
    "LeaseNotFoundError",
    "LeaseRefusedError",
    "NoSpaceError",
    "NotFoundError",
    "PaxosdError",
    "RefusedError",
    "TxnRefusedError",
    "UnavailableError",
]
