"""A Python etcd client nobody here wrote, from PyPI, that works with current protobuf:
``etcd-sdk-python`` (module ``pyetcd``, a maintained fork of python-etcd3), against a local
cluster's etcd listeners. It runs in a subprocess: it registers etcd's protobuf messages
under the same names as paxosd's own modules, and one process can hold only one of them."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys

import pytest

from paxosd.lab.localcluster import LocalCluster
from tests.waiting import wait_for

# Looked for, not imported: importing it here would clash with paxosd's own modules.
if importlib.util.find_spec("pyetcd") is None:
    pytest.skip("etcd-sdk-python is not installed (the test extra has it)", allow_module_level=True)

SCRIPT = """
import json, sys
import pyetcd
host, port = sys.argv[1], int(sys.argv[2])
c = pyetcd.client(host=host, port=port)
out = {}
first = c.put("/app/a", "1").header.revision
c.put("/app/b", "2")
value, meta = c.get("/app/a")
out["get"] = [value.decode(), meta.version, meta.mod_revision == first]
out["prefix"] = sorted(m.key.decode() for _, m in c.get_prefix("/app/"))
ok, _ = c.transaction(
    compare=[c.transactions.value("/app/a") == "1"],
    success=[c.transactions.put("/app/c", "3")],
    failure=[],
)
out["txn"] = ok
ok, _ = c.transaction(
    compare=[c.transactions.version("/app/a") > 5],
    success=[c.transactions.put("/app/d", "4")],
    failure=[c.transactions.get("/app/a")],
)
out["txn_else"] = ok
events, cancel = c.watch_prefix("/app/", start_revision=first)
out["watch"] = [(e.key.decode(), e.value.decode()) for _, e in zip(range(3), events)]
cancel()
out["status"] = [c.status().version, c.status().leader.id in [m.id for m in c.members]]
out["deleted"] = c.delete_prefix("/app/").deleted
out["after"] = list(c.get_prefix("/app/"))
print(json.dumps(out))
"""


# Leases and python-etcd3's lock (a key under /locks/ on a lease, taken with a transaction
# and kept alive through the KeepAlive stream).
LEASE_SCRIPT = """
import json, sys
import pyetcd
host, port = sys.argv[1], int(sys.argv[2])
c = pyetcd.client(host=host, port=port)
out = {}
lease = c.lease(30)
c.put("/svc/n1", "up", lease=lease)
_, meta = c.get("/svc/n1")
out["attached"] = meta.lease_id == lease.id
out["ttl"] = [lease.granted_ttl, 0 < lease.remaining_ttl <= 30, [k.decode() for k in lease.keys]]
out["refresh"] = [r.TTL for r in lease.refresh()]
lock = c.lock("job", ttl=30)
out["lock"] = [lock.acquire(timeout=10), lock.is_acquired()]
other = c.lock("job", ttl=30)
out["other"] = other.acquire(timeout=1)
lock.release()
out["other_after"] = other.acquire(timeout=10)
other.release()
lease.revoke()
out["after"] = list(c.get_prefix("/svc/"))
print(json.dumps(out))
"""


def listening(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def test_pyetcd_session_on_a_follower(cluster: LocalCluster) -> None:
    leader = int(cluster.wait_ready()["node_id"])
    follower = next(k for k in cluster.node_ids() if k != leader)
    ep = cluster.etcd_endpoints()[follower - 1]
    wait_for(f"{ep} listens", lambda: listening(ep))
    host, port = ep.rsplit(":", 1)
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, host, port], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["get"] == ["1", 1, True]
    assert out["prefix"] == ["/app/a", "/app/b"]
    assert out["txn"] is True and out["txn_else"] is False
    assert out["watch"] == [["/app/a", "1"], ["/app/b", "2"], ["/app/c", "3"]]
    assert out["status"] == ["3.4.0", True]
    assert out["deleted"] == 3 and out["after"] == []


def test_pyetcd_leases_and_lock(cluster: LocalCluster) -> None:
    ep = cluster.etcd_endpoints()[0]
    wait_for(f"{ep} listens", lambda: listening(ep))
    host, port = ep.rsplit(":", 1)
    p = subprocess.run(
        [sys.executable, "-c", LEASE_SCRIPT, host, port], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["attached"] is True
    assert out["ttl"] == [30, True, ["/svc/n1"]]
    assert out["refresh"] == [30]
    assert out["lock"] == [True, True]
    assert out["other"] is False and out["other_after"] is True
    assert out["after"] == []
