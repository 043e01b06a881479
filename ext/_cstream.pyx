# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twin of ``wmbus_stream.wire._pystream`` (the readable specification).

Same names, arguments, results and counters; ``tests/unit/test_stream.py`` holds the two
twins to that with the vectors (whole, byte by byte, in garbage) and with random noise.

Strategy: one call per read chunk. The scan runs in C over the chunk (prefixed with the
held bytes, if any): ``memchr`` finds 0x68, the header, stop byte, checksum, receiver
records, container and the telegram's address are checked in place by ``_check`` with no
Python object made. Python objects are made only for what comes out: per good telegram
its record (key, meter ID, device type, verdict, RSSI, report) and the filter's verdict
(``matcher.verdict``, the one filter implementation); per broken frame its kind, and in
``frames`` its message, taken from ``parse_cmex50`` so it is the very same text.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memchr

from wmbus_stream.errors import ChecksumError, FrameError
from wmbus_stream.wire import domain as _domain
from wmbus_stream.wire._cwire import Matcher, parse_cmex50

__all__ = ["Cmex50Scanner", "crc_loop", "rssi_dbm", "x25"]

cdef enum:
    _START = 0x68
    _MIN_LENGTH = 3
    _CONTAINER_MAX = 0xBF
    _LONG_FORM = 0x0F

# Results of _check: the frame is good, broken with untrusted boundaries (stop byte or
# checksum: resynchronise inside it), or broken but whole (consume it).
cdef enum:
    _GOOD = 0
    _UNTRUSTED = 1
    _BROKEN = 2

include "_crc.pxi"

cdef uint16_t _X25[256]


cdef void _fill_x25() noexcept:
    cdef int byte, bit
    cdef uint32_t crc
    for byte in range(256):
        crc = <uint32_t>byte
        for bit in range(8):
            crc = ((crc >> 1) ^ 0x8408) if crc & 1 else (crc >> 1)
        _X25[byte] = <uint16_t>crc


_fill_x25()


cdef inline bytes _data(value, str name="data"):
    """``value`` itself when it is exact ``bytes``, else what ``domain.data`` makes of it (or raises)."""
    if PyBytes_CheckExact(value):
        return <bytes>value
    return _domain.data(value, name)


cdef inline bint _flag(value, str name) except -1:
    """``value`` when it is ``True`` or ``False``, else ``domain.flag``'s refusal."""
    if value is True or value is False:
        return value is True
    return _domain.flag(value, name)


def x25(data):
    """CRC-16/X-25 (reflected 0x1021, init and final xor 0xFFFF): the iM871A HCI frame check."""
    cdef bytes buf = _data(data)
    cdef const unsigned char *p
    cdef Py_ssize_t i, n
    cdef uint16_t crc = 0xFFFF
    p = <const unsigned char *>PyBytes_AS_STRING(buf)
    n = PyBytes_GET_SIZE(buf)
    for i in range(n):
        crc = <uint16_t>((crc >> 8) ^ _X25[(crc ^ p[i]) & 0xFF])
    return crc ^ 0xFFFF


def crc_loop(frames):
    """CRC-16 of every frame (the yardstick the benchmark compares the pipeline with)."""
    cdef unsigned int total = 0
    cdef Py_ssize_t i = 0
    cdef bytes buf
    for frame in _domain.frames(frames):
        buf = <bytes>frame if PyBytes_CheckExact(frame) else _domain.data(frame, f"frames[{i}]")
        total ^= _crc_update(0, <const unsigned char *>PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf)) ^ 0xFFFF
        i += 1
    return total


def rssi_dbm(code):
    """dBm of a CMeX50 RSSI code: 0 (or no record) unknown, 1..62 -> 2*code-130, 63.. -> -6."""
    if code is None:
        return None
    return _dbm(_domain.integer(code, "code", 0, _domain.RSSI_CODE_MAX))


cdef inline object _dbm(int code):
    # The dBm of a code in 0..255, -1 for no record.
    if code <= 0:
        return None
    if code >= 63:
        return -6
    return 2 * code - 130


def _long_form(body, telegram):
    """``body`` with its container record (and fill byte) replaced by the 0F long form."""
    start = body.rfind(b"\x0d\xfd\x3b" + bytes((len(telegram),)) + telegram)
    return body if start < 0 else body[:start] + bytes((_LONG_FORM,)) + telegram


cdef const char *_HEX = b"0123456789ABCDEF"


