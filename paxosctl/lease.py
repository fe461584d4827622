"""``paxosctl lease grant|keep-alive|revoke|ttl|list``: etcd's leases, as etcdctl spells them.

A lease lives TTL seconds past its last keep-alive, counted by the leader on its monotonic
clock; keys put with ``--lease ID`` are deleted when it is revoked or expires, all at one
revision.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from paxosctl import render
from paxosctl.connect import ConfigOpt, EndpointsOpt, JsonOpt, KeyFileOpt, TimeoutOpt
from paxosctl.kv import TIMEOUT_MS_DEFAULT, command_errors, connect, show_text
from paxosd.client.errors import ClientError, LeaseNotFoundError, UnavailableError

app = typer.Typer(rich_markup_mode=None, rich_help_panel="Keys")

IdArg = Annotated[
    int, typer.Argument(metavar="ID", min=1, help="The lease id.", show_default=False)
]


@app.callback()
def lease() -> None:
    """Leases: keys that vanish when their owner stops keeping them alive (etcd's leases).

    Example: paxosctl lease grant 10 && paxosctl put svc/n1 up --lease ID
    """


@app.command()
@command_errors
def grant(
    ttl: Annotated[
        int,
        typer.Argument(
            metavar="TTL",
            min=1,
            help="Seconds the lease lives past its last keep-alive (at least 1.5 election "
            "timeouts of the cluster).",
            show_default=False,
        ),
    ],
    lease_id: Annotated[
        int, typer.Option("--id", min=0, help="Ask for this lease id (0: the cluster picks).")
    ] = 0,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Grant a lease of TTL seconds; prints its id.

    Exit 2 if the TTL is below the cluster's minimum or the id is taken.

    JSON: {"id", "ttl", "header"}.

    Example: paxosctl lease grant 10
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        granted = c.lease_grant(ttl, lease_id)
        header = c.last_header
    out = {"id": granted.id, "ttl": granted.ttl, "header": header and header.to_json()}
    if json_out:
        render.emit_json(out)
    else:
        render.line(f"lease {granted.id} granted with TTL({granted.ttl}s)")


@app.command("keep-alive")
@command_errors
def keep_alive(
    lease_id: IdArg,
    once: Annotated[bool, typer.Option("--once", help="One keep-alive, then exit.")] = False,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Keep lease ID alive: every TTL/3 seconds until Ctrl-C, or once with --once.

    Each keep-alive is answered by the leader (it is not written to the log) and gives the
    lease its full TTL again. Exit 1 when the lease is gone (expired or revoked); a Ctrl-C
    exits 0 (the lease then expires after its TTL unless revoked).

    JSON: one {"id", "ttl"} object per line, one per keep-alive.

    Example: paxosctl lease keep-alive 7587 --once
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        try:
            while True:
                ttl = _keep_alive(c, lease_id, retry=not once)
                if json_out:
                    render.json_line({"id": lease_id, "ttl": ttl}, flush=True)
                else:
                    render.line(f"lease {lease_id} keepalived with TTL({ttl})")
                if once:
                    return
                time.sleep(max(0.1, ttl / 3))
        except KeyboardInterrupt:
            return


def _keep_alive(c: Any, lease_id: int, *, retry: bool) -> int:
    """One keep-alive; while streaming, a cluster that is unavailable for a moment (a leader
    election) is asked again rather than given up on. A lease that is gone ends it."""
    while True:
        try:
            return int(c.lease_keep_alive_once(lease_id))
        except LeaseNotFoundError:
            raise
        except UnavailableError as e:
            if not retry:
                raise
            render.note(show_text(f"keep-alive not answered ({e}); trying again"))
        except ClientError:
            raise


@app.command()
@command_errors
def revoke(
    lease_id: IdArg,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Revoke lease ID: every key attached to it is deleted, all at one revision.

    Exit 1 if the lease does not exist.

    JSON: {"id", "deleted", "revision", "header"}.

    Example: paxosctl lease revoke 7587
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        revoked = c.lease_revoke(lease_id)
        header = c.last_header
    if json_out:
        render.emit_json(
            {
                "id": revoked.id,
                "deleted": revoked.deleted,
                "revision": revoked.revision,
                "header": header and header.to_json(),
            }
        )
    else:
        render.line(f"lease {revoked.id} revoked ({revoked.deleted} keys deleted)")


@app.command()
@command_errors
def ttl(
    lease_id: IdArg,
    keys: Annotated[bool, typer.Option("--keys", help="Also list the attached keys.")] = False,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Show how long lease ID still lives (as the leader counts) and its granted TTL.

    Exit 1 if the lease does not exist.

    JSON: {"id", "ttl", "granted_ttl", "keys" (with --keys), "header"}.

    Example: paxosctl lease ttl 7587 --keys
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        info = c.lease_time_to_live(lease_id, keys=keys)
        header = c.last_header
    if json_out:
        out: dict[str, Any] = {"id": info.id, "ttl": info.ttl, "granted_ttl": info.granted_ttl}
        if keys:
            out["keys"] = list(info.keys)
        out["header"] = header and header.to_json()
        render.emit_json(out)
        return
    text = f"lease {info.id} granted with TTL({info.granted_ttl}s), remaining({info.ttl}s)"
    if keys:
        text += ", attached keys(" + ", ".join(show_text(k) for k in info.keys) + ")"
    render.line(text)


@app.command("list")
@command_errors
def list_(
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """List every lease id.

    JSON: {"leases": [id, ...], "header"}.

    Example: paxosctl lease list
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        ids = c.leases()
        header = c.last_header
    if json_out:
        render.emit_json({"leases": ids, "header": header and header.to_json()})
        return
    render.line(f"found {len(ids)} leases")
    for lease_id in ids:
        render.line(str(lease_id))
