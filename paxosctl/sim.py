"""``paxosctl simulate``: the deterministic simulator over the real core."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from paxosctl import render
from paxosd.sim.elections import (
    ELECTION_FAULTS,
    FOLLOWER_FAULTS,
    ElectionReport,
    elections_fuzz,
    run_fault,
)
from paxosd.sim.fuzz import FuzzReport, fuzz, replay_command
from paxosd.sim.planted import PLANTED_BUGS
from paxosd.sim.rounds import ROUNDS_MAX, run_rounds
from paxosd.sim.run import FAULT_KINDS, KNOWN_KINDS, OPTIONAL_KINDS, run_seed
from paxosd.sim.scenarios import LIVELOCK_ROUNDS_MAX, NODES_MIN, SCENARIOS, run_scenario

HELP = f"""Run the multi-Paxos core in the deterministic simulator, or the Paxos labs.

The simulator drives the real replica code (the daemon's) over a simulated
network (drop, dup, delay/reorder, partitions), disk (crash loses what was not
durable) and clock, with concurrent clients; after every step it checks
agreement, validity and the applied prefix, then heals every fault and checks
convergence, durability of acknowledged writes and linearizability of the
client history. The revisions checker replays the decided log through a
reference model of etcd's data model (transactions, revisions, history,
compaction) and holds every answer and read to it; the watch checker holds
every simulated watcher's stream (across crashes, restarts and a slow
reader) to the model's events. Lease clients check expiry against the
keep-alives sent; lock clients (some holders pause past their TTL) check that
fenced writes carry non-decreasing tokens in log order, that a failed compare
never writes, and that holders who kept their leases alive never overlap.
One seed replays one run exactly.

Examples:

  paxosctl simulate --fuzz --seeds 2000 --nodes 3

  paxosctl simulate --fuzz --seeds 200 --nodes 5 --faults drop,partition --json

  paxosctl simulate --fuzz --seeds 500 --faults drop,dup,delay,partition,crash,reconfig

  paxosctl simulate --seed 42 --trace

  paxosctl simulate --elections --seeds 1000 --nodes 3 --json

Fault kinds: {", ".join(FAULT_KINDS)} (the default), and {", ".join(OPTIONAL_KINDS)}
when named: an operator adds learners, promotes, removes members (the leader too) and
transfers leadership while the other faults run. Exit codes: 0 no violation,
1 a violation (the failing seed and the command that replays it are printed),
2 usage error.

--elections: elections per fault. Each seed runs, for every fault kind, an
otherwise healthy cluster with clients, a leader, then ONE fault held longer
than an election timeout and healed: {", ".join(ELECTION_FAULTS)}. It counts
elections (ballots won by a new leader) after the fault, per kind, and runs
the usual checks. A follower-only fault ({", ".join(FOLLOWER_FAULTS)})
must cost 0 elections, a leader fault at least 1: exit 1 otherwise (the
seed and the command that replays it are printed). --faults picks kinds.

Experiments from the Paxos labs, on the same replica code (see the README):

  paxosctl simulate --rounds 6 --crash-prob 0.2 --nodes 3 --seed 7

  paxosctl simulate --list

  paxosctl simulate --scenario b-wins-late

  paxosctl simulate --scenario livelock --rounds 4 --seed 1 --json

--rounds R --crash-prob P: lockstep rounds of binary consensus on slot 1.
The proposer of round r is node r mod N, with ballot r.(r mod N); each node
starts with a default bit drawn from the seed; every message is sent as
CRASH (lost) with probability P. The labs' names are ours: START = prepare,
JOIN = promise (carrying maxVotedRound/maxVotedValue), PROPOSE = accept
request, VOTE = accepted. Decisions do not travel between rounds: at each
round boundary every replica restarts from its promise and votes only, and
only the round's proposer learns its decision, so every round runs Paxos
anew. Agreement and Validity are checked (exit 1 if either fails);
Termination is not guaranteed, and the run says whether it decided.

