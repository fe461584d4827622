"""``paxosd run``: the process around Node — transport, signals, systemd, metrics.

The loop below is the only endless loop in paxosd. It blocks in exactly one place
(``multiprocessing.connection.wait``) for at most one tick, so timers fire on time and a
wedged loop is visible to systemd's watchdog.
"""

from __future__ import annotations

import os
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer

from paxosd.commands import BadCommand
from paxosd.config import Config, ConfigError, load_config
from paxosd.core.types import NodeId
from paxosd.framing import ClientReply, ClientRequest, QueryReply, QueryRequest
from paxosd.logs import bind_node, configure_logging
from paxosd.metrics import Metrics
from paxosd.node import TICK_MS, Node, install_signal_handlers, now_ms
from paxosd.sdnotify import Notifier, watchdog_interval_ms
from paxosd.storage import StorageError
from paxosd.transport import ClientServer, PeerTransport

log = structlog.get_logger("paxosd.daemon")

VIEW_LOG_ROWS_MAX = 1000


class Daemon:
    def __init__(self, config: Config, node: Node) -> None:
        self.config = config
        self.node = node
        node.send = self._send_peers
        self.peers = PeerTransport(
            node=config.node_id,
            listen=(config.peer_address.host, config.peer_address.port),
            cluster_key=config.peer_key.reveal(),
        )
        self.clients = ClientServer(
            node=config.node_id,
            listen=(config.client_address.host, config.client_address.port),
            client_key=config.client_key.reveal(),
        )
        self.notifier = Notifier()
        self.metrics: Metrics | None = None
        if config.metrics_address is not None:
            self.metrics = Metrics()
            self.metrics.serve(config.metrics_address.host, config.metrics_address.port)
            node.metrics = self.metrics
        self._next_metrics_ms = 0
        self.stop: list[bool] = []
        self.started_ms = now_ms()

    def serve(self) -> int:
        cfg = self.config
        self.peers.start(
            {
                p.node_id: (p.address.host, p.address.port)
                for p in cfg.peers
                if p.node_id != cfg.node_id
            }
        )
        self.clients.start()
        if self.node.sent:  # produced during recovery, before the transport existed
            self.peers.send_many(self.node.sent)
            self.node.sent.clear()
        install_signal_handlers(self.stop)
        self.notifier.notify("READY=1", f"STATUS={self._status_line()}", f"MAINPID={os.getpid()}")
        log.info(
            "serving",
            peer_address=f"{self.peers.address[0]}:{self.peers.address[1]}",
            client_address=f"{self.clients.address[0]}:{self.clients.address[1]}",
        )
        watchdog_ms = watchdog_interval_ms()
        next_watchdog = 0
        next_tick = now_ms()
        waitables = self.peers.waitables() + self.clients.waitables()
        node = self.node
        # The one endless loop: ends on SIGTERM/SIGINT.
        while not self.stop:
            timeout_ms = max(0, next_tick - now_ms())
            wait(waitables, timeout=timeout_ms / 1000)
            for src, msg in self.peers.drain():
                node.on_peer_message(src, msg)
            for conn_id, body in self.clients.drain():
                self._on_client(conn_id, body)
            t = now_ms()
            if t >= next_tick:
                node.on_tick()
                next_tick = t + TICK_MS
                if self.metrics is not None and t >= self._next_metrics_ms:
                    self._refresh_metrics()
                    self._next_metrics_ms = t + 1000
                if watchdog_ms is not None and t >= next_watchdog:
                    self.notifier.notify("WATCHDOG=1", f"STATUS={self._status_line()}")
                    next_watchdog = t + watchdog_ms
            self._turn()
        self.notifier.notify("STOPPING=1")
        log.info("stopping", reason="signal")
        self._turn()  # finish what is in flight: persist, send, reply
        self.peers.close()
        self.clients.close()
        self.node.storage.close()
        return 0

    def _send_peers(self, messages: list[tuple[NodeId, Any]]) -> None:
        self.peers.send_many(messages)

    def _turn(self) -> None:
        node = self.node
        node.drain()
        if node.replies:
            for conn_id, request_id, status, result, leader in node.replies:
                self.clients.reply(conn_id, ClientReply(request_id, status, result, leader))
                if self.metrics is not None:
                    self.metrics.requests.labels(status=status).inc()
            node.replies.clear()

    def _refresh_metrics(self) -> None:
        m = self.metrics
        assert m is not None
        r = self.node.replica
        m.set_role(r.role.value)
        m.ballot_round.set(r.promised.round)
        m.decided.set(r.decided_through)
        m.applied.set(self.node.sm.applied_through)
        for peer, s in self.peers.stats().items():
            m.peer_connected.labels(peer=str(peer)).set(1 if s.connected else 0)
        if r.is_leader:
            for peer, voted in r.peer_voted_slot.items():
                m.peer_lag.labels(peer=str(peer)).set(max(0, r.decided_through - voted))

    def _status_line(self) -> str:
        r = self.node.replica
        return (
            f"{r.role.value}, leader {r.leader_hint}, decided {r.decided_through}, "
            f"applied {self.node.sm.applied_through}"
        )

    # ------------------------------------------------------------------ client port

    def _on_client(self, conn_id: int, body: object) -> None:
        match body:
            case ClientRequest(request_id=rid, command=command):
                self.node.on_client_command(conn_id, rid, command)
            case QueryRequest(request_id=rid, query=query, args=args):
                try:
                    status, data = self._query(query, args)
                except (BadCommand, ValueError, KeyError, TypeError) as e:
                    status, data = "bad_request", {"error": str(e)}
                self.clients.reply(conn_id, QueryReply(rid, status, data))
            case _:
                log.warning("unexpected client frame", conn=conn_id, kind=type(body).__name__)

    def _query(self, query: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        node = self.node
        if query == "status":
            data = node.status()
            data["peers"] = {
                str(k): {
                    "connected": s.connected,
                    "frames_sent": s.frames_sent,
                    "frames_received": s.frames_received,
                }
                for k, s in self.peers.stats().items()
            }
            data["uptime_s"] = round((now_ms() - self.started_ms) / 1000, 1)
            data["recovery"] = node.recovery
            # paxosctl status's "last contact": how long ago the leader last heard each peer.
            r = node.replica
            acks = r.peer_last_ack_ms if r.is_leader else {}
            data["peer_last_ack_ms_ago"] = {str(p): r.now_ms - t for p, t in acks.items()}
            return "ok", data
        if query == "read_stale":
            status, result = node.stale_read(bytes(args["command"]))
            return status, {
                "result": result,
                "applied_index": node.sm.applied_through,
                "node_id": self.config.node_id,
            }
        if query == "members":
            stats = self.peers.stats()
            cfg = self.config
            return "ok", {
                "node_id": cfg.node_id,
                "leader": node.replica.leader_hint,
                "members": [
                    {
                        "node_id": p.node_id,
                        "peer_address": str(p.address),
                        "client_address": str(cfg.client_address)
                        if p.node_id == cfg.node_id
                        else None,
                        "connected": True
                        if p.node_id == cfg.node_id
                        else (p.node_id in stats and stats[p.node_id].connected),
                    }
                    for p in cfg.peers
                ],
            }
        if query == "view_log":
            lo = int(args.get("from", 1))
            hi = int(args.get("to", node.replica.decided_through))
            # Clamped both ways: read_log asserts 1 <= limit, and a client must not crash us.
            limit = max(1, min(int(args.get("limit", 100)), VIEW_LOG_ROWS_MAX))
            rows = node.storage.read_log(lo, hi, limit)
            return "ok", {
                "rows": [
                    {
                        "slot": row.slot,
                        "kind": row.kind,
                        "ballot": None if row.ballot is None else str(row.ballot),
                        "value": list(row.value),
                    }
                    for row in rows
                ],
                "results": {
                    str(row.slot): node.recent_results[row.slot]
                    for row in rows
                    if row.kind == "decided" and row.slot in node.recent_results
                },
                "log_start": node.replica.log_start,
                "decided_index": node.replica.decided_through,
                "node_id": self.config.node_id,
            }
        if query == "snapshot":
            slot = node.take_snapshot()
            return "ok", {"snapshot_index": slot, "node_id": self.config.node_id}
        if query == "partition":
            # Drill hook: authenticated by the client key like every request.
            peer = NodeId(int(args["peer"]))
            self.peers.set_partitioned(peer, bool(args["on"]))
            return "ok", {"peer": peer, "partitioned": bool(args["on"])}
        return "bad_request", {"error": f"unknown query {query!r}"}


def run_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="The node's TOML file.")],
    bootstrap: Annotated[
        bool,
        typer.Option(
            help="Create an empty database if the data dir has none. Only for a new member: "
            "a member that lost its data must not vote as if it had promised nothing.",
        ),
    ] = False,
) -> None:
    """Run one paxosd member in the foreground (systemd runs this).

    Example: paxosd run --config /etc/paxosd/n1.toml
    """
    try:
        cfg = load_config(config)
    except ConfigError as e:
        print(f"paxosd: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    configure_logging(level=cfg.log.level, fmt=cfg.log.format)
    bind_node(cfg.node_id, cfg.cluster_id)
    if not __debug__:
        print("paxosd: refusing python -O: the core's asserts are its safety net", file=sys.stderr)
        raise typer.Exit(2)
    try:
        node = Node(cfg, bootstrap=bootstrap)
    except StorageError as e:
        print(f"paxosd: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    try:
        daemon = Daemon(cfg, node)
    except OSError as e:
        print(f"paxosd: cannot listen: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    started = time.perf_counter()
    code = daemon.serve()
    log.info("stopped", seconds=round(time.perf_counter() - started, 1))
    raise typer.Exit(code)
