"""Cron schedules for the push and the configuration sync, and a sans-IO ticker.

Strategy: our own strict parser decides which expressions are accepted and says why one is
not; the maintained ``cronsim`` library (Debian-cron semantics, no dependencies) computes
the next matching instant. The parser accepts exactly:

* 5 fields ``minute hour day-of-month month day-of-week``, or 6 fields with **seconds
  first** ``second minute hour day-of-month month day-of-week`` (``15 0 * * * *`` = second
  15 of minute 0 of every hour);
* in each field ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, lists ``x,y``;
  names ``JAN``..``DEC`` and ``SUN``..``SAT`` (any case) in the month and weekday fields;
  weekday 0 and 7 are both Sunday;
* the macros ``@yearly`` ``@annually`` ``@monthly`` ``@weekly`` ``@daily`` ``@midnight``
  ``@hourly``.

It rejects what cron implementations disagree on: ``5/10`` (write ``5-59/10``), the Quartz
extensions ``L`` ``W`` ``#`` ``?``, backwards ranges, and a day-of-month that never occurs
in the chosen months (``0 0 30 2 *``).

Day rule (Debian cron): when both day-of-month and day-of-week are restricted (neither
starts with ``*``) a day matches if *either* matches; otherwise both must.

Time zone and DST (evaluation happens in the schedule's zone, ``report.timezone``):

* *Wildcard* schedules (minute or hour field starts with ``*``, and every 6-field
  schedule) follow real time: wall times inside a spring-forward gap do not exist and are
  skipped, and the repeated hour of a fall-back runs twice. In Europe/Stockholm
  ``*/15 * * * *`` ticks 92 times on the last Sunday of March and 100 times on the last
  Sunday of October.
* *Fixed-time* 5-field schedules (minute and hour both explicit, e.g. ``30 2 * * *``)
  follow Debian cron: a time inside the gap runs at the first instant after it (03:00),
  a time inside the repeated hour runs once, at its first occurrence.

Invariants: ``next_after(t)`` is strictly later than ``t`` (compared as instants, never as
wall-clock readings) and is timezone-aware in the schedule's zone. Time is always a
parameter; nothing here reads the clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo

from cronsim import CronSim, CronSimError

__all__ = ["Schedule", "Tick", "Ticker", "MAX_COALESCE"]

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS, 1)
_DOW = _Field("day-of-week", 0, 7, _DAYS, 0)

_FIVE = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)
_SIX = (_SECOND, *_FIVE)

_TERM = re.compile(r"(?P<start>\*|[0-9A-Za-z]+)(?:-(?P<end>[0-9A-Za-z]+))?(?:/(?P<step>[^/]*))?")

# Quartz-style day markers (L, LW, 15W, 5L); names such as JUL or WED are not caught.
_QUARTZ = re.compile(r"[0-9]*L|L?W|[0-9]+W")

_SHAPE = (
    "5 fields 'minute hour day-of-month month day-of-week' or 6 fields with seconds first"
)


def _value(field: _Field, text: str) -> int:
    if text.isdigit() and text.isascii():
        number = int(text)
    elif field.names and text.upper() in field.names:
        return field.names.index(text.upper()) + field.name_base
    elif text.isalpha() and field.names:
        raise ValueError(
            f"{field.name} field: unknown name {text!r} (use {field.names[0]}..{field.names[-1]})"
        )
    else:
        raise ValueError(f"{field.name} field: {text!r} is not a number")
    if not field.low <= number <= field.high:
        raise ValueError(
            f"{field.name} field: {number} is out of range {field.low}-{field.high}"
        )
    return number


def _parse_field(field: _Field, text: str) -> tuple[frozenset[int], str]:
    """The values a field selects and the field as handed to the evaluator.

    Raises ValueError naming the field and the reason.
    """
    values: set[int] = set()
    terms: list[str] = []
    for term in text.split(","):
        if not term:
            raise ValueError(f"{field.name} field {text!r}: empty list item")
        if "#" in term or "?" in term or _QUARTZ.fullmatch(term.upper()):
            raise ValueError(f"{field.name} field {term!r}: L, W, # and ? are not supported")
        match = _TERM.fullmatch(term)
        if match is None:
            raise ValueError(f"{field.name} field: cannot read {term!r}")
        start_text, end_text, step_text = match["start"], match["end"], match["step"]
        if start_text == "*":
            if end_text is not None:
                raise ValueError(f"{field.name} field {term!r}: '*' cannot start a range")
            start, end = field.low, field.high
        else:
            start = _value(field, start_text)
            end = start if end_text is None else _value(field, end_text)
            if end < start:
                raise ValueError(
                    f"{field.name} field {term!r}: range runs backwards ({start} > {end})"
                )
            if step_text is not None and end_text is None:
                # Vixie cron rejects "5/10", other implementations read it differently.
                raise ValueError(
                    f"{field.name} field {term!r}: a step needs '*' or a range before it"
                    f" (write {start_text}-{field.high}/{step_text})"
                )
        step = 1
        if step_text is not None:
            if not (step_text.isdigit() and step_text.isascii()) or int(step_text) == 0:
                raise ValueError(
                    f"{field.name} field {term!r}: step must be a whole number of at least 1"
                )
            step = int(step_text)
        selected = range(start, end + 1, step)
        values.update(selected)
        # cronsim reads a one-value range with a step ("5-5/2") as "5-max/2"; handing it
        # plain numbers avoids that. '*' and '*/n' stay as written: the Debian day rule
        # and the DST mode look at whether a field starts with '*'.
        terms.append(term if start_text == "*" else ",".join(map(str, selected)))
    return frozenset(values), ",".join(terms)


def _check(expression: str) -> tuple[str, bool]:
    """Validate; returns the 5- or 6-field form to evaluate and whether it has seconds."""
    if any(not ch.isprintable() and ch not in " \t" for ch in expression):
        raise ValueError("contains control characters")
    text = expression.strip()
    if not text:
        raise ValueError(f"empty; expected {_SHAPE}")
    if text.startswith("@"):
        cron = _MACROS.get(text.lower())
        if cron is None:
            raise ValueError(f"unknown macro {text!r} (use one of {', '.join(_MACROS)})")
        return cron, False
    parts = text.split()
    if len(parts) not in (5, 6):
        raise ValueError(f"{len(parts)} fields; expected {_SHAPE}")
    fields = _FIVE if len(parts) == 5 else _SIX
    selected: list[frozenset[int]] = []
    canonical: list[str] = []
    try:
        for field, part in zip(fields, parts, strict=True):
            values, evaluated = _parse_field(field, part)
            selected.append(values)
            canonical.append(evaluated)
    except ValueError as exc:
        if len(parts) == 6:
            raise ValueError(f"{exc} (6 fields are read with seconds first)") from None
        raise
    dom_text, dow_text = parts[-3], parts[-1]
    days, months = selected[-3], selected[-2]
    both_restricted = not dom_text.startswith("*") and not dow_text.startswith("*")
    if not both_restricted and min(days) > max(_DAYS_IN_MONTH[m - 1] for m in months):
        raise ValueError(
            f"day-of-month {dom_text!r} never occurs in the months {parts[-2]!r}"
        )
    return " ".join(canonical), len(parts) == 6


def _aware(t: datetime, what: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {t!r}")


def _instant(t: datetime) -> datetime:
    # Aware datetimes sharing a tzinfo compare by wall clock and ignore ``fold``; comparing
    # in UTC compares instants, which is what a clock that repeats an hour needs.
    return t.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated cron expression evaluated in one time zone."""

    expression: str
    cron: str
    has_seconds: bool
    zone: tzinfo = UTC

    @classmethod
    def parse(cls, expression: str, zone: tzinfo = UTC) -> Schedule:
        """Validate ``expression``; raises ValueError with the reason when it is not accepted."""
        cron, has_seconds = _check(expression)
        # cronsim is the evaluator; a refusal here would mean our validator let through
        # something it should not, so it still becomes a clear ValueError.
        try:
            CronSim(cron, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"not accepted by the evaluator: {exc}") from None
        return cls(" ".join(expression.split()), cron, has_seconds, zone)

    def with_zone(self, zone: tzinfo) -> Schedule:
        """The same expression evaluated in another time zone."""
        return replace(self, zone=zone)

    def next_after(self, t: datetime) -> datetime:
        """The first matching instant strictly after ``t`` (aware), in the schedule's zone."""
        _aware(t, "t")
        after = _instant(t)
        it = CronSim(self.cron, t.astimezone(self.zone))
        # In the repeated hour of a fall-back, cronsim's Debian mode works on wall-clock
        # readings and may answer an instant that is already past; skip those.
        for _ in range(1000):
            try:
                candidate = next(it)
            except StopIteration:
                break
            if _instant(candidate) > after:
                return candidate
        raise ValueError(f"schedule {self.expression!r} has no time after {t.isoformat()}")

    def __str__(self) -> str:
        return self.expression


