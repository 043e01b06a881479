"""Coverage, the planning figure: per meter the gateways that hear it and the share of intervals with a reading.

Pure: receptions, the window and the thresholds come in, a ``Coverage`` goes out (the
caller reads the store and the clock). The window ``[since, until)`` is cut into intervals
of ``resolution`` seconds aligned to ``since``; a meter's reception share is the number of
intervals in which at least one gateway heard it over the number of intervals. Memory is
one bitmap of the intervals per (meter, gateway) pair, whatever the number of receptions.
Times are the gateways' ``YYYY-MM-DD hh:mm:ss`` wall-clock stamps, taken as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Any

from .store import Reception, rssi_dbm

__all__ = [
    "DEFAULT_MIN_GATEWAYS", "DEFAULT_MIN_RECEPTION", "MAX_INTERVALS", "METER_COVERAGE_SELECT", "Coverage", "Hearing",
    "MeterCoverage", "compute", "format_duration", "intervals_in", "parse_duration", "report_json", "report_lines", "stamp_seconds",
]

DEFAULT_MIN_GATEWAYS = 2  # the redundancy factor the Elvaco manual plans for
DEFAULT_MIN_RECEPTION = 98.0  # percent of intervals with a reading
MAX_INTERVALS = 100_000  # a year at 15 minutes is 35,040; more would cost memory for no planning value

# The ``meter_coverage`` view's query: per meter and gateway, over everything stored. Portable
# SQL (SQLite and PostgreSQL); each store puts its own ``CREATE ... VIEW meter_coverage AS`` before it.
METER_COVERAGE_SELECT = (
    "SELECT r.manufacturer, r.meter_id, r.device_type, h.gateway,"
    " COUNT(*) AS receptions, MIN(h.heard_at) AS first_heard, MAX(h.heard_at) AS last_heard,"
    " MAX(NULLIF(h.rssi_code, 0)) AS best_rssi_code, r.version"
    " FROM heard_by h JOIN reading r ON r.id = h.reading_id"
    " GROUP BY r.manufacturer, r.meter_id, r.device_type, h.gateway, r.version"
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


def parse_duration(text: str) -> int:
    """Seconds of ``15m``, ``1h``, ``24h``, ``7d`` (a whole number and one of s, m, h, d)."""
    found = _DURATION.fullmatch(text.strip())
    if not found:
        if re.fullmatch(r"[0-9]{10,}[smhd]", text.strip()):
            raise ValueError(f"{text!r} is too long a duration: at most 999999999 of a unit (use a larger unit)")
        raise ValueError(f"{text!r} is not a duration: give a whole number and s, m, h or d (15m, 1h, 24h, 7d)")
    return int(found[1]) * _UNITS[found[2]]


def format_duration(seconds: int) -> str:
    """The shortest ``parse_duration`` text for ``seconds`` (900 is ``15m``, 604800 ``7d``), but a day is ``24h``."""
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0 and (unit != "d" or seconds > 86400):
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def stamp_seconds(text: str) -> int:
    """Seconds since 0001-01-01 of a ``YYYY-MM-DD hh:mm:ss`` stamp (wall clock; no time zone)."""
    if not _STAMP.fullmatch(text):
        raise ValueError(f"{text!r} is not a time 'YYYY-MM-DD hh:mm:ss'")
    hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{text!r} is not a valid time of day")
    return date.fromisoformat(text[:10]).toordinal() * 86400 + hour * 3600 + minute * 60 + second


@dataclass(frozen=True, slots=True)
class Hearing:
    """What one gateway heard of one meter in the window."""

    gateway: str
    receptions: int
    intervals: int  # intervals in which this gateway heard the meter
    best_rssi_code: int | None
    first_heard: str
    last_heard: str

    @property
    def best_rssi_dbm(self) -> int | None:
        """The best RSSI in dBm (None when no reception carried one)."""
        return rssi_dbm(self.best_rssi_code)


@dataclass(frozen=True, slots=True)
class MeterCoverage:
    """One meter's figures and verdict; ``hearings`` strongest gateway first."""

    manufacturer: str
    meter_id: str
    version: int
    device_type: int
    hearings: tuple[Hearing, ...]
    intervals: int  # intervals in which any gateway heard it
    below_gateways: bool
    below_reception: bool

    @property
    def label(self) -> str:
        """``ELV 61000164 v01 type 1B``: how the report names the meter (its link address, as the gateway keys it)."""
        return f"{self.manufacturer} {self.meter_id} v{self.version:02X} type {self.device_type:02X}"

    @property
    def ok(self) -> bool:
        """At or above both thresholds."""
        return not (self.below_gateways or self.below_reception)


