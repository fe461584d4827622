"""``paxosctl cluster``: the local cluster on loopback (README command 1)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from paxosctl import render
from paxosd.client import ClientError
from paxosd.localcluster import MANIFEST, LocalCluster, default_dir

app = typer.Typer(
    help="Run a local cluster on loopback: data, keys and logs in one folder "
    "($PAXOSD_LOCAL_DIR, default a per-user folder under /tmp).\n\n"
    "Example: paxosctl cluster up && paxosctl put k v && paxosctl cluster down",
    no_args_is_help=True,
)

DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="The cluster's folder (default: $PAXOSD_LOCAL_DIR or /tmp)."),
]


def _load(d: Path | None) -> LocalCluster:
    root = d or default_dir()
    if not (root / MANIFEST).exists():
        render.error(f"no local cluster at {root}; start one with `paxosctl cluster up`")
        raise typer.Exit(render.EXIT_USAGE)
    return LocalCluster.load(root)


@app.command()
def up(
    nodes: Annotated[
        int | None, typer.Option(min=1, max=9, help="Members of a new cluster (default 3).")
    ] = None,
    d: DirOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create (first time) and start a local cluster; waits until it has a leader.

    Example: paxosctl cluster up --nodes 5
    """
    root = d or default_dir()
    if (root / MANIFEST).exists():
        cluster = LocalCluster.load(root)
        if nodes is not None and cluster.nodes != nodes:
            render.error(f"{root} holds {cluster.nodes} nodes; `cluster down --clean` first")
            raise typer.Exit(render.EXIT_USAGE)
    else:
        cluster = LocalCluster.create(root, nodes or 3)
    try:
        leader = cluster.up()
    except ClientError as e:
        render.error(f"{e}; logs: {root}/n*.log")
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    info = {
        "dir": str(root),
        "nodes": cluster.nodes,
        "endpoints": cluster.endpoint_strings(),
        "leader": leader["node_id"],
    }
    if json_out:
        render.emit_json(info)
        return
    render.stdout.print(
        f"local cluster of {cluster.nodes} up in {root} (leader: node {leader['node_id']})\n"
        f"clients: {', '.join(cluster.endpoint_strings())}\n"
        "try: paxosctl put k v && paxosctl get k",
        markup=False,
    )


@app.command()
def down(
    d: DirOpt = None,
    clean: Annotated[bool, typer.Option(help="Also delete the folder (all data).")] = False,
) -> None:
    """Stop every node (SIGTERM); with --clean also delete data, keys and logs.

    Example: paxosctl cluster down --clean
    """
    cluster = _load(d)
    cluster.down()
    if clean:
        shutil.rmtree(cluster.root)
    render.stdout.print(f"stopped{' and removed' if clean else ''}: {cluster.root}", markup=False)


@app.command("start")
def start_node(node: int, d: DirOpt = None) -> None:
    """Start one stopped node (after a kill, for a recovery drill).

    Example: paxosctl cluster start 2
    """
    cluster = _load(d)
    pid = cluster.start(node)
    render.stdout.print(f"node {node} running, pid {pid}", markup=False)


@app.command("kill")
def kill_node(node: int, d: DirOpt = None) -> None:
    """SIGKILL one node: the crash of a recovery drill.

    Example: paxosctl cluster kill 1 && paxosctl put k v2 && paxosctl cluster start 1
    """
    cluster = _load(d)
    cluster.kill(node)
    render.stdout.print(f"node {node} killed (SIGKILL)", markup=False)


@app.command("ps")
def ps(d: DirOpt = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Which local nodes run, with their pids and log files.

    Example: paxosctl cluster ps
    """
    cluster = _load(d)
    rows = [
        {"node": k, "pid": cluster.pid(k), "log": str(cluster.log_path(k))}
        for k in cluster.node_ids()
    ]
    if json_out:
        render.emit_json({"dir": str(cluster.root), "nodes": rows})
        return
    render.table(
        str(cluster.root),
        ["node", "pid", "log"],
        [[r["node"], r["pid"] or "stopped", r["log"]] for r in rows],
    )
