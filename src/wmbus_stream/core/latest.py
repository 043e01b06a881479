"""The latest telegram per meter: what the next push must carry (the pure half of the store).

Strategy
    ``put`` keeps one record per meter in a dict ``key -> record`` (the hot path: one lock,
    one ``bytes``, two dict stores). A record is a 16-byte head, the arrival time (a double)
    and the generation (an unsigned 64-bit integer), followed by the report telegram: one
    object per meter where a tuple, a float and an int beside the telegram cost about 110
    bytes more. The rows changed since the last write form the dirty set, which the store
    adapter takes whole for a flush and gives back if the write failed. ``snapshot()`` copies
    the rows for a push; ``owe(snapshot)`` records the disk deletions an acknowledgement
    needs (tombstones, kept until the adapter reports them written) and ``forget(snapshot)``
    drops from memory only the rows that did not change since the snapshot.

Invariants
    - A key is the meter's 8-byte wireless link address ``telegram[2:10]`` (manufacturer
      code LSB first, ID LSB first, version, device type); the meter ID is derived from it
      (``meter_id``), never stored; one row per key, so memory and disk are bounded by the
      number of meters, never by time offline.
    - Generations come from one counter that only grows and resumes above the largest
      generation merged from disk, so an arrival's generation is larger than any stored or
      snapshotted one and a stale snapshot can never forget a newer telegram. A record is
      made once per generation, so "unchanged since the snapshot" is record identity.
    - Memory holds every pending row; disk holds a subset never newer than memory: a row
      that is not dirty is on disk exactly as in memory (or, after a database was replaced,
      not at all), a dirty one has an older version on disk or none, and a key memory has
      forgotten is on disk at most in a version its tombstone covers.
    - Nothing here does IO or reads the clock: times come in with ``put`` and the lock is a
      parameter (the adapter passes a ``threading.Lock``). Tombstones are touched only by the
      one writer the adapter lets in at a time; ``put`` never touches them.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

__all__ = ["DiskRow", "Latest", "Row", "Snapshot", "generation_of", "head", "meter_id", "meter_key", "record"]

# A row as callers see it: (key, meter id, received_at epoch seconds UTC, report telegram, generation).
Row = tuple[bytes, str, float, bytes, int]
# A row as the disk holds it: (key, received_at, telegram, generation).
DiskRow = tuple[bytes, float, bytes, int]

_HEAD = struct.Struct("<dQ")
_GENERATION = struct.Struct("<Q")


def meter_key(telegram: bytes) -> bytes:
    """Store key of a checked wireless telegram: its link address (manufacturer, ID, version, type)."""
    return telegram[2:10]


def meter_id(key: bytes) -> str:
    """The meter ID of a link-address key, as the report and the analyzer show it (``telegram[7:3:-1]``)."""
    return key[5:1:-1].hex().upper()


def record(received_at: float, generation: int, telegram: bytes) -> bytes:
    """The one object memory keeps for a row: arrival time and generation, then the telegram."""
    return _HEAD.pack(received_at, generation) + telegram


def head(rec: bytes) -> tuple[float, int]:
    """Arrival time and generation of a record."""
    received_at, generation = _HEAD.unpack_from(rec)
    return received_at, generation


def generation_of(rec: bytes) -> int:
    """The generation of a record."""
    generation: int = _GENERATION.unpack_from(rec, 8)[0]
    return generation


def _order(entry: tuple[bytes, bytes]) -> bytes:
    # Meter ID then key: the ID's bytes sort as its hex digits do, so no string is made.
    key = entry[0]
    return key[5:1:-1] + key


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The rows one push carries, sorted by meter ID then key (same content, same bytes)."""

    entries: tuple[tuple[bytes, bytes], ...]  # (key, record)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Row]:
        for key, rec in self.entries:
            received_at, generation = head(rec)
            yield key, meter_id(key), received_at, rec[_HEAD.size:], generation


