"""paxosctl's data and admin commands load only what they need.

``paxosctl get k`` runs in shell loops, so its start-up is most of its cost: it must not import
the simulator, the drills, the benchmarks, the local-cluster manager, storage, the server,
SQLite, rich.progress or structlog. Each check runs the real dispatch in a fresh interpreter
(``paxosctl.app.main`` with that command line) and reads ``sys.modules`` afterwards. Speed
itself is measured by ``paxosctl bench cli``, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paxosctl.app import LAZY, app, command, walk

BANNED = (
    "paxosd.sim",
    "paxosd.lab",
    "paxosd.storage",
    "paxosd.server",
    "sqlite_utils",
    "sqlite3",
    "rich.progress",
    "structlog",
    # typer would import it to convert option values; paxosctl.fastparams converts plain ones.
    "pydantic",
)

# Runs paxosctl's main() on argv, then prints as its last stdout line (JSON) the
# banned modules that were imported. stdin is empty, so `batch -` reads no lines.
HARNESS = """
import json, sys
banned = tuple(sys.argv[1].split(","))
sys.argv = ["paxosctl", *sys.argv[2:]]
from paxosctl.app import main
try:
    main()
except SystemExit:
    pass
loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned))
sys.stdout.write("\\n" + json.dumps(loaded) + "\\n")
"""

LIGHT = [
    "get",
    "put",
    "delete",
    "cas",
    "scan",
    "view",
    "blocks",
    "view_log",
    "status",
    "batch",
    "watch",
]
# Real arguments for a run that goes through the client and fails fast (nothing listens).
RUN_ARGS = {
    "get": ["k"],
    "put": ["k", "v"],
    "delete": ["k"],
    "cas": ["k", "v", "--expect-version", "0"],
    "scan": [],
    "view": [],
    "blocks": [],
    "view_log": [],
    "status": [],
    "batch": ["-"],
    "watch": ["k"],
}


def loaded_modules(args: list[str], banned: tuple[str, ...] = BANNED) -> list[str]:
    env = {"PATH": "/usr/bin:/bin", "PAXOSD_LOCAL_DIR": "/nonexistent-paxosd-dir"}
    out = subprocess.run(
        [sys.executable, "-c", HARNESS, ",".join(banned), *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=True,
    ).stdout
    result: list[str] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "client.key"
    path.write_text("ab" * 32)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("name", LIGHT)
def test_help_of_a_light_command_loads_nothing_heavy(name: str) -> None:
    assert loaded_modules([name, "--help"]) == []


@pytest.mark.parametrize("name", LIGHT)
def test_running_a_light_command_loads_nothing_heavy(name: str, key_file: Path) -> None:
    # Port 1 refuses at once; the command goes through connect, the client and the error path.
    args = [name, *RUN_ARGS[name], "--endpoints", "127.0.0.1:1", "--key-file", str(key_file)]
    # Nor rich: a line of text or an error line is written without it (tables and --help
    # use it).
    assert loaded_modules([*args, "--timeout-ms", "100"], (*BANNED, "rich")) == []


def test_the_root_help_loads_nothing_heavy() -> None:
    assert loaded_modules(["--help"]) == []


def test_the_check_sees_a_heavy_import() -> None:
    # The planted case: simulate really needs the simulator, so the same check must report it
    # (if it reported nothing here, the tests above would prove nothing).
    loaded = loaded_modules(["simulate", "--help"])
    assert "paxosd.sim" in loaded
    assert "rich.progress" in loaded


def test_lazy_summaries_match_the_groups_own_help() -> None:
    root = command()
    for name, lazy in LAZY.items():
        real = root.commands[name]
        first = (real.help or "").strip().split("\n\n")[0].replace("\n", " ")
        assert first == lazy.summary, name


@pytest.mark.parametrize("name", sorted(LAZY))
def test_a_lazy_group_help_works_in_a_new_process(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "paxosctl", name, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    assert LAZY[name].summary.split(":")[0] in " ".join(result.stdout.split())


def test_every_command_help_works() -> None:
    # One fresh root per call, as in a real process: the lazy groups resolve on demand.
    runner = CliRunner()
    paths = [path for path, _ in walk(command())]
    assert len(paths) > 30
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output, path
