"""Keep-alive throughput bench (``paxosctl bench --leases``): the smoke path on a small local
cluster (the report's shape and its checks, never its speed), ``KeepAlives`` reporting a
lease the leader lost (the check that ``leases lost`` can fail), and the parsing of the Go
generator's ``RESULT`` line from canned output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from paxosd.client.client import Client
from paxosd.client.keepalives import KeepAlives
from paxosd.lab.bench_leases import LeaseBenchSpec, parse_etcd_result
from paxosd.lab.localcluster import LocalCluster, pick_base_port
from tests.waiting import wait_for

CLI_TIMEOUT_S = 180


def test_local_lease_bench_keeps_every_registration_and_reports_both_runs() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "paxosctl", "bench", "--local", "--op", "put",
            "--clients", "4", "--warmup", "0.3", "--duration", "1.5",
            "--leases", "60", "--lease-ttl", "3", "--keepers", "2", "--json",
        ],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    r: dict[str, Any] = json.loads(done.stdout)  # exactly one JSON document
    assert r["bench"] == "leases" and r["workload"]["leases"] == 60
    for run in (r["without_leases"], r["with_leases"]):
        assert run["ops"] > 0 and run["errors"] == 0
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
        assert run["server_cpu_s"] is not None
    assert r["registrations"]["made"] == 60
    assert r["leases_lost"] == 0 and r["leases_lost_by_keeper"] == {}
    ka = r["keepalives"]
    assert ka["asked_per_s"] == 60.0  # 60 leases every 3/3 s
    assert ka["acked"] >= 60 and ka["failed"] == 0
    assert r["p99_ratio"] is not None and isinstance(r["p99_within_aim"], bool)


def test_leases_flag_goes_with_put_only() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "paxosctl", "bench", "--op", "get", "--leases", "5"],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --leases goes with --op put"


def test_keepalives_report_a_lease_the_leader_lost_and_keep_the_others(tmp_path: Path) -> None:
    """A lease revoked behind the keeper's back is reported lost (the check can fail); the
    others keep being acknowledged."""
    cluster = LocalCluster.create(tmp_path / "c", 3, base_port=pick_base_port(3))
    cluster.up()
    try:
        with Client(cluster.endpoints(), cluster.client_key()) as c:
            ids = [c.lease_grant(3).id for _ in range(5)]
            keeper = KeepAlives(cluster.endpoints(), cluster.client_key(), 3, lanes=2)
            for i in ids:
                keeper.add(i)
            with keeper:
                wait_for("every lease acknowledged once", lambda: keeper.stats.acked >= 5)
                c.lease_revoke(ids[0])
                wait_for("the revoked lease reported lost", lambda: ids[0] in keeper.lost)
                acked = keeper.stats.acked
                wait_for("the others still kept", lambda: keeper.stats.acked >= acked + 8)
            assert list(keeper.lost) == [ids[0]] and keeper.stats.lost == 1
            assert "expired or was revoked" in keeper.lost[ids[0]]
            alive = set(c.leases())
            assert set(ids[1:]) <= alive and ids[0] not in alive
    finally:
        cluster.down()


# ------------------------------------------------------------------------------ etcd's RESULT

CANNED = (
    "some log line\n"
    'RESULT {"leases":10000,"ttl_s":10,"clients":64,"duration_s":8,'
    '"without_leases":{"ops_s":2500.5,"ops":20004,"p50_us":2400,"p99_us":9000,'
    '"p999_us":15000,"errors":0,"server_cpu_s":12.5},'
    '"with_leases":{"ops_s":2400,"ops":19200,"p50_us":2500,"p99_us":9900,'
    '"p999_us":16000,"errors":1,"server_cpu_s":13.5},'
    '"keepalives":{"asked_per_s":3000,"acked_per_s":2990.5,"late":2,"failed":0,'
    '"max_gap_s":3.9},"leases_lost":0,"registrations_s":4.2,"errors":["one"]}\n'
)


def test_etcd_result_line_is_read_into_the_paxosd_report_shape() -> None:
    r = parse_etcd_result(CANNED)
    assert r["leases"] == 10000 and r["lease_ttl_s"] == 10
    assert r["without_leases"]["latency_ms"] == {"p50": 2.4, "p99": 9.0, "p99_9": 15.0}
    assert r["with_leases"]["latency_ms"]["p99"] == 9.9
    assert r["with_leases"]["errors"] == 1 and r["without_leases"]["server_cpu_s"] == 12.5
    assert r["p99_ratio"] == 1.1 and r["ops_s_ratio"] == round(2400 / 2500.5, 3)
    assert r["keepalives"] == {
        "asked_per_s": 3000.0,
        "acked_per_s_during_load": 2990.5,
        "late_during_load": 2,
        "failed_during_load": 0,
        "max_gap_s": 3.9,
    }
    assert r["leases_lost"] == 0 and r["errors"] == ["one"]


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("no result here\n", "0 RESULT lines"),
        (CANNED + CANNED, "2 RESULT lines"),
        ("RESULT {not json\n", "not JSON"),
        ("RESULT [1, 2]\n", "not a JSON object"),
        (CANNED.replace('"leases_lost":0,', ""), "lacks or mangles"),
        (CANNED.replace('"p99_us":9000', '"p99_us":-1'), "lacks or mangles"),
    ],
)
def test_a_bad_etcd_result_is_refused_with_the_reason(output: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_etcd_result(output)


def test_spec_bounds() -> None:
    with pytest.raises(ValueError):
        LeaseBenchSpec(leases=0)
    with pytest.raises(ValueError):
        LeaseBenchSpec(ttl_s=1)


class RecordingPipe:
    """Takes the keeper's submissions without sending them."""

    def __init__(self) -> None:
        self.lanes: list[int] = []

    def submit(self, command: bytes, tag: int, lane: int = 0, *, read: bool = False) -> None:
        self.lanes.append(lane)


def test_keepalives_are_paced_below_the_leaders_per_connection_limit() -> None:
    """However many leases are due at once (after a stall), the keeper sends at most
    KEEPALIVES_PER_SECOND_PER_LANE per connection per second (a tenth of a second's burst),
    the lanes in turn: above the leader's limit it would answer "busy" and the retries could
    keep the connection over it."""
    from paxosd.client.keepalives import KEEPALIVES_PER_SECOND_PER_LANE

    keeper = KeepAlives([("127.0.0.1", 1)], b"k" * 32, 3, lanes=4)
    for i in range(1, 10_001):
        keeper.add(i, alive_since=1000.0)
    keeper._take_added(1000.0)
    pipe = RecordingPipe()
    keeper._send_due(pipe, 1001.0)  # type: ignore[arg-type]  # everything is due
    burst = 4 * KEEPALIVES_PER_SECOND_PER_LANE // 10
    assert len(pipe.lanes) == burst
    keeper._send_due(pipe, 1001.05)  # type: ignore[arg-type]
    assert burst + burst // 2 - 1 <= len(pipe.lanes) <= burst + burst // 2  # float rounding
    per_lane = [pipe.lanes.count(lane) for lane in range(4)]
    assert max(per_lane) - min(per_lane) <= 1
