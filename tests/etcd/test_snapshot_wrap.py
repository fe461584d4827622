"""The etcd-shaped snapshot file (etcd_wrap) reads back as the backup inside it, and only
exactly that shape does: a changed byte of padding or hash is refused."""

from __future__ import annotations

import hashlib

import pytest

from paxosd.storage.backup import (
    BackupError,
    BackupHeader,
    decode_backup,
    encode_backup,
    etcd_wrap,
)


def backup_bytes() -> bytes:
    from paxosd.statemachine.machine import StateMachine

    sm = StateMachine()
    state = sm.snapshot()
    header = BackupHeader(
        cluster_id="c",
        node_id=1,
        applied_index=1,
        digest=sm.digest(),
        created_at="2026-01-01T00:00:00Z",
        state_bytes=len(state),
    )
    return encode_backup(header, state)


def test_wrapped_reads_back_and_has_etcds_shape() -> None:
    raw = backup_bytes()
    wrapped = etcd_wrap(raw)
    assert len(wrapped) % 512 == 32
    assert hashlib.sha256(wrapped[:-32]).digest() == wrapped[-32:]
    assert decode_backup(wrapped).state == decode_backup(raw).state


@pytest.mark.parametrize("at", [-1, -40])
def test_a_changed_byte_is_refused(at: int) -> None:
    wrapped = bytearray(etcd_wrap(backup_bytes()))
    wrapped[at] ^= 1
    with pytest.raises(BackupError):
        decode_backup(bytes(wrapped))
