"""The ``paxosctl`` root: each command group lives in its own module and is added here."""

from __future__ import annotations

import typer

from paxosctl import cluster, sim

app = typer.Typer(
    name="paxosctl",
    help="Operate a paxosd cluster: keys, blocks, the log, simulations, drills and benchmarks.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """paxosctl: talk to a paxosd cluster. Example: paxosctl simulate --fuzz --seeds 100"""


# Command registration: one line per owning module (keep this list sorted).
app.add_typer(cluster.app, name="cluster")
app.command("simulate", help=sim.HELP)(sim.simulate)


def main() -> None:
    app()
