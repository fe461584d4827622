#!/usr/bin/env bash
# Build etcd-lease-bench (this directory's main.go) with Debian's Go and Debian's packaged etcd 3.4
# client sources only (GOPATH mode, no module proxy), as ../../shared/anchors/etcd-go does.
#   ./build.sh            # -> $BIN_DIR/etcd-lease-bench (default /tmp)
# Needs golang-go and golang-etcd-server-dev (installed with apt-get when missing and root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=${BIN_DIR:-/tmp}
need=""
for p in golang-go golang-etcd-server-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then echo "please install:$need (as root)"; exit 1; fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y $need
fi
export GO111MODULE=off GOFLAGS= GOPATH="${GOPATH_TMP:-/tmp/gopath}:/usr/share/gocode" GOCACHE=${GOCACHE:-/tmp/gocache}
mkdir -p "${GOPATH_TMP:-/tmp/gopath}/src" "$BIN_DIR"
(cd "$here" && go vet . && go build -o "$BIN_DIR/etcd-lease-bench" .)
echo "built $BIN_DIR/etcd-lease-bench"
