"""``paxosd inspect``: wiring, output and exit codes (the storage itself is tested elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from paxosd.cli import app
from paxosd.core.io import PersistRecord
from paxosd.core.types import AcceptedEntry, Ballot, DecidedEntry, Snapshot
from paxosd.statemachine.commands import Command, Put, encode_command
from paxosd.statemachine.machine import StateMachine
from paxosd.storage.store import DB_FILENAME, Storage, encode_value


def put(seq: int, key: str, value: bytes) -> bytes:
    return encode_command(Command(client_id="c1", seq=seq, site="s", op=Put(key=key, value=value)))


def make_node(data_dir: Path) -> StateMachine:
    """A node that snapshotted after slot 2 and decided slots 3 and 4 since; returns the
    state machine recovery must rebuild."""
    sm = StateMachine()
    values = [(put(s, f"k{s}", b"v\x1b[2J%d" % s),) for s in range(1, 6)]
    for s in (1, 2):
        sm.apply(s, values[s - 1])
    snapshot = Snapshot(2, sm.snapshot())
    for s in (3, 4):
        sm.apply(s, values[s - 1])
    with Storage.open(data_dir / DB_FILENAME, cluster_id="c", node_id=3, create=True) as storage:
        storage.write(
            PersistRecord(
                promised=Ballot(5, 3),
                accepted=tuple(AcceptedEntry(s, Ballot(5, 3), values[s - 1]) for s in range(1, 6)),
                decided=tuple(DecidedEntry(s, values[s - 1]) for s in range(1, 5)),
                snapshot=snapshot,
            ),
            applied_through=4,
        )
    return sm


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["inspect", *args])
    return result.exit_code, result.stdout, result.stderr


def test_inspect_json_shows_identity_ranges_and_the_replayed_digest(tmp_path: Path) -> None:
    sm = make_node(tmp_path)
    code, out, err = invoke("--data-dir", str(tmp_path), "--json")
    assert (code, err) == (0, "")
    info = json.loads(out)
    assert (info["cluster_id"], info["node_id"]) == ("c", 3)
    assert info["promised"] == {"round": 5, "node": 3}
    assert info["accepted"] == {"first": 1, "last": 5, "count": 5}
    assert info["decided"] == {"first": 1, "last": 4, "count": 4}
    assert (info["snapshot_slot"], info["applied_through"]) == (2, 4)
    assert info["digest"] == sm.digest()
    assert (info["digest_applied_through"], info["replayed"]) == (4, 2)


def test_inspect_text_names_each_field_on_its_own_line(tmp_path: Path) -> None:
    sm = make_node(tmp_path)
    code, out, _ = invoke("--data-dir", str(tmp_path))
    assert code == 0
    assert "promised ballot: 5.3" in out
    assert "decided:         1..4 (4 entries)" in out
    assert f"digest:          {sm.digest()} (through slot 4)" in out


def test_inspect_log_lists_entries_in_the_range_with_escaped_values(tmp_path: Path) -> None:
    make_node(tmp_path)
    code, out, _ = invoke("--data-dir", str(tmp_path), "--log", "--from", "4", "--to", "5")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4  # header, slot 4 decided, slot 4 accepted, slot 5 accepted
    stored_bytes = len(encode_value((put(4, "k4", b"v\x1b[2J4"),)))
    assert lines[1].split()[:5] == ["4", "decided", "-", "1", str(stored_bytes)]
    assert "\x1b" not in out and "\\x1b" in out  # a terminal escape is shown, not obeyed
    code, out, _ = invoke("--data-dir", str(tmp_path), "--log", "--json", "--limit", "2")
    rows = json.loads(out)
    assert [(r["slot"], r["kind"]) for r in rows] == [(1, "decided"), (1, "accepted")]
    assert rows[1]["ballot"] == "5.3" and rows[1]["commands"] == 1


def test_inspect_never_changes_the_data_dir(tmp_path: Path) -> None:
    make_node(tmp_path)
    before = {
        str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()
    }
    for args in ((), ("--json",), ("--log",)):
        assert invoke("--data-dir", str(tmp_path), *args)[0] == 0
    after = {
        str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()
    }
    assert after == before


def test_inspect_of_an_empty_dir_fails_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    code, out, err = invoke("--data-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err == f"paxosd inspect: {tmp_path / DB_FILENAME}: no database file\n"
