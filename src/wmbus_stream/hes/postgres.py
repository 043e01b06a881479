"""The fleet store: readings and receptions in PostgreSQL, shared by any number of receiver instances.

A POST's lines go, as they arrive, into a TEMP table of one connection of a small pool of
our own (COPY; a small POST waits in memory until its commit); ``commit`` then stores them
in one short transaction: ``INSERT .. SELECT .. ORDER BY key ON CONFLICT DO NOTHING`` into
``reading``, ``heard_by`` and (``outbox=True``) ``outbox``. Rows go in key order, so two
instances committing overlapping reports wait for each other instead of deadlocking; a
deadlock or serialization failure all the same is retried. The schema is created at open,
idempotently, under an advisory lock. psycopg is imported here only: the gateway never
needs it (``pip install 'wmbus-stream[hes]'``).
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from .coverage import METER_COVERAGE_SELECT
from .report import ReportLine
from .store import Heard, Publication, Reading, Reception

if TYPE_CHECKING:
    import psycopg

__all__ = ["DRAIN_LOCK", "SCHEMA_LOCK", "SCHEMA_VERSION", "PostgresStore", "copy_rows", "is_postgres_url", "masked"]

log = logging.getLogger("wmbus_stream.hes")

SCHEMA_VERSION = 1
# pg_advisory_lock keys ("wmbsschm", "wmbsoutb"): creating the schema; draining the outbox.
SCHEMA_LOCK = 0x776D6273_7363686D
DRAIN_LOCK = 0x776D6273_6F757462
DEFAULT_POOL = 8
# How long a POST waits for a free connection of the pool before its commit fails (500).
POOL_WAIT_SECONDS = 20.0
# Lines a POST keeps in memory before it takes a connection and COPYs them to its TEMP table.
SPILL_BYTES = 1 << 20
RETRIES = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS wmbus_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS reading (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest text COLLATE "C" NOT NULL UNIQUE,   -- SHA-256 (hex) of the wireless telegram: the dedup key
    manufacturer text NOT NULL,
    meter_id text NOT NULL,
    version smallint NOT NULL,
    device_type smallint NOT NULL,
    ci smallint NOT NULL,
    access_number smallint,
    telegram bytea NOT NULL,
    first_heard timestamp NOT NULL,
    first_gateway text NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reading_meter ON reading (manufacturer, meter_id);
CREATE TABLE IF NOT EXISTS heard_by (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reading_id bigint NOT NULL,                -- reading.id (see below: no FOREIGN KEY)
    gateway text NOT NULL,
    heard_at timestamp NOT NULL,
    rssi_code smallint,
    receiver text,
    age_minutes integer,
    stored_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reading_id, gateway, heard_at)
);
CREATE INDEX IF NOT EXISTS heard_by_heard_at ON heard_by (heard_at);
CREATE TABLE IF NOT EXISTS outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reading_id bigint NOT NULL UNIQUE          -- reading.id
);
"""
_SCHEMA += f"CREATE OR REPLACE VIEW meter_coverage AS {METER_COVERAGE_SELECT};\n"
# reading_id is not declared a FOREIGN KEY: the receiver writes only ids its own statement has
# just read from reading, and the check cost about 3 µs of server CPU and a row lock on the
# reading per reception (a fifth of a commit). As in SQLite, where it is not enforced either.

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS wmbus_stage (
    ord bigint NOT NULL, digest text COLLATE "C" NOT NULL, manufacturer text NOT NULL, meter_id text NOT NULL,
    version smallint NOT NULL, device_type smallint NOT NULL, ci smallint NOT NULL, access_number smallint,
    telegram bytea NOT NULL, gateway text NOT NULL, heard_at timestamp NOT NULL, rssi_code smallint,
    receiver text, age_minutes integer
)
"""
_COPY = ("COPY wmbus_stage (ord, digest, manufacturer, meter_id, version, device_type, ci, access_number, telegram,"
         " gateway, heard_at, rssi_code, receiver, age_minutes) FROM STDIN")
# The first line of a telegram in the POST gives first_heard/first_gateway, as in SQLite.
_NEW_READINGS = """
INSERT INTO reading (digest, manufacturer, meter_id, version, device_type, ci, access_number, telegram,
                     first_heard, first_gateway)
