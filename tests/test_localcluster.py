"""The local cluster signals only processes it started, and its commands say what happened.

A pid file outlives a crash and the kernel reuses pids, so ``cluster kill 1`` once SIGKILLed an
unrelated process. The pid file now records the process's start time and command line; these
tests point it at a process of ours that is not a node (a ``sleep``) and check that nothing
signals it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paxosctl.app import app
from paxosd.client.client import Client
from paxosd.lab.localcluster import LocalCluster, ProcessIdentity, process_identity

WAIT_S = 20.0


@pytest.fixture
def files(tmp_path: Path) -> LocalCluster:
    """A local cluster's folder (configs, keys, databases) with no node running."""
    return LocalCluster.create(tmp_path / "c", 3, durability="unsafe-no-fsync")


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a node: it must survive every command below."""
    proc = subprocess.Popen(["sleep", "300"])
    # Until it has exec'd, its command line is still this Python's.
    deadline = time.monotonic() + WAIT_S
    while (i := process_identity(proc.pid)) is None or i.cmdline != ("sleep", "300"):
        assert time.monotonic() < deadline, "sleep did not start"
        time.sleep(0.01)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _pid_files(cluster: LocalCluster, proc: subprocess.Popen[bytes]) -> list[str]:
    """Pid files that name ``proc``'s pid but not its identity: each must read "not running"."""
    real = process_identity(proc.pid)
    assert real is not None
    node_cmdline = [sys.executable, "-m", "paxosd", "run", "--config", "n1.toml"]
    return [
        f"{proc.pid}\n",  # an older, bare pid file
        json.dumps(
            {"pid": proc.pid, "start_time": real.start_time + 1, "cmdline": ["sleep", "300"]}
        ),
        json.dumps({"pid": proc.pid, "start_time": real.start_time, "cmdline": node_cmdline}),
        "garbage",
    ]


def _invoke(cluster: LocalCluster, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--dir", str(cluster.root)])
    return result.exit_code, result.stdout, result.stderr


def test_a_pid_file_naming_a_foreign_process_never_gets_it_signalled(
    files: LocalCluster, foreign: subprocess.Popen[bytes]
) -> None:
    pid_file = files.root / "n1.pid"
    for text in _pid_files(files, foreign):
        pid_file.write_text(text)
        assert files.pid(1) is None, text
        assert files.kill(1) is False, text
        assert files.stop(1) is False, text
        assert files.down() == [], text
        code, out, err = _invoke(files, "cluster", "kill", "1")
        assert code == 1 and "node 1 is not running" in err, (text, code, out, err)
        code, out, err = _invoke(files, "cluster", "down")
        assert code == 0 and "stopped 0 running nodes" in out, (text, code, out, err)
        code, out, _ = _invoke(files, "cluster", "ps", "--json")
        assert json.loads(out)["nodes"][0]["pid"] is None
        assert foreign.poll() is None, f"the foreign process was signalled through {text!r}"


def test_the_checker_sees_a_signalled_process(
    files: LocalCluster, foreign: subprocess.Popen[bytes]
) -> None:
    """The planted bug: a pid file that does name the process (as a node's would). The same
    command now kills it, so the survival check above is one that can fail."""
    identity = process_identity(foreign.pid)
    assert identity is not None
    (files.root / "n1.pid").write_text(identity.dump())
    assert files.pid(1) == foreign.pid
    code, _, err = _invoke(files, "cluster", "kill", "1")
    assert code == 0, err
    assert foreign.wait(timeout=WAIT_S) == -9


def test_identity_records_round_trip_and_reject_partial_ones() -> None:
    i = ProcessIdentity(12, 345, ("python", "-m", "paxosd"))
    assert ProcessIdentity.parse(i.dump()) == i
    for text in ("12", "", "{}", '{"pid": 12, "start_time": 3}', "[1, 2]"):
        assert ProcessIdentity.parse(text) is None, text


def test_start_waits_until_the_node_serves_and_kill_of_a_stopped_node_fails(
    files: LocalCluster,
) -> None:
    try:
        code, out, err = _invoke(files, "cluster", "start", "1")
        assert code == 0, err
        assert "running" in out
        # It answered a status query before start returned: no wait needed here.
        with Client([files.endpoints()[0]], files.client_key(), timeout_ms=2000) as c:
            assert c.status().node_id == 1
        code, out, err = _invoke(files, "cluster", "kill", "1")
        assert code == 0 and "killed" in out, err
        assert files.pid(1) is None
        code, out, err = _invoke(files, "cluster", "kill", "1")
        assert code == 1 and err.strip() == "error: node 1 is not running", (out, err)
        code, out, err = _invoke(files, "cluster", "start", "7")
        assert code == 2 and "no node 7" in err, (out, err)
        code, out, err = _invoke(files, "cluster", "start", "2", "--no-wait")
        assert code == 0 and "started" in out, err
        assert files.pid(2) is not None
    finally:
        files.down()
    assert files.pid(1) is None and files.pid(2) is None


def test_a_bare_pid_file_from_before_identities_still_stops_its_node(files: LocalCluster) -> None:
    """Pid files written before identities were recorded hold the pid alone: the process is
    trusted if it runs this node's config (else an upgrade would orphan running nodes). A
    stand-in with that command line shows it; a bare pid of anything else is refused above."""
    argv = [sys.executable, "-c", "import time; time.sleep(300)"]
    argv += ["-m", "paxosd", "run", "--config", str(files.config_path(1))]
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + WAIT_S
        while (i := process_identity(proc.pid)) is None or list(i.cmdline) != argv:
            assert time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.01)
        (files.root / "n1.pid").write_text(f"{proc.pid}\n")
        assert files.pid(1) == proc.pid
        assert files.pid(2) is None  # node 2's pid file is absent
        (files.root / "n2.pid").write_text(f"{proc.pid}\n")  # not node 2's config
        assert files.pid(2) is None
        assert files.kill(1)
        assert proc.wait(timeout=WAIT_S) == -9
    finally:
        proc.kill()
        proc.wait()
