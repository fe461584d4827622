"""`paxosctl bench --compare-etcd` without Go or etcd: the parsing of etcd-go's RESULT line (a
canned line in its exact format), the ratios of a sitting, and the skip path (nothing
started, one line on stderr, exit code 3) when etcd or its generator cannot be had.

The real comparison needs etcd 3.4 and a Go toolchain; it is a benchmark, run by hand
(BENCHMARKS.md), never asserted on speed here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from paxosd.lab import bench_etcd
from paxosd.lab.bench import LoadSpec
from paxosd.lab.bench_etcd import (
    EtcdUnavailable,
    _compare_report,
    etcd_summary,
    find_etcd,
    find_etcd_go,
    parse_results,
)

# What etcd-go-load prints for one run (main.go: a human line, a cpu line, then RESULT with
# json.Marshal's sorted keys), figures from a real 64-client put run.
CANNED = """\
etcd-go grpc put clients=64 conns=64 run 1: 11690 ops/s  p50=5.10ms p90=7.31ms p99=11.87ms  errors=0  [http://127.0.0.1:30100]
   cpu: map[ncpu:2 procs_cores:map[etcd-e1:0.56 etcd-e2:0.63 etcd-e3:0.63 loadgen(self):0.33]]
RESULT {"bench":"etcd-go","clients":64,"conns":64,"consistency":"l","cpu":{"machine_busy_pct":99.5,"ncpu":2,"procs_cores":{"etcd-e1":0.56,"etcd-e2":0.63,"etcd-e3":0.63,"loadgen(self)":0.33},"procs_cpu_s":{"etcd-e1":4.48,"etcd-e2":5.04,"etcd-e3":5.04,"loadgen(self)":2.64},"steal_pct":0,"wall_s":8},"duration":8,"endpoints":["http://127.0.0.1:30100"],"errors":0,"keys":10000,"label":"","max_us":40211.3,"mean_us":5466.2,"misses":0,"n":93520,"op":"put","ops_s":11690,"p50_us":5101.2,"p90_us":7310.4,"p99_us":11870.9,"proto":"grpc","run":1,"seed":1,"ts":"2026-12-06T15:02:11+0000","value_size":100,"variant":"put c=64 conns=64 grpc"}
"""  # noqa: E501 (lines exactly as etcd-go prints them)


def test_the_canned_result_line_is_read_with_its_figures() -> None:
    records = parse_results(CANNED)
    assert len(records) == 1
    s = etcd_summary(records[0], leader="e2")
    assert s["ops_per_s"] == 11690.0
    assert s["ops"] == 93520
    assert s["latency_ms"] == {"p50": 5.101, "p90": 7.31, "p99": 11.871, "max": 40.211}
    assert s["errors_total"] == 0
    # (4.48 + 5.04 + 5.04) s of the three members over 93,520 replies
    assert s["server_cpu_us_per_op"] == pytest.approx(155.7, abs=0.05)
    assert s["leader_cpu_us_per_op"] == pytest.approx(53.9, abs=0.05)
    assert s["generator_cores"] == 0.33
    # 1.99 busy cores minus (4.48 + 5.04 * 2 + 2.64) / 8 of ours
    assert s["other_cores"] == pytest.approx(1.99 - 17.2 / 8, abs=0.01)


def test_every_result_line_of_several_runs_is_kept_in_order() -> None:
    line = CANNED.splitlines()[-1]
    two = "\n".join(
        [
            "prefill: 10000 keys in 1.2s (0 errors)",
            line,
            "noise",
            line.replace('"run":1', '"run":2'),
        ]
    )
    assert [r["run"] for r in parse_results(two)] == [1, 2]
    assert parse_results("etcd-go: no runs\n") == []


@pytest.mark.parametrize(
    "bad",
    [
        "RESULT {not json",
        "RESULT [1, 2]",
        'RESULT {"bench": "etcd-go", "ops_s": 1, "n": 1, "errors": 0}',  # no cpu
    ],
)
def test_a_malformed_result_line_is_refused_not_skipped(bad: str) -> None:
    # The checker's planted bug: a line that is not a whole etcd-go record must not pass.
    with pytest.raises(ValueError, match="RESULT"):
        parse_results(CANNED + bad + "\n")


def _run(system: str, r: int, ops: float, p50: float, cpu: float | None) -> dict[str, Any]:
    return {
        "round": r,
        "system": system,
        "loadavg_before": "1.00 1.00 1.00",
        "ops_per_s": ops,
        "latency_ms": {"p50": p50, "p90": p50, "p99": 2 * p50, "max": 3 * p50},
        "errors_total": 0,
        "server_cpu_us_per_op": cpu,
    }


def test_the_sitting_quotes_ratios_of_medians_and_of_each_pair() -> None:
    runs = [
        _run("paxosd", 1, 1200, 0.5, 100),
        _run("etcd", 1, 1000, 1.0, 200),
        _run("etcd", 2, 800, 1.2, 160),
        _run("paxosd", 2, 1400, 0.7, None),
        _run("paxosd", 3, 1300, 0.6, 120),
        _run("etcd", 3, 1300, 1.1, 180),
    ]
    spec = LoadSpec(op="put", clients=64)
    rep = _compare_report(spec, runs, 3, 64, "3.4.23", Path("/x"), "now", "1 1 1")
    assert rep["summary"]["paxosd"]["ops_per_s_median"] == 1300
    assert rep["summary"]["etcd"]["ops_per_s_median"] == 1000
    assert rep["ratio"]["ops_per_s"] == 1.3
    assert rep["ratio"]["ops_per_s_pairs"] == [1.2, 1.75, 1.0]
    assert rep["ratio"]["p50"] == 0.55
    # A run whose CPU was not measured is left out of the median, not counted as zero.
    assert rep["summary"]["paxosd"]["server_cpu_us_per_op_median"] == 110
    assert rep["ratio"]["server_cpu_per_op"] == pytest.approx(110 / 180, abs=0.005)


# ------------------------------------------------------------------------------ skip path


def test_a_missing_etcd_is_reported_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_BIN", "/nonexistent/etcd")
    with pytest.raises(EtcdUnavailable, match="ETCD_BIN"):
        find_etcd()
    monkeypatch.delenv("ETCD_BIN")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EtcdUnavailable, match="etcd-server"):
        find_etcd()


def test_no_generator_and_no_source_to_build_it_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ETCD_GO_LOAD", raising=False)
    monkeypatch.setattr(bench_etcd, "ETCD_GO_DEFAULT", tmp_path / "etcd-go-load")
    monkeypatch.setenv("ETCD_GO_SRC", str(tmp_path / "no-such-dir"))
    with pytest.raises(EtcdUnavailable, match="build.sh"):
        find_etcd_go()
    monkeypatch.setenv("ETCD_GO_LOAD", str(tmp_path / "named-but-missing"))
    with pytest.raises(EtcdUnavailable, match="ETCD_GO_LOAD"):
        find_etcd_go()


def test_a_build_that_fails_is_unavailable_with_its_last_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What build.sh says on a machine without apt rights or Go: the message reaches the user.
    src = tmp_path / "etcd-go"
    src.mkdir()
    (src / "build.sh").write_text(
        "echo checking\necho 'please install: golang-go (as root)'\nexit 1\n"
    )
    monkeypatch.delenv("ETCD_GO_LOAD", raising=False)
    monkeypatch.setattr(bench_etcd, "ETCD_GO_DEFAULT", tmp_path / "bin" / "etcd-go-load")
    monkeypatch.setenv("ETCD_GO_SRC", str(src))
    with pytest.raises(EtcdUnavailable, match="please install: golang-go"):
        find_etcd_go()


def test_a_build_that_succeeds_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = tmp_path / "etcd-go"
    src.mkdir()
    (src / "build.sh").write_text(
        'printf "#!/bin/sh\\n" > "$BIN_DIR/etcd-go-load"\nchmod +x "$BIN_DIR/etcd-go-load"\n'
    )
    (tmp_path / "bin").mkdir()
    monkeypatch.delenv("ETCD_GO_LOAD", raising=False)
    monkeypatch.setattr(bench_etcd, "ETCD_GO_DEFAULT", tmp_path / "bin" / "etcd-go-load")
    monkeypatch.setenv("ETCD_GO_SRC", str(src))
    assert find_etcd_go() == tmp_path / "bin" / "etcd-go-load"


def paxosctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paxosctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ | env,
    )


@pytest.mark.parametrize(
    "env, says",
    [
        ({"ETCD_BIN": "/nonexistent/etcd"}, "ETCD_BIN"),
        ({"ETCD_BIN": "/bin/true", "ETCD_GO_LOAD": "/nonexistent/etcd-go-load"}, "ETCD_GO_LOAD"),
    ],
)
def test_the_cli_skips_with_one_line_and_exit_code_3(env: dict[str, str], says: str) -> None:
    done = paxosctl("bench", "--compare-etcd", "--op", "put", "--duration", "1", "--json", env=env)
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "etcd comparison skipped" in lines[0] and says in lines[0]
    assert "Traceback" not in done.stderr


def test_the_cli_refuses_a_mixed_load_as_a_usage_error() -> None:
    done = paxosctl("bench", "--compare-etcd", "--op", "mixed", env={})
    assert done.returncode == 2, done.stderr
    assert "--op put or --op get" in done.stderr


def _etcd_and_generator() -> bool:
    named = os.environ.get("ETCD_GO_LOAD")
    gen = Path(named) if named else bench_etcd.ETCD_GO_DEFAULT
    return shutil.which("etcd") is not None and os.access(gen, os.X_OK)


@pytest.mark.skipif(not _etcd_and_generator(), reason="needs etcd and a built etcd-go-load")
def test_a_short_sitting_reports_both_systems_and_stops_etcd() -> None:
    # The shape of the report only; the speed is for BENCHMARKS.md. Gets, so the prefill of
    # both sides runs too.
    args = ("bench", "--compare-etcd", "--op", "get", "--clients", "2", "--keys", "50")
    done = paxosctl(*args, "--duration", "1", "--warmup", "0.2", "--rounds", "2", "--json", env={})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(r["round"], r["system"]) for r in report["runs"]] == [
        (1, "paxosd"),
        (1, "etcd"),
        (2, "etcd"),
        (2, "paxosd"),
    ]
    for r in report["runs"]:
        assert r["ops"] > 0 and r["errors_total"] == 0 and r["get_misses"] == 0, r
        assert r["server_cpu_us_per_op"] is not None, r
    assert len(report["ratio"]["ops_per_s_pairs"]) == 2
    assert report["etcd"]["version"].startswith("3.")
    # Every etcd it started is gone (its data dir is under the temporary folder it removed).
    mine = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and "paxosd-bench-etcd-" in _cmdline(int(pid))
    ]
    assert mine == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
