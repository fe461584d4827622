#!/usr/bin/env bash
# Regenerates the checked-in gRPC modules from the .proto files (run from anywhere; needs
# grpcio-tools). tests/etcd/test_proto.py fails when the checked-in modules are not current.
set -euo pipefail
cd "$(dirname "$0")/../../.."
python3 -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  paxosd/etcd/proto/kv.proto paxosd/etcd/proto/rpc.proto \
  paxosd/etcd/proto/v3lock.proto paxosd/etcd/proto/v3election.proto
# kv.proto has no service: its empty gRPC module is not kept.
rm -f paxosd/etcd/proto/kv_pb2_grpc.py
