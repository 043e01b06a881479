"""Shared view logic of the pages and the API: analyzer queries and value formatting.

The Analyzer page and ``GET /api/v1/analyzer`` answer the same query (switch, search,
signal band, sort, page) with the same code, so what an installer sees and what a script
reads never disagree. Everything here is plain functions of values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core.analyzer import MeterRow

__all__ = ["AnalyzerQuery", "query_rows", "row_json", "SORT_KEYS", "BANDS", "quality", "fmt_time", "fmt_duration"]

# Average-RSSI quality classes an installer reads at a glance (dBm). Receivers decode down
# to about -105 dBm; below -95 a meter is lost whenever the radio environment worsens.
WEAK_BELOW = -95
GOOD_FROM = -85
BAND_WIDTH = 5
BANDS = tuple(range(-120, -35, BAND_WIDTH))  # lower edges: -120 .. -40
PER_PAGE_CHOICES = (25, 100, 500)

SORT_KEYS: dict[str, Callable[[MeterRow], Any]] = {
    "id": lambda r: r.id,
    "manufacturer": lambda r: r.manufacturer,
    "type": lambda r: (r.device_type_name, r.device_type),
    "verdict": lambda r: r.verdict,
    "count": lambda r: r.count,
    "rssi_last": lambda r: r.rssi_last,
    "rssi_min": lambda r: r.rssi_min,
    "rssi_avg": lambda r: r.rssi_avg,
    "rssi_max": lambda r: r.rssi_max,
    "mode": lambda r: r.mode,
    "first_seen": lambda r: r.first_seen,
    "last_seen": lambda r: r.last_seen,
}


def quality(rssi: float | None) -> str:
    """``weak``, ``fair``, ``good`` or ``unknown`` for an RSSI in dBm."""
    if rssi is None:
        return "unknown"
    if rssi < WEAK_BELOW:
        return "weak"
    if rssi < GOOD_FROM:
        return "fair"
    return "good"


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true", "yes", "on")


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None and value.strip() else default
    except ValueError:
        number = default
    return max(low, min(high, number))


@dataclass(frozen=True, slots=True)
class AnalyzerQuery:
    """What to show of the analyzer: switch, search, signal band, sort and page."""

    only_allowed: bool
    search: str = ""
    band: int | None = None  # lower edge of a BAND_WIDTH dB band of average RSSI
    sort: str = "id"
    descending: bool = False
    page: int = 1
    per_page: int = 100

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, default_only: bool, per_page: int = 100,
                   max_per_page: int = 1000, unlimited: bool = False) -> AnalyzerQuery:
        sort = query.get("sort", "id")
        if sort not in SORT_KEYS:
            sort = "id"
        band_text = query.get("band")
        band = None
        if band_text not in (None, ""):
            try:
                band = int(band_text)
            except ValueError:
                band = None
        per = _int(query.get("per") or query.get("limit"), 0 if unlimited else per_page, 0 if unlimited else 1,
                   max_per_page)
        return cls(
            only_allowed=_flag(query.get("only"), default_only),
            search=(query.get("q") or "").strip()[:64],
            band=band,
            sort=sort,
            descending=(query.get("dir") or "").lower() == "desc",
            page=_int(query.get("page"), 1, 1, 10**6),
            per_page=per,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """Query parameters for a link to this view with ``changes``."""
        values = {"only": "1" if self.only_allowed else "0", "q": self.search,
                  "band": "" if self.band is None else str(self.band), "sort": self.sort,
                  "dir": "desc" if self.descending else "asc", "page": str(self.page), "per": str(self.per_page)}
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v != ""}


def matches(row: MeterRow, search: str, band: int | None) -> bool:
    if band is not None:
        avg = row.rssi_avg
        if avg is None or not band <= avg < band + BAND_WIDTH:
            return False
    if search:
        needle = search.upper()
        return (needle in row.id or needle in row.manufacturer.upper() or needle in row.device_type_name.upper()
                or needle in row.verdict.upper() or needle == f"{row.device_type:02X}")
    return True


def query_rows(rows: list[MeterRow], q: AnalyzerQuery) -> tuple[list[MeterRow], int]:
    """The requested page of rows (sorted, filtered) and how many rows match in all."""
    if q.search or q.band is not None:
        rows = [r for r in rows if matches(r, q.search, q.band)]
    if q.sort != "id" or q.descending:
        key = SORT_KEYS[q.sort]
        known = [r for r in rows if key(r) is not None]
        unknown = [r for r in rows if key(r) is None]
        known.sort(key=lambda r: (key(r), r.id), reverse=q.descending)
        rows = known + unknown  # rows without a value (no RSSI known) last either way
    total = len(rows)
    if q.per_page <= 0:
        return rows, total
    start = (q.page - 1) * q.per_page
    return rows[start:start + q.per_page], total


def histogram(rows: list[MeterRow]) -> tuple[list[int], int]:
    """Meters per average-RSSI band (``BANDS``) and the number with no RSSI."""
    counts = [0] * len(BANDS)
    unknown = 0
    low = BANDS[0]
    for r in rows:
        if r.rssi_avg is None:
            unknown += 1
            continue
        index = int(math.floor((r.rssi_avg - low) / BAND_WIDTH))
        counts[max(0, min(len(BANDS) - 1, index))] += 1
    return counts, unknown


def iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def row_json(r: MeterRow) -> dict[str, Any]:
    """One analyzer row as the API gives it."""
    return {
        "id": r.id, "manufacturer": r.manufacturer, "device_type": f"{r.device_type:02X}",
        "device_type_name": r.device_type_name, "verdict": r.verdict, "count": r.count,
        "rssi_last_dbm": r.rssi_last, "rssi_min_dbm": r.rssi_min, "rssi_avg_dbm": r.rssi_avg,
        "rssi_max_dbm": r.rssi_max, "mode": r.mode, "first_seen": iso(r.first_seen), "last_seen": iso(r.last_seen),
    }


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h {minutes} min"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def fmt_dbm(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
