"""Cron schedules: accepted syntax, next times, DST in Europe/Stockholm, and the ticker."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmbus_stream.core.schedule import MAX_COALESCE, Schedule, Ticker

UTC = UTC
STHLM = ZoneInfo("Europe/Stockholm")
# 2026 in Europe/Stockholm: clocks go 02:00 -> 03:00 on 29 March, 03:00 -> 02:00 on 25 October.
SPRING = datetime(2026, 3, 29, tzinfo=STHLM)
AUTUMN = datetime(2026, 10, 25, tzinfo=STHLM)


def ticks(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every slot in (start, end], by repeated next_after."""
    out: list[datetime] = []
    t = start
    while True:
        t = schedule.next_after(t)
        if t.astimezone(UTC) > end.astimezone(UTC):
            return out
        out.append(t)


def local_day(day: datetime) -> tuple[datetime, datetime]:
    """The instants bounding one local calendar day (the midnights exist in Stockholm)."""
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=1)).replace(tzinfo=day.tzinfo)
    return start - timedelta(microseconds=1), end - timedelta(microseconds=1)


# -- syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "*/15 * * * *",
        "30 0 * * *",
        "0 0 1 1 *",
        "0-59/5 8-17 * * MON-FRI",
        "0 12 * JAN,jul mon",
        "0 0 * * 7",
        "5,10,15 * * * *",
        "15 0 * * * *",
        "*/10 * * * * *",
        "0 0 29 2 *",
        "0 0 31 4 MON",
        "  */15   *\t* * *  ",
        "@hourly",
        "@DAILY",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ],
)
def test_accepted(expr: str) -> None:
    schedule = Schedule.parse(expr)
    assert str(schedule) == " ".join(expr.split())
    assert schedule.next_after(datetime(2026, 1, 1, tzinfo=UTC)) > datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "4 fields"),
        ("* * * * * * *", "7 fields"),
        ("61 * * * *", "minute field: 61 is out of range 0-59"),
        ("* 24 * * *", "hour field: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month field: 0 is out of range 1-31"),
        ("* * * 13 *", "month field: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week field: 8 is out of range 0-7"),
        ("60 * * * * *", "second field: 60 is out of range 0-59"),
        ("* * * * * 30", "seconds first"),
        ("5/10 * * * *", "a step needs '*' or a range"),
        ("*/0 * * * *", "step must be a whole number of at least 1"),
        ("*/x * * * *", "step must be"),
        ("10-5 * * * *", "range runs backwards"),
        ("* * * * FRI-MON", "range runs backwards"),
        ("1,,2 * * * *", "empty list item"),
        ("x * * * *", "'x' is not a number"),
        ("* * * FOO *", "unknown name 'FOO'"),
        ("* * * * MON#2", "L, W, # and ? are not supported"),
        ("* * L * *", "L, W, # and ? are not supported"),
        ("* * 15W * *", "L, W, # and ? are not supported"),
        ("* * * * 5L", "L, W, # and ? are not supported"),
        ("* * ? * *", "L, W, # and ? are not supported"),
        ("*-5 * * * *", "'*' cannot start a range"),
        ("0 0 30 2 *", "never occurs"),
        ("0 0 31 4,6 *", "never occurs"),
        ("@reboot", "unknown macro"),
        ("*/15 * * * *\n0 0 * * *", "control characters"),
        ("\x00 * * * *", "control characters"),
        ("１ * * * *", "cannot read"),
    ],
)
def test_rejected_with_reason(expr: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        Schedule.parse(expr)
    assert reason in str(info.value)


def test_names_and_seven_are_sunday() -> None:
    after = datetime(2026, 11, 25, 12, tzinfo=UTC)  # a Wednesday
    sunday = datetime(2026, 11, 29, tzinfo=UTC)
    for expr in ("0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun"):
        assert Schedule.parse(expr).next_after(after) == sunday


def test_day_of_month_or_day_of_week_debian_rule() -> None:
    # Both restricted: the 13th OR a Friday.
    schedule = Schedule.parse("0 0 13 * FRI")
    got = ticks(schedule, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))
    assert [t.day for t in got] == [6, 13, 20, 27]
    # Day-of-month starts with '*': AND (every other day that is also a Friday).
    schedule = Schedule.parse("0 0 */2 * FRI")
    got = ticks(schedule, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))
    assert [t.day for t in got] == [13, 27]


