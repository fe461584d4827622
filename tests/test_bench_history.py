"""The history bench (``paxosctl bench history``) measures what it says, against a reference
machine loaded from another machine.py. It asserts figures exist and relate sensibly, never
speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from paxosd.lab.bench_history import run

ROOT = Path(__file__).resolve().parent.parent
MACHINE = ROOT / "paxosd" / "statemachine" / "machine.py"


def test_the_report_has_every_figure_and_compaction_frees_memory() -> None:
    # This machine as its own reference: the ratio is defined and the loader is exercised.
    r = run(puts=640, keys=8, value_bytes=200, rounds=1, reference=MACHINE, timeline_max=1)
    for k in ("this", "reference", "this_compacted"):
        assert r[f"{k}_bytes_per_put"] > 0 and r[f"{k}_snapshot_bytes"] > 0, k
    assert r["this_puts_per_s"] > 0 and r["throughput_ratio"] > 0
    # 640 puts over 8 keys: history keeps ~632 superseded 200-byte values, compaction drops them.
    assert r["this_compacted_bytes_per_put"] < r["this_bytes_per_put"] - 150
    assert r["this_compacted_snapshot_bytes"] < r["this_snapshot_bytes"] - 150 * 600


def test_the_cli_prints_one_json_document_and_refuses_a_bad_reference(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "paxosctl", "bench", "history", "--puts", "200", "--rounds", "1"]
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["bench"] == "history" and report["puts"] == 200
    bad = tmp_path / "machine.py"
    bad.write_text("this is not python\n")
    done = subprocess.run(
        [*cmd, "--reference", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "reference" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("missing", ["nope.py"])
def test_a_missing_reference_is_a_usage_error(tmp_path: Path, missing: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "paxosctl",
            "bench",
            "history",
            "--reference",
            str(tmp_path / missing),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
