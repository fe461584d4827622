"""The package layout is the architecture: which layer may import which is checked here.

Data flows down (client -> net -> server -> storage / statemachine -> core) and the developer
tooling (lab, sim) sits beside the product, never under it. An import that crosses a boundary
the wrong way is a design change, and this test makes it a visible one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import paxosd

ROOT = Path(paxosd.__file__).parent
LAYERS = (
    "core",
    "statemachine",
    "storage",
    "net",
    "server",
    "client",
    "etcd",
    "tools",
    "sim",
    "lab",
)

# For each layer, the paxosd layers it may import (itself included). Anything else is refused.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "statemachine": {"statemachine", "core"},
    "storage": {"storage", "statemachine", "core"},
    # The client port carries the state machine's vocabulary (watch events) as typed frames.
    "net": {"net", "statemachine", "core"},
    "server": {"server", "storage", "statemachine", "net", "core"},
    "client": {"client", "net", "statemachine", "core"},
    # The etcd front end is a client of the cluster; it reads the node's config (server) and
    # packs a snapshot stream as a backup file (storage).
    "etcd": {"etcd", "client", "net", "statemachine", "core", "server", "storage"},
    "tools": {"tools", "server", "storage", "statemachine", "core"},
    # The simulator drives the server's WatchHub, whose requests and responses are net frames.
    "sim": {"sim", "server", "statemachine", "net", "core"},
    "lab": {
        "lab",
        "etcd",
        "client",
        "tools",
        "server",
        "storage",
        "statemachine",
        "net",
        "core",
        "sim",
    },
}


OURS = ("paxosd", "paxosctl")


def paxosd_imports(path: Path) -> set[str]:
    """Every ``paxosd`` or ``paxosctl`` name a module imports, anywhere in it (lazy ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] in OURS}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in OURS:
                names |= {f"{node.module}.{a.name}" for a in node.names}
            elif node.module.split(".")[0] in OURS:
                names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add("<relative>")
    return names


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "paxosd" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def violations(layer: str, files: list[Path]) -> list[str]:
    found = []
    for f in files:
        shown = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
        for name in sorted(paxosd_imports(f)):
            target = layer_of(name)
            if name == "<relative>":
                found.append(f"{shown}: relative import (write it absolute)")
            elif target is None or target not in ALLOWED[layer]:
                found.append(f"{shown} ({layer}) imports {name}")
    return found


def test_every_module_belongs_to_a_layer() -> None:
    top = {p.name for p in ROOT.glob("*.py")}
    # The package itself (public API), `python -m paxosd` and the `paxosd` command's dispatcher.
    assert top == {"__init__.py", "__main__.py", "cli.py"}, sorted(top)
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS), sorted(packages)


def test_each_layer_imports_only_the_layers_below_it() -> None:
    problems: list[str] = []
    for layer in LAYERS:
        files = sorted((ROOT / layer).rglob("*.py"))
        assert files, f"layer {layer} has no modules"
        problems += violations(layer, files)
    assert not problems, "\n".join(problems)


def test_the_product_never_imports_the_command_line_tool() -> None:
    for f in sorted(ROOT.rglob("*.py")):
        assert not any(n.startswith("paxosctl") for n in paxosd_imports(f)), f


def test_the_boundary_check_notices_a_wrong_way_import(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text(
        "import paxosd.lab.drill\n"
        "def later():\n    from paxosd.server import node\n"
        "from paxosd.core.types import Ballot\n"
        "import paxosctl.app\n"
    )
    assert violations("core", [f]) == [
        f"{f} (core) imports paxosctl.app",
        f"{f} (core) imports paxosd.lab.drill",
        f"{f} (core) imports paxosd.server",
    ]
    assert violations("lab", [f]) == [f"{f} (lab) imports paxosctl.app"]
