"""A cluster of paxosd processes on this machine: `paxosctl cluster up`, tests, drills, benches.

Everything lives in one folder (configs, keys, data, logs, pids). The folder's
``cluster.json`` is how paxosctl finds the local cluster when no endpoints are given.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paxosd.client.client import Client, ClientError, statuses_json
from paxosd.client.connection import read_key_file
from paxosd.client.localdir import MANIFEST
from paxosd.storage.backup import read_backup
from paxosd.storage.store import DB_FILENAME, Storage
from paxosd.tools.initcluster import (
    client_address,
    etcd_address,
    init_cluster,
    peer_address,
    render_config,
)
from paxosd.tools.restore import RestoreError, restore_into

START_TIMEOUT_S = 20.0
# Children this process started, so they are reaped (and not reported as leaked) when they
# exit; nodes started by another paxosctl process are found through their pid files.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
STOP_TIMEOUT_S = 10.0


def _ports_free(host: str, ports: list[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


# One cluster's ports: base+K (peers), base+100+K (clients), base+200+K (metrics),
# base+250+K (etcd's v3 API, when asked for).
RANGE_PORTS = 300


RANDOM_BASE_MIN = 10000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_base_port(nodes: int, host: str = "127.0.0.1", preferred: int = 7100) -> int:
    """A base port whose peer, client and etcd ports (base+K, base+100+K, base+250+K) are
    all free now."""
    # Random ranges after the preferred one, so clusters created at the same moment by
    # different processes (parallel test runs) rarely race for the same ports. All below the
    # kernel's ephemeral range: a port in it can be taken by any outgoing connection on the
    # machine between now and a node's start, or an add_node later (seen on a busy machine).
    rng = random.Random()
    low = min(_ephemeral_low(), 65536 - RANGE_PORTS)
    slots = max(1, (low - RANGE_PORTS - RANDOM_BASE_MIN) // RANGE_PORTS)
    candidates = [preferred] + [
        RANDOM_BASE_MIN + RANGE_PORTS * rng.randrange(slots) for _ in range(100)
    ]
    for base in candidates:
        ports = [base + off + k for off in (0, 100, 250) for k in range(1, nodes + 1)]
        if _ports_free(host, ports):
            return base
    raise RuntimeError("no free range of ports found on loopback")


@dataclass(slots=True)
class LocalCluster:
    root: Path
    nodes: int
    base_port: int
    host: str = "127.0.0.1"
    # Nodes removed from the cluster (`remove_node`): their files stay, they are not started.
    removed: tuple[int, ...] = ()

    # ------------------------------------------------------------------ files

    @classmethod
    def create(
        cls,
        root: Path,
        nodes: int = 3,
        *,
        base_port: int | None = None,
        durability: str = "fsync",
        extra_config: str = "",
        restore: Path | None = None,
        restore_nodes: Collection[int] | None = None,
        databases: bool = True,
        etcd: bool = False,
        etcd_tls: bool = True,
    ) -> LocalCluster:
        """Write configs, keys and bootstrapped (empty) databases under ``root``.

        ``restore``: a backup file (paxosctl snapshot save) that seeds the databases of
        ``restore_nodes`` (default: every node) instead; any other node is bootstrapped
        empty and catches up by snapshot. Restore at least a majority (see paxosd.tools.restore).
        ``etcd``: every node also serves etcd's v3 API on ``etcd_endpoints()``, with TLS files
        in keys/etcd/ unless ``etcd_tls`` is False (then plain gRPC on loopback).
        ``databases=False`` writes configs and keys only (the caller runs paxosd restore).
        Without ``restore``, a node that already has a database keeps it; with it, an existing
        database of a node to restore is refused before anything is written.

        :raises BackupError: the backup file is not a whole, unaltered backup.
        :raises RestoreError: its state is not what its header says.
        :raises ValueError: ``restore_nodes`` is not a majority.
        """
        # A minority restored leaves an empty majority that can elect a leader which never saw
        # the backup and decide new values in slots the backup covers.
        restored = set(range(1, nodes + 1)) if restore_nodes is None else set(restore_nodes)
        if restore is not None and 2 * len(restored & set(range(1, nodes + 1))) <= nodes:
            raise ValueError(f"restore at least a majority of the {nodes} nodes")
        # Read (and check) the backup before anything is written: a bad file changes nothing.
        backup = read_backup(restore) if restore is not None else None
        if backup is not None and databases:
            for k in sorted(restored):
                db = root / "data" / f"n{k}" / DB_FILENAME
                if db.exists():
                    raise RestoreError(f"{db} exists: restore into a new cluster's folder")
        root.mkdir(parents=True, exist_ok=True)
        base = base_port if base_port is not None else pick_base_port(nodes)
        init_cluster(
            root,
            nodes,
            base_port=base,
            cluster_id="local",
            force=True,
            etcd=etcd,
            etcd_tls=etcd_tls,
        )
        for k in range(1, nodes + 1):
            cfg = root / f"n{k}.toml"
            text = cfg.read_text()
            if durability != "fsync":
                text = text.replace(
                    "client_address =", f'durability = "{durability}"\nclient_address =', 1
                )
            if extra_config:
                text += "\n" + extra_config
            cfg.write_text(text)
            db = root / "data" / f"n{k}" / DB_FILENAME
            if db.exists() or not databases:
                continue
            if backup is not None and k in restored:
                restore_into(db.parent, backup, cluster_id="local", node_id=k)
            else:
                # The one deliberate bootstrap: a brand-new member starts with an empty log.
                Storage.open(db, cluster_id="local", node_id=k, create=True).close()
        cluster = cls(root=root, nodes=nodes, base_port=base)
        (root / MANIFEST).write_text(json.dumps(cluster.manifest(), indent=2) + "\n")
        return cluster

    @classmethod
    def load(cls, root: Path) -> LocalCluster:
        m = json.loads((root / MANIFEST).read_text())
        return cls(
            root=root,
            nodes=int(m["nodes"]),
            base_port=int(m["base_port"]),
            host=m["host"],
            removed=tuple(int(k) for k in m.get("removed", ())),
        )

    def manifest(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "base_port": self.base_port,
            "host": self.host,
            "removed": list(self.removed),
            "endpoints": [str(a) for a in self.endpoint_strings()],
            "client_key_file": str(self.root / "keys" / "client.key"),
        }

    def etcd_endpoints(self) -> list[str]:
        """Where each node's etcd listener is, when the cluster was created with ``etcd``."""
        return [str(etcd_address(self.host, self.base_port, k)) for k in self.node_ids()]

    def serves_etcd(self) -> bool:
        """Whether the nodes' configs have an etcd listener (created with ``etcd``)."""
        return "\n[etcd]\n" in self.config_path(1).read_text()

    def etcdctl_flags(self) -> list[str]:
        """etcdctl's certificate flags for this cluster's listeners (none without TLS)."""
        tls = self.root / "keys" / "etcd"
        if not (tls / "ca.crt").exists():
            return []
        return [
            f"--cacert={tls / 'ca.crt'}",
            f"--cert={tls / 'client.crt'}",
            f"--key={tls / 'client.key'}",
        ]

    def endpoint_strings(self) -> list[str]:
        return [str(client_address(self.host, self.base_port, k)) for k in self.node_ids()]

    def endpoints(self) -> list[tuple[str, int]]:
        out = []
        for k in self.node_ids():
            a = client_address(self.host, self.base_port, k)
            out.append((a.host, a.port))
        return out

    def client_key(self) -> bytes:
        return read_key_file(self.root / "keys" / "client.key")

    def client(self, **kwargs: Any) -> Client:
        return Client(self.endpoints(), self.client_key(), **kwargs)

    def wait_answering(self, k: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until node ``k`` answers on its client port (recovered and listening): a client
        fails at once while every endpoint refuses, so a caller that just started the only
        reachable node waits here, not in its first command. ClientError if ``k`` exits
        first or does not answer in time."""
        a = client_address(self.host, self.base_port, k)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with Client([(a.host, a.port)], self.client_key(), timeout_ms=1000) as c:
            while time.monotonic() < deadline:
                if self.pid(k) is None:
                    raise ClientError(f"node {k} exited; see {self.log_path(k)}")
                try:
                    c.status()
                    return
                except ClientError as e:
                    last = str(e)
                time.sleep(0.05)
        raise ClientError(f"node {k} did not answer within {timeout_s:.0f} s ({last})")

    def node_ids(self) -> list[int]:
        return [k for k in range(1, self.nodes + 1) if k not in self.removed]

    def peer_address(self, k: int) -> str:
        return str(peer_address(self.host, self.base_port, k))

    def add_node(self, *, extra_config: str = "") -> int:
        """Write the config and empty database of one more node, which joins the running
        cluster as a non-member (``initial_cluster_state = "existing"``): it votes only after
        `paxosctl member add` and `member promote`. Returns its node id; start it yourself.
        ``extra_config``: appended to its config, as ``create`` does for the first nodes."""
        k = self.nodes + 1
        ports = [self.base_port + k, self.base_port + 100 + k]
        if not _ports_free(self.host, ports):
            raise RuntimeError(f"ports {ports} for node {k} are in use")
        hosts = (self.host,) * k
        text = render_config(k, hosts, self.base_port, "local", f"data/n{k}")
        text = text.replace(
            "client_address =", 'initial_cluster_state = "existing"\nclient_address =', 1
        )
        if extra_config:
            text += "\n" + extra_config
        data = self.root / "data" / f"n{k}"
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config_path(k).write_text(text)
        # A brand-new member's one deliberate empty log (it is not a voter yet).
        Storage.open(data / DB_FILENAME, cluster_id="local", node_id=k, create=True).close()
        self.nodes = k
        self._write_manifest()
        return k

    def remove_node(self, k: int) -> None:
        """Stop node ``k`` and leave it out from now on (after `paxosctl member remove`)."""
        self.stop(k)
        self.removed = tuple(sorted({*self.removed, k}))
        self._write_manifest()

    def _write_manifest(self) -> None:
        (self.root / MANIFEST).write_text(json.dumps(self.manifest(), indent=2) + "\n")

    def config_path(self, k: int) -> Path:
        return self.root / f"n{k}.toml"

    def log_path(self, k: int) -> Path:
        return self.root / f"n{k}.log"

    def _pid_path(self, k: int) -> Path:
        return self.root / f"n{k}.pid"

    # ------------------------------------------------------------------ processes

    def pid(self, k: int) -> int | None:
        """Node ``k``'s pid if the process its pid file names is still that node, else None.

        A pid file outlives a crash, and the kernel reuses pids: the number alone may name
        any process by now. So the file also records the process's start time and command
        line, and a process that does not match both is "not running" -- never signalled.
        """
        recorded = self._recorded(k)
        if recorded is None:
            return None
        pid = recorded.pid
        # Our own child: poll() reaps it once it has exited.
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[pid]
            return None
        if not _same_process(pid, recorded):
            return None
        return pid

    def _recorded(self, k: int) -> ProcessIdentity | None:
        try:
            text = self._pid_path(k).read_text()
        except OSError:
            return None
        recorded = ProcessIdentity.parse(text)
        if recorded is None and text.strip().isdigit():
            # A bare pid, written before identities were recorded: trusted only if that
            # process runs this node's config, so that an upgrade does not orphan the nodes.
            live = process_identity(int(text))
            tail = ("-m", "paxosd", "run", "--config", str(self.config_path(k)))
            if live is not None and live.cmdline[-len(tail) :] == tail:
                return live
        return recorded

    def start(self, k: int, *, env: dict[str, str] | None = None) -> int:
        """Start node ``k`` unless it runs; returns its pid at once (see ``wait_answering``)."""
        if k not in self.node_ids():
            raise ValueError(f"no node {k} in this cluster (nodes: {self.node_ids()})")
        running = self.pid(k)
        if running is not None:
            return running
        argv = [sys.executable, "-m", "paxosd", "run", "--config", str(self.config_path(k))]
        log = open(self.log_path(k), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the shell must not kill the cluster
                env={**os.environ, **(env or {})},
            )
        finally:
            log.close()
        _CHILDREN[proc.pid] = proc
        # The start time is fixed at fork. The command line recorded is the one we ran:
        # /proc can show an empty one for a moment around the exec.
        identity = process_identity(proc.pid)
        start_time = -1 if identity is None else identity.start_time  # -1: already gone
        self._pid_path(k).write_text(ProcessIdentity(proc.pid, start_time, tuple(argv)).dump())
        return proc.pid

    def signal(self, k: int, sig: signal.Signals) -> bool:
        """Send ``sig`` to node ``k`` if it runs (see ``pid``); False if it does not."""
        pid = self.pid(k)
        if pid is None:
            return False
        return _send_signal(pid, self._recorded(k), sig)

    def kill(self, k: int) -> bool:
        """SIGKILL: the crash drills' fault. Waits until the process is gone. False if node
        ``k`` was not running (nothing was signalled)."""
        pid = self.pid(k)
        if pid is None or not _send_signal(pid, self._recorded(k), signal.SIGKILL):
            return False
        self._wait_gone(k, pid, STOP_TIMEOUT_S)
        return True

    def stop(self, k: int) -> bool:
        """SIGTERM, then SIGKILL if it has not exited in time. False if it was not running."""
        return bool(self._stop_many([k]))

    def _stop_many(self, ks: list[int]) -> list[int]:
        """SIGTERM all of ``ks`` at once, then wait for all (SIGKILL any still there after
        STOP_TIMEOUT_S). Returns the nodes that were running."""
        running: dict[int, int] = {}
        for k in ks:
            pid = self.pid(k)
            recorded = self._recorded(k)
            # A paused node cannot handle SIGTERM.
            if pid is not None and _send_signal(pid, recorded, signal.SIGCONT):
                _send_signal(pid, recorded, signal.SIGTERM)
                running[k] = pid
        for k, pid in running.items():
            if not self._wait_gone(k, pid, STOP_TIMEOUT_S):
                _send_signal(pid, self._recorded(k), signal.SIGKILL)
                self._wait_gone(k, pid, STOP_TIMEOUT_S)
        return list(running)

    def _wait_gone(self, k: int, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid(k) != pid:
                return True
            time.sleep(0.01)
        return False

    def up(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Start every node; returns the leader's status once there is one."""
        for k in self.node_ids():
            self.start(k)
        return self.wait_ready(timeout_s)

    def down(self) -> list[int]:
        """Stop every node at once; returns the nodes that were running. In parallel, since
        the nodes' shut-downs are independent (one at a time cost ~2 s a node here)."""
        return self._stop_many(self.node_ids())

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Until one node leads and every running node answers; returns the leader's status."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with self.client(timeout_ms=1000) as c:
            while time.monotonic() < deadline:
                for k in self.node_ids():
                    if self.pid(k) is None and not self._pid_path(k).exists():
                        continue
                rows = statuses_json(c)
                leaders = [r for r in rows if r.get("role") == "leader"]
                answered = [r for r in rows if "error" not in r]
                if len(leaders) == 1 and len(answered) >= self._running():
                    return leaders[0]
                last = "; ".join(f"{r['endpoint']}: {r.get('role', r.get('error'))}" for r in rows)
                time.sleep(0.1)
        raise ClientError(f"local cluster not ready after {timeout_s:.0f} s: {last}")

    def _running(self) -> int:
        return sum(1 for k in self.node_ids() if self.pid(k) is not None)

    def logs_tail(self, k: int, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(k).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """What tells a process from a later one with the same pid: its start time (clock ticks
    after boot, field 22 of /proc/PID/stat) and its command line."""

    pid: int
    start_time: int
    cmdline: tuple[str, ...]

    def dump(self) -> str:
        return (
            json.dumps(
                {"pid": self.pid, "start_time": self.start_time, "cmdline": list(self.cmdline)}
            )
            + "\n"
        )

    @classmethod
    def parse(cls, text: str) -> ProcessIdentity | None:
        """None for anything but a whole record (a bare pid, from an older pid file,
        identifies nothing by itself: see LocalCluster._recorded)."""
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), int(d["start_time"]), tuple(str(a) for a in d["cmdline"]))
        except (ValueError, TypeError, KeyError):
            return None


