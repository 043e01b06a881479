"""The durable latest-per-meter store: what the next push must carry.

Strategy
    Arrivals go to an in-memory dict ``key -> row`` (the hot path: one lock, one tuple, two
    dict stores, no SQL). ``flush()`` writes the rows that changed since the last flush to
    SQLite in one transaction; the service calls it at most ``store.flush.seconds`` apart and
    on shutdown, so flash sees one write burst per interval, not one per telegram.
    ``snapshot()`` copies the rows for a push; ``acknowledge(snapshot)`` removes only rows
    whose generation did not change since the snapshot, in memory and on disk in one durable
    transaction, so a telegram that arrived during the push stays for the next one.

Invariants
    - A key is the meter's 8-byte wireless link address ``telegram[2:10]`` (manufacturer
      code LSB first, ID LSB first, version, device type); one row per key, so memory and
      disk are bounded by the number of meters, never by time offline.
    - Generations come from one store-wide counter that only grows within a process and
      resumes above the largest generation on disk after a restart, so an arrival's
      generation is larger than any stored or snapshotted one (snapshots never outlive the
      process) and a stale snapshot can never delete a newer telegram.
    - Memory holds every pending row (disk rows are loaded on open); disk holds a subset
      that is never newer than memory. Acknowledging a row deletes it from memory only if
      its generation is unchanged, and from disk every version <= the acknowledged one.
    - Commits use WAL with ``synchronous=FULL``: an acknowledged delete or a returned
      ``flush()`` survives a power cut, not only a kill -9 (NORMAL could roll the last
      commit back after power loss, and a rolled-back delete means a duplicate, a rolled-back
      flush means a lost reading). One fsync per flush interval is cheap.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..atomic import open_private
from ..errors import GatewayIOError

__all__ = ["Row", "SCHEMA", "Snapshot", "Store", "StoreWriteError", "meter_key"]

log = logging.getLogger(__name__)

# (key, meter id, received_at epoch seconds UTC, report telegram, generation). A plain tuple:
# the cheapest immutable record CPython has (a NamedTuple costs a Python-level __new__ per put).
Row = tuple[bytes, str, float, bytes, int]

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
# Keeps the WAL from staying at the size of the largest flush ever made (flash space).
_WAL_LIMIT = 4 * 1024 * 1024
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


class StoreWriteError(GatewayIOError):
    """The store could not write its database (disk full, read-only, IO error); memory is kept."""


def meter_key(telegram: bytes) -> bytes:
    """Store key of a checked wireless telegram: its link address (manufacturer, ID, version, type)."""
    return telegram[2:10]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The rows one push carries, sorted by meter ID then key (same content, same bytes)."""

    rows: tuple[Row, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


def _sort_key(row: Row) -> tuple[str, bytes]:
    return row[1], row[0]


# Columns of one upsert: key, manufacturer, version, device type, meter id, time, telegram, generation.
_Params = tuple[bytes, int | None, int | None, int | None, str, float, bytes, int]


def _first(params: _Params) -> bytes:
    return params[0]


def _params(row: Row) -> _Params:
    key = row[0]
    if len(key) == 8:
        return (key, key[0] | key[1] << 8, key[6], key[7], row[1], row[2], row[3], row[4])
    return (key, None, None, None, row[1], row[2], row[3], row[4])


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged or not a database (not: full, read-only, busy)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name in _CORRUPT or (not name and type(exc) is sqlite3.DatabaseError)


class Store:
    """Latest accepted telegram per meter, in memory and flushed to SQLite in batches."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        """Prepare a store for ``path``; use ``Store.open`` to also attach and load the database."""
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._lock = threading.Lock()  # guards _rows, _dirty, _gen (held for microseconds)
        self._db_lock = threading.RLock()  # serialises every database use: flush, acknowledge, meta
        self._rows: dict[bytes, Row] = {}
        self._dirty: dict[bytes, Row] = {}
        self._tombstones: dict[bytes, int] = {}  # disk deletes still owed: key -> generation
        self._gen = 0
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
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            for statement in SCHEMA:
                db.execute(statement)
            loaded = db.execute(
                "SELECT key, meter_id, received_at, telegram, generation FROM meters"
            ).fetchall()
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
        self._merge(loaded)
        return True

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
                    loaded = db.execute(
                        "SELECT key, meter_id, received_at, telegram, generation FROM meters").fetchall()
                finally:
                    db.close()
            except (OSError, sqlite3.Error) as exc:
                log.debug("state database %s cannot be read with %s either: %s", self.path, option, exc)
                continue
            self._read_only_loaded = True
            log.warning("state database %s read read-only: %d pending meters recovered", self.path, len(loaded))
            self._merge(loaded)
            return

    def _attach_fresh(self) -> bool:
        """Attach to a new empty database after the old one was moved aside."""
        if self.path.exists():  # moving aside failed; never loop on a file we cannot replace
            return False
        return self._attach()

    def _merge(self, loaded: list[Row]) -> None:
        """Add disk rows that memory does not have; memory rows are newer (they arrived since).

        Only differs from a plain load when the database became available after arrivals or
        acknowledgements already happened in memory: a key memory holds, or has acknowledged,
        gets a tombstone for its disk row, so the next write replaces or deletes it.
        """
        tombstones = self._tombstones
        with self._lock:
            for row in loaded:
                key, generation = row[0], row[4]
                if generation > self._gen:
                    self._gen = generation
                current = self._rows.get(key)
                if current is not None and current[4] == generation:
                    continue  # the same row, read earlier while the file was read-only
                if current is not None or key in tombstones:
                    if tombstones.get(key, -1) < generation:
                        tombstones[key] = generation
                else:
                    self._rows[key] = row
        if loaded:
            log.info("state database %s: %d pending meters recovered", self.path, len(loaded))

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
        self._tombstones.clear()  # the new file has none of those rows
        with self._lock:
            self._dirty = dict(self._rows)

    # -- the hot path ---------------------------------------------------------------------

    def put(self, key: bytes, meter_id: str, received_at: float, report_telegram: bytes) -> None:
        """Keep this telegram as the meter's latest; memory only until the next flush."""
        with self._lock:
            self._gen += 1
            row = (key, meter_id, received_at, report_telegram, self._gen)
            self._rows[key] = row
            self._dirty[key] = row

    # -- push side ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """An immutable, sorted copy of every pending row (durable rows plus newer arrivals)."""
        with self._lock:
            rows = list(self._rows.values())
        rows.sort(key=_sort_key)
        return Snapshot(tuple(rows))

    def acknowledge(self, snapshot: Snapshot) -> int:
        """Forget the snapshot's rows that did not change since; durable on return. Returns how many.

        Raises StoreWriteError when the disk delete failed: memory has forgotten the rows
        anyway (the HES has them) and the next ``flush()`` retries the deletion.
        """
        with self._db_lock:
            # On disk every acknowledged version goes, also where a newer one arrived meanwhile:
            # that newer one is in memory (dirty), and resending the acknowledged one after a
            # crash would only be a duplicate. Disk first, so that a row missing from memory
            # (``pending()``) is gone from disk too, unless the delete failed.
            tombstones = self._tombstones
            for row in snapshot.rows:
                if tombstones.get(row[0], -1) < row[4]:
                    tombstones[row[0]] = row[4]
            try:
                self._write([])
            finally:
                deleted = 0
                with self._lock:
                    rows, dirty = self._rows, self._dirty
                    for row in snapshot.rows:
                        key, generation = row[0], row[4]
                        current = rows.get(key)
                        if current is not None and current[4] == generation:
                            del rows[key]
                            dirty.pop(key, None)
                            deleted += 1
        return deleted

    def pending(self) -> int:
        """Number of meters waiting for the next push."""
        return len(self._rows)

    def dirty(self) -> int:
        """Number of rows (and disk deletions) not yet written to the database."""
        return len(self._dirty) + len(self._tombstones)

    # -- persistence ----------------------------------------------------------------------

    def flush(self) -> int:
        """Write every changed row and owed deletion in one durable transaction; returns rows written."""
        with self._db_lock:
            if not self._dirty and not self._tombstones and self._db is not None:
                return 0
            with self._lock:
                batch, self._dirty = self._dirty, {}
            try:
                self._write(batch.values())
            except BaseException:
                with self._lock:
                    # Arrivals during the failed write are newer: keep them, re-add the rest.
                    for key, row in batch.items():
                        self._dirty.setdefault(key, row)
                raise
        return len(batch)

    def _write(self, rows: Iterable[Row]) -> None:
        """One transaction: owed deletions first, then upserts; raises StoreWriteError on failure."""
        if self._db is None and not self._attach():
            raise StoreWriteError(f"state database {self.path} is not available; data kept in memory")
        db = self._db
        assert db is not None
        tombstones = list(self._tombstones.items())
        try:
            db.execute("BEGIN IMMEDIATE")
            if tombstones:
                db.executemany(_DELETE, sorted(tombstones))
            # Key order makes the B-tree inserts sequential: about half the time of arrival order.
            upserts = sorted(map(_params, rows), key=_first)
            db.executemany(_UPSERT, upserts)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db)
            if _is_corrupt(exc):
                self._detach_corrupt(exc)
            raise StoreWriteError(f"state database {self.path}: write failed ({exc}); data kept in memory,"
                                  " retried at the next flush") from exc
        for key, generation in tombstones:
            if self._tombstones.get(key) == generation:
                del self._tombstones[key]

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
                log.error("%s; %d meters not saved at close", exc, len(self._dirty))
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
