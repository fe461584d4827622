"""Prometheus metrics, served on the optional ``metrics_address`` (prometheus_client).

A private registry per process keeps the metrics to exactly what paxosd reports. Gauges are
refreshed from the loop at most once a second, so scraping costs the hot path nothing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from paxosd.server.watch import WatchStats

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ROLES = ("follower", "candidate", "leader")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.role = Gauge("paxosd_role", "1 for the role this node has now", ["role"], registry=r)
        self.ballot_round = Gauge("paxosd_ballot_round", "Round of the promised ballot", registry=r)
        self.decided = Gauge("paxosd_decided_index", "Highest contiguous decided slot", registry=r)
        self.applied = Gauge("paxosd_applied_index", "Highest applied slot", registry=r)
        self.revision = Gauge("paxosd_revision", "Store revision applied", registry=r)
        self.compact_revision = Gauge(
            "paxosd_compact_revision", "Oldest revision the history holds (0: none)", registry=r
        )
        self.history_bytes = Gauge(
            "paxosd_history_bytes", "Bytes the kept history is charged", registry=r
        )
        self.peer_connected = Gauge(
            "paxosd_peer_connected", "1 if the link to the peer is up", ["peer"], registry=r
        )
        self.peer_lag = Gauge(
            "paxosd_peer_lag_slots",
            "Slots the peer's last vote trails our decided index (leader only)",
            ["peer"],
            registry=r,
        )
        self.commit_latency = Histogram(
            "paxosd_commit_latency_seconds",
            "From a client command's arrival to its reply",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_commands = Histogram(
            "paxosd_batch_commands", "Commands per applied slot", buckets=_BATCH_BUCKETS, registry=r
        )
        self.fsync = Histogram(
            "paxosd_storage_write_seconds",
            "One Ready's SQLite transaction including fsync",
            buckets=_FSYNC_BUCKETS_S,
            registry=r,
        )
        self.db_bytes = Gauge(
            "paxosd_db_bytes", "Bytes of the SQLite database and its WAL", registry=r
        )
        self.disk_free_bytes = Gauge(
            "paxosd_disk_free_bytes", "Bytes free on the data dir's file system", registry=r
        )
        self.disk_full = Gauge(
            "paxosd_disk_full",
            "1 while a write found the disk full: no votes, no answers until space is back",
            registry=r,
        )
        self.store_bytes = Gauge(
            "paxosd_store_bytes",
            "The store's accounted bytes (keys, values, history) that the quota bounds",
            registry=r,
        )
        self.quota_bytes = Gauge("paxosd_quota_bytes", "The store's quota", registry=r)
        self.alarm = Gauge(
            "paxosd_alarm", "1 while the alarm is raised (NOSPACE)", ["alarm"], registry=r
        )
        self.requests = Counter(
            "paxosd_client_requests", "Client requests by outcome", ["status"], registry=r
        )

        self.watchers = Gauge("paxosd_watchers", "Watches this node serves", registry=r)
        self.watchers_catching_up = Gauge(
            "paxosd_watchers_catching_up",
            "Watches fed from history because their connection was slow",
            registry=r,
        )
        self.watchers_canceled_compacted = Counter(
            "paxosd_watchers_canceled_compacted",
            "Watches canceled because compaction overtook them",
            registry=r,
        )
        self.watch_events = Counter(
            "paxosd_watch_events_sent", "Events sent to watchers", registry=r
        )
        self._watch_seen = WatchStats(0, 0, 0, 0, 0, 0)

    def set_watches(self, stats: WatchStats) -> None:
        """Gauges from the hub's stats, counters by what they grew since the last call."""
        seen = self._watch_seen
        self.watchers.set(stats.watchers)
        self.watchers_catching_up.set(stats.catching_up)
        self.watchers_canceled_compacted.inc(stats.canceled_compacted - seen.canceled_compacted)
        self.watch_events.inc(stats.events_sent - seen.events_sent)
        self._watch_seen = stats

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def set_role(self, role: str) -> None:
        for name in ROLES:
            self.role.labels(role=name).set(1 if name == role else 0)