def test_next_after_is_strict_and_in_zone() -> None:
    schedule = Schedule.parse("*/15 * * * *", STHLM)
    at = datetime(2026, 6, 1, 10, 15, tzinfo=STHLM)
    assert schedule.next_after(at) == datetime(2026, 6, 1, 10, 30, tzinfo=STHLM)
    assert schedule.next_after(at - timedelta(microseconds=1)) == at
    # Any zone in, the schedule's zone out; same instant.
    result = schedule.next_after(at.astimezone(UTC))
    assert result.tzinfo is STHLM and result == datetime(2026, 6, 1, 10, 30, tzinfo=STHLM)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 6, 1))


def test_quarter_hour_over_a_day_is_96_slots() -> None:
    schedule = Schedule.parse("*/15 * * * *")
    start, end = local_day(datetime(2026, 11, 24, tzinfo=UTC))
    got = ticks(schedule, start, end)
    assert len(got) == 96
    assert {t.minute for t in got} == {0, 15, 30, 45}
    assert all(t.second == 0 and t.microsecond == 0 for t in got)


def test_six_fields_seconds_first() -> None:
    schedule = Schedule.parse("15 0 * * * *")
    assert schedule.has_seconds
    got = ticks(schedule, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 5, tzinfo=UTC))
    assert got == [datetime(2026, 1, 1, h, 0, 15, tzinfo=UTC) for h in range(5)]
    every10 = Schedule.parse("*/10 * * * * *")
    got = ticks(every10, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    assert [t.second for t in got] == [10, 20, 30, 40, 50, 0]


# -- DST in Europe/Stockholm ----------------------------------------------------------------


def test_wildcard_schedule_follows_real_time_across_dst() -> None:
    schedule = Schedule.parse("*/15 * * * *", STHLM)
    spring = ticks(schedule, *local_day(SPRING))
    autumn = ticks(schedule, *local_day(AUTUMN))
    # 23 real hours in March (02:xx does not exist), 25 in October (02:xx twice).
    assert len(spring) == 92
    assert not any(t.hour == 2 for t in spring)
    assert len(autumn) == 100
    assert sum(1 for t in autumn if t.hour == 2) == 8
    for got in (spring, autumn):
        instants = [t.astimezone(UTC) for t in got]
        assert all(b - a == timedelta(minutes=15) for a, b in pairwise(instants))


def test_fixed_time_schedule_follows_debian_cron_across_dst() -> None:
    schedule = Schedule.parse("30 2 * * *", STHLM)
    # Spring: 02:30 does not exist; it runs at the first instant after the gap.
    got = ticks(schedule, *local_day(SPRING))
    assert got == [datetime(2026, 3, 29, 3, 0, tzinfo=STHLM)]
    assert got[0].utcoffset() == timedelta(hours=2)
    # Autumn: 02:30 happens twice; it runs once, at the first (summer time) one.
    got = ticks(schedule, *local_day(AUTUMN))
    assert len(got) == 1
    assert got[0].astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_next_after_inside_the_repeated_hour_never_goes_back() -> None:
    schedule = Schedule.parse("30 2 * * *", STHLM)
    # 02:10 in the second pass (winter time), after the 02:30 that already ran.
    t = datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=STHLM)
    got = schedule.next_after(t)
    assert got.astimezone(UTC) > t.astimezone(UTC)
    assert got == datetime(2026, 10, 26, 2, 30, tzinfo=STHLM)


def test_six_field_schedule_follows_real_time_across_dst() -> None:
    schedule = Schedule.parse("15 0 * * * *", STHLM)
    assert len(ticks(schedule, *local_day(SPRING))) == 23
    assert len(ticks(schedule, *local_day(AUTUMN))) == 25


@pytest.mark.parametrize(
    "expr",
    [
        "*/15 * * * *",
        "30 2 * * *",
        "0 2 * * *",
        "0,30 1-3 * * *",
        "15 */2 * * *",
        "7 0 * * * *",
        "0 3 25 10 *",
        "59 1 * * *",
    ],
)
def test_results_increase_and_match_around_dst(expr: str) -> None:
    schedule = Schedule.parse(expr, STHLM)
    rng = random.Random(expr)
    for day in (SPRING, AUTUMN):
        for _ in range(150):
            t = day.astimezone(UTC) + timedelta(seconds=rng.randrange(-6 * 3600, 30 * 3600))
            t = t.astimezone(STHLM)
            got = schedule.next_after(t)
            assert got.astimezone(UTC) > t.astimezone(UTC)
            assert got.astimezone(UTC) - t.astimezone(UTC) <= timedelta(days=366)
            again = schedule.next_after(got)
            assert again.astimezone(UTC) > got.astimezone(UTC)


