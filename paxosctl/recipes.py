"""``paxosctl lock`` and ``paxosctl elect``: the client's recipes (paxosd.client.recipes) for
the shell, as ``etcdctl lock`` and ``etcdctl elect`` offer them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated, Any

import typer

from paxosctl import render
from paxosctl.connect import ConfigOpt, EndpointsOpt, JsonOpt, KeyFileOpt, TimeoutOpt
from paxosctl.kv import TIMEOUT_MS_DEFAULT, Failed, command_errors, connect, show, show_text
from paxosd.client.errors import BadRequestError

# What the holder's CMD is told.
ENV_REVISION = "PAXOS_LOCK_REVISION"
ENV_KEY = "PAXOS_LOCK_KEY"
# After a lost lock, CMD gets SIGTERM, then SIGKILL if it has not ended after this long.
TERM_GRACE_S = 5.0
# How often a waiting command looks at its session and its signals.
POLL_S = 0.2

TtlOpt = Annotated[
    int,
    typer.Option(
        "--ttl",
        min=1,
        help="The lease's TTL in seconds: the lock is released this long after this "
        "process dies without releasing it.",
    ),
]
NameArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="The lock's or election's name (a key prefix).", show_default=False
    ),
]


class _Stop(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: release and leave, exactly as after Ctrl-C."""


@contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM and SIGHUP end the command the way Ctrl-C does (releasing what it holds)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _holder_value() -> bytes:
    """What the lock key holds: who holds it, for an operator's `paxosctl scan NAME/`."""
    return f"{socket.gethostname()} pid {os.getpid()}".encode()


def _run_holding(cmd: list[str], env: dict[str, str], lost: threading.Event) -> int:
    """Run ``cmd``; its exit code. If the lock is lost meanwhile, CMD is ended (SIGTERM,
    then SIGKILL) and ``Failed`` is raised: it must not go on thinking it holds the lock."""
    try:
        child = subprocess.Popen(cmd, env={**os.environ, **env})
    except OSError as e:
        raise BadRequestError(f"cannot run {cmd[0]}: {e.strerror or e}") from None
    try:
        while True:
            try:
                return child.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
            if lost.is_set():
                child.terminate()
                try:
                    child.wait(timeout=TERM_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                raise Failed("the lock was lost (its lease expired); the command was stopped")
    except KeyboardInterrupt:
        # Ctrl-C reached CMD too (same process group); give it the grace to finish.
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise


@command_errors
def lock(
    name: NameArg,
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[-- CMD ARGS...]",
            help="Run CMD while holding the lock, then release it; exit with CMD's code.",
            show_default=False,
        ),
    ] = None,
    ttl: TtlOpt = 60,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Acquire the lock NAME on a lease; run CMD while holding it, or print the lock's key and
    hold it until Ctrl-C (or SIGTERM).

    Waiters queue by revision and each watches only the one ahead of it. CMD gets
    PAXOS_LOCK_KEY (the lock's key) and PAXOS_LOCK_REVISION (its create revision: the fencing
    token, higher for every later holder). The lease is kept alive while this runs; if it is
    lost (no keep-alive acknowledged for a TTL, e.g. a partition), CMD is stopped and this
    exits 1. A lock alone is not mutual exclusion: see README "Locks and elections".

    Output: the key, then the revision (--json: {"key", "revision", "lease"}), once the
    lock is held and before CMD starts.

    Example: paxosctl lock backups -- sh -c 'backup --fencing-token "$PAXOS_LOCK_REVISION"'

    Example: paxosctl lock backups --ttl 10
    """
    with connect(endpoints, key_file, config, timeout_ms) as c, _signals_stop():
        held = c.lock(name, ttl=ttl, value=_holder_value())
        token = held.acquire()
        try:
            if json_out:
                render.json_line(
                    {"key": token.key, "revision": token.revision, "lease": token.lease},
                    flush=True,
                )
            else:
                render.line(show_text(token.key))
                render.line(str(token.revision), flush=True)
            if command:
                env = {ENV_KEY: token.key, ENV_REVISION: str(token.revision)}
                code = _run_holding(command, env, token.lost)
                if code != 0:
                    raise typer.Exit(code if code > 0 else 128 - code)
                return
            while not token.lost.wait(POLL_S):
                pass
            raise Failed(f"the lock was lost: {held.lost_reason()}")
        except KeyboardInterrupt:
            if command:
                raise  # CMD was interrupted: exit 130, as a shell would
            return  # holding until Ctrl-C is how this mode ends
        finally:
            held.release()


@command_errors
def elect(
    name: NameArg,
    proposal: Annotated[
        str | None,
        typer.Argument(
            metavar="[PROPOSAL]",
            help="Campaign with this value (what the leader announces).",
            show_default=False,
        ),
    ] = None,
    listen: Annotated[
        bool, typer.Option("--listen", "-l", help="Only observe: print each leader.")
    ] = False,
    ttl: TtlOpt = 60,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """Campaign in the election NAME with PROPOSAL and print the leader each time it changes,
    until Ctrl-C (which resigns); --listen only observes.

    Candidates queue by revision and each watches only the one ahead of it; the leader is
    the oldest candidate. Each leader prints as etcdctl elect does: its key, then its value
    (--json: one object per line, {"key", "value", "revision", "mod_revision", "me"}; the
    revision is the leadership's fencing token). If this candidate's lease is lost it exits 1.

    Example: paxosctl elect service/leader node-a

    Example: paxosctl elect service/leader --listen --json
    """
    if (proposal is None) != listen:
        raise BadRequestError("give a PROPOSAL to campaign, or --listen to observe")
    with connect(endpoints, key_file, config, timeout_ms) as c, _signals_stop():
        stop = threading.Event()
        candidate = c.election(name, ttl=ttl) if proposal is not None else None
        problem: list[BaseException] = []
        campaign: threading.Thread | None = None
        if candidate is not None and proposal is not None:
            value = os.fsencode(proposal)

            def run() -> None:
                try:
                    candidate.campaign(value)
                except BaseException as e:  # shown by the main thread
                    problem.append(e)
                    stop.set()

            campaign = threading.Thread(target=run, name="campaign", daemon=True)
            campaign.start()
        observer = c.election(name, ttl=None)
        try:
            for leader in observer.observe(stop=stop):
                me = candidate is not None and leader.key == candidate.key
                if json_out:
                    render.json_line(_leader_json(leader, me), flush=True)
                else:
                    render.line(show_text(leader.key))
                    render.line(show(leader.value), flush=True)
                if candidate is not None and candidate.lost.is_set():
                    stop.set()
            if problem:
                raise problem[0]
            if candidate is not None and candidate.lost.is_set():
                raise Failed(f"the candidacy was lost: {candidate.lost_reason()}")
        except KeyboardInterrupt:
            return
        finally:
            stop.set()
            if candidate is not None:
                candidate.cancel()
                if campaign is not None:
                    campaign.join(timeout=timeout_ms / 1000)
                candidate.resign()


def _leader_json(leader: Any, me: bool) -> dict[str, Any]:
    from paxosctl.kv import value_json

    return {
        "key": leader.key,
        **value_json(leader.value),
        "revision": leader.revision,
        "mod_revision": leader.mod_revision,
        "me": me,
    }


def register(app: typer.Typer) -> None:
    """Add this module's commands to the paxosctl root (one line in app.py)."""
    for fn in (lock, elect):
        app.command(fn.__name__, rich_help_panel="Locks and elections")(fn)


__all__ = ["ENV_KEY", "ENV_REVISION", "elect", "lock", "register"]
