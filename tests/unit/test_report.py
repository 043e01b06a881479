"""The report body: byte-exact lines, time zones, chunking, re-creation per attempt, speed."""

from __future__ import annotations

import random
from datetime import UTC as UTC_TZ
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from wmbus_stream import wire
from wmbus_stream.core.latest import Snapshot, record
from wmbus_stream.core.report import CHUNK_SIZE, body, lines
from wmbus_stream.io.store import Store

UTC = ZoneInfo("UTC")
STOCKHOLM = ZoneInfo("Europe/Stockholm")

# Spec section 5: the wireless telegram and the report telegram it must become.
SPEC_WIRELESS = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265560702FB1A0E"
    "0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F")
SPEC_REPORT_HEX = (
    "080072640100619615011B000000000C787217006201FD711C0DFD3B616044961564010061011B7A970400202F2F02653607"
    "426534078201652C072265320712653607626516075265560702FB1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E"
    "0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC_TZ).timestamp()


def row(meter_id: str, received_at: float, telegram: bytes, generation: int = 1) -> tuple[bytes, bytes]:
    """A snapshot entry of the meter whose link address carries ``meter_id``."""
    return b"\x96\x15" + bytes.fromhex(meter_id)[::-1] + b"\x01\x07", record(received_at, generation, telegram)


def test_spec_example_line() -> None:
    report = wire.build_report(SPEC_WIRELESS, "62001772", -74, 0x00)
    assert report.hex().upper() == SPEC_REPORT_HEX
    snap = Snapshot((row("61000164", utc(2026, 11, 24, 10, 15, 2) + 0.999, report),))
    expected = f"00000161;61000164;2026-11-24 10:15:02;00;{SPEC_REPORT_HEX}\n".encode()
    assert list(lines(snap, "00000161", UTC)) == [expected]
    assert b"".join(body(snap, "00000161", UTC)) == expected


def test_fixed_snapshot_byte_exact_in_stockholm() -> None:
    snap = Snapshot((
        row("00000001", utc(2026, 1, 15, 23, 30, 0), b"\x08\x00\x72\xab"),       # CET: next day
        row("00000002", utc(2026, 7, 1, 12, 0, 59) + 0.5, b"\x00\xff"),              # CEST, +2
        row("00000003", utc(2026, 3, 29, 0, 59, 59), b"\x01"),                   # last second of CET
        row("00000004", utc(2026, 3, 29, 1, 0, 0), b"\x02"),                     # first second of CEST
        row("00000005", utc(2026, 10, 25, 0, 59, 59), b"\x03"),                  # 02:59:59 CEST
        row("00000006", utc(2026, 10, 25, 1, 0, 0), b"\x04"),                    # 02:00:00 CET again
        row("00000007", utc(2026, 12, 31, 23, 0, 0), b"\x05"),                   # new year locally
    ))
    assert b"".join(lines(snap, "00000161", STOCKHOLM)) == (
        b"00000161;00000001;2026-01-16 00:30:00;00;080072AB\n"
        b"00000161;00000002;2026-07-01 14:00:59;00;00FF\n"
        b"00000161;00000003;2026-03-29 01:59:59;00;01\n"
        b"00000161;00000004;2026-03-29 03:00:00;00;02\n"
        b"00000161;00000005;2026-10-25 02:59:59;00;03\n"
        b"00000161;00000006;2026-10-25 02:00:00;00;04\n"
        b"00000161;00000007;2027-01-01 00:00:00;00;05\n"
    )
    assert b"".join(lines(snap, "00000161", UTC)).splitlines()[0] == b"00000161;00000001;2026-01-15 23:30:00;00;080072AB"


def _transitions(tz: ZoneInfo, year: int) -> list[int]:
    """Every second in ``year`` at which ``tz`` changes its UTC offset."""
    def offset(t: int) -> object:
        return datetime.fromtimestamp(t, tz).utcoffset()

    found = []
    t = int(datetime(year, 1, 1, tzinfo=UTC_TZ).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC_TZ).timestamp())
    while t < end:
        step = 3600
        if offset(t) != offset(t + step):
            low, high = t, t + step  # offset(low) != offset(high): find the first new second
            while high - low > 1:
                middle = (low + high) // 2
                if offset(middle) == offset(low):
                    low = middle
                else:
                    high = middle
            found.append(high)
        t += step
    return found


