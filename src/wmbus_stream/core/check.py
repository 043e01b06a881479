"""The telegram check stage: received frames become checked telegrams, filter verdicts and report telegrams.

One stage for the daemon, ``replay`` and ``decode``. ``check`` judges one frame (``decode``
prints it); ``check_all`` judges a read chunk's frames under the filters and gives the
``Batch`` the pipeline stores. A framer whose compiled scanner frames, checks and filters a
chunk in one call (``cmex50``, ``wire.Cmex50Scanner``) gives the same ``Batch`` itself;
``tests/unit/test_stream.py`` holds the two ways to the same result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import wire
from ..errors import FrameError
from ..wire.frame import strip_any
from ..wire.header import Header, header
from ..wire.modes import mode_name
from .received import FORMAT_AUTO, Received

__all__ = ["Batch", "Checked", "Record", "Settings", "VERDICTS", "FORMAT_NAMES", "broken_json", "check", "check_all"]

FORMAT_NAMES = {wire.FORMAT_NONE: None, wire.FORMAT_A: "A", wire.FORMAT_B: "B"}
_STRIP = {wire.FORMAT_NONE: wire.check_telegram, wire.FORMAT_A: wire.strip_a, wire.FORMAT_B: wire.strip_b}
VERDICTS = ("Accepted",) + wire.RESULT_NAMES[1:]  # the analyzer's name of each verdict code

# One checked telegram: (link address key, meter ID, device type, verdict name, RSSI dBm,
# mode name, report telegram, or None when a filter rejected it).
Record = tuple[bytes, str, int, str, int | None, str | None, bytes | None]


class Batch(NamedTuple):
    """What a read chunk gave: checked telegrams in order, broken frames, counts per verdict code."""

    records: list[Record]
    broken: list[str]  # the error kind of each broken frame
    results: list[int]  # telegrams per verdict code (wire.RESULT_NAMES)
    long_form: int  # accepted telegrams longer than wire.CONTAINER_MAX (the report's 0F long form)


class Settings:
    """What the check stage needs from the configuration, swapped atomically on reload."""

    __slots__ = ("matcher", "receiver_address", "wired_address")

    def __init__(self, matcher: wire.Matcher, receiver_address: str | None, wired_address: int) -> None:
        self.matcher = matcher
        self.receiver_address = receiver_address
        self.wired_address = wired_address


@dataclass(frozen=True, slots=True)
class Checked:
    """A telegram that passed the link-layer check, with what the receiver told about it."""

    telegram: bytes
    frame_format: int
    received: Received

    @property
    def header(self) -> Header:
        return header(self.telegram)

    def report_telegram(self, receiver_address: str | None, wired_address: int) -> bytes:
        """The wired telegram of the report: a cmex50 frame's own bytes, else built (spec 5)."""
        r = self.received
        if r.wired is not None:
            return r.wired
        report: bytes = wire.build_report(self.telegram, r.receiver_address or receiver_address, r.rssi_dbm,
                                          wired_address)
        return report

    def as_json(self, receiver_address: str | None, wired_address: int) -> dict[str, Any]:
        """The ``decode`` command's JSON object for this telegram."""
        h = self.header
        r = self.received
        return {
            "ok": True, "error": None, "c": h.c, "manufacturer": h.manufacturer, "id": h.id,
            "version": h.version, "device_type": h.device_type,
            "device_type_name": h.device_type_name, "ci": h.ci,
            "frame_format": FORMAT_NAMES[self.frame_format], "rssi_dbm": r.rssi_dbm,
            "mode": mode_name(r.mode), "telegram": self.telegram.hex().upper(),
            "report_telegram": self.report_telegram(receiver_address, wired_address).hex().upper(),
        }


def _strip(received: Received) -> tuple[bytes, int]:
    """The checked telegram of a frame and its frame format; FrameError when it is broken."""
    if received.error is not None:
        raise FrameError(received.error)
    fmt = received.frame_format
    if fmt == FORMAT_AUTO:
        return strip_any(received.data)
    return _STRIP[fmt](received.data), fmt


def check(received: Received) -> Checked:
    """Check a received frame; raises a FrameError subclass naming what was wrong."""
    telegram, fmt = _strip(received)
    return Checked(telegram, fmt, received)


def check_all(items: Iterable[Received], settings: Settings) -> Batch:
    """Check and filter frames; each is counted once, as a record or as a broken kind."""
    verdict_of = settings.matcher.verdict
    records: list[Record] = []
    broken: list[str] = []
    results = [0] * len(VERDICTS)
    long_form = 0
    for item in items:
        try:
            telegram = _strip(item)[0]
            verdict = verdict_of(telegram, item.mode)
            report = None
            if not verdict:
                report = item.wired
                if report is None:
                    report = wire.build_report(telegram, item.receiver_address or settings.receiver_address,
                                               item.rssi_dbm, settings.wired_address)
        except FrameError as exc:
            broken.append(exc.kind)
            continue
        results[verdict] += 1
        if report is not None and len(telegram) > wire.CONTAINER_MAX:
            long_form += 1
        records.append((telegram[2:10], telegram[7:3:-1].hex().upper(), telegram[9], VERDICTS[verdict],
                        item.rssi_dbm, mode_name(item.mode), report))
    return Batch(records, broken, results, long_form)


def broken_json(error: FrameError | str) -> dict[str, Any]:
    """The ``decode`` command's JSON object for a frame that did not pass."""
    keys = ("c", "manufacturer", "id", "version", "device_type", "device_type_name", "ci",
            "frame_format", "rssi_dbm", "mode", "telegram", "report_telegram")
    return {"ok": False, "error": str(error), **dict.fromkeys(keys)}
