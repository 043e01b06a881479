"""rtl-wmbus (RTL-SDR software receiver) text lines.

Line: ``MODE;CRC_OK;3OF6_OK;TIMESTAMP;PACKET_RSSI;CURRENT_RSSI;ID;0xHEX[;0xHEX]``, e.g.
``T1;1;1;2019-04-03 19:00:42.000;97;148;88888888;0x2e44...``. MODE is T1, C1 or S1; the
datagram is the telegram with the link CRCs removed and L in the format-A meaning (also for
C1 frame format B), hence ``FORMAT_NONE``. A line may carry a second ``0x`` datagram;
each becomes its own frame.

Strategy: the line engine splits lines (bounded, ``\\r\\n`` tolerated). A line whose first
field is a known mode and that has at least eight fields is a frame: it is broken when
CRC_OK or 3OF6_OK is not 1 (one error for the line) or a datagram is not even-length hex.
Any other line is not a frame: its bytes are skipped and counted. Blank and ``#`` lines
(timestamp comments in replay files) are ignored.

The mode field becomes the telegram's mode mask (C1 = C1A|C1B since the line does not say
the frame format). The two RSSI fields are receiver-relative numbers with no documented
mapping to dBm, so ``rssi_dbm`` is None.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .. import wire
from ..core.received import Received
from ..wire.modes import mode_mask
from ._engine import LineFramer
from ._settings import check_setting

__all__ = ["RtlWmbusFramer", "encode"]

MODES = ("T1", "C1", "S1")
FIELDS = 8


def encode(telegram: bytes, *, mode: str = "T1", time: float = 0.0, rssi: tuple[int, int] = (100, 100),
           crc_ok: bool = True) -> bytes:
    """The line rtl-wmbus prints for a CRC-less telegram (``mode`` T1, C1 or S1; ``time`` epoch s)."""
    stamp = datetime.fromtimestamp(time, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    ident = telegram[7:3:-1].hex() if len(telegram) >= 8 else "00000000"
    ok = "1" if crc_ok else "0"
    return f"{mode};{ok};{ok};{stamp};{rssi[0]};{rssi[1]};{ident};0x{telegram.hex()}\n".encode("ascii")


class RtlWmbusFramer(LineFramer):
    """Frames rtl-wmbus output lines; mode from the line, no dBm."""

    name = "rtlwmbus"
    # Two datagrams of 255 bytes in hex plus the other fields fit with room to spare.
    MAX_LINE = 1200

    def __init__(self, *, receiver_address: str | None = None, radio_mode: str | None = None) -> None:
        super().__init__()
        self.receiver_address = receiver_address
        # Kept for a uniform constructor; the SDR is tuned outside this program.
        self.radio_mode = radio_mode

    def setup_commands(self, radio_mode_setting: str) -> bytes:
        """Nothing to send: rtl_wmbus takes no commands on its output pipe."""
        check_setting(radio_mode_setting)
        return b""

    def _parse(self, text: str) -> list[Received] | None:
        fields = [field.strip() for field in text.split(";")]
        if len(fields) < FIELDS or fields[0].upper() not in MODES:
            return None
        mode = mode_mask(fields[0])
        if fields[1] != "1" or fields[2] != "1":
            error = f"rtlwmbus: line reports CRC_OK={fields[1]} 3OF6OK={fields[2]}"
            return [Received(b"", wire.FORMAT_NONE, mode=mode, receiver_address=self.receiver_address, error=error)]
        out = []
        for number, field in enumerate(fields[7:], start=8):
            out.append(self._datagram(number, field, mode))
        return out

    def _datagram(self, number: int, field: str, mode: int) -> Received:
        if not field.lower().startswith("0x"):
            return Received(b"", wire.FORMAT_NONE, mode=mode, error=f"rtlwmbus: field {number} is not a 0x datagram")
        digits = field[2:]
        try:
            data = bytes.fromhex(digits)
        except ValueError:
            reason = "an odd number of" if len(digits) % 2 and all(c in "0123456789abcdefABCDEF" for c in digits) else "non-hex"
            return Received(b"", wire.FORMAT_NONE, mode=mode, error=f"rtlwmbus: field {number} has {reason} digits")
        if not data:
            return Received(b"", wire.FORMAT_NONE, mode=mode, error=f"rtlwmbus: field {number} is an empty datagram")
        return Received(data, wire.FORMAT_NONE, mode=mode, receiver_address=self.receiver_address)