MAX_COALESCE = 1000
"""Most missed slots a single catch-up counts; beyond it ``Tick.missed`` stays at this value."""


@dataclass(frozen=True, slots=True)
class Tick:
    """What ``Ticker.poll`` decided: run now or not, and when to look again."""

    due: bool
    slot: datetime | None
    missed: int
    next_at: datetime


class Ticker:
    """Decides when a schedule is due, coalescing missed slots and surviving clock steps.

    ``poll(now)`` is due at most once per call. If several slots passed since the last run
    (process stopped, clock stepped forward) they become one tick for the latest of them,
    with ``missed`` counting the others. If the clock stepped back before the last run the
    ticker re-anchors at ``now``: slots then come one at a time as the clock passes them,
    never as a burst, and the latest slot served before the step is not served again.
    """

    __slots__ = ("schedule", "_anchor", "_served")

    def __init__(self, schedule: Schedule, last_run: datetime | None = None) -> None:
        if last_run is not None:
            _aware(last_run, "last_run")
        self.schedule = schedule
        self._anchor = last_run
        self._served: datetime | None = None

    @property
    def last_run(self) -> datetime | None:
        """The instant up to which every slot counts as served; persist it to resume."""
        return self._anchor

    def _upcoming(self, t: datetime) -> datetime:
        slot = self.schedule.next_after(t)
        if self._served is not None and _instant(slot) == _instant(self._served):
            slot = self.schedule.next_after(slot)
        return slot

    def poll(self, now: datetime) -> Tick:
        """Whether a slot is due at ``now``; a due tick counts as run."""
        _aware(now, "now")
        if self._anchor is None:
            # Nothing known about earlier runs: start counting from now, no catch-up.
            self._anchor = now
            return Tick(False, None, 0, self._upcoming(now))
        if _instant(now) < _instant(self._anchor):
            self._anchor = now
        first = self._upcoming(self._anchor)
        now_i = _instant(now)
        if _instant(first) > now_i:
            return Tick(False, None, 0, first)
        slot, missed = first, 0
        while missed < MAX_COALESCE:
            later = self.schedule.next_after(slot)
            if _instant(later) > now_i:
                break
            slot, missed = later, missed + 1
        # Remember the latest slot ever served: after a step back it must not run twice.
        if self._served is None or _instant(slot) > _instant(self._served):
            self._served = slot
        self._anchor = now
        return Tick(True, slot, missed, self._upcoming(now))

