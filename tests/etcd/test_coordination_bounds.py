"""The bounds and error mappings of the etcd Lease/Lock/Election services, in process (no
cluster): held calls per connection and in all, leases per KeepAlive stream, and the lease
refusals in etcd's words."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the etcd extra is not installed")

from paxosd.client.errors import LeaseNotFoundError, LeaseRefusedError  # noqa: E402
from paxosd.etcd import coordination  # noqa: E402
from paxosd.etcd.coordination import HeldCalls, LeaseService  # noqa: E402
from paxosd.etcd.gateway import Abort, lease_refusal, status_of  # noqa: E402
from paxosd.etcd.proto import rpc_pb2  # noqa: E402
from tests.waiting import wait_for  # noqa: E402


class _Context:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def FakeContext(peer: str) -> Any:  # noqa: N802
    """Stands for the gRPC ServicerContext: only its peer (the connection) is read."""
    return _Context(peer)


def test_held_calls_are_bounded_per_connection_and_in_all() -> None:
    held = HeldCalls(total=3, per_peer=2)
    a = FakeContext("ipv4:127.0.0.1:5001")
    with held.hold(a), held.hold(a):
        with pytest.raises(Abort) as e, held.hold(a):
            pass
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with (
            held.hold(FakeContext("ipv4:127.0.0.1:5002")),
            pytest.raises(Abort),
            held.hold(FakeContext("ipv4:127.0.0.1:5003")),
        ):
            pass  # the fourth in all
        with held.hold(FakeContext("ipv4:127.0.0.1:5003")):
            pass  # one was released: room again
    with held.hold(a), held.hold(a):
        pass  # every slot came back


class FakeClient:
    last_header = None

    def __init__(self, alive: set[int]) -> None:
        self.alive = alive

    def lease_keep_alive_once(self, lease_id: int) -> int:
        if lease_id not in self.alive:
            raise LeaseNotFoundError("gone", lease_id)
        return 10


class FakeBackend:
    def __init__(self, client: FakeClient) -> None:
        self.c = client

    def client(self) -> FakeClient:
        return self.c

    def header(self, h: Any = None, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader()


def _any(x: object) -> Any:
    return x


def _requests(ids: list[int]) -> Iterator[rpc_pb2.LeaseKeepAliveRequest]:
    return iter(rpc_pb2.LeaseKeepAliveRequest(ID=i) for i in ids)


def test_a_keepalive_stream_renews_a_bounded_number_of_leases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(coordination, "KEEPALIVE_LEASES_MAX", 3)
    service = LeaseService(_any(FakeBackend(FakeClient({1, 2, 3}))), HeldCalls())
    answers = list(service._keep_alive(_requests([1, 2, 3, 1, 2])))
    assert sorted((a.ID, a.TTL) for a in answers) == [(1, 10), (1, 10), (2, 10), (2, 10), (3, 10)]
    got: list[tuple[int, int]] = []
    with pytest.raises(Abort) as e:  # the fourth distinct lease
        for a in service._keep_alive(_requests([1, 2, 99, 4, 1])):
            got.append((a.ID, a.TTL))
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # etcd answers a lease that is gone with TTL 0; nothing past the refused one is renewed.
    assert set(got) <= {(1, 10), (2, 10), (99, 0)}


def test_a_keepalive_stream_has_a_bounded_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: with a window of 2 and workers that do not answer yet, the reader hands two
    keep-alives and waits; once answers flow every request is answered."""
    import threading

    monkeypatch.setattr(coordination, "KEEPALIVE_IN_FLIGHT_MAX", 2)
    gate = threading.Event()
    asked: list[int] = []

    class SlowClient(FakeClient):
        def lease_keep_alive_once(self, lease_id: int) -> int:
            asked.append(lease_id)
            gate.wait(30)
            return super().lease_keep_alive_once(lease_id)

    service = LeaseService(_any(FakeBackend(SlowClient({1, 2, 3, 4, 5}))), HeldCalls())
    pulled: list[int] = []

    def requests() -> Iterator[rpc_pb2.LeaseKeepAliveRequest]:
        for i in [1, 2, 3, 4, 5]:
            pulled.append(i)
            yield rpc_pb2.LeaseKeepAliveRequest(ID=i)

    stream = service._keep_alive(requests())
    answers: list[Any] = []
    reader = threading.Thread(target=lambda: answers.extend(stream))
    reader.start()
    wait_for("two keep-alives are in flight", lambda: len(asked) == 2)
    wait_for("the third request is read", lambda: len(pulled) >= 3)
    # The window holds the third back: not handed to a worker, no fourth read.
    assert (len(asked), len(pulled), service.pool._jobs.qsize()) == (2, 3, 0)
    gate.set()
    reader.join(30)
    assert sorted(a.ID for a in answers) == [1, 2, 3, 4, 5]


def test_lease_errors_in_etcds_words() -> None:
    assert status_of(LeaseNotFoundError("lease 7 not found", 7)) == (
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    )
    taken = LeaseRefusedError("lease refused: lease 5 already exists")
    assert lease_refusal(taken) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: lease already exists",
    )
    short = LeaseRefusedError("lease refused: lease TTL 1 s is below the minimum 2 s (...)")
    code, message = status_of(short)
    assert code == grpc.StatusCode.OUT_OF_RANGE and "below the minimum 2 s" in message
    full = LeaseRefusedError("lease refused: the cluster's bound on leases is reached")
    assert status_of(full)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_keepalives_of_a_closed_stream_are_not_sent() -> None:
    """A stream that ended (its client cancelled it, to let its leases lapse) may have up
    to KEEPALIVE_IN_FLIGHT_MAX keep-alives queued on the shared workers: they are dropped,
    not renewed, so they neither extend a lease its client gave up nor delay the renewals
    of the streams still open."""
    import threading

    gate = threading.Event()
    asked: list[int] = []

    class GatedClient(FakeClient):
        def lease_keep_alive_once(self, lease_id: int) -> int:
            asked.append(lease_id)
            gate.wait(30)
            return super().lease_keep_alive_once(lease_id)

    pool = coordination.KeepAlivePool(_any(FakeBackend(GatedClient({1, 2, 3}))), workers=1)
    answered: list[int] = []
    open_stream, closed_stream = threading.Event(), threading.Event()

    def answer(a: Any) -> None:
        answered.append(a.ID)

    pool.renew(1, answer, open_stream)
    wait_for("the worker renews lease 1", lambda: asked == [1])
    pool.renew(2, answer, closed_stream)  # queued behind 1; its stream then ends
    pool.renew(3, answer, open_stream)
    closed_stream.set()
    gate.set()
    wait_for("lease 3 is answered", lambda: 3 in answered)
    assert asked == [1, 3] and answered == [1, 3]
