"""Decoding a big msgpack document, and sorting a big list, a bounded piece at a time.

A follower that installs a peer's snapshot (a GiB at 1,000,000 keys x 1 KiB) must keep
answering heartbeats while it decodes it, so the state machine's restore is a generator that
yields between pieces (``StateMachine.restoring``); these are the two steps of it that no
library does in pieces:

- ``ArrayReader``: the items of a long msgpack array, ``batch`` at a time, each batch decoded
  by msgspec in C. msgspec decodes only whole documents, so a batch's extent is found first
  by decoding ``batch`` items as ``msgspec.Raw`` (C skips over them) under a made-up array
  header: the error msgspec raises for the bytes left over names the byte where the batch
  ends. A pure-Python skipper would cost a Python step per msgpack object (seconds at a
  GiB); this costs one exception per batch.
- ``sorted_in_pieces``: ``sorted()`` of a million strings is one call of ~1 s; sorting runs
  of a bounded length and merging them pairwise a bounded piece at a time is the same work
  split into calls of a few milliseconds.
"""

from __future__ import annotations

import bisect
import mmap
import re
from collections.abc import Callable, Generator
from typing import Any, Final

import msgspec

# msgspec's words for a document followed by more bytes (pinned by tests/test_snapinstall.py):
# the byte offset where the first object (here: our made-up array) ends.
_TRAILING: Final = re.compile(rb"trailing characters \(byte (\d+)\)")
_raw_items = msgspec.msgpack.Decoder(tuple[msgspec.Raw, ...])
# The first guess at a batch's extent; doubled until the batch fits.
_WINDOW_BYTES_MIN: Final = 64 << 10


class SliceError(ValueError):
    """The bytes are not the msgpack the reader was told to expect (one line)."""


