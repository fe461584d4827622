"""The ``paxosctl`` root: each command group lives in its own module and is added here."""

from __future__ import annotations

import typer

from paxosctl import admin, cluster, drill, kv, sim, social

app = typer.Typer(
    name="paxosctl",
    help="Operate a paxosd cluster: keys, blocks, the log, simulations, drills and benchmarks."
    "\n\nExit codes: 0 ok; 1 not found, CAS mismatch, digest mismatch or a violation found;"
    " 2 usage error; 3 unavailable or no quorum within --timeout-ms; 4 authentication"
    " failed (wrong client key). Errors are one line on stderr."
    "\n\nExample: paxosctl cluster up && paxosctl put k v && paxosctl get k",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """paxosctl: talk to a paxosd cluster. Example: paxosctl simulate --fuzz --seeds 100"""


# Command registration: one line per owning module (keep this list sorted).
admin.register(app)
app.add_typer(cluster.app, name="cluster")
app.add_typer(drill.app, name="drill")
kv.register(app)
app.command("simulate", help=sim.HELP)(sim.simulate)
social.register(app)


def main() -> None:
    app()
