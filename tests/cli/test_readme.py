"""Every ``paxosctl`` line in README.md's ```sh blocks parses, and runs against a test cluster.

The README is what a new user types first, so a command line there that no longer parses (a
renamed option, a moved global option) must fail a test. Each line is parsed by the real
command tree without running it; then the blocks run in README order against this module's
local cluster, which stands in for the README's hosts (their endpoints and key file are
substituted). Lines that cannot run here are parsed only; RUN_SKIPS says which and why.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from paxosctl.app import RootGroup, command
from tests.cli.conftest import CONVERGE_TIMEOUT_S, Cli

README = Path(__file__).resolve().parents[2] / "README.md"

# The README's example hosts and files -> this test's cluster (filled in by the test).
HOSTS = "10.0.0.1:7201,10.0.0.2:7202,10.0.0.3:7203"
KEY_FILE = "cluster/keys/client.key"

# Lines that are parsed but not run, each with the reason. Matched on the line's start.
RUN_SKIPS: dict[str, str] = {
    "paxosctl --install-completion": "changes the user's shell configuration",
    "paxosctl member add 4 10.0.0.4:7104": "needs a fourth host to catch up",
    "paxosctl member remove 1": "shrinks the cluster the later README blocks run on",
    "paxosctl drill": "each starts its own cluster for minutes; tests/test_drill.py runs drills",
    "paxosctl watch": "waits for changes; tests/test_watch_cluster.py runs watches",
    "paxosctl lock backups --ttl 10": "holds the lock until Ctrl-C (test_cli_recipes runs it)",
    "paxosctl elect": "campaigns or observes until Ctrl-C (test_cli_recipes runs it)",
    "paxosctl cluster up --etcd": "a second local cluster; tests/etcd/test_etcdctl.py starts one",
}
# Long runs made short; the line is otherwise run as written.
SHORTER = {"--seeds 2000": "--seeds 3", "seq 20000": "seq 200"}


@dataclass(frozen=True)
class Line:
    block: int
    text: str  # one command (a `&&` chain is split), comments and redirections removed

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)[1:]


def sh_blocks(text: str) -> list[str]:
    """The body of every ```sh block, indented ones (inside lists) included, dedented."""
    out = []
    for m in re.finditer(r"^([ \t]*)```sh\n(.*?)^\1```", text, flags=re.MULTILINE | re.DOTALL):
        indent = m.group(1)
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in m.group(2).split("\n")]
        out.append("\n".join(body))
    return out


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, `&&` chains split, comments and
    `> file` redirections removed; a pipeline stays one command (`a | paxosctl batch -`)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    result = []
    for raw in joined.splitlines():
        words = shlex.split(raw, comments=True)
        if ">" in words:
            words = words[: words.index(">")]
        part: list[str] = []
        for w in [*words, "&&"]:
            if w == "&&":
                if part:
                    result.append(" | ".join(shlex.join(seg) for seg in split_pipe(part)))
                part = []
            else:
                part.append(w)
    return result


def split_pipe(words: list[str]) -> list[list[str]]:
    segments: list[list[str]] = [[]]
    for w in words:
        if w == "|":
            segments.append([])
        else:
            segments[-1].append(w)
    return segments


def readme_lines() -> list[Line]:
    return [
        Line(i, c)
        for i, block in enumerate(sh_blocks(README.read_text()))
        for c in commands(block)
        if c.startswith(("paxosctl ", "export ")) or " | paxosctl " in c
    ]


# Every paxosctl command, the ones at the end of a pipeline included (parsed alone).
PAXOSCTL_LINES = [
    Line(ln.block, seg)
    for ln in readme_lines()
    for seg in ln.text.split(" | ")
    if seg.startswith("paxosctl ")
]


def test_the_readme_has_paxosctl_lines() -> None:
    # Guards the extraction: the quick start, "Using paxosctl" and step 7 (the indented block
    # with global options first and a continuation line) are all found.
    texts = [ln.text for ln in PAXOSCTL_LINES]
    assert "paxosctl put greeting hello --site paris" in texts
    assert any(t.startswith("paxosctl --endpoints") and t.endswith("status") for t in texts)
    assert "paxosctl batch -" in texts  # the end of a pipeline
    assert len(texts) > 30


def parse(root: RootGroup, argv: list[str]) -> None:
    """Parse a command line down to its command without running anything."""
    ctx = root.make_context("paxosctl", list(argv))
    cmd = root
    while ctx._protected_args or (ctx.args and getattr(cmd, "commands", None)):
        name, sub, rest = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub  # type: ignore[assignment]


@pytest.mark.parametrize("line", PAXOSCTL_LINES, ids=lambda ln: ln.text[:60])
def test_every_readme_paxosctl_line_parses(line: Line) -> None:
    if line.text.startswith("paxosctl --install-completion"):
        # An eager option that installs on parse: check it is still offered instead.
        assert "--install-completion" in {o for p in command().params for o in p.opts}
        return
    parse(command(), line.argv)


def test_the_parse_check_fails_on_a_bad_line() -> None:
    # The planted case: a renamed option must not parse.
    with pytest.raises(Exception, match="No such option"):
        parse(command(), ["get", "greeting", "--no-such-option"])


def skip_reason(text: str) -> str | None:
    return next((why for start, why in RUN_SKIPS.items() if text.startswith(start)), None)


def test_readme_blocks_run_against_a_local_cluster(cli: Cli, tmp_path: Path) -> None:
    endpoints = ",".join(cli.cluster.endpoint_strings())
    key_file = str(cli.cluster.root / "keys" / "client.key")
    env: dict[str, str] = {}
    ran = 0
    for line in readme_lines():
        text = line.text.replace(HOSTS, endpoints).replace(KEY_FILE, key_file)
        for long, short in SHORTER.items():
            text = text.replace(long, short)
        text = text.replace("backup.pxb", str(tmp_path / "backup.pxb"))
        if text.startswith("export "):
            name, _, value = text.removeprefix("export ").partition("=")
            env[name] = value
            continue
        if skip_reason(text) is not None:
            continue
        if " | " in text:
            # A pipeline runs in a shell, with this venv's paxosctl first on $PATH.
            bin_dir = str(Path(sys.executable).parent)
            shell_env = {**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
            done = subprocess.run(
                ["bash", "-c", text], env=shell_env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, (line.text, done.returncode, done.stderr[-2000:])
            ran += 1
            continue
        argv = shlex.split(text)[1:]
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while True:
            result = cli.runner.invoke(cli_app(), argv, env=env)
            # status exits non-zero while a restarted node is still catching up: wait for it.
            if result.exit_code == 0 or argv[-1] != "status" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.exit_code == 0, (line.text, result.exit_code, result.output)
        ran += 1
        if argv[:2] == ["cluster", "down"]:
            # The README's next block assumes a running cluster again.
            cli.cluster.up()
    assert ran >= 25


def cli_app() -> object:
    from paxosctl.app import app

    return app
