"""``wmbus-stream receive``: a reference head-end system (HES) that receives report pushes.

Strategy
- A stdlib ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1 keep-alive) with a
  connection cap in all (``max_connections``) and per source address (``per_address``, an
  IPv6 /64 counting as one): a connection over either gets no thread; one shared thread
  answers it ``503`` with ``Retry-After`` (over TLS it is closed, since an answer would need
  a handshake). A client must not hold its thread without sending a request: the TLS
  handshake and each request head, idle keep-alive time before it included, have one
  deadline in all (``head_seconds``, not a timeout per byte); a late head is answered
  ``408``, an idle connection is closed.
- The head decides how the body is framed, so it must say it once: a second
  Content-Length, Transfer-Encoding, Host or Authorization, a Content-Length that is not
  ASCII digits, both Content-Length and Transfer-Encoding, a folded or malformed header
  line are ``400`` and the connection is closed (request smuggling). The stdlib does not
  decode ``Transfer-Encoding: chunked`` request bodies, so the handler decodes them itself;
  ``Content-Length`` bodies are accepted too (a buffering proxy such as nginx turns the
  gateway's chunked POST into one).
- TLS, when configured, is negotiated in the connection's own thread, so a client that
  connects and never completes a handshake cannot stall the accept loop.
- Path and credentials are checked from the request head, before any body byte is read:
  ``Expect: 100-continue`` is answered only after them, and a refusal closes the connection.
  Authentication is the command line's default (``--no-auth`` turns it off); an empty user
  name or a blank password is refused when the server is made, never served.
- A body is read in pieces and validated line by line as it arrives (spec section 5): five
  fields, 8-digit gateway serial, 8 hex-digit meter ID, ``YYYY-MM-DD hh:mm:ss``, ``00``,
  even-length uppercase hex holding a wired RSP_UD telegram (C=08, CI=72, optional receiver
  records in their order, then the ``0D FD 3B n`` container with exactly n bytes or the
  ``0F`` long form running to the end, a wireless telegram whose L-field fits) whose meter ID
  equals the line's and the container's. The first bad line answers ``400 line N: reason``
  at once, and crossing ``max_body`` answers ``413`` at once; either way the rest of the
  body is not waited for and nothing of it is stored. Only validated lines are kept.
- Storage is deduplicated: one reading per distinct wireless telegram (key: SHA-256 of the
  telegram bytes, which cover manufacturer, ID, version, device type, access number and
  payload), plus one ``heard_by`` row per (reading, gateway, reception time). The same
  telegram from three gateways is one reading heard three times; a re-push of the same
  report (at-least-once delivery) adds nothing.

Invariants
- All or nothing per POST: a body is stored in one transaction (SQLite) or one appended,
  fsynced write (JSON lines, truncated back on failure), and the 2xx answer is sent only
  after that returned. A 2xx therefore means durable, so the gateway may forget the lines.
- Credentials are compared in constant time and never logged.
- Every answer goes through ``_reply`` (the busy ``503`` through ``_Server``), which counts
  each refusal by status, so the command line's summary counts every refused request.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import queue
import re
import select
import signal
import socket
import socketserver
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from email.message import Message
from typing import Any, BinaryIO, Protocol

from . import __version__
from .errors import FrameError, ReportError
from .io.connections import DeadlineReader, Late, source_of
from .wire import LONG_FORM, check_telegram, parse_header
from .wire.header import manufacturer_letters

__all__ = [
    "ReportLine",
    "parse_line",
    "parse_report",
    "parse_wired",
    "Reading",
    "Heard",
    "Store",
    "SqliteStore",
    "JsonlStore",
    "open_store",
    "ReceiveStats",
    "PostSummary",
    "ReceiveServer",
    "add_arguments",
    "main",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "HEAD_SECONDS",
    "check_credentials",
    "ReportParser",
]

log = logging.getLogger("wmbus_stream.hes")

DEFAULT_MAX_BODY = 256 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 64
# The TLS handshake, and each request head with the idle keep-alive time before it.
HEAD_SECONDS = 10.0
# The longest report line accepted: a valid one has at most about 620 characters.
MAX_REPORT_LINE = 1024
# A body is read and validated in pieces of at most this size.
READ_SIZE = 64 * 1024
# Longest chunk-size or trailer line accepted; real ones are a few bytes.
MAX_LINE = 1024
MAX_TRAILERS = 32
# After refusing a request early, read at most this much of its body so the client sees
# our answer instead of a connection reset.
DRAIN_LIMIT = 4 * 1024 * 1024
DRAIN_SECONDS = 2.0

_SERIAL = re.compile(r"[0-9]{8}")
_METER_ID = re.compile(r"[0-9A-Fa-f]{8}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_HEX = re.compile(r"[0-9A-F]*")
_LENGTH = re.compile(r"[0-9]{1,15}")
# Headers that must come at most once: they decide the body's framing, the target or who is asking.
_SINGLE_HEADERS = ("Content-Length", "Transfer-Encoding", "Host", "Authorization")

# Optional receiver records of the wired telegram, in the only order allowed (spec section 2).
_RECORDS: tuple[tuple[bytes, int, str], ...] = (
    (b"\x0c\x78", 4, "receiver address 0C78"),
    (b"\x02\x75", 2, "age 0275"),
    (b"\x01\xfd\x71", 1, "RSSI 01FD71"),
)
_CONTAINER = b"\x0d\xfd\x3b"
_LONG_FORM = bytes((LONG_FORM,))


# --------------------------------------------------------------------------------------------
# Report lines


@dataclass(frozen=True, slots=True)
class ReportLine:
    """One validated report line and what the HES keeps of it."""

    gateway: str
    meter_id: str
    date: str
    wired: bytes
    telegram: bytes
    receiver: str | None
    age_minutes: int | None
    rssi_code: int | None
    manufacturer: str
    version: int
    device_type: int
    ci: int
    access_number: int | None
    digest: str
    long_form: bool = False  # the telegram followed 0F (192+ bytes), not a 0D FD 3B container


def _access_number(telegram: bytes, ci: int) -> int | None:
    """The access number after a short (7A), long (72) or extended link layer (8C..8F) CI."""
    index = {0x7A: 11, 0x72: 19, 0x8C: 12, 0x8D: 12, 0x8E: 12, 0x8F: 12}.get(ci)
    return telegram[index] if index is not None and index < len(telegram) else None


def parse_wired(wired: bytes) -> tuple[str | None, int | None, int | None, bytes, bool]:
    """Check a report's wired RSP_UD telegram: (receiver address, age, RSSI code, wireless telegram, long form).

    The telegram is in a ``0D FD 3B n`` container (n bytes, maybe a fill byte 0F/1F after
    it) or, past 191 bytes, follows ``0F`` to the end (the long form). A container length of
    0xC0 or more is read as a length too: gateways before the long form sent those.
    """
    if len(wired) < 15:
        raise ValueError(f"wired telegram of {len(wired)} bytes is shorter than the 15-byte RSP_UD header")
    if wired[0] != 0x08:
        raise ValueError(f"wired C-field is 0x{wired[0]:02X}, not 0x08 (RSP_UD)")
    if wired[2] != 0x72:
        raise ValueError(f"wired CI-field is 0x{wired[2]:02X}, not 0x72")
    found: dict[str, bytes] = {}
    pos, next_record = 15, 0
    while not wired.startswith(_CONTAINER, pos) and not wired.startswith(_LONG_FORM, pos):
        match = next((i for i, (tag, _, _) in enumerate(_RECORDS) if wired.startswith(tag, pos)), None)
        if match is None:
            raise ValueError(
                f"unexpected bytes {wired[pos:pos + 3].hex().upper()} at offset {pos};"
                " expected 0C78, 0275, 01FD71, the container 0DFD3B or the long form 0F"
            )
        index = match
        tag, size, name = _RECORDS[index]
        if index < next_record:
            raise ValueError(f"record {name} at offset {pos} is repeated or out of order")
        value = wired[pos + len(tag) : pos + len(tag) + size]
        if len(value) != size:
            raise ValueError(f"record {name} at offset {pos} is cut short")
        found[name] = value
        pos += len(tag) + size
        next_record = index + 1
    long_form = wired.startswith(_LONG_FORM, pos)
    if long_form:
        telegram = wired[pos + 1 :]
    else:
        if pos + 4 > len(wired):
            raise ValueError(f"container record at offset {pos} has no length byte")
        n = wired[pos + 3]
        telegram = wired[pos + 4 : pos + 4 + n]
        rest = wired[pos + 4 + n :]
        if len(telegram) != n:
            raise ValueError(f"container says {n} bytes but only {len(telegram)} follow")
        if rest and rest not in (b"\x0f", b"\x1f"):
            raise ValueError(f"container says {n} bytes but {n + len(rest)} follow")
    try:
        check_telegram(telegram)
    except FrameError as exc:
        where = "after the long form 0F (it runs to the end of the line)" if long_form else "in the container"
        raise ValueError(f"wireless telegram {where}: {exc}") from None
    if telegram[2:4] + telegram[8:10] != wired[7:11]:
        raise ValueError("manufacturer, version or device type of the wired header differ from the wireless telegram's")
    if telegram[4:8] != wired[3:7]:
        raise ValueError(
            f"meter ID {wired[6]:02X}{wired[5]:02X}{wired[4]:02X}{wired[3]:02X} of the wired header differs from "
            f"{telegram[7]:02X}{telegram[6]:02X}{telegram[5]:02X}{telegram[4]:02X} of the wireless telegram"
        )
    receiver = found.get(_RECORDS[0][2])
    age = found.get(_RECORDS[1][2])
    rssi = found.get(_RECORDS[2][2])
    if rssi is not None and rssi[0] > 63:
        raise ValueError(f"RSSI code {rssi[0]} is outside 0..63")
    return (
        receiver[::-1].hex().upper() if receiver is not None else None,
        int.from_bytes(age, "little") if age is not None else None,
        rssi[0] if rssi is not None else None,
        telegram,
        long_form,
    )


def parse_line(text: str) -> ReportLine:
    """Validate one report line (without its line break); raises ValueError with the reason."""
    fields = text.split(";")
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} fields separated by ';', expected 5")
    gateway, meter_id, date, count, hex_text = fields
    if not _SERIAL.fullmatch(gateway):
        raise ValueError(f"gateway serial {gateway[:20]!r} is not 8 digits")
    if not _METER_ID.fullmatch(meter_id):
        raise ValueError(f"meter id {meter_id[:20]!r} is not 8 hex digits")
    if not _DATE.fullmatch(date):
        raise ValueError(f"date {date[:30]!r} is not 'YYYY-MM-DD hh:mm:ss'")
    try:
        datetime.strptime(date, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ValueError(f"date {date!r} is not a valid date and time") from None
    if count != "00":
        raise ValueError(f"value data count {count[:10]!r} is not '00'")
    if not hex_text:
        raise ValueError("telegram is empty")
    if not _HEX.fullmatch(hex_text):
        raise ValueError("telegram is not uppercase hex (0-9, A-F)")
    if len(hex_text) % 2:
        raise ValueError(f"telegram has an odd number of hex digits ({len(hex_text)})")
    wired = bytes.fromhex(hex_text)
    receiver, age, rssi, telegram, long_form = parse_wired(wired)
    _c, man, ident, version, device_type, ci = parse_header(telegram)
    if ident != meter_id.upper():
        raise ValueError(f"meter id {meter_id} differs from {ident} in the telegram")
    return ReportLine(
        gateway=gateway,
        meter_id=ident,
        date=date,
        wired=wired,
        telegram=telegram,
        receiver=receiver,
        age_minutes=age,
        rssi_code=rssi,
        manufacturer=manufacturer_letters(man),
        version=version,
        device_type=device_type,
        ci=ci,
        access_number=_access_number(telegram, ci),
        digest=hashlib.sha256(telegram).hexdigest(),
        long_form=long_form,
    )


class ReportParser:
    """Validates a report body while it arrives: ``feed`` pieces, then ``finish``.

    Lines end with LF (CRLF tolerated); the last line may lack its line break; an empty
    body is a valid report of no lines. ``feed`` and ``finish`` raise ReportError for the
    first bad line, at the piece that completes it (or makes it longer than a line can be).
    """

    def __init__(self) -> None:
        self.lines: list[ReportLine] = []
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        """Validate the lines ``data`` completes; keep an unfinished last line for later."""
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._partial:
                self._partial += data[start:end]
                raw = bytes(self._partial)
                self._partial.clear()
            else:
                raw = data[start:end]
            self._line(raw)
            start = end + 1
        self._partial += data[start:]
        if len(self._partial) > MAX_REPORT_LINE:
            raise ReportError(len(self.lines) + 1, f"longer than {MAX_REPORT_LINE} bytes (a report line is about 600)")

    def finish(self) -> list[ReportLine]:
        """The validated lines, once the body has ended."""
        if self._partial:
            self._line(bytes(self._partial))
            self._partial.clear()
        return self.lines

    def _line(self, raw: bytes) -> None:
        number = len(self.lines) + 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            raise ReportError(number, "empty line")
        if len(raw) > MAX_REPORT_LINE:
            raise ReportError(number, f"longer than {MAX_REPORT_LINE} bytes (a report line is about 600)")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ReportError(number, "not ASCII") from None
        if not text.isprintable():
            raise ReportError(number, "control character in the line")
        try:
            self.lines.append(parse_line(text))
        except ValueError as exc:
            raise ReportError(number, str(exc)) from None


def parse_report(body: bytes) -> list[ReportLine]:
    """Validate a whole report body (see ReportParser); raises ReportError for the first bad line."""
    parser = ReportParser()
    parser.feed(body)
    return parser.finish()


# --------------------------------------------------------------------------------------------
# Storage


@dataclass(frozen=True, slots=True)
class Reading:
    """One distinct wireless telegram, whichever gateways heard it."""

    digest: str
    manufacturer: str
    meter_id: str
    version: int
    device_type: int
    ci: int
    access_number: int | None
    telegram: bytes
    first_heard: str
    first_gateway: str
    stored_at: str


@dataclass(frozen=True, slots=True)
class Heard:
    """One gateway's reception of a reading."""

    digest: str
    gateway: str
    date: str
    rssi_code: int | None
    receiver: str | None
    age_minutes: int | None
    stored_at: str


