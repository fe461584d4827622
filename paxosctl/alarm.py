"""``paxosctl alarm list / disarm``: the cluster's alarms, as etcdctl's.

NOSPACE is raised through the log by the leader once the store's accounted bytes (keys,
values and history, the same on every replica) reach its ``[limits] quota_bytes``; while it
is raised, puts, cas and transactions with a put are refused (exit 3, "NOSPACE: ..."), and
reads, deletes and compaction work. Free space, then disarm.
"""

from __future__ import annotations

from typing import Any

import typer

from paxosctl import render
from paxosctl.connect import ConfigOpt, EndpointsOpt, JsonOpt, KeyFileOpt, TimeoutOpt
from paxosctl.kv import TIMEOUT_MS_DEFAULT, command_errors, connect
from paxosd.client.client import Client, UnavailableError, statuses_json

alarm_app = typer.Typer(
    rich_markup_mode=None,
    help="The cluster's alarms (NOSPACE: the store is over its quota): list, disarm.\n\n"
    "Example: paxosctl alarm list",
    no_args_is_help=True,
    rich_help_panel="Log and cluster",
)


def _freshest(c: Client) -> dict[str, Any]:
    """The leader's status, else the most advanced member's: alarms are replicated state,
    so the member that applied the most shows the latest. UnavailableError if none answers."""
    answers = statuses_json(c)
    ok = [a for a in answers if "error" not in a]
    if not ok:
        raise UnavailableError(
            "no node answered: " + "; ".join(f"{a['endpoint']}: {a['error']}" for a in answers)
        )
    leaders = [a for a in ok if a.get("role") == "leader"]
    return max(leaders or ok, key=lambda a: int(a["applied_index"]))


def _line(a: dict[str, Any]) -> str:
    # etcdctl's format: "memberID:<id> alarm:NOSPACE".
    return f"memberID:{a['member']} alarm:{a['alarm']}"


@alarm_app.command("list")
@command_errors
def alarm_list(
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """The raised alarms, one line each ("memberID:1 alarm:NOSPACE"); nothing when none.

    Read from the leader's applied state (alarms are replicated). Exit 3 if no node answers.

    JSON: {"alarms": [{"member", "alarm"}], "store_bytes", "quota_bytes"}.

    Example: paxosctl alarm list
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        row = _freshest(c)
    alarms = list(row.get("alarms", []))
    if json_out:
        render.emit_json(
            {
                "alarms": alarms,
                "store_bytes": row.get("store_bytes", 0),
                "quota_bytes": row.get("quota_bytes", 0),
            }
        )
        return
    for a in alarms:
        render.line(_line(a))


@alarm_app.command("disarm")
@command_errors
def alarm_disarm(
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Clear the NOSPACE alarm through the log, after freeing space (delete, compact).

    Prints the alarms it cleared. If the store is still over its quota, the leader raises
    the alarm again at once (as etcd does) and writes stay refused: `alarm list` shows it.

    JSON: {"disarmed": [{"member", "alarm"}], "alarms": [{"member", "alarm"}]}, the second
    the alarms raised right after the disarm.

    Example: paxosctl alarm disarm
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        before = list(_freshest(c).get("alarms", []))
        after = c.alarm_disarm()
    remaining = [{"member": a.member, "alarm": a.alarm} for a in after.alarms]
    disarmed = [a for a in before if a not in remaining]
    if json_out:
        render.emit_json({"disarmed": disarmed, "alarms": remaining})
        return
    for a in disarmed:
        render.line(_line(a))
    if not disarmed:
        render.note("no alarm was raised")


def register(app: typer.Typer) -> None:
    """Add ``paxosctl alarm`` to the root (one line in app.py)."""
    app.add_typer(alarm_app, name="alarm", rich_help_panel="Log and cluster")
