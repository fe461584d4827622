"""The public Python API: ``from paxosd import Client`` and friends, exported lazily, and the
README's Python section, run as written against a local cluster."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import paxosd
from paxosd.lab.localcluster import LocalCluster
from paxosd.statemachine.commands import Found

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_exported_name_resolves_and_says_what_it_is_for() -> None:
    assert set(paxosd.__all__) == {"__version__", *paxosd._EXPORTS}
    for name in paxosd.__all__:
        value = getattr(paxosd, name)
        if name != "__version__" and name != "Result":  # Result is a Union alias
            assert (value.__doc__ or "").strip(), f"paxosd.{name} has no docstring"
    assert set(paxosd.__all__) <= set(dir(paxosd))
    from paxosd import Client, NotFoundError, Pipeline  # what a user writes

    assert Client.__module__ == "paxosd.client.client"
    assert issubclass(NotFoundError, paxosd.ClientError)
    assert Pipeline.__name__ == "Pipeline"
    with pytest.raises(AttributeError):
        _ = paxosd.NoSuchThing  # type: ignore[attr-defined]


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith(("paxosd.client", "cryptography"))}


def test_importing_the_core_or_the_server_does_not_load_the_client_or_crypto() -> None:
    assert heavy(modules_after("import paxosd")) == set()
    assert heavy(modules_after("import paxosd.core.replica")) == set()
    assert heavy(modules_after("import paxosd.server.config, paxosd.server.node")) == set()
    # The check can fail: the first use of an export does load the client stack.
    assert "paxosd.client.client" in heavy(modules_after("import paxosd; paxosd.Client"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(tmp_path_factory.mktemp("api") / "c", 3)
    try:
        c.up()  # a cluster that never got ready is stopped too: its nodes must not outlive us
        yield c
    finally:
        c.down()


def readme_python() -> str:
    text = README.read_text()
    section = text[text.index("\n## Python\n") :]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python section has no code block"
    return str(blocks[0])


def test_the_readme_python_section_runs_as_written(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAXOSD_LOCAL_DIR", str(cluster.root))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_python(), "README.md:python", "exec"), {})  # noqa: S102
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Written(version=1, revision=")
    assert lines[1] == "mismatch at version 1"
    assert lines[2] == "[('greeting', b'hi')]"
    assert lines[3] == "greeting is gone"
    assert lines[4].startswith("Written(version=")
    assert lines[5] == "b'v1'"
    assert lines[6] == "True True"
    assert lines[7].startswith("compacted; the oldest readable revision is ")
    with cluster.client() as c:
        counter = c.get("counter")
        assert isinstance(counter, Found) and (counter.value, counter.version) == (b"1", 1)


def readme_registry_example() -> str:
    """The Python section's block with the registry, the watch and the lock."""
    text = README.read_text()
    start = text.index("\n## Python\n")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if ".lock(" in b]
    assert len(blocks) == 1, "the README's Python section has no (or two) lock examples"
    return str(blocks[0])


def test_the_readme_registry_watch_and_lock_example_runs_as_written(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAXOSD_LOCAL_DIR", str(cluster.root))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compile(readme_registry_example(), "README.md:python-registry", "exec")
        exec(code, {})  # noqa: S102
    lines = out.getvalue().splitlines()
    assert lines[0] == "PUT services/api/node-a 10.0.0.1:8080"
    assert re.fullmatch(r"fenced write: True with token \d+", lines[1]), lines
    with cluster.client() as c:
        last = c.get("reports/nightly")
        assert isinstance(last, Found) and last.value == b"node-a"
        # The lease was revoked when its block ended: the registration and the lock are gone.
        assert c.scan("services/").rows == ()  # type: ignore[union-attr]
        assert c.scan("jobs/nightly/").rows == ()  # type: ignore[union-attr]
