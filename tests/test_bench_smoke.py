"""`paxosctl bench`: smoke runs of the kv, storage and transport benches (the shape of their
reports, never their speed), and the latency histogram the kv bench merges across processes.

The CLI runs as a subprocess: the bench configures process-wide logging and starts processes
of its own, neither of which should leak into the test process.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from paxosd.lab.bench import (
    HIST_BUCKETS,
    LATENCY_US_MAX,
    Histogram,
    LoadSpec,
    bucket_bounds,
    bucket_of,
    default_processes,
    run_load,
)
from paxosd.lab.localcluster import LocalCluster, pick_base_port

CLI_TIMEOUT_S = 120


def paxosctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paxosctl", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def paxosctl_json(*args: str) -> dict[str, Any]:
    done = paxosctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


# ------------------------------------------------------------------------------ histogram


def test_every_latency_falls_in_the_bucket_whose_bounds_hold_it() -> None:
    rnd = random.Random(3)
    samples = list(range(5000)) + [rnd.randrange(1, LATENCY_US_MAX) for _ in range(5000)]
    for us in samples + [LATENCY_US_MAX]:
        low, high = bucket_bounds(bucket_of(us))
        assert low <= us < high
        assert high - low <= max(1, low // 128), "a bucket is wider than 1/128 of its value"
    assert bucket_of(LATENCY_US_MAX) == HIST_BUCKETS - 1
    assert bucket_of(LATENCY_US_MAX * 4) == HIST_BUCKETS - 1


def test_histogram_percentiles_match_exact_nearest_rank_within_one_percent() -> None:
    rnd = random.Random(7)
    samples = [int(rnd.lognormvariate(7, 1)) for _ in range(20_000)]
    h = Histogram()
    for us in samples:
        h.record(us)
    ordered = sorted(samples)
    for p in (50, 90, 99, 99.9):
        exact = ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
        assert h.percentile_us(p) == pytest.approx(exact, rel=0.01, abs=1)
    assert h.max_us == ordered[-1]


def test_histograms_merged_over_the_wire_equal_one_histogram_of_all_samples() -> None:
    rnd = random.Random(11)
    parts = [[rnd.randrange(50, 50_000) for _ in range(1000)] for _ in range(3)]
    whole = Histogram()
    merged = Histogram()
    for part in parts:
        h = Histogram()
        for us in part:
            h.record(us)
            whole.record(us)
        merged.merge(Histogram.from_wire(json.loads(json.dumps(h.to_wire()))))
    assert merged.counts == whole.counts
    assert (merged.total, merged.sum_us, merged.max_us) == (3000, whole.sum_us, whole.max_us)


def test_a_histogram_whose_total_disagrees_with_its_buckets_is_refused() -> None:
    h = Histogram()
    h.record(100)
    wire = h.to_wire()
    wire["total"] = 2
    with pytest.raises(ValueError):
        Histogram.from_wire(wire)


def test_load_spec_refuses_an_unknown_op_and_zero_clients() -> None:
    with pytest.raises(ValueError):
        LoadSpec(op="scan")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LoadSpec(clients=0)


def test_generator_processes_grow_with_clients_but_not_past_the_cores() -> None:
    cores = os.cpu_count() or 1
    assert default_processes(1) == 1
    assert default_processes(16) == 1
    assert default_processes(64) == min(4, cores)
    assert default_processes(1024) == cores


# ------------------------------------------------------------------------------ kv bench


@pytest.fixture(scope="module")
def local_report() -> dict[str, Any]:
    # Mixed load over few keys: exercises prefill, puts, linearizable gets, two generator
    # processes (histograms merged across them) and the servers' /proc figures.
    return paxosctl_json(
        "bench",
        "--local",
        "--op",
        "mixed",
        "--read-ratio",
        "0.5",
        "--keys",
        "50",
        "--clients",
        "4",
        "--processes",
        "2",
        "--warmup",
        "1",
        "--duration",
        "3",
    )


def test_local_bench_reports_throughput_latency_errors_and_server_figures(
    local_report: dict[str, Any],
) -> None:
    r = local_report
    assert r["bench"] == "kv"
    assert r["target"]["kind"] == "local" and r["target"]["nodes"] == 3
    assert r["workload"]["op"] == "mixed" and r["workload"]["prefill"] is True
    assert r["ops"] > 0
    assert r["ops_per_s"] == pytest.approx(r["ops"] / 3, rel=0.01)
    lat = r["latency_ms"]
    assert set(lat) == {"p50", "p90", "p99", "p99_9", "max", "mean"}
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert isinstance(r["errors"], dict)
    assert r["errors_total"] == sum(r["errors"].values())
    # Every key was put once before the gets, so no get may miss.
    assert r["get_misses"] == 0
    srv = r["server"]
    assert len(srv["nodes"]) == 3
    assert sum(1 for n in srv["nodes"] if "leader" in n["name"]) == 1
    for n in srv["nodes"]:
        assert n["cpu_s"] is not None and n["cpu_s"] >= 0
        assert n["rss_mb"] > 0 and n["rss_peak_mb"] >= n["rss_mb"]
    assert srv["cpu_s_per_1000_ops"] is not None and srv["cpu_s_per_1000_ops"] > 0
    assert srv["rss_within_limit"] in (True, False)
    g = r["generator"]
    assert g["processes"] == 2 and g["clients_per_process"] == [2, 2]
    assert g["cpu_s"] is not None and g["cpu_s"] > 0
    assert r["machine"]["busy_pct"] is not None


def test_local_bench_text_report_names_every_figure(local_report: dict[str, Any]) -> None:
    from rich.console import Console

    from paxosctl import bench, render

    console = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
    saved = render.stdout
    render.stdout = console
    try:
        bench._print_kv(local_report)
    finally:
        render.stdout = saved
        assert console.file is not None
        console.file.close()
    text = console.export_text()
    for word in ("ops/s", "p50", "p99.9", "errors", "server CPU", "RSS MB", "generator"):
        assert word in text


def test_bench_refuses_an_unknown_op_with_a_usage_error() -> None:
    done = paxosctl("bench", "--local", "--op", "scan", "--duration", "1")
    assert done.returncode == 2
    assert "--op" in done.stderr


# ------------------------------------------------------------------------------ storage, transport


def test_storage_bench_reports_group_commit_ratios_replay_and_both_restarts() -> None:
    r = paxosctl_json(
        "bench",
        "storage",
        "--seconds-per-case",
        "0.1",
        "--batches",
        "1,10",
        "--replay-entries",
        "500",
        "--restart-entries",
        "3000",
        "--snapshot-every",
        "1000",
        "--retain-entries",
        "100",
    )
    assert r["bench"] == "storage"
    cases = {(c["durability"], c["batch"]) for c in r["group_commit"]}
    assert cases == {("fsync", 1), ("fsync", 10), ("unsafe-no-fsync", 1), ("unsafe-no-fsync", 10)}
    for c in r["group_commit"]:
        assert c["storage_records_per_s"] > 0 and c["raw_records_per_s"] > 0 and c["ratio"] > 0
    assert r["replay"]["entries"] == 500 and r["replay"]["entries_per_s"] > 0
    off, on = sorted(r["restart"], key=lambda x: x["snapshots"])
    assert (off["snapshots"], on["snapshots"]) == (False, True)
    assert off["log_entries"] == on["log_entries"] == 3000
    assert off["entries_replayed"] == 3000
    assert on["entries_replayed"] < 1000, "a snapshot must spare replaying the whole log"
    assert on["digest"] == off["digest"], "both restarts rebuild the same state"


def test_transport_bench_reports_frames_round_trips_and_ratios() -> None:
    r = paxosctl_json("bench", "transport", "--seconds", "1")
    assert r["bench"] == "transport"
    for k in (
        "plain_frames_per_s",
        "transport_frames_per_s",
        "throughput_ratio",
        "plain_round_trip_p50_us",
        "transport_round_trip_p50_us",
        "round_trip_p50_ratio",
    ):
        assert r[k] > 0, k
    assert r["transport_frames_dropped"] == 0


def test_thread_per_client_generator_reports_the_same_shape(tmp_path: Path) -> None:
    """The older generator (``LoadSpec(pipelined=False)``: a thread and a Client per client)
    shares the result line with the pipelined one; keep it working."""
    cluster = LocalCluster.create(tmp_path / "c", 3, base_port=pick_base_port(3))
    cluster.up()
    try:
        spec = LoadSpec(
            op="mixed",
            clients=2,
            keys=20,
            prefill=True,
            duration_s=1.5,
            warmup_s=0.3,
            processes=1,
            pipelined=False,
        )
        r = run_load(spec, cluster.endpoints(), cluster.client_key())
    finally:
        cluster.down()
    assert r["ops"] > 0 and r["errors_total"] == 0 and r["get_misses"] == 0
    assert r["generator"]["clients_per_process"] == [2]
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["max"]


# ------------------------------------------------------------------------------ txn and watch


def test_txn_op_compares_then_writes_two_different_keys() -> None:
    from paxosd.lab.bench import make_op
    from paxosd.statemachine.commands import Put, Txn

    rnd = random.Random(1)
    for _ in range(200):
        op, read = make_op(LoadSpec(op="txn", keys=2), rnd, b"v")
        assert isinstance(op, Txn) and not read
        assert len(op.compares) == 1 and op.compares[0].target == "mod"
        keys = [p.key for p in op.success if isinstance(p, Put)]
        assert len(keys) == 2 and keys[0] != keys[1]


def test_local_txn_bench_counts_only_successful_txns() -> None:
    r = paxosctl_json(
        "bench", "--local", "--op", "txn", "--clients", "4", "--warmup", "0.5", "--duration", "2"
    )
    assert r["workload"]["op"] == "txn" and r["workload"]["prefill"] is False
    assert r["ops"] > 0 and r["errors_total"] == 0, r["errors"]


def test_fanout_bench_delivers_every_event_to_every_watcher() -> None:
    # A small shape the machine keeps up with: every event of the window reaches every
    # watcher (the delivered count is of events whose put was acknowledged in the window).
    r = paxosctl_json(
        "bench",
        "fanout",
        "--watchers",
        "20",
        "--connections",
        "2",
        "--rate",
        "50",
        "--warmup",
        "0.5",
        "--duration",
        "2",
    )
    assert r["bench"] == "fanout" and r["target"]["watch_node"].endswith("follower")
    ev = r["events"]
    assert ev["watchers_behind_at_end"] == 0 and ev["receiver_errors"] == []
    assert ev["received_total"] == 20 * r["puts"]["acknowledged"]
    assert ev["delivered_in_window"] > 0 and ev["delivered_in_window"] % 20 == 0
    lat = r["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert r["node"]["rss_mb_after"] > 0 and r["node"]["cpu_s"] is not None


def test_fanout_bench_refuses_more_connections_than_watchers() -> None:
    done = paxosctl("bench", "fanout", "--watchers", "2", "--connections", "3")
    assert done.returncode == 2 and "connections" in done.stderr
