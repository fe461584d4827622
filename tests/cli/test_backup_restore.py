"""Backup of a live cluster, restore into a NEW cluster: the same digest at the same applied
index on every node, and the same answers to reads. Real paxosd processes on loopback.

The live cluster is the module's ``cli`` fixture; each new cluster lives in its own folder,
with its own ports and keys, and is stopped when its test ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from paxosd.cli import app as paxosd_app
from paxosd.client.client import statuses_json
from paxosd.lab.localcluster import LocalCluster
from paxosd.storage.backup import BackupError, read_backup
from paxosd.storage.store import DB_FILENAME
from tests.cli.conftest import CONVERGE_TIMEOUT_S, Cli


def converged(cluster: LocalCluster, at_least: int = 0) -> tuple[int, str, list[dict[str, Any]]]:
    """Until every node answers with the same applied index (>= at_least) and digest."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    rows: list[dict[str, Any]] = []
    with cluster.client(timeout_ms=1000) as c:
        while time.monotonic() < deadline:
            rows = statuses_json(c)
            if all("error" not in r for r in rows):
                seen = {(r["applied_index"], r["digest"]) for r in rows}
                if len(seen) == 1 and rows[0]["applied_index"] >= at_least:
                    return rows[0]["applied_index"], rows[0]["digest"], rows
            time.sleep(0.05)
    raise AssertionError(f"cluster did not converge: {rows}")


@contextmanager
def running(cluster: LocalCluster) -> Iterator[LocalCluster]:
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def on(cluster: LocalCluster, *args: str) -> list[str]:
    """paxosctl arguments that talk to ``cluster`` instead of the module's."""
    key = str(cluster.root / "keys" / "client.key")
    return [*args, "--endpoints", ",".join(cluster.endpoint_strings()), "--key-file", key]


def write_some_history(cli: Cli) -> None:
    for i in range(25):
        cli.ok("put", f"bk/{i}", f"value {i}", "--site", "paris" if i % 2 else "tokyo")
    cli.ok("block", "paris", "lima")
    cli.ok("delete", "bk/0")


