"""One node's configuration: one TOML file, checked completely before the daemon starts.

Every problem is collected (not just the first) and names the file, the dotted key and what is
wrong, because an operator fixing a config over ssh should need one round trip, not five.
Unknown keys are errors: a typo such as ``heartbeat_intervall_ms`` must not silently leave the
default in force.

Relative paths are relative to the config file's directory, so a config set (``paxosd init``)
can be moved as a whole and started from any working directory.

Keys are hex text files (at least 32 random bytes, i.e. 64 hex digits) that only their owner may
read. Under systemd, ``LoadCredential=peer.key:...`` and ``LoadCredential=client.key:...`` hand
them over through ``$CREDENTIALS_DIRECTORY``; a credential of that name wins over the file named
in the config, so the key files can stay root-only while the daemon runs as ``paxosd``.
Key bytes live only in ``Secret`` objects, whose repr never shows them.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

from paxosd.core.config import CoreConfig
from paxosd.core.types import NodeId
from paxosd.net.keyfile import exposure
from paxosd.server.compaction import (
    COMPACTION_MODES,
    RETENTION_MS_MAX,
    RETENTION_REVISIONS_MAX,
    CompactionMode,
    CompactionSettings,
    parse_duration_ms,
)
from paxosd.statemachine.commands import COMMAND_BYTES_MAX

Durability = Literal["fsync", "unsafe-no-fsync"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]

DURABILITIES: Final[tuple[Durability, ...]] = ("fsync", "unsafe-no-fsync")
LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("debug", "info", "warning", "error")
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("auto", "json", "console")

# Names of the systemd credentials (LoadCredential=<name>:<path>) that override the key files.
PEER_KEY_CREDENTIAL: Final = "peer.key"
CLIENT_KEY_CREDENTIAL: Final = "client.key"

KEY_BYTES_MIN: Final = 32
KEY_BYTES_MAX: Final = 512
# A key file is a line of hex; anything much bigger is not a key file, so never read more.
KEY_FILE_BYTES_MAX: Final = 4096
# 32 bytes from a CSPRNG practically always show ~30 distinct values; fewer than 16 means a
# placeholder ("0000...", "abab...") that would make the authkey handshake worthless.
KEY_DISTINCT_BYTES_MIN: Final = 16
# The config is small text; refuse to parse something that is clearly not a config.
CONFIG_FILE_BYTES_MAX: Final = 1 << 20
# Paxos needs a majority of acceptors per ballot; beyond 15 every slot waits on 8 fsyncs over
# the network, which no deployment of this store needs.
MEMBERS_MAX: Final = 15
NODE_ID_MAX: Final = (1 << 31) - 1
CLUSTER_ID_CHARS_MAX: Final = 64
# A batch must be able to hold one maximal command
# (paxosd.statemachine.commands.COMMAND_BYTES_MAX, 1 MiB),
# or such a command could never be ordered.
BATCH_BYTES_MIN: Final = 1 << 20


class ConfigError(Exception):
    """The config cannot be used. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: tuple[Problem, ...]) -> None:
        assert problems, "a ConfigError must carry at least one problem"
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config: ``file`` as the user named it, ``key`` as a dotted path
    (empty when the problem is the file itself), ``message`` says what is wrong and, where it
    can, how to fix it."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


@dataclass(frozen=True, slots=True)
class Secret:
    """Key bytes that must never reach a log line, a repr or a summary.

    ``source`` says where the key came from (a file or a systemd credential), which is safe to
    show; ``fingerprint()`` lets operators compare keys across hosts without revealing them.
    """

    _value: bytes = field(repr=False)
    source: Path
    from_credential: bool

    def reveal(self) -> bytes:
        return self._value

    def fingerprint(self) -> str:
        # Domain-separated so the fingerprint is never equal to any hash the transport derives.
        return hashlib.sha256(b"paxosd key fingerprint\x00" + self._value).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes redacted>, source={str(self.source)!r})"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Peer:
    node_id: NodeId
    address: Address


@dataclass(frozen=True, slots=True)
class Timeouts:
    heartbeat_interval_ms: int = 50
    election_timeout_ms_min: int = 300
    election_timeout_ms_max: int = 600
    request_timeout_ms: int = 5000


