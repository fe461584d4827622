"""``paxosctl members / member add|promote|remove / leader [transfer]``: who is in the cluster.

Membership changes go through the log (see paxosd.core.membership): the leader checks them,
proposes one at a time, and answers once decided. These commands find the leader themselves.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from paxosctl import render
from paxosctl.admin import status_rows
from paxosctl.connect import ConfigOpt, EndpointsOpt, JsonOpt, KeyFileOpt, TimeoutOpt
from paxosctl.kv import (
    TIMEOUT_MS_DEFAULT,
    Failed,
    command_errors,
    connect,
)
from paxosd.client.client import Client, RefusedError, UnavailableError, statuses_json
from paxosd.net.admin import ChangeMember, Decided, Transfer, to_json

# A learner is promoted once this close to the leader (the leader re-checks: its own bound).
PROMOTE_LAG_SLOTS = 64
PROMOTE_WAIT_S_DEFAULT = 60.0

NodeArg = Annotated[int, typer.Argument(min=1, metavar="NODE", help="The member's node id.")]


def _leader_id(c: Client) -> int:
    """The node that leads now. During an election (or right after a transfer) wait for one,
    as a write would, up to the client's timeout; at once when no node answers at all."""
    deadline = time.monotonic() + c.timeout_ms / 1000
    while True:
        answers = statuses_json(c)
        out = status_rows(answers)
        if out["leader"] is not None:
            return int(out["leader"])
        seen = "; ".join(f"{n['address']}: {n['role']}" for n in out["nodes"])
        if time.monotonic() >= deadline or all("error" in a for a in answers):
            raise UnavailableError(f"no leader right now ({seen})")
        time.sleep(0.1)


def admin_query(c: Client, query: ChangeMember | Transfer) -> Decided:
    """Send a membership change or transfer to the leader; follow a leader change twice.

    A refusal is the leader's own no (exit 1); an outcome the leader cannot know is
    UnavailableError (exit 3)."""
    for attempt in range(3):
        try:
            leader = _leader_id(c)
            if isinstance(query, ChangeMember):
                return c.change_member(query.kind, query.node, query.address, node=leader)
            return c.transfer(query.target, node=leader)
        except RefusedError as e:
            if e.not_leader and attempt < 2:
                time.sleep(0.3)  # the leader changed between the two questions
                continue
            raise Failed(e.reason) from None
    raise UnavailableError("the leader kept changing")


def members_of(c: Client) -> dict[str, Any]:
    """The membership as the leader (else any node) knows it."""
    try:
        answer = c.members(node=_leader_id(c))
    except UnavailableError:
        answer = c.members()
    data: dict[str, Any] = to_json(answer)
    return data


