"""Where the local cluster (``paxosctl cluster up``) keeps its folder, and its manifest's name.

Kept apart from ``paxosd.lab.localcluster`` (which starts and stops nodes and pulls in storage
and the server's config) so that a client command that only needs to *find* the local cluster
loads none of that.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# The file in the cluster's folder that lists the client endpoints and the client key file.
MANIFEST = "cluster.json"


def default_dir() -> Path:
    """``$PAXOSD_LOCAL_DIR``, else a per-user folder in the system's temporary directory."""
    env = os.environ.get("PAXOSD_LOCAL_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(tempfile.gettempdir()) / f"paxosd-local-{os.getuid()}"


# A config or manifest much bigger than this is not one (and is not read whole).
CONFIG_BYTES_MAX = 1 << 20


def cluster_from_config(path: str | os.PathLike[str] | None) -> tuple[list[str], Path]:
    """``(endpoints, client key file)`` of the cluster ``path`` describes: a node's paxosd
    TOML (``client_address`` and the ``[clients]`` table; ``client_key_file``, default
    ``keys/client.key``, relative to the file), a local cluster's folder or its manifest;
    None: the local cluster of ``default_dir()``. Raises ``BadRequestError`` naming the file
    and what is wrong with it.

    Read here without the server's config module: a client must not load the server to
    find where to connect (only these keys are read; ``paxosd check-config`` checks all).
    """
    import json
    import tomllib

    from paxosd.client.errors import BadRequestError

    where = Path(path) if path is not None else default_dir()
    if where.is_dir():
        where = where / MANIFEST
    try:
        with open(where, "rb") as f:
            raw = f.read(CONFIG_BYTES_MAX + 1)
    except OSError as e:
        hint = "" if path is not None else ": start one with `paxosctl cluster up`"
        raise BadRequestError(f"cannot read {where}: {e.strerror or 'error'}{hint}") from None
    if len(raw) > CONFIG_BYTES_MAX:
        raise BadRequestError(f"{where} is over {CONFIG_BYTES_MAX} bytes: not a config")
    try:
        if where.suffix == ".toml":
            doc = tomllib.loads(raw.decode("utf-8"))
            endpoints = [doc["client_address"], *dict(doc.get("clients", {})).values()]
            key_file = Path(doc.get("client_key_file", "keys/client.key"))
        else:
            doc = json.loads(raw)
            endpoints = list(doc["endpoints"])
            key_file = Path(doc["client_key_file"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else "not a paxosd config"
        raise BadRequestError(f"{where}: {what}") from None
    if not all(isinstance(e, str) for e in endpoints):
        raise BadRequestError(f'{where}: client addresses must be "host:port" strings')
    unique = list(dict.fromkeys(endpoints))
    return unique, key_file if key_file.is_absolute() else where.parent / key_file
