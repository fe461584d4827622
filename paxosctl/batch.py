"""``paxosctl batch``: many data commands, one per line, over one connection.

Each line is parsed by the very command object that parses it on the command line (so a line
is valid here when ``paxosctl LINE`` is, less the options that belong to the whole batch),
turned into an operation and its answer by the same ``Spec`` the single command uses, and sent
through one ``Pipeline`` (one connection to the leader; a redirect or fail-over opens one to
the node it names).

Consecutive puts, blocks and unblocks that touch different keys (pairs) are sent together,
up to ``--in-flight`` at a time, each from its own session so that retries stay exactly-once.
Every other command (reads, deletes, cas, scans) waits until everything before it has been
answered and runs alone, so it sees the effects of every line before it. A put can only fail
for a reason outside the command (no quorum, a bound reached), which is why only such writes
are sent ahead.
"""

from __future__ import annotations

import shlex
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from paxosctl import render
from paxosctl.clicklib import ClickException, Context, ParameterSource
from paxosctl.connect import (
    ConfigOpt,
    EndpointsOpt,
    JsonOpt,
    KeyFileOpt,
    SiteOpt,
    TimeoutOpt,
    default_site,
    resolve,
)
from paxosctl.kv import (
    SPECS as KV_SPECS,
)
from paxosctl.kv import (
    TIMEOUT_MS_DEFAULT,
    Answer,
    Spec,
    command_errors,
    failure,
    show_text,
)
from paxosctl.social import SPECS as SOCIAL_SPECS
from paxosd.client.client import BadRequestError, ClientError
from paxosd.client.pipeline import Pipeline, Session
from paxosd.statemachine.commands import Result, is_read

SPECS: dict[str, Spec] = {**KV_SPECS, **SOCIAL_SPECS}
IN_FLIGHT_DEFAULT = 128
IN_FLIGHT_MAX = 4096
POLL_MS = 50
# Options that belong to the whole batch (one connection, one output format), not a line.
BATCH_ONLY = ("endpoints", "key_file", "config", "timeout_ms", "json_out")
NOT_IN_BATCH = {"raw": "--raw", "stale": "--stale"}


@dataclass(slots=True)
class Line:
    """One command line of the input and, once known, its outcome."""

    number: int
    text: str
    spec: Spec | None = None
    params: dict[str, Any] = field(default_factory=dict)
    site: str = ""
    writes: str | None = None
    session: Session | None = None
    answer: Answer | None = None
    error: tuple[str, int] | None = None

    @property
    def done(self) -> bool:
        return self.answer is not None or self.error is not None


class Runner:
    """Sends lines through one pipeline and prints their outcomes in line order."""

    def __init__(self, pipe: Pipeline[int], in_flight: int, json_out: bool) -> None:
        self.pipe = pipe
        self.in_flight = in_flight
        self.json_out = json_out
        self.order: deque[Line] = deque()
        self.by_number: dict[int, Line] = {}
        self.writing: set[str] = set()
        self.free: dict[str, list[Session]] = {}
        self.first_error: int | None = None
        self.failed = False

    # ------------------------------------------------------------------ sending

    def session(self, site: str) -> Session:
        pool = self.free.setdefault(site, [])
        return pool.pop() if pool else Session(site=site)

    def send(self, line: Line) -> None:
        assert line.spec is not None
        line.session = self.session(line.site)
        self.order.append(line)
        try:
            op = line.spec.build(line.params)
            command = line.session.next_command(op)
        except (ClientError, ValueError) as e:
            self.finish(line, e)
            return
        if line.writes is not None:
            self.writing.add(line.writes)
        self.by_number[line.number] = line
        self.pipe.submit(command, line.number, read=is_read(op))

    def finish(self, line: Line, outcome: Result | BaseException) -> None:
        if line.writes is not None:
            self.writing.discard(line.writes)
        if line.session is not None:
            self.free.setdefault(line.site, []).append(line.session)
            line.session = None
        if isinstance(outcome, BaseException):
            found = failure(outcome)
            if found is None:
                raise outcome
            line.error = found
            return
        assert line.spec is not None
        try:
            line.answer = line.spec.answer(line.params, outcome)
        except (ClientError, ValueError) as e:
            found = failure(e)
            line.error = found if found is not None else (str(e), render.EXIT_USAGE)

    def pump(self, wait: bool) -> None:
        """Collect what has come back (waiting a little if ``wait``), then print every
        finished line at the head of the queue."""
        if self.by_number:
            for number, outcome in self.pipe.poll(POLL_MS if wait else 0):
                line = self.by_number.pop(number, None)
                if line is not None:
                    self.finish(line, outcome)
        while self.order and self.order[0].done:
            self.emit(self.order.popleft())

    def drain(self) -> None:
        while self.order:
            self.pump(wait=True)

    def run(self, line: Line) -> None:
        """Send ``line`` as soon as the ordering rule allows (see the module docstring)."""
        if line.error is not None:  # a line that did not parse: after everything before it
            self.drain()
            self.emit(line)
            return
        if line.writes is None:
            self.drain()
        else:
            while len(self.order) >= self.in_flight or line.writes in self.writing:
                self.pump(wait=True)
        self.send(line)
        if line.writes is None:
            self.drain()
        else:
            self.pump(wait=False)

    # ------------------------------------------------------------------ printing

    def emit(self, line: Line) -> None:
        if line.error is not None:
            message, code = line.error
            if self.first_error is None:
                self.first_error = code
            self.failed = True
            render.error_text(f"line {line.number}: {message}")
            if self.json_out:
                self.write(
                    {
                        "line": line.number,
                        "command": show_text(line.text),
                        "error": message,
                        "exit_code": code,
                    }
                )
            return
        assert line.answer is not None
        if self.json_out:
            self.write(
                {"line": line.number, "command": show_text(line.text), "result": line.answer.json}
            )
            return
        if line.answer.lines:
            for text in line.answer.lines:
                render.line(text)
        else:
            render.json_line(line.answer.json)
        for n in line.answer.notes:
            render.note(f"line {line.number}: {n}")

    def write(self, obj: dict[str, Any]) -> None:
        render.json_line(obj)


