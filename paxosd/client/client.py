"""The Python client of a paxosd cluster: leader discovery, fail-over, exactly-once retries.

Every command carries ``(client_id, seq)``; a retry after a timeout or a leader change
re-sends the same pair, and the replicated session table answers it with the original result
instead of applying it twice. Errors are typed so that callers (and paxosctl's exit codes)
can tell "the key is absent" from "the cluster is unavailable" from "wrong key".
"""

from __future__ import annotations

import itertools
import secrets
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from paxosd.net.framing import BadFrame, ClientReply, ClientRequest, QueryReply, QueryRequest
from paxosd.net.handshake import HandshakeError
from paxosd.net.transport import ClientConnection
from paxosd.statemachine.commands import (
    BadCommand,
    Block,
    Blocks,
    Cas,
    CasMismatch,
    Command,
    Delete,
    Get,
    Op,
    Put,
    Result,
    Scan,
    Unblock,
    View,
    decode_result,
    encode_command,
)
from paxosd.statemachine.commands import NotFound as NotFoundResult

Address = tuple[str, int]

TIMEOUT_MS_DEFAULT = 5000
ATTEMPT_TIMEOUT_MS = 1500
CONNECT_TIMEOUT_MS = 1000
ENDPOINTS_MAX = 16


class ClientError(Exception):
    """Base of every error this client raises."""


class NotFoundError(ClientError):
    pass


class CasMismatchError(ClientError):
    def __init__(self, message: str, result: CasMismatch) -> None:
        super().__init__(message)
        self.result = result


class UnavailableError(ClientError):
    """No node answered in time, or none could reach a quorum: the outcome of a write that
    raised this is unknown (it may still be applied, exactly once)."""


class AuthError(ClientError):
    """The client key was refused (or the endpoint is not a paxosd client port)."""


class BadRequestError(ClientError):
    pass


