"""The telegram check stage: a received frame becomes a checked telegram or a FrameError.

Shared by the pipeline and ``wmbus-stream decode`` so both judge a frame the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import wire
from ..errors import FrameError
from ..receivers.base import FORMAT_AUTO, Received
from ..wire.frame import strip_any
from ..wire.header import Header, header
from ..wire.modes import mode_name

__all__ = ["Checked", "check", "FORMAT_NAMES"]

FORMAT_NAMES = {wire.FORMAT_NONE: None, wire.FORMAT_A: "A", wire.FORMAT_B: "B"}
_STRIP = {wire.FORMAT_NONE: wire.check_telegram, wire.FORMAT_A: wire.strip_a, wire.FORMAT_B: wire.strip_b}


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
        return wire.build_report(self.telegram, r.receiver_address or receiver_address, r.rssi_dbm, wired_address)

    def as_json(self, receiver_address: str | None, wired_address: int) -> dict:
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


def check(received: Received) -> Checked:
    """Check a received frame; raises a FrameError subclass naming what was wrong."""
    if received.error is not None:
        raise FrameError(received.error)
    if received.frame_format == FORMAT_AUTO:
        telegram, fmt = strip_any(received.data)
    else:
        fmt = received.frame_format
        telegram = _STRIP[fmt](received.data)
    return Checked(telegram, fmt, received)


def broken_json(error: FrameError | str) -> dict:
    """The ``decode`` command's JSON object for a frame that did not pass."""
    keys = ("c", "manufacturer", "id", "version", "device_type", "device_type_name", "ci",
            "frame_format", "rssi_dbm", "mode", "telegram", "report_telegram")
    return {"ok": False, "error": str(error), **dict.fromkeys(keys)}