@dataclass(frozen=True, slots=True)
class Batching:
    batch_commands_max: int = 512
    batch_bytes_max: int = 1 << 20
    slots_in_flight_max: int = 64


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    snapshot_every_entries: int = 10_000
    log_retain_entries: int = 1000
    snapshot_log_percent: int = 40


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """``[limits]``, etcd's --quota-backend-bytes and --max-request-bytes.

    ``quota_bytes`` bounds the store's accounted size (keys, values and history, as the
    state machine charges them: the same number on every replica, whatever its disk). When
    the store reaches it the leader raises the NOSPACE alarm through the log, after which
    writes that add data are refused with NOSPACE.
    ``max_request_bytes`` bounds one encoded client command, refused before it is proposed;
    at most the codec's replicated bound COMMAND_BYTES_MAX (1 MiB), which is below etcd's
    1.5 MiB default: every member must decode every logged command, so raising it is a
    format change, not a setting."""

    quota_bytes: int = 2 << 30
    max_request_bytes: int = COMMAND_BYTES_MAX


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: LogLevel = "info"
    format: LogFormat = "auto"


ETCD_PROCESSES_DEFAULT: Final = 2
ETCD_PROCESSES_MAX: Final = 16


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """``[etcd]``: the optional etcd v3 gRPC listener (``paxosd etcd-gateway``, started by
    ``paxosd run`` beside the node). Off unless ``listen`` is set. TLS as etcd's
    ``--cert-file --key-file --trusted-ca-file``: with a CA, clients must present a
    certificate it signed (etcd's ``--client-cert-auth``). Without TLS only a loopback
    address is accepted, unless ``allow_insecure`` says the operator means it."""

    listen: Address | None = None
    allow_insecure: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    trusted_ca_file: Path | None = None
    # Every member's etcd client URL by node id (``[etcd.client_urls]``), for MemberList
    # (etcd clients learn the other members' endpoints from it); this node's own is implied.
    client_urls: dict[int, str] = field(default_factory=dict)
    # Gateway processes serving the one port (SO_REUSEPORT: the kernel spreads connections
    # over them); each has its own interpreter lock, so more use more cores.
    processes: int = ETCD_PROCESSES_DEFAULT

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class Config:
    """A validated config. Paths are absolute; ``peers`` is sorted by node id and includes
    this node (its entry is the address its peer listener binds)."""

    source: Path
    node_id: NodeId
    cluster_id: str
    peers: tuple[Peer, ...]
    # Every member's client address, where known (the optional [clients] table): followers
    # send it with a redirect, so a client that knows one node can reach the leader.
    clients: dict[NodeId, Address]
    client_address: Address
    metrics_address: Address | None
    data_dir: Path
    peer_key: Secret
    client_key: Secret
    timeouts: Timeouts
    batching: Batching
    snapshot: SnapshotSettings
    durability: Durability
    log: LogSettings
    # When the leader proposes compactions of the history (etcd's auto-compaction).
    compaction: CompactionSettings = field(default_factory=CompactionSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    # "new": the [peers] table is the cluster's first membership. "existing": this node joins
    # a running cluster (after `paxosctl member add`); it learns the membership from the log
    # and is not a voter until promoted (etcd's initial-cluster-state).
    initial_cluster_state: str = "new"
    etcd: EtcdSettings = field(default_factory=EtcdSettings)

    @property
    def members(self) -> tuple[NodeId, ...]:
        """The bootstrap voters: the [peers] table, less this node when it joins later."""
        ids = tuple(p.node_id for p in self.peers)
        if self.initial_cluster_state == "existing":
            return tuple(n for n in ids if n != self.node_id)
        return ids

    @property
    def peer_address(self) -> Address:
        return self.address_of(self.node_id)

    def address_of(self, node_id: NodeId) -> Address:
        for p in self.peers:
            if p.node_id == node_id:
                return p.address
        raise KeyError(node_id)

    def core_config(self) -> CoreConfig:
        """The core's tunables; the core re-asserts the orderings validated here."""
        return CoreConfig(
            node_id=self.node_id,
            members=self.members,
            heartbeat_interval_ms=self.timeouts.heartbeat_interval_ms,
            election_timeout_ms_min=self.timeouts.election_timeout_ms_min,
            election_timeout_ms_max=self.timeouts.election_timeout_ms_max,
            slots_in_flight_max=self.batching.slots_in_flight_max,
            batch_commands_max=self.batching.batch_commands_max,
            batch_bytes_max=self.batching.batch_bytes_max,
            log_retain_entries=self.snapshot.log_retain_entries,
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view for ``check-config``: key sources and fingerprints, never keys."""
        return {
            "file": str(self.source),
            "node_id": self.node_id,
            "cluster_id": self.cluster_id,
            "peers": {str(p.node_id): str(p.address) for p in self.peers},
            "client_address": str(self.client_address),
            "metrics_address": None if self.metrics_address is None else str(self.metrics_address),
            "data_dir": str(self.data_dir),
            "peer_key": _secret_summary(self.peer_key),
            "client_key": _secret_summary(self.client_key),
            "timeouts": _fields(self.timeouts),
            "batching": _fields(self.batching),
            "snapshot": _fields(self.snapshot),
            "limits": _fields(self.limits),
            "durability": self.durability,
            "log": _fields(self.log),
            "compaction": {
                "mode": self.compaction.mode,
                "retention": self.compaction.retention,
                "interval_ms": self.compaction.check_interval_ms,
            },
            "etcd": {
                "listen": None if self.etcd.listen is None else str(self.etcd.listen),
                "tls": self.etcd.tls,
                "client_cert_auth": self.etcd.trusted_ca_file is not None,
                "allow_insecure": self.etcd.allow_insecure,
                "processes": self.etcd.processes,
            },
        }


def _secret_summary(s: Secret) -> dict[str, Any]:
    return {
        "source": str(s.source),
        "from_credential": s.from_credential,
        "fingerprint": s.fingerprint(),
    }


def _fields(
    obj: Timeouts | Batching | SnapshotSettings | LogSettings | LimitSettings,
) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


# ---------------------------------------------------------------------------------- schema

# (key, default, minimum, maximum) for every integer setting of a section. The default is the
# dataclass's, so the example config, the docs and the code cannot drift apart.
_IntSpec = tuple[str, int, int, int]

_T, _B, _S = Timeouts(), Batching(), SnapshotSettings()
_TIMEOUT_INTS: Final[tuple[_IntSpec, ...]] = (
    ("heartbeat_interval_ms", _T.heartbeat_interval_ms, 1, 60_000),
    ("election_timeout_ms_min", _T.election_timeout_ms_min, 2, 600_000),
    ("election_timeout_ms_max", _T.election_timeout_ms_max, 3, 600_000),
    ("request_timeout_ms", _T.request_timeout_ms, 1, 3_600_000),
)
_BATCHING_INTS: Final[tuple[_IntSpec, ...]] = (
    ("batch_commands_max", _B.batch_commands_max, 1, 100_000),
    # At most 2 MiB: one slot must fit a peer message (the core's message_bytes_max, 3 MiB).
    ("batch_bytes_max", _B.batch_bytes_max, BATCH_BYTES_MIN, 2 << 20),
    ("slots_in_flight_max", _B.slots_in_flight_max, 1, 10_000),
)
_L = LimitSettings()
_LIMIT_INTS: Final[tuple[_IntSpec, ...]] = (
    ("quota_bytes", _L.quota_bytes, 1 << 20, 1 << 50),
    ("max_request_bytes", _L.max_request_bytes, 1024, COMMAND_BYTES_MAX),
)
_SNAPSHOT_INTS: Final[tuple[_IntSpec, ...]] = (
    ("snapshot_every_entries", _S.snapshot_every_entries, 1, 100_000_000),
    ("log_retain_entries", _S.log_retain_entries, 0, 100_000_000),
    ("snapshot_log_percent", _S.snapshot_log_percent, 0, 10_000),
)

_TOP_KEYS: Final = frozenset(
    {
        "node_id",
        "cluster_id",
        "peers",
        "clients",
        "client_address",
        "metrics_address",
        "data_dir",
        "peer_key_file",
        "client_key_file",
        "durability",
        "initial_cluster_state",
        "timeouts",
        "batching",
        "snapshot",
        "log",
        "compaction",
        "limits",
        "etcd",
    }
)
DEFAULT_PEER_KEY_FILE: Final = "keys/peer.key"
DEFAULT_CLIENT_KEY_FILE: Final = "keys/client.key"


def _toml_type(value: object) -> str:
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case dict():
            return "a table"
        case list():
            return "an array"
        case _:
            return "a date/time"


class _Reader:
    """Collects problems while reading one parsed TOML document."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: list[Problem] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.label, key, message))

    def table(self, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, f"expected a table, got {_toml_type(value)}")
            return {}
        return cast(Mapping[str, Any], value)

    def unknown(self, table: Mapping[str, Any], prefix: str, allowed: frozenset[str]) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f"did you mean {close[0]}?"
                    if close
                    else "allowed here: " + ", ".join(sorted(allowed))
                )
                self.problem(prefix + key, f"unknown key ({hint})")

    def integer(self, table: Mapping[str, Any], prefix: str, spec: _IntSpec) -> int:
        key, default, lo, hi = spec
        value = table.get(key, default)
        if type(value) is not int:
            self.problem(prefix + key, f"expected an integer, got {_toml_type(value)}")
            return default
        if not lo <= value <= hi:
            self.problem(prefix + key, f"must be between {lo} and {hi} (got {value})")
            return default
        return value

    def string(self, table: Mapping[str, Any], key: str, default: str | None) -> str | None:
        """The string at ``key``; ``default`` when absent (None: required)."""
        if key not in table:
            if default is None:
                self.problem(key, "required key is missing")
            return default
        value = table[key]
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {_toml_type(value)}")
            return None
        if not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def choice(
        self,
        table: Mapping[str, Any],
        key: str,
        prefix: str,
        default: str,
        allowed: tuple[str, ...],
    ) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or value not in allowed:
            got = repr(value) if isinstance(value, str) else _toml_type(value)
            self.problem(prefix + key, f"must be one of {', '.join(allowed)} (got {got})")
            return default
        return value

    def address(self, key: str, value: object) -> Address | None:
        if not isinstance(value, str):
            self.problem(key, f'expected a string "host:port", got {_toml_type(value)}')
            return None
        parsed = parse_address(value)
        if isinstance(parsed, str):
            self.problem(key, f"{parsed} (got {value!r})")
            return None
        return parsed


def parse_address(text: str) -> Address | str:
    """``host:port`` or ``[ipv6]:port`` -> Address, or a description of what is wrong."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return 'expected "[ipv6]:port"'
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            return 'expected "host:port"'
        if ":" in host:
            return 'an IPv6 host must be in brackets: "[::1]:port"'
    if not host or len(host) > 253 or any(c.isspace() for c in host):
        return "host must be a non-empty name or IP address without spaces"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return "port must be an integer between 1 and 65535"
    return Address(host, int(port_text))


# ------------------------------------------------------------------------------ loading


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve one node's config, keys included.

    ``env`` defaults to ``os.environ``; only ``CREDENTIALS_DIRECTORY`` is read from it.
    :raises ConfigError: with every problem found.
    """
    env = os.environ if env is None else env
    label = os.fspath(path)
    config_path = Path(label)
    reader = _Reader(label)
    try:
        with config_path.open("rb") as f:
            raw = f.read(CONFIG_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise ConfigError((Problem(label, "", f"cannot read: {e.strerror or e}"),)) from None
    if len(raw) > CONFIG_FILE_BYTES_MAX:
        reader.problem("", f"larger than {CONFIG_FILE_BYTES_MAX} bytes; not a config file")
        raise ConfigError(tuple(reader.problems))
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError((Problem(label, "", "not UTF-8 text"),)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError((Problem(label, "", f"invalid TOML: {e}"),)) from None
    config = _read(reader, doc, config_path, env)
    if reader.problems:
        raise ConfigError(tuple(reader.problems))
    assert config is not None
    return config


def _read(
    r: _Reader, doc: Mapping[str, Any], config_path: Path, env: Mapping[str, str]
) -> Config | None:
    base = config_path.parent
    r.unknown(doc, "", _TOP_KEYS)

    node_id: int | None = None
    if "node_id" not in doc:
        r.problem("node_id", "required key is missing")
    elif type(doc["node_id"]) is not int:
        r.problem("node_id", f"expected an integer, got {_toml_type(doc['node_id'])}")
    elif not 1 <= doc["node_id"] <= NODE_ID_MAX:
        r.problem("node_id", f"must be between 1 and {NODE_ID_MAX} (got {doc['node_id']})")
    else:
        node_id = doc["node_id"]

    cluster_id = r.string(doc, "cluster_id", None)
    if cluster_id is not None and (
        len(cluster_id) > CLUSTER_ID_CHARS_MAX
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in cluster_id)
    ):
        r.problem(
            "cluster_id",
            f"must be 1 to {CLUSTER_ID_CHARS_MAX} characters of A-Z a-z 0-9 . _ - "
            f"(got {cluster_id!r})",
        )
        cluster_id = None

    peers = _read_peers(r, doc)
    clients = _read_clients(r, doc)
    if node_id is not None and peers is not None and node_id not in {p.node_id for p in peers}:
        r.problem("peers", f"must contain this node's own entry (node_id = {node_id})")

    client_address: Address | None = None
    if "client_address" not in doc:
        r.problem("client_address", "required key is missing")
    else:
        client_address = r.address("client_address", doc["client_address"])
    metrics_address: Address | None = None
    if "metrics_address" in doc:
        metrics_address = r.address("metrics_address", doc["metrics_address"])
    _check_own_endpoints(r, node_id, peers, client_address, metrics_address)

    data_dir_text = r.string(doc, "data_dir", None)
    data_dir = None if data_dir_text is None else _absolute(base / data_dir_text)

    durability = r.choice(doc, "durability", "", "fsync", DURABILITIES)
    initial_state = r.choice(doc, "initial_cluster_state", "", "new", ("new", "existing"))
    if initial_state == "existing" and peers is not None and len(peers) < 2:
        r.problem(
            "initial_cluster_state",
            '"existing" needs [peers] to list at least one running member besides this node',
        )

    timeouts_table = r.table(doc, "timeouts")
    r.unknown(timeouts_table, "timeouts.", frozenset(s[0] for s in _TIMEOUT_INTS))
    problems_before = len(r.problems)
    timeouts = Timeouts(*(r.integer(timeouts_table, "timeouts.", s) for s in _TIMEOUT_INTS))
    if len(r.problems) == problems_before:
        # Orderings only between values as written: a rejected value fell back to its default,
        # and comparing against that would report a problem the user did not make.
        _check_timeouts(r, timeouts_table, timeouts)

    batching_table = r.table(doc, "batching")
    r.unknown(batching_table, "batching.", frozenset(s[0] for s in _BATCHING_INTS))
    batching = Batching(*(r.integer(batching_table, "batching.", s) for s in _BATCHING_INTS))

    snapshot_table = r.table(doc, "snapshot")
    r.unknown(snapshot_table, "snapshot.", frozenset(s[0] for s in _SNAPSHOT_INTS))
    snapshot = SnapshotSettings(
        *(r.integer(snapshot_table, "snapshot.", s) for s in _SNAPSHOT_INTS)
    )

    log_table = r.table(doc, "log")
    r.unknown(log_table, "log.", frozenset({"level", "format"}))
    log = LogSettings(
        level=cast(LogLevel, r.choice(log_table, "level", "log.", "info", LOG_LEVELS)),
        format=cast(LogFormat, r.choice(log_table, "format", "log.", "auto", LOG_FORMATS)),
    )

    compaction = _read_compaction(r, r.table(doc, "compaction"))
    etcd = _read_etcd(r, r.table(doc, "etcd"), base)

    limits_table = r.table(doc, "limits")
    r.unknown(limits_table, "limits.", frozenset(s[0] for s in _LIMIT_INTS))
    limits = LimitSettings(*(r.integer(limits_table, "limits.", s) for s in _LIMIT_INTS))

    peer_key = _read_key(
        r, doc, base, env, "peer_key_file", DEFAULT_PEER_KEY_FILE, PEER_KEY_CREDENTIAL
    )
    client_key = _read_key(
        r, doc, base, env, "client_key_file", DEFAULT_CLIENT_KEY_FILE, CLIENT_KEY_CREDENTIAL
    )
    if peer_key is not None and client_key is not None and peer_key.reveal() == client_key.reveal():
        r.problem(
            "client_key_file",
            "the client key must differ from the peer key, or a client could pose as a peer",
        )

    if (
        r.problems
        or node_id is None
        or cluster_id is None
        or peers is None
        or client_address is None
        or data_dir is None
        or peer_key is None
        or client_key is None
    ):
        return None
    return Config(
        source=_absolute(config_path),
        node_id=NodeId(node_id),
        cluster_id=cluster_id,
        peers=peers,
        clients={**clients, NodeId(node_id): client_address},
        client_address=client_address,
        metrics_address=metrics_address,
        data_dir=data_dir,
        peer_key=peer_key,
        client_key=client_key,
        timeouts=timeouts,
        batching=batching,
        snapshot=snapshot,
        durability=cast(Durability, durability),
        log=log,
        compaction=compaction,
        limits=limits,
        initial_cluster_state=initial_state,
        etcd=etcd,
    )


LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def _read_etcd(r: _Reader, table: Mapping[str, Any], base: Path) -> EtcdSettings:
    """``[etcd]``: listen, allow_insecure, cert_file, key_file, trusted_ca_file."""
    files = ("cert_file", "key_file", "trusted_ca_file")
    r.unknown(
        table, "etcd.", frozenset({"listen", "allow_insecure", "client_urls", "processes", *files})
    )
    processes = r.integer(
        table, "etcd.", ("processes", ETCD_PROCESSES_DEFAULT, 1, ETCD_PROCESSES_MAX)
    )
    urls: dict[int, str] = {}
    raw_urls = table.get("client_urls", {})
    if not isinstance(raw_urls, dict):
        r.problem("etcd.client_urls", f"expected a table, got {_toml_type(raw_urls)}")
        raw_urls = {}
    for k, v in raw_urls.items():
        if not k.isdigit() or not 1 <= int(k) <= NODE_ID_MAX:
            r.problem(f"etcd.client_urls.{k}", "keys are node ids")
        elif not isinstance(v, str) or not v.startswith(("http://", "https://")):
            r.problem(f"etcd.client_urls.{k}", 'expected a URL "http(s)://host:port"')
        else:
            urls[int(k)] = v
    listen = r.address("etcd.listen", table["listen"]) if "listen" in table else None
    insecure = table.get("allow_insecure", False)
    if not isinstance(insecure, bool):
        r.problem("etcd.allow_insecure", f"expected true or false, got {_toml_type(insecure)}")
        insecure = False
    paths: dict[str, Path | None] = {}
    for key in files:
        text = r.string(table, key, "") if key in table else ""
        paths[key] = _absolute(base / text) if text else None
    cert, key_path, ca = paths["cert_file"], paths["key_file"], paths["trusted_ca_file"]
    if (cert is None) != (key_path is None):
        r.problem("etcd.cert_file", "cert_file and key_file go together (both or neither)")
    if ca is not None and cert is None:
        r.problem(
            "etcd.trusted_ca_file", "client certificates need TLS: set cert_file and key_file"
        )
    if listen is not None and cert is None and not insecure and listen.host not in LOOPBACK_HOSTS:
        r.problem(
            "etcd.listen",
            f"without TLS (cert_file, key_file) the listener binds only to loopback; "
            f"got {listen} (write allow_insecure = true to mean it)",
        )
    return EtcdSettings(listen, insecure, cert, key_path, ca, urls, processes)


def _read_compaction(r: _Reader, table: Mapping[str, Any]) -> CompactionSettings:
    """``[compaction]``: mode = "periodic" | "revision" | "off"; retention = a duration
    ("1h", "30m"; a bare number is hours, as etcd's) for periodic, a revision count for
    revision; interval_ms = how often to look (default: the mode's, as etcd's)."""
    r.unknown(table, "compaction.", frozenset({"mode", "retention", "interval_ms"}))
    default = CompactionSettings()
    mode = cast(
        CompactionMode, r.choice(table, "mode", "compaction.", default.mode, COMPACTION_MODES)
    )
    interval_ms = r.integer(table, "compaction.", ("interval_ms", 0, 0, 86_400_000))
    if 0 < interval_ms < 100:
        r.problem(
            "compaction.interval_ms", f"must be 0 (the default) or at least 100 (got {interval_ms})"
        )
        interval_ms = 0
    raw = table.get("retention", default.retention if mode != "revision" else None)
    if mode == "off":
        return CompactionSettings(mode="off", retention="", keep=0, interval_ms=interval_ms)
    if raw is None:
        r.problem("compaction.retention", 'required with mode = "revision" (revisions to keep)')
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        r.problem("compaction.retention", f"expected a string or an integer, got {_toml_type(raw)}")
        return default
    text = str(raw)
    if mode == "revision":
        if not text.isascii() or not text.strip().isdigit():
            r.problem("compaction.retention", f"must be a whole number of revisions (got {raw!r})")
            return default
        keep = int(text)
        if not 1 <= keep <= RETENTION_REVISIONS_MAX:
            r.problem("compaction.retention", f"must be at least 1 revision (got {keep})")
            return default
    else:
        parsed = parse_duration_ms(text)
        if isinstance(parsed, str):
            r.problem("compaction.retention", parsed)
            return default
        if not 1000 <= parsed <= RETENTION_MS_MAX:
            r.problem(
                "compaction.retention",
                f"must be between 1s and {RETENTION_MS_MAX // 3_600_000}h (got {text!r})",
            )
            return default
        keep = parsed
    return CompactionSettings(mode=mode, retention=text, keep=keep, interval_ms=interval_ms)


def _read_clients(r: _Reader, doc: Mapping[str, Any]) -> dict[NodeId, Address]:
    table = doc.get("clients", {})
    if not isinstance(table, dict):
        r.problem("clients", f"expected a table, got {_toml_type(table)}")
        return {}
    out: dict[NodeId, Address] = {}
    for key, value in table.items():
        path = f"clients.{key}"
        if not key.isdigit() or not 1 <= int(key) <= NODE_ID_MAX:
            r.problem(path, f"clients are listed by node id, an integer from 1 to {NODE_ID_MAX}")
            continue
        address = r.address(path, value)
        if address is not None:
            out[NodeId(int(key))] = address
    return out


def _read_peers(r: _Reader, doc: Mapping[str, Any]) -> tuple[Peer, ...] | None:
    if "peers" not in doc:
        r.problem("peers", 'required table is missing (node id -> "host:port")')
        return None
    table = doc["peers"]
    if not isinstance(table, dict):
        r.problem("peers", f"expected a table, got {_toml_type(table)}")
        return None
    if not table:
        r.problem("peers", "must list at least this node")
        return None
    if len(table) > MEMBERS_MAX:
        r.problem("peers", f"at most {MEMBERS_MAX} members (got {len(table)})")
        return None
    peers: list[Peer] = []
    seen: dict[Address, str] = {}
    ok = True
    for key, value in table.items():
        path = f"peers.{key}"
        if not key.isdigit() or not 1 <= int(key) <= NODE_ID_MAX:
            r.problem(path, f"peers are listed by node id, an integer from 1 to {NODE_ID_MAX}")
            ok = False
            continue
        address = r.address(path, value)
        if address is None:
            ok = False
            continue
        if address in seen:
            r.problem(path, f"same address as {seen[address]} ({address})")
            ok = False
        seen[address] = path
        peers.append(Peer(NodeId(int(key)), address))
    if len({p.node_id for p in peers}) != len(peers):
        # "1" and "01" are different TOML keys but the same node.
        r.problem("peers", "a node id is listed twice")
        ok = False
    if not ok:
        return None
    return tuple(sorted(peers, key=lambda p: p.node_id))


def _check_own_endpoints(
    r: _Reader,
    node_id: int | None,
    peers: tuple[Peer, ...] | None,
    client: Address | None,
    metrics: Address | None,
) -> None:
    """Peers and clients use separate ports (separate keys); sharing one would be a bind error
    at start-up at best, and a client key reaching the peer listener at worst."""
    own = None
    if node_id is not None and peers is not None:
        own = next((p.address for p in peers if p.node_id == node_id), None)
    if client is not None and own is not None and client == own:
        r.problem("client_address", f"must differ from this node's peer address ({own})")
    if metrics is not None and metrics in (own, client):
        r.problem("metrics_address", f"must differ from the peer and client addresses ({metrics})")


def _check_timeouts(r: _Reader, table: Mapping[str, Any], t: Timeouts) -> None:
    if t.heartbeat_interval_ms >= t.election_timeout_ms_min:
        key = (
            "heartbeat_interval_ms"
            if "heartbeat_interval_ms" in table
            else "election_timeout_ms_min"
        )
        r.problem(
            f"timeouts.{key}",
            "heartbeat_interval_ms must be < election_timeout_ms_min "
            f"(got {t.heartbeat_interval_ms} >= {t.election_timeout_ms_min}); "
            "otherwise followers time out between heartbeats",
        )
    if t.election_timeout_ms_min >= t.election_timeout_ms_max:
        r.problem(
            "timeouts.election_timeout_ms_min",
            "must be < election_timeout_ms_max "
            f"(got {t.election_timeout_ms_min} >= {t.election_timeout_ms_max}); "
            "the random spread is what keeps two candidates from duelling",
        )
    if t.request_timeout_ms < t.election_timeout_ms_max:
        r.problem(
            "timeouts.request_timeout_ms",
            "must be >= election_timeout_ms_max "
            f"(got {t.request_timeout_ms} < {t.election_timeout_ms_max}), "
            "so a request can outlive one leader election",
        )


def _read_key(
    r: _Reader,
    doc: Mapping[str, Any],
    base: Path,
    env: Mapping[str, str],
    key: str,
    default: str,
    credential: str,
) -> Secret | None:
    path_text = r.string(doc, key, default)
    credentials_dir = env.get("CREDENTIALS_DIRECTORY")
    if credentials_dir:
        cred_path = Path(credentials_dir) / credential
        if cred_path.exists():
            return _load_key_file(r, key, cred_path, from_credential=True)
    if path_text is None:
        return None
    return _load_key_file(r, key, base / path_text, from_credential=False)


def _load_key_file(r: _Reader, key: str, path: Path, from_credential: bool) -> Secret | None:
    """Checks the mode before reading: a key others can read is already compromised, and
    refusing to start is how the operator learns it."""
    shown = os.fspath(path)
    fix = (
        "create one with `paxosd init`, or: (umask 077; "
        "python3 -c 'import secrets; print(secrets.token_hex(32))' > FILE)"
    )
    try:
        st = path.stat()
    except FileNotFoundError:
        r.problem(key, f"{shown}: does not exist ({fix})")
        return None
    except OSError as e:
        r.problem(key, f"{shown}: cannot stat: {e.strerror or e}")
        return None
    if not stat.S_ISREG(st.st_mode):
        r.problem(key, f"{shown}: not a regular file")
        return None
    exposed = exposure(st.st_mode, from_credential=from_credential)
    if exposed is not None:
        r.problem(key, f"{shown}: {exposed}; chmod 600 it")
        return None
    try:
        with path.open("rb") as f:
            raw = f.read(KEY_FILE_BYTES_MAX + 1)
    except OSError as e:
        r.problem(key, f"{shown}: cannot read: {e.strerror or e}")
        return None
    if len(raw) > KEY_FILE_BYTES_MAX:
        r.problem(key, f"{shown}: larger than {KEY_FILE_BYTES_MAX} bytes; not a key file")
        return None
    try:
        value = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        # Never echo the content: it may be a real key in the wrong format.
        r.problem(key, f"{shown}: must hold the key as hex text (one line of hex digits)")
        return None
    if not KEY_BYTES_MIN <= len(value) <= KEY_BYTES_MAX:
        r.problem(
            key,
            f"{shown}: key must be {KEY_BYTES_MIN} to {KEY_BYTES_MAX} bytes "
            f"({2 * KEY_BYTES_MIN}+ hex digits), got {len(value)} bytes",
        )
        return None
    if len(set(value)) < KEY_DISTINCT_BYTES_MIN:
        r.problem(key, f"{shown}: key does not look random ({fix})")
        return None
    return Secret(value, _absolute(path), from_credential)


def _absolute(path: Path) -> Path:
    # Lexical, like the shell: "conf/../data" is "data". Symlinks are kept, not resolved, so the
    # paths shown are the ones the operator wrote.
    return Path(os.path.abspath(path))
