"""One etcdctl 3.4 session, run against a 3-member cluster (etcd's or paxosd's listener), and
the normalisation that makes the two comparable.

What differs by nature is normalised away: member and cluster ids, names, URLs and ports,
raft terms and indexes, database sizes, the server version, timings, file paths, and lease
ids (etcd makes them from its member id and the clock, paxosd counts them from 1; the
session's own lease is read from ``lease grant``'s answer, used by the later steps as
``{lease}``, and printed as LEASE; the leases etcdctl lock and elect grant for themselves
show only in their keys, NAME/<lease hex>). Revisions are NOT normalised: both stores
start at revision 1 and must count alike.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ETCDCTL = "/usr/bin/etcdctl"
STEP_TIMEOUT_S = 30


@dataclass(frozen=True)
class Step:
    args: tuple[str, ...]
    stdin: str = ""
    one_endpoint: bool = False  # snapshot save talks to one endpoint only
    sort_lines: bool = False  # one line per endpoint, in an order that is the server's choice
    watch_lines: int = 0  # a watch (or elect): read this many lines, then kill it
    grants_lease: bool = False  # the lease it prints is the later steps' {lease}


TXN_STDIN = 'value("foo") = "bar2"\n\nput foo ok\nget foo2\n\nput foo failed\n\n'

STEPS: tuple[Step, ...] = (
    Step(("put", "foo", "bar")),
    Step(("put", "foo2", "baz")),
    Step(("get", "foo", "--prefix")),
    Step(("put", "foo", "bar2", "--prev-kv")),
    Step(("get", "foo", "--rev=2")),
    Step(("get", "foo", "--prefix", "--keys-only")),
    Step(("get", "foo", "--prefix", "--limit=1", "--order=DESCEND")),
    Step(("get", "a", "--from-key")),
    Step(("txn",), stdin=TXN_STDIN),
    Step(("txn", "-w", "json"), stdin=TXN_STDIN),
    Step(("del", "foo", "--prefix", "--prev-kv")),
    Step(("del", "nothing")),
    Step(("watch", "foo", "--prefix", "--rev=1", "--prev-kv"), watch_lines=31),
    Step(("compact", "3")),
    Step(("get", "foo", "--rev=2")),
    Step(("get", "foo", "--rev=99")),
    Step(("alarm", "list")),
    Step(("member", "list"), sort_lines=True),
    Step(("endpoint", "status"), sort_lines=True),
    Step(("endpoint", "health"), sort_lines=True),
    Step(("snapshot", "save", "{tmp}/snap.db"), one_endpoint=True),
    Step(("lease", "grant", "60"), grants_lease=True),
    Step(("put", "--lease={lease}", "lk", "v")),
    Step(("get", "lk", "-w", "json")),
    Step(("lease", "keep-alive", "--once", "{lease}")),
    Step(("lease", "timetolive", "{lease}", "--keys")),
    Step(("lease", "list")),
    Step(("lease", "revoke", "{lease}")),
    Step(("get", "lk")),
    Step(("lease", "timetolive", "{lease}")),
    Step(("lease", "revoke", "{lease}")),
    Step(("lease", "keep-alive", "--once", "1234")),
    Step(("put", "--lease=1234", "x", "y")),
    # etcdctl lock runs the command while it holds the lock, which it gets at once here.
    Step(("lock", "mylock", "--", "sh", "-c", 'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"')),
    # elect campaigns, prints the leader and waits: killed (no resign), so its key stays
    # for its session's TTL, and elect -l (observe) prints it as the leader.
    Step(("elect", "myelection", "p1"), watch_lines=2),
    Step(("elect", "-l", "myelection"), watch_lines=2),
)

_HEX_ID = re.compile(r"\b[0-9a-f]{1,16}\b")
_URL = re.compile(r"(https?://)?127\.0\.0\.1:\d+")


def normalise(step: Step, out: str, lease: str = "") -> str:
    """The output with what differs by nature replaced by placeholders. ``lease``: the
    session's lease id as etcdctl prints it (hex), "" before it is granted."""
    text = out
    if lease:
        text = text.replace(lease, "LEASE")
        text = re.sub(rf'"(lease|id)":{int(lease, 16)}\b', r'"\1":LEASE', text)
    text = re.sub(r"\b(mylock|myelection)/[0-9a-f]+\b", r"\1/LEASE", text)
    text = re.sub(r"remaining\(\d+s\)", "remaining(Ns)", text)
    text = re.sub(r"took = [0-9.]+[µmn]?s", "took = T", text)
    text = re.sub(r'"cluster_id":\d+', '"cluster_id":ID', text)
    text = re.sub(r'"member_id":\d+', '"member_id":ID', text)
    text = re.sub(r'"raft_term":\d+', '"raft_term":N', text)
    text = _URL.sub("URL", text)
    text = re.sub(r"Snapshot saved at \S+", "Snapshot saved at FILE", text)
    if step.args[:2] == ("endpoint", "status"):
        # endpoint, id, version, db size, is leader, is learner, term, index, applied, errors
        lines = []
        for line in text.splitlines():
            f = [x.strip() for x in line.split(",")]
            if len(f) >= 9:
                f = [f[0], "ID", "VERSION", "SIZE", f[4], f[5], "N", "N", "N", *f[9:]]
            lines.append(", ".join(f))
        text = "\n".join(lines) + "\n"
    if step.args[:2] == ("member", "list"):
        lines = []
        for line in text.splitlines():
            f = [x.strip() for x in line.split(",")]
            if len(f) >= 6:
                f = ["ID", f[1], "NAME", *f[3:]]
            lines.append(", ".join(f))
        text = "\n".join(lines) + "\n"
    if step.sort_lines:
        text = "\n".join(sorted(text.splitlines())) + "\n"
    return text


