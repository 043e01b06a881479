"""The history of applied configurations: one SQLite table in the state directory.

Strategy: every configuration that was applied (by a local change, an import, a sync, a
revert, a restore or the web UI) is kept as its full file text with a number, the time, its
origin and a note, so any of them can be looked at and reverted to. A connection is opened
per operation: writes happen a few times a day at most, and this keeps the class free of
thread and fork concerns. ``synchronous=FULL`` with a rollback journal: a recorded entry
survives a power cut, and the file is self-contained (no WAL beside it) for backups.

Invariants: numbers only grow and are never reused (``AUTOINCREMENT``); each entry has a
unique ``apply_id`` so that replaying an interrupted apply records it once; at most
``limit`` entries are kept, the oldest are dropped first. Reading never creates the file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..atomic import open_private
from . import properties
from .keys import BY_NAME
from .model import _shown

__all__ = ["HistoryEntry", "History", "ORIGINS", "DEFAULT_LIMIT", "HISTORY_FILE", "SCHEMA"]

HISTORY_FILE = "history.sqlite"

ORIGINS = ("local", "import", "sync", "revert", "restore", "web")
DEFAULT_LIMIT = 200

# The table as the gateway creates it; a restored history must have exactly this.
SCHEMA = """CREATE TABLE IF NOT EXISTS history (
    number INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    origin TEXT NOT NULL,
    note TEXT NOT NULL,
    text TEXT NOT NULL,
    apply_id TEXT UNIQUE
)"""
_COLUMNS = "number, time, origin, note, text"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One applied configuration: its number, when (epoch seconds, UTC), from where, and the text."""

    number: int
    time: float
    origin: str
    note: str
    text: str

    @property
    def masked_text(self) -> str:
        """The file text with secrets (and URL passwords) replaced by ``********``."""
        document = properties.parse(self.text)
        out: list[str] = []
        for line in document.lines:
            if line.key is not None and line.value is not None and not line.bad:
                out.append(f"{line.key}={_shown(BY_NAME.get(line.key), line.value)}")
            elif not line.bad:
                out.append(line.text)
        return "".join(f"{line}\n" for line in out)

    @property
    def iso_time(self) -> str:
        """The time as ``YYYY-MM-DD hh:mm:ss`` UTC."""
        return datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%d %H:%M:%S")


class History:
    """The history table of one state directory."""

    def __init__(self, path: str | os.PathLike[str], limit: int = DEFAULT_LIMIT) -> None:
        self.path = Path(path)
        self.limit = limit

    @contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection | None]:
        if not create and not self.path.exists():
            yield None
            return
        if create:
            os.close(open_private(self.path, os.O_RDWR))  # 0600: the texts hold the configuration's secrets
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        try:
            db.execute("PRAGMA synchronous=FULL")
            if create:
                db.execute("PRAGMA journal_mode=DELETE")
                db.execute(SCHEMA)
            yield db
        finally:
            db.close()

    def record(self, text: str, origin: str, note: str = "", *, apply_id: str | None = None,
               when: float | None = None) -> HistoryEntry:
        """Add an entry (once per ``apply_id``) and drop the oldest beyond the limit."""
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
        with self._connect(create=True) as db:
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                if apply_id is not None:
                    row = db.execute(f"SELECT {_COLUMNS} FROM history WHERE apply_id = ?", (apply_id,)).fetchone()
                    if row is not None:
                        db.execute("COMMIT")
                        return HistoryEntry(*row)
                stamp = time.time() if when is None else when
                cursor = db.execute(
                    "INSERT INTO history (time, origin, note, text, apply_id) VALUES (?, ?, ?, ?, ?)",
                    (stamp, origin, note, text, apply_id),
                )
                number = int(cursor.lastrowid or 0)
                db.execute(
                    "DELETE FROM history WHERE number NOT IN (SELECT number FROM history ORDER BY number DESC LIMIT ?)",
                    (self.limit,),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return HistoryEntry(number, stamp, origin, note, text)

    def entries(self) -> list[HistoryEntry]:
        """Every kept entry, newest first."""
        with self._connect(create=False) as db:
            if db is None:
                return []
            try:
                rows = db.execute(f"SELECT {_COLUMNS} FROM history ORDER BY number DESC").fetchall()
            except sqlite3.OperationalError:
                return []  # a file without the table yet
        return [HistoryEntry(*row) for row in rows]

    def get(self, number: int) -> HistoryEntry | None:
        """The entry with this number, or None."""
        with self._connect(create=False) as db:
            if db is None:
                return None
            try:
                row = db.execute(f"SELECT {_COLUMNS} FROM history WHERE number = ?", (number,)).fetchone()
            except sqlite3.OperationalError:
                return None
        return HistoryEntry(*row) if row else None

    def latest(self) -> HistoryEntry | None:
        """The newest entry, or None when there is none."""
        with self._connect(create=False) as db:
            if db is None:
                return None
            try:
                row = db.execute(f"SELECT {_COLUMNS} FROM history ORDER BY number DESC LIMIT 1").fetchone()
            except sqlite3.OperationalError:
                return None
        return HistoryEntry(*row) if row else None

    def copy_to(self, destination: str | os.PathLike[str]) -> None:
        """A consistent copy of the table into a new database file (SQLite backup API)."""
        with self._connect(create=True) as db:
            assert db is not None
            os.close(open_private(destination))
            target = sqlite3.connect(destination)
            try:
                db.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
