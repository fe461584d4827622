"""The ``paxosd`` command: run the daemon and the offline tools that act on one node's files.

Each subcommand lives in the module that owns its logic; this file only wires them up.
"""

from __future__ import annotations

import typer

from paxosd.etcd.serve import gateway_command
from paxosd.server.daemon import run_command
from paxosd.tools.bootstrap import bootstrap_command
from paxosd.tools.forcenew import force_new_cluster_command
from paxosd.tools.initcluster import check_config_command, init_command
from paxosd.tools.inspect import inspect_cmd
from paxosd.tools.restore import restore_command
from paxosd.tools.vacuum import vacuum_command

app = typer.Typer(
    name="paxosd",
    help="paxosd: a replicated key-value store on multi-Paxos. Offline tools and the daemon.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """paxosd daemon and offline tools. Example: paxosd --help"""


# Subcommand registration: one line per owning module (keep this list sorted).
app.command("bootstrap")(bootstrap_command)
app.command("check-config")(check_config_command)
app.command("etcd-gateway")(gateway_command)
app.command("force-new-cluster")(force_new_cluster_command)
app.command("init")(init_command)
app.command("inspect")(inspect_cmd)
app.command("restore")(restore_command)
app.command("run")(run_command)
app.command("vacuum")(vacuum_command)


def main() -> None:
    app()
