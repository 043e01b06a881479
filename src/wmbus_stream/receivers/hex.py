"""The ``hex`` receiver: one telegram a line, for replays and tests.

Line: hex digits (spaces between them allowed, an optional ``0x`` prefix), optionally
followed by ``;<rssi dBm>`` (an integer from -200 to 50), e.g. ``2E4493...EC8A;-74``.
The telegram may be an on-air frame with link CRCs (format A or B) or CRC-less; the check
stage decides with ``wire.frame.strip_any`` (``FORMAT_AUTO``).

Strategy: the line engine splits lines (bounded, ``\\r\\n`` tolerated); blank lines and
``#`` comment lines are ignored. Every other line is meant as a frame, so text that is not
hex, an odd digit count or a bad RSSI gives a broken frame (``data`` empty, ``error`` says
why) rather than skipped bytes. Only lines longer than ``MAX_LINE`` are skipped.
"""

from __future__ import annotations

from ..core.received import FORMAT_AUTO, Received
from ._engine import LineFramer
from ._settings import check_setting

__all__ = ["HexFramer", "encode"]

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
RSSI_RANGE = range(-200, 51)  # dBm a receiver can report, with room: beyond it the number is no RSSI


def encode(frame: bytes, *, rssi_dbm: int | None = None) -> bytes:
    """The line for a frame (with or without link CRCs) and an optional RSSI."""
    suffix = "" if rssi_dbm is None else f";{rssi_dbm}"
    return f"{frame.hex().upper()}{suffix}\n".encode("ascii")


class HexFramer(LineFramer):
    """Frames hex lines; the frame format is left to the check stage."""

    name = "hex"
    # The longest on-air frame is 290 bytes: with a space between bytes, 870 characters.
    MAX_LINE = 1024

    def __init__(self, *, receiver_address: str | None = None, radio_mode: str | None = None) -> None:
        super().__init__()
        self.receiver_address = receiver_address
        # Kept for a uniform constructor; a capture has no radio to set.
        self.radio_mode = radio_mode

    def setup_commands(self, radio_mode_setting: str) -> bytes:
        """Nothing to send: a capture cannot be configured."""
        check_setting(radio_mode_setting)
        return b""

    def _parse(self, text: str) -> list[Received]:
        digits, sep, rssi_text = text.partition(";")
        rssi = None
        if sep:
            try:
                rssi = int(rssi_text.strip())
            except ValueError:
                return [self._broken(f"hex: RSSI {rssi_text.strip()!r} is not an integer dBm")]
            if rssi not in RSSI_RANGE:
                return [self._broken(f"hex: RSSI {rssi} dBm is out of range (allowed: {RSSI_RANGE.start}"
                                     f" to {RSSI_RANGE.stop - 1})")]
        digits = "".join(digits.split())
        if digits[:2].lower() == "0x":
            digits = digits[2:]
        if not digits:
            return [self._broken("hex: line has no hex digits")]
        if not _HEX_DIGITS.issuperset(digits):
            bad = next(c for c in digits if c not in _HEX_DIGITS)
            return [self._broken(f"hex: {bad!r} is not a hex digit (allowed: 0-9 A-F, spaces, an optional"
                                 " ';rssi_dbm' at the end)")]
        if len(digits) % 2:
            return [self._broken(f"hex: odd number of hex digits ({len(digits)})")]
        return [Received(bytes.fromhex(digits), FORMAT_AUTO, rssi_dbm=rssi, receiver_address=self.receiver_address)]

    def _broken(self, error: str) -> Received:
        return Received(b"", FORMAT_AUTO, receiver_address=self.receiver_address, error=error)
