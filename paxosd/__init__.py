"""paxosd: a persistent, replicated key-value store on multi-Paxos.

The Python API, for programs that talk to a cluster::

    from paxosd import Client, NotFoundError

    with Client([("127.0.0.1", 7101)], client_key) as c:
        c.put("greeting", b"hello")
        print(c.get("greeting").value)

The names below are exported lazily (PEP 562): ``import paxosd`` or ``import paxosd.core``
does not load the client, the transport or the crypto stack; the first use of
``paxosd.Client`` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # Connecting and running commands.
    "Client": "paxosd.client.client",
    "Pipeline": "paxosd.client.pipeline",
    "Session": "paxosd.client.pipeline",
    "read_key_file": "paxosd.client.connection",
    "parse_endpoint": "paxosd.client.routing",
    # Watches (Client.watch / watch_prefix make them).
    "Watch": "paxosd.client.watch",
    "WatchBatch": "paxosd.client.watch",
    "WatchCanceledError": "paxosd.client.watch",
    # Locks and elections (Client.lock / Client.election make them).
    "Lock": "paxosd.client.recipes",
    "LockToken": "paxosd.client.recipes",
    "Election": "paxosd.client.recipes",
    "Leader": "paxosd.client.recipes",
    "LockLostError": "paxosd.client.recipes",
    "LockTimeoutError": "paxosd.client.recipes",
    "NotLeaderError": "paxosd.client.recipes",
    "NoLeaderError": "paxosd.client.recipes",
    # Errors: one class per thing a caller can do about it, all under PaxosdError.
    "PaxosdError": "paxosd.client.errors",
    "ClientError": "paxosd.client.errors",
    "CompareFailedError": "paxosd.client.errors",
    "LeaseNotFoundError": "paxosd.client.errors",
    "NotFoundError": "paxosd.client.errors",
    "CasMismatchError": "paxosd.client.errors",
    "UnavailableError": "paxosd.client.errors",
    "AuthError": "paxosd.client.errors",
    "BadRequestError": "paxosd.client.errors",
    "KeyFileError": "paxosd.client.errors",
    "RefusedError": "paxosd.client.errors",
    "CompactedError": "paxosd.client.errors",
    "FutureRevisionError": "paxosd.client.errors",
    "TxnRefusedError": "paxosd.client.errors",
    "LeaseRefusedError": "paxosd.client.errors",
    # Leases: Client.lease(ttl) returns a Lease; lease_grant / lease_time_to_live results.
    "Lease": "paxosd.client.lease",
    "LeaseGranted": "paxosd.statemachine.commands",
    "LeaseInfo": "paxosd.statemachine.commands",
    "LeaseRevoked": "paxosd.statemachine.commands",
    "NoSpaceError": "paxosd.client.errors",
    # Where an answer came from: revision, leader, ballot, node (Client.last_header).
    "Header": "paxosd.client.client",
    # Results of commands.
    "Written": "paxosd.statemachine.commands",
    "Found": "paxosd.statemachine.commands",
    "NotFound": "paxosd.statemachine.commands",
    "Deleted": "paxosd.statemachine.commands",
    "CasMismatch": "paxosd.statemachine.commands",
    "Row": "paxosd.statemachine.commands",
    "Rows": "paxosd.statemachine.commands",
    "Changed": "paxosd.statemachine.commands",
    "BlockPair": "paxosd.statemachine.commands",
    "BlockList": "paxosd.statemachine.commands",
    "Post": "paxosd.statemachine.commands",
    "Timeline": "paxosd.statemachine.commands",
    "Result": "paxosd.statemachine.commands",
    "KeyValue": "paxosd.statemachine.commands",
    "TxnResult": "paxosd.statemachine.commands",
    "Compacted": "paxosd.statemachine.commands",
    # Commands, for Client.next_command / submit (a retry that keeps its identity).
    "Put": "paxosd.statemachine.commands",
    "Get": "paxosd.statemachine.commands",
    "Delete": "paxosd.statemachine.commands",
    "Cas": "paxosd.statemachine.commands",
    "Scan": "paxosd.statemachine.commands",
    "Txn": "paxosd.statemachine.commands",
    "Compare": "paxosd.statemachine.commands",
    "Compact": "paxosd.statemachine.commands",
    "Alarms": "paxosd.statemachine.commands",
}

__all__ = [
    "Alarms",
    "AuthError",
    "BadRequestError",
    "BlockList",
    "BlockPair",
    "Cas",
    "CasMismatch",
    "CasMismatchError",
    "Changed",
    "Client",
    "ClientError",
    "Compact",
    "Compacted",
    "CompactedError",
    "Compare",
    "CompareFailedError",
    "Delete",
    "Deleted",
    "Election",
    "Found",
    "FutureRevisionError",
    "Get",
    "Header",
    "KeyFileError",
    "KeyValue",
    "Leader",
    "Lease",
    "LeaseGranted",
    "LeaseInfo",
    "LeaseNotFoundError",
    "LeaseRefusedError",
    "LeaseRevoked",
    "Lock",
    "LockLostError",
    "LockTimeoutError",
    "LockToken",
    "NoLeaderError",
    "NoSpaceError",
    "NotFound",
    "NotFoundError",
    "NotLeaderError",
    "PaxosdError",
    "Pipeline",
    "Post",
    "Put",
    "RefusedError",
    "Result",
    "Row",
    "Rows",
    "Scan",
    "Session",
    "Timeline",
    "Txn",
    "TxnRefusedError",
    "TxnResult",
    "UnavailableError",
    "Watch",
    "WatchBatch",
    "WatchCanceledError",
    "Written",
    "__version__",
    "parse_endpoint",
    "read_key_file",
]

if TYPE_CHECKING:
    from paxosd.client.client import Client, Header
    from paxosd.client.connection import read_key_file
    from paxosd.client.errors import (
        AuthError,
        BadRequestError,
        CasMismatchError,
        ClientError,
        CompactedError,
        CompareFailedError,
        FutureRevisionError,
        KeyFileError,
        LeaseNotFoundError,
        LeaseRefusedError,
        NotFoundError,
        PaxosdError,
        RefusedError,
        TxnRefusedError,
        UnavailableError,
    )
    from paxosd.client.lease import Lease
    from paxosd.client.pipeline import Pipeline, Session
    from paxosd.client.recipes import (
        Election,
        Leader,
        Lock,
        LockLostError,
        LockTimeoutError,
        LockToken,
        NoLeaderError,
        NotLeaderError,
    )
    from paxosd.client.routing import parse_endpoint
    from paxosd.client.watch import Watch, WatchBatch, WatchCanceledError
    from paxosd.statemachine.commands import (
        BlockList,
        BlockPair,
        Cas,
        CasMismatch,
        Changed,
        Compact,
        Compacted,
        Compare,
        Delete,
        Deleted,
        Found,
        Get,
        KeyValue,
        LeaseGranted,
        LeaseInfo,
        LeaseRevoked,
        NotFound,
        Post,
        Put,
        Result,
        Row,
        Rows,
        Scan,
        Timeline,
        Txn,
        TxnResult,
        Written,
    )


def __getattr__(name: str) -> Any:
    """Import an exported name on first use (PEP 562), then keep it as a plain attribute."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'paxosd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
