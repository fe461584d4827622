"""The gateway's hot path to its node: one thread, one pipelined connection, many requests.

A gRPC worker that serves a Put or a linearizable Range hands its operation to the
``Forwarder`` and waits on a future. The forwarder's thread owns a ``paxosd.client.Pipeline``
(the routing, retries and exactly-once sessions of ``Client``): every operation queued since
its last turn goes to the node in one encrypted record, and the node answers them as they
apply. With 64 concurrent puts this is a few records per batch instead of 64 round trips on
64 connections, each with its own encryption, system calls and thread switches.

Bounds: at most ``IN_FLIGHT_MAX`` operations are queued or in flight (one ``Session`` each,
since a session has one command in flight); past that ``submit`` raises ``Full``, which the
gateway answers with RESOURCE_EXHAUSTED. A caller that stops waiting (its client went away)
leaves its operation to finish or time out in the pipeline (``timeout_ms``), and the slot
comes back then. If the thread dies, every waiting and later call fails with
``UnavailableError`` (the gateway keeps serving everything else through its per-thread
clients) and the reason is logged.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future

import structlog

from paxosd.client.client import Header, check_revision, result_revision
from paxosd.client.errors import ClientError, NoSpaceError, UnavailableError
from paxosd.client.pipeline import Pipeline, Session
from paxosd.client.routing import Address
from paxosd.net.framing import ClientReply
from paxosd.statemachine.commands import NoSpace, Op, Result, is_read

log = structlog.get_logger("paxosd.etcd")

# Operations queued or in flight at once (one session each); past it callers are refused.
IN_FLIGHT_MAX = 1024
# The thread's longest sleep when nothing happens (it wakes on work or a reply before).
IDLE_POLL_MS = 200


class Full(Exception):
    """Every slot is taken: the caller should answer RESOURCE_EXHAUSTED."""


Answer = tuple[Result, Header]


class Forwarder:
    """Puts and linearizable reads of many gRPC workers, batched over one connection."""

    def __init__(
        self,
        endpoints: Sequence[Address],
        client_key: bytes,
        *,
        timeout_ms: int = 5000,
        in_flight_max: int = IN_FLIGHT_MAX,
    ) -> None:
        self.timeout_ms = timeout_ms
        self._pipe: Pipeline[tuple[Session, Future[Answer]]] = Pipeline(
            endpoints, client_key, timeout_ms=timeout_ms
        )
        self._free = [Session(site="etcd") for _ in range(in_flight_max)]
        self._queued: list[tuple[Session, Op, Future[Answer]]] = []
        self._lock = threading.Lock()
        self._signalled = False
        self._stopped: str | None = None
        # Futures of operations handed to the pipeline, by id (the thread's alone).
        self._waiting: dict[int, Future[Answer]] = {}
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._pipe.wake_on(self._r)
        self._thread = threading.Thread(target=self._run, name="etcd-forward", daemon=True)
        self._thread.start()

    def submit(self, op: Op) -> Future[Answer]:
        """Queue ``op``; the future ends with ``(result, header)`` or a ``ClientError``.
        Raises ``Full`` when ``IN_FLIGHT_MAX`` operations are pending, ``UnavailableError``
        when the forwarder has stopped."""
        fut: Future[Answer] = Future()
        with self._lock:
            if self._stopped is not None:
                raise UnavailableError(self._stopped)
            if not self._free:
                raise Full(f"more than {len(self._queued)} requests are waiting for the node")
            self._queued.append((self._free.pop(), op, fut))
            wake = not self._signalled
            self._signalled = True
        if wake:
            # A full pipe holds wake-ups already: the thread will look.
            with contextlib.suppress(BlockingIOError):
                os.write(self._w, b"x")
        return fut

    def call(self, op: Op, asked: int = 0) -> Answer:
        """``submit`` and wait: the result (refusals of a revision or of quota raised as
        their ``ClientError``; ``asked``: the revision the request named) and its header."""
        fut = self.submit(op)
        # The pipeline ends every command by its own timeout; the margin covers a thread
        # that died between taking the command and answering it (``close`` fails those).
        result, header = fut.result(timeout=self.timeout_ms / 1000 + 5)
        if isinstance(result, NoSpace):
            raise NoSpaceError(result.size_bytes, result.quota_bytes)
        return check_revision(result, asked), header

    def close(self) -> None:
        self._stop("the etcd listener is stopping")
        self._wake()
        self._thread.join(timeout=2)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")

    def _stop(self, reason: str) -> None:
        """Refuse new work and fail everything queued or in flight with ``reason``."""
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
            queued, self._queued = self._queued, []
        for _, _, fut in queued:
            if not fut.done():
                fut.set_exception(UnavailableError(reason))

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as e:  # a bug here must not leave callers waiting forever
            log.error("etcd forwarder stopped", error=str(e), exc_info=True)
            self._stop("the etcd listener's connection to its node failed")
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(UnavailableError(self._stopped or "stopped"))
            self._waiting.clear()
            self._pipe.close()
            os.close(self._r)
            os.close(self._w)

    def _serve(self) -> None:
        waiting = self._waiting
        while True:
            with self._lock:
                if self._stopped is not None:
                    break
                queued, self._queued = self._queued, []
                self._signalled = False
            with contextlib.suppress(BlockingIOError):
                os.read(self._r, 4096)
            for session, op, fut in queued:
                try:
                    self._pipe.submit(session.next_command(op), (session, fut), read=is_read(op))
                except ClientError as e:
                    self._finish(session, fut, e, None)
                    continue
                waiting[id(fut)] = fut
            for (session, fut), outcome, reply in self._pipe.poll_replies(IDLE_POLL_MS):
                waiting.pop(id(fut), None)
                self._finish(session, fut, outcome, reply)

    def _finish(
        self,
        session: Session,
        fut: Future[Answer],
        outcome: Result | ClientError,
        reply: ClientReply | None,
    ) -> None:
        with self._lock:
            self._free.append(session)
        if fut.done():
            return
        if isinstance(outcome, ClientError):
            fut.set_exception(outcome)
            return
        assert reply is not None, "a result always comes in a reply"
        header = Header(
            revision=result_revision(outcome),
            leader=reply.leader,
            ballot=f"{reply.ballot_round}.{reply.ballot_node}",
            node=reply.node,
        )
        fut.set_result((outcome, header))
