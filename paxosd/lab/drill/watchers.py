"""The drill's watchers: three prefix watches on every key the drill writes, each a thread
that records what it receives (``streams.Stream``), and the fresh watch that reads the
reference history at the end.

- ``leader``: pinned to the node that led when the drill began (only that endpoint);
- ``follower``: pinned to a node that followed when the drill began;
- ``roaming``: after each fault begins it closes its watch and creates a new one at
  last + 1 on the next node (a client of every node, that node first), as an application
  that fails over would.

A pinned watcher's node may be killed, paused or cut off: the client's watch reconnects on
its own; when it gives up the watcher creates the watch again at last + 1 after a short pause,
so its stream must still be the whole history. The drill's start and end marks (two puts of
``Workload.mark_key``) bound every stream: a watcher starts at the start mark's revision
and is done once it has the end mark's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

from paxosd.client.client import Client
from paxosd.client.errors import CompactedError
from paxosd.client.watch import Watch, WatchBatch
from paxosd.lab.drill.nodes import Nodes
from paxosd.lab.drill.streams import Change, Stream
from paxosd.statemachine.commands import Event

# A watcher whose watch failed waits this long before it creates it again.
RETRY_PAUSE_S: Final = 0.3
# How long the fresh reference watch may take to read the whole history.
REFERENCE_TIMEOUT_S: Final = 120.0
WATCH_TIMEOUT_MS: Final = 3000


def open_watch(client: Client, prefix: str, start_revision: int) -> Watch:
    """The client's prefix watch from ``start_revision``."""
    return client.watch_prefix(prefix, start_revision=start_revision)


def events_of(batch: WatchBatch) -> Iterable[Event]:
    """A batch's events (a batch with none is a progress notification)."""
    return batch.events


class DrillWatcher:
    """One watcher thread; see the module's doc for the three kinds."""

    def __init__(
        self,
        name: str,
        nodes: Nodes,
        prefix: str,
        start: int,
        node_for: Callable[[int], int],
        pinned: bool,
        faults_seen: Callable[[], int] | None = None,
        drop_nth: int = 0,
    ) -> None:
        self.stream = Stream(name=name, start=start)
        self.nodes = nodes
        self.prefix = prefix
        self.next_revision = start
        self._node_for = node_for  # creation number -> node to watch on
        self._pinned = pinned
        self._faults_seen = faults_seen
        self._faults_at_create = 0
        self._drop_nth = drop_nth
        self._received = 0
        self._end: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: Watch | None = None
        self._on: int | None = None  # the node of the current watch
        self.thread = threading.Thread(target=self._run, name=f"drill-watch-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _done(self) -> bool:
        end = self._end
        return self._stop.is_set() or (end is not None and self.next_revision > end)

    def finish(self, end: int) -> None:
        """The end mark is at ``end``: stop once it is delivered."""
        self._end = end
        if self._done():
            self._cancel_current()

    def stop(self) -> None:
        self._stop.set()
        self._cancel_current()

    def tick(self) -> None:
        """Called by the drill's main loop: a roaming watcher moves when a fault begins, and
        a pinned one whose node left the membership (the reconfig fault) moves to a member."""
        if self._faults_seen is not None and self._faults_seen() != self._faults_at_create:
            self._cancel_current()
        if self._on is not None and self._on not in self.nodes.endpoints:
            self._cancel_current()

    def _cancel_current(self) -> None:
        with self._lock:
            w = self._current
        if w is not None:
            try:
                w.cancel()
            except Exception as e:  # the watch is being torn down anyway
                self.stream.errors.append(f"cancel: {type(e).__name__}: {e}")

    def _client(self, node: int) -> Client:
        endpoints = self.nodes.endpoints
        if self._pinned and node in endpoints:
            return Client([endpoints[node]], self.nodes.key, timeout_ms=WATCH_TIMEOUT_MS)
        # Roaming, or pinned to a node that is no longer a member: any member, ``node`` first
        # when it still is one.
        return self.nodes.client(
            timeout_ms=WATCH_TIMEOUT_MS, first=node if node in endpoints else None
        )

    def _run(self) -> None:
        creations = 0
        while not self._done():
            node = self._node_for(creations)
            if node not in self.nodes.endpoints:
                node = self.nodes.ids[0]
            self._on = node
            creations += 1
            if self._faults_seen is not None:
                self._faults_at_create = self._faults_seen()
            client = self._client(node)
            try:
                w = open_watch(client, self.prefix, self.next_revision)
                with self._lock:
                    self._current = w
                self.stream.creations.append((node, self.next_revision))
                for batch in w:
                    self._take(batch)
                    if self._done() or (
                        self._faults_seen is not None
                        and self._faults_seen() != self._faults_at_create
                    ):
                        break
                w.close()
            except CompactedError as e:  # the history it needs is gone: nothing to resume
                self.stream.errors.append(f"node {node}: {e}")
                return
            except Exception as e:  # recorded; the watch is created again at last + 1
                self.stream.errors.append(f"node {node}: {type(e).__name__}: {e}")
                self._stop.wait(RETRY_PAUSE_S)
            finally:
                with self._lock:
                    self._current = None
                client.close()

    def _take(self, batch: WatchBatch) -> None:
        for ev in events_of(batch):
            self._received += 1
            if self._received == self._drop_nth:
                continue  # the planted client-side loss (test only)
            c = Change.of(ev)
            self.stream.changes.append(c)
            self.stream.last = max(self.stream.last, c.revision)
            self.next_revision = max(self.next_revision, c.revision + 1)


def read_history(client: Client, prefix: str, start: int, end: int) -> list[Change]:
    """A fresh watch from ``start`` until the change at ``end`` (the end mark) arrives.

    :raises TimeoutError: not there within REFERENCE_TIMEOUT_S.
    """
    out: list[Change] = []
    deadline = time.monotonic() + REFERENCE_TIMEOUT_S
    w = open_watch(client, prefix, start)
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(max(0.0, deadline - time.monotonic())):
            w.cancel()

    dog = threading.Thread(target=watchdog, name="drill-history-watchdog", daemon=True)
    dog.start()
    try:
        for batch in w:
            out.extend(Change.of(ev) for ev in events_of(batch))
            if out and out[-1].revision >= end:
                break
    finally:
        done.set()
        w.cancel()
        dog.join(5)
    if not out or out[-1].revision < end:
        raise TimeoutError(
            f"the fresh watch from revision {start} got {len(out)} events, not up to {end}, "
            f"in {REFERENCE_TIMEOUT_S:.0f} s"
        )
    return out