class Store(Protocol):
    """Where accepted lines go; ``add`` is all or nothing and durable when it returns."""

    def add(self, lines: Sequence[ReportLine]) -> tuple[int, int]:
        """Store lines; returns (new readings, new heard_by rows)."""
        ...

    def readings(self) -> list[Reading]:
        """All readings, oldest first."""
        ...

    def heard(self) -> list[Heard]:
        """All heard_by rows, oldest first."""
        ...

    def close(self) -> None:
        """Release the file or database."""
        ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

    def add(self, lines: Sequence[ReportLine]) -> tuple[int, int]:
        """Store lines in one transaction; returns (new readings, new heard_by rows)."""
        stored_at = _now()
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

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class JsonlStore:
    """Readings and heard_by rows as JSON lines appended to one file, indexed in memory.

    A torn last line (power cut during an append) is cut off when the file is opened.
    """

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._readings: dict[str, Reading] = {}
        self._heard: list[Heard] = []
        self._heard_keys: set[tuple[str, str, str]] = set()
        self._file: BinaryIO = open(path, "a+b")  # noqa: SIM115  (kept open for appends)
        self._load()

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            log.warning("%s: cutting off a torn last line of %d bytes", self.path, len(data) - end)
            self._file.truncate(end)
            os.fsync(self._file.fileno())
        for number, raw in enumerate(data[:end].splitlines(), 1):
            try:
                record = json.loads(raw)
                kind = record.pop("type")
                if kind == "reading":
                    record["telegram"] = bytes.fromhex(record["telegram"])
                    reading = Reading(**record)
                    self._readings[reading.digest] = reading
                elif kind == "heard_by":
                    heard = Heard(**record)
                    self._heard.append(heard)
                    self._heard_keys.add((heard.digest, heard.gateway, heard.date))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path} line {number} is not a record of this store: {exc}") from None

    def add(self, lines: Sequence[ReportLine]) -> tuple[int, int]:
        """Append the new records in one fsynced write; returns (new readings, new heard_by rows)."""
        stored_at = _now()
        with self._lock:
            readings: dict[str, Reading] = {}
            heard: list[Heard] = []
            heard_keys: set[tuple[str, str, str]] = set()
            out: list[bytes] = []
            for line in lines:
                if line.digest not in self._readings and line.digest not in readings:
                    reading = Reading(line.digest, line.manufacturer, line.meter_id, line.version, line.device_type,
                                      line.ci, line.access_number, line.telegram, line.date, line.gateway, stored_at)
                    readings[line.digest] = reading
                    record: dict[str, Any] = {"type": "reading", **_fields(reading)}
                    record["telegram"] = line.telegram.hex().upper()
                    out.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                key = (line.digest, line.gateway, line.date)
                if key not in self._heard_keys and key not in heard_keys:
                    row = Heard(line.digest, line.gateway, line.date, line.rssi_code, line.receiver, line.age_minutes, stored_at)
                    heard.append(row)
                    heard_keys.add(key)
                    out.append(json.dumps({"type": "heard_by", **_fields(row)}, separators=(",", ":")).encode() + b"\n")
            if out:
                self._file.seek(0, os.SEEK_END)
                start = self._file.tell()
                try:
                    self._file.write(b"".join(out))
                    self._file.flush()
                    os.fsync(self._file.fileno())
                except BaseException:
                    # All or nothing: take back whatever part of this body reached the file.
                    with contextlib.suppress(OSError):
                        self._file.truncate(start)
                        self._file.flush()
                    raise
            self._readings.update(readings)
            self._heard.extend(heard)
            self._heard_keys |= heard_keys
        return len(readings), len(heard)

    def readings(self) -> list[Reading]:
        """All readings, oldest first."""
        with self._lock:
            return list(self._readings.values())

    def heard(self) -> list[Heard]:
        """All heard_by rows, oldest first."""
        with self._lock:
            return list(self._heard)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def _fields(value: Reading | Heard) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def open_store(db: str | None = None, jsonl: str | None = None) -> SqliteStore | JsonlStore:
    """The store the command line asks for: a JSON-lines file, an SQLite file, or SQLite in memory."""
    if db and jsonl:
        raise ValueError("choose either an SQLite database or a JSON-lines file, not both")
    if jsonl:
        return JsonlStore(jsonl)
    return SqliteStore(db or ":memory:")


