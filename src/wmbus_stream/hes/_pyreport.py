"""Pure twin of the report parser of the reference HES: strict, streaming, one line at a time (spec section 5).

The readable specification; ``ext/_creport.pyx`` is its compiled twin, and ``hes.report``
selects one (``wmbus_stream._select``). ``ReportLine`` is defined here only: both twins make it.

Deliberately independent of the gateway's report writer (``core.report``): a checker that
shared the writer's code would accept the writer's mistakes. It shares only the frame layer
(``wire``): the L-field check and the header fields of the wireless telegram.

A line has five fields: 8-digit gateway serial, 8 hex-digit meter ID, ``YYYY-MM-DD
hh:mm:ss``, ``00``, even-length uppercase hex holding a wired RSP_UD telegram (C=08, CI=72,
optional receiver records in their order, then the ``0D FD 3B n`` container with exactly n
bytes or the ``0F`` long form running to the end) whose meter ID equals the line's and the
wireless telegram's. The first bad line is a ``ReportError`` naming its number and reason.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

from ..errors import FrameError, ReportError
from ..wire import LONG_FORM, check_telegram, parse_header
from ..wire.header import manufacturer_letters

__all__ = ["MAX_REPORT_LINE", "ReportLine", "ReportParser", "STORE_COLUMNS", "check_line", "parse_line", "parse_report", "parse_wired",
           "store_rows"]

# The longest report line accepted: a valid one has at most about 620 characters.
MAX_REPORT_LINE = 1024

_SERIAL = re.compile(r"[0-9]{8}")
_METER_ID = re.compile(r"[0-9A-Fa-f]{8}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_HEX = re.compile(r"[0-9A-F]*")

# Optional receiver records of the wired telegram, in the only order allowed (spec section 2).
_RECORDS: tuple[tuple[bytes, int, str], ...] = (
    (b"\x0c\x78", 4, "receiver address 0C78"),
    (b"\x02\x75", 2, "age 0275"),
    (b"\x01\xfd\x71", 1, "RSSI 01FD71"),
)
_CONTAINER = b"\x0d\xfd\x3b"
_LONG_FORM = bytes((LONG_FORM,))



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
            found_here = f"unexpected bytes {wired[pos:pos + 3].hex().upper()}" if pos < len(wired) else "the end"
            raise ValueError(
                f"{found_here} at offset {pos}; expected 0C78, 0275, 01FD71, the container 0DFD3B or the long form 0F"
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
        self.lines: list[ReportLine] = []  # validated, not yet taken
        self.count = 0  # lines validated in all
        self.long_form = 0  # of them in the long form
        self.ended = False  # finish() was called: the body is complete
        self._partial = bytearray()

    def take(self) -> list[ReportLine]:
        """The lines validated since the last ``take``, so a caller can stage them and keep memory bounded."""
        lines, self.lines = self.lines, []
        return lines

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
            raise ReportError(self.count + 1, f"longer than {MAX_REPORT_LINE} bytes (a report line is about 600)")

    def finish(self) -> list[ReportLine]:
        """The validated lines not yet taken, once the body has ended."""
        self.ended = True
        if self._partial:
            self._line(bytes(self._partial))
            self._partial.clear()
        return self.take()

    def _line(self, raw: bytes) -> None:
        line = check_line(self.count + 1, raw)
        self.lines.append(line)
        self.count += 1
        self.long_form += line.long_form


def check_line(number: int, raw: bytes) -> ReportLine:
    """Validate report line ``number`` given as its bytes without LF (a CR before it is dropped); ReportError if bad."""
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
        return parse_line(text)
    except ValueError as exc:
        raise ReportError(number, str(exc)) from None


def parse_report(body: bytes) -> list[ReportLine]:
    """Validate a whole report body (see ReportParser); raises ReportError for the first bad line."""
    parser = ReportParser()
    parser.feed(body)
    return parser.finish()


# What a store stages of a line, in this order (the columns of its staging table).
STORE_COLUMNS = ("digest", "manufacturer", "meter_id", "version", "device_type", "ci", "access_number", "telegram",
                 "date", "gateway", "rssi_code", "receiver", "age_minutes")
_store_row = attrgetter(*STORE_COLUMNS)
_key = attrgetter("digest", "gateway", "date")


def store_rows(lines: Sequence[ReportLine]) -> tuple[list[tuple[Any, ...]], bytes]:
    """The STORE_COLUMNS tuples of lines, and their keys (digest;gateway;date;...) as bytes for a POST's fingerprint."""
    return list(map(_store_row, lines)), ";".join(itertools.chain.from_iterable(map(_key, lines))).encode("ascii")
