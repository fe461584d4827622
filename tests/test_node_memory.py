"""Bounded daemon memory: what a node keeps per applied command.

The results view_log shows are bounded by commands and bytes, not only by slots (a slot holds
up to batch_commands_max commands), and are kept compactly. The bench measures the RSS itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxosd.core.io import Campaign
from paxosd.core.messages import Heartbeat, Promise
from paxosd.core.types import Ballot, NodeId
from paxosd.server.config import load_config
from paxosd.server.node import (
    RECENT_RESULTS_BYTES_MAX,
    RECENT_RESULTS_COMMANDS_MAX,
    RECENT_RESULTS_SLOTS_MAX,
    Node,
    RecentResults,
)
from paxosd.statemachine.commands import (
    Command,
    Put,
    Written,
    decode_result,
    encode_command,
    encode_result,
)
from paxosd.statemachine.machine import StateMachine
from paxosd.tools.initcluster import init_cluster

LEADER_WAIT_S = 10.0


def written(version: int) -> bytes:
    return encode_result(Written(version=version))


def test_recent_results_are_bounded_by_commands_not_slots() -> None:
    recent = RecentResults(slots_max=1000, commands_max=100, bytes_max=1 << 20)
    for slot in range(1, 21):
        recent.add(slot, [written(slot)] * 16)
    # 16 commands a slot: only the newest 6 slots (96 commands) fit under 100.
    assert recent.commands == 96
    assert len(recent) == 6
    assert 14 not in recent and 15 in recent and 20 in recent
    assert recent[15] == [written(15)] * 16


def test_recent_results_with_the_default_bounds_hold_at_most_the_command_bound() -> None:
    recent = RecentResults()
    batch = [written(1)] * 512
    for slot in range(1, RECENT_RESULTS_SLOTS_MAX + 1):
        recent.add(slot, batch)
    assert recent.commands <= RECENT_RESULTS_COMMANDS_MAX
    assert recent.bytes <= RECENT_RESULTS_BYTES_MAX
    assert RECENT_RESULTS_SLOTS_MAX in recent
    assert 1 not in recent


def test_recent_results_keep_the_slot_bound_for_small_slots() -> None:
    recent = RecentResults(slots_max=5, commands_max=1000, bytes_max=1 << 20)
    for slot in range(1, 11):
        recent.add(slot, [written(slot)])
    assert [s for s in range(1, 11) if s in recent] == [6, 7, 8, 9, 10]


def test_recent_results_evict_by_bytes_and_drop_a_slot_that_alone_is_over() -> None:
    recent = RecentResults(slots_max=100, commands_max=100, bytes_max=1000)
    recent.add(1, [b"a" * 400])
    recent.add(2, [b"b" * 400])
    recent.add(3, [b"c" * 400])  # three are over 1000 bytes: slot 1 goes
    assert 1 not in recent and recent[2] == [b"b" * 400] and recent[3] == [b"c" * 400]
    recent.add(4, [b"d" * 2000])  # over the bound on its own: nothing of it is kept
    assert len(recent) == 0 and recent.bytes == 0 and recent.commands == 0
    recent.add(5, [b"e"])  # and the run goes on from the next slot
    assert recent[5] == [b"e"]


def test_recent_results_start_a_new_run_when_a_slot_comes_out_of_sequence() -> None:
    recent = RecentResults()
    recent.add(1, [b"x"])
    recent.add(2, [])
    assert recent[2] == []
    recent.add(500, [b"y"])  # after a snapshot restore jumped the state machine forward
    assert 1 not in recent and 2 not in recent and recent[500] == [b"y"]
    with pytest.raises(KeyError):
        recent[501]
    assert "500" not in recent  # the daemon asks with ints; anything else is absent


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A one-member node without a transport: the real apply path, in process."""
    res = init_cluster(tmp_path / "cluster", 1, base_port=24000)
    cfg = dataclasses.replace(load_config(res.configs[0]), durability="unsafe-no-fsync")
    n = Node(cfg, bootstrap=True)
    deadline = time.monotonic() + LEADER_WAIT_S
    while not n.replica.is_leader and time.monotonic() < deadline:
        n.on_tick()
        n.drain()
        time.sleep(0.01)
    assert n.replica.is_leader, "a one-member cluster elects itself"
    yield n
    n.storage.close()


