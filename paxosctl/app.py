"""The ``paxosctl`` root: each command group lives in its own module and is added here.

Two things happen here besides registration:

- Start-up cost. ``paxosctl get k`` is run in shell loops, so it must not pay for the
  simulator, the drills, the benchmarks, the local-cluster manager or SQLite. The groups that
  need those (``LAZY`` below) are imported only when their name is the command being run;
  until then the root lists them from a one-line summary.
- Global options. An etcdctl user writes ``paxosctl --endpoints ... status``; a paxosctl user
  wrote ``paxosctl status --endpoints ...``. The connection and output options are accepted
  in both places: the root takes them (the same definitions as the commands, from
  ``paxosctl.connect``) and every command falls back to the root's value for an option it
  was not given itself.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from paxosctl import admin, alarm, batch, kv, members, recipes, render, social, txn, watch
from paxosctl.clicklib import (
    Command,
    Context,
    Parameter,
    ParameterSource,
    UsageError,
    get_current_context,
)
from paxosctl.connect import (
    ConfigOpt,
    EndpointsOpt,
    JsonOpt,
    KeyFileOpt,
    SiteOpt,
    TimeoutOpt,
)

try:
    from paxosctl.fastparams import install as plain_params
except ImportError:  # a typer without pydantic coercion: nothing to speed up

    def plain_params(param: Parameter | None) -> None:
        """Nothing to do: this typer converts through click."""


# The options the root accepts before the command name (as well as after it).
GLOBAL_OPTIONS = ("--endpoints", "--key-file", "--config", "--timeout-ms", "--site", "--json")


@dataclass(frozen=True, slots=True)
class Lazy:
    """A command group imported only when it runs (or for its own --help)."""

    module: str
    # The first line of the group's help, shown in `paxosctl --help` without importing it;
    # tests/cli/test_startup.py holds it equal to the group's real help.
    summary: str
    panel: str | None = None


LAZY: dict[str, Lazy] = {
    "simulate": Lazy(
        "paxosctl.sim",
        "Run the multi-Paxos core in the deterministic simulator, or the Paxos labs.",
    ),
    "bench": Lazy(
        "paxosctl.bench",
        "Measure: key-value load on a cluster, the storage engine, the encrypted transport.",
    ),
    "cluster": Lazy(
        "paxosctl.cluster",
        "Run a local cluster on loopback: data, keys and logs in one folder "
        "($PAXOSD_LOCAL_DIR, default a per-user folder under /tmp).",
    ),
    "drill": Lazy(
        "paxosctl.drill", "Recovery drill: a concurrent workload under faults, then every check."
    ),
    "lease": Lazy(
        "paxosctl.lease",
        "Leases: keys that vanish when their owner stops keeping them alive (etcd's leases).",
        "Keys",
    ),
    "snapshot": Lazy(
        "paxosctl.snapshot",
        "Take a snapshot now on every node (or --node N); `snapshot save FILE` writes a backup.",
        "Log and cluster",
    ),
}


def _root_source(ctx: Context, name: str) -> tuple[Any, bool]:
    """The root's value for a global option and whether it was typed on the command line."""
    root = ctx.find_root()
    given = root.get_parameter_source(name) is ParameterSource.COMMANDLINE
    return root.params.get(name), given


def _root_param(ctx: Context, option: str) -> Any:
    for p in ctx.find_root().command.params:
        if option in getattr(p, "opts", ()):
            return p
    return None


def _same_meaning(option: str, mine: Any, root: Any) -> bool:
    """Whether a command's option is the global one under another definition. Only --site
    has a second meaning (``blocks --site``: a filter, not the origin of writes); the origin
    site is the one read from $PAXOSCTL_SITE."""
    return option != "--site" or getattr(mine, "envvar", None) == getattr(root, "envvar", None)


