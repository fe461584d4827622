"""``paxosctl snapshot``: take snapshots now, and ``snapshot save FILE``: a backup.

A module of its own so that the backup code (and SQLite behind it) loads only for this group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from paxosctl import render
from paxosctl.admin import NodeOpt
from paxosctl.connect import ConfigOpt, EndpointsOpt, JsonOpt, KeyFileOpt, TimeoutOpt
from paxosctl.kv import (
    Failed,
    command_errors,
    connect,
)
from paxosd.client.client import BadRequestError, UnavailableError
from paxosd.storage.backup import (
    CHUNK_BYTES_MAX,
    BackupError,
    BackupFileWriter,
    BackupStateMismatch,
    SnapshotStreamError,
    fetch_snapshot,
)

# `paxosctl snapshot` waits for the nodes' forked children (seconds for a GiB state, more
# on a loaded disk); `snapshot save` for that and for the state to cross the network.
SNAPSHOT_TIMEOUT_MS_DEFAULT: Final = 120_000
SAVE_TIMEOUT_MS_DEFAULT: Final = 600_000
# One chunk request of `snapshot save` (1 MiB from a file on the node) may take this long
# before it is asked again; the whole save is bounded by --timeout-ms.
CHUNK_ATTEMPT_MS: Final = 10_000

# A group that still acts by itself: `paxosctl snapshot` takes snapshots as it always did,
# `paxosctl snapshot save FILE` writes a backup. Its help is the callback's docstring.
app = typer.Typer(rich_markup_mode=None, rich_help_panel="Log and cluster")


@app.callback(invoke_without_command=True)
@command_errors
def snapshot(
    ctx: typer.Context,
    node: Annotated[
        int | None, typer.Option("--node", min=1, help="Only this node (default: every node).")
    ] = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = SNAPSHOT_TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Take a snapshot now on every node (or --node N); `snapshot save FILE` writes a backup.

    The node saves its state machine at its applied index and compacts its log behind it
    (keeping the configured tail). A forked child writes it while the node goes on
    serving; the answer comes when it is written (a snapshot already being made is the one
    waited for, and its slot may be a little behind the applied index).

    Exit 3 if no node took one.

    JSON: {"snapshots": [{"node_id", "address", "snapshot_index"} or
    {"node_id": null, "address", "error"}]}.

    Example: paxosctl snapshot --node 2
    """
    if ctx.invoked_subcommand is not None:
        return
    with connect(endpoints, key_file, config, timeout_ms) as c:
        answers: list[dict[str, Any]] = []
        if node is not None:
            taken = c.snapshot(node=node)
            answers.append({"node_id": taken.node_id, "snapshot_index": taken.snapshot_index})
        else:
            for endpoint, answer in c.snapshot_each():
                if isinstance(answer, str):
                    answers.append({"error": answer})
                else:
                    answers.append(
                        {"node_id": answer.node_id, "snapshot_index": answer.snapshot_index}
                    )
                answers[-1]["endpoint"] = endpoint
        answers = [{"endpoint": None} | a for a in answers]
    rows = [
        {"node_id": None, "address": a["endpoint"], "error": a["error"]}
        if "error" in a
        else {
            "node_id": a["node_id"],
            "address": a["endpoint"],
            "snapshot_index": a["snapshot_index"],
        }
        for a in answers
    ]
    if json_out:
        render.emit_json({"snapshots": rows})
    else:
        render.text_table(
            None,
            ["node", "address", "snapshot index"],
            [
                [
                    r["node_id"] or "?",
                    r["address"] or "-",
                    r.get("snapshot_index", "FAILED: " + str(r.get("error"))),
                ]
                for r in rows
            ],
        )
    if all("error" in r for r in rows):
        raise UnavailableError("no node took a snapshot")


