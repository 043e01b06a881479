"""CMeX50-style receiver: wired M-Bus long frames ``68 L L 68 C A CI ... CS 16`` (spec section 2).

The framing, check and filter are the selected twin of ``wire.Cmex50Scanner``
(``ext/_cstream.pyx``, pure ``wire/_pystream.py``), which holds the strategy: scan for 0x68,
validate with ``parse_cmex50``'s rules, resynchronise inside a frame whose checksum or
stop byte fails, consume whole a frame that is not a receiver frame. ``feed`` gives its
frames as ``Received``; ``scan`` gives the pipeline a whole chunk checked and filtered in
one call (the daemon's path).

Each good frame gives the contained wireless telegram (CRC-less, ``FORMAT_NONE``), the RSSI
from the ``01 FD 71`` record (code 0 -> unknown, 63 -> -6 dBm, else 2*code - 130), the
receiver address from ``0C 78`` (else the configured one) and ``wired`` = the frame's own
C..data bytes, which the report forwards unchanged, except that a telegram longer than
``wire.CONTAINER_MAX`` in a ``0D FD 3B`` container moves to the report's ``0F`` long form
(a length byte of 0xC0 or more is not a length to EN 13757-3 parsers). The receiver does
not say which radio mode a telegram came in, so ``mode`` is 0 (unknown, passes every mode
filter).
"""

from __future__ import annotations

from typing import Any

from .. import wire
from ..core.check import VERDICTS, Batch, Settings
from ..core.received import Received
from ..errors import LengthError
from ..wire import MAX_FRAME
from ._settings import check_setting
from .base import FramerStats

__all__ = ["Cmex50Framer", "encode", "wrap"]

START = 0x68
STOP = 0x16


def wrap(body: bytes) -> bytes:
    """A wired long frame around ``body`` (C to the last data byte): start, L, L, start, CS, stop."""
    if not 3 <= len(body) <= 255:
        raise LengthError(f"long frame body of {len(body)} bytes is outside 3..255")
    n = len(body)
    return bytes((START, n, n, START)) + body + bytes((sum(body) & 0xFF, STOP))


def encode(telegram: bytes, *, receiver_address: str | None = None, rssi_dbm: int | None = None,
           wired_address: int = 0) -> bytes:
    """The long frame a CMeX50-style receiver sends for a CRC-less telegram (spec section 5 body)."""
    return wrap(wire.build_report(telegram, receiver_address, rssi_dbm, wired_address))


class Cmex50Framer:
    """Frames wired M-Bus long frames that carry a wireless telegram in a container record."""

    name = "cmex50"
    MAX_FRAME = MAX_FRAME

    def __init__(self, *, receiver_address: str | None = None, radio_mode: str | None = None) -> None:
        self.stats = FramerStats()
        self.receiver_address = receiver_address
        # Kept for a uniform constructor; this receiver does not report per-frame modes.
        self.radio_mode = radio_mode
        self._scanner = wire.Cmex50Scanner(receiver_address)

    @property
    def pending(self) -> bytes:
        """The bytes held while waiting for the rest of a frame."""
        return bytes(self._scanner.pending)

    @property
    def max_pending(self) -> int:
        """Upper bound of ``len(pending)`` between calls: one maximal frame."""
        return self.MAX_FRAME

    def setup_commands(self, radio_mode_setting: str) -> bytes:
        """Nothing to send: the receiver is configured on its own."""
        check_setting(radio_mode_setting)
        return b""

    def feed(self, data: bytes) -> list[Received]:
        """Add bytes from the receiver; return the frames they complete."""
        return self._received(self._scanner.frames(data, False))

    def flush(self) -> list[Received]:
        """End of input: report a cut frame as broken, skip the rest, start empty."""
        return self._received(self._scanner.frames(b"", True))

    def scan(self, data: bytes, final: bool, settings: Settings) -> Batch:
        """Frame, check and filter a read chunk in one call (``final`` ends the stream)."""
        batch = Batch._make(self._scanner.scan(data, final, settings.matcher, VERDICTS))
        self._count()
        return batch

    def _received(self, frames: list[tuple[Any, ...]]) -> list[Received]:
        self._count()
        return list(map(Received._make, frames))

    def _count(self) -> None:
        stats, scanner = self.stats, self._scanner
        stats.frames, stats.bad_frames, stats.skipped_bytes = scanner.frames_out, scanner.bad_frames, scanner.skipped_bytes
