"""The analyzer: per-meter reception statistics for installers (spec section 9).

Strategy
    A dict maps each meter's key (the 8-byte link address, as in the store) to a row number
    in a few columns (``array`` of machine numbers, lists of shared strings), updated in
    place by ``record`` (a dict lookup and a few item stores under a lock): about 70 bytes a
    meter where an object per meter with its own numbers took about 350. The meter ID,
    manufacturer and device type are not kept: they are read from the key when shown
    (only a loaded dump that says otherwise has them kept aside, as it says them).
    Readers get immutable ``MeterRow`` values built on demand. The analyzer sees every
    well-formed telegram, accepted or rejected by a filter, plus a count of broken ones.

Invariants
    - Bounded: at most ``max_meters`` records; telegrams of further meters are still counted
      in the totals (and in ``untracked``) but get no record of their own.
    - ``telegrams_ok`` counts every ``record`` call, ``telegrams_broken`` every
      ``record_broken`` call, ``long_form`` every ``record_long_form`` call (accepted
      telegrams of more than 191 bytes, reported in the 0F long form); a meter's ``count``
      counts all its telegrams, whatever the verdict; verdict, RSSI "last" and mode are
      those of the latest telegram.
    - Min/avg/max RSSI cover only telegrams whose RSSI is known; None when none was.
    - Resetting (by hand, or every 24 h from the start of the period) clears the statistics
      only; the store's pending telegrams are a different object and are never touched.
    - Nothing here does IO or reads the clock: time is a parameter.
"""

from __future__ import annotations

import csv
import io
import json
import time
from array import array
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from ..wire.header import device_type_name, manufacturer_letters
from .latest import meter_id

__all__ = ["CSV_HEADER", "Analyzer", "MeterRow", "Totals"]

_DUMP_VERSION = 1
# Leading characters a spreadsheet may take as the start of a formula (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

CSV_HEADER = (
    "id", "manufacturer", "device_type", "device_type_name", "verdict", "count",
    "rssi_last_dbm", "rssi_min_dbm", "rssi_avg_dbm", "rssi_max_dbm", "mode", "first_seen", "last_seen",
)


@dataclass(frozen=True, slots=True)
class MeterRow:
    """What the analyzer shows for one meter; times are epoch seconds (UTC)."""

    key: bytes
    id: str
    manufacturer: str
    device_type: int
    device_type_name: str
    verdict: str
    count: int
    rssi_last: int | None
    rssi_min: int | None
    rssi_avg: float | None
    rssi_max: int | None
    mode: str | None
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class Totals:
    """Analyzer totals: running since (epoch s), meters found, telegrams OK, broken and long."""

    running_since: float
    meters_found: int
    telegrams_ok: int
    telegrams_broken: int
    broken_by_kind: tuple[tuple[str, int], ...]
    untracked: int  # telegrams of meters beyond max_meters (counted in telegrams_ok only)
    long_form: int  # accepted telegrams of 192+ bytes, reported in the 0F long form


_NO_RSSI = -(1 << 31)  # "not known" in an RSSI column (int32; receivers give -150 .. 20 dBm or so)


def _manufacturer(key: bytes) -> str:
    """Manufacturer letters from a link-address key (``???`` if the key is too short)."""
    return manufacturer_letters(key[0] | key[1] << 8) if len(key) >= 2 else "???"


def _device_type(key: bytes) -> int:
    return key[7] if len(key) > 7 else 0


def _rssi(value: int) -> int | None:
    return None if value == _NO_RSSI else value


