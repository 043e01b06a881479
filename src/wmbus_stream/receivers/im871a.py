"""IMST iM871A (and iM170A) "WMBus HCI" frames, 57 600 Bd.

Frame: ``A5 | flags<<4 | endpoint | msg | LEN | payload[LEN] | [timestamp 4] | [RSSI 1] | [FCS 2]``.
Control flags: 0x2 timestamp attached, 0x4 RSSI attached, 0x8 FCS attached (0x1 reserved,
always 0). Endpoints: 1 DEVMGMT, 2 RADIOLINK, 3 RADIOLINKTEST, 4 HWTEST. The FCS is
CRC-16/X-25 over everything after the SOF, sent low byte first (``wire.x25``, a compiled twin).

Strategy: the binary engine scans for 0xA5; a candidate is plausible when the reserved flag
is clear and endpoint and message id are in the ranges the HCI defines. With the FCS option
a wrong FCS marks a broken frame with untrusted boundaries (resynchronise after its SOF).
Without it, or when damage on the serial line clears the FCS flag, the length byte is all
there is to trust and a damaged frame can pass as good. RADIOLINK 0x03 (WMBUSMSG_IND)
carries the telegram from its C field, without CRCs, and LEN equals the wireless L, so
prepending LEN gives the CRC-less telegram (``FORMAT_NONE``). Every other message (the
confirmations of our own set-up commands, device info ...) is consumed and counted in
``stats.extra``.

RSSI: the HCI specification gives no dBm formula for the raw byte. We follow the radio
chip's RSSI-vs-input-power curve (Silicon Labs Si1002 datasheet, figure 7-3) through the
three points wmbusmeters reads off it: -100 dBm at raw 45, -20 dBm at 205, 0 dBm from 230 on
(the curve saturates there). Between the points the line is straight: 0.5 dB a step up to
205, 0.8 dB a step from 205 to 230; results are truncated toward zero. Every byte maps:
0 -> -122 dBm, monotonic, never above 0 dBm. wmbusmeters itself keeps 0.5 dB a step up to
229 (-8 dBm) and then jumps to 0 dBm at 230; the two agree outside 206..229. (jMBus'
straight line differs by up to about 3 dB.)

The dongle does not report the radio mode per frame, so every telegram carries the mask
of the configured ``radio_mode`` (0 when not given).
"""

from __future__ import annotations

from .. import wire
from ..wire import x25
from ..core.received import Received
from ._engine import BinaryFramer, Decoded
from ._settings import check_setting, mode_mask_of

__all__ = ["Im871aFramer", "encode", "frame", "rssi_dbm", "rssi_raw", "LINK_MODES"]

SOF = 0xA5
DEVMGMT, RADIOLINK, RADIOLINKTEST, HWTEST = 1, 2, 3, 4
WMBUSMSG_IND = 0x03
SET_CONFIG_REQ = 0x03
FLAG_TIMESTAMP, FLAG_RSSI, FLAG_FCS, FLAG_RESERVED = 0x2, 0x4, 0x8, 0x1

# Highest message id per endpoint (HCI v1.6/1.7); anything else is not a frame.
_LAST_MSG = {DEVMGMT: 0x27, RADIOLINK: 0x05, RADIOLINKTEST: 0x07, HWTEST: 0x02}
_ENDPOINT_NAMES = {DEVMGMT: "DEVMGMT", RADIOLINK: "RADIOLINK", RADIOLINKTEST: "RADIOLINKTEST", HWTEST: "HWTEST"}
_MESSAGE_NAMES = {
    (DEVMGMT, 0x02): "PING_RSP",
    (DEVMGMT, 0x04): "SET_CONFIG_RSP",
    (DEVMGMT, 0x06): "GET_CONFIG_RSP",
    (DEVMGMT, 0x08): "RESET_RSP",
    (DEVMGMT, 0x0A): "FACTORY_RESET_RSP",
    (DEVMGMT, 0x10): "GET_DEVICEINFO_RSP",
    (DEVMGMT, 0x12): "GET_SYSSTATUS_RSP",
    (DEVMGMT, 0x14): "GET_FWINFO_RSP",
    (DEVMGMT, 0x27): "AES_DEC_ERROR_IND",
    (RADIOLINK, 0x02): "WMBUSMSG_RSP",
    (RADIOLINK, 0x05): "DATA_RSP",
}

# Link-mode codes of SET_CONFIG per radio.mode setting. T1 together with C1 needs the
# combined C/T mode 0x0A (firmware newer than 0x13); C alone uses C1a/C1b.
LINK_MODES = {
    "S1": 0x00,
    "T1": 0x03,
    "C1A": 0x06,
    "C1A_WIDE": 0x06,
    "C1B": 0x07,
    "C1B_WIDE": 0x07,
    "C1A_C1B": 0x07,
    "C1A_C1B_WIDE": 0x07,
    "T1_C1A": 0x0A,
    "T1_C1B": 0x0A,
    "T1_C1A_C1B": 0x0A,
}


def _toward_zero(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator) if numerator < 0 else numerator // denominator


