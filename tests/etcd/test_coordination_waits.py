"""How a waiting etcd Lock or Campaign ends, in process (no cluster): the RPC's end cancels
the wait even when it came before the wait registered for it, a lock or leadership won for a
caller already gone is given back, and each end gets etcd's status."""

from __future__ import annotations

import threading
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.client.errors import LeaseNotFoundError  # noqa: E402
from paxosd.client.recipes import LockLostError, LockTimeoutError  # noqa: E402
from paxosd.etcd import coordination  # noqa: E402
from paxosd.etcd.gateway import Abort  # noqa: E402

# Liveness bound of the fake waits below (never reached when the code is right).
WAIT_BOUND_S = 10.0


class FakeClient:
    """The lease checks a wait makes: the lease exists unless ``gone``."""

    timeout_ms = 1000

    def __init__(self, gone: bool = False) -> None:
        self.gone = gone

    def clone(self) -> FakeClient:
        return self

    def close(self) -> None:
        pass

    def lease_time_to_live(self, lease_id: int) -> object:
        if self.gone:
            raise LeaseNotFoundError("gone", lease_id)
        return object()


class FakeContext:
    """A unary RPC's context. ``ended``: the RPC is over (its client cancelled or went away)
    before the wait registered its callback, so gRPC registers nothing and says so."""

    def __init__(self, *, ended: bool = False, ends_during_wait: bool = False) -> None:
        self.ended = ended
        self.ends_during_wait = ends_during_wait
        self.callbacks: list[Any] = []

    def add_callback(self, fn: Any) -> bool:
        if self.ended:
            return False
        self.callbacks.append(fn)
        return True

    def is_active(self) -> bool:
        return not self.ended

    def time_remaining(self) -> float | None:
        return None

    def end(self) -> None:
        self.ended = True
        for fn in self.callbacks:
            fn()


def _any(x: object) -> Any:
    return x


def test_an_rpc_that_ended_before_the_wait_began_cancels_it() -> None:
    """gRPC's add_callback returns False, and calls nothing, for an RPC already over: the
    wait must be cancelled at once, not run on (holding a worker, and then the lock, for a
    caller who is gone)."""
    canceled = threading.Event()
    undone: list[str] = []

    def wait(timeout_s: float | None) -> str:
        if canceled.wait(WAIT_BOUND_S):
            raise LockTimeoutError("the wait was canceled")
        return "lock/1"

    with pytest.raises(Abort) as e:
        coordination._wait(
            _any(FakeContext(ended=True)),
            _any(FakeClient()),
            1,
            canceled.set,
            wait,
            lambda: undone.append("undone"),
        )
    assert canceled.is_set()
    assert e.value.code == grpc.StatusCode.CANCELLED


def test_a_lock_won_after_its_caller_left_is_given_back() -> None:
    """The wait succeeds just as the RPC ends: nobody will learn the key, so nobody would
    Unlock it, and on a lease the caller keeps alive the lock would be held forever."""
    context = FakeContext()
    undone: list[str] = []

    def wait(timeout_s: float | None) -> str:
        context.ended = True  # the caller went away; the lock was won all the same
        return "lock/1"

    with pytest.raises(Abort) as e:
        coordination._wait(
            _any(context),
            _any(FakeClient()),
            1,
            lambda: None,
            wait,
            lambda: undone.append("undone"),
        )
    assert e.value.code == grpc.StatusCode.CANCELLED
    assert undone == ["undone"]


def test_a_won_wait_for_a_caller_still_there_is_answered() -> None:
    undone: list[str] = []
    got = coordination._wait(
        _any(FakeContext()),
        _any(FakeClient()),
        1,
        lambda: None,
        lambda timeout_s: "lock/1",
        lambda: undone.append("undone"),
    )
    assert got == "lock/1"
    assert undone == []


def test_a_key_deleted_under_a_waiter_is_not_reported_as_a_deadline() -> None:
    """The waiter's own key was deleted (an Unlock of it from elsewhere) while its lease
    lives and no deadline was set: etcd's Mutex says the session is expired; a
    DEADLINE_EXCEEDED would tell a client to retry a wait that did not time out."""

    def wait(timeout_s: float | None) -> str:
        raise LockLostError("lock/1 was deleted while it waited for its turn")

    with pytest.raises(Abort) as e:
        coordination._wait(
            _any(FakeContext()), _any(FakeClient()), 1, lambda: None, wait, lambda: None
        )
    assert e.value.code != grpc.StatusCode.DEADLINE_EXCEEDED
    assert e.value.message == coordination.SESSION_EXPIRED


def test_a_wait_whose_lease_is_gone_ends_with_etcds_lease_error() -> None:
    def wait(timeout_s: float | None) -> str:
        raise LockLostError("lock/1 was deleted while it waited for its turn")

    with pytest.raises(Abort) as e:
        coordination._wait(
            _any(FakeContext()), _any(FakeClient(gone=True)), 1, lambda: None, wait, lambda: None
        )
    assert e.value.code == grpc.StatusCode.NOT_FOUND
