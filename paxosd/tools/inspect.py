"""``paxosd inspect``: read one node's durable state with the daemon stopped (in the manner of
etcd-dump-logs). It opens the database read-only and never writes it, so it is safe to point
at the data dir of a node that just crashed, before deciding what to do with it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from paxosd.core.types import Value
from paxosd.statemachine.commands import BadCommand, decode_command
from paxosd.statemachine.machine import BadSnapshot, StateMachine
from paxosd.storage.backup import BackupError, is_backup_file, read_backup, verify_state
from paxosd.storage.store import (
    DB_FILENAME,
    LOG_ROWS_MAX,
    LogRow,
    Storage,
    StorageError,
    StorageMeta,
)

# How much of a value the log listing shows: enough to recognise a command, never enough to
# flood a terminal. Bytes are rendered with repr(), so control characters cannot reach it.
PREVIEW_COMMANDS_MAX = 3
PREVIEW_CHARS_MAX = 80


def _preview_command(raw: bytes) -> str:
    """A decoded command as text, else its raw bytes. repr() escapes every non-printable
    character, in str and bytes alike."""
    try:
        cmd = decode_command(raw)
        text = f"{cmd.client_id}#{cmd.seq} {cmd.op!r}"
    except BadCommand:
        text = repr(raw[:PREVIEW_CHARS_MAX])
    return text if len(text) <= PREVIEW_CHARS_MAX else text[: PREVIEW_CHARS_MAX - 3] + "..."


def _preview(value: Value) -> str:
    if not value:
        return "(no-op)"
    parts = [_preview_command(command) for command in value[:PREVIEW_COMMANDS_MAX]]
    more = len(value) - PREVIEW_COMMANDS_MAX
    return " | ".join(parts) + (f" | +{more} more" if more > 0 else "")


def state_digest(storage: Storage) -> dict[str, Any]:
    """Rebuild the state machine the way recovery does (snapshot, then the decided slots
    after it, in order, up to the first gap) and report its digest."""
    state = storage.load()
    try:
        sm = StateMachine.restore(state.snapshot.state) if state.snapshot else StateMachine()
    except BadSnapshot as exc:
        raise StorageError(storage.path, f"snapshot does not restore: {exc}") from exc
    slot = sm.applied_through + 1
    replayed = 0
    while slot in state.decided:  # bounded by len(state.decided)
        sm.apply(slot, state.decided[slot].value)
        slot += 1
        replayed += 1
    return {
        "digest": sm.digest(),
        "digest_applied_through": sm.applied_through,
        "replayed": replayed,
    }


def _meta_dict(meta: StorageMeta) -> dict[str, Any]:
    return {
        "path": meta.path,
        "cluster_id": meta.cluster_id,
        "node_id": meta.node_id,
        "schema_version": meta.schema_version,
        "created_at": meta.created_at,
        "promised": {"round": meta.promised.round, "node": meta.promised.node},
        "accepted": {
            "first": meta.accepted.first,
            "last": meta.accepted.last,
            "count": meta.accepted.count,
        },
        "decided": {
            "first": meta.decided.first,
            "last": meta.decided.last,
            "count": meta.decided.count,
        },
        "snapshot_slot": meta.snapshot_slot,
        "snapshot_bytes": meta.snapshot_bytes,
        "applied_through": meta.applied_through,
        "file_bytes": meta.file_bytes,
    }


def _row_dict(row: LogRow) -> dict[str, Any]:
    return {
        "slot": row.slot,
        "kind": row.kind,
        "ballot": None if row.ballot is None else str(row.ballot),
        "commands": len(row.value),
        "value_bytes": row.value_bytes,
        "preview": _preview(row.value),
    }


def _range(first: int | None, last: int | None, count: int) -> str:
    return "none" if count == 0 else f"{first}..{last} ({count} entries)"


def _print_state(info: dict[str, Any]) -> None:
    acc, dec = info["accepted"], info["decided"]
    lines = [
        ("file", info["path"]),
        ("cluster id", info["cluster_id"]),
        ("node id", info["node_id"]),
        ("schema version", info["schema_version"]),
        ("created at", info["created_at"]),
        ("promised ballot", f"{info['promised']['round']}.{info['promised']['node']}"),
        ("accepted", _range(acc["first"], acc["last"], acc["count"])),
        ("decided", _range(dec["first"], dec["last"], dec["count"])),
        (
            "snapshot",
            "none"
            if info["snapshot_slot"] is None
            else f"slot {info['snapshot_slot']} ({info['snapshot_bytes']} bytes)",
        ),
        (
            "applied index",
            "unknown" if info["applied_through"] is None else info["applied_through"],
        ),
        ("digest", f"{info['digest']} (through slot {info['digest_applied_through']})"),
        ("file bytes", info["file_bytes"]),
    ]
    for name, value in lines:
        typer.echo(f"{name + ':':<17}{value}")


def inspect_cmd(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="A backup file (from paxosctl snapshot save) or a data dir.", show_default=False
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The node's data directory.", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    log: Annotated[bool, typer.Option("--log", help="List log entries instead.")] = False,
    from_slot: Annotated[
        int | None, typer.Option("--from", help="First slot to list (default: the first).")
    ] = None,
    to_slot: Annotated[
        int | None, typer.Option("--to", help="Last slot to list (default: the last).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=LOG_ROWS_MAX, help="Most entries to list.")
    ] = 1000,
) -> None:
    """Print a node's durable state, or a backup file's header (read-only).

    For a data dir the daemon may be stopped. For a backup, the checksum is verified and the
    state restored to check its applied index and digest.

    Example: paxosd inspect --data-dir /var/lib/paxosd --log --from 100 --to 120
    Example: paxosd inspect backup.pxb --json
    """
    if file is not None and data_dir is not None:
        typer.echo("paxosd inspect: give a FILE or --data-dir, not both", err=True)
        raise typer.Exit(code=2)
    if file is not None and not file.is_dir():
        if log:
            typer.echo("paxosd inspect: --log lists a data dir's log, not a backup", err=True)
            raise typer.Exit(code=2)
        _inspect_backup(file, as_json)
        return
    directory = data_dir if data_dir is not None else file
    if directory is None:
        typer.echo("paxosd inspect: give a backup FILE or --data-dir DIR", err=True)
        raise typer.Exit(code=2)
    path = directory / DB_FILENAME
    try:
        with Storage.open_readonly(path) as storage:
            if log:
                rows = storage.read_log(
                    from_slot if from_slot is not None else 0,
                    to_slot if to_slot is not None else (1 << 63) - 1,
                    limit,
                )
                _print_log([_row_dict(r) for r in rows], as_json)
                return
            info = _meta_dict(storage.meta()) | state_digest(storage)
    except StorageError as exc:
        typer.echo(f"paxosd inspect: {exc}", err=True)
        raise typer.Exit(code=1) from None
    if as_json:
        sys.stdout.write(msgspec.json.encode(info).decode() + "\n")
    else:
        _print_state(info)


def _inspect_backup(file: Path, as_json: bool) -> None:
    """A backup's header, after checking the file's checksum and that its state restores to
    the applied index and digest the header names. Exit 1, one line, if anything is off."""
    if not is_backup_file(file) and file.exists():
        typer.echo(
            f"paxosd inspect: {file}: not a paxosd backup (no PAXOSBAK magic); for a node's "
            "database pass its data dir",
            err=True,
        )
        raise typer.Exit(code=1)
    try:
        backup = read_backup(file)
        verify_state(backup.header, backup.state, path=file)
    except BackupError as exc:
        typer.echo(f"paxosd inspect: {exc}", err=True)
        raise typer.Exit(code=1) from None
    h = backup.header
    info: dict[str, Any] = {
        "kind": "backup",
        "path": str(file),
        "format_version": backup.version,
        "cluster_id": h.cluster_id,
        "node_id": h.node_id,
        "applied_index": h.applied_index,
        "digest": h.digest,
        "created_at": h.created_at,
        "state_bytes": h.state_bytes,
        "file_bytes": backup.file_bytes,
        "sha256": backup.sha256,
        "checksum_ok": True,
        "state_ok": True,
    }
    if as_json:
        sys.stdout.write(msgspec.json.encode(info).decode() + "\n")
        return
    lines = [
        ("backup", info["path"]),
        ("format version", backup.version),
        ("cluster id", h.cluster_id),
        ("from node", h.node_id),
        ("applied index", h.applied_index),
        ("digest", h.digest),
        ("created at", h.created_at),
        ("state bytes", h.state_bytes),
        ("file bytes", backup.file_bytes),
        ("sha256", backup.sha256),
        ("checksum", "ok; the state restores to this applied index and digest"),
    ]
    for name, value in lines:
        typer.echo(f"{name + ':':<17}{value}")


def _print_log(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    typer.echo(f"{'slot':>10}  {'kind':<8}  {'ballot':>9}  {'cmds':>4}  {'bytes':>7}  value")
    for r in rows:
        ballot = r["ballot"] or "-"
        typer.echo(
            f"{r['slot']:>10}  {r['kind']:<8}  {ballot:>9}  {r['commands']:>4}  "
            f"{r['value_bytes']:>7}  {r['preview']}"
        )
