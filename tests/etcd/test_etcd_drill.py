"""`paxosctl drill --etcd`: half the workers go through the nodes' etcd listeners under the
drill's faults, and their history is judged by the same checks (a planted bug in the etcd
path proves it is: an etcd put recorded as acknowledged without being sent is found)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paxosd.lab.drill import DrillSpec, run_drill

pytest.importorskip("grpc", reason="the etcd extra is not installed: pip install 'paxosd[etcd]'")

FAST_FAULT_GAP_S = (0.3, 0.8)
KINDS = {"put", "range", "txn-mod", "txn-value", "delete"}


def test_short_etcd_drill_with_kill_pause_and_partition_finds_no_violation(
    tmp_path: Path,
) -> None:
    spec = DrillSpec(
        nodes=3,
        duration_s=15,
        clients=4,
        faults=("kill", "pause", "partition"),
        seed=3,
        fault_gap_s=FAST_FAULT_GAP_S,
        etcd=True,
    )
    report = run_drill(spec, parent_dir=tmp_path)
    assert report["violations"] == [], report["violations"]
    assert set(report["faults"]["by_kind"]) == {"kill", "pause", "partition"}
    # This seed's schedule pauses a node together with its listeners (a frozen endpoint).
    pauses = [e["detail"] for e in report["faults"]["events"] if e["kind"] == "pause"]
    assert any("with its etcd listeners" in d for d in pauses), pauses
    assert report["linearizability"]["verdict"] == "ok"
    assert report["log"]["complete"]
    etcd = report["etcd"]
    assert etcd["ops"] > 0 and etcd["ok"] > 0, etcd
    assert etcd["ok"] + etcd["fail"] + etcd["unknown"] == etcd["ops"]
    # Every request kind answered at least once, and both front ends had workers.
    assert {k for k, v in etcd["by_kind"].items() if v.get("ok")} == KINDS, etcd["by_kind"]
    via = sorted(w["via"] for w in etcd["workers"].values())
    assert via == ["etcd", "etcd", "paxosd", "paxosd"]
    assert all(w["ok"] > 0 for w in etcd["workers"].values()), etcd["workers"]


def test_drill_finds_an_etcd_put_acknowledged_without_being_sent(tmp_path: Path) -> None:
    spec = DrillSpec(
        nodes=3, duration_s=4, clients=2, faults=(), seed=2, etcd=True, plant_etcd_phantom_put=5
    )
    report = run_drill(spec, parent_dir=tmp_path)
    violations = report["violations"]
    kinds = {v["kind"] for v in violations}
    assert "lost-write" in kinds and kinds <= {"lost-write", "linearizability"}, violations
    lost = [v["message"] for v in violations if v["kind"] == "lost-write"]
    assert len(lost) == 1 and "through etcd" in lost[0], lost
    assert report["kept"]