@command_errors
def members(
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """The members as the log decided them: id, voter or learner, address, connection, lag.

    Asked of the leader (any node if there is none): "connected" is the leader's peer
    connection, "lag" how many slots the member's decided log trails the leader's.

    JSON: {"leader", "epoch", "decided_index", "members": [{"node_id", "role", "peer_address",
    "client_address", "connected", "decided_lag"}]}.

    Example: paxosctl members
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        data = members_of(c)
    if json_out:
        render.emit_json(data)
        return
    render.text_table(
        f"membership epoch {data['epoch']}, decided index {data['decided_index']}",
        ["node", "role", "peer address", "connected", "lag", "leader"],
        [
            [
                m["node_id"],
                m["role"],
                m["peer_address"] or "?",
                "yes" if m["connected"] else "NO",
                "-" if m["decided_lag"] is None else m["decided_lag"],
                "*" if m["node_id"] == data["leader"] else "",
            ]
            for m in data["members"]
        ],
    )


member_app = typer.Typer(
    rich_markup_mode=None,
    help="Change the membership: add a learner, promote it, remove a member.\n\n"
    "Example: paxosctl member add 4 10.0.0.4:7001 --promote",
    no_args_is_help=True,
    rich_help_panel="Log and cluster",
)


def _wait_caught_up(c: Client, node: int, wait_s: float, quiet: bool) -> None:
    # Imported here: rich.progress is heavy and only this wait needs it.
    from rich.progress import BarColumn, Progress, TextColumn

    deadline = time.monotonic() + wait_s
    with Progress(
        TextColumn(f"node {node} catching up"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} slots"),
        console=render.stderr,
        disable=quiet,
        transient=True,
    ) as bar:
        task = bar.add_task("catch-up", total=None)
        while True:
            data = members_of(c)
            row = next((m for m in data["members"] if m["node_id"] == node), None)
            top = int(data["decided_index"])
            lag = None if row is None else row["decided_lag"]
            if lag is not None:
                bar.update(task, total=top, completed=max(0, top - int(lag)))
                if int(lag) <= PROMOTE_LAG_SLOTS and row is not None and row["connected"]:
                    return
            if time.monotonic() > deadline:
                raise Failed(
                    f"node {node} did not catch up within {wait_s:.0f} s (lag {lag}); "
                    "is it running? `paxosctl member promote` it later"
                )
            time.sleep(0.2)


@member_app.command("add")
@command_errors
def member_add(
    node: NodeArg,
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="Its peer address, host:port.")],
    promote: Annotated[
        bool, typer.Option("--promote", help="Wait until it caught up, then make it a voter.")
    ] = False,
    wait_s: Annotated[
        float, typer.Option("--wait-s", min=1, help="How long --promote waits for catch-up.")
    ] = PROMOTE_WAIT_S_DEFAULT,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Add node ID at ADDRESS as a learner: it receives the log but does not vote.

    Start the new node first (its config: `initial_cluster_state = "existing"`, [peers]
    listing the running members and itself, a bootstrapped empty data dir). It catches up by
    snapshot and log; --promote then makes it a voter (or run `paxosctl member promote ID`).
    Exit 1 if refused (e.g. another change is in flight), 3 if there is no leader.

    JSON: {"added", "slot", "promoted", "promote_slot"}.

    Example: paxosctl member add 4 127.0.0.1:7104 --promote
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        added = admin_query(c, ChangeMember("add", node, address))
        out: dict[str, Any] = {"added": node, "slot": added.slot, "promoted": False}
        if not json_out:
            render.line(f"node {node} added as a learner ({added.detail})")
        if promote:
            _wait_caught_up(c, node, wait_s, json_out)
            done = admin_query(c, ChangeMember("promote", node))
            out |= {"promoted": True, "promote_slot": done.slot}
            if not json_out:
                render.line(f"node {node} is a voter ({done.detail})")
    if json_out:
        render.emit_json(out)


def _refuse_unreachable_learner(c: Client, node: int) -> None:
    """A voter that does not answer only raises the quorum: 4 voters with one of them down
    tolerate no further failure, where the 3 before tolerated one. The leader's lag check
    cannot see this while the log is short (an unknown learner counts as 0 slots behind), so
    the leader's view of its connection decides here."""
    data = members_of(c)
    row = next((m for m in data["members"] if m["node_id"] == node), None)
    if row is not None and row["role"] == "learner" and not row["connected"]:
        raise Failed(
            f"node {node} is a learner the leader is not connected to (is it running?); "
            "a voter that does not answer weakens the quorum: start it, let it catch up, "
            "then promote it"
        )


@member_app.command("promote")
@command_errors
def member_promote(
    node: NodeArg,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Make learner ID a voter. Refused (exit 1) while it lags the leader's log.

    JSON: {"promoted", "slot", "detail"}.

    Example: paxosctl member promote 4
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        _refuse_unreachable_learner(c, node)
        done = admin_query(c, ChangeMember("promote", node))
    if json_out:
        render.emit_json({"promoted": node, "slot": done.slot, "detail": done.detail})
    else:
        render.line(f"node {node} is a voter ({done.detail})")


@member_app.command("remove")
@command_errors
def member_remove(
    node: NodeArg,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Remove member ID (the leader too: it hands over first). Then stop its daemon.

    Refused (exit 1) when the remaining voters could not form a majority of live nodes.

    JSON: {"removed", "slot", "detail"}.

    Example: paxosctl member remove 3
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        done = admin_query(c, ChangeMember("remove", node))
    if json_out:
        render.emit_json({"removed": node, "slot": done.slot, "detail": done.detail})
    else:
        render.line(f"node {node} removed ({done.detail}); stop its daemon now")


leader_app = typer.Typer(rich_markup_mode=None, rich_help_panel="Log and cluster")


@leader_app.callback(invoke_without_command=True)
@command_errors
def leader(
    ctx: typer.Context,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Which node leads now (the highest-ballot node that says it leads). Exit 3 if none.

    `paxosctl leader transfer [ID]` hands leadership over.

    JSON: {"leader", "address", "ballot"}.

    Example: paxosctl leader
    """
    if ctx.invoked_subcommand is not None:
        return
    with connect(endpoints, key_file, config, timeout_ms) as c:
        answers = statuses_json(c)
    out = status_rows(answers)
    if out["leader"] is None:
        seen = "; ".join(f"{n['address']}: {n['role']}" for n in out["nodes"])
        raise UnavailableError(f"no leader right now ({seen})")
    lead = next(n for n in out["nodes"] if n["node_id"] == out["leader"])
    if json_out:
        render.emit_json(
            {"leader": lead["node_id"], "address": lead["address"], "ballot": lead["ballot"]}
        )
    else:
        render.line(f"node {lead['node_id']} at {lead['address']} (ballot {lead['ballot']})")


@leader_app.command("transfer")
@command_errors
def leader_transfer(
    node: Annotated[
        int | None,
        typer.Argument(
            min=1, metavar="NODE", help="The new leader (default: most caught-up voter)."
        ),
    ] = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Hand leadership to node ID (for maintenance) without failing a write.

    The leader stops taking new commands, waits until ID holds everything it proposed, and
    tells it to campaign; commands that arrive meanwhile are redirected to the new leader.
    Exit 1 if ID is not a voter or did not take over in time (the old leader keeps leading).

    JSON: {"leader", "detail"}.

    Example: paxosctl leader transfer 2
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        done = admin_query(c, Transfer(node))
        deadline = time.monotonic() + timeout_ms / 1000
        new = None
        while time.monotonic() < deadline:
            try:
                new = _leader_id(c)
                break
            except UnavailableError:
                time.sleep(0.1)
    if json_out:
        render.emit_json({"leader": new, "detail": done.detail})
    else:
        render.line(f"{done.detail}; leader now: node {new}")


def register(app: typer.Typer) -> None:
    app.command("members", rich_help_panel="Log and cluster")(members)
    app.add_typer(member_app, name="member", rich_help_panel="Log and cluster")
    app.add_typer(leader_app, name="leader", rich_help_panel="Log and cluster")