cdef inline str _bcd4(const unsigned char *p):
    """Eight hex digits of 4 bytes stored least significant first (meter ID, receiver address)."""
    cdef char text[8]
    cdef int i
    for i in range(4):
        text[2 * i] = _HEX[p[3 - i] >> 4]
        text[2 * i + 1] = _HEX[p[3 - i] & 0x0F]
    return PyUnicode_DecodeASCII(text, 8, NULL)


cdef struct _Parsed:
    Py_ssize_t telegram      # offset of the telegram in the frame
    Py_ssize_t size          # its length
    Py_ssize_t container     # offset of its 0D FD 3B record in the frame, -1 for the 0F long form
    Py_ssize_t address       # offset of the 0C 78 receiver address in the frame, -1 if none
    int rssi_code            # -1 if no 01 FD 71 record


cdef int _check(const unsigned char *f, Py_ssize_t n, _Parsed *out) noexcept nogil:
    """``parse_cmex50``'s rules on a frame whose header (68 L L 68, n = L + 6) is consistent."""
    cdef const unsigned char *body = f + 4
    cdef const unsigned char *t
    cdef Py_ssize_t end = n - 6, pos, size, rest, start
    cdef unsigned int total = 0
    cdef Py_ssize_t i
    if f[n - 1] != 0x16:
        return _UNTRUSTED
    for i in range(4, n - 2):
        total += f[i]
    if (total & 0xFF) != f[n - 2]:
        return _UNTRUSTED
    if body[0] != 0x08 or body[2] != 0x72 or end < 15:
        return _BROKEN
    out.address = -1
    out.rssi_code = -1
    out.container = -1
    pos = 15
    while True:
        if pos >= end:
            return _BROKEN  # no container record
        if body[pos] == 0x0C and pos + 6 <= end and body[pos + 1] == 0x78:
            out.address = 4 + pos + 2
            pos += 6
        elif body[pos] == 0x02 and pos + 4 <= end and body[pos + 1] == 0x75:
            pos += 4
        elif body[pos] == 0x01 and pos + 4 <= end and body[pos + 1] == 0xFD and body[pos + 2] == 0x71:
            out.rssi_code = body[pos + 3]
            pos += 4
        elif body[pos] == 0x0D and pos + 4 <= end and body[pos + 1] == 0xFD and body[pos + 2] == 0x3B:
            size = body[pos + 3]
            if pos + 4 + size > end:
                return _BROKEN
            rest = end - (pos + 4 + size)
            if rest > 1 or (rest == 1 and body[end - 1] != 0x0F and body[end - 1] != 0x1F):
                return _BROKEN
            out.container = 4 + pos
            start = pos + 4
            break
        elif body[pos] == _LONG_FORM:
            start = pos + 1
            size = end - start
            break
        else:
            return _BROKEN
    t = body + start
    if size < 11 or t[0] != size - 1:
        return _BROKEN
    if (t[2] != body[7] or t[3] != body[8] or t[4] != body[3] or t[5] != body[4]
            or t[6] != body[5] or t[7] != body[6] or t[8] != body[9] or t[9] != body[10]):
        return _BROKEN
    out.telegram = 4 + start
    out.size = size
    return _GOOD