def test_a_node_keeps_results_for_recent_slots_only_and_view_log_sees_them(node: Node) -> None:
    node.recent_results = RecentResults(commands_max=40)
    request = 0
    slots: list[int] = []
    for round_ in range(8):
        for i in range(16):  # one batch: queued together, drained together
            request += 1
            cmd = Command(client_id="c", seq=request, site="s", op=Put(key=f"k{i}", value=b"v"))
            node.on_client_command(1, request, encode_command(cmd))
        node.drain()
        slots.append(node.replica.decided_through)
        assert len(node.replies) == 16, f"round {round_}: every put answered"
        node.replies.clear()
    rows = node.storage.read_log(1, node.replica.decided_through, 1000)
    shown = {
        row.slot: node.recent_results[row.slot]
        for row in rows
        if row.kind == "decided" and row.slot in node.recent_results
    }
    # 16 puts a slot and 40 commands kept: the newest two slots, every older one is "-".
    assert sorted(shown) == slots[-2:]
    assert all(s not in node.recent_results for s in slots[:-2])
    # The last round's 16 puts are the store's changes 113..128: revisions 114..129.
    last = [Written(version=8, revision=114 + i) for i in range(16)]
    assert [decode_result(r) for r in shown[slots[-1]]] == last


def test_posts_of_one_site_share_one_site_string_also_after_a_restore() -> None:
    sm = StateMachine()
    for seq in range(1, 4):
        site = "".join(["site-", "a"])  # a fresh string each time, as a decoder makes
        cmd = Command(client_id="c", seq=seq, site=site, op=Put(key=f"k{seq}", value=b"v"))
        sm.apply(seq, (encode_command(cmd),))
    posts = list(sm._timeline)
    assert len(posts) == 3 and all(p.site is posts[0].site for p in posts)
    data = sm.snapshot()
    restored = StateMachine.restore(data)
    again = list(restored._timeline)
    assert again == posts and all(p.site is again[0].site for p in again)
    assert restored.snapshot() == data


def test_a_leader_that_steps_down_sends_its_waiting_clients_to_the_new_leader(
    tmp_path: Path,
) -> None:
    """A command proposed but not yet decided when its leader is deposed is answered at once
    with a redirect (the client retries the same (client_id, seq) elsewhere), not left to
    time out."""
    res = init_cluster(tmp_path / "cluster", 3, base_port=24100)
    cfg = dataclasses.replace(load_config(res.configs[0]), durability="unsafe-no-fsync")
    n = Node(cfg, bootstrap=True)
    try:
        n.replica.step(Campaign())  # phase 1 at once (a timer alone would run a pre-vote first)
        n.drain()
        ballot = n.replica.ballot
        n.on_peer_message(
            NodeId(2),
            Promise(ballot=ballot, from_slot=1, entries=(), decided_through=0, complete=True),
        )
        n.drain()
        assert n.replica.is_leader
        cmd = Command(client_id="c", seq=1, site="s", op=Put(key="k", value=b"v"))
        n.on_client_command(7, 42, encode_command(cmd))
        n.drain()
        assert not n.replies and len(n.pending) == 1, "proposed, waiting for a vote"
        higher = Ballot(ballot.round + 1, 3)
        n.on_peer_message(NodeId(3), Heartbeat(ballot=higher, commit_through=0, decided_through=0))
        n.drain()
        assert not n.replica.is_leader
        assert [(r.conn_id, r.request_id, r.status, r.leader) for r in n.replies] == [
            (7, 42, "not_leader", 3)
        ]
        assert not n.pending
    finally:
        n.storage.close()
