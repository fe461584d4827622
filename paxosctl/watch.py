"""``paxosctl watch``: print every change to a key (or under a prefix) as it is applied.

A thin shell over ``Client.watch``: the library does the failing over and the resuming (no
gap, no repeat); this module only prints, the way etcdctl does (the event type, the key, the
value, one per line) or as one JSON object per line for scripts.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from paxosctl import render
from paxosctl.connect import ConfigOpt, EndpointsOpt, JsonOpt, KeyFileOpt, TimeoutOpt
from paxosctl.kv import (
    TIMEOUT_MS_DEFAULT,
    Failed,
    command_errors,
    connect,
    show,
    show_text,
    value_json,
)
from paxosd.client.errors import CompactedError
from paxosd.client.watch import Watch, WatchBatch
from paxosd.statemachine.commands import Event, KeyValue


def kv_json(kv: KeyValue | None) -> dict[str, Any] | None:
    """A key as JSON, etcd's field names, the value as paxosctl shows values."""
    if kv is None:
        return None
    return {
        "key": kv.key,
        **value_json(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def event_json(ev: Event) -> dict[str, Any]:
    return {"type": ev.type, "kv": kv_json(ev.kv), "prev_kv": kv_json(ev.prev_kv)}


def event_lines(ev: Event) -> list[str]:
    """etcdctl's plain form: the type, then (with --prev-kv) the key and value before, then
    the key and value after (a DELETE's value line is empty)."""
    out = [ev.type]
    if ev.prev_kv is not None:
        out += [show_text(ev.prev_kv.key), show(ev.prev_kv.value)]
    out += [show_text(ev.kv.key), show(ev.kv.value)]
    return out


def print_batch(batch: WatchBatch, json_out: bool, events_max: int | None) -> int:
    """Print a batch (at most ``events_max`` of its events); how many events were printed."""
    if batch.progress:
        if json_out:
            render.json_line({"progress": batch.revision}, flush=True)
        else:
            render.line(f"progress notify: {batch.revision}", flush=True)
        return 0
    events = batch.events if events_max is None else batch.events[:events_max]
    for ev in events:
        if json_out:
            render.json_line(event_json(ev), flush=True)
        else:
            for text in event_lines(ev):
                render.line(text, flush=True)
    return len(events)


@command_errors
def watch(
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY", help="The key, or the prefix with --prefix.", show_default=False
        ),
    ],
    prefix: Annotated[
        bool, typer.Option("--prefix", help="Watch every key starting with KEY.")
    ] = False,
    rev: Annotated[
        int,
        typer.Option(
            "--rev",
            min=0,
            help="Start at this revision (0: the next change). Exit 1 if it was compacted.",
        ),
    ] = 0,
    prev_kv: Annotated[
        bool, typer.Option("--prev-kv", help="Also print each key as it was before.")
    ] = False,
    progress: Annotated[
        bool,
        typer.Option(
            "--progress",
            help="Print a progress line with the revision when the key is quiet for a while.",
        ),
    ] = False,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Exit 0 after N events (default: until Ctrl-C)."),
    ] = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Print every change to KEY (or under a prefix) as it happens, until Ctrl-C or --count.

    Plain: each event as three lines, as etcdctl prints them: PUT or DELETE, the key, the
    value (with --prev-kv, the key and value before come first).

    The watch follows the cluster: if its member fails it resumes on another from the
    next revision it has not printed, so nothing is printed twice or left out. Exit 1 if
    the history it needs was compacted (the message names the oldest revision kept); exit
    3 if no member can be reached for --timeout-ms.

    JSON: one object per line, {"type", "kv": {"key", "value", "value_encoding",
    "create_revision", "mod_revision", "version", "lease"}, "prev_kv"}; with --progress,
    {"progress": revision} lines too.

    Example: paxosctl watch --prefix user/ --rev 42 --json

    Example: paxosctl watch config/mode --count 1
    """
    printed = 0
    with connect(endpoints, key_file, config, timeout_ms) as c:
        w: Watch = c.watch(
            key, prefix=prefix, start_revision=rev, prev_kv=prev_kv, progress_notify=progress
        )
        try:
            with w:
                for batch in w:
                    left = None if count is None else count - printed
                    printed += print_batch(batch, json_out, left)
                    if count is not None and printed >= count:
                        return
        except KeyboardInterrupt:
            return  # the way to stop an endless watch: not an error
        except CompactedError as e:
            raise Failed(
                f"watch canceled: revision {e.revision} is compacted; the oldest revision "
                f"kept is {e.compact_revision} (start again with --rev {e.compact_revision})"
            ) from None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the paxosctl root (one line in app.py)."""
    app.command("watch", rich_help_panel="Keys")(watch)
