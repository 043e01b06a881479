"""Pure-Python twin of ``ext/_cwire.pyx``: the readable specification of the hot path.

Every function here has a compiled twin with the same name, arguments, results and error
types and messages; ``tests/unit/test_twins.py`` holds them to that. Each checks its arguments
against ``wire.domain`` first (the domain both twins share), then reads the bytes. Telegrams
are ``bytes`` from the L-field with link CRCs removed (L = number of bytes after L). Nothing
here does IO.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import ChecksumError, CrcError, HeaderError, LengthError
from . import domain
from .domain import (
    CONTAINER_MAX,
    CRC,
    Data,
    FILTER_DEVICE_TYPE,
    FILTER_ID,
    FILTER_MANUFACTURER,
    FILTER_MODE,
    FORMAT_A,
    FORMAT_B,
    FORMAT_NONE,
    HEADER,
    LENGTH,
    LONG_FORM,
    MANUFACTURER_MASK,
    OK,
)

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
    "OK", "CRC", "LENGTH", "HEADER", "FILTER_MANUFACTURER", "FILTER_DEVICE_TYPE", "FILTER_ID",
    "FILTER_MODE", "FORMAT_NONE", "FORMAT_A", "FORMAT_B", "MANUFACTURER_MASK", "CONTAINER_MAX",
    "LONG_FORM",
]


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x3D65) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _make_table()


def _crc(data: bytes, start: int, end: int) -> int:
    crc = 0
    table = _TABLE
    for i in range(start, end):
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ data[i]]
    return crc ^ 0xFFFF


def crc16(data: Data, start: int = 0, end: int | None = None) -> int:
    """CRC-16/EN-13757 (poly 0x3D65, init 0, final complement) of ``data[start:end]``, 0 <= start <= end <= len."""
    checked = domain.data(data)
    first, last = domain.crc_range(start, end, len(checked))
    return _crc(checked, first, last)


def _crc_ok(frame: bytes, start: int, end: int) -> bool:
    return _crc(frame, start, end) == (frame[end] << 8 | frame[end + 1])


def strip_a(frame: Data) -> bytes:
    """Check every CRC of a frame-format-A frame and return the telegram without them."""
    frame = domain.data(frame, "frame")
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


def strip_b(frame: Data) -> bytes:
    """Check the CRCs of a frame-format-B frame; return the telegram with L in format-A meaning."""
    frame = domain.data(frame, "frame")
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


def check_telegram(telegram: Data) -> bytes:
    """Check the L-field of a telegram without link CRCs; return it (as ``bytes``)."""
    telegram = domain.data(telegram, "telegram")
    n = len(telegram)
    if n < 11:
        raise LengthError(f"telegram of {n} bytes is shorter than 11 (L, link header, CI)")
    if telegram[0] != n - 1:
        raise LengthError(f"telegram has {n} bytes but L-field {telegram[0]} needs {telegram[0] + 1}")
    return telegram


def _require_header(telegram: bytes) -> None:
    if len(telegram) < 11:
        raise LengthError(f"telegram of {len(telegram)} bytes is shorter than 11 (L, link header, CI)")


def parse_header(telegram: Data) -> tuple[int, int, str, int, int, int]:
    """Link header of a checked telegram: (C, 15-bit manufacturer code, ID, version, device type, CI)."""
    telegram = domain.data(telegram, "telegram")
    _require_header(telegram)
    ident = telegram[7:3:-1].hex().upper()
    manufacturer = (telegram[2] | telegram[3] << 8) & MANUFACTURER_MASK
    return (telegram[1], manufacturer, ident, telegram[8], telegram[9], telegram[10])


def parse_cmex50(frame: Data) -> tuple[bytes, str | None, int | None, int | None, bytes]:
    """Check a wired M-Bus long frame from a CMeX50-style receiver.

    Returns (body from C to the last data byte, receiver address or None, age in minutes or
    None, RSSI code or None, the wireless telegram of its 0D FD 3B container or 0F long form).
    """
    frame = domain.data(frame, "frame")
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
    address: str | None = None
    age: int | None = None
    rssi: int | None = None
    pos = 15
    end = len(body)
    while pos < end:
        if body[pos] == 0x0C and pos + 6 <= end and body[pos + 1] == 0x78:
            address = body[pos + 5 : pos + 1 : -1].hex().upper()
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
    dbm = domain.rssi(rssi_dbm)
    if dbm is None:
        return 0
    if dbm > -6:
        return 63
    if dbm <= -128:
        return 1
    return (dbm + 131) // 2


def build_report(
    telegram: Data, receiver_address: str | None, rssi_dbm: int | None, wired_address: int
) -> bytes:
    """The wired RSP_UD telegram of the report (spec section 5) for a checked wireless telegram.

    ``receiver_address`` is 8 digits or None, ``wired_address`` 0..255. Telegrams longer than
    CONTAINER_MAX bytes follow LONG_FORM instead of a container record.
    """
    telegram = domain.data(telegram, "telegram")
    address = domain.receiver_address(receiver_address)
    code = rssi_code(rssi_dbm)
    wired = domain.integer(wired_address, "wired_address", 0, domain.WIRED_ADDRESS_MAX)
    n = len(telegram)
    if n < 11 or n > 255:
        raise LengthError(f"telegram of {n} bytes does not fit the container (11..255)")
    out = bytearray((0x08, wired, 0x72))
    out += telegram[4:8] + telegram[2:4] + telegram[8:10]
    out += b"\x00\x00\x00\x00"
    if address is not None:
        out += b"\x0c\x78" + address
    out += bytes((0x01, 0xFD, 0x71, code))
    out += bytes((0x0D, 0xFD, 0x3B, n)) if n <= CONTAINER_MAX else bytes((LONG_FORM,))
    out += telegram
    return bytes(out)


class Matcher:
    """The four filters of spec section 4 compiled to integer sets; empty means no filter.

    ``manufacturers`` holds 15-bit manufacturer codes (0..MANUFACTURER_MASK), ``device_types``
    bytes, ``ids`` the 4 ID bytes read little-endian, ``modes`` a radio-mode mask (0..MODE_MASK).
    """

    __slots__ = ("_manufacturers", "_device_types", "_ids", "_modes")

    def __init__(self, manufacturers: Iterable[int], device_types: Iterable[int], ids: Iterable[int], modes: int):
        self._manufacturers = domain.codes(manufacturers, "manufacturers", MANUFACTURER_MASK)
        self._device_types = domain.codes(device_types, "device_types", domain.DEVICE_TYPE_MAX)
        self._ids = domain.codes(ids, "ids", domain.ID_MAX)
        self._modes = domain.integer(modes, "modes", 0, domain.MODE_MASK)

    @property
    def manufacturers(self) -> frozenset[int]:
        return self._manufacturers

    @property
    def device_types(self) -> frozenset[int]:
        return self._device_types

    @property
    def ids(self) -> frozenset[int]:
        return self._ids

    @property
    def modes(self) -> int:
        return self._modes

    def __repr__(self) -> str:
        return (f"Matcher(manufacturers={set(self.manufacturers)!r}, device_types={set(self.device_types)!r}, "
                f"ids={len(self.ids)} ids, modes={self.modes!r})")

    def __reduce__(self) -> tuple[type[Matcher], tuple[frozenset[int], frozenset[int], frozenset[int], int]]:
        return (Matcher, (self.manufacturers, self.device_types, self.ids, self.modes))

    def verdict(self, telegram: Data, mode: int) -> int:
        """0 when accepted, else the result code of the first filter that rejects."""
        checked = domain.data(telegram, "telegram")
        mask = domain.integer(mode, "mode", 0, domain.MODE_MASK)
        _require_header(checked)
        return self._verdict(checked, mask)

    def _verdict(self, telegram: bytes, mode: int) -> int:
        if self._manufacturers and ((telegram[2] | telegram[3] << 8) & MANUFACTURER_MASK) not in self._manufacturers:
            return FILTER_MANUFACTURER
        if self._device_types and telegram[9] not in self._device_types:
            return FILTER_DEVICE_TYPE
        if self._ids and int.from_bytes(telegram[4:8], "little") not in self._ids:
            return FILTER_ID
        if self._modes and mode and not (mode & self._modes):
            return FILTER_MODE
        return OK


def check_batch(
    frames: Sequence[Data], frame_format: int, matcher: Matcher, mode: int = 0
) -> tuple[bytes, list[bytes | None]]:
    """Check and filter a sequence of frames of one FORMAT_*; result codes and the accepted telegrams."""
    batch = domain.frames(frames)
    strip = (check_telegram, strip_a, strip_b)[domain.integer(frame_format, "frame_format", FORMAT_NONE, FORMAT_B)]
    verdict_of = domain.matcher(matcher, Matcher)._verdict
    mask = domain.integer(mode, "mode", 0, domain.MODE_MASK)
    codes = bytearray(len(batch))
    telegrams: list[bytes | None] = [None] * len(batch)
    for i, frame in enumerate(batch):
        data = frame if type(frame) is bytes else domain.data(frame, f"frames[{i}]")
        try:
            telegram = strip(data)
        except CrcError:
            codes[i] = CRC
            continue
        except LengthError:
            codes[i] = LENGTH
            continue
        verdict = verdict_of(telegram, mask)
        codes[i] = verdict
        if not verdict:
            telegrams[i] = telegram
    return bytes(codes), telegrams
