"""The client's ``Lease`` keep-alive rules, against a scripted client: a lease the leader
says is gone, or one no keep-alive was acknowledged for during a whole TTL, is ``lost`` (with
its reason, and ``on_lost`` called); acknowledged keep-alives keep it. Locks and elections
hold their keys on this same ``Lease``, so these rules are theirs too."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from paxosd.client.errors import LeaseNotFoundError, UnavailableError
from paxosd.client.lease import Lease

BOUND_S = 30.0


class ScriptedClient:
    """Answers each keep-alive with the next outcome of ``answer()``."""

    timeout_ms = 1000

    def __init__(self, answer: Callable[[int, int], int]) -> None:
        self.answer = answer
        self.calls = 0
        self.closed = threading.Event()

    def clone(self, **_: object) -> ScriptedClient:
        return self

    def close(self) -> None:
        self.closed.set()

    def lease_keep_alive_once(self, lease_id: int) -> int:
        self.calls += 1
        return self.answer(self.calls, lease_id)


def keep(answer: Callable[[int, int], int], ttl: int = 1) -> tuple[Lease, list[str]]:
    said: list[str] = []
    lease = Lease(ScriptedClient(answer), 0x2A, ttl, on_lost=said.append)  # type: ignore[arg-type]
    lease.start_keepalive()
    return lease, said


def test_a_lease_the_leader_says_is_gone_is_lost() -> None:
    def answer(n: int, lease_id: int) -> int:
        if n < 3:
            return 1
        raise LeaseNotFoundError("requested lease not found", lease_id)

    lease, said = keep(answer)
    assert lease.lost.wait(BOUND_S)
    assert lease.keepalives == 2
    assert said == ["lease 2a expired or was revoked"] and lease.reason == said[0]
    lease.stop_keepalive()


def test_no_keep_alive_acknowledged_for_a_whole_ttl_is_a_lost_lease() -> None:
    def answer(n: int, lease_id: int) -> int:
        raise UnavailableError("no member answers")

    lease, said = keep(answer)
    assert lease.lost.wait(BOUND_S)
    assert said == ["no keep-alive of lease 2a acknowledged for 1 s"]
    assert isinstance(lease.last_error, UnavailableError)
    lease.stop_keepalive()


def test_a_keep_alive_answered_with_ttl_zero_is_a_lost_lease() -> None:
    lease, said = keep(lambda n, _: 1 if n == 1 else 0)
    assert lease.lost.wait(BOUND_S)
    assert said == ["lease 2a expired"]
    lease.stop_keepalive()


def test_acknowledged_keep_alives_keep_the_lease_through_short_outages() -> None:
    # Unavailable every other call: each gap between acknowledgements (~1.3 s) is well
    # under the TTL (3 s), so the lease is never lost.
    done = threading.Event()

    def answer(n: int, lease_id: int) -> int:
        if n >= 6:
            done.set()
        if n % 2:
            raise UnavailableError("a leader change")
        return 3

    lease, said = keep(answer, ttl=3)
    assert done.wait(BOUND_S)
    lease.stop_keepalive()
    assert not lease.lost.is_set() and said == []
    assert lease.keepalives >= 2


class _Pipe:
    """Takes the keeper's submissions without sending them."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def submit(self, command: bytes, tag: int, lane: int = 0, *, read: bool = False) -> None:
        self.sent.append(tag)


def test_keepalives_count_a_lease_from_the_send_of_its_acknowledged_keep_alive() -> None:
    """The leader counts the TTL from when the keep-alive reached it, which may be as early
    as its send: an answer that comes back late (a slow lane, a retry on another member) must
    not make the keeper believe the lease lives a TTL from the answer."""
    from paxosd.client.keepalives import KeepAlives
    from paxosd.statemachine.commands import LeaseKept

    keeper = KeepAlives([("127.0.0.1", 1)], b"k" * 32, ttl=10, lanes=1)
    keeper.add(7, alive_since=0.0)
    keeper._take_added(0.0)
    pipe = _Pipe()
    keeper._send_due(pipe, 1.0)  # type: ignore[arg-type]  # sent at 1.0
    assert pipe.sent == [7]
    keeper._answered(7, LeaseKept(id=7, ttl=10), 4.0)  # answered 3 s later
    # The leader may have received it at 1.0, so the lease may be gone from 11.0 on.
    keeper._send_due(pipe, 11.5)  # type: ignore[arg-type]
    assert 7 in keeper.lost and pipe.sent == [7]


class _FakeTime:
    """A clock that moves only when the keep-alive thread waits or a call runs."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


class _FakeStop:
    """``Lease._stop``: a wait moves the fake clock instead of sleeping."""

    def __init__(self, clock: _FakeTime) -> None:
        self.clock = clock
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def clear(self) -> None:
        self.flag = False

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float) -> bool:
        self.clock.now += timeout
        return self.flag


def test_a_lease_is_lost_no_later_than_ttl_after_its_last_acknowledged_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the last acknowledged keep-alive was sent, the leader may expire the lease a TTL
    later: no keep-alive call may still be running past that (each call is bounded by the time
    left), so ``lost`` is never set later than TTL after that send."""
    import paxosd.client.lease as lease_module

    clock = _FakeTime()
    monkeypatch.setattr(lease_module, "time", clock)
    calls: list[tuple[float, float]] = []  # (start, end) of each failed call
    acked: list[float] = []

    class HangingClient(ScriptedClient):
        def lease_keep_alive_once(self, lease_id: int) -> int:
            self.calls += 1
            if self.calls == 1:
                acked.append(clock.now)
                return 3
            start = clock.now
            clock.now += self.timeout_ms / 1000  # runs to its timeout, then gives up
            calls.append((start, clock.now))
            raise UnavailableError("no member answers")

    said: list[str] = []
    lease = Lease(HangingClient(lambda n, i: 0), 0x2A, 3, on_lost=said.append)  # type: ignore[arg-type]
    lease._stop = _FakeStop(clock)  # type: ignore[assignment]
    lease.start_keepalive()
    assert lease.lost.wait(BOUND_S)
    assert said == ["no keep-alive of lease 2a acknowledged for 3 s"]
    (sent,) = acked
    assert calls and all(end <= sent + 3 for _, end in calls), (sent, calls)


def test_keepalives_lose_a_lease_at_its_ttl_even_while_its_keep_alive_is_in_flight() -> None:
    """A keep-alive still unanswered a TTL after the last acknowledged send: the leader may
    have expired the lease already, so it is lost now, not when that call gives up."""
    from paxosd.client.keepalives import KeepAlives

    keeper = KeepAlives([("127.0.0.1", 1)], b"k" * 32, ttl=10, lanes=1)
    keeper.add(7, alive_since=0.0)
    keeper._take_added(0.0)
    pipe = _Pipe()
    keeper._send_due(pipe, 9.0)  # type: ignore[arg-type]  # in flight from 9.0
    assert pipe.sent == [7] and 7 not in keeper.lost
    keeper._send_due(pipe, 9.9)  # type: ignore[arg-type]
    assert 7 not in keeper.lost
    keeper._send_due(pipe, 10.0)  # type: ignore[arg-type]
    assert keeper.lost == {7: "no keep-alive of lease 7 acknowledged for 10 s"}
