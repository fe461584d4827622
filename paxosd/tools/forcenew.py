"""``paxosd force-new-cluster``: quorum-loss recovery from one surviving node's state.

When a majority of the voters is gone for good, no value can be chosen again: Paxos is right
to stop. The operator's way out (etcd's --force-new-cluster, Consul's and rqlite's peers.json)
is to declare, on one survivor, a new membership of that survivor alone. Whatever the lost
majority decided that this node never learned is lost; that is why the command is explicit
and loud. Afterwards the node leads by itself and the others are added back as new members.

What it writes, in the survivor's database (the daemon must be stopped: the data-dir lock):
- a snapshot at its applied index whose membership is this node alone (next epoch);
- a promised ballot far above any ballot seen, so no old member's leader is ever accepted;
- no membership command above the snapshot (they name the dead voters and would make every
  election wait for them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer

from paxosd.core.io import PersistRecord
from paxosd.core.membership import membership_of
from paxosd.core.types import Ballot, Member, Membership, Snapshot
from paxosd.server.config import ConfigError, load_config
from paxosd.server.logs import configure_logging
from paxosd.server.node import Node
from paxosd.storage.store import StorageError

log = structlog.get_logger("paxosd.tools.forcenew")

# Rounds added to the highest ballot seen: more than any election count a lost member can
# reach before the operator has stopped it for good.
BALLOT_ROUND_JUMP = 1_000_000


def force_new_cluster(node: Node) -> dict[str, Any]:
    """Rewrite ``node``'s durable state as a one-voter cluster; returns what it did."""
    r = node.replica
    cfg = node.config
    slot = node.sm.applied_through
    old = r.membership
    new = Membership((Member(int(cfg.node_id), str(cfg.peer_address), True),), old.epoch + 1)
    node.flush_decided()
    durable = node.storage.load()
    doomed = sorted(
        {a.slot for a in durable.accepted.values() if membership_of(a.value) is not None}
        | {d.slot for d in durable.decided.values() if membership_of(d.value) is not None}
    )
    doomed = [s for s in doomed if s > slot]
    node.storage.forget_log_slots(doomed)
    promised = Ballot(max(r.promised.round, r.ballot_seen.round) + BALLOT_ROUND_JUMP, cfg.node_id)
    node.storage.write(
        PersistRecord(
            promised=promised,
            snapshot=Snapshot(slot=slot, state=node.sm.snapshot(), membership=new),
            compact_through=slot,
        )
    )
    return {
        "node_id": cfg.node_id,
        "applied_index": slot,
        "digest": node.sm.digest(),
        "old_voters": sorted(old.voters),
        "old_learners": sorted(old.learners),
        "new_voters": [cfg.node_id],
        "epoch": new.epoch,
        "promised": str(promised),
        "membership_slots_dropped": doomed,
    }


def force_new_cluster_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="The survivor's TOML file.")],
    yes: Annotated[
        bool,
        typer.Option(
            "--yes-i-lost-the-majority",
            help="Required: confirms the majority is gone for good and writes may be lost.",
        ),
    ] = False,
) -> None:
    """Quorum-loss recovery: make this (stopped) node the only voter of its cluster.

    Use only when a majority of the voters is permanently gone. Writes this node had not
    learned are lost. Then: start the node (it leads alone), and add new members with
    `paxosctl member add ID ADDRESS --promote`, each with a fresh data dir. Never restart the
    lost members with their old data: remove them for good.

    Example: paxosd force-new-cluster --config /etc/paxosd/n2.toml --yes-i-lost-the-majority
    """
    try:
        cfg = load_config(config)
    except ConfigError as e:
        print(f"paxosd: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    if not yes:
        print(
            "paxosd: refusing without --yes-i-lost-the-majority: this discards every write the "
            "lost majority decided and this node did not learn",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    configure_logging(level=cfg.log.level, fmt=cfg.log.format)
    try:
        node = Node(cfg)
    except StorageError as e:
        print(f"paxosd: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    try:
        done = force_new_cluster(node)
    finally:
        node.storage.close()
    log.warning("FORCED NEW CLUSTER: this node is now the only voter", **done)
    print(
        f"FORCED: node {done['node_id']} is now the only voter (epoch {done['epoch']}), at "
        f"applied index {done['applied_index']}, digest {done['digest'][:12]}; old voters "
        f"{done['old_voters']} are out. Start it, then add members with fresh data dirs.",
        file=sys.stderr,
    )
