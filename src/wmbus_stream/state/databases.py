"""The state databases in a backup: a consistent copy of a live one, and the checks a restored one passes.

Strategy: a copy is made with SQLite's backup API (consistent while the gateway writes) and
turned into a self-contained rollback-journal file. A database from an archive is trusted
only as far as its schema is exactly the one the gateway itself writes (compared object by
object with a database made from the same statements), its header says rollback journal
and UTF-8, and ``PRAGMA integrity_check`` passes; it is opened read-only with
``trusted_schema`` off, so nothing in it runs.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..atomic import open_private
from ..config.history import SCHEMA as HISTORY_SCHEMA_SQL
from ..io.store import SCHEMA as STORE_SCHEMA_SQL

__all__ = ["HISTORY_SCHEMA", "STORE_SCHEMA", "Schema", "check_database", "copy_database"]


def copy_database(path: Path, destination: Path) -> None:
    """A consistent copy of the state database (SQLite backup API), or an empty one."""
    os.close(open_private(destination))
    target = sqlite3.connect(destination)
    try:
        if not path.exists():
            for statement in STORE_SCHEMA_SQL:
                target.execute(statement)
            return
        # A plain connection: a read-only one cannot open a WAL database whose -shm is missing.
        source = sqlite3.connect(path, timeout=10.0)
        try:
            source.backup(target)
        finally:
            source.close()
        # A self-contained file: no WAL expected beside it when restored.
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()


# What sqlite_master holds: name -> (type, table, SQL with its white space collapsed).
Schema = dict[str, tuple[str, str, "str | None"]]


def _schema(db: sqlite3.Connection) -> Schema:
    return {name: (kind, table, None if sql is None else " ".join(sql.split()))
            for kind, name, table, sql in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")}


def _schema_of(statements: tuple[str, ...]) -> Schema:
    """The schema of a new database made by ``statements``: exactly what the gateway writes."""
    db = sqlite3.connect(":memory:")
    try:
        for statement in statements:
            db.execute(statement)
        return _schema(db)
    finally:
        db.close()


STORE_SCHEMA = _schema_of(STORE_SCHEMA_SQL)
HISTORY_SCHEMA = _schema_of((HISTORY_SCHEMA_SQL,))
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _schema_problems(found: Schema, expected: Schema) -> list[str]:
    """How ``found`` differs from ``expected``: every object missing, extra or different."""
    problems = [f"{found[name][0]} {name!r} (of {found[name][1]!r}) is not part of it"
                for name in sorted(set(found) - set(expected))]
    problems += [f"{expected[name][0]} {name!r} missing" for name in sorted(set(expected) - set(found))]
    for name in sorted(set(found) & set(expected)):
        kind, table, sql = found[name]
        if (kind, table) != expected[name][:2]:
            problems.append(f"{name!r} is a {kind} of {table!r}, the gateway writes a {expected[name][0]}")
        elif sql != expected[name][2]:
            problems.append(f"{kind} {name!r} is {sql!r}, the gateway writes {expected[name][2]!r}")
    return problems


def check_database(path: Path, expected: Schema, kind: str) -> int:
    """Rows of the first table of a restored database; ValueError saying why it is not usable.

    Accepted: exactly the schema the gateway writes (tables, columns, indexes; no trigger, view
    or other table), in rollback-journal mode and UTF-8 as its backup writes it, intact.
    """
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise ValueError("not an SQLite database")
    if header[18:20] != b"\x01\x01":
        raise ValueError(f"journal mode {'WAL' if 2 in header[18:20] else 'unknown'}; a backup holds its databases"
                         " in rollback-journal mode")
    if header[56:60] != b"\x00\x00\x00\x01":
        raise ValueError("not UTF-8 (the gateway's databases are)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot be opened ({exc})") from None
    try:
        db.execute("PRAGMA trusted_schema=OFF")
        problems = _schema_problems(_schema(db), expected)
        if problems:
            allowed = ", ".join(f"{what} {name}" for name, (what, _, _) in sorted(expected.items()))
            raise ValueError(f"not a {kind}: {'; '.join(problems)} (allowed: exactly {allowed})")
        result = db.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            raise ValueError(f"integrity check failed: {'; '.join(str(row[0]) for row in result[:3])}")
        table = next(name for name, (what, _, _) in expected.items() if what == "table")
        return int(db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    except sqlite3.Error as exc:
        raise ValueError(f"not a readable database ({exc})") from None
    finally:
        db.close()
