"""Which member to ask next: one endpoint and redirect policy for ``Client`` and ``Pipeline``.

The policy, in one place so that the two clients cannot drift apart:

- ask the member that last answered "ok" (the leader) while it is reachable;
- otherwise go round the endpoint list, skipping members that failed a moment ago;
- a follower's redirect names the leader by node id and, when it knows it, by client
  address: go there at once (an address not in the list is learned, up to ENDPOINTS_MAX);
- a redirect without a usable hint (an election is under way) or "busy" means wait, with
  exponential backoff, then try again;
- every endpoint remembers why it last failed, so that giving up can say, per endpoint,
  what went wrong ("127.0.0.1:7101: connection refused; 127.0.0.1:7102: timed out").

Connections are not kept here: ``Client`` holds one per endpoint and ``Pipeline`` several,
so finding which endpoint is node N (which needs a connection) takes a ``connect`` callback.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from paxosd.client.errors import BadRequestError

Address = tuple[str, int]

# A redirect may teach new addresses; members are few, so a list this long is a bug or abuse.
ENDPOINTS_MAX = 16
# An endpoint that failed is skipped for this long (a refused connection fails fast, so
# without this a loop would spin on it).
DOWN_S = 0.2
# A handshake that failed (not a refusal): the peer is up but unhappy, wait longer.
HANDSHAKE_DOWN_S = 0.5
# A connection attempt that failed slowly (a handshake deadline, a connect timeout) blocked
# its caller for as long as it took: the endpoint is then skipped for at least that long,
# doubling with each consecutive such failure up to this bound, so that trying a stalled
# member cannot take most of a client's time (a pipeline would otherwise pay one blocking
# attempt per command, round the endpoints, long past every command's deadline).
CONNECT_DOWN_MAX_S = 2.0
# A member that answered "unavailable" (its disk is full) is skipped this long.
UNAVAILABLE_S = 1.0
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.5


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


def os_reason(e: OSError) -> str:
    """An OSError as the few words a person expects ("connection refused", "timed out")."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError):
        return "timed out"
    if e.errno is not None and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    return "connection failed"


