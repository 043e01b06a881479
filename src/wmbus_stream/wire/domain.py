"""The declared domain of the public wire functions: what both twins accept, how they refuse the rest.

Both twins check their arguments here, so the same input is accepted or refused by both
with the same error: ``TypeError`` for a wrong type, ``ValueError`` for a value outside its
range or enumeration. The pure twin calls these validators on every argument; the compiled
twin accepts the common case in C (exact ``bytes``, a plain ``int`` in range) and calls them
for anything else, so this module is the one definition of the domain.

* bytes-like: ``bytes``, ``bytearray`` or a 1-D C-contiguous ``memoryview`` of 1-byte items;
  results are always ``bytes``.
* integers: ``int`` (not ``bool``) within the range a function states; filter sets: any
  iterable of such ints.

Per public function (ranges inclusive; arguments checked in order, before any byte is read):

=================================================  =============================================
``crc16(data, start=0, end=None)``                 ``0 <= start <= end <= len(data)``; None: to the end
``strip_a``, ``strip_b``, ``parse_cmex50(frame)``  bytes-like
``check_telegram``, ``parse_header(telegram)``     bytes-like
``rssi_code(rssi_dbm)``                            None or any int (the code saturates)
``build_report(telegram, receiver_address,         address None or 8 digits 0-9/A-F; rssi as above;
rssi_dbm, wired_address)``                         ``0..WIRED_ADDRESS_MAX``
``Matcher(manufacturers, device_types, ids,        iterables of ints in ``0..MANUFACTURER_MASK``,
modes)``                                           ``0..DEVICE_TYPE_MAX``, ``0..ID_MAX``; ``0..MODE_MASK``
``Matcher.verdict(telegram, mode)``                ``0..MODE_MASK``
``check_batch(frames, frame_format, matcher,       a sequence of bytes-like; ``FORMAT_NONE..FORMAT_B``;
mode=0)``                                          the same twin's Matcher; ``0..MODE_MASK``
``x25(data)``                                      bytes-like
``crc_loop(frames)``                               a sequence of bytes-like
``rssi_dbm(code)``                                 None or ``0..RSSI_CODE_MAX``
``Cmex50Scanner(receiver_address=None)``           None or 8 digits 0-9/A-F
``Cmex50Scanner.frames(data, final)``              bytes-like; a ``bool``
``Cmex50Scanner.scan(data, final, matcher,         bytes-like; a ``bool``; the same twin's Matcher;
verdicts)``                                        a tuple of one ``str`` per result code
=================================================  =============================================

What the bytes say (a CRC, an L-field, a telegram too short for its header) is not the domain:
those are ``FrameError``s the twins raise themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from string import hexdigits
from typing import TypeAlias, TypeVar

from .modes import C1A, C1B, S1, T1

__all__ = [
    "OK", "CRC", "LENGTH", "HEADER", "FILTER_MANUFACTURER", "FILTER_DEVICE_TYPE", "FILTER_ID",
    "FILTER_MODE", "FORMAT_NONE", "FORMAT_A", "FORMAT_B", "MANUFACTURER_MASK", "DEVICE_TYPE_MAX",
    "ID_MAX", "MODE_MASK", "WIRED_ADDRESS_MAX", "CONTAINER_MAX", "LONG_FORM", "RSSI_CODE_MAX", "MAX_FRAME",
    "Data", "type_name", "data", "integer", "codes", "crc_range", "frames", "matcher", "rssi", "receiver_address",
    "flag", "verdict_names",
]

Data: TypeAlias = bytes | bytearray | memoryview  # what a bytes-like argument may be
M = TypeVar("M")

# Result codes of check_batch and Matcher.verdict (names in wire.RESULT_NAMES).
OK, CRC, LENGTH, HEADER = 0, 1, 2, 3
FILTER_MANUFACTURER, FILTER_DEVICE_TYPE, FILTER_ID, FILTER_MODE = 4, 5, 6, 7

# Frame formats check_batch takes: a telegram without link CRCs, format A, format B.
FORMAT_NONE, FORMAT_A, FORMAT_B = 0, 1, 2

# The manufacturer code is the low 15 bits of the M-field: three letters of 5 bits each
# (EN 13757-3, FLAG). Bit 15 is not part of it (M-Bus stacks read it as "locally, not
# globally, unique address"): letters, filters and comparisons all use this one definition,
# while the telegram, the store key and the report keep the M-field byte for byte.
MANUFACTURER_MASK = 0x7FFF
DEVICE_TYPE_MAX = 0xFF
ID_MAX = 0xFFFFFFFF  # the 4 ID bytes read little-endian (wire.header.id_key)
MODE_MASK = S1 | T1 | C1A | C1B  # every radio-mode bit (wire.modes); 0 is "not reported"
WIRED_ADDRESS_MAX = 0xFF

# The report carries a telegram of up to CONTAINER_MAX bytes in a ``0D FD 3B n`` container;
# a length byte of 0xC0 or more means BCD, binary or float to EN 13757-3 parsers, not a
# length. A longer telegram follows LONG_FORM instead (DIF 0F: manufacturer-specific data to
# the end), its own L-field giving its length.
CONTAINER_MAX = 0xBF
LONG_FORM = 0x0F

RSSI_CODE_MAX = 0xFF  # a CMeX50 RSSI record (01 FD 71) holds its code in one byte
MAX_FRAME = 255 + 6  # the longest wired long frame: 68 L L 68, L bytes (C to data), CS, 16


_HEX_DIGITS = frozenset(hexdigits)


def type_name(value: object) -> str:
    """The name an error message gives for the type of ``value`` (qualified unless built in)."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def data(value: object, name: str = "data") -> bytes:
    """``value`` as ``bytes``: itself, or a copy of a bytearray or a 1-D C-contiguous byte memoryview."""
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, memoryview):
        if value.ndim == 1 and value.itemsize == 1 and value.c_contiguous:
            return value.tobytes()
        raise TypeError(
            f"{name} must be a 1-D C-contiguous memoryview of 1-byte items, not one with ndim={value.ndim},"
            f" itemsize={value.itemsize}, c_contiguous={value.c_contiguous}"
        )
    raise TypeError(f"{name} must be bytes, bytearray or memoryview, not {type_name(value)}")


