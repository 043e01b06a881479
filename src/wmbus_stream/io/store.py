"""The durable latest-per-meter store: ``core.latest`` in memory, written to SQLite in batches.

Strategy
    Arrivals go to the pure ``Latest`` (no SQL on the hot path: ``put`` is its own).
    ``flush()`` writes the rows that changed since the last flush to SQLite in one
    transaction; the service calls it at most ``store.flush.seconds`` apart and on shutdown,
    so flash sees one write burst per interval, not one per telegram. ``acknowledge(snapshot)``
    removes only rows whose generation did not change since the snapshot, in memory and on
    disk in one durable transaction, so a telegram that arrived during the push stays for the
    next one. When the owed deletions are most of the table, the table is emptied at once and
    what stays is written back, instead of one B-tree delete (and a rewritten page) per row.
    Each write costs time and disk in proportion to the rows it writes or deletes.

Invariants
    - Commits use WAL with ``synchronous=FULL``: an acknowledged delete or a returned
      ``flush()`` survives a power cut, not only a kill -9 (NORMAL could roll the last
      commit back after power loss, and a rolled-back delete means a duplicate, a rolled-back
      flush means a lost reading). One fsync per flush interval is cheap.
    - The file returns its space: ``auto_vacuum=INCREMENTAL`` with an ``incremental_vacuum``
      and a ``wal_checkpoint(TRUNCATE)`` after every write that freed pages, and the same
      checkpoint after a commit that left the WAL above ``journal_size_limit``. A database made without auto-vacuum is
      converted once, by a ``VACUUM`` when it is opened (atomic: if it fails, for example on
      a full disk, the file stays as it was and the next open tries again).
    - IO failures never lose memory state: a failed flush leaves its rows dirty, a failed
      acknowledge keeps the disk deletions as tombstones; both are retried by the next
      ``flush()`` and reported as ``StoreWriteError`` for the service to count. A corrupt
      database is moved aside (``<name>.corrupt-<UTC time>``) and the store starts empty,
      or, when found while running, rewrites memory into a new file (``meta`` values are
      lost then). A database that cannot be opened for writing (read-only mount, missing
      folder) leaves the store working in memory, with the pending rows read read-only when
      possible, and is retried at every flush; the outage is logged once.

Delivery is at-least-once, latest-value: a crash between an acknowledge in memory and its
disk delete makes that row come back and be sent again; the HES removes duplicates.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from ..atomic import open_private
from ..core.latest import DiskRow, Latest, Snapshot, head, meter_id, record
from ..errors import GatewayIOError

__all__ = ["SCHEMA", "Store", "StoreWriteError"]

log = logging.getLogger(__name__)

# The tables as the gateway creates them; a restored database must have exactly these.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meters (
        key BLOB PRIMARY KEY NOT NULL,
        manufacturer INTEGER,
        version INTEGER,
        device_type INTEGER,
        meter_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        telegram BLOB NOT NULL,
        generation INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
)
_UPSERT = (
    "INSERT OR REPLACE INTO meters (key, manufacturer, version, device_type, meter_id, received_at,"
    " telegram, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM meters WHERE key = ? AND generation <= ?"
_SELECT = "SELECT key, received_at, telegram, generation FROM meters"
_INCREMENTAL = 2  # PRAGMA auto_vacuum value
# Keeps the WAL from staying at the size of the largest write ever made (flash space).
_WAL_LIMIT = 4 * 1024 * 1024
# Emptying the table and writing back what stays pays when the deletions are this many times
# what stays; below this many deletions, one DELETE per row is cheap anyway.
_REWRITE_RATIO = 2
_REWRITE_MIN = 1000
_LOAD_CHUNK = 10_000
_HEAD_SIZE = len(record(0.0, 0, b""))
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}

# Columns of one upsert: key, manufacturer, version, device type, meter id, time, telegram, generation.
_Params = tuple[bytes, int | None, int | None, int | None, str, float, bytes | memoryview, int]


class StoreWriteError(GatewayIOError):
    """The store could not write its database (disk full, read-only, IO error); memory is kept."""


def _params(key: bytes, received_at: float, telegram: bytes | memoryview, generation: int) -> _Params:
    if len(key) == 8:
        return (key, key[0] | key[1] << 8, key[6], key[7], meter_id(key), received_at, telegram, generation)
    return (key, None, None, None, meter_id(key), received_at, telegram, generation)


def _record_params(entries: Iterable[tuple[bytes, bytes]]) -> Iterator[_Params]:
    """Upsert parameters of memory records, made one at a time (no list of a million tuples)."""
    for key, rec in entries:
        received_at, generation = head(rec)
        yield _params(key, received_at, memoryview(rec)[_HEAD_SIZE:], generation)


def _in_key_order(records: Mapping[bytes, bytes]) -> Iterator[tuple[bytes, bytes]]:
    # Key order makes the B-tree inserts sequential: less than half the time of arrival order.
    # Sorting the keys alone is about four times faster than sorting (key, record) pairs.
    for key in sorted(records):
        yield key, records[key]


def _disk_params(rows: Iterable[DiskRow]) -> Iterator[_Params]:
    for key, received_at, telegram, generation in rows:
        yield _params(key, received_at, telegram, generation)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged or not a database (not: full, read-only, busy)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name in _CORRUPT or (not name and type(exc) is sqlite3.DatabaseError)


class Store:
    """Latest accepted telegram per meter, in memory and flushed to SQLite in batches."""

    put: Callable[[bytes, float, bytes], None]

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        """Prepare a store for ``path``; use ``Store.open`` to also attach and load the database."""
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._db_lock = threading.RLock()  # serialises every database use: flush, acknowledge, meta
        self.latest = Latest(threading.Lock())
        self.put = self.latest.put  # the hot path: no wrapper, no SQL
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._read_only_loaded = False
        self._outage = False  # the database could not be opened; logged once until it can
        self.corrupt_moved: list[Path] = []  # databases moved aside by this instance

    # -- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> Store:
        """Open (or create) the store at ``path``, recover it and load its pending rows; never raises for IO."""
        store = cls(path, synchronous=synchronous)
        with store._db_lock:
            store._attach()
        return store

    def _attach(self) -> bool:
        """Connect, check, create the schema and merge disk rows into memory; False if unavailable."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(open_private(self.path))  # 0600 whatever the umask; -wal and -shm follow it
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            self._unavailable(exc)
            return False
        try:
            result = db.execute("PRAGMA integrity_check").fetchall()
            if result != [("ok",)]:
                problems = "; ".join(str(r[0]) for r in result[:3])
                db.close()
                self._move_aside(f"integrity check failed: {problems}")
                return self._attach_fresh()
            self._auto_vacuum(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            for statement in SCHEMA:
                db.execute(statement)
            loaded = self._load(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            if _is_corrupt(exc):
                self._move_aside(f"{exc}")
                return self._attach_fresh()
            self._unavailable(exc)
            return False
        if self._outage:
            log.warning("state database %s is available again; writing what was kept in memory", self.path)
            self._outage = False
        self._db = db
        if loaded:
            log.info("state database %s: %d pending meters recovered", self.path, loaded)
        return True

    def _auto_vacuum(self, db: sqlite3.Connection) -> None:
        """Make the file return freed pages: set on a new file, converted once (VACUUM) on an old one."""
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            return
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect at once while there is no table
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            return
        try:
            db.execute("VACUUM")
        except sqlite3.OperationalError as exc:  # full, busy, read-only: the file is as it was
            log.warning("state database %s: converting to auto-vacuum failed (%s); it keeps its freed"
                        " space until the next start tries again", self.path, exc)
            return
        log.info("state database %s converted to auto-vacuum: it returns freed space from now on", self.path)

    def _load(self, db: sqlite3.Connection) -> int:
        """Merge every disk row into memory, in chunks (no list of the whole table); returns how many."""
        cursor = db.execute(_SELECT)
        count = 0
        while chunk := cursor.fetchmany(_LOAD_CHUNK):
            count += self.latest.merge(chunk)
        return count

    def _unavailable(self, exc: BaseException) -> None:
        """The database cannot be opened for writing: say so once per outage, try to read it."""
        if not self._outage:
            log.error("state database %s cannot be opened (%s); keeping pending telegrams in memory"
                      " and retrying at every flush", self.path, exc)
            self._outage = True
        self._load_read_only()

    def _load_read_only(self) -> None:
        """Recover pending rows from a database we cannot write (read-only mount), if it reads."""
        if self._read_only_loaded or not self.path.is_file():
            return
        uri = self.path.resolve().as_uri()
        wal = Path(f"{self.path}-wal")
        # A WAL database opens read-only only if its -shm exists; "immutable" needs no -shm but
        # ignores the WAL, so it is correct only when there is no WAL content to miss.
        try:
            wal_in_use = wal.is_file() and wal.stat().st_size > 0
        except OSError:
            wal_in_use = True
        options = ["mode=ro"] if wal_in_use else ["mode=ro", "immutable=1"]
        for option in options:
            try:
                db = sqlite3.connect(f"{uri}?{option}", uri=True)
                try:
                    loaded = self._load(db)
                finally:
                    db.close()
            except (OSError, sqlite3.Error) as exc:
                log.debug("state database %s cannot be read with %s either: %s", self.path, option, exc)
                continue
            self._read_only_loaded = True
            log.warning("state database %s read read-only: %d pending meters recovered", self.path, loaded)
            return

    def _attach_fresh(self) -> bool:
        """Attach to a new empty database after the old one was moved aside."""
        if self.path.exists():  # moving aside failed; never loop on a file we cannot replace
            return False
        self.latest.rewrite_all()  # rows memory read before (read-only, or part of the old file) go to the new one
        return self._attach()

    def _move_aside(self, reason: str) -> None:
        """Rename a corrupt database (and its WAL/SHM) so the gateway can start empty."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        number = 1
        while target.exists():  # never overwrite an earlier copy someone may want to inspect
            number += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{number}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, Path(f"{target}{suffix}"))
        except OSError as exc:
            log.error("state database %s is corrupt (%s) and cannot be moved aside (%s);"
                      " keeping pending telegrams in memory only", self.path, reason, exc)
            return
        self.corrupt_moved.append(target)
        log.error("state database %s is corrupt (%s); moved it to %s and started a new one;"
                  " pending telegrams not in memory are lost", self.path, reason, target)

    def _detach_corrupt(self, exc: BaseException) -> None:
        """Database went corrupt while running: move it aside; memory (the full truth) is rewritten."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        self._move_aside(str(exc))
        self.latest.rewrite_all()

    # -- push side ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """An immutable, sorted copy of every pending row (durable rows plus newer arrivals)."""
        return self.latest.snapshot()

    def acknowledge(self, snapshot: Snapshot) -> int:
        """Forget the snapshot's rows that did not change since; durable on return. Returns how many.

        Raises StoreWriteError when the disk delete failed: memory has forgotten the rows
        anyway (the HES has them) and the next ``flush()`` retries the deletion.
        """
        with self._db_lock:
            # Disk first, so that a row missing from memory (``pending()``) is gone from disk
            # too, unless the delete failed.
            self.latest.owe(snapshot)
            try:
                self._write({})
            finally:
                deleted = self.latest.forget(snapshot)
        return deleted

    def pending(self) -> int:
        """Number of meters waiting for the next push."""
        return self.latest.pending()

    def dirty(self) -> int:
        """Number of rows (and disk deletions) not yet written to the database."""
        return self.latest.dirty()

    # -- persistence ----------------------------------------------------------------------

    def flush(self) -> int:
        """Write every changed row and owed deletion in one durable transaction; returns rows written."""
        with self._db_lock:
            if not self.latest.dirty() and self._db is not None:
                return 0
            batch = self.latest.take_dirty()
            try:
                self._write(batch)
            except BaseException:
                self.latest.keep_dirty(batch)  # arrivals during the failed write are newer: they stay
                raise
        return len(batch)

    def _write(self, batch: Mapping[bytes, bytes]) -> None:
        """One transaction: owed deletions first, then upserts; raises StoreWriteError on failure."""
        if self._db is None and not self._attach():
            raise StoreWriteError(f"state database {self.path} is not available; data kept in memory")
        db = self._db
        assert db is not None
        owed = self.latest.owed()
        try:
            db.execute("BEGIN IMMEDIATE")
            if owed and not self._rewrite(db, owed, batch):
                db.executemany(_DELETE, sorted(owed))
            db.executemany(_UPSERT, _record_params(_in_key_order(batch)))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db)
            if _is_corrupt(exc):
                self._detach_corrupt(exc)
            raise StoreWriteError(f"state database {self.path}: write failed ({exc}); data kept in memory,"
                                  " retried at the next flush") from exc
        self.latest.settle(owed)
        self._tidy(db, vacuum=bool(owed))

    def _rewrite(self, db: sqlite3.Connection, owed: list[tuple[bytes, int]], batch: Mapping[bytes, bytes]) -> bool:
        """Empty the table and write back what stays, if that is much less than the deletions; True if done.

        What stays: rows memory knows are on disk and no tombstone covers, and the disk
        versions of dirty keys that no tombstone covers (read first). Emptying a table frees
        its pages without rewriting them.
        """
        if len(owed) < _REWRITE_MIN or 2 * len(owed) < self.latest.pending():
            return False  # a small or partial acknowledgement: not worth looking at every row
        kept, unknown = self.latest.survivors(batch.keys())
        if _REWRITE_RATIO * (len(kept) + len(unknown)) > len(owed):
            return False
        covered = self.latest.covered
        found: list[DiskRow] = []
        for key in unknown:
            row = db.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
            if row is not None and not covered(row[0], row[3]):
                found.append(row)
        db.execute("DELETE FROM meters")
        db.executemany(_UPSERT, _record_params(kept))
        db.executemany(_UPSERT, _disk_params(found))
        return True

    def _tidy(self, db: sqlite3.Connection, *, vacuum: bool) -> None:
        """Give freed pages back to the file system and truncate a WAL a big commit left; best effort."""
        try:
            vacuum = vacuum and db.execute("PRAGMA freelist_count").fetchone()[0] > 0
            if vacuum:
                db.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page only
            # The file shrinks when the vacuum's pages are checkpointed, not before.
            if vacuum or os.path.getsize(f"{self.path}-wal") > _WAL_LIMIT:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error) as exc:  # the data is committed; the next write tries again
            self._rollback(db)
            log.debug("state database %s: returning free space failed (%s)", self.path, exc)

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        """Roll back a failed transaction if one is still open."""
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # -- small durable state --------------------------------------------------------------

    def get_meta(self, name: str) -> bytes | None:
        """A value stored with ``set_meta``, or None (also when the database is unavailable)."""
        with self._db_lock:
            if self._db is None and not self._attach():
                return None
            assert self._db is not None
            try:
                found = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error as exc:
                log.error("state database %s: reading %s failed (%s)", self.path, name, exc)
                return None
        if found is None:
            return None
        value = found[0]
        return value.encode() if isinstance(value, str) else bytes(value)

    def set_meta(self, name: str, value: bytes | str) -> None:
        """Store a small value durably (own transaction); raises StoreWriteError on failure."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        with self._db_lock:
            if self._db is None and not self._attach():
                raise StoreWriteError(f"state database {self.path} is not available; {name} not saved")
            db = self._db
            assert db is not None
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, data))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise StoreWriteError(f"state database {self.path}: saving {name} failed ({exc})") from exc

    # -- lifecycle ------------------------------------------------------------------------

    def close(self, *, flush: bool = True) -> None:
        """Flush (unless told not to; a failure is logged) and close the database."""
        if self._closed:
            return
        if flush:
            try:
                self.flush()
            except StoreWriteError as exc:
                log.error("%s; %d meters not saved at close", exc, self.latest.dirty())
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