# --------------------------------------------------------------------------------------------
# HTTP server


@dataclass(frozen=True, slots=True)
class ReceiveStats:
    """Counters since start: accepted POSTs, lines (long form among them), new readings and
    heard_by rows; refused requests (every answer of 400 or more, connections turned away
    included) in all and ``refused`` by status; of them unauthorized POSTs and connections
    turned away over a cap (``busy``)."""

    posts: int = 0
    lines: int = 0
    readings: int = 0
    heard: int = 0
    rejected: int = 0
    unauthorized: int = 0
    long_form: int = 0
    busy: int = 0
    refused: tuple[tuple[int, int], ...] = ()  # (status, count), by status


@dataclass(frozen=True, slots=True)
class PostSummary:
    """What happened to one POST, for the command line's log."""

    client: str
    path: str
    status: int
    lines: int
    new_readings: int
    gateways: tuple[str, ...]
    error: str | None = None


_COUNTERS = tuple(name for name in ReceiveStats.__slots__ if name != "refused")


class _BadBody(Exception):
    """The request body's framing is broken; the connection cannot be reused."""


class _TooLarge(Exception):
    """The request body is over the limit."""


class _Cut(Exception):
    """The client closed the connection before its body ended."""


class _Reader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...


def _length_pieces(rfile: _Reader, size: int) -> Iterator[bytes]:
    """A ``Content-Length`` body in pieces of at most READ_SIZE bytes."""
    left = size
    while left:
        data = rfile.read(min(left, READ_SIZE))
        if not data:
            raise _Cut(f"connection closed after {size - left} of {size} body bytes")
        left -= len(data)
        yield data


