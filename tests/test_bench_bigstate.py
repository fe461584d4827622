"""`paxosctl bench bigstate`: a smoke sitting with tiny state (the report's shape and its
consistency, never its speed).

Snapshots every 20 entries with 5 retained, so that even this short sitting goes through
snapshot cycles and the fourth node must catch up by snapshot transfer, not from the log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CLI_TIMEOUT_S = 300


def _bigstate(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paxosctl", "bench", "bigstate", "--dir", str(tmp), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def sitting(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("bigstate")
    done = _bigstate(
        tmp,
        "--keys", "300",
        "--value-size", "256",
        "--duration", "2",
        "--clients", "8",
        "--snapshot-every-entries", "20",
        "--log-retain-entries", "5",
        "--snapshot-log-percent", "0",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not list(tmp.iterdir()), "the sitting's folder was left behind"
    report: dict[str, Any] = json.loads(done.stdout)
    return report, done.stderr


def test_load_and_run_are_reported_with_the_whole_latency_tail(
    sitting: tuple[dict[str, Any], str],
) -> None:
    r, _ = sitting
    assert r["load"]["keys"] == 300 and r["load"]["puts_per_s"] > 0
    assert (r["snapshot_every_entries"], r["snapshot_log_percent"]) == (20, 0)
    assert r["load"]["errors"] == {} and r["load"]["loaded"] == 300
    assert r["run"]["ops"] > 0 and r["run"]["errors_total"] == 0
    lat = r["run"]["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]


def test_state_memory_and_disk_are_multiples_of_the_store(
    sitting: tuple[dict[str, Any], str],
) -> None:
    r, _ = sitting
    # 300 keys x 256 bytes are in the store (history on top).
    assert r["state"]["data_bytes"] == 300 * (9 + 256)
    assert r["state"]["store_bytes"] >= 300 * 256
    assert sorted(r["nodes"]) == ["n1", "n2", "n3"]
    assert [n["role"] for n in r["nodes"].values()].count("leader") == 1
    for n in r["nodes"].values():
        assert n["rss_peak_mb"] >= n["rss_end_mb"] > 0
        assert n["rss_peak_x"] == pytest.approx(
            n["rss_peak_mb"] * 1e6 / r["state"]["store_bytes"], rel=0.01
        )
        assert n["disk_bytes"] >= n["db_bytes"] > 0
        assert n["snapshots_taken"] >= 2, "every node snapshots every 20 entries"
    assert r["elections"] == max(len(b) for b in r["ballots_seen"].values()) - 1


def test_restart_save_and_transfer_are_timed(sitting: tuple[dict[str, Any], str]) -> None:
    r, stderr = sitting
    rs = r["restart"]
    assert rs["node"] in (1, 2, 3)
    assert r["elections_whole_sitting"] >= r["elections"]
    assert r["ballot_rounds"] >= r["elections"]
    assert 0 < rs["serve_s"] <= rs["caught_up_s"]
    assert "error" not in r["snapshot_save"], r["snapshot_save"]
    assert r["snapshot_save"]["state_bytes"] > 0 and r["snapshot_save"]["mb_per_s"] > 0
    nm = r["new_member"]
    assert nm["node"] == 4 and nm["by_snapshot"], "the log it needed was compacted"
    assert nm["snapshot_bytes"] > 0 and nm["mb_per_s"] > 0
    # Its loop turns while it installed the snapshot (decoded in pieces between them).
    assert nm["install_turns"] >= 1 and 0 < nm["longest_turn_ms"] <= nm["install_seconds"] * 1000
    for phase in ("load:", "run:", "snapshot save:", "restart:", "new member:"):
        assert phase in stderr


def test_bigstate_refuses_an_unknown_restart_signal(tmp_path: Path) -> None:
    done = _bigstate(tmp_path, "--restart-signal", "hup")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "kill or term" in done.stderr
    assert not list(tmp_path.iterdir())


def test_text_report_names_every_figure_and_a_failed_phase(
    sitting: tuple[dict[str, Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    from paxosctl.bench import _print_bigstate

    r, _ = sitting
    _print_bigstate(r)
    text = capsys.readouterr().out
    for word in ("load:", "p99.9", "elections:", "RSS peak", "snapshot save:", "by snapshot"):
        assert word in text
    failed = r | {
        "restart": {"error": "node 2 did not answer"},
        "snapshot_save": {"seconds": 15.0, "error": "exit 3: no node answered", "mb_per_s": None},
    }
    _print_bigstate(failed)
    text = capsys.readouterr().out
    assert "restart: FAILED: node 2 did not answer" in text
    assert "snapshot save: FAILED after 15.0 s" in text
