"""How fast can a Python grpcio server answer etcd's KV.Put and KV.Range on this machine?

    python -m paxosd.lab.grpc_ceiling [--duration 5] [--warmup 1] [--pairs 2]

A ceiling for any etcd front end written with grpcio: the server below answers ``KV.Put`` and
``KV.Range`` with a constant response (header filled, one key-value for a range, no store, no
consensus), once as grpcio's sync server (a thread pool, as the gateway uses) and once as
``grpc.aio`` (one asyncio loop in one thread). Each flavour runs in its own process and is driven
by the same ``etcd-go-load`` shapes as ``etcd_api_sitting`` (put with 64 clients over 8
connections, linearizable get with 16 clients over 16), alternating with etcd 3.4 in the same
sitting. Server CPU per op counts the one server process (etcd: its three members). If this
server cannot reach 1.5x etcd, no front end built on grpcio's Python server can.

``serve --flavour sync|aio --port N`` runs one server by itself (what the sitting starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

from paxosd.lab.etcd_api_sitting import run_go, server_cpu_us, start_etcd, stop_etcd

SHAPES: tuple[tuple[str, str, int, int], ...] = (
    ("put c=64", "put", 64, 8),
    ("get c=16 (linearizable)", "get", 16, 16),
)
FLAVOURS = ("sync", "aio")
WORKERS = 64  # the gateway's pool size (paxosd/etcd/serve.py)
CLUSTER_ID = 0x1234
MEMBER_ID = 0x1


def _header() -> Any:
    from paxosd.etcd.proto import rpc_pb2

    return rpc_pb2.ResponseHeader(
        cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=42, raft_term=1
    )


def _responses() -> tuple[Any, Any, Any]:
    """Put, Range and Status answers, built once: the server copies nothing per call."""
    from paxosd.etcd.proto import kv_pb2, rpc_pb2

    kv = kv_pb2.KeyValue(
        key=b"k00000000", value=b"v" * 100, create_revision=2, mod_revision=42, version=3
    )
    put = rpc_pb2.PutResponse(header=_header())
    rng = rpc_pb2.RangeResponse(header=_header(), kvs=[kv], count=1)
    status = rpc_pb2.StatusResponse(header=_header(), version="3.4.0", leader=MEMBER_ID)
    return put, rng, status


def serve_sync(port: int) -> None:
    import grpc

    from paxosd.etcd.proto import rpc_pb2_grpc

    put, rng, status = _responses()

    class KV(rpc_pb2_grpc.KVServicer):
        def Put(self, request: Any, context: Any) -> Any:  # noqa: N802
            return put

        def Range(self, request: Any, context: Any) -> Any:  # noqa: N802
            return rng

    class Maintenance(rpc_pb2_grpc.MaintenanceServicer):
        def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
            return status

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
    rpc_pb2_grpc.add_KVServicer_to_server(KV(), server)  # type: ignore[no-untyped-call]
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(  # type: ignore[no-untyped-call]
        Maintenance(), server
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print("serving", flush=True)
    stop.wait()
    server.stop(grace=0.2).wait()


def serve_aio(port: int) -> None:
    import grpc

    from paxosd.etcd.proto import rpc_pb2_grpc

    put, rng, status = _responses()

    class KV(rpc_pb2_grpc.KVServicer):
        async def Put(self, request: Any, context: Any) -> Any:  # noqa: N802
            return put

        async def Range(self, request: Any, context: Any) -> Any:  # noqa: N802
            return rng

    class Maintenance(rpc_pb2_grpc.MaintenanceServicer):
        async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
            return status

    async def main() -> None:
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(KV(), server)  # type: ignore[no-untyped-call]
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(  # type: ignore[no-untyped-call]
            Maintenance(), server
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await server.start()
        print("serving", flush=True)
        await stop.wait()
        await server.stop(0.2)

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(flavour: str, tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    """One ceiling server process and a cluster.json naming it (for the generator's CPU count)."""
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "paxosd.lab.grpc_ceiling", "serve", "--flavour", flavour]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    if p.stdout.readline().strip() != "serving":
        p.kill()
        raise RuntimeError(f"the {flavour} ceiling server did not start")
    cj = tmp / f"{flavour}.json"
    member = {"name": flavour, "pid": p.pid, "client_url": f"http://127.0.0.1:{port}"}
    cj.write_text(json.dumps({"members": [member]}))
    return p, cj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    sv = sub.add_parser("serve", help="run one ceiling server (what the sitting starts)")
    sv.add_argument("--flavour", choices=FLAVOURS, required=True)
    sv.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/grpc-ceiling.jsonl"))
    a = ap.parse_args()
    if a.cmd == "serve":
        (serve_sync if a.flavour == "sync" else serve_aio)(a.port)
        return
    tmp = Path(tempfile.mkdtemp(prefix="grpc-ceiling-"))
    etcd_base = start_etcd(tmp)
    servers = {f: start_server(f, tmp) for f in FLAVOURS}
    records: list[dict[str, Any]] = []
    systems: list[tuple[str, Path]] = [("etcd", etcd_base / "cluster.json")]
    systems += [(f"grpc-{f}", cj) for f, (_, cj) in servers.items()]
    try:
        with a.out.open("w") as out:
            for name, op, clients, conns in SHAPES:
                for i in range(a.pairs):
                    for system, cj in systems if i % 2 == 0 else systems[::-1]:
                        rec = run_go(cj, op, clients, conns, a, "")
                        rec |= {"system": system, "shape": name, "load": os.getloadavg()[0]}
                        records.append(rec)
                        out.write(json.dumps(rec) + "\n")
                        print(
                            f"{system:9} {name:26} {rec['ops_s']:9.1f} ops/s  "
                            f"p50 {rec.get('p50_us', 0):8.0f} us  errors {rec['errors']}  "
                            f"server cpu {server_cpu_us(rec):6.0f} us/op  "
                            f"load {rec['load']:.1f}",
                            flush=True,
                        )
    finally:
        for p, _ in servers.values():
            p.send_signal(signal.SIGTERM)
        for p, _ in servers.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        stop_etcd(etcd_base)
        shutil.rmtree(tmp, ignore_errors=True)
    names = [s for s, _ in systems]
    print(
        "\n| shape | "
        + " | ".join(f"{s} ops/s" for s in names)
        + " | "
        + " | ".join(f"{s}/etcd" for s in names[1:])
        + " | "
        + " | ".join(f"{s} CPU us/op" for s in names)
        + " |"
    )
    print("|---" * (1 + 3 * len(names) - 1) + "|")
    for name, *_ in SHAPES:
        ops = {}
        cpu = {}
        for s in names:
            rs = [r for r in records if r["shape"] == name and r["system"] == s]
            ops[s] = statistics.median(r["ops_s"] for r in rs)
            cpu[s] = statistics.median(server_cpu_us(r) for r in rs)
        cells = [f"{ops[s]:.0f}" for s in names]
        cells += [f"{ops[s] / ops['etcd']:.2f}x" for s in names[1:]]
        cells += [f"{cpu[s]:.0f}" for s in names]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