@dataclass(frozen=True, slots=True)
class Coverage:
    """The coverage of every meter heard in ``[since, until)`` at one resolution, against two thresholds."""

    since: str
    until: str
    resolution: int  # seconds
    intervals: int  # in the window
    min_gateways: int
    min_reception: float  # percent
    meters: tuple[MeterCoverage, ...]  # every meter heard in the window, by label
    gateways: tuple[str, ...]  # every gateway that heard one

    def below(self) -> tuple[MeterCoverage, ...]:
        """The meters under a threshold."""
        return tuple(m for m in self.meters if not m.ok)

    def only_heard_by(self) -> dict[str, tuple[MeterCoverage, ...]]:
        """Per gateway (all of them), the meters no other gateway heard in the window."""
        alone: dict[str, list[MeterCoverage]] = {gateway: [] for gateway in self.gateways}
        for meter in self.meters:
            if len(meter.hearings) == 1:
                alone[meter.hearings[0].gateway].append(meter)
        return {gateway: tuple(meters) for gateway, meters in alone.items()}

    def percent(self, meter: MeterCoverage) -> str:
        """A meter's reception share, rounded down to 0.1 % so that a share below the threshold never shows it."""
        tenths = meter.intervals * 1000 // self.intervals
        return f"{tenths // 10}.{tenths % 10}"


class _Tally:
    """The running figures of one (meter, gateway) pair."""

    __slots__ = ("best", "bits", "first", "last", "receptions")

    def __init__(self, size: int, heard_at: str) -> None:
        self.bits = bytearray(size)
        self.receptions = 0
        self.best: int | None = None
        self.first = self.last = heard_at


def intervals_in(since: str, until: str, resolution: int) -> int:
    """How many intervals of ``resolution`` seconds ``[since, until)`` holds; ValueError unless a whole number."""
    start, end = stamp_seconds(since), stamp_seconds(until)
    if resolution < 1:
        raise ValueError(f"the resolution must be at least 1 second, not {resolution}")
    if end <= start:
        raise ValueError(f"the window is empty: {until!r} is not after {since!r}")
    window = end - start
    if resolution > window:
        raise ValueError(f"the resolution {format_duration(resolution)} is longer than the window"
                         f" {format_duration(window)}")
    if window % resolution:
        raise ValueError(f"the window {format_duration(window)} is not a whole number of"
                         f" {format_duration(resolution)} intervals")
    count = window // resolution
    if count > MAX_INTERVALS:
        raise ValueError(f"{count} intervals of {format_duration(resolution)} in {format_duration(window)}:"
                         f" at most {MAX_INTERVALS} are allowed (a coarser resolution or a shorter window)")
    return count


def compute(receptions: Iterable[Reception], since: str, until: str, resolution: int, *,
            min_gateways: int = DEFAULT_MIN_GATEWAYS, min_reception: float = DEFAULT_MIN_RECEPTION) -> Coverage:
    """The coverage of ``[since, until)`` at ``resolution`` seconds; receptions outside the window are ignored."""
    count = intervals_in(since, until, resolution)
    if min_gateways < 1:
        raise ValueError(f"the minimum number of gateways must be at least 1, not {min_gateways}")
    if not 0 <= min_reception <= 100:
        raise ValueError(f"the minimum reception must be 0 to 100 percent, not {min_reception}")

    start = stamp_seconds(since)
    size = (count + 7) // 8
    days: dict[str, int] = {}
    meters: dict[tuple[str, str, int, int], dict[str, _Tally]] = {}
    for reception in receptions:
        heard_at = reception.heard_at
        if not since <= heard_at < until:
            continue
        day = days.get(heard_at[:10])
        if day is None:
            day = days[heard_at[:10]] = stamp_seconds(heard_at[:10] + " 00:00:00")
        offset = day + int(heard_at[11:13]) * 3600 + int(heard_at[14:16]) * 60 + int(heard_at[17:19]) - start
        k = offset // resolution
        key = (reception.manufacturer, reception.meter_id, reception.version, reception.device_type)
        by_gateway = meters.get(key)
        if by_gateway is None:
            by_gateway = meters[key] = {}
        tally = by_gateway.get(reception.gateway)
        if tally is None:
            tally = by_gateway[reception.gateway] = _Tally(size, heard_at)
        tally.bits[k >> 3] |= 1 << (k & 7)
        tally.receptions += 1
        code = reception.rssi_code
        if code and (tally.best is None or code > tally.best):
            tally.best = code
        if heard_at < tally.first:
            tally.first = heard_at
        elif heard_at > tally.last:
            tally.last = heard_at

    wanted = Fraction(str(min_reception))
    results = []
    for (manufacturer, meter_id, version, device_type), by_gateway in sorted(meters.items()):
        union = 0
        hearings = []
        for gateway, tally in by_gateway.items():
            bits = int.from_bytes(tally.bits, "little")
            union |= bits
            hearings.append(Hearing(gateway, tally.receptions, bits.bit_count(), tally.best, tally.first, tally.last))
        hearings.sort(key=lambda h: (-(h.best_rssi_code or 0), h.gateway))
        intervals = union.bit_count()
        results.append(MeterCoverage(
            manufacturer, meter_id, version, device_type, tuple(hearings), intervals,
            below_gateways=len(hearings) < min_gateways,
            below_reception=Fraction(intervals * 100, count) < wanted,
        ))
    gateways = sorted({h.gateway for m in results for h in m.hearings})
    return Coverage(since, until, resolution, count, min_gateways, min_reception, tuple(results), tuple(gateways))