cdef class Cmex50Scanner:
    """Sans-IO scanner of a cmex50 byte stream; keeps the framer counters."""

    cdef public object receiver_address
    cdef readonly Py_ssize_t frames_out, bad_frames, skipped_bytes
    cdef bytes _buf
    cdef Py_ssize_t _covered  # head bytes of _buf that belong to an already reported broken frame

    def __init__(self, receiver_address=None):
        _domain.receiver_address(receiver_address)
        self.receiver_address = receiver_address
        self.frames_out = self.bad_frames = self.skipped_bytes = 0
        self._buf = b""
        self._covered = 0

    @property
    def pending(self):
        """The bytes held while waiting for the rest of a frame."""
        return self._buf

    def frames(self, data, final):
        """Frame ``data`` (after what is held); ``final`` ends the stream and empties the scanner."""
        cdef list out = []
        cdef bytes chunk = _data(data)
        self._scan(chunk, _flag(final, "final"), out, None, None, None, None)
        return out

    def scan(self, data, final, matcher, verdicts):
        """Frame, check and filter ``data``: (records, broken kinds, count per verdict code, long forms)."""
        cdef bytes chunk = _data(data)
        cdef bint last = _flag(final, "final")
        matcher = matcher if type(matcher) is Matcher else _domain.matcher(matcher, Matcher)
        verdicts = _domain.verdict_names(verdicts)
        cdef list records = [], broken = [], results = [0] * len(verdicts)
        cdef Py_ssize_t long_forms = self._scan(chunk, last, records, broken, results, matcher, verdicts)
        return records, broken, results, long_forms

    cdef inline void _skip(self, Py_ssize_t start, Py_ssize_t end) noexcept:
        if start < self._covered:
            start = self._covered
        if end > start:
            self.skipped_bytes += end - start

    cdef int _error(self, list out, list broken, bytes buf, Py_ssize_t pos, Py_ssize_t size, str cut) except -1:
        """Count one broken frame; ``frames`` gets its message (the very text of parse_cmex50)."""
        self.bad_frames += 1
        if broken is not None:
            broken.append(FrameError.kind)
            return 0
        if cut is not None:
            message = cut
        else:
            try:
                parse_cmex50(buf[pos : pos + size])
                message = "cmex50: frame is invalid"  # not reached: _check and parse_cmex50 agree
            except FrameError as exc:
                message = f"cmex50: {exc}"
        out.append((b"", 0, None, 0, None, None, message))
        return 0

    cdef Py_ssize_t _scan(self, bytes data, bint final, list out, list broken, list results, matcher,
                          tuple verdicts) except -1:
        cdef bytes buf
        cdef const unsigned char *p
        cdef const unsigned char *hit
        cdef const unsigned char *t
        cdef Py_ssize_t n, pos = 0, have, size, long_forms = 0
        cdef int status, verdict
        cdef _Parsed parsed
        buf = self._buf + data if self._buf else data
        p = <const unsigned char *>PyBytes_AS_STRING(buf)
        n = PyBytes_GET_SIZE(buf)
        while pos < n:
            hit = <const unsigned char *>memchr(p + pos, _START, n - pos)
            if hit == NULL:
                self._skip(pos, n)
                pos = n
                break
            self._skip(pos, hit - p)
            pos = hit - p
            have = n - pos
            # Plausible header: 68 L L 68 with L >= 3 (as far as it is buffered).
            if ((have >= 3 and p[pos + 1] != p[pos + 2]) or (have >= 2 and p[pos + 1] < _MIN_LENGTH)
                    or (have >= 4 and p[pos + 3] != _START)):
                self._skip(pos, pos + 1)
                pos += 1
                continue
            size = p[pos + 1] + 6 if have >= 4 else 0
            if size == 0 or pos + size > n:
                if not final:
                    break  # wait for more bytes
                if size > 0:
                    if pos >= self._covered:
                        self._error(out, broken, buf, pos, size, f"cmex50: frame cut after {n - pos} of {size} bytes")
                        self._covered = n
                else:
                    self._skip(pos, pos + 1)
                pos += 1
                continue
            status = _check(p + pos, size, &parsed)
            if status == _UNTRUSTED:
                if pos >= self._covered:
                    self._error(out, broken, buf, pos, size, None)
                    self._covered = pos + size
                pos += 1  # resynchronise inside the broken frame
                continue
            if status == _BROKEN:
                self._error(out, broken, buf, pos, size, None)
                pos += size
                continue
            self.frames_out += 1
            t = p + pos + parsed.telegram
            telegram = PyBytes_FromStringAndSize(<const char *>t, parsed.size)
            body = PyBytes_FromStringAndSize(<const char *>(p + pos + 4), size - 6)
            if parsed.size > _CONTAINER_MAX:
                if parsed.container >= 0:  # the container record is the last occurrence rfind finds
                    body = body[: parsed.container - 4] + bytes((_LONG_FORM,)) + telegram
                else:
                    body = _long_form(body, telegram)
            if broken is None:
                if parsed.address >= 0:
                    address = _bcd4(p + pos + parsed.address)
                else:
                    address = self.receiver_address
                out.append((telegram, 0, _dbm(parsed.rssi_code), 0, address, body, None))
                pos += size
                continue
            verdict = matcher.verdict(telegram, 0)
            results[verdict] += 1
            if verdict:
                report = None
            else:
                report = body
                if parsed.size > _CONTAINER_MAX:
                    long_forms += 1
            out.append((PyBytes_FromStringAndSize(<const char *>(t + 2), 8), _bcd4(t + 4), t[9], verdicts[verdict],
                        _dbm(parsed.rssi_code), None, report))
            pos += size
        if final:
            self._buf = b""
            self._covered = 0
        else:
            self._buf = buf[pos:]
            self._covered = self._covered - pos if self._covered > pos else 0
        return long_forms
