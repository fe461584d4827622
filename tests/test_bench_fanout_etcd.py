"""`paxosctl bench fanout` and `paxosctl bench --compare-etcd --op txn` against etcd: the skip
path (one line, exit 3, nothing started) when etcd or etcd-fanout cannot be had, and, where
both are on the machine, a tiny sitting that reports both systems (the shape of the report,
never a speed: that is for BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from paxosd.lab import bench_fanout_etcd


def paxosctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paxosctl", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=os.environ | env,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("bench", "fanout", "--compare-etcd", "--duration", "1"),
        ("bench", "--compare-etcd", "--op", "txn", "--duration", "1"),
    ],
)
@pytest.mark.parametrize(
    "env, says",
    [
        ({"ETCD_BIN": "/nonexistent/etcd"}, "ETCD_BIN"),
        ({"ETCD_BIN": "/bin/true", "ETCD_FANOUT": "/nonexistent/etcd-fanout"}, "ETCD_FANOUT"),
    ],
)
def test_without_etcd_or_its_generator_the_comparison_is_skipped_with_exit_3(
    args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    done = paxosctl(*args, "--json", env=env)
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "etcd comparison skipped" in lines[0] and says in lines[0]


def _etcd_and_fanout() -> bool:
    named = os.environ.get(bench_fanout_etcd.FANOUT_ENV)
    tool = named or str(bench_fanout_etcd.FANOUT_DEFAULT)
    return shutil.which("etcd") is not None and os.access(tool, os.X_OK)


def _json(*args: str) -> dict[str, Any]:
    done = paxosctl(*args, "--json", env={})
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.skipif(not _etcd_and_fanout(), reason="needs etcd and a built etcd-fanout")
def test_a_tiny_fanout_sitting_reports_both_systems() -> None:
    r = _json(
        "bench", "fanout", "--watchers", "10", "--connections", "2", "--rate", "20",
        "--duration", "1", "--warmup", "0.5", "--rounds", "1", "--compare-etcd",
    )  # fmt: skip
    assert r["bench"] == "compare-etcd-watch" and set(r["rounds"]) == {"paxosd", "etcd"}
    for rows in r["rounds"].values():
        assert len(rows) == 1 and rows[0]["delivered_per_s"] > 0, rows
    assert set(r["paxosd_over_etcd"]) == {"delivered_per_s", "p50_ms", "p99_ms", "rss_mb_after"}


@pytest.mark.skipif(not _etcd_and_fanout(), reason="needs etcd and a built etcd-fanout")
def test_a_tiny_txn_sitting_reports_both_systems() -> None:
    r = _json(
        "bench", "--compare-etcd", "--op", "txn", "--clients", "2", "--duration", "1",
        "--warmup", "0.2", "--rounds", "1",
    )  # fmt: skip
    assert r["bench"] == "compare-etcd-txn"
    for rows in r["rounds"].values():
        assert len(rows) == 1 and rows[0]["ops_s"] > 0 and rows[0]["errors"] == 0, rows
    assert r["paxosd_over_etcd"] is not None
