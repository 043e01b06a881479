"""The embedded store: readings and receptions in one SQLite file (or in memory).

One writer at a time (SQLite's rule); a POST's lines are staged (the first ``SPILL_LINES`` in
memory, the rest in a TEMP table, so memory stays bounded) and written in one ``BEGIN
IMMEDIATE`` transaction at its end, so a slow upload never holds the lock. The commit is two
``INSERT .. SELECT`` from the POST's TEMP table (filled by ``executemany``), the reading's id
looked up inside SQLite. Each committed POST leaves its fingerprint (SHA-256 over its lines' digests,
gateways and times) in ``report``: a retried report is answered from it without a row's work.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .coverage import METER_COVERAGE_SELECT
from .report import STORE_COLUMNS, ReportLine, store_rows
from .store import Heard, Publication, Reading, Reception, utc_now

__all__ = ["SqliteStore"]



_SCHEMA = """
CREATE TABLE IF NOT EXISTS reading (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,          -- SHA-256 of the wireless telegram: the dedup key
    manufacturer TEXT NOT NULL,
    meter_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    device_type INTEGER NOT NULL,
    ci INTEGER NOT NULL,
    access_number INTEGER,
    telegram BLOB NOT NULL,
    first_heard TEXT NOT NULL,
    first_gateway TEXT NOT NULL,
    stored_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reading_meter ON reading (manufacturer, meter_id);
CREATE TABLE IF NOT EXISTS heard_by (
    id INTEGER PRIMARY KEY,
    reading_id INTEGER NOT NULL REFERENCES reading (id),
    gateway TEXT NOT NULL,
    heard_at TEXT NOT NULL,
    rssi_code INTEGER,
    receiver TEXT,
    age_minutes INTEGER,
    stored_at TEXT NOT NULL,
    UNIQUE (reading_id, gateway, heard_at)
);
CREATE INDEX IF NOT EXISTS heard_by_heard_at ON heard_by (heard_at);  -- receptions(since, until)
-- New readings waiting for the MQTT publisher (hes.publish), drained in id order; AUTOINCREMENT
-- so an id is never reused after the rows before it were published.
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reading_id INTEGER NOT NULL UNIQUE REFERENCES reading (id)
);
CREATE TABLE IF NOT EXISTS report (
    fingerprint TEXT PRIMARY KEY,         -- SHA-256 over the lines' digests, gateways and times, in order
    lines INTEGER NOT NULL,
    stored_at TEXT NOT NULL
);
"""
_SCHEMA += f"CREATE VIEW IF NOT EXISTS meter_coverage AS {METER_COVERAGE_SELECT};\n"
# PRAGMA user_version of the schema above: 0 had no report table (it is created by the IF NOT EXISTS).
SCHEMA_VERSION = 1
_PAGE = 4096  # receptions() rows read per hold of the lock


_COLUMNS = ", ".join(STORE_COLUMNS)
_PLACES = ", ".join("?" * len(STORE_COLUMNS))


class _SqliteIngest:
    """One POST's lines: the first ``SPILL_LINES`` in memory, then in its TEMP table, until ``commit``."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._rows: list[tuple[Any, ...]] = []  # STORE_COLUMNS of the lines not yet in the TEMP table
        self._table: str | None = None  # the TEMP table of this POST, once made
        self._count = 0
        self._fingerprint = hashlib.sha256()

    def stage(self, lines: Sequence[ReportLine]) -> None:
        rows, keys = store_rows(lines)
        self._rows += rows
        self._count += len(rows)
        self._fingerprint.update(keys + b"\n")
        if len(self._rows) > self._store.SPILL_LINES:
            self._spill()

    def _spill(self) -> None:
        """Move the rows kept in memory to this POST's TEMP table (the main database is not locked)."""
        rows, self._rows = self._rows, []
        self._table = self._store._spill(self._table, rows)

    def commit(self) -> tuple[int, int]:
        if not self._count:
            return 0, 0
        self._spill()
        table, self._table = self._table, None
        assert table is not None
        return self._store._commit(table, self._fingerprint.hexdigest(), self._count)

    def abort(self) -> None:
        self._rows = []
        if self._table is not None:
            table, self._table = self._table, None
            self._store._drop(table)