def parse_endpoint(text: str) -> Address:
    """``host:port`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequestError(f"endpoint {text!r} is not host:port")
    return host, int(port)


@dataclass(slots=True)
class _Endpoint:
    address: Address
    conn: ClientConnection | None = None
    node_id: int | None = None
    down_until: float = 0.0


class Client:
    """A connection to a cluster. Not thread-safe: use one per thread.

    :param endpoints: client addresses of the members (any subset works; all is best).
    :param client_key: the cluster's client key bytes.
    :param site: the origin site recorded with every write (seed 002's "site").
    """

    def __init__(
        self,
        endpoints: Sequence[Address],
        client_key: bytes,
        *,
        site: str = "local",
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        client_id: str | None = None,
    ) -> None:
        if not endpoints:
            raise BadRequestError("no endpoints given")
        self._endpoints = [_Endpoint(tuple(a)) for a in endpoints]  # type: ignore[arg-type]
        self._key = client_key
        self.site = site
        self.timeout_ms = timeout_ms
        self.client_id = client_id or secrets.token_hex(8)
        self._conn_id = secrets.randbelow(1 << 31)
        self._seq = 0
        self._request_ids = itertools.count(1)
        self._leader: _Endpoint | None = None
        self._rr = 0

    def close(self) -> None:
        for e in self._endpoints:
            if e.conn is not None:
                e.conn.close()
                e.conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ key-value

    def put(self, key: str, value: bytes) -> Result:
        return self.execute(Put(key=key, value=value))

    def get(self, key: str, *, stale: bool = False) -> Result:
        op = Get(key=key)
        result = self.stale_read(op) if stale else self.execute(op)
        if isinstance(result, NotFoundResult):
            raise NotFoundError(f"key {key!r} not found")
        return result

    def delete(self, key: str) -> Result:
        return self.execute(Delete(key=key))

    def cas(
        self,
        key: str,
        new: bytes,
        *,
        expect_value: bytes | None = None,
        expect_version: int | None = None,
    ) -> Result:
        if (expect_value is None) == (expect_version is None):
            raise BadRequestError("give exactly one of expect_value / expect_version")
        result = self.execute(
            Cas(key=key, new=new, expect_value=expect_value, expect_version=expect_version)
        )
        if isinstance(result, CasMismatch):
            raise CasMismatchError(
                f"cas on {key!r} failed: current version {result.version}", result
            )
        return result

    def scan(self, prefix: str = "", limit: int = 100, *, stale: bool = False) -> Result:
        op = Scan(prefix=prefix, limit=limit)
        return self.stale_read(op) if stale else self.execute(op)

    def block(self, site: str, other: str) -> Result:
        return self.execute(Block(site=site, other=other))

    def unblock(self, site: str, other: str) -> Result:
        return self.execute(Unblock(site=site, other=other))

    def blocks(self, site: str | None = None) -> Result:
        return self.execute(Blocks(site=site))

    def view(self, as_site: str, limit: int = 100) -> Result:
        return self.execute(View(as_site=as_site, limit=limit))

    # ------------------------------------------------------------------ the protocol

    def next_command(self, op: Op) -> bytes:
        """Encode ``op`` with a fresh seq; pass the bytes to ``submit`` (and again on retry)."""
        self._seq += 1
        cmd = Command(client_id=self.client_id, seq=self._seq, site=self.site, op=op)
        try:
            return encode_command(cmd)
        except BadCommand as e:
            raise BadRequestError(str(e)) from None

    def execute(self, op: Op) -> Result:
        """Order ``op`` through the log and return its result (linearizable)."""
        return self.submit(self.next_command(op))

    def submit(self, command: bytes) -> Result:
        """Send ``command`` until a node applies it or the timeout passes. Retries carry the
        same bytes, so the same (client_id, seq): applied at most once."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        last_problem = "no endpoint reachable"
        backoff = 0.02
        while time.monotonic() < deadline:
            ep = self._pick()
            if ep is None:
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 0.5)
                continue
            rid = next(self._request_ids)
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            wait_ms = max(1, min(ATTEMPT_TIMEOUT_MS, remaining_ms))
            try:
                reply = self._roundtrip(ep, ClientRequest(rid, command), rid, wait_ms)
            except _Lost as e:
                last_problem = str(e)
                continue
            if not isinstance(reply, ClientReply):
                raise BadRequestError(f"unexpected reply {type(reply).__name__}")
            if reply.status == "ok":
                self._leader = ep
                try:
                    return decode_result(reply.result)
                except BadCommand as e:
                    raise BadRequestError(f"undecodable result from the server: {e}") from None
            if reply.status == "bad_request":
                raise BadRequestError(reply.result.decode(errors="replace"))
            # not_leader / busy: follow the hint, or back off and try elsewhere.
            last_problem = f"node {ep.node_id}: {reply.status}"
            hinted = self._by_node(reply.leader)
            if hinted is None and reply.status == "not_leader" and reply.result:
                hinted = self._learn_endpoint(reply.result)
            if hinted is not None and hinted is not ep:
                self._leader = hinted
                continue
            self._leader = None
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 0.5)
        raise UnavailableError(
            f"no quorum answered within {self.timeout_ms} ms ({last_problem}); "
            "a write's outcome is unknown"
        )

    def stale_read(self, op: Op) -> Result:
        """Read the contacted node's applied state: no log round, possibly stale."""
        return self.stale_read_at(op)[0]

    def stale_read_at(self, op: Op) -> tuple[Result, dict[str, Any]]:
        """As ``stale_read``, plus where it was read: ``{"node_id", "applied_index"}``, so
        a caller can say how stale the answer may be."""
        command = self.next_command(op)
        data = self.query("read_stale", {"command": command})
        try:
            result = decode_result(bytes(data["result"]))
        except (BadCommand, KeyError, TypeError) as e:
            raise BadRequestError(f"bad stale-read reply: {e}") from None
        return result, {"node_id": data.get("node_id"), "applied_index": data.get("applied_index")}

    def query(
        self, name: str, args: dict[str, Any] | None = None, *, node: int | None = None
    ) -> dict[str, Any]:
        """Ask one node (``node``, or the first that answers) a question about itself."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        last_problem = "no endpoint reachable"
        candidates = [e for e in self._endpoints if node is None or e.node_id in (None, node)]
        for ep in itertools.islice(itertools.cycle(candidates), 3 * len(candidates)):
            if time.monotonic() >= deadline:
                break
            rid = next(self._request_ids)
            wait_ms = max(1, min(ATTEMPT_TIMEOUT_MS, int((deadline - time.monotonic()) * 1000)))
            try:
                reply = self._roundtrip(ep, QueryRequest(rid, name, args or {}), rid, wait_ms)
            except _Lost as e:
                last_problem = str(e)
                continue
            if node is not None and ep.node_id != node:
                last_problem = f"node {node} is not among the endpoints"
                continue
            if not isinstance(reply, QueryReply):
                raise BadRequestError(f"unexpected reply {type(reply).__name__}")
            if reply.status != "ok":
                raise BadRequestError(str(reply.data.get("error", reply.status)))
            return reply.data
        raise UnavailableError(
            f"no node answered {name!r} within {self.timeout_ms} ms ({last_problem})"
        )

    def query_each(self, name: str, args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Ask every endpoint; an endpoint that does not answer gets {"endpoint", "error"}."""
        out: list[dict[str, Any]] = []
        for ep in self._endpoints:
            rid = next(self._request_ids)
            endpoint = f"{ep.address[0]}:{ep.address[1]}"
            try:
                reply = self._roundtrip(
                    ep, QueryRequest(rid, name, args or {}), rid, ATTEMPT_TIMEOUT_MS
                )
            except _Lost as e:
                out.append({"endpoint": endpoint, "error": str(e)})
                continue
            data = dict(reply.data) if isinstance(reply, QueryReply) else {"error": "bad reply"}
            data["endpoint"] = endpoint
            out.append(data)
        return out

    # ------------------------------------------------------------------ connections

    def _pick(self) -> _Endpoint | None:
        if self._leader is not None and self._leader.down_until <= time.monotonic():
            return self._leader
        now = time.monotonic()
        for _ in range(len(self._endpoints)):
            ep = self._endpoints[self._rr % len(self._endpoints)]
            self._rr += 1
            if ep.down_until <= now:
                return ep
        return None

    def _learn_endpoint(self, text: bytes) -> _Endpoint | None:
        return learn_endpoint(self._endpoints, text)

    def _by_node(self, node_id: int | None) -> _Endpoint | None:
        if node_id is None:
            return None
        for ep in self._endpoints:
            if ep.node_id == node_id:
                return ep
        # Not connected yet: connect to everything we know to learn node ids.
        for ep in self._endpoints:
            if ep.node_id is None and ep.down_until <= time.monotonic():
                try:
                    self._connect(ep)
                except _Lost:
                    continue
                if ep.node_id == node_id:
                    return ep
        return None

    def _connect(self, ep: _Endpoint) -> ClientConnection:
        if ep.conn is not None:
            return ep.conn
        conn = open_connection(ep, self._key, self._conn_id)
        ep.conn = conn
        ep.node_id = conn.server_node
        return conn

    def _roundtrip(self, ep: _Endpoint, body: Any, rid: int, wait_ms: int) -> Any:
        conn = self._connect(ep)
        try:
            conn.send(body)
            deadline = time.monotonic() + wait_ms / 1000
            while True:
                left = int((deadline - time.monotonic()) * 1000)
                if left <= 0:
                    raise _Lost(f"node {ep.node_id} did not answer in {wait_ms} ms")
                for reply in conn.recv(left):
                    if getattr(reply, "request_id", None) == rid:
                        return reply
        except (TimeoutError, OSError, EOFError, BadFrame) as e:
            conn.close()
            ep.conn = None
            ep.down_until = time.monotonic() + 0.2
            raise _Lost(f"connection to node {ep.node_id} lost: {e}") from None


