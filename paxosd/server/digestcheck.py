"""The leader's corruption check: do the members' state digests agree at the same index?

``StateMachine.digest()`` is a hash chained over every applied (slot, value), so two replicas
that applied the same prefix have the same digest, and two that differ at one applied index
have diverged (a corrupt disk, a bug) for good. Until now only ``paxosctl status`` compared
them; a daemon never looked, so the journal never said. As etcd's corruption check does, the
leader now asks each member for its (applied index, digest) every few seconds and compares
it with its own digest at that index, which it keeps for the last indexes it applied.

The questions go over the members' client ports, like ``paxosctl status`` (the daemon has
the client key), from one helper thread: the main loop never waits on the network. The
thread only fetches; the main loop compares and logs.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import OrderedDict
from typing import Final

from paxosd.core.types import NodeId
from paxosd.net.admin import Status, StatusReply
from paxosd.net.framing import QueryReply, QueryRequest
from paxosd.net.transport import ClientConnection

# How many (applied index -> digest) pairs the leader keeps to compare with: members that
# lag by more than this many loop turns are simply not compared this time.
DIGESTS_KEPT: Final = 4096
# A question that gets no answer in this long is dropped (the member may be down: that is
# the peer_unreachable warning, not this check's business).
QUERY_TIMEOUT_MS: Final = 2000
CLOSE_WAIT_S: Final = 0.5
# The client id the probe connects with: any id is admitted; this one reads as "the daemon".
PROBE_CLIENT_ID: Final = 0


class DigestHistory:
    """This node's digest at its last DIGESTS_KEPT applied indexes (as of each loop turn)."""

    def __init__(self, kept: int = DIGESTS_KEPT) -> None:
        assert kept >= 1
        self._kept = kept
        self._by_index: OrderedDict[int, str] = OrderedDict()

    def record(self, applied: int, digest: str) -> None:
        if self._by_index and next(reversed(self._by_index)) >= applied:
            if applied not in self._by_index:  # restored backwards (a snapshot): start over
                self._by_index.clear()
            else:
                return
        self._by_index[applied] = digest
        while len(self._by_index) > self._kept:
            self._by_index.popitem(last=False)

    def at(self, applied: int) -> str | None:
        return self._by_index.get(applied)


class DigestProbe:
    """Fetches (node, applied index, digest) from the members' client ports when asked."""

    def __init__(self, client_key: bytes) -> None:
        self._key = client_key
        self.results: queue.SimpleQueue[tuple[NodeId, int, str]] = queue.SimpleQueue()
        self._targets: dict[NodeId, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="paxosd-digest-probe", daemon=True)
        self._thread.start()

    def ask(self, targets: dict[NodeId, tuple[str, int]]) -> None:
        """Ask ``targets`` (node -> client address) once more; a round still running is
        not doubled up."""
        with self._lock:
            self._targets = dict(targets)
        self._wanted.set()

    def close(self) -> None:
        """Stop the thread; a question in flight is not waited for long (the thread is a
        daemon thread, and a stopping node must not wait on a member that does not answer)."""
        self._stopping.set()
        self._wanted.set()
        self._thread.join(CLOSE_WAIT_S)

    def _run(self) -> None:
        conns: dict[NodeId, ClientConnection] = {}
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping.is_set():
                    return
                with self._lock:
                    targets = dict(self._targets)
                for node in [n for n in conns if n not in targets]:
                    conns.pop(node).close()
                for node, address in targets.items():
                    if self._stopping.is_set():
                        return
                    answer = self._ask_one(conns, node, address)
                    if answer is not None:
                        self.results.put((node, *answer))
        finally:
            for conn in conns.values():
                conn.close()

    def _ask_one(
        self, conns: dict[NodeId, ClientConnection], node: NodeId, address: tuple[str, int]
    ) -> tuple[int, str] | None:
        try:
            conn = conns.get(node)
            if conn is None:
                conn = ClientConnection.connect(
                    address,
                    client_key=self._key,
                    client_id=PROBE_CLIENT_ID,
                    timeout_ms=QUERY_TIMEOUT_MS,
                    io_timeout_ms=QUERY_TIMEOUT_MS,
                )
                conns[node] = conn
            rid = next(self._ids)
            conn.send(QueryRequest(rid, Status()))
            for body in conn.recv(QUERY_TIMEOUT_MS):
                if isinstance(body, QueryReply) and body.request_id == rid:
                    answer = body.answer
                    if not isinstance(answer, StatusReply) or answer.node_id != node:
                        return None
                    return answer.applied_index, answer.digest
        except Exception:  # any failure: drop the connection, ask again next round
            stale = conns.pop(node, None)
            if stale is not None:
                stale.close()
        return None
