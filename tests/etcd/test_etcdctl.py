"""etcdctl 3.4, a client nobody here wrote, against a local paxosd cluster's etcd listeners:
every step of the session prints what etcd 3.4 printed for it (fixtures/etcd34_session.json,
recorded by record_etcd_session.py from a real etcd), after normalising what differs by
nature (ids, URLs, terms, sizes, timings)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxosd.lab.localcluster import LocalCluster
from paxosd.storage.backup import decode_backup
from tests.etcd.session import ETCDCTL, STEPS, normalise, run_session
from tests.waiting import wait_for

pytest.importorskip("grpc", reason="the etcd extra is not installed: pip install 'paxosd[etcd]'")
if not os.path.exists(ETCDCTL):
    pytest.skip(
        f"{ETCDCTL} is missing: install Debian's etcd-client (.ci/run does with apt)",
        allow_module_level=True,
    )

_version = subprocess.run(
    [ETCDCTL, "version"], capture_output=True, text=True, env={"ETCDCTL_API": "3"}, timeout=30
).stdout
if "etcdctl version: 3.4." not in _version:
    pytest.skip(
        f"the fixture is etcdctl 3.4's output; {ETCDCTL} is {_version.splitlines()[:1]}",
        allow_module_level=True,
    )

FIXTURE = Path(__file__).parent / "fixtures" / "etcd34_session.json"


def answers(endpoint: str, flags: list[str]) -> bool:
    p = subprocess.run(
        [ETCDCTL, "--endpoints", endpoint, *flags, "get", "probe"],
        capture_output=True,
        env={"ETCDCTL_API": "3"},
        timeout=30,
    )
    return p.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path_factory.mktemp("etcdctl") / "c", 3, etcd=True)
    c.up()
    try:
        c.wait_ready()
        flags = c.etcdctl_flags()
        for ep in c.etcd_endpoints():
            wait_for(f"the etcd listener at {ep} answers", lambda ep=ep: answers(ep, flags))
        yield c
    finally:
        c.down()


def test_the_session_prints_what_etcd_prints(cluster: LocalCluster, tmp_path: Path) -> None:
    expected = json.loads(FIXTURE.read_text())
    assert [e["args"] for e in expected] == [list(s.args) for s in STEPS], (
        "the session changed: re-record the fixture with record_etcd_session.py"
    )
    flags = cluster.etcdctl_flags()
    assert flags, "the cluster's listeners use TLS with client certificates"
    got = run_session(cluster.etcd_endpoints(), tmp_path, flags=flags)
    for want, have in zip(expected, got, strict=True):
        assert have == want, f"etcdctl {' '.join(want['args'])}"
    # etcdctl's snapshot file is a paxosd backup (padded and hashed as etcdctl checks).
    backup = decode_backup((tmp_path / "snap.db").read_bytes())
    assert backup.header.cluster_id == "local"


def test_the_comparison_sees_a_wrong_revision() -> None:
    """Planted: the normalisation keeps revisions, so an answer one revision off differs."""
    step = next(s for s in STEPS if s.args == ("txn", "-w", "json"))
    expected = json.loads(FIXTURE.read_text())[STEPS.index(step)]["stdout"]
    planted = expected.replace('"revision":6', '"revision":7')
    assert planted != expected
    assert normalise(step, planted) != expected
    assert normalise(step, expected) == expected


def test_every_member_serves_it_and_clients_fail_over(cluster: LocalCluster) -> None:
    """Writes through a follower's listener reach the leader; with one member stopped, a
    client given every endpoint still gets its answers."""
    env = {"ETCDCTL_API": "3"}
    eps = cluster.etcd_endpoints()
    flags = cluster.etcdctl_flags()
    for i, ep in enumerate(eps):
        p = subprocess.run(
            [ETCDCTL, "--endpoints", ep, *flags, "put", f"via{i}", "x"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert (p.returncode, p.stdout) == (0, "OK\n"), p.stderr
    leader = int(cluster.wait_ready()["node_id"])
    follower = next(k for k in cluster.node_ids() if k != leader)
    cluster.stop(follower)
    try:
        p = subprocess.run(
            [
                ETCDCTL,
                "--endpoints",
                ",".join(eps),
                *flags,
                "get",
                "via",
                "--prefix",
                "--keys-only",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["via0", "via1", "via2"]
    finally:
        cluster.start(follower)


def test_tls_wants_a_client_certificate(cluster: LocalCluster) -> None:
    """As etcd with --client-cert-auth: a client without a certificate signed by the cluster
    CA is refused; plain gRPC is refused too."""
    ca = [f for f in cluster.etcdctl_flags() if f.startswith("--cacert")]
    ep = cluster.etcd_endpoints()[0]
    for flags in (ca, []):
        p = subprocess.run(
            [ETCDCTL, "--endpoints", ep, *flags, "--dial-timeout=1s", "get", "k"],
            capture_output=True,
            text=True,
            env={"ETCDCTL_API": "3"},
            timeout=30,
        )
        assert p.returncode != 0 and p.stdout == "", (flags, p.stdout)
    for f in (cluster.root / "keys" / "etcd").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f


def test_the_comparison_sees_a_wrong_lock_revision_or_another_lease() -> None:
    """Planted: the lock step's revision is compared, and only the session's own lease id
    is normalised (a keep-alive answering for another lease would differ)."""
    step = next(s for s in STEPS if s.args[0] == "lock")
    expected = json.loads(FIXTURE.read_text())[STEPS.index(step)]["stdout"]
    assert normalise(step, expected.replace(" 10\n", " 11\n")) != expected
    keep = next(s for s in STEPS if s.args[:3] == ("lease", "keep-alive", "--once"))
    ours = "lease 0000000000000001 keepalived with TTL(60)\n"
    assert normalise(keep, ours, "0000000000000001") == "lease LEASE keepalived with TTL(60)\n"
    assert normalise(keep, ours, "0000000000000002") != "lease LEASE keepalived with TTL(60)\n"
