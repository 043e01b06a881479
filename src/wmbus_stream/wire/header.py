"""Link-header values as people read them: manufacturer letters, meter IDs, device type names."""

from __future__ import annotations

from dataclasses import dataclass

from . import MANUFACTURER_MASK, parse_header

__all__ = ["Header", "header", "manufacturer_letters", "manufacturer_code", "device_type_name", "id_key"]

DEVICE_TYPES = {
    0x00: "other", 0x01: "oil", 0x02: "electricity", 0x03: "gas", 0x04: "heat", 0x05: "steam",
    0x06: "warm water", 0x07: "water", 0x08: "heat cost allocator", 0x09: "compressed air",
    0x0A: "cooling load (return)", 0x0B: "cooling load (flow)", 0x0C: "heat (flow)",
    0x0D: "heat/cooling", 0x0E: "bus/system component", 0x0F: "unknown medium",
    0x14: "calorific value", 0x15: "hot water", 0x16: "cold water", 0x17: "dual water",
    0x18: "pressure", 0x19: "A/D converter", 0x1A: "smoke detector", 0x1B: "room sensor",
    0x1C: "gas detector", 0x20: "breaker", 0x21: "valve", 0x25: "customer unit",
    0x28: "waste water", 0x29: "garbage", 0x2A: "carbon dioxide", 0x2B: "environmental",
    0x2C: "environmental", 0x2D: "environmental", 0x2E: "environmental", 0x2F: "environmental",
    0x31: "communication controller", 0x32: "unidirectional repeater",
    0x33: "bidirectional repeater", 0x36: "radio converter (system side)",
    0x37: "radio converter (meter side)",
}


def device_type_name(code: int) -> str:
    """EN 13757-3 name of a device type byte (``reserved`` for unassigned codes)."""
    return DEVICE_TYPES.get(code, "reserved")


def manufacturer_letters(code: int) -> str:
    """Three letters of a manufacturer code or M-field (bit 15 ignored; ``@`` where a 5-bit group is 0)."""
    code &= MANUFACTURER_MASK
    return "".join(chr(((code >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def manufacturer_code(letters: str) -> int:
    """15-bit code of three letters A..Z; raises ValueError otherwise."""
    letters = letters.strip().upper()
    if len(letters) != 3 or not all("A" <= ch <= "Z" for ch in letters):
        raise ValueError(letters)
    return sum((ord(ch) - 64) << shift for ch, shift in zip(letters, (10, 5, 0), strict=True))


def id_key(meter_id: str) -> int:
    """The integer the matcher compares for an 8-digit meter ID (its 4 ID bytes, little-endian)."""
    if len(meter_id) != 8:
        raise ValueError(meter_id)
    return int(meter_id, 16)


@dataclass(frozen=True, slots=True)
class Header:
    """Link header of a telegram, decoded."""

    length: int
    c: int
    manufacturer: str
    id: str
    version: int
    device_type: int
    ci: int

    @property
    def device_type_name(self) -> str:
        return device_type_name(self.device_type)


def header(telegram: bytes) -> Header:
    """Decode the link header of a checked telegram."""
    c, man, ident, version, device_type, ci = parse_header(telegram)
    return Header(telegram[0], c, manufacturer_letters(man), ident, version, device_type, ci)
