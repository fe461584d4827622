"""``paxosctl drill``: the recovery drill and the competing-proposers race on live daemons.

Each command parses, makes one ``paxosd.lab.drill`` call and renders. Progress goes to stderr:
a live bar on a TTY, a line every few seconds otherwise, so ``--json`` stays clean.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from paxosctl import render
from paxosctl.connect import ConnectError, JsonOpt, KeyFileOpt, resolve
from paxosd.client.client import ClientError
from paxosd.lab.drill import (
    DEFAULT_FAULTS,
    FAULT_KINDS,
    DrillError,
    DrillProgress,
    DrillSpec,
    DrillUsageError,
    Nodes,
    parse_faults,
    run_drill,
    run_race,
    run_race_local,
)
from paxosd.server.logs import configure_logging

HELP = f"""Recovery drill: a concurrent workload under faults, then every check.

Without a subcommand: starts a fresh local cluster in a temporary folder (or uses a running
one with --endpoints), runs --clients workers doing put/get/cas/delete/block/unblock and
transactions (compares, then two puts, a delete, a read; on their own keys) with unique values
for --duration seconds while injecting --faults on a seeded schedule, heals, waits for the
replicas to converge and checks: a final linearizable read of every key, the history's
linearizability (the simulator's checker), every acknowledged write in the decided log, no
command applied twice, equal digests at equal applied indexes, equal state on every replica.
Three watchers follow every drill key meanwhile (one pinned to the first leader, one to a
follower, one that re-creates its watch at last+1 on the next node after each fault); at
the end a fresh watch reads the history from the drill's first revision on a follower, and
the drill checks that every acknowledged write is in it at its revision, that each txn is
there whole at one revision (compares true before it, reads see its writes) or not at all
(a compare false), and that each watcher's stream is exactly that history over the
revisions it covered: in order, nothing missed, nothing twice. Reports ops by outcome,
faults by kind and per restart the time to the first
successful write and to catch up, and elections per fault: each fault is classed by whom it
hit (kill/leader, pause/follower, ...), and the leader changes seen (polling every node's
status) until the next fault are charged to it; a follower-only fault should cost none.
--etcd: every node serves etcd's v3 API too; half the workers (at least one) go through it.
Lease workers grant 3 s leases, attach a key, keep them alive and at a seeded moment revoke
or abandon them; a watcher per node records when each key's DELETE arrives, and the drill
checks that no key goes before its last acknowledged keep-alive's send + TTL (unless
revoked), that an abandoned lease's key is gone by its last send + TTL + README's bound
(3 election timeouts + the checkpoint's wait, TTL/2 within 2..8: 3.3 s at TTL 3 s) + the time the
cluster had no majority, and that no lease key is left at the end. Lock
workers contend on two locks (client.lock) and, while holding, write fenced/<lock> with a
transaction comparing the lock key's create_revision to the token; the store's history of
those writes must have non-decreasing tokens, one worker per token (--no-leases: neither).
Exit 1 on any violation; the folder with history.jsonl,
report.json and the node logs is then kept and named.

Faults ({",".join(FAULT_KINDS)}):
kill = SIGKILL a random minority (the leader half of the time, sometimes right after a
snapshot) and restart it; pause = SIGSTOP/SIGCONT one node; partition = cut a minority off
through the daemons' drill hook; restart = SIGTERM and start; killall = SIGKILL every node
at once and start them all; reconfig = one membership step per fault, in shuffled rounds: add
a fresh node (member add, catch-up, promote), remove a voter (the leader half of the time),
replace a voter whose disk is lost (SIGKILL, member remove, delete its data dir, check that
it refuses to start empty, add a fresh node), leader transfer, SIGKILL and restart a voter;
the voters stay between --nodes and --nodes + 2. A change the leader refuses is counted, not
a violation; the final checks compare the final members only. With --endpoints only
partition is possible (the drill owns no processes there).

Examples:

  paxosctl drill --duration 60

  paxosctl drill --nodes 5 --duration 600 --faults kill,pause,partition,restart,killall

  paxosctl drill --duration 60 --faults kill,reconfig

  paxosctl drill --etcd --duration 120 --faults kill,pause,partition,restart

  paxosctl drill --endpoints 10.0.0.1:7201,10.0.0.2:7202,10.0.0.3:7203 --key-file client.key \\
      --faults partition --duration 120

  paxosctl drill race --rounds 50
"""

app = typer.Typer(
    rich_markup_mode=None, help=HELP, invoke_without_command=True, no_args_is_help=False
)

# Not read from $PAXOSCTL_ENDPOINTS: a drill writes keys and cuts links, so aiming it at a
# running cluster must be said on the command line.
EndpointsOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoints",
        help="Drill a running cluster at these client addresses (host:port,...) instead of "
        "a fresh local one; only partition faults are possible there.",
        show_default=False,
    ),
]
KeepOpt = Annotated[
    Path | None,
    typer.Option(
        "--keep",
        help="Create the drill's folder under DIR and keep it even when nothing was found.",
        show_default=False,
    ),
]


def _logs_to_stderr() -> None:
    """The library's own log lines (a new cluster's storage, ...) go to stderr and only from
    warnings up, so stdout holds the report alone (``--json``)."""
    configure_logging(level="warning", stream=sys.stderr)


def _show_bar() -> bool:
    return render.stderr_is_terminal()


class _Reporter:
    """Progress on stderr: a rich bar on a TTY, else one plain line every LINE_S."""

    LINE_S = 10.0

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task: Any = None
        self._last_line = 0.0

    def __enter__(self) -> _Reporter:
        if not self.quiet and _show_bar():
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=render.stderr,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("drill", total=1.0, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def __call__(self, p: DrillProgress) -> None:
        ops = p.ops
        info = (
            f"ok {ops.get('ok', 0)} fail {ops.get('fail', 0)} unknown {ops.get('unknown', 0)}"
            f" | faults {p.faults}" + (f" | {p.message}" if p.message else "")
        )
        if self.bar is not None:
            done = min(1.0, p.elapsed_s / p.duration_s) if p.phase == "running" else 1.0
            self.bar.update(self.task, completed=done, description=p.phase, info=info)
            return
        now = time.monotonic()
        if self.quiet or (p.phase == "running" and now - self._last_line < self.LINE_S):
            return
        self._last_line = now
        render.rich_note(f"drill {p.phase} {p.elapsed_s:.0f}s: {info}", markup=False)


@app.callback()
def drill(
    ctx: typer.Context,
    nodes: Annotated[int, typer.Option(min=3, max=9, help="Members of the local cluster.")] = 3,
    duration: Annotated[
        float, typer.Option(min=1.0, help="Seconds of workload under faults.")
    ] = 60.0,
    clients: Annotated[int, typer.Option(min=1, max=64, help="Concurrent client threads.")] = 4,
    faults: Annotated[
        str,
        typer.Option(help=f"Comma-separated fault kinds, or none. Any of {','.join(FAULT_KINDS)}."),
    ] = ",".join(DEFAULT_FAULTS),
    seed: Annotated[
        int | None, typer.Option(help="Fault schedule and workload seed (default: random).")
    ] = None,
    txns: Annotated[
        bool, typer.Option("--txns/--no-txns", help="Transactions in the op mix.")
    ] = True,
    watchers: Annotated[
        bool,
        typer.Option(
            "--watchers/--no-watchers", help="Watch the drill's keys and check the streams."
        ),
    ] = True,
    etcd: Annotated[
        bool,
        typer.Option(
            "--etcd",
            help="Give every node an etcd listener and send half the workers through etcd's "
            "API (needs grpcio; not with --endpoints).",
        ),
    ] = False,
    leases: Annotated[
        bool,
        typer.Option(
            "--leases/--no-leases",
            help="Lease workers (expiry checks) and lock workers (fenced-write check).",
        ),
    ] = True,
    json_out: JsonOpt = False,
    keep: KeepOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    chosen_seed = seed if seed is not None else random.SystemRandom().randrange(1 << 31)
    spec = DrillSpec(
        nodes=nodes,
        duration_s=duration,
        clients=clients,
        faults=parse_faults(faults),
        seed=chosen_seed,
        txns=txns,
        watchers=watchers,
        etcd=etcd,
        leases=leases,
    )
    target: Nodes | None = None
    try:
        if endpoints:
            t = resolve(endpoints, key_file)
            target = Nodes.discover(t.endpoints, t.key)
            spec = DrillSpec(
                nodes=len(target.ids),
                duration_s=duration,
                clients=clients,
                faults=spec.faults,
                seed=chosen_seed,
                txns=txns,
                watchers=watchers,
                etcd=etcd,
                leases=leases,
            )
        spec.validate(endpoints=target is not None)
        _logs_to_stderr()
        with _Reporter(quiet=False) as reporter:
            report = run_drill(
                spec, nodes=target, parent_dir=keep, keep=keep is not None, progress=reporter
            )
    except ConnectError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    except DrillError as e:
        render.error(str(e))
        usage = isinstance(e, DrillUsageError)
        raise typer.Exit(render.EXIT_USAGE if usage else render.EXIT_UNAVAILABLE) from None
    except ClientError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    if json_out:
        render.emit_json(report)
    else:
        _print_report(report)
    if report["violations"]:
        raise typer.Exit(render.EXIT_FAILED_CHECK)


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v} ms"


def _print_report(r: dict[str, Any]) -> None:
    ops = r["ops"]
    render.rich_line(
        f"drill: {r['nodes']} nodes ({r['target']}), {r['clients']} clients, "
        f"{r['duration_s']} s, seed {r['seed']}",
        markup=False,
    )
    render.table(
        "operations",
        ["op", "ok", "fail", "unknown"],
        [
            [k, v.get("ok", 0), v.get("fail", 0), v.get("unknown", 0)]
            for k, v in ops["by_kind"].items()
        ]
        + [["total", ops["ok"], ops["fail"], ops["unknown"]]],
    )
    render.rich_line(f"{ops['total']} ops, {ops['per_second']} ops/s", markup=False)
    et = r.get("etcd")
    if et:
        kinds = ", ".join(
            f"{k} " + "/".join(f"{n} {o}" for o, n in sorted(v.items()))
            for k, v in et["by_kind"].items()
        )
        workers = ", ".join(
            f"{cid.rsplit('-', 1)[-1]} {w['via']}" for cid, w in et["workers"].items()
        )
        render.rich_line(
            f"through etcd: {et['ops']} ops (ok {et['ok']}, fail {et['fail']}, unknown "
            f"{et['unknown']}; {kinds}), {et['failovers']} fail-overs; workers: {workers}",
            markup=False,
        )
    f = r["faults"]
    render.rich_line(
        "faults: "
        + (", ".join(f"{k} {n}" for k, n in sorted(f["by_kind"].items())) or "none")
        + (f" ({len(f['errors'])} could not be set up)" if f["errors"] else ""),
        markup=False,
    )
    el = r.get("elections")
    if el and el["by_fault"]:
        render.table(
            "elections per fault (leader changes seen after it, until the next fault)",
            ["fault", "faults", "elections", "per fault", "had one"],
            [
                [
                    k,
                    v["faults"],
                    v["elections"],
                    v["elections_per_fault"],
                    v["faults_with_an_election"],
                ]
                for k, v in el["by_fault"].items()
            ],
        )
        bad = el["follower_faults_with_an_election"]
        render.rich_line(
            f"leader changes: {el['leader_changes']}; follower-only faults followed by an "
            f"election: {len(bad)} (expected 0)"
            + "".join(
                f"\n  {x['class']} on {','.join(f'n{k}' for k in x['nodes'])} at "
                f"{x['start_ms']} ms: {x['elections']}"
                for x in bad[:10]
            ),
            markup=False,
        )
    rc = r.get("reconfig")
    if rc:
        changes = ", ".join(
            f"{name} " + "/".join(f"{n} {outcome}" for outcome, n in sorted(c.items()))
            for name, c in rc["changes"].items()
        )
        render.rich_line(
            "reconfig: "
            + (", ".join(f"{k} {n}" for k, n in sorted(rc["ops"].items())) or "no step")
            + (f"; changes: {changes}" if changes else "")
            + f"; empty start refused {rc['empty_start_refused']}; "
            f"final members {rc['members']} (voters {rc['voters']}), "
            f"added {rc['added']}, removed {rc['removed']}",
            markup=False,
        )
    if r["restarts"]:
        render.table(
            "restarts",
            ["node", "after", "down", "ready", "behind", "caught up", "first write"],
            [
                [
                    f"n{x['node']}",
                    x["kind"],
                    _ms(x["down_ms"]),
                    _ms(x["ready_after_ms"]),
                    "-" if x["behind_slots"] is None else f"{x['behind_slots']} slots",
                    _ms(x["catch_up_ms"]),
                    _ms(x["first_write_after_ms"]),
                ]
                for x in r["restarts"]
            ],
        )
        rec = r["recovery"]
        for name in ("catch_up", "first_write"):
            s = rec[name]
            if s["n"]:
                render.rich_line(
                    f"{name.replace('_', ' ')}: median {s['median_ms']} ms, max {s['max_ms']} ms"
                    + (f" ({s['missing']} not measured)" if s["missing"] else ""),
                    markup=False,
                )
    fin, lin, log = r["final"], r["linearizability"], r["log"]
    render.rich_line(
        f"converged: {'yes' if fin['converged'] else 'NO'} at applied index "
        f"{fin['applied_index']}, digest {str(fin['digest'])[:16]}; "
        f"linearizability: {lin['verdict']} ({lin['states_explored']} states, "
        f"{lin['seconds']} s); log: {log['slots_copied']} slots, {log['commands']} commands"
        + ("" if log["complete"] else f", gaps {log['gaps']} (durability checks skipped)"),
        markup=False,
    )
    _print_watch(r.get("watch"))
    _print_sessions(r.get("leases"), r.get("locks"))
    if r["violations"]:
        render.rich_line(f"[red]{len(r['violations'])} violation(s):[/red]", markup=True)
        for v in r["violations"]:
            render.rich_line(f"  {v['kind']}: {v['message']}", markup=False)
        render.rich_line(f"history and logs kept in {r['folder']}", markup=False)
    else:
        render.rich_line("0 violations", markup=False)
        if r["kept"]:
            render.rich_line(f"kept: {r['folder']}", markup=False)


def _print_sessions(le: dict[str, Any] | None, lk: dict[str, Any] | None) -> None:
    if le:
        gone = le["gone_after_last_send_ms"]
        ends = ", ".join(f"{n} {k}" for k, n in le["ends"].items()) or "none"
        render.rich_line(
            f"leases: {le['leases']} (TTL {le['ttl_s']} s; {ends}), {le['keepalives_acked']} "
            f"keep-alives acknowledged, {le['deletes_seen']} key deletions seen"
            + (
                f"; gone after the last send: median {gone['median']} ms, max {gone['max']} ms"
                if gone
                else ""
            )
            + f"; worst overrun past TTL {le['worst_overrun_election_timeouts']} election "
            f"timeouts ({le['election_timeout_ms']} ms; bound "
            f"{le['bound_past_ttl_election_timeouts']}, plus "
            f"{le['no_majority_or_leader_ms']} ms without a majority or a leader in the drill); "
            f"smallest margin before an early expiry {_ms(le['min_early_margin_ms'])}",
            markup=False,
        )
    if lk:
        fw = lk["fenced_writes"]
        render.rich_line(
            f"locks: {lk['acquisitions']} acquisitions of {lk['locks']} locks by "
            f"{lk['workers']} workers, {lk['handoffs']} hand-offs; fenced writes {fw['ok']} "
            f"ok, {fw['refused']} refused by the token compare, {fw['unknown']} unknown; "
            f"{lk['wait_failures']} waits given up",
            markup=False,
        )


def _print_watch(w: dict[str, Any] | None) -> None:
    if not w:
        return
    for note in w.get("notes", []):
        render.rich_line(note, markup=False)
    if not w.get("checked"):
        return
    h, t = w["history"], w["txns"]
    render.rich_line(
        f"history: {h['events']} events, revisions {h['start']}..{h['end']} (read on "
        f"n{w['history_node']}); txns: {t['total']}, {t['succeeded']} succeeded, "
        f"{t['failed_compare']} took the failure branch, {t['unknown']} unknown",
        markup=False,
    )
    render.table(
        "watchers (each stream checked against the history)",
        ["watcher", "events", "revisions", "watches", "nodes", "errors"],
        [
            [
                x["name"],
                x["events"],
                f"{x['from']}..{x['to']}",
                x["watches"],
                ",".join(f"n{k}" for k in x["nodes"]),
                x["errors"],
            ]
            for x in w["watchers"]
        ],
    )


@app.command("race")
def race(
    rounds: Annotated[int, typer.Option(min=1, max=1000, help="Duels to run.")] = 20,
    nodes: Annotated[int, typer.Option(min=3, max=9, help="Members of the local cluster.")] = 3,
    json_out: JsonOpt = False,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
) -> None:
    """Two clients CAS different values onto the same fresh key at the same instant through
    two different nodes, --rounds times; who won, and does every node agree?

    The Paxos labs' competing-proposers race on live daemons. Each round uses
    cas(expect_version=0), so exactly one write can take effect and the loser learns the
    winner; a linearizable read names the winner and, after convergence, a stale read on
    every node must return the same value. Runs on a fresh local cluster unless --endpoints.

    Example: paxosctl drill race --rounds 50
    """
    bar = _show_bar() and not json_out

    def tick(done: int, total: int) -> None:
        if bar:
            render.rich_note(f"round {done}/{total}", end="\r", markup=False)

    if rounds < 1:
        render.error("--rounds must be at least 1")
        raise typer.Exit(render.EXIT_USAGE)
    _logs_to_stderr()
    try:
        if endpoints:
            t = resolve(endpoints, key_file)
            report = run_race(Nodes.discover(t.endpoints, t.key), rounds, progress=tick)
        else:
            report = run_race_local(rounds, nodes, progress=tick)
    except (ConnectError, DrillUsageError) as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_USAGE) from None
    except (DrillError, ClientError) as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    if json_out:
        render.emit_json(report)
    else:
        render.table(
            "race",
            ["round", "A via", "B via", "leader", "A", "B", "winner"],
            [
                [
                    x["round"],
                    f"n{x['a_node']}",
                    f"n{x['b_node']}",
                    "-" if x["leader"] is None else f"n{x['leader']}",
                    f"{x['a']} {x['a_ms']} ms",
                    f"{x['b']} {x['b_ms']} ms",
                    x["winner"] or "-",
                ]
                for x in report["per_round"]
            ],
        )
        render.rich_line(
            f"A won {report['a_wins']}, B won {report['b_wins']}, no winner "
            f"{report['no_winner']} of {report['rounds']} ({report['method']}). "
            f"When one contender entered through the leader it won "
            f"{report['entry_through_leader_won']} of {report['rounds_with_leader_as_entry']}. "
            f"Every node agrees on every winner: {'yes' if report['nodes_agree'] else 'NO'}.",
            markup=False,
        )
        for v in report["violations"]:
            render.rich_line(f"violation: {v}", markup=False)
    if report["violations"]:
        raise typer.Exit(render.EXIT_FAILED_CHECK)