SELECT DISTINCT ON (digest) digest, manufacturer, meter_id, version, device_type, ci, access_number, telegram,
       heard_at, gateway
FROM wmbus_stage ORDER BY digest, ord
ON CONFLICT (digest) DO NOTHING
"""
_NEW_READINGS_OUTBOX = f"""
WITH new AS ({_NEW_READINGS} RETURNING id)
INSERT INTO outbox (reading_id) SELECT id FROM new ORDER BY id
"""
_NEW_HEARD = """
INSERT INTO heard_by (reading_id, gateway, heard_at, rssi_code, receiver, age_minutes)
SELECT r.id, s.gateway, s.heard_at, s.rssi_code, s.receiver, s.age_minutes
FROM wmbus_stage s JOIN reading r ON r.digest = s.digest
ORDER BY r.id, s.gateway, s.heard_at, s.ord
ON CONFLICT (reading_id, gateway, heard_at) DO NOTHING
"""
_DATE = "'YYYY-MM-DD HH24:MI:SS'"
_STAMP = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
_READING_COLUMNS = (f"r.digest, r.manufacturer, r.meter_id, r.version, r.device_type, r.ci, r.access_number,"
                    f" r.telegram, to_char(r.first_heard, {_DATE}), r.first_gateway,"
                    f" to_char(r.stored_at AT TIME ZONE 'UTC', {_STAMP})")
_HEARD_COLUMNS = (f"r.digest, h.gateway, to_char(h.heard_at, {_DATE}), h.rssi_code, h.receiver, h.age_minutes,"
                  f" to_char(h.stored_at AT TIME ZONE 'UTC', {_STAMP})")

_URL_PREFIXES = ("postgresql://", "postgres://")
# What the schema makes: an instance finding one missing makes it again (or says it cannot).
_TABLES = ("reading", "heard_by", "outbox", "meter_coverage")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def is_postgres_url(where: str | None) -> bool:
    """Whether ``--db`` names a PostgreSQL database (``postgresql://`` or ``postgres://``) rather than a file."""
    return where is not None and where.lower().startswith(_URL_PREFIXES)


def masked(url: str) -> str:
    """The URL as banners and errors print it: its password (user info or ``?password=``) replaced by ``***``.

    The user info ends at the last ``@``, so a password holding an unencoded ``@`` is hidden whole too.
    """
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if sep and at >= 0 and ":" in rest[:at]:
        rest = rest[:at].split(":", 1)[0] + ":***" + rest[at:]
    return _QUERY_PASSWORD.sub(r"\1***", scheme + sep + rest)


def url_problem(url: str) -> str | None:
    """Why a ``postgresql://`` URL cannot be read as meant (an unencoded character in its user info); None if none."""
    rest = url.partition("://")[2]
    userinfo = rest[:rest.rfind("@")] if "@" in rest else ""
    if any(ch in userinfo for ch in "@/?#"):
        return ("the user name or password in the URL holds '@', '/', '?' or '#': percent-encode them"
                " (%40 %2F %3F %23), or put the password in ~/.pgpass or PGPASSWORD")
    return None


def _dash(value: object) -> object:
    return "\\N" if value is None else value


def _escaped(text: str) -> str:
    """``text`` as a COPY text field (it holds no tab or line break, but may hold a backslash)."""
    return text.replace("\\", "\\\\")


def copy_rows(lines: Sequence[ReportLine], first: int) -> bytes:
    """COPY text rows of the stage table for ``lines``, numbered from ``first``.

    Every field is digits, hex or a date but the manufacturer's letters, which are five bits
    above ``@`` each and so may be ``\\`` (the M-field bytes 9C 73 read as three of them): that one is doubled. The
    telegram is bytea in hex form (``\\x..``, its backslash doubled for COPY).
    """
    return "".join([
        f"{n}\t{line.digest}\t{_escaped(line.manufacturer)}\t{line.meter_id}\t{line.version}\t{line.device_type}\t"
        f"{line.ci}\t"
        f"{_dash(line.access_number)}\t\\\\x{line.telegram.hex()}\t{line.gateway}\t{line.date}\t"
        f"{_dash(line.rssi_code)}\t{_dash(line.receiver)}\t{_dash(line.age_minutes)}\n"
        for n, line in enumerate(lines, first)
    ]).encode("ascii")


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (libpq's have hints on further lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class _Pool:
    """At most ``size`` connections, reused; a broken one is closed and replaced by a new one on demand."""

    def __init__(self, connect: Any, size: int) -> None:
        self._connect = connect
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self.size = size
        self.closed = False

    def get(self, wait: float = POOL_WAIT_SECONDS) -> psycopg.Connection[Any]:
        """An idle connection, a new one, or the first one given back within ``wait`` seconds."""
        if self.closed:
            raise StoreError("the PostgreSQL store is closed")
        if not self._slots.acquire(timeout=wait):
            raise StoreError(f"all {self.size} PostgreSQL connections of this receiver stayed busy for {wait:g} s")
        try:
            while True:
                try:
                    conn = self._idle.get_nowait()
                except queue.Empty:
                    return self._connect()
                if not conn.closed:
                    return conn
        except BaseException:
            self._slots.release()
            raise

    def put(self, conn: psycopg.Connection[Any], *, broken: bool = False) -> None:
        """Give a connection back: kept when it is healthy and idle, closed otherwise."""
        from psycopg.pq import TransactionStatus

        try:
            if broken or self.closed or conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                conn.close()
            else:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections; those still in use are closed when given back."""
        self.closed = True
        self.drop_idle()

    def drop_idle(self) -> None:
        """Close every idle connection (new ones are opened on demand)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class _PostgresIngest:
    """One POST's lines: in memory up to SPILL_BYTES, then in a TEMP table of one pooled connection.

    A POST that spills while its body is still arriving takes its session from the spill pool,
    and keeps it until its commit; one that fits in memory takes one from the commit pool only
    for its commit. Slow uploads of big reports therefore cannot take the sessions the
    small reports of other gateways commit on.
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._conn: psycopg.Connection[Any] | None = None
        self._pool: _Pool = store._pool
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._count = 0
        self._failed: str | None = None
        self._done = False

    def stage(self, lines: Sequence[ReportLine]) -> None:
        """Keep lines for the commit; a database failure here is kept and raised by ``commit`` (a 500)."""
        if self._failed is not None or self._done or not lines:
            return
        rows = copy_rows(lines, self._count)
        self._count += len(lines)
        self._buffer.append(rows)
        self._buffered += len(rows)
        if self._buffered >= SPILL_BYTES:
            try:
                self._spill()
            except StoreError as exc:
                self._fail(str(exc))

    def commit(self) -> tuple[int, int]:
        """Store everything staged in one transaction (retried on a deadlock); (new readings, new receptions)."""
        if self._done:
            return 0, 0
        if self._failed is not None:
            raise StoreError(self._failed)
        if not self._count:
            self._done = True
            return 0, 0
        self._spill(at_commit=True)
        assert self._conn is not None
        result = self._store._commit(self._conn)
        self._done = True
        return result

    def abort(self) -> None:
        """Drop what was staged and give the connection back (a no-op after a commit)."""
        self._buffer, self._buffered = [], 0
        conn, self._conn = self._conn, None
        if conn is None:
            return
        broken = False
        if not self._done:
            try:
                conn.execute("TRUNCATE wmbus_stage")
            except Exception:  # noqa: BLE001  (the connection is closed instead; TEMP tables go with it)
                broken = True
        self._done = True
        self._pool.put(conn, broken=broken)

    def _fail(self, reason: str) -> None:
        self._failed = reason
        self._buffer, self._buffered = [], 0
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.put(conn, broken=True)

    def _spill(self, *, at_commit: bool = False) -> None:
        """COPY the buffered rows into this POST's TEMP table, taking a connection first if needed."""
        if self._conn is None:
            self._pool = self._store._pool if at_commit else self._store._spill_pool
            self._conn = self._store._staging_connection(self._pool)
        data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
        if not data:
            return
        try:
            with self._conn.cursor() as cur, cur.copy(_COPY) as copy:
                copy.write(data)
        except Exception as exc:
            raise StoreError(f"staging lines in PostgreSQL failed: {self._store._scrub(_one_line(exc))}") from None


class PostgresStore:
    """Readings, receptions and the outbox in a PostgreSQL database, safe for several instances at once."""

    def __init__(self, url: str, *, outbox: bool = False, pool: int = DEFAULT_POOL) -> None:
        try:
            import psycopg
            from psycopg import conninfo
        except ImportError:
            raise StoreError("a PostgreSQL --db needs psycopg: pip install 'wmbus-stream[hes]'") from None
        if pool < 1:
            raise ValueError(f"pool must be at least 1, not {pool}")
        self.outbox = outbox
        self._password = ""
        scheme, sep, rest = url.partition("://")
        url = scheme.lower() + sep + rest  # libpq knows the scheme in lower case only
        self.url = url
        problem = url_problem(url)
        if problem:
            raise StoreError(f"bad PostgreSQL URL {masked(url)}: {problem}")
        try:
            params = conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            if masked(url) != url:  # libpq's message may quote a piece of the password: say what to check instead
                raise StoreError(f"bad PostgreSQL URL {masked(url)}: libpq cannot read it; check its form"
                                 " postgresql://USER:PASSWORD@HOST:PORT/DB and its percent-encoding (%XX)") from None
            raise StoreError(f"bad PostgreSQL URL {masked(url)}: {self._scrub(_one_line(exc))}") from None
        self._password = str(params.get("password") or "")
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "wmbus-stream receive")
        self._conninfo = conninfo.make_conninfo("", **params)
        self._pool = _Pool(self._connect, pool)  # commits, the schema, reads
        self._spill_pool = _Pool(self._connect, pool)  # POSTs that spilled while their body arrives
        self._drain: psycopg.Connection[Any] | None = None
        self._draining = False
        self._drain_lock = threading.Lock()
        self._staged: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()  # sessions with a stage table
        conn = self._pool.get()
        broken = True
        try:
            self._create_schema(conn)
            broken = False
        finally:
            self._pool.put(conn, broken=broken)

    # ---- connections

    def _scrub(self, text: str) -> str:
        """A message with the URL masked and the password nowhere in it."""
        text = text.replace(self.url, masked(self.url))
        if not self._password:
            return text
        # Only where it stands as a token of its own, so a short password does not mangle the words it is part of.
        return re.sub(rf"(?<![A-Za-z0-9]){re.escape(self._password)}(?![A-Za-z0-9])", "***", text)

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL {masked(self.url)}: {self._scrub(_one_line(exc))}") from None

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        """The tables, created once whoever starts first; refuses a database of a newer schema.

        A database already at this version gets no DDL, so a role with only SELECT/INSERT
        (and DELETE on outbox) on tables its owner created can run the receiver.
        """
        import psycopg

        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                found = None
                row = conn.execute("SELECT to_regclass('wmbus_schema') IS NOT NULL").fetchone()
                if row and row[0]:
                    row = conn.execute("SELECT max(version) FROM wmbus_schema").fetchone()
                    found = row[0] if row else None
                if found is not None and found > SCHEMA_VERSION:
                    raise StoreError(f"the database {masked(self.url)} has schema version {found}; this wmbus-stream"
                                     f" knows up to {SCHEMA_VERSION}: upgrade wmbus-stream")
                missing = [] if found is None else [
                    table for table in _TABLES
                    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]]  # type: ignore[index]
                if missing and found == SCHEMA_VERSION:
                    log.warning("the database %s lacks %s; creating what is missing", masked(self.url), ", ".join(missing))
                if found != SCHEMA_VERSION or missing:
                    conn.execute(_SCHEMA)
                    if found is None:
                        conn.execute("INSERT INTO wmbus_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        except psycopg.Error as exc:
            raise StoreError(f"cannot create the tables in {masked(self.url)}: {self._scrub(_one_line(exc))}") from None

    def _staging_connection(self, pool: _Pool) -> psycopg.Connection[Any]:
        """A connection of ``pool`` with its (empty) stage table; dead ones (a restarted server) are replaced."""
        import psycopg

        for attempt in range(2):
            conn = pool.get()
            try:
                if conn in self._staged:
                    conn.execute("SELECT 1")  # a round trip: is the session still there?
                else:
                    conn.execute("SET temp_buffers = '32MB'")  # before the session's first TEMP table
                    conn.execute("SET work_mem = '32MB'")  # a 100,000-line commit sorts in memory
                    conn.execute(_STAGE)
                    self._staged.add(conn)
                return conn
            except psycopg.Error as exc:
                pool.put(conn, broken=True)
                if attempt or not conn.broken:
                    raise StoreError(f"staging lines in PostgreSQL failed: {self._scrub(_one_line(exc))}") from None
                pool.drop_idle()  # the others were opened to the same server: likely dead too
        raise AssertionError("unreachable")

    def _commit(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        """The one transaction of a POST; retried on deadlocks, serialization failures and unique-key races."""
        import psycopg
        from psycopg import errors

        retry = (errors.DeadlockDetected, errors.SerializationFailure, errors.UniqueViolation)
        for attempt in range(RETRIES):
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(_NEW_READINGS_OUTBOX if self.outbox else _NEW_READINGS)
                    new_readings = cur.rowcount
                    cur.execute(_NEW_HEARD)
                    new_heard = cur.rowcount
                    cur.execute("TRUNCATE wmbus_stage")
                return new_readings, new_heard
            except retry as exc:
                if attempt == RETRIES - 1:
                    raise StoreError(f"storing in PostgreSQL failed {RETRIES} times: {_one_line(exc)}") from None
                time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
            except psycopg.Error as exc:
                raise StoreError(f"storing in PostgreSQL failed: {self._scrub(_one_line(exc))}") from None
        raise AssertionError("unreachable")

    # ---- the store contract

    def begin(self) -> _PostgresIngest:
        """A new POST's transaction; it takes a connection only once its lines outgrow memory, or at commit."""
        return _PostgresIngest(self)

    def add(self, lines: Iterable[ReportLine]) -> tuple[int, int]:
        """Store lines in one transaction: (new readings, new receptions)."""
        ingest = self.begin()
        try:
            batch: list[ReportLine] = []
            for line in lines:
                batch.append(line)
                if len(batch) >= 4096:
                    ingest.stage(batch)
                    batch = []
            ingest.stage(batch)
            return ingest.commit()
        finally:
            ingest.abort()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        conn = self._pool.get()
        broken = True
        try:
            rows = conn.execute(sql, args).fetchall()
            broken = False
            return rows
        except psycopg.Error as exc:
            raise StoreError(f"reading PostgreSQL failed: {self._scrub(_one_line(exc))}") from None
        finally:
            self._pool.put(conn, broken=broken)

    def readings(self) -> list[Reading]:
        """All readings, oldest first."""
        rows = self._query(f"SELECT {_READING_COLUMNS} FROM reading r ORDER BY r.id")
        return [_reading(row) for row in rows]

    def heard(self) -> list[Heard]:
        """All receptions, oldest first."""
        rows = self._query(f"SELECT {_HEARD_COLUMNS} FROM heard_by h JOIN reading r ON r.id = h.reading_id"
                           " ORDER BY h.id")
        return [Heard(*row) for row in rows]

    def _drainer(self) -> psycopg.Connection[Any] | None:
        """The publisher's own connection, holding DRAIN_LOCK for its session; None while another session holds it."""
        if self._drain is None or self._drain.closed or self._drain.broken:
            if self._drain is not None:
                self._drain.close()
            self._drain, self._draining = self._connect(), False
        if not self._draining:
            row = self._drain.execute("SELECT pg_try_advisory_lock(%s)", (DRAIN_LOCK,)).fetchone()
            self._draining = bool(row and row[0])
        return self._drain if self._draining else None

    def pending(self, limit: int) -> list[Publication]:
        """Up to ``limit`` oldest outbox rows, in order; [] while another instance's publisher holds the lock."""
        import psycopg

        with self._drain_lock:
            try:
                conn = self._drainer()
                if conn is None:
                    return []
                rows = conn.execute(f"SELECT o.id, r.id, {_READING_COLUMNS} FROM outbox o JOIN reading r"
                                    " ON r.id = o.reading_id ORDER BY o.id LIMIT %s", (limit,)).fetchall()
                ids = [row[1] for row in rows]
                heard: dict[int, list[Heard]] = {}
                if ids:
                    for row in conn.execute(f"SELECT h.reading_id, {_HEARD_COLUMNS} FROM heard_by h JOIN reading r"
                                            " ON r.id = h.reading_id WHERE h.reading_id = ANY(%s) ORDER BY h.id",
                                            (ids,)):
                        heard.setdefault(row[0], []).append(Heard(*row[1:]))
            except psycopg.Error as exc:
                raise StoreError(f"reading the outbox failed: {self._scrub(_one_line(exc))}") from None
        return [Publication(row[0], _reading(row[2:]), tuple(heard.get(row[1], ()))) for row in rows]

    def published(self, outbox_ids: Sequence[int]) -> None:
        """Remove published rows from the outbox (durable when it returns)."""
        import psycopg

        if not outbox_ids:
            return
        with self._drain_lock:
            try:
                if self._drain is None or self._drain.closed or self._drain.broken:
                    self._drainer()
                assert self._drain is not None
                self._drain.execute("DELETE FROM outbox WHERE id = ANY(%s)", (list(outbox_ids),))
            except psycopg.Error as exc:
                raise StoreError(f"removing published rows failed: {self._scrub(_one_line(exc))}") from None

    def receptions(self, since: str, until: str) -> Iterator[Reception]:
        """Every reception with ``since <= heard_at < until``, streamed through a server-side cursor."""
        import psycopg

        conn = self._pool.get()
        broken = True
        try:
            with conn.transaction(), conn.cursor(name="wmbus_receptions") as cur:
                cur.itersize = 10_000
                cur.execute(f"SELECT r.manufacturer, r.meter_id, r.device_type, h.gateway, to_char(h.heard_at, {_DATE}),"
                            " h.rssi_code, r.version FROM heard_by h JOIN reading r ON r.id = h.reading_id"
                            " WHERE h.heard_at >= %s::timestamp AND h.heard_at < %s::timestamp", (since, until))
                for row in cur:
                    yield Reception(*row)
            broken = False
        except GeneratorExit:  # the caller stopped early: the transaction was rolled back, the session is fine
            broken = False
            raise
        except psycopg.Error as exc:
            raise StoreError(f"reading receptions failed: {self._scrub(_one_line(exc))}") from None
        finally:
            self._pool.put(conn, broken=broken)

    def close(self) -> None:
        """Close every connection; the outbox lock goes with the publisher's."""
        self._pool.close()
        self._spill_pool.close()
        with self._drain_lock:
            if self._drain is not None:
                self._drain.close()
                self._drain = None


def _reading(row: Sequence[Any]) -> Reading:
    return Reading(digest=row[0], manufacturer=row[1], meter_id=row[2], version=row[3], device_type=row[4], ci=row[5],
                   access_number=row[6], telegram=bytes(row[7]), first_heard=row[8], first_gateway=row[9],
                   stored_at=row[10])
