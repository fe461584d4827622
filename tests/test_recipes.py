"""Locks and elections (paxosd.client.recipes) and the client habits they rely on, against a
real local cluster: ``Client.from_config``, one client shared by threads, holders serialized
by their fencing tokens, waiters that watch only their predecessor, elections that hand over.

The lock tests here run without leases (``ttl=None``: a key lives until released), which is
all that serialization, queueing and fencing need; what a lease adds (a dead holder's lock
comes free) is tested with real processes in tests/cli/test_cli_recipes.py.

Two checkers, each with a planted bug that it must catch: ``serialization_violations`` (holders
one at a time, in fencing-token order) and ``herd_violations`` (each waiter watched only the
contender just ahead of it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from paxosd.client.client import Client
from paxosd.client.errors import (
    BadRequestError,
    CasMismatchError,
    ClientError,
    CompareFailedError,
    LeaseNotFoundError,
    NotFoundError,
    PaxosdError,
)
from paxosd.client.recipes import (
    Leader,
    Lock,
    LockLostError,
    LockTimeoutError,
    LockToken,
    NoLeaderError,
    NotLeaderError,
)
from paxosd.client.txn import create, get, mod, put
from paxosd.lab.localcluster import LocalCluster
from paxosd.statemachine.commands import Found, Rows
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path_factory.mktemp("recipes"), 3, durability="unsafe-no-fsync")
    try:
        c.up()  # a cluster that never got ready is stopped too: its nodes must not outlive us
        yield c
    finally:
        c.down()


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client(timeout_ms=10_000) as c:
        yield c


# ------------------------------------------------------------------------------ the client


def test_one_error_base_and_the_typed_errors() -> None:
    assert ClientError is PaxosdError
    assert issubclass(LeaseNotFoundError, NotFoundError)
    assert issubclass(CasMismatchError, CompareFailedError)
    for cls in (LockTimeoutError, NotLeaderError, NoLeaderError, BadRequestError):
        assert issubclass(cls, PaxosdError)


def test_from_config_reads_a_local_cluster_its_manifest_and_a_node_config(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    for where in (cluster.root, cluster.root / "cluster.json", cluster.config_path(2)):
        with Client.from_config(where, timeout_ms=10_000) as c:
            c.put("from-config", str(where).encode())
            found = c.get("from-config")
            assert isinstance(found, Found) and found.value == str(where).encode()
    bad = tmp_path / "bad.toml"
    bad.write_text("node_id = 1\n")
    with pytest.raises(BadRequestError, match="client_address"):
        Client.from_config(bad)
    with pytest.raises(BadRequestError, match="cannot read"):
        Client.from_config(tmp_path / "absent.toml")


def test_endpoints_as_text_and_a_key_file(cluster: LocalCluster) -> None:
    key_file = cluster.root / "keys" / "client.key"
    with Client(cluster.endpoint_strings(), key_file=key_file, timeout_ms=10_000) as c:
        assert c.put("text-endpoints", b"1").revision > 1  # type: ignore[union-attr]
    with pytest.raises(BadRequestError, match="exactly one"):
        Client(cluster.endpoint_strings())


def test_threads_share_one_client(client: Client) -> None:
    """Eight threads, one client: every cas increment lands once (a lost or doubled
    increment, or a request answered with another's result, breaks the count)."""
    threads_n, each_n = 8, 15
    client.put("shared-counter", b"0")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(each_n):
                while True:
                    found = client.get("shared-counter")
                    assert isinstance(found, Found)
                    try:
                        client.cas(
                            "shared-counter",
                            str(int(found.value) + 1).encode(),
                            expect_version=found.version,
                        )
                        break
                    except CasMismatchError:
                        continue
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    found = client.get("shared-counter")
    assert isinstance(found, Found) and int(found.value) == threads_n * each_n


# ------------------------------------------------------------------------------ checkers


@dataclass(frozen=True)
class Turn:
    """One holder's turn: its fencing token, the counter it read, and whether its fenced
    write (compare: the lock key still has my revision, the counter is as I read it) held."""

    token: int
    read: int
    written: bool


def serialization_violations(turns: list[Turn]) -> list[str]:
    """Holders were serialized: in fencing-token order, each read what the previous one
    wrote, and every fenced write held. Tokens are unique."""
    out = []
    ordered = sorted(turns, key=lambda t: t.token)
    if len({t.token for t in turns}) != len(turns):
        out.append("two turns share a fencing token")
    for i, t in enumerate(ordered):
        if t.read != i:
            out.append(f"the holder with token {t.token} read {t.read}, expected {i}")
        if not t.written:
            out.append(f"the fenced write of token {t.token} failed: another holder acted")
    return out


def take_turn(client: Client, token: LockToken, counter: str) -> Turn:
    """Read the counter and write it + 1, fenced by the lock key's create revision."""
    found = client.get(counter)
    assert isinstance(found, Found)
    result = client.txn(
        compare=[create(token.key) == token.revision, mod(counter) == found.mod_revision],
        success=[put(counter, str(int(found.value) + 1))],
    )
    return Turn(token.revision, int(found.value), result.succeeded)


def herd_violations(order: list[str], watched: dict[str, list[str]]) -> list[str]:
    """No herd: with contenders queued in ``order`` and released in that order, each one
    watched exactly the one just ahead of it, once (and the first watched nothing)."""
    out = []
    for i, key in enumerate(order):
        expected = [order[i - 1]] if i else []
        if watched[key] != expected:
            out.append(f"{key} watched {watched[key]}, expected {expected}")
    return out


# ------------------------------------------------------------------------------ locks


def test_a_lock_key_is_created_with_a_transaction_and_released(client: Client) -> None:
    lock = client.lock("jobs/a", ttl=None)
    with lock as token:
        found = client.get(token.key)
        assert isinstance(found, Found)
        assert token.key.startswith("jobs/a/")
        assert token.revision == found.create_revision
        assert lock.is_held()
    with pytest.raises(NotFoundError):
        client.get(token.key)
    assert not lock.is_held()
    with client.lock("jobs/a", ttl=None) as later:
        assert later.revision > token.revision  # the fencing token only grows


def run_contenders(
    cluster: LocalCluster,
    name: str,
    n: int,
    make: Callable[[Client, str], Lock],
    counter: str,
) -> tuple[list[Turn], list[str], dict[str, list[str]]]:
    """A holder, then ``n`` waiters queued one by one (each in its own thread and client);
    the holder releases and every waiter takes its turn on the counter. The turns, the
    queue order and what each waiter watched."""
    turns: list[Turn] = []
    errors: list[BaseException] = []
    locks: list[Lock] = []
    with cluster.client(timeout_ms=10_000) as c:
        c.put(counter, b"0")
        holder = make(c, name)
        token = holder.acquire()
        clients = [cluster.client(timeout_ms=10_000) for _ in range(n)]

        def wait_and_work(lock: Lock, cc: Client) -> None:
            try:
                with lock as t:
                    turns.append(take_turn(cc, t, counter))
            except BaseException as e:
                errors.append(e)

        threads = []
        for i, cc in enumerate(clients):
            lock = make(cc, name)
            locks.append(lock)
            threads.append(threading.Thread(target=wait_and_work, args=(lock, cc)))
            threads[-1].start()

            def queued(i: int = i) -> bool:
                rows = c.scan(name + "/")
                return isinstance(rows, Rows) and len(rows.rows) == i + 2

            wait_for(f"waiter {i} queued", queued)
        turns.append(take_turn(c, token, counter))
        holder.release()
        for t in threads:
            t.join()
        for cc in clients:
            cc.close()
    assert errors == []
    order = [holder.key] + [lk.key for lk in locks]
    watched = {holder.key: holder.watched} | {lk.key: lk.watched for lk in locks}
    return turns, order, watched


def test_holders_are_serialized_by_fencing_token_and_only_predecessors_are_watched(
    cluster: LocalCluster,
) -> None:
    turns, order, watched = run_contenders(
        cluster, "jobs/queue", 5, lambda c, name: c.lock(name, ttl=None), "jobs/counter"
    )
    assert len(turns) == 6
    assert serialization_violations(turns) == []
    assert herd_violations(order, watched) == []


class HerdLock(Lock):
    """Planted: every waiter watches the current holder (the oldest key), so a release wakes
    all of them at once: the herd the predecessor rule avoids."""

    def _wait_turn(self, rows: Rows, deadline: float | None) -> None:
        while True:
            ahead = [r for r in rows.rows if r.create_revision < self.revision]
            if not ahead:
                return
            self._wait_deleted(min(ahead, key=lambda r: r.create_revision), rows.revision, deadline)
            rows = self._scan(deadline)


def test_the_herd_checker_catches_waiters_that_watch_the_holder(cluster: LocalCluster) -> None:
    turns, order, watched = run_contenders(
        cluster,
        "jobs/herd",
        3,
        lambda c, name: HerdLock(c, name, ttl=None),
        "jobs/herd-counter",
    )
    assert serialization_violations(turns) == []  # still a lock, just a noisy one
    assert herd_violations(order, watched) != []


def test_the_serialization_checker_catches_a_lock_that_does_not_wait(
    cluster: LocalCluster,
) -> None:
    """Planted: a "lock" whose waiters do not wait; two holders read the same counter."""
    counter = "jobs/broken-counter"
    with cluster.client(timeout_ms=10_000) as c:
        c.put(counter, b"0")
        both_read = threading.Barrier(2)
        turns: list[Turn] = []

        class NoWaitLock(Lock):
            def _wait_turn(self, rows: Rows, deadline: float | None) -> None:
                return

        def holder() -> None:
            with NoWaitLock(c, "jobs/broken", ttl=None) as t:
                found = c.get(counter)
                assert isinstance(found, Found)
                both_read.wait()
                result = c.txn(
                    compare=[create(t.key) == t.revision, mod(counter) == found.mod_revision],
                    success=[put(counter, str(int(found.value) + 1))],
                    failure=[get(counter)],
                )
                turns.append(Turn(t.revision, int(found.value), result.succeeded))

        threads = [threading.Thread(target=holder) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(turns) == 2
    assert serialization_violations(turns) != []


def test_a_wait_that_times_out_leaves_the_queue(client: Client) -> None:
    with client.lock("jobs/busy", ttl=None) as token:
        waiter = client.lock("jobs/busy", ttl=None, timeout_s=0.5)
        with pytest.raises(LockTimeoutError):
            waiter.acquire()
        rows = client.scan("jobs/busy/")
        assert isinstance(rows, Rows) and [r.key for r in rows.rows] == [token.key]


# ------------------------------------------------------------------------------ elections


def test_an_election_hands_over_and_observers_see_each_leader_in_order(
    cluster: LocalCluster, client: Client
) -> None:
    a = client.election("svc/leader", ttl=None)
    with pytest.raises(NoLeaderError):
        a.leader()
    with pytest.raises(NotLeaderError):
        a.proclaim(b"too early")
    assert a.campaign(b"a").value == b"a"
    seen: list[Leader] = []
    stop = threading.Event()
    observer = client.election("svc/leader", ttl=None)

    def observe() -> None:
        for leader in observer.observe(stop=stop):
            seen.append(leader)

    watcher = threading.Thread(target=observe)
    watcher.start()
    wait_for("the first leader observed", lambda: len(seen) >= 1)
    with cluster.client(timeout_ms=10_000) as other:
        b = other.election("svc/leader", ttl=None)
        elected = threading.Event()

        def campaign_b() -> None:
            b.campaign("b")
            elected.set()

        t = threading.Thread(target=campaign_b)
        t.start()
        wait_for("b queued", lambda: len(client.scan("svc/leader/").rows) == 2)  # type: ignore[union-attr]
        assert not elected.is_set() and a.is_leader() and not b.is_leader()
        a.proclaim(b"a2")
        wait_for("the proclaim observed", lambda: len(seen) >= 2)
        a.resign()
        t.join()
        assert elected.is_set() and b.is_leader()
        assert b.leader().value == b"b"
        wait_for("b observed", lambda: len(seen) >= 3)
        b.resign()
    stop.set()
    watcher.join()
    assert [x.value for x in seen] == [b"a", b"a2", b"b"]
    assert seen[0].revision == seen[1].revision < seen[2].revision  # a's token, then b's


def test_an_observer_sees_every_proclaimed_value_even_when_it_reads_late(
    client: Client,
) -> None:
    """Proclaims made while the observer is not reading reach it in one watch batch; each is
    still reported (etcd's Observe reports every PUT of the leader key), not only the last."""
    a = client.election("svc/late", ttl=None)
    a.campaign(b"v0")
    stop = threading.Event()
    observing = client.election("svc/late", ttl=None).observe(stop=stop)
    assert next(observing).value == b"v0"
    for v in (b"v1", b"v2", b"v3"):
        a.proclaim(v)  # the observer reads nothing meanwhile
    seen: list[bytes] = []

    def read() -> None:
        for leader in observing:
            seen.append(leader.value)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        wait_for("the last proclaim observed", lambda: b"v3" in seen)
    finally:
        stop.set()
        reader.join()
        a.resign()
    assert seen == [b"v1", b"v2", b"v3"]


def test_a_holder_learns_that_its_lease_is_gone(client: Client) -> None:
    """Revoking the holder's lease from elsewhere (as an expiry does) deletes its key; the
    holder's keep-alive finds the lease gone: ``lost`` is set, ``on_lost`` says why and
    ``check()`` raises. Releasing afterwards is harmless."""
    reasons: list[str] = []
    lock = client.lock("jobs/revoked", ttl=3, on_lost=reasons.append)
    with lock as token:
        assert lock.is_held() and not token.lost.is_set()
        with client.clone() as other:
            leases: Any = other  # the lease calls, whatever their result types
            leases.lease_revoke(token.lease)
        wait_for("the holder learns its lease is gone", token.lost.is_set)
        assert reasons and f"{token.lease:x}" in reasons[0]
        with pytest.raises(LockLostError):
            token.check()
        assert not lock.is_held()
    with pytest.raises(NotFoundError):
        client.get(token.key)


def test_the_lock_bench_reports_round_trips_with_no_error(cluster: LocalCluster) -> None:
    """A smoke of ``paxosctl bench --op lock``'s engine: the report's shape, never its speed."""
    from paxosd.lab.bench_lock import LockSpec, run_lock_bench

    spec = LockSpec(contenders=3, duration_s=1.0, warmup_s=0.0, ttl_s=3, name="bench/smoke")
    report = run_lock_bench(spec, cluster.endpoints(), cluster.client_key())
    assert report["errors"] == []
    assert report["round_trips"] > 0 and report["acquire_ms"]["p50"] is not None
    with cluster.client() as c:
        assert c.scan("bench/smoke/").rows == ()  # type: ignore[union-attr]
