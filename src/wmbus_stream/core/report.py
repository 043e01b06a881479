"""The report body of one push (spec section 5): one ``;``-separated line per pending meter.

Strategy
    The body is a pure function of a store ``Snapshot``: ``lines`` yields one line per row,
    ``body`` groups lines into chunks of about ``chunk_size`` bytes for the chunked POST.
    Both are generator functions, so every call starts a fresh body: the HTTP layer calls
    ``body(...)`` again for every attempt instead of reusing a consumed iterator.

Invariants
    - Line: ``<serial>;<meter id>;<YYYY-MM-DD hh:mm:ss>;00;<uppercase hex>\\n``, the date
      being the arrival time (whole seconds, truncated) in the configured zone, the hex
      the stored report telegram unchanged.
    - Same snapshot, serial and zone give the same bytes; rows come in snapshot order.
    - A chunk holds whole lines and is never empty; an empty snapshot gives no chunk.

Speed: the zone is asked for its UTC offset once per UTC minute (twice: at its first and last
second, so a transition inside the minute falls back to the exact path); the rest is integer
arithmetic and cached minute prefixes. Hex comes from ``binascii`` as bytes. 100,000 meters
take a small fraction of a second.
"""

from __future__ import annotations

import binascii
import math
import time
from collections.abc import Iterator
from datetime import datetime, tzinfo

from .latest import Snapshot

__all__ = ["CHUNK_SIZE", "body", "lines"]

CHUNK_SIZE = 64 * 1024


_SECONDS = tuple(b"%02d" % n for n in range(60))
_NOT_YET = -1 << 62  # an offset no zone has: "this minute was not looked at yet"


def _date(second: int, tz: tzinfo) -> bytes:
    """``YYYY-MM-DD hh:mm:ss`` of an epoch second in ``tz`` (the exact, slow path)."""
    d = datetime.fromtimestamp(second, tz)
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d} "
            f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}").encode("ascii")


class _Dates:
    """Formats epoch seconds in one zone, asking the zone once per UTC minute, not per second."""

    __slots__ = ("offsets", "prefixes", "tz")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.offsets: dict[int, int | None] = {}  # UTC minute -> its UTC offset in s (None: changes inside)
        self.prefixes: dict[int, bytes] = {}  # local minute -> b"YYYY-MM-DD hh:mm:"

    def _offset(self, t: int) -> int:
        offset = datetime.fromtimestamp(t, self.tz).utcoffset()
        return int(offset.total_seconds()) if offset is not None else 0

    def __call__(self, second: int) -> bytes:
        minute = second // 60
        offset = self.offsets.get(minute, _NOT_YET)
        if offset == _NOT_YET:
            first, last = self._offset(minute * 60), self._offset(minute * 60 + 59)
            offset = self.offsets[minute] = first if first == last else None
        if offset is None:  # a transition inside this very minute: no shortcut
            return _date(second, self.tz)
        local_minute, local_second = divmod(second + offset, 60)
        prefix = self.prefixes.get(local_minute)
        if prefix is None:
            # Local wall time is UTC arithmetic on the shifted second; gmtime does the calendar.
            g = time.gmtime(local_minute * 60)
            prefix = self.prefixes[local_minute] = (
                f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d} {g.tm_hour:02d}:{g.tm_min:02d}:"
            ).encode("ascii")
        return prefix + _SECONDS[local_second]


def lines(snapshot: Snapshot, gateway_serial: str, tz: tzinfo) -> Iterator[bytes]:
    """One report line per snapshot row, in snapshot order."""
    if not gateway_serial.isascii() or any(ch in gateway_serial for ch in ";\r\n"):
        # Config validation should have caught it; a broken separator would corrupt every line.
        raise ValueError(f"gateway serial {gateway_serial!r} cannot go into a report line")
    prefix = gateway_serial.encode("ascii") + b";"
    hexlify = binascii.hexlify
    format_date = _Dates(tz)
    dates: dict[int, bytes] = {}  # a push spans minutes: most rows share a second already seen
    for _key, meter_id, received_at, telegram, _generation in snapshot:
        second = math.floor(received_at)
        date = dates.get(second)
        if date is None:
            date = dates[second] = format_date(second)
        yield b"".join((prefix, meter_id.encode("ascii"), b";", date, b";00;",
                        hexlify(telegram).upper(), b"\n"))


def body(snapshot: Snapshot, serial: str, tz: tzinfo, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The report as chunks of whole lines, each about ``chunk_size`` bytes (one line may exceed it)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    pending: list[bytes] = []
    size = 0
    for line in lines(snapshot, serial, tz):
        pending.append(line)
        size += len(line)
        if size >= chunk_size:
            yield b"".join(pending)
            pending.clear()
            size = 0
    if pending:
        yield b"".join(pending)
