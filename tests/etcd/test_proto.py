"""The checked-in gRPC modules are what generate.sh makes from the .proto files now: a .proto
edited without regenerating (or a hand-edited module) fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (the test extra has it)")

ROOT = Path(__file__).parents[2]
PROTO = ROOT / "paxosd" / "etcd" / "proto"
GENERATED = (
    "kv_pb2.py",
    "kv_pb2.pyi",
    "rpc_pb2.py",
    "rpc_pb2.pyi",
    "rpc_pb2_grpc.py",
    "v3lock_pb2.py",
    "v3lock_pb2.pyi",
    "v3lock_pb2_grpc.py",
    "v3election_pb2.py",
    "v3election_pb2.pyi",
    "v3election_pb2_grpc.py",
)


def test_generated_modules_are_current(tmp_path: Path) -> None:
    script = (PROTO / "generate.sh").read_text()
    assert "grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=." in script
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "paxosd/etcd/proto/kv.proto",
            "paxosd/etcd/proto/rpc.proto",
            "paxosd/etcd/proto/v3lock.proto",
            "paxosd/etcd/proto/v3election.proto",
        ],
        cwd=ROOT,
        check=True,
    )
    made = tmp_path / "paxosd" / "etcd" / "proto"
    stale = [n for n in GENERATED if (made / n).read_bytes() != (PROTO / n).read_bytes()]
    assert not stale, f"regenerate with paxosd/etcd/proto/generate.sh: {stale} differ"


def test_field_numbers_are_etcds() -> None:
    """A few wire facts clients depend on, spelled out (the .proto is the wire format)."""
    from paxosd.etcd.proto import kv_pb2, rpc_pb2

    f = rpc_pb2.RangeRequest.DESCRIPTOR.fields_by_name
    assert (f["range_end"].number, f["serializable"].number, f["max_create_revision"].number) == (
        2,
        7,
        13,
    )
    assert rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].number == 11
    assert rpc_pb2.Compare.DESCRIPTOR.fields_by_name["range_end"].number == 64
    assert kv_pb2.KeyValue.DESCRIPTOR.fields_by_name["value"].number == 5
    assert rpc_pb2.DESCRIPTOR.services_by_name["KV"].full_name == "etcdserverpb.KV"


def test_lock_and_election_are_etcds() -> None:
    """etcdctl lock and elect call these services by their full names, with these fields."""
    from paxosd.etcd.proto import v3election_pb2, v3lock_pb2

    assert v3lock_pb2.DESCRIPTOR.services_by_name["Lock"].full_name == "v3lockpb.Lock"
    assert (
        v3election_pb2.DESCRIPTOR.services_by_name["Election"].full_name == "v3electionpb.Election"
    )
    f = v3election_pb2.LeaderKey.DESCRIPTOR.fields_by_name
    assert (f["name"].number, f["key"].number, f["rev"].number, f["lease"].number) == (1, 2, 3, 4)
    assert v3election_pb2.CampaignRequest.DESCRIPTOR.fields_by_name["value"].number == 3
    assert v3election_pb2.LeaderResponse.DESCRIPTOR.fields_by_name["kv"].number == 2
    assert v3lock_pb2.LockRequest.DESCRIPTOR.fields_by_name["lease"].number == 2
    assert v3lock_pb2.LockResponse.DESCRIPTOR.fields_by_name["key"].number == 2
