"""The command reference (docs/COMMANDS.md) and the commands' own help stay in sync with the
commands that are really registered: every command (walked from the typer/click tree) has a
section with an example, and its --help shows an example. A command added without docs, or
docs left for a removed command, fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from paxosctl import render
from paxosctl.app import app, command

DOCS = Path(__file__).resolve().parent.parent / "docs" / "COMMANDS.md"
runner = CliRunner()


def command_paths(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and group below the root, hidden aliases included (they are commands a
    user can type, so they need documenting too)."""
    subcommands = getattr(cmd, "commands", None)
    if path:
        yield path
    if subcommands:
        for name, sub in subcommands.items():
            yield from command_paths(sub, (*path, name))


# Every group loaded: the root imports some groups only when they run (paxosctl.app.LAZY).
COMMANDS = sorted(command_paths(command()))


def sections() -> dict[str, str]:
    """``### `paxosctl X` `` heading -> the text up to the next heading."""
    out: dict[str, str] = {}
    parts = re.split(r"^#{2,3} ", DOCS.read_text(), flags=re.MULTILINE)
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        m = re.fullmatch(r"`paxosctl ([^`]+)`", heading.strip())
        if m:
            out[m.group(1)] = body
    return out


def code_lines(text: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines()]


def test_the_command_tree_is_walked() -> None:
    # Guards the walk itself: if it found nothing, every other test here would pass vacuously.
    names = {" ".join(p) for p in COMMANDS}
    assert {"put", "get", "view_log", "view-log", "status", "cluster up"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_is_documented_with_an_example(path: tuple[str, ...]) -> None:
    name = " ".join(path)
    body = sections().get(name)
    assert body is not None, f"docs/COMMANDS.md has no section '### `paxosctl {name}`'"
    examples = [
        line
        for line in code_lines(body)
        if line == f"paxosctl {name}" or line.startswith(f"paxosctl {name} ")
    ]
    assert examples, f"the section of paxosctl {name} has no example starting with its name"


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_help_shows_an_example(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_the_docs_describe_no_command_that_does_not_exist() -> None:
    assert set(sections()) <= {" ".join(p) for p in COMMANDS}


def test_root_help_documents_exit_codes_and_completion() -> None:
    out = runner.invoke(app, ["--help"]).output
    assert "Exit codes" in out
    for code in (render.EXIT_OK, render.EXIT_USAGE, render.EXIT_UNAVAILABLE, render.EXIT_AUTH):
        assert f"{code} " in out
    assert "--install-completion" in out and "--show-completion" in out


def test_the_docs_exit_code_table_matches_the_code() -> None:
    table = dict(re.findall(r"^\| (\d) \| (.+?) \|$", DOCS.read_text(), flags=re.MULTILINE))
    assert set(table) == {"0", "1", "2", "3", "4"}
    assert "CAS mismatch" in table[str(render.EXIT_FAILED_CHECK)]
    assert "Usage" in table[str(render.EXIT_USAGE)]
    assert "no quorum" in table[str(render.EXIT_UNAVAILABLE)]
    assert "Authentication" in table[str(render.EXIT_AUTH)]
