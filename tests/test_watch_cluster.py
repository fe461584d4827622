"""Watches against real processes: a local 3-node cluster whose members are killed with
SIGKILL under the watch, then restarted.

The stream a watch delivered must be exactly the projection of the writes made meanwhile: a
writer records what each of its puts and deletes did (the result carries the revision), and
the events must be those, in that order, each once. The writes are the only changes under the
prefix, so the watch's revisions are also every revision from its start to the last write:
a gap or a repeat at a failover shows in both checks. A second watch, created afterwards on
another member from the same start revision, must deliver the same stream (resumable: the
history is the same on every replica).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxosd.client.client import Client
from paxosd.client.watch import Watch, WatchBatch
from paxosd.lab.localcluster import LocalCluster, pick_base_port
from paxosd.net.framing import ClientReply, ClientRequest, WatchCreate, WatchResponse
from paxosd.net.transport import ClientConnection
from paxosd.statemachine.commands import (
    Command,
    Compact,
    Compacted,
    Deleted,
    Put,
    Rows,
    Written,
    encode_command,
)
from tests.waiting import wait_for

# (type, key, value, revision): what one write did, and what its event must say.
Change = tuple[str, str, bytes, int]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # A random range first, not the shared default: other clusters on this machine start
    # at the same moment.
    base = pick_base_port(3, preferred=random.randrange(100, 300) * 100)
    c = LocalCluster.create(tmp_path_factory.mktemp("watch") / "c", 3, base_port=base)
    c.up()
    try:
        yield c
    finally:
        c.down()


def leader_of(c: LocalCluster) -> int:
    return int(c.wait_ready()["node_id"])


def first(c: LocalCluster, k: int) -> list[tuple[str, int]]:
    """The cluster's endpoints with node ``k``'s first: a new connection goes to ``k``."""
    eps = c.endpoints()
    return [eps[k - 1]] + [e for i, e in enumerate(eps) if i != k - 1]


class Writer:
    """Puts and deletes under a prefix, recording each change with its revision."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.changes: list[Change] = []
        self.live: set[str] = set()
        self.n = 0

    def write(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            key = f"{self.prefix}{self.n % 5}"
            if key in self.live and self.n % 3 == 0:
                d = self.client.delete(key)
                assert isinstance(d, Deleted) and d.deleted == 1, d
                self.live.discard(key)
                self.changes.append(("DELETE", key, b"", d.revision))
            else:
                value = f"v{self.n}".encode()
                w = self.client.put(key, value)
                assert isinstance(w, Written), w
                self.live.add(key)
                self.changes.append(("PUT", key, value, w.revision))

    @property
    def last_revision(self) -> int:
        return self.changes[-1][3]


class Collector:
    """Iterates a watch on a thread of its own, keeping every batch."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.batches: list[WatchBatch] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.watch:
                self.batches.append(batch)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self.errors.append(e)

    def changes(self) -> list[Change]:
        return [
            (e.type, e.kv.key, e.kv.value, e.kv.mod_revision)
            for b in list(self.batches)
            for e in b.events
        ]

    def through(self) -> int:
        got = self.changes()
        assert not self.errors, self.errors
        return got[-1][3] if got else 0

    def stop(self) -> list[Change]:
        self.watch.cancel()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the watch did not stop on cancel()"
        assert not self.errors, self.errors
        return self.changes()


def test_list_then_watch_survives_kill_9_of_its_follower_then_of_the_leader(
    cluster: LocalCluster,
) -> None:
    key = cluster.client_key()
    with cluster.client(timeout_ms=30_000) as c:
        writer = Writer(c, "w/")
        writer.write(5)
        listed = c.scan("w/", 100)
        assert isinstance(listed, Rows) and listed.revision == writer.last_revision
        start = listed.revision + 1
        leader = leader_of(cluster)
        follower = next(k for k in cluster.node_ids() if k != leader)
        with Client(first(cluster, follower), key, timeout_ms=30_000) as wc:
            col = Collector(wc.watch_prefix("w/", start_revision=start))
            writer.write(15)
            wait_for("the first events", lambda: col.through() >= writer.last_revision)
            assert {b.node for b in col.batches} == {follower}  # served by the follower
            cluster.kill(follower)
            writer.write(15)
            wait_for(
                "events after the follower died", lambda: col.through() >= writer.last_revision
            )
            cluster.start(follower)
            leader = leader_of(cluster)
            cluster.kill(leader)
            writer.write(15)
            cluster.start(leader)
            writer.write(10)
            wait_for("every event", lambda: col.through() >= writer.last_revision)
            got = col.stop()
        assert col.watch.reconnects >= 1
        assert len({b.node for b in col.batches}) >= 2, "the watch never failed over"
        want = writer.changes[5:]
        assert got == want
        assert [ch[3] for ch in got] == list(range(start, writer.last_revision + 1))
        # Resumable and the same on every replica: a fresh watch from the start on another
        # member delivers the same stream.
        other = next(k for k in cluster.node_ids() if k != follower)
        with Client(first(cluster, other), key, timeout_ms=30_000) as oc:
            again = Collector(oc.watch_prefix("w/", start_revision=start))
            wait_for("the replay", lambda: again.through() >= writer.last_revision)
            assert again.stop() == want


def test_paxosctl_watch_json_count_prints_every_change_across_a_kill_9(
    cluster: LocalCluster,
) -> None:
    key_file = cluster.root / "keys" / "client.key"
    with cluster.client(timeout_ms=30_000) as c:
        writer = Writer(c, "cli/")
        writer.write(3)
        # List then watch, as a script would: the revision the listing reflects, plus one.
        listing = subprocess.run(
            paxosctl_argv(cluster, key_file, 1, "scan", "--prefix", "cli/", "--json"),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        listed_revision = json.loads(listing.stdout)["header"]["revision"]
        assert listed_revision == writer.last_revision
        leader = leader_of(cluster)
        follower = next(k for k in cluster.node_ids() if k != leader)
        count = 12
        proc = paxosctl_watch(
            cluster,
            key_file,
            follower,
            "watch",
            "cli/",
            "--prefix",
            "--rev",
            str(listed_revision + 1),
            "--json",
            "--count",
            str(count),
        )
        lines: list[str] = []
        with proc:
            reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
            reader.start()
            try:
                writer.write(6)
                wait_for("six lines", lambda: len(lines) >= 6)
                cluster.kill(follower)
                writer.write(count - 6)
                code = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                cluster.start(follower)
            reader.join(30)
            stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr
        events = [json.loads(line) for line in lines]
        got = [
            (e["type"], e["kv"]["key"], e["kv"]["value"].encode(), e["kv"]["mod_revision"])
            for e in events
        ]
        assert got == writer.changes[3:]
        assert all(set(e) == {"type", "kv", "prev_kv"} for e in events)
        # Compacted history: one line naming the oldest revision kept, exit 1.
        done = c.execute(Compact(revision=writer.last_revision))
        assert isinstance(done, Compacted), done
        cluster.wait_ready()
        out = subprocess.run(
            paxosctl_argv(cluster, key_file, follower, "watch", "cli/", "--prefix", "--rev", "2"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 1, out
        assert out.stdout == ""
        assert (
            out.stderr.count("\n") == 1
            and f"oldest revision kept is {writer.last_revision}" in out.stderr
        )


def paxosctl_argv(cluster: LocalCluster, key_file: Path, node: int, *args: str) -> list[str]:
    eps = ",".join(f"{h}:{p}" for h, p in first(cluster, node))
    return [
        sys.executable,
        "-m",
        "paxosctl",
        *args,
        "--endpoints",
        eps,
        "--key-file",
        str(key_file),
        "--timeout-ms",
        "30000",
    ]


def paxosctl_watch(
    cluster: LocalCluster, key_file: Path, node: int, *args: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        paxosctl_argv(cluster, key_file, node, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_view_follow_prints_the_timeline_then_each_new_visible_post(
    cluster: LocalCluster,
) -> None:
    key_file = cluster.root / "keys" / "client.key"
    with cluster.client(timeout_ms=30_000, site="paris") as c:
        c.put("post/first", b"bonjour")
        proc = paxosctl_watch(cluster, key_file, 1, "view", "--as", "tokyo", "--follow", "--json")
        lines: list[str] = []
        with proc:
            reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
            reader.start()
            try:
                wait_for("the timeline", lambda: any("post/first" in ln for ln in lines))
                shown = len(lines)
                c.put("post/later", b"encore")
                wait_for("the new post", lambda: any("post/later" in ln for ln in lines))
                proc.send_signal(signal.SIGINT)
                code = proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
            reader.join(30)
            stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr
        posts = [json.loads(ln) for ln in lines]
        assert [p["key"] for p in posts[shown:]] == ["post/later"]
        assert posts[-1]["site"] == "paris" and posts[-1]["value"] == "encore"
        slots = [p["slot"] for p in posts]
        assert slots == sorted(set(slots))  # each post once, in log order


def test_a_bad_watch_request_is_answered_and_the_connection_keeps_serving(
    cluster: LocalCluster,
) -> None:
    leader = leader_of(cluster)
    address = cluster.endpoints()[leader - 1]
    with ClientConnection.connect(address, client_key=cluster.client_key(), client_id=77) as conn:
        conn.send(WatchCreate(1, ""), WatchCreate(2, "k", filters=("NOPE",)))
        answers: list[WatchResponse] = []
        wait_for(
            "both refusals",
            lambda: (
                answers.extend(b for b in conn.recv(200) if isinstance(b, WatchResponse))
                or len(answers) >= 2
            ),
        )
        assert [(a.watch_id, a.canceled) for a in answers] == [(1, True), (2, True)]
        assert "empty" in answers[0].reason and "unknown event filter" in answers[1].reason
        # The same connection still serves a watch and a command.
        conn.send(WatchCreate(3, "bad/ok"))
        command = encode_command(Command(client_id="t77", seq=1, site="s", op=Put("bad/ok", b"1")))
        conn.send(ClientRequest(9, command))
        got: list[object] = []

        def both() -> bool:
            got.extend(conn.recv(200))
            events = [b for b in got if isinstance(b, WatchResponse) and b.events]
            replies = [b for b in got if isinstance(b, ClientReply)]
            return bool(events) and bool(replies)

        wait_for("the event and the reply", both)
        reply = next(b for b in got if isinstance(b, ClientReply))
        assert reply.status == "ok"


def test_a_watch_on_a_member_that_stops_answering_resumes_on_another(
    cluster: LocalCluster,
) -> None:
    """SIGSTOP: the member's kernel keeps the connection up, so only the watch's own ping
    can tell; the watch must move on without a gap or a repeat."""
    with cluster.client(timeout_ms=30_000) as c:
        writer = Writer(c, "stop/")
        writer.write(1)
        start = writer.last_revision + 1
        leader = leader_of(cluster)
        follower = next(k for k in cluster.node_ids() if k != leader)
        w = Watch(
            first(cluster, follower),
            cluster.client_key(),
            "stop/",
            prefix=True,
            start_revision=start,
            timeout_ms=30_000,
            ping_after_ms=300,
            ping_timeout_ms=1000,
        )
        col = Collector(w)
        writer.write(3)
        wait_for("the first events", lambda: col.through() >= writer.last_revision)
        assert {b.node for b in col.batches} == {follower}
        cluster.signal(follower, signal.SIGSTOP)
        try:
            writer.write(5)
            wait_for("events from another member", lambda: col.through() >= writer.last_revision)
        finally:
            cluster.signal(follower, signal.SIGCONT)
        got = col.stop()
    assert got == writer.changes[1:]
    assert {b.node for b in col.batches} - {follower}, "the watch never left the stopped member"
    assert w.reconnects >= 1
