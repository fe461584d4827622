"""The gateway's forwarder, in process against an endpoint where nothing listens: its slots
are bounded (RESOURCE_EXHAUSTED past them), a request that ends frees its slot, and a
forwarder whose thread fails answers UNAVAILABLE instead of leaving callers waiting.
Puts and ranges through it against a real cluster are tests/etcd/test_grpc_api.py's."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.client.errors import UnavailableError  # noqa: E402
from paxosd.etcd.forward import Forwarder, Full  # noqa: E402
from paxosd.etcd.gateway import Abort, Backend, Identity  # noqa: E402
from paxosd.statemachine.commands import Get, Put  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

KEY = b"k" * 32


@pytest.fixture
def nowhere() -> Iterator[tuple[str, int]]:
    """A loopback address that refuses connections (a node that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield ("127.0.0.1", s.getsockname()[1])


def _failed(fut: Any) -> bool:
    return bool(fut.done()) and isinstance(fut.exception(), UnavailableError)


def test_slots_are_bounded_and_full_is_resource_exhausted(nowhere: tuple[str, int]) -> None:
    backend = Backend([nowhere], KEY, Identity(1, 1))
    backend.forwarder = Forwarder([nowhere], KEY, timeout_ms=60_000, in_flight_max=2)
    try:
        first = backend.forwarder.submit(Put(key="a", value=b"1"))
        backend.forwarder.submit(Get(key="a"))
        with pytest.raises(Full):
            backend.forwarder.submit(Get(key="a"))
        with pytest.raises(Abort) as e:
            backend.forward(Get(key="a"))
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many requests" in e.value.message
    finally:
        backend.close()
    # Stopping the listener ends what was waiting: nothing hangs on a closed forwarder.
    wait_for("the waiting put failed at close", lambda: _failed(first))
    with pytest.raises(UnavailableError):
        backend.forwarder.submit(Get(key="a"))


def test_an_ended_request_frees_its_slot(nowhere: tuple[str, int]) -> None:
    fwd = Forwarder([nowhere], KEY, timeout_ms=200, in_flight_max=1)
    try:
        fut = fwd.submit(Get(key="a"))
        wait_for("the read gave up on the absent node", lambda: _failed(fut))
        # Its slot came back (the pipeline returned it with the failure): a second fits.
        second = wait_for("a slot is free again", lambda: _try_submit(fwd))
        wait_for("the second read gave up too", lambda: _failed(second))
    finally:
        fwd.close()


def _try_submit(fwd: Forwarder) -> Any:
    try:
        return fwd.submit(Get(key="a"))
    except Full:
        return None


def test_a_failed_forwarder_answers_unavailable(nowhere: tuple[str, int]) -> None:
    fwd = Forwarder([nowhere], KEY, timeout_ms=60_000)

    def broken(timeout_ms: int) -> Any:
        raise RuntimeError("planted: the forwarder's thread fails")

    fwd._pipe.poll_replies = broken  # type: ignore[method-assign]
    try:
        fut = fwd.submit(Put(key="a", value=b"1"))
        wait_for("the waiting put failed with the thread", lambda: _failed(fut))
        assert "connection to its node failed" in str(fut.exception())
        with pytest.raises(UnavailableError):
            fwd.submit(Get(key="a"))
    finally:
        fwd.close()
