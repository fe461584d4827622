"""Fuzz the decoders that read bytes back from disk: any bytes give a value or a typed
storage error, never another exception (a damaged file is an operating condition)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxosd.core.io import PersistRecord
from paxosd.core.types import DecidedEntry
from paxosd.storage.store import (
    DB_FILENAME,
    CorruptRecord,
    Storage,
    StorageError,
    _decided_checksum,
    decode_value,
    encode_value,
)


@settings(max_examples=2000)
@given(st.binary(max_size=512))
def test_decode_value_of_arbitrary_bytes_is_a_value_or_a_corrupt_record(blob: bytes) -> None:
    try:
        value = decode_value(blob, path="/fuzz.sqlite3", where="table decided slot 1")
    except CorruptRecord as exc:
        assert str(exc).startswith("/fuzz.sqlite3: table decided slot 1 does not decode")
        return
    assert isinstance(value, tuple) and all(isinstance(c, bytes) for c in value)
    # What decodes survives a rewrite (msgpack has several encodings of one value, so the
    # bytes themselves need not come back).
    assert decode_value(encode_value(value)) == value


@given(st.lists(st.binary(max_size=64), max_size=8).map(tuple))
def test_every_value_round_trips_through_the_encoding(value: tuple[bytes, ...]) -> None:
    assert decode_value(encode_value(value)) == value


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / DB_FILENAME
    with Storage.open(path, cluster_id="fuzz", node_id=1, create=True) as storage:
        storage.write(PersistRecord(decided=(DecidedEntry(1, (b"ok",)),)))
    return path


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=256), checksum_valid=st.booleans())
def test_load_of_an_arbitrary_stored_row_is_a_state_or_a_typed_error(
    fuzz_db: Path, blob: bytes, checksum_valid: bool
) -> None:
    checksum = _decided_checksum(1, blob) ^ (0 if checksum_valid else 1)
    side = sqlite3.connect(fuzz_db)
    side.execute("UPDATE decided SET value = ?, checksum = ? WHERE slot = 1", (blob, checksum))
    side.commit()
    side.close()
    with Storage.open(fuzz_db, cluster_id="fuzz", node_id=1, create=False) as storage:
        try:
            state = storage.load()
        except StorageError as exc:
            assert str(fuzz_db) in str(exc) and "decided slot 1" in str(exc)
            assert checksum_valid or "checksum mismatch" in str(exc)
            return
    assert checksum_valid
    assert state.decided[1].value == decode_value(blob)