@pytest.fixture(scope="module")
def saved(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One backup of the live cluster, once it has settled: then every node is at the
    backup's applied index, so the backup can be compared with all of them."""
    write_some_history(cli)
    converged(cli.cluster)
    path = tmp_path_factory.mktemp("backup") / "live.pxb"
    # Small chunks: the state must travel in many requests, as a big one would.
    out: dict[str, Any] = cli.json("snapshot", "save", str(path), "--chunk-bytes", "1024")
    live_index, live_digest, _ = converged(cli.cluster)
    return out | {"live_index": live_index, "live_digest": live_digest}


def test_snapshot_save_writes_the_live_clusters_digest_at_its_applied_index(
    saved: dict[str, Any],
) -> None:
    assert (saved["applied_index"], saved["digest"]) == (saved["live_index"], saved["live_digest"])
    assert saved["chunks"] > 1 and saved["restarts"] == 0
    backup = read_backup(Path(saved["file"]))
    assert backup.header.applied_index == saved["applied_index"]
    assert (backup.sha256, backup.file_bytes) == (saved["sha256"], saved["file_bytes"])


def test_a_backup_restored_into_every_member_of_a_new_cluster_has_the_same_digest_and_data(
    cli: Cli, saved: dict[str, Any], tmp_path: Path
) -> None:
    new = LocalCluster.create(tmp_path / "new", 3, durability="unsafe-no-fsync", databases=False)
    runner = CliRunner()
    for k in (1, 2):
        r = runner.invoke(
            paxosd_app,
            ["restore", saved["file"], "--new-cluster", "--config", str(new.config_path(k))],
        )
        assert r.exit_code == 0, r.output
        assert f"applied index {saved['applied_index']}" in r.stdout
    r = runner.invoke(
        paxosd_app,
        ["restore", saved["file"], "--new-cluster", "--node-id", "3", "--cluster-id", "local"]
        + ["--data-dir", str(new.root / "data" / "n3")],
    )
    assert r.exit_code == 0, r.output
    with running(new):
        index, digest, rows = converged(new)
        assert (index, digest) == (saved["applied_index"], saved["digest"])
        for row in rows:  # each node recovered to it, from its own disk
            assert row["recovery"]["applied_index"] == saved["applied_index"]
            assert row["recovery"]["digest"] == saved["digest"]
            assert row["snapshot_index"] == saved["applied_index"]
        assert cli.json(*on(new, "get", "bk/7"))["value"] == "value 7"
        assert cli.run(*on(new, "get", "bk/0")).exit_code == 1  # deleted before the backup
        assert cli.json(*on(new, "blocks", "--site", "paris")) == cli.json(
            "blocks", "--site", "paris"
        )
        assert cli.json(*on(new, "view", "--as", "lima")) == cli.json("view", "--as", "lima")
        # The new cluster goes on from there: new slots after the restored ones.
        cli.ok(*on(new, "put", "after", "restore"))
        after, _, _ = converged(new, saved["applied_index"] + 1)
        assert after > saved["applied_index"]


def test_a_majority_restored_and_one_empty_member_catches_up_by_snapshot(
    cli: Cli, saved: dict[str, Any], tmp_path: Path
) -> None:
    new = LocalCluster.create(
        tmp_path / "new",
        3,
        durability="unsafe-no-fsync",
        restore=Path(saved["file"]),
        restore_nodes={1, 2},
    )
    with running(new):
        index, digest, rows = converged(new, saved["applied_index"])
        assert (index, digest) == (saved["applied_index"], saved["digest"])
        empty = next(r for r in rows if r["node_id"] == 3)
        assert empty["recovery"]["applied_index"] == 0  # it started with nothing
        assert empty["snapshot_index"] == saved["applied_index"]  # and received the snapshot
        assert cli.json(*on(new, "get", "bk/8"))["value"] == "value 8"


def test_a_damaged_backup_is_refused_by_restore_inspect_and_the_local_cluster(
    saved: dict[str, Any], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.pxb"
    data = bytearray(Path(saved["file"]).read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    runner = CliRunner()
    r = runner.invoke(
        paxosd_app,
        ["restore", str(damaged), "--new-cluster", "--node-id", "1", "--cluster-id", "x"]
        + ["--data-dir", str(tmp_path / "n1")],
    )
    assert r.exit_code == 1
    assert "checksum mismatch" in r.stderr and str(damaged) in r.stderr
    assert not (tmp_path / "n1" / DB_FILENAME).exists()
    r = runner.invoke(paxosd_app, ["inspect", str(damaged)])
    assert r.exit_code == 1 and "checksum mismatch" in r.stderr
    with pytest.raises(BackupError, match="checksum mismatch"):
        LocalCluster.create(tmp_path / "c", 3, restore=damaged)
    assert not (tmp_path / "c").exists()  # checked before anything was written


def test_snapshot_save_from_a_chosen_node_and_the_plain_snapshot_still_work(
    cli: Cli, tmp_path: Path
) -> None:
    out = cli.json("snapshot", "save", str(tmp_path / "n2.pxb"), "--node", "2")
    assert out["node_id"] == 2
    text = cli.ok("snapshot", "save", str(tmp_path / "again.pxb")).stdout
    assert "applied index" in text and "digest" in text
    snaps = cli.json("snapshot", "--node", "2")["snapshots"]
    assert snaps[0]["node_id"] == 2 and snaps[0]["snapshot_index"] >= out["applied_index"]


def test_snapshot_save_to_an_unwritable_place_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    r = cli.run("snapshot", "save", str(tmp_path / "no" / "such" / "dir" / "b.pxb"))
    assert r.exit_code == 2
    assert "cannot write" in r.stderr


def test_the_local_cluster_refuses_to_restore_only_a_minority(
    saved: dict[str, Any], tmp_path: Path
) -> None:
    # Two empty members of three could elect a leader that never saw the backup.
    with pytest.raises(ValueError, match="majority"):
        LocalCluster.create(tmp_path / "m", 3, restore=Path(saved["file"]), restore_nodes={1})
    assert not (tmp_path / "m").exists()
