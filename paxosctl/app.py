"""The ``paxosctl`` root: each command group lives in its own module and is added here."""

from __future__ import annotations

import sys

import typer

from paxosctl import admin, bench, cluster, drill, kv, members, render, sim, social

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
members.register(app)
app.add_typer(bench.app, name="bench")
app.add_typer(cluster.app, name="cluster")
app.add_typer(drill.app, name="drill")
kv.register(app)
app.command("simulate", help=sim.HELP)(sim.simulate)
social.register(app)


def main() -> None:
    """Run the CLI; a usage error is one line on stderr (exit 2), like every other error."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as e:  # click's usage and parameter errors
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if not message:  # no arguments at all: the help was printed, nothing is wrong
            sys.exit(render.EXIT_USAGE)
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        render.error(f"{message}{hint}")
        sys.exit(int(getattr(e, "exit_code", render.EXIT_USAGE)))
    sys.exit(code if isinstance(code, int) else 0)