class _Columns:
    """Per-meter statistics, one row number per meter; only the analyzer touches them, under its lock."""

    __slots__ = (
        "count",
        "first_seen",
        "last_seen",
        "mode",
        "names",
        "rssi_last",
        "rssi_max",
        "rssi_min",
        "rssi_n",
        "rssi_sum",
        "verdict",
    )

    def __init__(self) -> None:
        self.count = array("q")
        self.verdict: list[str] = []
        self.mode: list[str | None] = []
        self.rssi_last = array("i")
        self.rssi_min = array("i")
        self.rssi_max = array("i")
        self.rssi_sum = array("q")
        self.rssi_n = array("q")
        self.first_seen = array("d")
        self.last_seen = array("d")
        # ID, manufacturer and device type a loaded dump gave where they differ from the key's
        # (never so for telegrams): a restored state shows what it says. Empty in practice.
        self.names: dict[bytes, tuple[str, str, int]] = {}

    def names_of(self, key: bytes) -> tuple[str, str, int]:
        """ID, manufacturer letters and device type of a meter."""
        return self.names.get(key) or (meter_id(key), _manufacturer(key), _device_type(key))

    def add(self, verdict: str, t: float) -> int:
        """A new meter first seen at ``t``, with no telegram counted yet; returns its row."""
        self.count.append(0)
        self.verdict.append(verdict)
        self.mode.append(None)
        for column in (self.rssi_last, self.rssi_min, self.rssi_max):
            column.append(_NO_RSSI)
        self.rssi_sum.append(0)
        self.rssi_n.append(0)
        self.first_seen.append(t)
        self.last_seen.append(t)
        return len(self.count) - 1

    def row(self, key: bytes, i: int) -> MeterRow:
        n = self.rssi_n[i]
        avg = round(self.rssi_sum[i] / n, 1) if n else None
        ident, manufacturer, device_type = self.names_of(key)
        return MeterRow(key, ident, manufacturer, device_type, device_type_name(device_type),
                        self.verdict[i], self.count[i], _rssi(self.rssi_last[i]), _rssi(self.rssi_min[i]), avg,
                        _rssi(self.rssi_max[i]), self.mode[i], self.first_seen[i], self.last_seen[i])

    def dump(self, key: bytes, i: int) -> list[object]:
        """The dump entry of a meter (the format of dump version 1)."""
        return [key.hex(), *self.names_of(key), self.verdict[i], self.count[i],
                _rssi(self.rssi_last[i]), _rssi(self.rssi_min[i]), _rssi(self.rssi_max[i]), self.rssi_sum[i],
                self.rssi_n[i], self.mode[i], self.first_seen[i], self.last_seen[i]]


