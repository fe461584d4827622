"""kill -9 at random moments: whatever a writer reported durable survives, and the database
opens clean afterwards.

A writer process writes PersistRecords in a loop and prints each sequence number after
write() returns, which is the moment the daemon would release the messages that depend on
it. The test SIGKILLs the writer at a random moment, then checks that the durable state is
exactly the fold of records 1..S or 1..S+1, where S is the last number the writer printed
(S+1 may have committed just before the kill, after write() returned but before the print).

The kill points are drawn in records, not in milliseconds, so they do not depend on how fast
the machine is: most lives are killed by the test once the writer has reported a drawn number
of records (0: as soon as it exists, while it opens the database), which lands the kill in
whatever the writer does next, usually the middle of a transaction; the rest kill themselves
right after a drawn record's write() returned and before it is reported, the S+1 case.

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
from pathlib import Path

from paxosd.core.io import DurableState, PersistRecord
from paxosd.core.types import ZERO_BALLOT, AcceptedEntry, Ballot, DecidedEntry, Snapshot
from paxosd.storage.store import DB_FILENAME, Storage

CLUSTER = "crash-test"
NODE = 1
KILLS = 200
# The test kills a writer once it has reported 0..KILL_AFTER_RECORDS_MAX records (drawn);
# one life in SELF_KILL_EVERY kills itself instead, after a drawn record's write.
KILL_AFTER_RECORDS_MAX = 6
SELF_KILL_EVERY = 4
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
import os, signal, sys
from pathlib import Path
import structlog
from paxosd.storage.store import Storage
from tests.test_storage_crash import CLUSTER, NODE, WRITES_PER_LIFE_MAX, record_for

# stdout carries the protocol with the test; logs go to stderr.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

path = Path(sys.argv[1])
for line in sys.stdin:  # one line per life ("START SELF_KILL_AT"); ends when stdin closes
    start, self_kill_at = map(int, line.split())
    pid = os.fork()
    if pid == 0:
        try:
            storage = Storage.open(path, cluster_id=CLUSTER, node_id=NODE, create=False)
            for seq in range(start, start + WRITES_PER_LIFE_MAX):
                storage.write(record_for(seq))
                if seq == self_kill_at:  # committed, not reported
                    os.kill(os.getpid(), signal.SIGKILL)
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
        compacted_through=state.compacted_through,
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
    ahead_of_report = 0  # lives whose last write committed but was not reported
    # None: no writer alive; -1: one may be alive whose pid has not been read yet.
    writer: int | None = None
    try:
        for life in range(KILLS):
            kill_after = rng.randint(0, KILL_AFTER_RECORDS_MAX)
            self_kill = life % SELF_KILL_EVERY == SELF_KILL_EVERY - 1
            # 0: never (the test kills it); else the absolute seq of the last record written.
            self_kill_at = durable + 1 + kill_after if self_kill else 0
            helper.stdin.write(b"%d %d\n" % (durable + 1, self_kill_at))
            helper.stdin.flush()
            writer = -1
            reported = durable
            killed = False
            status = None
            # The writer may print before the helper prints its pid: lines come in any order
            # between the two, so each is recognised by its form. Bounded: the writer stops
            # after WRITES_PER_LIFE_MAX records, and then "dead" arrives.
            for _ in range(WRITES_PER_LIFE_MAX + 2):
                line = helper.stdout.readline()
                assert line and not line.startswith(b"error"), f"life {life}: {line!r}"
                if line.startswith(b"pid "):
                    writer = int(line.split()[1])
                elif line.startswith(b"dead "):
                    status = int(line.split()[1])
                    writer = None
                    break
                else:
                    seq = int(line)
                    assert seq == reported + 1, f"writer skipped from {reported} to {seq}"
                    reported = seq
                    expected.apply(record_for(seq))
                # Kill once the writer is known and has reported the drawn number of records.
                if not (self_kill or killed) and writer != -1 and reported - durable >= kill_after:
                    os.kill(writer, signal.SIGKILL)
                    killed = True
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
                ahead_of_report += 1
            if self_kill:
                assert durable == self_kill_at, f"life {life}: a reported write was lost"
    finally:
        if writer is not None:
            # A failed check left a writer running: end the helper's group (ours alone).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(helper.pid, signal.SIGKILL)
        helper.stdin.close()
        helper.wait(timeout=10)
        helper.stdout.close()
    assert durable > 0
    # Coverage: kills in the middle of the work, not only at open, and the S+1 case seen.
    assert kills_mid_run > KILLS // 2
    assert ahead_of_report >= KILLS // SELF_KILL_EVERY
