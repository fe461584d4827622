"""``paxosd init`` (write a whole cluster's configs and keys) and ``paxosd check-config``.

``init`` exists so that nobody writes keys by hand: a hand-made key tends to be short, to be
reused as the client key, or to end up world-readable. It writes, under one directory:

    n1.toml ... nN.toml     one config per node (mode 0644: no secrets inside)
    keys/peer.key           the cluster key peers authenticate with (0600, dir 0700)
    keys/client.key         the key clients authenticate with, distinct from the peer key
    data/n1 ... data/nN     data dirs (0700), unless --data-root is absolute (systemd's
                            StateDirectory= creates those on the hosts)

Ports: node K's peer listener is ``base_port + K`` and its client listener
``base_port + 100 + K`` (etcd-style separate ports, so separate keys are enforced by socket).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import typer

from paxosd.server.config import (
    CLUSTER_ID_CHARS_MAX,
    MEMBERS_MAX,
    Address,
    Config,
    ConfigError,
    Secret,
    load_config,
    parse_address,
)

KEY_BYTES: Final = 32
BASE_PORT_DEFAULT: Final = 7100
CLIENT_PORT_OFFSET: Final = 100
METRICS_PORT_OFFSET: Final = 200
ETCD_PORT_OFFSET: Final = 250


class InitError(Exception):
    """``init`` refused to run; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class InitResult:
    configs: tuple[Path, ...]
    peer_key: Path
    client_key: Path
    data_dirs_created: tuple[Path, ...]


def peer_address(host: str, base_port: int, node_id: int) -> Address:
    return Address(host, base_port + node_id)


def client_address(host: str, base_port: int, node_id: int) -> Address:
    return Address(host, base_port + CLIENT_PORT_OFFSET + node_id)


def etcd_address(host: str, base_port: int, node_id: int) -> Address:
    return Address(host, base_port + ETCD_PORT_OFFSET + node_id)


def render_etcd(node_id: int, hosts: tuple[str, ...], base_port: int, tls: bool) -> str:
    """The ``[etcd]`` table of one node: its listener, TLS files (paths relative to the
    config), and every member's etcd URL for MemberList."""
    listen = etcd_address(hosts[node_id - 1], base_port, node_id)
    scheme = "https" if tls else "http"
    urls = "\n".join(
        f'{k} = "{scheme}://{etcd_address(h, base_port, k)}"' for k, h in enumerate(hosts, 1)
    )
    files = (
        f'cert_file = "keys/etcd/n{node_id}.crt"\n'
        f'key_file = "keys/etcd/n{node_id}.key"\n'
        'trusted_ca_file = "keys/etcd/ca.crt"\n'
        if tls
        else ""
    )
    return f"""
# etcd's v3 gRPC API (pip install 'paxosd[etcd]'): etcdctl --endpoints {listen}{
        " --cacert keys/etcd/ca.crt --cert keys/etcd/client.crt --key keys/etcd/client.key"
        if tls
        else ""
    }
[etcd]
listen = "{listen}"
{files}
[etcd.client_urls]
{urls}
"""


def render_config(
    node_id: int,
    hosts: tuple[str, ...],
    base_port: int,
    cluster_id: str,
    data_dir: str,
) -> str:
    """One node's TOML. Only what differs between nodes or clusters is set; everything else
    keeps the defaults documented in conf/paxosd.toml."""
    host = hosts[node_id - 1]
    peers = "\n".join(
        f'{k} = "{peer_address(h, base_port, k)}"' for k, h in enumerate(hosts, start=1)
    )
    clients = "\n".join(
        f'{k} = "{client_address(h, base_port, k)}"' for k, h in enumerate(hosts, start=1)
    )
    metrics = Address(host, base_port + METRICS_PORT_OFFSET + node_id)
    return f"""\
# paxosd node {node_id} of cluster {cluster_id!r}, written by `paxosd init`.
# Every key and its default is explained in conf/paxosd.toml. Relative paths are relative to
# this file's directory. Check with: paxosd check-config <this file>

node_id = {node_id}
cluster_id = "{cluster_id}"
data_dir = "{data_dir}"
client_address = "{client_address(host, base_port, node_id)}"
# metrics_address = "{metrics}"   # uncomment for a Prometheus endpoint

# The cluster key files (hex, mode 0600). Under systemd, LoadCredential=peer.key:... and
# LoadCredential=client.key:... take precedence over these paths.
peer_key_file = "keys/peer.key"
client_key_file = "keys/client.key"

# Every member's peer address, this node included (its peer listener binds its own entry).
[peers]
{peers}

# Every member's client address: a follower names the leader's in a redirect.
[clients]
{clients}
"""