@dataclass(slots=True)
class Endpoint:
    """One member's client address, what we learned about it, and why it last failed."""

    address: Address
    node_id: int | None = None
    down_until: float = 0.0
    problem: str | None = None
    refused: bool = False
    # Connection attempts that failed in a row, other than refusals (see connect_failed).
    connect_failures: int = 0

    @property
    def name(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Backoff:
    """Exponential waits between rounds that found no one to serve a request."""

    __slots__ = ("_next_s",)

    def __init__(self) -> None:
        self._next_s = BACKOFF_FIRST_S

    def next(self) -> float:
        wait = self._next_s
        self._next_s = min(self._next_s * 2, BACKOFF_MAX_S)
        return wait


class Router:
    """The endpoint list, the leader we believe in, and the choice of the next endpoint."""

    def __init__(self, addresses: Sequence[Address]) -> None:
        if not addresses:
            raise BadRequestError("no endpoints given")
        self.endpoints = [Endpoint((str(a[0]), int(a[1]))) for a in addresses]
        self.leader: Endpoint | None = None
        self._rr = 0

    def pick(self, now: float | None = None) -> Endpoint | None:
        """The leader if it is up, else the next endpoint round-robin that is up; None when
        every endpoint failed a moment ago (the caller backs off)."""
        now = time.monotonic() if now is None else now
        if self.leader is not None and self.leader.down_until <= now:
            return self.leader
        for _ in range(len(self.endpoints)):
            ep = self.endpoints[self._rr % len(self.endpoints)]
            self._rr += 1
            if ep.down_until <= now:
                return ep
        return None

    def ok(self, ep: Endpoint) -> None:
        """``ep`` served a command: it leads (as far as we know)."""
        self.leader = ep
        ep.problem = None
        ep.refused = False

    def failed(
        self, ep: Endpoint, problem: str, *, refused: bool = False, down_s: float = DOWN_S
    ) -> None:
        """``ep`` could not be used: skip it for ``down_s`` and remember why."""
        ep.down_until = time.monotonic() + down_s
        ep.problem = problem
        ep.refused = refused
        if self.leader is ep:
            self.leader = None

    def connect_failed(
        self, ep: Endpoint, problem: str, *, refused: bool, down_s: float, spent_s: float
    ) -> None:
        """A connection attempt to ``ep`` that took ``spent_s`` failed. A refusal is cheap
        and is skipped for ``down_s``; any other failure for at least what it cost, doubled
        per consecutive failure (bounded by CONNECT_DOWN_MAX_S) until a connection succeeds."""
        if refused:
            self.failed(ep, problem, refused=True, down_s=down_s)
            return
        grown = max(down_s, spent_s) * 2 ** min(ep.connect_failures, 16)
        ep.connect_failures += 1
        self.failed(ep, problem, down_s=max(down_s, min(grown, CONNECT_DOWN_MAX_S)))

    def connected(self, ep: Endpoint, node_id: int) -> None:
        ep.node_id = node_id
        ep.problem = None
        ep.refused = False
        ep.connect_failures = 0

    def redirect(
        self,
        ep: Endpoint,
        leader: int | None,
        leader_address: str | None,
        connect: Callable[[Endpoint], None],
    ) -> Endpoint | None:
        """A "not_leader" or "busy" answer from ``ep``: the endpoint to try at once, or None
        to back off (no hint, or the hint is ``ep`` itself). ``connect`` opens a connection
        to an endpoint so that its node id is known, and raises to say it could not."""
        if leader is None:
            ep.problem = "knows no leader (an election, or no quorum)"
        elif leader == ep.node_id:
            ep.problem = "busy"
        else:
            ep.problem = f"not the leader (node {leader} is)"
        hinted = self.by_node(leader, connect)
        if hinted is None and leader_address:
            hinted = self.learn(leader_address)
        if hinted is not None and hinted is not ep:
            self.leader = hinted
            return hinted
        self.leader = None
        return None

    def by_node(self, node_id: int | None, connect: Callable[[Endpoint], None]) -> Endpoint | None:
        """The endpoint of member ``node_id``; connects to endpoints not yet identified."""
        if node_id is None:
            return None
        for ep in self.endpoints:
            if ep.node_id == node_id:
                return ep
        now = time.monotonic()
        for ep in self.endpoints:
            if ep.node_id is None and ep.down_until <= now:
                try:
                    connect(ep)
                except Exception:  # noqa: BLE001 - the callback's failure only means "not this one"
                    continue
                if ep.node_id == node_id:
                    return ep
        return None

    def learn(self, text: str) -> Endpoint | None:
        """The endpoint for the leader's client address a follower named, added to the list if
        new (bounded: members are few); None if the text is not an address."""
        try:
            address = parse_endpoint(text)
        except BadRequestError:
            return None
        for ep in self.endpoints:
            if ep.address == address:
                return ep
        if len(self.endpoints) >= ENDPOINTS_MAX:
            return None
        ep = Endpoint(address)
        self.endpoints.append(ep)
        return ep

    def forget_refusals(self) -> None:
        """A new request starts: only refusals seen while serving it count for it."""
        for ep in self.endpoints:
            ep.refused = False

    def all_refused(self) -> bool:
        """Every endpoint's last attempt was a refused connection: nothing listens, and
        waiting out the timeout would only delay the same answer."""
        return all(ep.refused for ep in self.endpoints)

    def problems(self) -> str:
        """Each endpoint with the reason it last failed ("host:port: connection refused; ...")."""
        shown = [f"{ep.name}: {ep.problem}" for ep in self.endpoints if ep.problem]
        return "; ".join(shown) if shown else "no endpoint answered"


def is_refusal(e: OSError) -> bool:
    return isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED


__all__ = [
    "CONNECT_DOWN_MAX_S",
    "ENDPOINTS_MAX",
    "Address",
    "Backoff",
    "Endpoint",
    "Router",
    "is_refusal",
    "os_reason",
    "parse_endpoint",
]
