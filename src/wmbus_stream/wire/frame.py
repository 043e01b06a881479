"""Building on-air frames (formats A and B) from telegrams, and telling them apart.

Used by the simulator, the ``hex`` receiver and the tests; the checking side is in the
selected twin (``wire.strip_a`` / ``wire.strip_b``).
"""

from __future__ import annotations

from . import FORMAT_A, FORMAT_B, FORMAT_NONE, crc16, strip_a, strip_b
from ..errors import FrameError, LengthError

__all__ = ["build_a", "build_b", "strip_any"]


def _crc_bytes(data: bytes | bytearray) -> bytes:
    return crc16(data).to_bytes(2, "big")


def build_a(telegram: bytes) -> bytes:
    """The on-air format-A frame of a telegram: a CRC after 10 bytes, then after every 16."""
    if len(telegram) < 11 or telegram[0] != len(telegram) - 1:
        raise LengthError(f"telegram of {len(telegram)} bytes has L-field {telegram[0] if telegram else None}")
    out = bytearray(telegram[:10]) + _crc_bytes(telegram[:10])
    for pos in range(10, len(telegram), 16):
        block = telegram[pos : pos + 16]
        out += block + _crc_bytes(block)
    return bytes(out)


def build_b(telegram: bytes) -> bytes:
    """The on-air format-B frame: L counts the CRCs; one CRC over 126 bytes, one over the rest."""
    n = len(telegram)
    if n < 11 or telegram[0] != n - 1:
        raise LengthError(f"telegram of {n} bytes has L-field {telegram[0] if telegram else None}")
    if n > 252:
        raise LengthError(f"telegram of {n} bytes is too long for format B (at most 252)")
    body = bytearray(telegram)
    if n <= 126:
        body[0] = n + 1
        return bytes(body + _crc_bytes(body))
    body[0] = n + 3
    head, tail = bytes(body[:126]), bytes(body[126:])
    return head + _crc_bytes(head) + tail + _crc_bytes(tail)


def strip_any(data: bytes) -> tuple[bytes, int]:
    """Detect the link-CRC layout of a frame as the ``hex`` receiver defines it.

    A frame of L+1 bytes whose CRCs check as format B is format B; any other frame of L+1
    bytes has no CRCs; any other length must be a valid format-A frame.
    Returns (telegram, FORMAT_*).
    """
    if not data:
        raise LengthError("empty frame")
    if len(data) == data[0] + 1:
        try:
            return strip_b(data), FORMAT_B
        except FrameError:
            from . import check_telegram

            return check_telegram(data), FORMAT_NONE
    return strip_a(data), FORMAT_A