# -- ticker ---------------------------------------------------------------------------------


def test_ticker_over_a_day_fires_96_times_on_the_quarter() -> None:
    schedule = Schedule.parse("*/15 * * * *")
    start = datetime(2026, 11, 24, tzinfo=UTC)
    ticker = Ticker(schedule, last_run=start - timedelta(seconds=1))
    fired: list[datetime] = []
    now = start
    while now < start + timedelta(days=1):
        tick = ticker.poll(now)
        if tick.due:
            assert tick.missed == 0
            assert tick.slot is not None
            fired.append(now)
        assert tick.next_at > now
        now += timedelta(seconds=7)
    assert len(fired) == 96
    assert [(t.minute, t.second < 7) for t in fired] == [
        (m, True) for _ in range(24) for m in (0, 15, 30, 45)
    ]


def test_ticker_without_history_does_not_fire_at_once() -> None:
    ticker = Ticker(Schedule.parse("*/15 * * * *"))
    now = datetime(2026, 1, 1, 10, 14, 59, tzinfo=UTC)
    tick = ticker.poll(now)
    assert not tick.due and tick.next_at == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    assert ticker.poll(now + timedelta(seconds=1)).due


def test_ticker_coalesces_missed_slots_into_one() -> None:
    schedule = Schedule.parse("*/15 * * * *")
    ticker = Ticker(schedule, last_run=datetime(2026, 1, 1, 10, 0, tzinfo=UTC))
    # Stopped (or the clock stepped forward) until 14:07: 16 slots passed, one tick.
    now = datetime(2026, 1, 1, 14, 7, tzinfo=UTC)
    tick = ticker.poll(now)
    assert tick.due
    assert tick.slot == datetime(2026, 1, 1, 14, 0, tzinfo=UTC)
    assert tick.missed == 15
    assert tick.next_at == datetime(2026, 1, 1, 14, 15, tzinfo=UTC)
    assert ticker.last_run == now
    assert not ticker.poll(now + timedelta(seconds=1)).due
    assert not ticker.poll(datetime(2026, 1, 1, 14, 14, 59, tzinfo=UTC)).due
    assert ticker.poll(datetime(2026, 1, 1, 14, 15, tzinfo=UTC)).due


def test_ticker_catch_up_count_is_bounded() -> None:
    ticker = Ticker(Schedule.parse("* * * * * *"), last_run=datetime(2026, 1, 1, tzinfo=UTC))
    tick = ticker.poll(datetime(2026, 3, 1, tzinfo=UTC))
    assert tick.due and tick.missed == MAX_COALESCE


def test_clock_stepped_forward_gives_at_most_one_catch_up() -> None:
    ticker = Ticker(
        Schedule.parse("*/15 * * * *"), last_run=datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    )
    now = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    due = []
    for _ in range(30):  # polls every 10 s; the clock jumps 3 h at the 5th
        due.append(ticker.poll(now).due)
        now += timedelta(hours=3) if len(due) == 5 else timedelta(seconds=10)
    assert due.count(True) == 1


def test_clock_stepped_back_gives_no_duplicate_burst() -> None:
    schedule = Schedule.parse("*/15 * * * *")
    ticker = Ticker(schedule, last_run=datetime(2026, 1, 1, 9, 59, tzinfo=UTC))
    assert ticker.poll(datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC)).due
    # NTP steps the clock back one hour; poll every 10 s for 2 real hours.
    now = datetime(2026, 1, 1, 9, 0, 11, tzinfo=UTC)
    fired: list[datetime] = []
    for _ in range(720):
        tick = ticker.poll(now)
        if tick.due:
            fired.append(now)
        now += timedelta(seconds=10)
    # One tick per slot as the clock passes it, never two within one slot period; the
    # 10:00 slot that had just run is not run again.
    assert all(b - a >= timedelta(minutes=15) for a, b in pairwise(fired))
    assert [t.strftime("%H:%M") for t in fired] == [
        "09:15",
        "09:30",
        "09:45",
        "10:15",
        "10:30",
        "10:45",
        "11:00",
    ]