--scenario NAME: a Basic-Paxos race between proposers A (node 1) and B
(node N) as a fixed message schedule. It prints every message, the chosen
value and, last, the rule that forced it; exit 0 only when the outcome is the
one Paxos' rules require. --list names them. For livelock, --rounds sets the
pre-emption rounds shown and --seed the timed race that follows.
"""


def _parse_faults(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KNOWN_KINDS]
    if bad:
        raise typer.BadParameter(
            f"unknown fault kind(s) {', '.join(bad)}; use {','.join(KNOWN_KINDS)}"
        )
    return kinds


def simulate(
    fuzz_mode: Annotated[bool, typer.Option("--fuzz", help="Run many seeds and report.")] = False,
    seeds: Annotated[int, typer.Option(min=1, help="How many seeds to run with --fuzz.")] = 100,
    first_seed: Annotated[int, typer.Option(min=0, help="The first seed of a --fuzz run.")] = 0,
    seed: Annotated[int | None, typer.Option(min=0, help="Run this one seed.")] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=9,
            help="Replicas in the cluster (default 3; b-wins-late 5).",
            show_default=False,
        ),
    ] = None,
    faults: Annotated[str, typer.Option(help="Comma-separated fault kinds to inject.")] = ",".join(
        FAULT_KINDS
    ),
    trace: Annotated[bool, typer.Option(help="With --seed: print the whole event trace.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    rounds: Annotated[
        int | None,
        typer.Option(min=1, max=ROUNDS_MAX, help="Run the synchronous-rounds lab for R rounds."),
    ] = None,
    crash_prob: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="With --rounds: each message is sent as CRASH with this probability (default 0).",
        ),
    ] = None,
    scenario: Annotated[
        str | None, typer.Option(help="Run one Basic-Paxos race scenario (see --list).")
    ] = None,
    elections: Annotated[
        bool,
        typer.Option(
            "--elections", help="Count elections per fault kind, one fault per run (see above)."
        ),
    ] = False,
    list_scenarios: Annotated[
        bool, typer.Option("--list", help="List the race scenarios, one per line.")
    ] = False,
    plant_bug: Annotated[
        str | None, typer.Option(hidden=True, help="Test only: plant a known bug.")
    ] = None,
) -> None:
    if elections:
        if list_scenarios or scenario is not None or rounds is not None or plant_bug:
            raise typer.BadParameter("--elections does not combine with the labs or --plant-bug")
        _elections(faults, seeds, first_seed, seed, nodes or 3, trace, json_out)
        return
    kinds = _parse_faults(faults)
    bugs: frozenset[str] = frozenset()
    if plant_bug is not None:
        if plant_bug not in PLANTED_BUGS:
            raise typer.BadParameter(f"unknown bug {plant_bug}; one of {sorted(PLANTED_BUGS)}")
        bugs = frozenset({plant_bug})
    labs = list_scenarios or scenario is not None or rounds is not None
    if fuzz_mode and labs:
        raise typer.BadParameter("--fuzz does not combine with --rounds, --scenario or --list")
    if crash_prob is not None and rounds is None:
        raise typer.BadParameter("--crash-prob goes with --rounds R")
    if list_scenarios:
        _list_scenarios(json_out)
        return
    if scenario is not None:
        _scenario(scenario, nodes, seed or 0, rounds, bugs, json_out)
        return
    if rounds is not None:
        _rounds(nodes or 3, crash_prob or 0.0, rounds, seed or 0, bugs, json_out)
        return
    nodes = nodes or 3
    if seed is not None:
        _one_seed(seed, nodes, kinds, bugs, trace, json_out)
        return
    if not fuzz_mode:
        raise typer.BadParameter(
            "say --fuzz (many seeds), --seed S (one seed), --rounds R, --scenario NAME or --list"
        )
    report = _fuzz_with_progress(seeds, first_seed, nodes, kinds, bugs, json_out)
    if json_out:
        render.emit_json(report.to_json())
    else:
        _print_report(report)
    raise typer.Exit(render.EXIT_FAILED_CHECK if report.violations else render.EXIT_OK)


def _elections(
    faults: str,
    seeds: int,
    first_seed: int,
    seed: int | None,
    nodes: int,
    trace: bool,
    json_out: bool,
) -> None:
    kinds: tuple[str, ...] = ELECTION_FAULTS
    if faults != ",".join(FAULT_KINDS):  # the default names the fuzz kinds: use ours
        kinds = tuple(k.strip() for k in faults.split(",") if k.strip())
        bad = [k for k in kinds if k not in ELECTION_FAULTS]
        if bad or not kinds:
            raise typer.BadParameter(
                f"unknown fault kind(s) {', '.join(bad)} for --elections; "
                f"use {','.join(ELECTION_FAULTS)}"
            )
    if seed is not None:
        if len(kinds) != 1:
            raise typer.BadParameter("--elections --seed S replays one fault: name it in --faults")
        run = run_fault(seed, kinds[0], nodes=nodes, trace=trace)
        report = ElectionReport(nodes=nodes, kinds=kinds, seeds_run=1)
        report.add(run)
        if json_out:
            render.emit_json(report.to_json() | {"trace": run.trace_tail})
        else:
            for line in run.trace_tail if trace else run.trace_tail[-40:]:
                render.rich_line(line, markup=False)
            status = "no violation" if run.violation is None else f"VIOLATION {run.violation}"
            render.rich_line(
                f"seed {seed}, {run.kind} on node {run.victim}: {run.elections} election(s); "
                f"{status}",
                markup=False,
            )
        raise typer.Exit(render.EXIT_OK if report.ok else render.EXIT_FAILED_CHECK)
    with Progress(
        TextColumn("[bold]simulate --elections[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=render.stderr,
        disable=json_out or not render.stderr_is_terminal(),
        transient=True,
    ) as bar:
        task = bar.add_task("seeds", total=seeds)

        def progress(r: ElectionReport) -> None:
            bar.update(task, completed=r.seeds_run)

        report = elections_fuzz(seeds, nodes, kinds, first_seed=first_seed, progress=progress)
    if json_out:
        render.emit_json(report.to_json())
    else:
        _print_elections(report)
    raise typer.Exit(render.EXIT_OK if report.ok else render.EXIT_FAILED_CHECK)


def _print_elections(r: ElectionReport) -> None:
    j = r.to_json()
    per: dict[str, dict[str, object]] = j["elections_per_fault"]  # type: ignore[assignment]
    render.table(
        f"simulate --elections: {r.seeds_run} seeds x {len(r.kinds)} fault kinds, "
        f"{r.nodes} nodes, {j['wall_seconds']} s",
        ["fault", "faults", "elections", "per fault", "had one", "max", "expect"],
        [
            [
                k,
                v["faults"],
                v["elections"],
                v["elections_per_fault"],
                v["faults_with_an_election"],
                v["elections_max"],
                "0" if k in FOLLOWER_FAULTS else ">= 1",
            ]
            for k, v in per.items()
        ],
    )
    for run in (r.failures + r.follower_elections + r.leader_without_election)[:10]:
        what = (
            str(run.violation)
            if run.violation is not None
            else f"{run.elections} election(s) after {run.kind} on node {run.victim}"
        )
        render.error(f"seed {run.seed}, {run.kind}: {what}")
        render.rich_note(
            f"  replay: paxosctl simulate --elections --seed {run.seed} --nodes {r.nodes} "
            f"--faults {run.kind} --trace",
            markup=False,
        )


def _fuzz_with_progress(
    seeds: int,
    first_seed: int,
    nodes: int,
    kinds: tuple[str, ...],
    bugs: frozenset[str],
    quiet: bool,
) -> FuzzReport:
    with Progress(
        TextColumn("[bold]simulate[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=render.stderr,
        disable=quiet or not render.stderr_is_terminal(),
        transient=True,
    ) as bar:
        task = bar.add_task("seeds", total=seeds, status="")

        def progress(r: FuzzReport) -> None:
            bar.update(
                task,
                completed=r.seeds_run,
                status=f"{r.seeds_run / max(r.wall_seconds, 1e-9):.0f} seeds/s, "
                f"{r.violations} violations",
            )

        return fuzz(seeds, nodes, kinds, first_seed=first_seed, bugs=bugs, progress=progress)


def _print_report(r: FuzzReport) -> None:
    j = r.to_json()
    render.table(
        f"simulate: {r.seeds_run} seeds, {r.nodes} nodes",
        ["measure", "value"],
        [
            ["seeds run", j["seeds_run"]],
            ["seeds / s", j["seeds_per_second"]],
            ["core steps / s", j["core_steps_per_second"]],
            ["simulated seconds", j["simulated_seconds"]],
            ["decided slots", j["decided_slots"]],
            ["client ops", ", ".join(f"{k} {v}" for k, v in r.client_ops.items())],
            ["faults injected", ", ".join(f"{k} {v}" for k, v in j["faults_injected"].items())],  # type: ignore[attr-defined]
            ["converged after healing", f"{r.converged}/{r.seeds_run}"],
            ["snapshot restores", r.snapshot_restores],
            ["linearizability", ", ".join(f"{k} {v}" for k, v in r.linearizability.items())],
            ["revisions", ", ".join(f"{k} {v}" for k, v in r.revisions.items())],
            ["watch", ", ".join(f"{k} {v}" for k, v in r.watch.items())],
            ["leases", ", ".join(f"{k} {v}" for k, v in r.leases.items())],
            [
                "lease figures",
                ", ".join(f"{k} {v}" for k, v in j["lease_figures"].items()),  # type: ignore[attr-defined]
            ],
            ["locks", ", ".join(f"{k} {v}" for k, v in r.locks.items())],
            ["lock figures", ", ".join(f"{k} {v}" for k, v in sorted(r.lock_figures.items()))],
            ["violations", r.violations],
        ],
    )
    for f in r.failures[:10]:
        assert f.violation is not None
        render.error(f"seed {f.seed}: {f.violation}")
        render.rich_note(
            f"  replay: {replay_command(f.seed, r.nodes, r.kinds, r.bugs)}", markup=False
        )
        for line in f.trace_tail[-15:]:
            render.rich_note(f"  {line}", markup=False)


def _one_seed(
    seed: int, nodes: int, kinds: tuple[str, ...], bugs: frozenset[str], trace: bool, json_out: bool
) -> None:
    r = run_seed(seed, nodes=nodes, kinds=frozenset(kinds), bugs=bugs, trace=trace)
    if json_out:
        render.emit_json(
            {
                "seed": seed,
                "nodes": nodes,
                "violation": None
                if r.violation is None
                else {"property": r.violation.prop, "detail": r.violation.detail},
                "simulated_ms": r.sim_ms,
                "core_steps": r.core_steps,
                "decided_slots": r.decided_slots,
                "client_ops": dict(r.client_ops),
                "faults": dict(r.faults),
                "linearizability": r.linearizability,
                "revisions": r.revisions,
                "watch": r.watch,
                "leases": r.leases,
                "locks": r.locks,
                "converged_ms_after_heal": r.converged_ms,
                "trace": r.trace if trace else r.trace_tail,
            }
        )
    else:
        for line in r.trace if trace else r.trace_tail[-40:]:
            render.rich_line(line, markup=False)
        status = "no violation" if r.violation is None else f"VIOLATION {r.violation}"
        render.rich_line(
            f"seed {seed}: {status}; {r.decided_slots} slots decided, "
            f"ops {dict(r.client_ops)}, faults {dict(r.faults)}, "
            f"linearizability {r.linearizability}, revisions {r.revisions}, watch {r.watch}, "
            f"leases {r.leases}, locks {r.locks}",
            markup=False,
        )
    raise typer.Exit(render.EXIT_FAILED_CHECK if r.violation else render.EXIT_OK)


def _list_scenarios(json_out: bool) -> None:
    if json_out:
        render.emit_json(
            [
                {
                    "name": s.name,
                    "summary": s.summary,
                    "nodes": s.nodes_default,
                    "expected": s.expected,
                }
                for s in SCENARIOS.values()
            ]
        )
    else:
        for s in SCENARIOS.values():
            render.rich_line(f"{s.name:<12} {s.summary} (expect {s.expected})", markup=False)
    raise typer.Exit(render.EXIT_OK)


def _scenario(
    name: str,
    nodes: int | None,
    seed: int,
    rounds: int | None,
    bugs: frozenset[str],
    json_out: bool,
) -> None:
    if name not in SCENARIOS:
        raise typer.BadParameter(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    if nodes is not None and nodes < NODES_MIN:
        raise typer.BadParameter(f"a race needs A, B and one more acceptor: --nodes >= {NODES_MIN}")
    if rounds is not None and name != "livelock":
        raise typer.BadParameter("--rounds goes with --scenario livelock (or alone)")
    if rounds is not None and rounds > LIVELOCK_ROUNDS_MAX:
        raise typer.BadParameter(f"livelock shows at most {LIVELOCK_ROUNDS_MAX} rounds")
    r = run_scenario(name, nodes=nodes, seed=seed, rounds=rounds, planted_bugs=bugs)
    if json_out:
        render.emit_json(r.to_json())
    else:
        for line in r.trace:
            render.rich_line(line, markup=False)
    raise typer.Exit(render.EXIT_OK if r.ok else render.EXIT_FAILED_CHECK)


def _rounds(
    nodes: int, crash_prob: float, rounds: int, seed: int, bugs: frozenset[str], json_out: bool
) -> None:
    r = run_rounds(nodes, crash_prob, rounds, seed=seed, planted_bugs=bugs)
    if json_out:
        render.emit_json(r.to_json())
    else:
        for line in r.trace + r.summary():
            render.rich_line(line, markup=False)
    raise typer.Exit(render.EXIT_OK if r.ok else render.EXIT_FAILED_CHECK)


# A one-command app, so that the root can import this module only when `simulate` runs.
app = typer.Typer(rich_markup_mode=None)
app.command("simulate", help=HELP)(simulate)
