"""paxosctl lease grant|keep-alive|revoke|ttl|list and put --lease against a real cluster:
plain and JSON output, the streaming keep-alive (one JSON object per line, Ctrl-C exits 0),
and the exit codes (1 lease not found, 2 a TTL that is not one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Cli
from tests.waiting import wait_for


def test_grant_attach_ttl_keep_alive_list_revoke(cli: Cli) -> None:
    granted = cli.json("lease", "grant", "60")
    lease_id = granted["id"]
    assert granted["ttl"] == 60 and set(granted["header"]) == {
        "revision",
        "leader",
        "ballot",
        "node",
    }
    assert "OK (version 1)" in cli.ok("put", "svc/a", "1", "--lease", str(lease_id)).stdout
    assert cli.json("get", "svc/a")["lease"] == lease_id
    info = cli.json("lease", "ttl", str(lease_id), "--keys")
    assert info["granted_ttl"] == 60 and 0 < info["ttl"] <= 60 and info["keys"] == ["svc/a"]
    assert "attached keys(svc/a)" in cli.ok("lease", "ttl", str(lease_id), "--keys").stdout
    once = cli.ok("lease", "keep-alive", str(lease_id), "--once", "--json").stdout
    assert [json.loads(line) for line in once.splitlines()] == [{"id": lease_id, "ttl": 60}]
    assert (
        f"lease {lease_id} keepalived with TTL(60)"
        in cli.ok("lease", "keep-alive", str(lease_id), "--once").stdout
    )
    assert lease_id in cli.json("lease", "list")["leases"]
    revoked = cli.json("lease", "revoke", str(lease_id))
    assert revoked["id"] == lease_id and revoked["deleted"] == 1
    gone = cli.run("get", "svc/a")
    assert gone.exit_code == 1


def test_lease_errors_are_one_line_with_their_exit_codes(cli: Cli) -> None:
    for args in (
        ("lease", "revoke", "424242"),
        ("lease", "ttl", "424242"),
        ("lease", "keep-alive", "424242", "--once"),
        ("put", "svc/b", "1", "--lease", "424242"),
    ):
        result = cli.run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.strip() == "error: lease 424242 not found", result.stderr
    assert cli.run("lease", "grant", "0").exit_code == 2
    lease_id = cli.json("lease", "grant", "60", "--id", "77")["id"]
    assert lease_id == 77
    taken = cli.run("lease", "grant", "60", "--id", "77")
    assert taken.exit_code == 2 and "already exists" in taken.stderr
    cli.ok("lease", "revoke", "77")


def test_streaming_keep_alive_prints_one_json_object_per_line_until_ctrl_c(cli: Cli) -> None:
    # Long enough to outlast paxosctl's start on a loaded machine before its first keep-alive.
    lease_id = cli.json("lease", "grant", "9")["id"]
    env = {**os.environ, "PAXOSD_LOCAL_DIR": str(cli.cluster.root)}
    paxosctl = str(Path(sys.executable).parent / "paxosctl")
    proc = subprocess.Popen(
        [paxosctl, "lease", "keep-alive", str(lease_id), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        lines: list[str] = []

        def two_lines() -> bool:
            # A line per keep-alive (every TTL/3 s); an exited process reads "" and fails.
            lines.append(stdout.readline())
            return len(lines) >= 2

        wait_for("two keep-alives", two_lines)
        assert [json.loads(line) for line in lines] == [{"id": lease_id, "ttl": 9}] * 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert all(json.loads(line) == {"id": lease_id, "ttl": 9} for line in out.splitlines())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    cli.ok("lease", "revoke", str(lease_id))
