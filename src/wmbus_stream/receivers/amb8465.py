"""Amber / Würth AMB8465-M, AMB8665-M, Metis-II in command mode, 9 600 Bd.

Frame: ``FF | CMD | LEN | DATA[LEN] | CS``; CS is the XOR of every byte before it, the 0xFF
included. A received telegram is CMD_DATA_IND (0x03): DATA is the telegram from its C field
(no L, no CRCs) followed, when RSSI attachment is on, by one RSSI byte that LEN counts.
Confirmations of requests are the request code | 0x80.

Strategy: the binary engine scans for 0xFF; a candidate is plausible when CMD is a known
indication or confirmation. A wrong XOR marks a broken frame with untrusted boundaries
(resynchronise after its 0xFF). Confirmations are consumed and counted in ``stats.extra``.
An 8-bit XOR lets about one in 256 frames damaged on the serial line pass as good.
Telegrams are rebuilt with an L-field (``FORMAT_NONE``). The module must be in command mode
(UART_CMD_Out_Enable); transparent-mode output has no 0xFF and is skipped as garbage.

RSSI: the raw byte is a signed int8, dBm = int8 / 2 - 74 (half-dB truncated toward zero).
The ``rssi`` option must match the module's RSSI_Enable register (``setup_commands`` sets
it); the frame itself cannot tell whether its last data byte is an RSSI byte.

The module does not report the radio mode per frame, so every telegram carries the mask
of the configured ``radio_mode`` (0 when not given).
"""

from __future__ import annotations

from .. import wire
from ..core.received import Received
from ._engine import BinaryFramer, Decoded
from ._settings import check_setting, mode_mask_of

__all__ = ["Amb8465Framer", "encode", "command", "checksum", "rssi_dbm", "rssi_raw", "MODE_REGISTER"]

SOF = 0xFF
CMD_DATA_IND = 0x03
CMD_SET_MODE_REQ = 0x04
CMD_SET_REQ = 0x09
REG_RSSI_ENABLE = 0x45

_CONFIRMATIONS = {
    0x80: "DATA_CNF", 0x82: "DATARETRY_CNF", 0x84: "SET_MODE_CNF", 0x85: "RESET_CNF",
    0x86: "SET_CHANNEL_CNF", 0x89: "SET_CNF", 0x8A: "GET_CNF", 0x8B: "SERIALNO_CNF",
    0x8C: "FWV_CNF", 0x8D: "RSSI_CNF", 0x90: "SETUARTSPEED_CNF", 0x91: "FACTORYRESET_CNF",
    0xB0: "DATA_PRELOAD_CNF", 0xB1: "DATA_CLR_PRELOAD_CNF", 0xD0: "SET_AES_KEY_CNF",
    0xD1: "CLR_AES_KEY_CNF", 0xD2: "GET_AES_DEV_CNF",
}
_COMMANDS = frozenset(_CONFIRMATIONS) | {CMD_DATA_IND}

# CMD_SET_MODE_REQ values for collector reception per radio.mode setting:
# S2 (receives S1/S1-m) 0x03, T2-other 0x08, C2-other 0x0E, C2/T2-other 0x09.
MODE_REGISTER = {
    "S1": 0x03,
    "T1": 0x08,
    "C1A": 0x0E,
    "C1B": 0x0E,
    "C1A_C1B": 0x0E,
    "C1A_WIDE": 0x0E,
    "C1B_WIDE": 0x0E,
    "C1A_C1B_WIDE": 0x0E,
    "T1_C1A": 0x09,
    "T1_C1B": 0x09,
    "T1_C1A_C1B": 0x09,
}


def checksum(data: bytes) -> int:
    """XOR of all bytes (the frame's CS covers everything before it, 0xFF included)."""
    cs = 0
    for byte in data:
        cs ^= byte
    return cs


def rssi_dbm(raw: int) -> int:
    """dBm of a raw RSSI byte: signed int8 / 2 - 74, truncated toward zero."""
    signed = raw - 256 if raw >= 128 else raw
    return int(signed / 2) - 74


def rssi_raw(dbm: int) -> int:
    """The raw RSSI byte ``rssi_dbm`` maps back to ``dbm`` (clamped to int8)."""
    return max(-128, min(127, (dbm + 74) * 2)) & 0xFF


def command(cmd: int, data: bytes = b"") -> bytes:
    """One command-mode frame: FF, CMD, LEN, DATA, XOR checksum."""
    head = bytes((SOF, cmd, len(data))) + data
    return head + bytes((checksum(head),))


def encode(telegram: bytes, *, rssi: int | None = None) -> bytes:
    """The CMD_DATA_IND frame for a CRC-less telegram (``rssi`` = raw byte, None = not attached)."""
    data = telegram[1:] + (bytes((rssi & 0xFF,)) if rssi is not None else b"")
    return command(CMD_DATA_IND, data)


class Amb8465Framer(BinaryFramer):
    """Frames Amber command-mode output; telegrams out, confirmations counted in ``stats.extra``."""

    name = "amb8465"
    START = SOF
    MAX_FRAME = 4 + 255

    def __init__(self, *, receiver_address: str | None = None, radio_mode: str | None = None,
                 rssi: bool = True) -> None:
        super().__init__()
        self.receiver_address = receiver_address
        self.radio_mode = radio_mode
        self.rssi = rssi
        self._mode = mode_mask_of(radio_mode)

    def setup_commands(self, radio_mode_setting: str) -> bytes:
        """CMD_SET_MODE_REQ for the setting, then CMD_SET_REQ RSSI_Enable (0x45) = 1."""
        check_setting(radio_mode_setting)
        mode = MODE_REGISTER[radio_mode_setting.upper()]
        # SET_REQ data: memory position, number of bytes, value. It is stored in the
        # module's non-volatile settings, so writing it at every start keeps it on.
        return command(CMD_SET_MODE_REQ, bytes((mode,))) + command(CMD_SET_REQ, bytes((REG_RSSI_ENABLE, 1, 1)))

    def _measure(self, buf: bytearray, pos: int) -> int:
        have = len(buf) - pos
        if have >= 2 and buf[pos + 1] not in _COMMANDS:
            return -1
        if have < 3:
            return 0
        return buf[pos + 2] + 4

    def _decode(self, data: bytes) -> Decoded:
        sent, computed = data[-1], checksum(data[:-1])
        if sent != computed:
            return Received(b"", 0, error=f"amb8465: checksum 0x{sent:02X} does not match 0x{computed:02X}"), False
        if data[1] != CMD_DATA_IND:
            self._count_extra(_CONFIRMATIONS[data[1]])
            return None, True
        body = data[3:-1]
        rssi = None
        if self.rssi:
            if not body:
                return Received(b"", 0, error="amb8465: CMD_DATA_IND without the RSSI byte"), True
            rssi = rssi_dbm(body[-1])
            body = body[:-1]
        return Received(
            data=bytes((len(body),)) + body,
            frame_format=wire.FORMAT_NONE,
            rssi_dbm=rssi,
            mode=self._mode,
            receiver_address=self.receiver_address,
        ), True
