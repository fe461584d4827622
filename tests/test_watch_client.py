"""The client's side of a watch without a cluster: what it makes of each response (resume
point, progress, duplicates after a failover, compaction, refusals), and how paxosctl prints
a batch. The failover itself runs against real processes in tests/test_watch_cluster.py."""

from __future__ import annotations

import socket

import pytest

from paxosctl.watch import event_json, print_batch
from paxosd.client.errors import BadRequestError, CompactedError, UnavailableError
from paxosd.client.routing import Endpoint, Router
from paxosd.client.watch import Watch, WatchBatch, WatchCanceledError
from paxosd.net.framing import WatchResponse
from paxosd.statemachine.commands import Event, KeyValue
from tests.waiting import wait_for

KEY = b"k" * 32


def put(key: str, rev: int, value: bytes = b"v", prev: KeyValue | None = None) -> Event:
    return Event("PUT", KeyValue(key, value, 2, rev, 1), prev)


def watch(start: int = 0) -> Watch:
    # Never connects: the tests hand it responses as if they had arrived.
    return Watch([("127.0.0.1", 9)], KEY, "k", prefix=True, start_revision=start)


def feed(w: Watch, *responses: WatchResponse) -> list[WatchBatch]:
    for r in responses:
        w._on_response(r)
    out = list(w._pending)
    w._pending.clear()
    return out


def test_a_watch_from_now_starts_after_the_created_revision() -> None:
    w = watch()
    assert feed(w, WatchResponse(1, revision=7, created=True)) == []
    assert w.next_revision == 8 and w.created_revision == 7
    got = feed(w, WatchResponse(1, events=(put("k1", 8), put("k2", 8)), revision=8, node=2))
    assert [len(b.events) for b in got] == [2] and got[0].node == 2
    assert w.next_revision == 9


def test_after_a_failover_nothing_already_delivered_is_delivered_again() -> None:
    w = watch(start=5)
    feed(w, WatchResponse(1, revision=9, created=True))
    assert w.next_revision == 5  # an explicit start wins over the created revision
    feed(w, WatchResponse(1, events=(put("k", 5), put("k", 6)), revision=9))
    # A member that resent revision 6 (it must not, but the client does not rely on it).
    got = feed(w, WatchResponse(1, events=(put("k", 6), put("k", 7)), revision=9))
    assert [e.kv.mod_revision for b in got for e in b.events] == [7]
    assert w._create().start_revision == 8  # where a reconnection resumes


def test_progress_never_goes_below_what_was_delivered() -> None:
    w = watch(start=10)
    feed(w, WatchResponse(1, revision=12, created=True))
    feed(w, WatchResponse(1, events=(put("k", 12),), revision=12))
    # A member behind the one before (after a failover) reports an older revision: dropped.
    assert feed(w, WatchResponse(1, revision=9, progress=True)) == []
    (p,) = feed(w, WatchResponse(1, revision=20, progress=True, node=3))
    assert p.progress and p.events == () and p.revision == 20
    assert w.next_revision == 21


def test_a_compacted_cancel_raises_with_the_compaction_revision() -> None:
    w = watch(start=3)
    feed(w, WatchResponse(1, revision=50, created=True))
    feed(w, WatchResponse(1, canceled=True, compact_revision=40, reason="compacted"))
    with pytest.raises(CompactedError) as e:
        w.next_batch(0)
    assert e.value.compact_revision == 40 and e.value.revision == 3
    assert "oldest revision kept is 40" in str(e.value)
    assert w.done
    assert w.next_batch(0) is None  # raised once; then simply done


class FakeConn:
    """A connection whose reads return the given lists of responses, one list per read."""

    def __init__(self, node: int, reads: list[list[WatchResponse]]) -> None:
        self.server_node = node
        self.reads = reads
        self.closed = False

    def recv(self, timeout_ms: int) -> list[WatchResponse]:
        return self.reads.pop(0) if self.reads else []

    def send(self, *bodies: object) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def members(monkeypatch: pytest.MonkeyPatch, conns: dict[int, list[FakeConn]]) -> Watch:
    """A watch over endpoints 127.0.0.1:1, :2, ... whose connections are ``conns[port]`` in
    turn (member ``port`` is node ``port``)."""

    def connect(router: Router, ep: Endpoint, key: bytes, conn_id: int, **kw: int) -> FakeConn:
        conn = conns[ep.address[1]].pop(0)
        router.connected(ep, conn.server_node)
        return conn

    monkeypatch.setattr("paxosd.client.watch.open_connection", connect)
    return Watch([("127.0.0.1", port) for port in sorted(conns)], KEY, "k", prefix=True)


