"""The analyzer: totals, verdicts, RSSI statistics, views, periods, CSV safety, persistence."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from wmbus_stream.core.analyzer import CSV_HEADER, Analyzer, MeterRow
from wmbus_stream.core.check import VERDICTS
from wmbus_stream.io.store import Store

T0 = 1_790_000_000.0
ACCEPTED = VERDICTS[0]  # the verdict the pipeline records for a telegram it keeps
DAY = 24 * 3600.0
ELV, KAM = b"\x96\x15", b"\x2d\x2c"  # ELV, KAM manufacturer codes (LSB first)


def key(man: bytes, n: int, version: int = 1, device_type: int = 0x07) -> bytes:
    return man + n.to_bytes(4, "little") + bytes((version, device_type))


def mid(k: bytes) -> str:
    return k[5:1:-1].hex().upper()


def test_totals_and_per_meter_fields() -> None:
    a = Analyzer(T0)
    water = key(ELV, 0x61000164, device_type=0x07)
    heat = key(KAM, 0x05047157, device_type=0x04)
    a.record(water, ACCEPTED, -74, "T1", T0 + 1)
    a.record(water, ACCEPTED, -80, "T1", T0 + 2)
    a.record(water, ACCEPTED, -71, "C1A", T0 + 3)
    a.record(heat, "filter.manufacturer", None, None, T0 + 4)
    a.record_broken(T0 + 5, "crc")
    a.record_broken(T0 + 6, "crc")
    a.record_broken(T0 + 7, "length")
    totals = a.totals()
    assert (totals.running_since, totals.meters_found, totals.telegrams_ok, totals.telegrams_broken) == (T0, 2, 4, 3)
    assert totals.broken_by_kind == (("crc", 2), ("length", 1))
    rows = {r.id: r for r in a.rows()}
    w = rows["61000164"]
    assert (w.manufacturer, w.device_type, w.device_type_name, w.verdict, w.count) == ("ELV", 7, "water", ACCEPTED, 3)
    assert (w.rssi_last, w.rssi_min, w.rssi_avg, w.rssi_max) == (-71, -80, -75.0, -71)
    assert (w.mode, w.first_seen, w.last_seen) == ("C1A", T0 + 1, T0 + 3)
    h = rows["05047157"]
    assert (h.manufacturer, h.device_type_name, h.verdict, h.count) == ("KAM", "heat", "filter.manufacturer", 1)
    assert (h.rssi_last, h.rssi_min, h.rssi_avg, h.rssi_max, h.mode) == (None, None, None, None, None)


def test_verdict_follows_the_latest_telegram_and_unknown_rssi_keeps_stats() -> None:
    a = Analyzer(T0)
    k = key(ELV, 1)
    a.record(k, "filter.device.id", -60, "T1", T0)
    a.record(k, ACCEPTED, None, None, T0 + 1)  # allow-list changed; receiver gave no RSSI
    (row,) = a.rows()
    assert (row.verdict, row.count, row.rssi_last, row.rssi_min, row.rssi_avg, row.rssi_max) == (
        ACCEPTED, 2, None, -60, -60.0, -60)


def test_same_id_other_device_type_is_another_meter() -> None:
    a = Analyzer(T0)
    a.record(key(ELV, 5, device_type=7), ACCEPTED, -70, "T1", T0)
    a.record(key(ELV, 5, device_type=4), ACCEPTED, -70, "T1", T0)
    assert a.totals().meters_found == 2
    assert [r.device_type for r in a.rows()] == [4, 7]


def test_only_allowed_view() -> None:
    a = Analyzer(T0)
    for n in (0x11111111, 0x22222222, 0x33333333):
        k = key(ELV, n)
        a.record(k, ACCEPTED, -70, "T1", T0)
    assert [r.id for r in a.rows(True, {"22222222", " 33333333 "})] == ["22222222", "33333333"]
    assert len(a.rows(True, set())) == 3  # empty allow-list: show everything
    assert len(a.rows(False, {"22222222"})) == 3  # show.only.filtered=false


def test_cap_on_meters_counts_the_overflow() -> None:
    a = Analyzer(T0, max_meters=3)
    for n in range(5):
        k = key(ELV, n)
        a.record(k, ACCEPTED, -70, "T1", T0)
        a.record(k, ACCEPTED, -70, "T1", T0)
    totals = a.totals()
    assert (totals.meters_found, totals.telegrams_ok, totals.untracked) == (3, 10, 4)
    assert sum(r.count for r in a.rows()) == 6


def test_reset_by_hand_and_every_24_hours_without_touching_the_store(tmp_path: Path) -> None:
    a = Analyzer(T0)
    store = Store.open(tmp_path / "s.db")
    k = key(ELV, 1)
    a.record(k, ACCEPTED, -70, "T1", T0 + 10)
    store.put(k, T0 + 10, b"report")
    a.record_broken(T0 + 11, "crc")
    assert not a.maybe_reset(T0 + DAY - 1)
    assert a.totals().meters_found == 1
    assert a.maybe_reset(T0 + DAY + 30)
    totals = a.totals()
    assert (totals.running_since, totals.meters_found, totals.telegrams_ok, totals.telegrams_broken) == (T0 + DAY, 0, 0, 0)
    assert store.pending() == 1
    # offline for three days: the period keeps its cadence from the start
    assert a.maybe_reset(T0 + 4 * DAY + 5)
    assert a.totals().running_since == T0 + 4 * DAY
    assert not a.maybe_reset(T0 + 4 * DAY + 100, hours=24)
    # clock stepped back by more than a period: a new period starts now
    assert a.maybe_reset(T0)
    assert a.totals().running_since == T0
    a.record(k, ACCEPTED, -70, "T1", T0 + 1)
    a.reset(T0 + 2)
    assert a.rows() == [] and a.totals().running_since == T0 + 2
    store.close()


HOSTILE = [
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1",
    "\r=1",
    '<script>alert("x")</script>',
    'a "quoted", comma',
    "line\nbreak",
]


def _hostile_row(i: int, text: str) -> MeterRow:
    return MeterRow(bytes(8), text, text, 7, "water", text, i, -74, -80, -75.5, -60, text, T0, T0 + 60)


def test_csv_neutralises_formulas_and_quotes_hostile_text() -> None:
    text = Analyzer.to_csv([_hostile_row(i, h) for i, h in enumerate(HOSTILE)])
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(parsed[0]) == CSV_HEADER
    assert len(parsed) == len(HOSTILE) + 1
    for hostile, row in zip(HOSTILE, parsed[1:], strict=True):
        cells = dict(zip(CSV_HEADER, row, strict=True))
        expected = "'" + hostile if hostile[0] in "=+-@\t\r" else hostile
        for name in ("id", "manufacturer", "verdict", "mode"):
            assert cells[name] == expected  # survives quoting exactly, formulas defused
        # numbers we format stay numbers (a bare -74 is not a formula)
        assert (cells["rssi_last_dbm"], cells["rssi_min_dbm"], cells["rssi_avg_dbm"]) == ("-74", "-80", "-75.5")
        assert cells["first_seen"] == "2026-09-21T14:13:20Z"
    assert '"<script>alert(""x"")</script>"' in text
    for row in parsed[1:]:  # no cell starts a formula; the only leading "-" cells are numbers
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r"))
            if cell.startswith("-"):
                float(cell)


def test_csv_of_real_rows() -> None:
    a = Analyzer(T0)
    k = key(ELV, 0x61000164)
    a.record(k, ACCEPTED, None, None, T0)
    text = Analyzer.to_csv(a.rows())
    assert text.splitlines()[1] == "61000164,ELV,07,water,Accepted,1,,,,,,2026-09-21T14:13:20Z,2026-09-21T14:13:20Z"


def test_dump_load_round_trip() -> None:
    a = Analyzer(T0)
    for n in range(50):
        k = key(ELV if n % 2 else KAM, n, device_type=n % 8)
        for j in range(n % 4 + 1):
            a.record(k, ACCEPTED if n % 3 else "radio.mode",
                     None if j == 1 else -60 - n, "T1" if n % 5 else None, T0 + n + j)
    a.record_broken(T0, "crc")
    blob = a.dump()
    json.loads(blob)
    b = Analyzer(0.0)
    b.load(blob)
    assert b.rows() == a.rows()
    assert b.totals() == a.totals()
    assert b.dump() == blob


def test_load_rejects_malformed_state_and_keeps_the_current_one() -> None:
    a = Analyzer(T0)
    k = key(ELV, 1)
    a.record(k, ACCEPTED, -70, "T1", T0)
    before = a.rows()
    for bad in (b"", b"not json", b"[]", b'{"version": 99}',
                json.dumps({"version": 1, "running_since": 0, "telegrams_ok": 0, "broken": {},
                            "untracked": 0, "meters": [["zz"]]}).encode()):
        with pytest.raises(ValueError):
            a.load(bad)
        assert a.rows() == before


def test_record_counts_a_burst_of_100k_telegrams() -> None:
    """100,000 records over 1,000 meters: every one counted (its cost per call is in bench --service)."""
    a = Analyzer(T0)
    keys = [key(ELV, n) for n in range(1000)]
    for i in range(100_000):
        a.record(keys[i % 1000], ACCEPTED, -70, "T1", T0 + i)
    totals = a.totals()
    assert totals.meters_found == 1000 and totals.telegrams_ok == 100_000 and totals.untracked == 0


def test_long_form_telegrams_through_the_pipeline_are_counted_kept_and_reset(tmp_path: Path, vectors) -> None:
    from wmbus_stream import wire
    from wmbus_stream.core.check import Settings
    from wmbus_stream.core.pipeline import Pipeline
    from wmbus_stream.core.received import Received
    from wmbus_stream.wire.filters import matcher

    long_one = next(v["telegram_bytes"] for v in vectors if len(v["telegram_bytes"]) == 230)
    short_one = vectors[0]["telegram_bytes"]
    analyzer = Analyzer(1000.0)
    store = Store.open(str(tmp_path / "s.sqlite"))
    pipeline = Pipeline(Settings(matcher(), "62001772", 0), store, analyzer)
    pipeline.process([Received(t, wire.FORMAT_NONE) for t in (long_one, short_one, long_one)], 1001.0)
    pipeline.settings = Settings(matcher(["ELV"] if long_one[2:4] != b"\x96\x15" else ["ABB"]), None, 0)
    pipeline.process([Received(long_one, wire.FORMAT_NONE)], 1002.0)  # rejected by the filter: not reported
    assert pipeline.long_form == 2 and analyzer.totals().long_form == 2 and analyzer.totals().telegrams_ok == 4
    (row,) = [r for r in store.snapshot() if r[3].endswith(long_one)]
    assert row[3][25] == wire.LONG_FORM
    copy = Analyzer(0.0)
    copy.load(analyzer.dump())
    assert copy.totals().long_form == 2
    state = json.loads(analyzer.dump())
    del state["long_form"]  # a dump of an older version
    copy.load(json.dumps(state).encode())
    assert copy.totals().long_form == 0
    analyzer.reset(2000.0)
    assert analyzer.totals().long_form == 0
    store.close()


def test_a_loaded_dump_shows_the_names_it_gives_even_where_the_key_says_otherwise() -> None:
    """IDs, manufacturers and device types come from the key, except where a restored dump says otherwise."""
    a = Analyzer(T0)
    k = key(ELV, 0x61000164)
    a.record(k, ACCEPTED, -70, "T1", T0)
    state = json.loads(a.dump())
    assert state["meters"][0][1:4] == ["61000164", "ELV", 7]
    state["meters"].append(["ff" + "00" * 7, "<b>odd</b>", "=X", 7, ACCEPTED, 1, None, None, None, 0, 0, None, T0, T0])
    b = Analyzer(0.0)
    b.load(json.dumps(state).encode())
    odd = next(r for r in b.rows() if r.key == bytes.fromhex("ff" + "00" * 7))
    assert (odd.id, odd.manufacturer, odd.device_type, odd.device_type_name) == ("<b>odd</b>", "=X", 7, "water")
    assert [r.id for r in b.rows(True, {"<B>ODD</B>"})] == ["<b>odd</b>"]
    assert json.loads(b.dump())["meters"] == state["meters"]
    b.record(bytes.fromhex("ff" + "00" * 7), ACCEPTED, -60, None, T0 + 1)  # a telegram keeps the names
    assert next(r for r in b.rows() if r.count == 2).id == "<b>odd</b>"