def integer(value: object, name: str, low: int, high: int) -> int:
    """``value`` as an ``int`` in ``low..high``; a ``bool`` or any other type is a TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type_name(value)}")
    number = int(value)  # an int subclass (IntEnum, say) becomes a plain int
    if not low <= number <= high:
        raise ValueError(f"{name} is {number}, outside {low}..{high}")
    return number


def codes(values: Iterable[object], name: str, high: int) -> frozenset[int]:
    """A filter set: every item an ``int`` in ``0..high``; empty means no filter."""
    return frozenset(integer(value, f"an item of {name}", 0, high) for value in values)


def crc_range(start: object, end: object, size: int) -> tuple[int, int]:
    """``(start, end)`` with ``0 <= start <= end <= size``; ``end=None`` is ``size``."""
    first = integer(start, "start", 0, size)
    return first, size if end is None else integer(end, "end", first, size)


def frames(value: object) -> Sequence[object]:
    """A batch of frames: any sequence (a list, a tuple), its items checked one by one as data."""
    if type(value) is list or type(value) is tuple:
        return value
    if not isinstance(value, Sequence):
        raise TypeError(f"frames must be a sequence such as a list, not {type_name(value)}")
    return tuple(value)  # one length and one order for both twins, whatever the sequence does


def matcher(value: object, kind: type[M]) -> M:
    """``value`` when it is a ``kind``: the calling twin's own Matcher, whose sets its batch reads."""
    if not isinstance(value, kind):
        raise TypeError(f"matcher must be a Matcher of the same twin (wire.Matcher), not {type_name(value)}")
    return value


def rssi(value: object) -> int | None:
    """An RSSI in dBm (any ``int``: the code saturates) or None for unknown."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"rssi_dbm must be an int or None, not {type_name(value)}")
    return int(value)


def receiver_address(value: object) -> bytes | None:
    """The record bytes (least significant first) of an 8-digit receiver address, or None for none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"receiver_address must be a str or None, not {type_name(value)}")
    if len(value) != 8 or not _HEX_DIGITS.issuperset(value):
        raise ValueError(f"receiver_address {value!r} is not 8 digits (0-9, A-F)")
    return bytes.fromhex(value)[::-1]


def flag(value: object, name: str) -> bool:
    """``value`` when it is a ``bool``; an int or any other truthy object is a TypeError."""
    if type(value) is not bool:
        raise TypeError(f"{name} must be a bool, not {type_name(value)}")
    return value


def verdict_names(value: object) -> tuple[str, ...]:
    """``value`` when it is a tuple naming each result code ``OK..FILTER_MODE`` with a ``str``."""
    if type(value) is not tuple or not all(type(item) is str for item in value):
        raise TypeError(f"verdicts must be a tuple of str, not {type_name(value)}")
    if len(value) != FILTER_MODE + 1:
        raise ValueError(f"verdicts has {len(value)} names, not one per result code ({FILTER_MODE + 1})")
    return value