def array_header(n: int) -> bytes:
    """A msgpack array header for ``n`` items, as msgspec writes it."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def read_array_header(buf: memoryview, pos: int) -> tuple[int, int]:
    """(items, position after the header) of the msgpack array starting at ``pos``."""
    if pos >= len(buf):
        raise SliceError(f"truncated: expected an array at byte {pos}")
    b = buf[pos]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F, pos + 1
    if b == 0xDC and pos + 3 <= len(buf):
        return int.from_bytes(buf[pos + 1 : pos + 3], "big"), pos + 3
    if b == 0xDD and pos + 5 <= len(buf):
        return int.from_bytes(buf[pos + 1 : pos + 5], "big"), pos + 5
    raise SliceError(f"expected an array at byte {pos}")


def end_of_items(buf: memoryview, pos: int, n: int, window: int) -> int:
    """Where the ``n`` msgpack objects starting at ``pos`` end. ``window`` is a first guess
    at their extent (it grows until they fit, up to the end of ``buf``)."""
    left = len(buf) - pos
    window = max(1, min(window, left))
    header = array_header(n)
    while True:
        probe = bytearray(header)
        probe += buf[pos : pos + window]
        try:
            _raw_items.decode(probe)
        except msgspec.DecodeError as e:
            text = str(e).encode()
            m = _TRAILING.search(text)
            if m is not None:
                return pos + int(m.group(1)) - len(header)
            if b"truncated" in text and window < left:
                window = min(left, window * 4)
                continue
            raise SliceError(f"at byte {pos}: {e}"[:200]) from None
        return pos + window


def page_dropper(buf: memoryview) -> Callable[[int, int], None]:
    """For a view of a whole read-only mapping (a snapshot file), a function that lets the
    kernel drop the pages of ``[start, stop)`` from it once they are read (they stay in the
    page cache); for anything else, one that does nothing. Why: unmapping a GiB of touched
    pages at the end tears down every page table entry in one call (34 ms for 1.1 GB on an
    idle machine, ~70 ms in the loop under load); dropped as the reader goes, each call costs
    under a millisecond and the unmap nothing."""
    mm = buf.obj
    if not isinstance(mm, mmap.mmap) or len(buf) != len(mm) or not hasattr(mm, "madvise"):
        return lambda start, stop: None
    page = mmap.PAGESIZE

    def drop(start: int, stop: int) -> None:
        first = -(-start // page) * page  # only whole pages behind the reader
        last = stop // page * page
        if last > first and not mm.closed:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)

    return drop


class ArrayReader:
    """Reads msgpack values one after another from ``buf``, long arrays in batches.
    ``drop`` is told each byte range the reader is done with (see page_dropper)."""

    def __init__(
        self, buf: memoryview, drop: Callable[[int, int], None] = lambda start, stop: None
    ) -> None:
        self.buf = buf
        self.pos = 0
        self.drop = drop
        self._item_bytes = 256  # the mean item size seen so far, for the next window

    def value(self, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
        """The next value, whole (a small one: an int, a short string, a small struct)."""
        end = end_of_items(self.buf, self.pos, 1, _WINDOW_BYTES_MIN)
        piece = self.buf[self.pos : end]
        try:
            return decoder.decode(piece)
        except msgspec.DecodeError as e:
            raise SliceError(f"at byte {self.pos}: {e}"[:200]) from None
        finally:
            piece.release()
            self.pos = end

    def items(
        self, decoder: msgspec.msgpack.Decoder[Any], batch: int
    ) -> Generator[None, None, list[Any]]:
        """The next value, an array, decoded ``batch`` items at a time (``decoder`` decodes a
        tuple of them); yields between batches."""
        n, self.pos = read_array_header(self.buf, self.pos)
        out: list[Any] = []
        while len(out) < n:
            k = min(batch, n - len(out))
            end = end_of_items(
                self.buf, self.pos, k, max(_WINDOW_BYTES_MIN, 2 * k * self._item_bytes)
            )
            probe = bytearray(array_header(k))
            probe += self.buf[self.pos : end]
            try:
                out.extend(decoder.decode(probe))
            except msgspec.DecodeError as e:
                raise SliceError(f"at byte {self.pos}: {e}"[:200]) from None
            self._item_bytes = max(1, (end - self.pos) // k)
            self.drop(self.pos, end)
            self.pos = end
            yield
        return out


def sorted_in_pieces(items: list[str], run: int) -> Generator[None, None, list[str]]:
    """``sorted(items)``, yielding between pieces of about ``run`` items of work."""
    runs: list[list[str]] = []
    for i in range(0, len(items), run):
        runs.append(sorted(items[i : i + run]))
        yield
    if not runs:
        return []
    while len(runs) > 1:
        merged: list[list[str]] = []
        for i in range(0, len(runs) - 1, 2):
            merged.append((yield from _merge(runs[i], runs[i + 1], run)))
        if len(runs) % 2:
            merged.append(runs[-1])
        runs = merged
    return runs[0]


def _merge(a: list[str], b: list[str], piece: int) -> Generator[None, None, list[str]]:
    """Two sorted lists as one, about ``piece`` items per step: each step takes the next
    ``piece`` items of one list and every item of the other that sorts before the last of
    them (at most ``piece`` too), and sorts those two runs together (C's timsort merges two
    runs in linear time)."""
    out: list[str] = []
    i = j = 0
    while i < len(a) and j < len(b):
        ai = min(i + piece, len(a))
        bj = bisect.bisect_right(b, a[ai - 1], j, min(j + piece, len(b)))
        if bj == min(j + piece, len(b)) and bj < len(b) and b[bj] <= a[ai - 1]:
            # b has more than a piece before a's last: take a piece of b and the a before it.
            ai = bisect.bisect_right(a, b[bj - 1], i, ai)
        step = a[i:ai]
        step += b[j:bj]
        step.sort()
        out += step
        i, j = ai, bj
        yield
    out += a[i:]
    out += b[j:]
    return out


__all__ = [
    "ArrayReader",
    "SliceError",
    "array_header",
    "end_of_items",
    "page_dropper",
    "read_array_header",
    "sorted_in_pieces",
]