def rssi_dbm(raw: int) -> int:
    """Approximate dBm of a raw RSSI byte: through -100 dBm at 45, -20 at 205, 0 from 230 on."""
    if raw >= 230:
        return 0
    if raw >= 205:
        return _toward_zero(4 * (raw - 205) - 100, 5)  # -20 dBm + 0.8 dB a step
    return _toward_zero(raw - 245, 2)  # -100 dBm at 45 + 0.5 dB a step


def rssi_raw(dbm: int) -> int:
    """A raw RSSI byte that ``rssi_dbm`` maps to ``dbm`` (-122..0 dBm; clamped outside)."""
    if dbm >= 0:
        return 230
    if dbm >= -20:
        return 205 + 5 * (dbm + 20) // 4
    return max(0, 2 * dbm + 245)


def frame(endpoint: int, msg: int, payload: bytes, *, timestamp: int | None = None,
          rssi: int | None = None, fcs: bool = True) -> bytes:
    """One HCI frame with the given options (used for telegrams, set-up commands and tests)."""
    flags = (FLAG_TIMESTAMP if timestamp is not None else 0) | (FLAG_RSSI if rssi is not None else 0)
    flags |= FLAG_FCS if fcs else 0
    out = bytearray((flags << 4 | endpoint, msg, len(payload))) + payload
    if timestamp is not None:
        out += (timestamp & 0xFFFFFFFF).to_bytes(4, "little")
    if rssi is not None:
        out.append(rssi & 0xFF)
    if fcs:
        out += x25(out).to_bytes(2, "little")
    return bytes((SOF,)) + bytes(out)


def encode(telegram: bytes, *, rssi: int | None = None, timestamp: int | None = None, fcs: bool = True) -> bytes:
    """The WMBUSMSG_IND frame an iM871A sends for a CRC-less telegram (``rssi`` = raw byte)."""
    return frame(RADIOLINK, WMBUSMSG_IND, telegram[1:], timestamp=timestamp, rssi=rssi, fcs=fcs)


class Im871aFramer(BinaryFramer):
    """Frames iM871A HCI messages; telegrams out, confirmations counted in ``stats.extra``."""

    name = "im871a"
    START = SOF
    MAX_FRAME = 4 + 255 + 4 + 1 + 2

    def __init__(self, *, receiver_address: str | None = None, radio_mode: str | None = None) -> None:
        super().__init__()
        self.receiver_address = receiver_address
        self.radio_mode = radio_mode
        self._mode = mode_mask_of(radio_mode)

    def setup_commands(self, radio_mode_setting: str) -> bytes:
        """SET_CONFIG (temporary): the link mode for the setting, RSSI attached, no timestamp."""
        check_setting(radio_mode_setting)
        link_mode = LINK_MODES[radio_mode_setting.upper()]
        # NVM flag 0 (temporary), IIFlag1 0x02 (link mode follows), link mode,
        # IIFlag2 0x30 (RSSI and timestamp attachment follow), RSSI on, timestamp off.
        payload = bytes((0x00, 0x02, link_mode, 0x30, 0x01, 0x00))
        return frame(DEVMGMT, SET_CONFIG_REQ, payload, fcs=False)

    def _measure(self, buf: bytearray, pos: int) -> int:
        have = len(buf) - pos
        if have >= 2:
            control = buf[pos + 1]
            endpoint = control & 0x0F
            if control >> 4 & FLAG_RESERVED or endpoint not in _LAST_MSG:
                return -1
            if have >= 3 and not 1 <= buf[pos + 2] <= _LAST_MSG[endpoint]:
                return -1
        if have < 4:
            return 0
        flags = buf[pos + 1] >> 4
        size = 4 + buf[pos + 3]
        size += 4 if flags & FLAG_TIMESTAMP else 0
        size += 1 if flags & FLAG_RSSI else 0
        size += 2 if flags & FLAG_FCS else 0
        return size

    def _decode(self, data: bytes) -> Decoded:
        flags, endpoint, msg, length = data[1] >> 4, data[1] & 0x0F, data[2], data[3]
        if flags & FLAG_FCS:
            sent = data[-2] | data[-1] << 8
            computed = x25(data[1:-2])
            if sent != computed:
                return Received(b"", 0, error=f"im871a: FCS 0x{sent:04X} does not match 0x{computed:04X}"), False
        if (endpoint, msg) != (RADIOLINK, WMBUSMSG_IND):
            name = _MESSAGE_NAMES.get((endpoint, msg), f"{_ENDPOINT_NAMES[endpoint]}.{msg:02X}")
            self._count_extra(name)
            return None, True
        rssi = None
        if flags & FLAG_RSSI:
            rssi = rssi_dbm(data[4 + length + (4 if flags & FLAG_TIMESTAMP else 0)])
        return Received(
            data=bytes((length,)) + data[4 : 4 + length],
            frame_format=wire.FORMAT_NONE,
            rssi_dbm=rssi,
            mode=self._mode,
            receiver_address=self.receiver_address,
        ), True