def _with_global_options(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command's callback: an option the command takes but was not given after its
    name takes the value given before it (``paxosctl --json get k``). A global option given
    before a command that has no such option is a usage error, not silently ignored."""

    @functools.wraps(callback)
    def wrapper(**kwargs: Any) -> Any:
        ctx = get_current_context()
        root = ctx.find_root()
        if ctx is not root:
            leaf = not getattr(ctx.command, "commands", None)
            for option in GLOBAL_OPTIONS:
                rp = _root_param(ctx, option)
                if rp is None or rp.name is None:
                    continue
                value, given = _root_source(ctx, rp.name)
                if not given:
                    continue
                mine = [
                    p
                    for p in ctx.command.params
                    if option in getattr(p, "opts", ()) and _same_meaning(option, p, rp)
                ]
                if not mine:
                    if leaf:
                        raise UsageError(f"{option} does not apply to `{ctx.command_path}`", ctx)
                    continue
                p = mine[0]
                if p.name and ctx.get_parameter_source(p.name) is not ParameterSource.COMMANDLINE:
                    kwargs[p.name] = value
        return callback(**kwargs)

    return wrapper


def adopt(cmd: Command) -> Command:
    """Give ``cmd`` and every command below it the global-option fallback, and plain
    parameters their plain converter (paxosctl.fastparams)."""
    for param in cmd.params:
        plain_params(param)
    if cmd.callback is not None and not getattr(cmd.callback, "_global_options", False):
        cmd.callback = _with_global_options(cmd.callback)
        cmd.callback._global_options = True  # type: ignore[attr-defined]
    for sub in getattr(cmd, "commands", {}).values():
        adopt(sub)
    return cmd


def logs_to_stderr() -> None:
    """Send structlog's records to stderr: the lazy groups run storage, nodes and the
    transport in this process, and structlog's own default prints to stdout, which would
    put log lines in front of a --json document. Warnings and errors only: what a command
    did, it says itself (``cluster up`` need not echo every database it created). A group
    may reconfigure, e.g. the level."""
    from paxosd.server.logs import configure_logging

    configure_logging(level="warning", stream=_CurrentStderr())  # type: ignore[arg-type]


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at each write, not the one at configuration: a test runner
    (or a program embedding paxosctl) swaps it per invocation and closes the old one."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    def fileno(self) -> int:
        return sys.stderr.fileno()


def load(name: str) -> Command:
    """Import a lazy group and build its click command (named as the root registers it)."""
    lazy = LAZY[name]
    logs_to_stderr()
    module = importlib.import_module(lazy.module)
    cmd = typer.main.get_command(module.app)
    cmd.name = name
    # Shell completion is installed from the root; typer would offer it on every sub-app.
    cmd.params = [p for p in cmd.params if p.name not in ("install_completion", "show_completion")]
    if lazy.panel is not None:
        cmd.rich_help_panel = lazy.panel  # type: ignore[attr-defined]
    return adopt(cmd)


class RootGroup(TyperGroup):
    """The root command: lazy groups stand in as summaries until one is resolved to run."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for param in self.params:
            plain_params(param)
        for cmd in self.commands.values():
            adopt(cmd)
        for name, lazy in LAZY.items():
            self.commands[name] = TyperCommand(name, help=lazy.summary, rich_help_panel=lazy.panel)

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        # typer appends the completion options after __init__, and makes --help on demand.
        for param in [*self.params, self.get_help_option(ctx)]:
            plain_params(param)
        return super().parse_args(ctx, args)

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        if args and args[0] in LAZY and args[0] in self.commands:
            self.commands[args[0]] = load(args[0])
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            plain_params(cmd.get_help_option(ctx))
        return name, cmd, rest

    def load_all(self) -> RootGroup:
        """Every group loaded: the whole tree, for tests and the command reference."""
        for name in LAZY:
            self.commands[name] = load(name)
        return self


app = typer.Typer(
    rich_markup_mode=None,
    name="paxosctl",
    cls=RootGroup,
    help="Operate a paxosd cluster: keys, blocks, the log, simulations, drills and benchmarks."
    "\n\n\b\nExit codes:"
    "\n  0  ok"
    "\n  1  not found, CAS mismatch, revision compacted or in the future, digest mismatch"
    " or a violation found"
    "\n  2  usage error"
    "\n  3  unavailable, or no quorum within --timeout-ms, or the store over its quota"
    "\n  4  authentication failed (wrong client key)"
    "\n\nErrors are one line on stderr."
    "\n\nConnection and output options (--endpoints, --key-file, --config, --timeout-ms,"
    " --site, --json) go before or after the command name."
    "\n\nExample: paxosctl cluster up && paxosctl put k v && paxosctl get k"
    "\n\nExample: paxosctl --endpoints 10.0.0.1:7101 --key-file client.key status",
    no_args_is_help=True,
)


@app.callback()
def _root(
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = kv.TIMEOUT_MS_DEFAULT,
    site: SiteOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """paxosctl: talk to a paxosd cluster. Example: paxosctl simulate --fuzz --seeds 100"""


# Command registration: one line per owning module (keep this list sorted). The groups in
# LAZY are added by RootGroup.
admin.register(app)
alarm.register(app)
batch.register(app)
members.register(app)
kv.register(app)
recipes.register(app)
social.register(app)
txn.register(app)
watch.register(app)


def command() -> RootGroup:
    """The root click command with every group loaded."""
    root = typer.main.get_command(app)
    assert isinstance(root, RootGroup)
    return root.load_all()


def walk(cmd: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Command]]:
    """Every command and group below ``cmd`` with its path, hidden aliases included."""
    if path:
        yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from walk(sub, (*path, name))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; a usage error is one line on stderr (exit 2), like every other error."""
    try:
        code = app(args=argv, standalone_mode=False)
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