def run_session(
    endpoints: Sequence[str],
    tmp: Path,
    env_extra: dict[str, str] | None = None,
    flags: Sequence[str] = (),
    wait: Callable[[str, Callable[[], object]], object] | None = None,
) -> list[dict[str, object]]:
    """Run every step; one record per step: args, exit code, normalised stdout and stderr."""
    env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin"), **(env_extra or {})}
    records = []
    lease = ""
    for step in STEPS:
        args = [a.replace("{tmp}", str(tmp)).replace("{lease}", lease) for a in step.args]
        eps = endpoints[0] if step.one_endpoint else ",".join(endpoints)
        cmd = [ETCDCTL, "--endpoints", eps, *flags, *args]
        if step.watch_lines:
            out, code = _watch(cmd, env, step.watch_lines)
            err = ""
        else:
            p = subprocess.run(
                cmd,
                input=step.stdin,
                capture_output=True,
                text=True,
                env=env,
                timeout=STEP_TIMEOUT_S,
            )
            out, err, code = p.stdout, p.stderr, p.returncode
        if step.grants_lease:
            granted = re.search(r"lease ([0-9a-f]+) granted", out)
            lease = granted.group(1) if granted else ""
        # etcdctl's own logs (JSON lines on stderr, e.g. snapshot save's) carry times: only
        # its "Error:" lines and endpoint health's verdicts (printed on stderr) are compared.
        err_lines = [
            line for line in err.splitlines() if line.startswith("Error") or "healthy" in line
        ]
        records.append(
            {
                "args": list(step.args),
                "code": code,
                "stdout": normalise(step, out, lease),
                "stderr": normalise(step, "\n".join(err_lines), lease),
            }
        )
    return records


def _watch(cmd: list[str], env: dict[str, str], lines: int) -> tuple[str, int]:
    """Read ``lines`` lines of a watch (bounded by STEP_TIMEOUT_S), then stop it."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    got: list[str] = []
    deadline = time.monotonic() + STEP_TIMEOUT_S
    try:
        assert p.stdout is not None
        while len(got) < lines and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            got.append(line)
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
    return "".join(got), 0


def dump(records: list[dict[str, object]]) -> str:
    return json.dumps(records, indent=1) + "\n"
