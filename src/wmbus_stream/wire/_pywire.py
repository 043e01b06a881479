"""Pure-Python twin of ``ext/_cwire.pyx``: the readable specification of the hot path.

Every function here has a compiled twin with the same name, arguments, results and error
types; ``tests/unit/test_twins.py`` holds them to that. Telegrams are ``bytes`` from the
L-field with link CRCs removed (L = number of bytes after L). Nothing here does IO.
"""

from __future__ import annotations

from ..errors import ChecksumError, CrcError, HeaderError, LengthError

__all__ = [
    "crc16",
    "strip_a",
    "strip_b",
    "check_telegram",
    "parse_header",
    "parse_cmex50",
    "rssi_code",
    "build_report",
    "Matcher",
    "check_batch",
]

# Result codes of check_batch and Matcher.verdict (names in wire.RESULT_NAMES).
OK, CRC, LENGTH, HEADER = 0, 1, 2, 3
FILTER_MANUFACTURER, FILTER_DEVICE_TYPE, FILTER_ID, FILTER_MODE = 4, 5, 6, 7
FORMAT_NONE, FORMAT_A, FORMAT_B = 0, 1, 2

# The manufacturer code is the low 15 bits of the M-field: three letters of 5 bits each
# (EN 13757-3, FLAG). Bit 15 is not part of it (M-Bus stacks read it as "locally, not
# globally, unique address"): letters, filters and comparisons all use this one definition,
# while the telegram, the store key and the report keep the M-field byte for byte.
MANUFACTURER_MASK = 0x7FFF

# The report carries a telegram of up to CONTAINER_MAX bytes in a ``0D FD 3B n`` container;
# a length byte of 0xC0 or more means BCD, binary or float to EN 13757-3 parsers, not a
# length. A longer telegram follows LONG_FORM instead (DIF 0F: manufacturer-specific data to
# the end), its own L-field giving its length.
CONTAINER_MAX = 0xBF
LONG_FORM = 0x0F


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x3D65) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _make_table()


def crc16(data: bytes, start: int = 0, end: int = -1) -> int:
    """CRC-16/EN-13757 (poly 0x3D65, init 0, final complement) of ``data[start:end]``."""
    if end < 0:
        end = len(data)
    crc = 0
    table = _TABLE
    for i in range(start, end):
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ data[i]]
    return crc ^ 0xFFFF


def _crc_ok(frame: bytes, start: int, end: int) -> bool:
    return crc16(frame, start, end) == (frame[end] << 8 | frame[end + 1])