def test_small_step_back_right_after_a_tick_does_not_repeat_it() -> None:
    ticker = Ticker(Schedule.parse("30 0 * * *"), last_run=datetime(2026, 1, 1, tzinfo=UTC))
    assert ticker.poll(datetime(2026, 1, 1, 0, 30, 0, 500000, tzinfo=UTC)).due
    assert not ticker.poll(datetime(2026, 1, 1, 0, 29, 58, tzinfo=UTC)).due
    assert not ticker.poll(datetime(2026, 1, 1, 0, 30, 0, tzinfo=UTC)).due
    tick = ticker.poll(datetime(2026, 1, 1, 0, 31, tzinfo=UTC))
    assert not tick.due and tick.next_at == datetime(2026, 1, 2, 0, 30, tzinfo=UTC)


def test_ticker_across_dst_in_stockholm() -> None:
    schedule = Schedule.parse("*/15 * * * *", STHLM)
    for day, expected in ((SPRING, 92), (AUTUMN, 100)):
        start, end = local_day(day)
        ticker = Ticker(schedule, last_run=start)
        now, count = start, 0
        while now.astimezone(UTC) <= end.astimezone(UTC):
            count += ticker.poll(now).due
            now = (now.astimezone(UTC) + timedelta(seconds=30)).astimezone(STHLM)
        assert count == expected


def test_ticker_rejects_naive_times() -> None:
    with pytest.raises(ValueError):
        Ticker(Schedule.parse("* * * * *"), last_run=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        Ticker(Schedule.parse("* * * * *")).poll(datetime(2026, 1, 1))


# -- the evaluator agrees with a brute-force reading of the accepted language --------------

_RANGES = {"minute": (0, 59), "hour": (0, 23), "dom": (1, 31), "month": (1, 12), "dow": (0, 7)}


@st.composite
def _field(draw: st.DrawFn, name: str) -> tuple[str, set[int]]:
    low, high = _RANGES[name]
    kind = draw(st.sampled_from(["star", "step", "list", "range", "rangestep"]))
    if kind == "star":
        return "*", set(range(low, high + 1))
    if kind == "step":
        n = draw(st.integers(1, high - low + 1))
        return f"*/{n}", set(range(low, high + 1, n))
    if kind == "list":
        values = draw(st.lists(st.integers(low, high), min_size=1, max_size=4))
        return ",".join(map(str, values)), set(values)
    a = draw(st.integers(low, high))
    b = draw(st.integers(a, high))
    if kind == "range":
        return f"{a}-{b}", set(range(a, b + 1))
    n = draw(st.integers(1, 7))
    return f"{a}-{b}/{n}", set(range(a, b + 1, n))


@st.composite
def _expressions(draw: st.DrawFn) -> tuple[str, list[set[int]], bool]:
    parts = [draw(_field(name)) for name in ("minute", "hour", "dom", "month", "dow")]
    text = " ".join(p[0] for p in parts)
    day_or = not parts[2][0].startswith("*") and not parts[4][0].startswith("*")
    return text, [p[1] for p in parts], day_or


def _brute_next(sets: list[set[int]], day_or: bool, after: datetime) -> datetime | None:
    minutes, hours, doms, months, dows = sets
    dows = {d % 7 for d in dows}
    day = after.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(366 * 5):
        cron_dow = (day.weekday() + 1) % 7
        dom_ok, dow_ok = day.day in doms, cron_dow in dows
        if day.month in months and ((dom_ok or dow_ok) if day_or else (dom_ok and dow_ok)):
            for h in sorted(hours):
                for m in sorted(minutes):
                    t = day.replace(hour=h, minute=m)
                    if t > after:
                        return t
        day += timedelta(days=1)
    return None


@settings(max_examples=300, deadline=None)
@given(_expressions(), st.integers(0, 3 * 365 * 24 * 60))
def test_next_after_matches_brute_force(
    expr: tuple[str, list[set[int]], bool], offset: int
) -> None:
    text, sets, day_or = expr
    try:
        schedule = Schedule.parse(text)
    except ValueError as exc:
        assert "never occurs" in str(exc)
        return
    after = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=offset, seconds=offset % 61)
    expected = _brute_next(sets, day_or, after)
    if expected is not None:
        assert schedule.next_after(after) == expected
