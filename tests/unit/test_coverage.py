"""The coverage figures (``hes.coverage``): interval edges, the window, RSSI, thresholds; and the store's receptions."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator

import pytest

from wmbus_stream.hes import SqliteStore
from wmbus_stream.hes.coverage import (
    MAX_INTERVALS, compute, format_duration, intervals_in, parse_duration, report_json, report_lines, stamp_seconds,
)
from wmbus_stream.hes.report import ReportLine
from wmbus_stream.hes.store import Reception

SINCE = "2026-11-16 00:00:00"
HOUR = "2026-11-16 01:00:00"
QUARTER = 15 * 60


def heard(meter: str, gateway: str, at: str, rssi: int | None = 40, device_type: int = 0x07,
          version: int = 1) -> Reception:
    return Reception("ELV", meter, device_type, gateway, at, rssi, version)


def test_an_interval_holds_its_start_and_not_its_end() -> None:
    at = ["2026-11-16 00:00:00", "2026-11-16 00:14:59",  # interval 0, both edges
          "2026-11-16 00:15:00",                         # interval 1, its first second
          "2026-11-16 00:59:59"]                         # interval 3, the window's last second
    report = compute([heard("00000001", "00000161", t) for t in at], SINCE, HOUR, QUARTER, min_gateways=1)
    (meter,) = report.meters
    assert report.intervals == 4 and meter.intervals == 3 and meter.hearings[0].receptions == 4
    assert meter.below_reception and report.percent(meter) == "75.0"
    missing = compute([heard("00000001", "00000161", t) for t in at if t != "2026-11-16 00:15:00"], SINCE, HOUR,
                      QUARTER, min_gateways=1)
    assert missing.meters[0].intervals == 2  # interval 1 empty, the other two of interval 0 count once


def test_the_window_holds_since_and_not_until() -> None:
    receptions = [
        heard("00000001", "00000161", SINCE),
        heard("00000001", "00000162", HOUR),                 # at until: outside, so not a second gateway
        heard("00000002", "00000162", "2026-11-15 23:59:59"),  # before since
        heard("00000003", "00000163", HOUR),                 # only at until
    ]
    report = compute(receptions, SINCE, HOUR, QUARTER)
    assert [m.meter_id for m in report.meters] == ["00000001"]  # no reception in the window: not listed at all
    assert report.gateways == ("00000161",)
    assert [h.gateway for h in report.meters[0].hearings] == ["00000161"]
    assert report.only_heard_by() == {"00000161": report.meters}


def test_a_meter_is_its_link_address_manufacturer_id_version_and_device_type() -> None:
    versions = compute([heard("00000001", "00000161", SINCE, version=1), heard("00000001", "00000162", SINCE, version=2)],
                       SINCE, HOUR, 3600, min_gateways=2)
    assert [m.label for m in versions.meters] == ["ELV 00000001 v01 type 07", "ELV 00000001 v02 type 07"]
    assert all(m.below_gateways for m in versions.meters)  # two meters, each heard once: no redundancy
    receptions = [heard("00000001", "00000161", SINCE, device_type=0x07),
                  heard("00000001", "00000162", SINCE, device_type=0x1B)]
    report = compute(receptions, SINCE, HOUR, 3600, min_gateways=2)
    assert [(m.label, len(m.hearings)) for m in report.meters] == [("ELV 00000001 v01 type 07", 1),
                                                                   ("ELV 00000001 v01 type 1B", 1)]
    assert all(m.below_gateways for m in report.meters)


def test_the_best_rssi_is_kept_per_gateway_and_none_or_zero_is_no_rssi() -> None:
    receptions = [heard("00000001", "00000161", SINCE, rssi) for rssi in (10, 44, 0, None, 30)]
    receptions += [heard("00000001", "00000162", SINCE, rssi) for rssi in (None, 0)]
    receptions += [heard("00000001", "00000163", SINCE, 63)]
    (meter,) = compute(receptions, SINCE, HOUR, 3600).meters
    best = {h.gateway: (h.best_rssi_code, h.best_rssi_dbm) for h in meter.hearings}
    assert best == {"00000161": (44, -42), "00000162": (None, None), "00000163": (63, -4)}
    assert [h.gateway for h in meter.hearings] == ["00000163", "00000161", "00000162"]  # strongest first
    line = report_lines(compute(receptions, SINCE, HOUR, 3600), everything=True)[2]
    assert "3 gateways (00000163 -4 dBm, 00000161 -42 dBm, 00000162 no RSSI)" in line, line


def test_first_and_last_heard_whatever_the_order_of_receptions() -> None:
    at = ["2026-11-16 00:30:00", "2026-11-16 00:10:00", "2026-11-16 00:50:00", "2026-11-16 00:20:00"]
    (meter,) = compute([heard("00000001", "00000161", t) for t in at], SINCE, HOUR, QUARTER).meters
    assert (meter.hearings[0].first_heard, meter.hearings[0].last_heard) == (at[1], at[2])


def week(meter: str, gateway: str, skip: set[int]) -> list[Reception]:
    """One reception a quarter hour for 7 days, but not in the intervals of ``skip``."""
    return [heard(meter, gateway, f"2026-11-{16 + k // 96} {k % 96 // 4:02d}:{k % 4 * 15 + 7:02d}:00")
            for k in range(672) if k not in skip]


def test_the_reception_threshold_is_exact_and_the_percent_is_rounded_down() -> None:
    until = "2026-11-23 00:00:00"
    receptions = (week("00000001", "00000161", set(range(13))) + week("00000001", "00000162", set(range(13)))
                  + week("00000002", "00000161", set(range(14))) + week("00000002", "00000162", set(range(14))))
    report = compute(receptions, SINCE, until, QUARTER)
    ok, below = report.meters
    assert (ok.intervals, ok.below_reception, report.percent(ok)) == (659, False, "98.0")  # 98.07 %
    assert (below.intervals, below.below_reception, report.percent(below)) == (658, True, "97.9")  # 97.92 %
    assert report.below() == (below,)
    strict = compute(receptions, SINCE, until, QUARTER, min_reception=98.07)
    assert [m.meter_id for m in strict.below()] == ["00000001", "00000002"]  # 659/672 is 98.0654 %
    daily = compute(receptions, SINCE, until, 86400)
    assert daily.intervals == 7 and daily.below() == ()


def test_redundancy_covers_gaps_of_one_gateway() -> None:
    receptions = week("00000001", "00000161", set(range(0, 672, 2))) + week("00000001", "00000162", set(range(1, 672, 2)))
    (meter,) = compute(receptions, SINCE, "2026-11-23 00:00:00", QUARTER).meters
    assert [h.intervals for h in meter.hearings] == [336, 336] and meter.intervals == 672 and meter.ok


def test_only_heard_by_names_every_gateway_and_the_meters_only_it_hears() -> None:
    receptions = [heard("00000001", "00000161", SINCE), heard("00000001", "00000162", SINCE),
                  heard("00000002", "00000162", SINCE), heard("00000003", "00000163", SINCE),
                  heard("00000004", "00000162", SINCE)]
    report = compute(receptions, SINCE, HOUR, 3600)
    alone = {gateway: [m.meter_id for m in meters] for gateway, meters in report.only_heard_by().items()}
    assert alone == {"00000161": [], "00000162": ["00000002", "00000004"], "00000163": ["00000003"]}
    doc = report_json(report)
    assert doc["only_heard_by"]["00000161"] == []
    assert [m["meter_id"] for m in doc["meters"]] == ["00000002", "00000003", "00000004"]
    assert doc["summary"] == {"meters": 4, "gateways": 3, "below": 3, "below_gateways": 3, "below_reception": 0,
                              "only_heard_by_one": 3}
    assert [m["meter_id"] for m in report_json(report, everything=True)["meters"]] == ["00000001", "00000002",
                                                                                      "00000003", "00000004"]
    lone = compute(receptions, SINCE, HOUR, 3600, min_gateways=1)
    assert lone.below() == () and len(lone.only_heard_by()["00000162"]) == 2  # still listed: a planning fact


def test_the_text_report_says_why_and_sums_up() -> None:
    receptions = [heard("00000001", "00000161", SINCE, 28)]
    lines = report_lines(compute(receptions, SINCE, HOUR, QUARTER))
    assert lines == [
        "coverage 2026-11-16 00:00:00 to 2026-11-16 01:00:00 (1h) at 15m: 4 intervals; wanted: at least 2 gateways"
        " and a reading in at least 98 % of intervals",
        "meters below a threshold (1):",
        "  ELV 00000001 v01 type 07: 1 gateway (00000161 -74 dBm), reception 25.0 % (1 of 4); below: heard by 1 gateway,"
        " 2 wanted; reception 25.0 % at 15m, 98 % wanted",
        "only heard by one gateway (1):",
        "  00000161 (1): ELV 00000001 v01 type 07",
        "summary: 1 meter heard by 1 gateway; 1 below a threshold (1 by fewer than 2 gateways, 1 under 98 % at 15m)",
    ]
    assert report_lines(compute([], SINCE, HOUR, QUARTER))[1:] == [
        "meters below a threshold (0): none", "only heard by one gateway (0): none",
        "summary: 0 meters heard by 0 gateways; 0 below a threshold (0 by fewer than 2 gateways, 0 under 98 % at 15m)"]


@pytest.mark.parametrize(("since", "until", "resolution", "reason"), [
    (SINCE, HOUR, 2 * 3600, "the resolution 2h is longer than the window 1h"),
    (SINCE, HOUR, 25 * 60, "the window 1h is not a whole number of 25m intervals"),
    (HOUR, SINCE, QUARTER, "the window is empty"),
    (SINCE, SINCE, QUARTER, "the window is empty"),
    (SINCE, HOUR, 0, "at least 1 second"),
    ("2026-11-16T00:00:00", HOUR, QUARTER, "is not a time 'YYYY-MM-DD hh:mm:ss'"),
    (SINCE, "2026-11-16 24:00:00", QUARTER, "not a valid time of day"),
    (SINCE, "2026-02-30 00:00:00", QUARTER, "day is out of range"),
    ("2026-01-01 00:00:00", "2030-01-01 00:00:00", 60, f"at most {MAX_INTERVALS} are allowed"),
])
def test_a_bad_window_is_refused_saying_why(since: str, until: str, resolution: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        intervals_in(since, until, resolution)
    with pytest.raises(ValueError, match=reason):
        compute([], since, until, resolution)


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        compute([], SINCE, HOUR, QUARTER, min_gateways=0)
    with pytest.raises(ValueError, match="0 to 100 percent"):
        compute([], SINCE, HOUR, QUARTER, min_reception=100.5)


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800),
                                               ("30s", 30), (" 2d ", 172800)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["15", "15min", "0m", "-1h", "1.5h", "h", "", "7D", "1w", "1e3s"])
def test_a_bad_duration_names_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match=r"give a whole number and s, m, h or d \(15m, 1h, 24h, 7d\)"):
        parse_duration(text)


def test_format_duration_picks_the_largest_whole_unit() -> None:
    assert [format_duration(s) for s in (604800, 86400, 90000, 900, 3660, 61)] == ["7d", "24h", "25h", "15m", "61m",
                                                                                  "61s"]


def test_stamps_count_seconds_across_days_and_months() -> None:
    assert stamp_seconds("2026-12-01 00:00:00") - stamp_seconds("2026-11-30 23:59:59") == 1
    assert stamp_seconds("2027-01-01 00:00:00") - stamp_seconds("2026-01-01 00:00:00") == 365 * 86400


def test_memory_follows_the_meters_not_the_receptions() -> None:
    def stream(count: int) -> Iterator[Reception]:
        for k in range(count):
            yield heard(f"{k % 50:08d}", f"{161 + k % 3:08d}", f"2026-11-{16 + k % 7} {k % 24:02d}:{k % 60:02d}:00")

    def peak(count: int) -> int:
        tracemalloc.start()
        try:
            report = compute(stream(count), SINCE, "2026-11-23 00:00:00", QUARTER)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert len(report.meters) == 50

    small, large = peak(2_000), peak(60_000)
    assert large < 2 * small + 256 * 1024, (small, large)  # 30 times the receptions, not 30 times the memory


# -------------------------------------------------------------------------------------------
# SqliteStore.receptions and the meter_coverage view


def line(meter: int, gateway: str, at: str, rssi: int | None, serial: int = 0) -> ReportLine:
    """A stored report line of one meter (a distinct telegram per ``serial``); only what the store keeps matters."""
    telegram = bytes((0x0E, 0x44, 0x96, 0x15)) + bytes.fromhex(f"{meter:08d}")[::-1] + bytes((1, 7, 0x7A,
                                                                                             serial % 256, serial // 256, 0, 0))
    return ReportLine(gateway=gateway, meter_id=f"{meter:08d}", date=at, wired=b"", telegram=telegram, receiver=None,
                      age_minutes=None, rssi_code=rssi, manufacturer="ELV", version=1, device_type=7, ci=0x7A,
                      access_number=serial % 256, digest=hashlib.sha256(telegram).hexdigest())


def test_receptions_are_those_of_the_window_read_in_pages() -> None:
    store = SqliteStore()
    try:
        # More than a page at one instant: the pages must continue past equal heard_at stamps.
        store.add([line(1, f"{g:08d}", SINCE, 10 + serial % 40 + g - 161, serial) for serial in range(1500)
                   for g in (161, 162, 163)])
        store.add([line(2, "00000161", "2026-11-15 23:59:59", 20), line(2, "00000161", HOUR, 21, 1),
                   line(2, "00000162", "2026-11-16 00:59:59", None, 2)])
        got = list(store.receptions(SINCE, HOUR))
        assert len(got) == 4501
        assert sorted({(r.meter_id, r.gateway, r.heard_at) for r in got}) == [
            ("00000001", "00000161", SINCE), ("00000001", "00000162", SINCE), ("00000001", "00000163", SINCE),
            ("00000002", "00000162", "2026-11-16 00:59:59")]
        assert [r for r in got if r.meter_id == "00000002"] == [
            Reception("ELV", "00000002", 7, "00000162", "2026-11-16 00:59:59", None, 1)]
        assert list(store.receptions(HOUR, "2026-11-16 02:00:00")) == [
            Reception("ELV", "00000002", 7, "00000161", HOUR, 21, 1)]
        view = store._db.execute("SELECT * FROM meter_coverage ORDER BY meter_id, gateway").fetchall()
        assert view == [
            ("ELV", "00000001", 7, "00000161", 1500, SINCE, SINCE, 49, 1),
            ("ELV", "00000001", 7, "00000162", 1500, SINCE, SINCE, 50, 1),
            ("ELV", "00000001", 7, "00000163", 1500, SINCE, SINCE, 51, 1),
            ("ELV", "00000002", 7, "00000161", 2, "2026-11-15 23:59:59", HOUR, 21, 1),
            ("ELV", "00000002", 7, "00000162", 1, "2026-11-16 00:59:59", "2026-11-16 00:59:59", None, 1),
        ]
    finally:
        store.close()
