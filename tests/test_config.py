"""Config loading and validation, `paxosd init` and `paxosd check-config`."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import stat
import struct
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from paxosd.server.compaction import CompactionSettings
from paxosd.server.config import (
    Batching,
    ConfigError,
    LimitSettings,
    LogSettings,
    SnapshotSettings,
    Timeouts,
    load_config,
    parse_address,
)
from paxosd.tools.initcluster import InitError, check_config_command, init_cluster, init_command

REPO = Path(__file__).resolve().parent.parent
NO_CREDENTIALS: dict[str, str] = {}


def toml_text(doc: dict[str, Any]) -> str:
    """A tiny TOML writer for the shapes a config has: scalars, then one level of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise AssertionError(v)

    lines = [f"{k} = {value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def write_key(path: Path, data: bytes | None = None, mode: int = 0o600) -> bytes:
    data = secrets.token_bytes(32) if data is None else data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data.hex() + "\n")
    os.chmod(path, mode)
    return data


def base_doc() -> dict[str, Any]:
    return {
        "node_id": 1,
        "cluster_id": "test",
        "data_dir": "data/n1",
        "client_address": "127.0.0.1:7201",
        "peers": {"1": "127.0.0.1:7101", "2": "127.0.0.1:7102", "3": "127.0.0.1:7103"},
    }


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A directory with valid keys at the default locations (keys/peer.key, keys/client.key)."""
    d = tmp_path / "conf"
    write_key(d / "keys" / "peer.key")
    write_key(d / "keys" / "client.key")
    return d


def write_config(conf_dir: Path, doc: dict[str, Any], name: str = "n1.toml") -> Path:
    path = conf_dir / name
    path.write_text(toml_text(doc))
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_CREDENTIALS if env is None else env)
    return [str(p) for p in info.value.problems]


# ---------------------------------------------------------------------------- valid configs


def test_valid_config_loads_with_documented_defaults(conf_dir: Path) -> None:
    config = load_config(write_config(conf_dir, base_doc()), env=NO_CREDENTIALS)
    assert config.node_id == 1
    assert config.members == (1, 2, 3)
    assert str(config.peer_address) == "127.0.0.1:7101"
    assert config.metrics_address is None
    assert config.timeouts == Timeouts()
    assert config.batching == Batching()
    assert config.snapshot == SnapshotSettings()
    assert config.log == LogSettings()
    assert config.durability == "fsync"
    assert config.peer_key.reveal() != config.client_key.reveal()


def test_relative_paths_resolve_against_the_config_files_directory(
    conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(conf_dir, base_doc())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(os.path.relpath(path, elsewhere), env=NO_CREDENTIALS)
    assert config.data_dir == (conf_dir / "data" / "n1")
    assert config.peer_key.source == (conf_dir / "keys" / "peer.key")
    assert config.data_dir.is_absolute()


def test_core_config_carries_the_validated_tunables(conf_dir: Path) -> None:
    doc = base_doc() | {"timeouts": {"heartbeat_interval_ms": 20, "election_timeout_ms_min": 100}}
    core = load_config(write_config(conf_dir, doc), env=NO_CREDENTIALS).core_config()
    assert core.node_id == 1 and core.members == (1, 2, 3)
    assert (core.heartbeat_interval_ms, core.election_timeout_ms_min) == (20, 100)


def test_ipv6_addresses_need_brackets() -> None:
    assert str(parse_address("[::1]:7101")) == "[::1]:7101"
    assert isinstance(parse_address("::1:7101"), str)
    assert isinstance(parse_address("host:0"), str)
    assert isinstance(parse_address("host"), str)


# ------------------------------------------------------------------------- invalid configs

# (change to the base document, dotted key the problem must name, words the problem must say)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"node_id": "1"}, "node_id", "expected an integer, got a string"),
    ({"node_id": 0}, "node_id", "must be between 1"),
    ({"node_id": 9}, "peers", "must contain this node's own entry (node_id = 9)"),
    ({"cluster_id": "has space"}, "cluster_id", "must be 1 to 64 characters"),
    ({"data_dir": ""}, "data_dir", "must not be empty"),
    ({"client_address": "127.0.0.1"}, "client_address", 'expected "host:port"'),
    ({"client_address": "127.0.0.1:7101"}, "client_address", "must differ from this node's peer"),
    ({"metrics_address": "127.0.0.1:7201"}, "metrics_address", "must differ from the peer"),
    ({"durability": "maybe"}, "durability", "must be one of fsync, unsafe-no-fsync"),
    ({"peers": {"1": "127.0.0.1:7101", "2": "127.0.0.1:70000"}}, "peers.2", "port must be"),
    ({"peers": {"1": "127.0.0.1:7101", "two": "127.0.0.1:7102"}}, "peers.two", "node id"),
    ({"peers": {"1": "127.0.0.1:7101", "2": "127.0.0.1:7101"}}, "peers.2", "same address as"),
    ({"peers": {"1": 7101}}, "peers.1", "expected a string"),
    ({"peers": "127.0.0.1:7101"}, "peers", "expected a table"),
    ({"timeouts": {"heartbeat_interval_ms": 1.5}}, "timeouts.heartbeat_interval_ms", "integer"),
    ({"timeouts": {"heartbeat_interval_ms": 400}}, "timeouts.heartbeat_interval_ms", "must be <"),
    ({"timeouts": {"request_timeout_ms": 100}}, "timeouts.request_timeout_ms", "must be >="),
    ({"batching": {"batch_commands_max": 0}}, "batching.batch_commands_max", "between 1 and"),
    ({"batching": {"batch_bytes_max": 4096}}, "batching.batch_bytes_max", "between 1048576"),
    ({"batching": {"slots_in_flight_max": True}}, "batching.slots_in_flight_max", "a boolean"),
    ({"snapshot": {"snapshot_every_entries": -1}}, "snapshot.snapshot_every_entries", "between"),
    ({"log": {"level": "verbose"}}, "log.level", "must be one of debug, info"),
    ({"log": {"format": "xml"}}, "log.format", "must be one of auto, json, console"),
    ({"log": "info"}, "log", "expected a table"),
    ({"peer_key_file": "keys/missing.key"}, "peer_key_file", "does not exist"),
    ({"client_key_file": "keys/peer.key"}, "client_key_file", "must differ from the peer key"),
]


@pytest.mark.parametrize(("change", "key", "words"), INVALID, ids=[k for _, k, _ in INVALID])
def test_every_validation_error_names_the_file_and_the_key(
    conf_dir: Path, change: dict[str, Any], key: str, words: str
) -> None:
    path = write_config(conf_dir, base_doc() | change)
    problems = problems_of(path)
    matching = [p for p in problems if p.startswith(f"{path}: {key}: ")]
    assert matching, problems
    assert any(words in p for p in matching), problems


@pytest.mark.parametrize(
    "missing", ["node_id", "cluster_id", "data_dir", "client_address", "peers"]
)
def test_a_missing_required_key_is_named(conf_dir: Path, missing: str) -> None:
    doc = base_doc()
    del doc[missing]
    path = write_config(conf_dir, doc)
    assert any(p.startswith(f"{path}: {missing}: required") for p in problems_of(path))


def test_election_timeouts_out_of_order_are_reported_with_both_values(conf_dir: Path) -> None:
    doc = base_doc() | {
        "timeouts": {"election_timeout_ms_min": 300, "election_timeout_ms_max": 200}
    }
    path = write_config(conf_dir, doc)
    assert any(
        p.startswith(
            f"{path}: timeouts.election_timeout_ms_min: "
            "must be < election_timeout_ms_max (got 300 >= 200)"
        )
        for p in problems_of(path)
    )


def test_unknown_keys_are_errors_with_a_suggestion(conf_dir: Path) -> None:
    doc = base_doc() | {"durabilty": "fsync", "timeouts": {"heartbeat_intervall_ms": 10}}
    path = write_config(conf_dir, doc)
    problems = problems_of(path)
    assert f"{path}: durabilty: unknown key (did you mean durability?)" in problems
    assert (
        f"{path}: timeouts.heartbeat_intervall_ms: unknown key "
        "(did you mean heartbeat_interval_ms?)" in problems
    )


def test_an_unknown_section_is_an_error(conf_dir: Path) -> None:
    path = write_config(conf_dir, base_doc() | {"peer": {"x": 1}})
    assert any(p.startswith(f"{path}: peer: unknown key") for p in problems_of(path))


def test_all_problems_are_reported_at_once(conf_dir: Path) -> None:
    doc = base_doc() | {"node_id": "x", "durability": "no", "log": {"level": "loud"}}
    problems = problems_of(write_config(conf_dir, doc))
    assert len(problems) == 3, problems


def test_a_value_rejected_for_its_range_does_not_cause_a_second_bogus_ordering_error(
    conf_dir: Path,
) -> None:
    doc = base_doc() | {
        "timeouts": {"election_timeout_ms_min": 1000, "election_timeout_ms_max": 10**9}
    }
    problems = problems_of(write_config(conf_dir, doc))
    assert len(problems) == 1 and "election_timeout_ms_max" in problems[0], problems


def test_invalid_toml_names_the_file(conf_dir: Path) -> None:
    path = conf_dir / "broken.toml"
    path.write_text("node_id = [\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: invalid TOML:")


def test_a_missing_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert problems_of(path) == [f"{path}: cannot read: No such file or directory"]


# ------------------------------------------------------------------------------------ keys


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620], ids=lambda m: f"{m:04o}")
def test_a_key_file_open_to_group_or_others_is_refused_with_its_mode(
    conf_dir: Path, mode: int
) -> None:
    key = conf_dir / "keys" / "peer.key"
    os.chmod(key, mode)
    path = write_config(conf_dir, base_doc())
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: peer_key_file: {key}: mode {mode:04o} is ")
    assert problem.endswith("by group/others; chmod 600 it")


def test_a_read_only_key_file_for_its_owner_is_accepted(conf_dir: Path) -> None:
    os.chmod(conf_dir / "keys" / "client.key", 0o400)
    assert load_config(write_config(conf_dir, base_doc()), env=NO_CREDENTIALS).client_key


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("ab" * 16, "key must be 32 to 512 bytes"),
        ("not hex at all, but long enough to be a key if it were hex " * 2, "hex text"),
        ("00" * 32, "does not look random"),
        ("0102" * 32, "does not look random"),
    ],
)
def test_a_key_that_is_short_not_hex_or_not_random_is_refused(
    conf_dir: Path, content: str, words: str
) -> None:
    key = conf_dir / "keys" / "peer.key"
    key.write_text(content)
    path = write_config(conf_dir, base_doc())
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: peer_key_file: {key}: ")
    assert words in problem


def test_a_refused_key_is_never_echoed_in_the_error(conf_dir: Path) -> None:
    key = conf_dir / "keys" / "peer.key"
    secret = "correct horse battery staple " * 4
    key.write_text(secret)
    problems = problems_of(write_config(conf_dir, base_doc()))
    assert not any("horse" in p for p in problems), problems


def test_a_systemd_credential_wins_over_the_key_file(conf_dir: Path, tmp_path: Path) -> None:
    # The configured file is world-readable: it would be refused, but it is never consulted.
    os.chmod(conf_dir / "keys" / "peer.key", 0o644)
    creds = tmp_path / "creds"
    cred_key = write_key(creds / "peer.key", mode=0o400)
    config = load_config(
        write_config(conf_dir, base_doc()), env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert config.peer_key.reveal() == cred_key
    assert config.peer_key.from_credential
    assert not config.client_key.from_credential  # no client.key credential: the file is used


def give_user_read_acl(path: Path, uid: int) -> bool:
    """What systemd does to a credential: 0400 plus ``user:<uid>:r`` (setfacl, by hand).

    False if this file system has no POSIX ACLs."""
    os.chmod(path, 0o400)
    everyone = 0xFFFFFFFF  # ACL_UNDEFINED_ID
    entries = [(0x01, 4, everyone), (0x02, 4, uid), (0x04, 0, everyone), (0x10, 4, everyone)]
    entries.append((0x20, 0, everyone))
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", blob)
    except OSError:
        return False
    return True


def test_a_credential_shared_with_the_service_user_by_acl_is_accepted(
    conf_dir: Path, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    cred_key = write_key(creds / "peer.key")
    if not give_user_read_acl(creds / "peer.key", uid=65534):
        pytest.skip("no POSIX ACL support on this file system")
    assert mode_of(creds / "peer.key") == 0o440  # the ACL mask shows as the group bits
    config = load_config(
        write_config(conf_dir, base_doc()), env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert config.peer_key.reveal() == cred_key


@pytest.mark.parametrize(
    ("mode", "accepted"),
    [(0o440, True), (0o400, True), (0o444, False)],
    ids=["0440", "0400", "0444"],
)
def test_only_the_others_bits_of_a_credential_are_refused(
    conf_dir: Path, tmp_path: Path, mode: int, accepted: bool
) -> None:
    creds = tmp_path / "creds"
    write_key(creds / "client.key", mode=mode)
    path = write_config(conf_dir, base_doc())
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    if accepted:
        assert load_config(path, env=env).client_key.from_credential
    else:
        (problem,) = problems_of(path, env=env)
        assert f"mode {mode:04o} is readable by group/others" in problem


def test_a_bad_credential_is_reported_under_the_key_it_replaces(
    conf_dir: Path, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    write_key(creds / "client.key", data=bytes(32))
    path = write_config(conf_dir, base_doc())
    (problem,) = problems_of(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert problem.startswith(f"{path}: client_key_file: {creds / 'client.key'}: ")


def test_repr_of_a_config_never_shows_key_bytes(conf_dir: Path) -> None:
    config = load_config(write_config(conf_dir, base_doc()), env=NO_CREDENTIALS)
    for key in (config.peer_key.reveal(), config.client_key.reveal()):
        for text in (repr(config), str(config), json.dumps(config.summary())):
            assert key.hex() not in text
            assert repr(key) not in text


# ------------------------------------------------------------------ the annotated example


def test_the_example_config_validates_and_shows_every_default() -> None:
    example = REPO / "conf" / "paxosd.toml"
    doc = tomllib.loads(example.read_text())
    assert doc["timeouts"] == dataclasses.asdict(Timeouts())
    assert doc["batching"] == dataclasses.asdict(Batching())
    assert doc["snapshot"] == dataclasses.asdict(SnapshotSettings())
    assert doc["log"] == dataclasses.asdict(LogSettings())
    assert doc["limits"] == dataclasses.asdict(LimitSettings())
    assert doc["durability"] == "fsync"
    text = example.read_text()
    assert "# metrics_address = " in text  # optional: documented, off by default


def test_the_example_config_loads_with_keys_from_credentials(tmp_path: Path) -> None:
    write_key(tmp_path / "peer.key")
    write_key(tmp_path / "client.key")
    config = load_config(
        REPO / "conf" / "paxosd.toml", env={"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert config.data_dir == Path("/var/lib/paxosd/n1")
    assert config.peer_key.from_credential and config.client_key.from_credential


# ------------------------------------------------------------------------------ paxosd init


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_configs_that_validate_and_keys_only_the_owner_can_read(
    tmp_path: Path,
) -> None:
    out = tmp_path / "cluster"
    result = init_cluster(out, nodes=3, cluster_id="local-3")
    assert [p.name for p in result.configs] == ["n1.toml", "n2.toml", "n3.toml"]
    assert mode_of(out / "keys") == 0o700
    assert mode_of(result.peer_key) == 0o600 and mode_of(result.client_key) == 0o600
    for k, path in enumerate(result.configs, start=1):
        config = load_config(path, env=NO_CREDENTIALS)
        assert config.node_id == k and config.members == (1, 2, 3)
        assert config.cluster_id == "local-3"
        assert mode_of(config.data_dir) == 0o700
        assert config.peer_key.source == result.peer_key
    ports = {load_config(p, env=NO_CREDENTIALS).client_address.port for p in result.configs} | {
        7101,
        7102,
        7103,
    }
    assert len(ports) == 6  # every listener has its own port


def test_init_refuses_to_overwrite_an_existing_config(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    init_cluster(out, nodes=3)
    before = (out / "n1.toml").read_text(), (out / "keys" / "peer.key").read_text()
    with pytest.raises(InitError, match="refusing to overwrite .*n1.toml.*--force"):
        init_cluster(out, nodes=3, cluster_id="other")
    assert ((out / "n1.toml").read_text(), (out / "keys" / "peer.key").read_text()) == before


def test_init_with_force_replaces_configs_and_keys_but_keeps_data(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    init_cluster(out, nodes=3)
    old_key = (out / "keys" / "peer.key").read_text()
    (out / "data" / "n1" / "precious").write_text("x")
    init_cluster(out, nodes=3, cluster_id="again", force=True)
    assert (out / "keys" / "peer.key").read_text() != old_key
    assert load_config(out / "n2.toml", env=NO_CREDENTIALS).cluster_id == "again"
    assert (out / "data" / "n1" / "precious").read_text() == "x"


def test_init_with_one_host_per_node_and_an_absolute_data_root(tmp_path: Path) -> None:
    out = tmp_path / "etc"
    hosts = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    result = init_cluster(out, nodes=3, hosts=hosts, data_root="/var/lib/paxosd")
    assert result.data_dirs_created == ()  # systemd's StateDirectory= makes them on each host
    config = load_config(out / "n2.toml", env=NO_CREDENTIALS)
    assert str(config.peer_address) == "10.0.0.2:7102"
    assert str(config.client_address) == "10.0.0.2:7202"
    assert config.data_dir == Path("/var/lib/paxosd/n2")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"nodes": 0}, "--nodes must be between 1 and 15"),
        ({"nodes": 3, "hosts": ("a", "b")}, "one --host for all nodes or one per node"),
        ({"nodes": 3, "base_port": 65400}, "--base-port 65400"),
        ({"nodes": 3, "cluster_id": "no spaces"}, "--cluster-id"),
        ({"nodes": 3, "hosts": ("bad host",)}, "--host 'bad host'"),
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(InitError, match=words.replace("(", r"\(")):
        init_cluster(tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------------- the CLI

# The commands as paxosd.cli wires them, without importing the other subcommands' modules.
app = typer.Typer()
app.command("init")(init_command)
app.command("check-config")(check_config_command)


def test_paxosd_cli_registers_init_and_check_config() -> None:
    from paxosd.cli import app as paxosd_app

    result = CliRunner().invoke(paxosd_app, ["--help"])
    assert result.exit_code == 0
    assert "init" in result.output and "check-config" in result.output


def test_cli_init_then_check_config_exit_zero(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "c3"
    result = runner.invoke(app, ["init", "--nodes", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["check-config", str(out / "n1.toml")])
    assert result.exit_code == 0, result.output
    assert f"{out / 'n1.toml'}: OK" in result.output
    key = (out / "keys" / "peer.key").read_text().strip()
    assert key not in result.output
    result = runner.invoke(app, ["check-config", "--json", str(out / "n1.toml")])
    assert result.exit_code == 0
    assert json.loads(result.output)["config"]["node_id"] == 1
    again = runner.invoke(app, ["init", "--nodes", "3", "--out", str(out)])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def test_cli_check_config_prints_every_problem_and_exits_one_without_traceback(
    conf_dir: Path,
) -> None:
    path = write_config(conf_dir, base_doc() | {"node_id": 0, "durability": "x"})
    result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 1
    assert f"{path}: node_id: must be between" in result.output
    assert f"{path}: durability: must be one of" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["check-config", "--json", str(path)])
    assert result.exit_code == 1
    errors = json.loads(result.output)["errors"]
    assert {e["key"] for e in errors} == {"node_id", "durability"}


def test_a_joining_node_is_not_a_bootstrap_voter(conf_dir: Path) -> None:
    doc = base_doc() | {"node_id": 4, "client_address": "127.0.0.1:7204"}
    doc["peers"] = {**doc["peers"], "4": "127.0.0.1:7104"}
    doc["initial_cluster_state"] = "existing"
    config = load_config(write_config(conf_dir, doc, "n4.toml"), env=NO_CREDENTIALS)
    assert config.members == (1, 2, 3)
    assert config.core_config().members == (1, 2, 3)


def test_initial_cluster_state_is_new_or_existing(conf_dir: Path) -> None:
    problems = problems_of(write_config(conf_dir, base_doc() | {"initial_cluster_state": "old"}))
    assert any("initial_cluster_state" in p and "new, existing" in p for p in problems)
    alone = base_doc() | {"initial_cluster_state": "existing", "peers": {"1": "127.0.0.1:7101"}}
    problems = problems_of(write_config(conf_dir, alone))
    assert any("at least one running member" in p for p in problems)


# ------------------------------------------------------------------------- [compaction]


def test_compaction_defaults_to_one_hour_periodic_as_the_example_shows(conf_dir: Path) -> None:
    config = load_config(write_config(conf_dir, base_doc()), env=NO_CREDENTIALS)
    assert config.compaction == CompactionSettings()
    assert (config.compaction.mode, config.compaction.keep) == ("periodic", 3_600_000)
    assert config.compaction.check_interval_ms == 360_000  # a tenth, as etcd samples
    example = tomllib.loads((REPO / "conf" / "paxosd.toml").read_text())["compaction"]
    default = CompactionSettings()
    assert example == {
        "mode": default.mode,
        "retention": default.retention,
        "interval_ms": default.interval_ms,
    }


@pytest.mark.parametrize(
    ("table", "mode", "keep", "interval"),
    [
        ({"mode": "periodic", "retention": "30m"}, "periodic", 1_800_000, 180_000),
        ({"mode": "periodic", "retention": "1h30m"}, "periodic", 5_400_000, 540_000),
        ({"mode": "periodic", "retention": "2"}, "periodic", 7_200_000, 720_000),
        ({"mode": "periodic", "retention": "2s", "interval_ms": 100}, "periodic", 2000, 100),
        ({"mode": "revision", "retention": 1000}, "revision", 1000, 300_000),
        ({"mode": "revision", "retention": "50"}, "revision", 50, 300_000),
        ({"mode": "off"}, "off", 0, 0),
    ],
)
def test_compaction_modes_and_retentions(
    conf_dir: Path, table: dict[str, Any], mode: str, keep: int, interval: int
) -> None:
    config = load_config(write_config(conf_dir, base_doc() | {"compaction": table}), env={})
    assert config.compaction.mode == mode and config.compaction.keep == keep
    if mode != "off":
        assert config.compaction.check_interval_ms == interval


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"mode": "sometimes"}, "compaction.mode: must be one of off, periodic, revision"),
        ({"mode": "periodic", "retention": "1 fortnight"}, "compaction.retention: "),
        ({"mode": "periodic", "retention": "5ms"}, "must be between 1s and"),
        ({"mode": "periodic", "retention": True}, "expected a string or an integer"),
        ({"mode": "revision"}, 'required with mode = "revision"'),
        ({"mode": "revision", "retention": "1h"}, "whole number of revisions"),
        ({"mode": "revision", "retention": 0}, "at least 1 revision"),
        ({"interval_ms": 5}, "compaction.interval_ms: must be 0"),
        ({"retension": "1h"}, "compaction.retension: unknown key (did you mean retention?)"),
    ],
)
def test_bad_compaction_settings_name_the_key(
    conf_dir: Path, table: dict[str, Any], words: str
) -> None:
    problems = problems_of(write_config(conf_dir, base_doc() | {"compaction": table}))
    assert any(words in p for p in problems), problems


# ------------------------------------------------------------------------------ [etcd]


def _etcd_config(tmp_path, table: str):  # type: ignore[no-untyped-def]
    from paxosd.tools.initcluster import init_cluster

    init_cluster(tmp_path, 1, base_port=7100, cluster_id="c", force=True)
    cfg = tmp_path / "n1.toml"
    cfg.write_text(cfg.read_text() + "\n[etcd]\n" + table)
    return cfg


def test_etcd_listener_is_off_by_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from paxosd.server.config import load_config
    from paxosd.tools.initcluster import init_cluster

    init_cluster(tmp_path, 1, base_port=7100, cluster_id="c", force=True)
    assert load_config(tmp_path / "n1.toml").etcd.listen is None


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('listen = "0.0.0.0:2379"\n', "binds only to loopback"),
        ('listen = "127.0.0.1:2379"\ncert_file = "a.crt"\n', "cert_file and key_file go together"),
        ('listen = "127.0.0.1:2379"\ntrusted_ca_file = "ca.crt"\n', "client certificates need TLS"),
        ('listen = "127.0.0.1:2379"\nallow_insecure = "yes"\n', "expected true or false"),
        ('listen = "127.0.0.1:2379"\nport = 1\n', "unknown key"),
        ('listen = "127.0.0.1:2379"\nclient_urls = { x = "http://a:1" }\n', "keys are node ids"),
        ('listen = "127.0.0.1:2379"\nprocesses = 0\n', "must be between 1 and 16"),
    ],
)
def test_etcd_table_problems(tmp_path, table: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    from paxosd.server.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(_etcd_config(tmp_path, table))
    assert problem in str(e.value)


def test_etcd_insecure_elsewhere_only_when_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from paxosd.server.config import load_config

    cfg = load_config(_etcd_config(tmp_path, 'listen = "0.0.0.0:2379"\nallow_insecure = true\n'))
    assert cfg.etcd.listen is not None and cfg.etcd.allow_insecure and not cfg.etcd.tls


def test_init_etcd_writes_tls_files_0600_and_a_valid_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from paxosd.server.config import load_config
    from paxosd.tools.initcluster import init_cluster

    init_cluster(tmp_path, 3, base_port=7100, cluster_id="c", force=True, etcd=True)
    tls = tmp_path / "keys" / "etcd"
    names = sorted(p.name for p in tls.iterdir())
    assert names == sorted(
        ["ca.crt", "ca.key", "client.crt", "client.key"]
        + [f"n{k}.{x}" for k in (1, 2, 3) for x in ("crt", "key")]
    )
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in tls.iterdir())
    assert tls.stat().st_mode & 0o777 == 0o700
    cfg = load_config(tmp_path / "n2.toml")
    assert cfg.etcd.tls and cfg.etcd.trusted_ca_file == tls / "ca.crt"
    assert str(cfg.etcd.listen) == "127.0.0.1:7352"
    assert cfg.etcd.client_urls[3] == "https://127.0.0.1:7353"
