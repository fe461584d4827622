"""``paxosd etcd-gateway``: the gRPC server process (``paxosd run`` starts it as a child
when the node's config has ``[etcd] listen``; it can also run on its own beside a node).

Why a separate process with a thread pool and one paxosd ``Client`` per worker, by
measurement (BENCHMARKS.md, "etcd 3.4 and paxosd's etcd listener"): grpcio's Python server
path is the floor (a server answering a constant costs 170-210 us of CPU per request, more
than etcd's whole cluster), so the gateway's interpreter should not also be the consensus
loop's; and a forwarder thread that batched workers' requests over one pipelined connection
cost more CPU per request than the per-worker round trips it replaced (thread hand-offs under
one interpreter lock)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Annotated

import structlog
import typer

from paxosd.server.config import Config, ConfigError, load_config
from paxosd.server.logs import bind_node, configure_logging, fatal

log = structlog.get_logger("paxosd.etcd")

# gRPC worker threads: each holds one paxosd client connection; a unary call occupies one
# for its round trip, a Watch stream one for its life (gateway.WATCH_STREAMS_MAX of them at
# most), and so does a waiting Lock or Campaign, a KeepAlive or an Observe stream
# (coordination.HELD_CALLS_MAX of them at most), so unary calls always find a worker.
# Bounded, as every queue here.
WORKERS = 64
# Concurrent RPCs beyond the workers are refused with RESOURCE_EXHAUSTED, not queued forever.
RPCS_MAX = 1024
# etcd's default request bound (--max-request-bytes is 1.5 MiB); a message over it is refused.
MESSAGE_BYTES_MAX = 2 << 20
# Set by `paxosd run` to its pid: the gateway it started exits when that process is gone.
PARENT_ENV = "PAXOSD_ETCD_PARENT"
# In-flight calls get this long to finish when the listener stops.
STOP_GRACE_S = 0.5


def _read(path: Path | None) -> bytes:
    assert path is not None
    return path.read_bytes()


def build_server(cfg: Config) -> tuple[object, int]:
    """The gRPC server for ``cfg`` (not started) and the port it bound."""
    import grpc

    from paxosd.etcd.coordination import (
        ElectionService,
        HeldCalls,
        LeaseService,
        LockService,
    )
    from paxosd.etcd.gateway import (
        Backend,
        ClusterService,
        Identity,
        KVService,
        MaintenanceService,
        WatchService,
        cluster_number,
    )
    from paxosd.etcd.proto import rpc_pb2_grpc, v3election_pb2_grpc, v3lock_pb2_grpc

    etcd = cfg.etcd
    assert etcd.listen is not None
    me = cfg.node_id
    endpoints = [(cfg.client_address.host, cfg.client_address.port)] + [
        (a.host, a.port) for n, a in sorted(cfg.clients.items()) if n != me
    ]
    scheme = "https" if etcd.tls else "http"
    backend = Backend(
        endpoints,
        cfg.client_key.reveal(),
        Identity(cluster_number(cfg.cluster_id), int(me)),
        etcd_urls={**etcd.client_urls, int(me): f"{scheme}://{etcd.listen}"},
    )
    db = cfg.data_dir / "paxosd.sqlite3"

    def db_size() -> int:
        try:
            return db.stat().st_size
        except OSError:
            return 0

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="etcd-rpc"),
        maximum_concurrent_rpcs=RPCS_MAX,
        options=[
            # [etcd] processes: several gateways bind the one port; the kernel spreads
            # connections over them.
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", 16 << 20),
        ],
    )
    rpc_pb2_grpc.add_KVServicer_to_server(  # type: ignore[no-untyped-call]
        KVService(backend), server
    )
    rpc_pb2_grpc.add_WatchServicer_to_server(  # type: ignore[no-untyped-call]
        WatchService(backend), server
    )
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(  # type: ignore[no-untyped-call]
        MaintenanceService(backend, db_size), server
    )
    rpc_pb2_grpc.add_ClusterServicer_to_server(  # type: ignore[no-untyped-call]
        ClusterService(backend), server
    )
    held = HeldCalls()
    rpc_pb2_grpc.add_LeaseServicer_to_server(  # type: ignore[no-untyped-call]
        LeaseService(backend, held), server
    )
    v3lock_pb2_grpc.add_LockServicer_to_server(  # type: ignore[no-untyped-call]
        LockService(backend, held), server
    )
    v3election_pb2_grpc.add_ElectionServicer_to_server(  # type: ignore[no-untyped-call]
        ElectionService(backend, held), server
    )
    address = f"{etcd.listen.host}:{etcd.listen.port}"
    if etcd.tls:
        creds = grpc.ssl_server_credentials(
            [(_read(etcd.key_file), _read(etcd.cert_file))],
            root_certificates=_read(etcd.trusted_ca_file) if etcd.trusted_ca_file else None,
            require_client_auth=etcd.trusted_ca_file is not None,
        )
        port = server.add_secure_port(address, creds)
    else:
        if etcd.allow_insecure:
            log.warning("etcd listener without TLS", address=address)
        port = server.add_insecure_port(address)
    return server, port


def gateway_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="The node's TOML file.")],
) -> None:
    """Serve etcd's v3 gRPC API for the node of CONFIG (its [etcd] table). `paxosd run`
    starts this by itself when [etcd] listen is set; run it by hand only beside a node that
    runs without it. Needs the etcd extra: pip install 'paxosd[etcd]'.

    Example: paxosd etcd-gateway --config /etc/paxosd/n1.toml
    """
    try:
        cfg = load_config(config)
    except ConfigError as e:
        fatal(f"paxosd etcd-gateway: {e}")
        raise typer.Exit(2) from None
    configure_logging(level=cfg.log.level, fmt=cfg.log.format)
    bind_node(cfg.node_id, cfg.cluster_id)
    if cfg.etcd.listen is None:
        fatal(f"paxosd etcd-gateway: {config}: [etcd] listen is not set")
        raise typer.Exit(2)
    try:
        import grpc  # noqa: F401
    except ImportError:
        fatal("paxosd etcd-gateway: grpcio is not installed: pip install 'paxosd[etcd]'")
        raise typer.Exit(2) from None
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if parent and os.getppid() != parent:
        # The node that started us was killed while we were starting (importing grpc takes
        # seconds on a loaded host): do not bind its port for nobody.
        fatal("paxosd etcd-gateway: the node that started this listener is gone")
        raise typer.Exit(3)
    try:
        server, port = build_server(cfg)
    except (OSError, RuntimeError) as e:
        fatal(f"paxosd etcd-gateway: cannot listen on {cfg.etcd.listen}: {e}")
        raise typer.Exit(1) from None
    if port == 0:
        fatal(f"paxosd etcd-gateway: cannot listen on {cfg.etcd.listen}")
        raise typer.Exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()  # type: ignore[attr-defined]
    log.info("etcd listener serving", address=str(cfg.etcd.listen), tls=cfg.etcd.tls)
    # Ends on a signal, or when the node that started it is gone (a kill -9 of the node
    # must not leave its listener answering for nobody).
    orphaned = False
    while not stop.wait(0.1):
        if parent and os.getppid() != parent:
            orphaned = True
            break
    server.stop(grace=STOP_GRACE_S).wait()  # type: ignore[attr-defined]
    if orphaned:
        # Our node was killed. A gRPC worker still waiting in a call (for the cluster's
        # answer, up to the client's timeout) would keep this process alive that long after
        # its node: a normal exit joins those threads. Their calls are already cancelled
        # (UNAVAILABLE, an unknown outcome for the caller) and nothing here is on disk.
        log.warning("etcd listener stopped: its node is gone")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    log.info("etcd listener stopped")
    sys.exit(0)