class SqliteStore:
    """Readings and heard_by rows in SQLite (``:memory:`` by default); one writer at a time."""

    # Lines of one POST kept in memory before they go to its TEMP table (a few hundred bytes each).
    SPILL_LINES = 8192

    def __init__(self, path: str = ":memory:", *, outbox: bool = False):
        self.path = path
        self.outbox = outbox  # whether a commit queues its new readings for the MQTT publisher
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._tables = itertools.count(1)
        if path != ":memory:":
            # A 2xx promises durability, so a commit must survive a power cut.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        # Index pages of a large commit stay in memory; staged lines beyond 16 MiB go to a temporary file.
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.execute("PRAGMA temp_store=FILE")
        self._db.execute("PRAGMA temp.cache_size=-16384")
        self._migrate()

    def _migrate(self) -> None:
        """Create the tables, or bring a file of an older schema (``PRAGMA user_version``) up to this one."""
        db = self._db
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"{self.path} has schema version {version}; this receiver knows up to"
                                        f" {SCHEMA_VERSION} (upgrade wmbus-stream)")
        db.executescript(_SCHEMA)  # version 0 -> 1: adds the report table
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def begin(self) -> _SqliteIngest:
        """A new POST's transaction."""
        return _SqliteIngest(self)

    def add(self, lines: Iterable[ReportLine]) -> tuple[int, int]:
        """Store lines in one transaction; returns (new readings, new heard_by rows)."""
        ingest = self.begin()
        try:
            ingest.stage(lines if isinstance(lines, Sequence) else list(lines))
            return ingest.commit()
        finally:
            ingest.abort()

    def _spill(self, table: str | None, rows: list[tuple[Any, ...]]) -> str:
        """Append rows to a POST's TEMP table (made on first use); returns its name."""
        with self._lock:
            db = self._db
            if table is None:
                table = f"stage_{next(self._tables)}"
                db.execute(f"CREATE TEMP TABLE {table} ({_COLUMNS})")
            # A deferred transaction that touches only TEMP: the main database stays unlocked.
            db.execute("BEGIN")
            try:
                db.executemany(f"INSERT INTO temp.{table} VALUES ({_PLACES})", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return table

    def _commit(self, table: str, fingerprint: str, count: int) -> tuple[int, int]:
        """Store a POST's TEMP table (dropped here) in one transaction, unless its fingerprint is known (a retry)."""
        stamp = utc_now()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM report WHERE fingerprint = ?", (fingerprint,)).fetchone():
                    new = (0, 0)  # the same lines were committed before: nothing in them is new
                else:
                    last_before = db.execute("SELECT coalesce(max(id), 0) FROM reading").fetchone()[0] if self.outbox else 0
                    new = self._insert(table, stamp)
                    if self.outbox and new[0]:
                        self._queue_new(last_before)
                    db.execute("INSERT INTO report (fingerprint, lines, stored_at) VALUES (?, ?, ?)",
                               (fingerprint, count, stamp))
                db.execute(f"DROP TABLE temp.{table}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                db.execute(f"DROP TABLE IF EXISTS temp.{table}")
                raise
        return new

    def _insert(self, table: str, stamp: str) -> tuple[int, int]:
        """Insert a POST's TEMP table in the order it was staged (inside the transaction): (new readings, receptions)."""
        db = self._db
        before = db.total_changes
        db.execute(
            "INSERT OR IGNORE INTO reading (digest, manufacturer, meter_id, version, device_type, ci, access_number,"
            " telegram, first_heard, first_gateway, stored_at) SELECT digest, manufacturer, meter_id, version,"
            f" device_type, ci, access_number, telegram, date, gateway, ? FROM temp.{table} ORDER BY rowid", (stamp,))
        middle = db.total_changes
        # The reading's id is looked up inside SQLite, row by row: no SELECT round trip through Python.
        db.execute(
            "INSERT OR IGNORE INTO heard_by (reading_id, gateway, heard_at, rssi_code, receiver, age_minutes, stored_at)"
            " SELECT (SELECT id FROM reading r WHERE r.digest = s.digest), gateway, date, rssi_code, receiver,"
            f" age_minutes, ? FROM temp.{table} s ORDER BY s.rowid", (stamp,))
        return middle - before, db.total_changes - middle

    def _drop(self, table: str) -> None:
        """Forget a POST's TEMP table."""
        with self._lock:
            self._db.execute(f"DROP TABLE IF EXISTS temp.{table}")

    def readings(self) -> list[Reading]:
        """All readings, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT digest, manufacturer, meter_id, version, device_type, ci, access_number, telegram,"
                " first_heard, first_gateway, stored_at FROM reading ORDER BY id"
            ).fetchall()
        return [
            Reading(digest=row[0], manufacturer=row[1], meter_id=row[2], version=row[3], device_type=row[4], ci=row[5],
                    access_number=row[6], telegram=bytes(row[7]), first_heard=row[8], first_gateway=row[9],
                    stored_at=row[10])
            for row in rows
        ]

    def heard(self) -> list[Heard]:
        """All heard_by rows, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.digest, h.gateway, h.heard_at, h.rssi_code, h.receiver, h.age_minutes, h.stored_at"
                " FROM heard_by h JOIN reading r ON r.id = h.reading_id ORDER BY h.id"
            ).fetchall()
        return [Heard(*row) for row in rows]

    def _queue_new(self, last_before: int) -> None:
        """Outbox rows for the readings this transaction added (ids above ``last_before``: the write lock is held)."""
        self._db.execute("INSERT INTO outbox (reading_id) SELECT id FROM reading WHERE id > ? ORDER BY id", (last_before,))

    def pending(self, limit: int) -> list[Publication]:
        """Up to ``limit`` oldest outbox rows, in order, with the receptions known now."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.id, r.id, r.digest, r.manufacturer, r.meter_id, r.version, r.device_type, r.ci,"
                " r.access_number, r.telegram, r.first_heard, r.first_gateway, r.stored_at"
                " FROM outbox o JOIN reading r ON r.id = o.reading_id ORDER BY o.id LIMIT ?", (limit,)
            ).fetchall()
            heard: dict[int, list[Heard]] = {}
            for start in range(0, len(rows), 500):  # SQLite's limit on bound parameters
                ids = [row[1] for row in rows[start:start + 500]]
                for row in self._db.execute(
                        "SELECT h.reading_id, r.digest, h.gateway, h.heard_at, h.rssi_code, h.receiver, h.age_minutes,"
                        " h.stored_at FROM heard_by h JOIN reading r ON r.id = h.reading_id"
                        f" WHERE h.reading_id IN ({','.join('?' * len(ids))}) ORDER BY h.id", ids):
                    heard.setdefault(row[0], []).append(Heard(*row[1:]))
        return [
            Publication(row[0], Reading(digest=row[2], manufacturer=row[3], meter_id=row[4], version=row[5],
                                        device_type=row[6], ci=row[7], access_number=row[8], telegram=bytes(row[9]),
                                        first_heard=row[10], first_gateway=row[11], stored_at=row[12]),
                        tuple(heard.get(row[1], ())))
            for row in rows
        ]

    def published(self, outbox_ids: Sequence[int]) -> None:
        """Remove published rows from the outbox, in one durable transaction."""
        ids = list(outbox_ids)
        if not ids:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def receptions(self, since: str, until: str) -> Iterator[Reception]:
        """Every reception with ``since <= heard_at < until``, by heard_at; pages of rows, the lock held per page only."""
        after = (since, 0)  # (heard_at, id) of the last row handed out; the next page starts past it (ids start at 1)
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT h.heard_at, h.id, r.manufacturer, r.meter_id, r.device_type, h.gateway, h.rssi_code, r.version"
                    " FROM heard_by h JOIN reading r ON r.id = h.reading_id"
                    " WHERE (h.heard_at, h.id) > (?, ?) AND h.heard_at < ? ORDER BY h.heard_at, h.id LIMIT ?",
                    (*after, until, _PAGE),
                ).fetchall()
            for row in rows:
                yield Reception(row[2], row[3], row[4], row[5], row[0], row[6], row[7])
            if len(rows) < _PAGE:
                return
            after = (rows[-1][0], rows[-1][1])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