def strip_a(frame: bytes) -> bytes:
    """Check every CRC of a frame-format-A frame and return the telegram without them."""
    n = len(frame)
    if n < 12:
        raise LengthError(f"format A frame of {n} bytes is shorter than the 12-byte first block")
    length = frame[0]
    if length < 10:
        raise LengthError(f"L-field {length} is below 10 (link header + CI)")
    expected = 1 + length + 2 * (1 + (length - 9 + 15) // 16)
    if n != expected:
        raise LengthError(f"format A frame has {n} bytes but L-field {length} needs {expected}")
    if not _crc_ok(frame, 0, 10):
        raise CrcError("CRC error in block 1 (format A)")
    out = bytearray(frame[0:10])
    pos, block, remaining = 12, 2, length - 9
    while remaining > 0:
        size = 16 if remaining > 16 else remaining
        if not _crc_ok(frame, pos, pos + size):
            raise CrcError(f"CRC error in block {block} (format A)")
        out += frame[pos : pos + size]
        pos += size + 2
        remaining -= size
        block += 1
    return bytes(out)


def strip_b(frame: bytes) -> bytes:
    """Check the CRCs of a frame-format-B frame; return the telegram with L in format-A meaning."""
    n = len(frame)
    if n < 13:
        raise LengthError(f"format B frame of {n} bytes is shorter than 13 (header, CI, CRC)")
    if frame[0] != n - 1:
        raise LengthError(f"format B frame has {n} bytes but L-field {frame[0]} needs {frame[0] + 1}")
    if n <= 128:
        if not _crc_ok(frame, 0, n - 2):
            raise CrcError("CRC error in block 2 (format B, blocks 1-2)")
        out = bytearray(frame[0 : n - 2])
    else:
        if n < 131:
            raise LengthError(f"format B frame of {n} bytes leaves an empty block 3")
        if not _crc_ok(frame, 0, 126):
            raise CrcError("CRC error in block 2 (format B, blocks 1-2)")
        if not _crc_ok(frame, 128, n - 2):
            raise CrcError("CRC error in block 3 (format B)")
        out = bytearray(frame[0:126]) + frame[128 : n - 2]
    out[0] = len(out) - 1
    return bytes(out)


def check_telegram(telegram: bytes) -> bytes:
    """Check the L-field of a telegram without link CRCs; return it unchanged."""
    n = len(telegram)
    if n < 11:
        raise LengthError(f"telegram of {n} bytes is shorter than 11 (L, link header, CI)")
    if telegram[0] != n - 1:
        raise LengthError(f"telegram has {n} bytes but L-field {telegram[0]} needs {telegram[0] + 1}")
    return telegram


def parse_header(telegram: bytes) -> tuple[int, int, str, int, int, int]:
    """Link header of a checked telegram: (C, 15-bit manufacturer code, ID, version, device type, CI)."""
    if len(telegram) < 11:
        raise LengthError(f"telegram of {len(telegram)} bytes is shorter than 11 (L, link header, CI)")
    ident = "%02X%02X%02X%02X" % (telegram[7], telegram[6], telegram[5], telegram[4])
    manufacturer = (telegram[2] | telegram[3] << 8) & MANUFACTURER_MASK
    return (telegram[1], manufacturer, ident, telegram[8], telegram[9], telegram[10])


def parse_cmex50(frame: bytes) -> tuple[bytes, str | None, int | None, int | None, bytes]:
    """Check a wired M-Bus long frame from a CMeX50-style receiver.

    Returns (body from C to the last data byte, receiver address or None, age in minutes or
    None, RSSI code or None, the wireless telegram of its 0D FD 3B container or 0F long form).
    """
    n = len(frame)
    if n < 9 or frame[0] != 0x68 or frame[3] != 0x68 or frame[1] != frame[2]:
        raise LengthError("not a wired M-Bus long frame (68 L L 68)")
    length = frame[1]
    if n != length + 6:
        raise LengthError(f"long frame has {n} bytes but L-field {length} needs {length + 6}")
    if frame[n - 1] != 0x16:
        raise ChecksumError(f"long frame ends with 0x{frame[n - 1]:02X}, not the stop byte 0x16")
    if sum(frame[4 : n - 2]) & 0xFF != frame[n - 2]:
        raise ChecksumError(f"long frame checksum 0x{frame[n - 2]:02X} is wrong")
    body = frame[4 : n - 2]
    if body[0] != 0x08 or body[2] != 0x72:
        raise HeaderError(f"long frame is C=0x{body[0]:02X} CI=0x{body[2]:02X}, not RSP_UD 08/72")
    if len(body) < 15:
        raise LengthError(f"RSP_UD body of {len(body)} bytes is shorter than its 15-byte header")
    address = age = rssi = None
    pos = 15
    end = len(body)
    while pos < end:
        if body[pos] == 0x0C and pos + 6 <= end and body[pos + 1] == 0x78:
            address = "%02X%02X%02X%02X" % (body[pos + 5], body[pos + 4], body[pos + 3], body[pos + 2])
            pos += 6
        elif body[pos] == 0x02 and pos + 4 <= end and body[pos + 1] == 0x75:
            age = body[pos + 2] | body[pos + 3] << 8
            pos += 4
        elif body[pos] == 0x01 and pos + 4 <= end and body[pos + 1] == 0xFD and body[pos + 2] == 0x71:
            rssi = body[pos + 3]
            pos += 4
        elif body[pos] == 0x0D and pos + 4 <= end and body[pos + 1] == 0xFD and body[pos + 2] == 0x3B:
            size = body[pos + 3]
            if pos + 4 + size > end:
                raise LengthError(f"container of {size} bytes runs past the frame end")
            telegram = body[pos + 4 : pos + 4 + size]
            rest = body[pos + 4 + size :]
            if rest and rest not in (b"\x0f", b"\x1f"):
                raise HeaderError(f"{len(rest)} unexpected bytes after the container record")
            break
        elif body[pos] == LONG_FORM:
            telegram = body[pos + 1 :]
            break
        else:
            raise HeaderError(
                f"unexpected record 0x{body[pos]:02X} at offset {pos}; expected 0C78, 0275, 01FD71, 0DFD3B or 0F"
            )
    else:
        raise HeaderError("long frame has no 0D FD 3B container or 0F long-form record")
    check_telegram(telegram)
    if telegram[2:10] != body[7:9] + body[3:7] + body[9:11]:
        raise HeaderError("container telegram's address does not match the wired header")
    return body, address, age, rssi, telegram


def rssi_code(rssi_dbm: int | None) -> int:
    """CMeX50 RSSI code: 0 unknown, 1..62 for dBm = 2*code - 130, 63 above -6 dBm."""
    if rssi_dbm is None:
        return 0
    if rssi_dbm > -6:
        return 63
    if rssi_dbm <= -128:
        return 1
    return (rssi_dbm + 131) // 2


def build_report(telegram: bytes, receiver_address: str | None, rssi_dbm: int | None, wired_address: int) -> bytes:
    """The wired RSP_UD telegram of the report (spec section 5) for a checked wireless telegram.

    Telegrams longer than CONTAINER_MAX bytes follow LONG_FORM instead of a container record.
    """
    n = len(telegram)
    if n < 11 or n > 255:
        raise LengthError(f"telegram of {n} bytes does not fit the container (11..255)")
    out = bytearray((0x08, wired_address & 0xFF, 0x72))
    out += telegram[4:8] + telegram[2:4] + telegram[8:10]
    out += b"\x00\x00\x00\x00"
    if receiver_address is not None:
        out += b"\x0c\x78" + bytes.fromhex(receiver_address)[::-1]
    out += bytes((0x01, 0xFD, 0x71, rssi_code(rssi_dbm)))
    out += bytes((0x0D, 0xFD, 0x3B, n)) if n <= CONTAINER_MAX else bytes((LONG_FORM,))
    out += telegram
    return bytes(out)


class Matcher:
    """The four filters of spec section 4 compiled to integer sets; empty means no filter.

    ``manufacturers`` holds 15-bit manufacturer codes (``MANUFACTURER_MASK``).
    """

    __slots__ = ("manufacturers", "device_types", "ids", "modes")

    def __init__(self, manufacturers: frozenset[int], device_types: frozenset[int], ids: frozenset[int], modes: int):
        self.manufacturers = frozenset(manufacturers)
        self.device_types = frozenset(device_types)
        self.ids = frozenset(ids)
        self.modes = modes

    def verdict(self, telegram: bytes, mode: int) -> int:
        """0 when accepted, else the result code of the first filter that rejects."""
        if self.manufacturers and ((telegram[2] | telegram[3] << 8) & MANUFACTURER_MASK) not in self.manufacturers:
            return FILTER_MANUFACTURER
        if self.device_types and telegram[9] not in self.device_types:
            return FILTER_DEVICE_TYPE
        if self.ids and int.from_bytes(telegram[4:8], "little") not in self.ids:
            return FILTER_ID
        if self.modes and mode and not (mode & self.modes):
            return FILTER_MODE
        return OK


def check_batch(frames: list[bytes], frame_format: int, matcher: Matcher, mode: int = 0) -> tuple[bytes, list[bytes | None]]:
    """Check and filter many frames of one format; result codes and the accepted telegrams."""
    codes = bytearray(len(frames))
    telegrams: list[bytes | None] = [None] * len(frames)
    strip = (check_telegram, strip_a, strip_b)[frame_format]
    for i, frame in enumerate(frames):
        try:
            telegram = strip(frame)
        except CrcError:
            codes[i] = CRC
            continue
        except LengthError:
            codes[i] = LENGTH
            continue
        verdict = matcher.verdict(telegram, mode)
        codes[i] = verdict
        if not verdict:
            telegrams[i] = telegram
    return bytes(codes), telegrams
