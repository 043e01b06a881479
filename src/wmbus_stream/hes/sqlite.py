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

    def __init__(self, path: str = ":memory:"):
        self.path = path
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

    def pending(self, limit: int) -> list[Publication]:
        """Up to ``limit`` oldest outbox rows, in order."""
        raise NotImplementedError("the outbox lands with hes.publish")

    def published(self, outbox_ids: Sequence[int]) -> None:
        """Remove published rows from the outbox."""
        raise NotImplementedError("the outbox lands with hes.publish")

    def receptions(self, since: str, until: str) -> Iterator[Reception]:
        """Every reception with ``since <= heard_at < until``."""
        raise NotImplementedError("receptions land with hes.coverage")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
