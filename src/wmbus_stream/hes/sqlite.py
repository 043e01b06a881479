"""The embedded store: readings and receptions in one SQLite file (or in memory).

One writer at a time (SQLite's rule); a POST's lines are staged in memory and written in
one ``BEGIN IMMEDIATE`` transaction at its end, so a slow upload never holds the lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence

from .report import ReportLine
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
-- New readings waiting for the MQTT publisher (hes.publish), drained in id order; AUTOINCREMENT
-- so an id is never reused after the rows before it were published.
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reading_id INTEGER NOT NULL UNIQUE REFERENCES reading (id)
);
"""



class _SqliteIngest:
    """One POST's lines, kept until ``commit`` writes them."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._lines: list[ReportLine] = []

    def stage(self, lines: Sequence[ReportLine]) -> None:
        self._lines.extend(lines)

    def commit(self) -> tuple[int, int]:
        lines, self._lines = self._lines, []
        return self._store.add(lines)

    def abort(self) -> None:
        self._lines = []


class SqliteStore:
    """Readings and heard_by rows in SQLite (``:memory:`` by default); one writer at a time."""

    def __init__(self, path: str = ":memory:", *, outbox: bool = False):
        self.path = path
        self.outbox = outbox  # whether a commit queues its new readings for the MQTT publisher
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            # A 2xx promises durability, so a commit must survive a power cut.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def begin(self) -> _SqliteIngest:
        """A new POST's transaction."""
        return _SqliteIngest(self)

    def add(self, lines: Iterable[ReportLine]) -> tuple[int, int]:
        """Store lines in one transaction; returns (new readings, new heard_by rows)."""
        stored_at = utc_now()
        new_readings = new_heard = 0
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                last_before = db.execute("SELECT coalesce(max(id), 0) FROM reading").fetchone()[0] if self.outbox else 0
                for line in lines:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO reading (digest, manufacturer, meter_id, version, device_type, ci,"
                        " access_number, telegram, first_heard, first_gateway, stored_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (line.digest, line.manufacturer, line.meter_id, line.version, line.device_type, line.ci,
                         line.access_number, line.telegram, line.date, line.gateway, stored_at),
                    )
                    new_readings += cur.rowcount
                    (reading_id,) = db.execute("SELECT id FROM reading WHERE digest = ?", (line.digest,)).fetchone()
                    cur = db.execute(
                        "INSERT OR IGNORE INTO heard_by (reading_id, gateway, heard_at, rssi_code, receiver,"
                        " age_minutes, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (reading_id, line.gateway, line.date, line.rssi_code, line.receiver, line.age_minutes, stored_at),
                    )
                    new_heard += cur.rowcount
                if self.outbox and new_readings:
                    self._queue_new(last_before)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return new_readings, new_heard

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
        """Every reception with ``since <= heard_at < until``."""
        raise NotImplementedError("receptions land with hes.coverage")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
