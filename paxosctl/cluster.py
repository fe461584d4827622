"""``paxosctl cluster``: the local cluster on loopback (the README's quick start)."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
from pathlib import Path
from typing import Annotated

import typer

from paxosctl import render
from paxosctl.connect import JsonOpt
from paxosd.client.client import ClientError
from paxosd.client.localdir import MANIFEST, default_dir
from paxosd.lab.localcluster import LocalCluster
from paxosd.storage.backup import BackupError
from paxosd.tools.restore import RestoreError

app = typer.Typer(
    rich_markup_mode=None,
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
    restore: Annotated[
        Path | None,
        typer.Option("--restore", help="Seed every node of a NEW cluster from this backup file."),
    ] = None,
    etcd: Annotated[
        bool,
        typer.Option(
            "--etcd",
            help="A new cluster also serves etcd's v3 API on every node, with TLS files "
            "generated (needs pip install 'paxosd[etcd]'); prints the etcdctl command line.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create (first time) and start a local cluster; waits until it has a leader.

    JSON: {"dir", "nodes", "endpoints", "leader"}, and with --etcd "etcd_endpoints" and
    "etcdctl" (the command line's words).

    Example: paxosctl cluster up --nodes 5

    Example: paxosctl cluster up --etcd

    Example: paxosctl cluster up --dir /tmp/restored --restore backup.pxb
    """
    root = d or default_dir()
    if (root / MANIFEST).exists():
        if restore is not None:
            render.error(f"{root} holds a cluster; --restore makes a new one in an empty --dir")
            raise typer.Exit(render.EXIT_USAGE)
        cluster = LocalCluster.load(root)
        if nodes is not None and cluster.nodes != nodes:
            render.error(f"{root} holds {cluster.nodes} nodes; `cluster down --clean` first")
            raise typer.Exit(render.EXIT_USAGE)
        if etcd and not cluster.serves_etcd():
            render.error(f"{root} holds a cluster without --etcd; `cluster down --clean` first")
            raise typer.Exit(render.EXIT_USAGE)
    else:
        if etcd and importlib.util.find_spec("grpc") is None:
            render.error("--etcd needs the etcd extra: pip install 'paxosd[etcd]'")
            raise typer.Exit(render.EXIT_USAGE)
        try:
            cluster = LocalCluster.create(root, nodes or 3, restore=restore, etcd=etcd)
        except (BackupError, RestoreError) as e:
            render.error(str(e))
            raise typer.Exit(render.EXIT_FAILED_CHECK) from None
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
    etcdctl: list[str] = []
    if cluster.serves_etcd():
        etcdctl = [
            "etcdctl",
            f"--endpoints={','.join(cluster.etcd_endpoints())}",
            *cluster.etcdctl_flags(),
        ]
        info |= {"etcd_endpoints": cluster.etcd_endpoints(), "etcdctl": etcdctl}
    if json_out:
        render.emit_json(info)
        return
    render.stdout.print(
        f"local cluster of {cluster.nodes} up in {root} (leader: node {leader['node_id']})\n"
        f"clients: {', '.join(cluster.endpoint_strings())}\n"
        "try: paxosctl put k v && paxosctl get k",
        markup=False,
    )
    if etcdctl:
        render.stdout.print(
            f"etcd: {' '.join(shlex.quote(w) for w in etcdctl)} get k", markup=False
        )


@app.command()
def down(
    d: DirOpt = None,
    clean: Annotated[bool, typer.Option(help="Also delete the folder (all data).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Stop every node (SIGTERM, all at once); with --clean also delete data, keys and logs.

    Only processes this local cluster started are signalled (see `cluster kill`).

    JSON: {"dir", "stopped": true, "removed"}.

    Example: paxosctl cluster down --clean
    """
    cluster = _load(d)
    stopped = cluster.down()
    if clean:
        shutil.rmtree(cluster.root)
    if json_out:
        render.emit_json({"dir": str(cluster.root), "stopped": True, "removed": clean})
        return
    what = f"stopped {len(stopped)} running node{'s' if len(stopped) != 1 else ''}"
    render.stdout.print(f"{what}{' and removed' if clean else ''}: {cluster.root}", markup=False)


def _check_node(cluster: LocalCluster, node: int) -> None:
    if node not in cluster.node_ids():
        ids = ", ".join(map(str, cluster.node_ids()))
        render.error(f"no node {node} in the local cluster at {cluster.root} (nodes: {ids})")
        raise typer.Exit(render.EXIT_USAGE)


@app.command("start")
def start_node(
    node: int,
    d: DirOpt = None,
    wait: Annotated[
        bool, typer.Option(help="Return once the node answers on its client port.")
    ] = True,
) -> None:
    """Start one stopped node (after a kill, for a recovery drill); returns once it serves.

    Example: paxosctl cluster start 2

    Example: paxosctl cluster start 2 --no-wait
    """
    cluster = _load(d)
    _check_node(cluster, node)
    running = cluster.pid(node)
    if running is not None:
        render.stdout.print(f"node {node} already running, pid {running}", markup=False)
        return
    pid = cluster.start(node)
    if wait:
        try:
            cluster.wait_answering(node)  # so that the next command finds it listening
        except ClientError as e:
            render.error(str(e))
            raise typer.Exit(render.EXIT_UNAVAILABLE) from None
        render.stdout.print(f"node {node} running, pid {pid}", markup=False)
    else:
        render.stdout.print(f"node {node} started, pid {pid}", markup=False)


@app.command("kill")
def kill_node(node: int, d: DirOpt = None) -> None:
    """SIGKILL one node: the crash of a recovery drill. Exit 1 if it was not running.

    Only a process this local cluster started is signalled: the pid file records the
    process's start time and command line, and a pid now used by anything else counts as
    not running.

    Example: paxosctl cluster kill 1 && paxosctl put k v2 && paxosctl cluster start 1
    """
    cluster = _load(d)
    _check_node(cluster, node)
    if not cluster.kill(node):
        render.error(f"node {node} is not running")
        raise typer.Exit(render.EXIT_FAILED_CHECK)
    render.stdout.print(f"node {node} killed (SIGKILL)", markup=False)


@app.command("ps")
def ps(d: DirOpt = None, json_out: JsonOpt = False) -> None:
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


@app.command("add-node")
def add_node(d: DirOpt = None, json_out: JsonOpt = False) -> None:
    """Create and start one more local node, not yet a member; then `paxosctl member add`.

    The node's config says `initial_cluster_state = "existing"`: it waits, without voting,
    until the leader sends it the log.

    Example: paxosctl cluster add-node && paxosctl member add 4 127.0.0.1:7104 --promote
    """
    cluster = _load(d)
    try:
        k = cluster.add_node()
    except RuntimeError as e:
        render.error(str(e))
        raise typer.Exit(render.EXIT_UNAVAILABLE) from None
    pid = cluster.start(k)
    info = {"node": k, "pid": pid, "peer_address": cluster.peer_address(k)}
    if json_out:
        render.emit_json(info)
        return
    render.stdout.print(
        f"node {k} running (pid {pid}), not a member yet; add it with:\n"
        f"  paxosctl member add {k} {cluster.peer_address(k)} --promote",
        markup=False,
    )


@app.command("remove-node")
def remove_node(node: int, d: DirOpt = None) -> None:
    """Stop a local node for good (after `paxosctl member remove ID`); its files stay.

    Example: paxosctl member remove 4 && paxosctl cluster remove-node 4
    """
    cluster = _load(d)
    cluster.remove_node(node)
    render.stdout.print(f"node {node} stopped and left out of the local cluster", markup=False)
