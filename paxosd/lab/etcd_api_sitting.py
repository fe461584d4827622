"""One sitting, one load generator: etcd 3.4 and paxosd's etcd listener driven alike.

    python -m paxosd.lab.etcd_api_sitting [--duration 8] [--warmup 1] [--pairs 2]

The generator is ``etcd-go-load`` (``../shared/anchors/etcd-go``: etcd's own Go ``clientv3``
in closed loops, built by its ``build.sh`` to /tmp/etcd-go-load). For each shape (put with 1
client, put with 64 clients over 8 connections, linearizable range with 16 clients over 16
after a prefill) it runs etcd and paxosd ALTERNATELY, ``--pairs`` times, against each
system's leader endpoint, and records each run's RESULT line. Server CPU per op counts every
server process: etcd's three members; paxosd's three nodes AND their three etcd gateways.
etcd is started with the anchors' ``etcd_cluster.py`` (ports 24379...) and paxosd with
``LocalCluster`` (durable, plain gRPC on loopback); both are stopped at the end. Prints a
markdown table of medians and their ratios; JSON lines of every run go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from paxosd.lab.localcluster import LocalCluster

GO = Path(os.environ.get("ETCD_GO_LOAD", "/tmp/etcd-go-load"))
ANCHORS = Path(os.environ.get("ETCD_ANCHORS", "/work/shared/anchors"))
ETCD_PORT = 24379
SHAPES: tuple[tuple[str, str, int, int], ...] = (
    ("put c=1", "put", 1, 1),
    ("put c=64", "put", 64, 8),
    ("get c=16 (linearizable)", "get", 16, 16),
)


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (a node's etcd gateways)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":  # a zombie is gone, only not yet reaped
            out.append(int(entry.name))
    return out


def run_go(
    cluster_json: Path, op: str, clients: int, conns: int, a: argparse.Namespace, pids: str
) -> dict[str, Any]:
    cmd = [
        str(GO),
        "--cluster",
        str(cluster_json),
        "--endpoints",
        "leader",
        "--op",
        op,
        "--clients",
        str(clients),
        "--conns",
        str(conns),
        "--duration",
        str(a.duration),
        "--warmup",
        str(a.warmup),
        "--runs",
        "1",
    ]
    if op == "get":
        cmd.append("--prefill")
    if pids:
        cmd += ["--cpu-pids", pids]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration * 10 + 120)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            rec: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return rec
    raise RuntimeError(f"no RESULT from {' '.join(cmd)}: {p.stderr[-500:]}")


def server_cpu_us(rec: dict[str, Any]) -> float:
    cpu = rec.get("cpu", {}).get("procs_cpu_s", {})
    total = sum(v for k, v in cpu.items() if k != "loadgen(self)" and v is not None)
    return float(1e6 * total / max(1, int(rec["n"])))


def start_etcd(tmp: Path) -> Path:
    """The anchors' 3-member etcd 3.4 started in ``tmp/etcd`` (its cluster.json there);
    exits with a hint if the Go generator is not built."""
    if not GO.exists():
        sys.exit(f"{GO} is missing: build it with {ANCHORS}/etcd-go/build.sh")
    base = tmp / "etcd"
    subprocess.run(
        [sys.executable, str(ANCHORS / "etcd_cluster.py"), "start", "--base", str(base)]
        + ["--port", str(ETCD_PORT)],
        check=True,
    )
    return base


def stop_etcd(base: Path) -> None:
    """Stop the etcd of ``start_etcd`` and remove its data."""
    script = [sys.executable, str(ANCHORS / "etcd_cluster.py")]
    subprocess.run([*script, "stop", "--base", str(base), "--clean"], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/etcd-api-sitting.jsonl"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="etcd-api-sitting-"))
    etcd_base = start_etcd(tmp)
    px = LocalCluster.create(tmp / "paxosd", 3, etcd=True, etcd_tls=False)
    px.up()
    records: list[dict[str, Any]] = []
    try:
        px.wait_ready()
        pids: dict[str, int] = {}
        members = []
        for k, ep in zip(px.node_ids(), px.etcd_endpoints(), strict=True):
            pid = px.pid(k)
            assert pid is not None
            pids[f"paxosd-n{k}"] = pid
            for i, child in enumerate(children(pid)):
                pids[f"gateway-n{k}.{i}"] = child
            members.append({"name": f"n{k}", "pid": pid, "client_url": f"http://{ep}"})
        px_json = tmp / "paxosd.json"
        px_json.write_text(json.dumps({"members": members}))
        gw = ",".join(f"{n}={p}" for n, p in pids.items() if n.startswith("gateway"))
        etcd_json = etcd_base / "cluster.json"
        with a.out.open("w") as out:
            for name, op, clients, conns in SHAPES:
                for i in range(a.pairs):
                    order = [("etcd", etcd_json, ""), ("paxosd", px_json, gw)]
                    for system, cj, extra in order if i % 2 == 0 else order[::-1]:
                        rec = run_go(cj, op, clients, conns, a, extra)
                        rec |= {"system": system, "shape": name}
                        records.append(rec)
                        out.write(json.dumps(rec) + "\n")
                        print(
                            f"{system:7} {name:26} {rec['ops_s']:9.1f} ops/s  "
                            f"p50 {rec.get('p50_us', 0):8.0f} us  errors {rec['errors']}  "
                            f"server cpu {server_cpu_us(rec):6.0f} us/op",
                            flush=True,
                        )
    finally:
        px.down()
        stop_etcd(etcd_base)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "\n| shape | etcd ops/s | paxosd ops/s | paxosd/etcd | etcd CPU us/op | paxosd CPU us/op |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, *_ in SHAPES:
        e = [r for r in records if r["shape"] == name and r["system"] == "etcd"]
        p = [r for r in records if r["shape"] == name and r["system"] == "paxosd"]
        eo = statistics.median(r["ops_s"] for r in e)
        po = statistics.median(r["ops_s"] for r in p)
        ec = statistics.median(server_cpu_us(r) for r in e)
        pc = statistics.median(server_cpu_us(r) for r in p)
        print(f"| {name} | {eo:.0f} | {po:.0f} | {po / eo:.2f}x | {ec:.0f} | {pc:.0f} |")


if __name__ == "__main__":
    main()
