"""``paxosd restore``: seed a member of a NEW cluster from a backup file.

The restored member starts as if it had applied slots 1..applied_index and compacted them
into a snapshot, and has promised nothing (ballot 0): it is a fresh acceptor whose learner
already knows a long prefix. That is only sound in a cluster that is new, where no acceptor
has ever voted. Restored into a live cluster's member, it would vote with a memory it never
had (every promise and vote that member made would be forgotten, which is the amnesia Paxos
cannot survive), so ``--new-cluster`` is required to say the operator knows.

Which members to restore: every member (recommended), or at least a majority, with the others
bootstrapped empty (``paxosd bootstrap``): an empty member catches up by receiving a
snapshot from its peers. Restoring only a minority is NOT safe: the empty majority could elect
a leader among themselves that never saw the backup and decide new values in slots the
backup already covers. With a restored member in every majority, an empty candidate always
meets a promise that says its log starts past the candidate's, and stands down to catch up.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from paxosd.core.io import PersistRecord
from paxosd.core.types import Snapshot
from paxosd.storage.backup import Backup, BackupError, read_backup, verify_state
from paxosd.storage.store import DB_FILENAME, Storage, StorageError

# Where the database is built before it is linked into place: a crash part-way leaves this
# file (removed by the next restore), never a half-made database under the real name.
STAGING_SUFFIX = ".restoring"


class RestoreError(Exception):
    """A restore refused or failed; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class Restored:
    db_path: Path
    applied_index: int
    digest: str


def restore_into(data_dir: Path, backup: Backup, *, cluster_id: str, node_id: int) -> Restored:
    """Create ``data_dir``'s database holding ``backup``'s snapshot as member ``node_id`` of
    cluster ``cluster_id``, so that ``paxosd run`` recovers to the backup's applied index and
    digest. Refuses if the dir already has a database. The membership in effect comes from the
    new cluster's config, not the backup (the Snapshot keeps its default).

    The database is built under a staging name, checked, then hard-linked to its real name
    (link fails if the name exists, so a database that appeared meanwhile is never replaced).

    :raises RestoreError: a database exists, or the backup's state is not what it says.
    :raises StorageError: SQLite or the file system refused.
    """
    header = backup.header
    try:
        verify_state(header, backup.state)
    except BackupError as e:
        raise RestoreError(str(e)) from None
    db = data_dir / DB_FILENAME
    for existing in (db, db.with_name(db.name + "-wal")):
        if existing.exists():
            raise RestoreError(
                f"{existing} exists: restore only creates the database of a member of a new "
                "cluster; it never replaces one"
            )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = db.with_name(db.name + STAGING_SUFFIX)
    _remove_db_files(staging)  # left by a restore that crashed part-way
    snapshot = Snapshot(slot=header.applied_index, state=backup.state)
    try:
        with Storage.open(staging, cluster_id=cluster_id, node_id=node_id, create=True) as s:
            s.write(PersistRecord(snapshot=snapshot), applied_through=header.applied_index)
        # Closing the last connection checkpoints the WAL into the file and deletes it; the
        # database must be one file to move it.
        if staging.with_name(staging.name + "-wal").exists():
            raise RestoreError(f"{staging}: SQLite left a WAL file behind; nothing was restored")
        _check_stored(staging, backup, cluster_id, node_id)
        try:
            os.link(staging, db)
        except FileExistsError:
            raise RestoreError(f"{db} appeared while restoring; it was left as it is") from None
        _fsync_dir(data_dir)
    finally:
        _remove_db_files(staging)
    _fsync_dir(data_dir)
    return Restored(db, header.applied_index, header.digest)


def _check_stored(path: Path, backup: Backup, cluster_id: str, node_id: int) -> None:
    """Read back what recovery will read: the write's assertion paired across the disk."""
    with Storage.open_readonly(path) as s:
        durable = s.load()
        ids = (s.cluster_id, s.node_id)
    snap = durable.snapshot
    if (
        ids != (cluster_id, node_id)
        or snap is None
        or snap.slot != backup.header.applied_index
        or snap.state != backup.state
        or durable.decided
        or durable.accepted
    ):
        raise RestoreError(f"{path}: the database does not read back as written")


def _remove_db_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_command(
    file: Annotated[Path, typer.Argument(help="A backup from `paxosctl snapshot save`.")],
    new_cluster: Annotated[
        bool,
        typer.Option(
            "--new-cluster",
            help="Required: say this member belongs to a cluster that has never run.",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="The member's TOML (gives data dir, cluster id, node id)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="The member's data dir (without --config).")
    ] = None,
    cluster_id: Annotated[
        str | None, typer.Option("--cluster-id", help="The NEW cluster's id (without --config).")
    ] = None,
    node_id: Annotated[
        int | None, typer.Option("--node-id", min=1, help="This member's id (without --config).")
    ] = None,
) -> None:
    """Create a member's database from a backup, for a NEW cluster (refuses if one exists).

    Restore every member (or at least a majority; bootstrap the others empty: they catch up
    by snapshot). The new cluster's members come from its configs, not from the backup.

    Example: paxosd restore backup.pxb --config /etc/paxosd/n1.toml --new-cluster
    """
    if not new_cluster:
        _fail(
            "refusing without --new-cluster: a restored member has promised nothing and "
            "remembers slots it never voted on; in a live cluster's member it would vote with "
            "a memory it never had (and forget the promises it did make). Restore only the "
            "members of a new cluster, then start them.",
            2,
        )
    if config is not None:
        if (data_dir, cluster_id, node_id) != (None, None, None):
            _fail("give --config, or --data-dir, --cluster-id and --node-id, not both", 2)
        from paxosd.server.config import ConfigError, load_config

        try:
            cfg = load_config(config)
        except ConfigError as e:
            _fail(str(e), 2)
        data_dir, cluster_id, node_id = cfg.data_dir, cfg.cluster_id, int(cfg.node_id)
    if data_dir is None or cluster_id is None or node_id is None:
        _fail("give --config, or all of --data-dir, --cluster-id and --node-id", 2)
    try:
        backup = read_backup(file)
        restored = restore_into(data_dir, backup, cluster_id=cluster_id, node_id=node_id)
    except (BackupError, RestoreError, StorageError) as e:
        _fail(str(e), 1)
    h = backup.header
    note = " (same id as the backup's cluster)" if h.cluster_id == cluster_id else ""
    print(
        f"restored node {node_id} of new cluster {cluster_id}{note}: {restored.db_path}\n"
        f"applied index {h.applied_index}, digest {h.digest}\n"
        f"from node {h.node_id} of {h.cluster_id}, backup taken {h.created_at}"
    )


def _fail(message: str, code: int) -> NoReturn:
    print(f"paxosd restore: {message}", file=sys.stderr)
    raise typer.Exit(code)