class _Lost(Exception):
    """One attempt failed in a way a retry elsewhere may fix."""


# ---------------------------------------------------------------------- many in flight

T = TypeVar("T")

# A pipeline sweeps its requests for timeouts this often (not per reply: that would be
# O(in flight) per reply).
_SWEEP_INTERVAL_S = 0.05
PIPELINE_IN_FLIGHT_MAX = 65_536
PIPELINE_LANES_MAX = 1024


class Session:
    """One logical client: its own ``client_id`` and ``seq``, so the session table answers
    its retries exactly once. At most one command of a session may be in flight, because
    the table remembers only a session's latest seq."""

    def __init__(self, *, site: str = "local", client_id: str | None = None) -> None:
        self.site = site
        self.client_id = client_id or secrets.token_hex(8)
        self._seq = 0

    def next_command(self, op: Op) -> bytes:
        self._seq += 1
        cmd = Command(client_id=self.client_id, seq=self._seq, site=self.site, op=op)
        try:
            return encode_command(cmd)
        except BadCommand as e:
            raise BadRequestError(str(e)) from None


@dataclass(slots=True)
class _Flight(Generic[T]):
    tag: T
    command: bytes
    lane: int
    deadline: float
    ep: _Endpoint | None = None
    rid: int = 0
    sent_at: float = 0.0
    retry_at: float = 0.0
    backoff_s: float = 0.02


