"""CMeX50-style receiver: wired M-Bus long frames ``68 L L 68 C A CI ... CS 16`` (spec section 2).

Strategy: the binary engine scans for 0x68. A candidate is plausible when its header is
consistent (``68 L L 68`` with L >= 3, room for C, A and CI); it is then validated by
``wire.parse_cmex50``. A failed checksum or stop byte means the boundaries cannot be
trusted: the frame is reported broken and the scan resumes after its first 0x68. A frame
whose checksum is right but whose records are not a receiver frame (no container, wrong
C/CI) is reported broken and skipped as a whole.

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

from .. import wire
from ..errors import ChecksumError, FrameError, LengthError
from ._engine import BinaryFramer, Decoded
from ._settings import check_setting
from .base import Received

__all__ = ["Cmex50Framer", "encode", "wrap", "rssi_dbm"]

START = 0x68
STOP = 0x16
MIN_LENGTH = 3  # C, A, CI: the least a long frame holds


def rssi_dbm(code: int | None) -> int | None:
    """dBm of a CMeX50 RSSI code: 0 (or no record) unknown, 1..62 -> 2*code-130, 63 -> -6."""
    if not code:
        return None
    if code >= 63:
        return -6
    return 2 * code - 130


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


class Cmex50Framer(BinaryFramer):
    """Frames wired M-Bus long frames that carry a wireless telegram in a container record."""

    name = "cmex50"
    START = START
    MAX_FRAME = 255 + 6

    def __init__(self, *, receiver_address: str | None = None, radio_mode: str | None = None) -> None:
        super().__init__()
        self.receiver_address = receiver_address
        # Kept for a uniform constructor; this receiver does not report per-frame modes.
        self.radio_mode = radio_mode

    def setup_commands(self, radio_mode_setting: str) -> bytes:
        """Nothing to send: the receiver is configured on its own."""
        check_setting(radio_mode_setting)
        return b""

    def _measure(self, buf: bytearray, pos: int) -> int:
        have = len(buf) - pos
        if have >= 3 and buf[pos + 1] != buf[pos + 2]:
            return -1
        if have >= 2 and buf[pos + 1] < MIN_LENGTH:
            return -1
        if have < 4:
            return 0
        if buf[pos + 3] != START:
            return -1
        return buf[pos + 1] + 6

    def _decode(self, frame: bytes) -> Decoded:
        try:
            body, address, _age, code, telegram = wire.parse_cmex50(frame)
        except ChecksumError as exc:
            return Received(b"", 0, error=f"cmex50: {exc}"), False
        except FrameError as exc:
            return Received(b"", 0, error=f"cmex50: {exc}"), True
        if len(telegram) > wire.CONTAINER_MAX:
            body = _long_form(body, telegram)
        # Positional on purpose: this runs once per telegram.
        address = address if address is not None else self.receiver_address
        return Received(telegram, wire.FORMAT_NONE, rssi_dbm(code), 0, address, body), True


def _long_form(body: bytes, telegram: bytes) -> bytes:
    """``body`` with its container record (and fill byte) replaced by the 0F long form."""
    start = body.rfind(b"\x0d\xfd\x3b" + bytes((len(telegram),)) + telegram)
    return body if start < 0 else body[:start] + bytes((wire.LONG_FORM,)) + telegram