def _chunked_pieces(rfile: _Reader, limit: int) -> Iterator[bytes]:
    """A chunked request body (RFC 9112 section 7.1) in pieces; _TooLarge before passing ``limit``."""
    total = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if not line:
            raise _BadBody("connection closed inside the chunked body")
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise _BadBody("chunk size line too long")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise _BadBody(f"bad chunk size line {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise _TooLarge()
        while size:
            data = rfile.read(min(size, READ_SIZE))
            if not data:
                raise _BadBody("connection closed inside a chunk")
            size -= len(data)
            yield data
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise _BadBody("chunk data not followed by CRLF")
    for _ in range(MAX_TRAILERS):
        line = rfile.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return
        if not line or len(line) > MAX_LINE:
            raise _BadBody("broken trailer section")
    raise _BadBody("too many trailer lines")


def _head_problem(headers: Message) -> str | None:
    """What makes a request head ambiguous about its body, target or sender (request smuggling); None if nothing."""
    if headers.defects or headers.get_payload():
        return "a header line is not 'Name: value' (no space may come before the colon)"
    for name in _SINGLE_HEADERS:
        count = len(headers.get_all(name) or ())
        if count > 1:
            return f"{name} is given {count} times; send it once"
    if any("\r" in value or "\n" in value for value in headers.values()):
        return "a header is folded onto a following line; send each header on one line"
    length = headers.get("Content-Length")
    if length is not None:
        if headers.get("Transfer-Encoding") is not None:
            return "both Content-Length and Transfer-Encoding; send one of them"
        if not _LENGTH.fullmatch(length.strip(" \t")):
            return f"Content-Length {ascii(length[:20])} is not a number of bytes in ASCII digits"
    return None


class _Handler(BaseHTTPRequestHandler):
    """Request handler; the work is in ReceiveServer so it can be configured per instance."""

    protocol_version = "HTTP/1.1"
    server_version = f"wmbus-stream-hes/{__version__}"
    sys_version = ""
    server: _Server
    reader: DeadlineReader
    continued = False  # 100 Continue sent for the current request
    # Until a request line is parsed (an answer to a late or broken first head needs them).
    requestline, request_version, command = "", "HTTP/1.1", ""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file, replaced by one that keeps deadlines
        self.reader = DeadlineReader(self.connection, self.server.app.timeout)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        # The head, with the idle time before it, must be complete within head_seconds: a
        # client sending a byte now and then does not keep its thread (parse_request stops
        # the clock before the body).
        seconds = self.server.app.head_seconds
        self.reader.start(seconds)
        try:
            super().handle_one_request()
        except Late:
            self.close_connection = True
            if self.reader.got:  # a late head gets 408; an idle connection is just closed
                log.info("%s did not send a request head within %g s; connection closed", self.client_address[0], seconds)
                with contextlib.suppress(OSError):
                    self.server.app._reply(self, 408, f"the request head did not arrive within {seconds:g} s\n",
                                           close=True)
        finally:
            self.reader.stop()

    def parse_request(self) -> bool:
        try:
            if not super().parse_request():
                return False
        finally:
            self.reader.stop()
        self.continued = False  # for this request: no 100 Continue sent yet
        problem = _head_problem(self.headers)
        if problem is not None:
            self.server.app._refuse_head(self, problem)
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A malformed request line or head: a short plain-text answer (not http.server's HTML), then close."""
        reason = (message or self.responses.get(code, ("error",))[0]).encode("ascii", "backslashreplace").decode()
        log.info("%s: %d %s", self.client_address[0], code, reason[:200])
        # parse_request leaves HTTP/0.9 (no status line, no headers) until it has read a version.
        self.request_version = self.protocol_version
        self.server.app._reply(self, code, f"bad request: {reason[:200]}\n", close=True)

    def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
        self.server.app._handle_post(self)

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue``: ``_handle_post`` sends it once path and credentials are checked."""
        return True

    def _not_allowed(self) -> None:
        self.server.app._reply(self, 405, "only POST is accepted here\n", {"Allow": "POST"}, close=True)

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class _Busy:
    """Turns away connections over the cap from one thread for all of them.

    Each gets the ``503`` answer and a half-close; what the client already sent is read (up
    to DRAIN_LIMIT, for at most a second) so that the close does not reset the connection
    before the client reads the answer. At most ``MAX_OPEN`` wait at once; more are closed.
    """

    MAX_OPEN = 256

    def __init__(self, answers: bool) -> None:
        self._answers = answers  # False: close without an answer (TLS would need a handshake)
        self._new: queue.SimpleQueue[tuple[socket.socket, bytes] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hes-busy", daemon=True)
        self._thread.start()

    def refuse(self, sock: socket.socket, reason: str) -> None:
        """Answer ``sock`` 503 saying ``reason`` and close it."""
        text = f"busy: {reason}; retry later\n"
        answer = (
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n{text}"
        ).encode("ascii")
        self._new.put((sock, answer))

    def close(self) -> None:
        self._stop.set()
        self._new.put(None)  # wakes the thread
        self._thread.join(5)

    def _admit(self, sock: socket.socket, answer: bytes, waiting: dict[socket.socket, tuple[float, int]]) -> None:
        if not self._answers or len(waiting) >= self.MAX_OPEN:
            _close(sock)
            return
        try:
            sock.setblocking(False)
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            _close(sock)
            return
        waiting[sock] = (time.monotonic() + 1.0, 0)

    def _run(self) -> None:
        waiting: dict[socket.socket, tuple[float, int]] = {}
        while not self._stop.is_set():
            try:
                item = self._new.get(timeout=0.05 if waiting else None)
                while item is not None:
                    self._admit(*item, waiting)
                    item = self._new.get_nowait()
            except queue.Empty:
                pass
            if not waiting:
                continue
            with contextlib.suppress(OSError, ValueError):
                readable, _, _ = select.select(list(waiting), [], [], 0.05)
                for sock in readable:
                    deadline, drained = waiting[sock]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if data and drained + len(data) < DRAIN_LIMIT:
                        waiting[sock] = (deadline, drained + len(data))
                    else:
                        del waiting[sock]
                        _close(sock)
            now = time.monotonic()
            for sock in [s for s, (deadline, _) in waiting.items() if deadline <= now]:
                del waiting[sock]
                _close(sock)
        for sock in waiting:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with TLS per connection, connection caps (in all, per address) and a registry of connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: ReceiveServer, family: int):
        self.address_family = family
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.active = 0  # accepted connections with a thread, TLS handshake included
        self.held: dict[str, int] = {}  # of them per source (connections.source_of)
        self.busy = _Busy(answers=app._ssl is None)
        # The socket timeout of every connection (idle keep-alive, slow bodies) is per server.
        handler = type("_TimedHandler", (_Handler,), {"timeout": app.timeout})
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        source = source_of(client_address[0])
        refused = self._admit(source)
        if refused is not None:
            self.app._count(busy=1, refused=503)
            log.info("connection from %s turned away: %s", client_address[0], refused)
            self.busy.refuse(request, refused)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(source)
            raise

    def _admit(self, source: str) -> str | None:
        """Take a connection slot for ``source``; why not, when it may not have one."""
        app = self.app
        with self.connections_lock:
            held = self.held.get(source, 0)
            if self.active >= app.max_connections:
                return f"{self.active} connections are open, the most this HES serves"
            if held >= app.per_address:
                return f"{held} connections from this address are open, the most one address may have"
            self.held[source] = held + 1
            self.active += 1
            return None

    def _release(self, source: str) -> None:
        with self.connections_lock:
            self.active -= 1
            if self.held[source] <= 1:
                del self.held[source]
            else:
                self.held[source] -= 1

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(source_of(client_address[0]))

    def server_close(self) -> None:
        super().server_close()
        self.busy.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can hang offline.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.app.timeout)
        context = self.app._ssl
        conn = request
        if context is not None:
            try:
                # The handshake's timeout is one deadline for all of it (ssl's do_handshake).
                request.settimeout(self.app.head_seconds)
                conn = context.wrap_socket(request, server_side=True)
                conn.settimeout(self.app.timeout)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", client_address[0], getattr(exc, "reason", None) or exc)
                return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.info("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("unexpected error serving %s", client_address[0])


def default_per_address(max_connections: int) -> int:
    """Connections one address may hold unless told: half the cap, so one address cannot hold all."""
    return max(1, max_connections // 2)


def _split_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``port`` -> (host, port)."""
    text = listen.strip()
    if text.isdigit():
        return "127.0.0.1", int(text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {listen!r} is not HOST:PORT")
    return host or "0.0.0.0", int(port)


def check_credentials(username: str | None, password: str | None) -> None:
    """Refuse credentials that would let anyone in or that no client can send: ValueError says which."""
    if (username is None) != (password is None):
        raise ValueError("basic auth needs both a user name and a password")
    if username is None or password is None:
        return
    if not username.strip():
        raise ValueError("the basic-auth user name is empty; give the name the gateways push as")
    if ":" in username:
        raise ValueError(f"the basic-auth user name {username!r} holds ':', which basic auth cannot carry")
    if not password.strip():
        raise ValueError("the basic-auth password is empty or only blanks; give the password the gateways push with")


class ReceiveServer:
    """The reference HES: validates report POSTs and stores them deduplicated."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store: Store | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        path: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        per_address: int | None = None,
        ok_status: int = 204,
        timeout: float = 60.0,
        head_seconds: float = HEAD_SECONDS,
        on_post: Callable[[PostSummary], None] | None = None,
    ):
        check_credentials(username, password)
        if tls_key is not None and tls_cert is None:
            raise ValueError("a TLS key needs its certificate")
        if ok_status not in (200, 204):
            raise ValueError("ok_status must be 200 or 204")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        per_address = default_per_address(max_connections) if per_address is None else per_address
        if not 1 <= per_address <= max_connections:
            raise ValueError(f"per_address must be 1 to max_connections ({max_connections})")
        self.host = host
        self._requested_port = port
        self._owns_store = store is None
        self.store: Store = store if store is not None else SqliteStore()
        self._credentials = (
            (username.encode("utf-8"), password.encode("utf-8")) if username is not None and password is not None else None
        )
        self._ssl: ssl.SSLContext | None = None
        if tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls_cert, tls_key)
            self._ssl = context
        self.path = path
        self.max_body = max_body
        self.max_connections = max_connections
        self.per_address = per_address
        self.head_seconds = head_seconds
        self.ok_status = ok_status
        self.timeout = timeout
        self.on_post = on_post
        self._stats = ReceiveStats()
        self._stats_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> ReceiveServer:
        """Bind and serve in a background thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = _Server((self.host, self._requested_port), self, family)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hes-{self.port}", daemon=True)
        self._thread.start()
        log.info("HES receiving on %s", self.url)
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, give running requests ``grace`` seconds, then cut the rest."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        end = time.monotonic() + grace
        while time.monotonic() < end:
            with server.connections_lock:
                busy = bool(server.connections)
            if not busy:
                break
            time.sleep(0.02)
        with server.connections_lock:
            for conn in list(server.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> ReceiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL a gateway pushes to."""
        scheme = "https" if self._ssl is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path or '/'}"

    @property
    def stats(self) -> ReceiveStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return self._stats

    def _count(self, refused: int | None = None, **increments: int) -> None:
        """Add to the counters; ``refused`` is the status of a refusal (counted in ``rejected`` too)."""
        with self._stats_lock:
            stats = self._stats
            values = {name: getattr(stats, name) + increments.get(name, 0) for name in _COUNTERS}
            by_status = dict(stats.refused)
            if refused is not None:
                values["rejected"] += 1
                by_status[refused] = by_status.get(refused, 0) + 1
            self._stats = ReceiveStats(**values, refused=tuple(sorted(by_status.items())))

    # -- requests -----------------------------------------------------------------------------

    def _reply(
        self, handler: _Handler, status: int, text: str = "", headers: dict[str, str] | None = None, *, close: bool = False
    ) -> None:
        """Send a plain-text answer with a Content-Length so keep-alive works; count it if it refuses."""
        if status >= 400:
            self._count(refused=status)
        body = text.encode("utf-8")
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if status != 204:
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("X-Content-Type-Options", "nosniff")
            handler.send_header("Content-Length", str(len(body)))
        if close:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        if status != 204 and body:
            handler.wfile.write(body)
        handler.wfile.flush()

    def _refuse_early(self, handler: _Handler, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        """Answer before the body has ended and close; read (not keep) some of it so the client sees the answer."""
        self._reply(handler, status, text, headers, close=True)
        if _expects_continue(handler) and not handler.continued:
            return  # the client waits for 100 Continue and sends no body: nothing to read
        # Closing with unread data makes the kernel send a reset that can destroy our answer
        # in the client's receive buffer; reading the body (bounded) first avoids that.
        with contextlib.suppress(OSError, ValueError):
            handler.connection.settimeout(0.5)
            end = time.monotonic() + DRAIN_SECONDS
            drained = 0
            while drained < DRAIN_LIMIT and time.monotonic() < end:
                data = handler.rfile.read1(65536)
                if not data:
                    break
                drained += len(data)

    def _authorized(self, handler: _Handler) -> bool:
        if self._credentials is None:
            return True
        scheme, _, encoded = handler.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, secret = decoded.partition(b":")
        want_user, want_secret = self._credentials
        # Both compared every time, so timing does not tell which one was wrong.
        user_ok = hmac.compare_digest(user, want_user)
        secret_ok = hmac.compare_digest(secret, want_secret)
        return bool(sep) and user_ok and secret_ok

    def _tell(self, handler: _Handler, status: int, error: str | None, lines: Sequence[ReportLine] = (),
              new: int = 0) -> None:
        """Report what became of a POST to ``on_post`` (the command line's log)."""
        if self.on_post is None or handler.command != "POST":
            return
        gateways = tuple(dict.fromkeys(line.gateway for line in lines))
        path = handler.path.split("?", 1)[0]
        try:
            self.on_post(PostSummary(handler.client_address[0], path, status, len(lines), new, gateways, error))
        except Exception:  # a broken observer must not turn a stored POST into an error
            log.exception("on_post callback failed")

    def _refuse_head(self, handler: _Handler, problem: str) -> None:
        """Refuse a request whose head is ambiguous (``_head_problem``): 400, nothing read, connection closed."""
        log.info("%s %s from %s: 400 %s; nothing stored", handler.command, handler.path[:200], handler.client_address[0],
                 problem)
        self._tell(handler, 400, problem)
        self._refuse_early(handler, 400, f"bad request head: {problem}\n")

    def _handle_post(self, handler: _Handler) -> None:
        client = handler.client_address[0]
        request_path = handler.path.split("?", 1)[0]

        def refuse(status: int, error: str, text: str, headers: dict[str, str] | None = None) -> None:
            log.info("POST %s from %s: %d %s; nothing stored", request_path, client, status, error)
            self._tell(handler, status, error)
            self._refuse_early(handler, status, text, headers)

        # Everything up to the 100 Continue is decided from the request head alone (its
        # framing was checked by _Handler.parse_request).
        if self.path is not None and request_path != self.path:
            refuse(404, f"not {self.path}", f"reports are received at {self.path}\n")
            return
        if not self._authorized(handler):
            self._count(unauthorized=1)
            refuse(401, "missing or wrong credentials", "authentication required\n",
                   {"WWW-Authenticate": 'Basic realm="wmbus-stream HES", charset="UTF-8"'})
            return
        transfer = handler.headers.get("Transfer-Encoding")
        length = handler.headers.get("Content-Length")
        if transfer is not None and transfer.strip().lower() != "chunked":
            refuse(501, f"Transfer-Encoding {transfer!r}", f"Transfer-Encoding {transfer!r} is not supported\n")
            return
        if length is not None and int(length) > self.max_body:
            refuse(413, "body too large", f"body larger than {self.max_body} bytes\n")
            return
        if _expects_continue(handler):
            handler.send_response_only(100)
            handler.end_headers()
            handler.continued = True
        if transfer is not None:
            pieces = _chunked_pieces(handler.rfile, self.max_body)
        else:
            pieces = _length_pieces(handler.rfile, int(length or 0))
        parser = ReportParser()
        try:
            for piece in pieces:
                parser.feed(piece)
        except _TooLarge:
            refuse(413, "body too large", f"body larger than {self.max_body} bytes\n")
            return
        except _BadBody as exc:
            refuse(400, f"bad body framing ({exc})", f"bad request body: {exc}\n")
            return
        except ReportError as exc:
            refuse(400, str(exc), f"{exc}\n")  # the rest of the body is not waited for
            return
        except (_Cut, TimeoutError, OSError) as exc:
            log.info("POST from %s: body not received (%s); nothing stored", client, exc)
            handler.close_connection = True
            return
        try:
            lines = parser.finish()
        except ReportError as exc:
            log.info("POST %s from %s: 400 %s; nothing stored", request_path, client, exc)
            self._tell(handler, 400, str(exc))
            self._reply(handler, 400, f"{exc}\n")  # the body has ended: the connection stays usable
            return
        try:
            new_readings, new_heard = self.store.add(lines)
        except Exception as exc:  # noqa: BLE001  (the gateway keeps the report and retries)
            log.error("POST from %s: storing %d lines failed: %s", client, len(lines), exc)
            self._tell(handler, 500, f"storage failed: {exc}")
            self._reply(handler, 500, f"storage failed: {exc}\n")
            return
        long_form = sum(line.long_form for line in lines)
        self._count(posts=1, lines=len(lines), readings=new_readings, heard=new_heard, long_form=long_form)
        # Reported before the answer, so a log reader sees POSTs in the order clients saw them.
        self._tell(handler, self.ok_status, None, lines, new_readings)
        if self.ok_status == 204:
            self._reply(handler, 204)
        else:
            self._reply(handler, 200, f"OK {len(lines)} lines, {new_readings} new readings\n")


def _expects_continue(handler: _Handler) -> bool:
    """Whether the client waits for ``100 Continue`` before sending its body."""
    return handler.request_version != "HTTP/1.0" and handler.headers.get("Expect", "").strip().lower() == "100-continue"


# --------------------------------------------------------------------------------------------
# Command line


def _listen_option(text: str) -> str:
    """``--listen`` checked when the options are parsed, so a bad address is a usage error (exit 2)."""
    try:
        _split_listen(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, [IPv6]:PORT or PORT") from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wmbus-stream receive``."""
    parser.add_argument("--listen", default="127.0.0.1:8081", metavar="HOST:PORT", type=_listen_option,
                        help="address to listen on (default 127.0.0.1:8081; [::]:PORT for IPv6)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="FILE", help="SQLite database for readings (default: in memory only)")
    where.add_argument("--jsonl", metavar="FILE", help="append readings as JSON lines to FILE instead")
    parser.add_argument("--username", help="HTTP basic auth user the gateways push as (required unless --no-auth)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password", help="basic-auth password (visible in ps; prefer --password-file)")
    secret.add_argument("--password-file", metavar="FILE", help="file whose first line is the password")
    parser.add_argument("--no-auth", action="store_true",
                        help="accept reports without credentials from anyone who can reach the port")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, chain)")
    parser.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (if not in the same file)")
    parser.add_argument("--path", default=None, help="accept reports only at this path (default: any path)")
    parser.add_argument("--max-body-mib", type=int, default=DEFAULT_MAX_BODY // (1024 * 1024), metavar="MIB",
                        help="largest accepted body in MiB (default 256)")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help=f"connections served at once; more are answered 503 (default {DEFAULT_MAX_CONNECTIONS})")
    parser.add_argument("--max-per-address", type=int, default=None, metavar="N",
                        help="connections one client address (an IPv6 /64) may hold at once; more are answered 503"
                             " (default half of --max-connections; behind a proxy, every client is the proxy)")
    parser.add_argument("--ok-status", type=int, choices=(200, 204), default=204,
                        help="status of an accepted POST (default 204)")


def main(args: argparse.Namespace) -> int:
    """Run the receiving server until SIGINT/SIGTERM; 0 on a clean stop, 1 on failure (a file, the address), 2 on bad options."""
    try:
        host, port = _split_listen(args.listen)
        password = args.password
        if args.password_file:
            with open(args.password_file, "rb") as handle:
                first = handle.readline()
            try:
                password = first.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ValueError(f"--password-file {args.password_file}: the first line is not UTF-8 text") from None
            if not password.strip():
                raise ValueError(f"--password-file {args.password_file} holds no password on its first line"
                                 " (it is empty or blank); write the password the gateways push with")
        if (args.username is None) != (password is None):
            raise ValueError("--username and --password (or --password-file) go together")
        check_credentials(args.username, password)
        if args.no_auth and args.username is not None:
            raise ValueError("--no-auth and --username exclude each other")
        if args.username is None and not args.no_auth:
            raise ValueError(
                "refusing to start without authentication: give --username and --password-file (or --password),"
                " or --no-auth to accept reports from anyone who can reach the port")
        if args.tls_key and not args.tls_cert:
            raise ValueError("--tls-key needs --tls-cert")
        if args.max_body_mib < 1:
            raise ValueError("--max-body-mib must be at least 1")
        if args.max_connections < 1:
            raise ValueError("--max-connections must be at least 1")
        if args.max_per_address is not None and not 1 <= args.max_per_address <= args.max_connections:
            raise ValueError(f"--max-per-address must be 1 to --max-connections ({args.max_connections})")
        if args.path is not None and not args.path.startswith("/"):
            raise ValueError("--path must start with '/'")
    except ValueError as exc:
        print(f"wmbus-stream receive: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wmbus-stream receive: cannot read {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        store = open_store(args.db, args.jsonl)
    except (OSError, sqlite3.Error) as exc:
        print(f"wmbus-stream receive: cannot open {args.db or args.jsonl}: {exc}", file=sys.stderr)
        return 1

    def show(post: PostSummary) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        if post.error is None:
            who = ",".join(post.gateways) or "-"
            print(f"{stamp} {post.client} POST {post.path}: {post.lines} lines, {post.new_readings} new readings,"
                  f" gateway {who}", flush=True)
        else:
            print(f"{stamp} {post.client} POST {post.path}: refused {post.status}: {post.error}", file=sys.stderr, flush=True)

    try:
        server = ReceiveServer(
            host, port, store=store, username=args.username, password=password, tls_cert=args.tls_cert,
            tls_key=args.tls_key, path=args.path, max_body=args.max_body_mib * 1024 * 1024,
            max_connections=args.max_connections, per_address=args.max_per_address, ok_status=args.ok_status, on_post=show,
        )
    except (ValueError, OSError, ssl.SSLError) as exc:  # the certificate or key files
        store.close()
        print(f"wmbus-stream receive: {exc}", file=sys.stderr)
        return 1
    try:
        server.start()
    except OSError as exc:
        store.close()
        print(f"wmbus-stream receive: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.db or args.jsonl:
        where = f"SQLite {args.db}" if args.db else f"JSON lines {args.jsonl}"
    else:
        where = "memory only (use --db or --jsonl to keep them)"
    auth = "basic auth" if args.username else "NO AUTHENTICATION: anyone who can reach the port can post reports"
    print(f"receiving reports on {server.url} ({auth}); readings stored in {where}", flush=True)

    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not in the main thread
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.stop()
        store.close()
    stats = server.stats
    by_status = "".join(f"{', ' if i else ' ('}{status}: {count}" for i, (status, count) in enumerate(stats.refused))
    print(f"stopped: {stats.posts} POSTs, {stats.lines} lines, {stats.readings} new readings, {stats.rejected} refused"
          f"{by_status + ')' if by_status else ''}, {stats.busy} connections turned away as busy", flush=True)
    return 0