@pytest.mark.parametrize("zone, years", [
    ("Europe/Stockholm", (1980, 2026, 2037)),
    ("Europe/Amsterdam", (1937, 1940)),           # odd LMT-style offsets with seconds (+00:19:32)
    ("Africa/Monrovia", (1972,)),                 # -00:44:30 until 1972
    ("Australia/Lord_Howe", (2026,)),             # 30-minute DST
    ("America/St_Johns", (2026,)),                # -03:30 / -02:30
    ("Asia/Kolkata", (1942, 2026)),
])
def test_dates_match_the_zone_around_every_transition(zone: str, years: tuple[int, ...]) -> None:
    tz = ZoneInfo(zone)
    rng = random.Random(zone)
    seconds: list[float] = []
    for year in years:
        for edge in _transitions(tz, year):
            seconds.extend(edge + d for d in range(-70, 71))
        start = datetime(year, 1, 1, tzinfo=UTC_TZ).timestamp()
        seconds.extend(start + rng.random() * 366 * 86400 for _ in range(300))
    snap = Snapshot(tuple(row("00000001", s, b"\x01") for s in seconds))
    got = [line.split(b";")[2].decode() for line in lines(snap, "1", tz)]
    want = [datetime.fromtimestamp(int(s // 1), tz).strftime("%Y-%m-%d %H:%M:%S") for s in seconds]
    assert got == want


def test_body_chunks_whole_lines_and_is_recreatable() -> None:
    telegram = bytes(range(200))
    snap = Snapshot(tuple(row(f"{n:08d}", 1.7e9 + n, telegram, n) for n in range(2000)))
    everything = b"".join(lines(snap, "00000161", STOCKHOLM))
    chunks = list(body(snap, "00000161", STOCKHOLM))
    assert b"".join(chunks) == everything
    assert len(chunks) > 5
    line_size = len(everything) // 2000
    for chunk in chunks:
        assert chunk.endswith(b"\n") and chunk.count(b"\n") * line_size == len(chunk)
        assert CHUNK_SIZE <= len(chunk) < CHUNK_SIZE + line_size or chunk is chunks[-1]
    assert list(body(snap, "00000161", STOCKHOLM)) == chunks  # a second attempt gets the same body
    small = list(body(snap, "00000161", STOCKHOLM, chunk_size=1))
    assert len(small) == 2000 and b"".join(small) == everything


def test_empty_snapshot_gives_an_empty_body() -> None:
    assert list(body(Snapshot(()), "00000161", UTC)) == []
    assert list(lines(Snapshot(()), "00000161", UTC)) == []


@pytest.mark.parametrize("serial", ["0000;161", "00000161\n", "0000016\r", "00000161é"])
def test_serial_that_would_break_the_line_is_refused(serial: str) -> None:
    with pytest.raises(ValueError):
        list(lines(Snapshot((row("00000001", 0.0, b"\x01"),)), serial, UTC))


def test_report_from_a_real_store_snapshot(tmp_path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        report = wire.build_report(SPEC_WIRELESS, "62001772", -74, 0x00)
        store.put(SPEC_WIRELESS[2:10], utc(2026, 11, 24, 9, 15, 2), report)
        text = b"".join(body(store.snapshot(), "00000161", STOCKHOLM))
    assert text == f"00000161;61000164;2026-11-24 10:15:02;00;{SPEC_REPORT_HEX}\n".encode()


def test_100k_meters_report_in_full() -> None:
    report = wire.build_report(SPEC_WIRELESS, "62001772", -74, 0x00)
    now = utc(2026, 11, 24, 10, 0, 0)
    typical = Snapshot(tuple(row(f"{n:08d}", now + n * 0.009, report, n) for n in range(100_000)))  # 15 min
    spread = Snapshot(tuple(row(f"{n:08d}", now + n * 7.3, report, n) for n in range(100_000)))  # 8 days
    for snap in (typical, spread):
        size = sum(len(chunk) for chunk in body(snap, "00000161", STOCKHOLM))
        assert size == 100_000 * (len(SPEC_REPORT_HEX) + 42)