class Analyzer:
    """Per-meter statistics over an analysis period, with totals, CSV export and persistence."""

    def __init__(self, started: float, *, max_meters: int = 100_000,
                 lock: AbstractContextManager[object] | None = None) -> None:
        """Start an empty period at ``started`` (epoch seconds); ``lock`` guards it where threads share it."""
        if max_meters < 1:
            raise ValueError("max_meters must be at least 1")
        self.max_meters = max_meters
        self._lock = lock if lock is not None else nullcontext()
        self._meters: dict[bytes, int] = {}  # key -> row in _columns
        self._columns = _Columns()
        self._since = started
        self._ok = 0
        self._broken: dict[str, int] = {}
        self._untracked = 0
        self._long_form = 0

    # -- recording (pipeline thread) ------------------------------------------------------

    def record(self, key: bytes, verdict: str, rssi_dbm: int | None, mode_name: str | None, t: float) -> None:
        """Count one well-formed telegram of the meter ``key`` with its filter verdict (``Accepted`` or a filter key)."""
        with self._lock:
            self._ok += 1
            c = self._columns
            i = self._meters.get(key)
            if i is None:
                if len(self._meters) >= self.max_meters:
                    self._untracked += 1
                    return
                i = self._meters[key] = c.add(verdict, t)
            c.count[i] += 1
            c.verdict[i] = verdict
            c.mode[i] = mode_name
            c.last_seen[i] = t
            if rssi_dbm is None:
                c.rssi_last[i] = _NO_RSSI
                return
            c.rssi_last[i] = rssi_dbm
            c.rssi_sum[i] += rssi_dbm
            c.rssi_n[i] += 1
            if c.rssi_n[i] == 1 or rssi_dbm < c.rssi_min[i]:
                c.rssi_min[i] = rssi_dbm
            if c.rssi_n[i] == 1 or rssi_dbm > c.rssi_max[i]:
                c.rssi_max[i] = rssi_dbm

    def record_broken(self, t: float, kind: str) -> None:
        """Count one broken telegram (``crc``, ``length``, ``header``, ``checksum`` ...)."""
        with self._lock:
            self._broken[kind] = self._broken.get(kind, 0) + 1

    def record_long_form(self) -> None:
        """Count one accepted telegram the report carries in the 0F long form (192+ bytes)."""
        with self._lock:
            self._long_form += 1

    # -- reading (web/CLI thread) ---------------------------------------------------------

    def rows(self, only_allowed: bool = False, allow_ids: Iterable[str] = ()) -> list[MeterRow]:
        """Rows sorted by ID then key; with ``only_allowed`` only allow-listed IDs (all if the list is empty)."""
        allowed = {i.strip().upper() for i in allow_ids}
        show_all = not (only_allowed and allowed)
        with self._lock:
            c = self._columns
            rows = [c.row(key, i) for key, i in self._meters.items()
                    if show_all or c.names_of(key)[0].upper() in allowed]
        rows.sort(key=lambda r: (r.id, r.key))
        return rows

    def totals(self) -> Totals:
        """Totals of the current period."""
        with self._lock:
            return Totals(self._since, len(self._meters), self._ok, sum(self._broken.values()),
                          tuple(sorted(self._broken.items())), self._untracked, self._long_form)

    # -- periods --------------------------------------------------------------------------

    def reset(self, t: float) -> None:
        """Clear every statistic and start a new period at ``t``."""
        with self._lock:
            self._meters = {}
            self._columns = _Columns()
            self._since = t
            self._ok = 0
            self._broken = {}
            self._untracked = 0
            self._long_form = 0

    def maybe_reset(self, t: float, hours: float = 24) -> bool:
        """Reset when a whole period has passed since its start; True if it did.

        The new period starts on the boundary (start + k * period), so resets keep their
        cadence however often this is called. A clock stepped back by more than a period
        starts a new period at ``t`` rather than waiting that long.
        """
        period = hours * 3600.0
        elapsed = t - self._since
        if elapsed >= period:
            self.reset(self._since + (elapsed // period) * period)
            return True
        if elapsed < -period:
            self.reset(t)
            return True
        return False

    # -- export and persistence -----------------------------------------------------------

    @staticmethod
    def to_csv(rows: Iterable[MeterRow]) -> str:
        """CSV text (stdlib ``csv``, RFC 4180 quoting) with formula-looking text cells neutralised.

        Text cells starting with ``= + - @``, tab or CR get a leading ``'``. Numbers we
        format ourselves (RSSI such as ``-74``, counts, times) are left as they are: a cell
        that is only a number is not a formula, and prefixing it would break the column.
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_HEADER)
        for r in rows:
            writer.writerow((
                _text(r.id), _text(r.manufacturer), f"{r.device_type:02X}", _text(r.device_type_name),
                _text(r.verdict), r.count, _num(r.rssi_last), _num(r.rssi_min), _num(r.rssi_avg),
                _num(r.rssi_max), _text(r.mode or ""), _iso(r.first_seen), _iso(r.last_seen),
            ))
        return out.getvalue()

    def dump(self) -> bytes:
        """The whole analyzer state as JSON bytes, for saving with the gateway state."""
        with self._lock:
            meters = [self._columns.dump(key, i) for key, i in self._meters.items()]
            state = {
                "version": _DUMP_VERSION, "running_since": self._since, "telegrams_ok": self._ok,
                "broken": self._broken, "untracked": self._untracked, "long_form": self._long_form,
                "meters": meters,
            }
        return json.dumps(state, separators=(",", ":")).encode()

    def load(self, data: bytes) -> None:
        """Replace the state with a ``dump()``; raises ValueError (state unchanged) if it is malformed."""
        try:
            state = json.loads(data)
            if state.get("version") != _DUMP_VERSION:
                raise ValueError(f"unsupported analyzer dump version {state.get('version')!r}")
            since = float(state["running_since"])
            ok = int(state["telegrams_ok"])
            broken = {str(k): int(v) for k, v in dict(state["broken"]).items()}
            untracked = int(state["untracked"])
            long_form = int(state.get("long_form", 0))  # absent in dumps of older versions
            meters: dict[bytes, int] = {}
            c = _Columns()
            for entry in state["meters"]:
                (key_hex, ident, letters, device_type, verdict, count, last, low, high, total, n, mode, first,
                 seen) = entry
                key = bytes.fromhex(key_hex)
                names = (str(ident), str(letters), int(device_type))
                fields = (str(verdict), int(count), _opt_rssi(last), _opt_rssi(low), _opt_rssi(high), int(total),
                          int(n), None if mode is None else str(mode), float(first), float(seen))
                if len(meters) >= self.max_meters:
                    continue
                i = meters.get(key)
                if i is None:  # a repeated key replaces the earlier entry, as a dict store does
                    i = meters[key] = c.add(fields[0], fields[8])
                (c.verdict[i], c.count[i], c.rssi_last[i], c.rssi_min[i], c.rssi_max[i], c.rssi_sum[i],
                 c.rssi_n[i], c.mode[i], c.first_seen[i], c.last_seen[i]) = fields
                c.names.pop(key, None)
                if names != c.names_of(key):
                    c.names[key] = names
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise ValueError(f"analyzer state is malformed ({exc}); keeping the current one") from exc
        with self._lock:
            self._meters, self._columns, self._since, self._ok = meters, c, since, ok
            self._broken, self._untracked, self._long_form = broken, untracked, long_form


def _opt_rssi(value: object) -> int:
    return _NO_RSSI if value is None else int(value)  # type: ignore[call-overload]


def _text(value: str) -> str:
    """A text cell a spreadsheet will not evaluate."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _num(value: float | None) -> str:
    return "" if value is None else str(value)


def _iso(t: float) -> str:
    """UTC time as ISO 8601 with a Z (the CSV is for machines and people in any zone)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