class Pipeline(Generic[T]):
    """Many commands in flight at once, from one thread, over ``lanes`` connections per
    member: what a load generator needs (``paxosd.lab.bench``), where a thread per request
    would measure the GIL instead of the cluster.

    ``submit(command, tag, lane)`` queues a command (from a ``Session``); ``poll`` sends
    everything queued (one record per connection), waits at most ``timeout_ms`` and returns
    ``(tag, result or ClientError)`` for each command that finished. Retries, redirects to
    the leader and fail-over work as in ``Client`` and re-send the same bytes, so a command
    is applied at most once. Not thread-safe.
    """

    def __init__(
        self,
        endpoints: Sequence[Address],
        client_key: bytes,
        *,
        lanes: int = 1,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
    ) -> None:
        if not endpoints:
            raise BadRequestError("no endpoints given")
        if not 1 <= lanes <= PIPELINE_LANES_MAX:
            raise BadRequestError(f"lanes must be 1..{PIPELINE_LANES_MAX}")
        self._endpoints = [_Endpoint(tuple(a)) for a in endpoints]  # type: ignore[arg-type]
        self._key = client_key
        self.lanes = lanes
        self.timeout_ms = timeout_ms
        self._conn_id = secrets.randbelow(1 << 31)
        self._request_ids = itertools.count(1)
        self._leader: _Endpoint | None = None
        self._rr = 0
        # (endpoint index, lane) -> connection, and back.
        self._conns: dict[tuple[int, int], ClientConnection] = {}
        self._where: dict[int, tuple[_Endpoint, int, ClientConnection]] = {}
        self._poller = select.poll()
        self._flights: dict[int, _Flight[T]] = {}
        self._waiting: list[_Flight[T]] = []
        self._outbox: dict[int, list[ClientRequest]] = {}
        self._done: list[tuple[T, Result | ClientError]] = []
        self._next_sweep = 0.0

    def in_flight(self) -> int:
        """Commands submitted and not yet returned by ``poll``."""
        return len(self._flights) + len(self._waiting) + len(self._done)

    def submit(self, command: bytes, tag: T, lane: int = 0) -> None:
        if self.in_flight() >= PIPELINE_IN_FLIGHT_MAX:
            raise BadRequestError(f"more than {PIPELINE_IN_FLIGHT_MAX} commands in flight")
        now = time.monotonic()
        flight = _Flight(tag, command, lane % self.lanes, now + self.timeout_ms / 1000)
        self._dispatch(flight, now)

    def poll(self, timeout_ms: int) -> list[tuple[T, Result | ClientError]]:
        now = time.monotonic()
        if self._waiting:
            self._retry_waiting(now)
        self._flush()
        if self._done:
            timeout_ms = 0
        elif self._waiting:
            soonest = min(f.retry_at for f in self._waiting)
            timeout_ms = max(0, min(timeout_ms, int((soonest - now) * 1000) + 1))
        for fd, _ in self._poller.poll(timeout_ms):
            where = self._where.get(fd)
            if where is None:
                continue
            ep, lane, conn = where
            try:
                bodies = conn.read_available()
            except (OSError, EOFError, BadFrame) as e:
                self._lost(ep, lane, f"connection to node {ep.node_id} lost: {e}")
                continue
            for body in bodies:
                if isinstance(body, ClientReply):
                    flight = self._flights.pop(body.request_id, None)
                    if flight is not None:
                        self._on_reply(flight, body, ep)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + _SWEEP_INTERVAL_S
        self._flush()  # re-sends decided above go out now, not a poll later
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._where.clear()

    def __enter__(self) -> Pipeline[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _on_reply(self, flight: _Flight[T], reply: ClientReply, ep: _Endpoint) -> None:
        if reply.status == "ok":
            self._leader = ep
            try:
                self._done.append((flight.tag, decode_result(reply.result)))
            except BadCommand as e:
                error = BadRequestError(f"undecodable result from the server: {e}")
                self._done.append((flight.tag, error))
            return
        if reply.status == "bad_request":
            message = reply.result.decode(errors="replace")
            self._done.append((flight.tag, BadRequestError(message)))
            return
        # not_leader / busy: follow the hint, or back off and try elsewhere.
        hinted = self._by_node(reply.leader)
        if hinted is None and reply.status == "not_leader" and reply.result:
            hinted = self._learn_endpoint(reply.result)
        now = time.monotonic()
        if hinted is not None and hinted is not ep:
            self._leader = hinted
            self._dispatch(flight, now)
            return
        self._leader = None
        self._wait(flight, now)

    def _wait(self, flight: _Flight[T], now: float) -> None:
        flight.retry_at = now + flight.backoff_s
        flight.backoff_s = min(flight.backoff_s * 2, 0.5)
        self._waiting.append(flight)

    def _retry_waiting(self, now: float) -> None:
        due = [f for f in self._waiting if f.retry_at <= now]
        if due:
            self._waiting = [f for f in self._waiting if f.retry_at > now]
            for flight in due:
                self._dispatch(flight, now)

    def _dispatch(self, flight: _Flight[T], now: float) -> None:
        if now >= flight.deadline:
            self._give_up(flight, "no quorum answered in time")
            return
        ep = self._pick(now)
        if ep is None:
            self._wait(flight, now)
            return
        try:
            conn = self._connect(ep, flight.lane)
        except AuthError as e:
            self._done.append((flight.tag, e))
            return
        except _Lost:
            self._wait(flight, now)
            return
        rid = next(self._request_ids)
        flight.ep, flight.rid, flight.sent_at = ep, rid, now
        self._flights[rid] = flight
        self._outbox.setdefault(conn.fileno(), []).append(ClientRequest(rid, flight.command))

    def _give_up(self, flight: _Flight[T], problem: str) -> None:
        error = UnavailableError(
            f"no quorum answered within {self.timeout_ms} ms ({problem}); "
            "a write's outcome is unknown"
        )
        self._done.append((flight.tag, error))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for fd, requests in outbox.items():
            where = self._where.get(fd)
            if where is None:
                continue  # lost meanwhile; its flights were re-dispatched
            ep, lane, conn = where
            try:
                conn.send(*requests)
            except OSError as e:
                self._lost(ep, lane, f"connection to node {ep.node_id} lost: {e}")

    def _sweep(self, now: float) -> None:
        """Attempts unanswered for ATTEMPT_TIMEOUT_MS go elsewhere; past their deadline,
        commands end with UnavailableError."""
        attempt_s = ATTEMPT_TIMEOUT_MS / 1000
        stale = [f for f in self._flights.values() if now - f.sent_at >= attempt_s]
        for flight in stale:
            del self._flights[flight.rid]
            if flight.ep is self._leader:
                self._leader = None
            if flight.ep is not None:
                flight.ep.down_until = now + 0.2
            self._dispatch(flight, now)
        late = [f for f in self._waiting if now >= f.deadline]
        if late:
            self._waiting = [f for f in self._waiting if now < f.deadline]
            for flight in late:
                self._give_up(flight, "no endpoint reachable")

    def _lost(self, ep: _Endpoint, lane: int, problem: str) -> None:
        index = self._endpoints.index(ep)
        conn = self._conns.pop((index, lane), None)
        if conn is not None:
            self._where.pop(conn.fileno(), None)
            self._poller.unregister(conn.fileno())
            self._outbox.pop(conn.fileno(), None)
            conn.close()
        ep.down_until = time.monotonic() + 0.2
        if self._leader is ep:
            self._leader = None
        now = time.monotonic()
        orphans = [f for f in self._flights.values() if f.ep is ep and f.lane == lane]
        for flight in orphans:
            del self._flights[flight.rid]
            self._dispatch(flight, now)

    def _pick(self, now: float) -> _Endpoint | None:
        if self._leader is not None and self._leader.down_until <= now:
            return self._leader
        for _ in range(len(self._endpoints)):
            ep = self._endpoints[self._rr % len(self._endpoints)]
            self._rr += 1
            if ep.down_until <= now:
                return ep
        return None

    def _connect(self, ep: _Endpoint, lane: int) -> ClientConnection:
        index = self._endpoints.index(ep)
        conn = self._conns.get((index, lane))
        if conn is not None:
            return conn
        conn = open_connection(ep, self._key, self._conn_id)
        self._conns[(index, lane)] = conn
        self._where[conn.fileno()] = (ep, lane, conn)
        self._poller.register(conn.fileno(), select.POLLIN)
        ep.node_id = conn.server_node
        return conn

    def _by_node(self, node_id: int | None) -> _Endpoint | None:
        if node_id is None:
            return None
        for ep in self._endpoints:
            if ep.node_id == node_id:
                return ep
        for ep in self._endpoints:  # not connected yet: connect to learn node ids
            if ep.node_id is None and ep.down_until <= time.monotonic():
                try:
                    self._connect(ep, 0)
                except (ClientError, _Lost):
                    continue
                if ep.node_id == node_id:
                    return ep
        return None

    def _learn_endpoint(self, text: bytes) -> _Endpoint | None:
        return learn_endpoint(self._endpoints, text)


def learn_endpoint(endpoints: list[_Endpoint], text: bytes) -> _Endpoint | None:
    """The endpoint for the leader's client address a follower named, added to
    ``endpoints`` if new (bounded: members are few); None if the text is not an address."""
    try:
        address = parse_endpoint(text.decode("ascii"))
    except (UnicodeDecodeError, BadRequestError):
        return None
    for ep in endpoints:
        if ep.address == address:
            return ep
    if len(endpoints) >= ENDPOINTS_MAX:
        return None
    ep = _Endpoint(address)
    endpoints.append(ep)
    return ep


def open_connection(ep: _Endpoint, key: bytes, conn_id: int) -> ClientConnection:
    """Connect and handshake to ``ep``; marks it down for a moment when that fails. A refused
    key is an AuthError (the caller's problem); anything else is a lost endpoint."""
    try:
        return ClientConnection.connect(
            ep.address, client_key=key, client_id=conn_id, timeout_ms=CONNECT_TIMEOUT_MS
        )
    except HandshakeError as e:
        ep.down_until = time.monotonic() + 0.5
        if "auth" in str(e).lower() or "digest" in str(e).lower() or "key" in str(e).lower():
            raise AuthError(
                f"{ep.address[0]}:{ep.address[1]} refused the client key ({e})"
            ) from None
        raise _Lost(f"handshake with {ep.address[0]}:{ep.address[1]} failed: {e}") from None
    except OSError as e:
        ep.down_until = time.monotonic() + 0.2
        raise _Lost(f"{ep.address[0]}:{ep.address[1]}: {e.strerror or e}") from None
