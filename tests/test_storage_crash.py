"""kill -9 at random moments: whatever a writer reported durable survives, and the database
opens clean afterwards.

A writer process writes PersistRecords in a loop and prints each sequence number after
write() returns, which is the moment the daemon would release the messages that depend on
it. The test SIGKILLs the writer at a random moment, then checks that the durable state is
exactly the fold of records 1..S or 1..S+1, where S is the last number the writer printed
(S+1 may have committed just before the kill, after write() returned but before the print).

Writers are forked from one long-lived helper process, started with ``python -c``, which
imported everything once: a fresh interpreter per kill would spend ~0.3 s importing, and
the test must stay short while killing hundreds of times.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from paxosd.core.io import DurableState, PersistRecord
from paxosd.core.types import ZERO_BALLOT, AcceptedEntry, Ballot, DecidedEntry, Snapshot
from paxosd.storage.store import DB_FILENAME, Storage

CLUSTER = "crash-test"
NODE = 1
KILLS = 200
# The writer is killed this long (uniformly at random) after it was forked: the range covers
# kills while opening the database, mid-transaction and between transactions.
KILL_DELAY_MS_MAX = 25
# A writer that is never killed stops after this many records (a bound, not an expectation).
WRITES_PER_LIFE_MAX = 100_000
REPO_ROOT = Path(__file__).resolve().parent.parent


def record_for(seq: int) -> PersistRecord:
    """The seq-th record, the same in the writer and in the test. It exercises every field:
    a promise every 10, a vote per record on two slots (both or neither must survive), the
    decision of the previous slot, a snapshot with compaction every 25."""
    ballot = Ballot(seq // 10 + 1, NODE)
    value = tuple(b"cmd-%d-%d" % (seq, i) for i in range(seq % 3))
    snapshot = Snapshot(seq - 1, b"state-%d" % seq) if seq % 25 == 0 else None
    return PersistRecord(
        promised=ballot if seq % 10 == 0 else None,
        accepted=(AcceptedEntry(seq, ballot, value), AcceptedEntry(seq + 1_000_000, ballot, ())),
        decided=(DecidedEntry(seq - 1, (b"decided-%d" % seq,)),) if seq > 1 else (),
        snapshot=snapshot,
        compact_through=seq - 10 if snapshot is not None else None,
    )


WRITER_HELPER = """
import os, sys
from pathlib import Path
import structlog
from paxosd.storage.store import Storage
from tests.test_storage_crash import CLUSTER, NODE, WRITES_PER_LIFE_MAX, record_for

# stdout carries the protocol with the test; logs go to stderr.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

path = Path(sys.argv[1])
for line in sys.stdin:  # one line per life; ends when the test closes stdin
    start = int(line)
    pid = os.fork()
    if pid == 0:
        try:
            storage = Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=False)
            for seq in range(start, start + WRITES_PER_LIFE_MAX):
                storage.write(record_for(seq))
                os.write(1, b"%d\\n" % seq)
        except BaseException as exc:
            os.write(1, ("error " + repr(exc).replace("\\n", " ") + "\\n").encode())
        os._exit(1)
    os.write(1, b"pid %d\\n" % pid)
    _, status = os.waitpid(pid, 0)
    os.write(1, b"dead %d\\n" % status)
"""


def copy_state(state: DurableState) -> DurableState:
    return DurableState(
        promised=state.promised,
        accepted=dict(state.accepted),
        decided=dict(state.decided),
        snapshot=state.snapshot,
    )


def test_every_record_reported_durable_survives_kill_9_at_random_moments(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=True).close()
    rng = random.Random(20240611)
    helper = subprocess.Popen(
        [sys.executable, "-c", WRITER_HELPER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,  # its own process group: cleanup reaches the writer too
    )
    assert helper.stdin is not None and helper.stdout is not None
    expected = DurableState(promised=ZERO_BALLOT)  # the fold of records 1..durable
    durable = 0
    kills_mid_run = 0
    # None: no writer alive; -1: one may be alive whose pid has not been read yet.
    writer: int | None = None
    try:
        for life in range(KILLS):
            helper.stdin.write(b"%d\n" % (durable + 1))
            helper.stdin.flush()
            writer = -1
            reported = durable
            status = None
            # The writer may print before the helper prints its pid: lines come in any order
            # between the two, so each is recognised by its form. Bounded: the writer stops
            # after WRITES_PER_LIFE_MAX records, and then "dead" arrives.
            for _ in range(WRITES_PER_LIFE_MAX + 2):
                line = helper.stdout.readline()
                assert line and not line.startswith(b"error"), f"life {life}: {line!r}"
                if line.startswith(b"pid "):
                    writer = int(line.split()[1])
                    time.sleep(rng.uniform(0, KILL_DELAY_MS_MAX) / 1000)
                    os.kill(writer, signal.SIGKILL)
                elif line.startswith(b"dead "):
                    status = int(line.split()[1])
                    writer = None
                    break
                else:
                    seq = int(line)
                    assert seq == reported + 1, f"writer skipped from {reported} to {seq}"
                    reported = seq
                    expected.apply(record_for(seq))
            assert status is not None
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            kills_mid_run += reported > durable
            one_more = copy_state(expected)
            one_more.apply(record_for(reported + 1))
            # Alternate read-only and read-write checks: the read-only one leaves the crash's
            # WAL in place, so the next writer must recover it itself.
            if life % 2:
                storage = Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=False)
            else:
                storage = Storage.open_readonly(path)
            with storage:
                loaded = storage.load()
            if loaded == expected:
                durable = reported
            else:
                assert loaded == one_more, f"life {life}: state matches neither {reported} nor +1"
                durable = reported + 1
                expected = one_more
    finally:
        if writer is not None:
            # A failed check left a writer running: end the helper's group (ours alone).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(helper.pid, signal.SIGKILL)
        helper.stdin.close()
        helper.wait(timeout=10)
        helper.stdout.close()
    assert durable > 0
    # Random delays must have killed writers in the middle of their work, not only at open.
    assert kills_mid_run > KILLS // 2