@pytest.mark.parametrize(
    "cancel",
    [
        WatchResponse(1, canceled=True, compact_revision=20, reason="compacted"),
        WatchResponse(1, canceled=True, reason="the events of revision 13 are too large"),
    ],
)
def test_events_read_with_the_cancel_are_all_iterated_before_it_raises(
    monkeypatch: pytest.MonkeyPatch, cancel: WatchResponse
) -> None:
    w = members(
        monkeypatch,
        {
            1: [
                FakeConn(
                    1,
                    [
                        [WatchResponse(1, created=True, revision=9)],
                        # One read: two batches, then the cancel.
                        [
                            WatchResponse(1, events=(put("k", 10), put("k", 11)), revision=12),
                            WatchResponse(1, events=(put("k", 12),), revision=12),
                            cancel,
                        ],
                    ],
                )
            ]
        },
    )
    seen: list[list[int]] = []
    with pytest.raises((CompactedError, WatchCanceledError)) as e:
        for batch in w:
            seen.append([ev.kv.mod_revision for ev in batch.events])
    assert seen == [[10, 11], [12]]
    assert w.next_revision == 13
    if isinstance(e.value, CompactedError):
        assert e.value.revision == 13  # what the caller saw, and nothing it did not


def test_a_member_that_refuses_the_watch_is_left_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = WatchResponse(1, created=True, canceled=True, reason="too many watchers on this node")
    w = members(
        monkeypatch,
        {
            1: [FakeConn(1, [[full]])],
            2: [FakeConn(2, [[WatchResponse(1, created=True, revision=4, node=2)]])],
        },
    )
    w2 = w._router.endpoints[1]
    # Node 1 answers first (round-robin from the first endpoint), refuses; node 2 serves.
    assert w.wait_created(5000) == 4
    assert w.reconnects == 1 and w._node == 2 and w2.node_id == 2
    assert "too many watchers on this node" in (w._router.endpoints[0].problem or "")
    assert not w.done


def test_a_watch_every_member_refuses_ends_with_their_reasons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(node: int) -> FakeConn:
        reason = f"too many watchers on node {node}"
        return FakeConn(node, [[WatchResponse(1, created=True, canceled=True, reason=reason)]])

    w = members(monkeypatch, {1: [full(1)], 2: [full(2)]})
    with pytest.raises(WatchCanceledError, match="every member refused") as e:
        w.wait_created(5000)
    assert "node 1" in e.value.reason and "node 2" in e.value.reason
    assert w.done


def test_next_batch_returns_none_within_its_wait_while_no_member_answers() -> None:
    # A member that accepts TCP connections and never answers the handshake (the kernel
    # completes the connection from the listen backlog; nobody accepts).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        w = Watch([silent.getsockname()], KEY, "k", timeout_ms=10_000)
        try:
            # Not UnavailableError after the watch's whole timeout: None after its own wait.
            assert w.next_batch(200) is None
            assert w.next_batch(200) is None
            assert not w.done
        finally:
            w.close()


def test_the_unavailable_deadline_runs_across_short_waits() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        w = Watch([silent.getsockname()], KEY, "k", timeout_ms=1000)

        def unavailable() -> bool:
            try:
                assert w.next_batch(100) is None
            except UnavailableError as e:
                assert "could not reach any member within 1000 ms" in str(e)
                return True
            return False

        try:
            wait_for("the watch gives up after its timeout", unavailable)
        finally:
            w.close()


@pytest.mark.parametrize(
    ("key", "prefix", "filters", "words"),
    [("", False, (), "empty"), ("k", False, ("put",), "unknown event filter")],
)
def test_a_bad_watch_is_refused_before_it_is_sent(
    key: str, prefix: bool, filters: tuple[str, ...], words: str
) -> None:
    with pytest.raises(BadRequestError, match=words):
        Watch([("127.0.0.1", 9)], KEY, key, prefix=prefix, filters=filters)


def test_cancel_before_iterating_ends_the_iteration_without_connecting() -> None:
    w = watch()
    w.cancel()
    assert list(w) == []
    assert w.done


def test_paxosctl_prints_events_as_etcdctl_does(capsys: pytest.CaptureFixture[str]) -> None:
    prev = KeyValue("k", b"old", 2, 3, 1)
    batch = WatchBatch(
        (put("k", 4, b"new", prev), Event("DELETE", KeyValue("k", b"", 0, 5, 0), None)),
        5,
        False,
        1,
    )
    assert print_batch(batch, False, None) == 2
    assert capsys.readouterr().out == "PUT\nk\nold\nk\nnew\nDELETE\nk\n\n"
    assert print_batch(batch, False, 1) == 1  # --count stops inside a batch
    assert capsys.readouterr().out == "PUT\nk\nold\nk\nnew\n"
    print_batch(WatchBatch((), 9, True, 1), True, None)
    assert capsys.readouterr().out == '{"progress":9}\n'
    assert event_json(batch.events[0])["prev_kv"]["value"] == "old"
    assert event_json(batch.events[1]) == {
        "type": "DELETE",
        "kv": {
            "key": "k",
            "value": "",
            "value_encoding": "utf-8",
            "create_revision": 0,
            "mod_revision": 5,
            "version": 0,
            "lease": 0,
        },
        "prev_kv": None,
    }