class Latest:
    """Latest accepted telegram per meter in memory, with what is owed to the disk."""

    def __init__(self, lock: AbstractContextManager[object]) -> None:
        """An empty store; ``lock`` guards rows, dirty set and generation (held for microseconds)."""
        self._lock = lock
        self._rows: dict[bytes, bytes] = {}
        self._dirty: dict[bytes, bytes] = {}
        self._tombstones: dict[bytes, int] = {}  # disk deletions still owed: key -> generation
        self._gen = 0

    # -- the hot path ---------------------------------------------------------------------

    def put(self, key: bytes, received_at: float, telegram: bytes) -> None:
        """Keep this telegram as the meter's latest; dirty until the next write."""
        with self._lock:
            self._gen += 1
            rec = _HEAD.pack(received_at, self._gen) + telegram
            self._rows[key] = rec
            self._dirty[key] = rec

    # -- push side ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """An immutable, sorted copy of every pending row."""
        with self._lock:
            entries = list(self._rows.items())
        entries.sort(key=_order)
        return Snapshot(tuple(entries))

    def owe(self, snapshot: Snapshot) -> None:
        """Owe the disk deletion of every version up to each acknowledged one.

        Also where a newer one arrived meanwhile: that one is in memory (dirty), and resending
        the acknowledged one after a crash would only be a duplicate.
        """
        tombstones = self._tombstones
        unpack = _GENERATION.unpack_from  # a million rows: no call per row beyond this one
        for key, rec in snapshot.entries:
            generation = unpack(rec, 8)[0]
            if tombstones.get(key, -1) < generation:
                tombstones[key] = generation

    def forget(self, snapshot: Snapshot) -> int:
        """Drop the snapshot's rows that did not change since; returns how many."""
        deleted = 0
        with self._lock:
            rows, dirty = self._rows, self._dirty
            for key, rec in snapshot.entries:
                if rows.get(key) is rec:
                    del rows[key]
                    dirty.pop(key, None)
                    deleted += 1
        return deleted

    def pending(self) -> int:
        """Number of meters waiting for the next push."""
        return len(self._rows)

    def dirty(self) -> int:
        """Number of rows (and disk deletions) not yet written."""
        return len(self._dirty) + len(self._tombstones)

    # -- what the adapter writes ----------------------------------------------------------

    def take_dirty(self) -> dict[bytes, bytes]:
        """The rows changed since the last write, which are no longer dirty (``keep_dirty`` if the write fails)."""
        with self._lock:
            batch, self._dirty = self._dirty, {}
        return batch

    def keep_dirty(self, batch: Mapping[bytes, bytes]) -> None:
        """A write of ``batch`` failed: dirty again, except where a newer arrival already is."""
        with self._lock:
            for key, rec in batch.items():
                self._dirty.setdefault(key, rec)

    def owed(self) -> list[tuple[bytes, int]]:
        """The disk deletions owed: (key, generation), every disk version up to it goes."""
        return list(self._tombstones.items())

    def settle(self, written: Iterable[tuple[bytes, int]]) -> None:
        """These deletions are durable; a tombstone raised meanwhile stays."""
        tombstones = self._tombstones
        for key, generation in written:
            if tombstones.get(key) == generation:
                del tombstones[key]

    def survivors(self, written: Collection[bytes]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        """What disk keeps once the owed deletions are done, for rewriting the table instead.

        Returns the rows that are on disk as in memory and not covered by a tombstone, and
        the keys whose disk version memory does not know (dirty ones): the adapter reads
        those. ``written`` are keys the same transaction writes anew, left out of both.
        """
        with self._lock:
            rows = list(self._rows.items())
            dirty = set(self._dirty)
        tombstones = self._tombstones
        unpack = _GENERATION.unpack_from
        kept = [(key, rec) for key, rec in rows
                if key not in dirty and key not in written and tombstones.get(key, -1) < unpack(rec, 8)[0]]
        return kept, [key for key in dirty if key not in written]

    def covered(self, key: bytes, generation: int) -> bool:
        """Whether an owed deletion removes this disk version."""
        return self._tombstones.get(key, -1) >= generation

    # -- recovery -------------------------------------------------------------------------

    def merge(self, loaded: Iterable[DiskRow]) -> int:
        """Add disk rows that memory does not have; memory rows are newer (they arrived since).

        Only differs from a plain load when the database became available after arrivals or
        acknowledgements already happened in memory: a key memory holds, or has acknowledged,
        gets a tombstone for its disk row, so the next write replaces or deletes it. Returns
        how many rows were read.
        """
        tombstones = self._tombstones
        count = 0
        with self._lock:
            rows = self._rows
            for key, received_at, telegram, generation in loaded:
                count += 1
                self._gen = max(self._gen, generation)
                current = rows.get(key)
                if current is not None and generation_of(current) == generation:
                    continue  # the same row, read earlier while the file was read-only
                if current is not None or key in tombstones:
                    if tombstones.get(key, -1) < generation:
                        tombstones[key] = generation
                else:
                    rows[key] = _HEAD.pack(received_at, generation) + telegram
        return count

    def rewrite_all(self) -> None:
        """The disk lost everything (a new file): every row is dirty, no deletion is owed."""
        self._tombstones.clear()
        with self._lock:
            self._dirty = dict(self._rows)