def init_cluster(
    out_dir: Path,
    nodes: int,
    base_port: int = BASE_PORT_DEFAULT,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    cluster_id: str | None = None,
    data_root: str = "data",
    force: bool = False,
    etcd: bool = False,
    etcd_tls: bool = True,
) -> InitResult:
    """Write configs, keys and data dirs for an ``nodes``-member cluster under ``out_dir``.

    ``hosts`` is one host for all nodes (a local cluster) or one per node. Refuses to replace
    an existing config or key unless ``force``; never deletes or empties a data dir.
    ``etcd``: every node also serves etcd's v3 API on BASE+250+K; with ``etcd_tls`` (the
    default) a cluster CA, a certificate per node and a client certificate are written to
    keys/etcd/ and clients must present a certificate (without it, only loopback hosts).
    :raises InitError: on bad arguments or files in the way.
    """
    if not 1 <= nodes <= MEMBERS_MAX:
        raise InitError(f"--nodes must be between 1 and {MEMBERS_MAX} (got {nodes})")
    if len(hosts) == 1:
        hosts = hosts * nodes
    if len(hosts) != nodes:
        raise InitError(f"give one --host for all nodes or one per node (got {len(hosts)})")
    for h in hosts:
        if isinstance(parse_address(f"{h}:1" if ":" not in h else f"[{h}]:1"), str):
            raise InitError(f"--host {h!r} is not a host name or IP address")
    port_top = base_port + (ETCD_PORT_OFFSET if etcd else METRICS_PORT_OFFSET) + nodes
    if base_port < 1 or port_top > 65535:
        raise InitError(
            f"--base-port {base_port}: node ports would leave 1..65535 (highest: {port_top})"
        )
    if cluster_id is None:
        cluster_id = "paxosd-" + secrets.token_hex(4)
    if not (
        1 <= len(cluster_id) <= CLUSTER_ID_CHARS_MAX
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in cluster_id)
    ):
        raise InitError(f"--cluster-id must be 1 to {CLUSTER_ID_CHARS_MAX} of A-Z a-z 0-9 . _ -")

    configs = tuple(out_dir / f"n{k}.toml" for k in range(1, nodes + 1))
    keys_dir = out_dir / "keys"
    peer_key, client_key = keys_dir / "peer.key", keys_dir / "client.key"
    in_the_way = [p for p in (*configs, peer_key, client_key) if p.exists() or p.is_symlink()]
    if in_the_way and not force:
        listed = ", ".join(os.fspath(p) for p in in_the_way)
        raise InitError(f"refusing to overwrite {listed} (use --force to replace them)")

    out_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(keys_dir, 0o700)  # mkdir's mode is filtered by the umask, and exist_ok skips it
    _write_atomically(peer_key, secrets.token_hex(KEY_BYTES) + "\n", 0o600)
    _write_atomically(client_key, secrets.token_hex(KEY_BYTES) + "\n", 0o600)
    if etcd and etcd_tls:
        from paxosd.tools.etcdtls import write_tls_files

        write_tls_files(keys_dir / "etcd", hosts, cluster_id)

    created: list[Path] = []
    for k, config in enumerate(configs, start=1):
        data_dir = f"{data_root.rstrip('/')}/n{k}"
        if not Path(data_dir).is_absolute():
            path = out_dir / data_dir
            if not path.exists():
                path.mkdir(mode=0o700, parents=True)
                os.chmod(path, 0o700)
                created.append(path)
        text = render_config(k, hosts, base_port, cluster_id, data_dir)
        if etcd:
            text += render_etcd(k, hosts, base_port, etcd_tls)
        _write_atomically(config, text, 0o644)
    return InitResult(configs, peer_key, client_key, tuple(created))


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Write to a fresh temporary file created with ``mode`` (so a key is never readable by
    others, not even for a moment), fsync it, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ commands