@app.command("save")
@command_errors
def snapshot_save(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The backup file to write (replaced atomically).")
    ],
    node: NodeOpt = None,
    chunk_bytes: Annotated[
        int,
        typer.Option(
            "--chunk-bytes",
            min=1024,
            max=CHUNK_BYTES_MAX,
            help="Bytes per request (smaller: more round trips, smaller frames).",
        ),
    ] = CHUNK_BYTES_MAX,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = SAVE_TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Save a consistent snapshot of the cluster to FILE: a backup.

    One node (--node N, else the first to answer) streams its latest snapshot in chunks if
    it is within snapshot_every_entries of its applied index; else it has a forked child
    make one while it goes on serving, and paxosctl asks again until it is written. The
    whole save is bounded by --timeout-ms (default 10 minutes: enough for a GiB).
    paxosctl restores the state locally to check the digest, then writes FILE (magic,
    header, state, sha256) via FILE.tmp, fsync and rename. Restore it into
    a new cluster with `paxosd restore FILE --new-cluster ...`; check it with
    `paxosd inspect FILE`.

    Exit 1 if the state does not match its digest; 3 if no node answers.

    JSON: {"file", "node_id", "cluster_id", "applied_index", "digest", "state_bytes",
    "file_bytes", "sha256", "chunks", "restarts"}.

    Example: paxosctl snapshot save backup.pxb --node 1
    """
    pinned = node

    def ask(args: dict[str, Any]) -> dict[str, Any]:
        # Every chunk from the node that answered first: snapshots differ between nodes.
        nonlocal pinned
        chunk = c.snapshot_read(
            int(args.get("offset", 0)),
            args.get("slot"),
            args.get("chunk_bytes"),
            node=pinned,
            attempt_ms=CHUNK_ATTEMPT_MS,
        )
        if pinned is None:
            pinned = chunk.node_id
        return {f: v for f in chunk.__struct_fields__ if (v := getattr(chunk, f)) is not None}

    announced: set[int] = set()

    def waiting(slot: int) -> None:
        if slot not in announced:  # once per snapshot, however often we ask
            announced.add(slot)
            render.rich_note(
                f"node {pinned} is making a snapshot at slot {slot}; waiting for it", markup=False
            )

    # Each request (a pending answer or one chunk) within a minute, the whole within --timeout-ms.
    with (
        connect(endpoints, key_file, config, min(timeout_ms, 60_000)) as c,
        Progress(
            TextColumn("snapshot"),
            BarColumn(),
            DownloadColumn(),
            console=render.stderr,
            transient=True,
            disable=not render.stderr_is_terminal(),
        ) as bar,
    ):
        task = bar.add_task("snapshot", total=None)
        # The state goes to FILE.tmp as it arrives; finish checks it and renames it to FILE.
        writer = BackupFileWriter(file)
        try:
            try:
                fetched = fetch_snapshot(
                    ask,
                    chunk_bytes=chunk_bytes,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    timeout_s=timeout_ms / 1000,
                    waiting=waiting,
                    sink=writer,
                )
                written = writer.finish()
            except SnapshotStreamError as e:
                raise UnavailableError(str(e)) from None
            except BackupStateMismatch as e:
                raise Failed(f"digest mismatch, nothing written: {e}") from None
            except (OSError, BackupError) as e:
                message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise BadRequestError(f"cannot write {file}: {message}") from None
        finally:
            writer.abandon()
    h = written.header
    out = {
        "file": str(file),
        "node_id": h.node_id,
        "cluster_id": h.cluster_id,
        "applied_index": h.applied_index,
        "digest": h.digest,
        "state_bytes": h.state_bytes,
        "file_bytes": written.file_bytes,
        "sha256": written.sha256,
        "chunks": fetched.chunks,
        "restarts": fetched.restarts,
    }
    if json_out:
        render.emit_json(out)
        return
    render.line(
        f"saved {file}: applied index {h.applied_index}, digest {h.digest}, "
        f"{written.file_bytes} bytes (node {h.node_id} of {h.cluster_id})"
    )