def _count(n: int, word: str) -> str:
    """``1 gateway``, ``2 gateways``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _reasons(report: Coverage, meter: MeterCoverage) -> list[str]:
    """Why a meter is below, in words."""
    reasons = []
    if meter.below_gateways:
        reasons.append(f"heard by {_count(len(meter.hearings), 'gateway')}, {report.min_gateways} wanted")
    if meter.below_reception:
        reasons.append(f"reception {report.percent(meter)} % at {format_duration(report.resolution)},"
                       f" {report.min_reception:g} % wanted")
    return reasons


def _meter_line(report: Coverage, meter: MeterCoverage) -> str:
    gateways = ", ".join(f"{h.gateway} {h.best_rssi_dbm} dBm" if h.best_rssi_code else f"{h.gateway} no RSSI"
                         for h in meter.hearings)
    verdict = "ok" if meter.ok else "below: " + "; ".join(_reasons(report, meter))
    return (f"  {meter.label}: {_count(len(meter.hearings), 'gateway')} ({gateways}), reception"
            f" {report.percent(meter)} % ({meter.intervals} of {report.intervals}); {verdict}")


def report_lines(report: Coverage, everything: bool = False) -> list[str]:
    """The text report: the meters below a threshold (every meter with ``everything``), "only heard by", a summary."""
    res = format_duration(report.resolution)
    window = format_duration(report.intervals * report.resolution)
    lines = [f"coverage {report.since} to {report.until} ({window}) at {res}: {report.intervals} intervals;"
             f" wanted: at least {report.min_gateways} gateways and a reading in at least"
             f" {report.min_reception:g} % of intervals"]
    below = report.below()
    shown = report.meters if everything else below
    lines.append(f"{'meters' if everything else 'meters below a threshold'} ({len(shown)}):"
                 + ("" if shown else " none"))
    lines += [_meter_line(report, meter) for meter in shown]
    alone = {gateway: meters for gateway, meters in report.only_heard_by().items() if meters}
    lines.append(f"only heard by one gateway ({sum(len(m) for m in alone.values())}):" + ("" if alone else " none"))
    lines += [f"  {gateway} ({len(meters)}): {', '.join(m.label for m in meters)}" for gateway, meters in alone.items()]
    lacking = sum(m.below_gateways for m in report.meters)
    rare = sum(m.below_reception for m in report.meters)
    lines.append(f"summary: {_count(len(report.meters), 'meter')} heard by {_count(len(report.gateways), 'gateway')};"
                 f" {len(below)} below"
                 f" a threshold ({lacking} by fewer than {report.min_gateways} gateways, {rare} under"
                 f" {report.min_reception:g} % at {res})")
    return lines


def report_json(report: Coverage, everything: bool = False) -> dict[str, Any]:
    """The machine-readable report: same meters as ``report_lines``, "only heard by" for every gateway, a summary."""
    def meter_id(meter: MeterCoverage) -> dict[str, Any]:
        return {"manufacturer": meter.manufacturer, "meter_id": meter.meter_id, "version": meter.version,
                "device_type": meter.device_type}

    def meter(m: MeterCoverage) -> dict[str, Any]:
        below = [name for name, flag in (("gateways", m.below_gateways), ("reception", m.below_reception)) if flag]
        return {
            **meter_id(m), "gateways": len(m.hearings), "intervals": m.intervals,
            "reception_percent": round(m.intervals * 100 / report.intervals, 3), "below": below,
            "reasons": _reasons(report, m),
            "heard_by": [{"gateway": h.gateway, "receptions": h.receptions, "intervals": h.intervals,
                          "best_rssi_code": h.best_rssi_code, "best_rssi_dbm": h.best_rssi_dbm,
                          "first_heard": h.first_heard, "last_heard": h.last_heard} for h in m.hearings],
        }

    below = report.below()
    return {
        "since": report.since, "until": report.until, "resolution_seconds": report.resolution,
        "window_seconds": report.intervals * report.resolution, "intervals": report.intervals,
        "min_gateways": report.min_gateways, "min_reception_percent": report.min_reception,
        "meters": [meter(m) for m in (report.meters if everything else below)],
        "only_heard_by": {gateway: [meter_id(m) for m in meters] for gateway, meters in report.only_heard_by().items()},
        "summary": {"meters": len(report.meters), "gateways": len(report.gateways), "below": len(below),
                    "below_gateways": sum(m.below_gateways for m in report.meters),
                    "below_reception": sum(m.below_reception for m in report.meters),
                    "only_heard_by_one": sum(len(m.hearings) == 1 for m in report.meters)},
    }
