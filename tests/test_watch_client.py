"""The client's side of a watch without a cluster: what it makes of each response (resume
point, progress, duplicates after a failover, compaction, refusals), and how paxosctl prints
a batch. The failover itself runs against real processes in tests/test_watch_cluster.py."""

from __future__ import annotations

import pytest

from paxosctl.watch import event_json, print_batch
from paxosd.client.errors import BadRequestError, CompactedError
from paxosd.client.watch import Watch, WatchBatch, WatchCanceledError
from paxosd.net.framing import WatchResponse
from paxosd.statemachine.commands import Event, KeyValue

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
    with pytest.raises(CompactedError) as e:
        feed(w, WatchResponse(1, canceled=True, compact_revision=40, reason="compacted"))
    assert e.value.compact_revision == 40 and e.value.revision == 3
    assert "oldest revision kept is 40" in str(e.value)
    assert w.done


def test_a_refused_watch_raises_with_the_servers_reason() -> None:
    w = watch()
    with pytest.raises(WatchCanceledError, match="too many watchers"):
        feed(w, WatchResponse(1, created=True, canceled=True, reason="too many watchers"))


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
