"""Report lines for the tests of the reference HES (both tiers): the spec vector and parts to break."""

from __future__ import annotations

from typing import Any

# The wireless telegram of the spec's test vector (section 5) and its wired RSP_UD form.
TELEGRAM = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265560702FB1A0E"
    "0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)
SPEC_WIRED = "080072640100619615011B000000000C787217006201FD711C0DFD3B61" + TELEGRAM.hex().upper()
RECEIVER = b"\x0c\x78\x72\x17\x00\x62"
RSSI = b"\x01\xfd\x71\x1c"
AGE = b"\x02\x75\x05\x00"


def wired(telegram: bytes = TELEGRAM, *, c: int = 0x08, ci: int = 0x72, records: bytes = RECEIVER + RSSI,
          n: int | None = None, header: bytes | None = None, tail: bytes = b"") -> bytes:
    """A wired RSP_UD telegram as in spec section 5, with parts to break."""
    head = header if header is not None else telegram[4:8] + telegram[2:4] + telegram[8:10]
    size = len(telegram) if n is None else n
    return bytes((c, 0, ci)) + head + bytes(4) + records + b"\x0d\xfd\x3b" + bytes((size,)) + telegram + tail


def line(serial: str = "00000161", meter: str = "61000164", date: str = "2026-11-24 10:15:02", count: str = "00",
         hex_text: str | None = None, **parts: Any) -> str:
    """One report line: the spec vector's unless told otherwise."""
    return f"{serial};{meter};{date};{count};{hex_text if hex_text is not None else wired(**parts).hex().upper()}"


def telegram_for(meter: int, access: int = 0x97) -> bytes:
    """The spec telegram for another meter ID (8 digits) and access number."""
    return TELEGRAM[:4] + bytes.fromhex(f"{meter:08d}")[::-1] + TELEGRAM[8:11] + bytes((access,)) + TELEGRAM[12:]
