"""SqliteStore's staging: lines beyond memory go to a TEMP table, retried reports are known, old files migrate.

Real SQLite files in a temporary folder; the lines are parsed from report text with the
HES's own parser (the selected twin).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from report_lines import TELEGRAM
from wmbus_stream import wire
from wmbus_stream.hes import ReportLine, SqliteStore, parse_report
from wmbus_stream.hes.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.integration


# The schema of the store before the report table (user_version 0), as files of it exist.
SCHEMA_0 = """
CREATE TABLE reading (id INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE, manufacturer TEXT NOT NULL,
    meter_id TEXT NOT NULL, version INTEGER NOT NULL, device_type INTEGER NOT NULL, ci INTEGER NOT NULL,
    access_number INTEGER, telegram BLOB NOT NULL, first_heard TEXT NOT NULL, first_gateway TEXT NOT NULL,
    stored_at TEXT NOT NULL);
CREATE INDEX reading_meter ON reading (manufacturer, meter_id);
CREATE TABLE heard_by (id INTEGER PRIMARY KEY, reading_id INTEGER NOT NULL REFERENCES reading (id),
    gateway TEXT NOT NULL, heard_at TEXT NOT NULL, rssi_code INTEGER, receiver TEXT, age_minutes INTEGER,
    stored_at TEXT NOT NULL, UNIQUE (reading_id, gateway, heard_at));
"""


def lines(count: int, gateway: str = "00000161", first: int = 0) -> list[ReportLine]:
    """``count`` distinct readings heard by one gateway."""
    text = []
    for i in range(first, first + count):
        ident = f"{i:08d}"
        telegram = TELEGRAM[:4] + bytes.fromhex(ident)[::-1] + TELEGRAM[8:]
        wired = wire.build_report(telegram, "62001772", -74, 0)
        text.append(f"{gateway};{ident};2026-11-24 10:15:{i % 60:02d};00;{wired.hex().upper()}\n")
    return parse_report("".join(text).encode())


def content(store: SqliteStore) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The readings and receptions without their stored_at stamps."""
    readings = [(r.digest, r.meter_id, r.telegram, r.first_heard, r.first_gateway) for r in store.readings()]
    heard = [(h.digest, h.gateway, h.date, h.rssi_code, h.receiver) for h in store.heard()]
    return readings, heard


def temp_tables(store: SqliteStore) -> list[str]:
    return [row[0] for row in store._db.execute("SELECT name FROM temp.sqlite_master WHERE type = 'table'")]


def test_lines_beyond_memory_are_stored_alike_in_line_order(tmp_path: Path) -> None:
    a, b = lines(30), lines(30, gateway="00000162")
    mixed = [line for pair in zip(a, b, strict=True) for line in pair] + lines(5, first=100)
    small = SqliteStore(str(tmp_path / "small.sqlite"))
    small.SPILL_LINES = 7  # type: ignore[misc]
    ingest = small.begin()
    for start in range(0, len(mixed), 4):
        ingest.stage(mixed[start:start + 4])
    assert temp_tables(small)  # the lines went to a TEMP table while the body streamed
    assert ingest.commit() == (35, 65)
    ingest.abort()
    assert temp_tables(small) == []
    big = SqliteStore(str(tmp_path / "big.sqlite"))
    assert big.add(mixed) == (35, 65)
    assert content(small) == content(big)
    readings, heard = content(small)
    assert [r[1] for r in readings] == [line.meter_id for line in a] + [line.meter_id for line in lines(5, first=100)]
    assert all(r[4] == "00000161" for r in readings[:30])  # the first gateway in the report is the first heard


def test_an_aborted_post_leaves_nothing_and_drops_its_table() -> None:
    store = SqliteStore()
    store.SPILL_LINES = 3  # type: ignore[misc]
    ingest = store.begin()
    ingest.stage(lines(10))
    assert temp_tables(store)
    ingest.abort()
    assert temp_tables(store) == [] and store.readings() == [] and store.heard() == []
    assert store.begin().commit() == (0, 0)  # an empty report stores nothing


def test_a_retried_report_is_known_and_a_changed_one_is_not(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "hes.sqlite"))
    report = lines(20)
    assert store.add(report) == (20, 20)
    assert store.add(report) == (0, 0)
    assert store._db.execute("SELECT lines FROM report").fetchall() == [(20,)]
    assert store.add(report[::-1]) == (0, 0)  # not the same report: every line is checked, none is new
    assert store.add([*report, *lines(1, first=50)]) == (1, 1)
    other = lines(20, gateway="00000162")
    assert store.add(other) == (0, 20)  # the same telegrams from another gateway: receptions only
    assert len(store.readings()) == 21 and len(store.heard()) == 41
    journal, synchronous = (store._db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("journal_mode", "synchronous"))
    assert (journal, synchronous) == ("wal", 2)  # WAL, synchronous=FULL: durable when commit returns


def test_a_file_of_the_old_schema_opens_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_0)
    line = lines(1)[0]
    old.execute("INSERT INTO reading VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'then')",
                (line.digest, line.manufacturer, line.meter_id, line.version, line.device_type, line.ci,
                 line.access_number, line.telegram, line.date, line.gateway))
    old.execute("INSERT INTO heard_by VALUES (1, 1, ?, ?, ?, ?, ?, 'then')",
                (line.gateway, line.date, line.rssi_code, line.receiver, line.age_minutes))
    old.commit()
    old.close()
    store = SqliteStore(str(path))
    assert store._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert [r.stored_at for r in store.readings()] == ["then"]
    assert store.add(lines(3)) == (2, 2)  # the old reading and its reception are known
    store.close()
    reopened = SqliteStore(str(path))
    assert len(reopened.readings()) == 3 and reopened.add(lines(3)) == (0, 0)


def test_a_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version"):
        SqliteStore(str(path))


def test_two_posts_staging_at_once_both_commit(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "hes.sqlite"))
    store.SPILL_LINES = 5  # type: ignore[misc]
    first, second = store.begin(), store.begin()
    for start in range(0, 20, 5):
        first.stage(lines(5, first=start))
        second.stage(lines(5, gateway="00000162", first=start + 10))
    assert len(temp_tables(store)) == 2
    assert first.commit() == (20, 20)
    assert second.commit() == (10, 20)  # readings 10..19 were the first POST's
    first.abort()
    second.abort()
    assert temp_tables(store) == []


def test_the_outbox_gets_each_new_reading_of_a_spilled_post_once(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "hes.sqlite"), outbox=True)
    store.SPILL_LINES = 5  # type: ignore[misc]
    report = lines(20)
    assert store.add(report) == (20, 20)
    assert store.add(report) == (0, 0)  # a retry queues nothing
    assert store.add(lines(20, gateway="00000162")) == (0, 20)  # receptions only: nothing new to publish
    pending = store.pending(100)
    assert [p.reading.meter_id for p in pending] == [line.meter_id for line in report]
    assert [p.outbox_id for p in pending] == sorted(p.outbox_id for p in pending)
    assert all(len(p.heard) == 2 for p in pending)