def init_command(
    nodes: Annotated[int, typer.Option("--nodes", help="Number of members (odd: 3 or 5).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the cluster into.")],
    base_port: Annotated[
        int,
        typer.Option(help="Node K listens for peers on BASE+K and for clients on BASE+100+K."),
    ] = BASE_PORT_DEFAULT,
    host: Annotated[
        list[str] | None,
        typer.Option(help="Address of the nodes: once for all, or once per node in order."),
    ] = None,
    cluster_id: Annotated[
        str | None, typer.Option(help="Cluster name (default: random paxosd-XXXXXXXX).")
    ] = None,
    data_root: Annotated[
        str,
        typer.Option(
            help="Where data dirs go: relative to --out (created now), or absolute such as "
            "/var/lib/paxosd (created by systemd's StateDirectory= on each host)."
        ),
    ] = "data",
    force: Annotated[bool, typer.Option(help="Replace existing configs and keys.")] = False,
    etcd: Annotated[
        bool,
        typer.Option(
            help="Also serve etcd's v3 API on BASE+250+K, with TLS files in keys/etcd/ (a "
            "cluster CA, a certificate per node, a client certificate for etcdctl)."
        ),
    ] = False,
) -> None:
    """Write a cluster's configs (nK.toml), keys (keys/, mode 0600) and data dirs.

    Example: paxosd init --nodes 3 --out conf/cluster-3-local
    """
    hosts = tuple(host) if host else ("127.0.0.1",)
    try:
        result = init_cluster(out, nodes, base_port, hosts, cluster_id, data_root, force, etcd=etcd)
    except (InitError, OSError) as e:
        typer.echo(f"paxosd init: {e}", err=True)
        raise typer.Exit(1) from None
    for path in result.configs:
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {result.peer_key} and {result.client_key} (mode 0600; keep them secret)")
    if etcd:
        typer.echo(f"wrote TLS files for the etcd listener in {result.peer_key.parent / 'etcd'}")
    for path in result.data_dirs_created:
        typer.echo(f"created {path}")
    typer.echo(f"check a node: paxosd check-config {result.configs[0]}")
    typer.echo(f"start a node: paxosd run --config {result.configs[0]}")


def check_config_command(
    file: Annotated[Path, typer.Argument(help="The node's TOML config.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Validate a config (keys included) and print a summary or every problem; exit 0 or 1."""
    try:
        config = load_config(file)
    except ConfigError as e:
        if as_json:
            errors = [{"file": p.file, "key": p.key, "problem": p.message} for p in e.problems]
            typer.echo(json.dumps({"ok": False, "errors": errors}, indent=2))
        else:
            for p in e.problems:
                typer.echo(str(p), err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"ok": True, "config": config.summary()}, indent=2))
    else:
        typer.echo(_describe(file, config))


def _describe(file: Path, c: Config) -> str:
    members = ", ".join(str(m) for m in c.members)
    metrics = "off" if c.metrics_address is None else str(c.metrics_address)

    def key_line(name: str, s: Secret) -> str:
        origin = "systemd credential" if s.from_credential else "file"
        return f"  {name}: {s.source} ({origin}, fingerprint {s.fingerprint()})"

    t, b, sn = c.timeouts, c.batching, c.snapshot
    return "\n".join(
        [
            f"{file}: OK",
            f"  node {c.node_id} of cluster {c.cluster_id!r}, members {members}",
            f"  peers listen on {c.peer_address}, clients on {c.client_address}, metrics {metrics}",
            f"  data dir: {c.data_dir} (durability {c.durability})",
            key_line("peer key", c.peer_key),
            key_line("client key", c.client_key),
            f"  timeouts: heartbeat {t.heartbeat_interval_ms} ms, election "
            f"{t.election_timeout_ms_min}-{t.election_timeout_ms_max} ms, "
            f"request {t.request_timeout_ms} ms",
            f"  batching: {b.batch_commands_max} commands / {b.batch_bytes_max} bytes per slot, "
            f"{b.slots_in_flight_max} slots in flight",
            f"  snapshot every {sn.snapshot_every_entries} entries"
            f" (once the log is {sn.snapshot_log_percent}% of the state),"
            f" retain {sn.log_retain_entries}",
            f"  log: {c.log.level}, {c.log.format}",
            f"  etcd API: {_etcd_line(c)}",
        ]
    )


def _etcd_line(c: Config) -> str:
    e = c.etcd
    if e.listen is None:
        return "off"
    if e.tls:
        auth = "client certificates" if e.trusted_ca_file else "no client certificates"
        security = f"TLS ({e.cert_file}; {auth})"
    else:
        security = "no TLS" + (" (allow_insecure)" if e.allow_insecure else ", loopback only")
    return f"{e.listen}, {security}, {e.processes} processes"