def process_identity(pid: int) -> ProcessIdentity | None:
    """The identity of live process ``pid``, or None if there is none (a zombie is dead: its
    parent may take seconds to reap it -- PID 1 does, for a node whose paxosctl has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may hold spaces or ")": split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    state, start_time = fields[0], int(fields[22 - 3])
    if state in ("Z", "X", "x"):
        return None
    args = tuple(a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1])
    return ProcessIdentity(pid, start_time, args)


def _same_process(pid: int, recorded: ProcessIdentity, patience_s: float = 1.0) -> bool:
    """Whether ``pid`` is the process ``recorded`` names. A matching start time with an
    empty command line is a process in the middle of its exec: ask again, briefly."""
    deadline = time.monotonic() + patience_s
    while True:
        now = process_identity(pid)
        if now is None or now.start_time != recorded.start_time:
            return False
        if now.cmdline == recorded.cmdline:
            return True
        if now.cmdline or time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _send_signal(pid: int, recorded: ProcessIdentity | None, sig: signal.Signals) -> bool:
    """Signal ``pid`` only if it is still the process ``recorded`` names. With a pidfd the
    check and the signal name one process, so a pid reused in between cannot be hit."""
    if recorded is None or recorded.pid != pid:
        return False
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (old kernel): check, then signal
        if not _same_process(pid, recorded):
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True
    try:
        if not _same_process(pid, recorded):
            return False
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True
