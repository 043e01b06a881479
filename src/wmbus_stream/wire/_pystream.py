"""Pure-Python twin of ``ext/_cstream.pyx``: the cmex50 byte stream framed, checked and filtered per chunk.

Strategy (the binary framing engine of ``receivers._engine``, specialised to wired M-Bus
long frames ``68 L L 68 C A CI ... CS 16``): find 0x68; a candidate is plausible when its
header is consistent (``68 L L 68`` with L >= 3); once L + 6 bytes are buffered,
``parse_cmex50`` validates it. A failed checksum or stop byte means the boundaries cannot
be trusted: the frame is reported broken once and the scan resumes after its first 0x68;
a candidate starting inside a reported broken frame is not reported again ("covered").
A frame whose checksum is right but whose records are not a receiver frame is broken and
consumed whole. Every byte is part of a frame, of a reported broken frame, or counted in
``skipped_bytes``; between calls at most one unfinished candidate (< ``domain.MAX_FRAME`` bytes)
is held.

``frames`` gives each frame as the fields of ``core.received.Received``; ``scan`` checks and
filters them at once and gives what the pipeline stores (see ``scan``). The telegram of a
good frame is the container's (CRC-less, checked by ``parse_cmex50``); the report forwards
the frame's own C..data bytes, except that a telegram longer than ``CONTAINER_MAX`` in a
``0D FD 3B`` container moves to the ``0F`` long form. The receiver reports no radio mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ChecksumError, FrameError
from . import domain
from ._pywire import CONTAINER_MAX, FORMAT_NONE, LONG_FORM, Matcher, crc16, parse_cmex50

__all__ = ["Cmex50Scanner", "crc_loop", "rssi_dbm", "x25"]

START = 0x68
MIN_LENGTH = 3  # C, A, CI: the least a long frame holds

# One frame as the fields of core.received.Received: (data, frame_format, rssi_dbm, mode,
# receiver_address, wired, error).
Frame = tuple[bytes, int, int | None, int, str | None, bytes | None, str | None]
# One checked telegram: (link address key, meter ID, device type, verdict name, rssi_dbm,
# mode name, report telegram or None when a filter rejected it).
Record = tuple[bytes, str, int, str, int | None, str | None, bytes | None]


def rssi_dbm(code: int | None) -> int | None:
    """dBm of a CMeX50 RSSI code: 0 (or no record) unknown, 1..62 -> 2*code-130, 63.. -> -6."""
    if code is not None:
        code = domain.integer(code, "code", 0, domain.RSSI_CODE_MAX)
    if not code:
        return None
    if code >= 63:
        return -6
    return 2 * code - 130


def _long_form(body: bytes, telegram: bytes) -> bytes:
    """``body`` with its container record (and fill byte) replaced by the 0F long form."""
    start = body.rfind(b"\x0d\xfd\x3b" + bytes((len(telegram),)) + telegram)
    return body if start < 0 else body[:start] + bytes((LONG_FORM,)) + telegram


def _x25_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_X25 = _x25_table()


def x25(data: domain.Data) -> int:
    """CRC-16/X-25 (reflected 0x1021, init and final xor 0xFFFF): the iM871A HCI frame check."""
    crc = 0xFFFF
    for byte in domain.data(data):
        crc = (crc >> 8) ^ _X25[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


def crc_loop(frames: Sequence[domain.Data]) -> int:
    """CRC-16 of every frame (the yardstick the benchmark compares the pipeline with)."""
    total = 0
    for i, frame in enumerate(domain.frames(frames)):
        total ^= crc16(domain.data(frame, f"frames[{i}]"))
    return total


class Cmex50Scanner:
    """Sans-IO scanner of a cmex50 byte stream; keeps the framer counters."""

    def __init__(self, receiver_address: str | None = None) -> None:
        domain.receiver_address(receiver_address)
        self.receiver_address = receiver_address
        self.frames_out = 0
        self.bad_frames = 0
        self.skipped_bytes = 0
        self._buf = b""
        self._covered = 0  # head bytes of _buf that belong to an already reported broken frame

    @property
    def pending(self) -> bytes:
        """The bytes held while waiting for the rest of a frame."""
        return self._buf

    def frames(self, data: domain.Data, final: bool) -> list[Frame]:
        """Frame ``data`` (after what is held); ``final`` ends the stream and empties the scanner."""
        out: list[Any] = []
        self._scan(domain.data(data), domain.flag(final, "final"), out, None, ())
        return out

    def scan(self, data: domain.Data, final: bool, matcher: Matcher,
             verdicts: tuple[str, ...]) -> tuple[list[Record], list[str], list[int], int]:
        """Frame, check and filter ``data``: (records, broken kinds, count per verdict code, long forms).

        ``records`` holds each good telegram in order; ``broken`` the error kind of each broken
        frame (``frame``); ``long_form`` counts accepted telegrams longer than CONTAINER_MAX.
        ``verdicts`` names the verdict codes of ``matcher.verdict``.
        """
        data = domain.data(data)
        final = domain.flag(final, "final")
        matcher = domain.matcher(matcher, Matcher)
        verdicts = domain.verdict_names(verdicts)
        checked: list[Any] = [[], [], [0] * len(verdicts), 0]
        self._scan(data, final, checked, matcher, verdicts)
        records, broken, results, long_forms = checked
        return records, broken, results, long_forms

    # Engine ---------------------------------------------------------------------------

    def _skip(self, start: int, end: int) -> None:
        start = max(start, self._covered)
        if end > start:
            self.skipped_bytes += end - start

    def _broken(self, out: list[Any], matcher: Any, pos: int, end: int, error: str) -> None:
        # Report a candidate with untrusted boundaries unless it starts inside a broken one.
        if pos >= self._covered:
            self._emit_error(out, matcher, error)
            self._covered = end

    def _emit_error(self, out: list[Any], matcher: Any, error: str) -> None:
        self.bad_frames += 1
        if matcher is None:
            out.append((b"", 0, None, 0, None, None, error))
        else:
            out[1].append(FrameError.kind)

    def _scan(self, data: bytes, final: bool, out: list[Any], matcher: Any, verdicts: tuple[str, ...]) -> None:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        while pos < n:
            start = buf.find(START, pos)
            if start < 0:
                self._skip(pos, n)
                pos = n
                break
            self._skip(pos, start)
            pos = start
            have = n - pos
            # Plausible header: 68 L L 68 with L >= 3 (as far as it is buffered).
            if (have >= 3 and buf[pos + 1] != buf[pos + 2]) or (have >= 2 and buf[pos + 1] < MIN_LENGTH) or (
                    have >= 4 and buf[pos + 3] != START):
                self._skip(pos, pos + 1)
                pos += 1
                continue
            size = buf[pos + 1] + 6 if have >= 4 else 0
            if size == 0 or pos + size > n:
                if not final:
                    break  # wait for more bytes
                if size > 0:
                    self._broken(out, matcher, pos, n, f"cmex50: frame cut after {n - pos} of {size} bytes")
                else:
                    self._skip(pos, pos + 1)
                pos += 1
                continue
            try:
                body, address, _age, code, telegram = parse_cmex50(buf[pos : pos + size])
            except ChecksumError as exc:
                self._broken(out, matcher, pos, pos + size, f"cmex50: {exc}")
                pos += 1  # resynchronise inside the broken frame
                continue
            except FrameError as exc:
                self._emit_error(out, matcher, f"cmex50: {exc}")
                pos += size
                continue
            pos += size
            self.frames_out += 1
            if len(telegram) > CONTAINER_MAX:
                body = _long_form(body, telegram)
            if matcher is None:
                address = address if address is not None else self.receiver_address
                out.append((telegram, FORMAT_NONE, rssi_dbm(code), 0, address, body, None))
                continue
            verdict = matcher.verdict(telegram, 0)
            out[2][verdict] += 1
            if verdict:
                report = None
            else:
                report = body
                if len(telegram) > CONTAINER_MAX:
                    out[3] += 1
            out[0].append((telegram[2:10], telegram[7:3:-1].hex().upper(), telegram[9], verdicts[verdict],
                           rssi_dbm(code), None, report))
        self._buf = b"" if final else buf[pos:]
        self._covered = 0 if final else max(0, self._covered - pos)
