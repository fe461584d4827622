"""``paxosd vacuum``: give the free pages of a stopped node's database back to the disk.

Compaction (snapshots, then log truncation) and deletes free pages inside the SQLite file,
which SQLite keeps for reuse: the data dir does not shrink by itself. This rewrites the file
without them (SQLite's VACUUM, atomic through the WAL; see ``vacuum_database``), offline
only: it takes the data dir's lock first, so it refuses while the daemon runs, and the
daemon refuses to start while it works. Before and after, it rebuilds the state the way
recovery does and compares the digests, so a vacuum that changed the content is an error,
not a surprise at the next start.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from paxosd.server.node import lock_data_dir
from paxosd.storage.store import (
    DB_FILENAME,
    NotInitialized,
    Storage,
    StorageError,
    vacuum_database,
)
from paxosd.tools.inspect import state_digest

EXIT_FAILED = 1  # no database, a damaged one, or the digest changed
EXIT_RUNNING = 3  # the daemon (or another tool) holds the data dir


def _digest(db: Path) -> dict[str, Any]:
    with Storage.open_readonly(db) as storage:
        return state_digest(storage)


def vacuum_data_dir(data_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """Vacuum the database in ``data_dir`` under the data dir's lock; the report.

    :raises DataDirBusy: another process (the daemon) holds the lock.
    :raises StorageError: no database, a damaged one, SQLite refused, or the state's digest
        differs after the vacuum (nothing is rolled back then: the database is what SQLite
        wrote; the error says so, for an operator to look at before starting the node).
    """
    db = data_dir / DB_FILENAME
    if not db.exists():
        raise NotInitialized(db, "no database here (is this a node's data dir?)")
    try:
        fd = lock_data_dir(data_dir)
    except StorageError as e:
        raise DataDirBusy(str(e)) from None
    try:
        t0 = time.perf_counter()
        before = _digest(db) if verify else None
        stats = vacuum_database(db, clock=time.perf_counter)
        after = _digest(db) if verify else None
        if before is not None and after is not None and before["digest"] != after["digest"]:
            raise StorageError(
                db,
                f"the state's digest changed in the vacuum ({before['digest'][:16]} -> "
                f"{after['digest'][:16]}); do not start this node, inspect it",
            )
        total = time.perf_counter() - t0
    finally:
        os.close(fd)
    gib = stats.bytes_before / (1 << 30)
    return {
        "data_dir": str(data_dir),
        "database": str(db),
        "bytes_before": stats.bytes_before,
        "bytes_after": stats.bytes_after,
        "bytes_freed": stats.bytes_before - stats.bytes_after,
        "free_pages_before": stats.free_pages_before,
        "free_pages_after": stats.free_pages_after,
        "page_size": stats.page_size,
        "vacuum_s": round(stats.seconds, 3),
        "vacuum_s_per_gib": round(stats.seconds / gib, 2) if gib > 0 else None,
        "verified": verify,
        "digest": None if after is None else after["digest"],
        "applied_through": None if after is None else after["digest_applied_through"],
        "total_s": round(total, 3),
    }


class DataDirBusy(Exception):
    """The data dir's lock is held: the daemon runs (or another offline tool)."""


def _fail(message: str, code: int) -> NoReturn:
    print(f"paxosd vacuum: {message}", file=sys.stderr)
    raise typer.Exit(code)


def vacuum_command(
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", help="The stopped node's data directory.", show_default=False),
    ],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Rebuild the state before and after and compare digests (reads it twice).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Shrink a stopped node's database: drop the free pages that compaction and deletes
    left (SQLite's VACUUM, atomic: a crash midway loses nothing).

    Refuses (exit 3) while the node runs: it takes the data dir's lock. Needs free disk of
    about twice the database's size after the vacuum (a temporary copy and the WAL). With
    --verify (default) the state is rebuilt before and after and the digests compared.
    Exit 1: no database, a damaged one, or a digest that changed.

    JSON: {"data_dir", "database", "bytes_before", "bytes_after", "bytes_freed",
    "free_pages_before", "free_pages_after", "page_size", "vacuum_s", "vacuum_s_per_gib",
    "verified", "digest", "applied_through", "total_s"}.

    Example: systemctl stop paxosd@n2 && paxosd vacuum --data-dir /var/lib/paxosd/n2
    """
    if not data_dir.is_dir():
        _fail(f"{data_dir}: no such directory", EXIT_FAILED)
    try:
        report = vacuum_data_dir(data_dir, verify=verify)
    except DataDirBusy as e:
        _fail(f"{e}; stop the node first", EXIT_RUNNING)
    except StorageError as e:
        _fail(str(e), EXIT_FAILED)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    mb = 1e6
    print(
        f"vacuumed {report['database']}: {report['bytes_before'] / mb:,.1f} MB -> "
        f"{report['bytes_after'] / mb:,.1f} MB ({report['bytes_freed'] / mb:,.1f} MB freed, "
        f"{report['free_pages_before']:,} free pages of {report['page_size']} bytes) in "
        f"{report['vacuum_s']} s"
        + (
            f"; digest unchanged ({report['digest'][:16]}, through slot "
            f"{report['applied_through']})"
            if report["verified"]
            else "; not verified (--no-verify)"
        )
    )
