"""Where paxosctl connects, and with which key: one resolution order for every command.

Endpoints: ``--endpoints`` > ``$PAXOSCTL_ENDPOINTS`` > ``--config`` (a node's TOML) > the
local cluster of ``paxosctl cluster up``. Key: ``--key-file`` > ``$PAXOSCTL_KEY_FILE`` > the
config's client key > the local cluster's.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from paxosd.client.client import BadRequestError, Client, parse_endpoint
from paxosd.client.connection import read_key_file
from paxosd.client.errors import KeyFileError
from paxosd.client.localdir import MANIFEST, default_dir

EndpointsOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoints",
        envvar="PAXOSCTL_ENDPOINTS",
        help="Comma-separated client addresses host:port (default: the local cluster).",
        show_default=False,
    ),
]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        envvar="PAXOSCTL_KEY_FILE",
        help="The cluster's client key file (hex).",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="A node's paxosd TOML: use its address and client key."),
]
TimeoutOpt = Annotated[
    int, typer.Option("--timeout-ms", min=100, help="Give up after this long (exit 3).")
]
SiteOpt = Annotated[
    str | None,
    typer.Option(
        "--site",
        envvar="PAXOSCTL_SITE",
        help="The origin site recorded with writes (default: this host's name).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]


class ConnectError(Exception):
    """Nothing to connect to, or no key: a usage problem (exit 2)."""


@dataclass(frozen=True, slots=True)
class Target:
    endpoints: list[tuple[str, int]]
    key: bytes
    source: str


def _read_key(path: Path) -> bytes:
    try:
        return read_key_file(path)
    except KeyFileError as e:
        raise ConnectError(str(e)) from None


def resolve(endpoints: str | None, key_file: Path | None, config: Path | None = None) -> Target:
    key = _read_key(key_file) if key_file is not None else None
    if endpoints:
        try:
            eps = [parse_endpoint(e) for e in endpoints.split(",") if e.strip()]
        except BadRequestError as e:
            raise ConnectError(str(e)) from None
        if key is None:
            key = _local_key()
        if key is None:
            raise ConnectError("no client key: give --key-file or set PAXOSCTL_KEY_FILE")
        return Target(eps, key, "--endpoints")
    if config is not None:
        from paxosd.server.config import ConfigError, load_config

        try:
            cfg = load_config(config)
        except ConfigError as e:
            raise ConnectError(str(e)) from None
        a = cfg.client_address
        return Target([(a.host, a.port)], key or cfg.client_key.reveal(), str(config))
    root = default_dir()
    manifest = root / MANIFEST
    if not manifest.exists():
        raise ConnectError(
            f"no cluster given and no local cluster at {root}: start one with "
            "`paxosctl cluster up`, or pass --endpoints and --key-file"
        )
    m = json.loads(manifest.read_text())
    eps = [parse_endpoint(e) for e in m["endpoints"]]
    return Target(eps, key or _read_key(Path(m["client_key_file"])), str(root))


def _local_key() -> bytes | None:
    manifest = default_dir() / MANIFEST
    if not manifest.exists():
        return None
    return _read_key(Path(json.loads(manifest.read_text())["client_key_file"]))


def default_site() -> str:
    return os.environ.get("PAXOSCTL_SITE") or socket.gethostname().split(".")[0] or "local"


def open_client(
    endpoints: str | None,
    key_file: Path | None,
    config: Path | None = None,
    *,
    timeout_ms: int = 5000,
    site: str | None = None,
) -> Client:
    t = resolve(endpoints, key_file, config)
    return Client(t.endpoints, t.key, timeout_ms=timeout_ms, site=site or default_site())