def parse(ctx: Context, number: int, text: str, default: str) -> Line:
    """One input line -> a Line ready to send, or one carrying its usage error."""
    line = Line(number, text)
    try:
        words = shlex.split(text, comments=True)
    except ValueError as e:
        line.error = (f"cannot split the line: {e}", render.EXIT_USAGE)
        return line
    name, args = words[0], words[1:]
    spec = SPECS.get(name)
    root = ctx.find_root().command
    cmd = getattr(root, "commands", {}).get(name)
    if spec is None or cmd is None:
        line.error = (
            f"batch cannot run `{show_text(name)}`; it runs: {', '.join(sorted(SPECS))}",
            render.EXIT_USAGE,
        )
        return line
    if "--help" in args:
        line.error = ("--help is not a command (run `paxosctl " + name + " --help`)", 2)
        return line
    try:
        sub = cmd.make_context(name, args, parent=ctx)
    except ClickException as e:
        line.error = (f"{name}: {e.format_message()}", render.EXIT_USAGE)
        return line
    for param in BATCH_ONLY:
        if sub.get_parameter_source(param) is ParameterSource.COMMANDLINE:
            opt = "--json" if param == "json_out" else "--" + param.replace("_", "-")
            line.error = (
                f"{opt} applies to the whole batch: give it to `paxosctl batch`",
                render.EXIT_USAGE,
            )
            return line
    for param, opt in NOT_IN_BATCH.items():
        if sub.params.get(param):
            line.error = (f"{name} {opt} is not available in batch", render.EXIT_USAGE)
            return line
    line.spec = spec
    line.params = dict(sub.params)
    line.site = default
    for p in cmd.params:  # a --site given on the line is that line's origin site
        if (
            "--site" in getattr(p, "opts", ())
            and getattr(p, "envvar", None) == "PAXOSCTL_SITE"
            and p.name
            and sub.get_parameter_source(p.name) is ParameterSource.COMMANDLINE
        ):
            line.site = str(sub.params[p.name])
    line.writes = spec.writes(line.params) if spec.writes is not None else None
    return line


def numbered(stream: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line that holds a command (not blank, not a comment)."""
    for number, raw in enumerate(stream, 1):
        text = raw.strip()
        if text and not text.startswith("#"):
            yield number, text


@command_errors
def batch(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="The file of commands, one per line; - reads standard input.",
            show_default=False,
        ),
    ],
    keep_going: Annotated[
        bool,
        typer.Option("--keep-going", help="Run every line even after one fails."),
    ] = False,
    in_flight: Annotated[
        int,
        typer.Option(
            "--in-flight",
            min=1,
            max=IN_FLIGHT_MAX,
            help="At most this many independent writes sent ahead (1: strictly one by one).",
        ),
    ] = IN_FLIGHT_DEFAULT,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Run data commands from FILE (or - for stdin), one per line, over one connection.

    A line is written as on the command line without `paxosctl`: put, get, delete, cas,
    scan, compact, block, unblock, blocks, view with their own options (and --site for a line's
    origin); shell quoting applies; blank lines and # comments are skipped. Connection and
    output options belong to `batch` itself.

    Output: one line per command, in input order: the command's text (scan, blocks and
    view: their JSON object on one line); notes and errors ("line N: ...") on stderr.
    JSON: one object per line: {"line", "command", "result"} or {"line", "command",
    "error", "exit_code"}.

    Order: results are printed in input order, and a read, delete, cas, scan or compact runs only
    once every line before it has been answered, so it sees all of them. To be fast,
    consecutive puts/blocks/unblocks of different keys (pairs) are sent together
    (--in-flight; 1 sends one at a time): among themselves they may be applied in another
    order (the log and `view` would show it), but two writes to one key never overtake each
    other. If one of those fails (no quorum), writes after it that were already sent may
    have been applied: they are reported too.

    Stops at the first failing line (exit: that line's code: 1 not found or mismatch,
    2 usage, 3 unavailable, 4 auth) unless --keep-going, which runs every line and exits
    with the first failure's code.

    Example: printf 'put a 1\\nput b 2\\nget a\\n' | paxosctl batch -

    Example: paxosctl batch commands.txt --keep-going --json
    """
    stream: TextIO
    if file == "-":
        stream = sys.stdin
    else:
        try:
            stream = Path(file).open(encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 (closed by the with below)
        except OSError as e:
            raise BadRequestError(f"cannot read {file}: {e.strerror}") from None
    target = resolve(endpoints, key_file, config)
    origin = site or default_site()
    with stream, Pipeline[int](target.endpoints, target.key, timeout_ms=timeout_ms) as pipe:
        runner = Runner(pipe, in_flight, json_out)
        for number, text in numbered(stream):
            runner.run(parse(ctx, number, text, origin))
            if runner.failed and not keep_going:
                break
        runner.drain()
    sys.stdout.flush()
    if runner.first_error is not None:
        raise typer.Exit(runner.first_error)


def register(app: typer.Typer) -> None:
    """Add this module's command to the paxosctl root (one line in app.py)."""
    app.command("batch", rich_help_panel="Keys")(batch)
