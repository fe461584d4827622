"""``paxosd bootstrap``: the one explicit step that gives a brand-new member an empty log.

``paxosd run`` never creates a database: a member whose disk was lost must not come back
with an empty memory and vote as if it had promised nothing (it would break the promises it
made before). A new member, and only a new member, is bootstrapped first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from paxosd.storage.store import DB_FILENAME, Storage, StorageError


def bootstrap_command(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The node's data dir.")],
    cluster_id: Annotated[str, typer.Option("--cluster-id", help="As in the node's config.")],
    node_id: Annotated[int, typer.Option("--node-id", min=1, help="As in the node's config.")],
) -> None:
    """Create an empty database for a NEW member (refuses if one exists).

    Example: paxosd bootstrap --data-dir /var/lib/paxosd/n1 --cluster-id prod-kv --node-id 1
    """
    db = data_dir / DB_FILENAME
    if db.exists():
        print(f"paxosd: {db} exists; a member is bootstrapped once", file=sys.stderr)
        raise typer.Exit(1)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        Storage.open(db, cluster_id=cluster_id, node_id=node_id, create=True).close()
    except StorageError as e:
        print(f"paxosd: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"bootstrapped node {node_id} of {cluster_id}: {db}")
